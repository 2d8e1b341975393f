"""ProxyProtocolMixIn against hostile peers.

Every peer of a PROXY-protocol server is the balancer or an attacker who
reached the port.  Checked here, on the threading, thread-pool, forking and
plain servers:

- no header (an HTTP request, garbage, a TLS ClientHello) closes the
  connection, logged with its reason, before verify_request or the handler;
- a header trickled byte by byte is cut at ``proxy_header_timeout`` (a
  deadline: each byte does not extend it), and so is a v2 header that
  announces 65535 bytes and stalls;
- a silent peer on a threading / pool / forking server does not delay
  another client (its header is read in its own thread or child), while on
  a plain server it holds the serving thread until its deadline, as
  documented;
- a flood of bad connections logs at most a bounded number of lines and
  leaks no socket, thread or per-request state.

Deadlines are small (0.4 s) so that each test is bounded by a few seconds.
"""
import logging
import os
import select
import socket
import struct
import threading
import time

import pytest

import cserver
from cserver import socketserver as css

import support

# ForkingTCPServer next to the serve thread (support.FORK_IN_THREADS)
pytestmark = support.FORK_IN_THREADS

TIMEOUT = 10.0
SLOW = 0.4
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
HEADER = b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n"


class Echo(cserver.StreamRequestHandler):
    def handle(self):
        self.server.handled.append(self.client_address)
        self.wfile.write(b"OK " + self.client_address[0].encode() + b" " + self.rfile.read())


def make(kind, **attrs):
    calls = []

    def verify_request(self, request, client_address):
        calls.append(client_address)
        return True

    attrs.setdefault("proxy_header_timeout", SLOW)
    attrs["verify_request"] = verify_request
    cls = type("P" + kind, (cserver.ProxyProtocolMixIn, getattr(cserver, kind)), attrs)
    server = cls(("127.0.0.1", 0), Echo)
    server.handled = []
    server.verified = calls
    return server


def connect(address):
    sock = socket.create_connection(address, timeout=TIMEOUT)
    return sock


def read_to_close(sock):
    """Everything the server sends until it closes (b"" if nothing)."""
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def send_quietly(sock, data):
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the server may have closed (and reset) already


def closed_now(sock):
    """True if the server has closed this connection (EOF or reset)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except ConnectionResetError:
        return True


SERVING = ["ThreadingTCPServer", "ThreadPoolTCPServer", "ForkingTCPServer", "TCPServer"]


@pytest.mark.parametrize("kind", SERVING)
@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",         # a TLS ClientHello
    b"PROXY TCP4 203.0.113.7 192.0.2.1 056324 443\r\nx",    # leading zero
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\nx",                   # LF without CR
    b"PROXY " + b"A" * 120,                                  # no CRLF in 107 bytes
    V2_SIG + b"\x31\x11\x00\x0c" + b"\0" * 12,              # v2, version 3
    V2_SIG + b"\x21\x11\x00\x04" + b"\0" * 4,               # block shorter than TCP4's
], ids=["http", "tls", "v1-leading-zero", "v1-bare-lf", "v1-too-long", "v2-version",
        "v2-short-block"])
def test_no_valid_header_is_closed_before_verify_and_handler(kind, data, serve, caplog):
    server = make(kind)
    serve(server)
    with caplog.at_level(logging.WARNING, logger="cserver.proxy"):
        with connect(server.server_address) as sock:
            send_quietly(sock, data)
            assert read_to_close(sock) == b""
        if kind != "ForkingTCPServer":  # a child's records stay in the child
            server.shutdown()
            assert any("bad PROXY header" in r.getMessage() for r in caplog.records)
    assert server.verified == [] and server.handled == []


@pytest.mark.parametrize("kind", SERVING)
def test_header_trickled_past_the_deadline_is_cut(kind, serve, caplog):
    server = make(kind)
    serve(server)
    trickle = 0.05  # the whole header would take 2.25 s, the deadline is 0.4 s
    sent = 0
    with caplog.at_level(logging.WARNING, logger="cserver.proxy"):
        with connect(server.server_address) as sock:
            for byte in HEADER:
                if closed_now(sock):
                    break
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    break
                sent += 1
                time.sleep(trickle)
            assert sent < len(HEADER), "the trickled header was never cut"
            read_to_close(sock)
        if kind != "ForkingTCPServer":
            server.shutdown()
            assert any("proxy_header_timeout" in r.getMessage() for r in caplog.records)
    assert server.handled == [] and server.verified == []


@pytest.mark.parametrize("kind", SERVING)
def test_v2_header_announcing_65535_bytes_that_stalls(kind, serve, caplog):
    server = make(kind)
    serve(server)
    with caplog.at_level(logging.WARNING, logger="cserver.proxy"):
        with connect(server.server_address) as sock:
            sock.sendall(V2_SIG + b"\x21\x11\xff\xff" + b"\x7f\0\0\1" * 25)  # 116 bytes, stall
            assert read_to_close(sock) == b""   # closed at the deadline, not at 10 s
        if kind != "ForkingTCPServer":
            server.shutdown()
            messages = [r.getMessage() for r in caplog.records]
            assert any("proxy_header_timeout" in m and "116 bytes" in m for m in messages)
    assert server.handled == []


@pytest.mark.parametrize("kind", ["ThreadingTCPServer", "ThreadPoolTCPServer",
                                  "ForkingTCPServer"])
def test_silent_client_does_not_delay_another_client(kind, serve):
    # A deadline longer than the test's own client timeout: were the header
    # read on the serving thread, the second client would time out.
    server = make(kind, proxy_header_timeout=3 * TIMEOUT)
    serve(server)
    with connect(server.server_address) as silent:
        with connect(server.server_address) as other:
            send_quietly(other, HEADER + b"hello")
            assert read_to_close(other) == b"OK 203.0.113.7 hello"
        # and the silent peer is still waiting for its own deadline
        assert not closed_now(silent)


def test_silent_client_holds_a_plain_server_until_its_deadline(serve):
    # documented: a synchronous server reads the header on its only thread
    server = make("TCPServer")
    serve(server)
    with connect(server.server_address) as silent:
        time.sleep(0.05)  # let the server accept the silent one first
        with connect(server.server_address) as other:
            send_quietly(other, HEADER + b"hi")
            assert read_to_close(other) == b"OK 203.0.113.7 hi"
            # served only after the silent peer was cut at its deadline
            assert closed_now(silent) or read_to_close(silent) == b""


def test_flood_of_bad_connections_logs_a_bounded_number_of_lines(serve, caplog, monkeypatch):
    monkeypatch.setattr(css, "_PROXY_LOG_PERIOD", 1.0)
    server = make("ThreadingTCPServer")
    serve(server)
    with caplog.at_level(logging.WARNING, logger="cserver.proxy"):
        start = time.monotonic()
        for _ in range(25):
            with connect(server.server_address) as sock:
                send_quietly(sock, b"GET / HTTP/1.0\r\n\r\n")
                read_to_close(sock)
        elapsed = time.monotonic() - start
        lines = [r for r in caplog.records if r.name == "cserver.proxy"]
        if elapsed < 1.0:  # all in one window (the machine may be slow)
            assert len(lines) == css._PROXY_LOG_BURST
        else:
            assert len(lines) <= css._PROXY_LOG_BURST * (int(elapsed) + 1)
        time.sleep(1.05)  # a new window: the next line tells what was left out
        with connect(server.server_address) as sock:
            send_quietly(sock, b"nope")
            read_to_close(sock)
        server.shutdown()
    last = [r.getMessage() for r in caplog.records if r.name == "cserver.proxy"][-1]
    assert "more connections closed for their PROXY header, not logged" in last


def test_forked_children_share_the_log_budget(serve, tmp_path):
    # each child reads its own header and logs there: the budget is shared
    path = tmp_path / "proxy.log"
    handler = logging.FileHandler(str(path))
    logger = logging.getLogger("cserver.proxy")
    logger.addHandler(handler)
    try:
        server = make("ForkingTCPServer")
        serve(server)
        for _ in range(3 * css._PROXY_LOG_BURST):
            with connect(server.server_address) as sock:   # one at a time: no race
                send_quietly(sock, b"GET / HTTP/1.0\r\n\r\n")
                read_to_close(sock)
        server.shutdown()
        server.server_close()
    finally:
        logger.removeHandler(handler)
        handler.close()
    lines = path.read_text().splitlines()
    assert 1 <= len(lines) <= css._PROXY_LOG_BURST + 1, lines


@pytest.mark.parametrize("kind", ["ThreadingTCPServer", "ThreadPoolTCPServer", "TCPServer",
                                  "ForkingTCPServer"])
def test_many_bad_connections_leak_nothing(kind, serve, fd_count, wait_until):
    logging.getLogger("cserver.proxy").disabled = True
    try:
        server = make(kind, proxy_header_timeout=0.2, max_workers=2)
        serve(server)
        # warm up once (threads of the pool, lazily made objects)
        with connect(server.server_address) as sock:
            send_quietly(sock, HEADER + b"x")
            assert read_to_close(sock) == b"OK 203.0.113.7 x"
        threads = threading.active_count()
        fds = fd_count()
        bad = [b"garbage", b"PROXY TCP4 1.2.3.4", V2_SIG[:8], V2_SIG + b"\x21\x11\xff\xff",
               b""]
        for i in range(40):
            with connect(server.server_address) as sock:
                send_quietly(sock, bad[i % len(bad)])
                read_to_close(sock)
        with connect(server.server_address) as sock:
            send_quietly(sock, HEADER + b"y")
            assert read_to_close(sock) == b"OK 203.0.113.7 y"
        assert wait_until(lambda: fd_count() <= fds), (fd_count(), fds)
        # a pool may start its second worker (the first one was finishing
        # when the next connection came), never more
        spare = 1 if kind == "ThreadPoolTCPServer" else 0
        assert wait_until(lambda: threading.active_count() <= threads + spare), (
            threading.active_count(), threads)
        if kind == "ForkingTCPServer":
            # the children served (and failed) the requests; all reaped
            assert wait_until(lambda: not server.active_children), server.active_children
        else:
            assert vars(server).get("_cserver_proxy_requests") == {}
            assert len(server.handled) == 2
    finally:
        logging.getLogger("cserver.proxy").disabled = False


def test_untrusted_flood_closed_at_accept_without_threads(serve, fd_count, wait_until):
    logging.getLogger("cserver.proxy").disabled = True
    started = []
    try:
        server = make("ThreadingTCPServer", trusted_proxies=("192.0.2.0/24",))
        original = server.process_request
        server.process_request = lambda r, a: (started.append(a), original(r, a))
        serve(server)
        with connect(server.server_address) as sock:  # the serving loop is up
            send_quietly(sock, HEADER)
            assert read_to_close(sock) == b""
        fds = fd_count()
        for _ in range(30):
            with connect(server.server_address) as sock:
                send_quietly(sock, HEADER + b"x")
                assert read_to_close(sock) == b""
        assert wait_until(lambda: fd_count() <= fds)
        assert started == [] and server.verified == []
    finally:
        logging.getLogger("cserver.proxy").disabled = False


def test_unix_peer_is_trusted_whatever_trusted_proxies_says(serve, short_tmpdir):
    cls = type("P", (cserver.ProxyProtocolMixIn, cserver.ThreadingUnixStreamServer),
               {"trusted_proxies": ()})
    path = os.path.join(short_tmpdir, "s")
    server = cls(path, Echo)
    server.handled = []
    serve(server)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        send_quietly(sock, HEADER + b"u")
        assert read_to_close(sock) == b"OK 203.0.113.7 u"


def test_request_timeout_of_the_pool_also_bounds_the_header(serve):
    # the pool's watchdog (request_timeout) is armed when a worker takes the
    # request: it covers the header too
    server = make("ThreadPoolTCPServer", proxy_header_timeout=3 * TIMEOUT,
                  request_timeout=SLOW)
    serve(server)
    with connect(server.server_address) as sock:
        sock.sendall(struct.pack("!6s", b"PROXY "))
        assert read_to_close(sock) == b""
    assert server.handled == []
