"""Differential fuzz target: the C framing layer against its pure twin.

Every input is turned into a case: a header layout (length_size 1/2/3/4/8,
byte order, length_offset, length_adjustment, initial_bytes_to_strip,
max_frame_size, including the edges near 2**62..2**64), a pool (slab size,
max_slabs), a copy mode, a stream (valid frames of that layout, small or
larger than several slabs, with bodies that look like frames; raw bytes
from the input; truncations) cut into chunks, and a way to read it
(``feed``, ``get_buffer``/``buffer_updated``, ``read_from`` on a fake
socket).  Both twins must deliver the same frames, raise the same error
(type and message) at the same point, and agree on ``pending``/``failed``
afterwards; the encoders must give the same header or error for edge sizes.
Any difference raises AssertionError: libFuzzer stops and writes the input
(``crash-*``) for replay.

Run (see docs/fuzzing.md)::

    python tests/fuzz/fuzz_framing.py -max_total_time=60 NEW_CORPUS_DIR tests/fuzz/corpus/framing
    python tests/fuzz/fuzz_framing.py crash-<sha1>          # replay one input

It prints ``fuzz_framing: cases N, frames compared M, divergences 0`` about
once a second and when it stops.
"""
import sys
import time

import atheris

with atheris.instrument_imports():
    from cserver import _framing_py as PY
from cserver import _framing as C  # compiled: not instrumented, compared

LENGTH_SIZES = [1, 2, 3, 4, 8]
ADJUSTMENTS = [0, 0, 0, 1, -1, 2, -2, -4, -8, 5, 100, -(1 << 62), 1 << 62, -(1 << 23)]
LIMITS = [0, 1, 3, 40, 255, 1000, 65535, 70000, 1 << 20, 1 << 32, 1 << 40,
          (1 << 63) - 1, 1 << 63, 1 << 70]
SLABS = [64, 65, 100, 256, 1024, 4096, 65536]
ENCODER_SIZES = [0, 1, 2, 254, 255, 256, 65535, 65536, (1 << 24) - 1, 1 << 24, (1 << 32) - 1,
                 1 << 32, (1 << 62) - 1, 1 << 62, (1 << 63) - 10, (1 << 63) - 9, (1 << 63) - 1,
                 1 << 63, (1 << 64) - 1, 1 << 64, 1 << 70, -1, -(1 << 63), -(1 << 64)]

STATS = {"cases": 0, "frames": 0, "divergences": 0, "errors": 0}
_last_report = [time.monotonic()]


def report(final=False):
    sys.stderr.write("fuzz_framing: cases %(cases)d, frames compared %(frames)d, "
                     "errors compared %(errors)d, divergences %(divergences)d\n" % STATS)
    sys.stderr.flush()


def outcome(fn):
    try:
        return ("ok", fn())
    except Exception as exc:  # the twins' exceptions are what is compared
        return (type(exc).__name__, str(exc))


class FakeSocket:
    """recv/recv_into over a list of chunks (one chunk per call at most)."""

    def __init__(self, chunks):
        self.chunks = [bytes(c) for c in chunks if c]

    def recv_into(self, view):
        if not self.chunks:
            return 0
        chunk = self.chunks[0]
        n = min(len(view), len(chunk))
        view[:n] = chunk[:n]
        self.chunks[0] = chunk[n:]
        if not self.chunks[0]:
            self.chunks.pop(0)
        return n

    def recv(self, size):
        if not self.chunks:
            return b""
        chunk = self.chunks[0]
        self.chunks[0] = chunk[size:]
        if not self.chunks[0]:
            self.chunks.pop(0)
        return chunk[:size]


def run(mod, args, kwargs, pool_args, copy, mode, chunks, step):
    """Everything one twin does with the case, as comparable data."""
    made = outcome(lambda: mod.FrameDecoder(*args, pool=mod.BufferPool(**pool_args),
                                            copy=copy, **kwargs))
    if made[0] != "ok":
        return [("init",) + made]
    dec = made[1]
    events = [("layout", dec.length_size, dec.byteorder, dec.length_offset,
               dec.length_adjustment, dec.initial_bytes_to_strip, dec.max_frame_size,
               dec.header_size)]

    def record(fn):
        got = outcome(fn)
        if got[0] == "ok":
            events.append(("frames", [bytes(f) for f in (got[1] or [])], got[1] is None))
        else:
            events.append(("error",) + got)
        events.append(("state", dec.pending, dec.failed))
        return got[0] == "ok"

    if mode == 0:
        for chunk in chunks:
            if not record(lambda: dec.feed(chunk)):
                break
    elif mode == 1:
        stream = b"".join(chunks)
        pos = 0
        while pos < len(stream):
            got = outcome(lambda: dec.get_buffer(step))
            if got[0] != "ok":
                events.append(("error",) + got)
                break
            buf = got[1]
            n = min(len(buf), step, len(stream) - pos)
            buf[:n] = stream[pos:pos + n]
            buf.release()
            pos += n
            if not record(lambda: dec.buffer_updated(n)):
                break
    else:
        sock = FakeSocket(chunks)
        for _ in range(len(b"".join(chunks)) + 2):
            got = outcome(lambda: dec.read_from(sock))
            if got[0] != "ok":
                events.append(("error",) + got)
                break
            if got[1] is None:
                events.append(("eof", dec.pending, dec.failed))
                break
            events.append(("frames", [bytes(f) for f in got[1]], False))
    if mode != 2:
        record(dec.eof)
    dec.close()
    events.append(("closed", dec.pending))
    if mode != 0:
        # get_buffer's and read_from's read sizes are the twins' own (the
        # room each offers), so frames group differently per call: compare
        # the frames in order, then the error and the final state
        frames = [f for e in events if e[0] == "frames" for f in e[1]]
        errors = [e for e in events if e[0] == "error"][:1]
        rest = [e for e in events if e[0] in ("layout", "closed")]
        events = [("all frames", frames)] + rest + errors + [("final", dec.failed)]
    return events


def body_for(fdp, layout_size, order, offset, adjustment, strip, slab):
    """A body length (small, or larger than one or several slabs) and
    content that looks like frames of the same layout."""
    kind = fdp.ConsumeIntInRange(0, 7)
    if kind < 4:
        n = fdp.ConsumeIntInRange(0, 300)
    elif kind < 7:
        n = slab * fdp.ConsumeIntInRange(1, 6) + fdp.ConsumeIntInRange(-2, 40)
    else:
        n = fdp.ConsumeIntInRange(0, 1 << 19)
    n = max(0, min(n, (1 << 20) + 64))
    fill = fdp.ConsumeIntInRange(0, 3)
    if fill == 0:
        return bytes(n)
    if fill == 1:
        return fdp.ConsumeBytes(min(n, 64)).ljust(n, b"\xa5")
    inner_body = max(0, adjustment, strip - offset - layout_size)
    value = inner_body - adjustment
    if inner_body > 300 or value < 0 or value >= 1 << (8 * layout_size):
        return bytes(n)
    one = b"\x5a" * offset + value.to_bytes(layout_size, order) + b"\x01" * inner_body
    return (one * (n // max(1, len(one)) + 1))[:n]


def one_input(data):
    fdp = atheris.FuzzedDataProvider(data)
    length_size = fdp.PickValueInList(LENGTH_SIZES)
    order = "big" if fdp.ConsumeBool() else "little"
    offset = fdp.ConsumeIntInRange(0, 6)
    adjustment = fdp.PickValueInList(ADJUSTMENTS)
    strip = None if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, offset + length_size + 6)
    limit = fdp.PickValueInList(LIMITS)
    slab = fdp.PickValueInList(SLABS)
    pool_args = {"slab_size": slab, "max_slabs": fdp.ConsumeIntInRange(1, 4)}
    copy = fdp.ConsumeBool()
    mode = fdp.ConsumeIntInRange(0, 2)
    if fdp.ConsumeBool():
        args, kwargs = (), dict(length_size=length_size, byteorder=order)
    else:
        code = {1: "B", 2: "H", 4: "I", 8: "Q"}.get(length_size)
        args, kwargs = ((("!" if order == "big" else "<") + code,) if code else ()), (
            {} if code else dict(length_size=length_size, byteorder=order))
    kwargs.update(length_offset=offset, length_adjustment=adjustment, max_frame_size=limit,
                  initial_bytes_to_strip=strip)

    # the stream: valid frames (the body as the layout sees it), raw bytes
    pieces = []
    strip_eff = offset + length_size if strip is None else strip
    for _ in range(fdp.ConsumeIntInRange(0, 5)):
        what = fdp.ConsumeIntInRange(0, 4)
        if what < 3:
            body = body_for(fdp, length_size, order, offset, adjustment, strip_eff, slab)
            value = len(body) - adjustment
            if 0 <= value < 1 << (8 * length_size):
                pieces.append(fdp.ConsumeBytes(offset).ljust(offset, b"\x00")
                              + value.to_bytes(length_size, order) + body)
                continue
        pieces.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40)))
    stream = b"".join(pieces)
    if fdp.ConsumeBool() and stream:
        stream = stream[:fdp.ConsumeIntInRange(0, len(stream))]   # cut at the end
    cuts = sorted(fdp.ConsumeIntInRange(0, len(stream)) for _ in range(fdp.ConsumeIntInRange(0, 8)))
    chunks, last = [], 0
    for c in cuts + [len(stream)]:
        chunks.append(stream[last:c])
        last = c
    step = fdp.ConsumeIntInRange(1, 3 * slab)

    c_events = run(C, args, kwargs, pool_args, copy, mode, chunks, step)
    py_events = run(PY, args, kwargs, pool_args, copy, mode, chunks, step)
    STATS["cases"] += 1
    STATS["frames"] += sum(len(e[1]) for e in py_events if e[0] in ("frames", "all frames"))
    STATS["errors"] += sum(1 for e in py_events if e[0] in ("error", "init"))
    if c_events != py_events:
        STATS["divergences"] += 1
        report()
        raise AssertionError("C and pure twins diverge\nlayout %r %r pool %r copy %r mode %d "
                             "step %d chunks %r\nC:  %r\npy: %r"
                             % (args, kwargs, pool_args, copy, mode, step,
                                [len(c) for c in chunks], c_events[:12], py_events[:12]))

    # the encoders, at the edges
    enc_kwargs = {k: v for k, v in kwargs.items() if k != "initial_bytes_to_strip"}
    c_enc = outcome(lambda: C.FrameEncoder(*args, **enc_kwargs))
    py_enc = outcome(lambda: PY.FrameEncoder(*args, **enc_kwargs))
    assert (c_enc[0], c_enc[0] != "ok" and c_enc[1]) == (py_enc[0], py_enc[0] != "ok" and py_enc[1])
    if c_enc[0] == "ok":
        sizes = [fdp.PickValueInList(ENCODER_SIZES) + fdp.ConsumeIntInRange(-2, 2)
                 for _ in range(3)] + [py_enc[1].max_frame_size, py_enc[1].max_frame_size + 1]
        for n in sizes:
            a, b = outcome(lambda: c_enc[1].header(n)), outcome(lambda: py_enc[1].header(n))
            if a != b:
                STATS["divergences"] += 1
                report()
                raise AssertionError("encoders diverge for %r %r size %d: C %r, py %r"
                                     % (args, enc_kwargs, n, a, b))
        payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
        a = outcome(lambda: c_enc[1].encode(payload))
        b = outcome(lambda: py_enc[1].encode(payload))
        if a != b:
            STATS["divergences"] += 1
            raise AssertionError("encode diverges: %r %r" % (a, b))

    now = time.monotonic()
    if now - _last_report[0] >= 1.0:
        _last_report[0] = now
        report()


def main():
    import atexit
    atexit.register(report, True)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
