"""User-space instructions per request of a server, counted by callgrind.

Wall-clock benchmarks on a small shared machine swing by 2x when anything
else runs; instruction counts do not.  This script runs each server under
``valgrind --tool=callgrind`` and drives it with the harness's load generator
(``bench/loadgen.c``): a warm-up run, then a run of N requests and one of 2N,
each counted only from the end of its connection setup to its last reply
(``loadgen --sync`` stops at both points while ``callgrind_control`` zeroes
and dumps the counters).  It reports

    instructions per request = (Ir(2N) - Ir(N)) / N

so what a run costs apart from its requests cancels out and what is left is
the steady-state cost of one request in the server's own process (user space
only: the kernel's TCP work is not counted, and it is the same for every
server).  Use it to judge a hot-path change: run it before and after, on the
same interpreter.

    python bench/instructions.py          # c-epoll, cserver-mux, uvloop; 1c-d1, 500c-d1
    python bench/instructions.py --servers cserver-mux --workloads 1c-d1 --requests 2000
    python bench/instructions.py --workloads 10c-d4-64k --requests 1000 --keep /tmp/cg
    python bench/instructions.py --servers cserver-mux,cserver-mux+proxy-v2 --workloads churn
    python bench/instructions.py --servers c-tls,cserver-mux-tls,cserver-mux-tls+python-engine \
        --workloads tls-50c-d16 --requests 2000        # TLS servers (a certificate per run)
    callgrind_annotate /tmp/cg/callgrind.cserver-mux.10c-d4-64k.2   # where the time goes

The servers are the harness's (``bench/run.py --list``); cserver is found as
``bench/run.py`` finds it (a tree built in place, else the installed
package).  A server whose library is missing is reported as skipped.
"""
import argparse
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the harness: servers, binaries, processes)

#: name: (connections, depth, payload bytes); the names are bench/run.py's.
#: "churn": N connections (4 at a time), each connect, one request, close:
#: its figure is instructions per connection.
WORKLOADS = {"1c-d1": (1, 1, 64), "50c-d1": (50, 1, 64), "500c-d1": (500, 1, 64),
             "50c-d16": (50, 16, 64), "10c-d4-64k": (10, 4, 65536),
             "1c-d1-64k": (1, 1, 65536), "churn": (4, 1, 64)}
# tls-*: the same over TLS 1.3 (the load generator's --tls), TLS servers only
WORKLOADS.update({"tls-" + name: params for name, params in list(WORKLOADS.items())})
DEFAULT_SERVERS = "c-epoll,cserver-mux,uvloop"
DEFAULT_WORKLOADS = "1c-d1,500c-d1"
READY_TIMEOUT = 180.0   # a Python server under valgrind starts in ~10-60 s
LOAD_TIMEOUT = 600.0


def callgrind_total(path):
    """The total Ir of a callgrind output file (its ``summary:`` line)."""
    with open(path) as f:
        for line in f:
            m = re.match(r"(?:summary|totals):\s+(\d+)", line)
            if m:
                return int(m.group(1))
    raise RuntimeError("no summary line in %s" % path)


def measure(server, conns, depth, size, requests, bins, env, tmp, kind="stream",
            tls_files=None):
    """(Ir of N requests, Ir of 2N requests) in one server process, each
    counted from the end of the load generator's connection setup to its
    last reply, after a warm-up run; or (None, why) if it cannot run."""
    churn = kind == "churn"
    out = os.path.join(tmp, "callgrind.%s.%d" % (server.key, conns))
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
           "--dump-instr=no", "--trace-children=no"]
    cmd += server.command(["--host", "127.0.0.1", "--port", "0"], 1, bins, tls_files)
    if getattr(server, "tls_engine", None):
        env = dict(env, CSERVER_TLS_ENGINE=server.tls_engine)
    proc = run.spawn(cmd, set(), env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        state, where = run.wait_ready(proc, READY_TIMEOUT)
        if state != "ready":
            return None, where
        load = [bins["loadgen"], "--tcp", "127.0.0.1:%s" % where, "--conns", str(conns),
                "--depth", str(depth), "--size", str(size), "--warmup", "0",
                "--duration", str(LOAD_TIMEOUT), "--connect-timeout", "120"]
        load += server.loadgen_args + (["--kind", "churn"] if churn else [])
        if server.transport == "tls":
            load += ["--tls", "--sni", run.TLS_SNI]
        setup = 0 if churn else conns      # one setup request per stream connection
        _load(load, requests, setup, server.key, None)          # warm-up, not counted
        counts = []
        for i, n in enumerate((requests, 2 * requests)):
            _load(load, n, setup, server.key, proc.pid)
            counts.append(callgrind_total("%s.%d" % (out, i + 1)))
        try:
            stop_server(proc, signal.SIGINT if server.script != "c_echo" else signal.SIGTERM)
        except RuntimeError:
            pass   # the counts are in (dumped): kill_group stops it
    finally:
        run.kill_group(proc, grace=30.0)
    return tuple(counts), None


def _load(cmd, requests, conns, key, pid):
    """One load generator run of ``requests`` requests.  With ``pid``:
    callgrind's counters of that process are zeroed when the connections are
    set up and dumped when the last reply is in."""
    cmd = cmd + ["--requests", str(requests)] + (["--sync"] if pid else [])
    lg = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    try:
        if pid:
            for action in ("--zero", "--dump"):
                line = lg.stderr.readline()
                if not line.startswith(("SETUP", "DONE")):
                    raise RuntimeError("%s: loadgen said %r" % (key, line))
                subprocess.run(["callgrind_control", action, str(pid)], check=True,
                               capture_output=True, timeout=120)
                lg.stdin.write("\n")
                lg.stdin.flush()
        stdout, _ = lg.communicate(timeout=LOAD_TIMEOUT + 180)
    finally:
        if lg.poll() is None:
            lg.kill()
            lg.wait()
    rec = json.loads(stdout)
    if rec["mismatches"] or rec["errors"] or rec["replies_total"] - conns != requests:
        raise RuntimeError("%s: load went wrong: %s" % (key, stdout.strip()))


def stop_server(proc, sig, timeout=120.0):
    """Stop it so that callgrind writes its file: the signal again every
    second (one that lands just before a blocking wait can be missed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=1.0)
            return
        except subprocess.TimeoutExpired:
            continue
    raise RuntimeError("server %d did not stop within %.0f s" % (proc.pid, timeout))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default=DEFAULT_SERVERS,
                   help="comma-separated server keys (default %s)" % DEFAULT_SERVERS)
    p.add_argument("--workloads", default=DEFAULT_WORKLOADS,
                   help="comma-separated, of %s (default %s)" % (",".join(WORKLOADS),
                                                                DEFAULT_WORKLOADS))
    p.add_argument("--requests", type=int, default=3000,
                   help="N: each server answers N, then 2N requests (default 3000)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON lines")
    p.add_argument("--cserver-from", metavar="DIR",
                   help="run cserver from this source tree built in place (as bench/run.py)")
    p.add_argument("--keep", metavar="DIR",
                   help="copy the callgrind files there (callgrind.SERVER.WORKLOAD.1 for N "
                        "requests, .2 for 2N) for callgrind_annotate")
    opts = p.parse_args(argv)
    if not 100 <= opts.requests <= 1000000:
        p.error("--requests must be 100..1000000")
    srvs = run.servers()
    # KEY+proxy-v1 / KEY+proxy-v2: the cserver multiplexing servers with
    # proxy_protocol set, each connection opened by a PROXY header
    by_key = {s.key: s for s in srvs + run.with_proxy(srvs, "v1") + run.with_proxy(srvs, "v2")}
    # KEY+python-engine: a cserver TLS server with CSERVER_TLS_ENGINE=python
    # (the record layer through the ssl objects' methods, not libssl from C)
    for s in list(by_key.values()):
        if s.is_cserver and s.transport == "tls":
            twin = copy.copy(s)
            twin.key = s.key + "+python-engine"
            twin.tls_engine = "python"
            by_key[twin.key] = twin
    keys = [k.strip() for k in opts.servers.split(",") if k.strip()]
    for k in keys:
        if k not in by_key or by_key[k].transport not in ("tcp", "tls") or by_key[k].workers:
            p.error("unknown or unsupported server %r (single-process TCP or TLS servers of "
                    "bench/run.py --list)" % k)
    wls = [w.strip() for w in opts.workloads.split(",") if w.strip()]
    for w in wls:
        if w not in WORKLOADS:
            p.error("unknown workload %r" % w)
    for k in keys:
        for w in wls:
            if (by_key[k].transport == "tls") != w.startswith("tls-"):
                p.error("server %r and workload %r: TLS servers take the tls-* workloads, "
                        "the others the rest" % (k, w))
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # started in the background by a shell: the servers would inherit
        # an ignored SIGINT, the signal that stops them
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if subprocess.run(["valgrind", "--version"], capture_output=True).returncode != 0:
        raise SystemExit("valgrind is not installed (Debian: apt install valgrind)")
    bins = run.build_binaries()
    env, version, build = run.cserver_env(opts.cserver_from)
    if opts.keep:
        os.makedirs(opts.keep, exist_ok=True)
    env["PYTHONHASHSEED"] = "0"   # the same dict layouts in every run
    print("# %s, cserver %s (%s), git %s" % (sys.version.split()[0], version, build,
                                             _git_rev(opts.cserver_from or run.ROOT)))
    print("| server | workload | instructions/request (churn: /connection) | Ir(N) | Ir(2N) |")
    print("|---|---|---|---|---|")
    results = []
    with tempfile.TemporaryDirectory(prefix="cserver-ir-") as tmp:
        tls_files = None
        if any(w.startswith("tls-") for w in wls):
            tls_files = run.make_certificate(tmp)[:2]
        for w in wls:
            conns, depth, size = WORKLOADS[w]
            for k in keys:
                server = by_key[k]
                if server.requires and not _importable(server.requires, env):
                    print("| %s | %s | skipped: %s not installed | | |" % (k, w, server.requires))
                    continue
                t0 = time.monotonic()
                counts, why = measure(server, conns, depth, size, opts.requests, bins, env,
                                      tmp, kind="churn" if w.endswith("churn") else "stream",
                                      tls_files=tls_files)
                if counts is None:
                    print("| %s | %s | skipped: %s | | |" % (k, w, why))
                    continue
                if opts.keep:
                    for i in (1, 2):
                        src = os.path.join(tmp, "callgrind.%s.%d.%d" % (k, conns, i))
                        shutil.copy(src, os.path.join(opts.keep, "callgrind.%s.%s.%d" % (
                            k, w, i)))
                ir1, ir2 = counts
                per = (ir2 - ir1) / opts.requests
                print("| %s | %s | %.0f | %d | %d |" % (k, w, per, ir1, ir2), flush=True)
                results.append({"server": k, "workload": w, "requests": opts.requests,
                                "ir_n": ir1, "ir_2n": ir2, "ir_per_request": per,
                                "seconds": round(time.monotonic() - t0, 1)})
    if opts.json:
        with open(opts.json, "w") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    return 0


def _importable(module, env):
    return subprocess.run([sys.executable, "-c", "import " + module], env=env,
                          capture_output=True).returncode == 0


def _git_rev(tree):
    r = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)
    return r.stdout.strip() or "?"


if __name__ == "__main__":
    sys.exit(main())
