# cython: language_level=3, annotation_typing=False, binding=True
"""The stdlib-compatible servers, compiled.

This module is a reimplementation of the running interpreter's
``socketserver`` (3.9 to 3.15, patch level included): same public names,
``__all__``, classes, MRO, class attributes, hooks and behaviour, plus what
no contract forbids:

* ``shutdown()`` stops ``serve_forever()`` at once (a wake-up socket is part
  of the poll set) instead of after up to ``poll_interval`` (gh-88932);
* ``ThreadPoolMixIn``: a bounded pool of worker threads with a bounded queue;
  when both are full the server stops accepting and the kernel backlog holds
  the rest.

Every class users subclass is a plain Python class (compiled by Cython from
this ``.py`` file), so multiple inheritance, class attribute overrides,
``super()``, ``vars(self)`` and name mangling work as in the stdlib.  Module
globals (``socket``, ``selectors``, ``threading``, ``_ServerSelector``) are
looked up when used, so monkeypatching them works as it does in the stdlib.

The stdlib classes report ``__module__ == "socketserver"``, the way the C
accelerators of the stdlib present their classes under the public module's
name (``collections.deque``); cserver's own additions report ``cserver``.

The hooks and class attributes users override are listed on BaseServer and
TCPServer; the listen backlog (``request_queue_size``) is the stdlib's: 5
up to 3.14 (raise it for a server under load), ``socket.SOMAXCONN`` from
3.15.
"""

import os
import selectors
import socket
import sys
import threading
# The wake-up machinery is internal: it uses these private bindings so that
# monkeypatching the module globals ``socket`` or ``threading`` (which the
# stdlib-compatible code looks up late, on purpose) cannot break it.
import socket as _socket_module
import threading as _threading_module
from collections import deque
from io import BufferedIOBase
from time import monotonic as time

_PY311 = sys.version_info >= (3, 11)
_PY312 = sys.version_info >= (3, 12)
_PY315 = sys.version_info >= (3, 15)
# gh-128916: server_bind() sets SO_REUSEPORT only on AF_INET/AF_INET6 sockets
# (Linux 6.12.9+ refuses it on the others with EOPNOTSUPP).  The fix is in
# 3.14 and was backported to the 3.12.9 and 3.13.2 bug-fix releases; cserver
# follows the running interpreter's release, patch level included.  Decided
# by version, not by reading the stdlib's source at import: that file may be
# absent (.pyc-only or zipped stdlib), and reading it would cost every import
# for what CPython's changelog states exactly.  tests/compat checks the rule
# against the running stdlib's behaviour on every interpreter of the matrix.
_REUSE_PORT_INET_ONLY = (sys.version_info >= (3, 13, 2)
                         or (3, 12, 9) <= sys.version_info[:3] < (3, 13))

if not _PY315:
    __version__ = "0.4"  # the stdlib module's own version string

__all__ = ["BaseServer", "TCPServer", "UDPServer",
           "ThreadingUDPServer", "ThreadingTCPServer",
           "BaseRequestHandler", "StreamRequestHandler",
           "DatagramRequestHandler", "ThreadingMixIn"]
if hasattr(os, "fork"):
    __all__.extend(["ForkingUDPServer", "ForkingTCPServer", "ForkingMixIn"])
if hasattr(socket, "AF_UNIX"):
    __all__.extend(["UnixStreamServer", "UnixDatagramServer",
                    "ThreadingUnixStreamServer",
                    "ThreadingUnixDatagramServer"])
    if _PY312 and hasattr(os, "fork"):
        __all__.extend(["ForkingUnixStreamServer", "ForkingUnixDatagramServer"])

#: cserver's additions to the stdlib surface (not in ``__all__``, which must
#: stay identical to the stdlib's).
EXTRA_NAMES = ["ThreadPoolMixIn", "ThreadPoolTCPServer", "ThreadPoolUDPServer",
               "ProxyProtocolMixIn", "TLSMixIn"]
if hasattr(socket, "AF_UNIX"):
    EXTRA_NAMES.extend(["ThreadPoolUnixStreamServer", "ThreadPoolUnixDatagramServer"])

#: cserver's additions to the stdlib classes' attributes (class name ->
#: names): an inherited socket (``TCPServer.from_socket``, for every server
#: derived from it).
EXTRA_CLASS_ATTRS = {"TCPServer": ("from_socket",)}

# Poll is preferred over select because it has no FD_SETSIZE limit; it is
# looked up by name at each use so that tests and users can replace it.
if hasattr(selectors, "PollSelector"):
    _ServerSelector = selectors.PollSelector
else:
    _ServerSelector = selectors.SelectSelector


# 3.15 deprecates the module's __version__ (still "0.4"): reading it warns,
# from a module __getattr__, at the line that read it.
_VERSION_DEPRECATED = "'__version__' is deprecated and slated for removal in Python 3.20"
_PACKAGE_DIR = os.path.join(os.path.dirname(os.path.realpath(__file__)), "")


def _deprecated_version():
    """Warn that ``__version__`` is deprecated, as the 3.15 stdlib does, and
    return it.

    The stdlib's warning points at the line that read the attribute
    (``warnings._deprecated`` with ``stacklevel=3``: past itself and the
    module ``__getattr__``).  cserver's callers may be compiled (no Python
    frame) or pure Python (frames), so the level is counted: the first
    frame outside the cserver package is the reader.
    """
    import warnings
    frame = sys._getframe(0)
    level = 1
    while frame is not None and os.path.realpath(frame.f_code.co_filename).startswith(
            _PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    if (frame is not None and frame.f_code.co_name == "_handle_fromlist"
            and frame.f_code.co_filename.startswith("<frozen importlib")):
        # ``from cserver import __version__``: cserver is a package, so the
        # import system first probes the name with hasattr(); the statement
        # then reads it (and warns there), as it reads the stdlib module's.
        return "0.4"
    warnings.warn(_VERSION_DEPRECATED, DeprecationWarning, stacklevel=level)
    return "0.4"


if _PY315:
    def __getattr__(name):
        if name == "__version__":
            return _deprecated_version()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Waker:
    """A socket pair that interrupts a selector wait from another thread.

    ``wake()`` may race with ``close()``: both take the lock, so a send never
    reaches a descriptor number that was closed and reused meanwhile.
    """

    __module__ = "socketserver"

    def __init__(self):
        self._lock = _threading_module.Lock()
        self._reader, self._writer = _socket_module.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self):
        return self._reader.fileno()

    def wake(self):
        with self._lock:
            if self._writer is None:
                return
            try:
                self._writer.send(b"\0")
            except OSError:
                # BlockingIOError: the pipe is full, a wake-up is pending
                # anyway; anything else: closed under us, nothing to wake.
                pass

    def drain(self):
        try:
            while self._reader.recv(4096):
                pass
        except OSError:
            pass

    def close(self):
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            self._reader.close()


# The wake-up sockets of the running serve_forever() loops, by id(server).
# Kept out of the servers' own namespaces so that their classes and vars()
# look exactly like the stdlib's.
_wakers = {}


def _check_request_handler(server_class, handler_class):
    """Refuse a handler of cserver's multiplexing server (driven by its
    loop with asyncio's callbacks, built as ``Handler(transport,
    client_address, server)``): here it would fail at the first request.
    Anything else the stdlib accepts (any callable) is accepted."""
    mux = sys.modules.get("cserver.selectorserver")
    if mux is None or not isinstance(handler_class, type):
        return  # not loaded: no class can derive from its handlers
    for base in ("FrameHandler", "ConnectionHandler", "DatagramHandler"):
        if issubclass(handler_class, getattr(mux, base)):
            raise TypeError("%s needs a socketserver request handler (BaseRequestHandler, "
                            "StreamRequestHandler, ...), got %s (a cserver.%s: serve it with "
                            "cserver.Selector%sServer)"
                            % (server_class.__name__, handler_class.__qualname__, base,
                               "UDP" if base == "DatagramHandler" else "TCP"))


def _finish(server, request, client_address):
    """``server.finish_request(request, client_address)``, as every request
    runner calls it (BaseServer.process_request, a ThreadingMixIn or pool
    thread, a forked child): in the request's own thread or process.  On a
    ProxyProtocolMixIn server the PROXY header is read here first.  On a
    TLSMixIn server the TLS handshake is the first step of the
    finish_request() called from here (after the PROXY header when both
    mixins are used), so it runs in the same thread or process."""
    if isinstance(server, ProxyProtocolMixIn):
        server._cserver_proxy_finish(request, client_address)
    else:
        server.finish_request(request, client_address)


class BaseServer:
    """The loop and the request pipeline, independent of the socket kind.

    Called by users: ``serve_forever(poll_interval=0.5)``, ``shutdown()``
    (from another thread), ``handle_request()`` (one request, honouring
    ``timeout``), ``server_close()``, ``fileno()``; usable as a context
    manager (``server_close()`` on exit).

    Hooks a subclass or mixin may override, in the order a request meets
    them: ``get_request()``, ``verify_request()``, ``process_request()``,
    ``finish_request()`` (builds ``RequestHandlerClass``),
    ``shutdown_request()``, ``close_request()``; plus ``server_bind()``,
    ``server_activate()``, ``handle_timeout()``, ``service_actions()``
    (every loop pass) and ``handle_error()`` (called inside the except
    block).

    Class attributes that a subclass or an instance may override:
    ``timeout`` (and, on socket servers, ``address_family``,
    ``socket_type``, ``allow_reuse_address``, ``allow_reuse_port``,
    ``request_queue_size``).
    """

    __module__ = "socketserver"

    timeout = None

    def __init__(self, server_address, RequestHandlerClass):
        """Store the address and the handler class; extend, don't replace."""
        _check_request_handler(type(self), RequestHandlerClass)
        self.server_address = server_address
        self.RequestHandlerClass = RequestHandlerClass
        self.__is_shut_down = threading.Event()
        self.__shutdown_request = False

    def server_activate(self):
        """Hook run by the constructor after binding; nothing here."""
        pass

    def serve_forever(self, poll_interval=0.5):
        """Serve requests, one per ready event, until shutdown() is called.

        The wait for a request is cut every ``poll_interval`` seconds to run
        ``service_actions()``; shutdown() does not wait for that: it wakes the
        loop at once.  ``self.timeout`` plays no part here.
        """
        self.__is_shut_down.clear()
        try:
            # A shutdown() issued before this point is still honoured: the
            # flag is only cleared in the finally clause below.
            with _ServerSelector() as selector:
                selector.register(self, selectors.EVENT_READ)
                waker = _Waker()
                try:
                    selector.register(waker, selectors.EVENT_READ)
                    _wakers[id(self)] = waker
                    while not self.__shutdown_request:
                        ready = selector.select(poll_interval)
                        # bpo-35017: a shutdown() that arrived during the
                        # wait wins over a request that arrived with it.
                        if self.__shutdown_request:
                            break
                        for key, _events in ready:
                            if key.fileobj is self:
                                self._handle_request_noblock()
                            else:
                                waker.drain()
                        self.service_actions()
                finally:
                    if _wakers.get(id(self)) is waker:
                        del _wakers[id(self)]
                    waker.close()
        finally:
            self.__shutdown_request = False
            self.__is_shut_down.set()

    def shutdown(self):
        """Ask serve_forever() to stop and wait until it has.

        Call it from another thread than the loop's (from the loop's own
        thread it would wait for itself forever).  A call made before the
        loop starts makes the loop stop as soon as it starts.
        """
        self.__shutdown_request = True
        waker = _wakers.get(id(self))
        if waker is not None:
            waker.wake()
        self.__is_shut_down.wait()

    def service_actions(self):
        """Hook run on every pass of serve_forever() (at least every
        ``poll_interval``); ForkingMixIn reaps its children here."""
        pass

    # One request's path: wait for readiness (serve_forever or
    # handle_request), get_request() (accept or recvfrom, per socket kind),
    # verify_request(), process_request() (where the mixins fork or hand the
    # request to a thread), finish_request() (the handler's constructor does
    # the work), shutdown_request().

    def handle_request(self):
        """Wait for one request and serve it, or call handle_timeout().

        The wait is bounded by the smaller of ``self.timeout`` and the
        listening socket's own timeout (older code set the latter).
        """
        timeout = self.socket.gettimeout()
        if timeout is None:
            timeout = self.timeout
        elif self.timeout is not None:
            timeout = min(timeout, self.timeout)
        if timeout is not None:
            deadline = time() + timeout

        # select() may return early with nothing ready (a signal): loop
        # until the deadline.
        with _ServerSelector() as selector:
            selector.register(self, selectors.EVENT_READ)

            while True:
                if selector.select(timeout):
                    return self._handle_request_noblock()
                else:
                    if timeout is not None:
                        timeout = deadline - time()
                        if timeout < 0:
                            return self.handle_timeout()

    def _handle_request_noblock(self):
        """Take one request that the selector reported ready, and serve it.

        A failed get_request() is ignored; a refused request is shut down;
        an Exception from process_request() goes to handle_error().
        """
        try:
            request, client_address = self.get_request()
        except OSError:
            return
        if isinstance(self, ProxyProtocolMixIn):
            # the header comes first: verify_request() is called with the
            # client it names, where the header is read (see the mixin)
            admitted = self._cserver_proxy_admit(request, client_address)
        else:
            admitted = self.verify_request(request, client_address)
        if admitted:
            try:
                self.process_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
                self.shutdown_request(request)
            except:
                self.shutdown_request(request)
                raise
        else:
            self.shutdown_request(request)

    def handle_timeout(self):
        """Hook run when handle_request() timed out; nothing here."""
        pass

    def verify_request(self, request, client_address):
        """Return whether to serve this request (True here); on False the
        request is shut down unserved."""
        return True

    def process_request(self, request, client_address):
        """Serve the request in this thread, then shut it down (the mixins
        replace this to use a process or a thread)."""
        _finish(self, request, client_address)
        self.shutdown_request(request)

    def server_close(self):
        """Release the server's resources; nothing here."""
        pass

    def finish_request(self, request, client_address):
        """Serve the request: RequestHandlerClass(request, client_address, self)."""
        self.RequestHandlerClass(request, client_address, self)

    def shutdown_request(self, request):
        """End one request (here: just close_request())."""
        self.close_request(request)

    def close_request(self, request):
        """Release one request; nothing here."""
        pass

    def handle_error(self, request, client_address):
        """Report a request's exception on stderr and carry on.

        Runs inside the ``except`` block, so ``sys.exc_info()`` is the error.
        """
        print('-' * 40, file=sys.stderr)
        print('Exception occurred during processing of request from',
              client_address, file=sys.stderr)
        import traceback
        traceback.print_exc()  # runs inside the caller's except block
        print('-' * 40, file=sys.stderr)

    def __enter__(self):
        return self

    def __exit__(self, *args):
        self.server_close()


class TCPServer(BaseServer):
    """A server on one listening socket: TCP by default.

    ``TCPServer(server_address, RequestHandlerClass, bind_and_activate=True)``
    creates the socket and, unless told not to, binds it (``server_bind()``)
    and listens (``server_activate()``); the socket is closed if either
    fails.  Requests are served one at a time unless a mixin says otherwise.

    Class attributes that a subclass or an instance may override:

    - ``address_family``, ``socket_type``: of the listening socket;
    - ``request_queue_size``: the ``listen()`` backlog, as in the stdlib:
      5 up to 3.14 (raise it for a server under load, e.g. to
      ``socket.SOMAXCONN``: clients beyond the backlog wait for the kernel
      to retry their SYN), ``socket.SOMAXCONN`` from 3.15;
    - ``allow_reuse_address``, ``allow_reuse_port`` (3.11+): set
      SO_REUSEADDR / SO_REUSEPORT before binding (SO_REUSEPORT only on
      AF_INET/AF_INET6 sockets from 3.12.9, 3.13.2 and 3.14, as the stdlib);
    - ``timeout``: for ``handle_request()``.

    ``server_address`` is replaced by the bound address (port 0 becomes the
    port the kernel chose).
    """

    __module__ = "socketserver"

    address_family = socket.AF_INET

    socket_type = socket.SOCK_STREAM

    if _PY315:
        request_queue_size = getattr(socket, "SOMAXCONN", 5)
    else:
        request_queue_size = 5

    allow_reuse_address = False

    if _PY311:
        allow_reuse_port = False

    def __init__(self, server_address, RequestHandlerClass, bind_and_activate=True):
        """Store the address and the handler class; extend, don't replace."""
        BaseServer.__init__(self, server_address, RequestHandlerClass)
        self.socket = socket.socket(self.address_family,
                                    self.socket_type)
        if bind_and_activate:
            try:
                self.server_bind()
                self.server_activate()
            except:
                self.server_close()
                raise

    if _REUSE_PORT_INET_ONLY:
        def server_bind(self):
            """Apply the reuse options, bind, and record the bound address.

            SO_REUSEPORT is set on AF_INET/AF_INET6 sockets only (gh-128916).
            """
            if self.allow_reuse_address and hasattr(socket, "SO_REUSEADDR"):
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if (self.allow_reuse_port and hasattr(socket, "SO_REUSEPORT")
                    and self.address_family in (socket.AF_INET, socket.AF_INET6)):
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self.socket.bind(self.server_address)
            self.server_address = self.socket.getsockname()
    elif _PY311:
        def server_bind(self):
            """Apply the reuse options, bind, and record the bound address."""
            if self.allow_reuse_address and hasattr(socket, "SO_REUSEADDR"):
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.allow_reuse_port and hasattr(socket, "SO_REUSEPORT"):
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self.socket.bind(self.server_address)
            self.server_address = self.socket.getsockname()
    else:
        def server_bind(self):
            """Apply the reuse options, bind, and record the bound address."""
            if self.allow_reuse_address:
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(self.server_address)
            self.server_address = self.socket.getsockname()

    def server_activate(self):
        """Listen, with a backlog of ``request_queue_size``."""
        self.socket.listen(self.request_queue_size)

    @classmethod
    def from_socket(cls, sock, RequestHandlerClass, **kwargs):
        """cserver's addition: a server on ``sock``, a socket that someone
        else bound (a service manager: ``cserver.systemd.listen_fds()``, a
        parent process).  Its family and type must be the class's
        (``AF_INET`` or ``AF_INET6`` for TCPServer/UDPServer; TypeError
        otherwise); a stream socket only bound is put in the listening
        state with ``request_queue_size``, one that listens keeps its
        backlog; an unbound or connected socket is a ValueError.  The
        server owns it (``server_close()`` closes it; it is made
        close-on-exec); ``server_address`` is its ``getsockname()``.
        ``kwargs`` go to the constructor (a ThreadPoolMixIn's options)."""
        from . import systemd
        inet = (socket.AF_INET, socket.AF_INET6)
        families = inet if cls.address_family in inet else (cls.address_family,)
        who = "%s.from_socket()" % (cls.__name__,)
        if not isinstance(sock, socket.socket):
            raise TypeError("%s needs a socket.socket, got %r" % (who, sock))
        server = cls(None, RequestHandlerClass, bind_and_activate=False, **kwargs)
        server.socket.close()
        server.server_address = systemd.adopt_socket(
            sock, families, cls.socket_type, who, server.request_queue_size)
        server.address_family = sock.family
        server.socket = sock
        return server

    def server_close(self):
        """Close the listening socket."""
        self.socket.close()

    def fileno(self):
        """The listening socket's descriptor (what selectors need)."""
        return self.socket.fileno()

    def get_request(self):
        """Accept a connection: (socket, client_address)."""
        return self.socket.accept()

    def shutdown_request(self, request):
        """Shut the connection down for writing, then close it."""
        try:
            # close() alone would leave the connection open while another
            # reference (a forked child, a makefile()) holds the socket.
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # ENOTCONN if the peer is already gone, on some systems
        self.close_request(request)

    def close_request(self, request):
        """Close the connection's socket."""
        request.close()


class UDPServer(TCPServer):
    """A datagram server: each datagram is one request ``(data, socket)``."""

    __module__ = "socketserver"

    allow_reuse_address = False

    if _PY311:
        allow_reuse_port = False

    socket_type = socket.SOCK_DGRAM

    max_packet_size = 8192

    def get_request(self):
        data, client_addr = self.socket.recvfrom(self.max_packet_size)
        return (data, self.socket), client_addr

    def server_activate(self):
        # datagram sockets do not listen
        pass

    def shutdown_request(self, request):
        # nothing to shut down: the socket is the server's
        self.close_request(request)

    def close_request(self, request):
        # nothing to close
        pass


if hasattr(os, "fork"):
    class ForkingMixIn:
        """Serve each request in a child process (os.fork)."""

        __module__ = "socketserver"

        timeout = 300
        active_children = None
        max_children = 40
        # server_close() waits for the children when true
        block_on_close = True

        def collect_children(self, *, blocking=False):
            """Reap exited children; with ``blocking``, wait for all of them."""
            if self.active_children is None:
                return

            # At max_children, block until enough children exit.  Only here is
            # waitpid(-1) used: elsewhere the program's other children must
            # not be reaped behind its back.
            while len(self.active_children) >= self.max_children:
                try:
                    pid, _ = os.waitpid(-1, 0)
                    self.active_children.discard(pid)
                except ChildProcessError:
                    # no children left at all
                    self.active_children.clear()
                except OSError:
                    break

            # then reap, without blocking unless asked, those that exited
            for pid in self.active_children.copy():
                try:
                    flags = 0 if blocking else os.WNOHANG
                    pid, _ = os.waitpid(pid, flags)
                    # a child still running gives pid 0, which discard()
                    # ignores
                    self.active_children.discard(pid)
                except ChildProcessError:
                    # reaped elsewhere already
                    self.active_children.discard(pid)
                except OSError:
                    pass

        def handle_timeout(self):
            """Reap children when handle_request() timed out (extend it,
            don't replace it)."""
            self.collect_children()

        def service_actions(self):
            """Reap children on every pass of serve_forever()."""
            self.collect_children()

        def process_request(self, request, client_address):
            """Fork; the child serves the request and exits, the parent closes its copy."""
            pid = os.fork()
            if pid:
                # parent
                if self.active_children is None:
                    self.active_children = set()
                self.active_children.add(pid)
                self.close_request(request)
                return
            else:
                # child: it must end here, whatever happens, so os._exit()
                status = 1
                try:
                    _finish(self, request, client_address)
                    status = 0
                except Exception:
                    self.handle_error(request, client_address)
                finally:
                    try:
                        self.shutdown_request(request)
                    finally:
                        os._exit(status)

        def server_close(self):
            super().server_close()
            self.collect_children(blocking=self.block_on_close)


class _Threads(list):
    """The non-daemon request threads still to join (dead ones dropped)."""

    __module__ = "socketserver"

    def append(self, thread):
        self.reap()
        if thread.daemon:
            return
        super().append(thread)

    def pop_all(self):
        self[:], result = [], self[:]
        return result

    def join(self):
        for thread in self.pop_all():
            thread.join()

    def reap(self):
        self[:] = (thread for thread in self if thread.is_alive())


class _NoThreads:
    """Stands in for _Threads when nothing is to be joined."""

    __module__ = "socketserver"

    def append(self, thread):
        pass

    def join(self):
        pass


class ThreadingMixIn:
    """Serve each request in a thread of its own."""

    __module__ = "socketserver"

    # request threads are daemons (not waited for at exit) when true
    daemon_threads = False
    # server_close() joins the non-daemon threads when true
    block_on_close = True
    # replaced per instance by a _Threads when block_on_close is true
    _threads = _NoThreads()

    def process_request_thread(self, request, client_address):
        """Body of a request thread: serve, report an Exception through
        handle_error(), always shut the request down."""
        try:
            _finish(self, request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def process_request(self, request, client_address):
        """Serve the request in a new thread."""
        if self.block_on_close:
            vars(self).setdefault('_threads', _Threads())
        t = threading.Thread(target=self.process_request_thread,
                             args=(request, client_address))
        t.daemon = self.daemon_threads
        self._threads.append(t)
        t.start()

    def server_close(self):
        super().server_close()
        self._threads.join()


if hasattr(os, "fork"):
    class ForkingUDPServer(ForkingMixIn, UDPServer):
        __module__ = "socketserver"

    class ForkingTCPServer(ForkingMixIn, TCPServer):
        __module__ = "socketserver"


class ThreadingUDPServer(ThreadingMixIn, UDPServer):
    __module__ = "socketserver"


class ThreadingTCPServer(ThreadingMixIn, TCPServer):
    __module__ = "socketserver"


if hasattr(socket, 'AF_UNIX'):

    class UnixStreamServer(TCPServer):
        __module__ = "socketserver"
        address_family = socket.AF_UNIX

    class UnixDatagramServer(UDPServer):
        __module__ = "socketserver"
        address_family = socket.AF_UNIX

    class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer):
        __module__ = "socketserver"

    class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer):
        __module__ = "socketserver"

    if _PY312 and hasattr(os, "fork"):
        class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer):
            __module__ = "socketserver"

        class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer):
            __module__ = "socketserver"


# ---------------------------------------------------------------------------
# The bounded thread pool.
#
# ThreadingMixIn starts one thread per request, without bound: under a burst
# it grows until memory or the thread limit runs out.  ThreadPoolMixIn runs
# requests on at most ``max_workers`` threads, started on demand, with at most
# ``queue_size`` accepted requests waiting for one.  When both are full, the
# serve loop stops calling accept() until a worker finishes: connections then
# wait in the kernel's listen backlog (``request_queue_size``), where TCP's
# own flow control applies, instead of being dropped or queued without bound.
# shutdown() interrupts that wait.
#
# A bounded pool can be starved: max_workers + queue_size peers that trickle
# a byte a second hold every worker (a socket timeout does not help, each
# byte resets it).  ``request_timeout`` bounds how long one request may hold
# a worker, whatever its peer sends: a watchdog thread shuts the request's
# socket down (SHUT_RDWR) when its deadline passes, so the handler's blocked
# recv()/send() returns (EOF, EPIPE) and the worker is freed.  The watchdog
# and the worker closing the socket take the pool lock, so the watchdog never
# touches a socket that is being closed.
# ---------------------------------------------------------------------------

class _ThreadPool:
    """The workers and queue of one ThreadPoolMixIn server (internal)."""

    __module__ = "cserver"

    def __init__(self, server, max_workers, queue_size, daemon, request_timeout=None):
        self.server = server
        self.request_timeout = request_timeout
        self.deadlines = {}    # request socket -> deadline (running requests)
        self.timed_out = 0     # requests cut off by the watchdog
        self.watchdog = None
        self.max_workers = max_workers
        self.capacity = max_workers + queue_size
        self.daemon = daemon
        lock = threading.Lock()
        self.not_empty = threading.Condition(lock)
        self.slot_free = threading.Condition(lock)
        self.watch = _threading_module.Condition(lock)
        self.queue = deque()
        self.pending = 0       # queued + running requests
        self.idle = 0          # workers waiting for a request
        self.workers = []
        self.started = 0       # workers started so far (names them)
        self.closing = False

    def wait_for_slot(self):
        """Block until a request can be taken; False if shutdown interrupts."""
        server = self.server
        with self.slot_free:
            while self.pending >= self.capacity:
                if server._BaseServer__shutdown_request or self.closing:
                    return False
                self.slot_free.wait()
        return True

    def interrupt(self):
        with self.slot_free:
            self.slot_free.notify_all()

    def submit(self, request, client_address):
        with self.not_empty:
            if self.closing:
                raise RuntimeError("cannot submit a request to a closed thread pool")
            self.queue.append((request, client_address))
            self.pending += 1
            if self.idle < len(self.queue) and len(self.workers) < self.max_workers:
                self._start_worker()
            else:
                self.not_empty.notify()

    def _start_worker(self):
        # Called with the lock held.
        self.started += 1
        worker = threading.Thread(target=self._work, name="cserver-pool-%d" % self.started)
        worker.daemon = self.daemon
        self.workers.append(worker)
        worker.start()

    def _work(self):
        server = self.server
        me = threading.current_thread()
        try:
            while True:
                with self.not_empty:
                    while not self.queue:
                        if self.closing:
                            return
                        self.idle += 1
                        try:
                            self.not_empty.wait()
                        finally:
                            self.idle -= 1
                    request, client_address = self.queue.popleft()
                    if self.request_timeout and isinstance(request, _socket_module.socket):
                        self._arm(request)
                try:
                    server.process_request_thread(request, client_address)
                finally:
                    with self.slot_free:
                        self.deadlines.pop(request, None)
                        self.pending -= 1
                        self.slot_free.notify()
        finally:
            with self.not_empty:
                self.workers.remove(me)
                self.watch.notify()
                # A worker only leaves normally once the queue is empty.  If
                # a handler killed it (SystemExit, KeyboardInterrupt: what
                # process_request_thread does not catch, and what ends one
                # request's thread in ThreadingMixIn), the requests queued
                # behind it still get a worker.
                if self.queue and len(self.workers) < self.max_workers:
                    self._start_worker()

    # -- the request deadline (request_timeout) ------------------------------

    def _arm(self, request):
        # Called with the lock held, as a worker takes the request.
        self.deadlines[request] = time() + self.request_timeout
        if self.watchdog is None:
            self.watchdog = _threading_module.Thread(
                target=self._watch, name="cserver-watchdog", daemon=True)
            self.watchdog.start()
        else:
            self.watch.notify()

    def forget(self, request):
        """The request is being closed: the watchdog must not touch it."""
        if self.deadlines:
            with self.watch:
                self.deadlines.pop(request, None)

    def _watch(self):
        deadlines = self.deadlines
        with self.watch:
            while not (self.closing and not self.workers):
                now = time()
                wait = None
                for request, deadline in list(deadlines.items()):
                    if deadline <= now:
                        del deadlines[request]
                        self._cut_off(request)
                    elif wait is None or deadline - now < wait:
                        wait = deadline - now
                self.watch.wait(wait)
            self.watchdog = None

    def _cut_off(self, request):
        # Called with the lock held, so the worker cannot close the socket
        # meanwhile; its handler's blocked recv()/send() then returns.
        self.timed_out += 1
        try:
            peer = request.getpeername()
        except OSError:
            peer = None
        try:
            request.shutdown(_socket_module.SHUT_RDWR)
        except OSError:
            pass  # already gone
        import logging
        logging.getLogger("cserver.socketserver").warning(
            "request from %r still running after request_timeout (%r s): "
            "its connection is shut down", peer, self.request_timeout)

    def close(self, join):
        """Let the workers finish the queue, then stop them."""
        with self.not_empty:
            self.closing = True
            self.not_empty.notify_all()
            self.slot_free.notify_all()
            self.watch.notify()
        if join:
            while True:
                with self.not_empty:
                    workers = list(self.workers)
                if not workers:
                    break
                for worker in workers:
                    worker.join()
            with self.not_empty:
                watchdog = self.watchdog
            if watchdog is not None:
                watchdog.join()


class ThreadPoolMixIn:
    """Mix-in class to handle requests on a bounded pool of threads.

    Class variables that may be overridden by derived classes or
    instances:

    - max_workers: most threads running handlers at once; None means
      ``min(32, os.cpu_count() + 4)`` (as concurrent.futures does).
      Threads start on demand and stay until server_close().
    - queue_size: most accepted requests waiting for a free worker; None
      means ``max_workers``.  When the workers are busy and the queue is
      full, the server stops accepting until a worker is free: further
      clients wait in the listen backlog (``request_queue_size``).
    - request_timeout: most seconds one request (one connection, for a
      stream server) may hold a worker, 30 by default; then its socket is
      shut down (SHUT_RDWR), so the handler's blocked read returns end of
      stream whatever the peer trickles, and the worker is freed (a worker
      running CPU-bound or blocked elsewhere than on that socket is not
      interrupted).  None turns it off.  Without it, max_workers +
      queue_size peers sending a byte a second hold every worker: a socket
      ``timeout`` does not help, each byte resets it.  Not applied to
      datagram servers (their requests own no socket).
    - daemon_threads, block_on_close: as in ThreadingMixIn.  server_close()
      lets the workers finish every queued request and, if block_on_close,
      joins them.

    Errors raised by handlers go through handle_error(), as in
    ThreadingMixIn.
    """

    __module__ = "cserver"

    max_workers = None
    queue_size = None
    request_timeout = 30.0
    daemon_threads = False
    block_on_close = True

    def __init__(self, *args, **kwargs):
        # Fail before the socket exists: a bad pool size must never leave a
        # listening socket that no worker will serve.
        self._cserver_pool_options()
        super().__init__(*args, **kwargs)

    def _cserver_pool_options(self):
        """``(max_workers, queue_size, request_timeout)`` with the defaults
        applied; raises TypeError/ValueError naming the bad option and its
        value."""
        max_workers = self.max_workers
        if max_workers is not None and (isinstance(max_workers, bool)
                                        or not isinstance(max_workers, int)):
            raise TypeError("max_workers must be a positive int or None, got %r"
                            % (max_workers,))
        if max_workers is not None and max_workers < 1:
            raise ValueError("max_workers must be a positive int or None, got %r"
                             % (max_workers,))
        queue_size = self.queue_size
        if queue_size is not None and (isinstance(queue_size, bool)
                                       or not isinstance(queue_size, int)):
            raise TypeError("queue_size must be an int >= 0 or None, got %r" % (queue_size,))
        if queue_size is not None and queue_size < 0:
            raise ValueError("queue_size must be an int >= 0 or None, got %r" % (queue_size,))
        if max_workers is None:
            max_workers = min(32, (os.cpu_count() or 1) + 4)
        if queue_size is None:
            queue_size = max_workers
        request_timeout = self.request_timeout
        if request_timeout is not None and (isinstance(request_timeout, bool)
                                            or not isinstance(request_timeout, (int, float))):
            raise TypeError("request_timeout must be a number > 0 or None, got %r"
                            % (request_timeout,))
        if request_timeout is not None and not request_timeout > 0:
            raise ValueError("request_timeout must be a number > 0 or None, got %r"
                             % (request_timeout,))
        return max_workers, queue_size, request_timeout

    def serve_forever(self, poll_interval=0.5):
        # The pool is built (and its options checked again: an instance may
        # have changed them) before the first accept.  If that fails, the
        # listening socket is closed: clients are refused, never left
        # waiting in a backlog that nobody serves.
        try:
            self._cserver_pool()
        except BaseException:
            self.server_close()
            self._BaseServer__is_shut_down.set()  # a shutdown() must not wait for us
            raise
        super().serve_forever(poll_interval)

    def _cserver_pool(self):
        pool = vars(self).get("_cserver_thread_pool")
        if pool is None:
            max_workers, queue_size, request_timeout = self._cserver_pool_options()
            if self.socket_type != _socket_module.SOCK_STREAM:
                request_timeout = None
            pool = _ThreadPool(self, max_workers, queue_size, self.daemon_threads,
                               request_timeout)
            vars(self)["_cserver_thread_pool"] = pool
        return pool

    def _handle_request_noblock(self):
        # Accept only when a worker or a queue slot is free; otherwise wait
        # here (interruptible by shutdown()) and leave clients in the backlog.
        if self._cserver_pool().wait_for_slot():
            super()._handle_request_noblock()

    # What a worker runs for one request: the same body as a ThreadingMixIn
    # request thread (errors go to handle_error(), the request is always
    # shut down).
    process_request_thread = ThreadingMixIn.process_request_thread

    def process_request(self, request, client_address):
        """Queue the request for the next free worker."""
        self._cserver_pool().submit(request, client_address)

    def shutdown_request(self, request):
        # the request deadline's watchdog lets go of the socket first
        pool = vars(self).get("_cserver_thread_pool")
        if pool is not None:
            pool.forget(request)
        super().shutdown_request(request)

    def shutdown(self):
        self._BaseServer__shutdown_request = True
        pool = vars(self).get("_cserver_thread_pool")
        if pool is not None:
            pool.interrupt()
        super().shutdown()

    def server_close(self):
        super().server_close()
        pool = vars(self).pop("_cserver_thread_pool", None)
        if pool is not None:
            pool.close(join=self.block_on_close)

    def pool_stats(self):
        """Return a dict: workers, idle, queued, pending, capacity and
        timed_out (requests cut off by ``request_timeout``)."""
        pool = vars(self).get("_cserver_thread_pool")
        if pool is None:
            return {"workers": 0, "idle": 0, "queued": 0, "pending": 0, "capacity": 0,
                    "timed_out": 0}
        with pool.not_empty:
            return {"workers": len(pool.workers), "idle": pool.idle,
                    "queued": len(pool.queue), "pending": pool.pending,
                    "capacity": pool.capacity, "timed_out": pool.timed_out}


class ThreadPoolTCPServer(ThreadPoolMixIn, TCPServer):
    __module__ = "cserver"


class ThreadPoolUDPServer(ThreadPoolMixIn, UDPServer):
    __module__ = "cserver"


if hasattr(socket, 'AF_UNIX'):
    class ThreadPoolUnixStreamServer(ThreadPoolMixIn, UnixStreamServer):
        __module__ = "cserver"

    class ThreadPoolUnixDatagramServer(ThreadPoolMixIn, UnixDatagramServer):
        __module__ = "cserver"


# ---------------------------------------------------------------------------
# The PROXY protocol on the stdlib-style stream servers.
#
# A balancer (HAProxy send-proxy/send-proxy-v2, nginx stream proxy_protocol)
# starts each connection with a header naming the real client.  The mixin
# reads it where the request is served, never on the serving (accept)
# thread of a threading, thread-pool or forking server: there a peer that
# says nothing would hold every other client up to the header's deadline.
# The accept thread only checks the socket peer against trusted_proxies (no
# read).  Then, in the request's thread or child (_finish(), called by every
# request runner of this module), the header is read with recv() of at most
# parser.needed bytes at a time, so not one byte past it is taken from the
# socket: the handler gets the socket untouched, its rfile starts at the
# payload's first byte.  Only then are verify_request() and finish_request()
# called, with client_address = the header's source.  On a plain TCPServer
# the request runs on the serving thread, and so does its header.
# ---------------------------------------------------------------------------

_PROXY_LOG_BURST = 10     # log lines about closed connections per window
_PROXY_LOG_PERIOD = 10.0  # seconds


class _ProxyRejectLog:
    """Logs why a ProxyProtocolMixIn server closed connections, at most
    ``_PROXY_LOG_BURST`` lines per ``_PROXY_LOG_PERIOD`` seconds; the next
    line logged says how many were left out.  The counts live in an
    anonymous shared mapping, so the children of a forking server (each
    reads its own header) share one budget (approximately: two children
    may race on an update).  TLSMixIn uses one too (``logger`` and
    ``what`` name its logger and what its closed connections failed)."""

    __module__ = "cserver"

    def __init__(self, logger="cserver.proxy", what="their PROXY header"):
        self._logger = logger
        self._what = what
        import mmap
        import struct
        self._layout = struct.Struct("dqq")  # window start, lines in it, left out
        self._state = mmap.mmap(-1, self._layout.size)
        self._lock = _threading_module.Lock()

    def warning(self, message, *args):
        now = time()
        layout = self._layout
        with self._lock:
            start, lines, left_out = layout.unpack_from(self._state)
            report = 0
            if lines == 0 or now - start >= _PROXY_LOG_PERIOD:
                start, lines, report, left_out = now, 0, left_out, 0
            emit = lines < _PROXY_LOG_BURST
            if emit:
                lines += 1
            else:
                left_out += 1
            layout.pack_into(self._state, 0, start, lines, left_out)
        if not emit:
            return
        if report:
            message += " (and %d more connections closed for %s, not logged)"
            args += (report, self._what)
        import logging
        logging.getLogger(self._logger).warning(message, *args)


class ProxyProtocolMixIn:
    """Mix-in class for stream servers behind a balancer that sends the
    PROXY protocol (v1 or v2): ``client_address`` becomes the real client.

    Put it first: ``class Server(ProxyProtocolMixIn, ThreadingTCPServer)``
    (any of cserver's stream servers: TCP, Unix, threading, thread pool,
    forking; a datagram server is a TypeError).  With it every connection
    must start with a valid header (the spec: never guess); a connection
    without one is closed.

    Class variables that may be overridden by derived classes or
    instances (checked when the server is built, and again when changed):

    - proxy_protocol = "any": the header version required, "v1", "v2" or
      "any" (the first byte decides).
    - trusted_proxies = ("127.0.0.0/8", "::1/128"): the networks (str or
      ``ipaddress`` networks) of the balancers; a TCP peer outside them is
      closed at accept, before any read.  An IPv4-mapped IPv6 peer is
      matched as IPv4; Unix-socket peers are always trusted (file
      permissions are the control).  ``("0.0.0.0/0", "::/0")`` trusts all.
    - proxy_header_timeout = 3.0: seconds for the whole header (a deadline:
      trickling bytes does not extend it).

    The header is read in the request's own thread (ThreadingMixIn,
    ThreadPoolMixIn) or child process (ForkingMixIn), never on the serving
    thread, with ``recv`` of at most the parser's ``needed`` bytes, so the
    handler gets the socket at the first byte after the header.  On a plain
    (synchronous) server it can only be the serving thread: a peer that
    sends nothing holds it for up to ``proxy_header_timeout``.

    Then ``verify_request(request, client_address)`` and the handler get
    ``client_address`` = the header's source (the socket's peer, i.e. the
    balancer, for LOCAL health checks, v1 UNKNOWN and v2 UNSPEC);
    ``request.getpeername()`` stays the balancer.  ``proxy_info(request)``
    returns the ``cserver.proxy.ProxyInfo`` (TLVs included) while the
    request is served (from verify_request to the handler's finish()).
    handle_error() also gets the real client.

    An untrusted peer, a bad header, a peer that closes or a header that
    misses its deadline closes the connection: never seen by
    verify_request or the handler, not reported through handle_error, but
    logged with its reason on the ``cserver.proxy`` logger (at most 10
    lines per 10 s, the rest counted).
    """

    __module__ = "cserver"

    proxy_protocol = "any"
    trusted_proxies = ("127.0.0.0/8", "::1/128")
    proxy_header_timeout = 3.0

    def __init__(self, *args, **kwargs):
        # Fail before the socket exists: a bad option must never leave a
        # listening socket that closes every connection.
        self._cserver_proxy_config()
        super().__init__(*args, **kwargs)

    def proxy_info(self, request):
        """The ``ProxyInfo`` of the header that started ``request``, while
        it is being served (verify_request, finish_request, the handler);
        None before its header was read and once it has ended.  Found by
        the socket's descriptor, so a socket object made on it after the
        header finds it too (TLSMixIn's SSLSocket, on a duplicate of the
        descriptor, is registered as well)."""
        requests = vars(self).get("_cserver_proxy_requests")
        if not requests:
            return None
        try:
            fd = request.fileno()
        except (AttributeError, OSError, ValueError):
            return None
        return requests.get(fd)

    def _cserver_proxy_config(self):
        """``(mode, TrustedNetworks, timeout)``, validated (again when an
        option changed); raises TypeError/ValueError naming the option and
        its value."""
        mode = self.proxy_protocol
        trusted = self.trusted_proxies
        timeout = self.proxy_header_timeout
        cached = vars(self).get("_cserver_proxy_cfg")
        if (cached is not None and cached[0] is mode and cached[1] is trusted
                and cached[2] is timeout):
            return cached[3]
        if not isinstance(self, BaseServer):
            raise TypeError(
                "%s: ProxyProtocolMixIn needs cserver's servers below it, not the stdlib "
                "socketserver's (call cserver.install() before importing http.server or "
                "xmlrpc.server, or build on cserver.TCPServer and its kin)"
                % type(self).__name__)
        if getattr(self, "socket_type", None) != _socket_module.SOCK_STREAM:
            raise TypeError("%s: ProxyProtocolMixIn needs a stream server (a PROXY header "
                            "starts a connection), not a datagram server"
                            % type(self).__name__)
        from .proxy import MODES, trusted_networks
        if mode is not None and not isinstance(mode, str):
            raise TypeError("proxy_protocol must be 'v1', 'v2' or 'any', got %r" % (mode,))
        if mode not in MODES:
            raise ValueError("proxy_protocol must be 'v1', 'v2' or 'any' (ProxyProtocolMixIn "
                             "always requires a header: leave the mixin out to turn it off), "
                             "got %r" % (mode,))
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError("proxy_header_timeout must be a number of seconds > 0, got %r"
                            % (timeout,))
        if not 0 < timeout < float("inf"):
            raise ValueError("proxy_header_timeout must be a number of seconds > 0, got %r"
                             % (timeout,))
        config = (mode, trusted_networks(trusted), float(timeout))
        vars(self)["_cserver_proxy_cfg"] = (mode, trusted, timeout, config)
        # Made here, in the serving process: forked children share its counts.
        self._cserver_proxy_log()
        return config

    def _cserver_proxy_log(self):
        log = vars(self).get("_cserver_proxy_log_")
        if log is None:
            log = vars(self).setdefault("_cserver_proxy_log_", _ProxyRejectLog())
        return log

    def _cserver_proxy_admit(self, request, client_address):
        """On the serving thread, at accept: is the socket peer a trusted
        proxy?  (No read here; verify_request() comes after the header.)"""
        _mode, trusted, _timeout = self._cserver_proxy_config()
        if trusted.is_trusted(request.family, client_address):
            return True
        self._cserver_proxy_log().warning(
            "connection from %r closed at accept: not in trusted_proxies (%r)",
            client_address, trusted)
        return False

    def _cserver_proxy_finish(self, request, peer):
        """In the request's thread or process: read the header, then
        verify_request() and finish_request() with the real client."""
        mode, _trusted, timeout = self._cserver_proxy_config()
        info = self._cserver_proxy_read(request, peer, mode, timeout)
        if info is None:
            return  # logged; the runner shuts the request down
        client_address = info.source if info.proxied else peer
        requests = vars(self).get("_cserver_proxy_requests")
        if requests is None:
            requests = vars(self).setdefault("_cserver_proxy_requests", {})
        # Keyed by descriptor: a socket object made later on the same one
        # (ssl wrap_socket() in finish_request, socket(fileno=...)) finds it.
        fd = request.fileno()
        requests[fd] = info
        try:
            if self.verify_request(request, client_address):
                self.finish_request(request, client_address)
        except Exception:
            # reported here, where the real client is known (the runner
            # only knows the balancer); the runner then shuts it down
            self.handle_error(request, client_address)
        finally:
            requests.pop(fd, None)

    def _cserver_proxy_read(self, request, peer, mode, timeout):
        """The header's ProxyInfo, read from the blocking socket within
        ``timeout`` seconds, never a byte past it; None (logged) when the
        connection must be closed."""
        from .proxy import ProxyHeaderError, ProxyParser
        parser = ProxyParser(mode)
        deadline = time() + timeout
        try:
            saved = request.gettimeout()
            try:
                while not parser.done:
                    remaining = deadline - time()
                    if remaining <= 0:
                        raise _socket_module.timeout("timed out")
                    request.settimeout(remaining)
                    data = request.recv(parser.needed)
                    if not data:
                        self._cserver_proxy_log().warning(
                            "connection from %r closed by the peer before its PROXY header "
                            "was complete (%d bytes received)", peer, parser.consumed)
                        return None
                    parser.feed(data)
            finally:
                request.settimeout(saved)
        except ProxyHeaderError as exc:
            self._cserver_proxy_log().warning(
                "connection from %r closed: bad PROXY header: %s", peer, exc)
            return None
        except _socket_module.timeout:
            self._cserver_proxy_log().warning(
                "connection from %r closed: no complete PROXY header within "
                "proxy_header_timeout (%r s; %d bytes received)", peer, timeout,
                parser.consumed)
            return None
        except OSError as exc:
            self._cserver_proxy_log().warning(
                "connection from %r closed while reading its PROXY header: %s", peer, exc)
            return None
        return parser.result

    def finish_request(self, request, client_address):
        """Build the handler, with the header already read: by cserver's
        request runners, or, for a subclass whose own process_request()
        calls finish_request() directly, here (trust check and header
        first, then verify_request())."""
        requests = vars(self).get("_cserver_proxy_requests")
        if requests and request.fileno() in requests:
            super().finish_request(request, client_address)
        elif self._cserver_proxy_admit(request, client_address):
            self._cserver_proxy_finish(request, client_address)


# ---------------------------------------------------------------------------
# TLS on the stdlib-style stream servers.
#
# The stdlib recipe, ``server.socket = ctx.wrap_socket(server.socket,
# server_side=True)``, handshakes inside accept() on the serving thread: one
# client that connects and says nothing holds every other client.  TLSMixIn
# leaves the listening socket alone and handshakes as the first step of
# finish_request(), which every request runner of this module calls from
# _finish() in the request's own thread, pool worker or forked child (after
# the PROXY header on a ProxyProtocolMixIn server): one hook for both mixins.
# The SSLSocket is made on a duplicate of the request's descriptor (closed
# once the handler is done), so the runner, the pool's request_timeout
# watchdog and shutdown_request() keep working on the socket they were given
# (shutdown() acts on the connection, whichever descriptor names it), and
# ProxyProtocolMixIn.proxy_info() finds the request through either
# descriptor.  Never the request's own descriptor: ssl's wrap_socket() owns
# the descriptor it is given from its first steps, and some of its failures
# close it (a peer that reset the connection first: "closed before TLS
# handshake with data in recv buffer", or the ECONNRESET of its probe read,
# which leaves a half-made SSLSocket to close it when collected).  On the
# request's own descriptor the runner then closed it a second time: EBADF
# raised out of the request's thread, or, had another connection been
# accepted onto that number meanwhile, that connection closed.
# ---------------------------------------------------------------------------


def _wait_fd(fd, write, timeout):
    """Wait up to ``timeout`` seconds for ``fd`` to be readable (or writable
    when ``write``); True if it is."""
    import select
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLOUT if write else select.POLLIN)
        return bool(poller.poll(max(1, int(timeout * 1000 + 0.999))))
    r, w, _x = select.select([] if write else [fd], [fd] if write else [], [], timeout)
    return bool(r or w)


def _close_half_made_sslsocket(exc, ssl):
    """``wrap_socket()`` failed: if the ``SSLSocket`` it was making had
    already taken the descriptor over (a reset reaching its ``recv(1)``
    between the peer check and the handshake), close it now rather than
    leave it to the garbage collector (a ResourceWarning, and the
    descriptor open until then).  It is found in the traceback's frames."""
    tb = exc.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if isinstance(obj, ssl.SSLSocket):
            try:
                obj.close()
            except OSError:
                pass
        tb = tb.tb_next


class TLSMixIn:
    """Mix-in class for TLS on a stream server: the handler gets the
    connection as an ``ssl.SSLSocket`` (``self.request``), so http.server,
    xmlrpc.server, StreamRequestHandler and FramedRequestHandler work
    unchanged.

    ``class Server(TLSMixIn, ThreadingTCPServer)`` (any of cserver's stream
    servers: TCP, Unix, threading, thread pool, forking; a datagram server
    is a TypeError).  With ProxyProtocolMixIn the PROXY header comes first
    on the wire, then TLS; both orders of the two mixins work, the
    documented one is ``class S(ProxyProtocolMixIn, TLSMixIn,
    ThreadingTCPServer)``.

    Class variables that may be overridden by derived classes or
    instances (checked when the server is built, and again when changed):

    - ssl_context = None: a server-side ``ssl.SSLContext`` (certificate
      loaded; SNI, ALPN, client certificates through it).  Required: None
      is a TypeError when the server is built.
    - ssl_handshake_timeout = 10.0: seconds for the whole handshake (a
      deadline: a peer trickling bytes does not extend it).

    The handshake runs in the request's own thread (ThreadingMixIn), pool
    worker (ThreadPoolMixIn) or child process (ForkingMixIn), never in
    accept() on the serving thread, so a silent client holds only its own
    thread.  On a plain (synchronous) server it can only be the serving
    thread: a silent peer holds it for up to ssl_handshake_timeout.
    verify_request() runs before the handshake (with the plain socket).

    A failed handshake (not TLS, a protocol or cipher mismatch, a client
    that rejects the certificate, a missing client certificate, a peer
    that closes, the deadline) closes the connection: never seen by the
    handler, not reported through handle_error, but logged with its reason
    on the ``cserver.tls`` logger (at most 10 lines per 10 s, the rest
    counted).  When the handler is done, a TLS close_notify is sent
    (without waiting for the peer's), then the runner closes the socket.
    The handler's SSLSocket is made on a duplicate of the request's
    descriptor (closed when the handler is done: two descriptors a
    connection while it is served).  TCP connections get TCP_NODELAY
    before the handshake, whatever the handler's disable_nagle_algorithm:
    TLS 1.3's session tickets leave as a segment of their own, and with
    Nagle on the first reply would wait behind them for the client's
    delayed ACK (40 ms a connection).
    """

    __module__ = "cserver"

    ssl_context = None
    ssl_handshake_timeout = 10.0

    def __init__(self, *args, **kwargs):
        # Fail before the socket exists (no listening socket that closes
        # every connection).
        self._cserver_tls_config()
        super().__init__(*args, **kwargs)

    def _cserver_tls_config(self):
        """``(context, timeout)``, validated (again when an option changed);
        raises TypeError/ValueError naming the option and its value."""
        context = self.ssl_context
        timeout = self.ssl_handshake_timeout
        cached = vars(self).get("_cserver_tls_cfg")
        if cached is not None and cached[0] is context and cached[1] is timeout:
            return cached[2]
        if not isinstance(self, BaseServer):
            raise TypeError(
                "%s: TLSMixIn needs cserver's servers below it, not the stdlib "
                "socketserver's (call cserver.install() before importing http.server or "
                "xmlrpc.server, or build on cserver.TCPServer and its kin)"
                % type(self).__name__)
        if getattr(self, "socket_type", None) != _socket_module.SOCK_STREAM:
            raise TypeError("%s: TLSMixIn needs a stream server, not a datagram server "
                            "(TLS runs over a stream; DTLS is not supported)"
                            % type(self).__name__)
        import ssl
        if not isinstance(context, ssl.SSLContext):
            raise TypeError("%s: ssl_context must be a server-side ssl.SSLContext (e.g. "
                            "ssl.create_default_context(ssl.Purpose.CLIENT_AUTH) with "
                            "load_cert_chain()), got %r" % (type(self).__name__, context))
        # check_hostname: no server-side handshake can use such a context
        # (3.9's create_default_context() makes it with PROTOCOL_TLS)
        if context.protocol == ssl.PROTOCOL_TLS_CLIENT or context.check_hostname:
            raise ValueError("%s: ssl_context must be a server-side ssl.SSLContext, got a "
                             "client-side one (PROTOCOL_TLS_CLIENT or check_hostname set): "
                             "make it with ssl.Purpose.CLIENT_AUTH or PROTOCOL_TLS_SERVER"
                             % type(self).__name__)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError("ssl_handshake_timeout must be a number of seconds > 0, got %r"
                            % (timeout,))
        if not 0 < timeout < float("inf"):
            raise ValueError("ssl_handshake_timeout must be a number of seconds > 0, got %r"
                             % (timeout,))
        config = (context, float(timeout))
        vars(self)["_cserver_tls_cfg"] = (context, timeout, config)
        # Made here, in the serving process: forked children share its counts.
        self._cserver_tls_log()
        return config

    def _cserver_tls_log(self):
        log = vars(self).get("_cserver_tls_log_")
        if log is None:
            log = vars(self).setdefault(
                "_cserver_tls_log_", _ProxyRejectLog("cserver.tls", "their TLS handshake"))
        return log

    def _cserver_tls_handshake(self, request, peer, context, timeout):
        """The request's SSLSocket (on a duplicate of its descriptor, which
        the caller closes), handshaken within ``timeout`` seconds; None
        (logged) when the connection must be closed."""
        import ssl
        deadline = time() + timeout
        saved = request.gettimeout()
        tls = None
        try:
            # A peer that reset the connection before its handshake: said
            # here (ENOTCONN), not by wrap_socket()'s failure for it, which
            # closes its descriptor from a finalizer (an "unclosed" warning).
            request.getpeername()
        except OSError as exc:
            self._cserver_tls_log().warning(
                "connection from %r closed: gone before its TLS handshake began: %s",
                peer, exc)
            return None
        if request.family in (_socket_module.AF_INET, _socket_module.AF_INET6):
            # TLS 1.3 sends the session tickets as a segment of their own
            # after the handshake: with Nagle on, the first reply would wait
            # behind them for the client's delayed ACK (40 ms a connection)
            try:
                request.setsockopt(_socket_module.IPPROTO_TCP, _socket_module.TCP_NODELAY, 1)
            except OSError:
                pass
        try:
            raw = request.dup()
            try:
                tls = context.wrap_socket(raw, server_side=True,
                                          do_handshake_on_connect=False)
            except OSError as exc:
                _close_half_made_sslsocket(exc, ssl)
                raise
            finally:
                raw.close()  # a no-op once wrap_socket() took the descriptor over
            tls.setblocking(False)
            # Non-blocking steps, each wait bounded by what is left of the
            # one deadline.
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    write = False
                except ssl.SSLWantWriteError:
                    write = True
                remaining = deadline - time()
                if remaining <= 0 or not _wait_fd(tls.fileno(), write, remaining):
                    raise _socket_module.timeout("timed out")
            tls.settimeout(saved)
            return tls
        except _socket_module.timeout:
            reason = ("closed: no complete TLS handshake within ssl_handshake_timeout (%r s)"
                      % (timeout,))
        except ssl.SSLError as exc:
            reason = "closed: TLS handshake failed: %s" % (exc,)
        except (OSError, ValueError) as exc:
            reason = "closed during the TLS handshake: %s" % (exc,)
        if tls is not None:
            tls.close()  # the duplicate; the runner closes the request
        self._cserver_tls_log().warning("connection from %r %s", peer, reason)
        return None

    def finish_request(self, request, client_address):
        """Handshake (in the request's thread or process), then build the
        handler with the SSLSocket as its request.  A request that is
        already an SSLSocket goes straight on."""
        ssl = sys.modules.get("ssl")
        if ssl is not None and isinstance(request, ssl.SSLSocket):
            super().finish_request(request, client_address)
            return
        context, timeout = self._cserver_tls_config()
        tls = self._cserver_tls_handshake(request, client_address, context, timeout)
        if tls is None:
            return  # logged; the runner shuts the request down
        # proxy_info() and ProxyProtocolMixIn.finish_request() find the
        # request by descriptor: the SSLSocket's names it too
        proxied = vars(self).get("_cserver_proxy_requests")
        info = proxied.get(request.fileno()) if proxied else None
        fd = tls.fileno()
        if info is not None:
            proxied[fd] = info
        try:
            super().finish_request(tls, client_address)
        finally:
            if info is not None:
                proxied.pop(fd, None)
            try:
                # close_notify (OpenSSL 3 clients call a close without it
                # an error), sent without waiting: the socket is made
                # non-blocking, so neither a full send buffer nor a peer
                # that never answers with its own close_notify holds us.
                tls.setblocking(False)
                tls.unwrap()
            except (OSError, ValueError):
                pass  # SSLWantReadError (no answer yet), the peer gone, ...
            # the duplicate; the runner shuts the connection down and closes
            # the request
            tls.close()


class BaseRequestHandler:
    """One instance serves one request, all inside its constructor.

    The constructor stores ``request``, ``client_address`` and ``server`` on
    the instance, then calls ``setup()``, ``handle()`` and, whatever
    happens, ``finish()``.  A service overrides ``handle()``; the instance
    is its own, so it may keep any state it likes.
    """

    __module__ = "socketserver"

    def __init__(self, request, client_address, server):
        self.request = request
        self.client_address = client_address
        self.server = server
        self.setup()
        try:
            self.handle()
        finally:
            self.finish()

    def setup(self):
        pass

    def handle(self):
        pass

    def finish(self):
        pass


# Stream and datagram handlers offer the same two files, so one handle()
# can serve both kinds of server: ``rfile`` to read the request from and
# ``wfile`` to write the reply to (sent or flushed by finish()).


class StreamRequestHandler(BaseRequestHandler):
    """``rfile``/``wfile`` over the connection of a stream server."""

    __module__ = "socketserver"

    # rfile is buffered (reading a line byte by byte would be slow); wfile
    # is not (0): a reply reaches the peer when write() returns, so a
    # request/response exchange needs no flush().
    rbufsize = -1
    wbufsize = 0

    # applied to the connection with settimeout() when not None
    timeout = None

    # sets TCP_NODELAY when true (sensible with a buffered wfile only,
    # else every write() becomes a packet)
    disable_nagle_algorithm = False

    def setup(self):
        self.connection = self.request
        if self.timeout is not None:
            self.connection.settimeout(self.timeout)
        if self.disable_nagle_algorithm:
            self.connection.setsockopt(socket.IPPROTO_TCP,
                                       socket.TCP_NODELAY, True)
        self.rfile = self.connection.makefile('rb', self.rbufsize)
        if self.wbufsize == 0:
            self.wfile = _SocketWriter(self.connection)
        else:
            self.wfile = self.connection.makefile('wb', self.wbufsize)

    def finish(self):
        if not self.wfile.closed:
            try:
                self.wfile.flush()
            except socket.error:
                # the connection may already be broken (ECONNABORTED, ...)
                pass
        self.wfile.close()
        self.rfile.close()


class _SocketWriter(BufferedIOBase):
    """An unbuffered writable file over a socket: write() is sendall(),
    so there is never anything to flush."""

    __module__ = "socketserver"

    def __init__(self, sock):
        self._sock = sock

    def writable(self):
        return True

    def write(self, b):
        self._sock.sendall(b)
        with memoryview(b) as view:
            return view.nbytes

    def fileno(self):
        return self._sock.fileno()


class DatagramRequestHandler(BaseRequestHandler):
    """``rfile`` over the datagram; ``wfile`` is sent back in one datagram."""

    __module__ = "socketserver"

    def setup(self):
        from io import BytesIO
        self.packet, self.socket = self.request
        self.rfile = BytesIO(self.packet)
        self.wfile = BytesIO()

    def finish(self):
        self.socket.sendto(self.wfile.getvalue(), self.client_address)
