# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The event loop of the multiplexing server, in C.

One thread, one poller (epoll on Linux; a ``selectors`` selector when forced
or where epoll does not exist), level-triggered.  A loop pass is:

1. wait for events (epoll_wait into a C array: no Python object per event);
2. for each ready fd: accept a batch of connections (accept4, non-blocking,
   close-on-exec, TCP_NODELAY), or ``recv`` into the shared receive slab and
   call the handler once per complete frame (framed) or once per read (raw),
   or drain a batch of datagrams;
3. run the callbacks queued with ``call_soon``/``call_soon_threadsafe`` and
   the due timers; close idle connections;
4. flush: every connection written to during the pass gets one ``send`` of
   its whole write buffer (replies of one pass are batched); unsent data
   stays buffered and the fd waits for writability.

The module is one extension split by concern (``_loop.pxd`` describes the
layout and the write path): ``_poller.pxi`` (epoll and selectors),
``_handles.pxi`` (the handle base, the waker), ``_transport.pxi``
(connections), ``_listener.pxi`` (accept), ``_datagram.pxi`` (UDP),
``_timers.pxi`` (timer handles), and here the scheduling ``Loop``.

Frames are decoded by the framing layer's C decoder (``cimport`` of
``cserver._framing.FrameDecoder.next_frame``; each connection's decoder is a
``clone()`` of the validated prototype given to ``configure``): a
read lands in the shared slab, complete frames are found in place, and what
remains of an incomplete frame moves to a buffer from the decoder's pool
(sized to the announced frame), where the next reads of that connection land
directly (``get_write_buffer``/``write_done``), so a large frame is copied
once.  Headers of replies are written by ``FrameEncoder.write_header``.
Write buffers are per
connection; above ``high_water`` the handler gets ``pause_writing()`` and the
loop stops reading from that peer until the buffer drains below
``low_water`` (``resume_writing()``): a slow reader cannot grow the server
without bound.
"""
cimport cython
from cpython.bytes cimport (PyBytes_FromStringAndSize, PyBytes_AS_STRING,
                            PyBytes_GET_SIZE)
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.exc cimport PyErr_CheckSignals
from cpython.object cimport Py_SIZE
from libc.string cimport memcpy, memmove, strerror
from libc.stdint cimport uint32_t, uint64_t
from libc.errno cimport (errno, EAGAIN, EINTR, EMFILE, ENFILE,
                         ENOBUFS, ENOMEM, ECONNABORTED, EPROTO, EPERM)
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from posix.uio cimport iovec, readv, writev
from posix.unistd cimport close as c_close, read as c_read, write as c_write

from cserver._framing cimport FrameDecoder, FrameEncoder
from cserver._proxy cimport ProxyParser, new_parser
from cserver.errors import FrameError

import collections
import heapq
import logging
import os
import signal
import socket
import sys
import threading

include "_inet.pxi"

cdef extern from *:
    """
    #include <stddef.h>
    #include <sys/types.h>
    #include <sys/socket.h>
    #include <sys/uio.h>
    #include <sys/un.h>
    #include <netinet/in.h>
    #include <netinet/tcp.h>
    #include <arpa/inet.h>
    #include <fcntl.h>
    #include <errno.h>
    #include <stdint.h>
    #ifdef __linux__
    #include <sys/epoll.h>
    #define CS_HAVE_EPOLL 1
    #else
    #define CS_HAVE_EPOLL 0
    #define EPOLLIN 0x001
    #define EPOLLOUT 0x004
    #define EPOLLERR 0x008
    #define EPOLLHUP 0x010
    #define EPOLL_CTL_ADD 1
    #define EPOLL_CTL_DEL 2
    #define EPOLL_CTL_MOD 3
    #define EPOLL_CLOEXEC 0
    typedef union epoll_data { void *ptr; int fd; uint32_t u32; uint64_t u64; } epoll_data_t;
    struct epoll_event { uint32_t events; epoll_data_t data; };
    static int epoll_create1(int f) { (void)f; errno = ENOSYS; return -1; }
    static int epoll_ctl(int a, int b, int c, struct epoll_event *e) {
        (void)a; (void)b; (void)c; (void)e; errno = ENOSYS; return -1; }
    static int epoll_wait(int a, struct epoll_event *e, int n, int t) {
        (void)a; (void)e; (void)n; (void)t; errno = ENOSYS; return -1; }
    #endif
    #ifndef MSG_NOSIGNAL
    #define MSG_NOSIGNAL 0
    #endif

    static int cs_accept(int fd, struct sockaddr_storage *ss, socklen_t *len) {
        *len = sizeof(*ss);
    #if defined(__linux__)
        return accept4(fd, (struct sockaddr *)ss, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    #else
        int c = accept(fd, (struct sockaddr *)ss, len);
        if (c >= 0) {
            fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK);
            fcntl(c, F_SETFD, FD_CLOEXEC);
        }
        return c;
    #endif
    }

    static void cs_nodelay(int fd) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }

    static int cs_sock_error(int fd) {
        int err = 0; socklen_t n = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &n) < 0) return errno;
        return err;
    }

    /* The address tuple the socket module would give for this sockaddr. */
    static PyObject *cs_addr_to_py(struct sockaddr_storage *ss, socklen_t len) {
        char host[INET6_ADDRSTRLEN + 1];
        if (len == 0) return PyUnicode_FromString("");
        if (ss->ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)ss;
            PyObject *h, *p, *t;
            int n = cs_fmt_ipv4((const unsigned char *)&a->sin_addr, host);
            h = PyUnicode_DecodeASCII(host, n, NULL);
            if (h == NULL) return NULL;
            p = PyLong_FromLong((long)ntohs(a->sin_port));
            if (p == NULL) { Py_DECREF(h); return NULL; }
            t = PyTuple_New(2);
            if (t == NULL) { Py_DECREF(h); Py_DECREF(p); return NULL; }
            PyTuple_SET_ITEM(t, 0, h);
            PyTuple_SET_ITEM(t, 1, p);
            return t;
        }
        if (ss->ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
            inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
            return Py_BuildValue("(siII)", host, (int)ntohs(a->sin6_port),
                                 (unsigned int)ntohl(a->sin6_flowinfo),
                                 (unsigned int)a->sin6_scope_id);
        }
        if (ss->ss_family == AF_UNIX) {
            struct sockaddr_un *a = (struct sockaddr_un *)ss;
            Py_ssize_t off = (Py_ssize_t)offsetof(struct sockaddr_un, sun_path);
            Py_ssize_t n = (Py_ssize_t)len - off;
            if (n <= 0) return PyUnicode_FromString("");
            if (a->sun_path[0] == 0)  /* abstract namespace: bytes, as socket does */
                return PyBytes_FromStringAndSize(a->sun_path, n);
            return PyUnicode_DecodeFSDefault(a->sun_path);
        }
        Py_RETURN_NONE;
    }

    /* recvmmsg: up to CS_MMSG_N datagrams (each up to 64 KiB) per syscall */
    #define CS_MMSG_N 16
    #define CS_MMSG_SIZE 65536
    #ifdef __linux__
    typedef struct {
        struct mmsghdr msgs[CS_MMSG_N];
        struct iovec iov[CS_MMSG_N];
        struct sockaddr_storage addrs[CS_MMSG_N];
        char data[CS_MMSG_N][CS_MMSG_SIZE];
    } cs_mmsg_t;
    static int cs_recvmmsg(int fd, cs_mmsg_t *m) {
        int i;
        memset(m->msgs, 0, sizeof(m->msgs));
        for (i = 0; i < CS_MMSG_N; i++) {
            m->iov[i].iov_base = m->data[i];
            m->iov[i].iov_len = CS_MMSG_SIZE;
            m->msgs[i].msg_hdr.msg_name = &m->addrs[i];
            m->msgs[i].msg_hdr.msg_namelen = sizeof(m->addrs[i]);
            m->msgs[i].msg_hdr.msg_iov = &m->iov[i];
            m->msgs[i].msg_hdr.msg_iovlen = 1;
        }
        return recvmmsg(fd, m->msgs, CS_MMSG_N, MSG_DONTWAIT, NULL);
    }
    static Py_ssize_t cs_mmsg_len(cs_mmsg_t *m, int i) { return (Py_ssize_t)m->msgs[i].msg_len; }
    static socklen_t cs_mmsg_addrlen(cs_mmsg_t *m, int i) { return m->msgs[i].msg_hdr.msg_namelen; }
    #else
    typedef struct {
        struct sockaddr_storage addrs[CS_MMSG_N];
        char data[CS_MMSG_N][CS_MMSG_SIZE];
    } cs_mmsg_t;
    static int cs_recvmmsg(int fd, cs_mmsg_t *m) { (void)fd; (void)m; errno = ENOSYS; return -1; }
    static Py_ssize_t cs_mmsg_len(cs_mmsg_t *m, int i) { (void)m; (void)i; return 0; }
    static socklen_t cs_mmsg_addrlen(cs_mmsg_t *m, int i) { (void)m; (void)i; return 0; }
    #endif
    static char *cs_mmsg_data(cs_mmsg_t *m, int i) { return m->data[i]; }
    static struct sockaddr_storage *cs_mmsg_addr(cs_mmsg_t *m, int i) { return &m->addrs[i]; }

    static ssize_t cs_sendto(int fd, const char *buf, size_t n,
                             struct sockaddr_storage *ss, socklen_t len) {
        return sendto(fd, buf, n, MSG_NOSIGNAL, (struct sockaddr *)ss, len);
    }

    static ssize_t cs_recvfrom(int fd, char *buf, size_t n,
                               struct sockaddr_storage *ss, socklen_t *len) {
        *len = sizeof(*ss);
        return recvfrom(fd, buf, n, 0, (struct sockaddr *)ss, len);
    }
    """
    int CS_HAVE_EPOLL
    int EWOULDBLOCK
    int EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP
    int EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD, EPOLL_CLOEXEC
    int MSG_NOSIGNAL
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *ev)
    int epoll_wait(int epfd, epoll_event *evs, int maxevents, int timeout) nogil
    ctypedef unsigned int socklen_t
    struct sockaddr_storage:
        pass
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int cs_accept(int fd, sockaddr_storage *ss, socklen_t *len)
    void cs_nodelay(int fd)
    int cs_sock_error(int fd)
    object cs_addr_to_py(sockaddr_storage *ss, socklen_t len)
    ssize_t cs_recvfrom(int fd, char *buf, size_t n, sockaddr_storage *ss, socklen_t *len)
    ssize_t cs_sendto(int fd, const char *buf, size_t n, sockaddr_storage *ss, socklen_t len)
    int CS_MMSG_N
    ctypedef struct cs_mmsg_t:
        pass
    int cs_recvmmsg(int fd, cs_mmsg_t *m)
    Py_ssize_t cs_mmsg_len(cs_mmsg_t *m, int i)
    socklen_t cs_mmsg_addrlen(cs_mmsg_t *m, int i)
    char *cs_mmsg_data(cs_mmsg_t *m, int i)
    sockaddr_storage *cs_mmsg_addr(cs_mmsg_t *m, int i)
    int ENOSYS


HAVE_EPOLL = bool(CS_HAVE_EPOLL)

# Above this size a payload is not copied into the write buffer: it goes out
# with writev (pending bytes, header, payload) and only what the kernel did
# not take is buffered.
cdef Py_ssize_t DIRECT_WRITE = 65536
# Write buffers larger than this are freed once drained.
cdef Py_ssize_t KEEP_WBUF = 262144
# An empty write buffer is kept while its connection is busy (no malloc per
# reply) and released once the connection has been quiet this long, so that
# thousands of idle connections do not each hold one (bench: idle RSS).
cdef double TRIM_AFTER = 1.0
# Datagrams read per readiness event.
cdef int DGRAM_BATCH = 64

cdef object _log = logging.getLogger("cserver.selectorserver")


cdef inline double _monotonic() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef object _current_exception():
    return sys.exc_info()[1]


cdef object _oserror(int err):
    return OSError(err, strerror(err).decode("utf-8", "replace"))


include "_poller.pxi"
include "_handles.pxi"
include "_tls.pxi"
include "_transport.pxi"
include "_listener.pxi"
include "_proxystage.pxi"
include "_datagram.pxi"
include "_timers.pxi"
include "_metrics.pxi"


@cython.final
cdef class Loop:
    """The event loop core (internal): schedules, the handles do the I/O.
    ``kind`` is ``"epoll"`` or ``"selectors"``."""

    def __init__(self, kind="epoll", Py_ssize_t read_size=262144, int max_events=512):
        if kind not in ("epoll", "selectors"):
            raise ValueError("loop kind must be 'epoll' or 'selectors', not %r" % (kind,))
        if kind == "epoll" and not CS_HAVE_EPOLL:
            raise OSError("epoll is not available on this platform")
        self.objs = []
        self.listeners = []
        self.endpoints = []
        self.metrics_listeners = []
        self.resumed = []
        self.tls_ready = []
        self.recent_addrs = []
        self.ready = collections.deque()
        self.timers = Timers()
        self.slab_size = max(read_size, 4096)
        self.slab = <char *>PyMem_Malloc(self.slab_size)
        if self.slab == NULL:
            raise MemoryError()
        poller_type = EpollPoller if kind == "epoll" else SelectorsPoller
        self.poller = poller_type.__new__(poller_type, max_events)
        self.waker = _new_waker(self)
        self._register(self.waker)
        self.poller.add(self.waker.fd, EPOLLIN)
        self.waker.events = EPOLLIN
        # defaults (configure() overrides)
        self.logger = _log
        self.nodelay = True
        self.high_water = 65536
        self.low_water = 16384
        self.drain_timeout = 5.0
        self.accept_batch = 128
        self.now = _monotonic()
        self.next_idle_check = 1e18

    def __dealloc__(self):
        if self.mmsg != NULL:
            PyMem_Free(self.mmsg)
        if self.slab != NULL:
            PyMem_Free(self.slab)
        if self.trusted != NULL:
            PyMem_Free(self.trusted)
        if self.tls_slab != NULL:
            PyMem_Free(self.tls_slab)

    @property
    def kind(self):
        return "epoll" if type(self.poller) is EpollPoller else "selectors"

    def configure(self, factory, on_error, *, decoder=None, encoder=None,
                  pool=None, bint nodelay=True, max_connections=None, idle_timeout=None,
                  frame_timeout=None, first_byte_timeout=None,
                  Py_ssize_t high_water=65536, low_water=None,
                  double drain_timeout=5.0, int accept_batch=128, logger=None,
                  proxy_protocol=None, trusted_proxies=(), double proxy_header_timeout=3.0,
                  ssl_context=None, double ssl_handshake_timeout=10.0,
                  double ssl_shutdown_timeout=5.0):
        """Set the knobs, once, before ``run()``.

        ``factory(transport, client_address)`` returns the handler of a new
        connection (or None to refuse it); ``on_error(request, address)``
        is called inside ``except`` blocks.  Framed mode: give ``decoder``
        (a ``cserver._framing.FrameDecoder`` prototype, already validated:
        each connection gets its ``clone()``), ``encoder`` (a
        ``cserver._framing.FrameEncoder``) and the decoders' ``pool`` (a
        ``cserver._framing.BufferPool``, for ``stats()``).

        Deadlines (seconds; None or 0 turns one off): ``idle_timeout``
        (no I/O at all), ``first_byte_timeout`` (from accept to the first
        byte received), ``frame_timeout`` (framed mode: from the first byte
        of a frame to its last); the last two are not reset by bytes that
        trickle in.

        PROXY protocol: ``proxy_protocol`` (None, "v1", "v2" or "any"):
        every connection of a listener added afterwards must start with a
        header of that version, read before the factory runs, within
        ``proxy_header_timeout`` seconds of accept; a TCP peer outside the
        ``trusted_proxies`` networks is closed at accept.

        TLS: ``ssl_context`` (a server-side ``ssl.SSLContext``): every
        connection of a listener added afterwards is TLS (after its PROXY
        header, if any); its handshake must be done within
        ``ssl_handshake_timeout`` seconds of accept, and the factory runs
        once it is; ``close()`` waits up to ``ssl_shutdown_timeout`` seconds
        for the peer's close_notify (see ``_tls.pxi``)."""
        if decoder is not None and not isinstance(decoder, FrameDecoder):
            raise TypeError("decoder must be a cserver._framing.FrameDecoder prototype, "
                            "not %s" % type(decoder).__name__)
        if encoder is not None and not isinstance(encoder, FrameEncoder):
            raise TypeError("encoder must be a cserver._framing.FrameEncoder")
        self.factory = factory
        self.on_error = on_error
        self.framed = decoder is not None
        self.decoder = decoder
        self.enc = encoder
        self.pool = pool
        self.nodelay = nodelay
        self.max_connections = _at_least_zero("max_connections", max_connections)
        self.idle_timeout = _at_least_zero("idle_timeout", idle_timeout)
        self.frame_timeout = _at_least_zero("frame_timeout", frame_timeout)
        self.first_byte_timeout = _at_least_zero("first_byte_timeout", first_byte_timeout)
        self.high_water = high_water
        self.low_water = high_water // 4 if low_water is None else low_water
        if not self.high_water >= self.low_water >= 0:
            raise ValueError("high_water (%r) must be >= low_water (%r) must be >= 0"
                             % (self.high_water, self.low_water))
        _configure_proxy(self, proxy_protocol, trusted_proxies, proxy_header_timeout)
        _configure_tls(self, ssl_context, ssl_handshake_timeout, ssl_shutdown_timeout)
        self.drain_timeout = drain_timeout
        self.accept_batch = max(accept_batch, 1)
        if logger is not None:
            self.logger = logger
        self.next_idle_check = _monotonic() + _idle_period(self)

    # -- handles -----------------------------------------------------------------

    cdef int _register(self, Handle h) except -1:
        if h.fd >= len(self.objs):
            self.objs.extend([None] * (h.fd + 1 - len(self.objs) + 64))
        self.objs[h.fd] = h
        return 0

    cdef int _forget(self, Handle h) except -1:
        if h.fd < len(self.objs) and self.objs[h.fd] is h:
            self.objs[h.fd] = None
        return 0

    cdef list _transports(self):
        """The transports not closed yet (a new list: closing one while
        iterating is safe)."""
        return [obj for obj in self.objs
                if type(obj) is Transport and (<Transport>obj).state != S_CLOSED]

    def add_listener(self, sock, proxy=None, tls=None):
        """Accept connections from a listening socket (kept open by the
        caller, who also closes it).  ``proxy``: its connections start with
        a PROXY header (None: if ``configure`` set ``proxy_protocol``);
        ``tls``: they are TLS (None: if ``configure`` set ``ssl_context``)."""
        cdef Listener ls
        if proxy is None:
            proxy = self.proxy_mode is not None
        elif proxy and self.proxy_mode is None:
            raise ValueError("add_listener(proxy=True) needs configure(proxy_protocol=...)")
        if tls is None:
            tls = self.ssl_context is not None
        elif tls and self.ssl_context is None:
            raise ValueError("add_listener(tls=True) needs configure(ssl_context=...)")
        ls = _new_listener(self, sock, proxy, tls)
        self._register(ls)
        self.listeners.append(ls)
        if not (self.accept_paused_limit or self.accept_paused_backoff or self.accept_stopped):
            ls.set_accepting(True)

    def stop_accepting(self):
        """Stop accepting for good, and go on serving the connections
        already accepted (a worker that a reload retires: the listening
        sockets stay open, in other processes too; what queues there is
        another process's to accept).  Loop thread, or before ``run()``."""
        self.accept_stopped = True
        self._set_accepting(False)

    def add_metrics_listener(self, sock, render, double timeout=5.0):
        """Serve the metrics endpoint on a listening socket (kept open by
        the caller, who also closes it): ``GET /metrics`` is answered with
        ``render()`` (bytes: the Prometheus text exposition), run on the
        loop's thread.  Each scrape connection must be done within
        ``timeout`` seconds of its accept (see ``_metrics.pxi``)."""
        cdef MetricsListener ml
        _check_callable("add_metrics_listener", render)
        if not timeout > 0:
            raise ValueError("the metrics timeout must be > 0 seconds, got %r" % (timeout,))
        ml = _new_metrics_listener(self, sock, render, timeout)
        self._register(ml)
        self.metrics_listeners.append(ml)
        if not self.stopping:
            ml.set_accepting(True)

    def add_datagram_endpoint(self, sock, handler_factory):
        """Serve a datagram socket; ``handler_factory(endpoint)`` returns the
        handler whose ``datagram_received(data, addr)`` is called."""
        cdef DatagramEndpoint ep
        if CS_HAVE_EPOLL and self.mmsg == NULL:
            self.mmsg = PyMem_Malloc(sizeof(cs_mmsg_t))
            if self.mmsg == NULL:
                raise MemoryError()
        ep = _new_endpoint(self, sock, handler_factory)
        self._register(ep)
        self.endpoints.append(ep)
        ep.start()
        return ep

    cdef int _set_accepting(self, bint on) except -1:
        cdef Listener ls
        for ls in self.listeners:
            ls.set_accepting(on)
        return 0

    cdef int _transport_closed(self) except -1:
        self.nconn -= 1
        if self.accept_paused_limit and not self.stopping and \
                self.nconn < self.max_connections:
            self.accept_paused_limit = False
            if not (self.accept_paused_backoff or self.accept_stopped):
                self._set_accepting(True)
        return 0

    # -- the guarded-call policy ---------------------------------------------------

    cdef int _user_error(self, object request, object address) except -1:
        """The one policy for an exception of user code (a handler method,
        a callback, a timer, ``error_received``, a factory), called inside
        its ``except`` block: count it, report it through ``handle_error``.
        The caller then closes what it must; the loop goes on."""
        self.handler_errors += 1
        return self._report(request, address)

    cdef int _report(self, object request, object address) except -1:
        """Call ``handle_error(request, address)`` (inside an ``except``
        block); if it raises too, log that on the loop's logger: a broken
        error hook never stops the loop."""
        try:
            self.on_error(request, address)
        except Exception:
            self.logger.exception("handle_error() raised while reporting an error "
                                  "of %r", address)
        return 0

    cdef int _call_guarded(self, fn, tuple args) except -1:
        try:
            fn(*args)
        except Exception:
            self._user_error(None, None)
        return 0

    # -- callbacks and timers ------------------------------------------------------

    def call_soon(self, fn, *args):
        """Run ``fn(*args)`` on the loop thread at the next pass."""
        _check_callable("call_soon", fn)
        self._check_open("call_soon")
        self.ready.append((fn, args))

    def call_soon_threadsafe(self, fn, *args):
        """Like ``call_soon`` but safe from any thread: wakes the loop."""
        _check_callable("call_soon_threadsafe", fn)
        # the check and the append run under the GIL with no Python code
        # between them, and close() sets ``closed`` first: a call is either
        # refused here or was queued before close() began
        self._check_open("call_soon_threadsafe")
        self.ready.append((fn, args))
        self.waker.wake()

    cdef int _check_open(self, str what) except -1:
        if self.closed:
            raise RuntimeError("%s() on a closed loop: the call would never run" % what)
        return 0

    def call_at(self, double when, fn, *args):
        """Run ``fn(*args)`` on the loop when ``time.monotonic()`` reaches
        ``when``; returns a handle with ``cancel()``.  Loop thread only."""
        _check_callable("call_at", fn)
        self._check_open("call_at")
        if when != when:  # NaN: no place in the heap (it would stall every timer)
            raise ValueError("call_at() needs a time, got when=nan")
        return self.timers.push(when, fn, args)

    def call_later(self, double delay, fn, *args):
        """Run ``fn(*args)`` on the loop after ``delay`` seconds; returns a
        handle with ``cancel()``.  Loop thread only."""
        _check_callable("call_later", fn)
        if delay != delay:
            raise ValueError("call_later() needs a delay in seconds, got delay=nan")
        return self.call_at(_monotonic() + delay, fn, *args)

    cdef int _run_ready(self) except -1:
        # only those queued before this pass: what they schedule runs next
        cdef Py_ssize_t n = Py_SIZE(self.ready)
        while n > 0:
            n -= 1
            fn, args = self.ready.popleft()
            self._call_guarded(fn, args)
        return 0

    cdef int _run_tls_ready(self) except -1:
        """Read again the TLS connections whose last read left decrypted
        bytes in their buffers (no readiness event will come for them)."""
        cdef Transport t
        cdef list batch = self.tls_ready
        self.tls_ready = []
        for obj in batch:
            t = <Transport>obj
            t.flags &= ~T_TLS_READY
            if t.state != S_OPEN or not (t.events & EPOLLIN):
                continue        # closed, paused or draining: resume_reading requeues it
            try:
                t._read()
            except Exception:
                t._failed("serving the connection")
        return 0

    cdef int _run_resumed(self) except -1:
        cdef Transport t
        cdef list batch = self.resumed
        self.resumed = []
        for obj in batch:
            t = <Transport>obj
            try:
                t._deliver_pending()
            except Exception:
                t._failed("delivering buffered frames")
        return 0

    # -- housekeeping --------------------------------------------------------------

    cdef int _housekeeping(self) except -1:
        """The deadline sweep, write-buffer trimming, the end of an accept
        backoff: each when its time has come."""
        if self.now >= self.next_idle_check:
            self._check_idle()
        if self.wbuf_bytes > 0 and self.now >= self.next_trim:
            self._trim_buffers()
        if self.accept_paused_backoff and self.now >= self.accept_resume_at and not self.stopping:
            self.accept_paused_backoff = False
            if not (self.accept_paused_limit or self.accept_stopped):
                self._set_accepting(True)
        return 0

    cdef int _check_idle(self) except -1:
        """The deadline sweep (every ``_idle_period()``): close connections
        silent for ``idle_timeout``, and those whose first-byte, frame or
        close-after-error deadline passed.  The deadlines are one double
        per transport, set in C when a connection is accepted / a frame
        starts, and never moved by the bytes of the same frame: a peer that
        trickles a byte a second cannot keep a frame open."""
        cdef Transport t
        cdef double now = self.now
        cdef double next_close = 1e18
        cdef double limit = now - self.idle_timeout if self.idle_timeout > 0 else -1e18
        self.next_idle_check = now + _idle_period(self)
        for t in self._transports():
            if t.state == S_ABORTING:
                continue
            if t.dkind == D_CLOSE and now < t.deadline < next_close:
                next_close = t.deadline
            t._check_deadlines(now, limit)
        if self.proxy_pending:
            self._check_stages(now)
        # a close-after-error deadline is kept even with every timeout off
        if next_close < self.next_idle_check:
            self.next_idle_check = next_close
        return 0

    cdef int _check_stages(self, double now) except -1:
        """Close the connections whose PROXY header is not complete within
        ``proxy_header_timeout`` of accept (bytes never move the deadline)."""
        cdef ProxyStage st
        for obj in [obj for obj in self.objs if type(obj) is ProxyStage]:
            st = <ProxyStage>obj
            if st.pending and now >= st.deadline:
                st._fail("no complete PROXY header within proxy_header_timeout (%r s)"
                         % self.proxy_header_timeout, True)
        return 0

    cdef int _close_stages(self) except -1:
        """Close the connections still reading their PROXY header or still
        in their TLS handshake (the loop stops: they never had a handler,
        and must not get one now)."""
        cdef ProxyStage st
        cdef Transport t
        if self.ssl_context is not None:
            for t in self._transports():
                if t.flags & T_HANDSHAKE:
                    t.flags &= ~T_HANDSHAKE
                    t._discard()
                    t.tls.release()
        if self.proxy_pending:
            for obj in [obj for obj in self.objs if type(obj) is ProxyStage]:
                st = <ProxyStage>obj
                if st.pending:
                    st._close()
        return 0

    cdef int _trim_buffers(self) except -1:
        """Release the empty write buffers of connections quiet for
        TRIM_AFTER seconds; runs at most once per TRIM_AFTER, and only while
        some write buffer is allocated."""
        cdef Transport t
        cdef double limit = self.now - TRIM_AFTER
        self.next_trim = self.now + TRIM_AFTER
        for t in self._transports():
            if t.wbuf != NULL and t.wend == t.wstart and t.last_active < limit:
                t._free_wbuf()
        return 0

    cdef int _timeout_ms(self) except? -2:
        """How long the next wait may block: 0 with work queued, -1 with no
        deadline at all, else until the nearest deadline."""
        cdef double deadline = 1e18, d
        # Py_SIZE of a deque is its length (no call into the deque)
        if Py_SIZE(self.ready) or self.flush_head is not None or self.resumed or self.tls_ready:
            return 0
        deadline = self.timers.next_when()
        if self.wbuf_bytes > 0 and self.next_trim < deadline:
            deadline = self.next_trim
        if self.next_idle_check < deadline:
            deadline = self.next_idle_check
        if self.accept_paused_backoff and self.accept_resume_at < deadline:
            deadline = self.accept_resume_at
        if self.stopping and self.drain_deadline < deadline:
            deadline = self.drain_deadline
        if deadline >= 1e17:
            return -1
        d = (deadline - _monotonic()) * 1000.0
        if d <= 0:
            return 0
        if d > 3600000.0:
            return 3600000
        return <int>d + 1

    # -- a pass ------------------------------------------------------------------

    cdef int _pass(self, int timeout_ms) except -1:
        """One loop pass: wait, dispatch every event to its handle, then
        resumed transports, callbacks, timers, housekeeping, and the flush
        of every transport written to."""
        cdef epoll_event *evs
        cdef int n, i
        # a signal that arrived while C code ran has its Python handler
        # pending: run it now (KeyboardInterrupt, a SIGTERM handler)
        PyErr_CheckSignals()
        n = self.poller.wait(timeout_ms)
        self.now = _monotonic()
        evs = <epoll_event *>self.poller.evs
        for i in range(n):
            self._dispatch(evs[i].data.fd, evs[i].events)
        if self.resumed:
            self._run_resumed()
        if self.tls_ready:
            self._run_tls_ready()
        if Py_SIZE(self.ready):
            self._run_ready()
        if self.timers.heap:
            self.timers.run_due(self)
        self._housekeeping()
        if self.flush_head is not None:
            self._flush_all()
        return 0

    cdef int _dispatch(self, int fd, uint32_t ev) except -1:
        """Hand ``ev`` to the handle of ``fd``, under the loop's last line
        of defence: an exception that escaped every narrower handler
        (MemoryError while building or decoding, an OSError from the poller
        about one fd) closes that connection, logged and counted in
        ``internal_errors``; the loop goes on."""
        cdef Handle h
        if fd >= len(self.objs):
            return 0
        obj = self.objs[fd]
        if obj is None:
            return 0
        h = <Handle>obj
        try:
            h.on_events(ev)
        except Exception:
            if type(h) is Transport:
                (<Transport>h)._failed("serving the connection")
            else:
                self.internal_errors += 1
                self._report(None, None)
        return 0

    cdef int _flush_all(self) except -1:
        """Flush the queued transports in order (one queued while flushing
        is flushed in this call too)."""
        cdef Transport t
        while self.flush_head is not None:
            t = self.flush_head
            self.flush_head = t.next_flush
            if self.flush_head is None:
                self.flush_tail = None
            t.next_flush = None
            t.flags &= ~T_IN_FLUSH
            t._flush()
        return 0

    # -- running and stopping ------------------------------------------------------

    def stop(self, drain_timeout=None):
        """Ask the loop to stop (thread-safe): stop accepting and reading,
        drain write buffers up to ``drain_timeout`` seconds (default: the
        configured one), close every connection (``connection_lost(None)``),
        return from ``run()``."""
        if drain_timeout is not None:
            self.drain_timeout = drain_timeout
        self.stopping = True
        self.waker.wake()

    def run(self):
        """Run until ``stop()``."""
        cdef Transport t
        if self.running:
            raise RuntimeError("the loop is already running")
        self._check_open("run")
        if self.factory is None and self.listeners:
            raise RuntimeError("configure() the loop before run()")
        self.running = True
        self.now = _monotonic()
        saved_wakeup = self.waker.install_signal_wakeup()
        try:
            while not self.stopping:
                self._pass(self._timeout_ms())
            # graceful stop: no new connections, no more reads, drain writes
            self._set_accepting(False)
            self._close_stages()
            for ml in self.metrics_listeners:
                (<MetricsListener>ml)._stop()
            self.drain_deadline = _monotonic() + self.drain_timeout
            for t in self._transports():
                t.flags |= T_DRAINING
                t._schedule_flush()
            self._flush_all()
            while _monotonic() < self.drain_deadline and any(
                    (<Transport>p)._write_pending() > 0 for p in self._transports()):
                self._pass(self._timeout_ms())
        finally:
            if saved_wakeup is not None:
                signal.set_wakeup_fd(saved_wakeup)
            self._close_all()
            self.running = False
            self.stopping = False
        return None

    def _close_all(self):
        cdef Transport t
        self._close_stages()
        for t in self._transports():
            t._finish_close(None)
        self._flush_all()   # only closed transports are queued: this empties it
        self.resumed.clear()
        self.tls_ready.clear()
        for ml in self.metrics_listeners:
            (<MetricsListener>ml)._close_all()

    def close(self):
        """Free the poller and the wake-up pipe (after ``run()`` returned).
        Listening and datagram sockets belong to the caller."""
        cdef DatagramEndpoint ep
        if self.running:
            raise RuntimeError("cannot close a running loop")
        self.closed = True
        self._close_all()
        for ep in self.endpoints:
            ep._lost()
        self.endpoints = []
        self.listeners = []
        self.metrics_listeners = []
        self.recent_addrs = []
        self.objs = []
        self.timers = Timers()
        self.ready.clear()
        self.factory = None
        self.on_error = None
        self.poller.close()
        self.waker.close()

    # -- introspection -------------------------------------------------------------

    def stats(self):
        """Counters since the loop was created, and current use."""
        return {
            "loop": self.kind,
            "connections": self.nconn,
            "connections_total": self.total_conn,
            "connections_peak": self.peak_conn,
            "connections_rejected": self.rejected,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "handler_errors": self.handler_errors,
            "frame_errors": self.frame_errors,
            "accept_errors": self.accept_errors,
            "internal_errors": self.internal_errors,
            "idle_timeouts": self.idle_timeouts,
            "first_byte_timeouts": self.first_byte_timeouts,
            "frame_timeouts": self.frame_timeouts,
            "close_timeouts": self.close_timeouts,
            "proxy_headers": self.proxy_headers,
            "proxy_errors": self.proxy_errors,
            "proxy_timeouts": self.proxy_timeouts,
            "proxy_rejected": self.proxy_rejected,
            "tls_handshakes": self.tls_handshakes,
            "tls_handshake_errors": self.tls_handshake_errors,
            "tls_handshake_timeouts": self.tls_handshake_timeouts,
            "tls_errors": self.tls_errors,
            "tls_shutdown_timeouts": self.tls_shutdown_timeouts,
            "tls_engine": (None if self.ssl_context is None else
                           "openssl" if self.tls_fast else "python"),
            "accepting": any((<Listener>ls).events != 0 for ls in self.listeners),
            "timers": len(self.timers.heap),
            "pool": {
                "read_slab_bytes": self.slab_size,
                "framing": self.pool.stats() if self.pool is not None else None,
                "write_buffer_bytes": self.wbuf_bytes,
                "write_buffer_bytes_peak": self.wbuf_peak,
            },
        }

    def metrics_stats(self):
        """What the metrics endpoints did (summed over them): scrapes
        answered (``ok``), refused (bad request, method, path, size),
        ``failed`` (the render raised), ``timeouts``, ``accept_errors``,
        ``open`` connections."""
        total = {"ok": 0, "refused": 0, "failed": 0, "timeouts": 0, "accept_errors": 0,
                 "open": 0}
        for ml in self.metrics_listeners:
            for key, value in (<MetricsListener>ml)._stats().items():
                total[key] += value
        return total

    def connections(self):
        """The handlers of the open connections (a new list)."""
        cdef Transport t
        return [t.handler for t in self._transports() if t.handler is not None]


cdef double _idle_period(Loop loop) except? -1.0:
    """How often the deadline sweep runs: a quarter of the shortest
    timeout, between 10 ms and 1 s (a deadline fires at most that late)."""
    cdef double shortest = 1e18
    for timeout in (loop.idle_timeout, loop.frame_timeout, loop.first_byte_timeout,
                    loop.proxy_header_timeout if loop.proxy_mode is not None else 0,
                    loop.ssl_handshake_timeout if loop.ssl_context is not None else 0,
                    loop.ssl_shutdown_timeout if loop.ssl_context is not None else 0):
        if 0 < timeout < shortest:
            shortest = timeout
    if shortest >= 1e17:
        return 1e18
    return min(max(shortest / 4.0, 0.01), 1.0)


def _at_least_zero(name, value):
    """A knob where None or 0 turns the feature off; negative is an error."""
    if value is None or not value:
        return 0
    if value < 0:
        raise ValueError("%s must be >= 0, not %r" % (name, value))
    return value
