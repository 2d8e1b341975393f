"""A program over cserver's whole public API, written as a strict user would.

It must pass ``mypy --strict`` and ``pyright --strict`` with no error and no
cast, and it runs (``python tests/typing/sample.py``; run by
tests/unit/test_typing.py): each server family serves one real exchange on
loopback, so what type-checks here is what works.
"""
from __future__ import annotations

import functools
import os
import socket
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Generator
from contextlib import contextmanager
from typing import Protocol

import cserver
import cserver as socketserver  # the drop-in spelling

# Before the stdlib's users of socketserver are imported: http.server's
# handlers then run on cserver's classes.
assert cserver.install() is sys.modules["socketserver"] is cserver

import http.server  # noqa: E402

TIMEOUT = 10.0


class _Serving(Protocol):
    def serve_forever(self, poll_interval: float = ...) -> None: ...
    def shutdown(self) -> None: ...


@contextmanager
def serving(server: _Serving) -> Generator[None, None, None]:
    """serve_forever() in a thread for the duration of the block."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        thread.join(TIMEOUT)


def tcp_port(address: socketserver.TCPServer | cserver.SelectorTCPServer) -> int:
    return address.server_address[1]


# -- the stdlib-compatible layer ---------------------------------------------


class LineEcho(socketserver.StreamRequestHandler):
    timeout = TIMEOUT

    def handle(self) -> None:
        line: bytes = self.rfile.readline()
        self.wfile.write(line.upper())


class DatagramEcho(socketserver.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read().upper())


class AnyKind(socketserver.BaseRequestHandler):
    """A BaseRequestHandler subclass serves either kind of server."""

    def handle(self) -> None:
        if isinstance(self.server, socketserver.UDPServer):
            data: bytes
            sock: socket.socket
            data, sock = self.request
            sock.sendto(data, self.client_address)
        else:
            conn: socket.socket = self.request
            conn.sendall(conn.recv(100))


def stream_exchange(address: tuple[str, int] | str, family: int = socket.AF_INET) -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(address)
        sock.sendall(b"hello\n")
        return sock.recv(100)


def datagram_exchange(address: tuple[str | bytes | bytearray, int]) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendto(b"ping", address)
        return sock.recv(100)


def stdlib_layer() -> None:
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), LineEcho) as server:
        server.daemon_threads = True
        with serving(server):
            assert stream_exchange(("127.0.0.1", tcp_port(server))) == b"HELLO\n"

    with socketserver.TCPServer(("127.0.0.1", 0), AnyKind, bind_and_activate=False) as plain:
        plain.allow_reuse_address = True
        plain.server_bind()
        plain.server_activate()
        plain.timeout = TIMEOUT
        with socket.create_connection(("127.0.0.1", tcp_port(plain)), TIMEOUT) as client:
            client.sendall(b"one")
            plain.handle_request()
            assert client.recv(100) == b"one"

    with socketserver.UDPServer(("127.0.0.1", 0), DatagramEcho) as udp:
        with serving(udp):
            assert datagram_exchange(udp.server_address[:2]) == b"PING"

    class SmallPackets(socketserver.ThreadingUDPServer):
        max_packet_size = 1024

    with SmallPackets(("127.0.0.1", 0), AnyKind) as tudp:
        with serving(tudp):
            assert datagram_exchange(tudp.server_address[:2]) == b"ping"

    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        path = os.path.join(tmp, "s")
        with socketserver.ThreadingUnixStreamServer(path, LineEcho) as unix:
            with serving(unix):
                assert stream_exchange(path, socket.AF_UNIX) == b"HELLO\n"
        dpath = os.path.join(tmp, "d")
        with socketserver.UnixDatagramServer(dpath, DatagramEcho) as unix_dgram:
            assert unix_dgram.server_address == dpath

    if sys.version_info >= (3, 11):
        reuse: bool = socketserver.TCPServer.allow_reuse_port
        assert reuse is False
    if sys.version_info >= (3, 12):
        assert socketserver.ForkingUnixStreamServer.__mro__[1] is socketserver.ForkingMixIn


class QuietHTTP(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def stdlib_handlers() -> None:
    """The stdlib's own handlers run on cserver's servers (the http.server
    docs' example, with ``import cserver as socketserver``)."""
    with tempfile.TemporaryDirectory(dir="/tmp") as root:
        with open(os.path.join(root, "index.txt"), "w") as f:
            f.write("served")
        handler = functools.partial(QuietHTTP, directory=root)
        with socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler) as httpd:
            with serving(httpd):
                url = "http://127.0.0.1:%d/index.txt" % tcp_port(httpd)
                with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
                    body: bytes = response.read()
                    assert body == b"served"


class ForkingEcho(socketserver.ForkingTCPServer):
    max_children = 4


# -- the thread pool (cserver's mixin) ----------------------------------------


class Pooled(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """Mixins combine as in the stdlib."""


def thread_pool() -> None:
    class Pool(cserver.ThreadPoolTCPServer):
        max_workers = 2
        queue_size = 4

    with Pool(("127.0.0.1", 0), LineEcho) as server:  # __enter__ returns Pool
        with serving(server):
            assert stream_exchange(("127.0.0.1", tcp_port(server))) == b"HELLO\n"
            stats: dict[str, int] = server.pool_stats()
            assert stats["capacity"] == 6
    assert issubclass(cserver.ThreadPoolUDPServer, cserver.ThreadPoolMixIn)
    assert issubclass(cserver.ThreadPoolUnixStreamServer, socketserver.UnixStreamServer)
    assert issubclass(cserver.ThreadPoolUnixDatagramServer, socketserver.UnixDatagramServer)
    assert issubclass(Pooled, socketserver.ThreadingMixIn)
    assert ForkingEcho.max_children == 4


class WhoIsIt(cserver.StreamRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, cserver.ProxyProtocolMixIn)  # narrows the base's type
        info: cserver.proxy.ProxyInfo | None = server.proxy_info(self.request)
        assert info is not None and info.proxied and info.version == 1
        host: str = self.client_address[0]
        self.wfile.write(host.encode() + b" " + self.rfile.readline())


class Proxied(cserver.ProxyProtocolMixIn, cserver.ThreadingTCPServer):
    proxy_protocol = "v1"
    trusted_proxies = ("127.0.0.0/8", "::1/128")
    proxy_header_timeout = 2.0


def proxy_protocol() -> None:
    with Proxied(("127.0.0.1", 0), WhoIsIt) as server:
        with serving(server):
            with socket.create_connection(("127.0.0.1", tcp_port(server)), TIMEOUT) as sock:
                sock.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 5000 80\r\nhello\n")
                assert sock.recv(100) == b"203.0.113.7 hello\n"
    parsed, rest = cserver.proxy.parse_header(b"PROXY UNKNOWN\r\nrest")
    assert parsed.source is None and rest == b"rest"
    nets: cserver.proxy.TrustedNetworks = cserver.proxy.trusted_networks(["10.0.0.0/8"])
    assert not nets.is_trusted(socket.AF_INET, ("127.0.0.1", 1))


# -- the framing layer ----------------------------------------------------------


class Upper(cserver.FramedRequestHandler):
    frame_format = "!H"
    max_frame_size = 4096

    def handle_frame(self, frame: bytes) -> bytes | None:
        return frame.upper() if frame else None


def framing() -> None:
    pool = cserver.BufferPool(slab_size=4096, max_slabs=8)
    decoder = cserver.FrameDecoder("!I", pool=pool)
    frames = decoder.feed(cserver.encode_frame(b"abc") + cserver.encode_frame(b"de")[:3])
    first: bytes = frames[0]
    assert first == b"abc" and decoder.pending == 3 and not decoder.failed
    encoder = cserver.FrameEncoder(length_size=2, byteorder="little", max_frame_size=100)
    assert encoder.encode(b"xy") == b"\x02\x00xy" and encoder.header_size == 2
    buffer = decoder.get_buffer()
    buffer[:3] = b"efg"
    assert decoder.buffer_updated(3) == []
    decoder.close()
    assert pool.stats()["max_slabs"] == 8
    lease = pool.lease()
    if lease is not None:
        with lease:
            assert len(lease.memoryview()) == 4096
    assert cserver.DEFAULT_MAX_FRAME_SIZE == cserver.framing.DEFAULT_MAX_FRAME_SIZE
    try:
        cserver.FrameDecoder("!B", max_frame_size=10).feed(b"\xff")
        raise AssertionError("a 255-byte frame passed max_frame_size=10")
    except cserver.FrameTooLarge as exc:
        error: cserver.FrameError = exc
        assert isinstance(error, ValueError)

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Upper) as server:
        with serving(server):
            with cserver.FramedClient(("127.0.0.1", tcp_port(server)), TIMEOUT,
                                      frame_format="!H") as client:
                reply: bytes = client.request(b"framed")
                assert reply == b"FRAMED"
                client.send_frame(memoryview(b"view"))
                assert client.recv_frame() == b"VIEW"


# -- the multiplexing server ------------------------------------------------------


class Counter(cserver.FrameHandler):
    frame_format = "!I"
    seen = 0

    def connection_made(self) -> None:
        self.transport.set_write_buffer_limits(high=1 << 16)

    def frame_received(self, frame: bytes) -> None:
        Counter.seen += 1
        self.send_frame(frame[::-1])

    def connection_lost(self, exc: BaseException | None) -> None:
        if isinstance(exc, cserver.FrameError):
            print("bad frame:", exc)


class Raw(cserver.ConnectionHandler):
    def data_received(self, data: bytes) -> None:
        self.write(data)

    def eof_received(self) -> bool | None:
        return None


class Dgram(cserver.DatagramHandler):
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sendto(data.upper(), addr)

    def error_received(self, exc: OSError) -> None:
        print("datagram error:", exc)


def multiplexing() -> None:
    fired: list[str] = []
    with cserver.SelectorTCPServer(("127.0.0.1", 0), Counter, idle_timeout=30.0,
                                   max_connections=100, loop="selectors") as server:
        handle = server.call_later(0.0, fired.append, "timer")
        server.call_soon(fired.append, "soon")
        assert not handle.cancelled and handle.when > 0
        with serving(server):
            with cserver.FramedClient(("127.0.0.1", tcp_port(server)), TIMEOUT) as client:
                assert client.request(b"abc") == b"cba"
            server.call_soon_threadsafe(fired.append, "threadsafe")
        stats = server.stats()
        assert stats["frames_in"] == 1
    assert "timer" in fired and "soon" in fired and Counter.seen == 1

    with cserver.SelectorUDPServer(("127.0.0.1", 0), Dgram) as udp:
        with serving(udp):
            assert datagram_exchange(udp.server_address[:2]) == b"PING"

    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        path = os.path.join(tmp, "m")
        with cserver.SelectorUnixStreamServer(path, Raw, drain_timeout=1.0) as unix:
            with serving(unix):
                assert stream_exchange(path, socket.AF_UNIX) == b"hello\n"
            assert unix.connections() == []


# -- the package ------------------------------------------------------------------


def package() -> None:
    release: str = cserver.version
    if sys.version_info < (3, 15):
        stdlib_version: str = socketserver.__version__
        assert stdlib_version == "0.4"
    assert release and os.path.isdir(cserver.shadow_path())
    assert "TCPServer" in cserver.__all__ and isinstance(cserver.PURE, bool)
    assert cserver.install() is cserver  # idempotent
    assert issubclass(http.server.SimpleHTTPRequestHandler, cserver.StreamRequestHandler)


def main() -> None:
    package()
    stdlib_layer()
    stdlib_handlers()
    thread_pool()
    proxy_protocol()
    framing()
    multiplexing()
    print("sample: ok")


if __name__ == "__main__":
    main()
