"""Pure-Python twin of ``cserver._framing``: the same public API and errors.

It is the fallback when ``CSERVER_PURE`` is set and the oracle the compiled
decoder is tested against, so it is written for obviousness, not speed: one
``bytearray`` and an offset, frames cut with slices.

The header description, its validation and the error messages are
``cserver._layout``'s, shared with the C twin.
"""

import threading as _threading

from ._layout import (
    DEFAULT_MAX_FRAME_SIZE, LAYOUT_FIELDS, as_index, check_pool, field_too_small_message,
    incomplete_message, memory_message, negative_message, payload_size_message,
    payload_too_large_message, payload_too_short_message, pool_params,
    prefix_message, resolve_layout, strip_message, too_large_message,
)
from .errors import FrameError, FrameTooLarge, IncompleteFrame

__all__ = ["FrameDecoder", "FrameEncoder", "BufferPool", "encode_frame",
           "DEFAULT_MAX_FRAME_SIZE", "DEFAULT_POOL", "FrameError",
           "FrameTooLarge", "IncompleteFrame"]


class BufferPool:
    """A bounded pool of fixed-size buffers (pure twin: ``bytearray`` slabs).

    ``slab_size`` bytes per slab; at most ``max_slabs`` out at once (then
    ``lease()`` returns None and counts a miss); at most ``max_idle`` (default: 64, or
    ``max_slabs`` if smaller) idle slabs kept for reuse, the surplus is freed.  Thread-safe.
    """

    def __init__(self, slab_size=65536, max_slabs=1024, max_idle=None):
        slab_size, max_slabs, max_idle = pool_params(slab_size, max_slabs, max_idle)
        self.slab_size = slab_size
        self.max_slabs = max_slabs
        self.max_idle = max_idle
        self._lock = _threading.Lock()
        self._idle = []
        self._in_use = self._high_water = self._allocations = 0
        self._frees = self._hits = self._misses = self._bypass = 0

    def _acquire(self):
        with self._lock:
            if self._idle:
                slab = self._idle.pop()
                self._hits += 1
            elif self._in_use < self.max_slabs:
                slab = bytearray(self.slab_size)
                self._allocations += 1
            else:
                self._misses += 1
                return None
            self._in_use += 1
            if self._in_use > self._high_water:
                self._high_water = self._in_use
            return slab

    def _release(self, slab):
        with self._lock:
            if self._in_use <= 0:
                raise RuntimeError("BufferPool.release: no slab is out (double release)")
            self._in_use -= 1
            if len(self._idle) < self.max_idle:
                self._idle.append(slab)
            else:
                self._frees += 1

    def lease(self):
        """Take a slab: a ``PooledBuffer`` (writable buffer of ``slab_size``
        bytes; ``release()`` it or use it as a context manager), or None
        when ``max_slabs`` slabs are out (counted in ``stats()['misses']``)."""
        slab = self._acquire()
        if slab is None:
            return None
        return PooledBuffer(self, slab)

    def trim(self):
        """Free every idle slab now; return how many were freed."""
        with self._lock:
            n = len(self._idle)
            self._idle.clear()
            self._frees += n
            return n

    def stats(self):
        """A dict: slab_size, max_slabs, max_idle, in_use, idle, high_water,
        allocations, frees, hits, misses, bypass."""
        with self._lock:
            return {"slab_size": self.slab_size, "max_slabs": self.max_slabs,
                    "max_idle": self.max_idle, "in_use": self._in_use,
                    "idle": len(self._idle), "high_water": self._high_water,
                    "allocations": self._allocations, "frees": self._frees,
                    "hits": self._hits, "misses": self._misses,
                    "bypass": self._bypass}

    def __repr__(self):
        s = self.stats()
        return ("<BufferPool slab_size=%d in_use=%d idle=%d max_slabs=%d>"
                % (s["slab_size"], s["in_use"], s["idle"], s["max_slabs"]))


class PooledBuffer:
    """A slab leased from a BufferPool (not constructible by users)."""

    def __init__(self, pool, slab):
        self._pool = pool
        self._slab = slab
        self._view = memoryview(slab)

    def _live_slab(self):
        if self._slab is None:
            raise ValueError("buffer released")
        return self._slab

    @property
    def address(self):
        """An identity of the slab (its id here; its C address in the C twin)."""
        return id(self._live_slab())

    def __len__(self):
        return len(self._live_slab())

    def __buffer__(self, flags):  # 3.12+ buffer protocol for Python classes
        return memoryview(self._live_slab())

    def memoryview(self):
        """A writable memoryview of the slab (valid until release())."""
        return memoryview(self._live_slab())

    @property
    def released(self):
        return self._slab is None

    def release(self):
        """Give the slab back to the pool (idempotent)."""
        if self._slab is not None:
            slab, self._slab = self._slab, None
            self._view.release()
            self._pool._release(slab)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        self.release()


#: The pool decoders use when none is given.
DEFAULT_POOL = BufferPool()


class FrameDecoder:
    """Sans-IO length-prefix frame decoder.

    ``FrameDecoder("!I")`` (the default) reads a 4-byte big-endian length
    before each frame.  ``feed(data)`` returns every frame completed by
    ``data``.  See ``cserver._layout`` for the header parameters.  One
    decoder per connection; not thread-safe.
    """

    def __init__(self, fmt=None, *, length_size=None, byteorder=None,
                 length_offset=0, length_adjustment=0,
                 initial_bytes_to_strip=None,
                 max_frame_size=DEFAULT_MAX_FRAME_SIZE, pool=None, copy=True):
        vars(self).update(zip(LAYOUT_FIELDS, resolve_layout(
            fmt, length_size, byteorder, length_offset, length_adjustment,
            initial_bytes_to_strip, max_frame_size)))
        self.pool = check_pool(pool, BufferPool, DEFAULT_POOL)
        self.copy = bool(copy)
        self._buf = bytearray()
        self._pos = 0
        self._need = -1
        self._error = None
        self._scratch = None

    def clone(self):
        """A new, empty decoder with this one's layout, pool and copy mode.

        The layout is not validated again: a server validates one
        prototype at start-up and clones it for each connection."""
        d = object.__new__(type(self))
        d.__dict__.update(self.__dict__)
        d._buf = bytearray()
        d._pos = 0
        d._need = -1
        d._error = None
        d._scratch = None
        return d

    @property
    def byteorder(self):
        return "big" if self.big_endian else "little"

    @property
    def pending(self):
        """Bytes buffered for the frame in progress."""
        return len(self._buf) - self._pos

    @property
    def failed(self):
        """True once a bad header was seen (every call then raises)."""
        return self._error is not None

    def _check(self):
        if self._error is not None:
            cls, message = self._error
            raise cls(message)

    def _fail(self, cls, message):
        self._error = (cls, message)
        self._buf = bytearray()
        self._pos = 0
        self._need = -1
        raise cls(message)

    def _frame_total(self, pos):
        start = pos + self.length_offset
        raw = bytes(self._buf[start:start + self.length_size])
        value = int.from_bytes(raw, "big" if self.big_endian else "little")
        body = value + self.length_adjustment
        if body < 0:
            self._fail(FrameError, negative_message(value, self.length_adjustment, body))
        if body > self.max_frame_size:
            self._fail(FrameTooLarge, too_large_message(
                value, self.length_adjustment, body, self.max_frame_size))
        total = self.header_size + body
        if total < self.initial_bytes_to_strip:
            self._fail(FrameError, strip_message(total, self.initial_bytes_to_strip))
        return total

    def feed(self, data):
        """Add ``data`` (any bytes-like object) to the stream; return the list
        of frames it completed (``bytes``, or with ``copy=False`` possibly
        memoryviews valid until the next call).  A bad header raises
        FrameError/FrameTooLarge; frames completed earlier in the same
        ``data`` are returned first and the error is raised by the next
        call."""
        self._check()
        with memoryview(data) as view:
            if not view.c_contiguous:
                # what the C twin's PyBUF_SIMPLE request raises
                raise BufferError("feed() needs a C-contiguous buffer")
            try:
                self._buf += view.cast("B") if view.format != "B" or view.ndim != 1 else view
            except MemoryError:
                self._fail(MemoryError, memory_message(
                    len(self._buf) - self._pos + view.nbytes, self.pending))
        out = []
        try:
            while True:
                avail = len(self._buf) - self._pos
                if self._need < 0:
                    if avail < self.header_size:
                        break
                    self._need = self._frame_total(self._pos)
                if avail < self._need:
                    break
                out.append(bytes(self._buf[self._pos + self.initial_bytes_to_strip:
                                           self._pos + self._need]))
                self._pos += self._need
                self._need = -1
        except FrameError:
            if out:
                return out
            raise
        del self._buf[:self._pos]
        self._pos = 0
        return out

    def get_buffer(self, sizehint=-1):
        """A writable buffer to read the stream into (asyncio's
        ``BufferedProtocol.get_buffer``); valid until ``buffer_updated``."""
        self._check()
        # the hint is honoured up to one slab, as in the C twin
        size = max(min(sizehint, self.pool.slab_size), 65536)
        if self._scratch is None or len(self._scratch) < size:
            self._scratch = bytearray(size)
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes):
        """``nbytes`` were written into ``get_buffer()``; return the frames
        they completed."""
        self._check()
        if self._scratch is None or not 0 <= nbytes <= len(self._scratch):
            raise ValueError("buffer_updated(%d): not within the buffer from get_buffer()"
                             % nbytes)
        return self.feed(self._scratch[:nbytes])

    def read_from(self, sock):
        """Receive once from ``sock`` into the decoder; return the frames
        completed, or None at end of stream (IncompleteFrame if it ended
        inside a frame).  Socket errors and timeouts propagate."""
        self._check()
        data = sock.recv(self.pool.slab_size)
        if not data:
            self.eof()
            return None
        return self.feed(data)

    def eof(self):
        """End of stream: raise IncompleteFrame if a partial frame is
        buffered."""
        self._check()
        pending = len(self._buf) - self._pos
        if pending:
            need = self._need
            self._fail(IncompleteFrame, incomplete_message(pending, need, self.header_size))

    def close(self):
        """Drop any buffered bytes and give the buffer back to the pool."""
        self._buf = bytearray()
        self._pos = 0
        self._need = -1

    def __repr__(self):
        return ("<FrameDecoder length_size=%d byteorder=%s max_frame_size=%d pending=%d>"
                % (self.length_size, self.byteorder, self.max_frame_size, self.pending))


class FrameEncoder:
    """Writes the header described as for FrameDecoder (without
    ``initial_bytes_to_strip``: the payload is the body)."""

    def __init__(self, fmt=None, *, length_size=None, byteorder=None,
                 length_offset=0, length_adjustment=0,
                 max_frame_size=DEFAULT_MAX_FRAME_SIZE):
        header = dict(zip(LAYOUT_FIELDS, resolve_layout(
            fmt, length_size, byteorder, length_offset, length_adjustment,
            None, max_frame_size)))
        del header["initial_bytes_to_strip"]     # the payload is the body
        vars(self).update(header)

    @property
    def byteorder(self):
        return "big" if self.big_endian else "little"

    def _value(self, payload_size):
        if payload_size > self.max_frame_size:
            raise FrameTooLarge(payload_too_large_message(payload_size, self.max_frame_size))
        value = payload_size - self.length_adjustment
        if value < 0:
            raise FrameError(payload_too_short_message(payload_size, self.length_adjustment))
        if value >= 1 << (8 * self.length_size):
            raise FrameTooLarge(field_too_small_message(value, self.length_size))
        return value

    def header(self, payload_size, prefix=None):
        """The header for a payload of ``payload_size`` bytes; ``prefix`` is
        the ``length_offset`` bytes before the length field (zeros if None)."""
        payload_size = as_index("payload_size", payload_size)
        if payload_size < 0:
            raise ValueError(payload_size_message(payload_size))
        value = self._value(payload_size)
        if prefix is None:
            prefix = bytes(self.length_offset)
        elif len(prefix) != self.length_offset:
            raise ValueError(prefix_message(self.length_offset, len(prefix)))
        return bytes(prefix) + value.to_bytes(self.length_size, self.byteorder)

    def encode(self, payload, prefix=None):
        """Header + payload as one ``bytes``."""
        with memoryview(payload) as view:
            return self.header(view.nbytes, prefix) + view.tobytes()


_DEFAULT_ENCODER = FrameEncoder()


def encode_frame(payload, fmt=None, **layout):
    """``payload`` (bytes-like) with a length header: ``"!I"`` by default,
    or the header described by ``fmt``/``layout`` as for FrameEncoder.
    Raises FrameTooLarge if the header cannot express the length."""
    encoder = _DEFAULT_ENCODER if fmt is None and not layout else FrameEncoder(fmt, **layout)
    return encoder.encode(payload)
