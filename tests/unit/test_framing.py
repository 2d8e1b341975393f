"""The length-prefix decoder and encoder, over the C twin and the pure twin.

The expected frames are built here from first principles (int.to_bytes), not
with the encoder under test.
"""
import array
import socket
import threading
import time
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cserver
from cserver.errors import FrameError, FrameTooLarge, IncompleteFrame

# -- header descriptions and an independent model of them -----------------

_FORMATS = {"!I": (4, "big"), ">I": (4, "big"), "<I": (4, "little"),
            "!H": (2, "big"), "<H": (2, "little"), "!B": (1, "big"),
            "!Q": (8, "big"), "<Q": (8, "little"), "=B": (1, "big")}

LAYOUTS = [
    {},
    {"fmt": "!H"}, {"fmt": "<H"}, {"fmt": "!B"}, {"fmt": "!Q"}, {"fmt": "<Q"},
    {"fmt": "<I"}, {"fmt": ">I"}, {"fmt": "=B"},
    {"length_size": 3}, {"length_size": 3, "byteorder": "little"},
    {"length_size": 8, "byteorder": "little"}, {"length_size": 1},
    # Netty's documented layouts
    {"length_size": 2, "initial_bytes_to_strip": 0},
    {"length_size": 2, "length_adjustment": -2, "initial_bytes_to_strip": 0},
    {"length_offset": 2, "length_size": 3, "initial_bytes_to_strip": 0},
    {"length_size": 3, "length_adjustment": 2, "initial_bytes_to_strip": 0},
    {"length_offset": 1, "length_size": 2, "length_adjustment": 1,
     "initial_bytes_to_strip": 3},
    {"length_offset": 1, "length_size": 2, "length_adjustment": -3,
     "initial_bytes_to_strip": 3},
    # strip only part of the header, or more than the header
    {"length_offset": 3, "length_size": 2, "initial_bytes_to_strip": 1},
    {"length_size": 2, "initial_bytes_to_strip": 4, "length_adjustment": 2},
]


def model(layout):
    """(size, byteorder, offset, adjustment, strip) from a layout."""
    if "fmt" in layout:
        size, order = _FORMATS[layout["fmt"]]
    elif "length_size" in layout:
        size, order = layout["length_size"], layout.get("byteorder", "big")
    else:
        size, order = 4, "big"
    offset = layout.get("length_offset", 0)
    adjustment = layout.get("length_adjustment", 0)
    strip = layout.get("initial_bytes_to_strip", offset + size)
    return size, order, offset, adjustment, strip


def decoder(mod, layout, **kw):
    layout = dict(layout)
    fmt = layout.pop("fmt", None)
    return mod.FrameDecoder(fmt, **layout, **kw)


def build(layout, bodies, fill=b"\xa5"):
    """The wire stream for ``bodies`` and the frames a decoder delivers."""
    size, order, offset, adjustment, strip = model(layout)
    stream, expected = [], []
    for body in bodies:
        frame = fill * offset + (len(body) - adjustment).to_bytes(size, order) + body
        stream.append(frame)
        expected.append(frame[strip:])
    return b"".join(stream), expected


def body_strategy(layout):
    size, _, _, adjustment, strip = model(layout)
    low = max(0, adjustment, strip - model(layout)[2] - size)
    high = min(300, (1 << (8 * size)) - 1 + adjustment)
    return st.lists(st.binary(min_size=low, max_size=high), max_size=8)


def chunks_at(stream, cuts):
    points = sorted(set(c % (len(stream) + 1) for c in cuts))
    out, last = [], 0
    for p in points + [len(stream)]:
        out.append(stream[last:p])
        last = p
    return out


def feed_all(dec, chunks):
    frames = []
    for chunk in chunks:
        frames.extend(bytes(f) for f in dec.feed(chunk))
    return frames


def feed_via_buffer(dec, stream, step):
    frames, pos = [], 0
    while pos < len(stream):
        buf = dec.get_buffer(step)
        n = min(len(buf), step, len(stream) - pos)
        buf[:n] = stream[pos:pos + n]
        del buf  # a view of the decoder's buffer must not outlive the call
        frames.extend(bytes(f) for f in dec.buffer_updated(n))
        pos += n
    return frames


# -- property tests -----------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS, ids=repr)
@given(data=st.data())
@settings(max_examples=25)
def test_any_split_yields_the_same_frames(twin, layout, data):
    bodies = data.draw(body_strategy(layout))
    stream, expected = build(layout, bodies)
    cuts = data.draw(st.lists(st.integers(0, 1 << 16), max_size=12))
    pool = twin.BufferPool(slab_size=256, max_slabs=4)
    one_byte_feeds = [stream[i:i + 1] for i in range(len(stream))]
    for chunks in (chunks_at(stream, cuts), [stream], one_byte_feeds):
        dec = decoder(twin, layout, pool=pool)
        assert feed_all(dec, chunks) == expected
        assert dec.pending == 0
        dec.eof()
    step = data.draw(st.integers(1, 700))
    dec = decoder(twin, layout, pool=pool)
    assert feed_via_buffer(dec, stream, step) == expected
    dec.eof()
    assert pool.stats()["in_use"] == 0


def pattern(n, seed=0):
    """``n`` bytes that differ from one frame to the next."""
    return (bytes(range(seed % 7, 256)) * (n // 200 + 1))[:n]


SIZES = st.one_of(st.integers(0, 3000),
                  st.sampled_from([63, 64, 65, 255, 256, 4095, 65535, 65536, 70000]))


@given(sizes=st.lists(SIZES, max_size=6), step=st.integers(1, 1 << 17))
def test_coalesced_streams_and_large_frames(twin, sizes, step):
    # frames larger than a slab, fed in chunks of any size
    bodies = [pattern(n, i) for i, n in enumerate(sizes)]
    stream, expected = build({}, bodies)
    pool = twin.BufferPool(slab_size=1024, max_slabs=2)
    dec = twin.FrameDecoder(pool=pool)
    assert feed_all(dec, [stream[i:i + step] for i in range(0, len(stream), step)]) == expected
    dec = twin.FrameDecoder(pool=pool)
    assert feed_via_buffer(dec, stream, step) == expected
    assert pool.stats()["in_use"] == 0


@pytest.mark.parametrize("step", [1 << 30, 65536, 1000, 7])
def test_frames_of_every_size(twin, step):
    sizes = [0, 1, 63, 64, 65, 255, 256, 4095, 65535, 65536, 70000, 200000, 3]
    bodies = [pattern(n, i) for i, n in enumerate(sizes)]
    stream, expected = build({}, bodies)
    dec = twin.FrameDecoder()
    assert feed_all(dec, [stream[i:i + step] for i in range(0, len(stream), step)]) == expected
    if step > 1:
        dec = twin.FrameDecoder()
        assert feed_via_buffer(dec, stream, step) == expected


@given(bodies=st.lists(st.binary(max_size=100), max_size=5),
       fmt=st.sampled_from(sorted(_FORMATS)))
def test_encoder_round_trip(twin, bodies, fmt):
    enc = twin.FrameEncoder(fmt)
    stream = b"".join(enc.encode(b) for b in bodies)
    assert stream == build({"fmt": fmt}, bodies)[0]
    assert stream == b"".join(twin.encode_frame(b, fmt) for b in bodies)
    assert twin.FrameDecoder(fmt).feed(stream) == bodies


def outcome(mod, layout, chunks, **kw):
    """Frames delivered and the error raised (type name, message) or None."""
    dec = decoder(mod, layout, **kw)
    frames = []
    try:
        for chunk in chunks:
            frames.extend(bytes(f) for f in dec.feed(chunk))
        dec.eof()
    except FrameError as exc:
        assert dec.failed
        with pytest.raises(type(exc)):
            dec.feed(b"")
        return frames, (type(exc).__name__, str(exc))
    return frames, None


@settings(max_examples=300, deadline=2000)
@given(layout=st.sampled_from(LAYOUTS), garbage=st.binary(max_size=400),
       cuts=st.lists(st.integers(0, 1 << 16), max_size=8), data=st.data())
def test_fuzz_twins_agree_on_any_input(layout, garbage, cuts, data):
    """Bounded fuzz target: arbitrary bytes (alone, or after valid frames)
    give the same frames and the same error for both twins and any split."""
    from cserver import _framing, _framing_py
    bodies = data.draw(body_strategy(layout).map(lambda b: b[:3]))
    stream = build(layout, bodies)[0] + garbage
    limit = data.draw(st.sampled_from([0, 3, 40, 1000, 1 << 20]))
    limit = max(limit, model(layout)[3])
    whole = outcome(_framing_py, layout, [stream], max_frame_size=limit)
    assert outcome(_framing, layout, [stream], max_frame_size=limit) == whole
    assert outcome(_framing, layout, chunks_at(stream, cuts), max_frame_size=limit) == whole
    assert outcome(_framing_py, layout, chunks_at(stream, cuts), max_frame_size=limit) == whole
    ones = [stream[i:i + 1] for i in range(len(stream))]
    assert outcome(_framing, layout, ones, max_frame_size=limit) == whole


# -- Netty's documented LengthFieldBasedFrameDecoder examples ------------

HELLO = b"HELLO, WORLD"
NETTY = [
    # (parameters, wire bytes, delivered frame)
    (dict(length_size=2, initial_bytes_to_strip=0),
     b"\x00\x0c" + HELLO, b"\x00\x0c" + HELLO),
    (dict(length_size=2, initial_bytes_to_strip=2), b"\x00\x0c" + HELLO, HELLO),
    (dict(length_size=2, length_adjustment=-2, initial_bytes_to_strip=0),
     b"\x00\x0e" + HELLO, b"\x00\x0e" + HELLO),
    (dict(length_offset=2, length_size=3, initial_bytes_to_strip=0),
     b"\xca\xfe\x00\x00\x0c" + HELLO, b"\xca\xfe\x00\x00\x0c" + HELLO),
    (dict(length_size=3, length_adjustment=2, initial_bytes_to_strip=0),
     b"\x00\x00\x0c\xca\xfe" + HELLO, b"\x00\x00\x0c\xca\xfe" + HELLO),
    (dict(length_offset=1, length_size=2, length_adjustment=1, initial_bytes_to_strip=3),
     b"\xca\x00\x0c\xfe" + HELLO, b"\xfe" + HELLO),
    (dict(length_offset=1, length_size=2, length_adjustment=-3, initial_bytes_to_strip=3),
     b"\xca\x00\x10\xfe" + HELLO, b"\xfe" + HELLO),
]


@pytest.mark.parametrize("params,wire,frame", NETTY, ids=range(len(NETTY)))
def test_netty_layouts(twin, params, wire, frame):
    assert twin.FrameDecoder(**params).feed(wire * 3) == [frame] * 3
    dec = twin.FrameDecoder(**params)
    assert feed_all(dec, [wire[i:i + 1] for i in range(len(wire))]) == [frame]


# -- regressions tokio's LengthDelimitedCodec hit -------------------------

def test_limit_is_checked_after_adjustment(twin):
    # +5: a field of 8 announces a 13-byte body, over a limit of 10
    dec = twin.FrameDecoder(length_size=1, length_adjustment=5, max_frame_size=10)
    with pytest.raises(FrameTooLarge, match=r"frame length 13 .*field 8.*max_frame_size 10"):
        dec.feed(b"\x08")
    # -5: a field of 14 announces a 9-byte body, within the limit
    dec = twin.FrameDecoder(length_size=1, length_adjustment=-5, max_frame_size=10)
    assert dec.feed(b"\x0e" + b"x" * 9) == [b"x" * 9]


def test_limit_wider_than_the_header_is_clamped(twin):
    assert twin.FrameDecoder("!H", max_frame_size=10 << 20).max_frame_size == 65535
    assert twin.FrameDecoder("!B").max_frame_size == 255
    assert twin.FrameDecoder(length_size=3).max_frame_size == cserver.DEFAULT_MAX_FRAME_SIZE
    assert twin.FrameDecoder("!B", length_adjustment=-1).max_frame_size == 254
    assert twin.FrameDecoder("!B", length_adjustment=4).max_frame_size == 259
    assert twin.FrameDecoder("!Q").max_frame_size == cserver.DEFAULT_MAX_FRAME_SIZE
    assert twin.FrameEncoder("!H", max_frame_size=10 << 20).max_frame_size == 65535


def test_encoder_never_truncates_a_length(twin):
    with pytest.raises(FrameTooLarge, match="65536.*65535"):
        twin.encode_frame(b"x" * 65536, "!H", max_frame_size=1 << 20)
    with pytest.raises(FrameTooLarge, match="256.*255"):
        twin.FrameEncoder("!B").encode(b"x" * 256)
    with pytest.raises(FrameTooLarge, match="101.*100"):
        twin.FrameEncoder(max_frame_size=100).header(101)
    assert twin.encode_frame(b"x" * 65535, "!H")[:2] == b"\xff\xff"
    # the length field itself must fit even when the limit allows more
    enc = twin.FrameEncoder("!B", length_adjustment=-10)
    with pytest.raises(FrameTooLarge):
        enc.header(250)   # field would be 260
    assert enc.header(245) == b"\xff"


# -- errors -------------------------------------------------------------

def test_oversized_header_fails_fast_with_limit_and_value(twin):
    dec = twin.FrameDecoder(max_frame_size=100)
    with pytest.raises(FrameTooLarge) as info:
        dec.feed(b"\x00\x00\x01\x00")   # header only: no payload buffered
    assert "256" in str(info.value) and "100" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert dec.failed and dec.pending == 0
    for call in (lambda: dec.feed(b""), lambda: dec.feed(b"\x00\x00\x00\x00"), dec.eof,
                 lambda: dec.get_buffer()):
        with pytest.raises(FrameTooLarge):
            call()


def test_eight_byte_length_does_not_overflow(twin):
    dec = twin.FrameDecoder("!Q")
    with pytest.raises(FrameTooLarge, match="18446744073709551615"):
        dec.feed(b"\xff" * 8)
    dec = twin.FrameDecoder("!Q", length_adjustment=-8)
    with pytest.raises(FrameError, match="-8"):
        dec.feed(b"\x00" * 8)


def test_negative_length_after_adjustment(twin):
    dec = twin.FrameDecoder(length_size=2, length_adjustment=-4, initial_bytes_to_strip=0)
    with pytest.raises(FrameError) as info:
        dec.feed(b"\x00\x02")
    assert type(info.value) is FrameError
    assert "-2" in str(info.value) and "-4" in str(info.value)


def test_frame_shorter_than_strip(twin):
    dec = twin.FrameDecoder(length_size=1, initial_bytes_to_strip=5)
    assert dec.feed(b"\x04abcd") == [b""]
    with pytest.raises(FrameError, match="3 bytes .*initial_bytes_to_strip 5"):
        dec.feed(b"\x02ab")


def test_frames_before_a_bad_header_are_delivered_first(twin):
    dec = twin.FrameDecoder(max_frame_size=10)
    good = twin.encode_frame(b"ok")
    assert dec.feed(good + good + b"\x00\x00\x00\xff") == [b"ok", b"ok"]
    with pytest.raises(FrameTooLarge, match="255"):
        dec.feed(good)


@pytest.mark.parametrize("wire,message", [
    (b"\x00\x00", "2 of 4 header bytes"),
    (b"\x00\x00\x00\x05ab", "6 of 9 bytes"),
])
def test_end_of_stream_inside_a_frame(twin, wire, message):
    dec = twin.FrameDecoder()
    assert dec.feed(wire) == []
    assert dec.pending == len(wire)
    with pytest.raises(IncompleteFrame, match=message):
        dec.eof()
    assert dec.failed


def test_clean_end_of_stream(twin):
    dec = twin.FrameDecoder()
    assert dec.feed(b"\x00\x00\x00\x01x") == [b"x"]
    dec.eof()
    dec.eof()
    assert not dec.failed


@pytest.mark.parametrize("args,kwargs,exc", [
    (("!i",), {}, ValueError), (("II",), {}, ValueError), (("!",), {}, ValueError),
    ((4,), {}, TypeError), ((), {"length_size": 5}, ValueError),
    (("!I",), {"length_size": 4}, ValueError), ((), {"byteorder": "middle"}, ValueError),
    ((), {"max_frame_size": -1}, ValueError), ((), {"length_offset": -1}, ValueError),
    ((), {"initial_bytes_to_strip": -1}, ValueError),
    ((), {"length_size": 1, "length_adjustment": -256}, ValueError),
    ((), {"length_adjustment": 200, "max_frame_size": 100}, ValueError),
    ((), {"max_frame_size": 1.5}, TypeError),
])
def test_bad_parameters(twin, args, kwargs, exc):
    with pytest.raises(exc):
        twin.FrameDecoder(*args, **kwargs)


def test_bad_input_types(twin):
    dec = twin.FrameDecoder()
    with pytest.raises(TypeError):
        dec.feed("text")
    with pytest.raises(TypeError):
        dec.feed(None)
    assert not dec.failed


def test_any_bytes_like_input(twin):
    wire = twin.encode_frame(b"abcd") + twin.encode_frame(b"")
    dec = twin.FrameDecoder()
    assert dec.feed(bytearray(wire[:3])) == []
    assert dec.feed(memoryview(wire)[3:]) == [b"abcd", b""]
    ints = array.array("I", wire[:8])   # a non-byte item format
    assert dec.feed(ints) == [b"abcd"]


def test_zero_copy_views(twin):
    wire = b"".join(twin.encode_frame(b"f%d" % i) for i in range(3))
    dec = twin.FrameDecoder(copy=False)
    first = dec.feed(wire[:5])
    frames = first + dec.feed(wire[5:])
    assert [bytes(f) for f in frames] == [b"f0", b"f1", b"f2"]


def test_buffer_updated_out_of_range(twin):
    dec = twin.FrameDecoder()
    n = len(dec.get_buffer())
    with pytest.raises(ValueError):
        dec.buffer_updated(n + 1)
    with pytest.raises(ValueError):
        dec.buffer_updated(-1)


def test_read_from_socket(twin):
    a, b = socket.socketpair()
    try:
        wire = b"".join(twin.encode_frame(b"m" * n) for n in (0, 1, 70000, 3))
        a.sendall(wire[:10])
        dec = twin.FrameDecoder()
        frames = []
        frames += dec.read_from(b)
        a.sendall(wire[10:])
        a.shutdown(socket.SHUT_WR)
        for _ in range(1000):
            got = dec.read_from(b)
            if got is None:
                break
            frames += got
        assert [len(f) for f in frames] == [0, 1, 70000, 3]
        assert dec.read_from(b) is None
    finally:
        a.close()
        b.close()


def test_read_from_socket_cut_inside_a_frame(twin):
    a, b = socket.socketpair()
    try:
        a.sendall(b"\x00\x00\x00\x09abc")
        a.close()
        dec = twin.FrameDecoder()
        with pytest.raises(IncompleteFrame, match="7 of 13"):
            for _ in range(10):
                assert dec.read_from(b) == []
    finally:
        a.close()
        b.close()


def test_encoder_prefix_and_header(twin):
    enc = twin.FrameEncoder(length_offset=2, length_size=2)
    assert enc.header_size == 4
    assert enc.header(5) == b"\x00\x00\x00\x05"
    assert enc.header(5, prefix=b"\xca\xfe") == b"\xca\xfe\x00\x05"
    assert enc.encode(b"hello", prefix=b"\xca\xfe") == b"\xca\xfe\x00\x05hello"
    with pytest.raises(ValueError):
        enc.header(5, prefix=b"x")
    with pytest.raises(ValueError):
        enc.header(-1)
    with pytest.raises(FrameError):
        twin.FrameEncoder(length_adjustment=3).header(2)
    assert twin.FrameEncoder("<H").encode(b"ab") == b"\x02\x00ab"
    assert twin.encode_frame(memoryview(b"xyz")) == b"\x00\x00\x00\x03xyz"


def test_public_names():
    from cserver import framing
    assert cserver.FrameDecoder is framing.FrameDecoder
    assert cserver.encode_frame is framing.encode_frame
    assert issubclass(cserver.FrameTooLarge, cserver.FrameError)
    assert issubclass(cserver.IncompleteFrame, cserver.FrameError)
    assert issubclass(cserver.FrameError, ValueError)
    assert "FrameDecoder" not in cserver.__all__
    assert framing.COMPILED == (not cserver.PURE)


@pytest.mark.parametrize("cut", [4, 5, 70000, 100003])
def test_large_frame_cut_reports_what_was_received(twin, cut):
    wire = twin.encode_frame(pattern(100000))
    for step in (cut, 1000):
        dec = twin.FrameDecoder()
        for i in range(0, cut, step):
            assert dec.feed(wire[i:min(i + step, cut)]) == []
        assert dec.pending == cut
        with pytest.raises(IncompleteFrame, match="%d of 100004 bytes" % cut):
            dec.eof()


# -- frames larger than a slab, across feed() boundaries ------------------
#
# With nothing in its slab buffer while a frame larger than a slab is in
# progress, the decoder must not decode that frame's body, when it arrives in
# a later feed(), as headers ("frame smuggling", a fixed bug: CHANGELOG.md).
# The bodies below are built to look like frames (zeros, or frames of the
# same layout), so that any body byte parsed as a header shows as extra
# frames or a false error.

def smuggling_body(layout, n, seed=0):
    """``n`` bytes made of valid small frames of ``layout`` (what a peer
    would smuggle), then zero padding."""
    size, order, offset, adjustment, strip = model(layout)
    inner = max(0, adjustment, strip - offset - size)
    one = bytes([seed % 251]) * offset + (inner - adjustment).to_bytes(size, order) \
        + bytes([seed % 13]) * inner
    return (one * (n // len(one) + 1))[:n]


def decode_every_way(mod, layout, stream, cuts, step, pool):
    """The frames of ``stream`` through feed() (copy=True and copy=False,
    split at ``cuts``), get_buffer/buffer_updated (``step`` bytes at a
    time) and read_from (a socketpair, written in ``cuts`` pieces); each is
    checked to leave nothing pending and to give its slab back."""
    results = []
    for copy in (True, False):
        dec = decoder(mod, layout, pool=pool, copy=copy)
        results.append(feed_all(dec, chunks_at(stream, cuts)))
        assert dec.pending == 0
        dec.eof()
    dec = decoder(mod, layout, pool=pool)
    results.append(feed_via_buffer(dec, stream, step))
    dec.eof()
    results.append(read_via_socket(decoder(mod, layout, pool=pool), stream))
    assert pool is None or pool.stats()["in_use"] == 0
    return results


def read_via_socket(dec, stream):
    """The frames ``dec.read_from`` gets from ``stream`` sent on a
    socketpair by a thread (reads split wherever the decoder's room and the
    kernel split them)."""
    a, b = socket.socketpair()
    frames = []
    try:
        b.settimeout(10)

        def write():
            try:
                a.sendall(stream)
                a.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        writer = threading.Thread(target=write)
        writer.start()
        try:
            while True:
                out = dec.read_from(b)
                if out is None:
                    break
                frames.extend(bytes(f) for f in out)
        finally:
            b.shutdown(socket.SHUT_RDWR)
            writer.join(10)
        assert not writer.is_alive()
    finally:
        a.close()
        b.close()
    return frames


POOLS = {"default": None, "slab64": (64, 2), "slab1k": (1024, 2), "slab4k": (4096, 3)}


def make_pool(mod, kind):
    """(pool or None for the default pool, its slab size)."""
    spec = POOLS[kind]
    if spec is None:
        return None, mod.DEFAULT_POOL.slab_size
    return mod.BufferPool(slab_size=spec[0], max_slabs=spec[1]), spec[0]


def body_limits(layout):
    size, _, offset, adjustment, strip = model(layout)
    low = max(0, adjustment, strip - offset - size)
    high = min((1 << (8 * size)) - 1 + adjustment, cserver.DEFAULT_MAX_FRAME_SIZE)
    return low, high


@pytest.mark.parametrize("copy", [True, False], ids=["copy", "nocopy"])
def test_issue8_large_zero_frame_is_one_frame(twin, copy):
    # the report: 100,000 zero bytes came out as 25,000 empty frames
    wire = twin.encode_frame(bytes(100000))
    for cut in (4, 10, 65540, 70000):
        dec = twin.FrameDecoder(copy=copy)
        frames = [bytes(f) for f in dec.feed(wire[:cut]) + dec.feed(wire[cut:])]
        assert frames == [bytes(100000)]
        assert dec.pending == 0


def test_issue8_frame_inside_a_large_body_stays_inside(twin):
    # a frame encoded inside a big frame's body must not come out top-level
    inner = twin.encode_frame(b"smuggled")
    outer_body = inner * (70000 // len(inner))
    wire = twin.encode_frame(outer_body) + twin.encode_frame(b"next")
    dec = twin.FrameDecoder()
    frames = dec.feed(wire[:4]) + dec.feed(wire[4:100]) + dec.feed(wire[100:])
    assert frames == [outer_body, b"next"]


@pytest.mark.parametrize("pool_kind", sorted(POOLS))
@pytest.mark.parametrize("layout", LAYOUTS, ids=repr)
def test_large_frame_header_then_body(twin, layout, pool_kind):
    """Every layout, every pool: the largest frame the layout allows (or
    several slabs), its header in one feed() and its body in later ones."""
    pool, slab = make_pool(twin, pool_kind)
    low, high = body_limits(layout)
    n = max(low, min(high, 3 * slab + 5))
    bodies = [smuggling_body(layout, n), smuggling_body(layout, low, 1)]
    stream, expected = build(layout, bodies)
    hs = model(layout)[2] + model(layout)[0]
    for cuts in ([hs], [hs - 1, hs], [hs + 1], [1, hs, hs + 7, len(stream) // 2]):
        for copy in (True, False):
            dec = decoder(twin, layout, pool=pool, copy=copy)
            assert feed_all(dec, chunks_at(stream, cuts)) == expected
            assert dec.pending == 0
    if pool is not None:
        assert pool.stats()["in_use"] == 0


@pytest.mark.parametrize("pool_kind", sorted(POOLS))
@settings(max_examples=30)
@given(data=st.data())
def test_large_frames_any_split_any_pool(twin, pool_kind, data):
    """Property: frames of any size (up to several slabs), with bodies that
    look like frames, split at random points, give the same frames through
    feed (copy=True/False), get_buffer/buffer_updated and read_from, for
    every layout, with the default and with small pools."""
    pool, slab = make_pool(twin, pool_kind)
    layout = data.draw(st.sampled_from(LAYOUTS), label="layout")
    low, high = body_limits(layout)
    size = st.one_of(
        st.sampled_from([slab - 1, slab, slab + 1, 2 * slab + 3, 5 * slab + 7]),
        st.integers(0, 6 * slab)).map(lambda n: min(max(n, low), high))
    sizes = data.draw(st.lists(size, min_size=1, max_size=4), label="sizes")
    stream, expected = build(layout, [smuggling_body(layout, n, i) for i, n in enumerate(sizes)])
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10), label="cuts")
    step = data.draw(st.integers(1, 3 * slab), label="step")
    for got in decode_every_way(twin, layout, stream, cuts, step, pool):
        assert got == expected


# -- memory follows bytes received, not bytes announced -------------------

def traced(fn):
    """(result of fn(), bytes fn() left allocated), by tracemalloc."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = fn()
        return result, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


#: What a decoder's own bookkeeping may add to its buffer (a bytes or
#: bytearray header, the list feed() returns, tracemalloc's granularity).
SLACK = 2048


@pytest.mark.parametrize("header,kw", [
    ((1 << 20).to_bytes(4, "big"), {}),                              # the default limit
    ((1 << 39).to_bytes(8, "big"), {"fmt": "!Q", "max_frame_size": 1 << 40}),
    ((1 << 62).to_bytes(8, "little"), {"fmt": "<Q", "max_frame_size": 1 << 63}),
], ids=["1MiB", "512GiB", "4EiB"])
def test_header_alone_reserves_at_most_one_slab(twin, header, kw):
    pool = twin.BufferPool(slab_size=4096)
    kw = dict(kw)      # the parameter is shared by both twins' runs
    dec = twin.FrameDecoder(kw.pop("fmt", None), pool=pool, **kw)
    frames, held = traced(lambda: dec.feed(header))
    assert frames == [] and dec.pending == len(header)
    assert held <= 4096 + SLACK
    dec.close()


@pytest.mark.parametrize("step", [1000, 4096, 30000])
def test_memory_grows_with_the_body_received(twin, step):
    """At every point, a large frame in progress holds at most max(one
    slab, twice the bytes received) (plus bookkeeping), never the announced
    size; the frame is still delivered whole and exact."""
    pool = twin.BufferPool(slab_size=4096)
    body = pattern(300000)
    wire = twin.encode_frame(body)
    dec = twin.FrameDecoder(pool=pool)
    frames = []
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(0, len(wire), step):
            chunk = wire[i:i + step]
            base += len(chunk) + 33    # the chunk itself is the caller's
            got = dec.feed(chunk)
            if got:
                frames.extend(got)
                break
            held = tracemalloc.get_traced_memory()[0] - base
            assert held <= max(4096, 2 * (i + len(chunk))) + SLACK, (i, held)
    finally:
        tracemalloc.stop()
    assert frames == [body]


def test_read_from_reserves_what_arrives(twin):
    """read_from (FramedRequestHandler's and FramedClient's read): a peer
    that sends only a header announcing the largest frame the limit
    allows pins at most one slab (64 KiB by default)."""
    a, b = socket.socketpair()
    try:
        b.settimeout(5)
        pool = twin.BufferPool()
        pool.lease().release()   # an idle slab is the pool's, not the peer's
        dec = twin.FrameDecoder("!Q", max_frame_size=1 << 40, pool=pool)
        a.sendall((1 << 39).to_bytes(8, "big"))
        frames, held = traced(lambda: dec.read_from(b))
        assert frames == [] and dec.pending == 8
        assert held <= 65536 + SLACK
        a.sendall(b"x" * 100)
        assert dec.read_from(b) == []
        assert dec.pending == 108
    finally:
        a.close()
        b.close()


# -- large frames read straight into their bytes (scatter reads) ---------

def _read_all(dec, sock, wanted, timeout=20.0):
    """read_from until ``wanted`` frames (or end of stream, or an error)."""
    frames = []
    deadline = time.monotonic() + timeout
    while len(frames) < wanted and time.monotonic() < deadline:
        got = dec.read_from(sock)
        if got is None:
            break
        frames.extend(got)
    return frames


def _send_in_chunks(sock, wire, cuts):
    """Send ``wire`` cut at ``cuts`` (each piece its own sendall), then
    shut the socket down for writing."""
    try:
        pos = 0
        for cut in sorted(set(c for c in cuts if 0 < c < len(wire))) + [len(wire)]:
            sock.sendall(wire[pos:cut])
            pos = cut
            time.sleep(0.001)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.one_of(st.sampled_from([16384, 20000, 65536]),
                                st.integers(0, 70000)), min_size=1, max_size=8),
       cuts=st.lists(st.integers(0, 600000), max_size=6),
       fmt=st.sampled_from([None, "!H", "<Q"]))
def test_read_from_large_frames_any_sizes_any_cuts(twin, sizes, cuts, fmt):
    """read_from over a stream of large frames, most of one size (the C twin
    then reads the next frames straight into their bytes objects, guessing
    their size), some of another, cut anywhere: every frame exact, in
    order, as the pure twin delivers them."""
    if fmt == "!H":
        sizes = [min(n, 65535) for n in sizes]
    bodies = [pattern(n, seed=i) for i, n in enumerate(sizes)]
    wire = b"".join(twin.encode_frame(b, fmt) for b in bodies)
    a, b = socket.socketpair()
    sender = threading.Thread(target=_send_in_chunks, args=(a, wire, cuts))
    try:
        b.settimeout(20)
        sender.start()
        dec = twin.FrameDecoder(fmt)
        assert _read_all(dec, b, len(bodies)) == bodies
        assert dec.read_from(b) is None
        assert dec.pending == 0
    finally:
        a.close()
        sender.join(30)
        b.close()


@pytest.mark.parametrize("cut", [1, 3, 4, 5, 20004, 20005, 40005])
def test_read_from_large_frames_then_a_cut_stream(twin, cut):
    """Frames of one large size, then the stream ends inside the next
    header or body (the read the C twin made with guessed sizes):
    IncompleteFrame says how much of it arrived."""
    bodies = [pattern(20000, seed=i) for i in range(3)]
    wire = b"".join(twin.encode_frame(b) for b in bodies)
    wire = wire[:2 * 20004 + cut] if cut <= 20004 else wire[:cut]
    whole = len(wire) // 20004
    a, b = socket.socketpair()
    sender = threading.Thread(target=_send_in_chunks, args=(a, wire, [20004, 40008]))
    try:
        b.settimeout(20)
        sender.start()
        dec = twin.FrameDecoder()
        assert _read_all(dec, b, whole) == bodies[:whole]
        if len(wire) % 20004:
            with pytest.raises(IncompleteFrame):
                while dec.read_from(b) is not None:
                    pass
            assert dec.pending == 0 or dec.failed
    finally:
        a.close()
        sender.join(30)
        b.close()


@pytest.mark.parametrize("bad_at", [0, 1, 2])
def test_read_from_large_frames_then_a_bad_header(twin, bad_at):
    """A header that breaks the limit after frames of a guessed size: the
    frames before it are delivered, then FrameTooLarge (as feed())."""
    bodies = [pattern(30000, seed=i) for i in range(3)]
    wire = b"".join(twin.encode_frame(b) for b in bodies[:bad_at + 1])
    wire += (1 << 30).to_bytes(4, "big") + b"x" * 100
    a, b = socket.socketpair()
    try:
        b.settimeout(20)
        a.sendall(wire[:30004])       # the first frame alone: the guess is made
        dec = twin.FrameDecoder()
        frames = dec.read_from(b)
        a.sendall(wire[30004:])
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(FrameTooLarge):
            while len(frames) <= bad_at + 1:
                got = dec.read_from(b)
                assert got is not None
                frames.extend(got)
        assert frames == bodies[:bad_at + 1]
        assert dec.failed
    finally:
        a.close()
        b.close()


def test_read_from_guessed_size_holds_at_most_one_slab(ctwin):
    """After large frames, the reads with guessed sizes keep nothing when
    nothing arrives in them, and a frame cut short holds at most one slab
    (its body), whatever was guessed."""
    pool = ctwin.BufferPool()
    a, b = socket.socketpair()
    try:
        b.settimeout(5)
        dec = ctwin.FrameDecoder(pool=pool)
        a.sendall(ctwin.encode_frame(pattern(65536)))
        assert _read_all(dec, b, 1) == [pattern(65536)]
        a.sendall(ctwin.encode_frame(pattern(65536, 1))[:10])
        frames, held = traced(lambda: dec.read_from(b))
        assert frames == [] and dec.pending == 10
        assert held <= 65536 + SLACK
        assert pool.stats()["in_use"] == 0
    finally:
        a.close()
        b.close()


def test_size_hint_is_capped(twin):
    pool = twin.BufferPool(slab_size=1024)
    dec = twin.FrameDecoder(pool=pool)
    buf, held = traced(lambda: dec.get_buffer(1 << 62))
    assert 1 <= len(buf) <= 65536
    assert held <= 65536 + SLACK
    buf.release()


# -- size arithmetic at the edges: no overflow, the twins agree ----------

def twin_outcome(fn):
    try:
        return ("ok", fn())
    except Exception as exc:   # compared between the twins
        return (type(exc).__name__, str(exc))


EDGE_ENCODERS = [
    dict(fmt="!Q", max_frame_size=1 << 70),
    dict(fmt="<Q", max_frame_size=1 << 70, length_adjustment=-(1 << 62)),
    dict(fmt="!Q", max_frame_size=1 << 70, length_adjustment=1 << 62),
    dict(fmt="!I", max_frame_size=1 << 40, length_adjustment=-10),
    dict(length_size=3, max_frame_size=1 << 40, length_adjustment=-(1 << 23)),
    dict(fmt="!B", length_adjustment=-10),
    dict(fmt="!Q", length_offset=1 << 20, max_frame_size=1 << 70),
]
EDGE_SIZES = [0, 1, 245, 246, 255, 256, (1 << 23), (1 << 24), (1 << 32) - 11, (1 << 32) - 10,
              (1 << 62) - 1, 1 << 62, (1 << 62) + 1, (1 << 63) - (1 << 20) - 20,
              (1 << 63) - 10, (1 << 63) - 9, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 1 << 64,
              1 << 70, -1, -(1 << 63), -(1 << 63) - 1, -(1 << 70)]


@pytest.mark.parametrize("kw", EDGE_ENCODERS, ids=repr)
def test_encoder_edges_agree(kw):
    """Near 2**63 and around every clamp, the C encoder gives the pure
    twin's header or its exception (type and message): never an
    OverflowError for a size the pure twin calls FrameTooLarge, never a
    wrapped length."""
    from cserver import _framing, _framing_py
    kw = dict(kw)
    fmt = kw.pop("fmt", None)
    c, py = _framing.FrameEncoder(fmt, **kw), _framing_py.FrameEncoder(fmt, **kw)
    assert c.max_frame_size == py.max_frame_size
    for n in EDGE_SIZES:
        want = twin_outcome(lambda: py.header(n))
        assert twin_outcome(lambda: c.header(n)) == want, n
        assert want[0] in ("ok", "FrameTooLarge", "FrameError", "ValueError"), (n, want)
        if want[0] == "ok":
            size, order = py.length_size, py.byteorder
            value = n - py.length_adjustment
            assert want[1] == bytes(py.length_offset) + value.to_bytes(size, order)


def test_encoder_near_2_63(twin):
    # body 2**63 - 10 with adjustment -2**62: the field is 2**63 + 2**62 - 10
    enc = twin.FrameEncoder("!Q", max_frame_size=1 << 70, length_adjustment=-(1 << 62))
    assert enc.max_frame_size == (1 << 63) - 10
    assert enc.header((1 << 63) - 10) == ((1 << 63) + (1 << 62) - 10).to_bytes(8, "big")
    with pytest.raises(FrameTooLarge, match="9223372036854775808 bytes exceeds"):
        enc.header(1 << 63)
    with pytest.raises(FrameTooLarge):
        enc.header(1 << 64)
    with pytest.raises(ValueError, match="must be >= 0"):
        enc.header(-(1 << 70))


EDGE_DECODERS = EDGE_ENCODERS + [
    dict(fmt="!Q", max_frame_size=1 << 70, initial_bytes_to_strip=100),
    dict(fmt="<Q", max_frame_size=1 << 70, length_adjustment=-(1 << 62),
         initial_bytes_to_strip=0),
]
EDGE_VALUES = [0, 1, 9, 10, 255, (1 << 24) - 1, (1 << 32) - 1, (1 << 62) - 1, 1 << 62,
               (1 << 63) - 20, (1 << 63) - 10, (1 << 63) - 9, (1 << 63) - 1, 1 << 63,
               (1 << 63) + (1 << 62) - 10, (1 << 63) + (1 << 62) - 9, (1 << 64) - 1]


@pytest.mark.parametrize("kw", EDGE_DECODERS, ids=repr)
def test_decoder_edges_agree(kw):
    """Every length field value at the edges of 2**62, 2**63, 2**64 and the
    clamps: the same frames, pending count and error in both twins (and,
    for a header announcing a huge frame, no attempt to allocate it)."""
    from cserver import _framing, _framing_py
    kw = dict(kw)
    fmt = kw.pop("fmt", None)
    size = _framing_py.FrameDecoder(fmt, **kw).length_size
    for value in EDGE_VALUES:
        if value >= 1 << (8 * size):
            continue
        results = []
        for mod in (_framing, _framing_py):
            dec = mod.FrameDecoder(fmt, pool=mod.BufferPool(slab_size=256), **kw)
            header = bytes(dec.length_offset) + value.to_bytes(size, dec.byteorder)
            out = twin_outcome(lambda: [bytes(f) for f in dec.feed(header + b"abc")])
            results.append((out, dec.pending, dec.failed,
                            twin_outcome(lambda: dec.max_frame_size)))
            dec.close()
        assert results[0] == results[1], value


@pytest.mark.parametrize("kwargs", [
    {"slab_size": 1 << 70}, {"slab_size": (1 << 30) + 1}, {"max_slabs": 1 << 63},
    {"max_slabs": 1 << 63, "max_idle": (1 << 63) - 1}, {"max_idle": -1},
    {"max_slabs": 1 << 62, "max_idle": (1 << 20) + 1},
])
def test_pool_parameter_bounds_agree(kwargs):
    from cserver import _framing, _framing_py
    c = twin_outcome(lambda: _framing.BufferPool(**kwargs) and None)
    assert c == twin_outcome(lambda: _framing_py.BufferPool(**kwargs) and None)
    assert c[0] == "ValueError" and "between" in c[1], c


def test_non_contiguous_buffers_agree(twin):
    strided = memoryview(b"abcdef")[::2]
    assert twin.encode_frame(strided) == b"\x00\x00\x00\x03ace"
    assert twin.FrameEncoder("<H").encode(strided) == b"\x03\x00ace"
    dec = twin.FrameDecoder()
    with pytest.raises(BufferError):
        dec.feed(memoryview(b"\x00\x00\x00\x01x\x00")[::2])
    assert not dec.failed


def test_decoder_refuses_calls_while_read_from_receives(ctwin):
    # read_from() hands recv_into a raw view of the decoder's buffer and
    # recv_into releases the GIL: a call that could move or free that buffer
    # meanwhile (from another thread, or from a socket object calling back)
    # is refused instead of letting the read land in freed memory.
    dec = ctwin.FrameDecoder()
    attempts = {}

    class Reentrant:
        def recv_into(self, view):
            for name, call in [("feed", lambda: dec.feed(b"\x00\x00\x00\x01x")),
                               ("get_buffer", lambda: dec.get_buffer()),
                               ("buffer_updated", lambda: dec.buffer_updated(1)),
                               ("read_from", lambda: dec.read_from(self)),
                               ("eof", lambda: dec.eof()),
                               ("close", lambda: dec.close())]:
                with pytest.raises(RuntimeError, match="read_from"):
                    call()
                attempts[name] = True
            frame = b"\x00\x00\x00\x02ok"
            view[:len(frame)] = frame
            return len(frame)

    assert dec.read_from(Reentrant()) == [b"ok"]
    assert len(attempts) == 6
    assert dec.feed(b"\x00\x00\x00\x01!") == [b"!"]   # usable again afterwards


def test_decoder_refuses_another_thread_while_read_from_blocks(ctwin):
    dec = ctwin.FrameDecoder()
    a, b = socket.socketpair()
    try:
        a.settimeout(10)
        result = []
        reader = threading.Thread(target=lambda: result.append(dec.read_from(a)))
        reader.start()
        try:
            deadline = time.monotonic() + 10
            error = None
            while time.monotonic() < deadline:       # until the reader is in recv_into
                try:
                    dec.feed(b"")
                except RuntimeError as exc:
                    error = exc
                    break
                time.sleep(0.001)
            assert error is not None and "read_from" in str(error)
        finally:
            b.sendall(b"\x00\x00\x00\x03abc")
            reader.join(10)
        assert not reader.is_alive() and result == [[b"abc"]]
    finally:
        a.close()
        b.close()


def test_clone_is_an_empty_decoder_with_the_same_layout(twin):
    pool = twin.BufferPool(slab_size=4096)
    d = twin.FrameDecoder("<H", max_frame_size=1000, pool=pool, copy=False)
    assert d.feed(b"\x03\x00ab") == []
    c = d.clone()
    assert type(c) is type(d)
    assert (c.length_size, c.big_endian, c.max_frame_size, c.header_size, c.copy) == (
        2, False, 1000, 2, False)
    assert c.pool is pool and c.pending == 0
    assert [bytes(f) for f in c.feed(b"\x01\x00z")] == [b"z"]
    assert [bytes(f) for f in d.feed(b"c")] == [b"abc"]
    with pytest.raises(FrameTooLarge):
        c.feed(b"\xe9\x03")
    assert not d.failed


def test_c_twin_does_not_import_its_oracle():
    """The C decoder implements the shared header description
    (cserver._layout); it does not borrow the pure twin's code."""
    import os
    import subprocess
    import sys
    code = ("import sys, cserver._framing, cserver.framing\n"
            "assert cserver.framing.COMPILED\n"
            "print('cserver._framing_py' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != "CSERVER_PURE"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_twins_share_the_header_description():
    from cserver import _framing, _framing_py, _layout
    assert _framing.DEFAULT_MAX_FRAME_SIZE == _framing_py.DEFAULT_MAX_FRAME_SIZE \
        == _layout.DEFAULT_MAX_FRAME_SIZE == 1 << 20
    for twin in (_framing, _framing_py):
        with pytest.raises(TypeError, match="pool must be a BufferPool of the same twin, not str"):
            twin.FrameDecoder(pool="a pool")
        other = (_framing_py if twin is _framing else _framing).BufferPool()
        with pytest.raises(TypeError, match="not BufferPool"):
            twin.FrameDecoder(pool=other)
