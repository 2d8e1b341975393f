"""SIGHUP reloads of ``workers=N`` and ``drain_delay``, quick cases (the
50-reload run under load is tests/soak/test_reload_soak.py).

Each server runs in its own session (a failed test kills the process
group); every wait is bounded by TIMEOUT.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import cserver

from support import TIMEOUT, Server, child_env, echo_once, exchange, frame


def _start(argv):
    """``argv`` in its own session: ``(proc, its log lines)``."""
    server = Server(argv)
    return server.proc, server


def _cli(*args):
    return _start([sys.executable, "-m", "cserver", "echo", "--port", "0"] + list(args))


def _finish(proc, output):
    output.kill()


def _echo_once(port, payload=b"hello"):
    return echo_once(("127.0.0.1", port), payload)


def _socket_inodes(pid):
    """The socket inodes among ``pid``'s descriptors."""
    inodes = set()
    for name in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, name))
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m:
            inodes.add(int(m.group(1)))
    return inodes


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def _worker_pids(output, count):
    return {int(m.group(2)) for m in output.find(r"worker (\d) serving on .* pid (\d+)", count)}


def test_a_reload_replaces_the_workers_and_keeps_the_listening_sockets():
    proc, output = _cli("--workers", "2", "--drain-timeout", "5")
    try:
        port = int(output.find(r"listening on 127\.0\.0\.1:(\d+)")[0].group(1))
        old = {int(m.group(2)) for m in output.find(r"worker (\d) serving on .* pid (\d+)", 2)}
        output.find(r"supervisor pid \d+: 2 workers")
        before = _socket_inodes(proc.pid)
        # a connection served by an old worker, open across the reload
        held = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        assert exchange(held, b"before") == frame(b"before")
        proc.send_signal(signal.SIGHUP)
        done = output.find(r"reload 1 done: workers \[(\d+), (\d+)\]")[0]
        new = {int(done.group(1)), int(done.group(2))}
        assert new.isdisjoint(old) and len(new) == 2, output.text()
        # the supervisor's listening sockets are the very same ones
        assert _socket_inodes(proc.pid) == before
        assert _echo_once(port) == frame(b"hello")
        # the old worker that holds the connection still answers on it
        assert exchange(held, b"after") == frame(b"after")
        output.find(r"retired worker \d \(pid \d+\) exited", 1)   # the idle one
        held.close()
        output.find(r"retired worker \d \(pid \d+\) exited", 2)   # once its peer closed
        assert not [pid for pid in old if _alive(pid)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0, output.text()
    finally:
        _finish(proc, output)
    assert "Traceback" not in output.text(), output.text()


_FAILING = r"""
import logging, os, sys
import cserver
from cserver import selectorserver
logging.basicConfig(level=logging.INFO, format="%(message)s")
marker, mode = sys.argv[1], sys.argv[2]
selectorserver.READY_TIMEOUT = 1.0

class Echo(cserver.FrameHandler):
    def frame_received(self, frame):
        self.send_frame(frame)

class Server(cserver.SelectorTCPServer):
    def _new_core(self):
        if os.path.exists(marker):
            if mode == "crash":
                raise RuntimeError("this generation cannot start")
            import time
            time.sleep(30)   # never ready (killed by the supervisor)
        return super()._new_core()

server = Server(("127.0.0.1", 0), Echo, workers=2, drain_timeout=0.5)
print("port", server.server_address[1], flush=True, file=sys.stderr)
server.serve_forever()
server.server_close()
"""


@pytest.mark.parametrize("mode, reason", [
    ("crash", r"exited before it was ready \(exit status 1\)"),
    ("hang", r"was not ready within 1 s \(killed by SIGKILL\)"),
])
def test_a_new_worker_that_fails_leaves_the_old_one_serving(tmp_path, mode, reason):
    marker = str(tmp_path / "fail")
    proc, output = _start([sys.executable, "-c", _FAILING, marker, mode])
    try:
        port = int(output.find(r"^port (\d+)")[0].group(1))
        old = _worker_pids(output, 2)
        output.find(r"supervisor pid \d+: 2 workers")
        open(marker, "w").close()
        proc.send_signal(signal.SIGHUP)
        failures = output.find(r"reload 1: the new worker \d \(pid \d+\) %s; the old one "
                               r"\(pid (\d+)\) keeps serving" % reason, 2)
        assert {int(m.group(1)) for m in failures} == old
        output.find(r"reload 1 done: workers \[\d+, \d+\]; 2 new workers failed")
        assert all(_alive(pid) for pid in old)
        for i in range(4):
            assert _echo_once(port, b"%d" % i) == frame(b"%d" % i)
        # the old generation is still the one the supervisor restarts and stops
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0, output.text()
        output.thread.join(TIMEOUT)   # every line read
        assert "all workers stopped" in output.text()
        assert "did not stop in time" not in output.text()
    finally:
        _finish(proc, output)


def test_sighups_during_a_reload_are_coalesced():
    proc, output = _cli("--workers", "2", "--drain-timeout", "0.5")
    try:
        output.find(r"supervisor pid \d+: 2 workers")
        _worker_pids(output, 2)
        for _ in range(5):
            proc.send_signal(signal.SIGHUP)
        output.find(r"reload 1 done")
        time.sleep(1.0)   # long enough for any further reload to be done
        reloads = output.count(r"reload \d+ done")
        assert 1 <= reloads <= 2, output.text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0, output.text()
    finally:
        _finish(proc, output)


def test_sighup_with_one_worker_is_logged_and_ignored():
    proc, output = _cli("--workers", "1")
    try:
        port = int(output.find(r"listening on 127\.0\.0\.1:(\d+)")[0].group(1))
        proc.send_signal(signal.SIGHUP)
        output.find(r"SIGHUP ignored: a reload needs --workers 2 or more")
        assert proc.poll() is None
        assert _echo_once(port) == frame(b"hello")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0, output.text()
    finally:
        _finish(proc, output)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_drain_delay_keeps_accepting_after_sigterm(workers):
    delay = 1.5
    proc, output = _cli("--workers", workers, "--drain-delay", str(delay),
                        "--drain-timeout", "0.5")
    try:
        port = int(output.find(r"listening on 127\.0\.0\.1:(\d+)")[0].group(1))
        if workers == "2":
            _worker_pids(output, 2)
        assert _echo_once(port) == frame(b"hello")
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output.find(r"accepting for 1\.5 s more \(drain_delay\), then stopping")
        accepted = 0
        while time.monotonic() - sent < delay - 0.5:
            # new connections during the delay are accepted and served
            assert _echo_once(port, b"during") == frame(b"during"), output.text()
            accepted += 1
            time.sleep(0.1)
        assert accepted >= 3
        code = proc.wait(TIMEOUT)
        assert time.monotonic() - sent >= delay   # it did wait for its delay
        assert code == 0, output.text()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    finally:
        _finish(proc, output)


def test_a_second_sigterm_cuts_the_drain_delay_short():
    proc, output = _cli("--workers", "1", "--drain-delay", "30")
    try:
        output.find(r"listening on")
        proc.send_signal(signal.SIGTERM)
        output.find(r"drain_delay")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0, output.text()
    finally:
        _finish(proc, output)


@pytest.mark.parametrize("value, error", [
    (-1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
    (True, TypeError), ("1", TypeError), (None, TypeError),
])
def test_drain_delay_is_validated(value, error):
    class Echo(cserver.FrameHandler):
        pass

    with pytest.raises(error, match="drain_delay must be"):
        cserver.SelectorTCPServer(("127.0.0.1", 0), Echo, drain_delay=value)


@pytest.mark.parametrize("text", ["-1", "nan", "soon"])
def test_cli_drain_delay_is_validated(text):
    out = subprocess.run([sys.executable, "-m", "cserver", "echo", "--drain-delay", text],
                         env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         timeout=TIMEOUT)
    assert out.returncode == 2
    assert b"--drain-delay" in out.stderr and b"Traceback" not in out.stderr


def test_shutdown_with_drain_delay_keeps_accepting_then_stops():
    class Echo(cserver.FrameHandler):
        def frame_received(self, frame):
            self.send_frame(frame)

    server = cserver.SelectorTCPServer(("127.0.0.1", 0), Echo, drain_delay=0.6,
                                       drain_timeout=0.5)
    port = server.server_address[1]
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    stopper = threading.Thread(target=server.shutdown, daemon=True)
    try:
        assert _echo_once(port) == frame(b"hello")
        asked = time.monotonic()
        stopper.start()
        time.sleep(0.2)
        # within the delay: a new connection is accepted and served
        assert _echo_once(port, b"late") == frame(b"late")
        assert server.stats()["accepting"] is True
        stopper.join(TIMEOUT)
        assert not stopper.is_alive()
        assert time.monotonic() - asked >= 0.6   # shutdown() waited for the delay
        assert server.stats()["accepting"] is False
    finally:
        server.shutdown()
        serving.join(TIMEOUT)
        if stopper.is_alive():
            stopper.join(TIMEOUT)
        server.server_close()


def test_a_stop_signal_before_the_loop_runs_still_waits_for_drain_delay():
    # a SIGTERM that lands between the constructor (the socket listens) and
    # the loop's start: the connections queued meanwhile and those of the
    # next drain_delay seconds are served (it used to stop at once)
    class Echo(cserver.FrameHandler):
        def frame_received(self, frame):
            self.send_frame(frame)

    server = cserver.SelectorTCPServer(("127.0.0.1", 0), Echo, drain_delay=0.6,
                                       drain_timeout=0.5)
    port = server.server_address[1]
    early = socket.create_connection(("127.0.0.1", port), timeout=3.0)   # queued
    server.stop_on_signal(signal.SIGTERM)
    started = time.monotonic()
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        assert exchange(early, b"queued") == frame(b"queued")
        with socket.create_connection(("127.0.0.1", port), timeout=3.0) as late:
            assert exchange(late, b"late") == frame(b"late")
        serving.join(TIMEOUT)
        assert not serving.is_alive()
        assert time.monotonic() - started >= 0.6
    finally:
        early.close()
        server.shutdown()
        serving.join(TIMEOUT)
        server.server_close()


def test_two_stop_signals_before_the_loop_runs_stop_it_at_once():
    class Echo(cserver.FrameHandler):
        pass

    server = cserver.SelectorTCPServer(("127.0.0.1", 0), Echo, drain_delay=30)
    try:
        server.stop_on_signal(signal.SIGTERM)
        server.stop_on_signal(signal.SIGTERM)
        serving = threading.Thread(target=server.serve_forever, daemon=True)
        serving.start()
        serving.join(TIMEOUT)
        assert not serving.is_alive()
    finally:
        server.server_close()


def test_a_reload_on_a_unix_socket_keeps_the_one_shared_socket():
    path = "/tmp/cs-rl-%d.sock" % os.getpid()
    proc, output = _start([sys.executable, "-m", "cserver", "echo", "--unix", path,
                           "--workers", "2", "--drain-timeout", "1"])
    try:
        output.find(r"listening on " + re.escape(path))
        old = _worker_pids(output, 2)
        identity = os.stat(path).st_ino
        for number in (1, 2):
            with socket.socket(socket.AF_UNIX) as c:
                c.settimeout(TIMEOUT)
                c.connect(path)
                assert exchange(c, b"gen %d" % number) == frame(b"gen %d" % number)
            proc.send_signal(signal.SIGHUP)
            output.find(r"reload %d done" % number)
        assert os.stat(path).st_ino == identity   # the same socket file, never re-bound
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(TIMEOUT)
            c.connect(path)
            assert exchange(c, b"after") == frame(b"after")
        output.find(r"retired worker \d \(pid \d+\) exited", 4)
        assert not [pid for pid in old if _alive(pid)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0, output.text()
    finally:
        _finish(proc, output)
    assert not os.path.exists(path)   # removed by the CLI at exit
