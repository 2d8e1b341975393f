# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""C twin of ``cserver._framing_py``: the length-prefix frame decoder, the
encoder, and the buffer pool their reads land in.

The C API (for ``cimport``) is documented at the top of ``_framing.pxd``.

Design
------
Decoding happens in place.  ``next_frame`` looks at the caller's bytes
first: a frame that lies whole inside them is handed out as a pointer into
them, with no copy at all (``feed`` then makes the one ``bytes`` object per
frame that Python code receives).  Only the tail of an incomplete frame is
copied into the decoder's own buffer, and completing it takes only the bytes
that frame still needs, so no byte is ever copied twice and a 64 KiB read of
1000 small frames costs one pass.

The decoder's buffer is a slab from a BufferPool while the frame in progress
is small (fits a slab, body under ``BIG_FRAME``); a larger frame is received
straight into the ``bytes`` object that is delivered, which grows by doubling
from one slab as the body arrives (bounded by the announced length, itself
bounded by ``max_frame_size``).  A partial frame is compacted
(memmove) to the front of its slab rather than reallocated.  When a call
ends with nothing buffered, the slab goes back to the pool: an idle
connection holds no memory.

A header is checked as soon as it is complete, before any of its payload is
buffered (fail fast), and a failed decoder refuses all further input.
"""

cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBuffer_FillInfo, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_Clear
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_DECREF
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.pythread cimport (
    PyThread_allocate_lock, PyThread_free_lock, PyThread_acquire_lock,
    PyThread_release_lock, WAIT_LOCK,
)
from libc.string cimport memcpy, memmove, memset

from socket import socket as _socket_type

# read_from() uses scatter reads on plain sockets that have recvmsg_into
cdef bint _SCATTER_SOCKETS = hasattr(_socket_type, "recvmsg_into")

from cserver.errors import FrameError, FrameTooLarge, IncompleteFrame
# the header description both twins implement: validation, messages, defaults
# (the decoder's under the private names it has always called them by)
from cserver._layout import (
    DEFAULT_MAX_FRAME_SIZE, check_pool, payload_size_message,
    payload_too_large_message, payload_too_short_message, prefix_message,
    as_index as _index, field_too_small_message as _field_too_small_message,
    incomplete_message as _incomplete_message, memory_message as _memory_message,
    negative_message as _negative_message, pool_params as _pool_params,
    resolve_layout as _resolve_layout, strip_message as _strip_message,
    too_large_message as _too_large_message,
)

cdef extern from "Python.h":
    int PyBUF_WRITE
    const Py_ssize_t PY_SSIZE_T_MAX
    # Soft-deprecated (PEP 782) but kept and maintained on every CPython:
    # grows the bytes object a large frame is received into, in place when
    # realloc can.  On failure it frees the object, sets *bytes to NULL and
    # returns -1 with MemoryError set (handled by the caller: no except
    # clause, so the decoder is failed before the error propagates).
    int _PyBytes_Resize(PyObject** bytes, Py_ssize_t newsize)


cdef inline Py_ssize_t _double(Py_ssize_t n) noexcept nogil:
    """2 * n, saturated (never overflows)."""
    return n + n if n <= PY_SSIZE_T_MAX // 2 else PY_SSIZE_T_MAX

# A frame in progress whose body (what is delivered) is at least this large
# is received straight into the bytes object that will be delivered (the
# "big" path, as for a frame larger than a slab) instead of into a slab that
# is then copied out: a 64 KiB frame cut by a read costs one copy of what had
# arrived instead of three (into the slab, into a larger buffer for the
# header's 4 bytes, out to the bytes object).  Below it the slab wins: its
# recv takes the frames that follow too, in one system call.
# (bench/instructions.py --workloads 10c-d4-64k: bytes copied per request.)
# Scatter reads (scatter_begin): at most SCATTER_MAX predicted frames per
# read, for headers of at most SCATTER_HDR bytes (_scatter_hdr holds them
# all).  C constants: the hot path compares with an immediate.
cdef enum:
    BIG_FRAME = 16384
    SCATTER_MAX = 4
    SCATTER_HDR = 16

__all__ = ["FrameDecoder", "FrameEncoder", "BufferPool", "encode_frame",
           "DEFAULT_MAX_FRAME_SIZE", "DEFAULT_POOL", "FrameError",
           "FrameTooLarge", "IncompleteFrame"]


# --------------------------------------------------------------------------
# Buffer pool
#
# Fixed slabs rather than size classes: every decoder read lands in the same
# kind of buffer (one socket read), frames larger than a slab are rare and
# bypass the pool, and a single free list is one pop/push under the lock.
# 64 KiB is the read size at which decoding 64 B frames stops gaining
# (bench/bench_decode.py --chunks) and a common socket receive size.
# --------------------------------------------------------------------------

@cython.final
cdef class BufferPool:
    # The first line is the constructor's text signature (what
    # inspect.signature and help() read for a cdef class): keep it equal to
    # __cinit__'s and to the pure twin's.
    """BufferPool(slab_size=65536, max_slabs=1024, max_idle=None)\n--\n\n
    A bounded, thread-safe pool of fixed-size C buffers ("slabs").

    ``slab_size`` bytes per slab; at most ``max_slabs`` out at once (then a
    request is a miss: ``lease()`` returns None and the decoder falls back
    to a private allocation); at most ``max_idle`` (default: 64, or ``max_slabs`` if smaller)
    idle slabs kept for reuse, the surplus is freed on release.  ``stats()`` reports the use.
    """

    def __cinit__(self, slab_size=65536, max_slabs=1024, max_idle=None):
        slab_size, max_slabs, max_idle = _pool_params(slab_size, max_slabs, max_idle)
        self.slab_size = slab_size
        self.max_slabs = max_slabs
        self.max_idle = max_idle
        self._idle = <char**>PyMem_Malloc((max_idle + 1) * sizeof(char*))
        if self._idle == NULL:
            raise MemoryError()
        self._lock = PyThread_allocate_lock()
        if self._lock == NULL:
            raise MemoryError()

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self._idle != NULL:
            for i in range(self._n_idle):
                PyMem_Free(self._idle[i])
            PyMem_Free(self._idle)
            self._idle = NULL
        if self._lock != NULL:
            PyThread_free_lock(self._lock)
            self._lock = NULL

    cdef char* acquire(self) noexcept:
        cdef char* slab = NULL
        PyThread_acquire_lock(self._lock, WAIT_LOCK)
        if self._n_idle > 0:
            self._n_idle -= 1
            slab = self._idle[self._n_idle]
            self._hits += 1
        elif self._in_use < self.max_slabs:
            slab = <char*>PyMem_Malloc(self.slab_size)
            if slab != NULL:
                self._allocations += 1
        if slab == NULL:
            self._misses += 1
        else:
            self._in_use += 1
            if self._in_use > self._high_water:
                self._high_water = self._in_use
        PyThread_release_lock(self._lock)
        return slab

    cdef int release(self, char* slab) except -1:
        cdef bint over = False
        PyThread_acquire_lock(self._lock, WAIT_LOCK)
        if self._in_use <= 0:
            over = True
        else:
            self._in_use -= 1
            if self._n_idle < self.max_idle:
                self._idle[self._n_idle] = slab
                self._n_idle += 1
            else:
                PyMem_Free(slab)
                self._frees += 1
        PyThread_release_lock(self._lock)
        if over:
            raise RuntimeError("BufferPool.release: no slab is out (double release)")
        return 0

    cdef void note_bypass(self) noexcept:
        PyThread_acquire_lock(self._lock, WAIT_LOCK)
        self._bypass += 1
        PyThread_release_lock(self._lock)

    def lease(self):
        """Take a slab: a ``PooledBuffer`` (writable buffer of ``slab_size``
        bytes; ``release()`` it or use it as a context manager), or None
        when ``max_slabs`` slabs are out (counted in ``stats()['misses']``)."""
        cdef char* slab = self.acquire()
        if slab == NULL:
            return None
        cdef PooledBuffer buf = PooledBuffer.__new__(PooledBuffer)
        buf._pool = self
        buf._ptr = slab
        buf._size = self.slab_size
        return buf

    def trim(self):
        """Free every idle slab now; return how many were freed."""
        cdef Py_ssize_t n
        PyThread_acquire_lock(self._lock, WAIT_LOCK)
        n = self._n_idle
        while self._n_idle > 0:
            self._n_idle -= 1
            PyMem_Free(self._idle[self._n_idle])
        self._frees += n
        PyThread_release_lock(self._lock)
        return n

    def stats(self):
        """A dict: slab_size, max_slabs, max_idle, in_use, idle, high_water,
        allocations, frees, hits, misses, bypass."""
        PyThread_acquire_lock(self._lock, WAIT_LOCK)
        values = (self._in_use, self._n_idle, self._high_water, self._allocations,
                  self._frees, self._hits, self._misses, self._bypass)
        PyThread_release_lock(self._lock)
        return {"slab_size": self.slab_size, "max_slabs": self.max_slabs,
                "max_idle": self.max_idle, "in_use": values[0], "idle": values[1],
                "high_water": values[2], "allocations": values[3],
                "frees": values[4], "hits": values[5], "misses": values[6],
                "bypass": values[7]}

    def __repr__(self):
        s = self.stats()
        return ("<BufferPool slab_size=%d in_use=%d idle=%d max_slabs=%d>"
                % (s["slab_size"], s["in_use"], s["idle"], s["max_slabs"]))


@cython.final
@cython.no_gc_clear
cdef class PooledBuffer:
    """A slab leased from a BufferPool (made by ``BufferPool.lease()`` only).

    Supports the buffer protocol (writable); ``release()`` returns the slab
    and fails with BufferError while a memoryview of it is alive."""

    cdef BufferPool _pool
    cdef char* _ptr
    cdef Py_ssize_t _size
    cdef Py_ssize_t _exports

    def __init__(self, *args, **kwargs):
        raise TypeError("PooledBuffer objects are made by BufferPool.lease()")

    def __dealloc__(self):
        if self._ptr != NULL and self._pool is not None:
            self._pool.release(self._ptr)
            self._ptr = NULL

    def __getbuffer__(self, Py_buffer* view, int flags):
        if self._ptr == NULL:
            raise ValueError("buffer released")
        PyBuffer_FillInfo(view, self, self._ptr, self._size, 0, flags)
        self._exports += 1

    def __releasebuffer__(self, Py_buffer* view):
        self._exports -= 1

    def memoryview(self):
        """A writable memoryview of the slab (valid until release())."""
        return memoryview(self)

    @property
    def address(self):
        """The slab's C address (an int)."""
        if self._ptr == NULL:
            raise ValueError("buffer released")
        return <size_t>self._ptr

    @property
    def released(self):
        return self._ptr == NULL

    def __len__(self):
        if self._ptr == NULL:
            raise ValueError("buffer released")
        return self._size

    def release(self):
        """Give the slab back to the pool (idempotent)."""
        if self._ptr == NULL:
            return
        if self._exports:
            raise BufferError("cannot release a PooledBuffer while %d memoryview(s) "
                              "of it are alive" % self._exports)
        cdef char* ptr = self._ptr
        self._ptr = NULL
        self._pool.release(ptr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


#: The pool decoders use when none is given.
DEFAULT_POOL = BufferPool()


# --------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------

cdef inline unsigned long long _read_length(const unsigned char* p, int size,
                                            bint big) noexcept nogil:
    cdef unsigned long long v = 0
    cdef int i
    if big:
        if size == 4:
            return ((<unsigned long long>p[0] << 24) | (<unsigned long long>p[1] << 16)
                    | (<unsigned long long>p[2] << 8) | p[3])
        if size == 2:
            return (<unsigned long long>p[0] << 8) | p[1]
        for i in range(size):
            v = (v << 8) | p[i]
    else:
        if size == 4:
            return ((<unsigned long long>p[3] << 24) | (<unsigned long long>p[2] << 16)
                    | (<unsigned long long>p[1] << 8) | p[0])
        i = size - 1
        while i >= 0:
            v = (v << 8) | p[i]
            i -= 1
    return v


cdef inline void _write_length(unsigned char* p, unsigned long long v, int size,
                               bint big) noexcept nogil:
    cdef int i
    if big:
        i = size - 1
        while i >= 0:
            p[i] = <unsigned char>(v & 0xff)
            v >>= 8
            i -= 1
    else:
        for i in range(size):
            p[i] = <unsigned char>(v & 0xff)
            v >>= 8


cdef int _busy() except -1:
    raise RuntimeError("FrameDecoder is in use: read_from() is receiving into its buffer "
                       "(one decoder serves one reader at a time)")


@cython.final
@cython.no_gc_clear
cdef class FrameDecoder:
    # The first line is the constructor's text signature (see BufferPool).
    """FrameDecoder(fmt=None, *, length_size=None, byteorder=None,
    length_offset=0, length_adjustment=0, initial_bytes_to_strip=None,
    max_frame_size=DEFAULT_MAX_FRAME_SIZE, pool=None, copy=True)\n--\n\n
    Sans-IO length-prefix frame decoder (C).

    ``FrameDecoder(fmt=None, *, length_size=None, byteorder=None,
    length_offset=0, length_adjustment=0, initial_bytes_to_strip=None,
    max_frame_size=DEFAULT_MAX_FRAME_SIZE, pool=None, copy=True)``

    The header is a struct format of one unsigned integer (``"!I"``, the
    default, ``"!H"``, ``"<Q"`` ...) or explicit parameters with Netty's
    meaning.  ``feed(data)`` returns every frame completed by ``data``.
    One decoder per connection; not thread-safe.
    """

    def __cinit__(self):
        self._need = -1

    def __init__(self, fmt=None, *, length_size=None, byteorder=None,
                 length_offset=0, length_adjustment=0,
                 initial_bytes_to_strip=None,
                 max_frame_size=DEFAULT_MAX_FRAME_SIZE, pool=None, copy=True):
        if self._buf != NULL:
            raise RuntimeError("FrameDecoder.__init__ called twice")
        (self.length_size, self.big_endian, self.length_offset,
         self.length_adjustment, self.initial_bytes_to_strip,
         self.max_frame_size, self.header_size) = _resolve_layout(
            fmt, length_size, byteorder, length_offset, length_adjustment,
            initial_bytes_to_strip, max_frame_size)
        self.pool = check_pool(pool, BufferPool, DEFAULT_POOL)
        self.copy = bool(copy)
        # body = value + adjustment must lie in [0, max_frame_size].  In
        # unsigned arithmetic: max_frame_size - length_adjustment can exceed
        # PY_SSIZE_T_MAX (a negative adjustment with an 8-byte field) but
        # never 2**64 - 1 (the limit is clamped to what the field expresses).
        if self.length_adjustment < 0:
            self._min_value = <unsigned long long>(-self.length_adjustment)
            self._max_value = (<unsigned long long>self.max_frame_size
                               + <unsigned long long>(-self.length_adjustment))
        else:
            self._min_value = 0
            self._max_value = <unsigned long long>(self.max_frame_size - self.length_adjustment)

    def __dealloc__(self):
        self._free_storage()

    cpdef FrameDecoder clone(self):
        """A new, empty decoder with this one's layout, pool and copy mode.

        The layout is not validated again: a server validates one
        prototype at start-up and clones it for each connection."""
        cdef FrameDecoder d = FrameDecoder.__new__(FrameDecoder)
        d.length_size = self.length_size
        d.big_endian = self.big_endian
        d.length_offset = self.length_offset
        d.length_adjustment = self.length_adjustment
        d.initial_bytes_to_strip = self.initial_bytes_to_strip
        d.max_frame_size = self.max_frame_size
        d.header_size = self.header_size
        d.pool = self.pool
        d.copy = self.copy
        d._min_value = self._min_value
        d._max_value = self._max_value
        return d

    # -- C API ------------------------------------------------------------

    cdef void _free_storage(self) noexcept:
        """Give back the slab (or free the private buffer)."""
        if self._buf != NULL:
            if self._pooled and self.pool is not None:
                try:
                    self.pool.release(self._buf)
                except RuntimeError:
                    pass
            else:
                PyMem_Free(self._buf)
        self._buf = NULL
        self._cap = self._start = self._end = 0
        self._pooled = False

    cdef void release_buffer(self) noexcept:
        # called at the end of every read (next_frame with nothing left):
        # the fields are stored only when set (no reference counting of None)
        if self._buf != NULL:
            self._free_storage()
        self._need = -1
        if self._big is not None:
            self._big = None
        self._big_fill = 0
        if self._last is not None:
            self._last = None
        if self._queue is not None:
            self._queue = None
        if self._scatter is not None:
            self._scatter = None

    cdef int _fail(self, type cls, str message) except -1:
        self._error = (cls, message)
        self.release_buffer()
        raise cls(message)

    cdef int _out_of_memory(self, Py_ssize_t want) except -1:
        """A buffer could not grow: the stream position is lost, so the
        decoder fails (every later call raises MemoryError too)."""
        self._fail(MemoryError, _memory_message(want, self.pending))

    cdef int _raise_failed(self) except -1:
        cls, message = self._error
        raise cls(message)

    cdef Py_ssize_t _frame_total(self, const unsigned char* header) except -1:
        """Total size of the frame whose header starts at ``header``."""
        cdef unsigned long long value = _read_length(
            header + self.length_offset, self.length_size, self.big_endian)
        cdef Py_ssize_t total
        if value > self._max_value:
            self._fail(FrameTooLarge, _too_large_message(
                value, self.length_adjustment, <object>value + self.length_adjustment,
                self.max_frame_size))
        if value < self._min_value:
            self._fail(FrameError, _negative_message(
                value, self.length_adjustment, <object>value + self.length_adjustment))
        # value + adjustment lies in [0, max_frame_size] here, and
        # header_size + max_frame_size < PY_SSIZE_T_MAX: no overflow (the
        # unsigned sum wraps to the exact body size).
        total = self.header_size + <Py_ssize_t>(
            value + <unsigned long long>self.length_adjustment)
        if total < self.initial_bytes_to_strip:
            self._fail(FrameError, _strip_message(total, self.initial_bytes_to_strip))
        return total

    cdef int _reserve(self, Py_ssize_t want) except -1:
        """Make room for ``want`` bytes from ``_start`` (buffered ones
        included): reuse the slab, compact, or move to a bigger buffer."""
        cdef Py_ssize_t buffered = self._end - self._start
        cdef Py_ssize_t newcap
        cdef char* newbuf = NULL
        cdef bint pooled = False
        if self._buf != NULL:
            if want <= self._cap - self._start:
                return 0
            if want <= self._cap:
                memmove(self._buf, self._buf + self._start, buffered)
                self._start = 0
                self._end = buffered
                return 0
        if want <= self.pool.slab_size and self._buf == NULL:
            newbuf = self.pool.acquire()
            if newbuf != NULL:
                pooled = True
                newcap = self.pool.slab_size
        if newbuf == NULL:
            # grow by doubling (from one slab), never past the frame in
            # progress: callers never ask for more than about twice what is
            # buffered, so memory follows the bytes received
            newcap = max(want, _double(self._cap), self.pool.slab_size)
            if self._need > 0:
                newcap = min(newcap, max(self._need, want))
            newbuf = <char*>PyMem_Malloc(newcap)
            if newbuf == NULL:
                self._out_of_memory(newcap)
            if newcap > self.pool.slab_size:
                self.pool.note_bypass()
        if buffered:
            memcpy(newbuf, self._buf + self._start, buffered)
        self._free_storage()
        self._buf = newbuf
        self._cap = newcap
        self._pooled = pooled
        self._start = 0
        self._end = buffered
        return 0

    cdef int _append(self, const char* data, Py_ssize_t n) except -1:
        if n <= 0:
            return 0
        self._reserve(self._end - self._start + n)
        memcpy(self._buf + self._end, data, n)
        self._end += n
        return 0

    cdef bint _go_big(self, const char* frame_start, Py_ssize_t n) except -1:
        """The frame in progress (``_need`` bytes, ``n`` of them at
        ``frame_start``) does not fit a slab, or its body is at least
        ``BIG_FRAME`` bytes: receive the rest straight into the bytes object
        that will be delivered.  Returns False (and does nothing) if the
        frame is smaller, or its stripped part has not started yet.

        The object starts at one slab (or at twice what has arrived, if
        more, never past the frame) and grows geometrically as the body
        arrives (``_big_reserve``), never past the announced size: a header
        alone reserves one slab, not the body it announces."""
        cdef Py_ssize_t size = self._need - self.initial_bytes_to_strip
        cdef Py_ssize_t fill, cap
        if ((size <= self.pool.slab_size and size < BIG_FRAME)
                or n < self.initial_bytes_to_strip or n >= self._need):
            return False
        fill = n - self.initial_bytes_to_strip
        # twice what has arrived (at least a slab, at most the frame): the
        # next read has room for as much again, never a few bytes
        cap = _double(fill)
        if cap < self.pool.slab_size:
            cap = self.pool.slab_size
        if cap > size:
            cap = size
        try:
            big = PyBytes_FromStringAndSize(NULL, cap)
        except MemoryError:
            self._out_of_memory(cap)
        memcpy(PyBytes_AS_STRING(big), frame_start + self.initial_bytes_to_strip, fill)
        self._big = big
        self._big_fill = fill
        self.pool.note_bypass()
        return True

    cdef int _big_reserve(self, Py_ssize_t want) except -1:
        """Make the large frame's bytes object hold at least ``want`` bytes
        (``want`` <= the frame's size): double it, or grow it to ``want``
        if that is more, never past the frame's size."""
        cdef Py_ssize_t size = self._need - self.initial_bytes_to_strip
        cdef Py_ssize_t cap = PyBytes_GET_SIZE(self._big)
        cdef Py_ssize_t newcap
        cdef PyObject* p
        if want <= cap:
            return 0
        newcap = size if cap > size - cap else cap + cap
        if newcap < want:
            newcap = want
        # _PyBytes_Resize needs the only reference: move ours into p
        p = <PyObject*>self._big
        Py_INCREF(self._big)
        self._big = None
        if _PyBytes_Resize(&p, newcap) < 0:
            # p was freed; replace the bare MemoryError with the decoder's
            PyErr_Clear()
            self._big_fill = 0
            self._out_of_memory(newcap)
        self._big = <object>p
        Py_DECREF(self._big)
        return 0

    cdef int _big_next(self, const char* data, Py_ssize_t length, Py_ssize_t used,
                       Py_ssize_t* consumed, const char** frame,
                       Py_ssize_t* frame_size) except -1:
        cdef Py_ssize_t size = self._need - self.initial_bytes_to_strip
        cdef Py_ssize_t take = min(size - self._big_fill, length - used)
        if take > 0:
            self._big_reserve(self._big_fill + take)
            memcpy(PyBytes_AS_STRING(self._big) + self._big_fill, data + used, take)
            self._big_fill += take
            used += take
        consumed[0] = used
        if self._big_fill < size:
            return 0
        frame[0] = PyBytes_AS_STRING(self._big)
        frame_size[0] = size
        self._note_size(size)
        self._last = self._big     # keeps the frame valid until the next call
        self._big = None
        self._big_fill = 0
        self._need = -1
        return 1

    cdef int next_frame(self, const char* data, Py_ssize_t length,
                        Py_ssize_t* consumed, const char** frame,
                        Py_ssize_t* frame_size) except -1:
        cdef Py_ssize_t buffered, take, total, used = 0
        consumed[0] = 0
        if self._error is not None:
            self._raise_failed()
        self._last = None
        if self._queue is not None:
            return self._next_queued(frame, frame_size)
        if self._big is not None:
            return self._big_next(data, length, 0, consumed, frame, frame_size)
        buffered = self._end - self._start
        if buffered == 0:
            # Fast path: decode in place in the caller's bytes.
            self._start = self._end = 0
            if length >= self.header_size:
                total = self._frame_total(<const unsigned char*>data)
                if length >= total:
                    consumed[0] = total
                    frame[0] = data + self.initial_bytes_to_strip
                    frame_size[0] = total - self.initial_bytes_to_strip
                    if frame_size[0] >= BIG_FRAME or self._predict:
                        self._note_size(frame_size[0])
                    return 1
                self._need = total
                if self._go_big(data, length):
                    self._free_storage()
                    consumed[0] = length
                    return 0
            else:
                self._need = -1
            if length == 0:
                self.release_buffer()
                return 0
            self._append(data, length)
            consumed[0] = length
            return 0
        # A frame is in progress in our buffer: complete it with only the
        # bytes it still needs.
        if self._need < 0:
            if buffered < self.header_size:
                take = min(self.header_size - buffered, length)
                self._append(data, take)
                used = take
                buffered += take
                if buffered < self.header_size:
                    consumed[0] = used
                    return 0
            self._need = self._frame_total(<const unsigned char*>self._buf + self._start)
            if buffered < self._need and self._go_big(self._buf + self._start, buffered):
                self._free_storage()
                return self._big_next(data, length, used, consumed, frame, frame_size)
        if buffered < self._need:
            take = min(self._need - buffered, length - used)
            self._append(data + used, take)
            used += take
            buffered += take
            if buffered < self._need:
                consumed[0] = used
                return 0
        frame[0] = self._buf + self._start + self.initial_bytes_to_strip
        frame_size[0] = self._need - self.initial_bytes_to_strip
        if frame_size[0] >= BIG_FRAME or self._predict:
            self._note_size(frame_size[0])
        self._start += self._need
        self._need = -1
        consumed[0] = used
        return 1

    cdef int _next_queued(self, const char** frame, Py_ssize_t* frame_size) except -1:
        """The next frame a scatter read received whole in its own object."""
        obj = self._queue[self._qpos]
        self._qpos += 1
        if self._qpos == len(self._queue):
            self._queue = None
        frame[0] = PyBytes_AS_STRING(obj)
        frame_size[0] = PyBytes_GET_SIZE(obj)
        self._last = obj
        return 1

    cdef object take_frame_object(self):
        last, self._last = self._last, None
        return last

    # -- scatter reads: a large frame received straight into its bytes ------
    #
    # A frame whose bytes all arrived in one read is copied out of the read
    # buffer into the bytes object delivered (next_frame + PyBytes): for 64
    # KiB frames that copy is most of the decoder's work.  Streams of large
    # frames usually repeat one size (bulk transfer, an echo), so once a
    # large frame was decoded the next read is offered as iovecs: the
    # header into _scatter_hdr, the body straight into a new bytes object of
    # the predicted size, and so on, then the caller's buffer.  A header
    # that announces another size costs the copy it would have cost anyway.
    # Memory: the objects are at most one slab each and ``budget`` in all
    # (the caller's read size), taken for the read and dropped after it
    # unless bytes landed in them; a frame cut short keeps one object of at
    # most one slab, as the big path does.

    cdef void _note_size(self, Py_ssize_t size) noexcept:
        """Remember a decoded frame's body size as the prediction for the
        next reads, if it qualifies for them (see scatter_begin)."""
        if (size >= BIG_FRAME and size <= self.pool.slab_size
                and self.initial_bytes_to_strip == self.header_size
                and self.header_size <= SCATTER_HDR):
            self._predict = size
        else:
            self._predict = 0

    cdef int scatter_begin(self, iovec* iov, int max_iov, Py_ssize_t budget) except -1:
        cdef Py_ssize_t p = self._predict, hs = self.header_size
        cdef Py_ssize_t k, i
        cdef list objs
        if p <= 0:
            return 0       # the common case, first: small frames
        if self._error is not None:
            self._raise_failed()
        self._last = None
        self._scatter = None
        if (self._big is not None or self._end != self._start or self._reading
                or self._queue is not None):
            return 0
        k = budget // p
        if k > SCATTER_MAX:
            k = SCATTER_MAX
        if k > max_iov // 2:
            k = max_iov // 2
        if k < 1:
            k = 1 if max_iov >= 2 else 0
        objs = []
        for i in range(k):
            obj = PyBytes_FromStringAndSize(NULL, p)
            objs.append(obj)
            iov[2 * i].iov_base = self._scatter_hdr + i * hs
            iov[2 * i].iov_len = <size_t>hs
            iov[2 * i + 1].iov_base = PyBytes_AS_STRING(obj)
            iov[2 * i + 1].iov_len = <size_t>p
        if k:
            self._scatter = objs
        return <int>(2 * k)

    cdef Py_ssize_t scatter_done(self, Py_ssize_t n, const char* tail_buf) except -1:
        cdef Py_ssize_t p = self._predict, hs = self.header_size, r = n, got, i, j, take
        cdef Py_ssize_t k
        cdef const char* hdr
        cdef unsigned long long value
        cdef list objs = self._scatter
        cdef list queue = []
        self._scatter = None
        if objs is None or n <= 0:
            return 0
        k = len(objs)
        for i in range(k):
            if r <= 0:
                break
            hdr = self._scatter_hdr + i * hs
            if r < hs:
                # a header cut short: buffered as any partial header
                self._append(hdr, r)
                self._need = -1
                r = 0
                break
            value = _read_length(<const unsigned char*>hdr + self.length_offset,
                                 self.length_size, self.big_endian)
            if (value > self._max_value or value < self._min_value
                    or <Py_ssize_t>(value + <unsigned long long>self.length_adjustment) != p):
                # not the predicted frame (or a bad header): the stream from
                # this header on goes to the buffer, for next_frame (which
                # reports a bad header) -- one copy, as without the guess
                self._predict = 0
                self._reserve(r)
                j = i
                while r > 0:
                    if j < k:
                        take = hs if r > hs else r
                        self._append(self._scatter_hdr + j * hs, take)
                        r -= take
                        take = p if r > p else r
                        self._append(PyBytes_AS_STRING(objs[j]), take)
                    else:
                        take = r
                        self._append(tail_buf, take)
                    r -= take
                    j += 1
                break
            got = r - hs
            if got >= p:
                queue.append(objs[i])
                r -= hs + p
                continue
            # the frame is cut short: its object is the big frame in progress
            self._big = objs[i]
            self._big_fill = got
            self._need = hs + p
            self.pool.note_bypass()
            r = 0
            break
        if queue:
            self._queue = queue
            self._qpos = 0
        return r

    cdef Py_ssize_t get_write_buffer(self, Py_ssize_t size_hint, char** ptr) except -1:
        cdef Py_ssize_t buffered, want, grow
        if self._error is not None:
            self._raise_failed()
        self._last = None
        if self._big is None and self._need > 0 and self._end > self._start:
            if self._go_big(self._buf + self._start, self._end - self._start):
                self._free_storage()
        if self._big is not None:
            # the room left in the large frame's object; when it is full
            # (and the frame is not), it doubles first
            if (self._big_fill == PyBytes_GET_SIZE(self._big)
                    and self._big_fill < self._need - self.initial_bytes_to_strip):
                self._big_reserve(self._big_fill + 1)
            ptr[0] = PyBytes_AS_STRING(self._big) + self._big_fill
            return PyBytes_GET_SIZE(self._big) - self._big_fill
        # the hint is honoured up to one slab (asyncio's sizehint is only a
        # recommendation); a larger one would let a caller reserve anything
        if size_hint < 1:
            size_hint = 1
        elif size_hint > self.pool.slab_size:
            size_hint = self.pool.slab_size
        buffered = self._end - self._start
        if buffered == 0:
            self._start = self._end = 0
        elif self._start and self._cap - self._end < (self._cap >> 2):
            memmove(self._buf, self._buf + self._start, buffered)
            self._start = 0
            self._end = buffered
        want = buffered + size_hint
        if self._need > want:
            # the rest of the frame in progress, but at most one slab or as
            # much again as is buffered: memory follows the bytes received,
            # not the bytes a header announces
            grow = buffered if buffered > self.pool.slab_size else self.pool.slab_size
            want = self._need if grow >= self._need - buffered else buffered + grow
        self._reserve(want)
        ptr[0] = self._buf + self._end
        return self._cap - self._end

    cdef int write_done(self, Py_ssize_t nbytes) except -1:
        cdef Py_ssize_t room
        if self._error is not None:
            self._raise_failed()
        if self._big is not None:
            room = PyBytes_GET_SIZE(self._big) - self._big_fill
        elif self._buf != NULL:
            room = self._cap - self._end
        else:
            room = 0
        if nbytes < 0 or nbytes > room:
            raise ValueError("buffer_updated(%d): not within the buffer from "
                             "get_buffer() (%d bytes)" % (nbytes, room))
        if self._big is not None:
            self._big_fill += nbytes
        else:
            self._end += nbytes
        return 0

    cdef int check_eof(self) except -1:
        cdef Py_ssize_t pending
        if self._error is not None:
            self._raise_failed()
        pending = self._end - self._start
        if self._big is not None:
            pending = self.initial_bytes_to_strip + self._big_fill
        if pending:
            self._fail(IncompleteFrame, _incomplete_message(
                pending, self._need, self.header_size))
        self.release_buffer()
        return 0

    # -- Python API -------------------------------------------------------

    @property
    def byteorder(self):
        return "big" if self.big_endian else "little"

    @property
    def pending(self):
        """Bytes buffered for the frame in progress."""
        if self._big is not None:
            return self.initial_bytes_to_strip + self._big_fill
        return self._end - self._start

    @property
    def failed(self):
        """True once a bad header was seen (every call then raises)."""
        return self._error is not None

    cdef list _drain(self, const char* data, Py_ssize_t length, object source):
        """Every frame from the buffer then ``data``; ``source`` is the
        object ``data`` belongs to (for zero-copy views) or None."""
        cdef list out = []
        cdef const char* frame
        cdef const char* p
        cdef Py_ssize_t frame_size, used, total, pos = 0
        cdef Py_ssize_t hs = self.header_size, strip = self.initial_bytes_to_strip
        cdef unsigned long long value
        cdef bint copy = self.copy or source is None
        cdef object view = None
        try:
            while True:
                if (copy and self._end == self._start and self._big is None
                        and self._queue is None):
                    # Hot loop: frames whole inside ``data``, nothing
                    # buffered and no large frame in progress (its body is
                    # not headers).  Any header it does not accept (bad, or
                    # a frame cut by the end of data) goes to next_frame,
                    # which reports or buffers it.
                    while length - pos >= hs:
                        p = data + pos
                        value = _read_length(<const unsigned char*>p + self.length_offset,
                                             self.length_size, self.big_endian)
                        if value > self._max_value or value < self._min_value:
                            break
                        # body in [0, max_frame_size]: no overflow (see
                        # _frame_total)
                        total = hs + <Py_ssize_t>(
                            value + <unsigned long long>self.length_adjustment)
                        if total > length - pos or total < strip:
                            break
                        out.append(PyBytes_FromStringAndSize(p + strip, total - strip))
                        pos += total
                if not self.next_frame(data + pos, length - pos, &used, &frame, &frame_size):
                    break
                pos += used
                if self._last is not None:
                    out.append(self.take_frame_object())
                elif (not copy and frame >= data and frame < data + length):
                    if view is None:
                        view = memoryview(source)
                        if view.ndim != 1 or view.format != "B":
                            view = view.cast("B")
                    out.append(view[frame - data:frame - data + frame_size])
                else:
                    out.append(PyBytes_FromStringAndSize(frame, frame_size))
        except FrameError:
            if out:
                return out
            raise
        return out

    def feed(self, data):
        """Add ``data`` (any bytes-like object) to the stream; return the list
        of frames it completed (``bytes``; with ``copy=False`` the frames that
        lie whole inside ``data`` are memoryviews of it, valid as long as
        ``data`` is unchanged).  A bad header raises FrameError /
        FrameTooLarge; frames completed earlier in the same ``data`` are
        returned first and the error is raised by the next call."""
        cdef Py_buffer view
        if self._reading:
            _busy()
        if self._error is not None:
            self._raise_failed()
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self._drain(<const char*>view.buf, view.len, data)
        finally:
            PyBuffer_Release(&view)

    def get_buffer(self, Py_ssize_t sizehint=-1):
        """A writable memoryview to read the stream into (asyncio's
        ``BufferedProtocol.get_buffer``): a pooled slab, or a larger buffer
        for a frame bigger than a slab.  It is valid only until the next
        call on this decoder; do not keep it."""
        cdef char* ptr
        if self._reading:
            _busy()
        cdef Py_ssize_t n = self.get_write_buffer(sizehint, &ptr)
        return PyMemoryView_FromMemory(ptr, n, PyBUF_WRITE)

    def buffer_updated(self, Py_ssize_t nbytes):
        """``nbytes`` were written into ``get_buffer()``; return the frames
        they completed."""
        if self._reading:
            _busy()
        self.write_done(nbytes)
        return self._drain(NULL, 0, None)

    def read_from(self, sock):
        """Receive once from ``sock`` straight into the decoder's pooled
        buffer (``sock.recv_into``); return the frames completed, or None at
        end of stream (IncompleteFrame if it ended inside a frame).  Socket
        errors and timeouts propagate."""
        cdef char* ptr
        cdef iovec iov[8]
        cdef int cnt
        if self._reading:
            _busy()
        if _SCATTER_SOCKETS and type(sock) is _socket_type:
            cnt = self.scatter_begin(iov, 8, self.pool.slab_size)
            if cnt:
                return self._scatter_from(sock, iov, cnt)
        cdef Py_ssize_t n = self.get_write_buffer(0, &ptr)
        view = PyMemoryView_FromMemory(ptr, n, PyBUF_WRITE)
        # recv_into releases the GIL: another thread (or a socket object that
        # calls back into this decoder) must not move or free the buffer
        # while the kernel writes into it
        self._reading = True
        try:
            n = sock.recv_into(view)
        finally:
            self._reading = False
            view.release()
        if n == 0:
            self.check_eof()
            return None
        self.write_done(n)
        return self._drain(NULL, 0, None)

    cdef object _scatter_from(self, sock, iovec* iov, int cnt):
        """read_from with the iovecs of scatter_begin (one recvmsg_into),
        then a slab-sized bytes object of its own (not the decoder's buffer,
        which scatter_done may fill while it reads the tail)."""
        cdef char* ptr
        cdef Py_ssize_t n, room = self.pool.slab_size, tail
        cdef int i
        views = []
        try:
            spare = PyBytes_FromStringAndSize(NULL, room)
            ptr = PyBytes_AS_STRING(spare)
            for i in range(cnt):
                views.append(PyMemoryView_FromMemory(
                    <char*>iov[i].iov_base, <Py_ssize_t>iov[i].iov_len, PyBUF_WRITE))
            views.append(PyMemoryView_FromMemory(ptr, room, PyBUF_WRITE))
            self._reading = True
            try:
                n = sock.recvmsg_into(views)[0]
            finally:
                self._reading = False
                for v in views:
                    v.release()
        except BaseException:
            self._scatter = None
            raise
        if n == 0:
            self._scatter = None
            self.check_eof()
            return None
        tail = self.scatter_done(n, ptr)
        return self._drain(ptr, tail, None)

    def eof(self):
        """End of stream: raise IncompleteFrame if a partial frame is
        buffered."""
        if self._reading:
            _busy()
        self.check_eof()

    def close(self):
        """Drop any buffered bytes and give the buffer back to the pool."""
        if self._reading:
            _busy()
        self.release_buffer()

    def __repr__(self):
        return ("<FrameDecoder length_size=%d byteorder=%s max_frame_size=%d pending=%d>"
                % (self.length_size, self.byteorder, self.max_frame_size, self.pending))


# --------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------

@cython.final
cdef class FrameEncoder:
    # The first line is the constructor's text signature (see BufferPool).
    """FrameEncoder(fmt=None, *, length_size=None, byteorder=None,
    length_offset=0, length_adjustment=0,
    max_frame_size=DEFAULT_MAX_FRAME_SIZE)\n--\n\n
    Writes the header described as for FrameDecoder (without
    ``initial_bytes_to_strip``: the payload is the body)."""

    def __init__(self, fmt=None, *, length_size=None, byteorder=None,
                 length_offset=0, length_adjustment=0,
                 max_frame_size=DEFAULT_MAX_FRAME_SIZE):
        (self.length_size, self.big_endian, self.length_offset,
         self.length_adjustment, _strip, self.max_frame_size,
         self.header_size) = _resolve_layout(
            fmt, length_size, byteorder, length_offset, length_adjustment,
            None, max_frame_size)

    @property
    def byteorder(self):
        return "big" if self.big_endian else "little"

    cdef int _field_value(self, Py_ssize_t payload_size,
                          unsigned long long* value) except -1:
        """The length field for a payload of ``payload_size`` bytes, checked
        (in the pure twin's order) before any arithmetic: field =
        payload_size - length_adjustment, computed unsigned (with a negative
        adjustment it can exceed PY_SSIZE_T_MAX, never 2**64 - 1)."""
        if payload_size < 0:
            raise ValueError(payload_size_message(payload_size))
        if payload_size > self.max_frame_size:
            raise FrameTooLarge(payload_too_large_message(payload_size, self.max_frame_size))
        if self.length_adjustment > payload_size:
            raise FrameError(payload_too_short_message(payload_size, self.length_adjustment))
        if self.length_adjustment < 0:
            value[0] = (<unsigned long long>payload_size
                        + <unsigned long long>(-self.length_adjustment))
        else:
            value[0] = <unsigned long long>(payload_size - self.length_adjustment)
        if self.length_size < 8 and (value[0] >> (8 * self.length_size)):
            raise FrameTooLarge(_field_too_small_message(value[0], self.length_size))
        return 0

    cdef Py_ssize_t write_header(self, Py_ssize_t payload_size, char* out) except -1:
        cdef unsigned long long value
        self._field_value(payload_size, &value)
        if self.length_offset:
            memset(out, 0, self.length_offset)
        _write_length(<unsigned char*>out + self.length_offset, value,
                      self.length_size, self.big_endian)
        return self.header_size

    def header(self, payload_size, prefix=None):
        """The header for a payload of ``payload_size`` bytes; ``prefix`` is
        the ``length_offset`` bytes before the length field (zeros if None)."""
        payload_size = _index("payload_size", payload_size)
        # checked as Python ints first: any int gives the pure twin's error
        # (never an OverflowError from the conversion to Py_ssize_t)
        if payload_size < 0:
            raise ValueError(payload_size_message(payload_size))
        if payload_size > self.max_frame_size:
            raise FrameTooLarge(payload_too_large_message(payload_size, self.max_frame_size))
        out = PyBytes_FromStringAndSize(NULL, self.header_size)
        self.write_header(payload_size, PyBytes_AS_STRING(out))
        if prefix is not None and len(prefix) != self.length_offset:
            raise ValueError(prefix_message(self.length_offset, len(prefix)))
        if prefix:
            return bytes(prefix) + out[self.length_offset:]
        return out

    def encode(self, payload, prefix=None):
        """Header + payload as one ``bytes``."""
        cdef Py_buffer view
        cdef char* p
        cdef unsigned long long value
        if prefix is not None:
            with memoryview(payload) as v:
                return self.header(v.nbytes, prefix) + v.tobytes()
        try:
            PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        except BufferError:
            # not C-contiguous: as the pure twin, through a memoryview
            with memoryview(payload) as v:
                return self.header(v.nbytes) + v.tobytes()
        try:
            # checked before the size is added to header_size: then
            # header_size + len <= header_size + max_frame_size < PY_SSIZE_T_MAX
            self._field_value(view.len, &value)
            out = PyBytes_FromStringAndSize(NULL, self.header_size + view.len)
            p = PyBytes_AS_STRING(out)
            self.write_header(view.len, p)
            memcpy(p + self.header_size, view.buf, view.len)
            return out
        finally:
            PyBuffer_Release(&view)


cdef FrameEncoder _DEFAULT_ENCODER = FrameEncoder()


def encode_frame(payload, fmt=None, **layout):
    """``payload`` (bytes-like) with a length header: ``"!I"`` by default,
    or the header described by ``fmt``/``layout`` as for FrameEncoder.
    Raises FrameTooLarge if the header cannot express the length."""
    if fmt is None and not layout:
        return _DEFAULT_ENCODER.encode(payload)
    return FrameEncoder(fmt, **layout).encode(payload)
