# TLS on the loop's connections (included by _loop.pyx): the record layer
# of a Transport, and its handshake and close_notify states.
#
# The engine.  Each connection is an ``ssl.SSLObject`` over two
# ``ssl.MemoryBIO`` made by the server's ``ssl.SSLContext`` (so SNI, ALPN,
# client certificates, session tickets, keylog and the context's callbacks
# all work as in asyncio).  The handshake is driven through the SSLObject's
# own ``do_handshake()`` (once per connection: its exceptions carry the
# reasons ssl gives).  The record work of every read and every flush is
# where the time goes, and there two engines exist:
#
# - "openssl": libssl's functions called from C on the SSL* and BIO* that
#   the ssl module's objects hold (their C layout, ``PyObject_HEAD`` then
#   ``Socket`` then ``SSL *ssl`` for ``_ssl._SSLSocket`` and ``PyObject_HEAD``
#   then ``BIO *bio`` for ``_ssl.MemoryBIO``, is the same in every CPython
#   from 3.9 to 3.15).  The functions are looked up with dlsym in the ssl
#   module's own shared object, so they are the libssl that created those
#   objects, whatever this extension was built against (it is built against
#   none: no OpenSSL header is needed).  Each connection checks that
#   SSL_get_rbio/SSL_get_wbio of its SSL* are its two BIO* before the
#   engine touches it.  No Python call and no exception per record.
# - "python": the same objects through their methods (``SSLObject.read``
#   into the receive slab, ``write``, ``MemoryBIO.write/read``), where the
#   ssl module links OpenSSL statically and exports none of it, or with
#   ``CSERVER_TLS_ENGINE=python``.  Same behaviour, more Python calls.
#
# Reads: ``Transport._recv`` is ``recv`` for a plain connection; for a TLS
# one (``Transport._tls_recv``) it reads what the TLS buffers still hold,
# else one ``recv`` of ciphertext into the loop's TLS slab, hands it to the
# incoming BIO and decrypts every complete record of it into the caller's
# buffer in one pass (so the frames of one read are delivered together).
# A read that fills the buffer with more still buffered puts the
# connection on the loop's ``tls_ready`` list: the next pass reads again,
# since no readiness event will come for bytes already off the socket.
#
# Writes: ``write``/``send_frame`` buffer plaintext in the write buffer as
# for any connection (no writev fast path); the flush at the end of the
# pass encrypts all of it with one SSL_write (records of up to 16 KiB) and
# sends the outgoing BIO with one ``send``; what the kernel did not take
# stays in the BIO (sent from there, no copy of our own) and counts in the
# write-buffer size that drives pause_writing/resume_writing.
#
# The life of a TLS connection:
#   accept (after the PROXY header, if any)
#     -> handshake (T_HANDSHAKE, deadline D_HANDSHAKE = accept +
#        ssl_handshake_timeout, never moved by bytes; no handler yet)
#        -> failed / closed / timed out: closed, logged (rate-limited),
#           counted (tls_handshake_errors / tls_handshake_timeouts)
#        -> done: tls_handshakes, then the factory (verify_request, the
#           handler), connection_made, the frames that came with it
#     -> open: as a plain connection, on the decrypted bytes
#     -> close(): the write buffer, then close_notify (SSL_shutdown), sent;
#        then wait for the peer's close_notify or end of stream (T_TLS_SHUT,
#        deadline ssl_shutdown_timeout from the moment everything was sent,
#        tls_shutdown_timeouts), then the fd is closed; abort() and a
#        failed connection send no close_notify.
#   A record-layer failure after the handshake (a bad MAC, an alert, a
#   renegotiation attempt) closes that connection: tls_errors.

import ssl as _ssl_mod

cdef extern from *:
    """
    #include <dlfcn.h>
    #include <errno.h>

    /* libssl as the ssl module's shared object sees it (dlsym). */
    typedef struct {
        int (*SSL_read_ex)(void *, void *, size_t, size_t *);
        int (*SSL_write_ex)(void *, const void *, size_t, size_t *);
        int (*SSL_get_error)(const void *, int);
        int (*SSL_pending)(const void *);
        int (*SSL_shutdown)(void *);
        void *(*SSL_get_rbio)(const void *);
        void *(*SSL_get_wbio)(const void *);
        int (*BIO_write)(void *, const void *, int);
        int (*BIO_read)(void *, void *, int);
        long (*BIO_ctrl)(void *, int, long, void *);
        size_t (*BIO_ctrl_pending)(void *);
        unsigned long (*ERR_get_error)(void);
        void (*ERR_error_string_n)(unsigned long, char *, size_t);
        void (*ERR_clear_error)(void);
    } cs_ossl_t;
    static cs_ossl_t cs_ossl;
    static int cs_ossl_loaded = 0;

    /* Look the functions up in the object at `path` (already loaded: the
       ssl module's _ssl extension; NULL: the program itself, where _ssl is
       built in).  Returns NULL, or why not. */
    static const char *cs_ossl_load(const char *path) {
        void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
        if (h == NULL) return "the ssl module's shared object is not loaded";
    #define CS_SYM(name) \\
        if ((*(void **)&cs_ossl.name = dlsym(h, #name)) == NULL) \\
            return #name " is not exported by the ssl module's libssl";
        CS_SYM(SSL_read_ex) CS_SYM(SSL_write_ex) CS_SYM(SSL_get_error)
        CS_SYM(SSL_pending) CS_SYM(SSL_shutdown) CS_SYM(SSL_get_rbio)
        CS_SYM(SSL_get_wbio) CS_SYM(BIO_write) CS_SYM(BIO_read) CS_SYM(BIO_ctrl)
        CS_SYM(BIO_ctrl_pending) CS_SYM(ERR_get_error) CS_SYM(ERR_error_string_n)
        CS_SYM(ERR_clear_error)
    #undef CS_SYM
        cs_ossl_loaded = 1;
        return NULL;
    }

    /* Empty this thread's OpenSSL error queue before a call into the ssl
       module (the "python" engine, the handshake), where libssl is
       reachable: CPython does not, and SSL_get_error reads the queue. */
    static void cs_ossl_clear(void) { if (cs_ossl_loaded) cs_ossl.ERR_clear_error(); }

    /* The C layout of the ssl module's objects (Modules/_ssl.c), the
       leading fields only: unchanged from CPython 3.9 to 3.15. */
    typedef struct { PyObject_HEAD PyObject *Socket; void *ssl; } cs_pysslsocket_t;
    typedef struct { PyObject_HEAD void *bio; } cs_pymembio_t;
    static void *cs_ssl_of(PyObject *o) { return ((cs_pysslsocket_t *)o)->ssl; }
    static void *cs_bio_of(PyObject *o) { return ((cs_pymembio_t *)o)->bio; }

    #define CS_SSL_ERROR_SSL 1
    #define CS_SSL_ERROR_WANT_READ 2
    #define CS_SSL_ERROR_WANT_WRITE 3
    #define CS_SSL_ERROR_SYSCALL 5
    #define CS_SSL_ERROR_ZERO_RETURN 6
    #define CS_BIO_CTRL_INFO 3

    /* Decrypt into buf[:n]: every complete record buffered, until buf is
       full.  Returns the bytes read (>= 0), or -1 if the peer's close_notify
       came and nothing was read, or -2 on a failure (*why: OpenSSL's
       reason, or an SSL_get_error code as text). */
    static Py_ssize_t cs_ossl_read(void *ssl, char *buf, Py_ssize_t n, int *eof,
                                   char *why, size_t whylen) {
        Py_ssize_t total = 0;
        size_t got;
        int e;
        /* SSL_get_error reads this thread's error queue first: an error
           other code on the loop's thread left there (a C extension, a
           handler) would read as a failure of this connection */
        cs_ossl.ERR_clear_error();
        while (total < n) {
            if (cs_ossl.SSL_read_ex(ssl, buf + total, (size_t)(n - total), &got)) {
                total += (Py_ssize_t)got;
                continue;
            }
            e = cs_ossl.SSL_get_error(ssl, 0);
            if (e == CS_SSL_ERROR_WANT_READ || e == CS_SSL_ERROR_WANT_WRITE) break;
            if (e == CS_SSL_ERROR_ZERO_RETURN) { *eof = 1; break; }
            {
                unsigned long code = cs_ossl.ERR_get_error();
                if (code) cs_ossl.ERR_error_string_n(code, why, whylen);
                else snprintf(why, whylen, "SSL_read failed (SSL_get_error %d)", e);
                cs_ossl.ERR_clear_error();
            }
            return -2;
        }
        if (total == 0 && *eof) return -1;
        return total;
    }

    /* Encrypt p[:n] (a memory BIO takes everything).  0, or -1 (*why). */
    static int cs_ossl_write(void *ssl, const char *p, Py_ssize_t n, char *why, size_t whylen) {
        size_t done;
        int e;
        cs_ossl.ERR_clear_error();   /* as in cs_ossl_read */
        while (n > 0) {
            if (cs_ossl.SSL_write_ex(ssl, p, (size_t)n, &done)) {
                p += done;
                n -= (Py_ssize_t)done;
                continue;
            }
            e = cs_ossl.SSL_get_error(ssl, 0);
            {
                unsigned long code = cs_ossl.ERR_get_error();
                if (code) cs_ossl.ERR_error_string_n(code, why, whylen);
                else snprintf(why, whylen, "SSL_write failed (SSL_get_error %d)", e);
                cs_ossl.ERR_clear_error();
            }
            return -1;
        }
        return 0;
    }

    /* Send what the outgoing BIO holds: straight from its memory, then
       consume what the kernel took (into `scratch`, a throwaway buffer of
       `scratch_len` bytes).  Returns the bytes sent, or -1 (errno). */
    static Py_ssize_t cs_ossl_send(void *wbio, int fd, char *scratch, Py_ssize_t scratch_len) {
        Py_ssize_t sent = 0;
        for (;;) {
            char *p = NULL;
            long len = cs_ossl.BIO_ctrl(wbio, CS_BIO_CTRL_INFO, 0, (void *)&p);
            ssize_t r, left;
            if (len <= 0 || p == NULL) return sent;
            r = send(fd, p, (size_t)len, MSG_NOSIGNAL);
            if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return sent;
                return -1;
            }
            sent += r;
            for (left = r; left > 0; ) {   /* p is invalid from here on */
                int chunk = left > scratch_len ? (int)scratch_len : (int)left;
                int got = cs_ossl.BIO_read(wbio, scratch, chunk);
                if (got <= 0) return sent;
                left -= got;
            }
            if (r < len) return sent;      /* the kernel is full */
        }
    }

    static void cs_set_errno(int e) { errno = e; }
    """
    ctypedef struct cs_ossl_t:
        int (*SSL_pending)(const void *)
        int (*SSL_shutdown)(void *)
        void *(*SSL_get_rbio)(const void *)
        void *(*SSL_get_wbio)(const void *)
        int (*BIO_write)(void *, const void *, int)
        size_t (*BIO_ctrl_pending)(void *)
        void (*ERR_clear_error)()
    cs_ossl_t cs_ossl
    const char *cs_ossl_load(const char *path)
    void *cs_ssl_of(object o)
    void *cs_bio_of(object o)
    Py_ssize_t cs_ossl_read(void *ssl, char *buf, Py_ssize_t n, int *eof,
                            char *why, size_t whylen)
    int cs_ossl_write(void *ssl, const char *p, Py_ssize_t n, char *why, size_t whylen)
    Py_ssize_t cs_ossl_send(void *wbio, int fd, char *scratch, Py_ssize_t scratch_len)
    void cs_set_errno(int e)
    void cs_ossl_clear()

from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.buffer cimport PyBUF_WRITE, PyBUF_READ

from _ssl import _SSLSocket

TLS_ENGINES = ("openssl", "python")

# Ciphertext is fed to a connection's incoming BIO at most this much at a
# time (a full record and its header), and plaintext encrypted while its
# outgoing BIO holds less than TLS_OUT_MAX: OpenSSL's memory BIOs never give
# memory back, so these bound what an idle TLS connection keeps.
cdef Py_ssize_t TLS_FEED = 16384 + 2048
cdef Py_ssize_t TLS_OUT_MAX = 131072
# None: not tried yet; "": loaded; else why the "openssl" engine is not here
cdef object _ossl_state = None


def tls_engine_available():
    """``(True, "")`` if the "openssl" engine can run (libssl found through
    the ssl module), else ``(False, why)``."""
    global _ossl_state
    cdef const char *why
    cdef bytes path
    if _ossl_state is None:
        import _ssl
        f = getattr(_ssl, "__file__", None)
        if f is None:
            why = cs_ossl_load(NULL)
        else:
            path = os.fsencode(f)
            why = cs_ossl_load(path)
        _ossl_state = "" if why == NULL else why.decode("utf-8", "replace")
    return (_ossl_state == "", _ossl_state)


def _choose_tls_engine():
    """The engine of a loop given an ssl_context: ``CSERVER_TLS_ENGINE``
    ("openssl" or "python") if set, else "openssl" where it can run."""
    wanted = os.environ.get("CSERVER_TLS_ENGINE", "").strip().lower()
    if wanted and wanted not in TLS_ENGINES:
        raise ValueError("CSERVER_TLS_ENGINE must be 'openssl' or 'python', not %r" % (wanted,))
    ok, why = tls_engine_available()
    if wanted == "openssl" and not ok:
        raise RuntimeError("CSERVER_TLS_ENGINE=openssl, but %s" % why)
    if wanted == "python" or not ok:
        if not ok and not wanted:
            _log.debug("TLS engine 'python': %s", why)
        return "python"
    return "openssl"


cdef int _configure_tls(Loop loop, object ctx, double handshake_timeout,
                        double shutdown_timeout) except -1:
    if ctx is not None:
        if not isinstance(ctx, _ssl_mod.SSLContext):
            raise TypeError("ssl_context must be an ssl.SSLContext, not %s" % type(ctx).__name__)
        if not handshake_timeout > 0:
            raise ValueError("ssl_handshake_timeout must be a positive number of seconds, "
                             "not %r" % (handshake_timeout,))
        if not shutdown_timeout > 0:
            raise ValueError("ssl_shutdown_timeout must be a positive number of seconds, "
                             "not %r" % (shutdown_timeout,))
        loop.tls_fast = _choose_tls_engine() == "openssl"
        _refuse_renegotiation(ctx)
        if loop.tls_slab == NULL:
            loop.tls_slab = <char *>PyMem_Malloc(loop.slab_size)
            if loop.tls_slab == NULL:
                raise MemoryError()
    loop.ssl_context = ctx
    loop.ssl_handshake_timeout = handshake_timeout
    loop.ssl_shutdown_timeout = shutdown_timeout
    return 0


# OpenSSL 3's SSL_OP_ALLOW_CLIENT_RENEGOTIATION (ssl does not name it)
cdef long long _OP_ALLOW_CLIENT_RENEGOTIATION = 1 << 8


def _refuse_renegotiation(ctx):
    """No client-initiated renegotiation on this context (a full handshake
    at the peer's will, mid-stream; TLS 1.3 has none): OpenSSL 3 refuses it
    unless SSL_OP_ALLOW_CLIENT_RENEGOTIATION is set, which is cleared here
    (the attempt is then a fatal no_renegotiation alert: tls_errors);
    OpenSSL 1.1.1 allows it by default, so ssl.OP_NO_RENEGOTIATION is set
    there (a warning alert, the connection goes on un-renegotiated)."""
    if _ssl_mod.OPENSSL_VERSION_INFO >= (3,):
        if ctx.options & _OP_ALLOW_CLIENT_RENEGOTIATION:
            ctx.options &= ~_OP_ALLOW_CLIENT_RENEGOTIATION
    elif hasattr(_ssl_mod, "OP_NO_RENEGOTIATION"):
        ctx.options |= _ssl_mod.OP_NO_RENEGOTIATION


cdef object _ssl_error(const char *why):
    return _ssl_mod.SSLError(why.decode("utf-8", "replace"))


@cython.final
cdef class TLSConn:
    """The TLS state of one connection (internal): its SSLObject, BIOs and,
    for the "openssl" engine, their C pointers."""

    cdef int start(self, Loop loop) except -1:
        cdef void *rb
        cdef void *wb
        self.inbio = _ssl_mod.MemoryBIO()
        self.outbio = _ssl_mod.MemoryBIO()
        self.sslobj = loop.ssl_context.wrap_bio(self.inbio, self.outbio, server_side=True)
        self.fast = False
        c = getattr(self.sslobj, "_sslobj", None)
        if loop.tls_fast and type(c) is _SSLSocket:
            # (a context's own sslobject_class may hold anything there: then
            # this connection takes the "python" engine)
            self.ssl = cs_ssl_of(c)
            rb = cs_bio_of(self.inbio)
            wb = cs_bio_of(self.outbio)
            if self.ssl != NULL and cs_ossl.SSL_get_rbio(self.ssl) == rb \
                    and cs_ossl.SSL_get_wbio(self.ssl) == wb:
                self.rbio = rb
                self.wbio = wb
                self.fast = True
            else:
                # not the layout this engine knows: this loop falls back
                loop.tls_fast = False
                self.ssl = NULL
                loop.logger.warning("TLS: the ssl module's objects are not laid out as "
                                    "expected; using the 'python' engine")
        return 0

    cdef int feed(self, const char *p, Py_ssize_t n) except -1:
        """Ciphertext received: into the incoming BIO."""
        if self.fast:
            if cs_ossl.BIO_write(self.rbio, p, <int>n) != n:
                raise MemoryError("BIO_write of %d bytes failed" % n)
            return 0
        self.inbio.write(PyBytes_FromStringAndSize(p, n))
        return 0

    cdef Py_ssize_t read(self, char *buf, Py_ssize_t n) except -2:
        """Plaintext into ``buf[:n]`` from the records buffered: the count
        (0: none complete), or -1 once the peer's close_notify came.  A
        protocol failure raises ssl.SSLError."""
        cdef char why[256]
        cdef int eof = 0
        cdef Py_ssize_t r, total = 0
        if self.eof:
            return -1
        if self.fast:
            r = cs_ossl_read(self.ssl, buf, n, &eof, why, sizeof(why))
            if eof:
                self.eof = True
            if r == -2:
                raise _ssl_error(why)
            self.drained = r < n
            return r
        cs_ossl_clear()
        read = self.sslobj.read
        while total < n:
            try:
                r = read(n - total, PyMemoryView_FromMemory(buf + total, n - total, PyBUF_WRITE))
            except _ssl_mod.SSLWantReadError:
                break
            except _ssl_mod.SSLZeroReturnError:
                self.eof = True
                break
            if r == 0:
                self.eof = True
                break
            total += r
        self.drained = total < n
        if total == 0 and self.eof:
            return -1
        return total

    cdef bint more(self) except -1:
        """Bytes left in the TLS buffers (plaintext or ciphertext)?"""
        if self.fast:
            return cs_ossl.SSL_pending(self.ssl) > 0 or cs_ossl.BIO_ctrl_pending(self.rbio) > 0
        return self.sslobj.pending() > 0 or self.inbio.pending > 0

    cdef int write(self, const char *p, Py_ssize_t n) except -1:
        """Encrypt ``p[:n]`` into the outgoing BIO."""
        cdef char why[256]
        if n <= 0:
            # (Python 3.9's SSLObject.write(b"") raises SSLEOFError)
            return 0
        if self.fast:
            if cs_ossl_write(self.ssl, p, n, why, sizeof(why)) < 0:
                raise _ssl_error(why)
            return 0
        cs_ossl_clear()
        self.sslobj.write(PyMemoryView_FromMemory(<char *>p, n, PyBUF_READ))
        return 0

    cdef Py_ssize_t out_pending(self) except -1:
        """Ciphertext not sent yet."""
        if self.fast:
            return cs_ossl.BIO_ctrl_pending(self.wbio)
        return self.outbio.pending + (0 if self.tail is None else
                                      PyBytes_GET_SIZE(self.tail) - self.tail_off)

    cdef Py_ssize_t send_out(self, int fd, char *scratch, Py_ssize_t scratch_len) except -2:
        """Send the ciphertext queued: the bytes sent, or -1 (errno set)."""
        cdef ssize_t r
        cdef Py_ssize_t sent = 0, left
        if self.fast:
            return cs_ossl_send(self.wbio, fd, scratch, scratch_len)
        while True:
            if self.tail is None:
                if not self.outbio.pending:
                    return sent
                self.tail = self.outbio.read()
                self.tail_off = 0
            left = PyBytes_GET_SIZE(self.tail) - self.tail_off
            r = send(fd, PyBytes_AS_STRING(self.tail) + self.tail_off, left, MSG_NOSIGNAL)
            if r < 0:
                if errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR:
                    return sent
                return -1
            sent += r
            if r < left:
                self.tail_off += r
                return sent
            self.tail = None

    cdef bint handshake(self) except -1:
        """One step of the handshake: True once done; ssl.SSLError (or
        OSError) if it failed."""
        cs_ossl_clear()
        try:
            self.sslobj.do_handshake()
        except _ssl_mod.SSLWantReadError:
            return False
        return True

    cdef int shutdown(self) except -1:
        """Queue our close_notify (after everything written before it)."""
        if self.fast:
            cs_ossl.SSL_shutdown(self.ssl)
            cs_ossl.ERR_clear_error()
            return 0
        cs_ossl_clear()
        try:
            self.sslobj.unwrap()
        except (_ssl_mod.SSLWantReadError, _ssl_mod.SSLError, ValueError):
            pass
        return 0

    cdef int release(self) except -1:
        self.ssl = self.rbio = self.wbio = NULL
        self.fast = False
        self.tail = None
        return 0


_TLS_EXTRA = frozenset(("ssl_object", "peercert", "cipher", "compression", "sslcontext"))


cdef object _tls_extra_info(Transport t, str name, object default):
    """``get_extra_info`` of the TLS names, as asyncio's."""
    if t.tls is None:
        return default
    sslobj = t.tls.sslobj
    if name == "ssl_object":
        return sslobj
    if name == "sslcontext":
        return sslobj.context
    if t.flags & T_HANDSHAKE:
        return default
    if name == "peercert":
        return sslobj.getpeercert()
    if name == "cipher":
        return sslobj.cipher()
    return sslobj.compression()
