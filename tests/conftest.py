"""Shared fixtures for the cserver tests.

pytest runs with ``--import-mode=importlib``: test modules cannot import each
other, so everything shared lives here, as fixtures.

* ``ss``: parametrizes a test over the stdlib ``socketserver`` (the oracle of
  the behaviour) and ``cserver``; the test id says which one failed.
* ``stdlib_ss``: the interpreter's own ``socketserver`` module.
* ``serve``: starts ``serve_forever()`` on a thread; teardown shuts the
  server down, closes it and joins the thread, whatever the test did.
* ``short_tmpdir``: a short directory under /tmp for Unix socket paths.
* ``net``: small blocking client helpers (connect, send and read to EOF,
  UDP and Unix datagram exchanges), every socket with a timeout.
* ``fd_count``, ``wait_until``: leak checks and bounded polling.
"""
import importlib
import os
import shutil
import socket
import sys
import sysconfig
import tempfile
import threading
import types

import pytest

import cserver
from support import TIMEOUT
from support import fd_count as _fd_count
from support import wait_for as _wait_until


def _load_stdlib_socketserver():
    module = sys.modules.get("socketserver")
    if module is None or module is cserver:
        # Nothing in this process may have installed cserver, but be safe:
        # load the stdlib file itself under its own name.
        saved = sys.modules.pop("socketserver", None)
        try:
            module = importlib.import_module("socketserver")
        finally:
            if saved is not None:
                sys.modules["socketserver"] = saved
    stdlib_dir = os.path.realpath(sysconfig.get_paths()["stdlib"])
    assert os.path.realpath(module.__file__).startswith(stdlib_dir), module.__file__
    return module


@pytest.fixture(scope="session")
def stdlib_ss():
    return _load_stdlib_socketserver()


@pytest.fixture(params=["stdlib", "cserver"])
def ss(request):
    """The module under test: the stdlib socketserver, then cserver."""
    if request.param == "stdlib":
        return _load_stdlib_socketserver()
    return cserver


@pytest.fixture
def serve():
    """serve(server, poll_interval=0.05) -> thread running serve_forever().

    At teardown every started server is shut down, closed and its thread
    joined (a test may have done some of that already).
    """
    started = []

    def start(server, poll_interval=0.05):
        errors = []

        def run():
            try:
                server.serve_forever(poll_interval)
            except BaseException as exc:  # reported at teardown
                errors.append(exc)

        thread = threading.Thread(target=run, name="serve_forever", daemon=True)
        started.append((server, thread, errors))
        thread.start()
        return thread

    yield start
    problems = []
    for server, thread, errors in started:
        if thread.is_alive():
            server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()
        if thread.is_alive():
            problems.append("serve_forever thread did not stop")
        problems.extend(repr(e) for e in errors)
    assert not problems, problems


@pytest.fixture
def short_tmpdir():
    path = tempfile.mkdtemp(prefix="cs", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fd_count():
    return _fd_count


@pytest.fixture
def wait_until():
    return _wait_until


def _connect(address, family=None):
    if family is None:
        family = socket.AF_UNIX if isinstance(address, (str, bytes)) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _recv_all(sock):
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _stream_exchange(address, payload):
    """Connect, send payload, half-close, read the reply to EOF."""
    with _connect(address) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return _recv_all(sock)


def _dgram_exchange(address, payload, family=socket.AF_INET, bind=None):
    """Send one datagram and return the first reply."""
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        if bind is not None:
            sock.bind(bind)
        sock.sendto(payload, address)
        data, _ = sock.recvfrom(65536)
        return data


@pytest.fixture
def net():
    return types.SimpleNamespace(
        connect=_connect, recv_all=_recv_all, stream_exchange=_stream_exchange,
        dgram_exchange=_dgram_exchange, TIMEOUT=TIMEOUT)


@pytest.fixture
def thread_names():
    """thread_names() -> sorted names of the live threads."""
    return lambda: sorted(t.name for t in threading.enumerate())
