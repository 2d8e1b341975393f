# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""C twin of ``cserver._proxy_py``: a sans-IO PROXY protocol (v1 and v2)
header parser (spec: HAProxy's doc/proxy-protocol.txt).

The multiplexing loop (``cserver._loop``, ``_proxystage.pxi``) runs one
parser per accepted connection when ``proxy_protocol`` is set.  The C API (for ``cimport``) is
documented at the top of ``_proxy.pxd``; the behaviour, what is checked at
which byte and what is held, in ``_proxy_py``'s docstring and
docs/proxy.md: the twins must agree byte for byte (same results, same
errors with the same messages at the same point, whatever the split of the
input), and tests/unit/test_proxy.py and tests/fuzz/fuzz_proxy.py check it.

Design
------
Every byte is handled by plain C: the signatures are compared byte by byte
as they arrive, the v1 line is scanned for its CRLF, and the v2 block is
copied with memcpy into a buffer that grows with the bytes received (the
256-byte inline one first, then a PyMem buffer doubling up to the header's
announced size).  The messages of the errors come from the pure twin's
``_message`` (one source), called only on the error path.  The ProxyInfo
result is built on demand (``result``, ``take_result``), from the bytes
held, which are then freed: the loop may look at a done parser's C fields
without building anything.
"""

cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from libc.stdint cimport uint32_t
from libc.string cimport memcmp, memcpy

from cserver._proxy_py import (
    ProxyHeaderError, ProxyInfo, ProxySSL, _message, V2_SIGNATURE, V1_MAX_LENGTH,
    V2_MAX_LENGTH,
)

__all__ = ["ProxyParser", "ProxyInfo", "ProxySSL", "ProxyHeaderError", "parse_header",
           "V2_SIGNATURE", "V1_MAX_LENGTH", "V2_MAX_LENGTH"]

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    int AF_INET
    int AF_INET6

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char* src, void* dst)
    const char* inet_ntop(int af, const void* src, char* dst, socklen_t size)

include "_inet.pxi"

cdef extern from "Python.h":
    object PyUnicode_DecodeFSDefaultAndSize(const char* s, Py_ssize_t size)
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)
    object PyUnicode_FromString(const char* s)
    object PyUnicode_DecodeASCII(const char* s, Py_ssize_t size, const char* errors)


cdef enum:
    _V1_MAX = 107
    _V1_MIN = 15
    _FIXED = 16
    _INLINE = 256
    # TLV types
    _ALPN = 0x01
    _AUTHORITY = 0x02
    _CRC32C = 0x03
    _UNIQUE_ID = 0x05
    _SSL = 0x20
    _NETNS = 0x30
    _SSL_CLIENT_CERT = 0x28
    _UNIQUE_ID_MAX = 128

cdef const char* _SIG1 = b"PROXY "
cdef const char* _SIG2 = b"\r\n\r\n\x00\r\nQUIT\n"

# Names for messages, by TLV type / SSL sub-type (only the decoded ones).
_TLV_NAMES = {0x01: "ALPN", 0x02: "AUTHORITY", 0x03: "CRC32C", 0x05: "UNIQUE_ID",
              0x20: "SSL", 0x30: "NETNS"}
_SSL_NAMES = {0x21: "version", 0x22: "cn", 0x23: "cipher", 0x24: "sig_alg",
              0x25: "key_alg", 0x26: "group", 0x27: "sig_scheme", 0x28: "client_cert"}
_FAMILY_NAMES = {1: "INET", 2: "INET6", 3: "UNIX"}
_MODES = {"any": 0, "v1": 1, "v2": 2}


# --------------------------------------------------------------------------
# CRC32C (Castagnoli, reflected 0x82F63B78), table-driven
# --------------------------------------------------------------------------

cdef uint32_t _crc_table[256]


cdef void _crc_init() noexcept:
    cdef uint32_t crc
    cdef int i, _k
    for i in range(256):
        crc = <uint32_t>i
        for _k in range(8):
            if crc & 1:
                crc = (crc >> 1) ^ <uint32_t>0x82F63B78
            else:
                crc = crc >> 1
        _crc_table[i] = crc


_crc_init()


cdef inline uint32_t _crc_update(uint32_t crc, const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        crc = _crc_table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8)
    return crc


def crc32c(data, crc=0):
    """CRC32C of ``data`` (continuing from ``crc``)."""
    cdef Py_buffer view
    cdef uint32_t c = (<uint32_t>(int(crc) & 0xFFFFFFFF)) ^ <uint32_t>0xFFFFFFFF
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        c = _crc_update(c, <const unsigned char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)
    return c ^ <uint32_t>0xFFFFFFFF


# --------------------------------------------------------------------------
# Small C helpers
# --------------------------------------------------------------------------

cdef inline int _be16(const unsigned char* p) noexcept nogil:
    return (p[0] << 8) | p[1]


cdef inline uint32_t _be32(const unsigned char* p) noexcept nogil:
    return ((<uint32_t>p[0]) << 24) | ((<uint32_t>p[1]) << 16) | ((<uint32_t>p[2]) << 8) | p[3]


cdef int _number(const unsigned char* p, Py_ssize_t n, Py_ssize_t max_digits,
                 int limit) noexcept nogil:
    """A decimal field without leading zeros, <= limit; else -1."""
    cdef Py_ssize_t i
    cdef int value = 0
    if n < 1 or n > max_digits:
        return -1
    if p[0] == 0x30 and n > 1:
        return -1
    for i in range(n):
        if p[i] < 0x30 or p[i] > 0x39:
            return -1
        value = value * 10 + (p[i] - 0x30)   # at most 5 digits: no overflow
    return value if value <= limit else -1


cdef int _ipv4(const unsigned char* p, Py_ssize_t n, unsigned char* out) noexcept nogil:
    """Dotted quad, exactly 4 parts, no leading zeros: 0 and out[0:4], or -1."""
    cdef Py_ssize_t start = 0, i
    cdef int part = 0, value
    for i in range(n + 1):
        if i == n or p[i] == 0x2E:
            if part == 4:
                return -1
            value = _number(p + start, i - start, 3, 255)
            if value < 0:
                return -1
            out[part] = <unsigned char>value
            part += 1
            start = i + 1
    return 0 if part == 4 else -1


cdef int _ipv6(const unsigned char* p, Py_ssize_t n, unsigned char* out) noexcept nogil:
    """inet_pton(AF_INET6) on the characters an IPv6 address may have."""
    cdef char text[46]
    cdef Py_ssize_t i
    cdef unsigned char c
    if n < 2 or n > 45:
        return -1
    for i in range(n):
        c = p[i]
        if not ((0x30 <= c <= 0x39) or (0x61 <= c <= 0x66) or (0x41 <= c <= 0x46)
                or c == 0x3A or c == 0x2E):
            return -1
        text[i] = <char>c
    text[n] = 0
    return 0 if inet_pton(AF_INET6, text, out) == 1 else -1


cdef object _ntop(int af, const unsigned char* addr):
    cdef char text[64]
    cdef int n
    if af == AF_INET:
        n = cs_fmt_ipv4(addr, text)
        return PyUnicode_DecodeASCII(text, n, NULL)
    if inet_ntop(af, addr, text, sizeof(text)) == NULL:
        raise OSError("inet_ntop failed")
    return PyUnicode_FromString(text)


cdef object _unix_path(const unsigned char* field):
    """A 108-byte sun_path as the socket module gives it (see the pure twin)."""
    cdef Py_ssize_t end = 0, last = 108
    if field[0] == 0:
        while last > 0 and field[last - 1] == 0:
            last -= 1
        if last == 0:
            return ""
        return PyBytes_FromStringAndSize(<const char*>field, last)
    while end < 108 and field[end] != 0:
        end += 1
    return PyUnicode_DecodeFSDefaultAndSize(<const char*>field, end)


cdef inline bytes _bytes(const unsigned char* p, Py_ssize_t n):
    return PyBytes_FromStringAndSize(<const char*>p, n)


cdef bint _valid_utf8(const unsigned char* p, Py_ssize_t n):
    """Python's own strict UTF-8 decoder decides (one call per string TLV,
    once the header is complete)."""
    try:
        PyUnicode_DecodeUTF8(<const char*>p, n, "strict")
    except UnicodeDecodeError:
        return False
    return True


cdef inline object _utf8(const unsigned char* p, Py_ssize_t n):
    return PyUnicode_DecodeUTF8(<const char*>p, n, "strict")


# --------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------

@cython.final
@cython.auto_pickle(False)
@cython.freelist(32)
cdef class ProxyParser:
    # The first line is the constructor's text signature (what
    # inspect.signature and help() read for a cdef class).
    """ProxyParser(mode='any')\n--\n\n
    A sans-IO reader of one PROXY protocol header (``mode`` "v1", "v2" or
    "any": the first byte decides).  ``feed(data)`` returns how many bytes
    of ``data`` belonged to the header; once ``done``, ``result`` is the
    ProxyInfo and the rest of ``data`` (and everything after it) is the
    connection's payload, which the parser never looks at.  A violation
    raises ProxyHeaderError, on that call and on every later one.
    """

    def __cinit__(self):
        # "any" until __init__ (or new_parser) says otherwise
        self._mode = "any"
        self._buf = self._inline
        self._cap = _INLINE
        self._total = -1
        self._command = -1
        self._family = -1
        self._protocol = -1

    def __init__(self, mode="any"):
        if not isinstance(mode, str) or mode not in _MODES:
            raise ValueError("mode must be 'v1', 'v2' or 'any', not %r" % (mode,))
        self._mode = mode
        self._version = _MODES[mode]

    def __dealloc__(self):
        self._release()

    # -- C API --------------------------------------------------------------

    cdef Py_ssize_t feed_c(self, const char* data, Py_ssize_t n) except -1:
        cdef const unsigned char* p = <const unsigned char*>data
        cdef Py_ssize_t pos = 0
        cdef unsigned char first
        if self._state == 2:
            raise ProxyHeaderError(self._error)
        while pos < n and self._state == 0:
            if self._version == 0:
                first = p[pos]
                if first == 0x50:
                    self._version = 1
                elif first == 0x0D:
                    self._version = 2
                else:
                    self._fail("any_signature", (_bytes(&first, 1),))
            elif self._version == 1:
                pos += self._feed_v1(p + pos, n - pos)
            else:
                pos += self._feed_v2(p + pos, n - pos)
        return pos

    cdef bint is_done(self) noexcept:
        return self._state == 1

    cdef bint is_failed(self) noexcept:
        return self._state == 2

    cdef Py_ssize_t needed_c(self) noexcept:
        cdef Py_ssize_t least
        if self._state != 0:
            return 0
        if self._version == 0:
            return _V1_MIN
        if self._version == 1:
            least = 1 if self._held > 0 and self._buf[self._held - 1] == 0x0D else 2
            return _V1_MIN - self._got if _V1_MIN - self._got > least else least
        if self._total < 0:
            return _FIXED - self._got
        return self._total - self._got

    cdef object source_c(self):
        # What take_result().source would be, without building the
        # ProxyInfo (about a fifth of the cost): the loop's client_address.
        cdef const unsigned char* a
        if self._state != 1:
            return None
        if self._result is not None:
            return self._result.source
        if self._version == 1:
            if self._v1_family == 4:
                return (_ntop(AF_INET, self._src), self._sport)
            if self._v1_family == 6:
                return (_ntop(AF_INET6, self._src), self._sport, 0, 0)
            return None
        if self._skip:
            return None
        a = self._buf + _FIXED
        if self._family == 1:
            return (_ntop(AF_INET, a), _be16(a + 8))
        if self._family == 2:
            return (_ntop(AF_INET6, a), _be16(a + 32), 0, 0)
        return _unix_path(a)

    cdef object take_result(self):
        if self._state != 1:
            return None
        if self._result is None:
            self._result = self._build()
            self._release()
        return self._result

    # -- internals ----------------------------------------------------------

    cdef int _fail(self, str kind, tuple args) except -1:
        message = _message(kind, *args)
        self._error = message
        self._state = 2
        self._release()
        raise ProxyHeaderError(message)

    cdef void _release(self) noexcept:
        if self._buf != self._inline and self._buf != NULL:
            PyMem_Free(self._buf)
        self._buf = self._inline
        self._cap = _INLINE
        self._held = 0

    cdef int _reserve(self, Py_ssize_t size) except -1:
        """Room for ``size`` bytes (size <= self._total <= 65551): doubling,
        never beyond the header's announced size."""
        cdef Py_ssize_t cap
        cdef unsigned char* grown
        if size <= self._cap:
            return 0
        cap = self._cap * 2
        if cap < size:
            cap = size
        if cap > self._total:
            cap = self._total
        if self._buf == self._inline:
            grown = <unsigned char*>PyMem_Malloc(cap)
            if grown == NULL:
                raise MemoryError()
            memcpy(grown, self._inline, self._held)
        else:
            grown = <unsigned char*>PyMem_Realloc(self._buf, cap)
            if grown == NULL:
                raise MemoryError()
        self._buf = grown
        self._cap = cap
        return 0

    cdef Py_ssize_t _feed_v1(self, const unsigned char* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t pos = 0, got
        cdef unsigned char byte, prev
        while pos < n:
            byte = p[pos]
            pos += 1
            self._buf[self._held] = byte      # held < 107 <= _INLINE here
            self._held += 1
            got = self._got = self._held
            if got <= 6:
                if byte != <unsigned char>_SIG1[got - 1]:
                    self._fail("v1_signature", (_bytes(self._buf, self._held),))
                continue
            prev = self._buf[got - 2]
            if prev == 0x0D and byte != 0x0A:
                self._fail("v1_bare_cr", (got - 1,))
            if byte == 0x0A:
                if prev != 0x0D:
                    self._fail("v1_bare_lf", (got,))
                self._parse_v1()
                self._state = 1
                self._held = 0
                return pos
            if got >= _V1_MAX:
                self._fail("v1_too_long", ())
        return pos

    cdef int _v1_address(self, const unsigned char* p, Py_ssize_t n, int family,
                         unsigned char* out, str which) except -1:
        """Parse one v1 address field of ``family`` (4 or 6) into ``out``."""
        cdef int rc = _ipv4(p, n, out) if family == 4 else _ipv6(p, n, out)
        if rc < 0:
            self._fail("v1_address", (which, _bytes(p, n), "TCP4" if family == 4 else "TCP6"))
        return 0

    cdef int _parse_v1(self) except -1:
        """The fields of the complete line in _buf[:_held] (CRLF included)."""
        cdef const unsigned char* line = self._buf + 6
        cdef Py_ssize_t n = self._held - 8      # without "PROXY " and CRLF
        cdef Py_ssize_t starts[6]
        cdef Py_ssize_t ends[6]
        cdef Py_ssize_t count = 0, i, start = 0
        cdef bint empty = False
        cdef int family = 0
        # split on single spaces (as bytes.split(b" ")): remember the first 6
        # fields, count them all, note an empty one
        for i in range(n + 1):
            if i == n or line[i] == 0x20:
                if count < 6:
                    starts[count] = start
                    ends[count] = i
                if i == start:
                    empty = True
                count += 1
                start = i + 1
        if ends[0] - starts[0] == 7 and line[0] == b'U' and line[1] == b'N' and line[2] == b'K' \
                and line[3] == b'N' and line[4] == b'O' and line[5] == b'W' and line[6] == b'N':
            self._v1_family = 0
            return 0
        if ends[0] == 4 and line[0] == b'T' and line[1] == b'C' and line[2] == b'P' \
                and (line[3] == b'4' or line[3] == b'6'):
            family = 4 if line[3] == b'4' else 6
        else:
            self._fail("v1_family", (_bytes(line, ends[0]),))
        if empty:
            self._fail("v1_empty_field", (_bytes(self._buf, self._held),))
        if count != 5:
            self._fail("v1_fields", (count - 1,))
        self._v1_address(line + starts[1], ends[1] - starts[1], family, self._src, "source")
        self._v1_address(line + starts[2], ends[2] - starts[2], family, self._dst, "destination")
        self._sport = _number(line + starts[3], ends[3] - starts[3], 5, 65535)
        if self._sport < 0:
            self._fail("v1_port", ("source", _bytes(line + starts[3], ends[3] - starts[3])))
        self._dport = _number(line + starts[4], ends[4] - starts[4], 5, 65535)
        if self._dport < 0:
            self._fail("v1_port", ("destination", _bytes(line + starts[4], ends[4] - starts[4])))
        self._v1_family = family
        return 0

    cdef Py_ssize_t _feed_v2(self, const unsigned char* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t pos = 0, got, take, length, block
        cdef unsigned char byte
        if self._got == 0 and n >= 12 and memcmp(p, _SIG2, 12) == 0:
            # the whole signature at once (the usual case): the state the
            # byte-by-byte checks below would leave
            memcpy(self._buf, p, 12)
            self._held = self._got = 12
            pos = 12
        while pos < n and self._got < _FIXED:
            byte = p[pos]
            pos += 1
            self._buf[self._held] = byte      # held < 16 here
            self._held += 1
            got = self._got = self._held
            if got <= 12:
                if byte != <unsigned char>_SIG2[got - 1]:
                    self._fail("v2_signature", (got, _bytes(self._buf, self._held)))
            elif got == 13:
                if byte >> 4 != 2:
                    self._fail("v2_version", (byte >> 4, byte))
                if byte & 15 > 1:
                    self._fail("v2_command", (byte & 15, byte))
                self._command = byte & 15
            elif got == 14:
                if self._command == 1:
                    if byte >> 4 > 3:
                        self._fail("v2_family", (byte >> 4, byte))
                    if byte & 15 > 2:
                        self._fail("v2_protocol", (byte & 15, byte))
                    self._family = byte >> 4
                    self._protocol = byte & 15
            elif got == 16:
                length = _be16(self._buf + 14)
                self._total = _FIXED + length
                if self._command == 0 or self._family == 0 or self._protocol == 0:
                    self._skip = True
                else:
                    block = 12 if self._family == 1 else (36 if self._family == 2 else 216)
                    if length < block:
                        self._fail("v2_short_block", (length, block, _FAMILY_NAMES[self._family]))
        if self._got < _FIXED:
            return pos
        take = self._total - self._got
        if take > n - pos:
            take = n - pos
        if take > 0:
            if not self._skip:
                self._reserve(self._held + take)
                memcpy(self._buf + self._held, p + pos, take)
                self._held += take
            pos += take
            self._got += take
        if self._got == self._total:
            if self._skip:
                self._held = 0
            else:
                self._check_v2()
            self._state = 1
        return pos

    cdef int _check_v2(self) except -1:
        """The TLVs of the complete header in _buf[:_held], in order, then
        the CRC32C (as the pure twin's _parse_v2 does)."""
        cdef const unsigned char* h = self._buf
        cdef Py_ssize_t total = self._held, off, start, size
        cdef Py_ssize_t crc_at = -1
        cdef int kind
        cdef unsigned int seen = 0, bit
        cdef uint32_t want, crc
        cdef unsigned char zeros[4]
        off = _FIXED + (12 if self._family == 1 else (36 if self._family == 2 else 216))
        while off < total:
            if total - off < 3:
                self._fail("v2_tlv_truncated", (off, total - off))
            kind = h[off]
            size = _be16(h + off + 1)
            if size > total - off - 3:
                self._fail("v2_tlv_overrun", (kind, off, size, total - off - 3))
            start = off + 3
            bit = 0
            if kind == _ALPN:
                bit = 1
            elif kind == _AUTHORITY:
                bit = 2
            elif kind == _CRC32C:
                bit = 4
            elif kind == _UNIQUE_ID:
                bit = 8
            elif kind == _SSL:
                bit = 16
            elif kind == _NETNS:
                bit = 32
            if bit:
                if seen & bit:
                    self._fail("v2_tlv_duplicate", (_TLV_NAMES[kind], kind, off))
                seen |= bit
                if kind == _AUTHORITY or kind == _NETNS:
                    if not _valid_utf8(h + start, size):
                        self._fail("v2_utf8", (_TLV_NAMES[kind], off))
                elif kind == _CRC32C:
                    if size != 4:
                        self._fail("v2_crc_length", (size,))
                    crc_at = start
                elif kind == _UNIQUE_ID:
                    if size > _UNIQUE_ID_MAX:
                        self._fail("v2_unique_id", (size,))
                elif kind == _SSL:
                    self._check_ssl(start, start + size)
            off = start + size
        if crc_at >= 0:
            want = _be32(h + crc_at)
            zeros[0] = zeros[1] = zeros[2] = zeros[3] = 0
            crc = 0xFFFFFFFF
            crc = _crc_update(crc, h, crc_at)
            crc = _crc_update(crc, zeros, 4)
            crc = _crc_update(crc, h + crc_at + 4, total - crc_at - 4)
            crc = crc ^ <uint32_t>0xFFFFFFFF
            if crc != want:
                self._fail("v2_crc_mismatch", (want, crc))
        return 0

    cdef int _check_ssl(self, Py_ssize_t start, Py_ssize_t end) except -1:
        cdef const unsigned char* h = self._buf
        cdef Py_ssize_t off, size
        cdef int kind
        cdef unsigned int seen = 0, bit
        if end - start < 5:
            self._fail("v2_ssl_length", (end - start,))
        off = start + 5
        while off < end:
            if end - off < 3:
                self._fail("v2_subtlv_truncated", (off, end - off))
            kind = h[off]
            size = _be16(h + off + 1)
            if size > end - off - 3:
                self._fail("v2_subtlv_overrun", (kind, off, size, end - off - 3))
            if 0x21 <= kind <= 0x28:
                bit = (<unsigned int>1) << (kind - 0x21)
                if seen & bit:
                    self._fail("v2_subtlv_duplicate", (_SSL_NAMES[kind].upper(), kind, off))
                seen |= bit
                if kind != _SSL_CLIENT_CERT and not _valid_utf8(h + off + 3, size):
                    self._fail("v2_utf8", ("SSL " + _SSL_NAMES[kind].upper(), off))
            off += 3 + size
        return 0

    cdef object _build(self):
        """The ProxyInfo of a done parser (from the bytes held)."""
        cdef const unsigned char* h = self._buf
        cdef Py_ssize_t total = self._held, off, start, size, a = _FIXED
        cdef int kind
        if self._version == 1:
            if self._v1_family == 0:
                return ProxyInfo(1, "PROXY", "UNKNOWN")
            if self._v1_family == 4:
                return ProxyInfo(1, "PROXY", "TCP4", (_ntop(AF_INET, self._src), self._sport),
                                 (_ntop(AF_INET, self._dst), self._dport))
            return ProxyInfo(1, "PROXY", "TCP6", (_ntop(AF_INET6, self._src), self._sport, 0, 0),
                             (_ntop(AF_INET6, self._dst), self._dport, 0, 0))
        if self._skip:
            return ProxyInfo(2, "LOCAL" if self._command == 0 else "PROXY", "UNSPEC")
        if self._family == 1:
            name = "TCP4" if self._protocol == 1 else "UDP4"
            source = (_ntop(AF_INET, h + a), _be16(h + a + 8))
            destination = (_ntop(AF_INET, h + a + 4), _be16(h + a + 10))
            off = a + 12
        elif self._family == 2:
            name = "TCP6" if self._protocol == 1 else "UDP6"
            source = (_ntop(AF_INET6, h + a), _be16(h + a + 32), 0, 0)
            destination = (_ntop(AF_INET6, h + a + 16), _be16(h + a + 34), 0, 0)
            off = a + 36
        else:
            name = "UNIX" if self._protocol == 1 else "UNIX_DGRAM"
            source = _unix_path(h + a)
            destination = _unix_path(h + a + 108)
            off = a + 216
        tlvs = []
        alpn = authority = crc = unique_id = ssl = netns = None
        while off < total:               # validated by _check_v2
            kind = h[off]
            size = _be16(h + off + 1)
            start = off + 3
            value = _bytes(h + start, size)
            if kind == _ALPN:
                alpn = value
            elif kind == _AUTHORITY:
                authority = _utf8(h + start, size)
            elif kind == _CRC32C:
                crc = _be32(h + start)
            elif kind == _UNIQUE_ID:
                unique_id = value
            elif kind == _SSL:
                ssl = self._build_ssl(start, start + size)
            elif kind == _NETNS:
                netns = _utf8(h + start, size)
            tlvs.append((kind, value))
            off = start + size
        return ProxyInfo(2, "PROXY", name, source, destination, tlvs, alpn=alpn,
                         authority=authority, crc32c=crc, unique_id=unique_id, ssl=ssl,
                         netns=netns)

    cdef object _build_ssl(self, Py_ssize_t start, Py_ssize_t end):
        cdef const unsigned char* h = self._buf
        cdef Py_ssize_t off = start + 5, size
        cdef int kind
        decoded = {}
        tlvs = []
        while off < end:
            kind = h[off]
            size = _be16(h + off + 1)
            value = _bytes(h + off + 3, size)
            if kind == _SSL_CLIENT_CERT:
                decoded["client_cert"] = value
            elif 0x21 <= kind <= 0x27:
                decoded[_SSL_NAMES[kind]] = _utf8(h + off + 3, size)
            tlvs.append((kind, value))
            off += 3 + size
        return ProxySSL(h[start], _be32(h + start + 1), tlvs, **decoded)

    # -- Python API ---------------------------------------------------------

    def feed(self, data):
        """Consume header bytes from ``data`` (any bytes-like object) and
        return how many of them were header; 0 once done."""
        cdef Py_buffer view
        if self._state == 2:
            raise ProxyHeaderError(self._error)
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self.feed_c(<const char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    @property
    def mode(self):
        """"v1", "v2" or "any", as given."""
        return self._mode

    @property
    def version(self):
        """1 or 2 once the first byte has decided (or the mode said), else 0."""
        return self._version

    @property
    def done(self):
        """The header is complete and valid: ``result`` is set."""
        return self._state == 1

    @property
    def failed(self):
        """A violation was seen: every feed raises ProxyHeaderError."""
        return self._state == 2

    @property
    def result(self):
        """The ProxyInfo once ``done``, else None."""
        return self.take_result()

    @property
    def consumed(self):
        """Header bytes consumed so far (the header's length once done)."""
        return self._got

    @property
    def held(self):
        """Header bytes held in memory now (a done header's bytes are freed
        once ``result`` has been built)."""
        return self._held

    @property
    def capacity(self):
        """Bytes of the buffer that holds the header now: the inline 256,
        or the PyMem buffer's size (never more than 16 + the announced
        length)."""
        return self._cap

    @property
    def needed(self):
        """A lower bound on the bytes still needed to finish the header:
        reading at most this many never reads past it.  0 when done or failed."""
        return self.needed_c()


cdef tuple _MODE_NAMES = ("any", "v1", "v2")


cdef ProxyParser new_parser(int version):
    """A parser for version 0 ("any"), 1 or 2, without the Python call of
    ``ProxyParser(mode)`` (its argument parsing and checks): the loop makes
    one per connection."""
    cdef ProxyParser p = ProxyParser.__new__(ProxyParser)
    p._version = version
    p._mode = _MODE_NAMES[version]
    return p


def parse_header(data, mode="any"):
    """``(ProxyInfo, payload)`` for ``data`` that holds a whole header
    (and any payload after it); ProxyHeaderError if it is invalid or
    incomplete."""
    parser = ProxyParser(mode)
    used = parser.feed(data)
    if not parser.done:
        raise ProxyHeaderError(_message("incomplete", used, parser.needed))
    return parser.result, bytes(memoryview(data)[used:])
