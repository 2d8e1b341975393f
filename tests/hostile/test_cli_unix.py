"""``python -m cserver echo --unix PATH`` against whatever is at PATH.

The attacks: a second instance started on a live server's path (it used to
unlink the live socket and steal the path); a path replaced under a running
server (on exit it used to delete its successor's socket); a regular file
at the path.  Each test checks that the live server still serves a
well-behaved client afterwards.  The library's Unix servers never unlink
anything (the stdlib's do not either).
"""
import errno
import os
import re
import socket
import subprocess
import sys

import pytest

import cserver
import support
from support import TIMEOUT


def echo_once(path, payload=b"still here"):
    return support.echo_once(path, payload)[4:]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cserver", "echo"] + list(args),
                          env=support.child_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_second_instance_does_not_take_a_live_socket(short_tmpdir, workers):
    path = os.path.join(short_tmpdir, "e.sock")
    first = support.cli("--unix", path, "--workers", workers)
    try:
        first.find(r"listening on " + re.escape(path))
        inode = os.stat(path).st_ino
        second = run_cli("--unix", path)
        err = second.stderr.decode()
        assert second.returncode == 2, err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert "another server is listening on --unix " + path in err
        assert os.stat(path).st_ino == inode  # untouched
        assert echo_once(path) == b"still here"
    finally:
        code = first.stop()
    assert code == 0, "".join(first.lines)
    assert not os.path.exists(path)  # its own socket: removed on exit


def test_exit_never_removes_a_successors_socket(short_tmpdir):
    # The first server's path is replaced under it (here: removed, then a
    # second server binds there).  When the first exits it must leave the
    # second's socket alone.
    path = os.path.join(short_tmpdir, "e.sock")
    first = support.cli("--unix", path)
    second = None
    try:
        first.find(r"listening on " + re.escape(path))
        os.unlink(path)
        second = support.cli("--unix", path)
        second.find(r"listening on " + re.escape(path))
        code = first.stop()
        assert code == 0, "".join(first.lines)
        assert os.path.exists(path)
        assert echo_once(path, b"second") == b"second"
    finally:
        first.stop()
        if second is not None:
            assert second.stop() == 0, "".join(second.lines)
    assert not os.path.exists(path)


def test_a_stale_socket_is_replaced(short_tmpdir):
    # A socket file whose server is gone (it refuses connections) is what a
    # killed server leaves: the next start replaces it.
    path = os.path.join(short_tmpdir, "e.sock")
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(path)
    server = support.cli("--unix", path)
    try:
        server.find(r"listening on " + re.escape(path))
        assert echo_once(path) == b"still here"
    finally:
        assert server.stop() == 0, "".join(server.lines)


def test_a_socket_that_is_not_listening_for_streams_is_left_alone(short_tmpdir):
    # A datagram socket bound at the path belongs to some other live program.
    path = os.path.join(short_tmpdir, "d.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:
        other.bind(path)
        result = run_cli("--unix", path)
        err = result.stderr.decode()
        assert result.returncode == 2 and err.count("\n") == 1, err
        assert path in err and "not removed" in err
        assert os.path.exists(path)


def test_a_regular_file_is_left_alone(short_tmpdir):
    path = os.path.join(short_tmpdir, "notes")
    with open(path, "w") as f:
        f.write("precious")
    result = run_cli("--unix", path)
    err = result.stderr.decode()
    assert result.returncode == 2 and err.count("\n") == 1, err
    assert "--unix %s exists and is not a socket" % path in err
    with open(path) as f:
        assert f.read() == "precious"


@pytest.mark.parametrize("module, server_name", [
    ("stdlib", "UnixStreamServer"), ("stdlib", "ThreadingUnixStreamServer"),
    ("cserver", "UnixStreamServer"), ("cserver", "ThreadingUnixStreamServer"),
    ("cserver", "ThreadPoolUnixStreamServer"), ("cserver", "SelectorUnixStreamServer")])
def test_library_unix_servers_never_unlink(stdlib_ss, module, server_name, short_tmpdir):
    # As the stdlib: binding over an existing path (live or stale) fails
    # with EADDRINUSE and leaves the file as it was.
    ss = stdlib_ss if module == "stdlib" else cserver
    handler = cserver.FrameHandler if server_name.startswith("Selector") else \
        ss.StreamRequestHandler
    live_path = os.path.join(short_tmpdir, "live")
    stale_path = os.path.join(short_tmpdir, "stale")
    with socket.socket(socket.AF_UNIX) as live, socket.socket(socket.AF_UNIX) as stale:
        live.bind(live_path)
        live.listen()
        stale.bind(stale_path)
        for path in (live_path, stale_path):
            inode = os.stat(path).st_ino
            with pytest.raises(OSError) as info:
                getattr(ss, server_name)(path, handler)
            assert info.value.errno == errno.EADDRINUSE
            assert os.stat(path).st_ino == inode
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(TIMEOUT)
            c.connect(live_path)  # the live one still accepts
