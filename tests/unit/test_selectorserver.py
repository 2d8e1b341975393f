"""The multiplexing server (cserver.selectorserver), on both loops.

Every test that serves runs on the epoll loop and on the selectors fallback
(test ids ``[epoll]`` / ``[selectors]``).  Servers bind port 0 on loopback,
run in a thread joined in ``finally``; every socket is closed.
"""
import logging
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import cserver
from cserver import selectorserver
from support import (TIMEOUT, Echo, RawEcho, connect, frame, recv_exactly, recv_until_eof, serving,
                     wait_for)

KINDS = ["epoll", "selectors"] if selectorserver._loop.HAVE_EPOLL else ["selectors"]


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


class Recording(cserver.FrameHandler):
    """Echo that records its lifecycle in ``server.events``."""

    def connection_made(self):
        self.server.events.append(("made", self.client_address))

    def frame_received(self, frame):
        self.send_frame(frame)

    def connection_lost(self, exc):
        self.server.events.append(("lost", exc))


def tcp(handler, kind, **kw):
    server = cserver.SelectorTCPServer(("127.0.0.1", 0), handler, loop=kind, **kw)
    server.events = []
    return server


# -- framing through the loop ------------------------------------------------------


def test_readme_example_shape(kind):
    # The README's example, on port 0.
    with cserver.SelectorTCPServer(("127.0.0.1", 0), Echo, loop=kind) as server:
        with serving(server):
            with connect(server) as c:
                c.sendall(frame(b"hello"))
                assert recv_exactly(c, 9) == frame(b"hello")
        assert server.stats()["loop"] == kind


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_frames_split_and_coalesced_arbitrarily(kind, seed):
    rng = random.Random(seed)
    sizes = [0, 1, 3, 64, 700, 5000, 70000]
    payloads = [bytes(rng.getrandbits(8) for _ in range(rng.choice(sizes)))
                for _ in range(60)]
    stream = b"".join(frame(p) for p in payloads)
    with serving(tcp(Echo, kind)) as server, connect(server) as c:
        pos = 0
        while pos < len(stream):
            n = rng.choice([1, 2, 3, 5, 17, 1000, 4096, 65536, 200000])
            c.sendall(stream[pos:pos + n])
            pos += n
        assert recv_exactly(c, len(stream)) == stream
        assert wait_for(lambda: server.stats()["frames_in"] == len(payloads))
        assert server.stats()["frames_out"] == len(payloads)


def test_one_byte_writes(kind):
    payloads = [b"a", b"", b"hello world", bytes(range(256))]
    stream = b"".join(frame(p) for p in payloads)
    with serving(tcp(Echo, kind)) as server, connect(server) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(stream)):
            c.send(stream[i:i + 1])
        assert recv_exactly(c, len(stream)) == stream


@pytest.mark.parametrize("size", [65536, 1 << 20])
def test_large_frames(kind, size):
    payload = os.urandom(size)
    with serving(tcp(Echo, kind)) as server, connect(server) as c:
        for _ in range(3):
            c.sendall(frame(payload))
            assert recv_exactly(c, 4 + size) == frame(payload)
        assert server.stats()["frame_errors"] == 0


@pytest.mark.parametrize("chunk", [1000, 65540, 300000])
def test_large_frames_of_one_size_then_others(kind, chunk):
    """Pipelined large frames of one size (the decoder guesses the next
    ones' size and may read them straight into their objects), then
    other sizes, small ones, and the first size again: echoed exact and in
    order, however the stream is cut."""
    sizes = [30000] * 5 + [40000, 16384, 10] + [30000] * 3 + [65536] * 4 + [5]
    payloads = [os.urandom(n) for n in sizes]
    stream = b"".join(frame(p) for p in payloads)
    with serving(tcp(Echo, kind)) as server, connect(server) as c:
        for i in range(0, len(stream), chunk):
            c.sendall(stream[i:i + chunk])
        assert recv_exactly(c, len(stream)) == stream
        assert server.stats()["frame_errors"] == 0


@pytest.mark.parametrize("ending", ["reset", "oversized_header"])
def test_a_run_of_large_frames_that_ends_in_an_attack(kind, ending):
    """The peer sends large frames of one size (so the next reads are
    offered straight into guessed objects), then, mid-frame, either resets
    the connection or sends a header announcing more than max_frame_size:
    that connection alone is closed, nothing leaks, and the server goes on
    serving."""
    size = 30000
    run = b"".join(frame(os.urandom(size)) for _ in range(6))
    with serving(tcp(Echo, kind)) as server:
        c = connect(server)
        try:
            c.sendall(run)
            assert len(recv_exactly(c, len(run))) == len(run)
            if ending == "reset":
                c.sendall(frame(os.urandom(size))[:size // 2])
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                c.sendall(frame(os.urandom(size))
                          + struct.pack("!I", (1 << 31)) + os.urandom(size))
                assert recv_exactly(c, 4 + size)[:4] == struct.pack("!I", size)
                assert wait_for(lambda: server.stats()["frame_errors"] == 1)
        finally:
            c.close()
        assert wait_for(lambda: server.stats()["connections"] == 0)
        with connect(server) as good:
            good.sendall(frame(b"still serving"))
            assert recv_exactly(good, 17) == frame(b"still serving")
        stats = server.stats()
        assert stats["internal_errors"] == 0 and stats["handler_errors"] == 0


def test_pipelined_requests_in_order(kind):
    payloads = [b"%06d" % i * (i % 7 + 1) for i in range(2000)]
    stream = b"".join(frame(p) for p in payloads)
    with serving(tcp(Echo, kind)) as server, connect(server) as c:
        c.sendall(stream)
        assert recv_exactly(c, len(stream)) == stream


def test_other_header_layouts(kind):
    class Short(Echo):
        frame_format = "<H"

    class NettyInclusive(Echo):
        # the length counts the 2-byte header too; the header is kept
        length_size = 2
        length_adjustment = -2
        initial_bytes_to_strip = 0

        def frame_received(self, frame):
            self.server.events.append(frame)
            self.send_frame(frame[2:])

    with serving(tcp(Short, kind)) as server, connect(server) as c:
        c.sendall(struct.pack("<H", 3) + b"abc")
        assert recv_exactly(c, 5) == struct.pack("<H", 3) + b"abc"
    with serving(tcp(NettyInclusive, kind)) as server, connect(server) as c:
        c.sendall(struct.pack("!H", 5) + b"xyz")
        assert recv_exactly(c, 5) == struct.pack("!H", 5) + b"xyz"
        assert server.events == [struct.pack("!H", 5) + b"xyz"]


def test_raw_handler_echo(kind):
    data = os.urandom(300000)
    with serving(tcp(RawEcho, kind)) as server, connect(server) as c:
        c.sendall(data)
        assert recv_exactly(c, len(data)) == data
        c.shutdown(socket.SHUT_WR)
        assert recv_until_eof(c) == b""


def test_writelines_and_bytes_like(kind):
    class H(cserver.ConnectionHandler):
        def data_received(self, data):
            self.transport.writelines([bytearray(b"<"), memoryview(data), b">"])

    with serving(tcp(H, kind)) as server, connect(server) as c:
        c.sendall(b"x")
        assert recv_exactly(c, 3) == b"<x>"


# -- bad peers ---------------------------------------------------------------------


def test_oversized_header_closes_with_frame_too_large(kind, caplog):
    class Small(Recording):
        max_frame_size = 1000

    with caplog.at_level(logging.WARNING, logger="cserver.selectorserver"):
        with serving(tcp(Small, kind)) as server:
            with connect(server) as c:
                c.sendall(frame(b"ok"))
                assert recv_exactly(c, 6) == frame(b"ok")
                c.sendall(struct.pack("!I", 1001))  # the header alone: fail fast
                assert recv_until_eof(c) == b""
            assert wait_for(lambda: len(server.events) == 2)
            assert isinstance(server.events[1][1], cserver.FrameTooLarge)
            assert server.stats()["frame_errors"] == 1
            # the server still serves others
            with connect(server) as c2:
                c2.sendall(frame(b"again"))
                assert recv_exactly(c2, 9) == frame(b"again")
    assert any("1000" in r.getMessage() and "1001" in r.getMessage() for r in caplog.records)


def test_garbage_header_negative_length_closes_with_frame_error(kind):
    class Inclusive(Recording):
        length_adjustment = -4   # length counts the header: values < 4 are impossible

    with serving(tcp(Inclusive, kind)) as server:
        with connect(server) as c:
            c.sendall(b"\x00\x00\x00\x01garbage")
            assert recv_until_eof(c) == b""
        assert wait_for(lambda: len(server.events) == 2)
        exc = server.events[1][1]
        assert isinstance(exc, cserver.FrameError) and not isinstance(exc, cserver.FrameTooLarge)


def test_eof_mid_frame_is_reported(kind, caplog):
    with caplog.at_level(logging.WARNING, logger="cserver.selectorserver"):
        with serving(tcp(Recording, kind)) as server:
            with connect(server) as c:
                c.sendall(struct.pack("!I", 100) + b"only part")
                c.shutdown(socket.SHUT_WR)
                assert recv_until_eof(c) == b""
            assert wait_for(lambda: len(server.events) == 2)
            assert isinstance(server.events[1][1], cserver.IncompleteFrame)
    assert any("closing connection" in r.getMessage() for r in caplog.records)


def test_peer_reset_mid_frame(kind):
    with serving(tcp(Recording, kind)) as server:
        c = connect(server)
        try:
            c.sendall(struct.pack("!I", 50000) + b"x" * 1000)
            assert wait_for(lambda: server.stats()["bytes_in"] >= 1004)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            c.close()  # RST
        assert wait_for(lambda: len(server.events) == 2)
        assert server.events[1][1] is not None  # reset or incomplete frame, never silent
        assert wait_for(lambda: server.stats()["connections"] == 0)
        with connect(server) as c2:
            c2.sendall(frame(b"alive"))
            assert recv_exactly(c2, 9) == frame(b"alive")


def test_half_close_gets_every_reply_then_eof(kind):
    stream = b"".join(frame(b"%d" % i) for i in range(500))
    with serving(tcp(Recording, kind)) as server, connect(server) as c:
        c.sendall(stream)
        c.shutdown(socket.SHUT_WR)
        assert recv_until_eof(c) == stream
        assert wait_for(lambda: server.events[-1:] == [("lost", None)])


def test_eof_received_true_keeps_writing(kind):
    class Bye(cserver.ConnectionHandler):
        def data_received(self, data):
            self.got = getattr(self, "got", b"") + data

        def eof_received(self):
            self.server.call_later(0.01, self.finish)
            return True

        def finish(self):
            self.write(b"bye:" + self.got)
            self.close()

    with serving(tcp(Bye, kind)) as server, connect(server) as c:
        c.sendall(b"abc")
        c.shutdown(socket.SHUT_WR)
        assert recv_until_eof(c) == b"bye:abc"


# -- handler errors, verify_request -------------------------------------------------


def test_handler_exception_goes_to_handle_error_and_closes_only_that_connection(kind):
    class Boom(Recording):
        def frame_received(self, frame):
            if frame == b"boom":
                raise RuntimeError("boom")
            self.send_frame(frame)

    class Server(cserver.SelectorTCPServer):
        def handle_error(self, request, client_address):
            self.errors.append((client_address, sys.exc_info()[0]))

    server = Server(("127.0.0.1", 0), Boom, loop=kind)
    server.events = []
    server.errors = []
    with serving(server):
        with connect(server) as good, connect(server) as bad:
            good.sendall(frame(b"1"))
            assert recv_exactly(good, 5) == frame(b"1")
            bad.sendall(frame(b"boom") + frame(b"never"))
            assert recv_until_eof(bad) == b""
            good.sendall(frame(b"2"))
            assert recv_exactly(good, 5) == frame(b"2")
            assert len(server.errors) == 1
            assert server.errors[0] == (bad.getsockname(), RuntimeError)
            assert server.stats()["handler_errors"] == 1
            assert server.stats()["connections"] == 1


def test_verify_request_refuses(kind):
    class Picky(cserver.SelectorTCPServer):
        def verify_request(self, transport, client_address):
            self.seen.append(client_address)
            return len(self.seen) != 1

    server = Picky(("127.0.0.1", 0), Echo, loop=kind)
    server.seen = []
    with serving(server):
        with connect(server) as c:
            assert recv_until_eof(c) == b""
        with connect(server) as c:
            c.sendall(frame(b"ok"))
            assert recv_exactly(c, 6) == frame(b"ok")
        assert server.stats()["connections_rejected"] == 1


# -- backpressure ---------------------------------------------------------------------


class Streamer(cserver.FrameHandler):
    """Writes CHUNK-sized frames while it may (pause_writing/resume_writing)."""
    CHUNK = 32 * 1024
    TOTAL = 24 * 1024 * 1024

    def connection_made(self):
        self.sent = 0
        self.paused = False
        self.server.pauses = 0
        self.produce()

    def produce(self):
        payload = b"z" * self.CHUNK
        while not self.paused and self.sent < self.TOTAL:
            self.send_frame(payload)
            self.sent += self.CHUNK
            if self.transport.get_write_buffer_size() > 4 * self.server.high_water:
                break  # let the loop flush; continue on the next pass
        if self.sent < self.TOTAL and not self.paused:
            self.server.call_soon(self.produce)
        self.server.peak = max(getattr(self.server, "peak", 0),
                               self.transport.get_write_buffer_size())

    def pause_writing(self):
        self.paused = True
        self.server.pauses += 1

    def resume_writing(self):
        self.paused = False
        self.produce()


def test_slow_reader_pauses_writer_and_memory_stays_bounded(kind):
    with serving(tcp(Streamer, kind, high_water=256 * 1024)) as server, connect(server) as c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        assert wait_for(lambda: getattr(server, "pauses", 0) >= 1)
        time.sleep(0.1)  # the client reads nothing meanwhile
        stats = server.stats()
        assert stats["pool"]["write_buffer_bytes"] <= 4 * 1024 * 1024
        assert server.peak <= 4 * 256 * 1024 + 2 * (Streamer.CHUNK + 4)
        # now read everything: the writer resumes until done
        expected = Streamer.TOTAL // Streamer.CHUNK
        for _ in range(expected):
            header = recv_exactly(c, 4)
            assert struct.unpack("!I", header)[0] == Streamer.CHUNK
            recv_exactly(c, Streamer.CHUNK)
        assert server.pauses >= 1


def test_peer_that_never_reads_stops_being_read(kind):
    # An echo client that only sends: above high water the server stops
    # reading it, so the client's sends block instead of server memory growing.
    class PW(Echo):
        def pause_writing(self):
            self.server.events.append("pause")

        def resume_writing(self):
            self.server.events.append("resume")

    with serving(tcp(PW, kind, high_water=64 * 1024)) as server, connect(server) as c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        c.setblocking(False)
        chunk = frame(b"q" * 16000)
        sent = 0
        stalled_since = None
        deadline = time.monotonic() + TIMEOUT
        while sent < 256 * 1024 * 1024 and time.monotonic() < deadline:
            offset = sent % len(chunk)  # a partial send continues the frame
            try:
                sent += c.send(chunk[offset:])
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 0.3:
                    break
                time.sleep(0.01)
        assert stalled_since is not None, "the server never pushed back"
        assert "pause" in server.events
        assert server.stats()["pool"]["write_buffer_bytes"] <= 8 * 1024 * 1024
        # drain: everything sent comes back
        c.setblocking(True)
        c.settimeout(TIMEOUT)
        expected = sent - sent % len(chunk)  # complete frames come back
        got = 0
        while got < expected:
            data = c.recv(1 << 20)
            assert data
            got += len(data)
        assert got == expected
        assert wait_for(lambda: "resume" in server.events)


def test_pause_and_resume_reading_keep_order(kind):
    class Pausing(cserver.FrameHandler):
        def frame_received(self, frame):
            self.send_frame(frame)
            self.pause_reading()
            self.server.call_later(0.001, self.resume_reading)

    stream = b"".join(frame(b"%d" % i) for i in range(100))
    with serving(tcp(Pausing, kind)) as server, connect(server) as c:
        c.sendall(stream)
        assert recv_exactly(c, len(stream)) == stream


def test_bytes_received_before_a_pause_go_before_later_ones(kind):
    # frame 2 is split: its start arrives with frame 1 (then the handler
    # pauses), its end arrives while paused; after the resume, order holds.
    class Pausing(cserver.FrameHandler):
        def frame_received(self, frame):
            self.server.events.append(frame)
            self.send_frame(frame)
            self.pause_reading()
            self.server.call_later(0.1, self.resume_reading)

    f1, f2, f3 = frame(b"one"), frame(b"two" * 1000), frame(b"three")
    with serving(tcp(Pausing, kind)) as server, connect(server) as c:
        c.sendall(f1 + f2[:100])
        assert recv_exactly(c, len(f1)) == f1
        c.sendall(f2[100:] + f3)
        assert recv_exactly(c, len(f2) + len(f3)) == f2 + f3
        assert server.events == [b"one", b"two" * 1000, b"three"]


@pytest.mark.parametrize("size", [100, 20000, 65536, 200000])
def test_pause_reading_with_buffered_large_frames(kind, size):
    class Pausing(cserver.FrameHandler):
        def frame_received(self, frame):
            self.send_frame(frame)
            self.pause_reading()
            self.server.call_soon(self.resume_reading)

    payloads = [bytes([i]) * size for i in range(6)]
    stream = b"".join(frame(p) for p in payloads)
    with serving(tcp(Pausing, kind)) as server, connect(server) as c:
        for i in range(0, len(stream), 70001):
            c.sendall(stream[i:i + 70001])
        assert recv_exactly(c, len(stream)) == stream


# -- limits: idle timeout, max connections ----------------------------------------------


def test_idle_timeout_closes_silent_connections_only(kind):
    with serving(tcp(Recording, kind, idle_timeout=0.3)) as server:
        with connect(server) as silent, connect(server) as chatty:
            for _ in range(12):  # ~0.6 s of traffic, every 0.05 s
                chatty.sendall(frame(b"."))
                assert recv_exactly(chatty, 5) == frame(b".")
                time.sleep(0.05)
            assert recv_until_eof(silent) == b""  # closed by the server
            chatty.sendall(frame(b"still"))
            assert recv_exactly(chatty, 9) == frame(b"still")
        assert any(e[0] == "lost" and isinstance(e[1], TimeoutError) for e in server.events)


def test_max_connections_stops_and_resumes_accepting(kind):
    with serving(tcp(Echo, kind, max_connections=2)) as server:
        a, b = connect(server), connect(server)
        try:
            for s in (a, b):
                s.sendall(frame(b"in"))
                assert recv_exactly(s, 6) == frame(b"in")
            third = connect(server)  # the kernel backlog takes it
            try:
                third.sendall(frame(b"wait"))
                third.settimeout(0.2)
                with pytest.raises(socket.timeout):
                    third.recv(1)
                stats = server.stats()
                assert stats["connections"] == 2 and not stats["accepting"]
                a.close()
                third.settimeout(TIMEOUT)
                assert recv_exactly(third, 8) == frame(b"wait")
                assert server.stats()["connections_peak"] == 2
            finally:
                third.close()
        finally:
            a.close()
            b.close()


# -- shutdown, timers, threads, resources --------------------------------------------------


def test_shutdown_with_open_connections_calls_connection_lost(kind):
    server = tcp(Recording, kind)
    conns = []
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        conns = [connect(server) for _ in range(5)]
        for c in conns:
            c.sendall(frame(b"x"))
            assert recv_exactly(c, 5) == frame(b"x")
        t0 = time.monotonic()
        server.shutdown()
        assert time.monotonic() - t0 < 2.0  # loose: nothing to drain
        thread.join(TIMEOUT)
        assert not thread.is_alive()
        lost = [e for e in server.events if e[0] == "lost"]
        assert lost == [("lost", None)] * 5
        for c in conns:
            assert recv_until_eof(c) == b""
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()
        for c in conns:
            c.close()


def test_shutdown_drains_pending_writes(kind):
    class Big(cserver.ConnectionHandler):
        def data_received(self, data):
            self.write(b"d" * (4 * 1024 * 1024))

    server = tcp(Big, kind)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        with connect(server) as c:
            c.sendall(b"go")
            assert c.recv(1) == b"d"
            stopper = threading.Thread(target=server.shutdown, kwargs={"drain_timeout": 5.0})
            stopper.start()
            data = recv_until_eof(c)
            stopper.join(TIMEOUT)
            assert len(data) == 4 * 1024 * 1024 - 1
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()


def test_shutdown_before_serve_forever_still_stops_it(kind):
    server = tcp(Echo, kind)
    try:
        server.shutdown()   # returns at once: not serving
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    finally:
        server.server_close()


def test_call_later_cancel_and_call_soon_threadsafe(kind):
    class Tracked(Echo):
        def connection_made(self):
            self.server.handlers.append(self)

    server = tcp(Tracked, kind)
    server.handlers = []
    fired = []
    with serving(server):
        server.call_soon_threadsafe(server.call_later, 0.01, fired.append, "later")
        # A timer cancelled from this thread never fires.  The cancel must
        # reach the loop before the timer is due; on a loaded machine it may
        # not, so a late cancel (seen by the loop's clock) is tried again
        # with a longer delay, never counted as a pass.
        for delay in (0.2, 1.0, 3.0):
            handle_box, cancelled_at, hits = [], [], []
            server.call_soon_threadsafe(lambda: handle_box.append(
                (time.monotonic() + delay, server.call_later(delay, hits.append, "cancelled"))))
            assert wait_for(lambda: handle_box)
            due, handle = handle_box[0]
            server.call_soon_threadsafe(lambda: (handle.cancel(),
                                                 cancelled_at.append(time.monotonic())))
            assert wait_for(lambda: cancelled_at)
            if cancelled_at[0] < due - 0.05:
                break
        else:
            pytest.fail("the loop never ran a cancel before its timer was due")
        with connect(server) as c:
            assert wait_for(lambda: server.handlers)
            # write to a connection from this (non-loop) thread
            server.call_soon_threadsafe(server.handlers[0].send_frame, b"pushed")
            assert recv_exactly(c, 10) == frame(b"pushed")
        assert wait_for(lambda: fired == ["later"])
        time.sleep(max(0.0, due - time.monotonic()) + 0.1)
        assert fired == ["later"] and hits == []


def test_no_leaked_fds_or_threads_after_server_close(kind):
    def fds():
        return len(os.listdir("/proc/self/fd"))

    before_fds, before_threads = fds(), threading.active_count()
    for _ in range(2):
        with serving(tcp(Recording, kind)) as server:
            conns = [connect(server) for _ in range(10)]
            try:
                for c in conns:
                    c.sendall(frame(b"hi"))
                    assert recv_exactly(c, 6) == frame(b"hi")
            finally:
                for c in conns:
                    c.close()
    assert wait_for(lambda: threading.active_count() == before_threads)
    assert fds() == before_fds


def test_stats_counts(kind):
    with serving(tcp(Echo, kind)) as server:
        with connect(server) as c:
            c.sendall(frame(b"abc") * 3)
            recv_exactly(c, 21)
        assert wait_for(lambda: server.stats()["connections"] == 0)
        s = server.stats()
        assert (s["connections_total"], s["frames_in"], s["frames_out"]) == (1, 3, 3)
        assert s["bytes_in"] == s["bytes_out"] == 21
        assert s["pool"]["framing"]["in_use"] == 0


def test_quiet_connections_release_their_write_buffers(kind):
    # A write buffer is kept while its connection is busy, and released once
    # the connection has been quiet for a second: idle connections hold none.
    with serving(tcp(Echo, kind)) as server:
        with connect(server) as c:
            c.sendall(frame(b"x" * 100))
            assert recv_exactly(c, 104) == frame(b"x" * 100)
            assert server.stats()["pool"]["write_buffer_bytes_peak"] > 0
            assert wait_for(lambda: server.stats()["pool"]["write_buffer_bytes"] == 0, 5.0)
            # and the connection still works afterwards
            c.sendall(frame(b"again"))
            assert recv_exactly(c, 9) == frame(b"again")


def test_options_as_class_attributes_and_keywords(kind):
    class Limited(cserver.SelectorTCPServer):
        max_connections = 1
        loop = kind

    with serving(Limited(("127.0.0.1", 0), Echo)) as server:
        with connect(server) as a, connect(server) as b:
            a.sendall(frame(b"a"))
            assert recv_exactly(a, 5) == frame(b"a")
            assert server.stats()["connections"] == 1
            assert b.fileno() >= 0
    with pytest.raises(TypeError):
        cserver.SelectorTCPServer(("127.0.0.1", 0), Echo, no_such_option=1)


def test_loop_forced_by_environment(monkeypatch):
    monkeypatch.setenv("CSERVER_LOOP", "selectors")
    with serving(cserver.SelectorTCPServer(("127.0.0.1", 0), Echo)) as server:
        assert server.stats()["loop"] == "selectors"


# -- other transports ----------------------------------------------------------------------


def test_unix_stream(kind):
    d = tempfile.mkdtemp(dir="/tmp", prefix="mux")
    path = os.path.join(d, "s")
    try:
        with serving(cserver.SelectorUnixStreamServer(path, Recording, loop=kind)) as server:
            server.events = []
            with connect(server) as c:
                c.sendall(frame(b"unix"))
                assert recv_exactly(c, 8) == frame(b"unix")
            assert wait_for(lambda: len(server.events) == 2)
            assert server.events[0][0] == "made"
    finally:
        shutil.rmtree(d)


def test_ipv6(kind):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support")
    try:
        server = cserver.SelectorTCPServer(("::1", 0), Echo, loop=kind)
    except OSError as exc:
        pytest.skip("::1 unavailable: %s" % exc)
    assert server.address_family == socket.AF_INET6
    with serving(server):
        with socket.create_connection(server.server_address[:2], timeout=TIMEOUT) as c:
            c.sendall(frame(b"v6"))
            assert recv_exactly(c, 6) == frame(b"v6")


class UDPEcho(cserver.DatagramHandler):
    def datagram_received(self, data, addr):
        self.sendto(data.upper(), addr)


def test_udp(kind):
    with serving(cserver.SelectorUDPServer(("127.0.0.1", 0), UDPEcho, loop=kind)) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(TIMEOUT)
            for i in range(50):
                c.sendto(b"ping%d" % i, server.server_address)
            got = sorted(c.recvfrom(100)[0] for _ in range(50))
            assert got == sorted(b"PING%d" % i for i in range(50))
            big = b"u" * 60000  # a datagram near the maximum is not truncated
            c.sendto(big, server.server_address)
            assert c.recvfrom(65536)[0] == big.upper()
        assert wait_for(lambda: server.stats()["frames_in"] == 51)


def test_udp_reply_to_an_address_built_by_the_handler(kind):
    class Later(cserver.DatagramHandler):
        def datagram_received(self, data, addr):
            # a new tuple (not the loop's object) and a reply after a delay
            self.server.call_later(0.01, self.sendto, bytearray(data[::-1]), (addr[0], addr[1]))

    with serving(cserver.SelectorUDPServer(("127.0.0.1", 0), Later, loop=kind)) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(TIMEOUT)
            c.sendto(b"abc", server.server_address)
            assert c.recvfrom(100)[0] == b"cba"


def test_tcp_and_udp_on_one_loop(kind):
    server = tcp(Echo, kind)
    try:
        udp_address = server.add_datagram_endpoint(("127.0.0.1", 0), UDPEcho)
        with serving(server):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, connect(server) as c:
                u.settimeout(TIMEOUT)
                u.sendto(b"dgram", udp_address)
                c.sendall(frame(b"stream"))
                assert u.recvfrom(100)[0] == b"DGRAM"
                assert recv_exactly(c, 10) == frame(b"stream")
    finally:
        server.server_close()


def test_udp_handler_error_goes_to_handle_error(kind):
    class Bad(cserver.DatagramHandler):
        def datagram_received(self, data, addr):
            if data == b"bad":
                raise ValueError(data)
            self.sendto(data, addr)

    class Server(cserver.SelectorUDPServer):
        def handle_error(self, request, client_address):
            self.errors.append(client_address)

    server = Server(("127.0.0.1", 0), Bad, loop=kind)
    server.errors = []
    with serving(server):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(TIMEOUT)
            c.sendto(b"bad", server.server_address)
            c.sendto(b"good", server.server_address)
            assert c.recvfrom(100)[0] == b"good"
            assert [addr[1] for addr in server.errors] == [c.getsockname()[1]]


# -- command line and workers ----------------------------------------------------------------


def _start_cli(*args):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(cserver.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, "-m", "cserver", "echo"] + list(args),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


class LogReader:
    """Collects a subprocess's output lines in a thread."""

    def __init__(self, proc):
        self.lines = []
        self.thread = threading.Thread(target=self._run, args=(proc.stdout,))
        self.thread.start()

    def _run(self, stream):
        for line in iter(stream.readline, b""):
            self.lines.append(line.decode("utf-8", "replace"))

    def find(self, pattern, timeout=TIMEOUT, count=1):
        rx = re.compile(pattern)

        def found():
            return [m for m in (rx.search(line) for line in list(self.lines)) if m]
        assert wait_for(lambda: len(found()) >= count, timeout), "".join(self.lines)
        return found()


def _stop(proc, reader, sig=signal.SIGTERM):
    try:
        if proc.poll() is None:
            proc.send_signal(sig)
        code = proc.wait(TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        reader.thread.join(TIMEOUT)
        proc.stdout.close()
    return code


@pytest.mark.parametrize("raw, sig", [(False, signal.SIGTERM), (True, signal.SIGINT)])
def test_cli_echo(raw, sig):
    proc = _start_cli("--port", "0", *(["--raw"] if raw else []))
    reader = LogReader(proc)
    try:
        m = reader.find(r"listening on 127\.0\.0\.1:(\d+), pid (\d+), workers 1")[0]
        assert int(m.group(2)) == proc.pid
        with socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=TIMEOUT) as c:
            c.sendall(frame(b"cli"))
            assert recv_exactly(c, 7) == frame(b"cli")
    finally:
        code = _stop(proc, reader, sig)
    assert code == 0
    assert any("stopped" in line for line in reader.lines)


def test_cli_unix():
    d = tempfile.mkdtemp(dir="/tmp", prefix="mux")
    path = os.path.join(d, "e")
    proc = _start_cli("--unix", path)
    reader = LogReader(proc)
    try:
        reader.find(r"listening on " + re.escape(path))
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(TIMEOUT)
            c.connect(path)
            c.sendall(frame(b"u"))
            assert recv_exactly(c, 5) == frame(b"u")
    finally:
        code = _stop(proc, reader)
        shutil.rmtree(d)
    assert code == 0


def test_workers_restart_a_crashed_worker():
    proc = _start_cli("--port", "0", "--workers", "2")
    reader = LogReader(proc)
    try:
        port = int(reader.find(r"listening on 127\.0\.0\.1:(\d+)")[0].group(1))
        # the listeners exist before the workers run: an early client waits
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as c:
            c.sendall(frame(b"early"))
            assert recv_exactly(c, 9) == frame(b"early")
        workers = reader.find(r"worker (\d) serving on .* pid (\d+)", count=2)
        pids = {int(m.group(2)) for m in workers}
        assert len(pids) == 2 and proc.pid not in pids
        # only kill a pid the server we started reported as its own child
        victim = sorted(pids)[0]
        with open("/proc/%d/stat" % victim) as f:
            assert int(f.read().rsplit(")", 1)[1].split()[1]) == proc.pid
        os.kill(victim, signal.SIGKILL)
        reader.find(r"exited \(killed by SIGKILL\).*restarting")
        restarted = int(reader.find(r"worker \d restarted: pid (\d+)")[0].group(1))
        assert restarted not in pids
        for _ in range(8):  # connections land on both workers
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as c:
                c.sendall(frame(b"w"))
                assert recv_exactly(c, 5) == frame(b"w")
    finally:
        code = _stop(proc, reader, signal.SIGINT)  # Ctrl-C
    assert code == 0
    assert any("all workers stopped" in line for line in reader.lines)


@pytest.mark.stress
def test_emfile_backs_off_without_spinning(tmp_path):
    # A server process with few fds: accept hits EMFILE, logs, backs off,
    # and serves again once connections close.  Its CPU time stays small.
    script = r"""
import resource, socket, struct, sys, threading, time, os
sys.path.insert(0, sys.argv[1])
import cserver
class Echo(cserver.FrameHandler):
    def frame_received(self, f): self.send_frame(f)
server = cserver.SelectorTCPServer(("127.0.0.1", 0), Echo, loop=sys.argv[2])
server.call_soon(lambda: None)
nfd = len(os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (nfd + 4, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print(server.server_address[1], flush=True)
t = threading.Thread(target=server.serve_forever); t.start()
sys.stdin.readline()
server.shutdown(); t.join(); server.server_close()
print("cpu", sum(os.times()[:2]), "errors", server.stats if False else "", flush=True)
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(cserver.__file__)))
    for kind in KINDS:
        proc = subprocess.Popen([sys.executable, "-c", script, root, kind], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        conns = []
        try:
            port = int(proc.stdout.readline())
            for _ in range(12):
                conns.append(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
            time.sleep(0.5)
            for c in conns:
                c.close()
            conns = []
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as c:
                c.sendall(frame(b"back"))
                assert recv_exactly(c, 8) == frame(b"back")
            out, err = proc.communicate(b"\n", timeout=TIMEOUT)
        finally:
            for c in conns:
                c.close()
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert b"accept() failed" in err and b"not accepting" in err
        assert float(out.split()[1]) < 1.5  # CPU seconds: no busy loop while refused


# -- the loop's structure: states, decoder prototype, guarded calls ------------------

_loop = selectorserver._loop


def test_transport_states_only_go_forward():
    names = ["open", "closing", "aborting", "closed"]
    for old in range(4):
        for new in range(4):
            if new > old:
                _loop._check_transition(old, new)   # legal: no error
            else:
                with pytest.raises(RuntimeError, match="illegal transport state transition: "
                                   "%s -> %s" % (names[old], names[new])):
                    _loop._check_transition(old, new)
    with pytest.raises(RuntimeError):
        _loop._check_transition(0, 7)


def test_transport_state_through_a_connection_lifecycle(kind):
    class States(cserver.FrameHandler):
        def connection_made(self):
            self.server.events.append(("made", self.transport.state))

        def frame_received(self, frame):
            self.server.events.append(("frame", self.transport.state))
            if frame == b"close":
                self.transport.close()
            else:
                self.transport.abort()
            self.server.events.append((frame.decode(), self.transport.state,
                                       repr(self.transport).split()[3]))
            self.transport.close()   # closing again is a no-op, never a step back
            self.server.events.append(("again", self.transport.state))

        def connection_lost(self, exc):
            self.server.events.append(("lost", self.transport.state))

    with serving(tcp(States, kind)) as server:
        for word in (b"close", b"abort"):
            del server.events[:]
            with connect(server) as c:
                c.sendall(frame(word))
                assert recv_until_eof(c) == b""
            assert wait_for(lambda: len(server.events) == 5)
            after = "closing" if word == b"close" else "aborting"
            assert server.events == [("made", "open"), ("frame", "open"),
                                     (word.decode(), after, after), ("again", after),
                                     ("lost", "closed")]
        assert server.stats()["internal_errors"] == 0


def _new_loop(kind, **options):
    loop = _loop.Loop(kind)
    try:
        loop.configure(lambda transport, address: None, lambda request, address: None,
                       **options)
    except BaseException:
        loop.close()
        raise
    return loop


def test_configure_wants_a_frame_decoder_prototype(kind):
    from cserver import _framing
    with pytest.raises(TypeError, match="decoder must be a cserver._framing.FrameDecoder "
                       "prototype, not function"):
        _new_loop(kind, decoder=lambda: _framing.FrameDecoder("!I"))
    with pytest.raises(TypeError, match="decoder_factory"):
        _new_loop(kind, decoder_factory=lambda: _framing.FrameDecoder("!I"))
    _new_loop(kind, decoder=_framing.FrameDecoder("!I")).close()


def test_each_connection_decodes_with_its_own_clone(kind):
    # Two connections with a frame in progress at once: a decoder shared
    # between them (the prototype itself) would mix their bytes.
    with serving(tcp(Echo, kind)) as server:
        with connect(server) as a, connect(server) as b:
            fa, fb = frame(b"A" * 300), frame(b"B" * 300)
            a.sendall(fa[:100])
            b.sendall(fb[:150])
            time.sleep(0.05)
            a.sendall(fa[100:])
            b.sendall(fb[150:])
            assert recv_exactly(a, len(fa)) == fa
            assert recv_exactly(b, len(fb)) == fb


def test_dead_loop_api_is_gone():
    assert not hasattr(_loop.Loop, "time")
    loop = _loop.Loop("selectors")
    try:
        early = loop.call_at(1.0, print)
        late = loop.call_at(2.0, print)
        with pytest.raises(TypeError):
            early < late   # the heap orders (when, seq, handle): handles never compare
    finally:
        loop.close()


def _flooding_unix_datagram_loop(kind, tmp, handler_errors, on_lost=None):
    """A loop serving a Unix datagram socket whose handler floods a client
    that does not read (its queue fills: EAGAIN, the rest is queued), then
    makes the client vanish: every queued send fails in the loop's write
    path and the handler's error_received raises each time."""
    spath, cpath = os.path.join(tmp, "s"), os.path.join(tmp, "c")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    cli = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(spath)
    cli.bind(cpath)
    loop = _loop.Loop(kind)
    seen = {"errors": 0, "after": False}

    def gone():
        cli.close()
        os.unlink(cpath)
        loop.call_later(0.3, after)

    def after():
        seen["after"] = True
        loop.stop()

    class Flood:
        def __init__(self, endpoint):
            self.endpoint = endpoint

        def datagram_received(self, data, addr):
            for _ in range(100):
                self.endpoint.sendto(b"y" * 100, cpath)
            seen["queued"] = self.endpoint.get_write_buffer_size()
            loop.call_later(0.1, gone)

        def error_received(self, exc):
            seen["errors"] += 1
            raise RuntimeError("error_received is broken")

        def connection_lost(self, exc):
            if on_lost is not None:
                on_lost()

    loop.configure(lambda t, a: None, lambda r, a: handler_errors.append(sys.exc_info()[0]))
    loop.add_datagram_endpoint(srv, Flood)
    return loop, srv, cli, spath, seen


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="Unix sockets")
def test_error_received_that_raises_in_the_datagram_write_path_never_stops_the_loop(kind):
    errors = []
    tmp = tempfile.mkdtemp(prefix="cs-dg", dir="/tmp")
    loop, srv, cli, spath, seen = _flooding_unix_datagram_loop(kind, tmp, errors)
    watchdog = threading.Timer(TIMEOUT, loop.stop)
    try:
        cli.sendto(b"flood", spath)
        watchdog.start()
        loop.run()
        assert seen["queued"] > 0          # the write path was taken
        assert seen["errors"] >= 1
        assert seen["after"]               # the loop ran on: a later timer fired
        assert errors == [RuntimeError] * seen["errors"]
        assert loop.stats()["handler_errors"] == seen["errors"]
    finally:
        watchdog.cancel()
        loop.close()
        srv.close()
        cli.close()
        shutil.rmtree(tmp)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="Unix sockets")
def test_a_raising_datagram_connection_lost_is_counted_and_reported(kind):
    errors = []

    def lost():
        raise RuntimeError("connection_lost is broken")

    tmp = tempfile.mkdtemp(prefix="cs-dg", dir="/tmp")
    loop, srv, cli, spath, seen = _flooding_unix_datagram_loop(kind, tmp, errors, lost)
    try:
        loop.close()
        assert errors == [RuntimeError]
        assert loop.stats()["handler_errors"] == 1
    finally:
        srv.close()
        cli.close()
        shutil.rmtree(tmp)


def test_a_closed_loop_refuses_new_calls(kind):
    # a call accepted after close() would never run: it is refused instead
    loop = _loop.Loop(kind)
    assert not loop.closed
    loop.close()
    assert loop.closed
    for schedule in (lambda: loop.call_soon_threadsafe(print),
                     lambda: loop.call_soon(print),
                     lambda: loop.call_later(1.0, print),
                     lambda: loop.call_at(0.0, print),
                     loop.run):
        with pytest.raises(RuntimeError, match="closed loop"):
            schedule()


def test_server_close_while_a_handler_asks_for_the_loop(kind):
    # a datagram handler's connection_lost runs inside server_close (which
    # holds the core lock while it closes the loop): asking the server for
    # its loop there neither deadlocks nor gets the closing loop
    seen = []

    class AsksOnLost(cserver.DatagramHandler):
        def connection_lost(self, exc):
            try:
                self.server.call_soon(print)
            except RuntimeError as e:
                seen.append(str(e))

    server = cserver.SelectorUDPServer(("127.0.0.1", 0), AsksOnLost, loop=kind)
    closer = threading.Thread(target=server.server_close)
    try:
        server.call_soon(print)     # the loop exists, with the endpoint
        closer.start()
        closer.join(TIMEOUT)
        assert not closer.is_alive(), "server_close deadlocked"
        assert seen == ["the server is closed"]
    finally:
        if not closer.is_alive():   # (a deadlocked closer holds the lock: do not join it)
            server.server_close()
