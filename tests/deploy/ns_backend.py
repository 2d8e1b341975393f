"""A backend host of the scale-out tests (tests/deploy/test_scale_out.py),
run inside a network namespace: ``python ns_backend.py NAME HOST PORT
TRUSTED_NET [WORKERS]``.

A ``SelectorTCPServer`` with ``workers`` processes (2 by default),
``proxy_protocol="v2"`` and ``trusted_proxies=(TRUSTED_NET,)``; each frame is
answered with a JSON object: the frame (``echo``), this host's ``NAME``, the
worker's pid and the connection's ``client_address`` (the load generator's,
from the PROXY header).  SIGTERM stops it (drain), SIGHUP reloads its
workers (the supervisor's).  Prints ``listening`` once bound.
"""
import json
import os
import sys

import cserver


def main():
    name, host, port, trusted = sys.argv[1:5]
    workers = int(sys.argv[5]) if len(sys.argv) > 5 else 2

    class Who(cserver.FrameHandler):
        def frame_received(self, frame):
            self.send_frame(json.dumps({
                "echo": bytes(frame).decode("latin-1"), "host": name, "pid": os.getpid(),
                "client_address": list(self.client_address)}).encode())

    server = cserver.SelectorTCPServer((host, int(port)), Who, workers=workers,
                                       proxy_protocol="v2", trusted_proxies=(trusted,),
                                       drain_timeout=5.0)
    with server:
        print("listening", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
