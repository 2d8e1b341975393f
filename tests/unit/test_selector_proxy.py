"""PROXY protocol on the multiplexing server (``proxy_protocol``,
``trusted_proxies``, ``proxy_header_timeout``): what handlers see, the bytes
after the header, LOCAL/UNKNOWN, pauses, options.  Each test runs on both
pollers; the serving ones on TCP and Unix listeners, framed and raw.  The
attacker's side is tests/hostile/test_proxy_attacks.py."""
import ipaddress
import os
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cserver
from cserver import selectorserver

import proxyhelp as ph  # tests/ is on sys.path (pyproject: pythonpath)


@pytest.fixture(params=ph.KINDS)
def kind(request):
    return request.param


@pytest.fixture(params=["tcp", "unix"])
def where(request):
    return request.param


class Recorder:
    """What the server's hooks saw, shared by a test's handlers."""

    def __init__(self):
        self.verified = []
        self.made = []
        self.lost = []


def handlers(rec):
    class Framed(cserver.FrameHandler):
        def connection_made(self):
            t = self.transport
            rec.made.append((self.client_address, t.get_extra_info("peername"),
                             t.get_extra_info("proxy")))

        def frame_received(self, payload):
            self.send_frame(payload)

        def connection_lost(self, exc):
            rec.lost.append(exc)

    class Raw(cserver.ConnectionHandler):
        def connection_made(self):
            t = self.transport
            rec.made.append((self.client_address, t.get_extra_info("peername"),
                             t.get_extra_info("proxy")))

        def data_received(self, data):
            self.write(data)

        def connection_lost(self, exc):
            rec.lost.append(exc)

    return Framed, Raw


def server_class(rec, base):
    class Server(base):
        def verify_request(self, transport, client_address):
            rec.verified.append(client_address)
            return True
    return Server


def build(kind, where, short_tmpdir, handler, rec, **options):
    base = (selectorserver.SelectorUnixStreamServer if where == "unix"
            else selectorserver.SelectorTCPServer)
    cls = server_class(rec, base)
    if where == "unix":
        return cls(os.path.join(short_tmpdir, "s"), handler, loop=kind, **options)
    return cls(("127.0.0.1", 0), handler, loop=kind, **options)


def exchange(sock, framed, payload, reply_len=None):
    """Receive the echo of ``payload`` (already sent)."""
    want = len(ph.frame(payload)) if framed else len(payload)
    return ph.recv_exactly(sock, want if reply_len is None else reply_len)


# -- what the handler sees -------------------------------------------------------


@pytest.mark.parametrize("framed", [True, False], ids=["framed", "raw"])
@pytest.mark.parametrize("version", ["v1", "v2", "v2-tcp6", "v1-tcp6"])
def test_handlers_see_the_original_client_and_the_bytes_after_the_header(
        kind, where, framed, version, short_tmpdir):
    rec = Recorder()
    handler = handlers(rec)[0 if framed else 1]
    if version == "v1":
        header, source = ph.v1(), ("203.0.113.7", 51000)
    elif version == "v1-tcp6":
        header = ph.v1("2001:db8::7", "2001:db8::1", 40000, 443, family="TCP6")
        source = ("2001:db8::7", 40000, 0, 0)
    elif version == "v2":
        header, source = ph.v2(), ("203.0.113.7", 51000)
    else:
        header = ph.v2("2001:db8::7", "2001:db8::1", 40000, 443)
        source = ("2001:db8::7", 40000, 0, 0)
    mode = version[:2]
    server = build(kind, where, short_tmpdir, handler, rec, proxy_protocol=mode)
    payloads = [b"first", b"x" * 70000, b"third"]
    with ph.running(server):
        with ph.connect(server) as c:
            # "sticky": the header and the first frames in one segment
            data = b"".join(ph.frame(p) if framed else p for p in payloads)
            c.sendall(header + data)
            assert ph.recv_exactly(c, len(data)) == data
            peer_seen = c.getsockname()
        assert ph.wait_until(lambda: rec.lost)
        stats = server.stats()
    assert rec.verified == [source]
    (client_address, peername, info), = rec.made
    assert client_address == source
    if where == "tcp":
        assert peername[:2] == peer_seen[:2]      # the socket's peer: the balancer
    assert info.version == int(mode[1])
    assert info.source == source and info.proxied
    assert stats["proxy_headers"] == 1
    assert stats["proxy_errors"] == stats["proxy_timeouts"] == stats["proxy_rejected"] == 0
    assert stats["connections_total"] == 1 and stats["connections"] == 0
    if framed:
        assert stats["frames_in"] == 3


@pytest.mark.parametrize("mode,header", [
    ("v2", ph.v2(command=0)),                            # LOCAL: a balancer's health check
    ("v2", ph.v2(command=0, tlvs=b"\x04\x00\x02ab")),    # LOCAL with a NOOP TLV, skipped
    ("v1", ph.v1(family="UNKNOWN")),
    ("any", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"),
], ids=["local", "local-tlv", "unknown", "unknown-any"])
def test_local_and_unknown_keep_the_socket_peer(kind, where, mode, header, short_tmpdir):
    rec = Recorder()
    server = build(kind, where, short_tmpdir, handlers(rec)[0], rec, proxy_protocol=mode)
    with ph.running(server):
        with ph.connect(server) as c:
            c.sendall(header + ph.frame(b"ping"))
            assert ph.recv_exactly(c, 8) == ph.frame(b"ping")
            local = c.getsockname()
        assert ph.wait_until(lambda: rec.lost)
        assert server.stats()["proxy_headers"] == 1
    (client_address, peername, info), = rec.made
    assert client_address == peername
    assert rec.verified == [peername]
    if where == "tcp":
        assert peername[:2] == local[:2]
    assert not info.proxied and info.source is None
    assert info.command == ("LOCAL" if mode == "v2" else "PROXY")


def test_the_header_split_byte_by_byte(kind, where, short_tmpdir):
    rec = Recorder()
    server = build(kind, where, short_tmpdir, handlers(rec)[0], rec, proxy_protocol="any")
    header = ph.v2(tlvs=b"\x05\x00\x04abcd")
    data = ph.frame(b"hello") + ph.frame(b"world")
    with ph.running(server):
        with ph.connect(server) as c:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1) if where == "tcp" else None
            for i in range(len(header + data)):
                c.send((header + data)[i:i + 1])
            assert ph.recv_exactly(c, len(data)) == data
        assert ph.wait_until(lambda: rec.lost)
    (_, _, info), = rec.made
    assert info.unique_id == b"abcd" and info.source == ("203.0.113.7", 51000)


def test_payload_intact_under_random_splits(kind, short_tmpdir):
    """Raw echo: header + payload cut at random points arrive whole, in order."""
    rec = Recorder()
    server = build(kind, "tcp", short_tmpdir, handlers(rec)[1], rec, proxy_protocol="any")
    with ph.running(server):
        @settings(max_examples=30, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(version=st.sampled_from(["v1", "v2"]),
               payload=st.binary(min_size=1, max_size=3000),
               cuts=st.lists(st.integers(min_value=0, max_value=3100), max_size=6))
        def check(version, payload, cuts):
            header = ph.v1() if version == "v1" else ph.v2()
            stream = header + payload
            points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
            with ph.connect(server) as c:
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for a, b in zip(points, points[1:]):
                    c.sendall(stream[a:b])
                assert ph.recv_exactly(c, len(payload)) == payload
        check()
    assert server.stats()["proxy_errors"] == 0


@pytest.mark.parametrize("framed", [True, False], ids=["framed", "raw"])
def test_a_pause_in_connection_made_holds_the_bytes_after_the_header(kind, framed):
    events = []

    class Base(cserver.FrameHandler if framed else cserver.ConnectionHandler):
        def connection_made(self):
            self.transport.pause_reading()
            self.server.call_later(0.1, self.resume)

        def resume(self):
            events.append("resume")
            self.transport.resume_reading()

    if framed:
        class Handler(Base):
            def frame_received(self, payload):
                events.append(payload)
                self.send_frame(payload)
    else:
        class Handler(Base):
            def data_received(self, data):
                events.append(data)
                self.write(data)

    server = selectorserver.SelectorTCPServer(("127.0.0.1", 0), Handler, loop=kind,
                                              proxy_protocol="v2")
    data = ph.frame(b"early") if framed else b"early"
    with ph.running(server):
        with ph.connect(server) as c:
            c.sendall(ph.v2() + data)
            assert ph.recv_exactly(c, len(data)) == data
            c.sendall(data)
            assert ph.recv_exactly(c, len(data)) == data
    body = [e for e in events if e != "resume"]
    assert events[0] == "resume" and b"".join(body) == b"earlyearly"


def test_without_proxy_protocol_nothing_changes(kind):
    rec = Recorder()
    server = build(kind, "tcp", None, handlers(rec)[0], rec)
    with ph.running(server):
        with ph.connect(server) as c:
            # a PROXY line is just bytes here: no header is ever looked for
            c.sendall(ph.frame(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"))
            assert ph.recv_exactly(c, 36)[4:] == b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"
            local = c.getsockname()
        assert ph.wait_until(lambda: rec.lost)
        stats = server.stats()
    (client_address, peername, info), = rec.made
    assert client_address == peername and peername[:2] == local[:2] and info is None
    assert [stats[k] for k in ("proxy_headers", "proxy_errors", "proxy_timeouts",
                               "proxy_rejected")] == [0, 0, 0, 0]


def test_get_extra_info_proxy_is_built_once_and_cached(kind):
    infos = []

    class Handler(cserver.FrameHandler):
        def connection_made(self):
            infos.append(self.transport.get_extra_info("proxy"))
            infos.append(self.transport.get_extra_info("proxy"))
            infos.append(self.transport.get_extra_info("nothing", "dflt"))

    server = selectorserver.SelectorTCPServer(("127.0.0.1", 0), Handler, loop=kind,
                                              proxy_protocol="v2")
    with ph.running(server):
        with ph.connect(server) as c:
            c.sendall(ph.v2(tlvs=b"\x01\x00\x02h2"))
            assert ph.wait_until(lambda: len(infos) == 3)
    assert infos[0] is infos[1] and infos[0].alpn == b"h2" and infos[2] == "dflt"


def test_pending_headers_are_closed_by_shutdown(kind, short_tmpdir):
    rec = Recorder()
    server = build(kind, "unix", short_tmpdir, handlers(rec)[0], rec, proxy_protocol="v2",
                   proxy_header_timeout=60)
    with ph.running(server):
        socks = [ph.connect(server) for _ in range(5)]
        try:
            for s in socks:
                s.sendall(ph.v2()[:10])
            assert ph.wait_until(lambda: server.stats()["connections"] == 5)
            server.shutdown()
            assert all(ph.closed_by_server(s) for s in socks)
        finally:
            for s in socks:
                s.close()
    assert rec.verified == [] and rec.made == []
    assert server.stats()["connections"] == 0


def test_max_connections_counts_the_connections_reading_a_header(kind):
    server = selectorserver.SelectorTCPServer(("127.0.0.1", 0), cserver.FrameHandler,
                                              loop=kind, proxy_protocol="v2",
                                              max_connections=2, proxy_header_timeout=1.0)
    with ph.running(server):
        socks = [ph.connect(server) for _ in range(3)]
        try:
            assert ph.wait_until(lambda: server.stats()["connections"] == 2)
            stats = server.stats()
            assert not stats["accepting"] and stats["connections_total"] == 2
            # the deadline frees both; the third is accepted, then its own deadline
            assert ph.wait_until(lambda: server.stats()["proxy_timeouts"] == 3)
            assert server.stats()["connections"] == 0
        finally:
            for s in socks:
                s.close()


# -- options ---------------------------------------------------------------------


def test_defaults():
    assert selectorserver.SelectorServer.proxy_protocol is None
    assert selectorserver.SelectorServer.trusted_proxies == ("127.0.0.0/8", "::1/128")
    assert selectorserver.SelectorServer.proxy_header_timeout == 3.0


@pytest.mark.parametrize("options,error,text", [
    (dict(proxy_protocol="v3"), ValueError, "proxy_protocol must be None, 'v1', 'v2' or 'any', "
                                            "got 'v3'"),
    (dict(proxy_protocol=2), TypeError, "proxy_protocol must be None, 'v1', 'v2' or 'any', got 2"),
    (dict(proxy_protocol=True), TypeError, "got True"),
    (dict(trusted_proxies=("10.0.0.0/8", "10.0.0.1/8")), ValueError,
     "trusted_proxies: '10.0.0.1/8' is not a network"),
    (dict(trusted_proxies=("nonsense",)), ValueError, "trusted_proxies: 'nonsense' is not a"),
    (dict(trusted_proxies=(None,)), TypeError, "trusted_proxies: each network must be a str"),
    (dict(trusted_proxies=5), TypeError, "trusted_proxies must be a network or a sequence"),
    (dict(proxy_header_timeout=0), ValueError, "proxy_header_timeout must be a positive"),
    (dict(proxy_header_timeout=-1.0), ValueError, "got -1.0"),
    (dict(proxy_header_timeout=None), TypeError, "got None"),
    (dict(proxy_header_timeout=float("nan")), ValueError, "got nan"),
])
def test_bad_options_are_refused_with_their_name_and_value(options, error, text):
    with pytest.raises(error) as info:
        selectorserver.SelectorTCPServer(("127.0.0.1", 0), cserver.FrameHandler,
                                         bind_and_activate=False, **options)
    assert text in str(info.value)


def test_proxy_protocol_on_udp_is_an_error():
    with pytest.raises(ValueError, match="proxy_protocol is for stream servers: "
                                         "SelectorUDPServer has no connections.*'v2'"):
        selectorserver.SelectorUDPServer(("127.0.0.1", 0), cserver.DatagramHandler,
                                         bind_and_activate=False, proxy_protocol="v2")


def test_networks_may_be_ipaddress_objects_or_one_string(kind):
    for trusted in ([ipaddress.ip_network("127.0.0.0/8")], "127.0.0.1/32",
                    ipaddress.ip_network("127.0.0.1")):
        rec = Recorder()
        server = build(kind, "tcp", None, handlers(rec)[0], rec, proxy_protocol="v1",
                       trusted_proxies=trusted)
        with ph.running(server):
            with ph.connect(server) as c:
                c.sendall(ph.v1() + ph.frame(b"ok"))
                assert ph.recv_exactly(c, 6) == ph.frame(b"ok")
        assert rec.verified == [("203.0.113.7", 51000)]


def test_an_instance_change_is_checked_when_the_loop_is_built():
    server = selectorserver.SelectorTCPServer(("127.0.0.1", 0), cserver.FrameHandler)
    try:
        server.proxy_protocol = "v9"
        with pytest.raises(ValueError, match="'v9'"):
            server.call_soon(print)    # builds the loop
    finally:
        server.server_close()


def test_the_loop_refuses_a_proxy_listener_without_a_mode():
    loop = selectorserver._loop.Loop()
    sock = socket.socket()
    try:
        loop.configure(lambda t, a: None, lambda r, a: None)
        with pytest.raises(ValueError, match="proxy_protocol"):
            loop.add_listener(sock, proxy=True)
        with pytest.raises(ValueError, match="'v4'"):
            loop.configure(lambda t, a: None, lambda r, a: None, proxy_protocol="v4")
    finally:
        loop.close()
        sock.close()


def test_a_struct_is_not_a_header():
    # keeps the helpers honest: the v2 helper writes the spec's layout
    header = ph.v2()
    assert header[:12] == ph.SIG and header[12] == 0x21 and header[13] == 0x11
    assert struct.unpack("!H", header[14:16])[0] == 12 == len(header) - 16


@pytest.mark.parametrize("src", ["0.0.0.0", "255.255.255.255", "10.0.99.100", "1.20.100.9",
                                 "192.168.0.10"])
def test_ipv4_sources_are_written_as_the_socket_module_does(kind, src):
    # the loop formats IPv4 addresses itself (not with inet_ntop's sprintf)
    rec = Recorder()
    server = build(kind, "tcp", None, handlers(rec)[0], rec, proxy_protocol="any")
    with ph.running(server):
        for header in (ph.v2(src, src, 65535, 0), ph.v1(src, src, 65535, 0)):
            with ph.connect(server) as c:
                c.sendall(header + ph.frame(b"a"))
                assert ph.recv_exactly(c, 5) == ph.frame(b"a")
        assert ph.wait_until(lambda: len(rec.lost) == 2)
    assert rec.verified == [(socket.inet_ntoa(socket.inet_aton(src)), 65535)] * 2
    assert [m[2].destination for m in rec.made] == [(src, 0)] * 2
    assert rec.made[0][1][0] == "127.0.0.1"
