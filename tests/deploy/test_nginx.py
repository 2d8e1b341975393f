"""cserver behind a real nginx (Debian's 1.22, ``libnginx-mod-stream``):
``stream`` with ``proxy_protocol on`` sends a v1 header.

Each test starts its own nginx (``nginx -c cfg -g 'daemon off;'``, the stream
module loaded with ``load_module``, pid, logs and prefix in a scratch
directory) on loopback, and stops it by pid (tests/deploy/conftest.py).
"""
import json
import random

import pytest

import cserver

STREAM = """
stream {
    server {
        listen 127.0.0.1:{port};
        proxy_pass 127.0.0.1:{backend_port};
        proxy_protocol on;
    }
}
"""


def test_stream_proxy_protocol_gives_the_real_client(nginx, proxy_echo):
    server = proxy_echo(proxy_protocol="v1")
    balancer = nginx(STREAM, backend_port=server.server_address[1])
    host = "127.0.0.%d" % random.randint(2, 254)
    with cserver.FramedClient(balancer.address, 10, source_address=(host, 0)) as client:
        local = client.socket.getsockname()
        replies = [json.loads(client.request(b"frame %d" % i)) for i in range(3)]
    for i, reply in enumerate(replies):
        assert reply["echo"] == "frame %d" % i
        assert reply["client_address"] == [host, local[1]], reply     # not nginx's
        assert reply["peername"][0] == "127.0.0.1", reply
        proxy = reply["proxy"]
        assert proxy["version"] == 1 and proxy["family"] == "TCP4", proxy
        assert proxy["destination"] == list(balancer.address)
    stats = server.stats()
    assert stats["proxy_headers"] == 1 and stats["proxy_errors"] == 0, stats
    assert server.captured.errors() == []


def test_stream_without_proxy_protocol_is_refused(nginx, proxy_echo, wait_for):
    server = proxy_echo(proxy_protocol="v1")
    balancer = nginx(STREAM.replace("proxy_protocol on;", ""),
                     backend_port=server.server_address[1])
    with cserver.FramedClient(balancer.address, 10) as client:
        with pytest.raises((EOFError, ConnectionError)):
            client.request(b"hello")
    # (HAProxy may retry a connection the server closed at once: >= 1)
    assert wait_for(lambda: server.stats()["proxy_errors"] >= 1), server.stats()
    assert server.seen == []
