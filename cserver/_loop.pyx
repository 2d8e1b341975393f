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

Frames are decoded by the framing layer's C decoder (``cimport`` of
``cserver._framing.FrameDecoder.next_frame``, one decoder per connection): a
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
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.exc cimport PyErr_CheckSignals
from libc.string cimport memcpy, memmove, strerror
from libc.stdint cimport uint32_t, uint64_t, int64_t
from libc.errno cimport (errno, EAGAIN, EINTR, EMFILE, ENFILE,
                         ENOBUFS, ENOMEM, ECONNABORTED, EPROTO, EPERM)
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from posix.unistd cimport close as c_close, read as c_read, write as c_write

from cserver._framing cimport FrameDecoder, FrameEncoder, BufferPool
from cserver.errors import FrameError

import collections
import heapq
import logging
import os
import signal
import socket
import sys
import threading

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
            inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
            return Py_BuildValue("(si)", host, (int)ntohs(a->sin_port));
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
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t writev(int fd, const iovec *iov, int iovcnt)
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
# Partial-frame buffers larger than this are freed once empty.
cdef Py_ssize_t KEEP_RBUF = 65536
# Write buffers larger than this are freed once drained.
cdef Py_ssize_t KEEP_WBUF = 262144
# An empty write buffer is kept while its connection is busy (no malloc per
# reply) and released once the connection has been quiet this long, so that
# thousands of idle connections do not each hold one (bench: idle RSS).
cdef double TRIM_AFTER = 1.0
# Minimum free space offered to recv() when a partial frame is buffered.
cdef Py_ssize_t MIN_READ = 16384
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


@cython.final
@cython.freelist(64)
cdef class Transport:
    """One connection of the multiplexing server (internal; handlers reach
    it as ``self.transport``).

    Methods are only to be called from the loop's thread (use the server's
    ``call_soon_threadsafe`` from other threads).
    """

    def __cinit__(self):
        self.fd = -1
        self.wbuf = NULL

    def __dealloc__(self):
        if self.wbuf != NULL:
            PyMem_Free(self.wbuf)
            self.wbuf = NULL

    def __init__(self):
        raise TypeError("Transport objects are created by the event loop")

    def __repr__(self):
        state = "closed" if self.flags & T_CLOSED else (
            "closing" if self.flags & T_CLOSING else "open")
        return "<cserver Transport fd=%d %s peer=%r>" % (self.fd, state, self.client_address)

    cdef int _schedule_flush(self) except -1:
        if not (self.flags & T_IN_FLUSH):
            self.flags |= T_IN_FLUSH
            self.loop.flush_list.append(self)
        return 0

    cdef int _buffer(self, const char *p, Py_ssize_t n) except -1:
        cdef Py_ssize_t pending, need, cap
        cdef char *nb
        if n <= 0:
            return 0
        if self.wend + n > self.wcap:
            pending = self.wend - self.wstart
            if self.wstart > 0 and pending + n <= self.wcap:
                memmove(self.wbuf, self.wbuf + self.wstart, pending)
            else:
                need = pending + n
                # start small (pymalloc serves <= 512 B): most connections
                # only ever hold a few small replies; grow by doubling
                cap = self.wcap if self.wcap > 0 else 256
                while cap < need:
                    cap *= 2
                nb = <char *>PyMem_Malloc(cap)
                if nb == NULL:
                    raise MemoryError()
                if pending:
                    memcpy(nb, self.wbuf + self.wstart, pending)
                if self.wbuf != NULL:
                    PyMem_Free(self.wbuf)
                self.loop.wbuf_bytes += cap - self.wcap
                if self.loop.wbuf_bytes > self.loop.wbuf_peak:
                    self.loop.wbuf_peak = self.loop.wbuf_bytes
                self.wbuf = nb
                self.wcap = cap
            self.wstart = 0
            self.wend = pending
        memcpy(self.wbuf + self.wend, p, n)
        self.wend += n
        self._schedule_flush()
        return 0

    cdef int _send_parts(self, const char *h, Py_ssize_t hn,
                         const char *p, Py_ssize_t pn) except -1:
        """Queue header + payload; a large payload is written at once with
        writev (no copy) and only the unsent rest is buffered."""
        cdef iovec iov[3]
        cdef int cnt = 0
        cdef ssize_t r
        cdef Py_ssize_t pending
        if self.flags & (T_CLOSING | T_CLOSED):
            return 0
        if pn < DIRECT_WRITE or (self.events & EPOLLOUT):
            self._buffer(h, hn)
            self._buffer(p, pn)
            return 0
        pending = self.wend - self.wstart
        if pending:
            iov[cnt].iov_base = self.wbuf + self.wstart
            iov[cnt].iov_len = pending
            cnt += 1
        if hn:
            iov[cnt].iov_base = <void *>h
            iov[cnt].iov_len = hn
            cnt += 1
        iov[cnt].iov_base = <void *>p
        iov[cnt].iov_len = pn
        cnt += 1
        r = writev(self.fd, iov, cnt)
        if r < 0:
            if errno != EAGAIN and errno != EWOULDBLOCK and errno != EINTR:
                self.flags |= T_ABORT | T_CLOSING
                self.close_exc = _oserror(errno)
                self._schedule_flush()
                return 0
            r = 0
        self.loop.bytes_out += r
        self.last_active = self.loop.now
        if r >= pending:
            r -= pending
            self.wstart = self.wend = 0
        else:
            self.wstart += r
            r = 0
        if r >= hn:
            r -= hn
        else:
            self._buffer(h + r, hn - r)
            r = 0
        self._buffer(p + r, pn - r)
        if self.wend == self.wstart:
            self.wstart = self.wend = 0
        return 0

    # -- the transport API (asyncio's words) --------------------------------

    def write(self, data):
        """Queue ``data`` (any bytes-like) for sending at the end of this
        loop pass.  Data written after ``close()`` is dropped."""
        cdef Py_buffer view
        if self.flags & (T_CLOSING | T_CLOSED):
            return
        if type(data) is bytes:
            self._send_parts(NULL, 0, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
            return
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._send_parts(NULL, 0, <const char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    def writelines(self, list_of_data):
        """Queue every bytes-like object of an iterable."""
        for data in list_of_data:
            self.write(data)

    def send_frame(self, payload):
        """Queue ``payload`` with the length header of the server's framing
        (written in C by the framing layer's encoder; a payload of 64 KiB
        or more is not copied)."""
        cdef char hdr[64]
        cdef Py_ssize_t hn
        cdef Py_buffer view
        cdef FrameEncoder enc = self.loop.enc
        if self.flags & (T_CLOSING | T_CLOSED):
            return
        if enc is None:
            raise RuntimeError("send_frame() needs a FrameHandler server")
        if enc.header_size > 64:
            self.write(enc.encode(payload))
            self.loop.frames_out += 1
            return
        if type(payload) is bytes:
            hn = enc.write_header(PyBytes_GET_SIZE(payload), hdr)
            self._send_parts(hdr, hn, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload))
            self.loop.frames_out += 1
            return
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        try:
            hn = enc.write_header(view.len, hdr)
            self._send_parts(hdr, hn, <const char *>view.buf, view.len)
            self.loop.frames_out += 1
        finally:
            PyBuffer_Release(&view)

    def close(self):
        """Close after the buffered data is sent; ``connection_lost(None)``
        follows."""
        if self.flags & (T_CLOSING | T_CLOSED):
            return
        self.flags |= T_CLOSING
        self._schedule_flush()

    def abort(self):
        """Close now, discarding buffered data."""
        if self.flags & T_CLOSED:
            return
        self.flags |= T_CLOSING | T_ABORT
        self._schedule_flush()

    def is_closing(self):
        return bool(self.flags & (T_CLOSING | T_CLOSED))

    def pause_reading(self):
        """Stop reading from the peer (frames already received stay
        buffered and are delivered after ``resume_reading()``)."""
        if self.flags & (T_CLOSED | T_PAUSED_USER):
            return
        self.flags |= T_PAUSED_USER
        self.loop._update(self)

    def resume_reading(self):
        if not (self.flags & T_PAUSED_USER) or self.flags & T_CLOSED:
            return
        self.flags &= ~T_PAUSED_USER
        # the server paused, not the peer: its clock restarts
        if self.dkind == D_FRAME:
            self.deadline = self.loop.now + self.loop.frame_timeout
        elif self.dkind == D_FIRST_BYTE:
            self.deadline = self.loop.now + self.loop.first_byte_timeout
        if (self.held is not None or self.partial) and not (self.flags & T_RESUMED):
            self.flags |= T_RESUMED
            self.loop.resumed.append(self)
        self.loop._update(self)

    def is_reading(self):
        return not (self.flags & (T_PAUSED_USER | T_PAUSED_WRITE | T_EOF |
                                  T_CLOSING | T_CLOSED | T_DRAINING))

    def get_write_buffer_size(self):
        return self.wend - self.wstart

    def get_write_buffer_limits(self):
        return (self.low_water, self.high_water)

    def set_write_buffer_limits(self, high=None, low=None):
        """As asyncio: ``high`` defaults to the server's, ``low`` to high/4."""
        if high is None:
            high = self.loop.high_water if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError("high (%r) must be >= low (%r) must be >= 0" % (high, low))
        self.high_water = high
        self.low_water = low

    def fileno(self):
        return self.fd

    def get_extra_info(self, name, default=None):
        if name == "peername":
            return self.client_address
        if name == "fileno":
            return self.fd
        if name == "sockname" and self.fd >= 0 and not (self.flags & T_CLOSED):
            s = socket.socket(fileno=os.dup(self.fd))
            try:
                return s.getsockname()
            finally:
                s.close()
        return default


@cython.final
cdef class Listener:
    def __init__(self):
        raise TypeError("internal")


@cython.final
cdef class DatagramEndpoint:
    """The datagram socket of a UDP server (internal; the handler reaches it
    as ``self.transport``)."""

    def __init__(self):
        raise TypeError("internal")

    def sendto(self, data, addr=None):
        """Send one datagram; if the socket buffer is full it is queued and
        sent when the socket is writable."""
        cdef Loop loop = self.loop
        cdef cs_mmsg_t *mm = <cs_mmsg_t *>loop.mmsg
        cdef Py_ssize_t i, n
        cdef ssize_t r
        cdef int err
        cdef Py_buffer view
        if self.closed:
            return
        if not self.queue and mm != NULL and addr is not None and type(data) is bytes:
            # A reply to a datagram of the current batch: its address object
            # is one the loop made, and the sockaddr it came from is still in
            # the batch buffers: send in C, no address parsing.
            for i in range(len(loop.recent_addrs)):
                if loop.recent_addrs[i] is addr:
                    n = PyBytes_GET_SIZE(data)
                    r = cs_sendto(self.fd, PyBytes_AS_STRING(data), n,
                                  cs_mmsg_addr(mm, <int>i), cs_mmsg_addrlen(mm, <int>i))
                    if r >= 0:
                        loop.bytes_out += r
                        return
                    err = errno
                    if err != EAGAIN and err != EWOULDBLOCK and err != EINTR:
                        _error_received(loop, self, _oserror(err))
                        return
                    break
        if not self.queue:
            try:
                if addr is None:
                    self.sock.send(data)
                else:
                    self.sock.sendto(data, addr)
                self.loop.bytes_out += len(data)
                return
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                _error_received(self.loop, self, exc)
                return
        self.queue.append((bytes(data), addr))
        if not (self.events & EPOLLOUT):
            self.loop._ctl(self.fd, self.events, self.events | EPOLLOUT)
            self.events |= EPOLLOUT

    def fileno(self):
        return self.fd

    def get_write_buffer_size(self):
        return sum(len(d) for d, a in self.queue)


cdef int _error_received(Loop loop, DatagramEndpoint ep, object exc) except -1:
    """Pass a socket error to the datagram handler's ``error_received``,
    under the loop's guarded-call policy (its exception is reported through
    ``handle_error`` and counted; it never propagates into the loop)."""
    cb = getattr(ep.handler, "error_received", None)
    if cb is None:
        return 0
    try:
        cb(exc)
    except Exception:
        loop.handler_errors += 1
        loop._report(ep, None)
    return 0


cdef class TimerHandle:
    """Returned by ``call_later``/``call_at``; ``cancel()`` it to drop it."""
    cdef readonly double when
    cdef object fn
    cdef tuple args
    cdef readonly bint cancelled

    def cancel(self):
        self.cancelled = True
        self.fn = None
        self.args = None

    def __lt__(self, TimerHandle other):
        return self.when < other.when

    def __repr__(self):
        return "<TimerHandle when=%r%s>" % (self.when, " cancelled" if self.cancelled else "")


def _check_callable(method, fn):
    # As asyncio does: a callback that is not callable fails at the call
    # that schedules it, not later inside the loop.
    if not callable(fn):
        raise TypeError("%s() needs a callable, got %r" % (method, fn))


@cython.final
cdef class Loop:
    """The event loop core (internal).  ``kind`` is ``"epoll"`` or
    ``"selectors"``."""

    def __cinit__(self):
        self.epfd = -1
        self.wake_r = -1
        self.wake_w = -1
        self.slab = NULL
        self.events_buf = NULL
        self.mmsg = NULL

    def __init__(self, kind="epoll", Py_ssize_t read_size=262144, int max_events=512):
        if kind not in ("epoll", "selectors"):
            raise ValueError("loop kind must be 'epoll' or 'selectors', not %r" % (kind,))
        if kind == "epoll" and not CS_HAVE_EPOLL:
            raise OSError("epoll is not available on this platform")
        self.use_epoll = kind == "epoll"
        self.objs = []
        self.listeners = []
        self.endpoints = []
        self.flush_list = []
        self.resumed = []
        self.recent_addrs = []
        self.ready = collections.deque()
        self.timers = []
        self.slab_size = max(read_size, 4096)
        self.slab = <char *>PyMem_Malloc(self.slab_size)
        if self.slab == NULL:
            raise MemoryError()
        self.max_events = max(max_events, 16)
        self.events_buf = PyMem_Malloc(sizeof(epoll_event) * self.max_events)
        if self.events_buf == NULL:
            raise MemoryError()
        if self.use_epoll:
            self.epfd = epoll_create1(EPOLL_CLOEXEC)
            if self.epfd < 0:
                raise _oserror(errno)
        else:
            import selectors
            self.selector = selectors.DefaultSelector()
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self.wake_r = r
        self.wake_w = w
        self._register_obj(r, None)
        self._ctl(r, 0, EPOLLIN)
        # defaults (configure() overrides)
        self.logger = _log
        self.nodelay = True
        self.max_connections = 0
        self.idle_timeout = 0.0
        self.high_water = 65536
        self.low_water = 16384
        self.drain_timeout = 5.0
        self.accept_batch = 128
        self.accept_backoff = 0.0
        self.now = _monotonic()
        self.next_idle_check = 1e18

    def __dealloc__(self):
        if self.mmsg != NULL:
            PyMem_Free(self.mmsg)
        if self.slab != NULL:
            PyMem_Free(self.slab)
        if self.events_buf != NULL:
            PyMem_Free(self.events_buf)
        if self.epfd >= 0:
            c_close(self.epfd)
        if self.wake_r >= 0:
            c_close(self.wake_r)
        if self.wake_w >= 0:
            c_close(self.wake_w)

    @property
    def kind(self):
        return "epoll" if self.use_epoll else "selectors"

    def configure(self, factory, on_error, *, decoder_factory=None, encoder=None,
                  pool=None, bint nodelay=True, max_connections=None, idle_timeout=None,
                  frame_timeout=None, first_byte_timeout=None,
                  Py_ssize_t high_water=65536, low_water=None,
                  double drain_timeout=5.0, int accept_batch=128, logger=None):
        """Set the knobs, once, before ``run()``.

        ``factory(transport, client_address)`` returns the handler of a new
        connection (or None to refuse it); ``on_error(request, address)``
        is called inside ``except`` blocks.  Framed mode: give
        ``decoder_factory()`` (returns a new ``cserver._framing.FrameDecoder``),
        ``encoder`` (a ``cserver._framing.FrameEncoder``) and the decoders'
        ``pool`` (a ``cserver._framing.BufferPool``, for ``stats()``).

        Deadlines (seconds; None or 0 turns one off): ``idle_timeout``
        (no I/O at all), ``first_byte_timeout`` (from accept to the first
        byte received), ``frame_timeout`` (framed mode: from the first byte
        of a frame to its last); the last two are not reset by bytes that
        trickle in."""
        self.factory = factory
        self.on_error = on_error
        self.framed = decoder_factory is not None
        self.dec_factory = decoder_factory
        if encoder is not None and not isinstance(encoder, FrameEncoder):
            raise TypeError("encoder must be a cserver._framing.FrameEncoder")
        self.enc = encoder
        self.pool = pool
        self.nodelay = nodelay
        self.max_connections = max_connections or 0
        self.idle_timeout = idle_timeout or 0.0
        if self.idle_timeout < 0:
            raise ValueError("idle_timeout must be >= 0, not %r" % (idle_timeout,))
        self.frame_timeout = frame_timeout or 0.0
        if self.frame_timeout < 0:
            raise ValueError("frame_timeout must be >= 0, not %r" % (frame_timeout,))
        self.first_byte_timeout = first_byte_timeout or 0.0
        if self.first_byte_timeout < 0:
            raise ValueError("first_byte_timeout must be >= 0, not %r"
                             % (first_byte_timeout,))
        if self.max_connections < 0:
            raise ValueError("max_connections must be >= 0, not %r" % (max_connections,))
        self.high_water = high_water
        self.low_water = high_water // 4 if low_water is None else low_water
        if not self.high_water >= self.low_water >= 0:
            raise ValueError("high_water (%r) must be >= low_water (%r) must be >= 0"
                             % (self.high_water, self.low_water))
        self.drain_timeout = drain_timeout
        self.accept_batch = max(accept_batch, 1)
        if logger is not None:
            self.logger = logger
        self.next_idle_check = _monotonic() + self._idle_period()

    def _idle_period(self):
        """How often the deadline sweep runs: a quarter of the shortest
        timeout, between 10 ms and 1 s (a deadline fires at most that late)."""
        cdef double shortest = 1e18
        for timeout in (self.idle_timeout, self.frame_timeout, self.first_byte_timeout):
            if 0 < timeout < shortest:
                shortest = timeout
        if shortest >= 1e17:
            return 1e18
        return min(max(shortest / 4.0, 0.01), 1.0)

    # -- registration --------------------------------------------------------

    def _register_obj(self, int fd, obj):
        if fd >= len(self.objs):
            self.objs.extend([None] * (fd + 1 - len(self.objs) + 64))
        self.objs[fd] = obj

    cdef int _ctl(self, int fd, uint32_t old, uint32_t new) except -1:
        """Change the interest set of fd from ``old`` to ``new`` (0 = not
        registered for epoll-less mode; epoll keeps a 0 mask registered)."""
        cdef epoll_event ev
        cdef int op
        cdef int mask
        if self.use_epoll:
            ev.events = new
            ev.data.u64 = 0
            ev.data.fd = fd
            if old == 0 and new == 0:
                return 0
            op = EPOLL_CTL_ADD if old == 0 else (EPOLL_CTL_DEL if new == 0 else EPOLL_CTL_MOD)
            if epoll_ctl(self.epfd, op, fd, &ev) < 0:
                raise _oserror(errno)
            return 0
        mask = (1 if new & EPOLLIN else 0) | (2 if new & EPOLLOUT else 0)
        if old == 0:
            if mask:
                self.selector.register(fd, mask)
        elif mask == 0:
            self.selector.unregister(fd)
        else:
            self.selector.modify(fd, mask)
        return 0

    cdef int _update(self, Transport t) except -1:
        cdef uint32_t want = 0
        if t.flags & T_CLOSED:
            return 0
        if not (t.flags & (T_PAUSED_USER | T_PAUSED_WRITE | T_EOF | T_CLOSING | T_DRAINING)):
            want |= EPOLLIN
        if t.wend > t.wstart:
            want |= EPOLLOUT
        cdef epoll_event ev
        if want != t.events:
            if self.use_epoll:
                # a connection stays registered, even with an empty mask
                # (HUP/ERR are still reported): no DEL/ADD churn on pauses.
                ev.events = want
                ev.data.u64 = 0
                ev.data.fd = t.fd
                if epoll_ctl(self.epfd, EPOLL_CTL_MOD, t.fd, &ev) < 0:
                    raise _oserror(errno)
            else:
                self._ctl(t.fd, t.events, want)
            t.events = want
        return 0

    def add_listener(self, sock):
        """Accept connections from a listening socket (kept open by the
        caller, who also closes it)."""
        cdef Listener ls = Listener.__new__(Listener)
        sock.setblocking(False)
        ls.fd = sock.fileno()
        ls.sock = sock
        ls.tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        self._register_obj(ls.fd, ls)
        self.listeners.append(ls)
        if not (self.accept_paused_limit or self.accept_paused_backoff):
            self._ctl(ls.fd, 0, EPOLLIN)
            ls.events = EPOLLIN

    def add_datagram_endpoint(self, sock, handler_factory):
        """Serve a datagram socket; ``handler_factory(endpoint)`` returns the
        handler whose ``datagram_received(data, addr)`` is called."""
        cdef DatagramEndpoint ep = DatagramEndpoint.__new__(DatagramEndpoint)
        if CS_HAVE_EPOLL and self.mmsg == NULL:
            self.mmsg = PyMem_Malloc(sizeof(cs_mmsg_t))
            if self.mmsg == NULL:
                raise MemoryError()
        sock.setblocking(False)
        ep.loop = self
        ep.fd = sock.fileno()
        ep.sock = sock
        ep.queue = collections.deque()
        handler = handler_factory(ep)
        ep.handler = handler
        ep.on_datagram = handler.datagram_received
        self._register_obj(ep.fd, ep)
        self.endpoints.append(ep)
        self._ctl(ep.fd, 0, EPOLLIN)
        ep.events = EPOLLIN
        cb = getattr(handler, "connection_made", None)
        if cb is not None:
            cb()
        return ep

    cdef int _set_accepting(self, bint on) except -1:
        cdef Listener ls
        for ls in self.listeners:
            if on and ls.events == 0:
                self._ctl(ls.fd, 0, EPOLLIN)
                ls.events = EPOLLIN
            elif not on and ls.events:
                self._ctl(ls.fd, ls.events, 0)
                ls.events = 0
        return 0

    # -- callbacks and timers --------------------------------------------------

    def call_soon(self, fn, *args):
        """Run ``fn(*args)`` on the loop thread at the next pass."""
        _check_callable("call_soon", fn)
        self.ready.append((fn, args))

    def call_soon_threadsafe(self, fn, *args):
        """Like ``call_soon`` but safe from any thread: wakes the loop."""
        _check_callable("call_soon_threadsafe", fn)
        self.ready.append((fn, args))
        self._wake()

    def _wake(self):
        # The descriptor is read and written with the GIL held: a C write(2)
        # on the non-blocking pipe never blocks, so close() (which holds the
        # GIL too) cannot run in between, and a wake-up can never reach a
        # descriptor number that close() released and the process reused.
        # (os.write released the GIL between the two.)  EAGAIN: a wake-up is
        # pending anyway; -1: closed, the loop is gone.  A free-threaded
        # build needs a lock here (docs/freethreading.md).
        cdef char zero = 0
        cdef int fd = self.wake_w
        if fd >= 0:
            while c_write(fd, &zero, 1) < 0 and errno == EINTR:
                pass

    def call_at(self, double when, fn, *args):
        """Run ``fn(*args)`` on the loop when ``time()`` reaches ``when``;
        returns a handle with ``cancel()``.  Loop thread only."""
        cdef TimerHandle h
        _check_callable("call_at", fn)
        if when != when:  # NaN: no place in the heap (it would stall every timer)
            raise ValueError("call_at() needs a time, got when=nan")
        h = TimerHandle.__new__(TimerHandle)
        h.when = when
        h.fn = fn
        h.args = args
        self.timer_seq += 1
        heapq.heappush(self.timers, (when, self.timer_seq, h))
        return h

    def call_later(self, double delay, fn, *args):
        """Run ``fn(*args)`` on the loop after ``delay`` seconds; returns a
        handle with ``cancel()``.  Loop thread only."""
        _check_callable("call_later", fn)
        if delay != delay:
            raise ValueError("call_later() needs a delay in seconds, got delay=nan")
        return self.call_at(_monotonic() + delay, fn, *args)

    def time(self):
        """The loop's clock (``time.monotonic()``)."""
        return _monotonic()

    cdef int _run_ready(self) except -1:
        cdef Py_ssize_t n = len(self.ready)
        while n > 0:
            n -= 1
            fn, args = self.ready.popleft()
            self._call_guarded(fn, args)
        return 0

    cdef int _call_guarded(self, fn, tuple args) except -1:
        """Run a callback or timer; its Exception goes to handle_error()
        (called inside the except block) and is counted."""
        try:
            fn(*args)
        except Exception:
            self.handler_errors += 1
            self._report(None, None)
        return 0

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

    cdef int _run_timers(self) except -1:
        cdef TimerHandle h
        while self.timers and (<tuple>self.timers[0])[0] <= self.now:
            h = (<tuple>heapq.heappop(self.timers))[2]
            if h.cancelled:
                continue
            fn, args = h.fn, h.args
            h.fn = None
            h.args = None
            self._call_guarded(fn, args)
        return 0

    cdef int _check_idle(self) except -1:
        """The deadline sweep (every ``_idle_period()``): close connections
        silent for ``idle_timeout``, and those whose first-byte, frame or
        close-after-error deadline passed.  The deadlines are one double
        per transport, set in C when a connection is accepted / a frame
        starts, and never moved by the bytes of the same frame: a peer that
        trickles a byte a second cannot keep a frame open."""
        cdef Transport t
        cdef double limit
        cdef double now = self.now
        cdef double next_close = 1e18
        if now < self.next_idle_check:
            return 0
        self.next_idle_check = now + self._idle_period()
        limit = now - self.idle_timeout if self.idle_timeout > 0 else -1e18
        for obj in self.objs:
            if type(obj) is not Transport:
                continue
            t = <Transport>obj
            if t.flags & (T_CLOSED | T_ABORT):
                continue
            if t.dkind == D_CLOSE and now < t.deadline < next_close:
                next_close = t.deadline
            if t.dkind != D_NONE and now >= t.deadline:
                if t.dkind == D_CLOSE:
                    self.close_timeouts += 1
                    self.logger.info("closing connection from %r: its replies were not "
                                     "read within %.1f s of the protocol error",
                                     t.client_address, self.drain_timeout)
                    # the error that closed it stays close_exc
                    self._expire(t, t.close_exc)
                    continue
                if not (t.flags & (T_PAUSED_USER | T_CLOSING | T_EOF)):
                    if t.dkind == D_FIRST_BYTE:
                        self.first_byte_timeouts += 1
                        self.logger.info("closing connection from %r: no data within "
                                         "first_byte_timeout (%r s)", t.client_address,
                                         self.first_byte_timeout)
                        self._expire(t, TimeoutError(
                            "no data within first_byte_timeout (%r s)"
                            % self.first_byte_timeout))
                    else:
                        self.frame_timeouts += 1
                        self.logger.info("closing connection from %r: frame not complete "
                                         "within frame_timeout (%r s)", t.client_address,
                                         self.frame_timeout)
                        self._expire(t, TimeoutError(
                            "frame not complete within frame_timeout (%r s)"
                            % self.frame_timeout))
                    continue
            if t.last_active < limit:
                self.idle_timeouts += 1
                self.logger.info("closing idle connection from %r (silent for %.1f s)",
                                 t.client_address, now - t.last_active)
                self._expire(t, TimeoutError("idle for more than %r s" % self.idle_timeout))
        # a close-after-error deadline is kept even with every timeout off
        if next_close < self.next_idle_check:
            self.next_idle_check = next_close
        return 0

    cdef int _expire(self, Transport t, object exc) except -1:
        t.flags |= T_CLOSING | T_ABORT
        t.dkind = D_NONE
        t.close_exc = exc
        t._schedule_flush()
        return 0

    cdef int _trim_buffers(self) except -1:
        """Release the empty write buffers of connections quiet for
        TRIM_AFTER seconds; runs at most once per TRIM_AFTER, and only while
        some write buffer is allocated."""
        cdef Transport t
        cdef double limit = self.now - TRIM_AFTER
        self.next_trim = self.now + TRIM_AFTER
        for obj in self.objs:
            if type(obj) is Transport:
                t = <Transport>obj
                if (t.wbuf != NULL and t.wend == t.wstart and t.last_active < limit
                        and not (t.flags & T_CLOSED)):
                    PyMem_Free(t.wbuf)
                    self.wbuf_bytes -= t.wcap
                    t.wbuf = NULL
                    t.wcap = 0
                    t.wstart = t.wend = 0
        return 0

    cdef int _timeout_ms(self):
        cdef double deadline = 1e18, d
        if self.ready or self.flush_list or self.resumed:
            return 0
        if self.timers:
            deadline = (<tuple>self.timers[0])[0]
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

    # -- the loop --------------------------------------------------------------

    def stop(self, drain_timeout=None):
        """Ask the loop to stop (thread-safe): stop accepting and reading,
        drain write buffers up to ``drain_timeout`` seconds (default: the
        configured one), close every connection (``connection_lost(None)``),
        return from ``run()``."""
        if drain_timeout is not None:
            self.drain_timeout = drain_timeout
        self.stopping = True
        self._wake()

    def run(self):
        """Run until ``stop()``."""
        cdef Transport t
        cdef DatagramEndpoint ep
        if self.running:
            raise RuntimeError("the loop is already running")
        if self.factory is None and self.listeners:
            raise RuntimeError("configure() the loop before run()")
        self.running = True
        self.now = _monotonic()
        saved_wakeup = self._install_signal_wakeup()
        try:
            while not self.stopping:
                self._poll(self._timeout_ms())
            # graceful stop: no new connections, no more reads, drain writes
            self._set_accepting(False)
            self.drain_deadline = _monotonic() + self.drain_timeout
            for obj in list(self.objs):
                if type(obj) is Transport:
                    t = <Transport>obj
                    t.flags |= T_DRAINING
                    t._schedule_flush()
            self._flush_all()
            while _monotonic() < self.drain_deadline and self._pending_writes():
                self._poll(self._timeout_ms())
        finally:
            if saved_wakeup is not None:
                signal.set_wakeup_fd(saved_wakeup)
            self._close_all()
            self.running = False
            self.stopping = False
        return None

    def _install_signal_wakeup(self):
        """On the main thread: make CPython's C signal handler write to the
        wake pipe, so that a signal wakes the poller wherever it lands (just
        before the wait, or in another thread, which never interrupts this
        one's wait) and its Python handler runs at the next pass.  Returns
        the wake-up fd to restore, or None where nothing was installed."""
        if threading.current_thread() is not threading.main_thread():
            return None
        try:
            return signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        except (ValueError, OSError):
            return None

    def _pending_writes(self):
        cdef Transport t
        for obj in self.objs:
            if type(obj) is Transport:
                t = <Transport>obj
                if t.wend > t.wstart and not (t.flags & T_CLOSED):
                    return True
        return False

    def _close_all(self):
        cdef Transport t
        for obj in list(self.objs):
            if type(obj) is Transport:
                t = <Transport>obj
                if not (t.flags & T_CLOSED):
                    self._finish_close(t, None)
        self.flush_list.clear()
        self.resumed.clear()

    def close(self):
        """Free the poller and the wake-up pipe (after ``run()`` returned).
        Listening and datagram sockets belong to the caller."""
        cdef DatagramEndpoint ep
        if self.running:
            raise RuntimeError("cannot close a running loop")
        self._close_all()
        for ep in self.endpoints:
            if not ep.closed:
                ep.closed = True
                cb = getattr(ep.handler, "connection_lost", None)
                ep.handler = None
                ep.on_datagram = None
                if cb is not None:
                    try:
                        cb(None)
                    except Exception:
                        self._report(None, None)
        self.endpoints = []
        self.listeners = []
        self.recent_addrs = []
        self.objs = []
        self.timers = []
        self.ready.clear()
        self.factory = None
        self.on_error = None
        if self.selector is not None:
            self.selector.close()
            self.selector = None
        if self.epfd >= 0:
            c_close(self.epfd)
            self.epfd = -1
        if self.wake_r >= 0:
            c_close(self.wake_r)
            self.wake_r = -1
        if self.wake_w >= 0:
            c_close(self.wake_w)
            self.wake_w = -1

    cdef int _poll(self, int timeout_ms) except -1:
        cdef epoll_event *evs = <epoll_event *>self.events_buf
        cdef int n, i, err
        cdef Transport t
        # a signal that arrived while C code ran has its Python handler
        # pending: run it now (KeyboardInterrupt, a SIGTERM handler)
        PyErr_CheckSignals()
        if self.use_epoll:
            with nogil:
                n = epoll_wait(self.epfd, evs, self.max_events, timeout_ms)
            if n < 0:
                err = errno
                if err != EINTR:
                    raise _oserror(err)
                PyErr_CheckSignals()
                n = 0
            self.now = _monotonic()
            for i in range(n):
                self._dispatch_guarded(evs[i].data.fd, evs[i].events)
        else:
            ready = self.selector.select(None if timeout_ms < 0 else timeout_ms / 1000.0)
            self.now = _monotonic()
            for key, mask in ready:
                self._dispatch_guarded(
                    key.fd, (EPOLLIN if mask & 1 else 0) | (EPOLLOUT if mask & 2 else 0))
        if self.resumed:
            lst = self.resumed
            self.resumed = []
            for obj in lst:
                t = <Transport>obj
                try:
                    self._deliver_pending(t)
                except Exception:
                    self._internal_failed(t, "delivering buffered frames")
        if self.ready:
            self._run_ready()
        if self.timers:
            self._run_timers()
        if self.now >= self.next_idle_check:
            self._check_idle()
        if self.wbuf_bytes > 0 and self.now >= self.next_trim:
            self._trim_buffers()
        if self.accept_paused_backoff and self.now >= self.accept_resume_at and not self.stopping:
            self.accept_paused_backoff = False
            if not self.accept_paused_limit:
                self._set_accepting(True)
        if self.flush_list:
            self._flush_all()
        return 0

    cdef int _dispatch_guarded(self, int fd, uint32_t ev) except -1:
        """``_dispatch`` under the loop's last line of defence: an exception
        that escaped every narrower handler (MemoryError while building or
        decoding, an OSError from the poller about one fd) closes that
        connection, logged and counted in ``internal_errors``; the loop goes
        on."""
        try:
            self._dispatch(fd, ev)
        except Exception:
            obj = self.objs[fd] if fd < len(self.objs) else None
            if type(obj) is Transport:
                self._internal_failed(<Transport>obj, "serving the connection")
            else:
                self.internal_errors += 1
                self._report(None, None)
        return 0

    cdef int _internal_failed(self, Transport t, str where) except -1:
        """Called inside an ``except`` block, for an exception raised by the
        server's own machinery for one connection (decoder, buffers,
        building it): report it, count it, close that connection now."""
        self.internal_errors += 1
        exc = _current_exception()
        try:
            self.logger.error("closing connection from %r: %s failed: %s: %s",
                              t.client_address, where, type(exc).__name__, exc)
        except Exception:
            pass
        self._report(t, t.client_address)
        if not (t.flags & T_CLOSED):
            try:
                self._finish_close(t, exc)
            except Exception:
                self._report(t, t.client_address)
        return 0

    cdef int _deliver_pending(self, Transport t) except -1:
        """After ``resume_reading()``: deliver the frames held across the
        pause (bytes kept in ``held``, or complete frames still in the
        decoder's buffer), before anything new is read."""
        t.flags &= ~T_RESUMED
        if not (t.flags & (T_CLOSING | T_CLOSED | T_PAUSED_USER)):
            if t.held is not None:
                self._deliver_held(t)
            elif t.partial:
                self._deliver(t, NULL, 0, True)
        return 0

    cdef int _dispatch(self, int fd, uint32_t ev) except -1:
        cdef Transport t
        cdef char drain[256]
        cdef int err
        if fd >= len(self.objs):
            return 0
        obj = self.objs[fd]
        if type(obj) is Transport:
            t = <Transport>obj
            if t.flags & T_CLOSED:
                return 0
            if ev & EPOLLOUT:
                self._flush(t)
                if t.flags & T_CLOSED:
                    return 0
            if ev & (EPOLLIN | EPOLLHUP | EPOLLERR):
                if t.events & EPOLLIN:
                    self._read(t)
                elif ev & (EPOLLHUP | EPOLLERR):
                    # not reading (paused, half-closed or draining) and the
                    # peer is gone: level-triggered HUP would spin, so close.
                    err = cs_sock_error(t.fd)
                    self._finish_close(t, _oserror(err) if err else None)
            return 0
        if type(obj) is Listener:
            self._accept(<Listener>obj)
            return 0
        if type(obj) is DatagramEndpoint:
            if ev & EPOLLOUT:
                self._dgram_write(<DatagramEndpoint>obj)
            if ev & (EPOLLIN | EPOLLERR):
                self._dgram_read(<DatagramEndpoint>obj)
            return 0
        if fd == self.wake_r:
            while c_read(self.wake_r, drain, sizeof(drain)) > 0:
                pass
        return 0

    # -- accept ----------------------------------------------------------------

    cdef int _accept(self, Listener ls) except -1:
        cdef sockaddr_storage ss
        cdef socklen_t alen
        cdef int fd, err, k
        cdef bint made
        cdef Transport t
        for k in range(self.accept_batch):
            if self.max_connections and self.nconn >= self.max_connections:
                if not self.accept_paused_limit:
                    self.accept_paused_limit = True
                    self._set_accepting(False)
                    self.logger.debug("max_connections (%d) reached: not accepting",
                                      self.max_connections)
                return 0
            fd = cs_accept(ls.fd, &ss, &alen)
            if fd < 0:
                err = errno
                if err == EAGAIN or err == EWOULDBLOCK:
                    return 0
                if err == EINTR or err == ECONNABORTED or err == EPROTO or err == EPERM:
                    continue
                self.accept_errors += 1
                if err == EMFILE or err == ENFILE or err == ENOBUFS or err == ENOMEM:
                    self.accept_backoff = min(max(self.accept_backoff * 2, 0.05), 1.0)
                    self.logger.error(
                        "accept() failed: %s; not accepting for %.2f s (%d connections open)",
                        strerror(err).decode("utf-8", "replace"), self.accept_backoff, self.nconn)
                    self.accept_paused_backoff = True
                    self.accept_resume_at = self.now + self.accept_backoff
                    self._set_accepting(False)
                    return 0
                self.logger.error("accept() failed: %s", strerror(err).decode("utf-8", "replace"))
                return 0
            self.accept_backoff = 0.0
            if ls.tcp and self.nodelay:
                cs_nodelay(fd)
            try:
                addr = cs_addr_to_py(&ss, alen)
                t = Transport.__new__(Transport)
                self._register_obj(fd, t)
            except Exception:
                # no memory for even the transport: drop this connection
                self.internal_errors += 1
                c_close(fd)
                self._report(None, None)
                continue
            t.loop = self
            t.fd = fd
            t.client_address = addr
            t.high_water = self.high_water
            t.low_water = self.low_water
            t.last_active = self.now
            if self.first_byte_timeout > 0:
                t.dkind = D_FIRST_BYTE
                t.deadline = self.now + self.first_byte_timeout
            self.nconn += 1
            self.total_conn += 1
            if self.nconn > self.peak_conn:
                self.peak_conn = self.nconn
            made = False
            try:
                handler = self.factory(t, addr)
                if handler is None:
                    self.rejected += 1
                    t.flags |= T_CLOSED
                    self.objs[fd] = None
                    self.nconn -= 1
                    c_close(fd)
                    continue
                t.handler = handler
                if self.framed:
                    t.dec = self.dec_factory()
                    t.on_data = handler.frame_received
                else:
                    t.on_data = handler.data_received
                self._ctl(fd, 0, EPOLLIN)
                t.events = EPOLLIN
                made = True
                handler.connection_made()
            except Exception:
                # the handler class, its __init__, the decoder or
                # connection_made raised (MemoryError included): this
                # connection only is closed, reported and counted
                self._handler_failed(t)
                if not made:
                    t.handler = None
                if t.handler is None:
                    # the handler could not even be set up (its class, its
                    # decoder): no connection_made, so no connection_lost
                    t.flags |= T_CLOSED
                    if t.events:
                        self._ctl(fd, t.events, 0)
                    self.objs[fd] = None
                    self.nconn -= 1
                    c_close(fd)
        return 0

    # -- reading ---------------------------------------------------------------

    cdef int _handler_failed(self, Transport t) except -1:
        """Called inside an ``except`` block: report, abort the connection."""
        self.handler_errors += 1
        t.flags |= T_CLOSING | T_ABORT
        t._schedule_flush()
        self._report(t, t.client_address)
        return 0

    cdef int _read(self, Transport t) except -1:
        cdef ssize_t n
        cdef int err
        cdef char *ptr
        cdef Py_ssize_t room
        if not self.framed:
            n = recv(t.fd, self.slab, self.slab_size, 0)
            if n > 0:
                self.bytes_in += n
                t.last_active = self.now
                if t.dkind == D_FIRST_BYTE:
                    t.dkind = D_NONE
                try:
                    t.on_data(PyBytes_FromStringAndSize(self.slab, n))
                except Exception:
                    self._handler_failed(t)
                return 0
        elif t.held is not None or t.flags & T_RESUMED:
            # resumed with bytes received before the pause (``held``, or
            # complete frames still in the decoder's buffer): they go first,
            # before anything new, an end of stream included, is read
            self._deliver_pending(t)
            return 0
        elif not t.partial:
            # common case: frames decoded in place in the shared slab; the
            # tail of an incomplete frame goes to the decoder's pooled buffer
            n = recv(t.fd, self.slab, self.slab_size, 0)
            if n > 0:
                self.bytes_in += n
                t.last_active = self.now
                if t.dkind == D_FIRST_BYTE:
                    t.dkind = D_NONE
                self._deliver(t, self.slab, n, False)
                return 0
        else:
            # a frame is in progress: read straight into the decoder's
            # buffer (sized by the framing layer for the announced frame)
            try:
                room = t.dec.get_write_buffer(0, &ptr)
            except FrameError as exc:
                self._bad_frame(t, exc)
                return 0
            except Exception:
                self._internal_failed(t, "getting a receive buffer")
                return 0
            n = recv(t.fd, ptr, room, 0)
            if n > 0:
                self.bytes_in += n
                t.last_active = self.now
                try:
                    t.dec.write_done(n)
                except FrameError as exc:
                    self._bad_frame(t, exc)
                    return 0
                except Exception:
                    self._internal_failed(t, "decoding")
                    return 0
                self._deliver(t, NULL, 0, True)
                return 0
        if n == 0:
            return self._read_eof(t)
        err = errno
        if err == EAGAIN or err == EWOULDBLOCK or err == EINTR:
            return 0
        self._finish_close(t, _oserror(err))
        return 0

    cdef int _read_eof(self, Transport t) except -1:
        cdef bint keep_open = False
        if self.framed:
            try:
                t.dec.check_eof()
            except FrameError as exc:
                t.flags |= T_EOF
                self._bad_frame(t, exc)
                return 0
            except Exception:
                self._internal_failed(t, "decoding")
                return 0
        t.flags |= T_EOF
        try:
            keep_open = bool(t.handler.eof_received())
        except Exception:
            self._handler_failed(t)
            return 0
        if not keep_open:
            t.flags |= T_CLOSING
            t._schedule_flush()
        self._update(t)
        return 0

    cdef int _deliver(self, Transport t, const char *data, Py_ssize_t n,
                      bint buffered) except -1:
        """Call ``frame_received`` once per complete frame decoded (by the
        framing layer's C decoder) from what it buffered and ``data[:n]``.
        Stops early when the handler paused reading or closed: the rest of
        ``data`` is kept (``held``) for ``resume_reading()``."""
        cdef FrameDecoder dec = t.dec
        cdef const char *frame
        cdef Py_ssize_t frame_size, used = 0, pos = 0, delivered = 0
        cdef int r
        cdef bint was_partial = t.partial
        try:
            while True:
                if t.flags & (T_CLOSING | T_CLOSED | T_PAUSED_USER):
                    if pos < n and not (t.flags & (T_CLOSING | T_CLOSED)):
                        t.held = PyBytes_FromStringAndSize(data + pos, n - pos)
                    t.partial = buffered
                    return 0
                r = dec.next_frame(data + pos if pos < n else NULL, n - pos,
                                   &used, &frame, &frame_size)
                pos += used
                if r == 0:
                    break
                self.frames_in += 1
                delivered += 1
                # a frame larger than a pool slab was received straight into
                # a bytes object: deliver that object, no copy
                obj = dec.take_frame_object()
                if obj is None:
                    obj = PyBytes_FromStringAndSize(frame, frame_size)
                try:
                    t.on_data(obj)
                except Exception:
                    self._handler_failed(t)
                    return 0
        except FrameError as exc:
            self._bad_frame(t, exc)
            return 0
        except Exception:
            # MemoryError (or any other failure) of the decoder or of the
            # frame's bytes object: this connection only
            self._internal_failed(t, "decoding")
            return 0
        # next_frame returned 0: every byte is consumed.  Decoding in place,
        # the decoder holds a partial frame iff it took bytes in that call;
        # reading into its buffer, ask it.
        t.partial = used > 0 if not buffered else dec.pending > 0
        # The frame deadline: armed when a frame starts (the first bytes of
        # a new frame arrived in this read) and left alone while the same
        # frame continues, so trickling bytes cannot extend it.
        if t.partial:
            if (not was_partial or delivered) and self.frame_timeout > 0:
                t.dkind = D_FRAME
                t.deadline = self.now + self.frame_timeout
        elif t.dkind == D_FRAME:
            t.dkind = D_NONE
        return 0

    cdef int _deliver_held(self, Transport t) except -1:
        data = t.held
        t.held = None
        return self._deliver(t, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), False)

    cdef int _bad_frame(self, Transport t, object exc) except -1:
        """The peer broke the framing: the handler's ``frame_error(exc)``
        runs (it may still send a last frame, or ``abort()``), then the
        connection closes once the replies already queued are sent (within
        ``drain_timeout`` seconds; a peer that does not read them is then
        cut off).  ``connection_lost`` gets ``exc``."""
        self.frame_errors += 1
        hook = getattr(t.handler, "frame_error", None)
        if hook is None:
            self.logger.warning("closing connection from %r: %s", t.client_address, exc)
        else:
            try:
                hook(exc)
            except Exception:
                self._handler_failed(t)
                return 0
        if t.flags & T_CLOSED:
            return 0
        if not (t.flags & T_ABORT):
            t.dkind = D_CLOSE
            t.deadline = self.now + self.drain_timeout
            if t.deadline < self.next_idle_check:
                self.next_idle_check = t.deadline
        t.flags |= T_CLOSING
        t.close_exc = exc
        t._schedule_flush()
        self._update(t)
        return 0

    # -- writing ---------------------------------------------------------------

    cdef int _flush(self, Transport t) except -1:
        cdef ssize_t r
        cdef int err
        cdef Py_ssize_t pending
        if t.flags & T_CLOSED:
            return 0
        if t.flags & T_ABORT:
            return self._finish_close(t, t.close_exc)
        pending = t.wend - t.wstart
        if pending > 0:
            r = send(t.fd, t.wbuf + t.wstart, pending, MSG_NOSIGNAL)
            if r >= 0:
                self.bytes_out += r
                t.wstart += r
                pending -= r
                if r:
                    t.last_active = self.now
                if pending == 0:
                    t.wstart = t.wend = 0
                    if t.wcap > KEEP_WBUF:
                        PyMem_Free(t.wbuf)
                        self.wbuf_bytes -= t.wcap
                        t.wbuf = NULL
                        t.wcap = 0
            else:
                err = errno
                if err != EAGAIN and err != EWOULDBLOCK and err != EINTR:
                    return self._finish_close(t, _oserror(err))
        if pending == 0 and t.flags & T_CLOSING:
            return self._finish_close(t, t.close_exc)
        if t.flags & T_PAUSED_WRITE:
            if pending <= t.low_water:
                t.flags &= ~T_PAUSED_WRITE
                try:
                    t.handler.resume_writing()
                except Exception:
                    self._handler_failed(t)
        elif pending > t.high_water and not (t.flags & T_CLOSING):
            t.flags |= T_PAUSED_WRITE
            try:
                t.handler.pause_writing()
            except Exception:
                self._handler_failed(t)
        self._update(t)
        return 0

    cdef int _flush_all(self) except -1:
        cdef Py_ssize_t i = 0
        cdef Transport t
        cdef list lst = self.flush_list
        while i < len(lst):
            t = <Transport>lst[i]
            i += 1
            t.flags &= ~T_IN_FLUSH
            self._flush(t)
        del lst[:]
        return 0

    cdef int _finish_close(self, Transport t, object exc) except -1:
        if t.flags & T_CLOSED:
            return 0
        t.flags |= T_CLOSED
        if t.events:
            if self.use_epoll:
                epoll_ctl(self.epfd, EPOLL_CTL_DEL, t.fd, NULL)
            else:
                self.selector.unregister(t.fd)
        elif self.use_epoll:
            epoll_ctl(self.epfd, EPOLL_CTL_DEL, t.fd, NULL)
        t.events = 0
        c_close(t.fd)
        if t.fd < len(self.objs) and self.objs[t.fd] is t:
            self.objs[t.fd] = None
        self.nconn -= 1
        if t.dec is not None:
            t.dec.release_buffer()
            t.dec = None
        t.held = None
        t.partial = False
        if t.wbuf != NULL:
            PyMem_Free(t.wbuf)
            self.wbuf_bytes -= t.wcap
            t.wbuf = NULL
            t.wcap = t.wstart = t.wend = 0
        handler = t.handler
        t.handler = None
        t.on_data = None
        t.close_exc = None
        if self.accept_paused_limit and not self.stopping and \
                self.nconn < self.max_connections:
            self.accept_paused_limit = False
            if not self.accept_paused_backoff:
                self._set_accepting(True)
        if handler is not None:
            try:
                handler.connection_lost(exc)
            except Exception:
                self.handler_errors += 1
                self._report(t, t.client_address)
        return 0

    # -- datagrams -------------------------------------------------------------

    cdef int _dgram_read(self, DatagramEndpoint ep) except -1:
        cdef sockaddr_storage ss
        cdef socklen_t alen
        cdef ssize_t n
        cdef int k, err, i, cnt
        cdef cs_mmsg_t *mm = <cs_mmsg_t *>self.mmsg
        if mm != NULL:
            # Linux: batches of datagrams per syscall (recvmmsg)
            for k in range(DGRAM_BATCH // CS_MMSG_N):
                # the batch buffers are reused: forget the previous addresses
                del self.recent_addrs[:]
                cnt = cs_recvmmsg(ep.fd, mm)
                if cnt < 0:
                    err = errno
                    if err == EAGAIN or err == EWOULDBLOCK:
                        return 0
                    if err == EINTR:
                        continue
                    if err == ENOSYS:
                        PyMem_Free(self.mmsg)
                        self.mmsg = NULL
                        break
                    self._dgram_error(ep, err)
                    return 0
                for i in range(cnt):
                    if ep.closed:
                        return 0
                    n = cs_mmsg_len(mm, i)
                    self.bytes_in += n
                    self.frames_in += 1
                    addr = cs_addr_to_py(cs_mmsg_addr(mm, i), cs_mmsg_addrlen(mm, i))
                    self.recent_addrs.append(addr)
                    try:
                        ep.on_datagram(PyBytes_FromStringAndSize(cs_mmsg_data(mm, i), n), addr)
                    except Exception:
                        self.handler_errors += 1
                        self._report(ep, addr)
                if cnt < CS_MMSG_N:
                    return 0
            if self.mmsg != NULL:
                return 0
        for k in range(DGRAM_BATCH):
            if ep.closed:
                return 0
            n = cs_recvfrom(ep.fd, self.slab, self.slab_size, &ss, &alen)
            if n < 0:
                err = errno
                if err == EAGAIN or err == EWOULDBLOCK:
                    return 0
                if err == EINTR:
                    continue
                self._dgram_error(ep, err)
                return 0
            self.bytes_in += n
            self.frames_in += 1
            addr = cs_addr_to_py(&ss, alen)
            try:
                ep.on_datagram(PyBytes_FromStringAndSize(self.slab, n), addr)
            except Exception:
                self.handler_errors += 1
                self._report(ep, addr)
        return 0

    def _dgram_error(self, DatagramEndpoint ep, int err):
        _error_received(self, ep, _oserror(err))

    cdef int _dgram_write(self, DatagramEndpoint ep) except -1:
        while ep.queue:
            data, addr = ep.queue[0]
            try:
                if addr is None:
                    ep.sock.send(data)
                else:
                    ep.sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return 0
            except OSError as exc:
                _error_received(self, ep, exc)
            else:
                self.bytes_out += len(data)
            ep.queue.popleft()
        self._ctl(ep.fd, ep.events, ep.events & ~EPOLLOUT)
        ep.events &= ~EPOLLOUT
        return 0

    # -- introspection ---------------------------------------------------------

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
            "accepting": any((<Listener>ls).events != 0 for ls in self.listeners),
            "timers": len(self.timers),
            "pool": {
                "read_slab_bytes": self.slab_size,
                "framing": self.pool.stats() if self.pool is not None else None,
                "write_buffer_bytes": self.wbuf_bytes,
                "write_buffer_bytes_peak": self.wbuf_peak,
            },
        }

    def connections(self):
        """The handlers of the open connections (a new list)."""
        cdef Transport t
        out = []
        for obj in self.objs:
            if type(obj) is Transport:
                t = <Transport>obj
                if t.handler is not None:
                    out.append(t.handler)
        return out
