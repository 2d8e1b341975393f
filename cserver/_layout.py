"""The header description that both framing twins implement.

``cserver._framing`` (C) and ``cserver._framing_py`` (its pure-Python twin,
the oracle the C twin is tested against) validate their parameters and word
their errors here, so that they accept exactly the same values and fail with
exactly the same messages; neither twin imports the other.

Header description (Netty's ``LengthFieldBasedFrameDecoder`` and tokio's
``LengthDelimitedCodec`` meaning)::

    | length_offset bytes | length field (length_size) | body ... |
    |<------------- header_size --------------------->|

    body size   = value of the length field + length_adjustment
    frame       = header + body           (header_size + body size bytes)
    delivered   = frame[initial_bytes_to_strip:]   (default: the body)

``max_frame_size`` bounds the body size (after adjustment) and is clamped to
what the length field can express.
"""

import struct as _struct
import sys as _sys

__all__ = ["DEFAULT_MAX_FRAME_SIZE", "MAX_SLAB_SIZE", "MAX_IDLE", "LAYOUT_FIELDS",
           "resolve_layout",
           "pool_params", "check_pool", "as_index", "too_large_message",
           "negative_message", "strip_message", "memory_message",
           "field_too_small_message", "incomplete_message", "payload_size_message",
           "payload_too_large_message", "payload_too_short_message", "prefix_message"]

#: Default bound on a frame's body: 1 MiB (see docs/framing.md: it bounds
#: the memory one slow or hostile peer can pin, it is the default of the
#: ``websockets`` library and in the range of Kafka's and gRPC's limits, and
#: protocols with larger messages raise it explicitly).
DEFAULT_MAX_FRAME_SIZE = 1 << 20

#: Bounds of a BufferPool's parameters: a slab is at most 1 GiB, and the idle
#: list (allocated up front in C) at most 2**20 entries.
MAX_SLAB_SIZE = 1 << 30
MAX_IDLE = 1 << 20

#: The names of ``resolve_layout()``'s values, in order: the attributes of a
#: decoder (an encoder has all but ``initial_bytes_to_strip``).
LAYOUT_FIELDS = ("length_size", "big_endian", "length_offset", "length_adjustment",
                 "initial_bytes_to_strip", "max_frame_size", "header_size")

_SSIZE_MAX = _sys.maxsize
_FORMAT_CODES = "BHILQ"
_ORDERS = {"<": False, ">": True, "!": True, "=": _sys.byteorder == "big",
           "@": _sys.byteorder == "big"}


def as_index(name, value):
    """``value.__index__()``, or TypeError naming the parameter."""
    try:
        return value.__index__()
    except AttributeError:
        raise TypeError("%s must be an int, not %s"
                        % (name, type(value).__name__)) from None


def resolve_layout(fmt, length_size, byteorder, length_offset,
                   length_adjustment, initial_bytes_to_strip, max_frame_size):
    """Validate a header description; return
    ``(length_size, big_endian, length_offset, length_adjustment,
    initial_bytes_to_strip, max_frame_size, header_size)`` (LAYOUT_FIELDS)
    with the limit clamped to what the header can express."""
    if fmt is not None:
        if length_size is not None or byteorder is not None:
            raise ValueError("give either a struct format or length_size/byteorder, "
                             "not both (format %r)" % (fmt,))
        if not isinstance(fmt, str):
            raise TypeError("format must be a str such as '!I', not %s"
                            % type(fmt).__name__)
        order = fmt[0] if fmt[:1] in _ORDERS else "@"
        code = fmt[1:] if fmt[:1] in _ORDERS else fmt
        if len(code) != 1 or code not in _FORMAT_CODES:
            raise ValueError("format must be one unsigned integer code (B, H, I, L "
                             "or Q) with an optional byte order (<, >, !, =, @); "
                             "got %r" % (fmt,))
        length_size = _struct.calcsize(order + code)
        big_endian = _ORDERS[order]
    else:
        if length_size is None:
            length_size = 4
        if byteorder is None:
            byteorder = "big"
        if byteorder not in ("big", "little"):
            raise ValueError("byteorder must be 'big' or 'little', not %r" % (byteorder,))
        big_endian = byteorder == "big"
    length_size = as_index("length_size", length_size)
    if length_size not in (1, 2, 3, 4, 8):
        raise ValueError("length_size must be 1, 2, 3, 4 or 8 bytes, not %d" % length_size)
    length_offset = as_index("length_offset", length_offset)
    length_adjustment = as_index("length_adjustment", length_adjustment)
    max_frame_size = as_index("max_frame_size", max_frame_size)
    if length_offset < 0 or length_offset > (1 << 20):
        raise ValueError("length_offset must be between 0 and %d, not %d"
                         % (1 << 20, length_offset))
    if abs(length_adjustment) > (1 << 62):
        raise ValueError("length_adjustment must be within +-2**62, not %d"
                         % length_adjustment)
    if max_frame_size < 0:
        raise ValueError("max_frame_size must be >= 0, not %d" % max_frame_size)
    header_size = length_offset + length_size
    if initial_bytes_to_strip is None:
        initial_bytes_to_strip = header_size
    initial_bytes_to_strip = as_index("initial_bytes_to_strip", initial_bytes_to_strip)
    if initial_bytes_to_strip < 0:
        raise ValueError("initial_bytes_to_strip must be >= 0, not %d"
                         % initial_bytes_to_strip)
    # Clamp the limit to the largest body the header can announce, and to
    # what a buffer can hold (tokio#5101-style: a limit wider than the
    # header must not let an encoder truncate, nor a decoder wrap).
    expressible = (1 << (8 * length_size)) - 1 + length_adjustment
    if expressible < 0:
        raise ValueError("length_adjustment %d makes every length of a %d-byte "
                         "field negative" % (length_adjustment, length_size))
    max_frame_size = min(max_frame_size, expressible, _SSIZE_MAX - header_size - 1)
    if length_adjustment > max_frame_size:
        raise ValueError("length_adjustment %d exceeds max_frame_size %d: no "
                         "frame could be valid" % (length_adjustment, max_frame_size))
    if initial_bytes_to_strip > header_size + max_frame_size:
        raise ValueError("initial_bytes_to_strip %d exceeds the largest frame "
                         "(%d bytes)" % (initial_bytes_to_strip,
                                         header_size + max_frame_size))
    return (length_size, big_endian, length_offset, length_adjustment,
            initial_bytes_to_strip, max_frame_size, header_size)


def pool_params(slab_size, max_slabs, max_idle):
    """Validate BufferPool parameters; return ``(slab_size, max_slabs,
    max_idle)`` (``max_idle`` None: 64, or ``max_slabs`` if smaller)."""
    slab_size = as_index("slab_size", slab_size)
    max_slabs = as_index("max_slabs", max_slabs)
    max_idle = min(64, max_slabs) if max_idle is None else as_index("max_idle", max_idle)
    if not 64 <= slab_size <= MAX_SLAB_SIZE:
        raise ValueError("slab_size must be between 64 and %d, not %d"
                         % (MAX_SLAB_SIZE, slab_size))
    if not 1 <= max_slabs <= _SSIZE_MAX:
        raise ValueError("max_slabs must be between 1 and %d, not %d"
                         % (_SSIZE_MAX, max_slabs))
    if not 0 <= max_idle <= min(max_slabs, MAX_IDLE):
        raise ValueError("max_idle must be between 0 and max_slabs (%d) and at most "
                         "%d, not %d" % (max_slabs, MAX_IDLE, max_idle))
    return slab_size, max_slabs, max_idle


def check_pool(pool, pool_class, default):
    """The pool a decoder takes its buffers from: ``default`` when ``pool``
    is None, else ``pool``, which must be a ``pool_class`` (the BufferPool
    of the decoder's own twin)."""
    if pool is None:
        return default
    if not isinstance(pool, pool_class):
        raise TypeError("pool must be a BufferPool of the same twin, not %s"
                        % type(pool).__name__)
    return pool


# -- error messages (the decoder's, then the encoder's) ------------------------


def too_large_message(value, adjustment, body, limit):
    if adjustment:
        return ("frame length %d (length field %d, length_adjustment %+d) exceeds "
                "max_frame_size %d" % (body, value, adjustment, limit))
    return "frame length %d exceeds max_frame_size %d" % (body, limit)


def negative_message(value, adjustment, body):
    return ("frame length %d is negative (length field %d, length_adjustment %+d)"
            % (body, value, adjustment))


def strip_message(total, strip):
    return ("frame of %d bytes is shorter than initial_bytes_to_strip %d"
            % (total, strip))


def memory_message(want, pending):
    return ("out of memory growing a frame buffer to %d bytes (%d bytes of the "
            "frame received); the decoder is failed" % (want, pending))


def incomplete_message(pending, need, header_size):
    if need < 0:
        return ("stream ended inside a frame header: %d of %d header bytes "
                "received" % (pending, header_size))
    return ("stream ended inside a frame: %d of %d bytes received"
            % (pending, need))


def payload_size_message(payload_size):
    return "payload_size must be >= 0, not %d" % payload_size


def payload_too_large_message(payload_size, limit):
    return "payload of %d bytes exceeds max_frame_size %d" % (payload_size, limit)


def payload_too_short_message(payload_size, adjustment):
    return ("payload of %d bytes is shorter than length_adjustment %d allows "
            "(length field would be %d)" % (payload_size, adjustment,
                                            payload_size - adjustment))


def field_too_small_message(value, length_size):
    return ("length field value %d does not fit %d bytes (max %d)"
            % (value, length_size, (1 << (8 * length_size)) - 1))


def prefix_message(length_offset, given):
    return "prefix must be length_offset (%d) bytes, not %d" % (length_offset, given)
