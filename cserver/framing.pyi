"""The framing layer: length-prefix frames over a byte stream.

At runtime this module picks the compiled twin (``cserver._framing``) or,
with ``CSERVER_PURE=1``, the pure-Python twin (``cserver._framing_py``);
both have one API, typed here as the compiled twin's.
"""
from typing import Any, Final

from cserver._framing import DEFAULT_MAX_FRAME_SIZE as DEFAULT_MAX_FRAME_SIZE
from cserver._framing import DEFAULT_POOL as DEFAULT_POOL
from cserver._framing import BufferPool as BufferPool
from cserver._framing import FrameDecoder as FrameDecoder
from cserver._framing import FrameEncoder as FrameEncoder
from cserver._framing import encode_frame as encode_frame
from cserver.errors import FrameError as FrameError
from cserver.errors import FrameTooLarge as FrameTooLarge
from cserver.errors import IncompleteFrame as IncompleteFrame

__all__: list[str] = [
    "FrameDecoder",
    "FrameEncoder",
    "BufferPool",
    "encode_frame",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_POOL",
    "COMPILED",
    "FrameError",
    "FrameTooLarge",
    "IncompleteFrame",
]

COMPILED: Final[bool]
"""True when the compiled twin is in use."""

def layout_of(obj: object) -> tuple[str | None, dict[str, Any]]:
    """``(fmt, layout)``: the FrameDecoder/FrameEncoder arguments that a
    handler class or instance declares with the framing layer's attribute
    names."""
