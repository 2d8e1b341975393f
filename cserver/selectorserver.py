# cython: language_level=3, annotation_typing=False, binding=True
"""The multiplexing server: one thread, a C event loop, asyncio's handlers.

``socketserver`` listed "a standard framework for select-based multiplexing"
as future work; this is it, shaped like the stdlib's servers::

    class Echo(cserver.FrameHandler):
        def frame_received(self, frame):
            self.send_frame(frame)

    with cserver.SelectorTCPServer(("127.0.0.1", 9000), Echo) as server:
        server.serve_forever()

The loop (``cserver._loop``, epoll on Linux, a ``selectors`` fallback
elsewhere or with ``loop="selectors"`` / ``CSERVER_LOOP=selectors``) accepts,
reads into a shared C buffer, decodes every complete frame in C and calls
the handler once per frame (``FrameHandler``) or once per read
(``ConnectionHandler``); the replies written during one loop pass go out
with one ``send`` per connection.

The servers' contract (the methods to call and to override, the class
variables and their defaults) is in ``SelectorServer``'s docstring, in the
stdlib's form; every option in ``docs/selectorserver.md``.  The class
attributes are the one source of each default: the command line
(``python -m cserver``) reads them, and the loop is handed every value.
"""

import errno
import logging
import numbers
import operator
import os
import signal
import socket
import ssl
import sys
import threading
import time

from . import _env, _framing, _loop, _metrics, systemd
from ._supervisor import _RETIRE_FLUSH, READY_TIMEOUT, Supervisor
from .errors import FrameError, FrameTooLarge, IncompleteFrame  # noqa: F401  (re-exported)
from .framing import FramingAttributes, framing_for

__all__ = ["SelectorServer", "SelectorTCPServer", "SelectorUnixStreamServer",
           "SelectorUDPServer", "ConnectionHandler", "FrameHandler",
           "DatagramHandler", "LOOP_KINDS", "resolve_loop"]

#: the default ``SelectorServer.logger``: the server, its loop, its
#: supervisor and its handlers' default messages log there
logger = logging.getLogger("cserver.selectorserver")

_OPTIONS = frozenset((
    "loop", "idle_timeout", "first_byte_timeout", "frame_timeout", "max_connections",
    "high_water", "low_water",
    "drain_timeout", "tcp_nodelay", "read_size", "accept_batch", "workers",
    "allow_reuse_address", "allow_reuse_port", "request_queue_size",
    "buffer_pool",
    "proxy_protocol", "trusted_proxies", "proxy_header_timeout",
    "ssl_context", "ssl_handshake_timeout", "ssl_shutdown_timeout",
    "drain_delay",
    "metrics_address", "metrics_timeout",
))

#: the values of the ``proxy_protocol`` option (besides None)
PROXY_MODES = ("v1", "v2", "any")

#: how often a retiring worker checks whether its connections are closed
_RETIRE_POLL = 0.05

_monotonic = time.monotonic

#: the values of the ``loop`` option (besides None)
LOOP_KINDS = ("epoll", "selectors")


def resolve_loop(loop=None):
    """The loop a server with ``loop=loop`` runs: ``"epoll"`` or
    ``"selectors"``.  ``None`` means ``$CSERVER_LOOP`` if set, else epoll
    where the platform has it; ``"epoll"`` where it does not falls back to
    ``"selectors"``.  Raises ValueError for any other name."""
    kind = loop or _env.requested_loop()
    if kind is None:
        return "epoll" if _loop.HAVE_EPOLL else "selectors"
    if kind not in LOOP_KINDS:
        raise ValueError("loop must be 'epoll' or 'selectors', got %r" % (kind,))
    if kind == "epoll" and not _loop.HAVE_EPOLL:
        return "selectors"
    return kind


# -- option validation -------------------------------------------------------
#
# Every option is checked when the server is built (and again when its loop
# is built, for values changed on the instance in between), with a message
# that names the option and the value: a mistake fails at the line that made
# it, never at the first connection, and is never silently coerced.

#: the loop's smallest shared receive buffer
_MIN_READ_SIZE = 4096


def _describe_int(minimum, none_ok):
    text = "a positive int" if minimum == 1 else "an int >= %d" % minimum
    return text + " or None" if none_ok else text


def _check_int(name, value, minimum, none_ok=False):
    """``value`` must be an int (``__index__``, not a bool) >= ``minimum``."""
    if value is None and none_ok:
        return
    if isinstance(value, bool):
        number = None
    else:
        try:
            number = operator.index(value)
        except TypeError:
            number = None
    if number is None:
        raise TypeError("%s must be %s, got %r" % (name, _describe_int(minimum, none_ok), value))
    if number < minimum:
        raise ValueError("%s must be %s, got %r" % (name, _describe_int(minimum, none_ok), value))


def _check_seconds(name, value, none_ok=False, zero_ok=True):
    """``value`` must be a real number of seconds (not NaN, not negative;
    not zero unless ``zero_ok``; infinity allowed)."""
    if value is None and none_ok:
        return
    what = ("a number of seconds >= 0" if zero_ok else "a positive number of seconds")
    if none_ok:
        what += " or None"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError("%s must be %s, got %r" % (name, what, value))
    if value != value or value < 0 or (value == 0 and not zero_ok):
        raise ValueError("%s must be %s, got %r" % (name, what, value))


def _handler_kind(handler_class):
    """A one-word description of a handler class's family, or None."""
    if not isinstance(handler_class, type):
        return None
    if issubclass(handler_class, FrameHandler):
        return "a cserver.FrameHandler"
    if issubclass(handler_class, ConnectionHandler):
        return "a cserver.ConnectionHandler"
    if issubclass(handler_class, DatagramHandler):
        return "a cserver.DatagramHandler"
    bases = []
    for module_name in ("cserver.socketserver", "socketserver"):
        module = sys.modules.get(module_name)
        base = getattr(module, "BaseRequestHandler", None)
        if isinstance(base, type):
            bases.append(base)
    if bases and issubclass(handler_class, tuple(bases)):
        return "a socketserver request handler"
    return None




# -- handlers ---------------------------------------------------------------


class ConnectionHandler:
    """Raw bytes: one instance per connection, called with asyncio's words.

    The constructor sets the instance variables and nothing else; the loop
    then calls ``connection_made()``, ``data_received(data)`` once per read,
    and ``connection_lost(exc)`` once at the end.  Every method runs on the
    loop's thread; from other threads go through
    ``server.call_soon_threadsafe``.  An exception from any of them goes to
    ``server.handle_error()`` and closes that connection only.

    Methods for the caller (the handler's own code):

    - write(data), writelines(list_of_data)   # sent at the end of the pass
    - close()   # once the buffered data is sent
    - abort()   # now, discarding it
    - pause_reading(), resume_reading()

    Methods that may be overridden:

    - connection_made()
    - data_received(data)   # bytes, once per read
    - eof_received() -> bool | None   # true: keep writing after the
                                      # peer's half-close
    - connection_lost(exc)   # None on a clean close
    - pause_writing(), resume_writing()   # the write buffer crossed
                                          # high_water / low_water (reading
                                          # from this peer is paused
                                          # meanwhile)

    Instance variables:

    - transport   # the loop's Transport (cserver._loop)
    - client_address
    - server
    """

    def __init__(self, transport, client_address, server):
        self.transport = transport
        self.client_address = client_address
        self.server = server
        cls = type(self)
        # Fast path: bind the transport's C methods on the instance, unless
        # a subclass overrides them.
        if cls.write is ConnectionHandler.write:
            self.write = transport.write

    def connection_made(self):
        """Called once, when the connection is set up."""

    def data_received(self, data):
        """Called with the bytes of each read (raw mode)."""

    def eof_received(self):
        """The peer closed its sending side.  Return a true value to keep
        the connection open for writing; by default it is closed once the
        buffered data is sent."""
        return None

    def connection_lost(self, exc):
        """Called once, when the connection is closed (``exc`` is ``None``
        or the error that closed it)."""

    def pause_writing(self):
        """The write buffer went above ``high_water``."""

    def resume_writing(self):
        """The write buffer drained below ``low_water``."""

    def write(self, data):
        """Queue ``data`` (bytes-like); it is sent at the end of the loop pass."""
        self.transport.write(data)

    def writelines(self, list_of_data):
        self.transport.writelines(list_of_data)

    def close(self):
        """Close once the buffered data is sent."""
        self.transport.close()

    def abort(self):
        """Close now, discarding buffered data."""
        self.transport.abort()

    def pause_reading(self):
        self.transport.pause_reading()

    def resume_reading(self):
        self.transport.resume_reading()


class FrameHandler(FramingAttributes, ConnectionHandler):
    """Length-prefixed frames: a ConnectionHandler the loop calls once per
    complete frame, with the payload as ``bytes`` (decoded in C).

    A peer that breaks the framing (a header announcing more than
    ``max_frame_size``, an impossible length, end of stream inside a frame)
    gets ``frame_error(exc)`` called, then its connection closes once the
    replies already queued are sent; ``connection_lost`` gets the
    ``FrameError``.

    Methods for the caller, besides ConnectionHandler's:

    - send_frame(payload)   # queued with its length header

    Methods that may be overridden, besides ConnectionHandler's
    (``data_received`` is not called):

    - frame_received(frame)
    - frame_error(exc)

    Class variables that may be overridden (those of
    ``cserver.framing.FramingAttributes``: the framing layer's names and
    meaning, see ``cserver.FrameDecoder``; read once, when the server's
    loop is built; invalid ones fail the server's constructor):

    - frame_format   # a struct format of one unsigned integer ("!I",
                     # "!H", "!B", "!Q", "<I"...), or:
    - length_size, byteorder   # 1, 2, 3, 4 or 8; "big" or "little"
    - length_offset   # bytes before the length field
    - length_adjustment   # added to the field's value: the body length
    - initial_bytes_to_strip   # None: the whole header
    - max_frame_size   # cserver.DEFAULT_MAX_FRAME_SIZE; replies are
                       # checked against it too

    Instance variables: ConnectionHandler's.
    """

    def __init__(self, transport, client_address, server):
        ConnectionHandler.__init__(self, transport, client_address, server)
        if type(self).send_frame is FrameHandler.send_frame:
            self.send_frame = transport.send_frame

    def frame_received(self, frame):
        """Called once per complete frame with its payload (``bytes``)."""

    def frame_error(self, exc):
        """The peer broke the framing (``exc`` is a ``cserver.FrameError``):
        log it (a warning on the server's ``logger``,
        ``cserver.selectorserver`` by default, naming the limit and the value
        seen).  When this returns, the connection is closed after the
        replies already queued (those to the good frames before the bad
        one) are sent, within ``drain_timeout`` seconds; an override may
        still ``send_frame()`` a last reply, or ``abort()`` to discard them.
        As ``FramedRequestHandler.frame_error``."""
        self.server.logger.warning("closing connection from %r: %s", self.client_address, exc)

    def send_frame(self, payload):
        """Queue ``payload`` with its length header."""
        self.transport.send_frame(payload)


class DatagramHandler:
    """The handler of a UDP socket on the loop (``SelectorUDPServer``,
    ``SelectorServer.add_datagram_endpoint``): one instance per socket.

    Methods for the caller (the handler's own code):

    - sendto(data, addr=None)   # queued if the socket buffer is full

    Methods that may be overridden:

    - connection_made()   # the server starts serving the socket
    - datagram_received(data, addr)   # once per datagram
    - error_received(exc)   # a socket error (logged by default)
    - connection_lost(exc)   # the server closes

    Instance variables:

    - transport   # the loop's DatagramEndpoint (cserver._loop)
    - server
    """

    def __init__(self, transport, server):
        self.transport = transport
        self.server = server
        if type(self).sendto is DatagramHandler.sendto:
            self.sendto = transport.sendto

    def connection_made(self):
        """Called when the server starts serving the socket."""

    def datagram_received(self, data, addr):
        """Called once per datagram."""

    def error_received(self, exc):
        """A socket error (``OSError``): logged as a warning on the
        server's ``logger``."""
        self.server.logger.warning("datagram socket error: %s", exc)

    def connection_lost(self, exc):
        """Called when the server closes."""

    def sendto(self, data, addr=None):
        """Send a datagram (queued if the socket buffer is full)."""
        self.transport.sendto(data, addr)


# -- servers ------------------------------------------------------------------


class SelectorServer:
    """Base class of the multiplexing servers: one thread, a C event loop.

    Methods for the caller:

    - __init__(server_address, RequestHandlerClass, bind_and_activate=True,
      **options)   # options: the class variables below, by name
    - from_socket(sock, RequestHandlerClass, **options)   # classmethod: on
      # an inherited socket (docs/systemd.md)
    - from_systemd(RequestHandlerClass, name=None, **options)   # classmethod
    - serve_forever(poll_interval=0.5)   # poll_interval is ignored
    - shutdown(drain_timeout=None)   # from any thread
    - server_close()
    - fileno() -> int
    - call_soon(fn, *args), call_later(delay, fn, *args) -> TimerHandle,
      call_at(when, fn, *args) -> TimerHandle   # loop thread
    - call_soon_threadsafe(fn, *args)   # the way in from other threads
    - add_datagram_endpoint(address, handler_class) -> address
    - stats() -> dict
    - connections() -> list of handlers
    - stop_on_signal(signum, frame=None)   # a SIGTERM/SIGINT handler

    Methods that may be overridden:

    - server_bind()
    - server_activate()
    - verify_request(transport, client_address) -> bool
    - handle_error(request, client_address)
    - server_close()

    Class variables that may be overridden by derived classes or
    instances (or given as keyword arguments of the same names; checked by
    the constructor, before any socket exists, with errors that name the
    option and the value; read once, when the loop is built by
    ``serve_forever()`` or the first ``call_*``).  The class's value of
    each is its default, and the only place that default is written
    (``help()`` shows them; ``docs/selectorserver.md`` explains each):

    - address_family, socket_type
    - allow_reuse_address, allow_reuse_port
    - request_queue_size   # the listen backlog
    - loop   # None: $CSERVER_LOOP, else "epoll" where available
    - idle_timeout, first_byte_timeout, frame_timeout
    - max_connections
    - high_water, low_water   # None: high_water / 4
    - drain_timeout
    - drain_delay   # a stop goes on accepting this long first
    - tcp_nodelay
    - read_size, accept_batch
    - buffer_pool   # None: a new BufferPool per loop
    - proxy_protocol   # None, "v1", "v2" or "any": a PROXY header first
    - trusted_proxies   # networks allowed to send one (others: closed)
    - proxy_header_timeout   # the whole header within this (seconds)
    - ssl_context   # None, or a server-side ssl.SSLContext: TLS in the loop
                    # (docs/tls.md); the handshake runs before the handler
                    # exists (after the PROXY header, if any)
    - ssl_handshake_timeout   # the whole handshake within this (seconds)
    - ssl_shutdown_timeout    # close(): wait this long for the peer's close_notify
    - workers   # > 1: this process supervises that many worker processes
                # (SIGHUP reloads them)
    - metrics_address   # None, (host, port) or a Unix path: the Prometheus
                        # endpoint (GET /metrics), served by the loop;
                        # the bound address once bound (docs/metrics.md)
    - metrics_timeout   # seconds a scrape connection may last

    Class variables that may be overridden (not options):

    - logger   # where the server, its loop, its supervisor and the
               # handlers' default messages log

    Instance variables:

    - server_address   # the bound address once bound
    - RequestHandlerClass
    - socket
    - worker_id   # 0 .. workers-1 in a worker process, else None
    """

    address_family = socket.AF_INET
    socket_type = socket.SOCK_STREAM
    request_queue_size = 4096
    allow_reuse_address = True
    allow_reuse_port = False
    loop = None
    idle_timeout = None
    # Deadlines that trickling cannot reset (docs/selectorserver.md,
    # "What one peer can cost"): a new connection must send its first byte
    # within first_byte_timeout; a frame must be complete within
    # frame_timeout of its first byte.  None turns one off.
    first_byte_timeout = 10.0
    frame_timeout = 30.0
    max_connections = None
    high_water = 64 * 1024
    low_water = None
    drain_timeout = 5.0
    # SIGTERM / shutdown(): go on accepting this long (balancers deregister
    # the server meanwhile), then stop accepting and drain
    drain_delay = 0.0
    tcp_nodelay = True
    read_size = 256 * 1024
    accept_batch = 128
    workers = 1
    buffer_pool = None
    # PROXY protocol (docs/proxy.md): None, or the header version every
    # connection must start with; only peers in trusted_proxies may connect
    # (Unix-socket peers always may); the whole header within
    # proxy_header_timeout of accept.
    proxy_protocol = None
    trusted_proxies = ("127.0.0.0/8", "::1/128")
    proxy_header_timeout = 3.0
    # TLS (docs/tls.md): None, or the server-side ssl.SSLContext of every
    # connection; the whole handshake within ssl_handshake_timeout of
    # accept (after the PROXY header); close() sends close_notify and waits
    # up to ssl_shutdown_timeout for the peer's.
    ssl_context = None
    ssl_handshake_timeout = 10.0
    ssl_shutdown_timeout = 5.0
    # The Prometheus endpoint (docs/metrics.md): None, (host, port) or a
    # Unix socket path; replaced by the bound address at construction.
    metrics_address = None
    metrics_timeout = 5.0
    logger = logger

    def __init__(self, server_address, RequestHandlerClass, bind_and_activate=True,
                 **options):
        for name, value in options.items():
            if name not in _OPTIONS:
                raise TypeError("%s() got an unexpected keyword argument %r"
                                % (type(self).__name__, name))
            setattr(self, name, value)
        self.server_address = server_address
        self.RequestHandlerClass = RequestHandlerClass
        # before any socket exists: a mistake leaves nothing behind
        self._check_options()
        self._check_handler_class()
        self._core = None
        self._closed_stats = None
        self._extra_sockets = []
        self._core_lock = threading.RLock()   # server_close may run callbacks that ask for the core
        self._loop_thread = None
        self._is_worker = False
        self._inherited = False
        self._retiring = False
        self._supervisor = None
        self._stop_at = None          # when a stop deferred by drain_delay happens
        self._stop_drain = None
        self._stop_scheduled = False
        self._stop_signals = 0
        self.worker_id = None
        self.__shutdown_request = False
        self.__is_shut_down = threading.Event()
        self.__is_shut_down.set()
        self._metrics_socket = None
        self._metrics_table = None
        self._metrics_cell = None
        self._metrics_exporter = None
        if (self.address_family == socket.AF_INET and isinstance(server_address, tuple)
                and ":" in str(server_address[0])):
            self.address_family = socket.AF_INET6
        self.socket = socket.socket(self.address_family, self.socket_type)
        if bind_and_activate:
            try:
                self.server_bind()
                self.server_activate()
            except BaseException:
                self.server_close()
                raise
        if self.metrics_address is not None:
            try:
                self._open_metrics()
            except BaseException:
                self.server_close()
                raise

    def _check_options(self):
        """Raise TypeError/ValueError naming the first bad option and its
        value (called by ``__init__`` and again when the loop is built)."""
        resolve_loop(self.loop)
        _check_int("request_queue_size", self.request_queue_size, 0)
        _check_seconds("idle_timeout", self.idle_timeout, none_ok=True, zero_ok=False)
        _check_seconds("first_byte_timeout", self.first_byte_timeout, none_ok=True, zero_ok=False)
        _check_seconds("frame_timeout", self.frame_timeout, none_ok=True, zero_ok=False)
        _check_int("max_connections", self.max_connections, 1, none_ok=True)
        _check_int("high_water", self.high_water, 0)
        if self.low_water is not None:
            _check_int("low_water", self.low_water, 0)
            if self.low_water > self.high_water:
                raise ValueError("low_water must be <= high_water (%r), got %r"
                                 % (self.high_water, self.low_water))
        _check_seconds("drain_timeout", self.drain_timeout)
        _check_seconds("drain_delay", self.drain_delay)
        if self.drain_delay == float("inf"):
            raise ValueError("drain_delay must be a finite number of seconds >= 0, got %r"
                             % (self.drain_delay,))
        _check_int("read_size", self.read_size, _MIN_READ_SIZE)
        _check_int("accept_batch", self.accept_batch, 1)
        _check_int("workers", self.workers, 1)
        if self.workers > 1 and not hasattr(os, "fork"):
            raise ValueError("workers must be 1 where os.fork() does not exist, got %r"
                             % (self.workers,))
        self._check_proxy_options()
        self._check_tls_options()
        _check_metrics_address(self.metrics_address)
        _check_seconds("metrics_timeout", self.metrics_timeout, zero_ok=False)
        if self.buffer_pool is not None and not isinstance(self.buffer_pool, _framing.BufferPool):
            raise TypeError("buffer_pool must be a BufferPool of the compiled framing layer "
                            "(cserver._framing.BufferPool) or None, got %r" % (self.buffer_pool,))

    def _check_proxy_options(self):
        mode = self.proxy_protocol
        if mode is not None and (not isinstance(mode, str) or mode not in PROXY_MODES):
            raise (ValueError if isinstance(mode, str) else TypeError)(
                "proxy_protocol must be None, 'v1', 'v2' or 'any', got %r" % (mode,))
        if mode is not None and self.socket_type != socket.SOCK_STREAM:
            raise ValueError("proxy_protocol is for stream servers: %s has no connections "
                             "to read a header from (got %r)" % (type(self).__name__, mode))
        _loop._compile_networks(self.trusted_proxies)  # names the bad network
        _check_seconds("proxy_header_timeout", self.proxy_header_timeout, zero_ok=False)

    def _check_tls_options(self):
        ctx = self.ssl_context
        if ctx is not None:
            if not isinstance(ctx, ssl.SSLContext):
                raise TypeError("ssl_context must be None or a server-side ssl.SSLContext, "
                                "got %r" % (ctx,))
            if ctx.check_hostname or getattr(ctx, "protocol", None) == ssl.PROTOCOL_TLS_CLIENT:
                raise ValueError(
                    "ssl_context must be a server-side ssl.SSLContext, got a client-side one "
                    "(PROTOCOL_TLS_CLIENT or check_hostname set): make it with "
                    "ssl.create_default_context(ssl.Purpose.CLIENT_AUTH) or "
                    "ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)")
            if self.socket_type != socket.SOCK_STREAM:
                raise ValueError("ssl_context is for stream servers: %s has no connections "
                                 "(DTLS is not supported)" % type(self).__name__)
        _check_seconds("ssl_handshake_timeout", self.ssl_handshake_timeout, zero_ok=False)
        _check_seconds("ssl_shutdown_timeout", self.ssl_shutdown_timeout, zero_ok=False)

    def _check_handler_class(self):
        """Reject a handler of the wrong family (a stdlib-style request
        handler here, a stream handler on UDP and the reverse) and a
        FrameHandler whose framing attributes are invalid, now rather than
        at the first connection."""
        handler_class = self.RequestHandlerClass
        name = type(self).__name__
        if not callable(handler_class):
            raise TypeError("%s: RequestHandlerClass must be a handler class, got %r"
                            % (name, handler_class))
        kind = _handler_kind(handler_class)
        if self.socket_type == socket.SOCK_DGRAM:
            wanted, fits = "a cserver.DatagramHandler subclass", ("a cserver.DatagramHandler",)
        else:
            wanted = "a cserver.ConnectionHandler or FrameHandler subclass"
            fits = ("a cserver.ConnectionHandler", "a cserver.FrameHandler")
        if kind is not None and kind not in fits:
            raise TypeError("%s needs %s, got %s (%s)"
                            % (name, wanted, handler_class.__qualname__, kind))
        if self._framed():
            framing_for(handler_class, twin=_framing)

    def _reuseport_workers(self):
        # an inherited socket is shared by the workers: the address may not
        # be this process's to bind again
        return (self.workers or 1) > 1 and not self._inherited and self.address_family in (
            socket.AF_INET, socket.AF_INET6)

    # -- inherited sockets ------------------------------------------------------

    @classmethod
    def from_socket(cls, sock, RequestHandlerClass, **options):
        """A server on ``sock``, a socket bound (and, for a stream server,
        listening: a socket only bound is put in the listening state with
        ``request_queue_size``) by someone else: a service manager
        (``from_systemd()``), a parent process, a test.  Its family and
        type must be the class's (TypeError otherwise: AF_INET or AF_INET6
        for the TCP and UDP servers).  The server owns it from then on
        (``server_close()`` closes it; it is made close-on-exec);
        ``server_address`` is its ``getsockname()``.  With ``workers > 1``
        the workers share it (no SO_REUSEPORT sockets are opened).  The
        options are the constructor's."""
        families = (socket.AF_INET, socket.AF_INET6) if cls.address_family in (
            socket.AF_INET, socket.AF_INET6) else (cls.address_family,)
        # the checks before anything is built: a mistake leaves the socket as it was
        who = "%s.from_socket()" % (cls.__name__,)
        if not isinstance(sock, socket.socket):
            raise TypeError("%s needs a socket.socket, got %r" % (who, sock))
        server = cls(None, RequestHandlerClass, bind_and_activate=False, **options)
        server.socket.close()
        try:
            server.server_address = systemd.adopt_socket(sock, families, cls.socket_type, who,
                                                 server.request_queue_size)
        except BaseException:
            server._closed_stats = {}
            raise
        server.address_family = sock.family
        server.socket = sock
        server._inherited = True
        return server

    @classmethod
    def from_systemd(cls, RequestHandlerClass, name=None, **options):
        """A server on a socket passed by systemd (socket activation:
        ``cserver.systemd.listen_fds_with_names()``, which unsets the
        variables).  ``name``: the socket's ``FileDescriptorName=`` (its
        ``.socket`` unit's name by default); None takes the only socket
        passed.  The sockets not used are closed (logged).  Raises
        LookupError when none (or none of that name, or several and no
        name) was passed, ValueError for malformed variables."""
        pairs = systemd.listen_fds_with_names()
        chosen = None
        try:
            if not pairs:
                raise LookupError("%s.from_systemd(): no socket was passed (LISTEN_FDS unset, "
                                  "or LISTEN_PID is not this process)" % (cls.__name__,))
            if name is None:
                if len(pairs) > 1:
                    raise LookupError("%s.from_systemd(): %d sockets were passed (%s): give "
                                      "name=" % (cls.__name__, len(pairs),
                                                 ", ".join(n for n, _ in pairs)))
                chosen = pairs[0][1]
            else:
                found = [s for n, s in pairs if n == name]
                if not found:
                    raise LookupError("%s.from_systemd(): no socket named %r was passed (%s)"
                                      % (cls.__name__, name, ", ".join(n for n, _ in pairs)))
                chosen = found[0]
            server = cls.from_socket(chosen, RequestHandlerClass, **options)
        except BaseException:
            for _, sock in pairs:
                sock.close()
            raise
        for unused_name, sock in pairs:
            if sock is not chosen:
                cls.logger.warning("from_systemd(): closing the socket %r not used (fd %d)",
                                   unused_name, sock.fileno())
                sock.close()
        return server

    def server_bind(self):
        """Bind the socket (with SO_REUSEADDR / SO_REUSEPORT as asked)."""
        if self.allow_reuse_address and hasattr(socket, "SO_REUSEADDR") and \
                self.address_family != getattr(socket, "AF_UNIX", None):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if (self.allow_reuse_port or self._reuseport_workers()) and \
                hasattr(socket, "SO_REUSEPORT"):
            if not self.allow_reuse_port:
                self._probe_port()
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()

    def _probe_port(self):
        """Workers share their port through SO_REUSEPORT, which would also
        let them share it with an unrelated server already listening there
        (both start, the kernel splits the traffic).  A plain bind without
        SO_REUSEPORT fails if anything listens on the address: raise that as
        EADDRINUSE naming the address."""
        address = self.server_address
        if not isinstance(address, tuple) or len(address) < 2 or not address[1]:
            return  # port 0: the kernel picks a free one
        probe = socket.socket(self.address_family, self.socket_type)
        try:
            if self.allow_reuse_address:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise OSError(errno.EADDRINUSE, "another server listens on %s:%s (workers "
                              "would share its port through SO_REUSEPORT)"
                              % (address[0], address[1])) from None
        finally:
            probe.close()

    def server_activate(self):
        """Listen (stream sockets)."""
        if self.socket_type == socket.SOCK_STREAM:
            self.socket.listen(self.request_queue_size)

    def fileno(self):
        return self.socket.fileno()

    # -- hooks ----------------------------------------------------------------

    def verify_request(self, transport, client_address):
        """Return False to refuse a connection (closed at once, no handler)."""
        return True

    def handle_error(self, request, client_address):
        """Called inside the ``except`` block when a handler raised; the
        connection is then closed.  Logs the traceback by default."""
        self.logger.exception("Exception occurred during processing of request from %r",
                              client_address)

    # -- the loop ----------------------------------------------------------------

    def _framed(self):
        return isinstance(self.RequestHandlerClass, type) and issubclass(
            self.RequestHandlerClass, FrameHandler)

    def _new_core(self):
        self._check_options()  # again: the instance may have changed since __init__
        core = _loop.Loop(resolve_loop(self.loop), self.read_size)
        options = {}
        if self._framed():
            # validated now (a bad layout fails here, not at the first
            # accept); the loop's decoders are compiled, their pool too
            pool = self.buffer_pool
            if pool is None:
                pool = _framing.BufferPool()
            recipe = framing_for(self.RequestHandlerClass, pool, twin=_framing)
            # the prototype was validated here; the loop clones it per connection
            options = dict(decoder=recipe.decoder, pool=recipe.pool, encoder=recipe.encoder)
        verify = self.verify_request
        if getattr(verify, "__func__", None) is SelectorServer.verify_request:
            verify = None  # the default accepts everything: skip the call
        handler_class = self.RequestHandlerClass
        server = self

        def make_handler(transport, client_address):
            if verify is not None and not verify(transport, client_address):
                return None
            return handler_class(transport, client_address, server)

        try:
            self._attach_metrics(core)
            core.configure(
                make_handler, self.handle_error,
                nodelay=self.tcp_nodelay, max_connections=self.max_connections,
                idle_timeout=self.idle_timeout, frame_timeout=self.frame_timeout,
                first_byte_timeout=self.first_byte_timeout, high_water=self.high_water,
                low_water=self.low_water, drain_timeout=self.drain_timeout,
                accept_batch=self.accept_batch, logger=self.logger,
                proxy_protocol=self.proxy_protocol, trusted_proxies=self.trusted_proxies,
                proxy_header_timeout=self.proxy_header_timeout,
                ssl_context=self.ssl_context, ssl_handshake_timeout=self.ssl_handshake_timeout,
                ssl_shutdown_timeout=self.ssl_shutdown_timeout, **options)
            self._attach(core)
        except BaseException:
            core.close()
            raise
        return core

    def _attach(self, core):
        core.add_listener(self.socket)

    def _get_core(self):
        with self._core_lock:
            if self._core is None:
                if self._closed_stats is not None:
                    raise RuntimeError("the server is closed")
                self._core = self._new_core()
            return self._core

    def serve_forever(self, poll_interval=0.5):
        """Serve until ``shutdown()``.  ``poll_interval`` is accepted for
        the stdlib's signature and ignored: shutdown wakes the loop at once.
        With ``workers > 1`` this process supervises the worker processes."""
        self.__is_shut_down.clear()
        try:
            if (self.workers or 1) > 1 and not self._is_worker:
                self._supervise()
                return
            core = self._get_core()
            self._loop_thread = threading.get_ident()
            # a stop asked before the loop ran: at once, unless drain_delay
            # deferred it (then the loop serves until the delay is over)
            if not self.__shutdown_request or self._stop_at is not None:
                if not self._is_worker:
                    core.call_soon(self._notify_state, "ready")
                if self._stop_at is not None:
                    core.call_soon(self._schedule_delayed_stop)
                core.run()
            if self._metrics_exporter is not None:
                self._metrics_exporter.publish()  # the final counters, for the others
        finally:
            self._loop_thread = None
            self.__shutdown_request = False
            self._stop_at = None
            self._stop_scheduled = False
            self.__is_shut_down.set()

    def _request_stop(self, drain_timeout=None, delay=True):
        """Ask the loop (or the supervisor) to stop; does not wait.  With
        ``delay`` and ``drain_delay``, the loop goes on accepting for
        ``drain_delay`` seconds first (also when it has not started yet)."""
        first = not self.__shutdown_request
        self.__shutdown_request = True
        core = self._core
        runs_a_loop = (self.workers or 1) <= 1 or self._is_worker
        if first and not self._is_worker and self._supervisor is None and \
                self._loop_thread is not None:
            self._notify_state("stopping")
        if delay and first and self.drain_delay and runs_a_loop and not self._retiring:
            self._stop_at = _monotonic() + self.drain_delay
            self._stop_drain = drain_timeout
            self.logger.info("accepting for %s s more (drain_delay), then stopping",
                             self.drain_delay)
            if core is not None and not core.closed:
                core.call_soon_threadsafe(self._schedule_delayed_stop)
            return
        if core is not None:
            core.stop(drain_timeout)

    def _schedule_delayed_stop(self):
        """The stop that ``drain_delay`` deferred, as a timer (loop thread;
        once)."""
        core = self._core
        if self._stop_scheduled or self._stop_at is None or core is None:
            return
        self._stop_scheduled = True
        core.call_at(self._stop_at, core.stop, self._stop_drain)

    def shutdown(self, drain_timeout=None):
        """Stop ``serve_forever()``: stop accepting and reading, send what
        is buffered for up to ``drain_timeout`` seconds (default: the
        ``drain_timeout`` attribute), close every connection (handlers get
        ``connection_lost(None)``).  From another thread it waits for
        ``serve_forever()`` to return; from the loop's thread it does not."""
        self._request_stop(drain_timeout)
        if self._loop_thread == threading.get_ident():
            return
        self.__is_shut_down.wait()

    def server_close(self):
        """Close the connections, the loop and the listening socket."""
        with self._core_lock:
            # under the lock: no other thread gets this core from
            # _get_core() while it closes, nor a new one after
            core = self._core
            if core is not None and not core.running:
                self._closed_stats = core.stats()
                self._core = None
                core.close()
            elif self._closed_stats is None:
                self._closed_stats = {}
        for sock in self._extra_sockets:
            sock.close()
        self._extra_sockets = []
        self._close_metrics()
        self.socket.close()

    def __enter__(self):
        return self

    def __exit__(self, *args):
        self.server_close()

    # -- timers, cross-thread calls, introspection ----------------------------

    def call_soon(self, fn, *args):
        """Run ``fn(*args)`` on the loop at its next pass (loop thread)."""
        return self._get_core().call_soon(fn, *args)

    def call_soon_threadsafe(self, fn, *args):
        """Run ``fn(*args)`` on the loop; safe from any thread (wakes it)."""
        return self._get_core().call_soon_threadsafe(fn, *args)

    def call_later(self, delay, fn, *args):
        """Run ``fn(*args)`` on the loop in ``delay`` seconds; returns a
        handle with ``cancel()``.  Loop thread (or before ``serve_forever``)."""
        return self._get_core().call_later(delay, fn, *args)

    def call_at(self, when, fn, *args):
        """Like ``call_later`` at ``when`` on the ``time.monotonic()`` clock."""
        return self._get_core().call_at(when, fn, *args)

    def add_datagram_endpoint(self, address, handler_class):
        """Serve a UDP socket bound to ``address`` on this server's loop too
        (one thread for TCP and UDP); ``handler_class`` is a
        ``DatagramHandler`` subclass, instantiated once.  Returns the bound
        address.  Call before ``serve_forever()`` (or on the loop's thread);
        not with ``workers``."""
        family = socket.AF_INET6 if ":" in str(address[0]) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind(address)
            self._get_core().add_datagram_endpoint(sock, lambda ep: handler_class(ep, self))
        except BaseException:
            sock.close()
            raise
        self._extra_sockets.append(sock)
        return sock.getsockname()

    def stats(self):
        """Current and total connections, bytes and frames in and out,
        errors, buffer use."""
        if self._core is None and self._closed_stats is not None:
            return self._closed_stats  # the last counters of a closed server
        return self._get_core().stats()

    def connections(self):
        """The handlers of the open connections."""
        core = self._core
        return core.connections() if core is not None else []

    # -- stop signals and workers ---------------------------------------------

    def stop_on_signal(self, signum, frame=None):
        """A SIGTERM/SIGINT handler for a serving process: install it with
        ``signal.signal(signal.SIGTERM, server.stop_on_signal)`` (``python
        -m cserver echo`` does; each worker of ``workers > 1`` has it for
        SIGTERM).  The first signal stops gracefully (no new connections,
        buffered data sent for up to ``drain_timeout`` seconds), the next
        one closes every connection now.  It only asks: the stop happens on
        the loop's thread, and ``serve_forever()`` then returns."""
        self._stop_signals = getattr(self, "_stop_signals", 0) + 1
        name = _signal_name(signum)
        core = self._core
        if self._stop_signals == 1:
            self.logger.info("%s: stopping (buffered data is sent for up to %s s; "
                             "again to stop now)", name, self.drain_timeout)
            self._request_stop()
        else:
            self.logger.warning("%s again: cutting the drain short, closing %d connections now",
                                name, core.nconn if core is not None else 0)
            self._stop_at = None   # no drain_delay either
            if core is not None:
                core.stop(0.0)   # ends a drain_delay too
                core.call_soon_threadsafe(self._abort_connections)

    def _abort_connections(self):
        """Close every connection now, discarding what is buffered (loop thread)."""
        for handler in self.connections():
            transport = getattr(handler, "transport", None)
            if transport is not None:
                transport.abort()

    def _supervise(self):
        """``serve_forever()`` with ``workers > 1``: this process opens one
        listening socket per worker (all SO_REUSEPORT on the same address:
        connections queue in their backlogs from the start, and a restarted
        or reloaded worker takes over its predecessor's socket and queue;
        Unix sockets and inherited sockets: the workers share the one
        socket), then supervises the workers (``cserver._supervisor``) until
        ``shutdown()`` or a stop signal; SIGHUP reloads them."""
        n = int(self.workers)
        sockets = [self.socket]
        self._stop_signals = 0  # each worker counts its own, from 0

        def open_listeners():
            if self._reuseport_workers():
                for _ in range(1, n):
                    sockets.append(self._reuseport_socket())

        hooks = {}
        if self._metrics_socket is not None:
            hooks = self._metrics_hooks(n)
        supervisor = Supervisor(
            n, lambda slot: self._run_worker(slot, sockets, supervisor),
            prepare=open_listeners, stop_requested=self._shutdown_requested,
            on_signal=self.stop_on_signal, on_retire=self._retire_on_signal,
            ready_timeout=READY_TIMEOUT, drain_timeout=self.drain_timeout,
            drain_delay=self.drain_delay, on_state=self._notify_state, logger=self.logger,
            **hooks)
        self._supervisor = supervisor
        try:
            supervisor.run()
        finally:
            self._supervisor = None
            for sock in sockets[1:]:
                sock.close()

    def _notify_state(self, state):
        """Tell the service manager (``NOTIFY_SOCKET``, when set): "ready",
        "reloading" or "stopping".  A failure is logged, never raised."""
        try:
            if state == "ready":
                systemd.notify("READY=1")
            elif state == "reloading":
                systemd.notify_reloading()
            elif state == "stopping":
                systemd.notify("STOPPING=1")
        except (OSError, ValueError) as exc:
            self.logger.warning("sd_notify %s failed: %s", state, exc)

    def _shutdown_requested(self):
        return self.__shutdown_request

    def _reuseport_socket(self):
        sock = socket.socket(self.address_family, self.socket_type)
        try:
            if self.allow_reuse_address:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(self.server_address)
            if self.socket_type == socket.SOCK_STREAM:
                sock.listen(self.request_queue_size)
        except BaseException:
            sock.close()
            raise
        return sock

    def _run_worker(self, slot, sockets, supervisor):
        """The body of worker ``slot`` (in the forked child): keep its own
        listening socket, close the others, build the loop, tell the
        supervisor it is ready, serve until stopped or retired."""
        self._is_worker = True
        self.worker_id = slot
        self._core = None
        self._core_lock = threading.RLock()   # server_close may run callbacks that ask for the core
        mine = sockets[slot] if self._reuseport_workers() else self.socket
        for sock in sockets:
            if sock is not mine:
                sock.close()
        self.socket = mine
        try:
            self._get_core()
            self.logger.info("worker %d serving on %r, pid %d", slot, self.server_address,
                             os.getpid())
            supervisor.worker_ready()
            self.serve_forever()
        finally:
            self.server_close()

    def _retire_on_signal(self, signum, frame=None):
        """A worker's SIGHUP handler (the supervisor sends it when a reload
        made this worker's successor ready): stop accepting at once (the
        listening socket stays open: the successor accepts what queues
        there), go on serving the open connections until their peers close
        them or ``drain_timeout`` passes, then stop (what is buffered gets
        one more second)."""
        core = self._core
        if self._retiring or core is None:
            return
        self._retiring = True
        self.logger.info("worker %r (pid %d) retiring: not accepting, %d connections finish "
                         "within %s s", self.worker_id, os.getpid(), core.nconn,
                         self.drain_timeout)
        deadline = _monotonic() + self.drain_timeout

        def retire():
            core.stop_accepting()
            check()

        def check():
            if self._shutdown_requested():
                return   # a stop signal took over
            if core.nconn == 0 or _monotonic() >= deadline:
                self._request_stop(min(self.drain_timeout, _RETIRE_FLUSH), delay=False)
            else:
                core.call_later(_RETIRE_POLL, check)

        core.call_soon_threadsafe(retire)

    # -- the metrics endpoint (docs/metrics.md, cserver/_metrics.py) ---------------

    def _open_metrics(self):
        """Open the metrics endpoint's listening socket (once, before any
        worker is forked: they all serve it) and make ``metrics_address``
        the bound address."""
        address = self.metrics_address
        if isinstance(address, tuple):
            family = socket.AF_INET6 if ":" in str(address[0]) else socket.AF_INET
        else:
            family = socket.AF_UNIX
            address = os.fspath(address)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                where = address if family == socket.AF_UNIX else "%s:%s" % address[:2]
                raise OSError(exc.errno, "metrics_address %s: %s"
                              % (where, exc.strerror or exc)) from None
            # room for a burst of scrapers (METRICS_MAX_OPEN are served at
            # once, the rest wait here)
            sock.listen(512)
        except BaseException:
            sock.close()
            raise
        self._metrics_socket = sock
        self._metrics_owner = (os.getpid(), _unix_identity(address)
                               if family == socket.AF_UNIX else None)
        self.metrics_address = sock.getsockname()

    def _close_metrics(self):
        sock = self._metrics_socket
        if sock is None:
            return
        self._metrics_socket = None
        path = self.metrics_address if sock.family == getattr(socket, "AF_UNIX", None) else None
        sock.close()
        pid, identity = self._metrics_owner
        if path and pid == os.getpid() and identity is not None and \
                _unix_identity(path) == identity:
            try:
                os.unlink(path)  # ours, not a successor's; never a worker's to remove
            except OSError:
                pass

    def _attach_metrics(self, core):
        """A new loop serves the metrics endpoint, if there is one."""
        if self._metrics_socket is None:
            return
        if self._metrics_table is None:  # one process: a table of its own
            self._metrics_table = _metrics.SharedTable(1)
            self._metrics_cell = self._metrics_table.claim(os.getpid())
        exporter = _metrics.Exporter(self._metrics_table, self._metrics_cell)
        exporter.attach(core, self._metrics_socket, self.metrics_timeout)
        self._metrics_exporter = exporter

    def _metrics_hooks(self, n):
        """The supervisor's hooks that keep the workers' counters (see
        cserver/_metrics.py): a cell per forked worker, retired once it is
        reaped, whatever the reason (crash, restart, replacement, stop)."""
        table = self._metrics_table = _metrics.SharedTable(_metrics.workers_cells(n))
        cells = {}

        def before_fork(slot):
            self._metrics_cell = table.claim()  # the child inherits it
            if self._metrics_cell is None:
                self.logger.warning("metrics: no free cell for worker %d: its counters "
                                    "are not exported", slot)

        def worker_started(slot, pid):
            cells[pid] = self._metrics_cell
            self._metrics_cell = None

        def worker_exited(slot, pid, status):
            if pid is None:  # the fork failed
                cell, self._metrics_cell = self._metrics_cell, None
            else:
                cell = cells.pop(pid, None)
            table.retire(cell)

        return dict(before_fork=before_fork, worker_started=worker_started,
                    worker_exited=worker_exited)


def _unix_identity(path):
    try:
        st = os.lstat(path)
    except (OSError, TypeError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _check_metrics_address(address):
    """None, a (host, port) tuple (port 0-65535; 0: any free port) or a
    Unix socket path (str, bytes or os.PathLike)."""
    if address is None:
        return
    if isinstance(address, tuple):
        if len(address) != 2 or not isinstance(address[0], str) or \
                isinstance(address[1], bool) or not isinstance(address[1], int) or \
                not 0 <= address[1] <= 65535:
            raise ValueError("metrics_address must be (host, port) with a str host and a "
                             "port 0-65535, or a Unix socket path, got %r" % (address,))
        return
    if isinstance(address, (str, bytes, os.PathLike)):
        if not hasattr(socket, "AF_UNIX"):
            raise ValueError("metrics_address %r: Unix sockets are not available here"
                             % (address,))
        if not os.fspath(address):
            raise ValueError("metrics_address must not be an empty path")
        return
    raise TypeError("metrics_address must be None, (host, port) or a Unix socket path, "
                    "got %r" % (address,))


def _signal_name(signum):
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "signal %d" % signum


class SelectorTCPServer(SelectorServer):
    """TCP on the multiplexing loop: IPv4, or IPv6 when the host is an IPv6
    address (``address_family`` becomes AF_INET6).  ``RequestHandlerClass``
    is a ``ConnectionHandler`` or ``FrameHandler`` subclass, instantiated
    per connection.  The contract is ``SelectorServer``'s."""


if hasattr(socket, "AF_UNIX"):

    class SelectorUnixStreamServer(SelectorServer):
        """Unix stream sockets on the multiplexing loop (``server_address``
        is a path).  ``RequestHandlerClass`` is a ``ConnectionHandler`` or
        ``FrameHandler`` subclass.  The contract is ``SelectorServer``'s;
        with ``workers > 1`` the workers share the one socket.

        Class variables overridden: address_family (AF_UNIX)."""
        address_family = socket.AF_UNIX


class SelectorUDPServer(SelectorServer):
    """UDP on the multiplexing loop.  ``RequestHandlerClass`` is a
    ``DatagramHandler`` subclass, instantiated once for the socket; the
    contract is ``SelectorServer``'s, without the per-connection options
    (no connections: ``connections()`` is empty).

    Class variables overridden: socket_type (SOCK_DGRAM),
    allow_reuse_address (False)."""

    socket_type = socket.SOCK_DGRAM
    allow_reuse_address = False

    def _framed(self):
        return False

    def _attach(self, core):
        handler_class = self.RequestHandlerClass
        core.add_datagram_endpoint(self.socket, lambda ep: handler_class(ep, self))
