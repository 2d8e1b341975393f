"""A fuzz target through the multiplexing server's loop.

Hypothesis draws a header layout, the loop's receive-slab size, the frame
decoders' pool slab size, a list of payloads (empty to larger than a slab),
where the handler pauses reading and how it resumes (next pass or a timer),
how the client's byte stream is cut into writes, and whether the client
half-closes at the end.  The server must deliver exactly the frames sent,
in order, and its replies (an echo, encoded by the server) must decode, with
the pure-Python twin of the decoder as the oracle, to the same payloads;
after a half-close, ``eof_received`` comes after the last frame and the
connection ends cleanly.  Runs on both pollers.

Suite budget: ``CSERVER_LOOP_FUZZ_EXAMPLES`` examples per poller (default
60, about a second).  A longer run (docs/selectorserver.md)::

    CSERVER_LOOP_FUZZ_EXAMPLES=2000 python -m pytest -p no:xdist tests/hostile/test_loop_fuzz.py
"""
import os
import socket
import tempfile
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

import cserver
from cserver import _framing, _framing_py, selectorserver

set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(),
                                     "cserver-hypothesis-%d" % os.getuid()))

KINDS = ["epoll", "selectors"] if selectorserver._loop.HAVE_EPOLL else ["selectors"]
TIMEOUT = 10.0
EXAMPLES = int(os.environ.get("CSERVER_LOOP_FUZZ_EXAMPLES", "60"))

# (handler class attributes, FrameEncoder/FrameDecoder arguments)
LAYOUTS = [
    dict(frame_format="!B"),
    dict(frame_format="!H"),
    dict(frame_format="!I"),
    dict(frame_format="<I"),
    dict(frame_format="!Q"),
    dict(frame_format=None, length_size=3, byteorder="big"),
    dict(frame_format="!H", length_offset=3),
    dict(frame_format="!I", length_adjustment=-4),   # the length counts the header
]


def codec_args(layout):
    fmt = layout.get("frame_format")
    args = {k: v for k, v in layout.items() if k != "frame_format"}
    return fmt, args


def max_payload(layout):
    fmt = layout.get("frame_format")
    if fmt == "!B":
        return 255
    if fmt == "!H":
        return 65535
    return 200000


@st.composite
def scenarios(draw):
    layout = draw(st.sampled_from(LAYOUTS))
    limit = max_payload(layout)
    size = st.one_of(st.integers(0, 40), st.integers(0, min(limit, 5000)),
                     st.integers(0, limit))
    sizes = draw(st.lists(size, min_size=0, max_size=12))
    payloads = [bytes([(i * 7 + j) % 256 for j in range(min(n, 3))]) + b"\xab" * max(n - 3, 0)
                for i, n in enumerate(sizes)]
    pauses = draw(st.lists(st.sampled_from(["none", "soon", "timer"]),
                           min_size=len(payloads), max_size=len(payloads)))
    return dict(
        layout=layout,
        read_size=draw(st.sampled_from([4096, 5000, 65536, 262144])),
        slab_size=draw(st.sampled_from([64, 1000, 4096, 65536])),
        payloads=payloads,
        pauses=pauses,
        cuts=draw(st.lists(st.integers(1, 70000), max_size=20)),
        half_close=draw(st.booleans()),
    )


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(sc=scenarios())
def test_the_loop_delivers_exactly_the_frames_sent(kind, sc):
    layout = sc["layout"]
    fmt, args = codec_args(layout)
    pauses = list(sc["pauses"])

    class Fuzzed(cserver.FrameHandler):
        max_frame_size = 1 << 20

        def frame_received(self, frame):
            got = self.server.got
            how = pauses[len(got)] if len(got) < len(pauses) else "none"
            got.append(frame)
            self.send_frame(frame)
            if how != "none":
                self.pause_reading()
                if how == "soon":
                    self.server.call_soon(self.resume_reading)
                else:
                    self.server.call_later(0.001, self.resume_reading)

        def eof_received(self):
            self.server.got.append("eof")

        def connection_lost(self, exc):
            self.server.got.append(("lost", exc))

    for name, value in layout.items():
        setattr(Fuzzed, name, value)
    # the loop always decodes with the C twin, in pure mode too
    pool = _framing.BufferPool(slab_size=sc["slab_size"])
    server = cserver.SelectorTCPServer(("127.0.0.1", 0), Fuzzed, loop=kind,
                                       read_size=sc["read_size"], buffer_pool=pool)
    server.got = []
    encoder = _framing_py.FrameEncoder(fmt, max_frame_size=1 << 20, **args)
    stream = b"".join(encoder.encode(p) for p in sc["payloads"])
    thread = threading.Thread(target=server.serve_forever, name="loop-fuzz")
    thread.start()
    try:
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as c:
            # cut the stream at the drawn points (writes land as separate
            # reads only sometimes: the kernel may coalesce them, which is
            # fine: any split must give the same frames)
            pos = 0
            for cut in sc["cuts"]:
                if pos >= len(stream):
                    break
                c.sendall(stream[pos:pos + cut])
                pos += cut
            c.sendall(stream[pos:])
            if sc["half_close"]:
                c.shutdown(socket.SHUT_WR)
            replies = []
            need = len(stream)
            received = 0
            while received < need or sc["half_close"]:
                chunk = c.recv(1 << 20)
                if not chunk:
                    break
                replies.append(chunk)
                received += len(chunk)
        decoder = _framing_py.FrameDecoder(fmt, max_frame_size=1 << 20, **args)
        echoed = decoder.feed(b"".join(replies))
        assert [bytes(f) for f in echoed] == sc["payloads"]
        n = len(sc["payloads"])
        end = time.monotonic() + TIMEOUT
        while time.monotonic() < end and not (server.got and isinstance(server.got[-1], tuple)):
            time.sleep(0.002)
        got = server.got
        assert got[:n] == sc["payloads"]
        # half-closed, or closed by the client once it had every reply:
        # either way the end of stream comes after the last frame
        assert got[n:] == ["eof", ("lost", None)]
        assert server.stats()["frame_errors"] == 0
        assert server.stats().get("internal_errors", 0) == 0
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()
        assert not thread.is_alive()
