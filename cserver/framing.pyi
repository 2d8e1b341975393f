"""The framing layer: length-prefix frames over a byte stream.

At runtime this module picks the compiled twin (``cserver._framing``) or,
with ``CSERVER_PURE=1``, the pure-Python twin (``cserver._framing_py``);
both have one API, typed here as the compiled twin's.
"""
import types
from typing import ClassVar, Final, Literal
from typing_extensions import final

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

class FramingAttributes:
    """The framing class attributes of a framed handler, with their
    defaults (FrameDecoder's names and meaning); inherited by
    FramedRequestHandler and FrameHandler, read by ``framing_for``."""

    frame_format: ClassVar[str | None]
    length_size: ClassVar[int | None]
    byteorder: ClassVar[Literal["big", "little"] | None]
    length_offset: ClassVar[int]
    length_adjustment: ClassVar[int]
    initial_bytes_to_strip: ClassVar[int | None]
    max_frame_size: ClassVar[int]

@final
class FramingRecipe:
    """How the connections of one handler are framed, validated once: a
    new, empty prototype decoder (``clone()`` it per connection) and the
    encoder of the same header."""

    decoder: FrameDecoder
    encoder: FrameEncoder
    def __init__(self, decoder: FrameDecoder, encoder: FrameEncoder) -> None: ...
    @property
    def pool(self) -> BufferPool:
        """The BufferPool the decoders take their buffers from."""

def framing_for(
    source: object, pool: BufferPool | None = None, twin: types.ModuleType | None = None
) -> FramingRecipe:
    """The FramingRecipe of a handler class, handler or client that declares
    the FramingAttributes (an undeclared one takes its default), built with
    ``twin`` (default: this module's choice); TypeError/ValueError on a bad
    description."""
