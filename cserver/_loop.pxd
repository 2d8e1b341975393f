# cython: language_level=3
"""C-level declarations of the multiplexing event loop (cserver._loop).

Layout.  Everything the poller reports is a *handle* (``Handle``): a file
descriptor with one entry point, ``on_events(events)``, that owns what
happens on it.  ``Transport`` is a TCP/Unix connection (read, deliver,
flush, close, its write buffer), ``Listener`` a listening socket (accept),
``DatagramEndpoint`` a UDP socket, ``Waker`` the wake-up pipe.  A
``Poller`` holds every difference between epoll and ``selectors`` (a kqueue
poller would be one more subclass).  ``Loop`` only schedules: a pass, the
ready queue, timers, the deadline sweep, stats, and the one guarded-call
policy for user callbacks (``_user_error``: counted, reported through
``handle_error``, never able to stop the loop).

The write path.  ``Transport.write``/``send_frame`` copy into the
connection's write buffer (``wbuf[wstart:wend]``, grown by doubling) and put
the transport on the loop's flush queue (an intrusive FIFO through
``next_flush``: no list operation per reply); at the end of the pass each
queued transport sends its whole buffer with one ``send``.  A payload of
``DIRECT_WRITE`` bytes or more goes out at once with ``writev`` and only
what the kernel did not take is buffered.  The buffer is freed in one place,
``Transport._free_wbuf``.

The loop, the handles and the poller are final extension types with no user
hooks: the plain-class shell in ``cserver.selectorserver`` reads its knobs
once and hands them to ``Loop.configure``; the loop never looks them up
again.
"""
cimport cython
from libc.stdint cimport uint32_t
from cserver._framing cimport FrameDecoder, FrameEncoder, BufferPool
from cserver._proxy cimport ProxyParser


cdef enum:
    # Transport.state: the life of a connection.  Transitions only go
    # forward (OPEN -> CLOSING -> ABORTING -> CLOSED, any step may be
    # skipped); Transport._set_state refuses any other (a bug: RuntimeError).
    S_OPEN = 0           # reading and writing
    S_CLOSING = 1        # close() called: flush, then close
    S_ABORTING = 2       # abort() called or failed: close without flushing
    S_CLOSED = 3         # fd closed, connection_lost delivered

cdef enum:
    # Transport.flags: conditions orthogonal to the state
    T_PAUSED_USER = 8    # pause_reading()
    T_PAUSED_WRITE = 16  # write buffer above high water: pause_writing() sent
    T_EOF = 32           # peer sent FIN; we keep writing (half-close)
    T_IN_FLUSH = 64      # queued in this pass's flush queue
    T_DRAINING = 128     # the loop is stopping: no more reads
    T_RESUMED = 256      # resume_reading() with buffered frames to deliver
    # raw mode: ``held`` bytes (after a PROXY header) go first: no reads
    # until they are delivered
    T_HELD_RAW = 512
    # TLS (_tls.pxi): the handshake is running (no handler yet); our
    # close_notify is queued and we wait for the peer's; queued in the
    # loop's tls_ready list (decrypted bytes left to read)
    T_HANDSHAKE = 1024
    T_TLS_SHUT = 2048
    T_TLS_READY = 4096

cdef enum:
    # Transport.doing: whose code runs on the hot read path, so that an
    # exception that propagates to the loop's dispatcher is told apart
    # without a try block per frame (Transport._failed)
    W_SERVING = 0        # the loop's own machinery
    W_DECODING = 1       # the decoder, or building a frame's bytes
    W_HANDLER = 2        # the handler's data_received / frame_received

cdef enum:
    # Transport.dkind: which deadline Transport.deadline is (a peer cannot
    # reset these by trickling: they are set once per connection/frame)
    D_NONE = 0
    D_FIRST_BYTE = 1     # accepted, nothing received yet (first_byte_timeout)
    D_FRAME = 2          # a frame is in progress (frame_timeout)
    D_CLOSE = 3          # closing after a protocol error: flush until then
    D_HANDSHAKE = 4      # TLS: accepted, handshake not done (ssl_handshake_timeout)
    D_TLS_SHUT = 5       # TLS: close_notify sent, the peer's awaited (ssl_shutdown_timeout)


cdef class Poller:
    """epoll or selectors behind one interface; events come back in the C
    array ``evs`` (epoll's layout) whatever the poller."""
    cdef void *evs
    cdef int max_events
    cdef int add(self, int fd, uint32_t events) except -1
    cdef int modify(self, int fd, uint32_t old, uint32_t new) except -1
    cdef int remove(self, int fd, uint32_t old) except -1
    cdef int wait(self, int timeout_ms) except -1
    cdef int close(self) except -1


@cython.final
cdef class EpollPoller(Poller):
    cdef int epfd
    cdef int _ctl(self, int op, int fd, uint32_t events) except -1


@cython.final
cdef class SelectorsPoller(Poller):
    cdef object selector


cdef class Handle:
    cdef Loop loop
    cdef readonly int fd
    cdef uint32_t events
    cdef int on_events(self, uint32_t ev) except -1


@cython.final
cdef class Waker(Handle):
    cdef int wfd
    cdef int wake(self) except -1


@cython.final
cdef class TLSConn:
    # the TLS state of a connection (_tls.pxi)
    cdef object sslobj        # ssl.SSLObject
    cdef object inbio, outbio  # ssl.MemoryBIO
    cdef bint fast            # the "openssl" engine: the pointers below
    cdef void *ssl
    cdef void *rbio
    cdef void *wbio
    cdef bint eof             # the peer's close_notify came
    cdef bint drained         # the last read emptied the TLS buffers
    cdef object tail          # "python" engine: ciphertext read from outbio, unsent
    cdef Py_ssize_t tail_off
    cdef int start(self, Loop loop) except -1
    cdef int feed(self, const char *p, Py_ssize_t n) except -1
    cdef Py_ssize_t read(self, char *buf, Py_ssize_t n) except -2
    cdef bint more(self) except -1
    cdef int write(self, const char *p, Py_ssize_t n) except -1
    cdef Py_ssize_t out_pending(self) except -1
    cdef Py_ssize_t send_out(self, int fd, char *scratch, Py_ssize_t scratch_len) except -2
    cdef bint handshake(self) except -1
    cdef int shutdown(self) except -1
    cdef int release(self) except -1


@cython.final
cdef class Transport(Handle):
    cdef int state
    cdef object handler
    cdef object on_data
    cdef readonly object client_address
    cdef unsigned int flags
    cdef Transport next_flush  # the loop's flush queue
    cdef char *wbuf
    cdef Py_ssize_t wstart, wend, wcap
    cdef FrameDecoder dec     # framed mode: cloned from the loop's prototype
    cdef bint partial         # dec holds the start of a frame
    cdef object held          # bytes received but not delivered (paused)
    cdef double last_active
    cdef double deadline      # absolute loop time; meaning given by dkind
    cdef int dkind
    cdef int doing            # W_*: see _failed
    cdef Py_ssize_t high_water, low_water
    cdef object close_exc
    # PROXY protocol (None when off): the ProxyStage that read the header,
    # kept for its parser (the ProxyInfo is built from it on the first
    # get_extra_info("proxy")) and the socket's own peer (client_address is
    # the header's source), built on demand from the sockaddr it holds
    cdef object proxy
    # TLS (None when off): see _tls.pxi
    cdef TLSConn tls

    cdef int _set_state(self, int new) except -1
    cdef int _start(self, object addr) except -1
    cdef int _discard(self) except -1
    cdef int _begin_close(self, object exc) except -1
    cdef int _abort(self, object exc) except -1
    cdef int _buffer(self, const char *p, Py_ssize_t n) except -1
    cdef int _send_parts(self, const char *h, Py_ssize_t hn,
                         const char *p, Py_ssize_t pn) except -1
    cdef int _schedule_flush(self) except -1
    cdef int _free_wbuf(self) except -1
    cdef int _update(self) except -1
    cdef int _read(self) except -1
    cdef ssize_t _recv(self, char *buf, Py_ssize_t n) except -2
    cdef ssize_t _tls_recv(self, char *buf, Py_ssize_t n) except -2
    cdef int _tls_begin(self, const char *early, Py_ssize_t n) except -1
    cdef int _tls_handshake_events(self, uint32_t ev) except -1
    cdef int _tls_handshake_step(self) except -1
    cdef int _tls_handshake_failed(self, str reason, bint timeout) except -1
    cdef int _tls_flush(self) except -1
    cdef int _tls_shut_events(self, uint32_t ev) except -1
    cdef int _tls_failed(self, object exc) except -1
    cdef int _tls_wake(self) except -1
    cdef Py_ssize_t _write_pending(self) except -1
    cdef int _open(self) except -1
    cdef int _read_raw(self) except -1
    cdef int _read_framed(self) except -1
    cdef int _read_into_decoder(self) except -1
    cdef int _read_scattered(self) except -1
    cdef inline void _received(self, ssize_t n) noexcept
    cdef int _read_failed(self, Py_ssize_t n, int err) except -1
    cdef int _read_eof(self) except -1
    cdef int _deliver(self, const char *data, Py_ssize_t n, bint buffered) except -1
    cdef int _deliver_pending(self) except -1
    cdef int _bad_frame(self, object exc) except -1
    cdef int _failed(self, str where) except -1
    cdef int _handler_failed(self) except -1
    cdef int _internal_failed(self, str where) except -1
    cdef int _flush(self) except -1
    cdef int _flow_control(self, Py_ssize_t pending) except -1
    cdef int _finish_close(self, object exc) except -1
    cdef int _expire(self, object exc) except -1
    cdef int _check_deadlines(self, double now, double idle_limit) except -1


@cython.final
cdef class Listener(Handle):
    cdef object sock
    cdef bint tcp
    cdef bint proxy           # connections start with a PROXY header
    cdef bint tls             # then (or first) a TLS handshake
    cdef int set_accepting(self, bint on) except -1
    cdef int _accept_failed(self, int err) except -1
    cdef int _new_transport(self, int fd, void *ss, unsigned int alen) except -1


@cython.final
cdef class ProxyStage(Handle):
    # an accepted connection while its PROXY header arrives (_proxystage.pxi)
    cdef Listener listener
    cdef object peer          # built from ss on demand (peer_c)
    cdef ProxyParser parser
    cdef double deadline
    cdef bint pending         # still reading its header
    cdef unsigned int alen
    cdef unsigned char ss[128]   # the peer's sockaddr (sockaddr_storage)
    cdef object peer_c(self)
    cdef int _read(self) except -1
    cdef int _done(self, Py_ssize_t used, Py_ssize_t n) except -1
    cdef int _deliver_rest(self, Transport t, Py_ssize_t used, Py_ssize_t n) except -1
    cdef int _fail(self, str reason, bint timeout) except -1
    cdef int _close(self) except -1


@cython.final
cdef class DatagramEndpoint(Handle):
    cdef object sock
    cdef object handler
    cdef object on_datagram
    cdef object queue
    cdef bint closed
    cdef int start(self) except -1
    cdef int _received(self, const char *data, Py_ssize_t n, object addr) except -1
    cdef int _read_batches(self) except -1
    cdef int _read_one_by_one(self) except -1
    cdef int _write_queued(self) except -1
    cdef int _error(self, object exc) except -1
    cdef int _lost(self) except -1


cdef class TimerHandle:
    cdef readonly double when
    cdef object fn
    cdef tuple args
    cdef readonly bint cancelled


@cython.final
cdef class Timers:
    cdef list heap
    cdef Py_ssize_t seq
    cdef TimerHandle push(self, double when, object fn, tuple args)
    cdef double next_when(self) except? -1.0
    cdef int run_due(self, Loop loop) except -1


@cython.final
cdef class Loop:
    cdef Poller poller
    cdef Waker waker
    # fd -> Handle | None
    cdef list objs
    cdef list listeners
    cdef list endpoints
    cdef list metrics_listeners   # MetricsListener (_metrics.pxi)
    # the flush queue: transports written to during this pass (FIFO)
    cdef Transport flush_head, flush_tail
    cdef list resumed
    cdef object ready          # collections.deque of (fn, args): next pass
    cdef Timers timers
    # shared receive slab
    cdef char *slab
    cdef void *mmsg            # recvmmsg buffers (Linux, UDP only)
    cdef list recent_addrs     # address objects of the datagrams in mmsg
    cdef Py_ssize_t slab_size
    # state
    cdef readonly bint running
    cdef readonly bint closed    # close() was called: nothing can be scheduled
    cdef bint stopping
    cdef double drain_deadline
    cdef bint accept_paused_limit
    cdef bint accept_paused_backoff
    cdef bint accept_stopped     # stop_accepting(): the listeners never come back
    cdef double accept_resume_at
    cdef double accept_backoff
    cdef double now
    cdef double next_idle_check
    # when write buffers of quiet connections are next released
    cdef double next_trim
    # knobs (read once by configure)
    cdef object factory
    cdef object on_error
    cdef object logger
    cdef bint framed
    cdef bint nodelay
    cdef Py_ssize_t max_connections
    cdef double idle_timeout
    cdef double frame_timeout
    cdef double first_byte_timeout
    cdef Py_ssize_t high_water, low_water
    cdef double drain_timeout
    cdef int accept_batch
    # framing: each connection's decoder is a clone of this prototype
    cdef FrameDecoder decoder
    cdef FrameEncoder enc
    cdef BufferPool pool
    # stats
    cdef readonly Py_ssize_t nconn
    cdef Py_ssize_t total_conn, rejected, bytes_in, bytes_out
    cdef Py_ssize_t frames_in, frames_out, handler_errors, frame_errors
    cdef Py_ssize_t accept_errors, peak_conn
    cdef Py_ssize_t internal_errors
    cdef Py_ssize_t idle_timeouts, frame_timeouts, first_byte_timeouts, close_timeouts
    cdef Py_ssize_t wbuf_bytes, wbuf_peak
    # PROXY protocol (configure; _proxystage.pxi)
    cdef object proxy_mode         # None (off), "v1", "v2" or "any"
    cdef int proxy_version         # 0 ("any"), 1, 2
    cdef void *trusted             # cs_net_t[ntrusted]: trusted_proxies
    cdef int ntrusted
    cdef double proxy_header_timeout
    cdef Py_ssize_t proxy_pending  # ProxyStage handles open
    cdef Py_ssize_t proxy_headers, proxy_errors, proxy_timeouts, proxy_rejected
    cdef double proxy_log_at       # rate limit of the PROXY failure log
    cdef Py_ssize_t proxy_log_quiet
    # TLS (configure; _tls.pxi)
    cdef object ssl_context        # None: off
    cdef bint tls_fast             # the "openssl" engine
    cdef double ssl_handshake_timeout
    cdef double ssl_shutdown_timeout
    cdef char *tls_slab            # ciphertext reads (slab_size bytes)
    cdef list tls_ready            # transports with decrypted bytes left to read
    cdef Py_ssize_t tls_handshakes, tls_handshake_errors, tls_handshake_timeouts
    cdef Py_ssize_t tls_errors, tls_shutdown_timeouts

    cdef int _register(self, Handle h) except -1
    cdef int _forget(self, Handle h) except -1
    cdef list _transports(self)
    cdef int _user_error(self, object request, object address) except -1
    cdef int _report(self, object request, object address) except -1
    cdef int _call_guarded(self, fn, tuple args) except -1
    cdef int _check_open(self, str what) except -1
    cdef int _set_accepting(self, bint on) except -1
    cdef int _transport_closed(self) except -1
    cdef int _dispatch(self, int fd, uint32_t ev) except -1
    cdef int _flush_all(self) except -1
    cdef int _run_resumed(self) except -1
    cdef int _run_tls_ready(self) except -1
    cdef int _run_ready(self) except -1
    cdef int _housekeeping(self) except -1
    cdef int _check_idle(self) except -1
    cdef int _check_stages(self, double now) except -1
    cdef int _close_stages(self) except -1
    cdef int _trim_buffers(self) except -1
    cdef int _pass(self, int timeout_ms) except -1
    cdef int _timeout_ms(self) except? -2
