"""Inherited sockets and systemd: ``from_socket()`` on every server class,
``cserver.systemd`` (``listen_fds*``, ``notify``) with hostile environments,
a fake ``NOTIFY_SOCKET``, and ``systemd-socket-activate`` running
``python -m cserver echo --systemd``.

The ``LISTEN_*`` tests run in a subprocess (``_child``): the variables name
descriptors 3.. of the process that reads them, which in pytest's process
belong to pytest.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

import cserver
import cserver.socketserver as compat
from cserver import selectorserver, systemd
from support import (TIMEOUT, Echo, Server, activate_env_args, child_env, cli, echo_once,
                     frame, free_port, short_path)

class Datagrams(cserver.DatagramHandler):
    def datagram_received(self, data, addr):
        self.sendto(data, addr)


def _echo_once(address, payload=b"hello", family=socket.AF_INET):
    assert family in (socket.AF_INET, socket.AF_UNIX)   # echo_once knows by the address
    return echo_once(address, payload)


def _serve_in_thread(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


# -- from_socket on the multiplexing servers -----------------------------------


def test_selector_tcp_from_a_listening_socket():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    address = sock.getsockname()
    server = cserver.SelectorTCPServer.from_socket(sock, Echo, drain_timeout=0.5)
    thread = None
    try:
        assert server.socket is sock and server.server_address == address
        assert not sock.get_inheritable()
        thread = _serve_in_thread(server)
        assert _echo_once(address) == frame(b"hello")
    finally:
        server.shutdown()
        if thread is not None:
            thread.join(TIMEOUT)
        server.server_close()
    assert sock.fileno() == -1   # the server owned it


def test_selector_tcp_from_a_bound_socket_listens_on_it():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    assert not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    server = cserver.SelectorTCPServer.from_socket(sock, Echo)
    try:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        assert server.address_family == sock.family
        thread = _serve_in_thread(server)
        assert _echo_once(server.server_address[:2], family=sock.family) == frame(b"hello")
        server.shutdown()
        thread.join(TIMEOUT)
    finally:
        server.server_close()


def test_selector_unix_and_udp_from_socket():
    path = short_path("fs")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(path)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    servers = []
    try:
        servers.append(cserver.SelectorUnixStreamServer.from_socket(unix, Echo))
        servers.append(cserver.SelectorUDPServer.from_socket(udp, Datagrams))
        assert servers[0].server_address == path
        threads = [_serve_in_thread(s) for s in servers]
        assert _echo_once(path, family=socket.AF_UNIX) == frame(b"hello")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(TIMEOUT)
            c.sendto(b"ping", servers[1].server_address)
            assert c.recv(100) == b"ping"
        for s, t in zip(servers, threads):
            s.shutdown()
            t.join(TIMEOUT)
    finally:
        for s in servers:
            s.server_close()
        unix.close()
        udp.close()
        os.unlink(path)


@pytest.mark.parametrize("cls, make, error, message", [
    (cserver.SelectorTCPServer, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
     TypeError, r"needs an AF_INET SOCK_STREAM or AF_INET6 SOCK_STREAM socket, got AF_INET "
                r"SOCK_DGRAM"),
    (cserver.SelectorTCPServer, lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM),
     TypeError, r"got AF_UNIX SOCK_STREAM"),
    (cserver.SelectorUnixStreamServer, lambda: socket.socket(), TypeError,
     r"needs an AF_UNIX SOCK_STREAM socket, got AF_INET SOCK_STREAM"),
    (cserver.SelectorUDPServer, lambda: socket.socket(), TypeError,
     r"needs an AF_INET SOCK_DGRAM"),
    (cserver.SelectorTCPServer, lambda: socket.socket(), ValueError, r"not bound"),
    (cserver.SelectorTCPServer, lambda: 3, TypeError, r"needs a socket\.socket, got 3"),
])
def test_from_socket_refuses_the_wrong_socket(cls, make, error, message):
    sock = make()
    handler = Datagrams if cls is cserver.SelectorUDPServer else Echo
    try:
        with pytest.raises(error, match=message):
            cls.from_socket(sock, handler)
        if isinstance(sock, socket.socket):
            assert sock.fileno() >= 0   # refused: still the caller's
    finally:
        if isinstance(sock, socket.socket):
            sock.close()


def test_from_socket_refuses_a_connected_socket_and_a_closed_one():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    try:
        with pytest.raises(ValueError, match="connected, not a listening socket"):
            cserver.SelectorTCPServer.from_socket(accepted, Echo)
        closed = socket.socket()
        closed.close()
        with pytest.raises(ValueError, match="closed"):
            cserver.SelectorTCPServer.from_socket(closed, Echo)
    finally:
        for s in (listener, client, accepted):
            s.close()


def test_from_socket_checks_the_options_first():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(ValueError, match="drain_delay must be"):
            cserver.SelectorTCPServer.from_socket(sock, Echo, drain_delay=-1)
        with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
            cserver.SelectorTCPServer.from_socket(sock, Echo, bogus=1)
        assert sock.fileno() >= 0
    finally:
        sock.close()


# -- from_socket on the stdlib-style servers -------------------------------------


class StreamEcho(compat.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline())


class DatagramEcho(compat.DatagramRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.read())


def _stdlib_round_trip(server, family, stream, address):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        with socket.socket(family, socket.SOCK_STREAM if stream else socket.SOCK_DGRAM) as c:
            c.settimeout(TIMEOUT)
            if stream:
                c.connect(address)
                c.sendall(b"line\n")
                return c.recv(100)
            if family == socket.AF_UNIX:
                c.bind(short_path("cl"))
            c.sendto(b"dgram", address)
            try:
                return c.recv(100)
            finally:
                if family == socket.AF_UNIX:
                    os.unlink(c.getsockname())
    finally:
        server.shutdown()
        thread.join(TIMEOUT)


@pytest.mark.parametrize("name", ["TCPServer", "UDPServer", "ThreadingTCPServer",
                                  "ThreadPoolTCPServer", "UnixStreamServer",
                                  "UnixDatagramServer"])
def test_stdlib_style_from_socket(name):
    cls = getattr(compat, name)
    stream = cls.socket_type == socket.SOCK_STREAM
    family = cls.address_family
    path = None
    sock = socket.socket(family, cls.socket_type)
    if family == socket.AF_UNIX:
        path = short_path("ss")
        sock.bind(path)
    else:
        sock.bind(("127.0.0.1", 0))
    server = cls.from_socket(sock, StreamEcho if stream else DatagramEcho)
    try:
        assert server.socket is sock and server.server_address == sock.getsockname()
        if stream:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        reply = _stdlib_round_trip(server, family, stream, server.server_address)
        assert reply == (b"line\n" if stream else b"dgram")
    finally:
        server.server_close()
        if path:
            os.unlink(path)
    assert sock.fileno() == -1


def test_stdlib_style_from_socket_refuses_the_wrong_family():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(TypeError, match=r"TCPServer\.from_socket\(\) needs an AF_INET "
                                            r"SOCK_STREAM .* got AF_INET SOCK_DGRAM"):
            compat.TCPServer.from_socket(sock, StreamEcho)
        with pytest.raises(TypeError, match="UnixStreamServer"):
            compat.UnixStreamServer.from_socket(sock, StreamEcho)
    finally:
        sock.close()


# -- LISTEN_FDS: the environment as an attacker writes it -----------------------

_CHILD = r"""
import json, os, socket, sys
from cserver import systemd
spec = json.loads(sys.argv[1])
keep = []
for kind in spec.get("fds", []):
    if kind == "tcp":
        s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(4)
    elif kind == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
    elif kind == "pipe":
        r, w = os.pipe(); keep.append(w); s = r
    fd = s if isinstance(s, int) else s.fileno()
    keep.append(s)
    assert fd >= 3, fd
env = spec["env"]
for name, value in env.items():
    if value == "$PID":
        value = str(os.getpid())
    elif value == "$PPID":
        value = str(os.getppid())
    os.environ[name] = value
result = {}
try:
    pairs = systemd.listen_fds_with_names(unset_environment=spec.get("unset", True))
    result["pairs"] = [[n, s.fileno(), s.type == socket.SOCK_STREAM, s.get_inheritable()]
                       for n, s in pairs]
except ValueError as exc:
    result["error"] = str(exc)
result["left"] = {n: os.environ.get(n) for n in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")}
print(json.dumps(result))
"""


def _child(env, fds=(), unset=True):
    # descriptors 3.. must be the ones the child opens: close_fds (the default)
    spec = {"env": env, "fds": list(fds), "unset": unset}
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)], env=child_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return json.loads(out.stdout)


def test_listen_fds_reads_names_and_unsets_the_variables():
    result = _child({"LISTEN_PID": "$PID", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:dns"},
                    fds=["tcp", "udp"])
    assert result["pairs"] == [["web", 3, True, False], ["dns", 4, False, False]]
    assert result["left"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}


def test_listen_fds_without_names_and_without_unsetting():
    result = _child({"LISTEN_PID": "$PID", "LISTEN_FDS": "1"}, fds=["tcp"], unset=False)
    assert result["pairs"] == [["unknown", 3, True, False]]
    assert result["left"]["LISTEN_FDS"] == "1"


@pytest.mark.parametrize("env", [
    {},                                                       # not socket-activated
    {"LISTEN_PID": "$PPID", "LISTEN_FDS": "1"},               # another process's
    {"LISTEN_PID": "1", "LISTEN_FDS": "1"},
    {"LISTEN_PID": "$PID"},                                   # no LISTEN_FDS
])
def test_listen_fds_for_another_process_is_nothing(env):
    result = _child(env, fds=["tcp"])
    assert result == {"pairs": [], "left": {"LISTEN_PID": None, "LISTEN_FDS": None,
                                            "LISTEN_FDNAMES": None}}


@pytest.mark.parametrize("env, fds, message", [
    ({"LISTEN_FDS": "999999"}, ["tcp"], r"LISTEN_FDS=999999: descriptors 3-1000001 are "
                                        r"beyond this process's limit"),
    ({"LISTEN_FDS": "-1"}, ["tcp"], r"LISTEN_FDS must be a positive number of descriptors, "
                                    r"got '-1'"),
    ({"LISTEN_FDS": "0"}, ["tcp"], r"LISTEN_FDS must be a positive number"),
    ({"LISTEN_FDS": "two"}, ["tcp"], r"LISTEN_FDS must be a decimal number, got 'two'"),
    ({"LISTEN_FDS": "1e3"}, ["tcp"], r"LISTEN_FDS must be a decimal number"),
    ({"LISTEN_FDS": "\u0661"}, ["tcp"], r"LISTEN_FDS must be a decimal number"),  # Arabic 1
    ({"LISTEN_FDS": "9" * 40}, ["tcp"], r"LISTEN_FDS is out of range"),
    ({"LISTEN_FDS": "1", "LISTEN_FDNAMES": "a:b"}, ["tcp"],
     r"LISTEN_FDNAMES names 2 descriptors, LISTEN_FDS=1"),
    ({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "a"}, ["tcp", "tcp"],
     r"LISTEN_FDNAMES names 1 descriptors, LISTEN_FDS=2"),
    ({"LISTEN_FDS": "2"}, ["tcp"], r"descriptor 4 is not open"),
    ({"LISTEN_FDS": "1"}, ["pipe"], r"descriptor 3 is not a socket"),
])
def test_listen_fds_refuses_malformed_variables(env, fds, message):
    env = dict(env, LISTEN_PID="$PID")
    result = _child(env, fds=fds)
    assert re.search(message, result.get("error", "")), result
    # unset even when parsing failed (as sd_listen_fds does)
    assert result["left"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}


@pytest.mark.parametrize("pid", ["abc", "-5", "12 34", ""])
def test_listen_fds_refuses_a_malformed_pid(pid):
    result = _child({"LISTEN_PID": pid, "LISTEN_FDS": "1"}, fds=["tcp"])
    assert "LISTEN_PID must be a decimal number" in result["error"], result


_FROM_SYSTEMD = r"""
import os, socket, struct, sys, threading
import cserver
class Echo(cserver.FrameHandler):
    def frame_received(self, frame):
        self.send_frame(frame)
addresses, fds = [], []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(4)
    addresses.append(s.getsockname()); fds.append(s.detach())   # systemd's now
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=sys.argv[1],
                  LISTEN_FDNAMES=":".join("s%d" % i for i in range(len(fds))))

def state():
    result = []
    for fd in fds:
        try:
            os.fstat(fd)
            result.append(fd)
        except OSError:
            result.append(-1)
    return result

name = sys.argv[2] if sys.argv[2] != "-" else None
try:
    server = cserver.SelectorTCPServer.from_systemd(Echo, name=name)
except LookupError as exc:
    print("LookupError:", exc, state())
    sys.exit(0)
address = server.server_address
print("serving", address == addresses[int((name or "s0")[1:])], state(),
      "LISTEN_FDS" in os.environ)
server.server_close()
print("closed", state())
"""


@pytest.mark.parametrize("count, name, expected", [
    ("1", "-", "serving True [3] False\nclosed [-1]"),
    ("2", "s1", "serving True [-1, 4] False\nclosed [-1, -1]"),   # the one not used: closed
    ("2", "-", "LookupError: SelectorTCPServer.from_systemd(): 2 sockets were passed (s0, s1): "
               "give name= [-1, -1]"),
    ("1", "nope", "LookupError: SelectorTCPServer.from_systemd(): no socket named 'nope' was "
                  "passed (s0) [-1]"),
])
def test_from_systemd_picks_a_socket_by_name(count, name, expected):
    out = subprocess.run([sys.executable, "-c", _FROM_SYSTEMD, count, name], env=child_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    assert out.stdout.decode().strip() == expected


# -- notify ------------------------------------------------------------------------


class FakeNotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = "cs-notify-%s" % uuid.uuid4().hex[:8]
            self.sock.bind("\0" + name)
            self.address, self.path = "@" + name, None
        else:
            self.path = short_path("ntf")
            self.sock.bind(self.path)
            self.address = self.path
        self.sock.settimeout(TIMEOUT)

    def receive(self):
        return self.sock.recv(4096).decode()

    def expect(self, pattern, timeout=TIMEOUT):
        """The datagrams until one matches ``pattern``."""
        seen = []
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                data = self.receive()
            except socket.timeout:
                break
            seen.append(data)
            if re.search(pattern, data):
                return seen
        raise AssertionError("no %r among %r" % (pattern, seen))

    def close(self):
        self.sock.close()
        if self.path:
            os.unlink(self.path)


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_sends_one_datagram(monkeypatch, abstract):
    fake = FakeNotifySocket(abstract)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", fake.address)
        assert systemd.notify("READY=1", "STATUS=serving") is True
        assert fake.receive() == "READY=1\nSTATUS=serving"
        assert systemd.notify_reloading() is True
        text = fake.receive()
        assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", text), text
        usec = int(text.rsplit("=", 1)[1])
        assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 60e6
    finally:
        fake.close()


def test_notify_without_a_socket_is_false(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert systemd.notify("READY=1") is False


@pytest.mark.parametrize("states, error, message", [
    ((), ValueError, "at least one state"),
    (("READY=1\nMAINPID=1",), ValueError, "one line"),   # smuggling an assignment
    (("READY",), ValueError, "NAME=value"),
    (("=1",), ValueError, "NAME=value"),
    ((b"READY=1",), TypeError, "a str"),
])
def test_notify_refuses_bad_states(monkeypatch, states, error, message):
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    with pytest.raises(error, match=message):
        systemd.notify(*states)


@pytest.mark.parametrize("value", ["relative/path", "@", "vsock:2:1"])
def test_notify_refuses_a_malformed_socket_address(monkeypatch, value):
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    with pytest.raises(ValueError, match="NOTIFY_SOCKET must be"):
        systemd.notify("READY=1")


def test_notify_to_a_missing_socket_raises(monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", short_path("gone"))
    with pytest.raises(OSError):
        systemd.notify("READY=1")


def _stop(proc, output):
    output.kill()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_server_notifies_ready_reloading_and_stopping(workers):
    fake = FakeNotifySocket()
    output = cli("--port", "0", "--workers", workers, "--drain-timeout", "0.5",
                 env=child_env(NOTIFY_SOCKET=fake.address))
    proc = output.proc
    try:
        fake.expect(r"^READY=1$")
        port = int(output.find(r"listening on 127\.0\.0\.1:(\d+)")[0].group(1))
        if workers == "2":
            # READY=1 once every worker is up
            assert len(output.find(r"worker \d serving", count=2, timeout=0.1)) == 2
            proc.send_signal(signal.SIGHUP)
            fake.expect(r"^RELOADING=1\nMONOTONIC_USEC=\d+$")
            fake.expect(r"^READY=1$")
            output.find(r"reload 1 done")
        assert _echo_once(("127.0.0.1", port)) == frame(b"hello")
        proc.send_signal(signal.SIGTERM)
        fake.expect(r"^STOPPING=1$")
        assert proc.wait(TIMEOUT) == 0, output.text()
    finally:
        _stop(proc, output)
        fake.close()


# -- systemd-socket-activate: a real socket activation -------------------------------

ACTIVATE = shutil.which("systemd-socket-activate")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_systemd_socket_activate_runs_the_echo_server_on_its_socket(workers):
    if ACTIVATE is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-socket-activate is missing (Debian package systemd)")
        pytest.skip("systemd-socket-activate is not installed (Debian package systemd)")
    port = free_port()
    output = Server([ACTIVATE, "-l", "127.0.0.1:%d" % port, "--fdname=echo",
                     "-E", "PYTHONPATH=" + child_env()["PYTHONPATH"],
                     "-E", "PYTHONUNBUFFERED=1", *activate_env_args(),
                     sys.executable, "-m", "cserver", "echo", "--systemd",
                     "--systemd-name", "echo", "--workers", workers,
                     "--drain-timeout", "0.5"])
    proc = output.proc
    try:
        output.find(r"Listening on 127\.0\.0\.1:%d as 3" % port)
        # the first connection makes systemd-socket-activate exec the server,
        # which accepts it from the inherited socket
        for i in range(5):
            assert _echo_once(("127.0.0.1", port), b"frame %d" % i) == frame(b"frame %d" % i)
        output.find(r"listening on 127\.0\.0\.1:%d \(from systemd\), pid %d, workers %s"
                    % (port, proc.pid, workers))
        if workers == "2":
            # the workers share the inherited socket: no SO_REUSEPORT socket
            # of their own
            served = output.find(r"worker \d serving", count=2)
            assert len(served) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0, output.text()
        output.thread.join(TIMEOUT)   # every line read
        assert "Traceback" not in output.text(), output.text()
    finally:
        _stop(proc, output)


def test_workers_share_an_inherited_socket_and_open_no_other():
    # the supervisor's sockets: with an inherited socket it opens no
    # SO_REUSEPORT socket per worker (a bind there would fail or be wrong)
    script = r"""
import logging, os, socket, sys
import cserver
logging.basicConfig(level=logging.INFO)
class Echo(cserver.FrameHandler):
    def frame_received(self, frame):
        self.send_frame(frame)
s = socket.socket(); s.bind(("127.0.0.1", 0))
server = cserver.SelectorTCPServer.from_socket(s, Echo, workers=3, drain_timeout=0.2)
opened = []
real = server._reuseport_socket
server._reuseport_socket = lambda: opened.append(1) or real()
def stop():
    import time; time.sleep(1.0); server.shutdown()
import threading; threading.Thread(target=stop, daemon=True).start()
server.serve_forever()
server.server_close()
print("reuseport sockets", len(opened), s.fileno())
"""
    out = subprocess.run([sys.executable, "-c", script], env=child_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=TIMEOUT, start_new_session=True)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    assert out.stdout.decode().strip() == "reuseport sockets 0 -1", out.stderr.decode()
    assert len(re.findall(r"worker \d serving", out.stderr.decode())) == 3


def test_cli_systemd_errors_are_one_line():
    out = subprocess.run([sys.executable, "-m", "cserver", "echo", "--systemd"], env=child_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=TIMEOUT)
    assert out.returncode == 2
    assert out.stderr.decode() == ("python -m cserver echo: error: --systemd: no socket was "
                                   "passed (LISTEN_FDS unset, or LISTEN_PID is not this "
                                   "process)\n")
    out = subprocess.run([sys.executable, "-m", "cserver", "echo", "--systemd-name", "x"],
                         env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         timeout=TIMEOUT)
    assert out.returncode == 2 and b"--systemd-name needs --systemd" in out.stderr


def test_selectorserver_module_names():
    assert selectorserver.SelectorServer.from_socket.__doc__
    assert cserver.systemd is systemd
