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

Methods for the caller:

- __init__(server_address, RequestHandlerClass, bind_and_activate=True, **options)
- serve_forever()
- shutdown(drain_timeout=None)   # from another thread (or the loop's)
- server_close()
- call_soon(fn, *args), call_later(delay, fn, *args), call_at(when, fn, *args)
- call_soon_threadsafe(fn, *args)  # the way in from other threads
- stats() -> dict, connections() -> list of handlers

Methods that may be overridden:

- server_bind(), server_activate(), server_close()
- verify_request(transport, client_address) -> bool
- handle_error(request, client_address)

Class variables that may be overridden by derived classes or instances
(checked by the constructor, before any socket exists, with errors that name
the option and the value; read once, when the loop is built by
``serve_forever()`` or the first ``call_*``; the same names are accepted as
keyword arguments):

- address_family, socket_type, allow_reuse_address (True),
  allow_reuse_port (False), request_queue_size (4096: the listen backlog)
- loop (None: $CSERVER_LOOP, else "epoll" where available, else "selectors")
- idle_timeout (None), first_byte_timeout (10 s), frame_timeout (30 s),
  max_connections (None), high_water (64 KiB),
  low_water (high_water / 4), drain_timeout (5.0 s), tcp_nodelay (True),
  read_size (256 KiB), accept_batch (128), workers (1)
"""

import errno
import logging
import numbers
import operator
import os
import select
import signal
import socket
import sys
import threading
import time

from . import _framing, _loop
from .errors import FrameError, FrameTooLarge, IncompleteFrame  # noqa: F401  (re-exported)
from .framing import FramingAttributes, framing_for

__all__ = ["SelectorServer", "SelectorTCPServer", "SelectorUnixStreamServer",
           "SelectorUDPServer", "ConnectionHandler", "FrameHandler",
           "DatagramHandler"]

logger = logging.getLogger("cserver.selectorserver")

_OPTIONS = frozenset((
    "loop", "idle_timeout", "first_byte_timeout", "frame_timeout", "max_connections",
    "high_water", "low_water",
    "drain_timeout", "tcp_nodelay", "read_size", "accept_batch", "workers",
    "allow_reuse_address", "allow_reuse_port", "request_queue_size",
    "buffer_pool",
))



def _loop_kind(requested):
    kind = requested or os.environ.get("CSERVER_LOOP", "").strip().lower() or None
    if kind is None:
        return "epoll" if _loop.HAVE_EPOLL else "selectors"
    if kind not in ("epoll", "selectors"):
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
    """One instance per connection; the loop calls it with asyncio's words.

    Override ``data_received(data)`` (called once per read with ``bytes``)
    and, if needed, ``connection_made()``, ``eof_received()`` (return a true
    value to keep writing after the peer's half-close), ``connection_lost(exc)``
    (``None`` on a clean close), ``pause_writing()``/``resume_writing()``
    (the write buffer crossed ``high_water``/``low_water``; reading from this
    peer is paused meanwhile).

    Use ``write(data)``, ``close()``, ``abort()``, ``pause_reading()``,
    ``resume_reading()``; attributes ``transport``, ``client_address``,
    ``server``.  Every method runs on the loop's thread; from other threads
    go through ``server.call_soon_threadsafe``.
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
    """A connection handler for length-prefixed frames.

    Override ``frame_received(frame)``: called once per complete frame, with
    the payload as ``bytes`` (decoded in C).  Reply with
    ``send_frame(payload)``.  A peer that breaks the framing (a header
    announcing more than ``max_frame_size``, an impossible length, end of
    stream inside a frame) gets ``frame_error(exc)`` called, then its
    connection closes once the replies already queued are sent;
    ``connection_lost`` gets the ``FrameError``.

    The framing is declared by class attributes with the framing layer's
    names and meaning (see ``cserver.FrameDecoder``): ``frame_format`` (a
    struct format of one unsigned integer: ``"!I"`` by default, ``"!H"``,
    ``"!B"``, ``"!Q"``, ``"<I"``...) or explicit ``length_size`` (1, 2, 3, 4
    or 8) and ``byteorder``; ``length_offset`` (bytes before the length
    field), ``length_adjustment`` (added to the field's value to get the
    body length), ``initial_bytes_to_strip`` (bytes removed from the start
    of each delivered frame; default: the whole header), ``max_frame_size``
    (``cserver.DEFAULT_MAX_FRAME_SIZE``, 1 MiB, by default; replies are
    checked against it too); these are ``cserver.framing.FramingAttributes``.
    Read once, when the server's loop is built.
    """

    def __init__(self, transport, client_address, server):
        ConnectionHandler.__init__(self, transport, client_address, server)
        if type(self).send_frame is FrameHandler.send_frame:
            self.send_frame = transport.send_frame

    def frame_received(self, frame):
        """Called once per complete frame with its payload (``bytes``)."""

    def frame_error(self, exc):
        """The peer broke the framing (``exc`` is a ``cserver.FrameError``):
        log it (a warning on ``cserver.selectorserver`` naming the limit and
        the value seen).  When this returns, the connection is closed after
        the replies already queued (those to the good frames before the bad
        one) are sent, within ``drain_timeout`` seconds; an override may
        still ``send_frame()`` a last reply, or ``abort()`` to discard them.
        As ``FramedRequestHandler.frame_error``."""
        logger.warning("closing connection from %r: %s", self.client_address, exc)

    def send_frame(self, payload):
        """Queue ``payload`` with its length header."""
        self.transport.send_frame(payload)


class DatagramHandler:
    """The handler of a ``SelectorUDPServer``: one instance for the socket.

    Override ``datagram_received(data, addr)``; reply with
    ``sendto(data, addr)``.  ``error_received(exc)`` gets socket errors
    (logged by default).  Attributes ``transport`` and ``server``.
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
        logger.warning("datagram socket error: %s", exc)

    def connection_lost(self, exc):
        """Called when the server closes."""

    def sendto(self, data, addr=None):
        """Send a datagram (queued if the socket buffer is full)."""
        self.transport.sendto(data, addr)


# -- servers ------------------------------------------------------------------


class SelectorServer:
    """Base class of the multiplexing servers (see the module docstring)."""

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
    tcp_nodelay = True
    read_size = 256 * 1024
    accept_batch = 128
    workers = 1
    buffer_pool = None

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
        self._core_lock = threading.Lock()
        self._loop_thread = None
        self._is_worker = False
        self._stop_workers = False
        self._signal_pipe = None
        self._stop_signals = 0
        self.worker_id = None
        self.__shutdown_request = False
        self.__is_shut_down = threading.Event()
        self.__is_shut_down.set()
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

    def _check_options(self):
        """Raise TypeError/ValueError naming the first bad option and its
        value (called by ``__init__`` and again when the loop is built)."""
        _loop_kind(self.loop)
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
        _check_int("read_size", self.read_size, _MIN_READ_SIZE)
        _check_int("accept_batch", self.accept_batch, 1)
        _check_int("workers", self.workers, 1)
        if self.workers > 1 and not hasattr(os, "fork"):
            raise ValueError("workers must be 1 where os.fork() does not exist, got %r"
                             % (self.workers,))
        if self.buffer_pool is not None and not isinstance(self.buffer_pool, _framing.BufferPool):
            raise TypeError("buffer_pool must be a BufferPool of the compiled framing layer "
                            "(cserver._framing.BufferPool) or None, got %r" % (self.buffer_pool,))

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
        return (self.workers or 1) > 1 and self.address_family in (
            socket.AF_INET, socket.AF_INET6)

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
        logger.exception("Exception occurred during processing of request from %r",
                         client_address)

    # -- the loop ----------------------------------------------------------------

    def _framed(self):
        return isinstance(self.RequestHandlerClass, type) and issubclass(
            self.RequestHandlerClass, FrameHandler)

    def _new_core(self):
        self._check_options()  # again: the instance may have changed since __init__
        core = _loop.Loop(_loop_kind(self.loop), self.read_size)
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
            core.configure(
                make_handler, self.handle_error,
                nodelay=self.tcp_nodelay, max_connections=self.max_connections,
                idle_timeout=self.idle_timeout, frame_timeout=self.frame_timeout,
                first_byte_timeout=self.first_byte_timeout, high_water=self.high_water,
                low_water=self.low_water, drain_timeout=self.drain_timeout,
                accept_batch=self.accept_batch, logger=logger, **options)
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
            if not self.__shutdown_request:
                core.run()
        finally:
            self._loop_thread = None
            self.__shutdown_request = False
            self.__is_shut_down.set()

    def _request_stop(self, drain_timeout=None):
        """Ask the loop (or the supervisor) to stop; does not wait."""
        self.__shutdown_request = True
        self._stop_workers = True
        core = self._core
        if core is not None:
            core.stop(drain_timeout)

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

    # -- workers ------------------------------------------------------------------
    #
    # Stop signals.  This module is compiled: CPython runs a Python signal
    # handler only when something calls PyErr_CheckSignals() (the interpreter
    # between bytecodes, or a C call that an EINTR cut short), and compiled
    # code between two C calls does neither.  A SIGTERM that arrived while the
    # supervisor ran between its waits, or that the kernel delivered to
    # another thread, stayed pending until a second signal.  So the
    # supervisor does not depend on its handler running: its waits are a
    # select() on a pipe installed as the signal wake-up fd
    # (signal.set_wakeup_fd), into which the C-level handler writes each
    # signal's number whatever the process was doing, and it reads the stop
    # signals from there.  Every SIGINT/SIGTERM is seen within one wait
    # (_SUPERVISOR_TICK) of its arrival.

    def _stop_on_signal(self, signum, frame=None):
        """The SIGTERM/SIGINT handler of a serving process (``python -m
        cserver echo``, each worker): the first signal stops gracefully
        (no new connections, buffered data sent for up to ``drain_timeout``
        seconds), the next one closes every connection now."""
        self._stop_signals = getattr(self, "_stop_signals", 0) + 1
        name = _signal_name(signum)
        core = self._core
        if self._stop_signals == 1:
            logger.info("%s: stopping (buffered data is sent for up to %s s; "
                        "again to stop now)", name, self.drain_timeout)
            self._request_stop()
        else:
            logger.warning("%s again: cutting the drain short, closing %d connections now",
                           name, core.nconn if core is not None else 0)
            if core is not None:
                core.call_soon_threadsafe(self._abort_connections)

    def _abort_connections(self):
        """Close every connection now, discarding what is buffered (loop thread)."""
        for handler in self.connections():
            transport = getattr(handler, "transport", None)
            if transport is not None:
                transport.abort()

    def _supervise(self):
        n = int(self.workers)
        signals = None
        if threading.current_thread() is threading.main_thread():
            signals = _StopSignals()
        self._stop_workers = False
        children = {}
        started = {}
        delays = [0.0] * n
        # One listening socket per worker, all SO_REUSEPORT on the same
        # address, opened here: connections queue in their backlogs from the
        # start, and a restarted worker takes over its predecessor's socket
        # (and its queue).  Unix sockets: the workers share the one socket.
        self._worker_sockets = [self.socket]
        self._signal_pipe = signals
        try:
            if signals is not None:
                signals.install()
            if self._reuseport_workers():
                for slot in range(1, n):
                    self._worker_sockets.append(self._reuseport_socket())
            for slot in range(n):
                pid = self._spawn(slot)
                children[pid] = slot
                started[slot] = time.monotonic()
            logger.info("supervisor pid %d: %d workers %s", os.getpid(), n,
                        sorted(children))
            while not self._supervisor_stopping(signals):
                for pid in list(children):
                    try:
                        done, status = os.waitpid(pid, os.WNOHANG)
                    except ChildProcessError:
                        done, status = pid, 0
                    if done == 0:
                        continue
                    slot = children.pop(pid)
                    if self._supervisor_stopping(signals):
                        break
                    lived = time.monotonic() - started[slot]
                    delays[slot] = 0.0 if lived > 5.0 else min(max(delays[slot] * 2, 0.1), 5.0)
                    logger.error("worker %d (pid %d) exited (%s) after %.1f s; restarting%s",
                                 slot, pid, _describe_status(status), lived,
                                 " in %.1f s" % delays[slot] if delays[slot] else "")
                    end = time.monotonic() + delays[slot]
                    while not self._supervisor_stopping(signals):
                        left = end - time.monotonic()
                        if left <= 0:
                            break
                        self._supervisor_wait(signals, min(left, _SUPERVISOR_TICK))
                    if self._supervisor_stopping(signals):
                        break
                    new = self._spawn(slot)
                    children[new] = slot
                    started[slot] = time.monotonic()
                    logger.info("worker %d restarted: pid %d", slot, new)
                self._supervisor_wait(signals, _SUPERVISOR_TICK)
        finally:
            try:
                self._stop_children(children, signals)
            finally:
                self._signal_pipe = None
                if signals is not None:
                    signals.uninstall()
                self._stop_workers = False
                for sock in self._worker_sockets[1:]:
                    sock.close()
                self._worker_sockets = [self.socket]

    def _supervisor_stopping(self, signals):
        if signals is not None and signals.count:
            self._stop_workers = True
        return self._stop_workers or self.__shutdown_request

    def _supervisor_wait(self, signals, timeout):
        """Sleep up to ``timeout`` seconds, less if a stop signal arrives."""
        if signals is None:
            time.sleep(timeout)
        else:
            signals.wait(timeout)

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

    def _stop_children(self, children, signals=None):
        """SIGTERM every worker and reap them: they drain for up to
        ``drain_timeout``; a stop signal during that wait is forwarded (the
        workers then close their connections at once); a worker still
        running ``drain_timeout + 2`` s later is killed."""
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        seen = signals.count if signals is not None else 0
        cut = False
        deadline = time.monotonic() + (self.drain_timeout or 0) + 2.0
        while children and time.monotonic() < deadline:
            for pid in list(children):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    children.pop(pid)
            if not children:
                break
            if not cut and signals is not None and signals.count > min(seen, 1):
                # a signal after the one that started the stop (or after a
                # shutdown() call): the user does not want to wait
                cut = True
                logger.warning("stop signal again: cutting the drain short (%d workers "
                               "close their connections now)", len(children))
                for pid in children:
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                deadline = min(deadline, time.monotonic() + 2.0)
            self._supervisor_wait(signals, 0.02)
        for pid in list(children):
            logger.error("worker pid %d did not stop in time: killing it", pid)
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        logger.info("all workers stopped")

    def _spawn(self, slot):
        # Stop signals are blocked across fork() until the worker has its
        # own handlers and has dropped the supervisor's wake-up fd: a SIGTERM
        # meant for a new worker must not reach the supervisor's pipe.
        mask = None
        if self._signal_pipe is not None and hasattr(signal, "pthread_sigmask"):
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            raise
        if pid:
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            return pid
        code = 0
        try:
            self._run_worker(slot, mask)
        except BaseException:
            code = 1
            try:
                logger.exception("worker %d crashed", slot)
            except BaseException:
                pass
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def _run_worker(self, slot, mask=None):
        if self._signal_pipe is not None:
            self._signal_pipe.close_in_child()
            self._signal_pipe = None
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._stop_on_signal)
        self._stop_signals = 0
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._is_worker = True
        self.worker_id = slot
        self._core = None
        self._core_lock = threading.Lock()
        mine = self._worker_sockets[slot] if self._reuseport_workers() else self.socket
        for sock in self._worker_sockets:
            if sock is not mine:
                sock.close()
        self.socket = mine
        logger.info("worker %d serving on %r, pid %d", slot, self.server_address, os.getpid())
        try:
            self.serve_forever()
        finally:
            self.server_close()


#: the longest a supervisor wait lasts (it polls its workers this often)
_SUPERVISOR_TICK = 0.05
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _ignore_signal(signum, frame):
    """The supervisor's Python-level handler: it exists so that the C-level
    one writes to the wake-up fd; the supervisor reads the signal there."""


class _StopSignals:
    """SIGTERM/SIGINT as the supervisor sees them: through a wake-up pipe
    (see "Stop signals" above).  ``count`` is the number received."""

    def __init__(self):
        self.count = 0
        self.previous = {}
        self.previous_fd = None
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)

    def install(self):
        # the wake-up fd first: no signal may be caught before it is there
        self.previous_fd = signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)
        for sig in _STOP_SIGNALS:
            self.previous[sig] = signal.signal(sig, _ignore_signal)

    def wait(self, timeout):
        """Wait up to ``timeout`` s or until a signal; count the stop signals."""
        if timeout > 0:
            select.select([self.r], [], [], timeout)
        while True:
            try:
                data = os.read(self.r, 512)
            except BlockingIOError:
                break
            if not data:
                break
            for number in data:
                if number in _STOP_SIGNALS:
                    self.count += 1

    def uninstall(self):
        try:
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)
            if self.previous_fd is not None:
                signal.set_wakeup_fd(self.previous_fd)
        finally:
            self.previous = {}
            self.previous_fd = None
            self._close()

    def close_in_child(self):
        """In a forked worker: drop the supervisor's wake-up fd and pipe."""
        signal.set_wakeup_fd(-1)
        self._close()

    def _close(self):
        for fd in (self.r, self.w):
            if fd >= 0:
                os.close(fd)
        self.r = self.w = -1


def _signal_name(signum):
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "signal %d" % signum


def _describe_status(status):
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return "killed by %s" % signal.Signals(sig).name
        except ValueError:
            return "killed by signal %d" % sig
    return "exit status %d" % os.WEXITSTATUS(status)


class SelectorTCPServer(SelectorServer):
    """TCP (IPv4, or IPv6 when the host is an IPv6 address)."""


if hasattr(socket, "AF_UNIX"):

    class SelectorUnixStreamServer(SelectorServer):
        """Unix stream sockets (``server_address`` is a path)."""
        address_family = socket.AF_UNIX


class SelectorUDPServer(SelectorServer):
    """UDP on the same loop; ``RequestHandlerClass`` is a
    ``DatagramHandler`` subclass, instantiated once."""

    socket_type = socket.SOCK_DGRAM
    allow_reuse_address = False

    def _framed(self):
        return False

    def _attach(self, core):
        handler_class = self.RequestHandlerClass
        core.add_datagram_endpoint(self.socket, lambda ep: handler_class(ep, self))
