"""TLSMixIn: TLS on the stdlib-style stream servers, and FramedClient's TLS.

Every server kind with TLS 1.2 and 1.3, Python's own ``ssl`` client, the
stdlib's handlers (http.server through ``http.client.HTTPSConnection``,
xmlrpc.server through ``xmlrpc.client``), FramedRequestHandler with
FramedClient(ssl_context=...), ``openssl s_client``, certificate failures on
the client side (wrong hostname, expired, unknown CA), client certificates
(mTLS), PROXY header then TLS, the options.  Certificates come from the
``tls`` fixture (made in the test session with ``cryptography``).  The
attacker cases (plaintext, garbage, trickling, silent clients, many
handshakes) are in ``tests/hostile/test_tls_mixin_attacks.py``.
"""
import http.client
import http.server
import json
import logging
import os
import select
import socket
import ssl
import struct
import subprocess
import sys
import threading
import xmlrpc.client
import xmlrpc.server

import pytest

import cserver
import support

TIMEOUT = 10.0
CI = bool(os.environ.get("CI"))
VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class Echo(cserver.StreamRequestHandler):
    """Reads one line, answers with what it saw, as one JSON line."""

    def handle(self):
        line = self.rfile.readline()
        cert = self.request.getpeercert()
        subject = dict(x[0] for x in cert["subject"]) if cert else None
        proxy_info = getattr(self.server, "proxy_info", None)
        info = proxy_info(self.request) if proxy_info else None
        self.wfile.write(json.dumps({
            "line": line.decode(),
            "ssl": isinstance(self.request, ssl.SSLSocket),
            "version": self.request.version(),
            "client": list(self.client_address) if isinstance(self.client_address, tuple)
            else self.client_address,
            "peer_cert": subject,
            "proxy_source": list(info.source) if info else None,
            "timeout": self.request.gettimeout(),
            "nodelay": (self.request.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                        if self.request.family != socket.AF_UNIX else None),
            "thread": threading.current_thread().name,
            "pid": os.getpid(),
        }).encode() + b"\n")


def make(kind, ctx, handler=Echo, path=None, mixins=(cserver.TLSMixIn,), **attrs):
    """A server of ``kind`` with TLSMixIn (and ``mixins``), recording what
    reached handle_error() in ``server.errors`` (its exception) and every
    request shut down in ``server.ended`` (after handle_error, by every
    runner but a forked child's)."""
    base = getattr(cserver, kind)

    def handle_error(self, request, client_address):
        self.errors.append(sys.exc_info()[1])

    def shutdown_request(self, request):
        base.shutdown_request(self, request)
        self.ended.append(request)

    cls = type("TLS" + kind, tuple(mixins) + (base,),
               dict(ssl_context=ctx, handle_error=handle_error,
                    shutdown_request=shutdown_request, **attrs))
    server = cls(path if "Unix" in kind else ("127.0.0.1", 0), handler)
    server.errors, server.ended = [], []
    return server


def tls_connect(address, ctx, server_hostname="localhost", prefix=b""):
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect(address)
        if prefix:
            sock.sendall(prefix)
        return ctx.wrap_socket(sock, server_hostname=server_hostname)
    except BaseException:
        sock.close()
        raise


def ask(address, ctx, line=b"hello\n", **kw):
    """One request over TLS: the reply JSON."""
    with tls_connect(address, ctx, **kw) as conn:
        conn.sendall(line)
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


@pytest.fixture
def unix_path(short_tmpdir):
    return os.path.join(short_tmpdir, "s")


KINDS = ["TCPServer", "ThreadingTCPServer", "ThreadPoolTCPServer", "ForkingTCPServer",
         "ThreadingUnixStreamServer"]


@support.FORK_IN_THREADS   # ForkingTCPServer next to the serve thread
@pytest.mark.parametrize("version", sorted(VERSIONS))
@pytest.mark.parametrize("kind", KINDS)
def test_every_server_kind_speaks_tls(kind, version, tls, serve, unix_path):
    server = make(kind, tls.server_context(), path=unix_path)
    serve(server)
    got = ask(server.server_address, tls.client_context(version=VERSIONS[version]))
    assert got["line"] == "hello\n"
    assert got["ssl"] is True
    assert got["version"] == version
    # the socket's own timeout (blocking) is back after the handshake
    assert got["timeout"] is None
    if kind == "ForkingTCPServer":
        assert got["pid"] != os.getpid()
    elif kind != "TCPServer":
        assert got["thread"] != "serve_forever"
    assert server.errors == []


@pytest.mark.parametrize("kind", ["TCPServer", "ThreadingTCPServer", "ThreadPoolTCPServer"])
def test_tls_connections_have_nagle_off(kind, tls, serve):
    # TLS 1.3 sends its session tickets as a segment of their own right after
    # the handshake; with Nagle on, the first reply waits behind them for
    # the client's delayed ACK (40 ms per connection, bench tls-churn: 90
    # req/s instead of hundreds).  Echo (a StreamRequestHandler) leaves
    # disable_nagle_algorithm False: the mixin turns Nagle off itself.
    assert Echo.disable_nagle_algorithm is False
    server = make(kind, tls.server_context())
    serve(server)
    got = ask(server.server_address, tls.client_context())
    assert got["nodelay"] != 0, got
    assert server.errors == []


class HTTPHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%s %s %s" % (self.path, type(self.request).__name__,
                              self.request.version())).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


@pytest.mark.parametrize("kind", ["ThreadingTCPServer", "ThreadPoolTCPServer"])
def test_http_server_get_over_https(kind, tls, serve):
    server = make(kind, tls.server_context(), handler=HTTPHandler)
    serve(server)
    conn = http.client.HTTPSConnection("localhost", server.server_address[1],
                                       timeout=TIMEOUT, context=tls.client_context())
    try:
        for path in ("/one", "/two"):  # HTTP/1.0 handler: one request a connection
            conn.request("GET", path)
            reply = conn.getresponse()
            assert reply.status == 200
            assert reply.read() == (b"%s SSLSocket TLSv1.3" % path.encode())
            conn.close()
    finally:
        conn.close()


def test_xmlrpc_over_tls(tls, serve):
    class Server(cserver.TLSMixIn, xmlrpc.server.SimpleXMLRPCDispatcher,
                 cserver.ThreadingTCPServer):
        ssl_context = tls.server_context()

        def __init__(self, address):
            self.logRequests = False
            xmlrpc.server.SimpleXMLRPCDispatcher.__init__(self, False, None)
            cserver.ThreadingTCPServer.__init__(self, address,
                                                xmlrpc.server.SimpleXMLRPCRequestHandler)

    server = Server(("127.0.0.1", 0))
    server.register_function(lambda a, b: a + b, "add")
    serve(server)
    proxy = xmlrpc.client.ServerProxy("https://localhost:%d/RPC2" % server.server_address[1],
                                      context=tls.client_context())
    with proxy:
        assert proxy.add(2, 3) == 5
        assert proxy.add("a", "b") == "ab"


class FrameEcho(cserver.FramedRequestHandler):
    def handle_frame(self, frame):
        return b"%s:%d:" % (type(self.request).__name__.encode(), len(frame)) + frame


@pytest.mark.parametrize("kind", ["ThreadingTCPServer", "ThreadPoolTCPServer",
                                  "ThreadingUnixStreamServer"])
def test_framed_handler_with_a_tls_framed_client(kind, tls, serve, unix_path):
    server = make(kind, tls.server_context(), handler=FrameEcho, path=unix_path)
    serve(server)
    address = server.server_address
    kw = {"server_hostname": "localhost"} if "Unix" in kind else {}
    # 200 KiB: past the size where a plain socket would use sendmsg()
    big = os.urandom(200 * 1024)
    with cserver.FramedClient(address, TIMEOUT, ssl_context=tls.client_context(),
                              **kw) as client:
        assert isinstance(client.socket, ssl.SSLSocket)
        assert client.request(b"abc") == b"SSLSocket:3:abc"
        assert client.request(big) == b"SSLSocket:%d:" % len(big) + big
        client.send_frame(b"x")
        client.send_frame(b"yz")
        assert client.recv_frame() == b"SSLSocket:1:x"
        assert client.recv_frame() == b"SSLSocket:2:yz"
    assert server.errors == []


def vanish(sock):
    """Close the client's ``sock`` without close_notify so that the server
    sees a vanished peer: over TCP a reset (SO_LINGER 0); over a Unix socket
    a close, which makes the server's next read fail with ECONNRESET when it
    leaves bytes unread (the caller leaves a reply unread), and its writes
    fail with EPIPE."""
    if sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def cserver_lines(caplog, level):
    """The messages of ``level`` logged on cserver.framing and cserver.tls."""
    return [r.getMessage() for r in caplog.records
            if r.name in ("cserver.framing", "cserver.tls") and r.levelno == level]


class LateFrameEcho(FrameEcho):
    """FrameEcho; the reply to ``late`` only once the client is gone (its
    reset or its close readable): that reply goes to a vanished peer."""

    def handle_frame(self, frame):
        if frame == b"late":
            ready, _, _ = select.select([self.request], [], [], TIMEOUT)
            assert ready, "the client did not go"
        return super().handle_frame(frame)


# How the server sees a TLS client that vanished depends on OpenSSL.  At
# its read of the next frame: 3.0 reports a reset as an EOF (no error);
# 3.6 raises ConnectionResetError, and answers an EOF without close_notify
# with an alert whose write, over a Unix socket, raises BrokenPipeError
# (the flake of the test above: FramedClient.close() sends no
# close_notify).  At a write to a peer that is gone: 3.0 raises SSLEOFError,
# 3.6 ConnectionResetError or BrokenPipeError.
@pytest.mark.parametrize("kind, how", [
    ("ThreadingUnixStreamServer", "close"),
    ("ThreadingTCPServer", "close"),
    ("ThreadingUnixStreamServer", "reset"),
    ("ThreadingTCPServer", "reset"),
    ("ThreadPoolTCPServer", "reset"),
    ("TCPServer", "reset"),
    ("ThreadingUnixStreamServer", "before-reply"),
    ("ThreadingTCPServer", "before-reply"),
])
def test_tls_framed_client_gone_between_frames_is_not_an_error(kind, how, tls, serve,
                                                               unix_path, caplog):
    caplog.set_level(logging.DEBUG)
    server = make(kind, tls.server_context(), handler=LateFrameEcho, path=unix_path)
    serve(server)
    address = server.server_address
    kw = {"server_hostname": "localhost"} if "Unix" in kind else {}
    client = cserver.FramedClient(address, TIMEOUT, ssl_context=tls.client_context(), **kw)
    with client:
        assert client.request(b"abc") == b"SSLSocket:3:abc"
        if how == "reset":
            client.send_frame(b"x")
            # its reply reached the socket (left unread): the server is
            # back at its read of the next frame
            ready, _, _ = select.select([client.socket], [], [], TIMEOUT)
            assert ready and client.socket.pending() == 0
            vanish(client.socket)
        elif how == "before-reply":
            client.send_frame(b"late")
            vanish(client.socket)
    # the next client is served (on TCPServer: once the first has ended)
    with cserver.FramedClient(address, TIMEOUT, ssl_context=tls.client_context(),
                              **kw) as client:
        assert client.request(b"next") == b"SSLSocket:4:next"
    assert support.wait_for(lambda: len(server.ended) == 2)
    assert server.errors == []
    assert cserver_lines(caplog, logging.WARNING) == []
    # at most one DEBUG line a connection (with 3.6 over a Unix socket the
    # second client's close is one too)
    ended = cserver_lines(caplog, logging.DEBUG)
    assert len(ended) <= 2 and all("ended by the peer" in line for line in ended), ended
    if how == "before-reply":   # an error on every OpenSSL (see above)
        assert ended, ended


class LineThenWait(cserver.StreamRequestHandler):
    """Answers one line, then returns only once the client is gone (its
    reset readable): the close_notify after it goes to a reset socket."""

    def handle(self):
        self.wfile.write(b"echo " + self.rfile.readline())
        ready, _, _ = select.select([self.request], [], [], TIMEOUT)
        assert ready, "the client did not go"


@pytest.mark.parametrize("kind", ["ThreadingTCPServer", "ThreadingUnixStreamServer"])
def test_client_gone_before_the_close_notify_is_not_an_error(kind, tls, serve, unix_path,
                                                             caplog):
    caplog.set_level(logging.WARNING)
    server = make(kind, tls.server_context(), handler=LineThenWait, path=unix_path)
    serve(server)
    conn = tls_connect(server.server_address, tls.client_context())
    with conn:
        conn.sendall(b"hi\n")
        assert conn.recv(100) == b"echo hi\n"
        vanish(conn)
    assert support.wait_for(lambda: server.ended)
    assert server.errors == []
    assert [r for r in caplog.records if r.name.startswith("cserver")] == []
    # the next client is served
    with tls_connect(server.server_address, tls.client_context()) as conn:
        conn.sendall(b"next\n")
        assert conn.recv(100) == b"echo next\n"


class ClosingContext(ssl.SSLContext):
    """A server context whose first wrap_socket() fails as ssl's own does
    for a peer that reset first: after closing the socket it was given."""

    def wrap_socket(self, sock, *args, **kwargs):
        if not self.failed:
            self.failed = True
            sock.close()
            raise ConnectionResetError(104, "Connection reset by peer (test)")
        return super().wrap_socket(sock, *args, **kwargs)


@pytest.mark.parametrize("kind", ["ThreadingTCPServer", "TCPServer"])
def test_wrap_socket_closing_its_socket_leaves_the_request_alone(kind, tls, serve, caplog,
                                                                 wait_until):
    # wrap_socket() owns the socket it is given: a failure may close it.
    # The request's own descriptor must stay the runner's to close, once
    # (a second close raised EBADF out of the request's thread, or closed
    # another connection accepted onto the same number).
    caplog.set_level(logging.WARNING, logger="cserver.tls")
    ctx = ClosingContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*tls.server)
    ctx.failed = False
    server = make(kind, ctx)
    serve(server)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        ask(server.server_address, tls.client_context())
    assert wait_until(lambda: server.ended)
    assert "closed during the TLS handshake" in tls_lines(caplog)[0]
    assert ask(server.server_address, tls.client_context())["line"] == "hello\n"
    assert server.errors == []


def test_framed_client_hostname_defaults_to_the_host(tls, serve):
    server = make("ThreadingTCPServer", tls.server_context(), handler=FrameEcho)
    serve(server)
    port = server.server_address[1]
    # the certificate names 127.0.0.1 and localhost: both hosts verify
    for host in ("127.0.0.1", "localhost"):
        with cserver.FramedClient((host, port), TIMEOUT,
                                  ssl_context=tls.client_context()) as client:
            assert client.request(b"a") == b"SSLSocket:1:a"
            assert client.socket.server_hostname == host
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        cserver.FramedClient(("127.0.0.1", port), TIMEOUT, ssl_context=tls.client_context(),
                             server_hostname="elsewhere.example")
    # without a context nothing is wrapped
    with cserver.FramedClient(("127.0.0.1", port), TIMEOUT) as client:
        assert type(client.socket) is socket.socket


def test_framed_client_failed_handshake_leaks_no_fd(tls, serve, fd_count, wait_until):
    server = make("ThreadingTCPServer", tls.server_context(chain=tls.expired),
                  handler=FrameEcho)
    serve(server)

    def attempt():
        with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
            cserver.FramedClient(server.server_address, TIMEOUT,
                                 ssl_context=tls.client_context())

    attempt()  # the serving loop is running (its waker's descriptors exist)
    before = fd_count()
    for _ in range(5):
        attempt()
    # the server's side closes in its request threads, a moment later (at
    # most: the first attempt's server side may still have been open at "before")
    assert wait_until(lambda: fd_count() <= before), (fd_count(), before)


def tls_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "cserver.tls"]


@pytest.mark.parametrize("chain, client_error", [
    ("wrong_name", "Hostname mismatch"),
    ("expired", "certificate has expired"),
    ("unknown", "unable to get local issuer certificate"),
])
def test_client_rejects_the_certificate_server_logs_and_stays_up(
        chain, client_error, tls, serve, caplog, wait_until):
    caplog.set_level(logging.WARNING, logger="cserver.tls")
    handled = []

    class Counting(Echo):
        def handle(self):
            handled.append(self.client_address)
            super().handle()

    server = make("ThreadingTCPServer", tls.server_context(chain=getattr(tls, chain)),
                  handler=Counting)
    serve(server)
    with pytest.raises(ssl.SSLCertVerificationError, match=client_error):
        ask(server.server_address, tls.client_context())
    assert wait_until(lambda: tls_lines(caplog))
    line = tls_lines(caplog)[0]
    assert "TLS handshake failed" in line and "127.0.0.1" in line
    assert handled == [] and server.errors == []
    # still serving: a client that does not verify gets through
    lax = ssl.create_default_context()
    lax.check_hostname = False
    lax.verify_mode = ssl.CERT_NONE
    assert ask(server.server_address, lax)["line"] == "hello\n"


def test_client_certificate_required_and_given(tls, serve):
    server = make("ThreadingTCPServer", tls.server_context(require_client_cert=True))
    serve(server)
    got = ask(server.server_address, tls.client_context(chain=tls.client))
    assert got["peer_cert"] == {"commonName": "a client"}


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_client_certificate_required_and_missing(version, tls, serve, caplog, wait_until):
    caplog.set_level(logging.WARNING, logger="cserver.tls")
    handled = []

    class Counting(Echo):
        def handle(self):
            handled.append(self.client_address)

    server = make("ThreadingTCPServer", tls.server_context(require_client_cert=True),
                  handler=Counting)
    serve(server)
    # TLS 1.2 fails in the handshake; with TLS 1.3 the client's handshake
    # completes first and the server's alert arrives at the first read
    with pytest.raises((ssl.SSLError, ConnectionError)):
        ask(server.server_address, tls.client_context(version=VERSIONS[version]))
    assert wait_until(lambda: tls_lines(caplog))
    assert "TLS handshake failed" in tls_lines(caplog)[0]
    assert "CERTIFICATE" in tls_lines(caplog)[0].upper()
    assert handled == [] and server.errors == []


def v1(src="203.0.113.7", dst="192.0.2.1", sport=56324, dport=443):
    return ("PROXY TCP4 %s %s %d %d\r\n" % (src, dst, sport, dport)).encode()


@pytest.mark.parametrize("order", ["proxy-first", "tls-first"])
@pytest.mark.parametrize("kind", ["ThreadingTCPServer", "ThreadPoolTCPServer"])
def test_proxy_header_then_tls(order, kind, tls, serve):
    mixins = (cserver.ProxyProtocolMixIn, cserver.TLSMixIn)
    if order == "tls-first":
        mixins = mixins[::-1]
    server = make(kind, tls.server_context(), mixins=mixins)
    serve(server)
    got = ask(server.server_address, tls.client_context(), prefix=v1())
    assert got["ssl"] is True
    assert got["client"] == ["203.0.113.7", 56324]
    assert got["proxy_source"] == ["203.0.113.7", 56324]
    assert server.errors == []


def test_proxy_and_tls_failures_each_close_with_their_reason(tls, serve, caplog, wait_until):
    caplog.set_level(logging.WARNING)
    server = make("ThreadingTCPServer", tls.server_context(),
                  mixins=(cserver.ProxyProtocolMixIn, cserver.TLSMixIn))
    serve(server)
    # no PROXY header: the TLS ClientHello is refused by the PROXY parser
    with pytest.raises((ssl.SSLError, ConnectionError)):
        ask(server.server_address, tls.client_context())
    # a header, then plaintext instead of TLS
    with socket.create_connection(server.server_address, TIMEOUT) as sock:
        sock.sendall(v1() + b"GET / HTTP/1.0\r\n\r\n")
        assert sock.recv(100) == b""
    assert wait_until(lambda: tls_lines(caplog))
    proxy_lines = [r.getMessage() for r in caplog.records if r.name == "cserver.proxy"]
    assert proxy_lines and "bad PROXY header" in proxy_lines[0]
    # the TLS line names the real client (after the header)
    assert "203.0.113.7" in tls_lines(caplog)[0]
    assert server.errors == []




@pytest.mark.parametrize("flag, version", [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")])
def test_openssl_s_client(flag, version, tls, serve):
    openssl = support.openssl_program()
    server = make("ThreadingTCPServer", tls.server_context())
    serve(server)
    host, port = server.server_address
    done = subprocess.run(
        [openssl, "s_client", "-connect", "%s:%d" % (host, port), flag, "-CAfile", tls.ca,
         "-verify_return_error", "-verify_hostname", "localhost", "-servername", "localhost",
         "-quiet"],
        input=b"over openssl\n", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["line"] == "over openssl\n"
    assert got["version"] == version


@pytest.mark.parametrize("attrs, error, match", [
    ({}, TypeError, "ssl_context must be a server-side ssl.SSLContext"),
    ({"ssl_context": "cert.pem"}, TypeError, "ssl_context must be"),
    ({"ssl_context": "client"}, ValueError, "client-side"),
    ({"ssl_handshake_timeout": 0}, ValueError, "ssl_handshake_timeout"),
    ({"ssl_handshake_timeout": float("inf")}, ValueError, "ssl_handshake_timeout"),
    ({"ssl_handshake_timeout": "1"}, TypeError, "ssl_handshake_timeout"),
    ({"ssl_handshake_timeout": True}, TypeError, "ssl_handshake_timeout"),
])
def test_bad_options_fail_before_the_socket_exists(attrs, error, match, tls, fd_count):
    attrs = dict(attrs)
    if attrs.get("ssl_context") == "client":
        attrs["ssl_context"] = tls.client_context()
    attrs.setdefault("ssl_context", tls.server_context() if "ssl_handshake_timeout" in attrs
                     else None)
    cls = type("Bad", (cserver.TLSMixIn, cserver.ThreadingTCPServer), attrs)
    before = fd_count()
    with pytest.raises(error, match=match):
        cls(("127.0.0.1", 0), Echo)
    assert fd_count() == before


def test_options_changed_on_the_instance_are_checked_again(tls, serve):
    server = make("ThreadingTCPServer", tls.server_context())
    serve(server)
    assert ask(server.server_address, tls.client_context())["line"] == "hello\n"
    server.ssl_context = tls.server_context(chain=tls.expired)
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        ask(server.server_address, tls.client_context())


@pytest.mark.parametrize("base", ["UDPServer", "ThreadingUDPServer", "ThreadPoolUDPServer",
                                  "ThreadingUnixDatagramServer"])
def test_datagram_server_is_a_type_error(base, tls):
    cls = type("Bad", (cserver.TLSMixIn, getattr(cserver, base)),
               {"ssl_context": tls.server_context()})
    with pytest.raises(TypeError, match="stream server"):
        cls(("127.0.0.1", 0), Echo)


def test_stdlib_based_server_is_a_clear_type_error(stdlib_ss, tls):
    cls = type("Bad", (cserver.TLSMixIn, stdlib_ss.ThreadingTCPServer),
               {"ssl_context": tls.server_context()})
    with pytest.raises(TypeError, match="cserver.install()"):
        cls(("127.0.0.1", 0), stdlib_ss.StreamRequestHandler)


def test_public_surface():
    assert cserver.TLSMixIn is cserver.socketserver.TLSMixIn
    assert "TLSMixIn" in cserver.socketserver.EXTRA_NAMES
    assert "TLSMixIn" not in cserver.socketserver.__all__  # stays the stdlib's
    assert cserver.TLSMixIn.ssl_context is None
    assert cserver.TLSMixIn.ssl_handshake_timeout == 10.0
