"""Blocking framed I/O: FramedRequestHandler for the stdlib-style stream
servers, FramedClient for the other side."""
import logging
import os
import socket
import ssl
from _typeshed import ReadableBuffer
from typing import Any, ClassVar, Literal
from typing_extensions import Self

from cserver._framing import BufferPool, FrameDecoder, FrameEncoder
from cserver.errors import FrameError
from cserver.framing import FramingAttributes
from cserver.socketserver import BaseRequestHandler, BaseServer

__all__: list[str] = ["FramedRequestHandler", "FramedClient", "send_frame"]

logger: logging.Logger
"""The ``cserver.framing`` logger: bad frames are reported there."""

def send_frame(sock: socket.socket, payload: ReadableBuffer, encoder: FrameEncoder) -> None:
    """Send ``payload`` as one frame (header and payload in one sendmsg; a
    large payload is not copied)."""

class FramedRequestHandler(FramingAttributes, BaseRequestHandler):
    """Request handler for length-prefixed frames, on stream servers
    (TCPServer, UnixStreamServer and their Threading/Forking/ThreadPool
    variants).  Override ``handle_frame(frame)`` (its non-None result is
    sent back) or ``handle()`` with ``recv_frame()``/``send_frame()``.  A
    bad frame is logged on ``cserver.framing`` and the connection closed; a
    peer that vanishes (reset, broken pipe) between frames ends it quietly."""

    buffer_pool: ClassVar[BufferPool | None]
    timeout: ClassVar[float | None]
    disable_nagle_algorithm: ClassVar[bool]
    connection: socket.socket
    decoder: FrameDecoder
    encoder: FrameEncoder
    # Inherited at runtime; narrowed here so that a datagram server rejects it.
    def __init__(self, request: socket.socket, client_address: Any, server: BaseServer) -> None: ...
    def handle_frame(self, frame: bytes) -> ReadableBuffer | None:
        """Handle one frame; return a reply payload or None."""
    def frame_error(self, exc: FrameError) -> None:
        """A bad frame: log it (the connection then closes)."""
    def recv_frame(self) -> bytes | None:
        """The next frame, or None when the peer closed or vanished (reset,
        broken pipe) between frames."""
    def send_frame(self, payload: ReadableBuffer) -> None:
        """Send ``payload`` as one frame."""

class FramedClient:
    """A blocking framed client over TCP (``(host, port)``) or a Unix socket
    (a path); a context manager."""

    socket: socket.socket
    decoder: FrameDecoder
    encoder: FrameEncoder
    address: tuple[str, int] | str | bytes | os.PathLike[str] | os.PathLike[bytes]
    frame_format: str | None
    length_size: int | None
    byteorder: Literal["big", "little"] | None
    length_offset: int
    length_adjustment: int
    initial_bytes_to_strip: int | None
    max_frame_size: int
    def __init__(
        self,
        address: tuple[str, int] | str | bytes | os.PathLike[str] | os.PathLike[bytes],
        timeout: float | None = None,
        *,
        frame_format: str | None = "!I",
        length_size: int | None = None,
        byteorder: Literal["big", "little"] | None = None,
        length_offset: int = 0,
        length_adjustment: int = 0,
        initial_bytes_to_strip: int | None = None,
        max_frame_size: int = ...,
        buffer_pool: BufferPool | None = None,
        source_address: tuple[str, int] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None: ...
    def fileno(self) -> int: ...
    def send_frame(self, payload: ReadableBuffer) -> None:
        """Send ``payload`` as one frame."""
    def recv_frame(self) -> bytes | None:
        """The next frame, or None when the server closed between frames."""
    def request(self, payload: ReadableBuffer) -> bytes:
        """Send a frame, return the reply; EOFError if the server closes."""
    def close(self) -> None:
        """Shut down and close the connection (idempotent)."""
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: object) -> None: ...
