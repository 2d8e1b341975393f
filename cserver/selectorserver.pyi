"""The multiplexing server: one thread, a C event loop, asyncio's handlers.

See ``docs/selectorserver.md``.  Subclass the handlers; the servers'
class attributes (or the same names as keyword arguments) are read once,
when the loop is built by ``serve_forever()`` or the first ``call_*``.

The handler is typed per server: a stream server (``SelectorTCPServer``,
``SelectorUnixStreamServer``) takes a ``ConnectionHandler`` or
``FrameHandler`` subclass, ``SelectorUDPServer`` a ``DatagramHandler``
subclass; the stdlib's request handlers (``StreamRequestHandler`` ...) are
rejected, as the loop cannot run them.
"""
import logging
import ssl
import sys
import types
from _typeshed import ReadableBuffer
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from os import PathLike
from socket import socket as _socket
from typing import Any, Final, Literal, TypedDict, type_check_only
from typing_extensions import Self, TypeAlias, TypeVarTuple, Unpack

from cserver._framing import BufferPool
from cserver._loop import DatagramEndpoint, TimerHandle, Transport
from cserver.errors import FrameError as FrameError
from cserver.errors import FrameTooLarge as FrameTooLarge
from cserver.errors import IncompleteFrame as IncompleteFrame
from cserver.framing import FramingAttributes

__all__: list[str] = [
    "SelectorServer",
    "SelectorTCPServer",
    "SelectorUnixStreamServer",
    "SelectorUDPServer",
    "ConnectionHandler",
    "FrameHandler",
    "DatagramHandler",
    "LOOP_KINDS",
    "resolve_loop",
]

_Ts = TypeVarTuple("_Ts")
_AfUnixAddress: TypeAlias = str | ReadableBuffer
_AfInetAddress: TypeAlias = tuple[str | bytes | bytearray, int]
_AfInet6Address: TypeAlias = tuple[str | bytes | bytearray, int, int, int]
_Address: TypeAlias = tuple[Any, ...] | str | ReadableBuffer
_RetAddress: TypeAlias = Any
_LoopKind: TypeAlias = Literal["epoll", "selectors"]
_ProxyMode: TypeAlias = Literal["v1", "v2", "any"]
_Network: TypeAlias = str | IPv4Network | IPv6Network | IPv4Address | IPv6Address

logger: logging.Logger
#: the values of the ``loop`` option (besides None)
LOOP_KINDS: Final[tuple[_LoopKind, ...]]
#: the values of the ``proxy_protocol`` option (besides None)
PROXY_MODES: Final[tuple[_ProxyMode, ...]]

def resolve_loop(loop: _LoopKind | None = None) -> _LoopKind:
    """The loop a server with ``loop=loop`` runs ($CSERVER_LOOP when None;
    "selectors" where epoll does not exist).  ValueError for other names."""

# metrics_address: None, (host, port) or a Unix socket path
_MetricsAddress: TypeAlias = tuple[str, int] | str | bytes | PathLike[str] | PathLike[bytes] | None

# The keyword options of the servers' constructors: the class attributes of
# the same names.  The runtime takes **options and checks the names against
# its list (selectorserver._OPTIONS), which stubtest cannot see:
# tests/unit/test_typing.py compares the two.
@type_check_only
class _Options(TypedDict, total=False):
    loop: _LoopKind | None
    idle_timeout: float | None
    first_byte_timeout: float | None
    frame_timeout: float | None
    max_connections: int | None
    high_water: int
    low_water: int | None
    drain_timeout: float
    drain_delay: float
    tcp_nodelay: bool
    read_size: int
    accept_batch: int
    workers: int
    allow_reuse_address: bool
    allow_reuse_port: bool
    request_queue_size: int
    buffer_pool: BufferPool | None
    proxy_protocol: _ProxyMode | None
    trusted_proxies: _Network | Iterable[_Network]
    proxy_header_timeout: float
    ssl_context: ssl.SSLContext | None
    ssl_handshake_timeout: float
    ssl_shutdown_timeout: float
    metrics_address: _MetricsAddress
    metrics_timeout: float

class ConnectionHandler:
    """One instance per connection; override ``data_received`` (once per read)."""

    transport: Transport
    client_address: _RetAddress
    server: SelectorServer
    def __init__(self, transport: Transport, client_address: _RetAddress, server: SelectorServer) -> None: ...
    def connection_made(self) -> None:
        """Called once, when the connection is set up."""
    def data_received(self, data: bytes) -> None:
        """Called with the bytes of each read (raw mode)."""
    def eof_received(self) -> bool | None:
        """The peer half-closed; return a true value to keep writing."""
    def connection_lost(self, exc: BaseException | None) -> None:
        """Called once when the connection closes (``None``: a clean close)."""
    def pause_writing(self) -> None:
        """The write buffer went above ``high_water`` (reading is paused too)."""
    def resume_writing(self) -> None:
        """The write buffer drained below ``low_water``."""
    def write(self, data: ReadableBuffer) -> None:
        """Queue data; sent at the end of the loop pass."""
    def writelines(self, list_of_data: Iterable[ReadableBuffer]) -> None: ...
    def close(self) -> None:
        """Close once the buffered data is sent."""
    def abort(self) -> None:
        """Close now, discarding buffered data."""
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

class FrameHandler(FramingAttributes, ConnectionHandler):
    """Length-prefixed frames: override ``frame_received`` (once per frame);
    the header is described by the FramingAttributes."""

    def frame_received(self, frame: bytes) -> None:
        """Called once per complete frame with its payload."""
    def frame_error(self, exc: FrameError) -> None:
        """The peer broke the framing: log it; the connection then closes
        after the replies already queued are sent."""
    def send_frame(self, payload: ReadableBuffer) -> None:
        """Queue payload with its length header."""

class DatagramHandler:
    """The handler of a SelectorUDPServer (one instance for the socket)."""

    transport: DatagramEndpoint
    server: SelectorServer
    def __init__(self, transport: DatagramEndpoint, server: SelectorServer) -> None: ...
    def connection_made(self) -> None: ...
    def datagram_received(self, data: bytes, addr: _RetAddress) -> None:
        """Called once per datagram."""
    def error_received(self, exc: OSError) -> None:
        """A socket error (logged by default)."""
    def connection_lost(self, exc: BaseException | None) -> None: ...
    def sendto(self, data: ReadableBuffer, addr: _Address | None = None) -> None:
        """Send a datagram (queued if the socket buffer is full)."""

class SelectorServer:
    """Base class of the multiplexing servers (a stream server)."""

    address_family: int
    socket_type: int
    request_queue_size: int
    allow_reuse_address: bool
    allow_reuse_port: bool
    loop: _LoopKind | None
    idle_timeout: float | None
    first_byte_timeout: float | None
    frame_timeout: float | None
    max_connections: int | None
    high_water: int
    low_water: int | None
    drain_timeout: float
    drain_delay: float
    tcp_nodelay: bool
    read_size: int
    accept_batch: int
    workers: int
    buffer_pool: BufferPool | None
    proxy_protocol: _ProxyMode | None
    trusted_proxies: _Network | Iterable[_Network]
    proxy_header_timeout: float
    ssl_context: ssl.SSLContext | None
    ssl_handshake_timeout: float
    ssl_shutdown_timeout: float
    # (host, port) or a Unix path; the bound address once the server is built
    metrics_address: _MetricsAddress
    metrics_timeout: float
    logger: logging.Logger
    server_address: _Address
    RequestHandlerClass: type[ConnectionHandler]
    socket: _socket
    worker_id: int | None
    def __init__(
        self,
        server_address: _Address,
        RequestHandlerClass: type[ConnectionHandler],
        bind_and_activate: bool = True,
        **options: Unpack[_Options],
    ) -> None: ...
    @classmethod
    def from_socket(
        cls, sock: _socket, RequestHandlerClass: type[Any], **options: Unpack[_Options]
    ) -> Self:
        """A server on an inherited socket, bound (and listening, or put in
        the listening state); the server owns it."""
    @classmethod
    def from_systemd(
        cls, RequestHandlerClass: type[Any], name: str | None = None, **options: Unpack[_Options]
    ) -> Self:
        """A server on the socket systemd passed (LISTEN_FDS; ``name``:
        its FileDescriptorName=)."""
    def server_bind(self) -> None: ...
    def server_activate(self) -> None: ...
    def fileno(self) -> int: ...
    def verify_request(self, transport: Transport, client_address: _RetAddress) -> bool:
        """Return False to refuse a connection."""
    def handle_error(self, request: Any, client_address: _RetAddress) -> None:
        """Called inside the except block when a handler raised."""
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until shutdown(); supervises the workers when workers > 1."""
    def shutdown(self, drain_timeout: float | None = None) -> None:
        """Stop serving: drain writes up to drain_timeout, close connections."""
    def server_close(self) -> None: ...
    def stop_on_signal(self, signum: int, frame: types.FrameType | None = None) -> None:
        """A SIGTERM/SIGINT handler: the first signal stops gracefully, the
        next one closes every connection now."""
    def __enter__(self) -> Self: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: types.TracebackType | None
    ) -> None: ...
    def call_soon(self, fn: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]) -> None: ...
    def call_soon_threadsafe(self, fn: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]) -> None:
        """Run fn(*args) on the loop; safe from any thread."""
    def call_later(self, delay: float, fn: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]) -> TimerHandle: ...
    def call_at(self, when: float, fn: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]) -> TimerHandle: ...
    def add_datagram_endpoint(self, address: _AfInetAddress | _AfInet6Address, handler_class: type[DatagramHandler]) -> _RetAddress:
        """Serve a UDP socket on this server's loop too; returns the bound address."""
    def stats(self) -> dict[str, Any]:
        """Connections, bytes and frames in/out, errors, buffer use."""
    def connections(self) -> list[ConnectionHandler]: ...

class SelectorTCPServer(SelectorServer):
    """TCP (IPv6 when the host is an IPv6 address)."""

    server_address: _AfInetAddress | _AfInet6Address
    def __init__(
        self,
        server_address: _AfInetAddress | _AfInet6Address,
        RequestHandlerClass: type[ConnectionHandler],
        bind_and_activate: bool = True,
        **options: Unpack[_Options],
    ) -> None: ...

if sys.platform != "win32":
    class SelectorUnixStreamServer(SelectorServer):
        """Unix stream sockets (``server_address`` is a path)."""

        server_address: _AfUnixAddress
        def __init__(
            self,
            server_address: _AfUnixAddress,
            RequestHandlerClass: type[ConnectionHandler],
            bind_and_activate: bool = True,
            **options: Unpack[_Options],
        ) -> None: ...

class SelectorUDPServer(SelectorServer):
    """UDP; RequestHandlerClass is a DatagramHandler subclass, instantiated once."""

    server_address: _AfInetAddress | _AfInet6Address
    RequestHandlerClass: type[DatagramHandler]  # type: ignore[assignment]
    def __init__(
        self,
        server_address: _AfInetAddress | _AfInet6Address,
        RequestHandlerClass: type[DatagramHandler],
        bind_and_activate: bool = True,
        **options: Unpack[_Options],
    ) -> None: ...
    def connections(self) -> list[ConnectionHandler]: ...
