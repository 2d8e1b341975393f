"""Test-support code shared by the test modules (``import support``).

pytest runs with ``--import-mode=importlib``, so test modules cannot import
each other; ``pyproject.toml`` puts this directory on ``sys.path``
(``pythonpath = ["tests"]``, relative to the rootdir, which tox passes as
``--rootdir``), so this module imports the same way from every test
directory, under xdist, and from tox's runs in a scratch directory.

* ``TIMEOUT``, ``ROOT``, ``child_env()``: the bound for anything that should
  happen "at once", the directory ``cserver`` is imported from, and the
  environment of a child ``python`` that imports the same ``cserver``.
* ``Server`` / ``cli()``: a subprocess (``python -m cserver echo ...``) in its
  own session whose log lines a thread collects; ``find()`` waits for a line
  matching a regex; ``stop()`` (SIGTERM, wait, then SIGKILL the group) and
  ``kill()`` (SIGKILL the group) reap it.
* ``Echo``, ``RawEcho``: handlers that send back each frame / all bytes.
* ``frame()``, ``recv_exactly()``, ``recv_until_eof()``, ``exchange()``,
  ``connect()``, ``connect_to()``, ``echo_once()``: clients of the
  length-prefixed framing.
* ``serving()``: ``serve_forever()`` on a thread, stopped, joined, closed.
* ``wait_for()``, ``free_port()``, ``fd_count()``, ``short_path()``.
"""
import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest

import cserver

#: A generous bound for anything that should happen "at once" in a test;
#: only ever used as a timeout that makes a hung test fail.
TIMEOUT = 10.0
#: The directory the ``cserver`` under test is imported from (the checkout,
#: or the site-packages of tox's venv).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cserver.__file__)))

#: What a child must not inherit from the test's environment: the systemd
#: variables would hand it descriptors or a notify socket that are not its.
_SYSTEMD_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET")


def child_env(**extra):
    """The environment of a child ``python`` that imports this ``cserver``:
    unbuffered, ``ROOT`` first on ``PYTHONPATH``, no systemd variables, then
    ``extra``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for name in _SYSTEMD_VARIABLES:
        env.pop(name, None)
    env.update(extra)
    return env


#: fork() in a multi-threaded process warns (DeprecationWarning, 3.12+); from
#: 3.15 os.fork() raises it in the parent under filterwarnings=error, and
#: every fork next to a serve_forever thread or in pytest-xdist's worker
#: (which runs a second thread) is one.  The stdlib's own tests silence
#: that one warning (warnings_helper.ignore_fork_in_thread_deprecation_warnings);
#: so do the tests that fork, with this mark, and only for it.
FORK_IN_THREADS = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded, use of fork\\(\\) may lead to deadlocks"
    ":DeprecationWarning")

#: What a program that starts its child with an environment of its own
#: (``systemd-socket-activate`` passes on only its ``-E`` variables) must
#: hand on for the child to run as this test does: the sanitizer runtime and
#: its options (tox -e asan), cserver's own switches (tox -e pure).
_HANDED_ON = ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS",
              "CSERVER_PURE", "CSERVER_LOOP")


def activate_env_args(env=None):
    """``-E NAME=VALUE`` arguments of ``systemd-socket-activate`` for the
    variables of ``_HANDED_ON`` that are set in ``env`` (``os.environ``)."""
    env = os.environ if env is None else env
    args = []
    for name in _HANDED_ON:
        if env.get(name):
            args += ["-E", "%s=%s" % (name, env[name])]
    return args


def wait_for(predicate, timeout=TIMEOUT, interval=0.005):
    """Call ``predicate`` until it returns a true value or ``timeout`` passed;
    return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


class Server:
    """A subprocess in its own session (a failed test kills the whole process
    group: a supervisor and any worker it left behind) whose log lines
    (stderr; with ``merge=True`` stdout and stderr together) a thread collects.
    """

    def __init__(self, argv, env=None, stdin=subprocess.DEVNULL, merge=False):
        self.proc = subprocess.Popen(
            argv, env=child_env() if env is None else env, stdin=stdin,
            stdout=subprocess.PIPE if merge else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if merge else subprocess.PIPE,
            start_new_session=True)
        self.lines = []
        stream = self.proc.stdout if merge else self.proc.stderr
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    @property
    def pid(self):
        return self.proc.pid

    def _read(self, stream):
        for line in iter(stream.readline, b""):
            self.lines.append(line.decode("utf-8", "replace"))

    def find(self, pattern, count=1, timeout=TIMEOUT):
        """Wait for ``count`` log lines matching ``pattern``; return their
        matches.  Fails after ``timeout``, or at once when the process has
        exited and all its output is read without them."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            ended = self.proc.poll() is not None and not self.thread.is_alive()
            found = [m for m in (rx.search(line) for line in list(self.lines)) if m]
            if len(found) >= count:
                return found
            if ended or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        raise AssertionError("no %r in:\n%s" % (pattern, "".join(self.lines[-300:])))

    def count(self, pattern):
        """How many log lines match ``pattern`` so far."""
        return sum(1 for line in list(self.lines) if re.search(pattern, line))

    def text(self):
        return "".join(self.lines)

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=TIMEOUT):
        return self.proc.wait(timeout)

    def stop(self):
        """SIGTERM (if still running) and wait for the exit status, which is
        returned; whatever happens, then :meth:`kill`."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(TIMEOUT)
        finally:
            self.kill()

    def kill(self):
        """SIGKILL the process group, reap the process, join the reader,
        close the pipes."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(TIMEOUT)
        self.thread.join(TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def cli(*args, **kwargs):
    """``python -m cserver echo *args`` as a :class:`Server`."""
    return Server([sys.executable, "-m", "cserver", "echo"] + list(args), **kwargs)


class Echo(cserver.FrameHandler):
    """Sends each frame back."""

    def frame_received(self, frame):
        self.send_frame(frame)


class RawEcho(cserver.ConnectionHandler):
    """Sends every byte back (no framing)."""

    def data_received(self, data):
        self.write(data)


def frame(payload, fmt="!I"):
    """``payload`` with its length prefix."""
    return struct.pack(fmt, len(payload)) + payload


def recv_exactly(sock, n):
    """Exactly ``n`` bytes from ``sock``; EOFError if it closes before."""
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise EOFError("connection closed with %d bytes missing" % n)
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_upto(sock, n):
    """Up to ``n`` bytes from ``sock``: fewer if it closes before."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def exchange(sock, payload):
    """Send one frame; return what came back, up to a frame of that size
    (fewer bytes if the peer closed first)."""
    sock.sendall(frame(payload))
    return recv_upto(sock, 4 + len(payload))


def connect_to(address, timeout=TIMEOUT):
    """A stream socket connected to ``address``: a Unix path (str or bytes)
    or a ``(host, port)``."""
    if isinstance(address, (str, bytes)):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return sock
    return socket.create_connection(address[:2], timeout=timeout)


def connect(server, timeout=TIMEOUT):
    """A client socket connected to ``server`` (TCP or Unix stream)."""
    return connect_to(server.server_address, timeout)


def recv_until_eof(sock, limit=1 << 26):
    """What ``sock`` receives until EOF, a reset or ``limit`` bytes."""
    chunks = []
    total = 0
    while total < limit:
        try:
            chunk = sock.recv(1 << 16)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def echo_once(address, payload=b"hello"):
    """One connection, one frame: what came back (see :func:`exchange`)."""
    with connect_to(address) as sock:
        return exchange(sock, payload)


def free_port(host="127.0.0.1"):
    """A TCP port that was free on ``host`` a moment ago (for a program that
    cannot bind port 0 itself; another process may take it meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def fd_count():
    """How many descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def serving(server, *args, name="test-server", check_leaks=False):
    """Run ``server.serve_forever(*args)`` in a thread; at exit shut it down,
    join the thread, close the server.  With ``check_leaks``, also check that
    no thread and no descriptor was left behind (the listening socket existed
    before: the count must come back to that minus one)."""
    if check_leaks:
        before_fds, before_threads = fd_count(), set(threading.enumerate())
    thread = threading.Thread(target=server.serve_forever, args=args, name=name)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()
        assert not thread.is_alive()
    if check_leaks:
        assert wait_for(lambda: set(threading.enumerate()) <= before_threads)
        assert fd_count() <= before_fds - 1


def short_path(tag):
    """A short, unique path under the temporary directory (a Unix socket
    path must fit in 108 bytes)."""
    return os.path.join(tempfile.gettempdir(), "cs-%s-%s" % (tag, uuid.uuid4().hex[:8]))


def openssl_program():
    """The ``openssl`` command line (Debian's openssl package): its path;
    a failure in CI (``.ci/run`` installs it), else a skip."""
    import shutil
    path = shutil.which("openssl") or ("/usr/bin/openssl" if os.path.exists("/usr/bin/openssl")
                                       else None)
    if path is None:
        import pytest
        if os.environ.get("CI"):
            pytest.fail("openssl (Debian's openssl package) is required in CI")
        pytest.skip("openssl is not installed")
    return path
