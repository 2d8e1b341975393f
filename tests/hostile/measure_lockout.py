"""Measure how long slow peers lock a well-behaved client out, with defaults.

Not collected by pytest (a measurement, minutes long; the bounded tests are
``test_slowloris.py``).  From the repository root, after an in-place build::

    python tests/hostile/measure_lockout.py loop 150
    python tests/hostile/measure_lockout.py pool 100

``loop``: 200 peers connect to a ``SelectorTCPServer`` with its default
deadlines and ``max_connections=50``, send a header announcing a 1,000-byte
frame, then trickle one body byte a second; a good client connects 2 s
later (behind 150 slow peers in the listen backlog).

``pool``: 12 peers trickle a byte a second at a ``ThreadPoolTCPServer`` with
its defaults (``max_workers`` + ``queue_size`` = 12 slots on a 2-core
machine) and a ``StreamRequestHandler`` with ``timeout = 5`` (reset by every
byte); a good client connects 2 s later.

Prints when the good client got its reply (or "never" within the cap, the
second argument, in seconds) and the server's counters.
"""
import os
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import cserver  # noqa: E402


class Echo(cserver.FrameHandler):
    def frame_received(self, frame):
        self.send_frame(frame)


class LineEcho(cserver.StreamRequestHandler):
    timeout = 5

    def handle(self):
        try:
            line = self.rfile.readline()
        except OSError:
            return
        if line.endswith(b"\n"):
            self.wfile.write(line)


def run(server, slow, hello, cap):
    start = time.monotonic()
    good = None
    served = None
    while time.monotonic() - start < cap:
        if good is None and time.monotonic() - start > 2:
            good = socket.create_connection(server.server_address)
            good.setblocking(False)
            good.send(hello)
            good_start = time.monotonic()
        if good is not None:
            try:
                if good.recv(100):
                    served = time.monotonic() - good_start
                    break
            except BlockingIOError:
                pass
        for s in slow:
            try:
                s.send(b"x")
            except OSError:
                pass
        time.sleep(1.0)
    return "%.1f s" % served if served is not None else "never (> %d s)" % cap


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "loop"
    cap = float(sys.argv[2]) if len(sys.argv) > 2 else 150.0
    import logging
    logging.disable(logging.WARNING)
    if what == "loop":
        server = cserver.SelectorTCPServer(("127.0.0.1", 0), Echo, max_connections=50)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        slow = []
        for _ in range(200):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(server.server_address)
            slow.append(s)
        time.sleep(0.5)
        for s in slow:
            try:
                s.send(struct.pack("!I", 1000))
            except OSError:
                pass
        took = run(server, slow, struct.pack("!I", 2) + b"hi", cap)
        stats = server.stats()
        print("loop: good client served after %s; first_byte_timeouts=%d frame_timeouts=%d"
              % (took, stats["first_byte_timeouts"], stats["frame_timeouts"]))
    else:
        server = cserver.ThreadPoolTCPServer(("127.0.0.1", 0), LineEcho)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        slow = [socket.create_connection(server.server_address) for _ in range(12)]
        took = run(server, slow, b"hi\n", cap)
        print("pool (request_timeout=%r): good client served after %s; %r"
              % (server.request_timeout, took, server.pool_stats()))
    os._exit(0)


if __name__ == "__main__":
    main()
