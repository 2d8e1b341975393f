# cython: language_level=3
#
# C API of the framing layer: ``from cserver._framing cimport ...``.
#
# This interface is stable: the multiplexing server cimports it and decodes
# frames in place inside its C loop.  Fields below are private (they may be
# added to, which only needs a rebuild of the cimporting module); the cdef
# METHODS are the contract.
#
# BufferPool -- a bounded, thread-safe pool of fixed-size C slabs.
#
#     char* acquire(self) noexcept
#         A slab of ``self.slab_size`` bytes, or NULL (no exception set) when
#         ``max_slabs`` slabs are out or memory is short (counted as a miss):
#         the caller then uses a private allocation of its own and may report
#         it with ``note_bypass``.  Never returns the same slab to two owners.
#     int release(self, char* slab) except -1
#         Give back a slab obtained from ``acquire`` (exactly once).  Surplus
#         idle slabs beyond ``max_idle`` are freed.  Raises RuntimeError on a
#         release with no slab out.
#     void note_bypass(self) noexcept
#         Count one large buffer that bypassed the pool (in ``stats()``).
#
#     Every method holds the GIL and an internal lock; none runs Python code.
#
# FrameDecoder -- the sans-IO length-prefix decoder (see _framing.pyx for the
# header parameters and their Netty/tokio meaning).
#
#     int next_frame(self, const char* data, Py_ssize_t length,
#                    Py_ssize_t* consumed, const char** frame,
#                    Py_ssize_t* frame_size) except -1
#         Decode the next frame from what the decoder has buffered followed by
#         ``data[:length]`` (``data`` may be NULL when ``length`` is 0).
#         ``consumed[0]`` is set to the number of bytes of ``data`` used.
#         Returns 1 when a frame is ready: ``frame[0]``/``frame_size[0]`` is
#         the frame with the header stripped as configured; it points into
#         ``data`` (zero copy, the common case) or into the decoder's buffer,
#         and stays valid until the next call on this decoder (or until the
#         caller reuses ``data``).  Returns 0 when every byte of ``data`` was
#         consumed (the tail of an incomplete frame is copied into the
#         decoder's pooled buffer) and no frame is ready.  Raises FrameError /
#         FrameTooLarge on a bad header, as soon as the header is complete and
#         before its payload is buffered; afterwards every call raises.
#         Raises MemoryError when a buffer cannot grow (the decoder is then
#         failed too: every later call raises MemoryError).
#         Loop:
#             pos = 0
#             while dec.next_frame(buf + pos, n - pos, &used, &f, &flen):
#                 pos += used
#                 ... handle f[:flen] ...
#             # here every byte of buf[:n] is consumed
#
#         A frame larger than a pool slab, or with a body of at least
#         BIG_FRAME (16 KiB) bytes, that is cut by the end of ``data`` is
#         received straight into a ``bytes`` object; ``frame[0]`` then points
#         into it and:
#     object take_frame_object(self)
#         returns that ``bytes`` object (the frame, exactly) right after
#         ``next_frame`` returned it, so the caller can keep it without a
#         copy; None when the frame was not delivered as an object.
#
#     bint scatter_wanted(self) noexcept   (inline)
#         Whether scatter_begin may offer iovecs (a size is predicted): a
#         loop checks it on every read, scatter_begin only when it is true.
#     int scatter_begin(self, iovec* iov, int max_iov, Py_ssize_t budget) except -1
#         Zero-copy reads of large frames.  When nothing is buffered and the
#         last frame decoded had a body of at least BIG_FRAME (16 KiB) bytes
#         and at most one slab (and the header is exactly what is stripped),
#         fills ``iov`` with up to ``max_iov // 2`` (at most 4) pairs (room
#         for a header, a new ``bytes`` object of that body size) whose
#         bodies add up to at most ``budget`` bytes (at least one pair), and
#         returns the number of iovecs; else returns 0 and the caller reads
#         as usual.  The caller appends its own buffer as the last iovec and
#         reads with readv/recvmsg, then must call:
#     Py_ssize_t scatter_done(self, Py_ssize_t n, const char* tail_buf) except -1
#         ``n`` bytes arrived over those iovecs, then at ``tail_buf`` (call it
#         with n <= 0 too, after a failed read: it drops the objects).  The
#         frames that came whole in their objects are queued in the decoder
#         (no copy: ``next_frame`` returns them first, with
#         ``take_frame_object``), a frame cut short stays in the decoder, and
#         when a header did not announce the predicted size (or is bad) the
#         stream from it on is copied into the decoder's buffer (next_frame
#         then decodes it, or reports the bad header).  Returns how many
#         bytes at ``tail_buf`` are still to decode: drain with
#         ``next_frame(tail_buf, returned, ...)`` as after any read (with
#         ``next_frame(NULL, 0, ...)`` when it returns 0).  Raises only
#         MemoryError.
#
#     Py_ssize_t get_write_buffer(self, Py_ssize_t size_hint, char** ptr) except -1
#         Reading straight into the decoder (asyncio's get_buffer): returns
#         the number of writable bytes at ``ptr[0]`` (>= 1).  The buffer is
#         the connection's pool slab (at least ``size_hint`` bytes when that
#         fits a slab; the hint is capped at one slab); for a frame larger
#         than a slab it is the room left in that frame's ``bytes`` object,
#         which starts at one slab and doubles as the body arrives (never
#         past the frame's size, never beyond what is needed for the frame).
#         Memory follows the bytes received: a header alone reserves at most
#         one slab, whatever size it announces.
#     int write_done(self, Py_ssize_t nbytes) except -1
#         ``nbytes`` bytes were written at ``ptr`` (asyncio's buffer_updated).
#         Then drain with ``next_frame(NULL, 0, ...)`` until it returns 0.
#     int check_eof(self) except -1
#         End of stream: raises IncompleteFrame if a partial frame is
#         buffered, else returns 0.
#     void release_buffer(self) noexcept
#         Give the buffer back to the pool now (drops any partial frame).
#         Called by close() and on deallocation; ``next_frame`` also returns
#         the slab by itself whenever it returns 0 with nothing buffered, so
#         an idle connection holds no slab.
#
# FrameEncoder -- the header writer for the same header description.
#
#     Py_ssize_t write_header(self, Py_ssize_t payload_size, char* out) except -1
#         Write the header for a payload of ``payload_size`` bytes at ``out``
#         (which has room for ``self.header_size`` bytes) and return
#         ``header_size``.  Raises FrameTooLarge if the length does not fit
#         the header or exceeds ``max_frame_size``.

cimport cython
from cpython.pythread cimport PyThread_type_lock
from posix.uio cimport iovec


@cython.final
cdef class BufferPool:
    cdef readonly Py_ssize_t slab_size
    cdef readonly Py_ssize_t max_slabs
    cdef readonly Py_ssize_t max_idle
    cdef char** _idle
    cdef Py_ssize_t _n_idle
    cdef Py_ssize_t _in_use
    cdef Py_ssize_t _high_water
    cdef Py_ssize_t _allocations
    cdef Py_ssize_t _frees
    cdef Py_ssize_t _hits
    cdef Py_ssize_t _misses
    cdef Py_ssize_t _bypass
    cdef PyThread_type_lock _lock

    cdef char* acquire(self) noexcept
    cdef int release(self, char* slab) except -1
    cdef void note_bypass(self) noexcept


@cython.final
@cython.no_gc_clear
cdef class FrameDecoder:
    # configuration, fixed at construction
    cdef readonly int length_size
    cdef readonly bint big_endian
    cdef readonly Py_ssize_t length_offset
    cdef readonly Py_ssize_t length_adjustment
    cdef readonly Py_ssize_t initial_bytes_to_strip
    cdef readonly Py_ssize_t max_frame_size
    cdef readonly Py_ssize_t header_size
    cdef readonly bint copy
    cdef readonly BufferPool pool
    # buffered bytes are _buf[_start:_end]; _cap bytes are allocated
    cdef char* _buf
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _start
    cdef Py_ssize_t _end
    cdef bint _pooled
    # total size (header included) of the frame in progress, -1 if its
    # header is not complete yet
    cdef Py_ssize_t _need
    # accepted range of the raw length field (after the limit is clamped)
    cdef unsigned long long _min_value
    cdef unsigned long long _max_value
    # (class, message) of the error that failed the decoder, or None
    cdef object _error
    # a frame larger than a slab is received straight into the bytes object
    # that will be delivered: _big (bytes, or None), _big_fill bytes written.
    # _big starts at one slab and grows (doubling, _PyBytes_Resize) as the
    # body arrives, up to the frame's size: len(_big) is its capacity
    cdef object _big
    cdef Py_ssize_t _big_fill
    # the last big frame delivered by next_frame (kept until the next call)
    cdef object _last
    # scatter reads (scatter_begin/scatter_done): the body size the next
    # frames are expected to have (0: no prediction), the bytes objects
    # offered to the last scatter_begin, and where their headers land
    cdef Py_ssize_t _predict
    cdef list _scatter
    # frames a scatter read received whole, not yet returned by next_frame:
    # _queue[_qpos:] (None when there are none)
    cdef list _queue
    cdef Py_ssize_t _qpos
    cdef char _scatter_hdr[64]
    # read_from() is receiving into the buffer (sock.recv_into releases the
    # GIL): every other call that could move or free it is refused meanwhile
    cdef bint _reading

    cpdef FrameDecoder clone(self)
    cdef int next_frame(self, const char* data, Py_ssize_t length,
                        Py_ssize_t* consumed, const char** frame,
                        Py_ssize_t* frame_size) except -1
    cdef Py_ssize_t get_write_buffer(self, Py_ssize_t size_hint, char** ptr) except -1
    cdef int write_done(self, Py_ssize_t nbytes) except -1
    cdef int check_eof(self) except -1
    cdef void release_buffer(self) noexcept
    cdef object take_frame_object(self)
    cdef int scatter_begin(self, iovec* iov, int max_iov, Py_ssize_t budget) except -1
    # (inline: a loop asks on every read before it calls scatter_begin)
    cdef inline bint scatter_wanted(self) noexcept:
        return self._predict > 0
    cdef Py_ssize_t scatter_done(self, Py_ssize_t n, const char* tail_buf) except -1
    # private
    cdef void _note_size(self, Py_ssize_t size) noexcept
    cdef int _next_queued(self, const char** frame, Py_ssize_t* frame_size) except -1
    cdef int _fail(self, type cls, str message) except -1
    cdef int _out_of_memory(self, Py_ssize_t want) except -1
    cdef int _raise_failed(self) except -1
    cdef Py_ssize_t _frame_total(self, const unsigned char* header) except -1
    cdef int _reserve(self, Py_ssize_t want) except -1
    cdef void _free_storage(self) noexcept
    cdef bint _go_big(self, const char* frame_start, Py_ssize_t n) except -1
    cdef int _big_reserve(self, Py_ssize_t want) except -1
    cdef int _big_next(self, const char* data, Py_ssize_t length, Py_ssize_t used,
                       Py_ssize_t* consumed, const char** frame,
                       Py_ssize_t* frame_size) except -1
    cdef int _append(self, const char* data, Py_ssize_t n) except -1
    cdef list _drain(self, const char* data, Py_ssize_t length, object source)
    cdef object _scatter_from(self, object sock, iovec* iov, int cnt)


@cython.final
cdef class FrameEncoder:
    cdef readonly int length_size
    cdef readonly bint big_endian
    cdef readonly Py_ssize_t length_offset
    cdef readonly Py_ssize_t length_adjustment
    cdef readonly Py_ssize_t max_frame_size
    cdef readonly Py_ssize_t header_size
    cdef Py_ssize_t write_header(self, Py_ssize_t payload_size, char* out) except -1
    # private
    cdef int _field_value(self, Py_ssize_t payload_size,
                          unsigned long long* value) except -1
