"""The PROXY protocol header parser (cserver._proxy and its pure twin
cserver._proxy_py), against HAProxy's doc/proxy-protocol.txt.

Every test runs on both twins (``pp`` fixture: test ids C/py); the
properties at the end check that they agree on arbitrary input and that any
split of the input gives what one feed gives.  Where the ``proxy-protocol``
package from PyPI is installed, it is a third, independent parser for valid
headers (``test_the_pypi_parser_agrees_on_valid_headers``).
"""
import importlib
import socket
import struct

import pytest
from hypothesis import given, strategies as st

from cserver import _proxy_py


@pytest.fixture(scope="session", params=["cserver._proxy", "cserver._proxy_py"], ids=["C", "py"])
def pp(request):
    """The C twin or the pure twin of the PROXY parser."""
    return importlib.import_module(request.param)


SIG = _proxy_py.V2_SIGNATURE


def v2(command=1, fam=0x11, block=b"", length=None):
    """A v2 header: fixed 16 bytes (length = len(block) unless given), block."""
    n = len(block) if length is None else length
    return SIG + bytes([0x20 | command, fam]) + struct.pack("!H", n) + block


def tlv(kind, value):
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def inet4(src="1.2.3.4", dst="5.6.7.8", sport=1000, dport=80):
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def inet6(src="::1", dst="2001:db8::2", sport=1, dport=65535):
    return (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack("!HH", sport, dport))


def unix(src=b"/tmp/src.sock", dst=b"/run/dst.sock"):
    return src.ljust(108, b"\0") + dst.ljust(108, b"\0")


def with_crc(header):
    """The header with a CRC32C TLV appended (length fixed up, checksum set)."""
    body = header[16:] + tlv(3, bytes(4))
    h = header[:14] + struct.pack("!H", len(body)) + body
    crc = _proxy_py.crc32c(h)
    return h[:-4] + struct.pack("!I", crc)


def parse(pp, data, mode="any"):
    parser = pp.ProxyParser(mode)
    used = parser.feed(data)
    return parser, used


def error(pp, data, mode="any"):
    parser = pp.ProxyParser(mode)
    with pytest.raises(pp.ProxyHeaderError) as info:
        parser.feed(data)
    assert parser.failed and not parser.done
    return str(info.value)


# --------------------------------------------------------------------------
# v1
# --------------------------------------------------------------------------

def test_v1_spec_example_and_payload_untouched(pp):
    data = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"
    parser, used = parse(pp, data)
    assert used == 47 and parser.done and parser.consumed == 47 and parser.needed == 0
    assert data[used:] == b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    info = parser.result
    assert (info.version, info.command, info.family) == (1, "PROXY", "TCP4")
    assert info.source == ("192.168.0.1", 56324) and info.destination == ("192.168.0.11", 443)
    assert info.proxied and info.tlvs == () and info.ssl is None
    assert parser.feed(b"more") == 0     # done: everything after is payload


@pytest.mark.parametrize("line, source, destination", [
    (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
     ("255.255.255.255", 65535), ("255.255.255.255", 65535)),
    (b"PROXY TCP4 0.0.0.0 10.0.0.1 0 1\r\n", ("0.0.0.0", 0), ("10.0.0.1", 1)),
    (b"PROXY TCP6 ::1 2001:DB8::2 1 65535\r\n", ("::1", 1, 0, 0), ("2001:db8::2", 65535, 0, 0)),
    (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 0:0:0:0:0:0:0:1 65535 65535\r\n",
     ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535, 0, 0), ("::1", 65535, 0, 0)),
    (b"PROXY TCP6 ::ffff:1.2.3.4 :: 5 6\r\n", ("::ffff:1.2.3.4", 5, 0, 0), ("::", 6, 0, 0)),
])
def test_v1_families(pp, line, source, destination):
    parser, used = parse(pp, line + b"x", "v1")
    assert used == len(line)
    assert parser.result.source == source and parser.result.destination == destination
    assert parser.result.family == line[6:10].decode()


@pytest.mark.parametrize("line", [
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:"
    b"ffff 65535 65535\r\n",                                       # 107 bytes: the worst case
    b"PROXY UNKNOWN \x00\xff anything  at all\r\n",
])
def test_v1_unknown_accepts_anything_up_to_crlf(pp, line):
    assert len(line) <= 107
    parser, used = parse(pp, line + b"payload")
    assert used == len(line)
    info = parser.result
    assert (info.family, info.source, info.destination, info.proxied) == ("UNKNOWN", None, None,
                                                                          False)


@pytest.mark.parametrize("data, message", [
    # 108 bytes without CRLF in the first 107
    (b"PROXY UNKNOWN " + b"a" * 93 + b"\r\n", "no CRLF in the first 107 bytes"),
    (b"PROXY UNKNOWN " + b"a" * 200, "no CRLF in the first 107 bytes"),
    (b"PROXY TCP4 01.2.3.4 1.2.3.4 1 2\r\n", "source address b'01.2.3.4'"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.004 1 2\r\n", "destination address b'1.2.3.004'"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n", "source port b'01'"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 00\r\n", "destination port b'00'"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 65536\r\n", "destination port b'65536'"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 +2\r\n", "destination port b'+2'"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 100000 2\r\n", "source port b'100000'"),
    (b"PROXY TCP4 1.2.3.256 1.2.3.4 1 2\r\n", "source address b'1.2.3.256'"),
    (b"PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n", "source address b'1.2.3'"),
    (b"PROXY TCP4 1.2.3.4.5 1.2.3.4 1 2\r\n", "source address b'1.2.3.4.5'"),
    (b"PROXY TCP4 ::1 1.2.3.4 1 2\r\n", "not a valid TCP4 address"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "source address b'1.2.3.4' is not a valid TCP6"),
    (b"PROXY TCP6 ::1 :::1 1 2\r\n", "destination address b':::1'"),
    (b"PROXY TCP6 ::1 ::g 1 2\r\n", "destination address b'::g'"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n", "an LF without CR at byte 31"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\rX\n", "a CR not followed by LF at byte 31"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r2\r\n", "a CR not followed by LF"),
    (b"PROXY TCP4  1.2.3.4 1.2.3.4 1 2\r\n", "an empty field"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 \r\n", "an empty field"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", "3 fields after the family, expected 4"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n", "5 fields after the family"),
    (b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n", "unknown protocol family b'TCP5'"),
    (b"PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n", "unknown protocol family b'tcp4'"),
    (b"PROXY UNKNOWNX\r\n", "unknown protocol family b'UNKNOWNX'"),
    (b"PROXY \r\n", "unknown protocol family b''"),
    (b"PROXY TCP4 1.2.3.4\x00 1.2.3.4 1 2\r\n", "source address b'1.2.3.4\\x00'"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 \xd9\xa2\r\n", "destination port b'\\xd9\\xa2'"),
    (b"PROXY TCP6 \xef\xbc\x9a\xef\xbc\x9a1 ::1 1 2\r\n", "source address"),
    (b"PROXY  TCP4 1.2.3.4 1.2.3.4 1 2\r\n", "unknown protocol family b''"),
    (b"PROXYTCP4", "expected b'PROXY ', got b'PROXYT'"),
    (b"proxy ", "expected b'PROXY ', got b'p'"),
])
def test_v1_violations(pp, data, message):
    assert message in error(pp, data, "v1")


def test_v1_error_comes_at_the_byte_that_breaks_the_rule(pp):
    # the 107th byte without CRLF fails at once, without waiting for more
    parser = pp.ProxyParser("v1")
    assert parser.feed(b"PROXY UNKNOWN " + b"a" * 92) == 106
    with pytest.raises(pp.ProxyHeaderError, match="107"):
        parser.feed(b"a")
    # a bad signature fails on its first wrong byte
    parser = pp.ProxyParser("v1")
    parser.feed(b"PRO")
    with pytest.raises(pp.ProxyHeaderError, match="got b'PROX '"):
        parser.feed(b"X ")


def test_error_is_sticky(pp):
    parser = pp.ProxyParser("any")
    with pytest.raises(pp.ProxyHeaderError) as first:
        parser.feed(b"GET / HTTP/1.0\r\n")
    for data in (b"PROXY UNKNOWN\r\n", b""):
        with pytest.raises(pp.ProxyHeaderError) as again:
            parser.feed(data)
        assert str(again.value) == str(first.value)
    assert parser.failed and parser.result is None and parser.needed == 0 and parser.held == 0


def test_error_is_a_value_error(pp):
    assert issubclass(pp.ProxyHeaderError, ValueError)


def test_bad_mode(pp):
    with pytest.raises(ValueError, match="mode must be"):
        pp.ProxyParser("v3")


# --------------------------------------------------------------------------
# mode "any" and mode restrictions
# --------------------------------------------------------------------------

def test_any_decides_on_the_first_byte(pp):
    parser = pp.ProxyParser("any")
    assert parser.version == 0 and parser.needed == 15
    with pytest.raises(pp.ProxyHeaderError, match="the first byte is b'\\\\x16'"):
        parser.feed(b"\x16")            # a TLS ClientHello: rejected on its first byte
    parser = pp.ProxyParser("any")
    parser.feed(b"P")
    assert parser.version == 1
    parser = pp.ProxyParser("any")
    parser.feed(b"\r")
    assert parser.version == 2 and parser.needed == 15


def test_v1_mode_rejects_v2_and_v2_mode_rejects_v1(pp):
    assert "expected b'PROXY '" in error(pp, v2(0, 0, b""), "v1")
    assert "signature does not match at byte 1" in error(pp, b"PROXY UNKNOWN\r\n", "v2")


# --------------------------------------------------------------------------
# v2
# --------------------------------------------------------------------------

def test_v2_tcp4_with_tlvs_and_payload(pp):
    header = v2(1, 0x11, inet4() + tlv(1, b"h2") + tlv(2, "b\xfccher.example".encode())
                + tlv(4, b"\0\0") + tlv(5, b"id-1") + tlv(0x30, b"blue") + tlv(0xE0, b"custom"))
    parser, used = parse(pp, header + b"PAYLOAD", "v2")
    assert used == len(header) and parser.consumed == len(header)
    info = parser.result
    assert (info.version, info.command, info.family) == (2, "PROXY", "TCP4")
    assert info.source == ("1.2.3.4", 1000) and info.destination == ("5.6.7.8", 80)
    assert info.alpn == b"h2" and info.authority == "b\xfccher.example"
    assert info.unique_id == b"id-1" and info.netns == "blue" and info.crc32c is None
    assert info.tlvs == ((1, b"h2"), (2, "b\xfccher.example".encode()), (4, b"\0\0"),
                         (5, b"id-1"), (0x30, b"blue"), (0xE0, b"custom"))


@pytest.mark.parametrize("fam, block, family, source, destination", [
    (0x11, inet4(), "TCP4", ("1.2.3.4", 1000), ("5.6.7.8", 80)),
    (0x12, inet4("0.0.0.0", "255.255.255.255", 0, 65535), "UDP4", ("0.0.0.0", 0),
     ("255.255.255.255", 65535)),
    (0x21, inet6(), "TCP6", ("::1", 1, 0, 0), ("2001:db8::2", 65535, 0, 0)),
    (0x22, inet6("fe80::1", "::ffff:1.2.3.4"), "UDP6", ("fe80::1", 1, 0, 0),
     ("::ffff:1.2.3.4", 65535, 0, 0)),
    (0x31, unix(), "UNIX", "/tmp/src.sock", "/run/dst.sock"),
    (0x32, unix(b"\0abstract", b""), "UNIX_DGRAM", b"\0abstract", ""),
    (0x31, unix(b"x" * 108, b"\xe9t\xe9"), "UNIX", "x" * 108, "\udce9t\udce9"),
])
def test_v2_every_family(pp, fam, block, family, source, destination):
    parser, used = parse(pp, v2(1, fam, block) + b"rest")
    assert used == 16 + len(block)
    info = parser.result
    assert (info.family, info.source, info.destination) == (family, source, destination)


@pytest.mark.parametrize("fam", [0x00, 0x01, 0x02, 0x10, 0x20, 0x30])
def test_v2_unspec_family_or_protocol_ignores_the_block(pp, fam):
    block = b"\x01\x00\x05junk!" + bytes(40)    # not parsed, not held
    parser, used = parse(pp, v2(1, fam, block))
    assert used == 16 + len(block)
    info = parser.result
    assert (info.command, info.family, info.source, info.tlvs) == ("PROXY", "UNSPEC", None, ())


@pytest.mark.parametrize("fam", [0x00, 0x11, 0x21, 0x31, 0xFF])
def test_v2_local_ignores_family_and_block(pp, fam):
    # a health check: addresses ignored (even a family byte that PROXY would
    # reject, and a block shorter than that family's), the result says LOCAL
    for block in (b"", b"\x00" * 7, inet6()):
        parser, used = parse(pp, v2(0, fam, block) + b"next")
        assert used == 16 + len(block) and parser.done
        info = parser.result
        assert (info.version, info.command, info.family, info.source, info.proxied) == (
            2, "LOCAL", "UNSPEC", None, False)


def test_v2_local_holds_16_bytes_whatever_it_announces(pp):
    parser = pp.ProxyParser("v2")
    parser.feed(v2(0, 0, length=65535))
    for _ in range(100):
        parser.feed(bytes(600))
        assert parser.held == 16
    parser.feed(bytes(65535 - 60000) + b"payload")
    assert parser.done and parser.consumed == 16 + 65535


def test_v2_crc32c_good(pp):
    header = with_crc(v2(1, 0x21, inet6() + tlv(1, b"http/1.1")))
    parser, used = parse(pp, header)
    assert used == len(header)
    assert parser.result.crc32c == struct.unpack("!I", header[-4:])[0]
    assert parser.result.tlvs[-1] == (3, header[-4:])


def test_crc32c_function(pp):
    # RFC 3720 B.4 check value, and the iSCSI vector of 32 zero bytes
    assert pp.crc32c(b"123456789") == 0xE3069283
    assert pp.crc32c(bytes(32)) == 0x8A9136AA
    assert pp.crc32c(b"6789", pp.crc32c(b"12345")) == 0xE3069283


@pytest.mark.parametrize("flip", [17, 20, 25, 33, -8, -4, -1])
def test_v2_crc32c_bad(pp, flip):
    # one bit flipped in an address, a TLV's value or the checksum itself
    header = bytearray(with_crc(v2(1, 0x11, inet4() + tlv(2, b"example.com"))))
    parse(pp, bytes(header))                 # the unflipped header is fine
    header[flip] ^= 0x01
    assert "CRC32C mismatch" in error(pp, bytes(header))


def test_v2_ssl_tlv_and_sub_tlvs(pp):
    ssl = (bytes([0x07]) + struct.pack("!I", 0)
           + tlv(0x21, b"TLSv1.3") + tlv(0x22, "caf\xe9.example".encode())
           + tlv(0x23, b"TLS_AES_128_GCM_SHA256") + tlv(0x24, b"RSA-SHA256")
           + tlv(0x25, b"RSA2048") + tlv(0x26, b"X25519") + tlv(0x27, b"rsa_pss_rsae_sha256")
           + tlv(0x28, b"\x30\x82DER") + tlv(0x2F, b"future"))
    parser, _ = parse(pp, with_crc(v2(1, 0x11, inet4() + tlv(0x20, ssl))))
    s = parser.result.ssl
    assert (s.client, s.verify, s.ssl, s.verified) == (7, 0, True, True)
    assert (s.version, s.cn, s.cipher, s.sig_alg, s.key_alg, s.group, s.sig_scheme) == (
        "TLSv1.3", "caf\xe9.example", "TLS_AES_128_GCM_SHA256", "RSA-SHA256", "RSA2048",
        "X25519", "rsa_pss_rsae_sha256")
    assert s.client_cert == b"\x30\x82DER"
    assert s.tlvs[-1] == (0x2F, b"future") and len(s.tlvs) == 9
    parser, _ = parse(pp, v2(1, 0x11, inet4() + tlv(0x20, b"\x01\x00\x00\x00\x05")))
    s = parser.result.ssl
    assert (s.client, s.verify, s.ssl, s.verified, s.version, s.tlvs) == (1, 5, True, False,
                                                                          None, ())


@pytest.mark.parametrize("data, message", [
    (SIG[:5] + b"\x01", "signature does not match at byte 6"),
    (SIG + b"\x11\x11\x00\x0c" + inet4(), "version 1, expected 2"),
    (SIG + b"\x31\x11\x00\x0c" + inet4(), "version 3, expected 2"),
    (SIG + b"\x22\x11\x00\x0c" + inet4(), "unknown command 2"),
    (SIG + b"\x2f\x11\x00\x0c" + inet4(), "unknown command 15"),
    (SIG + b"\x21\x41\x00\x0c" + inet4(), "unknown address family 4"),
    (SIG + b"\x21\x13\x00\x0c" + inet4(), "unknown transport protocol 3"),
    (v2(1, 0x11, inet4()[:11]), "announces 11 bytes after the fixed 16, fewer than the 12"),
    (v2(1, 0x21, inet4()), "fewer than the 36 bytes of its address block (family INET6)"),
    (v2(1, 0x31, bytes(215)), "fewer than the 216"),
    (v2(1, 0x11, inet4() + b"\x01\x00"), "a truncated TLV at offset 28"),
    (v2(1, 0x11, inet4() + b"\x01\x00\x03ab"), "announces 3 bytes, only 2 are left"),
    (v2(1, 0x11, inet4() + tlv(1, b"a") + b"\x02\xff\xff"), "offset 32 announces 65535 bytes"),
    (v2(1, 0x11, inet4() + tlv(1, b"a") + tlv(1, b"b")), "a second ALPN TLV"),
    (v2(1, 0x11, inet4() + tlv(3, b"abc")), "the CRC32C TLV has 3 bytes"),
    (v2(1, 0x11, inet4() + tlv(5, bytes(129))), "a UNIQUE_ID of 129 bytes"),
    (v2(1, 0x11, inet4() + tlv(5, bytes(65000))), "a UNIQUE_ID of 65000 bytes"),
    (v2(1, 0x11, inet4() + tlv(2, b"\xff")), "the AUTHORITY TLV at offset 28 is not valid UTF-8"),
    (v2(1, 0x11, inet4() + tlv(0x30, b"\xed\xa0\x80")), "the NETNS TLV"),
    (v2(1, 0x11, inet4() + tlv(0x20, b"\x01\0\0\0")), "the SSL TLV has 4 bytes"),
    (v2(1, 0x11, inet4() + tlv(0x20, b"\x01\0\0\0\0\x21\x00")), "a truncated SSL sub-TLV"),
    (v2(1, 0x11, inet4() + tlv(0x20, b"\x01\0\0\0\0\x21\x00\x09TLS")),
     "the SSL sub-TLV of type 0x21 at offset 36 announces 9 bytes, only 3 are left"),
    (v2(1, 0x11, inet4() + tlv(0x20, b"\x01\0\0\0\0" + tlv(0x22, b"a") + tlv(0x22, b"b"))),
     "a second SSL CN sub-TLV"),
    (v2(1, 0x11, inet4() + tlv(0x20, b"\x01\0\0\0\0" + tlv(0x23, b"\xc3"))),
     "the SSL CIPHER TLV at offset 36 is not valid UTF-8"),
])
def test_v2_violations(pp, data, message):
    assert message in error(pp, data, "v2")


def test_v2_unique_id_of_128_bytes_is_fine(pp):
    parser, _ = parse(pp, v2(1, 0x11, inet4() + tlv(5, b"u" * 128)))
    assert parser.result.unique_id == b"u" * 128


def test_v2_header_errors_fail_before_the_block_arrives(pp):
    parser = pp.ProxyParser("v2")
    parser.feed(SIG)
    with pytest.raises(pp.ProxyHeaderError, match="unknown command"):
        parser.feed(b"\x25")
    parser = pp.ProxyParser("v2")
    parser.feed(SIG + b"\x21\x21")
    with pytest.raises(pp.ProxyHeaderError, match="fewer than the 36"):
        parser.feed(b"\x00\x0c")         # the length alone decides: no byte of the block needed


def test_v2_65535_announced_then_trickled_memory_follows_bytes(pp):
    block = inet4() + tlv(0xE1, bytes(65535 - 12 - 3))
    header = v2(1, 0x11, block)
    assert len(header) == 16 + 65535
    parser = pp.ProxyParser("v2")
    assert parser.feed(header[:16]) == 16
    assert parser.held == 16 and parser.needed == 65535
    pos = 16
    peak_ratio = 0.0
    for step in [1] * 100 + [7] * 100 + [997] * 64:
        parser.feed(header[pos:pos + step])
        pos += step
        assert parser.held == pos and parser.needed == len(header) - pos
        if hasattr(parser, "capacity"):     # the C twin: the buffer itself
            assert parser.capacity <= max(256, 2 * pos) and parser.capacity <= len(header)
            if parser.capacity > 256:     # a heap buffer: at most twice what arrived
                peak_ratio = max(peak_ratio, parser.capacity / pos)
    assert parser.feed(header[pos:] + b"payload") == len(header) - pos
    assert parser.done and parser.result.tlvs == ((0xE1, bytes(65520)),)
    if hasattr(parser, "capacity"):
        assert parser.capacity == 256 and parser.held == 0   # freed once the result is built
        assert peak_ratio <= 2.0


def test_v2_needed_never_overreads(pp):
    header = with_crc(v2(1, 0x11, inet4() + tlv(1, b"h2")))
    stream = header + b"PAYLOAD"
    parser = pp.ProxyParser("any")
    pos = 0
    while not parser.done:
        n = parser.needed
        assert n >= 1
        assert parser.feed(stream[pos:pos + n]) == n
        pos += n
    assert pos == len(header)


def test_v1_needed_never_overreads(pp):
    stream = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nPAYLOAD"
    parser = pp.ProxyParser("any")
    pos = 0
    while not parser.done:
        n = parser.needed
        assert 1 <= n
        assert parser.feed(stream[pos:pos + n]) == n
        pos += n
    assert stream[pos:] == b"PAYLOAD"


def test_parse_header(pp):
    info, rest = pp.parse_header(b"PROXY UNKNOWN\r\nabc")
    assert info.family == "UNKNOWN" and rest == b"abc"
    with pytest.raises(pp.ProxyHeaderError, match="incomplete: 5 bytes given, at least 10 more"):
        pp.parse_header(b"PROXY")


def test_feed_takes_any_bytes_like(pp):
    data = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"
    for form in (bytearray(data), memoryview(data)):
        parser, used = parse(pp, form)
        assert used == len(data) and parser.result.source == ("1.2.3.4", 1)


# --------------------------------------------------------------------------
# Properties: splits, and C vs pure
# --------------------------------------------------------------------------

def _outcome(module, chunks, mode):
    parser = module.ProxyParser(mode)
    used = []
    for chunk in chunks:
        try:
            used.append(parser.feed(chunk))
        except module.ProxyHeaderError as exc:
            return ("error", str(exc), parser.consumed)
    return ("ok", parser.done, parser.result, parser.consumed, sum(used), parser.needed,
            parser.version)


def _splits(data, cuts):
    points = sorted({min(c, len(data)) for c in cuts})
    chunks, last = [], 0
    for p in points + [len(data)]:
        chunks.append(data[last:p])
        last = p
    return chunks


def _valid_headers():
    addr = st.sampled_from([
        (0x11, inet4()), (0x12, inet4("9.9.9.9", "1.1.1.1", 53, 53)), (0x21, inet6()),
        (0x22, inet6("fe80::1", "::")), (0x31, unix()), (0x32, unix(b"\0a", b"/b"))])
    tlvs = st.lists(st.one_of(
        st.builds(lambda v: tlv(1, v), st.binary(max_size=20)),
        st.builds(lambda v: tlv(2, v.encode()), st.text(max_size=10)),
        st.builds(lambda v: tlv(5, v), st.binary(max_size=130)),
        st.builds(lambda t, v: tlv(t, v), st.sampled_from([4, 0xE0, 0xF0, 0x99]),
                  st.binary(max_size=40)),
        st.builds(lambda c, v, sub: tlv(0x20, bytes([c]) + struct.pack("!I", v) + sub),
                  st.integers(0, 7), st.integers(0, 2**32 - 1),
                  st.sampled_from([b"", tlv(0x21, b"TLSv1.2"),
                                   tlv(0x22, b"cn") + tlv(0x28, b"x")])),
    ), max_size=4, unique_by=lambda t: t[0])
    v2s = st.builds(lambda a, t, crc: (with_crc if crc else (lambda h: h))(
        v2(1, a[0], a[1] + b"".join(t))), addr, tlvs, st.booleans())
    v1s = st.one_of(
        st.builds(lambda a, b, c, d: b"PROXY TCP4 %d.%d.%d.%d 10.0.0.1 %d %d\r\n" % (
            a, b, c, d, a * 257, b * 13), *[st.integers(0, 255)] * 4),
        st.builds(lambda s, p: b"PROXY TCP6 " + s.encode() + b" ::1 %d 0\r\n" % p,
                  st.sampled_from(["::", "::1", "2001:db8::7", "fe80::1:2:3:4",
                                   "1:2:3:4:5:6:7:8"]), st.integers(0, 65535)),
        st.just(b"PROXY UNKNOWN\r\n"))
    return st.one_of(v1s, v2s, st.just(v2(0, 0, b"")))


@given(_valid_headers(), st.binary(max_size=10), st.lists(st.integers(0, 400), max_size=12),
       st.sampled_from(["any", "v1", "v2"]))
def test_any_split_gives_the_same_as_one_feed(pp, header, payload, cuts, mode):
    data = header + payload
    whole = _outcome(pp, [data], mode)
    assert _outcome(pp, _splits(data, cuts), mode) == whole
    if whole[0] == "ok":
        assert whole[1] and whole[3] == len(header)


@given(_valid_headers())
def test_byte_by_byte_gives_the_same_as_one_feed(pp, header):
    data = header + b"payload"
    assert _outcome(pp, [data[i:i + 1] for i in range(len(data))], "any") == \
        _outcome(pp, [data], "any")


def _mutate(data, edits):
    buf = bytearray(data)
    for kind, pos, value in edits:
        if not buf:
            break
        pos %= len(buf)
        if kind == 0:
            buf[pos] = value
        elif kind == 1:
            del buf[pos]
        elif kind == 2:
            buf.insert(pos, value)
        else:
            buf[pos] ^= 1 << (value % 8)
    return bytes(buf)


@given(st.one_of(
    st.binary(max_size=120),
    st.builds(lambda b: b"PROXY " + b, st.binary(max_size=110)),
    st.builds(lambda b: SIG + b, st.binary(max_size=120)),
    st.builds(_mutate, _valid_headers(),
              st.lists(st.tuples(st.integers(0, 3), st.integers(0, 300), st.integers(0, 255)),
                       min_size=1, max_size=3)),
), st.lists(st.integers(0, 300), max_size=6), st.sampled_from(["any", "v1", "v2"]))
def test_twins_agree_on_arbitrary_input(header_or_junk, cuts, mode):
    from cserver import _proxy
    chunks = _splits(header_or_junk, cuts)
    c = _outcome(_proxy, chunks, mode)
    py = _outcome(_proxy_py, chunks, mode)
    assert c == py
    assert _outcome(_proxy_py, [header_or_junk], mode) == py      # splits don't matter


def test_c_twin_buffer_never_exceeds_the_announced_header():
    from cserver import _proxy
    header = v2(1, 0x11, inet4() + tlv(0xE0, bytes(300 - 16 - 12 - 3)))
    assert len(header) == 300
    parser = _proxy.ProxyParser("v2")
    parser.feed(header[:257])              # past the inline 256: doubling would say 512
    assert parser.capacity == 300 and parser.held == 257
    parser.feed(header[257:])
    assert parser.done and parser.result.tlvs[0][0] == 0xE0 and parser.held == 0


def test_c_twin_holds_no_heap_for_small_headers():
    from cserver import _proxy
    parser = _proxy.ProxyParser()
    parser.feed(v2(1, 0x31, unix() + tlv(1, b"h2")))
    assert parser.done and parser.capacity == 256


# --------------------------------------------------------------------------
# A third parser: the proxy-protocol package from PyPI, where installed
# --------------------------------------------------------------------------

def _pypi_view(result):
    """What the proxy-protocol package parsed, in ProxyInfo's terms."""
    from proxyprotocol.result import ProxyResultIPv4, ProxyResultIPv6, ProxyResultUnix
    if isinstance(result, ProxyResultIPv4):
        return ((str(result.source[0]), result.source[1]), (str(result.dest[0]), result.dest[1]))
    if isinstance(result, ProxyResultIPv6):
        return ((str(result.source[0]), result.source[1], 0, 0),
                (str(result.dest[0]), result.dest[1], 0, 0))
    if isinstance(result, ProxyResultUnix):
        return (result.source, result.dest)
    return (None, None)


@given(_valid_headers())
def test_the_pypi_parser_agrees_on_valid_headers(pp, header):
    """proxy-protocol 0.11 parses the addresses and TLVs of every valid
    header the same way (it differs elsewhere: it is lax on v1, e.g. it
    accepts leading zeros in ports and any bytes after UNKNOWN as one
    field, it does not check the protocol nibble, it reads abstract Unix
    addresses as ASCII text, and verifies a CRC32C only with the ``crc32c``
    package installed; so only valid headers are compared)."""
    from proxyprotocol.v1 import ProxyProtocolV1
    from proxyprotocol.v2 import ProxyProtocolV2
    parser, used = parse(pp, header)
    info = parser.result
    theirs = (ProxyProtocolV1() if header.startswith(b"PROXY") else ProxyProtocolV2()).unpack(
        header)
    if info.command == "LOCAL" or info.family == "UNKNOWN":
        assert not theirs.proxied or type(theirs).__name__ == "ProxyResultUnknown"
        return
    if isinstance(info.source, bytes):         # abstract: they decode as ASCII, NULs stripped
        return
    assert _pypi_view(theirs) == (info.source, info.destination)
    if info.version == 2:
        t = theirs.tlv
        assert t.alpn == info.alpn and t.authority == info.authority
        assert t.unique_id == (info.unique_id or b"")
        if info.ssl is not None:
            assert t.ssl.verified == (info.ssl.verify == 0) or not info.ssl.client & 6
