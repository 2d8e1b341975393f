"""Stop signals reach a server with workers, whenever they arrive.

The supervisor of ``workers=N`` is compiled code: CPython runs a Python
signal handler only when something calls ``PyErr_CheckSignals()``, which
compiled code between two C calls never does.  A SIGTERM that was caught
while the supervisor was not inside an interruptible wait (or that the
kernel delivered to another of its threads) used to stay pending until a
second signal.  The supervisor now reads its stop signals from a wake-up fd.

- a signal caught by another thread of the supervisor (deterministic: the
  state a signal arriving between two waits leaves behind);
- SIGTERM and SIGINT at random moments under load, through the CLI, bounded
  in count: every one stops the server (supervisor and workers) within a
  bound, with a clean exit and no worker left behind.
"""
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from support import TIMEOUT, Server, child_env, cli

def _finish(proc, output):
    # The server runs in its own session: a failed test kills its whole
    # process group (the supervisor and any worker it left behind).
    output.kill()


SIDE_THREAD_SCRIPT = r"""
import logging, signal, sys, threading
import cserver

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

class Echo(cserver.FrameHandler):
    def frame_received(self, frame):
        self.send_frame(frame)

server = cserver.SelectorTCPServer(("127.0.0.1", 0), Echo, workers=2, drain_timeout=0.5)

def side():
    # The signal is caught by this thread: the supervisor's main thread is
    # not interrupted, and its Python-level handler is only "pending".
    sys.stdin.readline()
    signal.pthread_kill(threading.get_ident(), getattr(signal, sys.argv[1]))
    print("signal sent", file=sys.stderr, flush=True)

thread = threading.Thread(target=side, daemon=True)
thread.start()
server.serve_forever()
server.server_close()
print("supervisor returned", file=sys.stderr, flush=True)
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_caught_by_another_thread_stops_the_supervisor(sig):
    output = Server([sys.executable, "-c", SIDE_THREAD_SCRIPT, sig], stdin=subprocess.PIPE)
    proc = output.proc
    try:
        output.find(r"supervisor pid \d+: 2 workers")
        output.find(r"worker \d serving", count=2)
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        output.find(r"signal sent")
        # bounded: drain_timeout (0.5 s) plus the supervisor's poll; never
        # "until a second signal"
        code = proc.wait(TIMEOUT)
    finally:
        _finish(proc, output)
    assert code == 0, output.text()
    assert "supervisor returned" in output.text()
    assert "all workers stopped" in output.text()
    assert "did not stop in time" not in output.text()


def _load(port, stop, errors):
    """A well-behaved client: frames, each reply read, until stop or EOF."""
    payload = b"load" * 64
    message = struct.pack("!I", len(payload)) + payload
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as c:
            for _ in range(200000):  # bounded
                if stop.is_set():
                    return
                c.sendall(message)
                got = b""
                while len(got) < len(message):
                    chunk = c.recv(len(message) - len(got))
                    if not chunk:
                        return  # the server stopped: expected
                    got += chunk
                if got != message:
                    errors.append(got[:20])
                    return
    except OSError:
        return  # reset or refused while the server stops: expected


def _is_cserver_process(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return b"cserver" in f.read()
    except OSError:
        return False


ROUNDS = [("2", signal.SIGTERM), ("2", signal.SIGINT), ("2", signal.SIGTERM),
          ("2", signal.SIGINT), ("1", signal.SIGTERM), ("1", signal.SIGINT)]


@pytest.mark.stress
def test_stop_signals_at_random_moments_under_load():
    rng = random.Random(0x5EED)
    for workers, sig in ROUNDS:
        output = cli("--port", "0", "--workers", workers, "--drain-timeout", "1")
        proc = output.proc
        stop = threading.Event()
        errors = []
        clients = []
        try:
            port = int(output.find(r"listening on 127\.0\.0\.1:(\d+)")[0].group(1))
            pids = []
            if workers != "1":
                pids = [int(m.group(1)) for m in output.find(r"worker \d serving on .* pid (\d+)",
                                                             count=int(workers))]
            clients = [threading.Thread(target=_load, args=(port, stop, errors))
                       for _ in range(4)]
            for client in clients:
                client.start()
            time.sleep(rng.uniform(0.0, 0.3))
            sent = time.monotonic()
            proc.send_signal(sig)
            # drain_timeout 1 s, the workers' SIGKILL after drain + 2 s:
            # TIMEOUT bounds a stop that was never acted on
            code = proc.wait(TIMEOUT)
            took = time.monotonic() - sent
        finally:
            stop.set()
            for client in clients:
                client.join(TIMEOUT)
            _finish(proc, output)
        text = output.text()
        assert code == 0, (workers, sig, text)
        assert took < TIMEOUT
        assert not errors, errors
        assert "Traceback" not in text, text
        if workers != "1":
            assert "all workers stopped" in text, text
            assert "did not stop in time" not in text, text
            assert not [pid for pid in pids if _is_cserver_process(pid)], text


# A single-process server: its loop waits in epoll_wait (or the selector)
# with no timeout when it has no connections.  A signal that the kernel
# delivers to another thread of the process (or one that lands between the
# loop's check of pending signals and its wait) does not interrupt that
# wait; the loop makes CPython's signal handler write to its wake pipe so
# that the wait ends and the Python handler runs at once.
_OFF_THREAD_SIGNAL = r"""
import signal, sys, threading
import cserver

class Echo(cserver.FrameHandler):
    def frame_received(self, frame):
        self.send_frame(frame)

server = cserver.SelectorTCPServer(("127.0.0.1", 0), Echo, loop=sys.argv[1])

def kick():
    sys.stdin.readline()
    signal.pthread_kill(threading.get_ident(), signal.SIGINT)   # this thread, not main

threading.Thread(target=kick, daemon=True).start()
print("READY", flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    print("STOPPED", flush=True)
finally:
    server.server_close()
"""


@pytest.mark.parametrize("loop", ["epoll", "selectors"])
def test_a_signal_caught_by_another_thread_stops_a_single_process_server(loop):
    proc = subprocess.Popen([sys.executable, "-c", _OFF_THREAD_SIGNAL, loop], env=child_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout.readline() == b"READY\n"
        time.sleep(0.3)              # the loop is in its wait, with no timeout
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=TIMEOUT)
        assert out == b"STOPPED\n", err.decode(errors="replace")[-2000:]
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
