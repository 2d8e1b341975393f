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


class FramingAttributes:
    """The framing class attributes of a framed handler, with their defaults.

    ``FramedRequestHandler`` (the blocking servers) and ``FrameHandler``
    (the multiplexing server) inherit them; ``framing_for`` reads them.
    Their names and meaning are ``FrameDecoder``'s (see ``cserver._layout``):

    - frame_format = "!I"       a struct format of one unsigned integer
    - length_size, byteorder    instead of frame_format (None: not given)
    - length_offset = 0, length_adjustment = 0
    - initial_bytes_to_strip    None: the whole header
    - max_frame_size            DEFAULT_MAX_FRAME_SIZE (1 MiB), replies too
    """

    __slots__ = ()

    frame_format = "!I"
    length_size = None
    byteorder = None
    length_offset = 0
    length_adjustment = 0
    initial_bytes_to_strip = None
    max_frame_size = DEFAULT_MAX_FRAME_SIZE


class FramingRecipe:
    """How the connections of one handler are framed, validated once.

    ``decoder`` is a new, empty FrameDecoder (the prototype: ``clone()`` it
    for each further connection); ``encoder`` the FrameEncoder of the same
    header (it writes the replies).  Made by ``framing_for``."""

    __slots__ = ("decoder", "encoder")

    def __init__(self, decoder, encoder):
        self.decoder = decoder
        self.encoder = encoder

    @property
    def pool(self):
        """The BufferPool the decoders take their buffers from."""
        return self.decoder.pool

    def __repr__(self):
        return "<FramingRecipe %r>" % (self.decoder,)


def framing_for(source, pool=None, twin=None):
    """The FramingRecipe of ``source``: a handler class, a handler or a
    client that declares the ``FramingAttributes`` (a ``length_size`` or
    ``byteorder`` replaces ``frame_format``; one not declared at all takes
    its default).  The decoders take their buffers from ``pool`` (None:
    the twin's default pool).  ``twin`` is the framing module to build with
    (default: this one's choice; the multiplexing server, whose loop is C,
    passes ``cserver._framing``).  A bad description raises TypeError or
    ValueError naming the attribute and the value, before any I/O."""
    if twin is None:
        twin = _impl
    defaults = FramingAttributes
    length_size = getattr(source, "length_size", defaults.length_size)
    byteorder = getattr(source, "byteorder", defaults.byteorder)
    fmt = getattr(source, "frame_format", defaults.frame_format)
    if length_size is not None or byteorder is not None:
        fmt = None
    layout = dict(length_size=length_size, byteorder=byteorder,
                  length_offset=getattr(source, "length_offset", defaults.length_offset),
                  length_adjustment=getattr(source, "length_adjustment",
                                            defaults.length_adjustment),
                  max_frame_size=getattr(source, "max_frame_size", defaults.max_frame_size))
    # the decoder first: it validates all the encoder does, and the strip
    decoder = twin.FrameDecoder(
        fmt, initial_bytes_to_strip=getattr(source, "initial_bytes_to_strip",
                                            defaults.initial_bytes_to_strip),
        pool=pool, **layout)
    return FramingRecipe(decoder, twin.FrameEncoder(fmt, **layout))


__all__ = ["FrameDecoder", "FrameEncoder", "BufferPool", "encode_frame",
           "DEFAULT_MAX_FRAME_SIZE", "DEFAULT_POOL", "COMPILED",
           "FrameError", "FrameTooLarge", "IncompleteFrame"]
