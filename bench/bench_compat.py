"""cserver's compat layer against the stdlib, in one run.

(a) shutdown latency: time for ``shutdown()`` to return while
    ``serve_forever(poll_interval=0.5)`` runs idle in another thread;
(b) connection churn: client processes each connect, send one line, read
    the echo and close, as fast as they can; the server is a
    ThreadingTCPServer (one thread per connection) or cserver's
    ThreadPoolTCPServer, in a process of its own.

Usage: python bench/bench_compat.py [--rounds N] [--quick]
Prints medians with min-max over rounds and the ratio cserver/stdlib.
"""
import argparse
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

# The checkout when it is built in place, else the installed package.
import _cserver_path  # noqa: E402  (bench/ is sys.path[0])
_cserver_path.use()

SERVER_CODE = r"""
import sys
kind, impl = sys.argv[1], sys.argv[2]
if impl == "stdlib":
    import socketserver as ss
else:
    import cserver as ss

class Echo(ss.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline())

if kind == "threading":
    cls = ss.ThreadingTCPServer
else:
    cls = ss.ThreadPoolTCPServer
cls.request_queue_size = 128
cls.allow_reuse_address = True
cls.daemon_threads = True
with cls(("127.0.0.1", 0), Echo) as server:
    print(server.server_address[1], flush=True)
    server.serve_forever()
"""


def shutdown_latency(module, rounds):
    samples = []
    for i in range(rounds):
        server = module.TCPServer(("127.0.0.1", 0), module.BaseRequestHandler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5})
        try:
            thread.start()
            # land at a varying point of the poll interval
            time.sleep(0.05 + 0.37 * (i % 7) / 7)
            start = time.perf_counter()
            server.shutdown()
            samples.append(time.perf_counter() - start)
        finally:
            thread.join()
            server.server_close()
    return samples


def _client(port, count, result_queue):
    done = 0
    deadline = time.monotonic() + 30
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"ping\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(64)
                if not chunk:
                    break
                buf += chunk
            if buf == b"ping\n":
                done += 1
    result_queue.put(done)


def churn(kind, impl, clients, per_client):
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-c", SERVER_CODE, kind, impl],
                            cwd=_cserver_path.CHILD_CWD,
                            stdout=subprocess.PIPE, universal_newlines=True, env=env)
    try:
        port = int(proc.stdout.readline())
        queue = multiprocessing.Queue()
        procs = [multiprocessing.Process(target=_client, args=(port, per_client, queue))
                 for _ in range(clients)]
        start = time.perf_counter()
        for p in procs:
            p.start()
        ok = sum(queue.get(timeout=60) for _ in procs)
        elapsed = time.perf_counter() - start
        for p in procs:
            p.join(10)
        if ok != clients * per_client:
            print("  warning: %d of %d requests answered" % (ok, clients * per_client))
        return ok / elapsed
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def fmt(samples, unit, scale=1.0):
    med = statistics.median(samples) * scale
    return "%10.3f %s  (min %.3f, max %.3f)" % (med, unit, min(samples) * scale,
                                                max(samples) * scale)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and requests")
    args = parser.parse_args()
    rounds = 3 if args.quick else args.rounds
    per_client = 300 if args.quick else 1000
    clients = 4

    import socketserver
    import cserver
    print("python %s, cserver %s (%s), %d cores" % (
        sys.version.split()[0], cserver.version,
        "pure" if cserver.PURE else "compiled", os.cpu_count()))

    print("\n(a) shutdown latency, serve_forever(poll_interval=0.5), %d rounds" % (rounds * 4))
    lat = {}
    for name, module in (("stdlib", socketserver), ("cserver", cserver)):
        lat[name] = shutdown_latency(module, rounds * 4)
        print("  %-8s %s" % (name, fmt(lat[name], "ms", 1000)))
    ratio = statistics.median(lat["stdlib"]) / statistics.median(lat["cserver"])
    print("  cserver is %.0fx faster to shut down (median)" % ratio)

    print("\n(b) connection churn: %d client processes x %d connections, %d rounds"
          % (clients, per_client, rounds))
    results = {}
    for kind in ("threading", "pool"):
        for impl in ("stdlib", "cserver"):
            if kind == "pool" and impl == "stdlib":
                continue
            results[kind, impl] = [churn(kind, impl, clients, per_client) for _ in range(rounds)]
    base = statistics.median(results["threading", "stdlib"])
    for (kind, impl), samples in results.items():
        label = {"threading": "ThreadingTCPServer", "pool": "ThreadPoolTCPServer"}[kind]
        med = statistics.median(samples)
        print("  %-8s %-20s %8.0f conn/s (min %.0f, max %.0f)  x%.2f stdlib"
              % (impl, label, med, min(samples), max(samples), med / base))


if __name__ == "__main__":
    main()
