"""Behaviour the CPython suite does not cover, one body for the stdlib and
cserver (the ``ss`` fixture): the stdlib run is the oracle of the expected
behaviour, the cserver run must match it.
"""
import errno
import itertools
import os
import selectors
import socket
import sys
import threading
import time

import pytest

HAS_FORK = hasattr(os, "fork")
#: fork() in a multi-threaded process warns (DeprecationWarning, 3.12+).  On
#: 3.12-3.14 a warning turned into an error there was only reported as
#: unraisable; from 3.15 os.fork() raises it in the parent (after the child
#: was created), so under filterwarnings=error every fork in pytest-xdist's
#: worker (which runs a second thread) and next to a serve_forever thread
#: failed, on the stdlib and on cserver alike.  The stdlib's own tests
#: silence the same warning (warnings_helper.ignore_fork_in_thread_deprecation_
#: warnings, 3.15); so do these, and only for it.
FORK_IN_THREADS = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded, use of fork\\(\\) may lead to deadlocks"
    ":DeprecationWarning")
SERVE_THREAD = "serve_forever"  # the name conftest's serve fixture gives its thread


# ---------------------------------------------------------------------------
# Handlers and servers of the matrix.
# ---------------------------------------------------------------------------

def _where():
    return b" %d %s" % (os.getpid(), threading.current_thread().name.encode())


def handlers(ss):
    class StreamEcho(ss.StreamRequestHandler):
        def handle(self):
            line = self.rfile.readline().strip()
            self.wfile.write(line.upper() + _where())

    class DgramEcho(ss.DatagramRequestHandler):
        def handle(self):
            self.wfile.write(self.rfile.read().strip().upper() + _where())

    return StreamEcho, DgramEcho


BASES = ["TCP", "UDP", "UnixStream", "UnixDatagram"]
MIXINS = [None, "Threading", "Forking", "ThreadPool"]


def base_class(ss, base):
    return getattr(ss, base + "Server")


def address_for(base, tmpdir, name="s"):
    if base.startswith("Unix"):
        return os.path.join(tmpdir, name)
    return ("127.0.0.1", 0)


def exchange(net, base, address, payload, tmpdir):
    """One request with the matching client; returns the reply."""
    if base in ("TCP", "UnixStream"):
        return net.stream_exchange(address, payload + b"\n")
    if base == "UDP":
        return net.dgram_exchange(address, payload)
    return net.dgram_exchange(address, payload, family=socket.AF_UNIX,
                              bind=os.path.join(tmpdir, "c%d" % next(_client_ids)))


_client_ids = itertools.count()


def parse_reply(reply):
    word, pid, thread = reply.split(b" ", 2)
    return word, int(pid), thread.decode()


@FORK_IN_THREADS
@pytest.mark.parametrize("mixin, order", [(None, "alone")] + [
    (m, o) for m in MIXINS[1:] for o in ["mixin_first", "base_first"]])
@pytest.mark.parametrize("base", BASES)
def test_mixin_matrix(ss, serve, net, short_tmpdir, base, mixin, order):
    """Every mixin with every base, in both orders, as a user subclass."""
    if mixin == "ThreadPool" and not hasattr(ss, "ThreadPoolMixIn"):
        pytest.skip("ThreadPoolMixIn is a cserver addition; the stdlib has none")
    if mixin == "Forking" and not HAS_FORK:
        pytest.skip("no os.fork on this platform")
    stream, dgram = handlers(ss)
    handler = stream if base in ("TCP", "UnixStream") else dgram
    base_cls = base_class(ss, base)
    if mixin is None:
        bases = (base_cls,)
    else:
        mixin_cls = getattr(ss, mixin + "MixIn")
        bases = (mixin_cls, base_cls) if order == "mixin_first" else (base_cls, mixin_cls)
    server_cls = type("UserServer", bases, {})
    server = server_cls(address_for(base, short_tmpdir), handler)
    serve(server)
    replies = [parse_reply(exchange(net, base, server.server_address, b"hi%d" % i,
                                    short_tmpdir)) for i in range(2)]
    assert [r[0] for r in replies] == [b"HI0", b"HI1"]
    for _, pid, thread in replies:
        if mixin is None or order == "base_first":
            # BaseServer.process_request comes first in the MRO: the mixin
            # is inert and the request runs on the serve_forever thread.
            assert (pid, thread) == (os.getpid(), SERVE_THREAD)
        elif mixin == "Forking":
            assert pid != os.getpid()
        elif mixin == "Threading":
            assert pid == os.getpid() and thread != SERVE_THREAD
        else:
            assert pid == os.getpid() and thread.startswith("cserver-pool-")


# ---------------------------------------------------------------------------
# Overriding class attributes and hooks, on instances and on subclasses.
# ---------------------------------------------------------------------------

def test_instance_timeout_and_handle_timeout(ss):
    server = ss.TCPServer(("127.0.0.1", 0), ss.BaseRequestHandler)
    try:
        calls = []
        server.timeout = 0.05
        server.handle_timeout = lambda: calls.append("instance") or "from-hook"
        assert server.handle_request() == "from-hook"
        assert calls == ["instance"]
        assert type(server).timeout is None
    finally:
        server.server_close()


@pytest.mark.parametrize("sock_timeout, self_timeout", [
    (None, 0.05), (0.05, None), (0.05, 60.0), (60.0, 0.05)])
def test_handle_request_timeout_is_the_smaller_one(ss, sock_timeout, self_timeout):
    calls = []

    class Server(ss.TCPServer):
        timeout = self_timeout

        def handle_timeout(self):
            calls.append(time.monotonic())

    server = Server(("127.0.0.1", 0), ss.BaseRequestHandler)
    try:
        server.socket.settimeout(sock_timeout)
        start = time.monotonic()
        assert server.handle_request() is None
        elapsed = time.monotonic() - start
        assert len(calls) == 1
        # It waited (the timeout counts) but used the smaller of the two
        # (loose bounds: 60 s would hang the test far past 10 s).
        assert 0.03 <= elapsed < 10
    finally:
        server.server_close()


class RecordingSocket(socket.socket):
    """A socket subclass that records listen() calls."""

    def listen(self, *args):
        self.backlogs = getattr(self, "backlogs", []) + [args]
        return super().listen(*args)


class MinimalSocketModule:
    """Only what the stdlib socketserver looks up in its ``socket`` global at
    run time; anything else an implementation uses from it fails."""

    def __init__(self):
        self.created = []
        for name in ["SOL_SOCKET", "SO_REUSEADDR", "SO_REUSEPORT", "SHUT_WR",
                     "IPPROTO_TCP", "TCP_NODELAY"]:
            setattr(self, name, getattr(socket, name))
        self.error = OSError

    def socket(self, family, type):
        sock = RecordingSocket(family, type)
        self.created.append(sock)
        return sock


def test_late_lookup_of_socket(ss, serve, net, monkeypatch):
    fake = MinimalSocketModule()
    monkeypatch.setattr(ss, "socket", fake)
    assert ss.socket is fake

    class Server(ss.TCPServer):
        request_queue_size = 3

    stream, _ = handlers(ss)
    server = Server(("127.0.0.1", 0), stream)
    serve(server)
    assert fake.created == [server.socket]
    assert server.socket.backlogs == [(3,)]
    reply = parse_reply(net.stream_exchange(server.server_address, b"late\n"))
    assert reply[0] == b"LATE"

    other = ss.TCPServer(("127.0.0.1", 0), stream, bind_and_activate=False)
    try:
        other.request_queue_size = 7  # instance override
        other.server_bind()
        other.server_activate()
        assert other.socket.backlogs == [(7,)]
        assert len(fake.created) == 2
    finally:
        other.server_close()


@pytest.mark.parametrize("where", ["instance", "subclass", "default"])
def test_allow_reuse_address(ss, where):
    cls = ss.TCPServer
    if where == "subclass":
        cls = type("Reuse", (ss.TCPServer,), {"allow_reuse_address": True})
    server = cls(("127.0.0.1", 0), ss.BaseRequestHandler, bind_and_activate=False)
    try:
        if where == "instance":
            server.allow_reuse_address = True
        server.server_bind()
        value = server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert bool(value) is (where != "default")
        assert server.server_address[1] != 0
    finally:
        server.server_close()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="allow_reuse_port is 3.11+")
@pytest.mark.parametrize("cls_name", ["TCPServer", "UDPServer"])
def test_allow_reuse_port(ss, cls_name):
    cls = type("ReusePort", (getattr(ss, cls_name),), {"allow_reuse_port": True})
    servers = [cls(("127.0.0.1", 0), ss.BaseRequestHandler)]
    try:
        assert servers[0].socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
        # A second server on the very same port: only possible with it.
        servers.append(cls(servers[0].server_address, ss.BaseRequestHandler))
        assert servers[1].server_address == servers[0].server_address
    finally:
        for server in servers:
            server.server_close()


#: gh-128916: the stdlib sets SO_REUSEPORT on AF_INET/AF_INET6 only, from
#: 3.12.9, 3.13.2 and 3.14 (Linux 6.12.9+ refuses it on Unix sockets).
REUSE_PORT_INET_ONLY = (sys.version_info >= (3, 13, 2)
                        or (3, 12, 9) <= sys.version_info[:3] < (3, 13))


@pytest.mark.skipif(sys.version_info < (3, 11), reason="allow_reuse_port is 3.11+")
@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")
@pytest.mark.parametrize("cls_name", ["UnixStreamServer", "UnixDatagramServer"])
def test_allow_reuse_port_on_a_unix_server(ss, short_tmpdir, cls_name):
    """The running interpreter's rule, patch level included: from 3.12.9,
    3.13.2 and 3.14 the option is skipped and the server binds; before, it
    is set, and a kernel that refuses it (6.12.9+) fails the constructor
    with EOPNOTSUPP, on the stdlib as on cserver."""
    cls = type("ReusePort", (getattr(ss, cls_name),), {"allow_reuse_port": True})
    path = os.path.join(short_tmpdir, "r")
    try:
        server = cls(path, ss.BaseRequestHandler)
    except OSError as exc:
        assert not REUSE_PORT_INET_ONLY, exc
        assert exc.errno == errno.EOPNOTSUPP, exc
        return
    try:
        assert server.server_address == path
        value = server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        assert bool(value) is (not REUSE_PORT_INET_ONLY)
    finally:
        server.server_close()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="allow_reuse_port is 3.11+")
@pytest.mark.parametrize("family", ["AF_INET", "AF_INET6"])
def test_allow_reuse_port_still_set_on_inet_sockets(ss, family):
    """The gh-128916 guard lets AF_INET and AF_INET6 servers keep it."""
    if family == "AF_INET6" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    cls = type("ReusePort", (ss.TCPServer,), {
        "allow_reuse_port": True, "address_family": getattr(socket, family)})
    host = "127.0.0.1" if family == "AF_INET" else "::1"
    try:
        server = cls((host, 0), ss.BaseRequestHandler)
    except OSError as exc:  # a host without ::1
        if family == "AF_INET6" and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            pytest.skip("::1 is not available here: %s" % exc)
        raise
    try:
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
    finally:
        server.server_close()


def test_hooks_overridden_on_subclass_and_instance(ss, serve, net):
    log = []

    class Server(ss.ThreadingTCPServer):
        def server_bind(self):
            log.append("server_bind")
            super().server_bind()

        def get_request(self):
            request, address = super().get_request()
            log.append("get_request")
            return request, address

        def service_actions(self):
            log.append("service_actions")
            super().service_actions()

    stream, _ = handlers(ss)
    server = Server(("127.0.0.1", 0), stream)
    assert log == ["server_bind"] and server.server_address[1] != 0

    original = server.process_request

    def process_request(request, client_address):
        log.append("process_request")
        original(request, client_address)

    server.process_request = process_request  # instance override
    serve(server, poll_interval=0.01)
    assert parse_reply(net.stream_exchange(server.server_address, b"x\n"))[0] == b"X"
    assert log.index("get_request") < log.index("process_request")
    counted = log.count("service_actions")
    # service_actions keeps running at the poll pace while idle.
    assert _wait(lambda: log.count("service_actions") >= counted + 3)


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_name_mangled_shutdown_flag(ss, serve):
    server = ss.TCPServer(("127.0.0.1", 0), ss.BaseRequestHandler)
    assert server._BaseServer__shutdown_request is False
    thread = serve(server, poll_interval=0.02)
    assert _wait(lambda: thread.is_alive())
    # Setting the private flag (as some users do) stops the loop within a
    # poll interval, and the loop resets it on the way out.
    server._BaseServer__shutdown_request = True
    thread.join(10)
    assert not thread.is_alive()
    assert server._BaseServer__shutdown_request is False
    assert server._BaseServer__is_shut_down.is_set()


def test_shutdown_before_serve_forever_starts(ss):
    actions = []

    class Server(ss.TCPServer):
        def service_actions(self):
            actions.append(1)

    server = Server(("127.0.0.1", 0), ss.BaseRequestHandler)
    try:
        stopper = threading.Thread(target=server.shutdown)
        stopper.start()
        try:
            assert _wait(lambda: server._BaseServer__shutdown_request)
            assert stopper.is_alive()  # shutdown() waits for the loop
            server.serve_forever(poll_interval=5)  # returns at once
        finally:
            stopper.join(10)
        assert not stopper.is_alive()
        assert actions == []
        assert server._BaseServer__shutdown_request is False
    finally:
        server.server_close()


# ---------------------------------------------------------------------------
# verify_request refusal and handle_error.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("server_name", ["TCPServer", "ThreadingTCPServer"])
def test_verify_request_refusal(ss, net, server_name):
    calls = []

    class Handler(ss.BaseRequestHandler):
        def handle(self):
            calls.append("handle")

    class Server(getattr(ss, server_name)):
        def verify_request(self, request, client_address):
            calls.append(("verify", client_address))
            return False

        def shutdown_request(self, request):
            calls.append("shutdown_request")
            super().shutdown_request(request)

    server = Server(("127.0.0.1", 0), Handler)
    try:
        with net.connect(server.server_address) as client:
            server.handle_request()
            assert client.recv(100) == b""  # closed by the server
            assert calls == [("verify", client.getsockname()), "shutdown_request"]
    finally:
        server.server_close()


def _failing_handler(ss):
    class Failing(ss.BaseRequestHandler):
        def handle(self):
            raise ValueError("boom in handler")
    return Failing


@pytest.mark.parametrize("server_name", ["TCPServer", "ThreadingTCPServer"])
def test_handle_error_output(ss, net, capfd, server_name):
    server = getattr(ss, server_name)(("127.0.0.1", 0), _failing_handler(ss))
    try:
        with net.connect(server.server_address) as client:
            server.handle_request()
            assert client.recv(100) == b""
            address = client.getsockname()
    finally:
        server.server_close()  # joins the request thread
    err = capfd.readouterr().err
    lines = err.splitlines()
    assert lines[0] == "-" * 40
    assert lines[1] == "Exception occurred during processing of request from %r" % (address,)
    assert lines[2] == "Traceback (most recent call last):"
    assert any('raise ValueError("boom in handler")' in line for line in lines)
    assert lines[-2] == "ValueError: boom in handler"
    assert lines[-1] == "-" * 40
    assert len(lines) > 5


@pytest.mark.parametrize("server_name", ["TCPServer", "ThreadingTCPServer", "ThreadPoolTCPServer"])
def test_handle_error_runs_inside_except_block(ss, net, server_name):
    if not hasattr(ss, server_name):
        pytest.skip("ThreadPoolTCPServer is a cserver addition")
    seen = []

    class Server(getattr(ss, server_name)):
        def handle_error(self, request, client_address):
            exc_type, exc, tb = sys.exc_info()
            seen.append((exc_type, str(exc), tb is not None, client_address))

    server = Server(("127.0.0.1", 0), _failing_handler(ss))
    try:
        with net.connect(server.server_address) as client:
            server.handle_request()
            assert client.recv(100) == b""
            address = client.getsockname()
    finally:
        server.server_close()
    assert seen == [(ValueError, "boom in handler", True, address)]


# ---------------------------------------------------------------------------
# Fork reaping.
# ---------------------------------------------------------------------------

def _reaped(pid):
    """True if pid is no child of ours any more (reaped, no zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def _child_pids(net, server, n):
    pids = []
    for i in range(n):
        reply = parse_reply(net.stream_exchange(server.server_address, b"f%d\n" % i))
        pids.append(reply[1])
    return pids


@FORK_IN_THREADS
@pytest.mark.skipif(not HAS_FORK, reason="no os.fork")
def test_fork_children_reaped_by_service_actions(ss, serve, net):
    stream, _ = handlers(ss)
    server = ss.ForkingTCPServer(("127.0.0.1", 0), stream)
    serve(server, poll_interval=0.02)
    pids = _child_pids(net, server, 3)
    assert len(set(pids)) == 3 and os.getpid() not in pids
    # serve_forever's service_actions() collects the exited children.
    assert _wait(lambda: not server.active_children)
    assert all(_reaped(pid) for pid in pids)
    assert all(not os.path.exists("/proc/%d" % pid) or _not_our_zombie(pid) for pid in pids)


def _not_our_zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return True
    state, ppid = fields[0], int(fields[1])
    return not (state == "Z" and ppid == os.getpid())


@FORK_IN_THREADS
@pytest.mark.skipif(not HAS_FORK, reason="no os.fork")
def test_fork_children_reaped_by_server_close(ss, net):
    stream, _ = handlers(ss)
    server = ss.ForkingTCPServer(("127.0.0.1", 0), stream)
    pids = []
    try:
        for i in range(3):
            with net.connect(server.server_address) as client:
                client.sendall(b"c%d\n" % i)
                server.handle_request()  # forks; no service_actions here
                pids.append(parse_reply(net.recv_all(client))[1])
        assert set(server.active_children or ()) <= set(pids)
    finally:
        server.server_close()  # block_on_close: waits for every child
    assert not server.active_children
    assert all(_reaped(pid) for pid in pids)
    assert all(_not_our_zombie(pid) for pid in pids)


@FORK_IN_THREADS
@pytest.mark.skipif(not HAS_FORK, reason="no os.fork")
def test_fork_handle_timeout_collects_children(ss, net):
    stream, _ = handlers(ss)
    server = ss.ForkingTCPServer(("127.0.0.1", 0), stream)
    try:
        with net.connect(server.server_address) as client:
            client.sendall(b"t\n")
            server.handle_request()
            pid = parse_reply(net.recv_all(client))[1]
        server.timeout = 0.02
        # handle_timeout() -> collect_children(): the exited child goes.
        assert _wait(lambda: server.handle_request() is None and not server.active_children)
        assert _reaped(pid)
    finally:
        server.server_close()


# ---------------------------------------------------------------------------
# Round trips on every socket kind, and the monkeypatched selector.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("base", BASES)
def test_round_trip_with_handle_request(ss, net, short_tmpdir, base):
    stream, dgram = handlers(ss)
    handler = stream if base in ("TCP", "UnixStream") else dgram
    server = base_class(ss, base)(address_for(base, short_tmpdir), handler)
    results = []
    try:
        client = threading.Thread(target=lambda: results.append(
            exchange(net, base, server.server_address, b"ping", short_tmpdir)))
        client.start()
        try:
            server.timeout = 10
            server.handle_request()
        finally:
            client.join(10)
        assert parse_reply(results[0])[:2] == (b"PING", os.getpid())
    finally:
        server.server_close()


def test_monkeypatched_server_selector(ss, serve, net, monkeypatch):
    base = ss._ServerSelector

    class RecordingSelector(base):
        instances = []

        def __init__(self):
            super().__init__()
            self.registered = []
            RecordingSelector.instances.append(self)

        def register(self, fileobj, events, data=None):
            self.registered.append(fileobj)
            return super().register(fileobj, events, data)

    monkeypatch.setattr(ss, "_ServerSelector", RecordingSelector)
    assert ss._ServerSelector is RecordingSelector
    stream, _ = handlers(ss)
    server = ss.TCPServer(("127.0.0.1", 0), stream)
    serve(server)
    assert parse_reply(net.stream_exchange(server.server_address, b"sel\n"))[0] == b"SEL"
    assert len(RecordingSelector.instances) == 1
    assert server in RecordingSelector.instances[0].registered
    server.shutdown()
    server.timeout = 0.01
    server.handle_request()
    assert len(RecordingSelector.instances) == 2
    assert RecordingSelector.instances[1].registered == [server]
    assert selectors.EVENT_READ  # the selectors module stays the real one


def test_monkeypatched_internals_socketwriter_and_threads(ss, net, monkeypatch):
    """StreamRequestHandler.setup and ThreadingMixIn.process_request look up
    _SocketWriter and _Threads late: patching the module reaches them."""
    made = []

    class RecordingWriter(ss._SocketWriter):
        def __init__(self, sock):
            made.append("writer")
            super().__init__(sock)

    class RecordingThreads(ss._Threads):
        def append(self, thread):
            made.append("thread")
            super().append(thread)

    monkeypatch.setattr(ss, "_SocketWriter", RecordingWriter)
    monkeypatch.setattr(ss, "_Threads", RecordingThreads)
    stream, _ = handlers(ss)
    server = ss.ThreadingTCPServer(("127.0.0.1", 0), stream)
    try:
        with net.connect(server.server_address) as client:
            client.sendall(b"patched\n")
            server.handle_request()
            assert parse_reply(net.recv_all(client))[0] == b"PATCHED"
        assert isinstance(vars(server)["_threads"], RecordingThreads)
    finally:
        server.server_close()
    assert sorted(made) == ["thread", "writer"]
