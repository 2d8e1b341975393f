"""The C event loop of the multiplexing server (internal: use
``cserver.SelectorTCPServer`` and friends).  Handlers meet ``Transport``
(``self.transport`` of a ConnectionHandler), ``DatagramEndpoint`` (of a
DatagramHandler) and ``TimerHandle`` (from ``call_later``/``call_at``).
Every polled descriptor is a ``Handle`` (transport, listener, datagram
endpoint, waker); a ``Poller`` (epoll or selectors) watches them; ``Loop``
schedules.  The loop's own objects cannot be constructed or subclassed
from Python."""
import logging
import socket
import ssl
from _typeshed import ReadableBuffer
from collections.abc import Callable, Iterable
from typing import Any, Final
from typing_extensions import TypeVarTuple, Unpack, disjoint_base, final

from cserver._framing import BufferPool, FrameDecoder, FrameEncoder
from cserver.errors import FrameError as FrameError

_Ts = TypeVarTuple("_Ts")

HAVE_EPOLL: Final[bool]
#: the values of ``configure(proxy_protocol=...)`` (besides None)
PROXY_MODES: Final[tuple[str, ...]]

@disjoint_base
class Poller:
    """epoll or selectors behind one interface (internal)."""

    def __init__(self, *args: object) -> None:
        """Raises TypeError: pollers are created by the loop."""

@final
class EpollPoller(Poller):
    """Linux epoll (internal)."""

@final
class SelectorsPoller(Poller):
    """``selectors.DefaultSelector()`` (internal)."""

@disjoint_base
class Handle:
    """A descriptor the loop polls (internal)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        """Raises TypeError: handles are created by the loop."""
    @property
    def fd(self) -> int: ...

@final
class Waker(Handle):
    """The loop's wake-up pipe (internal)."""

    def install_signal_wakeup(self) -> int | None: ...
    def close(self) -> None: ...

@final
class Transport(Handle):
    """One connection (handlers reach it as ``self.transport``); loop thread only."""

    @property
    def client_address(self) -> Any: ...
    @property
    def state(self) -> str:
        """"open", "closing", "aborting" or "closed"."""
    def write(self, data: ReadableBuffer) -> None:
        """Queue data, sent at the end of the loop pass (dropped after close())."""
    def writelines(self, list_of_data: Iterable[ReadableBuffer]) -> None: ...
    def send_frame(self, payload: ReadableBuffer) -> None:
        """Queue payload with the server's length header."""
    def close(self) -> None:
        """Close after the buffered data is sent."""
    def abort(self) -> None:
        """Close now, discarding buffered data."""
    def is_closing(self) -> bool: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def is_reading(self) -> bool: ...
    def get_write_buffer_size(self) -> int: ...
    def get_write_buffer_limits(self) -> tuple[int, int]: ...
    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...
    def fileno(self) -> int: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...

@final
class Listener(Handle):
    """A listening socket of the loop (internal)."""

@final
class ProxyStage(Handle):
    """An accepted connection whose PROXY header has not arrived yet (internal)."""

@final
class TLSConn:
    """The TLS state of one connection (internal)."""

@final
class DatagramEndpoint(Handle):
    """The datagram socket of a UDP server."""

    def sendto(self, data: ReadableBuffer, addr: Any = None) -> None: ...
    def fileno(self) -> int: ...
    def get_write_buffer_size(self) -> int: ...

@final
class MetricsListener(Handle):
    """The metrics endpoint's listening socket (internal)."""

@final
class MetricsConn(Handle):
    """One scrape connection of the metrics endpoint (internal)."""

@disjoint_base
class TimerHandle:
    """Returned by call_later/call_at."""

    @property
    def when(self) -> float: ...
    @property
    def cancelled(self) -> bool: ...
    def cancel(self) -> None: ...

@final
class Timers:
    """The loop's timers: a heap of (when, seq, TimerHandle) (internal)."""

@final
class Loop:
    """The loop core: ``kind`` is "epoll" or "selectors"."""

    def __init__(self, kind: str = "epoll", read_size: int = 262144, max_events: int = 512) -> None: ...
    @property
    def running(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    @property
    def nconn(self) -> int: ...
    @property
    def kind(self) -> str: ...
    def configure(
        self,
        factory: Callable[[Transport, Any], object],
        on_error: Callable[[Any, Any], object],
        *,
        decoder: FrameDecoder | None = None,
        encoder: FrameEncoder | None = None,
        pool: BufferPool | None = None,
        nodelay: bool = True,
        max_connections: int | None = None,
        idle_timeout: float | None = None,
        frame_timeout: float | None = None,
        first_byte_timeout: float | None = None,
        high_water: int = 65536,
        low_water: int | None = None,
        drain_timeout: float = 5.0,
        accept_batch: int = 128,
        logger: logging.Logger | None = None,
        proxy_protocol: str | None = None,
        trusted_proxies: Any = (),
        proxy_header_timeout: float = 3.0,
        ssl_context: ssl.SSLContext | None = None,
        ssl_handshake_timeout: float = 10.0,
        ssl_shutdown_timeout: float = 5.0,
    ) -> None: ...
    def add_listener(
        self, sock: socket.socket, proxy: bool | None = None, tls: bool | None = None
    ) -> None: ...
    def stop_accepting(self) -> None: ...
    def add_metrics_listener(self, sock: socket.socket, render: Callable[[], bytes], timeout: float = 5.0) -> None:
        """Serve GET /metrics on a listening socket with ``render()``'s bytes."""
    def metrics_stats(self) -> dict[str, int]:
        """What the metrics endpoints did: ok, refused, failed, timeouts, accept_errors, open."""
    def add_datagram_endpoint(
        self, sock: socket.socket, handler_factory: Callable[[DatagramEndpoint], Any]
    ) -> DatagramEndpoint: ...
    def call_soon(self, fn: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]) -> None: ...
    def call_soon_threadsafe(self, fn: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]) -> None: ...
    def call_at(self, when: float, fn: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]) -> TimerHandle: ...
    def call_later(self, delay: float, fn: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]) -> TimerHandle: ...
    def run(self) -> None: ...
    def stop(self, drain_timeout: float | None = None) -> None: ...
    def close(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def connections(self) -> list[Any]: ...

TLS_ENGINES: tuple[str, ...]

def tls_engine_available() -> tuple[bool, str]:
    """``(True, "")`` if the "openssl" TLS engine can run here, else ``(False, why)``."""
