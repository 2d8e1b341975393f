"""The multiplexing server: one thread, a C event loop, asyncio's handlers.

See ``docs/selectorserver.md``.  Subclass the handlers; the servers'
class attributes (or the same names as keyword arguments) are read once,
when the loop is built by ``serve_forever()`` or the first ``call_*``.
"""
import socket
from typing import Any, Callable, ClassVar, Dict, Iterable, List, Optional, Tuple, Type, Union

from ._framing import BufferPool
from ._loop import DatagramEndpoint, TimerHandle, Transport
from .errors import FrameError

_Address = Union[Tuple[Any, ...], str]
_Buffer = Union[bytes, bytearray, memoryview]

class ConnectionHandler:
    """One instance per connection; override ``data_received`` (once per read)."""
    transport: Transport
    client_address: _Address
    server: "SelectorServer"
    def __init__(self, transport: Transport, client_address: _Address,
                 server: "SelectorServer") -> None: ...
    def connection_made(self) -> None:
        """Called once, when the connection is set up."""
    def data_received(self, data: bytes) -> None:
        """Called with the bytes of each read (raw mode)."""
    def eof_received(self) -> Optional[bool]:
        """The peer half-closed; return a true value to keep writing."""
    def connection_lost(self, exc: Optional[BaseException]) -> None:
        """Called once when the connection closes (``None``: a clean close)."""
    def pause_writing(self) -> None:
        """The write buffer went above ``high_water`` (reading is paused too)."""
    def resume_writing(self) -> None:
        """The write buffer drained below ``low_water``."""
    def write(self, data: _Buffer) -> None:
        """Queue data; sent at the end of the loop pass."""
    def writelines(self, list_of_data: Iterable[_Buffer]) -> None: ...
    def close(self) -> None:
        """Close once the buffered data is sent."""
    def abort(self) -> None:
        """Close now, discarding buffered data."""
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

class FrameHandler(ConnectionHandler):
    """Length-prefixed frames: override ``frame_received`` (once per frame)."""
    frame_format: ClassVar[Optional[str]]
    length_size: ClassVar[Optional[int]]
    byteorder: ClassVar[Optional[str]]
    length_offset: ClassVar[int]
    length_adjustment: ClassVar[int]
    initial_bytes_to_strip: ClassVar[Optional[int]]
    max_frame_size: ClassVar[int]
    def frame_received(self, frame: bytes) -> None:
        """Called once per complete frame with its payload."""
    def frame_error(self, exc: FrameError) -> None:
        """The peer broke the framing: log it; the connection then closes
        after the replies already queued are sent."""
    def send_frame(self, payload: _Buffer) -> None:
        """Queue payload with its length header."""

class DatagramHandler:
    """The handler of a SelectorUDPServer (one instance for the socket)."""
    transport: DatagramEndpoint
    server: "SelectorServer"
    def __init__(self, transport: DatagramEndpoint, server: "SelectorServer") -> None: ...
    def connection_made(self) -> None: ...
    def datagram_received(self, data: bytes, addr: _Address) -> None:
        """Called once per datagram."""
    def error_received(self, exc: OSError) -> None:
        """A socket error (logged by default)."""
    def connection_lost(self, exc: Optional[BaseException]) -> None: ...
    def sendto(self, data: _Buffer, addr: Optional[_Address] = ...) -> None:
        """Send a datagram (queued if the socket buffer is full)."""

class SelectorServer:
    """Base class of the multiplexing servers."""
    address_family: int
    socket_type: int
    request_queue_size: int
    allow_reuse_address: bool
    allow_reuse_port: bool
    loop: Optional[str]
    idle_timeout: Optional[float]
    first_byte_timeout: Optional[float]
    frame_timeout: Optional[float]
    max_connections: Optional[int]
    high_water: int
    low_water: Optional[int]
    drain_timeout: float
    tcp_nodelay: bool
    read_size: int
    accept_batch: int
    workers: int
    buffer_pool: Optional[BufferPool]
    server_address: _Address
    RequestHandlerClass: Type[Any]
    socket: socket.socket
    worker_id: Optional[int]
    def __init__(self, server_address: _Address, RequestHandlerClass: Type[Any],
                 bind_and_activate: bool = ..., **options: Any) -> None: ...
    def server_bind(self) -> None: ...
    def server_activate(self) -> None: ...
    def fileno(self) -> int: ...
    def verify_request(self, transport: Transport, client_address: _Address) -> bool:
        """Return False to refuse a connection."""
    def handle_error(self, request: Any, client_address: Any) -> None:
        """Called inside the except block when a handler raised."""
    def serve_forever(self, poll_interval: float = ...) -> None:
        """Serve until shutdown(); supervises the workers when workers > 1."""
    def shutdown(self, drain_timeout: Optional[float] = ...) -> None:
        """Stop serving: drain writes up to drain_timeout, close connections."""
    def server_close(self) -> None: ...
    def __enter__(self) -> "SelectorServer": ...
    def __exit__(self, *args: Any) -> None: ...
    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None: ...
    def call_soon_threadsafe(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) on the loop; safe from any thread."""
    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> TimerHandle: ...
    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> TimerHandle: ...
    def add_datagram_endpoint(self, address: _Address, handler_class: Type[Any]) -> _Address:
        """Serve a UDP socket on this server's loop too; returns the bound address."""
    def stats(self) -> Dict[str, Any]:
        """Connections, bytes and frames in/out, errors, buffer use."""
    def connections(self) -> List[ConnectionHandler]: ...

class SelectorTCPServer(SelectorServer):
    """TCP (IPv6 when the host is an IPv6 address)."""

class SelectorUnixStreamServer(SelectorServer):
    """Unix stream sockets."""

class SelectorUDPServer(SelectorServer):
    """UDP; RequestHandlerClass is a DatagramHandler subclass."""
