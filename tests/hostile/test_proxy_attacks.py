"""The attacker's side of PROXY protocol on the multiplexing server.

A listener with ``proxy_protocol`` set believes what a header says about
the client, so: a peer outside ``trusted_proxies`` is closed before a byte
is read; a bad header, a mode mismatch, an end of stream inside the header
close the connection before ``verify_request`` or any handler runs, counted
and logged without flooding the log; a trickled header is cut at
``proxy_header_timeout`` from accept whatever arrives; a header that
announces 65535 bytes holds what was received, never what was announced;
many connections holding partial headers cost bounded memory.
Every test runs on both pollers; timeouts are small so each is bounded by a
few seconds."""
import logging
import os
import socket
import struct
import time
import tracemalloc

import pytest

import cserver
from cserver import selectorserver

import proxyhelp as ph  # tests/ is on sys.path (pyproject: pythonpath)


@pytest.fixture(params=ph.KINDS)
def kind(request):
    return request.param


class Watched(selectorserver.SelectorTCPServer):
    """Counts verify_request calls and handlers made (class-level lists are
    replaced per server by ``watched``)."""
    verified = made = None

    def verify_request(self, transport, client_address):
        self.verified.append(client_address)
        return True


def watched(kind, unix_path=None, **options):
    made = []

    class Echo(cserver.FrameHandler):
        def connection_made(self):
            made.append(self.client_address)

        def frame_received(self, payload):
            self.send_frame(payload)

    if unix_path is not None:
        base = type("WatchedUnix", (Watched,), {"address_family": socket.AF_UNIX})
        server = base(unix_path, Echo, loop=kind, **options)
    else:
        server = Watched(("127.0.0.1", 0), Echo, loop=kind, **options)
    server.verified = []
    server.made = made
    return server


def test_an_untrusted_peer_is_closed_before_any_read(kind):
    server = watched(kind, proxy_protocol="any", trusted_proxies=("10.0.0.0/8",))
    with ph.running(server):
        for _ in range(3):
            with ph.connect(server) as c:
                # a perfectly valid header and frame: the peer is the problem
                c.sendall(ph.v1("127.0.0.1") + ph.frame(b"hello"))
                assert ph.closed_by_server(c)
        assert ph.wait_until(lambda: server.stats()["proxy_rejected"] == 3)
        stats = server.stats()
    assert stats["bytes_in"] == 0                     # nothing was read
    assert stats["connections_total"] == 0 and stats["proxy_headers"] == 0
    assert server.verified == [] and server.made == []


def test_unix_peers_are_always_trusted(kind, short_tmpdir):
    server = watched(kind, os.path.join(short_tmpdir, "s"), proxy_protocol="v2",
                     trusted_proxies=())
    with ph.running(server):
        with ph.connect(server) as c:
            c.sendall(ph.v2() + ph.frame(b"x"))
            assert ph.recv_exactly(c, 5) == ph.frame(b"x")
    assert server.made == [("203.0.113.7", 51000)]
    assert server.stats()["proxy_rejected"] == 0


@pytest.mark.parametrize("trusted,accepted", [
    (("127.0.0.0/8",), True),               # the mapped peer matched as IPv4
    (("::ffff:127.0.0.0/104",), True),      # a mapped network is the IPv4 one
    (("10.0.0.0/8", "::/0"), False),        # not as IPv6: ::/0 does not take it
    (("::1/128",), False),
])
def test_an_ipv4_mapped_peer_on_a_dual_stack_listener_is_matched_as_ipv4(
        kind, trusted, accepted):
    class DualStack(Watched):
        address_family = socket.AF_INET6

        def server_bind(self):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

    made = []

    class Echo(cserver.FrameHandler):
        def connection_made(self):
            made.append(self.client_address)

        def frame_received(self, payload):
            self.send_frame(payload)

    try:
        server = DualStack(("::", 0), Echo, loop=kind, proxy_protocol="v1",
                           trusted_proxies=trusted)
    except OSError as exc:  # no IPv6 on this host
        pytest.skip("no dual-stack IPv6 listener here: %s" % exc)
    server.verified = []
    with ph.running(server):
        with socket.create_connection(("127.0.0.1", server.server_address[1]),
                                      timeout=ph.TIMEOUT) as c:
            c.sendall(ph.v1() + ph.frame(b"hi"))
            if accepted:
                assert ph.recv_exactly(c, 6) == ph.frame(b"hi")
            else:
                assert ph.closed_by_server(c)
        stats = server.stats()
    assert stats["proxy_rejected"] == (0 if accepted else 1)
    assert made == ([("203.0.113.7", 51000)] if accepted else [])


def test_ipv6_loopback_is_trusted_by_default(kind):
    made = []

    class Echo(cserver.FrameHandler):
        def connection_made(self):
            made.append(self.client_address)

    try:
        server = selectorserver.SelectorTCPServer(("::1", 0), Echo, loop=kind,
                                                  proxy_protocol="v2")
    except OSError as exc:
        pytest.skip("no IPv6 loopback here: %s" % exc)
    with ph.running(server):
        with socket.create_connection(server.server_address[:2], timeout=ph.TIMEOUT) as c:
            c.sendall(ph.v2("2001:db8::9", "2001:db8::1", 1, 2))
            assert ph.wait_until(lambda: made)
    assert made == [("2001:db8::9", 1, 0, 0)]


BAD = [
    ("any", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("any", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),      # a TLS ClientHello
    ("v1", b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n"),                # leading zero
    ("v1", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n"),             # port out of range
    ("v1", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"),                   # LF without CR
    ("v1", b"PROXY TCP4 " + b"1" * 120 + b"\r\n"),                 # longer than 107
    ("v1", ph.v2()),                                               # v2 where v1 is required
    ("v2", ph.v1()),                                               # and the reverse
    ("v2", ph.SIG + b"\x31\x11\x00\x0c" + b"\0" * 12),             # version 3
    ("v2", ph.SIG + b"\x22\x11\x00\x0c" + b"\0" * 12),             # command 2
    ("v2", ph.SIG + b"\x21\x11\x00\x04" + b"\0" * 4),              # block < addresses
    ("v2", ph.v2(tlvs=b"\x03\x00\x04\0\0\0\0")),                   # CRC32C mismatch
    ("v2", ph.v2(tlvs=b"\x01\x00\x09ab")),                         # TLV past the end
]


@pytest.mark.parametrize("mode,header", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_headers_are_closed_and_counted(kind, mode, header):
    server = watched(kind, proxy_protocol=mode)
    with ph.running(server):
        with ph.connect(server) as c:
            c.sendall(header + ph.frame(b"never served"))
            assert ph.closed_by_server(c)
        assert ph.wait_until(lambda: server.stats()["proxy_errors"] == 1)
        stats = server.stats()
    assert stats["proxy_headers"] == 0 and stats["frames_in"] == 0
    assert server.verified == [] and server.made == []


@pytest.mark.parametrize("cut", [0, 5, 15, 20])
def test_an_end_of_stream_inside_the_header_is_an_error(kind, cut):
    server = watched(kind, proxy_protocol="v2")
    with ph.running(server):
        with ph.connect(server) as c:
            c.sendall(ph.v2()[:cut])
        assert ph.wait_until(lambda: server.stats()["proxy_errors"] == 1)
        assert ph.wait_until(lambda: server.stats()["connections"] == 0)
    assert server.verified == [] and server.made == []


@pytest.mark.parametrize("cut", [5, 20])
def test_a_reset_inside_the_header_closes_that_connection_only(kind, cut):
    # a peer that sends part of a header, then resets (RST, not FIN): that
    # connection is counted and closed, no handler is made, the next
    # client is served
    server = watched(kind, proxy_protocol="v2")
    with ph.running(server):
        c = ph.connect(server)
        c.sendall(ph.v2()[:cut])
        assert ph.wait_until(lambda: server.stats()["bytes_in"] >= cut)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        assert ph.wait_until(lambda: server.stats()["proxy_errors"] == 1)
        assert ph.wait_until(lambda: server.stats()["connections"] == 0)
        assert server.verified == [] and server.made == []
        with ph.connect(server) as good:
            good.sendall(ph.v2() + ph.frame(b"ok"))
            assert ph.recv_exactly(good, 6) == ph.frame(b"ok")
    assert server.stats()["proxy_headers"] == 1


def test_a_flood_of_bad_headers_does_not_flood_the_log(kind, caplog):
    server = watched(kind, proxy_protocol="v2")
    caplog.set_level(logging.INFO, logger="cserver.selectorserver")
    with ph.running(server):
        for _ in range(40):
            with ph.connect(server) as c:
                c.sendall(b"GET / HTTP/1.0\r\n\r\n")
                assert ph.closed_by_server(c)
        assert ph.wait_until(lambda: server.stats()["proxy_errors"] == 40)
    logged = [r for r in caplog.records if "PROXY" in r.getMessage()]
    assert 1 <= len(logged) <= 2, [r.getMessage() for r in logged]
    assert "GET" in logged[0].getMessage() or "signature" in logged[0].getMessage()
    assert all(r.levelno <= logging.INFO for r in logged)


def test_a_trickled_header_is_cut_at_the_deadline(kind):
    """One byte per 0.2 s: every byte is progress, none moves the deadline."""
    timeout = 0.6
    server = watched(kind, proxy_protocol="v1", proxy_header_timeout=timeout,
                     idle_timeout=5.0)
    header = ph.v1()       # 46 bytes: ~9 s at this rate
    with ph.running(server):
        with ph.connect(server) as c:
            start = time.monotonic()
            closed_at = None
            for i in range(len(header)):
                try:
                    c.send(header[i:i + 1])
                except OSError:
                    closed_at = time.monotonic()
                    break
                time.sleep(0.2)
                if server.stats()["proxy_timeouts"]:
                    closed_at = time.monotonic()
                    break
            assert closed_at is not None, "the whole header was trickled in"
            assert closed_at - start < 5 * timeout
            assert ph.closed_by_server(c)
        stats = server.stats()
    assert stats["proxy_timeouts"] == 1 and stats["idle_timeouts"] == 0
    assert stats["proxy_headers"] == 0 and server.made == []


def test_a_v2_header_that_announces_65535_bytes_and_stalls(kind):
    """The parser holds what arrived (not what was announced) and the
    deadline closes it; many such connections cost bounded memory."""
    count, sent = 150, 300
    header = ph.SIG + b"\x21\x11\xff\xff" + os.urandom(sent)
    server = watched(kind, proxy_protocol="v2", proxy_header_timeout=2.0,
                     max_connections=count + 10)
    socks = []
    tracemalloc.start()
    try:
        with ph.running(server):
            before = tracemalloc.get_traced_memory()[0]
            try:
                for _ in range(count):
                    s = ph.connect(server)
                    socks.append(s)
                    s.sendall(header)
                assert ph.wait_until(lambda: server.stats()["bytes_in"] == count * len(header))
                held = tracemalloc.get_traced_memory()[0] - before
                assert server.stats()["connections"] == count
                # announced: 65551 bytes each (~9.8 MB); held: ~316 bytes each
                # plus the objects of a connection (a few KiB with the
                # test's own sockets): far below one announced header each
                assert held < count * 8 * 1024, held
                assert ph.wait_until(lambda: server.stats()["proxy_timeouts"] == count)
                assert all(ph.closed_by_server(s) for s in socks)
            finally:
                for s in socks:
                    s.close()
    finally:
        tracemalloc.stop()
    assert server.made == [] and server.verified == []


def test_many_partial_headers_are_bounded_and_a_good_client_is_served(kind):
    count = 200
    server = watched(kind, proxy_protocol="any", proxy_header_timeout=1.5)
    socks = []
    with ph.running(server):
        try:
            for i in range(count):
                s = ph.connect(server)
                socks.append(s)
                s.sendall((ph.v1() if i % 2 else ph.v2())[:10])
            assert ph.wait_until(lambda: server.stats()["connections"] == count)
            with ph.connect(server) as good:
                good.sendall(ph.v2() + ph.frame(b"served"))
                assert ph.recv_exactly(good, 10) == ph.frame(b"served")
            assert ph.wait_until(lambda: server.stats()["proxy_timeouts"] == count)
            assert server.stats()["connections"] <= 1
        finally:
            for s in socks:
                s.close()
    assert server.made == [("203.0.113.7", 51000)]


def test_a_local_header_announcing_a_large_block_holds_16_bytes(kind):
    # LOCAL: the block is skipped, never stored (its length still bounds it)
    server = watched(kind, proxy_protocol="v2")
    block = os.urandom(4000)
    with ph.running(server):
        with ph.connect(server) as c:
            c.sendall(ph.SIG + b"\x20\x00" + struct.pack("!H", len(block)) + block
                      + ph.frame(b"ok"))
            assert ph.recv_exactly(c, 6) == ph.frame(b"ok")
            local = c.getsockname()
    assert server.made == [local]
