# The PROXY protocol stage of a connection (included by _loop.pyx): the
# trusted-peer check at accept, then a handle that reads the header before
# the connection has a transport, a handler or connection_made.
#
# Why a handle of its own: the header is read by ``ProxyStage.on_events``,
# and the ``Transport`` is only built once the header is complete, so the
# transport's read path has no "header yet?" test at all: with
# ``proxy_protocol`` None the only cost is one test of ``Listener.proxy``
# per accepted connection.
#
# The life of a connection on a PROXY listener:
#   accept -> untrusted TCP peer: closed before any read (proxy_rejected)
#          -> ProxyStage (fd registered for EPOLLIN, deadline =
#             accept + proxy_header_timeout, never moved by bytes)
#   each read: recv into the shared slab, ProxyParser.feed_c
#          -> error / end of stream / reset: closed (proxy_errors)
#          -> deadline passed (the sweep): closed (proxy_timeouts)
#          -> done (proxy_headers): the Transport takes the fd over (same
#             poller registration), client_address = the header's source
#             (or the socket's peer for LOCAL/UNKNOWN/UNSPEC), the factory
#             (verify_request, the handler class), connection_made, then
#             the bytes of that read after the header (decoder or
#             data_received), as one read of the transport would; on a
#             TLS listener those bytes start the handshake (_tls.pxi)
#             instead, and the factory runs once it is done.
#
# Memory: a stage is one small object plus its ProxyParser (a 256-byte
# inline buffer: any v1 line and any v2 header up to 256 bytes); a longer
# v2 header grows a buffer as its bytes arrive, never beyond 16 + the
# announced length (65551 bytes at most).  A done parser stays with the
# transport, holding only its header's bytes, until get_extra_info("proxy")
# builds the ProxyInfo from them.

from cserver._proxy import ProxyHeaderError

cdef extern from *:
    """
    #include <string.h>
    #include <netinet/in.h>
    typedef struct { int v6; int bits; unsigned char addr[16]; } cs_net_t;

    /* 1 if the peer's address is in one of the networks (an IPv4-mapped
       IPv6 address is matched as IPv4), else 0. */
    static int cs_peer_trusted(const struct sockaddr_storage *ss,
                               const cs_net_t *nets, int n) {
        const unsigned char *a;
        int v6, i, full, rem;
        if (ss->ss_family == AF_INET) {
            a = (const unsigned char *)&((const struct sockaddr_in *)ss)->sin_addr;
            v6 = 0;
        } else if (ss->ss_family == AF_INET6) {
            a = ((const struct sockaddr_in6 *)ss)->sin6_addr.s6_addr;
            v6 = 1;
            if (IN6_IS_ADDR_V4MAPPED(&((const struct sockaddr_in6 *)ss)->sin6_addr)) {
                a += 12;
                v6 = 0;
            }
        } else {
            return 0;
        }
        for (i = 0; i < n; i++) {
            if (nets[i].v6 != v6) continue;
            full = nets[i].bits / 8;
            rem = nets[i].bits % 8;
            if (full && memcmp(a, nets[i].addr, (size_t)full) != 0) continue;
            if (rem && ((a[full] ^ nets[i].addr[full]) & (0xFF << (8 - rem)) & 0xFF)) continue;
            return 1;
        }
        return 0;
    }
    """
    ctypedef struct cs_net_t:
        int v6
        int bits
        unsigned char addr[16]
    int cs_peer_trusted(sockaddr_storage *ss, cs_net_t *nets, int n)

# How often a failed header is logged (seconds; the others are counted and
# the next message says how many): a flood of bad headers cannot flood the
# log.  Every failure is also logged at debug level.
cdef double PROXY_LOG_EVERY = 10.0

PROXY_MODES = ("v1", "v2", "any")
cdef dict PROXY_VERSIONS = {"any": 0, "v1": 1, "v2": 2}


def _compile_networks(networks):
    """``trusted_proxies`` -> a list of ``(v6, bits, 16 address bytes)``.
    Validation and meaning are ``cserver.proxy.trusted_networks``'s (the
    rules the stdlib-style servers' mixin applies too): an IPv4-mapped IPv6
    network (``::ffff:10.0.0.0/104``) is the IPv4 one, as mapped peers are
    matched as IPv4."""
    from cserver.proxy import trusted_networks
    nets = trusted_networks(networks)
    return [(net.version == 6, net.prefixlen, net.network_address.packed.ljust(16, b"\0"))
            for net in nets.v4 + nets.v6]


cdef int _configure_proxy(Loop loop, object mode, object networks, double timeout) except -1:
    cdef cs_net_t *nets
    cdef int i
    cdef bytes packed
    if mode is not None and mode not in PROXY_MODES:
        raise ValueError("proxy_protocol must be None, 'v1', 'v2' or 'any', not %r" % (mode,))
    if mode is not None and not timeout > 0:
        raise ValueError("proxy_header_timeout must be a positive number of seconds, not %r"
                         % (timeout,))
    table = _compile_networks(networks) if mode is not None else []
    nets = <cs_net_t *>PyMem_Malloc(sizeof(cs_net_t) * (len(table) + 1))
    if nets == NULL:
        raise MemoryError()
    for i in range(len(table)):
        nets[i].v6 = table[i][0]
        nets[i].bits = table[i][1]
        packed = table[i][2]
        memcpy(nets[i].addr, PyBytes_AS_STRING(packed), 16)
    if loop.trusted != NULL:
        PyMem_Free(loop.trusted)
    loop.trusted = nets
    loop.ntrusted = len(table)
    loop.proxy_mode = mode
    loop.proxy_version = 0 if mode is None else PROXY_VERSIONS[mode]
    loop.proxy_header_timeout = timeout
    return 0


cdef int _proxy_accept(Listener ls, int fd, sockaddr_storage *ss, socklen_t alen) except -1:
    """An accepted connection on a PROXY listener: close an untrusted TCP
    peer now, else start its header stage."""
    cdef Loop loop = ls.loop
    cdef ProxyStage st = None
    if ls.tcp and not cs_peer_trusted(ss, <cs_net_t *>loop.trusted, loop.ntrusted):
        c_close(fd)
        loop.proxy_rejected += 1
        _closing_log(loop, cs_addr_to_py(ss, alen), "not a trusted proxy (trusted_proxies)")
        return 0
    try:
        st = ProxyStage.__new__(ProxyStage)
        st.loop = loop
        st.fd = fd
        st.listener = ls
        # the peer's address object is built only if someone asks (LOCAL,
        # peername, a log line): most connections never need it
        st.alen = alen if alen <= sizeof(st.ss) else sizeof(st.ss)
        memcpy(st.ss, ss, st.alen)
        st.parser = new_parser(loop.proxy_version)
        st.pending = True
        st.deadline = loop.now + loop.proxy_header_timeout
        loop._register(st)
        loop.poller.add(fd, EPOLLIN)
        st.events = EPOLLIN
    except Exception:
        loop.internal_errors += 1
        if st is not None:
            loop._forget(st)
        c_close(fd)
        loop._report(None, None)
        return 0
    loop.proxy_pending += 1
    loop.nconn += 1
    loop.total_conn += 1
    if loop.nconn > loop.peak_conn:
        loop.peak_conn = loop.nconn
    if st.deadline < loop.next_idle_check:
        loop.next_idle_check = st.deadline
    return 0


cdef int _closing_log(Loop loop, object peer, str reason, str what="PROXY protocol") except -1:
    """Log a connection closed before it had a handler (``what``: "PROXY
    protocol" or "TLS"): at debug level always, at info level at most once
    per PROXY_LOG_EVERY seconds (with the count of the others; one budget
    for both)."""
    logger = loop.logger
    if loop.now >= loop.proxy_log_at:
        loop.proxy_log_at = loop.now + PROXY_LOG_EVERY
        if loop.proxy_log_quiet:
            logger.info("%s: closing connection from %r: %s (and %d more in the "
                        "last %g s, logged at debug level)", what, peer, reason,
                        loop.proxy_log_quiet, PROXY_LOG_EVERY)
        else:
            logger.info("%s: closing connection from %r: %s", what, peer, reason)
        loop.proxy_log_quiet = 0
    else:
        loop.proxy_log_quiet += 1
        logger.debug("%s: closing connection from %r: %s", what, peer, reason)
    return 0


@cython.final
cdef class ProxyStage(Handle):
    """An accepted connection whose PROXY header has not arrived yet
    (internal): it has no transport and no handler."""

    def __repr__(self):
        return "<cserver ProxyStage fd=%d peer=%r>" % (self.fd, self.peer_c())

    cdef object peer_c(self):
        """The socket's peer, as the socket module gives it (built once)."""
        if self.peer is None:
            self.peer = cs_addr_to_py(<sockaddr_storage *>self.ss, self.alen)
        return self.peer

    cdef int on_events(self, uint32_t ev) except -1:
        if not self.pending:
            return 0
        try:
            return self._read()
        except Exception:
            # MemoryError growing the header's buffer or building the
            # transport: this connection only
            self.loop.internal_errors += 1
            self.loop._report(None, self.peer_c())
            if self.pending:
                self._close()
        return 0

    cdef int _read(self) except -1:
        cdef Loop loop = self.loop
        cdef ssize_t n = recv(self.fd, loop.slab, loop.slab_size, 0)
        cdef Py_ssize_t used
        cdef int err
        if n <= 0:
            err = errno
            if n < 0 and (err == EAGAIN or err == EWOULDBLOCK or err == EINTR):
                return 0
            return self._fail("closed before the end of its PROXY header" if n == 0 else
                              "reset before the end of its PROXY header: %s"
                              % strerror(err).decode("utf-8", "replace"), False)
        loop.bytes_in += n
        try:
            used = self.parser.feed_c(loop.slab, n)
        except ProxyHeaderError as exc:
            return self._fail(str(exc), False)
        if self.parser.is_done():
            return self._done(used, n)
        return 0

    cdef int _fail(self, str reason, bint timeout) except -1:
        cdef Loop loop = self.loop
        if timeout:
            loop.proxy_timeouts += 1
        else:
            loop.proxy_errors += 1
        self._close()
        _closing_log(loop, self.peer_c(), reason)
        return 0

    cdef int _close(self) except -1:
        cdef Loop loop = self.loop
        self.pending = False
        self.parser = None
        if self.events:
            loop.poller.remove(self.fd, self.events)
            self.events = 0
        loop._forget(self)
        c_close(self.fd)
        loop.proxy_pending -= 1
        loop._transport_closed()   # nconn; resumes accepting under max_connections
        return 0

    cdef int _done(self, Py_ssize_t used, Py_ssize_t n) except -1:
        """The header is complete: hand the fd to a new Transport."""
        cdef Loop loop = self.loop
        cdef ProxyParser parser = self.parser
        cdef Transport t
        cdef bint tls = self.listener.tls
        loop.proxy_headers += 1
        source = parser.source_c()
        addr = self.peer_c() if source is None else source
        t = Transport.__new__(Transport)
        t.loop = loop
        t.fd = self.fd
        t.proxy = self      # its parser and the socket's peer, for get_extra_info
        # the transport takes over the fd and its poller registration
        t.events = self.events
        self.events = 0
        self.pending = False
        self.listener = None
        loop.proxy_pending -= 1
        loop._register(t)
        # counted at accept already (_start counts again)
        loop.nconn -= 1
        loop.total_conn -= 1
        t._start(addr)
        if tls:
            # the bytes after the header are the start of the handshake
            try:
                t._tls_begin(loop.slab + used, n - used)
            except Exception:
                loop.internal_errors += 1
                loop._report(t, addr)
                if t.state != S_CLOSED:
                    t._discard()
            return 0
        if t._open() and n > used:
            t.dkind = D_NONE    # its first bytes are here
            self._deliver_rest(t, used, n)
        return 0

    cdef int _deliver_rest(self, Transport t, Py_ssize_t used, Py_ssize_t n) except -1:
        """The bytes of the header's last read that follow it: delivered as
        a read of the transport would (a pause in connection_made holds
        them for resume_reading)."""
        cdef Loop loop = self.loop
        try:
            if loop.framed:
                t._deliver(loop.slab + used, n - used, False)
                return 0
            data = PyBytes_FromStringAndSize(loop.slab + used, n - used)
            if t.flags & T_PAUSED_USER:
                t.held = data
                t.flags |= T_HELD_RAW
                t._update()
                return 0
            t.doing = W_HANDLER
            t.on_data(data)
            t.doing = W_SERVING
        except Exception:
            t._failed("serving the connection")
        return 0
