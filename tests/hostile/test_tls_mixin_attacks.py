"""TLSMixIn against hostile peers: plaintext and garbage on the TLS port, a
handshake trickled byte by byte (cut at ssl_handshake_timeout), a silent
client that must not delay anyone else (and the stdlib's recipe, which it
does delay), many handshakes without an fd or thread leak, the rate-limited
log.  Certificates come from the ``tls`` fixture (tests/conftest.py).
"""
import logging
import select
import socket
import ssl
import struct
import threading
import time

import pytest

import cserver

TIMEOUT = 10.0
#: how long the second client of the silent-client check waits for its
#: answer (a bound that makes the failing variants fail, not a speed claim)
LATE_CLIENT_TIMEOUT = 4.0


class Echo(cserver.StreamRequestHandler):
    def handle(self):
        self.server.handled.append(self.client_address)
        self.wfile.write(b"echo " + self.rfile.readline())


def make(kind, ctx, **attrs):
    base = getattr(cserver, kind)

    def handle_error(self, request, client_address):
        self.errors.append(client_address)

    cls = type("TLS" + kind, (cserver.TLSMixIn, base),
               dict(ssl_context=ctx, handle_error=handle_error, **attrs))
    server = cls(("127.0.0.1", 0), Echo)
    server.errors, server.handled = [], []
    return server


def tls_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "cserver.tls"]


def read_to_eof(sock):
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


def client_hello(ctx):
    """The bytes of a real ClientHello (from an in-memory client)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def request_line(address, ctx, timeout):
    """One TLS request (``hello``) with every step bounded by ``timeout``."""
    with socket.create_connection(address, timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as conn:
            conn.sendall(b"hello\n")
            return read_to_eof(conn)


@pytest.mark.parametrize("payload", [
    b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"\x00" * 64,
    b"\x16\x03\x01\xff\xff" + b"\xaa" * 200,  # a handshake record header, then junk
    bytes(range(256)),
])
@pytest.mark.parametrize("kind", ["ThreadingTCPServer", "ThreadPoolTCPServer"])
def test_plaintext_and_garbage_are_closed_and_logged(kind, payload, tls, serve, caplog,
                                                     wait_until):
    caplog.set_level(logging.WARNING, logger="cserver.tls")
    server = make(kind, tls.server_context())
    serve(server)
    with socket.create_connection(server.server_address, TIMEOUT) as sock:
        sock.sendall(payload)
        reply = read_to_eof(sock)
    # at most a TLS alert record comes back (content type 21), never an answer
    assert reply == b"" or reply[:1] == b"\x15"
    assert wait_until(lambda: tls_lines(caplog))
    assert "TLS handshake failed" in tls_lines(caplog)[0]
    assert server.handled == [] and server.errors == []
    # and the server still serves
    assert request_line(server.server_address, tls.client_context(), TIMEOUT) == b"echo hello\n"


@pytest.mark.parametrize("sent", ["nothing", "client hello"])
@pytest.mark.parametrize("kind", ["ThreadingTCPServer", "ThreadPoolTCPServer", "TCPServer"])
def test_a_reset_inside_the_handshake_is_a_failed_handshake(kind, sent, tls, serve, caplog,
                                                             wait_until):
    # A peer that vanishes before its handshake is complete: logged as any
    # failed handshake is (a close there is one too), never handle_error.
    caplog.set_level(logging.WARNING, logger="cserver.tls")
    server = make(kind, tls.server_context())
    serve(server)
    sock = socket.create_connection(server.server_address, TIMEOUT)
    if sent == "client hello":
        sock.sendall(client_hello(tls.client_context()))
        # the server's answer arrived (left unread): it waits for the rest
        readable, _, _ = select.select([sock], [], [], TIMEOUT)
        assert readable
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    assert wait_until(lambda: tls_lines(caplog))
    assert "closed" in tls_lines(caplog)[0] and "127.0.0.1" in tls_lines(caplog)[0]
    # the next client is served (on TCPServer: once the first has ended)
    assert request_line(server.server_address, tls.client_context(), TIMEOUT) == b"echo hello\n"
    assert len(server.handled) == 1 and server.errors == []


def test_trickled_handshake_is_cut_at_the_deadline(tls, serve, caplog, wait_until):
    caplog.set_level(logging.WARNING, logger="cserver.tls")
    deadline = 0.5
    server = make("ThreadingTCPServer", tls.server_context(), ssl_handshake_timeout=deadline)
    serve(server)
    hello = client_hello(tls.client_context())
    assert len(hello) > 100
    step = 0.05  # one byte every 50 ms: the whole hello would take > 5 s
    sent = 0
    closed = False
    started = time.monotonic()
    with socket.create_connection(server.server_address, TIMEOUT) as sock:
        for byte in hello[:-1]:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            sent += 1
            readable, _, _ = select.select([sock], [], [], step)
            if readable:
                try:
                    data = sock.recv(100)
                except ConnectionResetError:
                    data = b""
                # the server answers nothing to an incomplete ClientHello
                assert data == b""
                closed = True
                break
        elapsed = time.monotonic() - started
    assert closed, "the trickled handshake was not cut (%d of %d bytes sent)" % (
        sent, len(hello))
    # cut by the deadline, not by reaching the end of the bytes: each byte
    # renewed nothing
    assert sent < len(hello) - 1
    assert elapsed >= deadline
    assert wait_until(lambda: tls_lines(caplog))
    assert "within ssl_handshake_timeout (0.5 s)" in tls_lines(caplog)[0]
    assert server.handled == [] and server.errors == []


def late_client_is_served(address, ctx, silent):
    """With ``silent`` connected (it sends nothing), does another client get
    its answer within LATE_CLIENT_TIMEOUT?"""
    assert silent.fileno() >= 0
    try:
        return request_line(address, ctx, LATE_CLIENT_TIMEOUT) == b"echo hello\n"
    except (socket.timeout, ssl.SSLError, ConnectionError):
        return False


def run_silent_client_check(server, ctx, serve_fn):
    """The check on one server: a silent client first, then a real one.
    The silent client is closed in finally (it releases a serving thread
    blocked on it), then the server is shut down and its thread joined."""
    thread = threading.Thread(target=serve_fn, name="serve_forever", daemon=True)
    thread.start()
    silent = socket.create_connection(server.server_address, TIMEOUT)
    try:
        time.sleep(0.2)  # let the server take the silent connection first
        return late_client_is_served(server.server_address, ctx, silent)
    finally:
        silent.close()
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()
        assert not thread.is_alive()


@pytest.mark.parametrize("kind", ["ThreadingTCPServer", "ThreadPoolTCPServer"])
def test_a_silent_client_does_not_delay_another(kind, tls):
    # the silent client could hold its handshake for a minute
    server = make(kind, tls.server_context(), ssl_handshake_timeout=60.0)
    served = run_silent_client_check(server, tls.client_context(),
                                     lambda: server.serve_forever(0.05))
    assert served, "a silent client delayed another client's request"
    assert server.handled and server.errors == []


def test_the_stdlib_recipe_fails_the_same_check(stdlib_ss, tls):
    # The usual recipe, on the stdlib's own ThreadingTCPServer: the
    # handshake happens inside accept(), on the serving thread.
    class StdEcho(stdlib_ss.StreamRequestHandler):
        def handle(self):
            self.wfile.write(b"echo " + self.rfile.readline())

    server = stdlib_ss.ThreadingTCPServer(("127.0.0.1", 0), StdEcho)
    try:
        server.socket = tls.server_context().wrap_socket(server.socket, server_side=True)
    except BaseException:
        server.server_close()
        raise
    served = run_silent_client_check(server, tls.client_context(),
                                     lambda: server.serve_forever(0.05))
    assert not served, "the stdlib recipe was expected to stall behind the silent client"


def test_a_mixin_handshaking_on_the_serving_thread_fails_the_check(tls):
    # A TLSMixIn changed to do the handshake in get_request() (on the
    # serving thread): the check must catch it.
    class OnServingThread(cserver.TLSMixIn, cserver.ThreadingTCPServer):
        ssl_context = tls.server_context()
        ssl_handshake_timeout = 60.0

        def get_request(self):
            sock, address = super().get_request()
            sock.settimeout(self.ssl_handshake_timeout)
            try:
                tls_sock = self.ssl_context.wrap_socket(sock, server_side=True)
            except (OSError, ValueError):
                sock.close()
                raise OSError("handshake failed") from None
            tls_sock.settimeout(None)
            return tls_sock, address

    server = OnServingThread(("127.0.0.1", 0), Echo)
    server.errors, server.handled = [], []
    served = run_silent_client_check(server, tls.client_context(),
                                     lambda: server.serve_forever(0.05))
    assert not served, "a serving-thread handshake was expected to stall"


@pytest.mark.parametrize("kind", ["ThreadingTCPServer", "ThreadPoolTCPServer"])
def test_many_handshakes_leak_no_fd_or_thread(kind, tls, serve, fd_count, wait_until, caplog):
    caplog.set_level(logging.ERROR, logger="cserver.tls")  # the failures are expected
    server = make(kind, tls.server_context())
    serve(server)
    ctx = tls.client_context()
    assert request_line(server.server_address, ctx, TIMEOUT) == b"echo hello\n"
    fds = fd_count()
    # not counting the pool's workers (it may start another while one is
    # still finishing a request; their number is bounded by the pool)
    workers = server.pool_stats()["workers"] if kind == "ThreadPoolTCPServer" else 0
    threads = threading.active_count() - workers
    for i in range(200):
        if i % 4 == 3:  # every fourth one fails its handshake
            with socket.create_connection(server.server_address, TIMEOUT) as sock:
                sock.sendall(b"not tls at all\r\n\r\n")
                read_to_eof(sock)
        else:
            assert request_line(server.server_address, ctx, TIMEOUT) == b"echo hello\n"
    assert len(server.handled) == 1 + 150
    assert wait_until(lambda: fd_count() <= fds), (fd_count(), fds)

    def other_threads():
        if kind == "ThreadPoolTCPServer":
            stats = server.pool_stats()
            assert stats["workers"] <= stats["capacity"]
            return threading.active_count() - stats["workers"]
        return threading.active_count()

    assert wait_until(lambda: other_threads() <= threads), (other_threads(), threads)
    assert server.errors == []


def test_failures_are_logged_at_most_ten_lines_per_window(tls, serve, caplog, wait_until):
    caplog.set_level(logging.WARNING, logger="cserver.tls")
    server = make("ThreadingTCPServer", tls.server_context())
    serve(server)
    for _ in range(30):
        with socket.create_connection(server.server_address, TIMEOUT) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            read_to_eof(sock)
    wait_until(lambda: len(tls_lines(caplog)) >= 10)
    time.sleep(0.2)  # the last request threads log (or not) by now
    # the proxy mixin's limiter: 10 lines a window, the rest counted
    assert len(tls_lines(caplog)) == 10
    assert server.handled == [] and server.errors == []
