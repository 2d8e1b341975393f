"""The header description both framing twins implement: its validation,
its error messages and its defaults (not API: use ``cserver.framing``)."""
from typing import Final, SupportsIndex, TypeVar

__all__: list[str] = [
    "DEFAULT_MAX_FRAME_SIZE",
    "MAX_SLAB_SIZE",
    "MAX_IDLE",
    "LAYOUT_FIELDS",
    "resolve_layout",
    "pool_params",
    "check_pool",
    "as_index",
    "too_large_message",
    "negative_message",
    "strip_message",
    "memory_message",
    "field_too_small_message",
    "incomplete_message",
    "payload_size_message",
    "payload_too_large_message",
    "payload_too_short_message",
    "prefix_message",
]

_P = TypeVar("_P")

DEFAULT_MAX_FRAME_SIZE: Final[int]
"""Default bound on a frame's body: 1 MiB."""
MAX_SLAB_SIZE: Final[int]
MAX_IDLE: Final[int]
LAYOUT_FIELDS: Final[tuple[str, ...]]
"""The names of ``resolve_layout()``'s values, in order."""

def as_index(name: str, value: SupportsIndex) -> int:
    """``value.__index__()``, or TypeError naming the parameter."""
def resolve_layout(
    fmt: str | None,
    length_size: int | None,
    byteorder: str | None,
    length_offset: int,
    length_adjustment: int,
    initial_bytes_to_strip: int | None,
    max_frame_size: int,
) -> tuple[int, bool, int, int, int, int, int]:
    """Validate a header description; ``(length_size, big_endian,
    length_offset, length_adjustment, initial_bytes_to_strip,
    max_frame_size, header_size)``, the limit clamped."""
def pool_params(slab_size: int, max_slabs: int, max_idle: int | None) -> tuple[int, int, int]:
    """Validate BufferPool parameters."""
def check_pool(pool: object, pool_class: type[_P], default: _P) -> _P:
    """``default`` for None, else ``pool``, which must be a ``pool_class``."""
def too_large_message(value: int, adjustment: int, body: int, limit: int) -> str: ...
def negative_message(value: int, adjustment: int, body: int) -> str: ...
def strip_message(total: int, strip: int) -> str: ...
def memory_message(want: int, pending: int) -> str: ...
def incomplete_message(pending: int, need: int, header_size: int) -> str: ...
def payload_size_message(payload_size: int) -> str: ...
def payload_too_large_message(payload_size: int, limit: int) -> str: ...
def payload_too_short_message(payload_size: int, adjustment: int) -> str: ...
def field_too_small_message(value: int, length_size: int) -> str: ...
def prefix_message(length_offset: int, given: int) -> str: ...
