"""Length-prefix framing in C: decoder, encoder and buffer pool.

The pure-Python twin ``cserver._framing_py`` has the same API; use
``cserver.framing`` (or the names exported by ``cserver``), which picks one
and is typed as this module.  The classes are ``cdef`` classes: they cannot
be subclassed (``@final``).
"""
import builtins
import socket
from _typeshed import ReadableBuffer
from typing import Any, Final, Literal, type_check_only
from typing_extensions import Self, final

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
    "FrameError",
    "FrameTooLarge",
    "IncompleteFrame",
]

DEFAULT_MAX_FRAME_SIZE: Final[int]
"""Default bound on a frame's body: 1 MiB."""

DEFAULT_POOL: Final[BufferPool]
"""The pool decoders use when none is given."""

_ByteOrder = Literal["big", "little"]

@final
class PooledBuffer:
    """A slab leased from a BufferPool (made by ``BufferPool.lease()`` only).
    Supports the (writable) buffer protocol."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        """Raises TypeError: slabs come from ``BufferPool.lease()``."""
    @property
    def address(self) -> int:
        """The slab's address."""
    @property
    def released(self) -> bool: ...
    def memoryview(self) -> builtins.memoryview:
        """A writable memoryview of the slab (valid until release())."""
    def release(self) -> None:
        """Give the slab back to the pool (idempotent); BufferError while a
        memoryview of it is alive."""
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> builtins.memoryview: ...
    def __release_buffer__(self, buffer: builtins.memoryview, /) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: object) -> None: ...

@final
class BufferPool:
    """A bounded, thread-safe pool of fixed-size buffers ("slabs").

    At most ``max_slabs`` slabs are out at once (then a request is a miss and
    the decoder uses a private allocation); at most ``max_idle`` (default 64,
    or ``max_slabs`` if smaller) idle slabs are kept, the surplus is freed.
    """

    # __cinit__ at runtime: the arguments go to __new__.
    def __new__(cls, slab_size: int = 65536, max_slabs: int = 1024, max_idle: int | None = None) -> Self: ...
    @property
    def slab_size(self) -> int: ...
    @property
    def max_slabs(self) -> int: ...
    @property
    def max_idle(self) -> int: ...
    def lease(self) -> PooledBuffer | None:
        """A slab, or None when ``max_slabs`` are out (counted as a miss)."""
    def trim(self) -> int:
        """Free every idle slab now; return how many were freed."""
    def stats(self) -> dict[str, int]:
        """slab_size, max_slabs, max_idle, in_use, idle, high_water,
        allocations, frees, hits, misses, bypass."""

@type_check_only
class _Header:
    """The validated header description a decoder and an encoder hold
    (cserver._layout.LAYOUT_FIELDS), read-only."""

    @property
    def length_size(self) -> int:
        """Bytes in the length field: 1, 2, 3, 4 or 8."""
    @property
    def big_endian(self) -> bool: ...
    @property
    def byteorder(self) -> _ByteOrder:
        """``"big"`` or ``"little"``: the length field's byte order."""
    @property
    def length_offset(self) -> int:
        """Bytes before the length field."""
    @property
    def length_adjustment(self) -> int:
        """Added to the field's value to give the body's size."""
    @property
    def max_frame_size(self) -> int:
        """The largest body, clamped to what the length field can express."""
    @property
    def header_size(self) -> int:
        """``length_offset + length_size``."""

@final
class FrameDecoder(_Header):
    """Sans-IO length-prefix frame decoder.

    The header is a struct format of one unsigned integer (``"!I"``, the
    default, ``"!H"``, ``"!B"``, ``"!Q"``, ``"<I"`` ...) or, instead,
    ``length_size`` (1, 2, 3, 4 or 8) and ``byteorder``; with Netty's
    meaning, ``length_offset`` bytes come before the length field, the body
    is ``field + length_adjustment`` bytes long and must not exceed
    ``max_frame_size`` (clamped to what the field can express), and each
    delivered frame is the frame without its first ``initial_bytes_to_strip``
    bytes (default: the whole header).  One decoder per connection; not
    thread-safe.
    """

    def __init__(
        self,
        fmt: str | None = None,
        *,
        length_size: int | None = None,
        byteorder: _ByteOrder | None = None,
        length_offset: int = 0,
        length_adjustment: int = 0,
        initial_bytes_to_strip: int | None = None,
        max_frame_size: int = ...,
        pool: BufferPool | None = None,
        copy: bool = True,
    ) -> None: ...
    def clone(self) -> FrameDecoder:
        """A new, empty decoder with this one's layout, pool and copy mode."""
    @property
    def initial_bytes_to_strip(self) -> int: ...
    @property
    def copy(self) -> bool: ...
    @property
    def pool(self) -> BufferPool: ...
    @property
    def pending(self) -> int:
        """Bytes buffered for the frame in progress."""
    @property
    def failed(self) -> bool:
        """True once a bad header was seen (every call then raises)."""
    # bytes | Any: bytes, except that with copy=False the frames lying whole
    # inside ``data`` are memoryviews of it (typeshed's "Any trick": usable
    # as bytes without a cast, which the common copy=True case needs).
    def feed(self, data: ReadableBuffer) -> list[bytes | Any]:
        """Every frame completed by ``data``.  Raises FrameTooLarge /
        FrameError on a bad header (frames before it in the same data are
        returned first, the error is raised by the next call)."""
    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """A writable buffer to read into; valid until the next call."""
    def buffer_updated(self, nbytes: int) -> list[bytes]:
        """``nbytes`` were written into get_buffer(); the frames completed."""
    def read_from(self, sock: socket.socket) -> list[bytes] | None:
        """``recv_into`` the decoder's buffer once; the frames completed, or
        None at end of stream (IncompleteFrame inside a frame)."""
    def eof(self) -> None:
        """Raise IncompleteFrame if a partial frame is buffered."""
    def close(self) -> None:
        """Drop buffered bytes, give the buffer back to the pool."""

@final
class FrameEncoder(_Header):
    """Writes headers described as for FrameDecoder; the payload is the body."""

    def __init__(
        self,
        fmt: str | None = None,
        *,
        length_size: int | None = None,
        byteorder: _ByteOrder | None = None,
        length_offset: int = 0,
        length_adjustment: int = 0,
        max_frame_size: int = ...,
    ) -> None: ...
    def header(self, payload_size: int, prefix: ReadableBuffer | None = None) -> bytes:
        """The header for a payload of ``payload_size`` bytes; FrameTooLarge if
        the field or the limit cannot express it."""
    def encode(self, payload: ReadableBuffer, prefix: ReadableBuffer | None = None) -> bytes:
        """Header + payload."""

def encode_frame(
    payload: ReadableBuffer,
    fmt: str | None = None,
    *,
    length_size: int | None = None,
    byteorder: _ByteOrder | None = None,
    length_offset: int = 0,
    length_adjustment: int = 0,
    max_frame_size: int = ...,
) -> bytes:
    """``payload`` behind a length header (``"!I"`` by default), the header
    described by ``fmt`` or the keywords, as for FrameEncoder."""
