# cython: language_level=3
"""C-level declarations of the multiplexing event loop (cserver._loop).

The loop, the per-connection transport and the datagram endpoint are final
extension types with no user hooks: the plain-class shell in
``cserver.selectorserver`` reads its knobs once and hands them to
``Loop.configure``; the loop never looks them up again.
"""
cimport cython
from libc.stdint cimport uint32_t, int64_t
from cserver._framing cimport FrameDecoder, FrameEncoder, BufferPool


cdef enum:
    # Transport.flags
    T_CLOSING = 1        # close() called: flush, then close
    T_ABORT = 2          # abort() called: close without flushing
    T_CLOSED = 4         # fd closed, connection_lost delivered
    T_PAUSED_USER = 8    # pause_reading()
    T_PAUSED_WRITE = 16  # write buffer above high water: pause_writing() sent
    T_EOF = 32           # peer sent FIN; we keep writing (half-close)
    T_IN_FLUSH = 64      # queued in this pass's flush list
    T_DRAINING = 128     # the loop is stopping: no more reads
    T_RESUMED = 256      # resume_reading() with buffered frames to deliver

cdef enum:
    # Transport.dkind: which deadline Transport.deadline is (a peer cannot
    # reset these by trickling: they are set once per connection/frame)
    D_NONE = 0
    D_FIRST_BYTE = 1     # accepted, nothing received yet (first_byte_timeout)
    D_FRAME = 2          # a frame is in progress (frame_timeout)
    D_CLOSE = 3          # closing after a protocol error: flush until then


@cython.final
cdef class Transport:
    cdef Loop loop
    cdef readonly int fd
    cdef object handler
    cdef object on_data
    cdef readonly object client_address
    cdef unsigned int flags
    cdef uint32_t events
    cdef char *wbuf
    cdef Py_ssize_t wstart, wend, wcap
    cdef FrameDecoder dec     # framed mode: the framing layer's C decoder
    cdef bint partial         # dec holds the start of a frame
    cdef object held          # bytes received but not delivered (paused)
    cdef double last_active
    cdef double deadline      # absolute loop time; meaning given by dkind
    cdef int dkind
    cdef Py_ssize_t high_water, low_water
    cdef object close_exc

    cdef int _buffer(self, const char *p, Py_ssize_t n) except -1
    cdef int _send_parts(self, const char *h, Py_ssize_t hn,
                         const char *p, Py_ssize_t pn) except -1
    cdef int _schedule_flush(self) except -1


@cython.final
cdef class Listener:
    cdef readonly int fd
    cdef object sock
    cdef bint tcp
    cdef uint32_t events


@cython.final
cdef class DatagramEndpoint:
    cdef Loop loop
    cdef readonly int fd
    cdef object sock
    cdef object handler
    cdef object on_datagram
    cdef object queue
    cdef uint32_t events
    cdef bint closed


@cython.final
cdef class Loop:
    # poller
    cdef bint use_epoll
    cdef int epfd
    cdef object selector
    cdef int wake_r, wake_w
    cdef void *events_buf
    cdef int max_events
    # fd -> Transport | Listener | DatagramEndpoint | None
    cdef list objs
    cdef list listeners
    cdef list endpoints
    cdef list flush_list
    cdef list resumed
    cdef object ready          # collections.deque of (fn, args)
    cdef list timers           # heap of (when, seq, TimerHandle)
    cdef Py_ssize_t timer_seq
    # shared receive slab
    cdef char *slab
    cdef void *mmsg            # recvmmsg buffers (Linux, UDP only)
    cdef list recent_addrs     # address objects of the datagrams in mmsg
    cdef Py_ssize_t slab_size
    # state
    cdef readonly bint running
    cdef bint stopping
    cdef double drain_deadline
    cdef bint accept_paused_limit
    cdef bint accept_paused_backoff
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
    # framing: a decoder per connection from dec_factory, one encoder
    cdef object dec_factory
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
    cdef int _trim_buffers(self) except -1
    cdef int _call_guarded(self, fn, tuple args) except -1
    cdef int _report(self, object request, object address) except -1
    cdef int _internal_failed(self, Transport t, str where) except -1
    cdef int _bad_frame(self, Transport t, object exc) except -1
    cdef int _deliver_pending(self, Transport t) except -1
    cdef int _dispatch_guarded(self, int fd, uint32_t ev) except -1

    cdef int _ctl(self, int fd, uint32_t old, uint32_t new) except -1
    cdef int _update(self, Transport t) except -1
    cdef int _set_accepting(self, bint on) except -1
    cdef int _dispatch(self, int fd, uint32_t ev) except -1
    cdef int _accept(self, Listener ls) except -1
    cdef int _read(self, Transport t) except -1
    cdef int _read_eof(self, Transport t) except -1
    cdef int _deliver(self, Transport t, const char *data, Py_ssize_t n,
                      bint buffered) except -1
    cdef int _deliver_held(self, Transport t) except -1
    cdef int _flush(self, Transport t) except -1
    cdef int _flush_all(self) except -1
    cdef int _finish_close(self, Transport t, object exc) except -1
    cdef int _handler_failed(self, Transport t) except -1
    cdef int _dgram_read(self, DatagramEndpoint ep) except -1
    cdef int _dgram_write(self, DatagramEndpoint ep) except -1
    cdef int _run_ready(self) except -1
    cdef int _run_timers(self) except -1
    cdef int _check_idle(self) except -1
    cdef int _expire(self, Transport t, object exc) except -1
    cdef int _poll(self, int timeout_ms) except -1
    cdef int _timeout_ms(self)
