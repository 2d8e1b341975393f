"""Length-prefix framing in C: decoder, encoder and buffer pool.

The pure-Python twin ``cserver._framing_py`` has the same API; use
``cserver.framing`` (or the names exported by ``cserver``), which picks one.
"""
from typing import Any, Dict, List, Optional, Union

from cserver.errors import FrameError as FrameError
from cserver.errors import FrameTooLarge as FrameTooLarge
from cserver.errors import IncompleteFrame as IncompleteFrame

_BytesLike = Union[bytes, bytearray, memoryview, Any]

DEFAULT_MAX_FRAME_SIZE: int
"""Default bound on a frame's body: 1 MiB."""

DEFAULT_POOL: "BufferPool"
"""The pool decoders use when none is given."""


class PooledBuffer:
    """A slab leased from a BufferPool (made by ``BufferPool.lease()`` only).
    Supports the (writable) buffer protocol."""

    @property
    def address(self) -> int:
        """The slab's address."""
    @property
    def released(self) -> bool: ...
    def memoryview(self) -> memoryview:
        """A writable memoryview of the slab (valid until release())."""
    def release(self) -> None:
        """Give the slab back to the pool (idempotent); BufferError while a
        memoryview of it is alive."""
    def __len__(self) -> int: ...
    def __enter__(self) -> "PooledBuffer": ...
    def __exit__(self, *exc: object) -> None: ...


class BufferPool:
    """A bounded, thread-safe pool of fixed-size buffers ("slabs").

    At most ``max_slabs`` slabs are out at once (then a request is a miss and
    the decoder uses a private allocation); at most ``max_idle`` (default 64,
    or ``max_slabs`` if smaller) idle slabs are kept, the surplus is freed.
    """

    slab_size: int
    max_slabs: int
    max_idle: int

    def __init__(self, slab_size: int = 65536, max_slabs: int = 1024,
                 max_idle: Optional[int] = None) -> None: ...
    def lease(self) -> Optional[PooledBuffer]:
        """A slab, or None when ``max_slabs`` are out (counted as a miss)."""
    def trim(self) -> int:
        """Free every idle slab now; return how many were freed."""
    def stats(self) -> Dict[str, int]:
        """slab_size, max_slabs, max_idle, in_use, idle, high_water,
        allocations, frees, hits, misses, bypass."""


class FrameDecoder:
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

    length_size: int
    big_endian: bool
    length_offset: int
    length_adjustment: int
    initial_bytes_to_strip: int
    max_frame_size: int
    header_size: int
    copy: bool
    pool: BufferPool

    def __init__(self, fmt: Optional[str] = None, *, length_size: Optional[int] = None,
                 byteorder: Optional[str] = None, length_offset: int = 0,
                 length_adjustment: int = 0, initial_bytes_to_strip: Optional[int] = None,
                 max_frame_size: int = ..., pool: Optional[BufferPool] = None,
                 copy: bool = True) -> None: ...
    @property
    def byteorder(self) -> str: ...
    @property
    def pending(self) -> int:
        """Bytes buffered for the frame in progress."""
    @property
    def failed(self) -> bool:
        """True once a bad header was seen (every call then raises)."""
    def feed(self, data: _BytesLike) -> List[Union[bytes, memoryview]]:
        """Every frame completed by ``data``.  Raises FrameTooLarge /
        FrameError on a bad header (frames before it in the same data are
        returned first, the error is raised by the next call)."""
    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """A writable buffer to read into; valid until the next call."""
    def buffer_updated(self, nbytes: int) -> List[bytes]:
        """``nbytes`` were written into get_buffer(); the frames completed."""
    def read_from(self, sock: Any) -> Optional[List[bytes]]:
        """``recv_into`` the decoder's buffer once; the frames completed, or
        None at end of stream (IncompleteFrame inside a frame)."""
    def eof(self) -> None:
        """Raise IncompleteFrame if a partial frame is buffered."""
    def close(self) -> None:
        """Drop buffered bytes, give the buffer back to the pool."""


class FrameEncoder:
    """Writes headers described as for FrameDecoder; the payload is the body."""

    length_size: int
    big_endian: bool
    length_offset: int
    length_adjustment: int
    max_frame_size: int
    header_size: int

    def __init__(self, fmt: Optional[str] = None, *, length_size: Optional[int] = None,
                 byteorder: Optional[str] = None, length_offset: int = 0,
                 length_adjustment: int = 0, max_frame_size: int = ...) -> None: ...
    @property
    def byteorder(self) -> str: ...
    def header(self, payload_size: int, prefix: Optional[bytes] = None) -> bytes:
        """The header for a payload of ``payload_size`` bytes; FrameTooLarge if
        the field or the limit cannot express it."""
    def encode(self, payload: _BytesLike, prefix: Optional[bytes] = None) -> bytes:
        """Header + payload."""


def encode_frame(payload: _BytesLike, fmt: Optional[str] = None, **layout: Any) -> bytes:
    """``payload`` behind a length header (``"!I"`` by default)."""
