"""cserver's error hierarchy: every error the framing layer raises about
the bytes a peer sent is a ``FrameError``, itself a ``ValueError``.

Messages state what was wrong, the limit, and the value seen.
"""

__all__ = ["FrameError", "FrameTooLarge", "IncompleteFrame"]


class FrameError(ValueError):
    """A peer broke the framing protocol (for example a length that is
    negative after ``length_adjustment``, or shorter than
    ``initial_bytes_to_strip``).  The decoder that raised it refuses further
    input; the connection should be closed."""

    __module__ = "cserver"


class FrameTooLarge(FrameError):
    """A header announced a frame longer than ``max_frame_size`` (raised as
    soon as the header is complete, before the payload is buffered), or a
    payload given to the encoder does not fit the header or the limit."""

    __module__ = "cserver"


class IncompleteFrame(FrameError):
    """The stream ended in the middle of a frame (a partial header or
    payload was buffered)."""

    __module__ = "cserver"
