"""Pure-Python twin of ``cserver._proxy``: a sans-IO PROXY protocol (v1 and
v2) header parser, and the oracle the C twin is tested and fuzzed against.

The spec is HAProxy's ``doc/proxy-protocol.txt``.  Not used by the servers
yet (issue 13: the multiplexing loop will run the C twin before
``connection_made``); see docs/proxy.md.

Usage::

    parser = ProxyParser("any")          # or "v1", "v2"
    used = parser.feed(data)             # bytes of data that were header
    if parser.done:
        info = parser.result             # ProxyInfo
        payload = data[used:]            # the connection's own bytes

``feed`` raises ProxyHeaderError (a ValueError) on the first byte that breaks
the spec, and on every call afterwards (the error is sticky).

How the bytes are read
----------------------
The stream is processed one position at a time, and every check is tied to
a position (the byte that completes the signature, the version byte, the
length field, the CRLF, the last byte of the v2 block), never to where a
``feed`` call happens to end: any split of the input gives the same result
or the same error (type and message) as a single call.

* v1: the signature ``PROXY `` is checked byte by byte (a mismatch fails at
  once), a CR not followed by LF or an LF not preceded by CR fails at once,
  and a line that reaches 107 bytes without its CRLF fails on the 107th
  byte.  The fields are checked when the CRLF arrives.
* v2: the 12-byte signature byte by byte, the version/command byte (13th)
  and the family/protocol byte (14th) as each arrives; the length (15th-16th)
  is checked against the address block the family needs; the addresses and
  TLVs when the last byte of the block arrives.
* "any": the first byte decides (``P`` for v1, CR for v2, anything else
  fails at once).

What it holds
-------------
v1: the line as it arrives, at most 107 bytes.  v2 PROXY with an address
family: the header as it arrives, never more than 16 + the announced length
(<= 65551 bytes): nothing is reserved for bytes not yet received.  v2 LOCAL,
or a PROXY header whose family or protocol is UNSPEC: 16 bytes; the rest of
the block is counted and skipped (the spec says to ignore it).  The bytes
are released when the header is done (the result keeps what it decoded) or
has failed.
"""
import os
import socket

__all__ = ["ProxyParser", "ProxyInfo", "ProxySSL", "ProxyHeaderError", "parse_header",
           "V2_SIGNATURE", "V1_MAX_LENGTH", "V2_MAX_LENGTH"]

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: The longest v1 line, CRLF included (the spec's worst case).
V1_MAX_LENGTH = 107
#: The longest v2 header: 16 fixed bytes and a 16-bit length.
V2_MAX_LENGTH = 16 + 65535
#: The shortest complete v1 header ("PROXY UNKNOWN\r\n").
_V1_MIN_LENGTH = 15

# v2 TLV types (section 2.2)
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_TYPE_NETNS = 0x30
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_SUBTYPE_SSL_GROUP = 0x26
PP2_SUBTYPE_SSL_SIG_SCHEME = 0x27
PP2_SUBTYPE_SSL_CLIENT_CERT = 0x28
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04
UNIQUE_ID_MAX = 128

#: The TLVs decoded into ProxyInfo attributes (each may appear once).
_KNOWN_TLVS = {PP2_TYPE_ALPN: "ALPN", PP2_TYPE_AUTHORITY: "AUTHORITY",
               PP2_TYPE_CRC32C: "CRC32C", PP2_TYPE_UNIQUE_ID: "UNIQUE_ID",
               PP2_TYPE_SSL: "SSL", PP2_TYPE_NETNS: "NETNS"}
#: The SSL sub-TLVs decoded into ProxySSL attributes (each may appear once).
_SSL_SUBTLVS = {PP2_SUBTYPE_SSL_VERSION: "version", PP2_SUBTYPE_SSL_CN: "cn",
                PP2_SUBTYPE_SSL_CIPHER: "cipher", PP2_SUBTYPE_SSL_SIG_ALG: "sig_alg",
                PP2_SUBTYPE_SSL_KEY_ALG: "key_alg", PP2_SUBTYPE_SSL_GROUP: "group",
                PP2_SUBTYPE_SSL_SIG_SCHEME: "sig_scheme",
                PP2_SUBTYPE_SSL_CLIENT_CERT: "client_cert"}

# v2 family nibble -> (name for STREAM, name for DGRAM, address block size, family name)
_V2_FAMILIES = {1: ("TCP4", "UDP4", 12, "INET"), 2: ("TCP6", "UDP6", 36, "INET6"),
                3: ("UNIX", "UNIX_DGRAM", 216, "UNIX")}
_MODES = {"any": 0, "v1": 1, "v2": 2}


class ProxyHeaderError(ValueError):
    """A PROXY protocol header broke the spec (the message says how); the
    connection must be closed."""


# --------------------------------------------------------------------------
# Messages: one source for both twins (the C twin calls _message).
# --------------------------------------------------------------------------

_MESSAGES = {
    "any_signature": "not a PROXY protocol header: the first byte is %r, "
                     "neither b'P' (v1) nor b'\\r' (v2)",
    "v1_signature": "not a PROXY protocol v1 header: expected b'PROXY ', got %r",
    "v1_bare_cr": "PROXY v1: a CR not followed by LF at byte %d (the line must end with CRLF)",
    "v1_bare_lf": "PROXY v1: an LF without CR at byte %d (the line must end with CRLF)",
    "v1_too_long": "PROXY v1: no CRLF in the first 107 bytes (the longest line the spec allows)",
    "v1_family": "PROXY v1: unknown protocol family %r (expected TCP4, TCP6 or UNKNOWN)",
    "v1_empty_field": "PROXY v1: an empty field in %r (fields are separated by exactly "
                      "one space, with none before the CRLF)",
    "v1_fields": "PROXY v1: %d fields after the family, expected 4 "
                 "(source and destination addresses, source and destination ports)",
    "v1_address": "PROXY v1: the %s address %r is not a valid %s address",
    "v1_port": "PROXY v1: the %s port %r is not a decimal integer in 0..65535 "
               "without leading zeros",
    "v2_signature": "not a PROXY protocol v2 header: the signature does not match at byte %d "
                    "(got %r)",
    "v2_version": "PROXY v2: version %d, expected 2 (byte 13 is 0x%02x)",
    "v2_command": "PROXY v2: unknown command %d (0 LOCAL, 1 PROXY; byte 13 is 0x%02x)",
    "v2_family": "PROXY v2: unknown address family %d (0 UNSPEC, 1 INET, 2 INET6, 3 UNIX; "
                 "byte 14 is 0x%02x)",
    "v2_protocol": "PROXY v2: unknown transport protocol %d (0 UNSPEC, 1 STREAM, 2 DGRAM; "
                   "byte 14 is 0x%02x)",
    "v2_short_block": "PROXY v2: the header announces %d bytes after the fixed 16, "
                      "fewer than the %d bytes of its address block (family %s)",
    "v2_tlv_truncated": "PROXY v2: a truncated TLV at offset %d of the header "
                        "(%d bytes left, a TLV takes at least 3)",
    "v2_tlv_overrun": "PROXY v2: the TLV of type 0x%02x at offset %d announces %d bytes, "
                      "only %d are left in the header",
    "v2_tlv_duplicate": "PROXY v2: a second %s TLV (type 0x%02x) at offset %d",
    "v2_crc_length": "PROXY v2: the CRC32C TLV has %d bytes, expected 4",
    "v2_crc_mismatch": "PROXY v2: CRC32C mismatch: the header says 0x%08x, "
                       "its bytes give 0x%08x",
    "v2_unique_id": "PROXY v2: a UNIQUE_ID of %d bytes, more than the 128 the spec allows",
    "v2_ssl_length": "PROXY v2: the SSL TLV has %d bytes, less than the 5 of its "
                     "client and verify fields",
    "v2_subtlv_truncated": "PROXY v2: a truncated SSL sub-TLV at offset %d of the header "
                           "(%d bytes left in the SSL TLV, a sub-TLV takes at least 3)",
    "v2_subtlv_overrun": "PROXY v2: the SSL sub-TLV of type 0x%02x at offset %d announces "
                         "%d bytes, only %d are left in the SSL TLV",
    "v2_subtlv_duplicate": "PROXY v2: a second SSL %s sub-TLV (type 0x%02x) at offset %d",
    "v2_utf8": "PROXY v2: the %s TLV at offset %d is not valid UTF-8",
    "incomplete": "PROXY header incomplete: %d bytes given, at least %d more needed",
}


def _message(kind, *args):
    """The message of a ProxyHeaderError (both twins)."""
    return _MESSAGES[kind] % args


def _fail(kind, *args):
    raise ProxyHeaderError(_message(kind, *args))


# --------------------------------------------------------------------------
# CRC32C (Castagnoli, reflected polynomial 0x82F63B78, RFC 4960 appendix B)
# --------------------------------------------------------------------------

def _crc32c_table():
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data, crc=0):
    """CRC32C of ``data`` (continuing from ``crc``)."""
    table = _CRC_TABLE
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------

class ProxySSL:
    """The SSL TLV of a v2 header (section 2.2.6).

    ``client``: the PP2_CLIENT_* bits; ``verify``: 0 when the client's
    certificate was verified; ``version``, ``cn``, ``cipher``, ``sig_alg``,
    ``key_alg``, ``group``, ``sig_scheme``: the sub-TLVs' strings (None when
    absent); ``client_cert``: the DER certificate (bytes) or None; ``tlvs``:
    every sub-TLV, in order, as ``(type, value)``.
    """

    __slots__ = ("client", "verify", "version", "cn", "cipher", "sig_alg", "key_alg",
                 "group", "sig_scheme", "client_cert", "tlvs")

    def __init__(self, client, verify, tlvs=(), version=None, cn=None, cipher=None,
                 sig_alg=None, key_alg=None, group=None, sig_scheme=None, client_cert=None):
        self.client = client
        self.verify = verify
        self.tlvs = tuple(tlvs)
        self.version = version
        self.cn = cn
        self.cipher = cipher
        self.sig_alg = sig_alg
        self.key_alg = key_alg
        self.group = group
        self.sig_scheme = sig_scheme
        self.client_cert = client_cert

    @property
    def ssl(self):
        """The client connected over SSL/TLS (PP2_CLIENT_SSL)."""
        return bool(self.client & PP2_CLIENT_SSL)

    @property
    def verified(self):
        """The client presented a certificate and it was verified."""
        presented = self.client & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS)
        return bool(presented) and self.verify == 0

    def _key(self):
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other):
        if not isinstance(other, ProxySSL):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self):
        return "ProxySSL(%s)" % ", ".join("%s=%r" % (n, getattr(self, n)) for n in self.__slots__
                                          if getattr(self, n) is not None)


class ProxyInfo:
    """What a PROXY header said.

    ``version`` 1 or 2; ``command`` "PROXY" or "LOCAL" (v2 health checks:
    use the real connection's addresses); ``family`` "TCP4", "TCP6",
    "UDP4", "UDP6", "UNIX", "UNIX_DGRAM", "UNKNOWN" (v1) or "UNSPEC" (v2
    LOCAL, or an UNSPEC family or protocol: the addresses are to be
    ignored); ``source``/``destination`` as the socket module gives them
    (``("1.2.3.4", 5678)``, ``("::1", 80, 0, 0)``, a Unix path as str, an
    abstract one as bytes), None when the header carries none; ``tlvs``
    every v2 TLV in order as ``(type, value)`` (the known ones too);
    ``alpn`` (bytes), ``authority`` (str), ``crc32c`` (int, verified),
    ``unique_id`` (bytes), ``ssl`` (ProxySSL), ``netns`` (str): the
    well-known TLVs, None when absent.
    """

    __slots__ = ("version", "command", "family", "source", "destination", "tlvs",
                 "alpn", "authority", "crc32c", "unique_id", "ssl", "netns")

    def __init__(self, version, command, family, source=None, destination=None, tlvs=(),
                 alpn=None, authority=None, crc32c=None, unique_id=None, ssl=None, netns=None):
        self.version = version
        self.command = command
        self.family = family
        self.source = source
        self.destination = destination
        self.tlvs = tuple(tlvs)
        self.alpn = alpn
        self.authority = authority
        self.crc32c = crc32c
        self.unique_id = unique_id
        self.ssl = ssl
        self.netns = netns

    @property
    def proxied(self):
        """The header names the original endpoints (PROXY with an address
        family): use ``source``/``destination`` instead of the socket's."""
        return self.source is not None

    def _key(self):
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other):
        if not isinstance(other, ProxyInfo):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self):
        return "ProxyInfo(%s)" % ", ".join(
            "%s=%r" % (n, getattr(self, n)) for n in self.__slots__
            if getattr(self, n) is not None and (n != "tlvs" or self.tlvs))


# --------------------------------------------------------------------------
# v1 fields
# --------------------------------------------------------------------------

_DIGITS = frozenset(b"0123456789")
_IPV6_CHARS = frozenset(b"0123456789abcdefABCDEF:.")


def _number(token, max_digits, limit):
    """The value of a decimal field without leading zeros, or -1."""
    if not 1 <= len(token) <= max_digits or not all(c in _DIGITS for c in token):
        return -1
    if token[0] == 0x30 and len(token) > 1:
        return -1
    value = int(token)
    return value if value <= limit else -1


def _ipv4(token):
    parts = token.split(b".")
    if len(parts) != 4:
        return None
    values = [_number(p, 3, 255) for p in parts]
    if -1 in values:
        return None
    return "%d.%d.%d.%d" % tuple(values)


def _ipv6(token):
    # inet_pton's grammar, on the characters an IPv6 address can have
    # (this keeps NULs and non-ASCII bytes away from it); the result is the
    # canonical text the socket module would give.
    if not 2 <= len(token) <= 45 or not all(c in _IPV6_CHARS for c in token):
        return None
    try:
        packed = socket.inet_pton(socket.AF_INET6, token.decode("ascii"))
    except OSError:
        return None
    return socket.inet_ntop(socket.AF_INET6, packed)


def _parse_v1(line):
    """The ProxyInfo of a complete v1 line (CRLF included)."""
    fields = line[6:-2].split(b" ")
    family = fields[0]
    if family == b"UNKNOWN":
        return ProxyInfo(1, "PROXY", "UNKNOWN")
    if family not in (b"TCP4", b"TCP6"):
        _fail("v1_family", family)
    if b"" in fields:
        _fail("v1_empty_field", bytes(line))
    if len(fields) != 5:
        _fail("v1_fields", len(fields) - 1)
    name = family.decode("ascii")
    parse = _ipv4 if family == b"TCP4" else _ipv6
    addresses = []
    for which, token in (("source", fields[1]), ("destination", fields[2])):
        address = parse(token)
        if address is None:
            _fail("v1_address", which, token, name)
        addresses.append(address)
    ports = []
    for which, token in (("source", fields[3]), ("destination", fields[4])):
        port = _number(token, 5, 65535)
        if port < 0:
            _fail("v1_port", which, token)
        ports.append(port)
    if family == b"TCP4":
        return ProxyInfo(1, "PROXY", name, (addresses[0], ports[0]), (addresses[1], ports[1]))
    return ProxyInfo(1, "PROXY", name, (addresses[0], ports[0], 0, 0),
                     (addresses[1], ports[1], 0, 0))


# --------------------------------------------------------------------------
# v2 block
# --------------------------------------------------------------------------

def _unix_path(field):
    """A 108-byte sun_path as the socket module gives it: str up to the
    first NUL; an abstract address (leading NUL) as bytes, trailing NULs
    stripped; all NULs: ''."""
    if field[0] == 0:
        stripped = field.rstrip(b"\x00")
        return stripped if stripped else ""
    end = field.find(b"\x00")
    return os.fsdecode(field if end < 0 else field[:end])


def _utf8(value, what, offset):
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        _fail("v2_utf8", what, offset)


def _parse_ssl(header, start, end):
    """The ProxySSL of the SSL TLV whose value is header[start:end]."""
    if end - start < 5:
        _fail("v2_ssl_length", end - start)
    client = header[start]
    verify = int.from_bytes(header[start + 1:start + 5], "big")
    decoded = {}
    tlvs = []
    off = start + 5
    while off < end:
        if end - off < 3:
            _fail("v2_subtlv_truncated", off, end - off)
        kind = header[off]
        size = (header[off + 1] << 8) | header[off + 2]
        if size > end - off - 3:
            _fail("v2_subtlv_overrun", kind, off, size, end - off - 3)
        value = bytes(header[off + 3:off + 3 + size])
        name = _SSL_SUBTLVS.get(kind)
        if name is not None:
            if name in decoded:
                _fail("v2_subtlv_duplicate", name.upper(), kind, off)
            decoded[name] = value if kind == PP2_SUBTYPE_SSL_CLIENT_CERT else _utf8(
                value, "SSL " + name.upper(), off)
        tlvs.append((kind, value))
        off += 3 + size
    return ProxySSL(client, verify, tlvs, **decoded)


def _parse_v2(header, family, protocol):
    """The ProxyInfo of a complete v2 PROXY header with an address family
    (``header`` is all of it: 16 + length bytes)."""
    stream_name, dgram_name, block, _ = _V2_FAMILIES[family]
    name = stream_name if protocol == 1 else dgram_name
    a = 16
    if family == 1:
        source = (socket.inet_ntop(socket.AF_INET, bytes(header[a:a + 4])),
                  (header[a + 8] << 8) | header[a + 9])
        destination = (socket.inet_ntop(socket.AF_INET, bytes(header[a + 4:a + 8])),
                       (header[a + 10] << 8) | header[a + 11])
    elif family == 2:
        source = (socket.inet_ntop(socket.AF_INET6, bytes(header[a:a + 16])),
                  (header[a + 32] << 8) | header[a + 33], 0, 0)
        destination = (socket.inet_ntop(socket.AF_INET6, bytes(header[a + 16:a + 32])),
                       (header[a + 34] << 8) | header[a + 35], 0, 0)
    else:
        source = _unix_path(bytes(header[a:a + 108]))
        destination = _unix_path(bytes(header[a + 108:a + 216]))
    total = len(header)
    tlvs = []
    known = {}
    crc_offset = -1
    off = a + block
    while off < total:
        if total - off < 3:
            _fail("v2_tlv_truncated", off, total - off)
        kind = header[off]
        size = (header[off + 1] << 8) | header[off + 2]
        if size > total - off - 3:
            _fail("v2_tlv_overrun", kind, off, size, total - off - 3)
        start = off + 3
        value = bytes(header[start:start + size])
        what = _KNOWN_TLVS.get(kind)
        if what is not None:
            if what in known:
                _fail("v2_tlv_duplicate", what, kind, off)
            if kind == PP2_TYPE_ALPN:
                known[what] = value
            elif kind == PP2_TYPE_AUTHORITY or kind == PP2_TYPE_NETNS:
                known[what] = _utf8(value, what, off)
            elif kind == PP2_TYPE_CRC32C:
                if size != 4:
                    _fail("v2_crc_length", size)
                known[what] = int.from_bytes(value, "big")
                crc_offset = start
            elif kind == PP2_TYPE_UNIQUE_ID:
                if size > UNIQUE_ID_MAX:
                    _fail("v2_unique_id", size)
                known[what] = value
            else:
                known[what] = _parse_ssl(header, start, start + size)
        tlvs.append((kind, value))
        off = start + size
    if crc_offset >= 0:
        zeroed = bytearray(header)
        zeroed[crc_offset:crc_offset + 4] = bytes(4)
        computed = crc32c(zeroed)
        if computed != known["CRC32C"]:
            _fail("v2_crc_mismatch", known["CRC32C"], computed)
    return ProxyInfo(2, "PROXY", name, source, destination, tlvs,
                     alpn=known.get("ALPN"), authority=known.get("AUTHORITY"),
                     crc32c=known.get("CRC32C"), unique_id=known.get("UNIQUE_ID"),
                     ssl=known.get("SSL"), netns=known.get("NETNS"))


# --------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------

class ProxyParser:
    """ProxyParser(mode="any")

    A sans-IO reader of one PROXY protocol header (``mode`` "v1", "v2" or
    "any": the first byte decides).  ``feed(data)`` returns how many bytes
    of ``data`` belonged to the header; once ``done``, ``result`` is the
    ProxyInfo and the rest of ``data`` (and everything after it) is the
    connection's payload, which the parser never looks at.  A violation
    raises ProxyHeaderError, on that call and on every later one.
    """

    __slots__ = ("_mode", "_version", "_buf", "_total", "_skip", "_got", "_command",
                 "_family", "_protocol", "_result", "_error")

    def __init__(self, mode="any"):
        if not isinstance(mode, str) or mode not in _MODES:
            raise ValueError("mode must be 'v1', 'v2' or 'any', not %r" % (mode,))
        self._mode = mode
        self._version = _MODES[mode]
        self._buf = bytearray()
        self._got = 0          # header bytes consumed so far
        self._total = -1       # v2: 16 + length once the length is read
        self._skip = False     # v2 LOCAL/UNSPEC: the block is skipped, not held
        self._command = -1
        self._family = -1
        self._protocol = -1
        self._result = None
        self._error = None

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
        return self._result is not None

    @property
    def failed(self):
        """A violation was seen: every feed raises ProxyHeaderError."""
        return self._error is not None

    @property
    def result(self):
        """The ProxyInfo once ``done``, else None."""
        return self._result

    @property
    def consumed(self):
        """Header bytes consumed so far (the header's length once done)."""
        return self._got

    @property
    def held(self):
        """Header bytes held in memory now (see the module docstring)."""
        return len(self._buf)

    @property
    def needed(self):
        """A lower bound on the bytes still needed to finish the header:
        reading at most this many never reads past it.  0 when done or failed."""
        if self._result is not None or self._error is not None:
            return 0
        if self._version == 0:
            return _V1_MIN_LENGTH
        if self._version == 1:
            last_cr = self._got > 0 and self._buf[-1] == 0x0D
            return max(_V1_MIN_LENGTH - self._got, 1 if last_cr else 2)
        if self._total < 0:
            return 16 - self._got
        return self._total - self._got

    def feed(self, data):
        """Consume header bytes from ``data`` (any bytes-like object) and
        return how many of them were header; 0 once done."""
        if self._error is not None:
            raise ProxyHeaderError(self._error)
        view = memoryview(data).cast("B")
        if self._result is not None:
            return 0
        try:
            return self._feed(view)
        except ProxyHeaderError as exc:
            self._error = str(exc)
            self._buf = bytearray()
            raise

    def _feed(self, view):
        n = len(view)
        pos = 0
        while pos < n and self._result is None:
            if self._version == 0:
                first = view[pos]
                if first == 0x50:
                    self._version = 1
                elif first == 0x0D:
                    self._version = 2
                else:
                    _fail("any_signature", bytes([first]))
            elif self._version == 1:
                pos = self._feed_v1(view, pos, n)
            else:
                pos = self._feed_v2(view, pos, n)
        return pos

    def _feed_v1(self, view, pos, n):
        buf = self._buf
        while pos < n:
            byte = view[pos]
            pos += 1
            buf.append(byte)
            got = self._got = len(buf)
            if got <= 6:
                if byte != V1_SIGNATURE[got - 1]:
                    _fail("v1_signature", bytes(buf))
                continue
            prev = buf[got - 2]
            if prev == 0x0D and byte != 0x0A:
                _fail("v1_bare_cr", got - 1)
            if byte == 0x0A:
                if prev != 0x0D:
                    _fail("v1_bare_lf", got)
                self._result = _parse_v1(bytes(buf))
                self._buf = bytearray()
                return pos
            if got >= V1_MAX_LENGTH:
                _fail("v1_too_long")
        return pos

    def _feed_v2(self, view, pos, n):
        buf = self._buf
        while pos < n and self._got < 16:
            byte = view[pos]
            pos += 1
            buf.append(byte)
            got = self._got = len(buf)
            if got <= 12:
                if byte != V2_SIGNATURE[got - 1]:
                    _fail("v2_signature", got, bytes(buf))
            elif got == 13:
                if byte >> 4 != 2:
                    _fail("v2_version", byte >> 4, byte)
                if byte & 15 > 1:
                    _fail("v2_command", byte & 15, byte)
                self._command = byte & 15
            elif got == 14:
                if self._command == 1:
                    if byte >> 4 > 3:
                        _fail("v2_family", byte >> 4, byte)
                    if byte & 15 > 2:
                        _fail("v2_protocol", byte & 15, byte)
                    self._family = byte >> 4
                    self._protocol = byte & 15
            elif got == 16:
                length = (buf[14] << 8) | buf[15]
                self._total = 16 + length
                if self._command == 0 or self._family == 0 or self._protocol == 0:
                    self._skip = True
                else:
                    block, family_name = _V2_FAMILIES[self._family][2:]
                    if length < block:
                        _fail("v2_short_block", length, block, family_name)
        if self._got < 16:
            return pos
        take = min(n - pos, self._total - self._got)
        if take > 0:
            if not self._skip:
                self._buf += view[pos:pos + take]
            pos += take
            self._got += take
        if self._got == self._total:
            if self._skip:
                command = "LOCAL" if self._command == 0 else "PROXY"
                self._result = ProxyInfo(2, command, "UNSPEC")
            else:
                self._result = _parse_v2(self._buf, self._family, self._protocol)
            self._buf = bytearray()
        return pos


def parse_header(data, mode="any"):
    """``(ProxyInfo, payload)`` for ``data`` that holds a whole header
    (and any payload after it); ProxyHeaderError if it is invalid or
    incomplete."""
    parser = ProxyParser(mode)
    used = parser.feed(data)
    if not parser.done:
        _fail("incomplete", used, parser.needed)
    return parser.result, bytes(memoryview(data)[used:])
