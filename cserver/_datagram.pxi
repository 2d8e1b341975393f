# The datagram-socket handle (included by _loop.pyx): UDP.


@cython.final
cdef class DatagramEndpoint(Handle):
    """The datagram socket of a UDP server (internal; the handler reaches it
    as ``self.transport``)."""

    cdef int start(self) except -1:
        """Start reading; ``connection_made()`` if the handler has it."""
        self.loop.poller.add(self.fd, EPOLLIN)
        self.events = EPOLLIN
        cb = getattr(self.handler, "connection_made", None)
        if cb is not None:
            cb()
        return 0

    cdef int on_events(self, uint32_t ev) except -1:
        if ev & EPOLLOUT:
            self._write_queued()
        if ev & (EPOLLIN | EPOLLERR):
            if self.loop.mmsg != NULL:
                self._read_batches()
            if self.loop.mmsg == NULL:
                self._read_one_by_one()
        return 0

    cdef int _received(self, const char *data, Py_ssize_t n, object addr) except -1:
        """One datagram: ``datagram_received(data, addr)``, guarded."""
        cdef Loop loop = self.loop
        loop.bytes_in += n
        loop.frames_in += 1
        try:
            self.on_datagram(PyBytes_FromStringAndSize(data, n), addr)
        except Exception:
            loop._user_error(self, addr)
        return 0

    cdef int _read_batches(self) except -1:
        """Linux: batches of datagrams per syscall (recvmmsg).  Where the
        kernel has no recvmmsg, frees the batch buffers (the loop then
        reads one by one)."""
        cdef Loop loop = self.loop
        cdef cs_mmsg_t *mm = <cs_mmsg_t *>loop.mmsg
        cdef int k, err, i, cnt
        for k in range(DGRAM_BATCH // CS_MMSG_N):
            # the batch buffers are reused: forget the previous addresses
            del loop.recent_addrs[:]
            cnt = cs_recvmmsg(self.fd, mm)
            if cnt < 0:
                err = errno
                if err == EAGAIN or err == EWOULDBLOCK:
                    return 0
                if err == EINTR:
                    continue
                if err == ENOSYS:
                    PyMem_Free(loop.mmsg)
                    loop.mmsg = NULL
                    return 0
                return self._error(_oserror(err))
            for i in range(cnt):
                if self.closed:
                    return 0
                addr = cs_addr_to_py(cs_mmsg_addr(mm, i), cs_mmsg_addrlen(mm, i))
                loop.recent_addrs.append(addr)
                self._received(cs_mmsg_data(mm, i), cs_mmsg_len(mm, i), addr)
            if cnt < CS_MMSG_N:
                return 0
        return 0

    cdef int _read_one_by_one(self) except -1:
        cdef sockaddr_storage ss
        cdef socklen_t alen
        cdef ssize_t n
        cdef int k, err
        cdef Loop loop = self.loop
        for k in range(DGRAM_BATCH):
            if self.closed:
                return 0
            n = cs_recvfrom(self.fd, loop.slab, loop.slab_size, &ss, &alen)
            if n < 0:
                err = errno
                if err == EAGAIN or err == EWOULDBLOCK:
                    return 0
                if err == EINTR:
                    continue
                return self._error(_oserror(err))
            self._received(loop.slab, n, cs_addr_to_py(&ss, alen))
        return 0

    cdef int _write_queued(self) except -1:
        """Writable: send the queued datagrams, in order, until the socket
        is full again."""
        while self.queue:
            data, addr = self.queue[0]
            try:
                if addr is None:
                    self.sock.send(data)
                else:
                    self.sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return 0
            except OSError as exc:
                self._error(exc)
            else:
                self.loop.bytes_out += len(data)
            self.queue.popleft()
        self.loop.poller.modify(self.fd, self.events, self.events & ~EPOLLOUT)
        self.events &= ~EPOLLOUT
        return 0

    cdef int _error(self, object exc) except -1:
        """Pass a socket error to the handler's ``error_received`` under the
        loop's guarded-call policy."""
        cb = getattr(self.handler, "error_received", None)
        if cb is None:
            return 0
        try:
            cb(exc)
        except Exception:
            self.loop._user_error(self, None)
        return 0

    cdef int _lost(self) except -1:
        """The loop is closing: ``connection_lost(None)``, once."""
        if self.closed:
            return 0
        self.closed = True
        cb = getattr(self.handler, "connection_lost", None)
        self.handler = None
        self.on_datagram = None
        if cb is not None:
            try:
                cb(None)
            except Exception:
                self.loop._user_error(None, None)
        return 0

    def sendto(self, data, addr=None):
        """Send one datagram; if the socket buffer is full it is queued and
        sent when the socket is writable."""
        cdef Loop loop = self.loop
        cdef cs_mmsg_t *mm = <cs_mmsg_t *>loop.mmsg
        cdef Py_ssize_t i, n
        cdef ssize_t r
        cdef int err
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
                        self._error(_oserror(err))
                        return
                    break
        if not self.queue:
            try:
                if addr is None:
                    self.sock.send(data)
                else:
                    self.sock.sendto(data, addr)
                loop.bytes_out += len(data)
                return
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self._error(exc)
                return
        self.queue.append((bytes(data), addr))
        if not (self.events & EPOLLOUT):
            loop.poller.modify(self.fd, self.events, self.events | EPOLLOUT)
            self.events |= EPOLLOUT

    def fileno(self):
        return self.fd

    def get_write_buffer_size(self):
        return sum(len(d) for d, a in self.queue)


cdef DatagramEndpoint _new_endpoint(Loop loop, object sock, object handler_factory):
    cdef DatagramEndpoint ep = DatagramEndpoint.__new__(DatagramEndpoint)
    sock.setblocking(False)
    ep.loop = loop
    ep.fd = sock.fileno()
    ep.sock = sock
    ep.queue = collections.deque()
    ep.handler = handler_factory(ep)
    ep.on_datagram = ep.handler.datagram_received
    return ep
