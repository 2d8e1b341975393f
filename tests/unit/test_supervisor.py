"""The worker supervisor (``cserver._supervisor.Supervisor``) on its own,
handed plain callables: no server, no sockets.

Each test runs a small program in a subprocess (its own session: the
supervisor forks, and a failed test kills the whole process group), bounded
by TIMEOUT.  The server's use of it (real workers, signals, the CLI) is
tested in test_selectorserver.py, test_cli.py and hostile/test_signals.py.
"""
import os
import re
import signal
import subprocess
import sys
import time

import cserver

TIMEOUT = 10.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cserver.__file__)))

PROGRAM = r"""
import logging, os, signal, sys, time
from cserver._supervisor import Supervisor

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
marker = sys.argv[1]
mode = sys.argv[2]
stopped = []

def on_signal(signum, frame):
    stopped.append(signum)

def start_worker(slot):
    print("worker %d pid %d" % (slot, os.getpid()), flush=True)
    if slot == 0 and not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("the first worker 0 crashes")
    for _ in range(1000):   # bounded: 10 s
        if stopped:
            print("worker %d got %s" % (slot, signal.Signals(stopped[0]).name), flush=True)
            return
        time.sleep(0.01)

polls = [0]

def stop_requested():
    if mode != "request":
        return False
    polls[0] += 1
    return os.path.exists(marker + ".stop")

def prepare():
    # after the stop signals are the supervisor's, before any fork
    print("prepared; SIGTERM handled by %s" % signal.getsignal(signal.SIGTERM).__name__,
          flush=True)

supervisor = Supervisor(2, start_worker, stop_requested=stop_requested, on_signal=on_signal,
                        drain_timeout=1.0, logger=logging.getLogger("test"), prepare=prepare)
print("ready", flush=True)
supervisor.run()
print("returned; polled %d" % polls[0], flush=True)
"""


def _run(tmp_path, mode, stop):
    marker = str(tmp_path / "crashed")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM, marker, mode], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        os.set_blocking(proc.stdout.fileno(), False)
        buffer = b""
        # wait for: worker 0 crashed and came back, worker 1 up
        while time.monotonic() < deadline:
            chunk = proc.stdout.read() or b""
            buffer += chunk
            text = buffer.decode("utf-8", "replace")
            if len(re.findall(r"^worker 0 pid", text, re.M)) >= 2 and "worker 1 pid" in text:
                break
            time.sleep(0.02)
        stop(proc, marker)
        code = proc.wait(TIMEOUT)
        os.set_blocking(proc.stdout.fileno(), True)
        buffer += proc.stdout.read()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(TIMEOUT)
        proc.stdout.close()
    return code, buffer.decode("utf-8", "replace")


def _check_restart_and_stop(code, text):
    assert code == 0, text
    assert text.index("prepared; SIGTERM handled by _ignore_signal") < text.index("worker 0 pid")
    assert "worker 0 crashed" in text and "RuntimeError: the first worker 0 crashes" in text
    assert re.search(r"worker 0 \(pid \d+\) exited \(exit status 1\) after [\d.]+ s; "
                     r"restarting in 0\.1 s", text), text
    assert re.search(r"worker 0 restarted: pid \d+", text), text
    # every worker was stopped through the callable it was handed
    assert "worker 0 got SIGTERM" in text and "worker 1 got SIGTERM" in text, text
    assert "all workers stopped" in text and "did not stop in time" not in text, text
    assert "returned" in text


def test_a_stop_signal_stops_every_worker_through_on_signal(tmp_path):
    code, text = _run(tmp_path, "signal", lambda proc, marker: proc.send_signal(signal.SIGTERM))
    _check_restart_and_stop(code, text)


def test_stop_requested_is_polled_and_stops_every_worker(tmp_path):
    def stop(proc, marker):
        open(marker + ".stop", "w").close()

    code, text = _run(tmp_path, "request", stop)
    _check_restart_and_stop(code, text)
    polled = int(re.search(r"polled (\d+)", text).group(1))
    assert polled >= 2, text
