"""Fixtures for the tests with real balancers (HAProxy, nginx) and systemd.

Each balancer is started by the test itself, from a config the test writes
into a temporary directory, in the foreground (``haproxy -f cfg -db``,
``nginx -c cfg -g 'daemon off;'``), listening on loopback only, and stopped
by its pid in the fixture's teardown (SIGTERM, then SIGKILL if it lingers),
then reaped.  Nothing here starts, stops or touches a system service.

A test that needs a program (``haproxy``, ``nginx`` and its stream module,
``systemd-socket-activate``) or root skips when it is missing, except in CI:
when ``CI`` is set in the environment a missing prerequisite FAILS the test
(``.ci/run`` installs them), so a CI run never passes by skipping.

Ports: cserver backends bind port 0; a balancer's frontend port is picked
free and, if another process takes it before the balancer binds it (xdist
runs several tests at once), the balancer exits with a bind error and is
started again on another port (bounded).  Readiness is waited for by
connecting (HAProxy: its stats socket answers only once every listener is
bound; nginx: its pid file, written after its listeners are bound, then a
connect), bounded in time.

Helpers are fixtures (pytest runs with ``--import-mode=importlib``: test
modules cannot import each other):

* ``need``: ``need.program(name)`` -> path, ``need.root()``, ``need.netns()``;
* ``haproxy``: ``haproxy(config_template)`` -> a running ``Balancer``;
* ``nginx``: ``nginx(config_template)`` -> a running ``Balancer``;
* ``proxy_echo``: ``proxy_echo(proxy_protocol="v2", ...)`` -> a running
  ``SelectorTCPServer`` whose handler answers each frame with a JSON object
  (its ``client_address``, peer and ``get_extra_info("proxy")`` fields);
* ``ask``: ``ask(address, payload, source=None)`` -> that JSON object.
"""
import functools
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import types

import pytest

import cserver
from support import TIMEOUT
from support import free_port as _free_port   # a module global: test_harness patches it
from support import wait_for as _wait_for

#: bounds every wait of these tests (a failure, never a speed assertion)
CI = bool(os.environ.get("CI"))
#: every network namespace these tests create is named
#: ``csrv-<pid of the creating test process>-<random>-<role>``
NETNS_PREFIX = "csrv-"
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def _missing(why):
    """Skip outside CI; in CI a missing prerequisite is a failure."""
    if CI:
        pytest.fail("CI is set but %s (.ci/run installs it)" % (why,), pytrace=False)
    pytest.skip(why)


def _program(name):
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        _missing("%s is not installed" % (name,))
    return path


def _root():
    if os.geteuid() != 0:
        _missing("needs root")


def _netns():
    _root()
    ip = _program("ip")
    probe = "%s%d-probe" % (NETNS_PREFIX, os.getpid())
    made = subprocess.run([ip, "netns", "add", probe], capture_output=True, text=True,
                          timeout=TIMEOUT)
    if made.returncode != 0:
        _missing("ip netns add fails here: %s" % made.stderr.strip())
    subprocess.run([ip, "netns", "del", probe], capture_output=True, timeout=TIMEOUT)
    return ip


@pytest.fixture
def need():
    return types.SimpleNamespace(program=_program, root=_root, netns=_netns, missing=_missing)


@pytest.fixture
def tmp_short():
    """A short scratch directory under /tmp (Unix socket paths are short)."""
    path = tempfile.mkdtemp(prefix="csd", dir="/tmp")
    os.chmod(path, 0o755)   # nginx's workers (another user) read nothing here, but may need to
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _stop(proc, timeout=TIMEOUT):
    """Stop a child we started, by its pid; reap it."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


class Balancer:
    """A balancer process this test started: ``port`` (its TCP frontend),
    ``directory``, ``config`` (the text it runs), ``log()`` (its output)."""

    def __init__(self, proc, port, directory, config, log_path):
        self.proc = proc
        self.port = port
        self.directory = directory
        self.config = config
        self.log_path = log_path

    @property
    def address(self):
        return ("127.0.0.1", self.port)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def admin(self, command):
        """HAProxy only: one command on its stats socket, the answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(os.path.join(self.directory, "admin.sock"))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return b"".join(chunks).decode()
                chunks.append(chunk)

    def servers_up(self, backend="be"):
        """HAProxy only: {server name: "STATUS CHECK_STATUS"} from ``show
        stat``, e.g. ``"UP L7OK"`` once a check passed (a server starts UP
        before any check ran: a test waits for the check's verdict too)."""
        lines = self.admin("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        status = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(",")))
            if row.get("pxname") == backend and row.get("svname") not in ("BACKEND", None):
                status[row["svname"]] = "%s %s" % (row["status"], row.get("check_status", ""))
        return status

    def wait_checked_up(self, names, backend="be", timeout=TIMEOUT):
        """Wait until each server of ``names`` is UP after a passed check
        (L4OK/L6OK/L7OK); return the last status."""
        def checked(status):
            return all(re.match(r"UP L[4-7]OK", status.get(n, "")) for n in names)
        status = self.wait_servers(checked, backend, timeout)
        assert checked(status), (status, self.log())
        return status

    def wait_servers(self, predicate, backend="be", timeout=TIMEOUT):
        """Poll ``show stat`` until predicate(status) holds; return status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.servers_up(backend)
            if predicate(status) or time.monotonic() > deadline:
                return status
            time.sleep(0.05)


_BIND_FAILED = re.compile(r"cannot bind|Address already in use|bind\(\) to .* failed", re.I)


def fill(template, **fields):
    """Replace each ``{name}`` of ``template`` whose name is in ``fields``;
    leave every other brace alone (nginx blocks, HAProxy's ``%{...}``)."""
    return re.sub(r"\{(\w+)\}",
                  lambda m: str(fields[m.group(1)]) if m.group(1) in fields else m.group(0),
                  template)


def _start(argv_for, template, directory, ready, name, attempts=8):
    """Start a balancer from ``template`` (``{port}`` and ``{dir}`` filled
    in) on a free port; retry on a bind failure."""
    last = ""
    for attempt in range(attempts):
        port = _free_port()
        config = fill(template, port=port, dir=directory)
        cfg_path = os.path.join(directory, "%s.cfg" % name)
        with open(cfg_path, "w") as f:
            f.write(config)
        log_path = os.path.join(directory, "%s-%d.log" % (name, attempt))
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv_for(cfg_path), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        balancer = Balancer(proc, port, directory, config, log_path)
        try:
            deadline = time.monotonic() + TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                if ready(balancer):
                    return balancer
                time.sleep(0.02)
        except BaseException:
            _stop(proc)
            raise
        _stop(proc)
        last = balancer.log()
        if not _BIND_FAILED.search(last):
            break
    pytest.fail("%s did not start (exit %r):\n%s\n--- config ---\n%s"
                % (name, proc.returncode, last, config), pytrace=False)


def _haproxy_ready(balancer):
    try:
        return "Name: HAProxy" in balancer.admin("show info")
    except OSError:
        return False


def _nginx_ready(balancer):
    try:
        with open(os.path.join(balancer.directory, "nginx.pid")) as f:
            if int(f.read().strip() or 0) != balancer.proc.pid:
                return False
    except (OSError, ValueError):
        return False
    return True


#: what every HAProxy config of these tests starts with: the admin socket the
#: fixture polls, logs on stderr (the test reads them), loopback timeouts
HAPROXY_GLOBAL = """\
global
    stats socket {dir}/admin.sock mode 600 level admin
    log stderr format raw local0 info
defaults
    mode tcp
    log global
    option tcplog
    timeout connect 2s
    timeout client 20s
    timeout server 20s
"""

#: what every nginx config of these tests starts with (paths in the tmp dir)
NGINX_MAIN = """\
load_module %s;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log info;
worker_processes 1;
events { worker_connections 256; }
""" % NGINX_STREAM_MODULE


@pytest.fixture
def haproxy(tmp_short):
    """haproxy(template, **fields) -> Balancer.  The config is HAPROXY_GLOBAL
    + ``template``, its ``{name}`` fields filled in (``fill``), ``{port}``
    (the frontend port) and ``{dir}`` (the scratch directory) by the fixture."""
    path = _program("haproxy")
    started = []

    def start(template, raw=False, **fields):
        """``raw``: the template is a whole config (no HAPROXY_GLOBAL); it
        must have ``stats socket {dir}/admin.sock`` (readiness)."""
        template = fill(template if raw else HAPROXY_GLOBAL + template, **fields)
        balancer = _start(lambda cfg: [path, "-f", cfg, "-db"], template, tmp_short,
                          _haproxy_ready, "haproxy")
        started.append(balancer)
        return balancer

    yield start
    for balancer in started:
        _stop(balancer.proc)


@pytest.fixture
def nginx(tmp_short):
    """nginx(template, **fields) -> Balancer (foreground, stream module): the
    config is NGINX_MAIN + ``template``, filled in as for ``haproxy``."""
    path = _program("nginx")
    if not os.path.exists(NGINX_STREAM_MODULE):
        _missing("nginx's stream module (libnginx-mod-stream) is not installed")
    started = []

    def start(template, **fields):
        template = fill(NGINX_MAIN + template, **fields)
        balancer = _start(lambda cfg: [path, "-p", tmp_short, "-e", tmp_short + "/nginx-error.log",
                                       "-c", cfg, "-g", "daemon off;"],
                          template, tmp_short, _nginx_ready, "nginx")
        started.append(balancer)
        return balancer

    yield start
    for balancer in started:
        # nginx: SIGTERM is its fast shutdown; the master reaps its workers
        _stop(balancer.proc)


# -- the cserver side ---------------------------------------------------------


def _describe(handler):
    """What a handler knows of its connection, as JSON-able values."""
    transport = handler.transport
    info = transport.get_extra_info("proxy")
    proxy = None
    if info is not None:
        proxy = {"version": info.version, "command": info.command, "family": info.family,
                 "source": _plain(info.source), "destination": _plain(info.destination),
                 "proxied": info.proxied, "authority": info.authority,
                 "crc32c": info.crc32c, "ssl": None}
        if info.ssl is not None:
            proxy["ssl"] = {"ssl": info.ssl.ssl, "version": info.ssl.version,
                            "cipher": info.ssl.cipher, "client": info.ssl.client,
                            "verify": info.ssl.verify}
    ssl_object = transport.get_extra_info("ssl_object")
    return {"client_address": _plain(handler.client_address),
            "peername": _plain(transport.get_extra_info("peername")),
            "proxy": proxy, "pid": os.getpid(),
            "tls": None if ssl_object is None else ssl_object.version()}


def _plain(address):
    if isinstance(address, tuple):
        return list(address)
    if isinstance(address, bytes):
        return address.decode("latin-1")
    return address


class ProxyEcho(cserver.FrameHandler):
    """Answers each frame with a JSON object: the frame (``echo``) and what
    this connection knows of its client.  Each connection's description at
    ``connection_made`` is appended to ``server.seen`` (if the server has
    that list)."""

    def connection_made(self):
        seen = getattr(self.server, "seen", None)
        if seen is not None:
            seen.append(_describe(self))

    def frame_received(self, frame):
        reply = _describe(self)
        reply["echo"] = bytes(frame).decode("latin-1")
        self.send_frame(json.dumps(reply).encode())


class LogCapture(logging.Handler):
    """Collects the records of one logger (errors the server logs)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def errors(self):
        return [r.getMessage() for r in self.records if r.levelno >= logging.WARNING]


@pytest.fixture
def proxy_echo(serve):
    """proxy_echo(**options) -> a running SelectorTCPServer on 127.0.0.1:0
    (``unix=PATH``: a SelectorUnixStreamServer there) with ``ProxyEcho``;
    ``server.captured`` holds what its logger logged, ``server.seen`` what
    each connection knew at ``connection_made``."""
    made = []

    def start(handler=ProxyEcho, host="127.0.0.1", unix=None, **options):
        capture = LogCapture()
        logger = logging.getLogger("cserver.deploy-test.%d" % len(made))
        logger.propagate = False
        logger.addHandler(capture)
        if unix is not None:
            server = cserver.SelectorUnixStreamServer(unix, handler, **options)
        else:
            server = cserver.SelectorTCPServer((host, 0), handler, **options)
        server.logger = logger
        server.captured = capture
        server.seen = []
        made.append((server, logger, capture))
        serve(server)
        return server

    yield start
    for _server, logger, capture in made:
        logger.removeHandler(capture)


def _ask(address, payload=b"hello", source=None, timeout=TIMEOUT):
    """One framed request through ``address``, from ``source`` (a local
    address to bind first, e.g. ``("127.0.0.5", 0)``); the JSON reply."""
    with cserver.FramedClient(address, timeout, source_address=source) as client:
        return json.loads(client.request(payload))


@pytest.fixture
def ask():
    return _ask


@pytest.fixture
def wait_for():
    """wait_for(predicate, timeout) -> its last value (bounded polling)."""
    return functools.partial(_wait_for, interval=0.02)


# -- network namespaces (the scale-out tests) ---------------------------------


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run(argv):
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(argv), done.returncode,
                                                done.stderr.strip()))
    return done.stdout


class Lab:
    """Network namespaces this test creates, the veth pairs between them
    (created inside them: no interface ever appears in the machine's own
    namespace), the processes started in them; ``close()`` stops every
    process by pid and deletes every namespace (their veths go with them).

    Namespaces of a killed earlier run (``csrv-<pid>-...`` whose pid is no
    longer alive) are deleted first, after the processes still in them.
    """

    def __init__(self, ip):
        self.ip = ip
        self.tag = "%s%d-%04x" % (NETNS_PREFIX, os.getpid(), random.getrandbits(16))
        self.namespaces = []
        self.procs = []
        self._clean_leftovers()

    def _clean_leftovers(self):
        for line in _run([self.ip, "netns", "list"]).splitlines():
            name = line.split()[0] if line.split() else ""
            match = re.match(re.escape(NETNS_PREFIX) + r"(\d+)-", name)
            if match and not _pid_alive(int(match.group(1))):
                # a killed run's: its processes (HAProxy, backends) first
                pids = subprocess.run([self.ip, "netns", "pids", name], capture_output=True,
                                      text=True, timeout=TIMEOUT).stdout.split()
                for pid in pids:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                subprocess.run([self.ip, "netns", "del", name], capture_output=True,
                               timeout=TIMEOUT)

    def namespace(self, role):
        name = "%s-%s" % (self.tag, role)
        _run([self.ip, "netns", "add", name])
        self.namespaces.append(name)
        _run([self.ip, "-n", name, "link", "set", "lo", "up"])
        return name

    def link(self, ns_a, if_a, addr_a, ns_b, if_b, addr_b):
        """A veth pair ``if_a`` (in ns_a, ``addr_a``, CIDR) - ``if_b``."""
        _run([self.ip, "link", "add", "name", if_a, "netns", ns_a, "type", "veth",
              "peer", "name", if_b, "netns", ns_b])
        for ns, name, addr in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
            _run([self.ip, "-n", ns, "addr", "add", addr, "dev", name])
            _run([self.ip, "-n", ns, "link", "set", name, "up"])

    def popen(self, ns, argv, **kwargs):
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen([self.ip, "netns", "exec", ns] + list(argv),
                                start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def haproxy(self, ns, template, directory, **fields):
        """A HAProxy in namespace ``ns`` (config: HAPROXY_GLOBAL + template,
        filled in; its admin socket in ``directory``, reachable from here)."""
        path = _program("haproxy")
        balancer = _start(lambda cfg: [self.ip, "netns", "exec", ns, path, "-f", cfg, "-db"],
                          fill(HAPROXY_GLOBAL + template, **fields), directory,
                          _haproxy_ready, "haproxy")
        self.procs.append(balancer.proc)
        return balancer

    def close(self):
        for proc in self.procs:
            for child in children(proc.pid):
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _stop(proc)
        for name in self.namespaces:
            subprocess.run([self.ip, "netns", "del", name], capture_output=True,
                           timeout=TIMEOUT)


def children(pid):
    """The pids of the children of ``pid`` (empty once it is gone)."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


@pytest.fixture
def lab():
    """A ``Lab`` of network namespaces (root and ``ip netns`` required)."""
    ip = _netns()
    made = Lab(ip)
    try:
        yield made
    finally:
        made.close()

