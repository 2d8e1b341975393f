#!/usr/bin/env python3
"""cserver's benchmark harness: every server against every workload, in one run.

    python bench/run.py --quick            # about two minutes
    python bench/run.py                    # the full run (3 rounds)
    python bench/run.py --servers cserver,asyncio --workloads 50c-d16
    python bench/run.py --quick --python python3.14   # the servers on another CPython
    python bench/run.py --proxy v2 --servers cserver-mux --workloads 500c-d1,churn --rounds 5
    python bench/run.py --servers tls --workloads tls-1c-d1,tls-50c-d16,tls-churn

The load generator (bench/loadgen.c) and the C echo servers (bench/c_echo.c,
bench/c_tls_echo.c) are compiled here with ``cc -O2`` into bench/bin/.  Each (server, workload,
round) gets a fresh server process, pinned to one core while the load
generator is pinned to another (when there are two or more); the server's
process group is killed at the end of its round, whatever happens.  Rounds
are interleaved (round 1 of every cell, then round 2, ...), so a burst of load
from elsewhere lands on one round of many cells, not on every round of one.
Results:
bench/results/<date>/results.jsonl, table.md and chart.png (with
matplotlib), and the table on stdout.  Progress goes to stderr.

What it needs: Linux, a C compiler, the peers of bench/requirements.txt
(``python -m pip install -r bench/requirements.txt``; a missing one is
"skipped"), and for the TLS rows OpenSSL's headers and libraries (Debian:
``apt-get install libssl-dev``).  Without those the load generator is built
without TLS and every TLS row is skipped, saying why at the start and the end
of the run and in the table.  The TLS rows (workloads ``tls-*``, servers
``*-tls``): TLS 1.3 only, TLS_AES_128_GCM_SHA256 with X25519 (the load
generator offers nothing else), SNI "localhost", no resumption (tls-churn is a
full handshake per request), an EC P-256 self-signed certificate made for the
run in its temporary directory (with ``cryptography``, else ``openssl req``)
and handed to each TLS server by path; TLS always runs over TCP loopback.

``--python`` runs the Python servers (and looks for cserver and the peers)
with another interpreter than the one running the harness; cserver must be
built for it (in place: ``python3.14 setup.py build_ext --inplace``, or
installed in it).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import importlib.machinery
import importlib.util
import json
import os
import platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.join(HERE, "bin")
SERVERS_DIR = os.path.join(HERE, "servers")
#: The interpreter that runs the Python servers (--python; default: this one).
PYTHON = sys.executable

# ---------------------------------------------------------------------------
# Workloads.  Framed echo (4-byte big-endian length + payload) unless said.
# ---------------------------------------------------------------------------


class Workload:
    def __init__(self, name, title, kind="stream", conns=1, depth=1, size=64,
                 transport="tcp"):
        self.name = name
        self.title = title
        self.kind = kind          # stream, churn, idle
        self.conns = conns
        self.depth = depth
        self.size = size
        self.transport = transport  # tcp (or unix, per --unix), udp, or tls (TCP loopback)

    @property
    def persistent(self):
        return self.kind in ("stream", "idle")


def workloads(quick, idle_conns=None):
    idle = idle_conns or (2000 if quick else 10000)
    return [
        Workload("1c-d1", "1 connection, depth 1, 64 B", conns=1, depth=1),
        Workload("50c-d1", "50 connections, depth 1, 64 B", conns=50, depth=1),
        Workload("50c-d16", "50 connections, 16 pipelined, 64 B", conns=50, depth=16),
        Workload("10c-d4-64k", "10 connections, depth 4, 64 KiB frames", conns=10, depth=4,
                 size=65536),
        Workload("500c-d1", "500 connections, depth 1, 64 B", conns=500, depth=1),
        Workload("churn", "connect, 1 request, close (4 at a time)", kind="churn", conns=4),
        Workload("idle", "%d idle connections: server RSS per connection" % idle,
                 kind="idle", conns=idle),
        Workload("udp", "UDP echo, 4 sockets x 4 in flight, 64 B", conns=4, depth=4,
                 transport="udp"),
        # TLS 1.3 (TLS_AES_128_GCM_SHA256, X25519, no resumption), TCP loopback
        Workload("tls-1c-d1", "TLS: 1 connection, depth 1, 64 B", conns=1, depth=1,
                 transport="tls"),
        Workload("tls-50c-d1", "TLS: 50 connections, depth 1, 64 B", conns=50, depth=1,
                 transport="tls"),
        Workload("tls-50c-d16", "TLS: 50 connections, 16 pipelined, 64 B", conns=50, depth=16,
                 transport="tls"),
        Workload("tls-10c-d4-64k", "TLS: 10 connections, depth 4, 64 KiB frames", conns=10,
                 depth=4, size=65536, transport="tls"),
        Workload("tls-churn", "TLS: connect, full handshake, 1 request, close (4 at a time)",
                 kind="churn", conns=4, transport="tls"),
    ]


# ---------------------------------------------------------------------------
# Servers.  Each runs as its own process: a script in bench/servers/ (or the
# compiled C echo), printing READY once it listens.
# ---------------------------------------------------------------------------


class Server:
    def __init__(self, key, title, script, args=(), transport="tcp", requires=None,
                 max_conns=None, max_conns_why="", group="python", workers=False,
                 cserver_kind=False):
        self.key = key
        self.title = title
        self.script = script      # file in bench/servers, or "c_echo" / "c_tls_echo"
        self.args = list(args)
        self.transport = transport  # tcp, udp or tls
        self.requires = requires  # a module that must be importable
        self.max_conns = max_conns  # most persistent connections it can serve
        self.max_conns_why = max_conns_why
        self.group = group        # c, stdlib, python (peers), cserver
        self.workers = workers
        self.is_cserver = cserver_kind
        self.env = None           # the Runner's environment unless set (--before)
        self.loadgen_args = []    # added to the load generator's command (--proxy)

    def command(self, address_args, workers, bins, tls_files=None):
        """The server's command line; ``bins``: build_binaries()'s paths;
        ``tls_files``: (certificate, key) for a TLS server."""
        if self.script in ("c_echo", "c_tls_echo"):
            cmd = [bins[self.script]]
        else:
            cmd = [PYTHON, os.path.join(SERVERS_DIR, self.script)]
        cmd += self.args + address_args
        if self.transport == "udp":
            cmd.append("--udp")
        if self.transport == "tls":
            cmd += ["--tls-cert", tls_files[0], "--tls-key", tls_files[1]]
        if self.workers:
            cmd += ["--workers", str(workers)]
        return cmd


C_REF = {"tcp": "c-epoll", "udp": "c-epoll-udp", "tls": "c-tls"}
STDLIB_REF = {"tcp": "stdlib-threading", "udp": "stdlib-udp", "tls": "stdlib-threading-tls"}
#: The host name the load generator sends as SNI, and the certificate's.
TLS_SNI = "localhost"


def with_before(srvs, tree):
    """``srvs`` with, after each cserver server, a copy named ``KEY@before``
    that runs cserver from ``tree`` (for a before/after in one run)."""
    env, version, build = cserver_env(tree, "--before")
    if "NOT COMPILED" in build or version == "not importable":
        raise SystemExit("--before %s: cserver there is %s; build it in place first"
                         % (tree, build if version != "not importable" else version))
    out = []
    for s in srvs:
        out.append(s)
        if s.is_cserver:
            b = copy.copy(s)
            b.key = s.key + "@before"
            b.title = s.title + " [before: %s]" % tree
            b.env = env
            out.append(b)
    return out


def with_proxy(srvs, version):
    """``srvs`` with, after each cserver multiplexing stream server, a copy
    named ``KEY+proxy-vN`` that runs with ``proxy_protocol=version`` and
    whose load generator opens every connection with that PROXY header (as
    a balancer would): the cost of PROXY against the same server without
    it, in one run with interleaved rounds."""
    out = []
    for s in srvs:
        out.append(s)
        if s.is_cserver and s.script == "cserver_mux.py" and s.transport == "tcp":
            p = copy.copy(s)
            p.key = "%s+proxy-%s" % (s.key, version)
            p.title = "%s, PROXY %s" % (s.title, version)
            p.args = s.args + ["--proxy-protocol", version]
            p.loadgen_args = s.loadgen_args + ["--proxy", version]
            out.append(p)
    return out


def servers():
    ss = "socketserver_echo.py"
    seq = ("serves one connection at a time")
    pool = ("its pool of 64 threads holds 64 connections")
    return [
        Server("c-epoll", "C epoll echo (reference)", "c_echo", group="c"),
        Server("stdlib-tcp", "stdlib TCPServer", ss, ["--impl", "stdlib", "--kind", "tcp"],
               group="stdlib", max_conns=1, max_conns_why=seq),
        Server("stdlib-threading", "stdlib ThreadingTCPServer", ss,
               ["--impl", "stdlib", "--kind", "threading"], group="stdlib"),
        Server("selectors", "selectors, pure Python (batched)", "selectors_echo.py"),
        Server("asyncio", "asyncio Protocol", "asyncio_echo.py"),
        Server("asyncio-batched", "asyncio Protocol, batched", "asyncio_echo.py", ["--batched"]),
        Server("uvloop", "uvloop Protocol", "asyncio_echo.py", ["--loop", "uvloop"],
               requires="uvloop"),
        Server("uvloop-batched", "uvloop Protocol, batched", "asyncio_echo.py",
               ["--loop", "uvloop", "--batched"], requires="uvloop"),
        Server("rloop", "asyncio Protocol on rloop", "asyncio_echo.py", ["--loop", "rloop"],
               requires="rloop"),
        Server("aiofastnet-uvloop", "aiofastnet on uvloop, Protocol", "asyncio_echo.py",
               ["--loop", "uvloop", "--aiofastnet"], requires="aiofastnet"),
        Server("asyncio-streams", "asyncio streams (readexactly)", "asyncio_streams.py"),
        Server("twisted", "Twisted Int32StringReceiver", "twisted_echo.py", requires="twisted"),
        Server("gevent", "gevent StreamServer", "gevent_echo.py", requires="gevent"),
        Server("cserver-threading", "cserver ThreadingTCPServer (compat)", ss,
               ["--impl", "cserver", "--kind", "threading"], cserver_kind=True),
        Server("cserver-threadpool", "cserver ThreadPoolTCPServer", ss,
               ["--impl", "cserver", "--kind", "threadpool"], max_conns=64,
               max_conns_why=pool, cserver_kind=True),
        Server("cserver-framed", "cserver Threading + FramedRequestHandler", "cserver_framed.py",
               cserver_kind=True),
        Server("cserver-mux", "cserver SelectorTCPServer, FrameHandler", "cserver_mux.py",
               cserver_kind=True),
        Server("cserver-mux-raw", "cserver SelectorTCPServer, raw", "cserver_mux.py", ["--raw"],
               cserver_kind=True),
        Server("cserver-mux-workers", "cserver SelectorTCPServer, FrameHandler, workers",
               "cserver_mux.py", workers=True, cserver_kind=True),
        # UDP
        Server("c-epoll-udp", "C recvmmsg/sendmmsg echo (reference)", "c_echo", transport="udp",
               group="c"),
        Server("stdlib-udp", "stdlib UDPServer", ss, ["--impl", "stdlib", "--kind", "tcp"],
               transport="udp", group="stdlib"),
        Server("asyncio-udp", "asyncio DatagramProtocol", "asyncio_echo.py", transport="udp"),
        Server("uvloop-udp", "uvloop DatagramProtocol", "asyncio_echo.py", ["--loop", "uvloop"],
               transport="udp", requires="uvloop"),
        Server("twisted-udp", "Twisted DatagramProtocol", "twisted_echo.py", transport="udp",
               requires="twisted"),
        Server("gevent-udp", "gevent DatagramServer", "gevent_echo.py", transport="udp",
               requires="gevent"),
        Server("cserver-udp", "cserver UDPServer (compat)", ss,
               ["--impl", "cserver", "--kind", "tcp"], transport="udp", cserver_kind=True),
        Server("cserver-mux-udp", "cserver SelectorUDPServer", "cserver_mux.py", transport="udp",
               cserver_kind=True),
        # TLS: the same scripts with --tls-cert/--tls-key (Server.command)
        Server("c-tls", "C OpenSSL epoll echo (TLS reference)", "c_tls_echo", transport="tls",
               group="c"),
        Server("stdlib-threading-tls", "stdlib ThreadingTCPServer, wrap_socket (TLS)", ss,
               ["--impl", "stdlib", "--kind", "threading"], transport="tls", group="stdlib"),
        Server("asyncio-tls", "asyncio Protocol, ssl= (TLS)", "asyncio_echo.py",
               transport="tls"),
        Server("uvloop-tls", "uvloop Protocol, ssl= (TLS)", "asyncio_echo.py",
               ["--loop", "uvloop"], transport="tls", requires="uvloop"),
        Server("aiofastnet-uvloop-tls", "aiofastnet on uvloop, ssl= (TLS)", "asyncio_echo.py",
               ["--loop", "uvloop", "--aiofastnet"], transport="tls", requires="aiofastnet"),
        Server("twisted-tls", "Twisted Int32StringReceiver, listenSSL (TLS)", "twisted_echo.py",
               transport="tls", requires="OpenSSL"),
        Server("gevent-tls", "gevent StreamServer, ssl_context= (TLS)", "gevent_echo.py",
               transport="tls", requires="gevent"),
        Server("cserver-threading-tls", "cserver TLSMixIn + ThreadingTCPServer (compat, TLS)", ss,
               ["--impl", "cserver", "--kind", "threading"], transport="tls",
               cserver_kind=True),
        Server("cserver-framed-tls", "cserver TLSMixIn + Threading + FramedRequestHandler (TLS)",
               "cserver_framed.py", transport="tls", cserver_kind=True),
        Server("cserver-mux-tls", "cserver SelectorTCPServer, FrameHandler, ssl_context= (TLS)",
               "cserver_mux.py", transport="tls", cserver_kind=True),
    ]


# ---------------------------------------------------------------------------
# Building the C parts
# ---------------------------------------------------------------------------


#: Compiled (and linked with -lssl -lcrypto) to learn whether OpenSSL's
#: headers and libraries are there, before the TLS parts are built.
OPENSSL_PROBE = r"""
#include <openssl/ssl.h>
#if OPENSSL_VERSION_NUMBER < 0x10101000L
#error "OpenSSL 1.1.1 or later is needed (TLS 1.3)"
#endif
int main(void) { return SSL_CTX_new(TLS_method()) == NULL; }
"""
TLS_LIBS = ["-lssl", "-lcrypto"]


def openssl_missing(cc, dest):
    """None if C code can be built against OpenSSL here, else why not."""
    exe = os.path.join(dest, "openssl-probe.tmp%d" % os.getpid())
    try:
        proc = subprocess.run([cc, "-x", "c", "-o", exe, "-"] + TLS_LIBS, input=OPENSSL_PROBE,
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        return "%s: %s" % (cc, exc)
    finally:
        if os.path.exists(exe):
            os.unlink(exe)
    if proc.returncode == 0:
        return None
    lines = [line for line in proc.stderr.splitlines() if "error" in line] or \
        proc.stderr.splitlines() or ["exit status %d" % proc.returncode]
    return ("cannot build against OpenSSL (%s); install its headers and libraries "
            "(Debian: apt-get install libssl-dev)" % lines[0].strip())


def loadgen_has_tls(exe):
    try:
        out = subprocess.run([exe, "--features"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return out.startswith("tls")


def build_binaries(dest=None, force=False):
    """Compile loadgen, c_echo and c_tls_echo into ``dest`` (default
    bench/bin/) with ``cc -O2``, when missing or older than their source;
    return their paths.  With OpenSSL's headers (libssl-dev) the load
    generator is built with TLS (``-DLOADGEN_TLS -lssl -lcrypto``) and
    c_tls_echo too; without, ``"tls_missing"`` says why (the TLS rows are
    then skipped, and say so) and ``"c_tls_echo"`` is None."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise SystemExit("no C compiler (cc) found: the load generator is compiled C")
    dest = dest or BIN
    os.makedirs(dest, exist_ok=True)
    missing = openssl_missing(cc, dest)
    tls = missing is None
    out = {"tls_missing": missing, "c_tls_echo": None}
    builds = [("loadgen", ["-DLOADGEN_TLS"] if tls else [], TLS_LIBS if tls else []),
              ("c_echo", [], [])]
    if tls:
        builds.append(("c_tls_echo", [], TLS_LIBS))
    for name, flags, libs in builds:
        src = os.path.join(HERE, name + ".c")
        exe = os.path.join(dest, name)
        stale = force or not os.path.exists(exe) or \
            os.path.getmtime(exe) < os.path.getmtime(src)
        if not stale and name == "loadgen" and loadgen_has_tls(exe) != tls:
            stale = True   # built before OpenSSL's headers came (or went)
        if stale:
            tmp = exe + ".tmp%d" % os.getpid()
            subprocess.run([cc, "-O2", "-Wall"] + flags + ["-o", tmp, src] + libs, check=True)
            os.replace(tmp, exe)
        out[name] = exe
    return out


def make_certificate(directory):
    """A throwaway EC P-256 key and a self-signed certificate for localhost
    and 127.0.0.1, valid for 2 days, written to ``directory`` (made by
    ``cryptography`` when importable here, else by ``openssl req``).
    Returns (certificate path, key path, how); raises RuntimeError."""
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    try:
        import cryptography
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        cryptography = None
    if cryptography is not None:
        import ipaddress
        pkey = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TLS_SNI)])
        now = datetime.datetime.now(datetime.timezone.utc)
        crt = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(pkey.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.SubjectAlternativeName(
                   [x509.DNSName(TLS_SNI), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                   critical=False)
               .sign(pkey, hashes.SHA256()))
        with open(key, "wb") as f:
            os.chmod(key, 0o600)
            f.write(pkey.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
        with open(cert, "wb") as f:
            f.write(crt.public_bytes(serialization.Encoding.PEM))
        how = "cryptography %s" % cryptography.__version__
    else:
        openssl = shutil.which("openssl")
        if not openssl:
            raise RuntimeError("no way to make a certificate: neither the cryptography package "
                               "nor the openssl command is here")
        proc = subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=" + TLS_SNI,
             "-addext", "subjectAltName=DNS:%s,IP:127.0.0.1" % TLS_SNI],
            capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError("openssl req failed: %s" % proc.stderr.strip()[-300:])
        how = subprocess.run([openssl, "version"], capture_output=True, text=True,
                             timeout=30).stdout.strip() + " (openssl req)"
    return cert, key, how


# ---------------------------------------------------------------------------
# Processes, pinning, /proc
# ---------------------------------------------------------------------------


def cpu_plan():
    """(server cpus, multi-process server cpus, loadgen cpus); empty = unpinned."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return set(), set(), set()
    if len(cores) < 2:
        return set(), set(), set()
    return {cores[0]}, set(cores[:-1]), {cores[-1]}


def spawn(cmd, cpus, env, **kw):
    """Popen in its own process group, inheriting CPU affinity ``cpus``."""
    saved = None
    if cpus:
        saved = os.sched_getaffinity(0)
        os.sched_setaffinity(0, cpus)
    try:
        return subprocess.Popen(cmd, env=env, start_new_session=True, **kw)
    finally:
        if saved is not None:
            os.sched_setaffinity(0, saved)


def kill_group(proc, grace=3.0, children=True):
    """Stop a process we started and its children (its own process group).
    ``children=False``: a process with no children, left alone once reaped."""
    if proc is None or (not children and proc.poll() is not None):
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    if not children:
        return
    # A worker that outlived its parent is still in the group.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def wait_ready(proc, timeout):
    """Read the server's first line: ('ready', where) / ('skip', why) / ('error', why)."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], max(0.0, min(0.5, deadline - time.monotonic())))
        if r:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
            if b"\n" in buf:
                line = buf.split(b"\n", 1)[0].decode(errors="replace").strip()
                if line.startswith("READY "):
                    return "ready", line[6:].strip()
                if line.startswith("SKIP"):
                    return "skip", line[4:].strip()
                return "error", "unexpected output: %r" % line
        elif proc.poll() is not None:
            break
    if proc.poll() is not None:
        return "error", "server exited with status %s before READY" % proc.returncode
    return "error", "server not ready after %.0f s" % timeout


def descendants(pid):
    """pid and every live descendant (scans /proc once)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_seconds(pid):
    """User + system CPU of pid and its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in descendants(pid):
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def rss_kib(pid):
    """VmRSS of pid and its live descendants, in KiB."""
    total = 0
    for p in descendants(pid):
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def raise_nofile(want):
    """Raise RLIMIT_NOFILE's soft limit toward ``want`` (bounded by the hard
    limit); children inherit it.  Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft


# ---------------------------------------------------------------------------
# One round: a fresh server, one load generator run
# ---------------------------------------------------------------------------


class Runner:
    def __init__(self, opts, bins, env):
        self.opts = opts
        self.bins = bins
        self.loadgen = bins["loadgen"]
        self.env = env
        self.server_cpus, self.workers_cpus, self.loadgen_cpus = cpu_plan()
        if opts.no_pin:
            self.server_cpus = self.workers_cpus = self.loadgen_cpus = set()
        self.workers = max(2, len(self.workers_cpus))
        self.tmpdir = tempfile.mkdtemp(prefix="csb", dir="/tmp")
        #: why the TLS rows cannot run (None: they can); see tls_files()
        self.tls_missing = bins.get("tls_missing")
        self.tls_how = None
        self._tls_files = None

    def close(self):
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def tls_files(self):
        """(certificate, key) for the TLS servers, made once per run in the
        run's temporary directory (removed by close()); None, with
        ``tls_missing`` set, when they cannot be made."""
        if self._tls_files is None and self.tls_missing is None:
            try:
                d = os.path.join(self.tmpdir, "tls")
                os.mkdir(d, 0o700)
                cert, key, self.tls_how = make_certificate(d)
                self._tls_files = (cert, key)
            except (RuntimeError, OSError, ValueError) as exc:
                self.tls_missing = "no certificate: %s" % exc
        return self._tls_files

    def round(self, server, wl, index):
        """Run one round; returns a record (dict)."""
        opts = self.opts
        rec = {"type": "round", "server": server.key, "workload": wl.name, "round": index}
        unix = opts.unix and wl.transport == "tcp"   # TLS runs on TCP loopback
        if unix:
            path = os.path.join(self.tmpdir, "s%d" % index)
            if os.path.exists(path):
                os.unlink(path)
            address_args = ["--unix", path]
        else:
            address_args = ["--host", "127.0.0.1", "--port", "0"]
        cpus = self.workers_cpus if server.workers else self.server_cpus
        errlog = open(os.path.join(self.tmpdir, "server.err"), "w+b")
        proc = None
        try:
            tls_files = self.tls_files() if server.transport == "tls" else None
            if server.transport == "tls" and tls_files is None:
                rec["status"] = "skip"
                rec["note"] = "TLS not measured: %s" % self.tls_missing
                return rec
            proc = spawn(server.command(address_args, self.workers, self.bins, tls_files), cpus,
                         server.env or self.env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errlog)
            status, where = wait_ready(proc, opts.ready_timeout)
            if status != "ready":
                rec["status"] = status
                rec["note"] = where
                if status == "error":
                    errlog.seek(0)
                    tail = errlog.read()[-600:].decode(errors="replace").strip()
                    if tail:
                        rec["note"] += ": " + tail.splitlines()[-1]
                return rec
            if wl.transport == "udp":
                target = ["--udp", "127.0.0.1:%s" % where]
            elif unix:
                target = ["--unix", where]
            elif wl.transport == "tls":
                target = ["--tcp", "127.0.0.1:%s" % where, "--tls", "--sni", TLS_SNI]
            else:
                target = ["--tcp", "127.0.0.1:%s" % where]
            cmd = [self.loadgen] + target + [
                "--conns", str(wl.conns), "--depth", str(wl.depth), "--size", str(wl.size),
                "--warmup", str(opts.warmup), "--duration", str(opts.duration),
                "--connect-timeout", str(self.connect_timeout(wl))]
            if wl.kind != "stream" and wl.transport != "udp":
                cmd += ["--kind", wl.kind]
            cmd += server.loadgen_args
            if wl.kind == "idle":
                self._idle(proc, cmd, rec)
            else:
                self._load(proc, cmd, rec)
            errlog.seek(0)
            err = errlog.read()
            if err.strip():
                rec["server_stderr_lines"] = err.count(b"\n")
            return rec
        finally:
            kill_group(proc)
            if proc is not None and proc.stdout:
                proc.stdout.close()
            errlog.close()

    def connect_timeout(self, wl):
        """Bound on the setup phase: idle connections to threaded servers take longer."""
        if self.opts.connect_timeout:
            return self.opts.connect_timeout
        return 60.0 if wl.kind == "idle" else 10.0

    def _load(self, proc, cmd, rec):
        cpu0 = cpu_seconds(proc.pid)
        limit = float(cmd[cmd.index("--connect-timeout") + 1]) + self.opts.warmup + \
            self.opts.duration + 15
        t0 = time.monotonic()
        lg = spawn(cmd, self.loadgen_cpus, self.env, stdin=subprocess.DEVNULL,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = lg.communicate(timeout=limit)
            lifetime = time.monotonic() - t0
        except subprocess.TimeoutExpired:
            kill_group(lg, children=False)
            rec["status"] = "error"
            rec["note"] = "load generator timed out after %.0f s" % limit
            return
        finally:
            kill_group(lg, grace=0.5, children=False)
            for f in (lg.stdout, lg.stderr):
                if f:
                    f.close()
        cpu1 = cpu_seconds(proc.pid)
        try:
            res = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            rec["status"] = "error"
            rec["note"] = "load generator failed (%s): %s" % (
                lg.returncode, err.decode(errors="replace").strip()[-300:])
            return
        rec["status"] = "ok"
        rec["loadgen"] = res
        rec["rps"] = res["rps"]
        notes = []
        if proc.poll() is not None:
            rec["status"] = "error"
            notes.append("server died during the round (status %s)" % proc.returncode)
        elif res["requests"] == 0:
            rec["status"] = "error"
            notes.append("no reply in the measured window")
        if res["kind"] == "stream" and res["ready"] < res["conns"]:
            notes.append("only %d of %d connections ready" % (res["ready"], res["conns"]))
        if res["mismatches"]:
            notes.append("%d MISMATCHED replies" % res["mismatches"])
        tls = res.get("tls")
        if tls:
            if tls.get("failed"):
                notes.append("%d TLS handshakes failed (first: %s)" % (tls["failed"],
                                                                        tls.get("error")))
            elif tls.get("error"):
                notes.append("TLS: %s" % tls["error"])
            if tls.get("resumed"):
                notes.append("%d TLS sessions resumed (expected none)" % tls["resumed"])
        if notes:
            rec["note"] = "; ".join(notes)
        rec["server_cpu_s"] = round(cpu1 - cpu0, 3)
        # Over the load generator's life, as its own cpu_pct is.
        rec["server_cpu_pct"] = round(100.0 * (cpu1 - cpu0) / lifetime, 1) if lifetime else 0

    def _idle(self, proc, cmd, rec):
        setup = float(cmd[cmd.index("--connect-timeout") + 1])
        cmd = cmd + ["--hold", str(setup + 30)]
        time.sleep(0.2)
        before = rss_kib(proc.pid)
        lg = spawn(cmd, self.loadgen_cpus, self.env, stdin=subprocess.PIPE,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        held = None
        try:
            deadline = time.monotonic() + setup + 10
            buf = b""
            while time.monotonic() < deadline and held is None:
                r, _, _ = select.select([lg.stderr], [], [], 0.5)
                if r:
                    chunk = os.read(lg.stderr.fileno(), 4096)
                    if not chunk:
                        break
                    buf += chunk
                    for line in buf.decode(errors="replace").splitlines():
                        if line.startswith("HELD "):
                            held = int(line.split()[1])
                elif lg.poll() is not None:
                    break
            if held is not None:
                time.sleep(0.5)  # let the server settle (threads started, buffers touched)
                after = rss_kib(proc.pid)
            try:  # closing its stdin tells the load generator to let go
                out, _ = lg.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                out = b""
        finally:
            kill_group(lg, grace=0.5, children=False)
            for f in (lg.stdout, lg.stderr):
                if f:
                    f.close()
        if held is None:
            rec["status"] = "error"
            rec["note"] = "load generator never held its connections"
            return
        try:
            res = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            res = {}
        rec["status"] = "ok"
        rec["loadgen"] = res
        rec["held"] = held
        rec["rss_before_kib"] = before
        rec["rss_after_kib"] = after
        rec["rss_per_conn_kib"] = round((after - before) / held, 2) if held else None
        if held < int(cmd[cmd.index("--conns") + 1]):
            rec["note"] = "held only %d connections" % held


# ---------------------------------------------------------------------------
# Summaries, ratios, table, chart
# ---------------------------------------------------------------------------


def summarize(records, wl, server):
    ok = [r for r in records if r.get("status") == "ok"]
    s = {"type": "summary", "server": server.key, "title": server.title, "workload": wl.name,
         "rounds": len(records), "ok_rounds": len(ok)}
    if not ok:
        s["status"] = records[0].get("status", "error") if records else "error"
        s["note"] = records[0].get("note", "") if records else ""
        return s
    s["status"] = "ok"
    notes = sorted({r["note"] for r in records if r.get("note")})
    if notes:
        s["note"] = "; ".join(notes)
    if wl.kind == "idle":
        vals = [r["rss_per_conn_kib"] for r in ok if r.get("rss_per_conn_kib") is not None]
        s["value"] = statistics.median(vals) if vals else None
        s["min"], s["max"] = (min(vals), max(vals)) if vals else (None, None)
        s["held"] = min(r["held"] for r in ok)
        s["unit"] = "KiB/conn"
        return s
    vals = [r["rps"] for r in ok]
    s["value"] = statistics.median(vals)
    s["min"], s["max"] = min(vals), max(vals)
    s["unit"] = "req/s"
    lg = [r["loadgen"] for r in ok]
    for p in ("p50", "p99", "p999"):
        s[p + "_us"] = statistics.median(x["lat_us"][p] for x in lg)
    s["mismatches"] = sum(x["mismatches"] for x in lg)
    s["errors"] = sum(x["errors"] for x in lg)
    s["lost"] = sum(x["lost"] for x in lg)
    s["starved"] = max(x["starved"] for x in lg)
    s["server_cpu_pct"] = statistics.median(r["server_cpu_pct"] for r in ok)
    s["loadgen_cpu_pct"] = statistics.median(x["cpu_pct"] for x in lg)
    tls = [x["tls"] for x in lg if x.get("tls")]
    if tls:
        s["tls"] = {"handshakes": sum(t["handshakes"] for t in tls),
                    "resumed": sum(t["resumed"] for t in tls),
                    "failed": sum(t["failed"] for t in tls),
                    "negotiated": sorted({"%s %s %s" % (t["version"], t["cipher"], t["group"])
                                          for t in tls if t.get("version")})}
    return s


def plain_twin(key):
    """The plaintext server of a TLS server's key (c-tls: c-epoll;
    KEY-tls: KEY; KEY-tls@before: KEY@before), or None."""
    base, at, rest = key.partition("@")
    if base == C_REF["tls"]:
        twin = C_REF["tcp"]
    elif base.endswith("-tls"):
        twin = base[:-len("-tls")]
    else:
        return None
    return twin + at + rest


def add_plain_ratios(summ):
    """``x_plain`` on each TLS summary: its requests/s over those of the
    same server without TLS on the same workload, when both ran (what TLS
    costs that server)."""
    for (key, wname), s in summ.items():
        twin = plain_twin(key)
        if not twin or not wname.startswith("tls-") or s.get("status") != "ok":
            continue
        p = summ.get((twin, wname[len("tls-"):]))
        if p and p.get("status") == "ok" and p.get("value") and s.get("value"):
            s["x_plain"] = s["value"] / p["value"]


def add_ratios(summaries, wl):
    by = {s["server"]: s for s in summaries if s.get("status") == "ok" and s.get("value")}
    c = by.get(C_REF[wl.transport])
    std = by.get(STDLIB_REF[wl.transport])
    for s in summaries:
        if s.get("status") != "ok" or not s.get("value"):
            continue
        if wl.kind != "idle" and c:
            s["x_c"] = s["value"] / c["value"]
        if std and not (wl.kind == "idle" and s is c):
            s["x_stdlib"] = s["value"] / std["value"]


def fmt_num(v):
    if v is None:
        return "-"
    if v >= 1e6:
        return "%.2fM" % (v / 1e6)
    if v >= 1e4:
        return "%.1fk" % (v / 1e3)
    if v >= 1e3:
        return "%.2fk" % (v / 1e3)
    return "%.0f" % v if v >= 100 else "%.1f" % v


def fmt_ratio(v):
    return "-" if v is None else ("%.2fx" % v if v < 10 else "%.0fx" % v)


def spread(s):
    v = s.get("value")
    if not v or s.get("min") is None:
        return "-"
    return "-%.0f%%/+%.0f%%" % (100 * (v - s["min"]) / v, 100 * (s["max"] - v) / v)


def cell_text(s, wl):
    if s is None:
        return ""
    if s.get("status") != "ok":
        return {"n/a": "n/a", "skip": "skipped"}.get(s.get("status"), "error")
    if wl.kind == "idle":
        text = "%.1f KiB" % s["value"] if s.get("value") is not None else "-"
        if s.get("x_stdlib"):
            text += " (%s std)" % fmt_ratio(s["x_stdlib"])
        return text
    parts = [fmt_num(s["value"])]
    extra = []
    if s.get("x_c") is not None:
        extra.append("%s C" % fmt_ratio(s["x_c"]))
    if s.get("x_stdlib") is not None:
        extra.append("%s std" % fmt_ratio(s["x_stdlib"]))
    if extra:
        parts.append("(" + ", ".join(extra) + ")")
    if s.get("mismatches"):
        parts.append("**%d mismatches**" % s["mismatches"])
    return " ".join(parts)


def markdown(meta, wls, srvs, summ):
    """The report: machine, summary matrix, one detail table per workload, notes."""
    lines = []
    lines.append("# cserver benchmark, %s" % meta["date"])
    lines.append("")
    lines.append("- command: `%s`" % meta["command"])
    lines.append("- machine: %s, %s cores (%s), Linux %s; load average at start %s, at end %s" % (
        meta["cpu"], meta["cores"], meta["pinning"], meta["kernel"], meta["loadavg_start"],
        meta.get("loadavg_end", "?")))
    lines.append("- Python %s; cserver %s (%s), git %s" % (
        meta["python"], meta["cserver"], meta["cserver_build"], meta["git"]))
    lines.append("- peers: " + ", ".join("%s %s" % kv for kv in sorted(meta["peers"].items())))
    lines.append("- method: fresh server per round, %d round(s), %.1f s warm-up + %.1f s "
                 "measured; median of rounds; `x C` = ratio to the C epoll echo server, "
                 "`x std` = ratio to the stdlib (ThreadingTCPServer for TCP, UDPServer for "
                 "UDP); higher is better except RSS/conn" % (
                     meta["rounds"], meta["warmup"], meta["duration"]))
    tls = meta.get("tls") or {}
    if any(w.transport == "tls" for w in wls):
        if tls.get("missing"):
            lines.append("- **TLS: NOT MEASURED: %s**" % tls["missing"])
        else:
            lines.append(
                "- TLS rows: TLS 1.3 only, TLS_AES_128_GCM_SHA256 with X25519 (set by the load "
                "generator), SNI `%s`, no session resumption (tls-churn: a full handshake per "
                "request); certificate: EC P-256, self-signed, made for this run (%s); load "
                "generator: %s; the Python servers' ssl: %s; `x C` = ratio to the C OpenSSL "
                "epoll echo, `x std` = to the stdlib ThreadingTCPServer with wrap_socket, "
                "`x plain` = to the same server without TLS on the same workload" % (
                    TLS_SNI, tls.get("certificate") or "?", tls.get("loadgen_openssl") or "?",
                    tls.get("python_openssl") or "?"))
    lines.append("")
    lines.append("## Summary: requests/s (median) and ratios; idle: server RSS per connection")
    lines.append("")
    for transport in ("tcp", "udp", "tls"):
        cols = [w for w in wls if w.transport == transport]
        rows = [srv for srv in srvs if srv.transport == transport]
        if not cols or not rows:
            continue
        lines.append("| %s server | " % ("UDP" if transport == "udp" else
                                        "TLS" if transport == "tls" else
                                        "Unix" if meta["transport"] == "unix" else "TCP")
                     + " | ".join(w.name for w in cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for srv in rows:
            cells = [cell_text(summ.get((srv.key, w.name)), w) for w in cols]
            if any(cells):
                lines.append("| %s | %s |" % (srv.title, " | ".join(cells)))
        lines.append("")
    for w in wls:
        rows = [(srv, summ.get((srv.key, w.name))) for srv in srvs]
        rows = [(srv, s) for srv, s in rows if s is not None]
        if not rows:
            continue
        lines.append("### %s: %s" % (w.name, w.title))
        lines.append("")
        if w.kind == "idle":
            lines.append("| server | held | RSS/conn (KiB) | spread | x std |")
            lines.append("|---|---|---|---|---|")
            for srv, s in rows:
                if s.get("status") != "ok":
                    lines.append("| %s | %s | | | |" % (srv.title, cell_text(s, w)))
                    continue
                lines.append("| %s | %s | %s | %s | %s |" % (
                    srv.title, s.get("held"),
                    "%.1f" % s["value"] if s.get("value") is not None else "-",
                    "%.1f-%.1f" % (s["min"], s["max"]) if s.get("min") is not None else "-",
                    fmt_ratio(s.get("x_stdlib"))))
            lines.append("")
            continue
        tls = w.transport == "tls"
        lines.append("| server | req/s | spread | x C | x std |%s p50 us | p99 us | p99.9 us "
                     "| server CPU | loadgen CPU | mismatches/errors |" % (
                         " x plain |" if tls else ""))
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if tls else ""))
        for srv, s in rows:
            if s.get("status") != "ok":
                lines.append("| %s | %s | | | | | | | | | |%s" % (srv.title, cell_text(s, w),
                                                               " |" if tls else ""))
                continue
            bad = "%d/%d" % (s["mismatches"], s["errors"])
            if s.get("lost"):
                bad += " (%d lost)" % s["lost"]
            if s.get("tls", {}).get("failed"):
                bad += " (%d handshakes failed)" % s["tls"]["failed"]
            row = "| %s | %s | %s | %s | %s |%s %.0f | %.0f | %.0f | %.0f%% | %.0f%% | %s |"
            lines.append(row % (
                srv.title, fmt_num(s["value"]), spread(s), fmt_ratio(s.get("x_c")),
                fmt_ratio(s.get("x_stdlib")),
                " %s |" % fmt_ratio(s.get("x_plain")) if tls else "",
                s["p50_us"], s["p99_us"], s["p999_us"],
                s["server_cpu_pct"], s["loadgen_cpu_pct"], bad))
        lines.append("")
    lines.append("## Where cserver is not ahead of every Python peer")
    lines.append("")
    behind = not_ahead(wls, srvs, summ)
    lines.extend(behind or ["(none in this run)"])
    lines.append("")
    notes = []
    for srv in srvs:
        seen = {}
        for w in wls:
            s = summ.get((srv.key, w.name))
            if s is not None and s.get("note"):
                seen.setdefault((s.get("status"), s["note"]), []).append(w.name)
        for (status, note), names in seen.items():
            notes.append("- %s (%s): %s: %s" % (srv.key, ", ".join(names), status, note))
    if notes:
        lines.append("## Notes")
        lines.append("")
        lines.extend(notes)
        lines.append("")
    return "\n".join(lines)


def not_ahead(wls, srvs, summ):
    """For each workload: the Python peers that beat the best cserver server."""
    out = []
    for w in wls:
        ok = {srv.key: summ[(srv.key, w.name)] for srv in srvs
              if summ.get((srv.key, w.name), {}).get("status") == "ok"
              and summ[(srv.key, w.name)].get("value") is not None}
        ours = [srv for srv in srvs if srv.is_cserver and srv.key in ok]
        peers = [srv for srv in srvs if srv.group in ("python", "stdlib") and not srv.is_cserver
                 and srv.key in ok]
        if not ours or not peers:
            continue
        lower_better = w.kind == "idle"
        best = (min if lower_better else max)(ours, key=lambda srv: ok[srv.key]["value"])
        bv = ok[best.key]["value"]
        beat = [p for p in peers
                if (ok[p.key]["value"] < bv if lower_better else ok[p.key]["value"] > bv)]
        if beat:
            out.append("- %s: best cserver (%s, %s) is behind %s" % (
                w.name, best.key, cell_text(ok[best.key], w),
                ", ".join("%s (%s)" % (p.key, cell_text(ok[p.key], w)) for p in beat)))
    return out


def chart(path, wls, srvs, summ, meta):
    """A PNG: one panel per workload, a bar per server (cserver highlighted)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [w for w in wls if any(summ.get((s.key, w.name), {}).get("status") == "ok"
                                    for s in srvs)]
    if not panels:
        return False
    ncol = 2
    nrow = (len(panels) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(14, 3.6 * nrow), squeeze=False)
    colors = {"c": "#555555", "stdlib": "#d62728", "python": "#1f77b4"}
    for ax, w in zip(axes.flat, panels):
        rows = [(srv, summ[(srv.key, w.name)]) for srv in srvs
                if summ.get((srv.key, w.name), {}).get("status") == "ok"
                and summ[(srv.key, w.name)].get("value") is not None]
        names = [srv.title for srv, _ in rows]
        vals = [s["value"] for _, s in rows]
        errs = [[s["value"] - s["min"] for _, s in rows], [s["max"] - s["value"] for _, s in rows]]
        cols = ["#2ca02c" if srv.is_cserver else colors.get(srv.group, "#1f77b4")
                for srv, _ in rows]
        y = range(len(rows))
        ax.barh(list(y), vals, xerr=errs, color=cols, capsize=2)
        ax.set_yticks(list(y))
        ax.set_yticklabels(names, fontsize=7)
        ax.invert_yaxis()
        ax.set_title("%s: %s" % (w.name, w.title), fontsize=9)
        ax.set_xlabel("KiB per connection (lower is better)" if w.kind == "idle"
                      else "requests/s (higher is better)", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("cserver benchmark %s - %s, Python %s" % (meta["date"], meta["cpu"],
                                                          meta["python"]), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------
# Machine info
# ---------------------------------------------------------------------------


def cserver_env(source=None, option="--cserver-from"):
    """Environment for the servers, and how cserver is found: ``source`` (a
    tree with cserver/ built in place), else this source tree when it is
    built in place, else the installed package."""
    env = dict(os.environ)
    tree = os.path.abspath(source) if source else ROOT
    pkg = os.path.join(tree, "cserver")
    # Built in place for this interpreter (.so files of another one do not count).
    built = os.path.isdir(pkg) and any(
        os.path.isfile(os.path.join(pkg, "socketserver" + suffix))
        for suffix in importlib.machinery.EXTENSION_SUFFIXES)
    if source and not os.path.isdir(pkg):
        raise SystemExit("--cserver-from %s: no cserver/ package there" % source)
    if built or source:
        env["PYTHONPATH"] = tree + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    probe = subprocess.run(
        [PYTHON, "-c",
         "import cserver, cserver.socketserver as m; print(cserver.version); "
         "print(m.__file__)"], env=env, capture_output=True, text=True, cwd=SERVERS_DIR)
    if probe.returncode != 0:
        return env, "not importable", "-"
    version, where = probe.stdout.split()[:2]
    if source and not os.path.abspath(where).startswith(pkg + os.sep):
        raise SystemExit("%s %s: cserver is imported from %s, not from that tree; "
                         "build it in place first" % (option, source, where))
    build = "compiled" if where.endswith((".so", ".pyd")) else "NOT COMPILED (pure Python)"
    build += ", " + (("source tree %s" % tree) if (built or source) else "installed")
    return env, version, build


def python_version(python):
    """The version of the interpreter ``python`` (a path or a name on PATH)."""
    if python == sys.executable:
        return platform.python_version()
    return subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True, timeout=60, check=True).stdout.strip()


_importable = {}
#: The peers whose versions the report gives (distribution names).
PEERS = ("uvloop", "twisted", "gevent", "rloop", "aiofastnet", "pyOpenSSL", "service-identity",
         "cryptography")


def importable(module):
    """Whether the servers' interpreter (PYTHON) can import ``module``."""
    if module not in _importable:
        if PYTHON == sys.executable:
            _importable[module] = importlib.util.find_spec(module) is not None
        else:
            probe = subprocess.run(
                [PYTHON, "-c", "import importlib.util, sys; "
                 "sys.exit(importlib.util.find_spec(sys.argv[1]) is None)", module],
                capture_output=True, timeout=60, cwd=SERVERS_DIR)
            _importable[module] = probe.returncode == 0
    return _importable[module]


def machine_info(opts, cserver_version, cserver_build, pin):
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    peers = {}
    try:
        from importlib.metadata import version
    except ImportError:  # pragma: no cover
        version = None
    for name in PEERS + ("matplotlib",):
        try:
            peers[name] = version(name) if version else "?"
        except Exception:
            peers[name] = "not installed"
    import ssl
    python_openssl = ssl.OPENSSL_VERSION
    if PYTHON != sys.executable:
        # the servers' interpreter has its own packages (matplotlib stays
        # the harness's: it draws the chart)
        probe = subprocess.run(
            [PYTHON, "-c", "import json, sys\n"
             "from importlib.metadata import version\n"
             "out = {}\n"
             "for name in sys.argv[1:]:\n"
             "    try: out[name] = version(name)\n"
             "    except Exception: out[name] = 'not installed'\n"
             "import ssl\n"
             "out['ssl'] = ssl.OPENSSL_VERSION\n"
             "print(json.dumps(out))"] + list(PEERS),
            capture_output=True, text=True, timeout=60, cwd=SERVERS_DIR)
        try:
            peers.update(json.loads(probe.stdout))
            python_openssl = peers.pop("ssl")
        except (ValueError, KeyError):
            peers.update((name, "?") for name in PEERS)
            python_openssl = "?"
    try:
        git = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        git = "?"
    server_cpus, _, lg_cpus = pin
    return {
        "type": "machine",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "pinning": ("server on cpu %s, load generator on cpu %s" % (
            ",".join(map(str, sorted(server_cpus))), ",".join(map(str, sorted(lg_cpus))))
            if server_cpus else "not pinned"),
        "kernel": platform.release(),
        "python": python_version(PYTHON),
        "cserver": cserver_version,
        "cserver_build": cserver_build,
        "git": git,
        "peers": peers,
        "loadavg_start": "%.2f %.2f %.2f" % os.getloadavg(),
        "command": " ".join(["python", "bench/run.py"] + sys.argv[1:]),
        "rounds": opts.rounds,
        "warmup": opts.warmup,
        "duration": opts.duration,
        "transport": "unix" if opts.unix else "tcp loopback",
        "tls": {"python_openssl": python_openssl},
    }


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="1 round, 0.2 s warm-up, 0.5 s measured, 2000 idle connections")
    p.add_argument("--rounds", type=int, help="rounds per cell (default 3; --quick 1)")
    p.add_argument("--warmup", type=float, help="seconds (default 1; --quick 0.2)")
    p.add_argument("--duration", type=float, help="measured seconds (default 3; --quick 0.5)")
    p.add_argument("--idle-conns", type=int, help="idle workload size (default 10000)")
    p.add_argument("--servers", help="comma-separated substrings of server keys")
    p.add_argument("--workloads", help="comma-separated workload names")
    p.add_argument("--only", action="append", default=[],
                   help="SERVER/WORKLOAD substring; repeatable; runs only those cells "
                        "(plus the baselines)")
    p.add_argument("--no-baselines", action="store_true",
                   help="do not add the C and stdlib servers to a filtered run")
    p.add_argument("--unix", action="store_true", help="Unix sockets instead of TCP loopback")
    p.add_argument("--no-pin", action="store_true", help="do not pin to cores")
    p.add_argument("--connect-timeout", type=float, default=0.0,
                   help="bound on opening the connections (default 10 s, idle 60 s)")
    p.add_argument("--ready-timeout", type=float, default=30.0)
    p.add_argument("--out", help="results directory (default bench/results/<date>)")
    p.add_argument("--cserver-from", metavar="DIR",
                   help="run cserver from this source tree (built in place) instead")
    p.add_argument("--before", metavar="DIR",
                   help="also run every selected cserver server from this source tree (built "
                        "in place), as KEY@before, in the same run")
    p.add_argument("--proxy", choices=("v1", "v2"),
                   help="also run every selected cserver multiplexing TCP server with "
                        "proxy_protocol=VERSION, as KEY+proxy-VERSION, its load generator "
                        "sending that PROXY header first on every connection, in the same run")
    p.add_argument("--bin", help="where to build loadgen and c_echo (default bench/bin)")
    p.add_argument("--list", action="store_true", help="list servers and workloads and exit")
    p.add_argument("--python", metavar="PYTHON", default=sys.executable,
                   help="the interpreter that runs the Python servers (default: this one)")
    opts = p.parse_args(argv)
    found = shutil.which(opts.python)
    if found is None:
        p.error("--python %s: no such interpreter" % opts.python)
    try:
        python_version(found)
    except (OSError, subprocess.SubprocessError) as exc:
        p.error("--python %s does not run: %s" % (opts.python, exc))
    opts.python = found
    opts.rounds = opts.rounds or (1 if opts.quick else 3)
    opts.warmup = opts.warmup if opts.warmup is not None else (0.2 if opts.quick else 1.0)
    opts.duration = opts.duration or (0.5 if opts.quick else 3.0)
    for name in ("rounds", "warmup", "duration", "connect_timeout", "ready_timeout"):
        v = getattr(opts, name)
        if not 0 <= v <= 600 or (name not in ("warmup", "connect_timeout") and v == 0):
            p.error("--%s out of range" % name.replace("_", "-"))
    return opts


def run_cells(runner, cells, opts, records, jsonl, log, started):
    """Every round of every cell into ``records[(server, workload)]``.

    Rounds are interleaved: round 1 of every cell, then round 2 of every
    cell, and so on.  Run back to back, the rounds of one cell share
    whatever else the machine was doing in those seconds, so a burst of
    load elsewhere (a build, another benchmark) moved one server's median
    and not its neighbours'; interleaved, it lands on one round of many
    cells and the median of each cell drops it."""
    skipped = {}
    given_up = set()
    for srv, w in cells:
        key = (srv.key, w.name)
        if w.persistent and srv.max_conns is not None and w.conns > srv.max_conns:
            records[key] = [{"type": "round", "server": srv.key, "workload": w.name,
                             "status": "n/a", "note": srv.max_conns_why}]
        elif srv.requires and not importable(srv.requires):
            records[key] = [{"type": "round", "server": srv.key, "workload": w.name,
                             "status": "skip",
                             "note": "%s is not installed (pip install -r "
                                     "bench/requirements.txt)" % srv.requires}]
        if key in records:
            given_up.add(key)
    for i in range(opts.rounds):
        for n, (srv, w) in enumerate(cells, 1):
            key = (srv.key, w.name)
            if key in given_up:
                continue
            if srv.key in skipped:
                records[key] = [dict(skipped[srv.key], workload=w.name)]
                given_up.add(key)
                continue
            log.write("[%3d/%d %5.0fs] %-10s %-24s round %d/%d ... " % (
                n, len(cells), time.monotonic() - started, w.name, srv.key, i + 1,
                opts.rounds))
            log.flush()
            rec = runner.round(srv, w, i)
            records.setdefault(key, []).append(rec)
            jsonl.write(json.dumps(rec) + "\n")
            jsonl.flush()
            if rec["status"] == "ok":
                if w.kind == "idle":
                    log.write("%.1f KiB/conn (%s held)\n" % (
                        rec.get("rss_per_conn_kib") or 0, rec.get("held")))
                else:
                    lg = rec["loadgen"]
                    log.write("%s req/s, p99 %.0f us, cpu server %.0f%% loadgen %.0f%%%s\n" % (
                        fmt_num(rec["rps"]), lg["lat_us"]["p99"], rec["server_cpu_pct"],
                        lg["cpu_pct"],
                        ", %d MISMATCHES" % lg["mismatches"] if lg["mismatches"] else ""))
                continue
            log.write("%s: %s\n" % (rec["status"], rec.get("note", "")))
            if rec["status"] == "skip":
                skipped[srv.key] = rec
                given_up.add(key)
            elif rec["status"] == "error" and i == 0:
                given_up.add(key)   # a server that fails its first round is not retried


def select_cells(opts, wls, srvs):
    def match(key, spec):
        return not spec or any(part.strip().lower() in key.lower()
                               for part in spec.split(",") if part.strip())
    wls = [w for w in wls if not opts.workloads or w.name in
           [x.strip() for x in opts.workloads.split(",")]]
    chosen = [s for s in srvs if match(s.key, opts.servers)]
    cells = []
    for w in wls:
        for s in chosen:
            if s.transport != w.transport:
                continue
            ident = "%s/%s" % (s.key, w.name)
            if opts.only and not any(o.lower() in ident.lower() for o in opts.only):
                continue
            cells.append((s, w))
    if not opts.no_baselines and cells:
        wanted = {w.name for _, w in cells}
        have = {(s.key, w.name) for s, w in cells}
        for w in wls:
            if w.name not in wanted:
                continue
            for ref in (C_REF[w.transport], STDLIB_REF[w.transport]):
                if (ref, w.name) not in have:
                    srv = next(s for s in srvs if s.key == ref)
                    cells.append((srv, w))
    order = {s.key: i for i, s in enumerate(srvs)}
    worder = {w.name: i for i, w in enumerate(wls)}
    cells.sort(key=lambda c: (worder[c[1].name], order[c[0].key]))
    return wls, cells


def _exit_on_sigterm(signum, frame):
    # SIGTERM ends the run like Ctrl-C: through the finally blocks, which
    # stop the server and load generator of the current round by their pid.
    raise SystemExit(128 + signum)


def main(argv=None):
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    opts = parse_args(argv if argv is not None else sys.argv[1:])
    all_w = workloads(opts.quick, opts.idle_conns)
    all_s = servers()
    if opts.list:
        for w in all_w:
            print("workload %-12s %s" % (w.name, w.title))
        for s in all_s:
            print("server   %-22s %s (%s)" % (s.key, s.title, s.transport))
        return 0
    global PYTHON
    PYTHON = opts.python
    bins = build_binaries(opts.bin)
    idle = next(w for w in all_w if w.kind == "idle")
    soft = raise_nofile(idle.conns + 1024)
    if soft < idle.conns + 256:
        idle.conns = max(100, soft - 256)
        idle.title = "%d idle connections (RLIMIT_NOFILE %d): server RSS per connection" % (
            idle.conns, soft)
    env, cs_version, cs_build = cserver_env(opts.cserver_from)
    if opts.before:
        all_s = with_before(all_s, opts.before)
    if opts.proxy:
        all_s = with_proxy(all_s, opts.proxy)
    wls, cells = select_cells(opts, all_w, all_s)
    runner = Runner(opts, bins, env)
    meta = machine_info(opts, cs_version, cs_build,
                        (runner.server_cpus, runner.workers_cpus, runner.loadgen_cpus))
    meta["workers"] = runner.workers
    tls_cells = any(w.transport == "tls" for _, w in cells)
    if tls_cells:
        runner.tls_files()   # the certificate, once, before the first round
        meta["tls"].update(missing=runner.tls_missing, certificate=runner.tls_how,
                           loadgen_openssl=subprocess.run(
                               [bins["loadgen"], "--features"], capture_output=True, text=True,
                               timeout=30).stdout.strip().partition(" ")[2] or None)
    out_dir = opts.out or os.path.join(HERE, "results", datetime.datetime.now().strftime(
        "%Y%m%d-%H%M%S"))
    os.makedirs(out_dir, exist_ok=True)
    jsonl = open(os.path.join(out_dir, "results.jsonl"), "w")
    jsonl.write(json.dumps(meta) + "\n")
    log = sys.stderr
    log.write("cserver bench: %d cells x %d round(s), cserver %s (%s); results in %s\n" % (
        len(cells), opts.rounds, cs_version, cs_build, out_dir))
    if "NOT COMPILED" in cs_build:
        log.write("WARNING: cserver runs as pure Python here; build it first "
                  "(python setup.py build_ext --inplace, or pip install .)\n")
    tls_warning = ("WARNING: THE TLS ROWS ARE SKIPPED (not measured): %s\n" % runner.tls_missing
                   if tls_cells and runner.tls_missing else "")
    log.write(tls_warning)
    summ = {}
    started = time.monotonic()
    records = {}
    try:
        run_cells(runner, cells, opts, records, jsonl, log, started)
    except KeyboardInterrupt:
        log.write("\ninterrupted: reporting what was measured\n")
    finally:
        runner.close()
    for srv, w in cells:
        if records.get((srv.key, w.name)):
            summ[(srv.key, w.name)] = summarize(records[(srv.key, w.name)], w, srv)
    for w in wls:
        add_ratios([s for (k, wn), s in summ.items() if wn == w.name], w)
    add_plain_ratios(summ)
    meta["loadavg_end"] = "%.2f %.2f %.2f" % os.getloadavg()
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    for s in summ.values():
        jsonl.write(json.dumps(s) + "\n")
    jsonl.write(json.dumps(dict(meta, type="machine_end")) + "\n")
    jsonl.close()
    used_w = [w for w in wls if any(k[1] == w.name for k in summ)]
    used_s = [s for s in all_s if any(k[0] == s.key for k in summ)]
    md = markdown(meta, used_w, used_s, summ)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    png = os.path.join(out_dir, "chart.png")
    if chart(png, used_w, used_s, summ, meta):
        log.write("chart: %s\n" % png)
    else:
        log.write("no chart (matplotlib is not installed)\n")
    log.write(tls_warning)
    log.write("results: %s (%.0f s)\n" % (out_dir, meta["elapsed_s"]))
    bad = [s for s in summ.values() if s.get("mismatches")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
