# The connection handle (included by _loop.pyx): read, deliver, flush,
# close, and the write buffer.

cdef tuple _STATE_NAMES = ("open", "closing", "aborting", "closed")


def _check_transition(int old, int new):
    """The rule ``Transport._set_state`` enforces: states only go forward
    (OPEN 0 -> CLOSING 1 -> ABORTING 2 -> CLOSED 3, steps may be skipped).
    Raises RuntimeError for any other transition."""
    if not (S_OPEN <= old <= S_CLOSED and S_OPEN <= new <= S_CLOSED) or new <= old:
        raise RuntimeError("illegal transport state transition: %s -> %s" % (
            _STATE_NAMES[old] if S_OPEN <= old <= S_CLOSED else old,
            _STATE_NAMES[new] if S_OPEN <= new <= S_CLOSED else new))


@cython.final
cdef class Transport(Handle):
    """One connection of the multiplexing server (internal; handlers reach
    it as ``self.transport``).

    Methods are only to be called from the loop's thread (use the server's
    ``call_soon_threadsafe`` from other threads).
    """

    def __cinit__(self):
        self.wbuf = NULL

    def __dealloc__(self):
        self._free_wbuf()

    def __repr__(self):
        return "<cserver Transport fd=%d %s peer=%r>" % (
            self.fd, _STATE_NAMES[self.state], self.client_address)

    @property
    def state(self):
        """``"open"``, ``"closing"`` (flushing, then closing), ``"aborting"``
        (closing without flushing) or ``"closed"``."""
        return _STATE_NAMES[self.state]

    # -- state -------------------------------------------------------------------

    cdef int _set_state(self, int new) except -1:
        if new <= self.state:
            _check_transition(self.state, new)
        self.state = new
        return 0

    cdef int _begin_close(self, object exc) except -1:
        """Close once the write buffer is sent (no-op if already closing);
        ``exc`` (if not None) is what ``connection_lost`` gets."""
        if self.state == S_OPEN:
            self._set_state(S_CLOSING)
        if exc is not None:
            self.close_exc = exc
        self._schedule_flush()
        return 0

    cdef int _abort(self, object exc) except -1:
        """Close at the end of this pass, discarding the write buffer."""
        if self.state < S_ABORTING:
            self._set_state(S_ABORTING)
        if exc is not None:
            self.close_exc = exc
        self._schedule_flush()
        return 0

    cdef int _schedule_flush(self) except -1:
        cdef Loop loop
        if not (self.flags & T_IN_FLUSH):
            self.flags |= T_IN_FLUSH
            loop = self.loop
            if loop.flush_tail is None:
                loop.flush_head = self
            else:
                loop.flush_tail.next_flush = self
            loop.flush_tail = self
        return 0

    cdef int _update(self) except -1:
        """Make the poller's interest mask match the state."""
        cdef uint32_t want = 0
        if self.state == S_CLOSED:
            return 0
        if self.state == S_OPEN and not (
                self.flags & (T_PAUSED_USER | T_PAUSED_WRITE | T_EOF | T_DRAINING | T_HELD_RAW)):
            want |= EPOLLIN
        if self.wend > self.wstart:
            want |= EPOLLOUT
        if self.tls is not None:
            # closing, the peer's close_notify is awaited: read for it,
            # unless the peer's side already ended (then only the flush
            # is left: a level-triggered end of stream would end it early)
            if self.flags & T_HANDSHAKE or (self.flags & T_TLS_SHUT and not (
                    self.flags & T_EOF or self.tls.eof)):
                want |= EPOLLIN
            if self.tls.out_pending() > 0:
                want |= EPOLLOUT
        if want != self.events:
            self.loop.poller.modify(self.fd, self.events, want)
            self.events = want
        return 0

    cdef int _start(self, object addr) except -1:
        """A connection was accepted from ``addr``: its limits and first
        deadline, and the loop's counts."""
        cdef Loop loop = self.loop
        self.client_address = addr
        self.high_water = loop.high_water
        self.low_water = loop.low_water
        self.last_active = loop.now
        if loop.first_byte_timeout > 0:
            self.dkind = D_FIRST_BYTE
            self.deadline = loop.now + loop.first_byte_timeout
        loop.nconn += 1
        loop.total_conn += 1
        if loop.nconn > loop.peak_conn:
            loop.peak_conn = loop.nconn
        return 0

    cdef int _discard(self) except -1:
        """Close a connection that never got ``connection_made`` (refused,
        or its handler could not be set up): no ``connection_lost``."""
        self.handler = None
        self._set_state(S_CLOSED)
        if self.events:
            self.loop.poller.remove(self.fd, self.events)
            self.events = 0
        self.loop._forget(self)
        c_close(self.fd)
        self.loop._transport_closed()   # nconn; resumes accepting under max_connections
        return 0

    cdef int on_events(self, uint32_t ev) except -1:
        cdef int err
        if self.state == S_CLOSED:
            return 0
        if self.flags & (T_HANDSHAKE | T_TLS_SHUT):
            if self.flags & T_HANDSHAKE:
                return self._tls_handshake_events(ev)
            return self._tls_shut_events(ev)
        if ev & EPOLLOUT:
            self._flush()
            if self.state == S_CLOSED:
                return 0
        if ev & (EPOLLIN | EPOLLHUP | EPOLLERR):
            if self.events & EPOLLIN:
                self._read()
            elif ev & (EPOLLHUP | EPOLLERR):
                # not reading (paused, half-closed or draining) and the
                # peer is gone: level-triggered HUP would spin, so close.
                err = cs_sock_error(self.fd)
                self._finish_close(_oserror(err) if err else None)
        return 0

    # -- the write buffer ----------------------------------------------------------

    cdef int _free_wbuf(self) except -1:
        """The one place the write buffer is freed."""
        if self.wbuf != NULL:
            PyMem_Free(self.wbuf)
            if self.loop is not None:
                self.loop.wbuf_bytes -= self.wcap
            self.wbuf = NULL
        self.wcap = self.wstart = self.wend = 0
        return 0

    cdef int _buffer(self, const char *p, Py_ssize_t n) except -1:
        cdef Py_ssize_t pending, need, cap
        cdef char *nb
        cdef Loop loop
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
                self._free_wbuf()
                loop = self.loop
                loop.wbuf_bytes += cap
                if loop.wbuf_bytes > loop.wbuf_peak:
                    loop.wbuf_peak = loop.wbuf_bytes
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
        if self.state != S_OPEN:
            return 0
        if self.tls is not None:
            if pn < DIRECT_WRITE:
                self._buffer(h, hn)
                self._buffer(p, pn)
                return 0
            if self.wend - self.wstart + self.tls.out_pending() + pn > TLS_OUT_MAX:
                # more than the outgoing BIO may hold: plaintext, encrypted
                # by the flush as the kernel takes the records
                self._buffer(h, hn)
                self._buffer(p, pn)
                return 0
            # a large payload is encrypted now, straight from the caller's
            # buffer (after what is buffered, and its header): no copy into
            # the write buffer; the flush sends the records
            self._buffer(h, hn)
            try:
                self.tls.write(self.wbuf + self.wstart, self.wend - self.wstart)
                self.loop.bytes_out += self.wend - self.wstart
                self.wstart = self.wend = 0
                self.tls.write(p, pn)
                self.loop.bytes_out += pn
            except (_ssl_mod.SSLError, MemoryError) as exc:
                return self._tls_failed(exc)
            self._schedule_flush()
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
                self._abort(_oserror(errno))
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

    # -- reading -------------------------------------------------------------------

    cdef int _read(self) except -1:
        if not self.loop.framed:
            return self._read_raw()
        if self.held is not None or self.flags & T_RESUMED:
            # resumed with bytes received before the pause (``held``, or
            # complete frames still in the decoder's buffer): they go first,
            # before anything new, an end of stream included, is read
            return self._deliver_pending()
        if self.partial:
            return self._read_into_decoder()
        return self._read_framed()

    cdef ssize_t _recv(self, char *buf, Py_ssize_t n) except -2:
        """``recv`` of the connection's bytes (decrypted, with TLS)."""
        if self.tls is None:
            return recv(self.fd, buf, n, 0)
        return self._tls_recv(buf, n)

    cdef int _read_raw(self) except -1:
        cdef Loop loop = self.loop
        cdef ssize_t n = self._recv(loop.slab, loop.slab_size)
        if n <= 0:
            return self._read_failed(n, errno)
        self._received(n)
        # an exception propagates to the dispatcher: see _failed
        self.doing = W_HANDLER
        self.on_data(PyBytes_FromStringAndSize(loop.slab, n))
        self.doing = W_SERVING
        return 0

    cdef int _read_framed(self) except -1:
        # common case: frames decoded in place in the shared slab; the tail
        # of an incomplete frame goes to the decoder's pooled buffer
        cdef Loop loop = self.loop
        cdef ssize_t n
        if self.tls is None and self.dec.scatter_wanted():
            return self._read_scattered()
        n = self._recv(loop.slab, loop.slab_size)
        if n <= 0:
            return self._read_failed(n, errno)
        self._received(n)
        return self._deliver(loop.slab, n, False)

    cdef int _read_scattered(self) except -1:
        # a run of large frames of one size: the decoder offers the bodies
        # of the next ones as iovecs (a header, then the bytes object that
        # frame_received will get), so that they are read with no copy; the
        # shared slab takes whatever else arrives.  A MemoryError of
        # scatter_begin goes to the dispatcher (doing: W_DECODING).
        cdef Loop loop = self.loop
        cdef iovec iov[9]
        cdef Py_ssize_t room
        cdef ssize_t n
        cdef int err, cnt
        self.doing = W_DECODING
        # the objects of one read total at most one pool slab (64 KiB by
        # default): more, allocated together and freed together once
        # delivered, made glibc grow and trim its heap (two brk calls and
        # fresh pages to fault in) on every read, which cost more than the
        # copies saved (10c-d4-64k: 45k req/s against 73k)
        cnt = self.dec.scatter_begin(iov, 8, self.dec.pool.slab_size)
        iov[cnt].iov_base = loop.slab
        iov[cnt].iov_len = <size_t>loop.slab_size
        n = readv(self.fd, iov, cnt + 1)
        err = errno
        # always called, n <= 0 too: it drops the objects no byte reached
        room = self.dec.scatter_done(n, loop.slab)
        self.doing = W_SERVING
        if n <= 0:
            return self._read_failed(n, err)
        self._received(n)
        return self._deliver(loop.slab, room, True)

    cdef inline void _received(self, ssize_t n) noexcept:
        self.loop.bytes_in += n
        self.last_active = self.loop.now
        if self.dkind == D_FIRST_BYTE:
            self.dkind = D_NONE

    cdef int _read_into_decoder(self) except -1:
        # a frame is in progress: read straight into the decoder's buffer
        # (sized by the framing layer for the announced frame)
        cdef char *ptr
        cdef Py_ssize_t room
        cdef ssize_t n
        try:
            room = self.dec.get_write_buffer(0, &ptr)
        except FrameError as exc:
            return self._bad_frame(exc)
        except Exception:
            return self._internal_failed("getting a receive buffer")
        n = self._recv(ptr, room)
        if n <= 0:
            return self._read_failed(n, errno)
        self.loop.bytes_in += n
        self.last_active = self.loop.now
        try:
            self.dec.write_done(n)
        except FrameError as exc:
            return self._bad_frame(exc)
        except Exception:
            return self._internal_failed("decoding")
        return self._deliver(NULL, 0, True)

    cdef int _read_failed(self, Py_ssize_t n, int err) except -1:
        """A read returned ``n`` <= 0: end of stream, or ``err`` (its errno)."""
        if n == 0:
            return self._read_eof()
        if err == EAGAIN or err == EWOULDBLOCK or err == EINTR:
            return 0
        return self._finish_close(_oserror(err))

    cdef int _read_eof(self) except -1:
        cdef bint keep_open = False
        if self.loop.framed:
            try:
                self.dec.check_eof()
            except FrameError as exc:
                self.flags |= T_EOF
                return self._bad_frame(exc)
            except Exception:
                return self._internal_failed("decoding")
        self.flags |= T_EOF
        try:
            keep_open = bool(self.handler.eof_received())
        except Exception:
            return self._handler_failed()
        if not keep_open:
            self._begin_close(None)
        return self._update()

    cdef int _deliver(self, const char *data, Py_ssize_t n, bint buffered) except -1:
        """Call ``frame_received`` once per complete frame decoded (by the
        framing layer's C decoder) from what it buffered and ``data[:n]``.
        Stops early when the handler paused reading or closed: the rest of
        ``data`` is kept (``held``) for ``resume_reading()``.

        No try block per frame: an exception (the decoder's FrameError or
        MemoryError, the handler's anything) propagates to the loop's
        dispatcher, whose one ``except`` hands it to ``_failed``; ``doing``
        says whose it was."""
        cdef FrameDecoder dec = self.dec
        cdef Loop loop = self.loop
        cdef const char *frame
        cdef Py_ssize_t frame_size, used = 0, pos = 0, delivered = 0
        cdef int r
        cdef bint was_partial = self.partial
        while True:
            self.doing = W_DECODING
            if self.state != S_OPEN or self.flags & T_PAUSED_USER:
                if pos < n and self.state == S_OPEN:
                    self.held = PyBytes_FromStringAndSize(data + pos, n - pos)
                self.partial = buffered
                self.doing = W_SERVING
                return 0
            r = dec.next_frame(data + pos if pos < n else NULL, n - pos,
                               &used, &frame, &frame_size)
            pos += used
            if r == 0:
                break
            loop.frames_in += 1
            delivered += 1
            # a frame larger than a pool slab was received straight into a
            # bytes object: deliver that object, no copy
            obj = dec.take_frame_object()
            if obj is None:
                obj = PyBytes_FromStringAndSize(frame, frame_size)
            self.doing = W_HANDLER
            self.on_data(obj)
        self.doing = W_SERVING
        # next_frame returned 0: every byte is consumed.  Decoding in place,
        # the decoder holds a partial frame iff it took bytes in that call;
        # reading into its buffer, ask it.
        self.partial = used > 0 if not buffered else dec.pending > 0
        # The frame deadline: armed when a frame starts (the first bytes of
        # a new frame arrived in this read) and left alone while the same
        # frame continues, so trickling bytes cannot extend it.
        if self.partial:
            if (not was_partial or delivered) and loop.frame_timeout > 0:
                self.dkind = D_FRAME
                self.deadline = loop.now + loop.frame_timeout
        elif self.dkind == D_FRAME:
            self.dkind = D_NONE
        return 0

    cdef int _deliver_pending(self) except -1:
        """After ``resume_reading()``: deliver the frames held across the
        pause (bytes kept in ``held``, or complete frames still in the
        decoder's buffer), before anything new is read."""
        self.flags &= ~T_RESUMED
        if self.flags & T_HELD_RAW:
            # raw mode: the bytes that came with a PROXY header
            # (_proxystage.pxi), delivered before the fd is read again
            if self.state == S_OPEN and not (self.flags & T_PAUSED_USER):
                data = self.held
                self.held = None
                self.flags &= ~T_HELD_RAW
                self.doing = W_HANDLER
                self.on_data(data)
                self.doing = W_SERVING
                self._update()
            return 0
        if self.state == S_OPEN and not (self.flags & T_PAUSED_USER):
            if self.held is not None:
                data = self.held
                self.held = None
                return self._deliver(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), False)
            if self.partial:
                return self._deliver(NULL, 0, True)
        return 0

    # -- failures ------------------------------------------------------------------

    cdef int _bad_frame(self, object exc) except -1:
        """The peer broke the framing: the handler's ``frame_error(exc)``
        runs (it may still send a last frame, or ``abort()``), then the
        connection closes once the replies already queued are sent (within
        ``drain_timeout`` seconds; a peer that does not read them is then
        cut off).  ``connection_lost`` gets ``exc``."""
        cdef Loop loop = self.loop
        loop.frame_errors += 1
        hook = getattr(self.handler, "frame_error", None)
        if hook is None:
            loop.logger.warning("closing connection from %r: %s", self.client_address, exc)
        else:
            try:
                hook(exc)
            except Exception:
                return self._handler_failed()
        if self.state == S_CLOSED:
            return 0
        if self.state != S_ABORTING:
            self.dkind = D_CLOSE
            self.deadline = loop.now + loop.drain_timeout
            if self.deadline < loop.next_idle_check:
                loop.next_idle_check = self.deadline
        self._begin_close(exc)
        return self._update()

    cdef int _failed(self, str where) except -1:
        """Called inside the dispatcher's ``except`` block for an exception
        that propagated out of this connection's handling: the handler's
        goes to the guarded-call policy, a FrameError of the decoder is the
        peer's protocol error, anything else is the server's own failure
        (``where``)."""
        cdef int doing = self.doing
        self.doing = W_SERVING
        if doing == W_HANDLER:
            return self._handler_failed()
        if doing == W_DECODING:
            exc = _current_exception()
            if isinstance(exc, FrameError):
                return self._bad_frame(exc)
            where = "decoding"
        return self._internal_failed(where)

    cdef int _handler_failed(self) except -1:
        """Called inside an ``except`` block, for an exception of a handler
        method: report it (the guarded-call policy), abort the connection."""
        self._abort(None)
        return self.loop._user_error(self, self.client_address)

    cdef int _internal_failed(self, str where) except -1:
        """Called inside an ``except`` block, for an exception raised by the
        server's own machinery for this connection (decoder, buffers,
        building it): report it, count it, close the connection now."""
        cdef Loop loop = self.loop
        loop.internal_errors += 1
        exc = _current_exception()
        try:
            loop.logger.error("closing connection from %r: %s failed: %s: %s",
                              self.client_address, where, type(exc).__name__, exc)
        except Exception:
            pass
        loop._report(self, self.client_address)
        if self.state != S_CLOSED:
            try:
                self._finish_close(exc)
            except Exception:
                loop._report(self, self.client_address)
        return 0

    # -- writing and closing -------------------------------------------------------

    cdef int _flush(self) except -1:
        cdef ssize_t r
        cdef int err
        cdef Py_ssize_t pending
        if self.state == S_CLOSED:
            return 0
        if self.state == S_ABORTING:
            return self._finish_close(self.close_exc)
        if self.tls is not None:
            return self._tls_flush()
        pending = self.wend - self.wstart
        if pending > 0:
            r = send(self.fd, self.wbuf + self.wstart, pending, MSG_NOSIGNAL)
            if r >= 0:
                self.loop.bytes_out += r
                self.wstart += r
                pending -= r
                if r:
                    self.last_active = self.loop.now
                if pending == 0:
                    self.wstart = self.wend = 0
                    if self.wcap > KEEP_WBUF:
                        self._free_wbuf()
            else:
                err = errno
                if err != EAGAIN and err != EWOULDBLOCK and err != EINTR:
                    return self._finish_close(_oserror(err))
        if pending == 0 and self.state == S_CLOSING:
            return self._finish_close(self.close_exc)
        self._flow_control(pending)
        return self._update()

    cdef int _flow_control(self, Py_ssize_t pending) except -1:
        """``pause_writing()`` above high water, ``resume_writing()`` once
        drained to low water."""
        if self.flags & T_PAUSED_WRITE:
            if pending <= self.low_water:
                self.flags &= ~T_PAUSED_WRITE
                if self.tls is not None and self.state == S_OPEN:
                    self._tls_wake()
                try:
                    self.handler.resume_writing()
                except Exception:
                    self._handler_failed()
        elif pending > self.high_water and self.state == S_OPEN:
            self.flags |= T_PAUSED_WRITE
            try:
                self.handler.pause_writing()
            except Exception:
                self._handler_failed()
        return 0

    cdef int _finish_close(self, object exc) except -1:
        cdef Loop loop = self.loop
        if self.state == S_CLOSED:
            return 0
        if self.tls is not None:
            if exc is None and self.state < S_ABORTING and \
                    not (self.flags & (T_HANDSHAKE | T_TLS_SHUT)):
                # closed by the loop (a stop, a drain that ended): a
                # close_notify, sent if the socket takes it now
                try:
                    self.tls.shutdown()
                    self.tls.send_out(self.fd, loop.tls_slab, loop.slab_size)
                except Exception:
                    pass
            if self.flags & T_TLS_READY:
                self.flags &= ~T_TLS_READY
            self.tls.release()
        self._set_state(S_CLOSED)
        loop.poller.remove(self.fd, self.events)
        self.events = 0
        c_close(self.fd)
        loop._forget(self)
        if self.dec is not None:
            self.dec.release_buffer()
            self.dec = None
        self.held = None
        self.partial = False
        self._free_wbuf()
        handler = self.handler
        self.handler = None
        self.on_data = None
        self.close_exc = None
        loop._transport_closed()
        if handler is not None:
            try:
                handler.connection_lost(exc)
            except Exception:
                loop._user_error(self, self.client_address)
        return 0

    cdef int _expire(self, object exc) except -1:
        self.dkind = D_NONE
        return self._abort(exc)

    cdef int _check_deadlines(self, double now, double idle_limit) except -1:
        """The deadline sweep for this connection: returns 1 if it expired."""
        cdef Loop loop = self.loop
        cdef str what
        cdef double timeout
        if self.dkind != D_NONE and now >= self.deadline:
            if self.dkind == D_HANDSHAKE:
                self.dkind = D_NONE
                loop.tls_handshake_timeouts += 1
                self._tls_handshake_failed(
                    "no complete TLS handshake within ssl_handshake_timeout (%r s)"
                    % loop.ssl_handshake_timeout, True)
                return 1
            if self.dkind == D_TLS_SHUT:
                # our close_notify was sent; the peer never answered it
                self.dkind = D_NONE
                loop.tls_shutdown_timeouts += 1
                loop.logger.debug("connection from %r: no close_notify from the peer within "
                                  "ssl_shutdown_timeout (%r s)", self.client_address,
                                  loop.ssl_shutdown_timeout)
                self._finish_close(self.close_exc)
                return 1
            if self.dkind == D_CLOSE:
                loop.close_timeouts += 1
                loop.logger.info("closing connection from %r: its replies were not "
                                 "read within %.1f s of the protocol error",
                                 self.client_address, loop.drain_timeout)
                # the error that closed it stays close_exc
                self._expire(self.close_exc)
                return 1
            if self.state == S_OPEN and not (self.flags & (T_PAUSED_USER | T_EOF)):
                if self.dkind == D_FIRST_BYTE:
                    loop.first_byte_timeouts += 1
                    what, timeout = "no data within first_byte_timeout", loop.first_byte_timeout
                else:
                    loop.frame_timeouts += 1
                    what, timeout = "frame not complete within frame_timeout", loop.frame_timeout
                loop.logger.info("closing connection from %r: %s (%r s)",
                                 self.client_address, what, timeout)
                self._expire(TimeoutError("%s (%r s)" % (what, timeout)))
                return 1
        if self.last_active < idle_limit:
            loop.idle_timeouts += 1
            if self.flags & T_HANDSHAKE:
                # no handler yet: logged as the other handshake failures
                # are (rate-limited), not once per connection
                self._tls_handshake_failed("silent for %.1f s in its TLS handshake (idle_timeout)"
                                           % (now - self.last_active), True)
                return 1
            loop.logger.info("closing idle connection from %r (silent for %.1f s)",
                             self.client_address, now - self.last_active)
            self._expire(TimeoutError("idle for more than %r s" % loop.idle_timeout))
            return 1
        return 0

    # -- making the handler ---------------------------------------------------------

    cdef int _open(self) except -1:
        """The factory (verify_request, the handler class), the decoder,
        ``connection_made``: once the connection is ready (at accept, after
        its PROXY header, after its TLS handshake).  Returns 1 if the
        connection is open and served; any failure closes it only."""
        cdef Loop loop = self.loop
        cdef bint made = False
        try:
            handler = loop.factory(self, self.client_address)
            if handler is None:
                loop.rejected += 1
                self._discard()
                return 0
            self.handler = handler
            if loop.framed:
                self.dec = loop.decoder.clone()
                self.on_data = handler.frame_received
            else:
                self.on_data = handler.data_received
            made = True
            handler.connection_made()
        except Exception:
            # the handler class, its __init__, the decoder or
            # connection_made raised (MemoryError included)
            self._handler_failed()
            if not made:
                # the handler could not even be set up: no connection_made,
                # so no connection_lost
                self._discard()
            return 0
        return 1 if self.state == S_OPEN else 0

    cdef Py_ssize_t _write_pending(self) except -1:
        cdef Py_ssize_t n = self.wend - self.wstart
        if self.tls is not None:
            n += self.tls.out_pending()
        return n

    # -- TLS (_tls.pxi) ----------------------------------------------------------------

    cdef ssize_t _tls_recv(self, char *buf, Py_ssize_t n) except -2:
        """As ``recv`` into ``buf[:n]``, of the decrypted bytes: > 0 read,
        0 end of stream (the peer's close_notify, or its FIN), -1 with
        errno (EAGAIN: no complete record yet).  A TLS failure closes the
        connection and reads as EAGAIN."""
        cdef Loop loop = self.loop
        cdef TLSConn tls = self.tls
        cdef Py_ssize_t got, k, off, res
        cdef ssize_t r
        if tls.eof:
            return 0        # the peer's close_notify came with the last bytes read
        try:
            # what the last read left in the TLS buffers goes first (no
            # need to ask when that read emptied them: the common case)
            got = 0 if tls.drained else tls.read(buf, n)
            if got == 0:
                r = recv(self.fd, loop.tls_slab, loop.slab_size, 0)
                if r <= 0:
                    return r
                # fed to the incoming BIO a record's worth at a time and
                # decrypted as it goes: the BIO's buffer, which OpenSSL
                # never shrinks, stays near TLS_FEED bytes (one read of
                # 256 KiB fed at once kept that much per connection)
                off = 0
                while off < r:
                    k = r - off if r - off <= TLS_FEED else TLS_FEED
                    tls.feed(loop.tls_slab + off, k)
                    off += k
                    res = tls.read(buf + got, n - got)
                    if res < 0:
                        break       # the close_notify: what follows it is not read
                    got += res
                    if got == n:
                        if off < r:
                            # the caller's buffer is full: the rest waits in
                            # the BIO for the next pass (T_TLS_READY below)
                            tls.feed(loop.tls_slab + off, r - off)
                        break
                if got == 0 and tls.eof:
                    got = -1
        except (_ssl_mod.SSLError, MemoryError) as exc:
            self._tls_failed(exc)
            cs_set_errno(EAGAIN)
            return -1
        if tls.out_pending() > 0:
            # reading made TLS output (session tickets, a key update, an alert)
            self._schedule_flush()
        if got > 0:
            if (got == n or tls.eof) and not (self.flags & T_TLS_READY):
                # the buffer is full: what is left is read on the next pass;
                # or the close_notify came after these bytes: the next pass
                # reads it as the end of stream (no event will say so)
                self.flags |= T_TLS_READY
                loop.tls_ready.append(self)
            return got
        if got < 0:
            return 0
        cs_set_errno(EAGAIN)
        return -1

    cdef int _tls_wake(self) except -1:
        """Reading goes on (resume_reading, resume_writing): what the TLS
        buffers already hold (records, decrypted bytes, the peer's
        close_notify read with the last bytes) is read on the next pass,
        since no readiness event will announce it."""
        cdef TLSConn tls = self.tls
        if tls is not None and not (self.flags & T_TLS_READY) and (tls.eof or tls.more()):
            self.flags |= T_TLS_READY
            self.loop.tls_ready.append(self)
        return 0

    cdef int _tls_failed(self, object exc) except -1:
        """A TLS failure after the handshake (bad record, alert, a
        renegotiation refused): this connection closes, without
        close_notify; ``connection_lost`` gets the SSLError."""
        cdef Loop loop = self.loop
        loop.tls_errors += 1
        loop.logger.info("closing connection from %r: TLS error: %s", self.client_address, exc)
        # the alert OpenSSL queued, if the socket takes it now
        try:
            self.tls.send_out(self.fd, loop.tls_slab, loop.slab_size)
        except Exception:
            pass
        return self._abort(exc)

    cdef int _tls_begin(self, const char *early, Py_ssize_t n) except -1:
        """Start the handshake of a new connection (registered for EPOLLIN
        or about to be); ``early[:n]``: its first bytes, already read (after
        a PROXY header)."""
        cdef Loop loop = self.loop
        cdef TLSConn tls = TLSConn.__new__(TLSConn)
        tls.start(loop)
        self.tls = tls
        self.flags |= T_HANDSHAKE
        self.dkind = D_HANDSHAKE
        self.deadline = loop.now + loop.ssl_handshake_timeout
        if self.deadline < loop.next_idle_check:
            loop.next_idle_check = self.deadline
        if n > 0:
            tls.feed(early, n)
            return self._tls_handshake_step()
        return 0

    cdef int _tls_handshake_events(self, uint32_t ev) except -1:
        cdef Loop loop = self.loop
        cdef ssize_t r
        cdef int err
        if ev & (EPOLLIN | EPOLLHUP | EPOLLERR):
            r = recv(self.fd, loop.tls_slab, loop.slab_size, 0)
            if r == 0:
                return self._tls_handshake_failed("closed during the TLS handshake", False)
            if r < 0:
                err = errno
                if err != EAGAIN and err != EWOULDBLOCK and err != EINTR:
                    return self._tls_handshake_failed(
                        "reset during the TLS handshake: %s"
                        % strerror(err).decode("utf-8", "replace"), False)
            else:
                self.last_active = loop.now
                try:
                    self.tls.feed(loop.tls_slab, r)
                except MemoryError:
                    return self._tls_handshake_failed("out of memory", False)
        return self._tls_handshake_step()

    cdef int _tls_handshake_step(self) except -1:
        """Run the handshake on what arrived, send what it answers; once
        done, the handler is made."""
        cdef Loop loop = self.loop
        cdef TLSConn tls = self.tls
        cdef bint done
        cdef Py_ssize_t r
        try:
            done = tls.handshake()
        except (_ssl_mod.SSLError, OSError, ValueError) as exc:
            # the alert it queued goes out if the socket takes it now
            tls.send_out(self.fd, loop.tls_slab, loop.slab_size)
            reason = getattr(exc, "reason", None) or str(exc)
            if isinstance(exc, _ssl_mod.SSLCertVerificationError):
                reason = exc.verify_message or reason
            return self._tls_handshake_failed("TLS handshake failed: %s" % (reason,), False)
        r = tls.send_out(self.fd, loop.tls_slab, loop.slab_size)
        if r < 0:
            return self._tls_handshake_failed(
                "reset during the TLS handshake: %s"
                % strerror(errno).decode("utf-8", "replace"), False)
        if not done:
            return self._update()
        self.flags &= ~T_HANDSHAKE
        loop.tls_handshakes += 1
        if loop.first_byte_timeout > 0:
            self.dkind = D_FIRST_BYTE
            self.deadline = loop.now + loop.first_byte_timeout
        else:
            self.dkind = D_NONE
        if self._open() and tls.more() and not (self.flags & T_TLS_READY):
            # application data came with the client's last flight
            self.flags |= T_TLS_READY
            loop.tls_ready.append(self)
        if self.state == S_OPEN:
            self._update()
        return 0

    cdef int _tls_handshake_failed(self, str reason, bint timeout) except -1:
        """The handshake failed, the peer left or the deadline passed: the
        connection closes; it never had a handler."""
        cdef Loop loop = self.loop
        if not timeout:
            loop.tls_handshake_errors += 1
        peer = self.client_address
        self.flags &= ~T_HANDSHAKE
        self._discard()
        self.tls.release()
        _closing_log(loop, peer, reason, "TLS")
        return 0

    cdef int _tls_flush(self) except -1:
        """The flush of a TLS connection: encrypt the write buffer, queue
        close_notify when closing, send; then, closing, wait for the peer's
        close_notify (bounded by ssl_shutdown_timeout)."""
        cdef Loop loop = self.loop
        cdef TLSConn tls = self.tls
        cdef Py_ssize_t pending, room
        cdef Py_ssize_t r
        if self.flags & T_HANDSHAKE:
            return 0
        while True:
            # plaintext is encrypted while the outgoing BIO holds less than
            # TLS_OUT_MAX (OpenSSL never shrinks its buffer: a 4 MiB reply
            # encrypted at once kept 5.5 MiB per connection); the rest stays
            # plaintext in the write buffer (freed once drained) until the
            # kernel has taken what was encrypted
            pending = self.wend - self.wstart
            try:
                if pending > 0:
                    room = TLS_OUT_MAX - tls.out_pending()
                    if room > 0:
                        if room < pending:
                            pending = room
                        tls.write(self.wbuf + self.wstart, pending)
                        # bytes_in/out count application bytes (what the
                        # handlers read and wrote), not the records on the wire
                        loop.bytes_out += pending
                        self.wstart += pending
                        if self.wstart == self.wend:
                            self.wstart = self.wend = 0
                            if self.wcap > KEEP_WBUF:
                                self._free_wbuf()
                if self.state == S_CLOSING and self.wend == self.wstart and \
                        not (self.flags & T_TLS_SHUT):
                    tls.shutdown()
                    self.flags |= T_TLS_SHUT
            except (_ssl_mod.SSLError, MemoryError) as exc:
                return self._tls_failed(exc)
            r = tls.send_out(self.fd, loop.tls_slab, loop.slab_size)
            if r < 0:
                return self._finish_close(_oserror(errno))
            if r > 0:
                self.last_active = loop.now
            if r == 0 or self.wend == self.wstart or tls.out_pending() > 0:
                break   # the kernel is full, or everything is encrypted
        pending = tls.out_pending() + self.wend - self.wstart
        if self.flags & T_TLS_SHUT and pending == 0:
            if self.dkind != D_TLS_SHUT and not (self.flags & T_EOF or tls.eof):
                # what the peer sent before it saw our close_notify may be
                # in the TLS buffers already, its close_notify too (read
                # with the handshake, or left by a read that filled the
                # buffer): no event will announce it, so look now
                try:
                    while tls.read(loop.slab, loop.slab_size) > 0:
                        pass
                except (_ssl_mod.SSLError, MemoryError):
                    return self._finish_close(self.close_exc)
            if self.flags & T_EOF or tls.eof:
                # the peer already closed its side: nothing to wait for
                return self._finish_close(self.close_exc)
            if self.dkind != D_TLS_SHUT:
                self.dkind = D_TLS_SHUT
                self.deadline = loop.now + loop.ssl_shutdown_timeout
                if self.deadline < loop.next_idle_check:
                    loop.next_idle_check = self.deadline
        self._flow_control(pending)
        return self._update()

    cdef int _tls_shut_events(self, uint32_t ev) except -1:
        """Closing: our close_notify is queued or sent; read (and drop)
        until the peer's close_notify or end of stream."""
        cdef Loop loop = self.loop
        cdef Py_ssize_t got
        cdef ssize_t r
        cdef int err
        if ev & EPOLLOUT:
            self._flush()
            if self.state == S_CLOSED:
                return 0
        if not (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)):
            return 0
        r = recv(self.fd, loop.tls_slab, loop.slab_size, 0)
        if r < 0:
            err = errno
            if err == EAGAIN or err == EWOULDBLOCK or err == EINTR:
                return 0
            return self._finish_close(self.close_exc)   # reset: nothing more goes out
        if r > 0:
            try:
                self.tls.feed(loop.tls_slab, r)
                got = self.tls.read(loop.slab, loop.slab_size)
                while got > 0:
                    got = self.tls.read(loop.slab, loop.slab_size)
            except (_ssl_mod.SSLError, MemoryError):
                return self._finish_close(self.close_exc)
            if got >= 0:
                return 0
        # the peer's close_notify (got < 0) or its end of stream (r == 0):
        # what is still queued for it goes out first (as on a plain
        # connection, the end of the peer's side does not cut what we
        # still owe it), then the connection closes (_tls_flush)
        if self.tls.out_pending() > 0:
            self.flags |= T_EOF
            return self._update()
        return self._finish_close(self.close_exc)

    # -- the transport API (asyncio's words) ---------------------------------------

    def write(self, data):
        """Queue ``data`` (any bytes-like) for sending at the end of this
        loop pass.  Data written after ``close()`` is dropped."""
        cdef Py_buffer view
        if self.state != S_OPEN:
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
        if self.state != S_OPEN:
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
        if self.state != S_OPEN:
            return
        self._begin_close(None)

    def abort(self):
        """Close now, discarding buffered data."""
        if self.state == S_CLOSED:
            return
        self._abort(None)

    def is_closing(self):
        return self.state != S_OPEN

    def pause_reading(self):
        """Stop reading from the peer (frames already received stay
        buffered and are delivered after ``resume_reading()``)."""
        if self.state == S_CLOSED or self.flags & T_PAUSED_USER:
            return
        self.flags |= T_PAUSED_USER
        self._update()

    def resume_reading(self):
        cdef Loop loop = self.loop
        if not (self.flags & T_PAUSED_USER) or self.state == S_CLOSED:
            return
        self.flags &= ~T_PAUSED_USER
        # the server paused, not the peer: its clock restarts
        if self.dkind == D_FRAME:
            self.deadline = loop.now + loop.frame_timeout
        elif self.dkind == D_FIRST_BYTE:
            self.deadline = loop.now + loop.first_byte_timeout
        if (self.held is not None or self.partial) and not (self.flags & T_RESUMED):
            self.flags |= T_RESUMED
            loop.resumed.append(self)
        self._tls_wake()
        self._update()

    def is_reading(self):
        return self.state == S_OPEN and not (
            self.flags & (T_PAUSED_USER | T_PAUSED_WRITE | T_EOF | T_DRAINING))

    def get_write_buffer_size(self):
        """Bytes queued and not sent yet (with TLS: plaintext not encrypted
        yet plus ciphertext not sent yet)."""
        return self._write_pending()

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
            # with PROXY, client_address is the header's source: the
            # socket's peer (the balancer) is kept apart
            return self.client_address if self.proxy is None else \
                (<ProxyStage>self.proxy).peer_c()
        if name == "proxy":
            # the ProxyInfo, built on the first call from the bytes the
            # parser kept (which it then frees)
            return default if self.proxy is None else \
                (<ProxyStage>self.proxy).parser.take_result()
        if name in _TLS_EXTRA:
            return _tls_extra_info(self, name, default)
        if name == "fileno":
            return self.fd
        if name == "sockname" and self.fd >= 0 and self.state != S_CLOSED:
            s = socket.socket(fileno=os.dup(self.fd))
            try:
                return s.getsockname()
            finally:
                s.close()
        return default
