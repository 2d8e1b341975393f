"""Slowloris: peers that hold a connection (or a worker) by sending little.

Each variant opens as many slow connections as the server admits
(``max_connections`` on the multiplexing server, ``max_workers +
queue_size`` on the thread pool), keeps them trickling a byte every 50 ms
(which resets any idle or socket timeout), and checks that

- a well-behaved client, queued behind them, is served;
- every slow peer is closed by the deadline that trickling cannot reset
  (``first_byte_timeout``, ``frame_timeout``, ``request_timeout``), and the
  matching counter says so;
- nothing leaked (fds, threads).

Timeouts are small (0.4 s) so that every test is bounded by a few seconds.
"""
import socket
import struct
import time

import pytest

import cserver
from cserver import selectorserver
from support import TIMEOUT, frame, serving

KINDS = ["epoll", "selectors"] if selectorserver._loop.HAVE_EPOLL else ["selectors"]
SLOW = 0.4          # the deadline under test
TRICKLE = 0.05      # one byte every TRICKLE seconds


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


def running(server):
    """Serve (poll interval 0.05 s) in a thread; at exit stop, join, close,
    and check that no fd or thread was left behind (the listening socket is
    closed too)."""
    return serving(server, 0.05, name="slowloris", check_leaks=True)


def is_closed(sock):
    """True once the server closed ``sock`` (EOF or reset)."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def trickle_until(slow, done, limit=TIMEOUT):
    """Send one byte on each open slow socket every TRICKLE s until done()
    or limit; return the time it took."""
    start = time.monotonic()
    open_ = list(slow)
    while time.monotonic() - start < limit:
        if done():
            break
        for s in list(open_):
            try:
                s.send(b"\0")
            except OSError:
                open_.remove(s)
        time.sleep(TRICKLE)
    return time.monotonic() - start


class Echo(cserver.FrameHandler):
    def frame_received(self, frame):
        self.send_frame(frame)


class LongHeader(Echo):
    # a 64-byte header (60 bytes before the length field): trickled a byte
    # every TRICKLE s, it takes 3.2 s to complete
    length_offset = 60


# -- the multiplexing server ----------------------------------------------------------------

# How each slow peer starts; it then trickles zero bytes, one at a time.
STARTS = {
    "first_byte": b"",                        # silent until the deadline
    "header": b"",                            # trickles a 64-byte header
    "body": struct.pack("!I", 10000),         # a whole header, then the body
}


@pytest.mark.parametrize("variant", ["first_byte", "header", "body"])
def test_slow_peers_are_closed_and_a_good_client_is_served(kind, variant):
    n = 5
    handler = LongHeader if variant == "header" else Echo
    server = cserver.SelectorTCPServer(
        ("127.0.0.1", 0), handler, loop=kind, max_connections=n,
        first_byte_timeout=SLOW, frame_timeout=SLOW)
    with running(server):
        slow = [socket.create_connection(server.server_address, timeout=TIMEOUT)
                for _ in range(n)]
        try:
            for s in slow:
                if STARTS[variant]:
                    s.sendall(STARTS[variant])
            if variant == "first_byte":
                # silent: nothing at all until the deadline
                time.sleep(SLOW / 4)
                assert not any(is_closed(s) for s in slow)
                deadline = time.monotonic() + TIMEOUT
                while time.monotonic() < deadline and not all(is_closed(s) for s in slow):
                    time.sleep(0.02)
            # the good client waits in the backlog behind the full server
            with socket.create_connection(server.server_address, timeout=TIMEOUT) as good:
                hello = (b"\0" * 60 if variant == "header" else b"") + frame(b"hello")
                good.sendall(hello)
                took = trickle_until(slow, lambda: all(is_closed(s) for s in slow))
                assert all(is_closed(s) for s in slow), "slow peers still connected"
                assert took < TIMEOUT
                good.settimeout(TIMEOUT)
                assert good.recv(100) == hello
            stats = server.stats()
            counter = "first_byte_timeouts" if variant == "first_byte" else "frame_timeouts"
            assert stats[counter] == n, stats
        finally:
            for s in slow:
                s.close()


def test_a_trickler_is_closed_by_frame_timeout_though_idle_timeout_never_fires(kind):
    # idle_timeout alone (the old defence) is reset by each byte; the frame
    # deadline is not.
    server = cserver.SelectorTCPServer(("127.0.0.1", 0), Echo, loop=kind,
                                       idle_timeout=SLOW, frame_timeout=3 * SLOW)
    with running(server):
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as s:
            start = time.monotonic()
            s.sendall(struct.pack("!I", 10000))
            trickle_until([s], lambda: is_closed(s))
            took = time.monotonic() - start
            assert is_closed(s)
            assert took >= 3 * SLOW - 0.05      # not the idle timeout
        stats = server.stats()
        assert stats["frame_timeouts"] == 1 and stats["idle_timeouts"] == 0


def test_complete_frames_reset_the_frame_deadline(kind):
    # A client that sends complete frames, each within frame_timeout, is
    # never cut off however long it stays.
    server = cserver.SelectorTCPServer(("127.0.0.1", 0), Echo, loop=kind,
                                       frame_timeout=1.0, first_byte_timeout=1.0)
    with running(server):
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as s:
            for i in range(8):          # ~1.6 s, longer than the deadline
                f = frame(b"%d" % i)
                s.sendall(f[:3])
                time.sleep(0.2)
                s.sendall(f[3:])
                assert s.recv(100) == f
        assert server.stats()["frame_timeouts"] == 0


def test_raw_handlers_get_the_first_byte_deadline(kind):
    class Raw(cserver.ConnectionHandler):
        def data_received(self, data):
            self.write(data)

    server = cserver.SelectorTCPServer(("127.0.0.1", 0), Raw, loop=kind,
                                       first_byte_timeout=SLOW)
    with running(server):
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as silent, \
                socket.create_connection(server.server_address, timeout=TIMEOUT) as talker:
            talker.sendall(b"x")
            assert talker.recv(10) == b"x"
            assert silent.recv(10) == b""       # closed by the deadline
            time.sleep(SLOW)
            talker.sendall(b"y")                 # the talker is not affected
            assert talker.recv(10) == b"y"
        assert server.stats()["first_byte_timeouts"] == 1


def test_defaults_protect():
    # The documented defaults (docs/selectorserver.md, "What one peer can cost").
    assert cserver.SelectorTCPServer.first_byte_timeout == 10.0
    assert cserver.SelectorTCPServer.frame_timeout == 30.0
    assert cserver.SelectorTCPServer.idle_timeout is None
    assert cserver.ThreadPoolTCPServer.request_timeout == 30.0
    # the stdlib-compatible servers keep the stdlib's behaviour: no deadline
    assert not hasattr(cserver.ThreadingTCPServer, "request_timeout")
    assert not hasattr(cserver.TCPServer, "request_timeout")


# -- the thread pool ------------------------------------------------------------------------


class LineEcho(cserver.StreamRequestHandler):
    timeout = 2.0               # a socket timeout: reset by every byte

    def handle(self):
        try:
            line = self.rfile.readline(1 << 16)
        except (TimeoutError, OSError):
            return
        if line.endswith(b"\n"):
            self.wfile.write(line)


@pytest.mark.parametrize("variant", ["first_byte", "trickle"])
def test_slow_peers_cannot_hold_every_pool_worker(variant):
    class Handler(LineEcho):
        # silent peers: no socket timeout at all, only the request deadline
        timeout = None if variant == "first_byte" else LineEcho.timeout

    server = cserver.ThreadPoolTCPServer(("127.0.0.1", 0), Handler)
    server.max_workers, server.queue_size, server.request_timeout = 2, 1, SLOW
    n = server.max_workers + server.queue_size
    with running(server):
        slow = [socket.create_connection(server.server_address, timeout=TIMEOUT)
                for _ in range(n)]
        try:
            deadline = time.monotonic() + TIMEOUT
            while server.pool_stats()["pending"] < n and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.pool_stats()["pending"] == n     # every slot taken
            with socket.create_connection(server.server_address, timeout=TIMEOUT) as good:
                good.sendall(b"hello\n")
                if variant == "first_byte":
                    done = lambda: all(is_closed(s) for s in slow)  # noqa: E731
                    deadline = time.monotonic() + TIMEOUT
                    while time.monotonic() < deadline and not done():
                        time.sleep(0.02)
                else:
                    trickle_until(slow, lambda: all(is_closed(s) for s in slow))
                assert all(is_closed(s) for s in slow), "slow peers still hold workers"
                good.settimeout(TIMEOUT)
                assert good.recv(100) == b"hello\n"
            assert server.pool_stats()["timed_out"] == n
        finally:
            for s in slow:
                s.close()


def test_request_timeout_none_keeps_a_slow_request():
    # Off, the old behaviour: the pool waits for the handler.
    server = cserver.ThreadPoolTCPServer(("127.0.0.1", 0), LineEcho)
    server.max_workers, server.queue_size, server.request_timeout = 1, 0, None

    class Handler(LineEcho):
        timeout = None

    server.RequestHandlerClass = Handler
    with running(server):
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as s:
            trickle_until([s], lambda: False, limit=3 * SLOW)
            assert not is_closed(s)
            s.sendall(b"\n")
            assert s.recv(1 << 16).endswith(b"\n")
        assert server.pool_stats()["timed_out"] == 0


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError),
                                        (float("nan"), ValueError), ("3", TypeError),
                                        (True, TypeError)])
def test_request_timeout_is_validated(bad, error):
    # at construction (a class attribute) ...
    Server = type("Server", (cserver.ThreadPoolTCPServer,), {"request_timeout": bad})
    with pytest.raises(error, match="request_timeout must be a number > 0 or None, got"):
        Server(("127.0.0.1", 0), LineEcho)
    # ... and when the pool is built (set on the instance later)
    server = cserver.ThreadPoolTCPServer(("127.0.0.1", 0), LineEcho)
    try:
        server.request_timeout = bad
        with pytest.raises(error, match="request_timeout"):
            server.process_request(None, None)
    finally:
        server.server_close()
