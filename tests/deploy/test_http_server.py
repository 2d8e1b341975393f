"""``http.server`` on cserver's ``ProxyProtocolMixIn`` behind a real HAProxy
(``send-proxy`` / ``send-proxy-v2``): the handler's ``client_address``, its
log line and ``verify_request`` name the real client (a 127.0.0.N source of
the test's own, N >= 2), not HAProxy's 127.0.0.1."""
import http.client
import http.server
import random

import pytest

import cserver

HTTP_FRONTEND = """
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server s1 127.0.0.1:{backend_port} {option}
"""


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%s:%d %s" % (self.client_address + (self.path,))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        self.server.logged.append("%s - %s" % (self.address_string(), format % args))


class Server(cserver.ProxyProtocolMixIn, cserver.ThreadingTCPServer):
    daemon_threads = False
    block_on_close = True

    def verify_request(self, request, client_address):
        self.verified.append(client_address)
        return True


@pytest.mark.parametrize("version, option", [("v1", "send-proxy"), ("v2", "send-proxy-v2")])
def test_http_server_behind_haproxy_logs_the_real_client(haproxy, serve, version, option):
    server = Server(("127.0.0.1", 0), Handler)
    server.proxy_protocol = version
    server.logged, server.verified = [], []
    serve(server)
    balancer = haproxy(HTTP_FRONTEND, backend_port=server.server_address[1], option=option)
    host = "127.0.0.%d" % random.randint(2, 254)
    conn = http.client.HTTPConnection(*balancer.address, timeout=10, source_address=(host, 0))
    try:
        conn.request("GET", "/who")
        local = conn.sock.getsockname()
        response = conn.getresponse()
        body = response.read().decode()
    finally:
        conn.close()
    assert response.status == 200
    assert body == "%s:%d /who" % (host, local[1])          # not HAProxy's 127.0.0.1
    assert server.verified == [(host, local[1])]
    assert len(server.logged) == 1 and server.logged[0].startswith(host + " - "), server.logged
    assert '"GET /who HTTP/1.1" 200' in server.logged[0]


def test_http_server_refuses_a_balancer_without_send_proxy(haproxy, serve):
    server = Server(("127.0.0.1", 0), Handler)
    server.proxy_protocol = "any"
    server.logged, server.verified = [], []
    serve(server)
    balancer = haproxy(HTTP_FRONTEND, backend_port=server.server_address[1], option="")
    conn = http.client.HTTPConnection(*balancer.address, timeout=10)
    try:
        conn.request("GET", "/who")
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            conn.getresponse()
    finally:
        conn.close()
    assert server.verified == [] and server.logged == []
