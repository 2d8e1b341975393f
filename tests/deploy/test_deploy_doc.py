"""docs/deploy.md's examples, run as written: the block after each
``<!-- tested: NAME -->`` marker is taken from the file itself.

Only these substitutions are made (a deployment's addresses, ports and paths
become the test's; nothing else of a config changes):

* app (``/srv/echo/app.py``): the balancers' addresses ``10.0.0.2/32`` and
  ``10.0.0.3/32`` in ``trusted_proxies`` -> ``127.0.0.1/32``;
* echo.socket: ``ListenStream=9000`` -> ``-l 127.0.0.1:<free port>`` of
  ``systemd-socket-activate``, ``FileDescriptorName=`` -> ``--fdname=``;
* echo.service: in ``ExecStart=``, ``/usr/bin/python3`` -> this interpreter,
  ``/srv/echo/app.py`` -> the app written to a scratch directory; in
  ``ExecReload=``, ``$MAINPID`` -> the server's pid (what systemd does);
* haproxy: ``bind :8000`` -> ``bind 127.0.0.1:<free port>``, the servers
  ``10.0.0.11:9000``/``10.0.0.12:9000`` -> the two app instances' ports,
  ``/run/haproxy/admin.sock`` -> the scratch directory, ``inter 2s`` ->
  ``inter 200ms`` (a shorter test);
* nginx: ``listen 8000;`` -> ``listen 127.0.0.1:<free port>;``, the servers
  as for haproxy; the main context (``load_module``, pid, ``events``) is the
  fixture's, as Debian's nginx.conf has its own;
* drain: each ``echo "COMMAND" | socat stdio SOCKET`` line's COMMAND is sent
  to the HAProxy example's admin socket as is (the socket's path is the
  test's); the ``systemctl restart`` line is not run.
"""
import os
import random
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest
import support

ROOT = os.environ.get("CSERVER_SOURCE_TREE") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "deploy.md")
TIMEOUT = 20.0


def _blocks():
    with open(DOC) as f:
        text = f.read()
    found = dict(re.findall(r"<!-- tested: (\S+) -->\s*\n```[\w.-]*\n(.*?)^```", text,
                            re.S | re.M))
    assert set(found) == {"app", "echo.socket", "echo.service", "haproxy", "nginx",
                          "drain"}, found
    return found


def _sub(text, old, new):
    """Replace ``old`` (it must be there: a doc change fails the test)."""
    assert old in text, (old, text)
    return text.replace(old, new)


def _ini(text, key):
    values = re.findall(r"^%s=(.*)$" % re.escape(key), text, re.M)
    assert len(values) == 1, (key, text)
    return values[0].strip()


def _v2_header(source, port):
    """A v2 PROXY TCP4 header, as a balancer at 127.0.0.1 would send it."""
    addresses = socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + struct.pack(
        "!HH", port, 9000)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack(
        "!H", len(addresses)) + addresses


def _exchange(address, data, frames, source=None):
    with socket.create_connection(address, TIMEOUT, source) as sock:
        sock.sendall(data)
        got = b""
        want = sum(4 + len(f) for f in frames)
        while len(got) < want:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got, sock.getsockname()


def _frames(*payloads):
    return b"".join(struct.pack("!I", len(p)) + p for p in payloads)


class App:
    """One instance of docs/deploy.md's application under
    systemd-socket-activate, with the unit's ExecStart=."""

    def __init__(self, directory, name, activate, blocks):
        self.directory = directory
        self.log_path = os.path.join(directory, "%s.log" % name)
        app = blocks["app"]
        for balancer in ("10.0.0.2/32", "10.0.0.3/32"):
            app = _sub(app, balancer, "127.0.0.1/32")
        app_path = os.path.join(directory, "app.py")
        with open(app_path, "w") as f:
            f.write(app)
        assert _ini(blocks["echo.socket"], "ListenStream") == "9000"
        fdname = _ini(blocks["echo.socket"], "FileDescriptorName")
        exec_start = shlex.split(_ini(blocks["echo.service"], "ExecStart"))
        assert exec_start[:2] == ["/usr/bin/python3", "/srv/echo/app.py"], exec_start
        command = [sys.executable, app_path] + exec_start[2:]
        self.exec_reload = _ini(blocks["echo.service"], "ExecReload")
        self.notify_path = os.path.join(directory, "%s.notify" % name)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(0.2)
        self.states = []
        env = ["-E", "NOTIFY_SOCKET=" + self.notify_path, "-E", "PYTHONUNBUFFERED=1",
               *support.activate_env_args()]
        if os.environ.get("PYTHONPATH"):
            env += ["-E", "PYTHONPATH=" + os.environ["PYTHONPATH"]]
        for attempt in range(8):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    [activate, "-l", "127.0.0.1:%d" % self.port, "--fdname=" + fdname]
                    + env + command, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True)
            if self._wait_log(r"Listening on 127\.0\.0\.1:%d" % self.port, 10, quiet=True):
                return
            self.stop()
        pytest.fail("systemd-socket-activate did not listen:\n" + self.log())

    @property
    def address(self):
        return ("127.0.0.1", self.port)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def _wait_log(self, pattern, timeout=TIMEOUT, quiet=False):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.findall(pattern, self.log())
            if found:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        if quiet:
            return None
        pytest.fail("not in the log: %r\n%s" % (pattern, self.log()))

    def wait_state(self, state, count=1, timeout=TIMEOUT):
        """Wait until ``count`` notify datagrams carried ``state``."""
        deadline = time.monotonic() + timeout
        while sum(s.split("\n").count(state) for s in self.states) < count:
            if time.monotonic() > deadline:
                pytest.fail("no %s (x%d) from the server: %r\n%s"
                            % (state, count, self.states, self.log()))
            try:
                self.states.append(self.notify.recv(4096).decode())
            except socket.timeout:
                pass

    def reload(self):
        """The unit's ExecReload=, $MAINPID filled in, as systemd runs it."""
        argv = shlex.split(self.exec_reload.replace("$MAINPID", str(self.proc.pid)))
        subprocess.run(argv, check=True, timeout=TIMEOUT)

    def stop(self):
        if self.proc.poll() is None:
            # SIGTERM starts drain_delay (5 s); a second one cuts it short
            self.proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(TIMEOUT)
        self.notify.close()


@pytest.fixture
def apps(need, tmp_short):
    activate = need.program("systemd-socket-activate")
    if not os.path.exists("/bin/kill"):        # the unit's ExecReload=
        need.missing("/bin/kill (procps) is not installed")
    blocks = _blocks()
    started = []

    def start(name):
        app = App(tmp_short, name, activate, blocks)
        started.append(app)
        return app

    yield start
    for app in started:
        app.stop()


def _client_host():
    return "127.0.0.%d" % random.randint(2, 254)


def test_the_systemd_units_run_the_app_and_reload_it(apps):
    app = apps("app1")
    # the first connection makes systemd-socket-activate exec the unit's
    # ExecStart=; it arrives from "a balancer" (127.0.0.1) with a header
    payloads = [b"one", b"two"]
    got, _ = _exchange(app.address, _v2_header("203.0.113.7", 51234) + _frames(*payloads),
                       payloads)
    assert got == _frames(*payloads)
    app.wait_state("READY=1")
    app._wait_log(r"echo: client 203\.0\.113\.7:51234 via 127\.0\.0\.1")
    # ExecReload=: new workers, same socket, then READY=1 again
    app.reload()
    app.wait_state("RELOADING=1")
    app._wait_log(r"reload 1 done")
    app.wait_state("READY=1", count=2)
    got, _ = _exchange(app.address, _v2_header("203.0.113.8", 40000) + _frames(b"after"),
                       [b"after"])
    assert got == _frames(b"after")
    app._wait_log(r"echo: client 203\.0\.113\.8:40000 via 127\.0\.0\.1")
    # a peer that is not a trusted balancer is closed before any read
    with socket.create_connection(app.address, TIMEOUT, (_client_host(), 0)) as sock:
        sock.sendall(_v2_header("203.0.113.9", 1) + _frames(b"x"))
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass


def test_the_haproxy_example_in_front_of_two_instances(apps, haproxy):
    blocks = _blocks()
    app1, app2 = apps("app1"), apps("app2")
    # the checks (v2 LOCAL header + a frame) start both instances, pass
    balancer = _haproxy_example(blocks, haproxy, app1, app2)
    for app in (app1, app2):
        app.wait_state("READY=1")
    clients = []
    for i in range(6):
        host = _client_host()
        payloads = [b"frame %d" % i, b"and more"]
        got, local = _exchange(balancer.address, _frames(*payloads), payloads, (host, 0))
        assert got == _frames(*payloads)
        clients.append(local)
    logs = app1.log() + app2.log()
    for host, port in clients:
        assert "echo: client %s:%d via 127.0.0.1" % (host, port) in logs, logs
    assert "Traceback" not in logs and "closing connection" not in logs, logs


def _haproxy_example(blocks, haproxy, app1, app2):
    config = blocks["haproxy"]
    config = _sub(config, "bind :8000", "bind 127.0.0.1:{port}")
    config = _sub(config, "/run/haproxy/admin.sock", "{dir}/admin.sock")
    config = _sub(config, "10.0.0.11:9000", "127.0.0.1:%d" % app1.port)
    config = _sub(config, "10.0.0.12:9000", "127.0.0.1:%d" % app2.port)
    config = _sub(config, "inter 2s", "inter 200ms")
    balancer = haproxy(config, raw=True)
    status = balancer.wait_checked_up(["app1", "app2"], backend="echo_servers", timeout=30)
    assert status == {"app1": "UP L7OK", "app2": "UP L7OK"}
    return balancer


def _served_by(apps_, host, port):
    for app in apps_:
        if "echo: client %s:%d via 127.0.0.1" % (host, port) in app.log():
            return app
    return None


def test_the_drain_procedure_of_the_rolling_restart(apps, haproxy):
    blocks = _blocks()
    lines = blocks["drain"].strip().splitlines()
    commands = [re.match(r'echo "(.*)" \| socat stdio /run/haproxy/admin\.sock$', line)
                for line in lines]
    assert [bool(c) for c in commands] == [True, True, False, True], lines
    assert lines[2] == "systemctl restart echo"
    drain, show, ready = (c.group(1) for c in commands if c)
    app1, app2 = apps("app1"), apps("app2")
    balancer = _haproxy_example(blocks, haproxy, app1, app2)

    def one_request():
        host = _client_host()
        got, local = _exchange(balancer.address, _frames(b"x"), [b"x"], (host, 0))
        assert got == _frames(b"x")
        deadline = time.monotonic() + TIMEOUT
        while True:
            app = _served_by((app1, app2), host, local[1])
            if app is not None or time.monotonic() > deadline:
                return app
            time.sleep(0.02)

    assert balancer.admin(drain).strip() == ""
    shown = balancer.admin(show).splitlines()
    columns = shown[0].lstrip("# ").split()
    rows = {line.split()[0]: dict(zip(columns, line.split())) for line in shown[1:] if line}
    assert rows["echo_servers/app1"]["used_cur"] == "0", shown     # nothing open on app1
    assert balancer.servers_up("echo_servers")["app1"].startswith("DRAIN")
    assert [one_request() for _ in range(6)] == [app2] * 6     # nothing new to app1
    assert balancer.admin(ready).strip() == ""
    served = [one_request() for _ in range(8)]                  # leastconn: both again
    assert app1 in served and None not in served, served


def test_the_nginx_example_in_front_of_two_instances(apps, nginx):
    blocks = _blocks()
    app1, app2 = apps("app1"), apps("app2")
    config = blocks["nginx"]
    config = _sub(config, "listen 8000;", "listen 127.0.0.1:{port};")
    config = _sub(config, "10.0.0.11:9000", "127.0.0.1:%d" % app1.port)
    config = _sub(config, "10.0.0.12:9000", "127.0.0.1:%d" % app2.port)
    balancer = nginx(config)
    clients = []
    for i in range(4):
        host = _client_host()
        payloads = [b"frame %d" % i]
        got, local = _exchange(balancer.address, _frames(*payloads), payloads, (host, 0))
        assert got == _frames(*payloads), (got, app1.log(), app2.log())
        clients.append(local)
    logs = app1.log() + app2.log()
    for host, port in clients:
        assert "echo: client %s:%d via 127.0.0.1" % (host, port) in logs, logs
    assert "Traceback" not in logs and "closing connection" not in logs, logs
