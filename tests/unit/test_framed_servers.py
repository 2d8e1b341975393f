"""FramedRequestHandler on every stdlib-style server kind, and FramedClient."""
import contextlib
import logging
import os
import select
import shutil
import socket
import struct
import sys
import tempfile
import threading

import pytest

import cserver
import support
from cserver import FramedClient, FramedRequestHandler

HAS_FORK = hasattr(os, "fork")
FORK_WARNING = pytest.mark.filterwarnings(
    # 3.12+ warns that fork() in a multi-threaded process may deadlock; the
    # server's own thread is the reason here, and the child only runs the
    # handler then exits.
    "ignore:This process:DeprecationWarning")


class _ForkingUnixStreamServer(cserver.ForkingMixIn, cserver.UnixStreamServer):
    pass


def _kinds():
    kinds = [("TCPServer", False), ("ThreadingTCPServer", False),
             ("ThreadPoolTCPServer", False), ("UnixStreamServer", True),
             ("ThreadingUnixStreamServer", True), ("ThreadPoolUnixStreamServer", True)]
    if HAS_FORK:
        kinds += [("ForkingTCPServer", False), ("ForkingUnixStreamServer", True)]
    return [pytest.param(name, unix, id=name,
                         marks=[FORK_WARNING] if "Forking" in name else [])
            for name, unix in kinds]


KINDS = _kinds()


def server_class(name):
    if name == "ForkingUnixStreamServer" and not hasattr(cserver, name):
        return _ForkingUnixStreamServer   # 3.9-3.11 have no such class
    return getattr(cserver, name)


@contextlib.contextmanager
def running(name, unix, handler, cls=None):
    """The server kind ``name`` (or its subclass ``cls``) serving ``handler``."""
    tmp = None
    if unix:
        tmp = tempfile.mkdtemp(prefix="cf", dir="/tmp")
        address = os.path.join(tmp, "s")
    else:
        address = ("127.0.0.1", 0)
    server = (cls or server_class(name))(address, handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        assert not thread.is_alive()


class Reverser(FramedRequestHandler):
    def handle_frame(self, frame):
        return frame[::-1]


def raw_connect(server, unix):
    if unix:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(server.server_address)
        return sock
    return socket.create_connection(server.server_address, 10)


def read_until_eof(sock):
    data = b""
    for _ in range(1000):
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    raise AssertionError("no end of stream")


@pytest.mark.parametrize("name,unix", KINDS)
def test_echo_on_every_server(name, unix):
    with running(name, unix, Reverser) as server:
        with FramedClient(server.server_address, timeout=10) as client:
            assert client.request(b"hello") == b"olleh"
            assert client.request(b"") == b""
            big = bytes(range(256)) * 800          # > a slab, sent with sendmsg
            assert client.request(big) == big[::-1]
            for p in (b"a", bytearray(b"bc"), memoryview(b"def")):
                client.send_frame(p)                # pipelined
            assert [client.recv_frame() for _ in range(3)] == [b"a", b"cb", b"fed"]
        # the server keeps serving new connections
        with FramedClient(server.server_address, timeout=10) as client:
            assert client.request(b"ab") == b"ba"


@pytest.mark.parametrize("name,unix", KINDS)
def test_bad_frame_closes_the_connection(name, unix, caplog):
    with running(name, unix, Reverser) as server:
        with caplog.at_level(logging.WARNING, logger="cserver.framing"):
            with raw_connect(server, unix) as sock:
                # a good frame, then a header announcing 2 MiB (limit: 1 MiB)
                sock.sendall(cserver.encode_frame(b"ok") + b"\x00\x20\x00\x00")
                assert read_until_eof(sock) == cserver.encode_frame(b"ko")
                sock.shutdown(socket.SHUT_RDWR)   # forked children hold copies
            with FramedClient(server.server_address, timeout=10) as client:
                assert client.request(b"still up") == b"pu llits"
    if "Forking" not in name:   # a forked child logs in its own process
        records = [r for r in caplog.records if r.name == "cserver.framing"]
        assert len(records) == 1
        message = records[0].getMessage()
        assert "FrameTooLarge" in message
        assert "2097152" in message and "1048576" in message


@pytest.mark.parametrize("name,unix", KINDS[:2])
def test_stream_cut_inside_a_frame_is_logged(name, unix, caplog):
    with running(name, unix, Reverser) as server:
        with caplog.at_level(logging.WARNING, logger="cserver.framing"):
            with raw_connect(server, unix) as sock:
                sock.sendall(b"\x00\x00\x00\x09abc")
                sock.shutdown(socket.SHUT_WR)
                assert read_until_eof(sock) == b""
            # the handler has logged before the server closed the socket
    messages = [r.getMessage() for r in caplog.records if r.name == "cserver.framing"]
    assert len(messages) == 1 and "IncompleteFrame" in messages[0]
    assert "7 of 13" in messages[0]


# -- a peer that vanishes (a reset, a broken pipe) -----------------------------------
#
# Not a server error at a frame boundary: the end of that connection, as a
# close there is (no handle_error, a DEBUG line at most).  Inside a frame it
# is the truncated frame a close there is (IncompleteFrame, frame_error).
# The forking kinds are left out: their handle_error runs in the child.

THREADED_KINDS = [k for k in KINDS if "Forking" not in k.id]


def recording(name):
    """A subclass of the server kind ``name`` that records what reaches
    handle_error (``errors``) and every request it shut down (``ended``:
    after handle_error, in every runner of these kinds)."""

    class Recording(server_class(name)):
        def __init__(self, *args, **kwargs):
            self.errors, self.ended = [], []
            super().__init__(*args, **kwargs)

        def handle_error(self, request, client_address):
            self.errors.append(sys.exc_info()[1])

        def shutdown_request(self, request):
            super().shutdown_request(request)
            self.ended.append(request)

    return Recording


def vanish(sock):
    """Close ``sock`` so that the peer sees a vanished client, not an end
    of stream: over TCP a reset (SO_LINGER 0); over a Unix socket the read
    after this close fails with ECONNRESET when the closed side left bytes
    unread (the caller leaves its reply unread), a send with EPIPE."""
    if sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def peek_reply(sock, size):
    """Wait (bounded) until ``size`` bytes of reply are in ``sock``'s queue,
    without taking them: the server has handled the frame and written its
    reply, so its next step is the read of the next frame."""
    for _ in range(1000):
        if len(sock.recv(size, socket.MSG_PEEK)) >= size:
            return
    raise AssertionError("no reply of %d bytes" % size)


def framing_records(caplog, level):
    return [r.getMessage() for r in caplog.records
            if r.name == "cserver.framing" and r.levelno == level]


@pytest.mark.parametrize("name,unix", THREADED_KINDS)
def test_peer_vanishing_between_frames_ends_the_connection_quietly(name, unix, caplog):
    caplog.set_level(logging.DEBUG, logger="cserver.framing")
    with running(name, unix, Reverser, recording(name)) as server:
        sock = raw_connect(server, unix)
        sock.sendall(cserver.encode_frame(b"abc"))
        peek_reply(sock, 7)     # left unread
        vanish(sock)
        # the next client is served (on TCPServer: once the first has ended)
        with FramedClient(server.server_address, timeout=10) as client:
            assert client.request(b"next") == b"txen"
        assert support.wait_for(lambda: len(server.ended) == 2)
        assert server.errors == []
    assert framing_records(caplog, logging.WARNING) == []
    ended = framing_records(caplog, logging.DEBUG)
    assert len(ended) == 1 and "ended by the peer" in ended[0], ended
    assert "ConnectionResetError" in ended[0]


@pytest.mark.parametrize("name,unix", THREADED_KINDS)
def test_peer_vanishing_inside_a_frame_is_a_truncated_frame(name, unix, caplog):
    caplog.set_level(logging.DEBUG, logger="cserver.framing")
    with running(name, unix, Reverser, recording(name)) as server:
        sock = raw_connect(server, unix)
        # a whole frame and 7 bytes of the next, in one write: the server
        # has both once it has replied to the first
        sock.sendall(cserver.encode_frame(b"abc") + b"\x00\x00\x00\x09abc")
        peek_reply(sock, 7)
        vanish(sock)
        assert support.wait_for(lambda: server.ended)
        assert server.errors == []
        with FramedClient(server.server_address, timeout=10) as client:
            assert client.request(b"next") == b"txen"
    # what a close at that point gives: IncompleteFrame through frame_error
    warned = framing_records(caplog, logging.WARNING)
    assert len(warned) == 1 and "IncompleteFrame" in warned[0], warned
    assert "7 of 13" in warned[0]


class Late(FramedRequestHandler):
    """Replies once the peer's end (a reset or a close) is readable: the
    reply is sent to a client that is gone."""

    def handle_frame(self, frame):
        ready, _, _ = select.select([self.request], [], [], 10)
        assert ready, "the client did not go"
        return frame


@pytest.mark.parametrize("name,unix", THREADED_KINDS)
def test_peer_gone_before_its_reply_ends_the_connection_quietly(name, unix, caplog):
    caplog.set_level(logging.DEBUG, logger="cserver.framing")
    with running(name, unix, Late, recording(name)) as server:
        sock = raw_connect(server, unix)
        sock.sendall(cserver.encode_frame(b"abc"))
        vanish(sock)
        assert support.wait_for(lambda: server.ended)
        assert server.errors == []
        with FramedClient(server.server_address, timeout=10) as client:
            client.send_frame(b"next")
            client.socket.shutdown(socket.SHUT_WR)   # Late's select() returns
            assert client.recv_frame() == b"next"
    assert framing_records(caplog, logging.WARNING) == []
    ended = framing_records(caplog, logging.DEBUG)
    assert len(ended) == 1 and "ended by the peer" in ended[0], ended


class Chatty(FramedRequestHandler):
    """Replies by return value and by send_frame(), interleaved."""

    def handle_frame(self, frame):
        if frame.startswith(b"!"):
            self.send_frame(b"direct " + frame)
            return None
        return b"reply " + frame


@pytest.mark.parametrize("name,unix", KINDS[:2])
def test_many_pipelined_frames_replied_in_order(name, unix):
    frames = [b"%d" % i if i % 7 else b"!%d" % i for i in range(600)]
    expected = [(b"direct " if f.startswith(b"!") else b"reply ") + f for f in frames]
    with running(name, unix, Chatty) as server:
        with FramedClient(server.server_address, timeout=10) as client:
            client.socket.sendall(b"".join(cserver.encode_frame(f) for f in frames))
            assert [client.recv_frame() for _ in frames] == expected
            big = b"b" * 300000
            client.socket.sendall(cserver.encode_frame(big) * 5)
            assert [client.recv_frame() for _ in range(5)] == [b"reply " + big] * 5


class SmallFrames(FramedRequestHandler):
    frame_format = "<H"
    max_frame_size = 100

    def handle_frame(self, frame):
        return b"%d" % len(frame)


def test_class_attributes_configure_the_framing():
    with running("ThreadingTCPServer", False, SmallFrames) as server:
        with FramedClient(server.server_address, timeout=10, frame_format="<H") as client:
            assert client.request(b"x" * 100) == b"100"
            client.send_frame(b"x" * 101)          # over the server's limit
            assert client.recv_frame() is None      # the server hung up
        with FramedClient(server.server_address, timeout=10, frame_format="<H") as client:
            with pytest.raises(EOFError):
                client.request(b"y" * 500)


class Summer(FramedRequestHandler):
    """A handler that reads frames itself with recv_frame()."""

    def handle(self):
        total = 0
        while True:
            frame = self.recv_frame()
            if frame is None or frame == b"=":
                break
            total += int(frame)
        self.send_frame(b"%d" % total)


def test_handler_reading_frames_itself():
    with running("ThreadingTCPServer", False, Summer) as server:
        with FramedClient(server.server_address, timeout=10) as client:
            for n in (1, 2, 39):
                client.send_frame(b"%d" % n)
            assert client.request(b"=") == b"42"


class Silent(FramedRequestHandler):
    def handle_frame(self, frame):
        return None


def test_client_timeout():
    with running("ThreadingTCPServer", False, Silent) as server:
        with FramedClient(server.server_address, timeout=0.2) as client:
            with pytest.raises(socket.timeout):
                client.request(b"anyone?")


def test_client_connect_refused_leaks_nothing():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = s.getsockname()
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ConnectionRefusedError):
        FramedClient(address, timeout=5)
    tmp = tempfile.mkdtemp(prefix="cf", dir="/tmp")
    try:
        with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
            FramedClient(os.path.join(tmp, "nothing"), timeout=5)
    finally:
        shutil.rmtree(tmp)
    assert len(os.listdir("/proc/self/fd")) == before


def test_no_fd_leak_over_many_connections():
    with running("ThreadingTCPServer", False, Reverser) as server:
        with FramedClient(server.server_address, timeout=10) as client:
            client.request(b"warm up")
        before = len(os.listdir("/proc/self/fd"))
        for i in range(20):
            with FramedClient(server.server_address, timeout=10) as client:
                assert client.request(b"%d" % i) == (b"%d" % i)[::-1]
    # the server's handler threads are joined by server_close()
    assert len(os.listdir("/proc/self/fd")) <= before - 1   # listener closed too


def test_pure_mode_runs_the_same_handler(tmp_path):
    """The framed handler also runs from source (CSERVER_PURE=1)."""
    import subprocess
    code = (
        "import cserver, threading\n"
        "assert not cserver.framing.COMPILED\n"
        "class H(cserver.FramedRequestHandler):\n"
        "    def handle_frame(self, f): return f.upper()\n"
        "with cserver.ThreadingTCPServer(('127.0.0.1', 0), H) as s:\n"
        "    t = threading.Thread(target=s.serve_forever); t.start()\n"
        "    with cserver.FramedClient(s.server_address, 10) as c:\n"
        "        print(c.request(b'pure').decode())\n"
        "    s.shutdown(); t.join()\n")
    env = dict(os.environ, CSERVER_PURE="1",
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "PURE"


# -- one framing recipe: the attributes, their defaults and the builder ---------------


FRAMING_NAMES = ("frame_format", "length_size", "byteorder", "length_offset",
                 "length_adjustment", "initial_bytes_to_strip", "max_frame_size")


def test_framing_attributes_are_declared_once():
    from cserver.framing import FramingAttributes
    for cls in (cserver.FramedRequestHandler, cserver.FrameHandler):
        assert issubclass(cls, FramingAttributes)
        for name in FRAMING_NAMES:
            assert name not in vars(cls), (cls, name)   # inherited, not redeclared
            assert getattr(cls, name) == getattr(FramingAttributes, name)
    assert FramingAttributes.frame_format == "!I"
    assert FramingAttributes.max_frame_size == cserver.DEFAULT_MAX_FRAME_SIZE


def test_framed_client_defaults_are_the_attributes_defaults():
    import inspect
    from cserver.framing import FramingAttributes
    params = inspect.signature(cserver.FramedClient).parameters
    for name in FRAMING_NAMES:
        assert params[name].default == getattr(FramingAttributes, name), name


@pytest.mark.parametrize("twin_name", ["_framing", "_framing_py"])
def test_framing_for_builds_a_validated_prototype_and_encoder(twin_name):
    import importlib
    from cserver.framing import framing_for
    twin = importlib.import_module("cserver." + twin_name)
    pool = twin.BufferPool(slab_size=4096)

    class Layout:
        length_size = 2
        byteorder = "little"          # replaces the inherited frame_format
        frame_format = "!Q"
        length_offset = 1
        length_adjustment = 2
        initial_bytes_to_strip = 3
        max_frame_size = 100

    recipe = framing_for(Layout, pool, twin=twin)
    dec, enc = recipe.decoder, recipe.encoder
    assert type(dec) is twin.FrameDecoder and type(enc) is twin.FrameEncoder
    assert recipe.pool is pool and dec.pool is pool
    assert (dec.length_size, dec.byteorder, dec.length_offset, dec.length_adjustment,
            dec.initial_bytes_to_strip, dec.max_frame_size) == (2, "little", 1, 2, 3, 100)
    assert (enc.length_size, enc.byteorder, enc.length_offset, enc.length_adjustment,
            enc.max_frame_size) == (2, "little", 1, 2, 100)
    wire = enc.encode(b"body")        # field = 4 - 2
    assert wire == b"\x00\x02\x00body"
    clone = dec.clone()
    assert clone.feed(wire) == [b"body"] and dec.pending == 0
    # a source that declares nothing takes every default
    plain = framing_for(object(), twin=twin)
    assert (plain.decoder.length_size, plain.decoder.byteorder, plain.decoder.max_frame_size,
            plain.decoder.pool) == (4, "big", cserver.DEFAULT_MAX_FRAME_SIZE, twin.DEFAULT_POOL)
    assert plain.encoder.encode(b"ab") == b"\x00\x00\x00\x02ab"


@pytest.mark.parametrize("attrs, error, message", [
    ({"initial_bytes_to_strip": -1}, ValueError, "initial_bytes_to_strip must be >= 0, not -1"),
    ({"frame_format": "!x"}, ValueError, "got '!x'"),
    ({"max_frame_size": "big"}, TypeError, "max_frame_size must be an int, not str"),
])
def test_framing_for_errors_name_the_attribute(attrs, error, message):
    from cserver.framing import framing_for
    handler = type("Bad", (FramedRequestHandler,), attrs)
    with pytest.raises(error, match=message.replace("(", r"\(")):
        framing_for(handler)


def test_multiplexing_server_builds_its_recipe_once_and_clones_it(monkeypatch):
    """Each connection's decoder is a clone of one validated prototype: the
    recipe is built at construction (validation) and once for the loop,
    never per connection."""
    from cserver import selectorserver
    calls = []
    real = selectorserver.framing_for

    def counting(*args, **kwargs):
        recipe = real(*args, **kwargs)
        calls.append(recipe)
        return recipe

    monkeypatch.setattr(selectorserver, "framing_for", counting)

    class Echo(cserver.FrameHandler):
        frame_format = "!H"

        def frame_received(self, frame):
            self.send_frame(frame)

    server = cserver.SelectorTCPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        for i in range(3):
            with FramedClient(server.server_address, timeout=10, frame_format="!H") as client:
                assert client.request(b"%d" % i) == b"%d" % i
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
    assert not thread.is_alive()
    assert len(calls) == 2
    assert calls[1].decoder.length_size == 2 and calls[1].decoder.pending == 0
