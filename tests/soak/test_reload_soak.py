"""50 SIGHUP reloads of a ``workers=2`` framed echo server under a steady
load: zero refused connections, zero resets, zero unanswered frames, every
reply correct (marker ``soak``: ``tox -e soak``).

The server is ``python -m cserver echo --workers 2`` in its own session.
Client threads each open a new connection, send a few frames (each one a
distinct payload, its reply read and compared), close, and start over,
until told to stop; the test sends SIGHUP 50 times, each once the previous
reload is done (the supervisor logs "reload N done"), with the load running
all along.  Bounded: the reloads must be done within RELOADS_BUDGET
seconds, every socket operation has a timeout, every thread is joined.
The figures are printed (``pytest -s``) for the closing note.
"""
import signal
import socket
import struct
import sys
import threading
import time

import pytest

from support import TIMEOUT, Server, recv_upto

pytestmark = pytest.mark.soak

RELOADS = 50
RELOADS_BUDGET = 60.0
CLIENTS = 6
FRAMES_PER_CONNECTION = 3


class Tally:
    """What the clients saw, under a lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = dict(connections=0, frames=0, refused=0, resets=0, unanswered=0,
                           wrong=0, other=0)
        self.errors = []

    def add(self, name, detail=None):
        with self.lock:
            self.counts[name] += 1
            if detail is not None and len(self.errors) < 20:
                self.errors.append((name, detail))


def _client(port, number, stop, tally):
    for round_number in range(1000000):   # bounded; stop ends it
        if stop.is_set():
            return
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        except ConnectionRefusedError as exc:
            tally.add("refused", repr(exc))
            continue
        except OSError as exc:
            tally.add("other", repr(exc))
            continue
        try:
            for k in range(FRAMES_PER_CONNECTION):
                payload = b"client %d round %d frame %d " % (number, round_number, k)
                payload += bytes(range(256))[: (round_number + k) % 200]
                message = struct.pack("!I", len(payload)) + payload
                sock.sendall(message)
                reply = recv_upto(sock, len(message))
                if len(reply) < len(message):
                    tally.add("unanswered", "EOF after %d bytes" % len(reply))
                    break
                if reply != message:
                    tally.add("wrong", reply[:40])
                    break
                tally.add("frames")
            else:
                tally.add("connections")
        except (ConnectionResetError, BrokenPipeError) as exc:
            tally.add("resets", repr(exc))
        except socket.timeout as exc:
            tally.add("unanswered", "timeout: %r" % (exc,))
        except OSError as exc:
            tally.add("other", repr(exc))
        finally:
            sock.close()


def test_fifty_reloads_under_load_drop_nothing():
    output = Server([sys.executable, "-m", "cserver", "echo", "--port", "0",
                     "--workers", "2", "--drain-timeout", "5"])
    proc = output.proc
    stop = threading.Event()
    tally = Tally()
    clients = []
    try:
        port = int(output.find(r"listening on 127\.0\.0\.1:(\d+)")[0].group(1))
        output.find(r"supervisor pid \d+: 2 workers")
        output.find(r"worker \d serving", 2)
        clients = [threading.Thread(target=_client, args=(port, i, stop, tally))
                   for i in range(CLIENTS)]
        for client in clients:
            client.start()
        time.sleep(0.3)
        started = time.monotonic()
        frames_at = []
        for number in range(1, RELOADS + 1):
            proc.send_signal(signal.SIGHUP)
            left = RELOADS_BUDGET - (time.monotonic() - started)
            assert left > 0, "the reloads took longer than %g s" % RELOADS_BUDGET
            output.find(r"reload %d done: workers \[\d+, \d+\]$" % number, timeout=left)
            frames_at.append(tally.counts["frames"])
            time.sleep(0.1)   # the load runs on the new generation for a while
        took = time.monotonic() - started
        time.sleep(0.3)
    finally:
        stop.set()
        for client in clients:
            client.join(TIMEOUT)
    try:
        # every retired worker finished its connections and exited
        output.find(r"retired worker \d \(pid \d+\) exited \(exit status 0\)", 2 * RELOADS)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(TIMEOUT)
    finally:
        output.kill()
    counts = tally.counts
    print("\n50-reload soak: %d reloads in %.1f s; %d connections, %d frames answered; "
          "refused %d, resets %d, unanswered %d, wrong %d, other %d"
          % (RELOADS, took, counts["connections"], counts["frames"], counts["refused"],
             counts["resets"], counts["unanswered"], counts["wrong"], counts["other"]))
    assert not any(alive.is_alive() for alive in clients)
    text = output.text()
    assert code == 0, text[-3000:]
    assert counts["refused"] == 0, tally.errors
    assert counts["resets"] == 0, tally.errors
    assert counts["unanswered"] == 0, tally.errors
    assert counts["wrong"] == 0, tally.errors
    assert counts["other"] == 0, tally.errors
    # the load ran across the reloads: frames were answered between each
    # pair of consecutive reloads
    steps = [b - a for a, b in zip(frames_at, frames_at[1:])]
    assert min(steps) > 0, steps
    assert counts["connections"] >= RELOADS
    assert output.count(r"reload \d+ done") == RELOADS
    assert "keeps serving" not in text and "did not finish in time" not in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
