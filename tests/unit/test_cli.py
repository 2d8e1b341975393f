"""``python -m cserver``: every user mistake is one line on stderr and exit
status 2 (no traceback, nothing logged first); ``--version``; help without
markup; a second stop signal cuts the drain short.

Every test runs the command in a subprocess with a timeout.
"""
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

import cserver
from support import TIMEOUT, child_env, cli

def run_cli(*args):
    """Run the command; on a timeout kill its whole process group (its own
    session: a supervisor and its workers), then fail."""
    proc = subprocess.Popen([sys.executable, "-m", "cserver"] + list(args), env=child_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # a worker it may have left behind
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_one_line_error(result, *words):
    """Exit status 2, nothing on stdout, one line on stderr naming words."""
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert result.stdout == b""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert err.startswith("python -m cserver")
    for word in words:
        assert word in err, (word, err)


@pytest.mark.parametrize("args, words", [
    (["--port", "70000"], ["--port", "70000"]),
    (["--port", "-1"], ["--port", "-1"]),
    (["--port", "eighty"], ["--port", "eighty"]),
    (["--idle-timeout", "-1"], ["--idle-timeout", "-1"]),
    (["--idle-timeout", "0"], ["--idle-timeout", "0"]),
    (["--idle-timeout", "nan"], ["--idle-timeout", "nan"]),
    (["--max-connections", "0"], ["--max-connections", "0"]),
    (["--max-connections", "-5"], ["--max-connections", "-5"]),
    (["--workers", "0"], ["--workers", "0"]),
    (["--workers", "two"], ["--workers", "two"]),
    (["--drain-timeout", "-2"], ["--drain-timeout", "-2"]),
    (["--max-frame-size", "-1"], ["--max-frame-size", "-1"]),
    (["--raw", "--max-frame-size", "10"], ["--max-frame-size", "10", "--raw"]),
    (["--loop", "kqueue"], ["--loop", "kqueue"]),
    (["--bogus"], ["--bogus"]),
    (["--proxy-protocol", "v3"], ["--proxy-protocol", "v3"]),
    (["--proxy-protocol", "v2", "--trusted-proxy", "10.0.0.1/8"],
     ["trusted_proxies", "10.0.0.1/8"]),
    (["--proxy-protocol", "v2", "--trusted-proxy", "banana"], ["trusted_proxies", "banana"]),
    (["--trusted-proxy", "10.0.0.0/8"], ["--trusted-proxy", "--proxy-protocol"]),
])
def test_bad_values_are_one_line(args, words):
    assert_one_line_error(run_cli("echo", *args), *words)


def test_no_command_is_one_line():
    assert_one_line_error(run_cli(), "COMMAND")


def test_bad_host_is_one_line():
    assert_one_line_error(run_cli("echo", "--host", "no-such-host.invalid", "--port", "0"),
                          "no-such-host.invalid")


def test_host_not_on_this_machine_is_one_line():
    # 192.0.2.0/24 is TEST-NET-1: never a local address
    assert_one_line_error(run_cli("echo", "--host", "192.0.2.1", "--port", "0"), "192.0.2.1")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_address_in_use_is_one_line(workers):
    # The other server sets SO_REUSEPORT as cserver's workers do: without
    # the probe, both would start and split the traffic.
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = str(other.getsockname()[1])
        result = run_cli("echo", "--port", port, "--workers", workers)
    assert_one_line_error(result, "127.0.0.1:" + port, "in use" if workers == "1" else
                          "another server")


@pytest.mark.parametrize("path", ["/nonexistent-cserver-dir/echo.sock",
                                  "/tmp/" + "x" * 120,
                                  "/dev/null/echo.sock"])
def test_unusable_unix_path_is_one_line(path):
    assert_one_line_error(run_cli("echo", "--unix", path), path)


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "cserver %s\n" % cserver.version


@pytest.mark.parametrize("args", [["--help"], ["echo", "--help"]])
def test_help_has_no_markup(args):
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "usage: python -m cserver" in text
    for markup in ("``", ":class:", ":func:", "**"):
        assert markup not in text


# -- a second stop signal cuts the drain short ----------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_second_signal_cuts_the_drain_short(workers):
    # A client that sends and never reads leaves replies buffered in the
    # server; the first SIGINT starts a 60 s drain, the second ends it.
    output = cli("--port", "0", "--workers", workers, "--drain-timeout", "60", merge=True)
    proc, lines = output.proc, output.lines
    client = None
    try:
        port = int(output.find(r"listening on 127\.0\.0\.1:(\d+)")[0].group(1))
        if workers != "1":
            output.find(r"supervisor pid")
            # every slot's worker is up: a connection queued on the socket
            # of a slot whose worker is not yet serving would never be
            # accepted, so the first signal would find nothing to drain
            output.find(r"serving on", count=int(workers))
        client = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.settimeout(0.5)
        payload = struct.pack("!I", 60000) + b"x" * 60000
        try:
            for _ in range(2000):  # bounded: the server stops reading long before
                client.sendall(payload)
        except socket.timeout:
            pass  # the server's write buffer is full: it paused reading us
        else:
            raise AssertionError("the server never pushed back")
        proc.send_signal(signal.SIGINT)
        output.find(r"SIGINT: stopping" if workers == "1" else r"SIGTERM: stopping")
        time.sleep(0.2)
        assert proc.poll() is None  # draining: the client reads nothing
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(TIMEOUT)
        assert time.monotonic() - started < TIMEOUT  # well inside the 60 s drain
    finally:
        if client is not None:
            client.close()
        output.kill()   # whatever it left behind
    assert code == 0, "".join(lines)
    assert any("again: cutting the drain short" in line for line in lines), "".join(lines)
    assert "Traceback" not in "".join(lines)


@pytest.mark.parametrize("trusted, served", [
    ([], True),                                               # the default: loopback
    (["--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "127.0.0.1/32"], True),
    (["--trusted-proxy", "10.0.0.0/8"], False),
])
def test_proxy_protocol_flags(trusted, served):
    output = cli("--port", "0", "--proxy-protocol", "v2", *trusted, merge=True)
    proc, lines = output.proc, output.lines
    try:
        port = int(output.find(r"listening on 127\.0\.0\.1:(\d+)")[0].group(1))
        header = (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes([203, 0, 113, 7])
                  + bytes([192, 0, 2, 1]) + struct.pack("!HH", 51000, 443))
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
            client.sendall(header + struct.pack("!I", 4) + b"ping")
            reply = b""
            while len(reply) < 8:
                try:
                    chunk = client.recv(8 - len(reply))
                except ConnectionResetError:   # closed with our bytes unread
                    break
                if not chunk:
                    break
                reply += chunk
        assert reply == (struct.pack("!I", 4) + b"ping" if served else b"")
        proc.send_signal(signal.SIGINT)
        code = proc.wait(TIMEOUT)
    finally:
        output.kill()
    assert code == 0, "".join(lines)
    if not served:
        assert any("not a trusted proxy" in line for line in lines), "".join(lines)
