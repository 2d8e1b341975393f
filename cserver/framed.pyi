"""Blocking framed I/O: FramedRequestHandler for every stdlib-style server,
FramedClient for the other side."""
import logging
import os
import socket
from typing import Any, Optional, Tuple, Union

from cserver.socketserver import BaseRequestHandler
from cserver._framing import BufferPool, FrameDecoder, FrameEncoder
from cserver.errors import FrameError

logger: logging.Logger
"""The ``cserver.framing`` logger: bad frames are reported there."""

_BytesLike = Union[bytes, bytearray, memoryview, Any]


def send_frame(sock: socket.socket, payload: _BytesLike, encoder: FrameEncoder) -> None:
    """Send ``payload`` as one frame (header and payload in one sendmsg; a
    large payload is not copied)."""


class FramedRequestHandler(BaseRequestHandler):
    """Request handler for length-prefixed frames.  Override
    ``handle_frame(frame)`` (its non-None result is sent back) or
    ``handle()`` with ``recv_frame()``/``send_frame()``.  A bad frame is
    logged on ``cserver.framing`` and the connection closed."""

    frame_format: Optional[str]
    length_size: Optional[int]
    byteorder: Optional[str]
    length_offset: int
    length_adjustment: int
    initial_bytes_to_strip: Optional[int]
    max_frame_size: int
    buffer_pool: Optional[BufferPool]
    timeout: Optional[float]
    disable_nagle_algorithm: bool
    connection: socket.socket
    decoder: FrameDecoder
    encoder: FrameEncoder

    def handle_frame(self, frame: bytes) -> Optional[_BytesLike]:
        """Handle one frame; return a reply payload or None."""
    def frame_error(self, exc: FrameError) -> None:
        """A bad frame: log it (the connection then closes)."""
    def recv_frame(self) -> Optional[bytes]:
        """The next frame, or None when the peer closed between frames."""
    def send_frame(self, payload: _BytesLike) -> None:
        """Send ``payload`` as one frame."""


class FramedClient:
    """A blocking framed client over TCP (``(host, port)``) or a Unix socket
    (a path); a context manager."""

    socket: socket.socket
    decoder: FrameDecoder
    encoder: FrameEncoder
    address: Any

    def __init__(self, address: Union[Tuple[str, int], str, bytes, "os.PathLike[str]"],
                 timeout: Optional[float] = None, *, frame_format: Optional[str] = "!I",
                 length_size: Optional[int] = None, byteorder: Optional[str] = None,
                 length_offset: int = 0, length_adjustment: int = 0,
                 initial_bytes_to_strip: Optional[int] = None, max_frame_size: int = ...,
                 buffer_pool: Optional[BufferPool] = None,
                 source_address: Optional[Tuple[str, int]] = None) -> None: ...
    def fileno(self) -> int: ...
    def send_frame(self, payload: _BytesLike) -> None:
        """Send ``payload`` as one frame."""
    def recv_frame(self) -> Optional[bytes]:
        """The next frame, or None when the server closed between frames."""
    def request(self, payload: _BytesLike) -> bytes:
        """Send a frame, return the reply; EOFError if the server closes."""
    def close(self) -> None:
        """Shut down and close the connection (idempotent)."""
    def __enter__(self) -> "FramedClient": ...
    def __exit__(self, *exc: object) -> None: ...
