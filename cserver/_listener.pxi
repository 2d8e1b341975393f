# The listening-socket handle (included by _loop.pyx): accept.


@cython.final
cdef class Listener(Handle):
    """A listening socket of the loop (internal): accepts a batch of
    connections per readiness event (accept4: non-blocking, close-on-exec;
    TCP_NODELAY on TCP)."""

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
        cdef int fd, k
        cdef Loop loop = self.loop
        for k in range(loop.accept_batch):
            if loop.max_connections and loop.nconn >= loop.max_connections:
                if not loop.accept_paused_limit:
                    loop.accept_paused_limit = True
                    loop._set_accepting(False)
                    loop.logger.debug("max_connections (%d) reached: not accepting",
                                      loop.max_connections)
                return 0
            fd = cs_accept(self.fd, &ss, &alen)
            if fd < 0:
                if self._accept_failed(errno):
                    continue
                return 0
            loop.accept_backoff = 0.0
            if self.tcp and loop.nodelay:
                cs_nodelay(fd)
            if self.proxy:
                # PROXY protocol: the header comes first (_proxystage.pxi)
                _proxy_accept(self, fd, &ss, alen)
            else:
                self._new_transport(fd, &ss, alen)
        return 0

    cdef int _accept_failed(self, int err) except -1:
        """accept() failed with ``err``: returns 1 to go on accepting, 0 to
        stop this batch.  Out of descriptors or memory: stop accepting for
        a backoff that doubles (50 ms to 1 s) while it lasts."""
        cdef Loop loop = self.loop
        if err == EAGAIN or err == EWOULDBLOCK:
            return 0
        if err == EINTR or err == ECONNABORTED or err == EPROTO or err == EPERM:
            return 1
        loop.accept_errors += 1
        if err == EMFILE or err == ENFILE or err == ENOBUFS or err == ENOMEM:
            loop.accept_backoff = min(max(loop.accept_backoff * 2, 0.05), 1.0)
            loop.logger.error(
                "accept() failed: %s; not accepting for %.2f s (%d connections open)",
                strerror(err).decode("utf-8", "replace"), loop.accept_backoff, loop.nconn)
            loop.accept_paused_backoff = True
            loop.accept_resume_at = loop.now + loop.accept_backoff
            loop._set_accepting(False)
            return 0
        loop.logger.error("accept() failed: %s", strerror(err).decode("utf-8", "replace"))
        return 0

    cdef int _new_transport(self, int fd, void *ss, unsigned int alen) except -1:
        """Build the transport of an accepted ``fd``, start reading; then
        its handler (``Transport._open``: the factory, the decoder,
        ``connection_made``), or first its TLS handshake.  Any failure
        closes this connection only."""
        cdef Loop loop = self.loop
        cdef Transport t
        try:
            addr = cs_addr_to_py(<sockaddr_storage *>ss, alen)
            t = Transport.__new__(Transport)
            t.loop = loop
            t.fd = fd
            loop._register(t)
        except Exception:
            # no memory for even the transport: drop this connection
            loop.internal_errors += 1
            c_close(fd)
            loop._report(None, None)
            return 0
        t._start(addr)
        try:
            loop.poller.add(fd, EPOLLIN)
            t.events = EPOLLIN
            if self.tls:
                return t._tls_begin(NULL, 0)
        except Exception:
            loop.internal_errors += 1
            loop._report(t, addr)
            return t._discard()
        t._open()
        return 0


cdef Listener _new_listener(Loop loop, object sock, bint proxy, bint tls):
    cdef Listener ls = Listener.__new__(Listener)
    sock.setblocking(False)
    ls.loop = loop
    ls.fd = sock.fileno()
    ls.sock = sock
    ls.tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
    ls.proxy = proxy
    ls.tls = tls
    return ls
