# cython: language_level=3
#
# C API of the PROXY protocol header parser: ``from cserver._proxy cimport ProxyParser``.
#
# Used by the multiplexing loop (cserver/_proxystage.pxi): one parser per
# accepted connection when ``proxy_protocol`` is set, before
# ``connection_made``, as below.  Fields are private (they may change, which
# only needs a rebuild of the cimporting module); the cdef METHODS are the
# contract.
#
# ProxyParser -- one PROXY protocol v1/v2 header, sans IO (see _proxy.pyx
# for what is checked where, and what is held).
#
#     Py_ssize_t feed_c(self, const char* data, Py_ssize_t n) except -1
#         Consume header bytes from ``data[:n]`` (``data`` may be NULL when
#         ``n`` is 0) and return how many belonged to the header; the rest,
#         ``data[used:n]``, is the connection's payload, never looked at.
#         Returns 0 once done.  Raises ProxyHeaderError (a ValueError) on
#         the first byte that breaks the spec, and on every call afterwards;
#         MemoryError if the header's buffer cannot grow (then it may be
#         called again).  Plain C per byte: no Python object is made on the
#         way, except the message of an error, the UTF-8 checks of the
#         AUTHORITY, NETNS and SSL string TLVs (one decode each, once the
#         header is complete).
#     bint is_done(self) noexcept
#         The header is complete and valid.
#     bint is_failed(self) noexcept
#         A violation was seen.
#     Py_ssize_t needed_c(self) noexcept
#         A lower bound on the bytes still needed (0 when done or failed):
#         a reader that reads at most this many never reads past the header.
#     object source_c(self)
#         What ``take_result().source`` is (None before ``is_done()``, and for
#         LOCAL, UNKNOWN and UNSPEC headers), built from the C fields without
#         the ProxyInfo (one address tuple: about a fifth of its cost).
#     object take_result(self)
#         The ProxyInfo (built on the first call, after which the header's
#         bytes are freed), or None before ``is_done()``.
#
#     Loop (on each read of a new connection):
#         used = parser.feed_c(buf, n)          # raises: close the connection
#         if parser.is_done():
#             source = parser.source_c()        # client_address = source or peer
#             # (the ProxyInfo is built later, on get_extra_info("proxy"))
#             ... hand buf[used:n] to the next stage (TLS, framing) ...
#         # else: every byte was header; read again (under the header deadline)
#
#     Memory: the parser object has a 256-byte inline buffer (enough for any
#     v1 line and any v2 header up to 240 bytes after the fixed 16); a
#     longer v2 header gets a PyMem buffer that grows by doubling as bytes
#     arrive, never beyond 16 + the announced length (<= 65551).  LOCAL and
#     UNSPEC headers hold 16 bytes and skip the rest.

cdef class ProxyParser:
    cdef int _version                 # 0 undecided ("any"), 1, 2
    cdef int _state                   # 0 reading, 1 done, 2 failed
    cdef unsigned char* _buf          # _inline or a PyMem buffer
    cdef Py_ssize_t _cap              # size of _buf
    cdef Py_ssize_t _held             # bytes in _buf
    cdef Py_ssize_t _got              # header bytes consumed
    cdef Py_ssize_t _total            # v2: 16 + length once known, else -1
    cdef bint _skip                   # v2 LOCAL/UNSPEC: the block is skipped
    cdef int _command
    cdef int _family
    cdef int _protocol
    cdef int _v1_family               # 0 UNKNOWN, 4 TCP4, 6 TCP6
    cdef int _sport
    cdef int _dport
    cdef unsigned char _src[16]
    cdef unsigned char _dst[16]
    cdef object _mode
    cdef object _error                # the message, once failed
    cdef object _result
    cdef unsigned char _inline[256]

    cdef Py_ssize_t feed_c(self, const char* data, Py_ssize_t n) except -1
    cdef bint is_done(self) noexcept
    cdef bint is_failed(self) noexcept
    cdef Py_ssize_t needed_c(self) noexcept
    cdef object source_c(self)
    cdef object take_result(self)

    cdef int _fail(self, str kind, tuple args) except -1
    cdef int _reserve(self, Py_ssize_t size) except -1
    cdef void _release(self) noexcept
    cdef Py_ssize_t _feed_v1(self, const unsigned char* p, Py_ssize_t n) except -1
    cdef Py_ssize_t _feed_v2(self, const unsigned char* p, Py_ssize_t n) except -1
    cdef int _v1_address(self, const unsigned char* p, Py_ssize_t n, int family,
                         unsigned char* out, str which) except -1
    cdef int _parse_v1(self) except -1
    cdef int _check_v2(self) except -1
    cdef int _check_ssl(self, Py_ssize_t start, Py_ssize_t end) except -1
    cdef object _build(self)
    cdef object _build_ssl(self, Py_ssize_t start, Py_ssize_t end)


# A new parser for version 0 ("any"), 1 or 2 (no Python call; for the loop).
cdef ProxyParser new_parser(int version)
