"""Differential fuzz target: the C PROXY header parser against its pure twin
(and, for the headers both accept, the proxy-protocol package from PyPI as
a third, independent parser, where it is installed).

An input is read as: byte 0, the control byte (bits 0-1: the mode, "any",
"v1", "v2"; bits 2-5: the chunk size the stream is cut into, 0 = one feed;
bit 6: repair a v2 stream first, so that mutations inside the TLVs reach the
checks behind the length and the checksum: its length is set to the whole
stream and the first CRC32C TLV, if any, gets the right checksum; bit 7:
also feed the C twin byte by byte); the rest, the stream (a header and what
follows it).  The seed corpus (tests/fuzz/corpus/proxy/) holds valid v1 and
v2 headers of every family, with TLVs, SSL sub-TLVs and CRC32C, behind a
control byte, so libFuzzer's mutations start from the interesting shapes.

Both twins must give the same results (ProxyInfo equal), the same error
(message) at the same consumed count, the same ``needed``/``held`` while
reading, whatever the chunking; the pure twin fed in one call must give
what it gives chunked.  Any difference raises AssertionError: libFuzzer
stops and writes the input (``crash-*``) for replay.

Run (see docs/proxy.md)::

    python tests/fuzz/fuzz_proxy.py -max_total_time=60 NEW_CORPUS_DIR tests/fuzz/corpus/proxy
    python tests/fuzz/fuzz_proxy.py crash-<sha1>          # replay one input

It prints ``fuzz_proxy: cases N, headers compared H, errors compared E,
third-party compared T, divergences 0`` about once a second and when it stops.
"""
import ipaddress
import sys
import time

import atheris

with atheris.instrument_imports():
    from cserver import _proxy_py as PY
from cserver import _proxy as C  # compiled: not instrumented, compared

try:
    from proxyprotocol.v1 import ProxyProtocolV1
    from proxyprotocol.v2 import ProxyProtocolV2
except ImportError:  # the third oracle is optional
    ProxyProtocolV1 = ProxyProtocolV2 = None

MODES = ["any", "v1", "v2", "any"]
STATS = {"cases": 0, "headers": 0, "errors": 0, "third": 0, "third_rejected": 0,
         "divergences": 0}
_last_report = [time.monotonic()]


def report():
    sys.stderr.write("fuzz_proxy: cases %(cases)d, headers compared %(headers)d, errors compared "
                     "%(errors)d, third-party compared %(third)d (rejected %(third_rejected)d), "
                     "divergences %(divergences)d\n"
                     % STATS)
    sys.stderr.flush()


def run(mod, mode, chunks):
    """Everything one twin does with the chunks, as comparable data."""
    parser = mod.ProxyParser(mode)
    events = []
    for chunk in chunks:
        state = (parser.needed, parser.held, parser.consumed, parser.version)
        try:
            used = parser.feed(chunk)
        except mod.ProxyHeaderError as exc:
            events.append(("error", str(exc), parser.consumed, parser.failed))
            return events
        events.append(("fed", state, used, parser.done))
        if parser.done:
            break
    events.append(("end", parser.done, parser.result, parser.consumed, parser.needed,
                   parser.version))
    return events


def cut(stream, size):
    if size == 0:
        return [stream]
    return [stream[i:i + size] for i in range(0, len(stream), size)] or [b""]


def third_party(stream, info, used):
    """The proxy-protocol package on a header both twins accepted."""
    if ProxyProtocolV1 is None or info.family in ("UNKNOWN", "UNSPEC") or isinstance(
            info.source, bytes) or (isinstance(info.source, str) and not info.source.isascii()):
        return
    header = stream[:used]
    if info.family in ("UNIX", "UNIX_DGRAM"):
        # they decode the whole field, trailing NULs stripped, as ASCII: a
        # path ends at its first NUL for us (sun_path), in the file system
        # encoding; compare only where both readings are the same
        fields = [header[16:124].rstrip(b"\0"), header[124:232].rstrip(b"\0")]
        if any(b"\0" in f or not f.isascii() for f in fields):
            return
    try:
        theirs = (ProxyProtocolV1() if info.version == 1 else ProxyProtocolV2()).unpack(header)
    except Exception as exc:  # where they are stricter than the spec: counted, shown once
        STATS["third_rejected"] += 1
        if STATS["third_rejected"] == 1:
            sys.stderr.write("fuzz_proxy: proxy-protocol rejects a header both twins accept "
                             "(%s: %s): %r\n" % (type(exc).__name__, exc, header[:120]))
        return
    if info.family in ("UNIX", "UNIX_DGRAM"):
        got = (theirs.source, theirs.dest)
    else:
        # compared as addresses, not text (ipaddress writes an IPv4-mapped
        # IPv6 address in hex before 3.13, inet_ntop in dotted form)
        got = ((theirs.source[0], theirs.source[1]), (theirs.dest[0], theirs.dest[1]))
        ours = tuple((ipaddress.ip_address(a[0]), a[1]) for a in (info.source, info.destination))
        assert got == ours, ("proxy-protocol differs", got, info)
        got = (info.source, info.destination)
    assert got == (info.source, info.destination), ("proxy-protocol differs", got, info)
    if info.version == 2:
        t = theirs.tlv
        assert (t.alpn, t.authority, t.unique_id) == (info.alpn, info.authority,
                                                      info.unique_id or b""), (t, info)
    STATS["third"] += 1


def repair(stream):
    """A v2 stream made self-consistent: the length covers the whole stream
    (at most 65535 bytes after the fixed 16), and the first CRC32C TLV met
    walking the TLVs after the address block holds the right checksum."""
    if len(stream) < 16 or not stream.startswith(PY.V2_SIGNATURE):
        return stream
    header = bytearray(stream[:16 + 65535])
    header[14:16] = (len(header) - 16).to_bytes(2, "big")
    off = 16 + {1: 12, 2: 36, 3: 216}.get(header[13] >> 4, 0)
    while off + 3 <= len(header):
        size = int.from_bytes(header[off + 1:off + 3], "big")
        if header[off] == 0x03 and size == 4 and off + 7 <= len(header):
            header[off + 3:off + 7] = bytes(4)
            header[off + 3:off + 7] = PY.crc32c(header).to_bytes(4, "big")
            break
        off += 3 + size
    return bytes(header) + stream[16 + 65535:]


def one_input(data):
    if not data:
        return
    control = data[0]
    stream = data[1:]
    mode = MODES[control & 3]
    size = (control >> 2) & 15
    if control & 0x40:
        stream = repair(stream)
    chunks = cut(stream, size)
    c_events = run(C, mode, chunks)
    py_events = run(PY, mode, chunks)
    STATS["cases"] += 1
    if c_events != py_events:
        STATS["divergences"] += 1
        report()
        raise AssertionError("C and pure twins diverge (mode %r, chunk size %d)\nC:  %r\npy: %r"
                             % (mode, size, c_events, py_events))
    whole = run(PY, mode, [stream])
    final = lambda ev: [e for e in ev if e[0] != "fed"]  # noqa: E731
    if final(whole) != final(py_events):
        STATS["divergences"] += 1
        raise AssertionError("the split changed the outcome (mode %r, chunk size %d)\n"
                             "one feed: %r\nchunked:  %r" % (mode, size, whole, py_events))
    if control & 0x80:
        single = run(C, mode, [stream[i:i + 1] for i in range(len(stream))] or [b""])
        if final(single) != final(py_events):
            STATS["divergences"] += 1
            raise AssertionError("C byte by byte differs: %r vs %r" % (single, py_events))
    last = py_events[-1]
    if last[0] == "error":
        STATS["errors"] += 1
    elif last[1]:
        STATS["headers"] += 1
        third_party(stream, last[2], last[3])
    now = time.monotonic()
    if now - _last_report[0] >= 1.0:
        _last_report[0] = now
        report()


def main():
    import atexit
    atexit.register(report)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
