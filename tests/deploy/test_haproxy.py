"""cserver behind a real HAProxy (Debian's 2.6): ``mode tcp`` with
``send-proxy`` (v1) and ``send-proxy-v2``, health checks that send a v2
LOCAL header, a balancer that sends no header or the wrong version.

Each test starts its own HAProxy (``haproxy -f cfg -db``) on loopback from a
config it writes (tests/deploy/conftest.py), and stops it by pid.  Clients
bind a source address of their own (127.0.0.N, N >= 2) before connecting, so
the real client's address differs from HAProxy's 127.0.0.1: a server that
reported the balancer's address would fail.
"""
import json
import logging
import os
import random
import socket
import subprocess

import pytest

import cserver

TCP_FRONTEND = """
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server s1 127.0.0.1:{backend_port} {server_options}
"""


def _client_host():
    return "127.0.0.%d" % random.randint(2, 254)


@pytest.mark.parametrize("version, option", [("v1", "send-proxy"), ("v2", "send-proxy-v2")])
def test_send_proxy_gives_the_real_client(haproxy, proxy_echo, version, option):
    server = proxy_echo(proxy_protocol=version)
    balancer = haproxy(TCP_FRONTEND, backend_port=server.server_address[1],
                       server_options=option)
    host = _client_host()
    with cserver.FramedClient(balancer.address, 10, source_address=(host, 0)) as client:
        local = client.socket.getsockname()
        # several frames on one connection: the bytes after the header are the
        # connection's own, none lost
        replies = [json.loads(client.request(b"frame %d" % i)) for i in range(3)]
    for i, reply in enumerate(replies):
        assert reply["echo"] == "frame %d" % i
        assert reply["client_address"] == [host, local[1]], reply     # not HAProxy's
        assert reply["peername"][0] == "127.0.0.1", reply             # HAProxy itself
        assert reply["peername"] != reply["client_address"]
        proxy = reply["proxy"]
        assert proxy["version"] == int(version[1]) and proxy["command"] == "PROXY"
        assert proxy["family"] == "TCP4" and proxy["proxied"] is True
        assert proxy["source"] == [host, local[1]]
        assert proxy["destination"] == list(balancer.address)        # the frontend
    stats = server.stats()
    assert stats["proxy_headers"] == 1 and stats["proxy_errors"] == 0, stats
    assert server.captured.errors() == []


def test_health_checks_send_a_v2_local_header(haproxy, proxy_echo, wait_for):
    """``check`` + ``check-send-proxy`` on a ``send-proxy-v2`` server: each
    check is a v2 LOCAL header, counted as a header (not an error), the
    connection's client is the socket's peer; HAProxy's own check sends a
    frame after the header and expects the server's answer (which names the
    header's command, LOCAL), so the server is UP only if it accepted the
    LOCAL header and served the bytes after it."""
    server = proxy_echo(proxy_protocol="v2")
    check = ("send-proxy-v2 check check-send-proxy inter 100ms fastinter 100ms rise 2 fall 1")
    template = TCP_FRONTEND + """\
    option tcp-check
    tcp-check send-binary 00000005636865636b
    tcp-check expect string LOCAL
"""
    balancer = haproxy(template, backend_port=server.server_address[1], server_options=check)
    assert balancer.wait_checked_up(["s1"])["s1"] == "UP L7OK"    # the tcp-check passed
    assert wait_for(lambda: len(server.seen) >= 3)
    locals_ = [s for s in server.seen if s["proxy"]["command"] == "LOCAL"]
    assert len(locals_) >= 3, server.seen
    for seen in locals_:
        assert seen["proxy"]["version"] == 2 and seen["proxy"]["proxied"] is False
        assert seen["client_address"] == seen["peername"]     # LOCAL: the socket's peer
    stats = server.stats()
    assert stats["proxy_headers"] >= 3 and stats["proxy_errors"] == 0, stats
    assert stats.get("proxy_timeouts", 0) == 0 and stats.get("proxy_rejected", 0) == 0, stats
    assert server.captured.errors() == []


@pytest.mark.parametrize("expected, option", [
    ("v1", ""),                    # no header at all: the client's bytes come first
    ("v2", ""),
    ("any", ""),
    ("v2", "send-proxy"),          # v1 to a v2 listener
    ("v1", "send-proxy-v2"),       # v2 to a v1 listener
])
def test_a_balancer_sending_no_or_the_wrong_header_is_refused(haproxy, proxy_echo, wait_for,
                                                              expected, option):
    server = proxy_echo(proxy_protocol=expected)
    balancer = haproxy(TCP_FRONTEND, backend_port=server.server_address[1],
                       server_options=option)
    with cserver.FramedClient(balancer.address, 10,
                              source_address=(_client_host(), 0)) as client:
        # a frame that is also the start of a v1 header cannot pass either
        with pytest.raises((EOFError, ConnectionError)):
            client.request(b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n")
    # (HAProxy may retry a connection the server closed at once: >= 1)
    assert wait_for(lambda: server.stats()["proxy_errors"] >= 1), server.stats()
    assert server.stats()["proxy_headers"] == 0
    assert server.seen == []           # no handler ever existed for it


def test_an_untrusted_balancer_is_refused(haproxy, proxy_echo, wait_for):
    """A peer outside ``trusted_proxies`` is closed before any read, even
    with a valid header."""
    server = proxy_echo(proxy_protocol="v2", trusted_proxies=("10.99.0.0/16",))
    balancer = haproxy(TCP_FRONTEND, backend_port=server.server_address[1],
                       server_options="send-proxy-v2")
    with cserver.FramedClient(balancer.address, 10) as client:
        with pytest.raises((EOFError, ConnectionError)):
            client.request(b"hello")
    assert wait_for(lambda: server.stats()["proxy_rejected"] >= 1), server.stats()
    assert server.stats()["proxy_headers"] == 0 and server.seen == []


def _haproxy_crt(openssl, crt, name):
    """A self-signed EC certificate for ``name`` made with ``openssl req``:
    ``crt`` holds the key and the certificate (HAProxy's ``crt``), ``crt +
    ".crt"`` the certificate alone (a client's CA file)."""
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=" + name, "-keyout", crt, "-out", crt + ".crt"],
                   check=True, capture_output=True, timeout=30)
    with open(crt, "a") as pem, open(crt + ".crt") as cert:
        pem.write(cert.read())
    return crt


TLS_FRONTEND = """
frontend fe
    bind 127.0.0.1:{port} ssl crt {crt}
    default_backend be
backend be
    server s1 127.0.0.1:{backend_port} send-proxy-v2-ssl {options}
"""


def test_send_proxy_v2_ssl_tells_the_tls_details(haproxy, proxy_echo, need, tmp_path):
    """HAProxy terminates TLS and sends ``send-proxy-v2-ssl`` with the
    cipher, the SNI (AUTHORITY) and a CRC32C of the header: the server
    verifies the CRC32C and exposes the SSL TLV as ``proxy.ssl``."""
    import ssl
    crt = _haproxy_crt(need.program("openssl"), str(tmp_path / "haproxy.pem"), "echo.test")
    server = proxy_echo(proxy_protocol="v2")
    balancer = haproxy(TLS_FRONTEND, backend_port=server.server_address[1], crt=crt,
                       options="proxy-v2-options ssl-cipher,authority,crc32c")
    context = ssl.create_default_context(cafile=crt + ".crt")
    context.check_hostname = True
    host = _client_host()
    raw = socket.create_connection(balancer.address, 10, source_address=(host, 0))
    with context.wrap_socket(raw, server_hostname="echo.test") as tls:
        local = tls.getsockname()
        tls.sendall(b"\x00\x00\x00\x05hello")
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            chunk = tls.recv(65536)
            assert chunk, data
            data += chunk
        cipher = tls.cipher()[0]
        version = tls.version()
    reply = json.loads(data[4:])
    assert reply["echo"] == "hello" and reply["client_address"] == [host, local[1]]
    proxy = reply["proxy"]
    assert proxy["ssl"]["ssl"] is True and proxy["ssl"]["version"] == version, proxy
    assert proxy["ssl"]["cipher"] == cipher, proxy
    assert proxy["authority"] == "echo.test" and isinstance(proxy["crc32c"], int), proxy
    assert server.stats()["proxy_errors"] == 0


REENCRYPT = """
frontend fe
    bind 127.0.0.1:{port} ssl crt {crt}
    default_backend be
backend be
    server s1 127.0.0.1:{backend_port} ssl verify required ca-file {ca} sni str(localhost) \
        send-proxy-v2-ssl proxy-v2-options ssl-cipher,authority,crc32c \
        check check-ssl check-send-proxy inter 100ms fastinter 100ms rise 2 fall 1
"""


def test_tls_to_a_tls_backend_with_the_proxy_header_first(haproxy, proxy_echo, need, tls,
                                                          tmp_path, wait_for):
    """HAProxy terminates the client's TLS, then opens TLS to cserver's
    multiplexing server (``ssl verify required``) with a PROXY v2 header
    before the handshake (``send-proxy-v2-ssl``): the loop reads the header,
    handshakes, and the handler sees the real client, the TLS of its own
    hop and the client's TLS details from the header.  HAProxy's health
    checks (``check-ssl check-send-proxy``: a LOCAL header, then a
    handshake) mark the server UP only if both work."""
    import ssl
    crt = _haproxy_crt(need.program("openssl"), str(tmp_path / "front.pem"), "front.test")
    server = proxy_echo(proxy_protocol="v2", ssl_context=tls.server_context())
    server.logger.setLevel(logging.DEBUG)   # every handshake failure, not one per 10 s
    balancer = haproxy(REENCRYPT, backend_port=server.server_address[1], crt=crt, ca=tls.ca)
    assert balancer.wait_checked_up(["s1"])["s1"].startswith("UP")
    context = ssl.create_default_context(cafile=crt + ".crt")
    host = _client_host()
    raw = socket.create_connection(balancer.address, 10, source_address=(host, 0))
    with context.wrap_socket(raw, server_hostname="front.test") as front:
        local = front.getsockname()
        replies = []
        for i in range(3):
            front.sendall(b"\x00\x00\x00\x05hell" + str(i).encode())
            data = b""
            while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
                chunk = front.recv(65536)
                assert chunk, data
                data += chunk
            replies.append(json.loads(data[4:]))
        front_cipher = front.cipher()[0]
    for i, reply in enumerate(replies):
        assert reply["echo"] == "hell%d" % i
        assert reply["client_address"] == [host, local[1]], reply      # not HAProxy's
        assert reply["tls"] in ("TLSv1.2", "TLSv1.3"), reply             # HAProxy -> cserver
        assert reply["proxy"]["ssl"]["ssl"] is True, reply                # client -> HAProxy
        assert reply["proxy"]["ssl"]["cipher"] == front_cipher, reply
        assert isinstance(reply["proxy"]["crc32c"], int), reply
    # the data connection's handshake (HAProxy may reuse it for all three
    # requests); the checks' are cut by HAProxy's reset (below)
    assert wait_for(lambda: server.stats()["tls_handshakes"] >= 1)
    stats = server.stats()
    # the data connection's header (the checks' LOCAL headers count as
    # headers too, as many as HAProxy has sent by now)
    assert stats["proxy_headers"] >= 1 and stats["proxy_errors"] == 0, stats
    assert stats["tls_errors"] == 0, stats
    # HAProxy ends each check with a reset as soon as its side of the
    # handshake is done, which discards its last flight in our kernel: the
    # server sees a handshake cut by a reset, counted as a handshake error
    # and logged as such; nothing else may fail
    failures = [r.getMessage() for r in server.captured.records if "TLS:" in r.getMessage()]
    assert len(failures) == stats["tls_handshake_errors"], (failures, stats)
    assert all("reset during the TLS handshake" in m for m in failures), failures
    assert server.captured.errors() == []


@pytest.mark.parametrize("version, option", [("v1", "send-proxy"), ("v2", "send-proxy-v2")])
def test_an_ipv6_client_through_an_ipv4_balancer_hop(haproxy, proxy_echo, version, option):
    """The client reaches HAProxy over IPv6 (::1), HAProxy reaches the
    server over IPv4: the header's TCP6 source is the client_address."""
    server = proxy_echo(proxy_protocol=version)
    template = TCP_FRONTEND.replace("bind 127.0.0.1:{port}", "bind [::1]:{port}")
    balancer = haproxy(template, backend_port=server.server_address[1], server_options=option)
    with cserver.FramedClient(("::1", balancer.port), 10) as client:
        local = client.socket.getsockname()
        reply = json.loads(client.request(b"six"))
    assert reply["echo"] == "six"
    assert reply["client_address"][:2] == ["::1", local[1]], reply
    assert reply["peername"][0] == "127.0.0.1"
    assert reply["proxy"]["family"] == "TCP6" and reply["proxy"]["destination"][:2] == [
        "::1", balancer.port]


def test_haproxy_to_a_unix_socket_backend(haproxy, proxy_echo, tmp_short):
    """HAProxy on the same host reaching cserver over a Unix socket with
    ``send-proxy-v2`` (Unix peers are always trusted, whatever
    ``trusted_proxies`` says): client_address is the TCP client's."""
    path = os.path.join(tmp_short, "echo.sock")
    server = proxy_echo(unix=path, proxy_protocol="v2", trusted_proxies=("10.99.0.0/16",))
    template = TCP_FRONTEND.replace("127.0.0.1:{backend_port}", "unix@{path}")
    balancer = haproxy(template, path=path, server_options="send-proxy-v2")
    host = _client_host()
    with cserver.FramedClient(balancer.address, 10, source_address=(host, 0)) as client:
        local = client.socket.getsockname()
        reply = json.loads(client.request(b"over unix"))
    assert reply["echo"] == "over unix"
    assert reply["client_address"] == [host, local[1]], reply
    assert reply["proxy"]["family"] == "TCP4"
    stats = server.stats()
    assert stats["proxy_headers"] == 1 and stats["proxy_rejected"] == 0, stats
