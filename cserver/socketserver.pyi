"""Type stubs for cserver.socketserver, the compiled stdlib-compatible layer.

Modelled on typeshed's ``stdlib/socketserver.pyi`` (code type-checked against
the stdlib's module type-checks against this one).  ``BaseServer`` and
``BaseRequestHandler`` derive from the stdlib's here, as they stand in for
them (after ``cserver.install()`` they are them): the stdlib's handlers
(``http.server.SimpleHTTPRequestHandler`` ...) run on cserver's servers and
type-check there, and cserver's servers pass where a stdlib server is
expected.  Two additions:

* the request handler is typed per socket kind: a stream server (TCP, Unix
  stream) takes a handler whose constructor accepts a connected socket, a
  datagram server one that accepts a ``(data, socket)`` pair.  The stdlib's
  ``StreamRequestHandler`` on a UDP server, a ``DatagramRequestHandler`` on a
  TCP server, or a multiplexing server's handler (``cserver.FrameHandler``)
  on any of them is a type error instead of a failure at the first request.
* cserver's ``ThreadPoolMixIn`` and its ``ThreadPool*Server`` combinations;
* cserver's ``ProxyProtocolMixIn`` (the PROXY protocol, docs/proxy.md);
* cserver's ``TLSMixIn`` (TLS, handshaken off the serving thread, docs/tls.md).
"""
import selectors
import ssl
import socketserver as _stdlib
import sys
import types
from _typeshed import ReadableBuffer
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from io import BufferedIOBase
from socket import socket as _socket
from typing import Any, ClassVar, Final, Literal
from typing_extensions import Self, TypeAlias

from cserver._proxy import ProxyInfo

__all__: list[str] = [
    "BaseServer",
    "TCPServer",
    "UDPServer",
    "ThreadingUDPServer",
    "ThreadingTCPServer",
    "BaseRequestHandler",
    "StreamRequestHandler",
    "DatagramRequestHandler",
    "ThreadingMixIn",
]
if sys.platform != "win32":
    __all__ += [
        "ForkingUDPServer",
        "ForkingTCPServer",
        "ForkingMixIn",
        "UnixStreamServer",
        "UnixDatagramServer",
        "ThreadingUnixStreamServer",
        "ThreadingUnixDatagramServer",
    ]
    if sys.version_info >= (3, 12):
        __all__ += ["ForkingUnixStreamServer", "ForkingUnixDatagramServer"]

_RequestType: TypeAlias = _socket | tuple[bytes, _socket]
_StreamRequest: TypeAlias = _socket
_DatagramRequest: TypeAlias = tuple[bytes, _socket]
# The addresses a socket of each family accepts (as typeshed's).
_AfUnixAddress: TypeAlias = str | ReadableBuffer
_AfInetAddress: TypeAlias = tuple[str | bytes | bytearray, int]
_AfInet6Address: TypeAlias = tuple[str | bytes | bytearray, int, int, int]
_Address: TypeAlias = tuple[Any, ...] | str | ReadableBuffer
# What accept()/recvfrom()/getsockname() return: Any, as in typeshed.
_RetAddress: TypeAlias = Any

# The stdlib module's own version string ("0.4").  On 3.15 the stdlib
# deprecates it (a module __getattr__ warns); a variable cannot be marked
# @deprecated (PEP 702 covers classes, functions and overloads) and a
# module __getattr__ would make every misspelt attribute type-check, so on
# 3.15 it is left out, as typeshed leaves the stdlib's out: use
# ``cserver.version`` or ``sys.version_info``.
if sys.version_info < (3, 15):
    __version__: Final[str]

#: cserver's additions to the stdlib's names (not in ``__all__``).
EXTRA_NAMES: list[str]
EXTRA_CLASS_ATTRS: dict[str, tuple[str, ...]]
_ServerSelector: type[selectors.BaseSelector]

# Not at runtime: there, cserver's classes duck-type the stdlib's.
class BaseServer(_stdlib.BaseServer):
    """Base class for server classes (stdlib-compatible)."""

    server_address: _Address
    timeout: float | None
    RequestHandlerClass: Callable[[Any, _RetAddress, Self], _stdlib.BaseRequestHandler]
    def __init__(
        self, server_address: _Address, RequestHandlerClass: Callable[[Any, _RetAddress, Self], _stdlib.BaseRequestHandler]
    ) -> None: ...
    def handle_request(self) -> None: ...
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle requests until shutdown(); shutdown() interrupts the wait at once."""
    def shutdown(self) -> None:
        """Stop serve_forever() (running in another thread) and wait for it."""
    def server_close(self) -> None: ...
    def finish_request(self, request: _RequestType, client_address: _RetAddress) -> None: ...
    def get_request(self) -> tuple[Any, Any]: ...  # not defined here: the socket servers' hook
    def handle_error(self, request: _RequestType, client_address: _RetAddress) -> None: ...
    def handle_timeout(self) -> None: ...
    def process_request(self, request: _RequestType, client_address: _RetAddress) -> None: ...
    def server_activate(self) -> None: ...
    def verify_request(self, request: _RequestType, client_address: _RetAddress) -> bool: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: types.TracebackType | None
    ) -> None: ...
    def service_actions(self) -> None: ...
    def shutdown_request(self, request: _RequestType) -> None: ...
    def close_request(self, request: _RequestType) -> None: ...
    def _handle_request_noblock(self) -> None: ...

class TCPServer(BaseServer):
    address_family: int
    socket: _socket
    allow_reuse_address: bool
    # 5; on 3.15 socket.SOMAXCONN, as the stdlib's
    request_queue_size: int
    socket_type: int
    if sys.version_info >= (3, 11):
        allow_reuse_port: bool
    server_address: _AfInetAddress | _AfInet6Address
    def __init__(
        self,
        server_address: _AfInetAddress | _AfInet6Address,
        RequestHandlerClass: Callable[[_StreamRequest, _RetAddress, Self], _stdlib.BaseRequestHandler],
        bind_and_activate: bool = True,
    ) -> None: ...
    def fileno(self) -> int: ...
    def get_request(self) -> tuple[_socket, _RetAddress]: ...
    def server_bind(self) -> None: ...
    @classmethod
    def from_socket(cls, sock: _socket, RequestHandlerClass: Any, **kwargs: Any) -> Self:
        """cserver's addition: a server on an inherited, bound socket (it owns it)."""

class UDPServer(TCPServer):
    max_packet_size: ClassVar[int]
    def __init__(
        self,
        server_address: _AfInetAddress | _AfInet6Address,
        RequestHandlerClass: Callable[[_DatagramRequest, _RetAddress, Self], _stdlib.BaseRequestHandler],
        bind_and_activate: bool = True,
    ) -> None: ...
    def get_request(self) -> tuple[tuple[bytes, _socket], _RetAddress]: ...  # type: ignore[override]

if sys.platform != "win32":
    class UnixStreamServer(TCPServer):
        server_address: _AfUnixAddress  # type: ignore[assignment]
        def __init__(
            self,
            server_address: _AfUnixAddress,
            RequestHandlerClass: Callable[[_StreamRequest, _RetAddress, Self], _stdlib.BaseRequestHandler],
            bind_and_activate: bool = True,
        ) -> None: ...

    class UnixDatagramServer(UDPServer):
        server_address: _AfUnixAddress  # type: ignore[assignment]
        def __init__(
            self,
            server_address: _AfUnixAddress,
            RequestHandlerClass: Callable[[_DatagramRequest, _RetAddress, Self], _stdlib.BaseRequestHandler],
            bind_and_activate: bool = True,
        ) -> None: ...

    class ForkingMixIn:
        timeout: float | None
        active_children: set[int] | None
        max_children: int
        block_on_close: bool
        def collect_children(self, *, blocking: bool = False) -> None: ...
        def handle_timeout(self) -> None: ...
        def service_actions(self) -> None: ...
        def process_request(self, request: _RequestType, client_address: _RetAddress) -> None: ...
        def server_close(self) -> None: ...

class ThreadingMixIn:
    daemon_threads: bool
    block_on_close: bool
    def process_request_thread(self, request: _RequestType, client_address: _RetAddress) -> None: ...
    def process_request(self, request: _RequestType, client_address: _RetAddress) -> None: ...
    def server_close(self) -> None: ...

class ThreadPoolMixIn:
    """Handle requests on at most ``max_workers`` threads with at most
    ``queue_size`` accepted requests waiting; when both are full, stop
    accepting (clients wait in the listen backlog)."""

    max_workers: int | None
    queue_size: int | None
    request_timeout: float | None
    daemon_threads: bool
    block_on_close: bool
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Builds the pool first: bad ``max_workers``/``queue_size`` set on
        the instance raise here and close the listening socket."""
    def process_request_thread(self, request: _RequestType, client_address: _RetAddress) -> None: ...
    def process_request(self, request: _RequestType, client_address: _RetAddress) -> None: ...
    def shutdown_request(self, request: _RequestType) -> None:
        """Lets the request_timeout watchdog go of the socket, then shuts it
        down as the server class does."""
    def shutdown(self) -> None: ...
    def server_close(self) -> None: ...
    def pool_stats(self) -> dict[str, int]:
        """workers, idle, queued, pending (queued + running), capacity, timed_out."""
    def _handle_request_noblock(self) -> None: ...

class ProxyProtocolMixIn:
    """Put first on a stream server (``class S(ProxyProtocolMixIn,
    ThreadingTCPServer)``): every connection must start with a PROXY
    protocol header from a trusted peer; ``client_address`` becomes the
    real client.  The header is read in the request's thread or child,
    never on the serving thread of a threading, pool or forking server."""

    proxy_protocol: Literal["v1", "v2", "any"]
    trusted_proxies: str | IPv4Network | IPv6Network | IPv4Address | IPv6Address | Iterable[str | IPv4Network | IPv6Network | IPv4Address | IPv6Address]
    proxy_header_timeout: float
    def proxy_info(self, request: _socket) -> ProxyInfo | None:
        """The request's ProxyInfo while it is served (verify_request, the
        handler), else None."""
    def finish_request(self, request: _RequestType, client_address: _RetAddress) -> None: ...

class TLSMixIn:
    """Put on a stream server (``class S(TLSMixIn, ThreadingTCPServer)``;
    with ProxyProtocolMixIn: ``class S(ProxyProtocolMixIn, TLSMixIn,
    ThreadingTCPServer)``): the handler gets an ``ssl.SSLSocket``.  The
    handshake runs in the request's thread, pool worker or child, never on
    the serving thread of a threading, pool or forking server."""

    ssl_context: ssl.SSLContext | None
    ssl_handshake_timeout: float
    def finish_request(self, request: _RequestType, client_address: _RetAddress) -> None: ...

if sys.platform != "win32":
    class ForkingTCPServer(ForkingMixIn, TCPServer): ...
    class ForkingUDPServer(ForkingMixIn, UDPServer): ...
    if sys.version_info >= (3, 12):
        class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer): ...
        class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer): ...

class ThreadingTCPServer(ThreadingMixIn, TCPServer): ...
class ThreadingUDPServer(ThreadingMixIn, UDPServer): ...

if sys.platform != "win32":
    class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer): ...
    class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer): ...

class ThreadPoolTCPServer(ThreadPoolMixIn, TCPServer): ...
class ThreadPoolUDPServer(ThreadPoolMixIn, UDPServer): ...

if sys.platform != "win32":
    class ThreadPoolUnixStreamServer(ThreadPoolMixIn, UnixStreamServer): ...
    class ThreadPoolUnixDatagramServer(ThreadPoolMixIn, UnixDatagramServer): ...

class BaseRequestHandler(_stdlib.BaseRequestHandler):  # the stdlib's base: see BaseServer
    # ``request`` is a socket (stream servers) or a (data, socket) pair
    # (datagram servers); Any, as in typeshed, so that handle() bodies need
    # no narrowing.
    request: Any
    client_address: _RetAddress
    server: BaseServer
    def __init__(self, request: _RequestType, client_address: _RetAddress, server: BaseServer) -> None: ...
    def setup(self) -> None: ...
    def handle(self) -> None: ...
    def finish(self) -> None: ...

class StreamRequestHandler(BaseRequestHandler):
    """rfile/wfile over a stream connection: for TCP and Unix stream servers."""

    rbufsize: ClassVar[int]
    wbufsize: ClassVar[int]
    timeout: ClassVar[float | None]
    disable_nagle_algorithm: ClassVar[bool]
    connection: Any
    rfile: BufferedIOBase
    wfile: BufferedIOBase
    # Inherited at runtime; narrowed here so that a datagram server rejects it.
    def __init__(self, request: _StreamRequest, client_address: _RetAddress, server: BaseServer) -> None: ...

class DatagramRequestHandler(BaseRequestHandler):
    """rfile/wfile over one datagram: for UDP and Unix datagram servers."""

    packet: bytes
    socket: _socket
    rfile: BufferedIOBase
    wfile: BufferedIOBase
    # Inherited at runtime; narrowed here so that a stream server rejects it.
    def __init__(self, request: _DatagramRequest, client_address: _RetAddress, server: BaseServer) -> None: ...

class _SocketWriter(BufferedIOBase):
    def __init__(self, sock: _socket) -> None: ...
    def write(self, b: ReadableBuffer) -> int: ...
