"""A connection flood against a multiplexing server out of file descriptors.

The server runs in a child process whose RLIMIT_NOFILE leaves it a few fds
to spare; the flood opens many more connections than that, so accept()
hits EMFILE.  Afterwards (the flood closed) a well-behaved client is
served, and the server holds exactly the fds it held before: none leaked.
A control connection, opened before the flood, asks the server for its fd
count and counters.
"""
import json
import os
import socket
import struct
import subprocess
import sys
import time

import pytest

import cserver

TIMEOUT = 10.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cserver.__file__)))
KINDS = ["epoll", "selectors"] if cserver.selectorserver._loop.HAVE_EPOLL else ["selectors"]

SCRIPT = r"""
import json, os, resource, sys
import cserver

def open_fds():
    # fstat needs no new fd (listing /proc/self/fd would, and fail at EMFILE)
    count = 0
    for fd in range(1024):
        try:
            os.fstat(fd)
        except OSError:
            continue
        count += 1
    return count

class Echo(cserver.FrameHandler):
    def frame_received(self, frame):
        if frame == b"?":
            stats = self.server.stats()
            self.send_frame(json.dumps({
                "fds": open_fds(),
                "connections": stats["connections"],
                "accept_errors": stats["accept_errors"]}).encode())
        else:
            self.send_frame(frame)

server = cserver.SelectorTCPServer(("127.0.0.1", 0), Echo, loop=sys.argv[1])
server.call_soon(lambda: None)  # the loop (and its fds) exist before the limit
spare = 6
nfd = len(os.listdir("/proc/self/fd"))
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (nfd + spare, hard))
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def frame(payload):
    return struct.pack("!I", len(payload)) + payload


def request(sock, payload):
    sock.sendall(frame(payload))
    header = b""
    while len(header) < 4:
        chunk = sock.recv(4 - len(header))
        if not chunk:
            raise ConnectionError("EOF")
        header += chunk
    (size,) = struct.unpack("!I", header)
    body = b""
    while len(body) < size:
        chunk = sock.recv(size - len(body))
        if not chunk:
            raise ConnectionError("EOF")
        body += chunk
    return body


def wait_stats(control, predicate):
    deadline = time.monotonic() + TIMEOUT
    while True:
        stats = json.loads(request(control, b"?"))
        if predicate(stats) or time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


@pytest.mark.parametrize("kind", KINDS)
def test_emfile_flood_then_a_good_client_and_no_fd_leak(kind):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, kind], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep +
                                     os.environ.get("PYTHONPATH", "")))
    flood = []
    try:
        port = int(proc.stdout.readline())
        control = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        flood.append(control)
        before = wait_stats(control, lambda s: s["connections"] == 1)
        assert before["connections"] == 1 and before["accept_errors"] == 0
        for _ in range(60):  # ten times the fds the server has to spare
            c = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            c.sendall(frame(b"flood"))
            flood.append(c)
        hit = wait_stats(control, lambda s: s["accept_errors"] > 0)
        assert hit["accept_errors"] > 0, hit  # EMFILE was hit
        assert hit["fds"] <= before["fds"] + 6
        for c in flood[1:]:
            c.close()
        del flood[1:]
        # the closed flood drains out of the backlog; then a good client
        settled = wait_stats(control, lambda s: s["connections"] == 1
                             and s["fds"] == before["fds"])
        assert settled["connections"] == 1 and settled["fds"] == before["fds"], settled
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as good:
            assert request(good, b"good client") == b"good client"
        after = wait_stats(control, lambda s: s["connections"] == 1
                           and s["fds"] == before["fds"])
        assert after["fds"] == before["fds"], (before, after)  # nothing leaked
    finally:
        for c in flood:
            c.close()
        proc.kill()
        out, err = proc.communicate(timeout=TIMEOUT)
    assert b"Traceback" not in err, err.decode()
    assert b"Too many open files" in err  # EMFILE was logged, and survived
