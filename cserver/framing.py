"""The framing layer: length-prefix frames over a byte stream.

Chooses the compiled twin (``cserver._framing``) unless ``CSERVER_PURE`` is
set, in which case the pure-Python twin (``cserver._framing_py``) is used.
Both twins are always importable under their own names (the tests run one
body over both).
"""

from ._env import PURE as _PURE
from .errors import FrameError, FrameTooLarge, IncompleteFrame

if _PURE:
    from . import _framing_py as _impl
else:
    from . import _framing as _impl

FrameDecoder = _impl.FrameDecoder
FrameEncoder = _impl.FrameEncoder
BufferPool = _impl.BufferPool
encode_frame = _impl.encode_frame
DEFAULT_MAX_FRAME_SIZE = _impl.DEFAULT_MAX_FRAME_SIZE
DEFAULT_POOL = _impl.DEFAULT_POOL
#: True when the compiled twin is in use.
COMPILED = _impl.__name__.endswith("._framing")



def layout_of(obj):
    """``(fmt, layout)``: the FrameDecoder/FrameEncoder arguments that a
    handler class or instance declares with the framing layer's attribute
    names (``frame_format``, or ``length_size``/``byteorder``, which then
    replace it; ``length_offset``, ``length_adjustment``, ``max_frame_size``).
    Used by FramedRequestHandler and the multiplexing server's FrameHandler.
    """
    length_size = getattr(obj, "length_size", None)
    byteorder = getattr(obj, "byteorder", None)
    fmt = getattr(obj, "frame_format", None)
    if length_size is not None or byteorder is not None:
        fmt = None
    return fmt, dict(length_size=length_size, byteorder=byteorder,
                     length_offset=getattr(obj, "length_offset", 0),
                     length_adjustment=getattr(obj, "length_adjustment", 0),
                     max_frame_size=getattr(obj, "max_frame_size", DEFAULT_MAX_FRAME_SIZE))


__all__ = ["FrameDecoder", "FrameEncoder", "BufferPool", "encode_frame",
           "DEFAULT_MAX_FRAME_SIZE", "DEFAULT_POOL", "COMPILED",
           "FrameError", "FrameTooLarge", "IncompleteFrame"]
