"""ThreadPoolMixIn: a bounded pool of worker threads with a bounded queue.

When the workers are busy and the queue is full the server stops accepting:
further clients stay in the kernel's listen backlog (read from
/proc/net/tcp) until a worker is free; nothing is dropped.
"""
import os
import sys
import threading
import time

import pytest

import cserver


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.active = 0
        self.max_active = 0
        self.handled = []
        self.threads = set()


class GatedEcho(cserver.StreamRequestHandler):
    """Echoes one line, after holding its worker until state.release."""

    def handle(self):
        line = self.rfile.readline()
        state = self.server.state
        with state.lock:
            state.active += 1
            state.max_active = max(state.max_active, state.active)
            state.handled.append(line.strip())
            state.threads.add(threading.current_thread().name)
        try:
            assert state.release.wait(10), "test never released the handlers"
        finally:
            with state.lock:
                state.active -= 1
        self.wfile.write(line)


def make_server(cls=cserver.ThreadPoolTCPServer, handler=GatedEcho, address=("127.0.0.1", 0),
                **attrs):
    server_cls = type("PoolServer", (cls,), attrs)
    server = server_cls(address, handler)
    server.state = State()
    return server


def accept_queue_len(port):
    """Connections waiting in the listen backlog of 127.0.0.1:port."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == "0A" and int(local.split(":")[1], 16) == port:  # LISTEN
                return int(fields[4].split(":")[1], 16)
    raise AssertionError("no listening socket on port %d" % port)


def pool_threads():
    return [t for t in threading.enumerate() if t.name.startswith("cserver-pool-")]


def send_lines(net, address, n, prefix=b"c"):
    clients = []
    for i in range(n):
        client = net.connect(address)
        clients.append(client)
        client.sendall(prefix + b"%d\n" % i)
    return clients


def close_all(clients):
    for client in clients:
        client.close()


def test_never_more_than_max_workers(serve, net, wait_until):
    # A backlog above the stdlib's 5: 8 quick connects would otherwise see a
    # SYN dropped and retried after a second.
    server = make_server(max_workers=3, queue_size=10, request_queue_size=16)
    serve(server)
    clients = send_lines(net, server.server_address, 8)
    try:
        state = server.state
        assert wait_until(lambda: server.pool_stats()["pending"] == 8)
        assert wait_until(lambda: state.active == 3)
        stats = server.pool_stats()
        assert stats["workers"] == 3 and stats["queued"] == 5 and stats["capacity"] == 13
        assert len(pool_threads()) == 3
        state.release.set()
        replies = sorted(net.recv_all(c) for c in clients)
        assert replies == sorted(b"c%d\n" % i for i in range(8))
        assert state.max_active == 3
        assert len(state.threads) == 3
    finally:
        server.state.release.set()
        close_all(clients)


def test_full_pool_leaves_clients_in_the_backlog(serve, net, wait_until):
    server = make_server(max_workers=1, queue_size=1)
    serve(server)
    port = server.server_address[1]
    clients = send_lines(net, server.server_address, 3)
    state = server.state
    try:
        # Client 0 runs, client 1 waits in the queue, client 2 is not
        # accepted: it stays in the kernel's listen backlog.
        assert wait_until(lambda: state.handled == [b"c0"])
        assert wait_until(lambda: server.pool_stats()["pending"] == 2)
        assert wait_until(lambda: accept_queue_len(port) == 1)
        stats = server.pool_stats()
        assert (stats["workers"], stats["queued"], stats["capacity"]) == (1, 1, 2)
        time.sleep(0.1)  # give a wrong implementation the chance to accept
        assert accept_queue_len(port) == 1
        assert state.handled == [b"c0"]
        assert server.pool_stats()["pending"] == 2
        # Free the worker: every request is handled, in order, none dropped.
        state.release.set()
        replies = [net.recv_all(c) for c in clients]
        assert replies == [b"c0\n", b"c1\n", b"c2\n"]
        assert state.handled == [b"c0", b"c1", b"c2"]
        assert accept_queue_len(port) == 0
        assert state.max_active == 1
    finally:
        state.release.set()
        close_all(clients)


def test_shutdown_while_waiting_for_a_slot_is_prompt(net, wait_until):
    server = make_server(max_workers=1, queue_size=1)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(5.0,))
    thread.start()
    clients = []
    try:
        clients = send_lines(net, server.server_address, 3)
        assert wait_until(lambda: server.pool_stats()["pending"] == 2)
        assert wait_until(lambda: accept_queue_len(port) == 1)
        start = time.monotonic()
        server.shutdown()
        assert time.monotonic() - start < 1.0
        thread.join(10)
        assert not thread.is_alive()
    finally:
        server.state.release.set()
        if thread.is_alive():
            server.shutdown()
            thread.join(10)
        server.server_close()  # the queued request is still served
        try:
            replies = [net.recv_all(c) for c in clients[:2]]
            # Never accepted: the listener closed under it (EOF or reset).
            try:
                last = net.recv_all(clients[2])
            except ConnectionResetError:
                last = b""
        finally:
            close_all(clients)
    assert replies == [b"c0\n", b"c1\n"]
    assert last == b""
    assert server.state.handled == [b"c0", b"c1"]
    assert pool_threads() == []


def test_server_close_joins_the_workers(net, wait_until):
    server = make_server(max_workers=4, queue_size=0)
    server.state.release.set()
    thread = threading.Thread(target=server.serve_forever, args=(5.0,))
    thread.start()
    try:
        clients = send_lines(net, server.server_address, 4)
        try:
            assert sorted(net.recv_all(c) for c in clients) == [b"c0\n", b"c1\n", b"c2\n",
                                                                b"c3\n"]
        finally:
            close_all(clients)
        assert len(pool_threads()) >= 1
        assert all(not t.daemon for t in pool_threads())
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
    assert pool_threads() == []
    assert server.pool_stats()["workers"] == 0


def test_block_on_close_false_and_daemon_threads(net, wait_until):
    server = make_server(max_workers=2, block_on_close=False, daemon_threads=True)
    thread = threading.Thread(target=server.serve_forever, args=(5.0,))
    thread.start()
    clients = send_lines(net, server.server_address, 1)
    try:
        assert wait_until(lambda: server.state.active == 1)
        workers = pool_threads()
        assert len(workers) == 1 and workers[0].daemon
        server.shutdown()
        thread.join(10)
        server.server_close()  # does not wait for the blocked handler
        assert workers[0].is_alive()
    finally:
        server.state.release.set()
        if thread.is_alive():
            server.shutdown()
            thread.join(10)
        server.server_close()
        try:
            assert net.recv_all(clients[0]) == b"c0\n"
        finally:
            close_all(clients)
    workers[0].join(10)
    assert pool_threads() == []


def test_handler_errors_go_through_handle_error(serve, net, wait_until):
    seen = []

    class Failing(cserver.StreamRequestHandler):
        def handle(self):
            line = self.rfile.readline()
            if line.startswith(b"bad"):
                raise KeyError("bad request")
            self.wfile.write(line)

    class Server(cserver.ThreadPoolTCPServer):
        max_workers = 1

        def handle_error(self, request, client_address):
            seen.append((sys.exc_info()[0], threading.current_thread().name,
                         client_address))

    server = Server(("127.0.0.1", 0), Failing)
    serve(server)
    with net.connect(server.server_address) as client:
        client.sendall(b"bad\n")
        assert net.recv_all(client) == b""
        address = client.getsockname()
    assert seen == [(KeyError, "cserver-pool-1", address)]
    # The worker survives the error and serves the next request.
    assert net.stream_exchange(server.server_address, b"good\n") == b"good\n"
    assert server.pool_stats()["workers"] == 1


def test_handle_error_default_output(serve, net, capfd):
    class Failing(cserver.BaseRequestHandler):
        def handle(self):
            raise RuntimeError("pool boom")

    server = cserver.ThreadPoolTCPServer(("127.0.0.1", 0), Failing)
    thread = threading.Thread(target=server.serve_forever, args=(5.0,))
    thread.start()
    try:
        with net.connect(server.server_address) as client:
            assert net.recv_all(client) == b""
            address = client.getsockname()
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
    lines = capfd.readouterr().err.splitlines()
    assert lines[0] == "-" * 40
    assert lines[1] == "Exception occurred during processing of request from %r" % (address,)
    assert lines[-2] == "RuntimeError: pool boom"
    assert lines[-1] == "-" * 40


BAD_SIZES = [
    ({"max_workers": 0}, ValueError), ({"max_workers": -1}, ValueError),
    ({"max_workers": 1.5}, TypeError), ({"max_workers": "2"}, TypeError),
    ({"max_workers": True}, TypeError), ({"queue_size": -1}, ValueError),
    ({"queue_size": 2.0}, TypeError), ({"max_workers": 2, "queue_size": "x"}, TypeError)]


@pytest.mark.parametrize("attrs, error", BAD_SIZES)
def test_invalid_sizes_fail_at_construction(attrs, error, fd_count):
    # Declared on the class: the constructor refuses them before any socket
    # exists, with a message naming the option and the value.
    before = fd_count()
    with pytest.raises(error) as info:
        make_server(**attrs)
    name, value = [(k, v) for k, v in attrs.items() if (k, v) != ("max_workers", 2)][0]
    assert str(info.value).startswith(name + " must be ")
    assert str(info.value).endswith("got %r" % (value,))
    assert fd_count() == before


@pytest.mark.parametrize("attrs, error", BAD_SIZES)
def test_invalid_sizes_set_later_never_leave_an_unserved_listener(attrs, error, net):
    # Set on the instance after construction: serve_forever() refuses them
    # before its first accept and closes the listening socket, so a client
    # is refused instead of hanging in a backlog nobody serves, and a
    # shutdown() from another thread does not wait forever.
    server = cserver.ThreadPoolTCPServer(("127.0.0.1", 0), GatedEcho)
    address = server.server_address
    errors = []

    def run():
        try:
            server.serve_forever(0.05)
        except BaseException as exc:
            errors.append(exc)

    for key, value in attrs.items():
        setattr(server, key, value)
    thread = threading.Thread(target=run)
    try:
        thread.start()
        thread.join(10)
        assert not thread.is_alive()
        assert [type(e) for e in errors] == [error]
        assert server.socket.fileno() == -1  # closed
        with pytest.raises(ConnectionRefusedError):
            net.connect(address).close()
        server.shutdown()  # returns
    finally:
        if thread.is_alive():
            server.shutdown()
        thread.join(10)
        server.server_close()
    # handle_request() refuses them too, in the caller's thread
    server = cserver.ThreadPoolTCPServer(("127.0.0.1", 0), GatedEcho)
    try:
        for key, value in attrs.items():
            setattr(server, key, value)
        with net.connect(server.server_address):
            with pytest.raises(error):
                server.handle_request()
        assert server.pool_stats()["workers"] == 0
    finally:
        server.server_close()


def test_default_sizes(serve, net):
    class Echo(cserver.StreamRequestHandler):
        def handle(self):
            self.wfile.write(self.rfile.readline())

    server = cserver.ThreadPoolTCPServer(("127.0.0.1", 0), Echo)
    assert server.pool_stats()["capacity"] == 0  # no pool before serve_forever()
    serve(server)
    assert net.stream_exchange(server.server_address, b"x\n") == b"x\n"
    default = min(32, (os.cpu_count() or 1) + 4)
    assert server.pool_stats()["capacity"] == 2 * default


def test_udp_pool(serve, net, wait_until):
    class DgramEcho(cserver.DatagramRequestHandler):
        def handle(self):
            self.wfile.write(self.rfile.read() + b" " +
                             threading.current_thread().name.encode())

    server = cserver.ThreadPoolUDPServer(("127.0.0.1", 0), DgramEcho)
    server.max_workers = 2
    serve(server)
    replies = [net.dgram_exchange(server.server_address, b"d%d" % i) for i in range(5)]
    for i, reply in enumerate(replies):
        data, thread = reply.split(b" ")
        assert data == b"d%d" % i
        assert thread in (b"cserver-pool-1", b"cserver-pool-2")
    assert server.pool_stats()["workers"] <= 2


def test_unix_stream_pool(serve, net, short_tmpdir):
    server = make_server(cls=cserver.ThreadPoolUnixStreamServer, max_workers=2,
                         address=os.path.join(short_tmpdir, "p"))
    server.state.release.set()
    serve(server)
    assert net.stream_exchange(server.server_address, b"unix\n") == b"unix\n"
    assert server.state.threads == {"cserver-pool-1"}


def test_a_handler_killing_its_worker_strands_no_request(net, wait_until, monkeypatch):
    """SystemExit in a handler ends its worker thread (as it ends the
    request's thread in ThreadingMixIn); the queued requests still run."""
    died = []
    monkeypatch.setattr(threading, "excepthook",
                        lambda args: died.append((args.exc_type, args.thread.name)))

    class Exiting(GatedEcho):
        def handle(self):
            super().handle()
            if self.server.state.handled[0] == b"c0" and len(self.server.state.handled) == 1:
                raise SystemExit("handler asked to exit its thread")

    server = make_server(handler=Exiting, max_workers=1, queue_size=2)
    thread = threading.Thread(target=server.serve_forever, args=(5.0,))
    thread.start()
    clients = send_lines(net, server.server_address, 3)
    try:
        assert wait_until(lambda: server.pool_stats()["pending"] == 3)
        server.state.release.set()
        assert [net.recv_all(c) for c in clients] == [b"c0\n", b"c1\n", b"c2\n"]
        assert server.state.handled == [b"c0", b"c1", b"c2"]
        assert wait_until(lambda: server.pool_stats()["pending"] == 0)
        assert server.pool_stats()["workers"] == 1
    finally:
        server.state.release.set()
        close_all(clients)
        server.shutdown()
        thread.join(10)
        server.server_close()
    assert pool_threads() == []
    assert server.state.threads == {"cserver-pool-1", "cserver-pool-2"}
    assert died == [(SystemExit, "cserver-pool-1")]
