"""Framed echo throughput of a blocking server, cserver against the stdlib,
in one run.

* cserver: ``cserver.ThreadingTCPServer`` + ``FramedRequestHandler`` whose
  ``handle_frame`` returns the frame;
* stdlib: ``socketserver.ThreadingTCPServer`` + ``StreamRequestHandler``
  reading ``rfile.read(4)``, ``struct.unpack("!I")``, ``rfile.read(n)`` and
  writing header + payload to ``wfile`` -- the way such a server is written
  on the stdlib; once with the handler's defaults (Nagle's algorithm on, so
  small pipelined replies wait for delayed ACKs) and once with
  ``disable_nagle_algorithm = True`` ("stdlib-nodelay", as cserver's
  FramedRequestHandler does by default).

Each server runs in a process of its own; client processes (the same for
every server) each keep one connection and send pipelined batches of frames
(one pre-encoded ``sendall`` per batch), reading all the replies of a batch
with cserver's FramedClient before the next.  Reported: echoed frames/s over
all clients, median with min-max of the rounds, and the ratio of cserver to
each.

Usage: python bench/bench_framed_echo.py [--quick] [--rounds N]
           [--clients N] [--seconds S] [--sizes 64,16384]
"""
import argparse
import os
import platform
import statistics
import subprocess
import sys

import _cserver_path  # noqa: E402  (bench/ is sys.path[0])

ROOT = _cserver_path.ROOT
_cserver_path.use()  # the checkout when it is built in place, else the installed package

SERVER = r"""
import struct, sys
impl = sys.argv[1]
if impl.startswith("stdlib"):
    import socketserver

    class Echo(socketserver.StreamRequestHandler):
        def handle(self):
            read, write, unpack = self.rfile.read, self.wfile.write, struct.unpack
            while True:
                header = read(4)
                if len(header) < 4:
                    return
                (size,) = unpack("!I", header)
                payload = read(size)
                if len(payload) < size:
                    return
                write(header + payload)

    # StreamRequestHandler's default keeps Nagle's algorithm on; the
    # "stdlib-nodelay" variant sets TCP_NODELAY as cserver's handler does.
    Echo.disable_nagle_algorithm = impl == "stdlib-nodelay"
    cls = socketserver.ThreadingTCPServer
else:
    import cserver

    class Echo(cserver.FramedRequestHandler):
        def handle_frame(self, frame):
            return frame

    cls = cserver.ThreadingTCPServer
cls.allow_reuse_address = True
cls.daemon_threads = True
with cls(("127.0.0.1", 0), Echo) as server:
    print(server.server_address[1], flush=True)
    server.serve_forever()
"""

CLIENT = r"""
import sys, time
import cserver
port, size, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[4])
seconds = float(sys.argv[3])
payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
done = 0
with cserver.FramedClient(("127.0.0.1", port), timeout=30) as client:
    client.request(payload)                       # connected and warm
    start = time.perf_counter()
    deadline = start + seconds
    wire = cserver.encode_frame(payload) * batch   # a load generator's batch
    sock = client.socket
    while time.perf_counter() < deadline:
        sock.sendall(wire)
        for _ in range(batch):
            if client.recv_frame() != payload:
                raise SystemExit("bad echo")
        done += batch
    elapsed = time.perf_counter() - start
print(done / elapsed)
"""


def run_round(impl, size, clients, seconds, batch, env):
    server = subprocess.Popen([sys.executable, "-c", SERVER, impl], env=env,
                              cwd=_cserver_path.CHILD_CWD, stdout=subprocess.PIPE, text=True)
    try:
        port = server.stdout.readline().strip()
        if not port:
            raise RuntimeError("the %s server did not start" % impl)
        procs = [subprocess.Popen([sys.executable, "-c", CLIENT, port, str(size),
                                   str(seconds), str(batch)],
                                  env=env, cwd=_cserver_path.CHILD_CWD,
                                  stdout=subprocess.PIPE, text=True)
                 for _ in range(clients)]
        total = 0.0
        for p in procs:
            out, _ = p.communicate(timeout=seconds + 60)
            if p.returncode:
                raise RuntimeError("a client failed against the %s server" % impl)
            total += float(out)
        return total
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 s rounds, 3 rounds")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sizes", default="64,16384")
    args = parser.parse_args()
    rounds = args.rounds or 3 if args.quick else (args.rounds or 5)
    seconds = args.seconds or (1.0 if args.quick else 3.0)
    env = dict(os.environ)
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    print("# bench_framed_echo: %s, Python %s, %d CPUs, git %s"
          % (platform.platform(), platform.python_version(), os.cpu_count(), rev or "?"))
    print("# %d client processes, batches of %d pipelined frames, %.1f s per round, "
          "%d rounds, median (min-max)" % (args.clients, args.batch, seconds, rounds))
    for size in (int(s) for s in args.sizes.split(",")):
        impls = ("stdlib", "stdlib-nodelay", "cserver")
        results = {impl: [] for impl in impls}
        for _ in range(rounds):
            for impl in impls:   # interleaved: same conditions
                results[impl].append(run_round(impl, size, args.clients, seconds,
                                               args.batch, env))
        print("\nframe %d B" % size)
        c = statistics.median(results["cserver"])
        for impl in impls:
            r = results[impl]
            print("  %-15s %10.0f frames/s (%.0f-%.0f)   cserver/this %6.2fx"
                  % (impl, statistics.median(r), min(r), max(r), c / statistics.median(r)))


if __name__ == "__main__":
    main()
