"""Helpers of the multiplexing loop's TLS tests (tests/unit/test_selector_tls.py,
tests/hostile/test_selector_tls_attacks.py): servers with ``ssl_context``
on either poller, TCP or Unix; recording handlers; clients on ``ssl``'s
sockets and on its in-memory ``SSLObject`` (for what a socket cannot do:
ciphertext cut anywhere, a close_notify sent while replies are still
coming).  Not a test module; what other tests share too is support's and
proxyhelp's."""
import os
import select
import socket
import ssl
import time

from support import TIMEOUT, frame, recv_exactly, serving  # noqa: F401  (re-exported)
from support import fd_count as fds  # noqa: F401
from support import wait_for as wait_until  # noqa: F401

import cserver
import support
from cserver import selectorserver

from proxyhelp import KINDS  # noqa: F401  (the pollers of this build)

VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
LOGGER = "cserver.selectorserver"
TLS_COUNTERS = ("tls_handshakes", "tls_handshake_errors", "tls_handshake_timeouts",
                "tls_errors", "tls_shutdown_timeouts")


class Recorder:
    """What the server's hooks and the handlers saw, shared by a test's
    handlers (lists, appended on the loop's thread)."""

    def __init__(self):
        self.verified = []     # (client_address, peercert) at verify_request
        self.made = []         # what connection_made saw (see Recorder.seen)
        self.frames = []
        self.eofs = []
        self.lost = []         # the exc of each connection_lost
        self.handlers = []

    def seen(self, handler):
        t = handler.transport
        obj = t.get_extra_info("ssl_object")
        return {
            "client_address": handler.client_address,
            "peercert": t.get_extra_info("peercert"),
            "cipher": t.get_extra_info("cipher"),
            "compression": t.get_extra_info("compression", "missing"),
            "sslcontext": t.get_extra_info("sslcontext"),
            "ssl_object": obj,
            "version": obj.version() if obj is not None else None,
            "peername": t.get_extra_info("peername"),
            "proxy": t.get_extra_info("proxy"),
        }


def handlers(rec, eof_result=None):
    """(Framed, Raw): echo handlers that record into ``rec``."""

    class Framed(cserver.FrameHandler):
        def connection_made(self):
            rec.handlers.append(self)
            rec.made.append(rec.seen(self))

        def frame_received(self, payload):
            rec.frames.append(len(payload))
            self.send_frame(payload)

        def eof_received(self):
            rec.eofs.append(self.client_address)
            return eof_result

        def connection_lost(self, exc):
            rec.lost.append(exc)

    class Raw(cserver.ConnectionHandler):
        def connection_made(self):
            rec.handlers.append(self)
            rec.made.append(rec.seen(self))

        def data_received(self, data):
            self.write(data)

        def eof_received(self):
            rec.eofs.append(self.client_address)
            return eof_result

        def connection_lost(self, exc):
            rec.lost.append(exc)

    return Framed, Raw


def server_class(rec, where):
    """A server class of ``where`` ("tcp" or "unix") whose verify_request
    records the client address and the peer's certificate."""
    base = (selectorserver.SelectorUnixStreamServer if where == "unix"
            else selectorserver.SelectorTCPServer)

    class Server(base):
        def verify_request(self, transport, client_address):
            rec.verified.append((client_address, transport.get_extra_info("peercert")))
            return True

    return Server


def build(kind, where, short_tmpdir, handler, ctx, rec=None, **options):
    """A TLS multiplexing server (``rec``: verify_request records into it)."""
    if rec is not None:
        cls = server_class(rec, where)
    elif where == "unix":
        cls = selectorserver.SelectorUnixStreamServer
    else:
        cls = selectorserver.SelectorTCPServer
    address = os.path.join(short_tmpdir, "s") if where == "unix" else ("127.0.0.1", 0)
    return cls(address, handler, loop=kind, ssl_context=ctx, **options)


def running(server):
    """Serve in a thread; at exit shut down, join, close, and check that no
    descriptor or thread is left behind."""
    return serving(server, 0.05, name="tls-serve", check_leaks=True)


def raw_connect(address, timeout=TIMEOUT):
    """A plain stream socket connected to ``address`` (a server address),
    Nagle off on TCP."""
    sock = support.connect_to(address, timeout)
    if not isinstance(address, (str, bytes)):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


#: OpenSSL 3's SSL_OP_IGNORE_UNEXPECTED_EOF (``ssl.OP_IGNORE_UNEXPECTED_EOF``
#: from 3.10): Python 3.9's contexts set it, and a peer's end of stream
#: then reads as its close_notify
_IGNORE_UNEXPECTED_EOF = getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 1 << 7)


def strict(ctx):
    """``ctx`` (a client context) made to tell a close_notify from an end
    of stream without one, on every Python version; returned."""
    ctx.options &= ~_IGNORE_UNEXPECTED_EOF
    return ctx


def connect(server, ctx, server_hostname="localhost", prefix=b"", timeout=TIMEOUT):
    """An ``ssl.SSLSocket`` connected to ``server`` (handshake done);
    ``prefix`` is sent in plaintext first (a PROXY header).  Ragged EOFs
    are not suppressed: a close without close_notify raises SSLEOFError."""
    sock = raw_connect(server.server_address, timeout)
    try:
        if prefix:
            sock.sendall(prefix)
        return strict(ctx).wrap_socket(sock, server_hostname=server_hostname,
                                       suppress_ragged_eofs=False)
    except BaseException:
        sock.close()
        raise


def recv_frame(sock):
    """One length-prefixed ("!I") frame's payload from ``sock``."""
    size = int.from_bytes(recv_exactly(sock, 4), "big")
    return recv_exactly(sock, size)


def _how(exc):
    """How an ``ssl.SSLError`` ended a stream: "eof" for an end without
    close_notify (an SSLEOFError; Python 3.9 raises a plain SSLError with
    OpenSSL 3's reason for it), else "tls-error:<reason>"."""
    if isinstance(exc, ssl.SSLEOFError) or exc.reason == "UNEXPECTED_EOF_WHILE_READING":
        return "eof"
    return "tls-error:%s" % (exc.reason,)


def read_end(sock, limit=1 << 26):
    """Read ``sock`` (an SSLSocket, ragged EOFs not suppressed) to its end:
    (bytes read, how it ended: "close_notify", "eof" (no close_notify),
    "reset" or "tls-error:<reason>")."""
    chunks = []
    total = 0
    how = "limit"
    while total < limit:
        try:
            chunk = sock.recv(1 << 16)
        except ssl.SSLEOFError:
            how = "eof"
            break
        except ssl.SSLError as exc:
            how = _how(exc)
            break
        except (ConnectionResetError, BrokenPipeError):
            # (a reset, or on newer OpenSSL a write of the read's own that
            # met the closed socket)
            how = "reset"
            break
        if not chunk:
            how = "close_notify"
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks), how


def closed_by_server(sock, timeout=TIMEOUT):
    """What a plain socket gets until the server closes it: (bytes, closed?)."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, True
        except socket.timeout:
            return data, False
        if not chunk:
            return data, True
        data += chunk
    return data, False


def client_hello(ctx, server_hostname="localhost"):
    """The bytes of a real ClientHello (from an in-memory client)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


class BioClient:
    """A TLS client on ``ssl.SSLObject`` over a plain socket: the test
    decides how the ciphertext is cut (``send_raw``) and when a
    close_notify goes out (``send_close_notify``, reading on after it)."""

    def __init__(self, address, ctx, server_hostname="localhost", prefix=b""):
        self.sock = raw_connect(address)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = strict(ctx).wrap_bio(self.incoming, self.outgoing,
                                        server_hostname=server_hostname)
        if prefix:
            self.sock.sendall(prefix)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _flush(self):
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _fill(self):
        """Read the socket once into the incoming BIO; False at EOF/reset."""
        try:
            data = self.sock.recv(1 << 16)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if data:
            self.incoming.write(data)
            return True
        self.incoming.write_eof()
        return False

    def handshake(self, flush=True):
        """Run the handshake; with ``flush=False`` the client's last flight
        (its Finished) stays unsent, for the next ``send`` to carry along."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if time.monotonic() > deadline:
                    raise TimeoutError("handshake not done in %s s" % TIMEOUT)
                self._fill()
        if flush:
            self._flush()
        return self

    def encrypt(self, data):
        """The ciphertext of ``data`` (records of up to 16 KiB each), and
        whatever else was waiting to go out, not sent."""
        self.obj.write(data)
        return self.outgoing.read()

    def send(self, data):
        self.sock.sendall(self.encrypt(data))

    def send_raw(self, data):
        self.sock.sendall(data)

    def send_close_notify(self):
        """Send a close_notify now and go on reading (a TLS half-close)."""
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        self._flush()

    def read(self, n):
        """Exactly ``n`` bytes of plaintext; EOFError if the stream ends first."""
        data = b""
        deadline = time.monotonic() + TIMEOUT
        while len(data) < n:
            if time.monotonic() > deadline:
                raise TimeoutError("%d of %d bytes in %s s" % (len(data), n, TIMEOUT))
            try:
                chunk = self.obj.read(n - len(data))
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
                continue
            except ssl.SSLZeroReturnError:
                chunk = b""
            if not chunk:
                # SSLObject.read() returns b"" for the peer's close_notify
                # (it raises SSLZeroReturnError once ours was sent too)
                raise EOFError("close_notify with %d bytes missing" % (n - len(data)))
            data += chunk
        return data

    def read_end(self):
        """Plaintext to the end of the stream and how it ended:
        "close_notify", "eof" (without one), "tls-error:<reason>"."""
        data = b""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                chunk = self.obj.read(1 << 16)
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
                continue
            except ssl.SSLZeroReturnError:
                return data, "close_notify"
            except ssl.SSLEOFError:
                return data, "eof"
            except ssl.SSLError as exc:
                return data, _how(exc)
            except (ConnectionResetError, BrokenPipeError):
                return data, "reset"
            if not chunk:
                return data, "close_notify"
            data += chunk
        return data, "timeout"

    def wait_readable(self, timeout):
        return bool(select.select([self.sock], [], [], timeout)[0])


def tls_log_lines(caplog):
    """The loop's TLS lines (logger cserver.selectorserver)."""
    return [r for r in caplog.records
            if r.name == LOGGER and "tls" in r.getMessage().lower()]

