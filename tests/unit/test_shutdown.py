"""cserver's shutdown(): it interrupts serve_forever()'s wait at once instead
of after up to poll_interval (gh-88932), and it leaks nothing.

The only timing assertions here are loose ones: with poll_interval=5,
shutdown() returns well under 1 s.
"""
import os
import threading
import time

import pytest

import cserver

POLL = 5.0        # a poll interval the stdlib would make shutdown() wait for
PROMPT = 1.0      # "well under poll_interval"


class Echo(cserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline())


class DgramEcho(cserver.DatagramRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.read())


SERVERS = {
    "TCPServer": (cserver.TCPServer, Echo),
    "ThreadingTCPServer": (cserver.ThreadingTCPServer, Echo),
    "ThreadPoolTCPServer": (cserver.ThreadPoolTCPServer, Echo),
    "UDPServer": (cserver.UDPServer, DgramEcho),
}


def _round_trip(net, server):
    if server.socket_type == cserver.socket.SOCK_DGRAM:
        assert net.dgram_exchange(server.server_address, b"ping") == b"ping"
    else:
        assert net.stream_exchange(server.server_address, b"ping\n") == b"ping\n"


def _timed_shutdown(server, thread):
    start = time.monotonic()
    server.shutdown()
    elapsed = time.monotonic() - start
    thread.join(10)
    assert not thread.is_alive()
    return elapsed


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_shutdown_is_prompt(name, serve, net):
    cls, handler = SERVERS[name]
    server = cls(("127.0.0.1", 0), handler)
    thread = serve(server, poll_interval=POLL)
    _round_trip(net, server)  # the loop is up and back in its wait
    assert _timed_shutdown(server, thread) < PROMPT
    assert server._BaseServer__shutdown_request is False


def test_shutdown_racing_the_loop_start_is_prompt(serve):
    # shutdown() right after the thread starts: before, during or after the
    # loop registers its wake-up socket.  Every time it stops at once.
    for _ in range(20):
        server = cserver.TCPServer(("127.0.0.1", 0), Echo)
        thread = serve(server, poll_interval=POLL)
        assert _timed_shutdown(server, thread) < PROMPT


def test_service_actions_still_run_at_poll_pace(serve):
    calls = []

    class Server(cserver.TCPServer):
        def service_actions(self):
            calls.append(time.monotonic())

    server = Server(("127.0.0.1", 0), Echo)
    serve(server, poll_interval=0.01)
    deadline = time.monotonic() + 10
    while len(calls) < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(calls) >= 5


def _snapshot():
    return len(os.listdir("/proc/self/fd")), sorted(t.name for t in threading.enumerate())


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_cycles_leak_no_fds_or_threads(name, net):
    cls, handler = SERVERS[name]
    server = cls(("127.0.0.1", 0), handler)
    try:
        before = _snapshot()
        for _ in range(10):
            thread = threading.Thread(target=server.serve_forever, args=(POLL,))
            thread.start()
            try:
                _round_trip(net, server)
            finally:
                server.shutdown()
                thread.join(10)
            assert not thread.is_alive()
        if hasattr(server, "pool_stats"):
            # The pool keeps its worker(s) until server_close().
            assert server.pool_stats()["workers"] >= 1
    finally:
        server.server_close()
    after = _snapshot()
    # Everything serve_forever opened (selector, wake-up sockets) and every
    # request thread or pool worker is gone; only the listening socket,
    # closed by server_close(), differs.
    assert after[0] == before[0] - 1
    assert after[1] == before[1]
    assert not any(n.startswith("cserver-pool-") for n in after[1])


def test_servers_created_and_closed_leak_nothing(net):
    before = _snapshot()
    for name in sorted(SERVERS):
        cls, handler = SERVERS[name]
        for _ in range(3):
            server = cls(("127.0.0.1", 0), handler)
            thread = threading.Thread(target=server.serve_forever, args=(POLL,))
            thread.start()
            try:
                _round_trip(net, server)
            finally:
                server.shutdown()
                thread.join(10)
                server.server_close()
    assert _snapshot() == before
