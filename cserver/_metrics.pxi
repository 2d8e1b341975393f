# The metrics endpoint's handles (included by _loop.pyx): a listening socket
# of the loop whose connections get a small HTTP/1.x handler that answers
# ``GET /metrics`` with the body its ``render()`` callable returns (the
# Prometheus text exposition: cserver._metrics).
#
# Why handles of their own, not a Listener with another factory: a scrape
# connection is never a Transport, so it is outside everything the data
# connections go through by construction: the max_connections accounting
# (``nconn``), the PROXY header stage and frame decoding in
# ``Listener._new_transport`` / ``Transport``, the data counters (bytes,
# frames, timeouts: a scrape does not change what it reports), the deadline
# sweep.  ``Listener`` and ``Transport`` are unchanged: the hot path is.
#
# What a scraper can cost (every byte is an attacker's): a request (request
# line and headers) of at most METRICS_MAX_REQUEST bytes, read into one fixed
# buffer (a longer one is refused, never buffered); one deadline per
# connection, set at accept and never moved, for the whole exchange (request,
# response, close); at most METRICS_MAX_OPEN open scrape connections per
# listener (more wait in the kernel's backlog); METRICS_ACCEPT_BATCH accepts
# per readiness event.  A render runs on the loop's thread, once per valid
# request.

cdef extern from "<sys/socket.h>":
    int shutdown(int fd, int how)
    int SHUT_WR

#: the longest request (request line and headers) a scrape may send
cdef Py_ssize_t METRICS_MAX_REQUEST = 8192
#: what a scrape connection still reads and discards once answered (the
#: rest of its request, already received), so that closing it does not
#: reset the response away
cdef Py_ssize_t METRICS_LINGER = 65536
#: open scrape connections per metrics listener; more wait in the backlog
cdef Py_ssize_t METRICS_MAX_OPEN = 64
#: accepts per readiness event of a metrics listener
cdef int METRICS_ACCEPT_BATCH = 16
#: how long a metrics listener stops accepting after accept() failed
#: (out of descriptors or memory)
cdef double METRICS_ACCEPT_BACKOFF = 1.0

cdef bytes _METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

cdef enum:
    # MetricsConn.state (only forward)
    M_REQUEST = 0    # reading the request line and headers
    M_RESPONSE = 1   # sending the response
    M_LINGER = 2     # response sent, write side shut: discarding what came, closing
    M_CLOSED = 3


@cython.final
cdef class MetricsListener(Handle):
    """The metrics endpoint's listening socket (internal; made by
    ``Loop.add_metrics_listener``).  Not a ``Listener``: see above."""

    cdef object sock
    cdef object render
    cdef double timeout
    cdef set conns
    cdef bint paused_full
    cdef bint stopped
    cdef TimerHandle resume_timer
    # what the endpoint did (Loop.stats()["metrics"])
    cdef Py_ssize_t ok, refused, failed, timeouts, accept_errors

    cdef int set_accepting(self, bint on) except -1:
        if on and self.events == 0:
            self.loop.poller.add(self.fd, EPOLLIN)
            self.events = EPOLLIN
        elif not on and self.events:
            self.loop.poller.remove(self.fd, self.events)
            self.events = 0
        return 0

    cdef int on_events(self, uint32_t ev) except -1:
        cdef sockaddr_storage ss
        cdef socklen_t alen
        cdef int fd, k, err
        cdef Loop loop = self.loop
        for k in range(METRICS_ACCEPT_BATCH):
            if len(self.conns) >= METRICS_MAX_OPEN:
                self.paused_full = True
                self.set_accepting(False)
                return 0
            fd = cs_accept(self.fd, &ss, &alen)
            if fd < 0:
                err = errno
                if err == EAGAIN or err == EWOULDBLOCK:
                    return 0
                if err == EINTR or err == ECONNABORTED or err == EPROTO or err == EPERM:
                    continue
                self.accept_errors += 1
                loop.logger.error("metrics endpoint: accept() failed: %s; not accepting "
                                  "scrapes for %.1f s",
                                  strerror(err).decode("utf-8", "replace"),
                                  METRICS_ACCEPT_BACKOFF)
                self.set_accepting(False)
                self.resume_timer = loop.timers.push(loop.now + METRICS_ACCEPT_BACKOFF,
                                                     self._resume, ())
                return 0
            self._new_conn(fd, &ss, alen)
        return 0

    def _resume(self):
        """The end of an accept back-off (a timer)."""
        self.resume_timer = None
        if not self.stopped and not self.paused_full:
            self.set_accepting(True)

    cdef int _new_conn(self, int fd, sockaddr_storage *ss, socklen_t alen) except -1:
        cdef Loop loop = self.loop
        cdef MetricsConn c = None
        try:
            c = MetricsConn.__new__(MetricsConn)
            c.loop = loop
            c.owner = self
            c.fd = fd
            self.conns.add(c)
            c.buf = <char *>PyMem_Malloc(METRICS_MAX_REQUEST)
            if c.buf == NULL:
                raise MemoryError()
            c.peer = cs_addr_to_py(ss, alen)
            loop._register(c)
            loop.poller.add(fd, EPOLLIN)
            c.events = EPOLLIN
            c.timer = loop.timers.push(loop.now + self.timeout, c._expire, ())
        except Exception:
            loop._report(None, None)
            if c is None:
                c_close(fd)
            else:
                c._close()
        return 0

    cdef int _conn_closed(self) except -1:
        if self.paused_full and len(self.conns) < METRICS_MAX_OPEN:
            self.paused_full = False
            if not self.stopped and self.resume_timer is None:
                self.set_accepting(True)
        return 0

    cdef int _stop(self) except -1:
        """The loop stops: no more scrapes accepted."""
        self.stopped = True
        self.set_accepting(False)
        return 0

    cdef int _close_all(self) except -1:
        cdef MetricsConn c
        for c in list(self.conns):
            c._close()
        return 0

    cdef dict _stats(self):
        return {"ok": self.ok, "refused": self.refused, "failed": self.failed,
                "timeouts": self.timeouts, "accept_errors": self.accept_errors,
                "open": len(self.conns)}


@cython.final
cdef class MetricsConn(Handle):
    """One scrape connection (internal): read a request into a fixed buffer,
    answer it, shut the write side, discard what already came, close; all
    within the listener's ``timeout`` of the accept."""

    cdef MetricsListener owner
    cdef int state
    cdef char *buf
    cdef Py_ssize_t n
    cdef bint line_ok
    cdef bint head
    cdef object peer
    cdef bytes out
    cdef Py_ssize_t sent, discarded
    cdef TimerHandle timer

    def __cinit__(self):
        self.buf = NULL

    def __dealloc__(self):
        if self.buf != NULL:
            PyMem_Free(self.buf)
            self.buf = NULL

    cdef int on_events(self, uint32_t ev) except -1:
        try:
            if self.state == M_REQUEST:
                self._read_request()
            elif self.state == M_RESPONSE:
                self._send()
            elif self.state == M_LINGER:
                self._discard_input()
        except Exception:
            # the endpoint's own failure (MemoryError...): this scrape only
            self.loop.internal_errors += 1
            self.loop._report(None, self.peer)
            self._close()
        return 0

    cdef int _want(self, uint32_t events) except -1:
        if events != self.events:
            self.loop.poller.modify(self.fd, self.events, events)
            self.events = events
        return 0

    cdef int _read_request(self) except -1:
        cdef ssize_t r = recv(self.fd, self.buf + self.n, METRICS_MAX_REQUEST - self.n, 0)
        cdef int err = errno
        if r == 0:
            return self._close()  # gone before its request was complete
        if r < 0:
            if err == EAGAIN or err == EWOULDBLOCK or err == EINTR:
                return 0
            return self._close()
        self.n += r
        return self._parse()

    cdef int _parse(self) except -1:
        """Answer once the request is complete or known to be bad: a bad
        request line (HTTP/0.9, garbage) at its end, a wrong method or path
        too; a request that does not fit the buffer is refused."""
        data = PyBytes_FromStringAndSize(self.buf, self.n)
        if not self.line_ok:
            eol = data.find(b"\n")
            if eol < 0:
                if self.n >= METRICS_MAX_REQUEST:
                    return self._refuse(414, b"URI Too Long", b"")
                return 0
            parts = data[:eol].rstrip(b"\r").split(b" ")
            if len(parts) != 3 or parts[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
                return self._refuse(400, b"Bad Request", b"")
            method = parts[0]
            if method != b"GET" and method != b"HEAD":
                return self._refuse(405, b"Method Not Allowed", b"Allow: GET, HEAD\r\n")
            if parts[1].split(b"?", 1)[0] != b"/metrics":
                return self._refuse(404, b"Not Found", b"")
            self.line_ok = True
            self.head = method == b"HEAD"
        if data.find(b"\r\n\r\n") < 0 and data.find(b"\n\n") < 0:
            if self.n >= METRICS_MAX_REQUEST:
                return self._refuse(431, b"Request Header Fields Too Large", b"")
            return 0
        return self._serve()

    cdef int _serve(self) except -1:
        cdef MetricsListener owner = self.owner
        try:
            body = owner.render()
            if type(body) is not bytes:
                raise TypeError("the metrics render() returned %s, not bytes"
                                % type(body).__name__)
        except Exception:
            owner.failed += 1
            self.loop._report(None, self.peer)
            return self._respond(500, b"Internal Server Error", b"text/plain; charset=utf-8",
                                 b"", b"the metrics could not be rendered\n")
        owner.ok += 1
        return self._respond(200, b"OK", _METRICS_CONTENT_TYPE, b"", body)

    cdef int _refuse(self, int code, bytes reason, bytes extra) except -1:
        self.owner.refused += 1
        return self._respond(code, reason, b"text/plain; charset=utf-8", extra,
                             reason + b"\n")

    cdef int _respond(self, int code, bytes reason, bytes ctype, bytes extra,
                      bytes body) except -1:
        head = (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n%s\r\n"
                % (code, reason, ctype, len(body), extra))
        self.out = head if self.head else head + body
        self.sent = 0
        self.state = M_RESPONSE
        return self._send()

    cdef int _send(self) except -1:
        cdef Py_ssize_t total = PyBytes_GET_SIZE(self.out)
        cdef ssize_t r = send(self.fd, PyBytes_AS_STRING(self.out) + self.sent,
                              total - self.sent, MSG_NOSIGNAL)
        cdef int err = errno
        if r < 0:
            if err == EAGAIN or err == EWOULDBLOCK or err == EINTR:
                return self._want(EPOLLOUT)
            return self._close()
        self.sent += r
        if self.sent < total:
            return self._want(EPOLLOUT)
        self.out = None
        shutdown(self.fd, SHUT_WR)
        self.state = M_LINGER
        return self._discard_input()

    cdef int _discard_input(self) except -1:
        """Answered: read and drop what the peer already sent (at most
        METRICS_LINGER bytes), then close.  A close with unread bytes
        would reset the connection, and the peer could lose the answer;
        the connection never waits for the peer's own close."""
        cdef ssize_t r
        while self.discarded <= METRICS_LINGER:
            r = recv(self.fd, self.buf, METRICS_MAX_REQUEST, 0)
            if r <= 0:
                break
            self.discarded += r
        return self._close()

    def _expire(self):
        """The connection's deadline (a timer): close it, whatever its state."""
        self.timer = None
        if self.state != M_CLOSED:
            self.owner.timeouts += 1
            self.loop.logger.debug("metrics endpoint: closing the scrape connection from "
                                   "%r: not done within %.1f s", self.peer, self.owner.timeout)
            self._close()

    cdef int _close(self) except -1:
        cdef Loop loop = self.loop
        cdef MetricsListener owner = self.owner
        if self.state == M_CLOSED:
            return 0
        self.state = M_CLOSED
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.fd >= 0:
            if self.events:
                loop.poller.remove(self.fd, self.events)
                self.events = 0
            loop._forget(self)
            c_close(self.fd)
            self.fd = -1
        self.out = None
        if self.buf != NULL:
            PyMem_Free(self.buf)
            self.buf = NULL
        owner.conns.discard(self)
        return owner._conn_closed()


cdef MetricsListener _new_metrics_listener(Loop loop, object sock, object render,
                                           double timeout):
    cdef MetricsListener ml = MetricsListener.__new__(MetricsListener)
    sock.setblocking(False)
    ml.loop = loop
    ml.fd = sock.fileno()
    ml.sock = sock
    ml.render = render
    ml.timeout = timeout
    ml.conns = set()
    return ml
