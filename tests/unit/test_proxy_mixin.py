"""ProxyProtocolMixIn: the PROXY protocol on the stdlib-style stream servers.

Every server kind (plain, threading, thread pool, forking, Unix) with v1 and
v2 headers built by hand; the stdlib's own handlers (http.server,
xmlrpc.server) and cserver's FramedRequestHandler see the real client; the
options are validated; LOCAL health checks use the socket's peer.  The
attacker cases (garbage, trickling, stalls, floods, leaks) are in
``tests/hostile/test_proxy_mixin_attacks.py``.  The parser twin is the one
``cserver.proxy`` chooses: compiled, or pure under ``CSERVER_PURE=1``.
"""
import http.server
import ipaddress
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import xmlrpc.client
import xmlrpc.server

import pytest

import cserver
from cserver import proxy

import support

# ForkingTCPServer next to the serve thread (support.FORK_IN_THREADS)
pytestmark = support.FORK_IN_THREADS

TIMEOUT = 10.0
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(src="203.0.113.7", dst="192.0.2.1", sport=56324, dport=443, family="TCP4"):
    if family == "UNKNOWN":
        return b"PROXY UNKNOWN\r\n"
    return ("PROXY %s %s %s %d %d\r\n" % (family, src, dst, sport, dport)).encode()


def v2(src="203.0.113.7", dst="192.0.2.1", sport=56324, dport=443, tlvs=b"", local=False):
    if local:
        return V2_SIG + bytes([0x20, 0x00]) + struct.pack("!H", len(tlvs)) + tlvs
    if ":" in src:
        block = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
                 + struct.pack("!HH", sport, dport))
        fam = 0x21
    else:
        block = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
        fam = 0x11
    body = block + tlvs
    return V2_SIG + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body


def tlv(kind, value):
    return bytes([kind]) + struct.pack("!H", len(value)) + value


class Report(cserver.StreamRequestHandler):
    """Reads the payload to EOF, answers with what it saw, as JSON."""

    def handle(self):
        payload = self.rfile.read()
        info = self.server.proxy_info(self.request)
        self.wfile.write(json.dumps({
            "client": self.client_address,
            "peer": self.request.getpeername(),
            "command": info.command if info else None,
            "source": info.source if info else None,
            "authority": info.authority if info else None,
            "payload": payload.decode("latin-1"),
            "timeout": self.request.gettimeout(),
            "pid": os.getpid(),
        }).encode())


KINDS = ["TCPServer", "ThreadingTCPServer", "ThreadPoolTCPServer", "ForkingTCPServer",
         "ThreadingUnixStreamServer"]


def make(kind, handler=Report, path=None, **attrs):
    base = getattr(cserver, kind)
    cls = type("Proxied" + kind, (cserver.ProxyProtocolMixIn, base), attrs)
    if "Unix" in kind:
        return cls(path, handler)
    return cls(("127.0.0.1", 0), handler)


def exchange(address, data, shut=True):
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(address)
        try:
            sock.sendall(data)
            if shut:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            # closed by the server already (reset: it did not read what was
            # sent, or ENOTCONN): what it sent before, if anything, is read
            pass
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture
def unix_path(short_tmpdir):
    return os.path.join(short_tmpdir, "s")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_every_server_kind_sees_the_real_client(kind, version, serve, unix_path):
    server = make(kind, path=unix_path)
    serve(server)
    header = v1() if version == "v1" else v2()
    # header and payload in one segment: not one payload byte may be lost
    reply = json.loads(exchange(server.server_address, header + b"GET / HTTP/1.0\r\n\r\nbody"))
    assert reply["client"] == ["203.0.113.7", 56324]
    assert reply["source"] == ["203.0.113.7", 56324]
    assert reply["command"] == "PROXY"
    assert reply["payload"] == "GET / HTTP/1.0\r\n\r\nbody"
    # the socket's own timeout (blocking) is restored after the header
    assert reply["timeout"] is None
    if "Unix" in kind:
        assert reply["peer"] in ("", None)
    else:
        assert reply["peer"][0] == "127.0.0.1"
    if kind == "ForkingTCPServer":
        assert reply["pid"] != os.getpid()   # read in the child
    # the per-request info is gone once the request ended (no leak)
    assert vars(server).get("_cserver_proxy_requests", {}) == {}


@pytest.mark.parametrize("mode,header", [("v1", v1()), ("v2", v2()), ("any", v1()),
                                         ("any", v2())])
def test_modes_accept_their_version(mode, header, serve):
    server = make("ThreadingTCPServer", proxy_protocol=mode)
    serve(server)
    reply = json.loads(exchange(server.server_address, header + b"x"))
    assert reply["client"] == ["203.0.113.7", 56324] and reply["payload"] == "x"


@pytest.mark.parametrize("mode,header", [("v1", v2()), ("v2", v1())])
def test_modes_refuse_the_other_version(mode, header, serve, caplog):
    server = make("ThreadingTCPServer", proxy_protocol=mode)
    serve(server)
    with caplog.at_level(logging.WARNING, logger="cserver.proxy"):
        assert exchange(server.server_address, header + b"x") == b""
        server.shutdown()
    assert any("bad PROXY header" in r.getMessage() for r in caplog.records)


def test_v6_source_and_tlvs(serve):
    server = make("ThreadingTCPServer")
    serve(server)
    header = v2("2001:db8::1", "2001:db8::2", 1234, 80, tlvs=tlv(0x02, b"example.com"))
    reply = json.loads(exchange(server.server_address, header + b"hi"))
    assert reply["client"] == ["2001:db8::1", 1234, 0, 0]
    assert reply["authority"] == "example.com"
    assert reply["payload"] == "hi"


@pytest.mark.parametrize("header", [v2(local=True), v2(local=True, tlvs=b"\x04\x00\x01z"),
                                    v1(family="UNKNOWN")],
                         ids=["v2-LOCAL", "v2-LOCAL-tlv", "v1-UNKNOWN"])
def test_health_checks_use_the_socket_peer(header, serve):
    server = make("ThreadingTCPServer")
    serve(server)
    reply = json.loads(exchange(server.server_address, header + b"ping"))
    assert reply["client"] == reply["peer"]
    assert reply["client"][0] == "127.0.0.1"
    assert reply["source"] is None
    assert reply["command"] == ("PROXY" if header.startswith(b"PROXY") else "LOCAL")
    assert reply["payload"] == "ping"


def test_verify_request_sees_the_real_client_after_the_header(serve):
    seen = []

    class Server(cserver.ProxyProtocolMixIn, cserver.ThreadingTCPServer):
        def verify_request(self, request, client_address):
            info = self.proxy_info(request)
            seen.append((client_address, info.source if info else None))
            return client_address[0] != "198.51.100.9"

    server = Server(("127.0.0.1", 0), Report)
    serve(server)
    assert json.loads(exchange(server.server_address, v1() + b"a"))["payload"] == "a"
    # refused by verify_request: closed unserved
    assert exchange(server.server_address, v1(src="198.51.100.9") + b"b") == b""
    assert seen == [(("203.0.113.7", 56324), ("203.0.113.7", 56324)),
                    (("198.51.100.9", 56324), ("198.51.100.9", 56324))]


def test_finish_request_override_gets_the_real_client(serve):
    # like http.server's own DualStackServer, which overrides finish_request
    seen = []

    class Server(cserver.ProxyProtocolMixIn, cserver.ThreadingTCPServer):
        def finish_request(self, request, client_address):
            seen.append(client_address)
            super().finish_request(request, client_address)

    server = Server(("127.0.0.1", 0), Report)
    serve(server)
    assert json.loads(exchange(server.server_address, v2() + b"a"))["payload"] == "a"
    assert seen == [("203.0.113.7", 56324)]


def test_own_process_request_calling_finish_request_still_reads_the_header(serve):
    # a subclass that replaces process_request (no cserver runner): the
    # mixin's finish_request reads the header and calls verify_request
    verified = []

    class Server(cserver.ProxyProtocolMixIn, cserver.TCPServer):
        def process_request(self, request, client_address):
            self.finish_request(request, client_address)
            self.shutdown_request(request)

        def verify_request(self, request, client_address):
            verified.append(client_address)
            return True

    server = Server(("127.0.0.1", 0), Report)
    serve(server)
    reply = json.loads(exchange(server.server_address, v1() + b"a"))
    assert reply["client"] == ["203.0.113.7", 56324] and reply["payload"] == "a"
    assert verified == [("203.0.113.7", 56324)]


class HTTPHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%s %s" % (self.address_string(), self.path)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        self.server.logged.append(format % args)
        self.server.logged_from.append(self.address_string())


@pytest.mark.parametrize("kind", ["ThreadingTCPServer", "ThreadPoolTCPServer"])
def test_http_server_handler_logs_the_real_client(kind, serve):
    server = make(kind, handler=HTTPHandler)
    server.logged, server.logged_from = [], []
    serve(server)
    reply = exchange(server.server_address,
                     v2() + b"GET /hello HTTP/1.0\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 200")
    assert reply.endswith(b"203.0.113.7 /hello")
    assert server.logged_from == ["203.0.113.7"]
    assert '"GET /hello HTTP/1.0" 200' in server.logged[0]


def test_xmlrpc_handler_call_through_a_header(serve):
    class Server(cserver.ProxyProtocolMixIn, xmlrpc.server.SimpleXMLRPCDispatcher,
                 cserver.ThreadingTCPServer):
        def __init__(self, address):
            self.logRequests = True
            xmlrpc.server.SimpleXMLRPCDispatcher.__init__(self, False, None)
            cserver.ThreadingTCPServer.__init__(self, address, Handler)

    logged = []

    class Handler(xmlrpc.server.SimpleXMLRPCRequestHandler):
        def log_message(self, format, *args):
            logged.append((self.client_address, format % args))

    server = Server(("127.0.0.1", 0))
    server.register_function(lambda a, b: a + b, "add")
    serve(server)
    body = xmlrpc.client.dumps((2, 3), "add").encode()
    request = (b"POST /RPC2 HTTP/1.0\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n"
               % len(body)) + body
    reply = exchange(server.server_address, v1() + request)
    assert reply.startswith(b"HTTP/1.0 200")
    result, _ = xmlrpc.client.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert result == (5,)
    assert logged[0][0] == ("203.0.113.7", 56324)
    assert logged[0][1].startswith('"POST /RPC2 HTTP/1.0" 200')


STDLIB_SERVERS = r"""
import json, socket, sys, threading, xmlrpc.client
import cserver
cserver.install()
import http.server, xmlrpc.server

class Log(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(204)
        self.end_headers()
    def log_message(self, format, *args):
        seen.append(self.address_string())

class HTTP(cserver.ProxyProtocolMixIn, http.server.ThreadingHTTPServer):
    pass

class RPC(cserver.ProxyProtocolMixIn, xmlrpc.server.SimpleXMLRPCServer):
    pass

class RPCLog(xmlrpc.server.SimpleXMLRPCRequestHandler):
    def log_message(self, format, *args):
        seen.append(self.client_address[0])

def ask(address, data):
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return out
            out += chunk

seen = []
http_server = HTTP(("127.0.0.1", 0), Log)
rpc_server = RPC(("127.0.0.1", 0), RPCLog)
rpc_server.register_function(pow)
servers = (http_server, rpc_server)
threads = [threading.Thread(target=s.serve_forever, args=(0.05,)) for s in servers]
for t in threads:
    t.start()
try:
    header = b"PROXY TCP4 198.51.100.20 192.0.2.1 40000 80\r\n"
    got = ask(http_server.server_address, header + b"GET / HTTP/1.0\r\n\r\n")
    body = xmlrpc.client.dumps((2, 10), "pow").encode()
    post = b"POST /RPC2 HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body)
    rpc = ask(rpc_server.server_address, header + post + body)
    print(json.dumps({"http": got.split(b"\r\n")[0].decode(), "seen": seen,
                      "rpc": xmlrpc.client.loads(rpc.split(b"\r\n\r\n", 1)[1])[0][0],
                      "bases": [isinstance(s, cserver.TCPServer) for s in servers]}))
finally:
    for s in (http_server, rpc_server):
        s.shutdown()
        s.server_close()
    for t in threads:
        t.join()
"""


def test_stdlib_http_and_xmlrpc_servers_unchanged_behind_a_header(tmp_path):
    # http.server.ThreadingHTTPServer and xmlrpc.server.SimpleXMLRPCServer
    # themselves, as a user runs them (cserver.install() first)
    proc = subprocess.run([sys.executable, "-c", STDLIB_SERVERS], cwd=str(tmp_path),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"http": "HTTP/1.0 204 No Content", "seen": ["198.51.100.20"] * 2,
                      "rpc": 1024, "bases": [True, True]}


def test_stdlib_based_server_is_a_clear_type_error(stdlib_ss):
    class Server(cserver.ProxyProtocolMixIn, stdlib_ss.TCPServer):
        pass

    with pytest.raises(TypeError, match="cserver.install()"):
        Server(("127.0.0.1", 0), Report, bind_and_activate=False)


class Frames(cserver.FramedRequestHandler):
    def handle_frame(self, frame):
        return ("%s:%s" % (self.client_address[0], frame.decode())).encode()


@pytest.mark.parametrize("kind", ["ThreadingTCPServer", "ThreadPoolTCPServer",
                                  "ForkingTCPServer", "ThreadingUnixStreamServer"])
def test_framed_handler_frames_right_after_the_header(kind, serve, unix_path):
    server = make(kind, handler=Frames, path=unix_path)
    serve(server)
    frames = b"".join(struct.pack("!I", len(p)) + p for p in (b"one", b"two", b"three"))
    reply = exchange(server.server_address, v2() + frames)   # one segment
    got = []
    while reply:
        (size,) = struct.unpack("!I", reply[:4])
        got.append(reply[4:4 + size])
        reply = reply[4 + size:]
    assert got == [b"203.0.113.7:one", b"203.0.113.7:two", b"203.0.113.7:three"]


def test_untrusted_peer_is_closed_unread(serve, caplog):
    calls = []

    class Server(cserver.ProxyProtocolMixIn, cserver.ThreadingTCPServer):
        trusted_proxies = ("10.0.0.0/8",)

        def verify_request(self, request, client_address):
            calls.append(client_address)
            return True

    server = Server(("127.0.0.1", 0), Report)
    serve(server)
    with caplog.at_level(logging.WARNING, logger="cserver.proxy"):
        assert exchange(server.server_address, v1() + b"payload") == b""
        server.shutdown()
    assert calls == []
    assert any("not in trusted_proxies" in r.getMessage() for r in caplog.records)
    # and nobody's thread: closed on the serving thread at accept
    assert not any(r.threadName.startswith("Thread-") for r in caplog.records
                   if "trusted" in r.getMessage())


def test_instance_may_change_trusted_proxies(serve):
    server = make("ThreadingTCPServer")
    server.trusted_proxies = ("192.0.2.0/24",)
    serve(server)
    assert exchange(server.server_address, v1() + b"x") == b""
    server.trusted_proxies = [ipaddress.ip_network("127.0.0.1/32")]
    assert json.loads(exchange(server.server_address, v1() + b"x"))["payload"] == "x"


def test_trusted_networks_rules():
    nets = proxy.trusted_networks(("127.0.0.0/8", "::1/128"))
    assert nets.is_trusted(socket.AF_INET, ("127.0.0.1", 5))
    assert not nets.is_trusted(socket.AF_INET, ("10.0.0.1", 5))
    assert nets.is_trusted(socket.AF_INET6, ("::1", 5, 0, 0))
    # an IPv4-mapped IPv6 peer is matched as IPv4
    assert nets.is_trusted(socket.AF_INET6, ("::ffff:127.0.0.9", 5, 0, 0))
    assert not nets.is_trusted(socket.AF_INET6, ("::ffff:10.0.0.1", 5, 0, 0))
    assert not nets.is_trusted(socket.AF_INET6, ("::2", 5, 0, 0))
    assert nets.is_trusted(socket.AF_INET6, ("::1%lo", 5, 0, 1))
    # Unix-socket peers are always trusted
    assert nets.is_trusted(socket.AF_UNIX, "")
    everyone = proxy.trusted_networks(("0.0.0.0/0", "::/0"))
    assert everyone.is_trusted(socket.AF_INET, ("8.8.8.8", 1))
    assert everyone.is_trusted(socket.AF_INET6, ("2001:db8::1", 1, 0, 0))
    mapped = proxy.trusted_networks(["::ffff:10.0.0.0/104", ipaddress.ip_network("::/0")])
    assert mapped.is_trusted(socket.AF_INET, ("10.1.2.3", 1))
    assert proxy.trusted_networks(()).is_trusted(socket.AF_INET, ("127.0.0.1", 1)) is False
    # one network alone is that network (never its characters)
    one = proxy.trusted_networks("10.0.0.0/8")
    assert one.is_trusted(socket.AF_INET, ("10.9.9.9", 1))
    assert not one.is_trusted(socket.AF_INET, ("127.0.0.1", 1))
    assert proxy.trusted_networks(ipaddress.ip_address("::1")).is_trusted(
        socket.AF_INET6, ("::1", 1, 0, 0))


@pytest.mark.parametrize("attrs,error,match", [
    ({"proxy_protocol": None}, ValueError, "leave the mixin out"),
    ({"proxy_protocol": "v3"}, ValueError, "'v3'"),
    ({"proxy_protocol": 2}, TypeError, "proxy_protocol"),
    ({"proxy_header_timeout": 0}, ValueError, "proxy_header_timeout"),
    ({"proxy_header_timeout": -1.0}, ValueError, "-1.0"),
    ({"proxy_header_timeout": float("inf")}, ValueError, "inf"),
    ({"proxy_header_timeout": None}, TypeError, "None"),
    ({"proxy_header_timeout": True}, TypeError, "True"),
    ({"trusted_proxies": b"10.0.0.0/8"}, TypeError, "trusted_proxies"),
    ({"trusted_proxies": None}, TypeError, "trusted_proxies"),
    ({"trusted_proxies": ("10.0.0.0/33",)}, ValueError, "10.0.0.0/33"),
    ({"trusted_proxies": ("10.0.0.1/8",)}, ValueError, "host bits"),
    ({"trusted_proxies": (8,)}, TypeError, "8"),
])
def test_bad_options_fail_before_the_socket_exists(attrs, error, match, fd_count):
    before = fd_count()
    cls = type("S", (cserver.ProxyProtocolMixIn, cserver.TCPServer), attrs)
    with pytest.raises(error, match=match):
        cls(("127.0.0.1", 0), Report)
    assert fd_count() == before


@pytest.mark.parametrize("base", ["UDPServer", "ThreadingUDPServer", "ThreadPoolUDPServer"])
def test_datagram_server_is_a_type_error(base):
    cls = type("S", (cserver.ProxyProtocolMixIn, getattr(cserver, base)), {})
    with pytest.raises(TypeError, match="stream server"):
        cls(("127.0.0.1", 0), cserver.DatagramRequestHandler)


def test_public_surface():
    assert cserver.ProxyProtocolMixIn is cserver.socketserver.ProxyProtocolMixIn
    assert cserver.ProxyProtocolMixIn.__module__ == "cserver"
    assert "ProxyProtocolMixIn" in cserver.socketserver.EXTRA_NAMES
    assert cserver.ProxyProtocolMixIn.proxy_protocol == "any"
    assert cserver.ProxyProtocolMixIn.trusted_proxies == ("127.0.0.0/8", "::1/128")
    assert cserver.ProxyProtocolMixIn.proxy_header_timeout == 3.0
    twin = "cserver._proxy_py" if cserver.PURE else "cserver._proxy"
    assert proxy.ProxyParser.__module__ == twin
    assert proxy.COMPILED is (not cserver.PURE)
    info, rest = proxy.parse_header(v1() + b"tail")
    assert isinstance(info, proxy.ProxyInfo) and rest == b"tail"
    with pytest.raises(proxy.ProxyHeaderError):
        proxy.parse_header(b"GET / HTTP/1.0\r\n\r\n")


def test_ipv4_mapped_peer_of_a_dual_stack_server_is_matched_as_ipv4(serve):
    # an AF_INET6 server on "::" sees a v4 client as ::ffff:127.0.0.1, which
    # the default trusted_proxies (127.0.0.0/8) must accept
    class Server(cserver.ProxyProtocolMixIn, cserver.ThreadingTCPServer):
        address_family = socket.AF_INET6

        def server_bind(self):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

    server = Server(("::", 0), Report)
    serve(server)
    reply = json.loads(exchange(("127.0.0.1", server.server_address[1]), v1() + b"m"))
    assert reply["peer"][0] == "::ffff:127.0.0.1"
    assert reply["client"] == ["203.0.113.7", 56324] and reply["payload"] == "m"
    # and a mapped peer outside the networks is refused at accept
    server.trusted_proxies = ("::/0", "10.0.0.0/8")  # IPv6 networks never match it
    assert exchange(("127.0.0.1", server.server_address[1]), v1() + b"m") == b""


def test_v2_unix_source_becomes_client_address(serve, unix_path):
    server = make("ThreadingUnixStreamServer", path=unix_path)
    serve(server)
    src, dst = b"/run/client.sock".ljust(108, b"\0"), b"/run/haproxy.sock".ljust(108, b"\0")
    header = V2_SIG + bytes([0x21, 0x31]) + struct.pack("!H", 216) + src + dst
    reply = json.loads(exchange(server.server_address, header + b"u"))
    assert reply["client"] == "/run/client.sock" and reply["payload"] == "u"


def test_the_sockets_own_timeout_is_restored_after_the_header(serve):
    class Server(cserver.ProxyProtocolMixIn, cserver.ThreadingTCPServer):
        def get_request(self):
            request, address = super().get_request()
            request.settimeout(7.5)
            return request, address

    server = Server(("127.0.0.1", 0), Report)
    serve(server)
    reply = json.loads(exchange(server.server_address, v2() + b"t"))
    assert reply["timeout"] == 7.5 and reply["payload"] == "t"


def test_proxy_info_is_none_outside_a_request(serve):
    server = make("ThreadingTCPServer")
    serve(server)
    with socket.create_connection(server.server_address, timeout=TIMEOUT) as sock:
        # accepted, header not sent yet: no info for any request
        assert server.proxy_info(sock) is None
        sock.sendall(v1() + b"z")
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while True:   # to EOF: the request has ended (finish() returned)
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        assert json.loads(reply)["payload"] == "z"
    assert vars(server)["_cserver_proxy_requests"] == {}


def test_a_socket_made_on_the_descriptor_after_the_header_finds_its_info(serve):
    # what ssl.SSLContext.wrap_socket() in finish_request does (TLS after
    # the header, HAProxy "ssl send-proxy-v2"): a new socket object, same fd
    class Server(cserver.ProxyProtocolMixIn, cserver.ThreadingTCPServer):
        def finish_request(self, request, client_address):
            other = socket.socket(request.family, request.type, fileno=request.detach())
            try:
                super().finish_request(other, client_address)
            finally:
                other.close()

    server = Server(("127.0.0.1", 0), Report)
    serve(server)
    reply = json.loads(exchange(server.server_address, v2(tlvs=tlv(0x02, b"tls.example"))
                                + b"w"))
    assert reply["authority"] == "tls.example"
    assert reply["client"] == ["203.0.113.7", 56324] and reply["payload"] == "w"


def _test_certificate():
    import test
    here = os.path.dirname(test.__file__)
    for path in (os.path.join(here, "certdata", "keycert.pem"), os.path.join(here, "keycert.pem")):
        if os.path.exists(path):
            return path
    if os.environ.get("CI"):
        pytest.fail("CPython's test package has no keycert.pem (the TLS test needs it in CI)")
    pytest.skip("CPython's test package has no keycert.pem here")


def test_tls_after_the_header_as_docs_proxy_md_shows(serve):
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(_test_certificate())

    class Line(cserver.StreamRequestHandler):
        def handle(self):
            line = self.rfile.readline()
            info = self.server.proxy_info(self.request)
            self.wfile.write(json.dumps({
                "client": self.client_address, "line": line.decode(),
                "tls": self.request.version(), "authority": info.authority}).encode())

    class TLSServer(cserver.ProxyProtocolMixIn, cserver.ThreadingTCPServer):
        def finish_request(self, request, client_address):
            tls = context.wrap_socket(request, server_side=True)
            try:
                super().finish_request(tls, client_address)
            finally:
                tls.close()

    server = TLSServer(("127.0.0.1", 0), Line)
    serve(server)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(server.server_address, timeout=TIMEOUT) as raw:
        raw.sendall(v2(tlvs=tlv(0x02, b"tls.example")))    # the header, in clear
        with client_context.wrap_socket(raw) as tls:
            tls.sendall(b"over tls\n")
            reply = b""
            while True:
                try:
                    chunk = tls.recv(65536)
                except ssl.SSLEOFError:
                    break
                if not chunk:
                    break
                reply += chunk
    reply = json.loads(reply)
    assert reply["client"] == ["203.0.113.7", 56324]
    assert reply["line"] == "over tls\n" and reply["tls"].startswith("TLS")
    assert reply["authority"] == "tls.example"


@pytest.mark.parametrize("kind", ["TCPServer", "ThreadingTCPServer", "ThreadPoolTCPServer"])
def test_handle_error_reports_the_real_client(kind, serve):
    errors = []

    class Boom(cserver.BaseRequestHandler):
        def handle(self):
            raise RuntimeError("boom")

    def handle_error(self, request, client_address):
        errors.append((client_address, repr(sys.exc_info()[1])))

    server = make(kind, handler=Boom, handle_error=handle_error)
    serve(server)
    assert exchange(server.server_address, v1() + b"x") == b""
    assert errors == [(("203.0.113.7", 56324), "RuntimeError('boom')")]
