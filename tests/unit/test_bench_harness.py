"""The benchmark instrument works: bench/loadgen.c and bench/c_echo.c build,
and short rounds against the C echo server and a Python reference server
complete with every reply verified.  Behaviour only, never speed.

The C parts are compiled here into a temporary directory with ``cc``; without
a C compiler these tests are skipped (the harness cannot run either).
"""
import importlib.util
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "bench")
SERVERS = os.path.join(BENCH, "servers")

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None and shutil.which("gcc") is None,
    reason="no C compiler (cc): the load generator and the C echo server are compiled C")

ROUND = ["--warmup", "0.1", "--duration", "0.5", "--connect-timeout", "10"]


def load_run_module():
    spec = importlib.util.spec_from_file_location("cserver_bench_run",
                                                  os.path.join(BENCH, "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bins(tmp_path_factory):
    return load_run_module().build_binaries(str(tmp_path_factory.mktemp("bin")))


class Server:
    """A server process started for one test; stopped by its pid."""

    def __init__(self, cmd):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.where = None
        try:
            self.where = self._wait_ready(20.0)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 1024)
                if not chunk:
                    break
                buf += chunk
                if b"\n" in buf:
                    line = buf.split(b"\n")[0].decode()
                    assert line.startswith("READY "), line
                    return line.split()[1]
            elif self.proc.poll() is not None:
                break
        raise AssertionError("server not ready: %r %r" % (buf, self.proc.stderr.read()
                                                          if self.proc.poll() is not None else b""))

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc.stdout.close()
        self.proc.stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def run_loadgen(bins, *args, timeout=30):
    proc = subprocess.run([bins["loadgen"], *args], capture_output=True, timeout=timeout)
    lines = proc.stdout.decode().strip().splitlines()
    assert lines, "no output; stderr: %s" % proc.stderr.decode()
    return proc.returncode, json.loads(lines[-1])


def assert_clean(res, rc):
    assert rc == 0, res
    assert res["mismatches"] == 0, res
    assert res["errors"] == 0, res
    assert res["requests"] > 0, res
    assert res["rps"] > 0, res
    assert res["lat_us"]["p50"] > 0 and res["lat_us"]["p50"] <= res["lat_us"]["p99"], res
    assert res["cpu_user"] + res["cpu_sys"] >= 0


def python_server(script, *args):
    return [sys.executable, os.path.join(SERVERS, script), "--port", "0", *args]


SERVER_KINDS = {
    "c_echo": lambda bins, *extra: [bins["c_echo"], "--port", "0", *extra],
    "asyncio": lambda bins, *extra: python_server("asyncio_echo.py", *extra),
}


@pytest.mark.parametrize("kind", sorted(SERVER_KINDS))
def test_framed_pipelined_round(bins, kind):
    with Server(SERVER_KINDS[kind](bins)) as srv:
        rc, res = run_loadgen(bins, "--tcp", "127.0.0.1:" + srv.where, "--conns", "4",
                              "--depth", "4", "--size", "100", *ROUND)
    assert_clean(res, rc)
    assert res["kind"] == "stream" and res["mode"] == "framed"
    assert res["ready"] == 4 and res["starved"] == 0


@pytest.mark.parametrize("kind", sorted(SERVER_KINDS))
def test_large_frames_round(bins, kind):
    with Server(SERVER_KINDS[kind](bins)) as srv:
        rc, res = run_loadgen(bins, "--tcp", "127.0.0.1:" + srv.where, "--conns", "2",
                              "--depth", "2", "--size", "65536", *ROUND)
    assert_clean(res, rc)


def test_raw_round_against_c_echo(bins):
    with Server(SERVER_KINDS["c_echo"](bins)) as srv:
        rc, res = run_loadgen(bins, "--tcp", "127.0.0.1:" + srv.where, "--mode", "raw",
                              "--conns", "3", "--depth", "2", "--size", "1000", *ROUND)
    assert_clean(res, rc)
    assert res["mode"] == "raw"


@pytest.mark.parametrize("kind", sorted(SERVER_KINDS))
def test_churn_round(bins, kind):
    with Server(SERVER_KINDS[kind](bins)) as srv:
        rc, res = run_loadgen(bins, "--tcp", "127.0.0.1:" + srv.where, "--kind", "churn",
                              "--conns", "2", *ROUND)
    assert_clean(res, rc)
    # one connection per request (plus those cut off by the end of the round)
    assert res["connects"] >= res["replies_total"] >= res["requests"]


@pytest.mark.parametrize("kind", sorted(SERVER_KINDS))
def test_udp_round(bins, kind):
    with Server(SERVER_KINDS[kind](bins, "--udp")) as srv:
        rc, res = run_loadgen(bins, "--udp", "127.0.0.1:" + srv.where, "--conns", "2",
                              "--depth", "2", *ROUND)
    assert_clean(res, rc)
    assert res["kind"] == "udp"


def test_unix_socket_round(bins):
    d = tempfile.mkdtemp(prefix="csb", dir="/tmp")
    try:
        path = os.path.join(d, "s")
        with Server([bins["c_echo"], "--unix", path]) as srv:
            assert srv.where == path
            rc, res = run_loadgen(bins, "--unix", path, "--conns", "2", "--depth", "2", *ROUND)
        assert_clean(res, rc)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_idle_connections_held_until_stdin_closes(bins):
    with Server(SERVER_KINDS["c_echo"](bins)) as srv:
        lg = subprocess.Popen([bins["loadgen"], "--tcp", "127.0.0.1:" + srv.where, "--kind",
                               "idle", "--conns", "20", "--hold", "20"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
        try:
            line = b""
            deadline = time.monotonic() + 10
            while b"\n" not in line and time.monotonic() < deadline:
                r, _, _ = select.select([lg.stderr], [], [], 0.2)
                if r:
                    chunk = os.read(lg.stderr.fileno(), 100)
                    if not chunk:
                        break
                    line += chunk
            assert line.startswith(b"HELD 20"), line
            assert lg.poll() is None  # still holding them
            t0 = time.monotonic()
            out, _ = lg.communicate(timeout=10)  # closes stdin: let go
            assert time.monotonic() - t0 < 10
        finally:
            if lg.poll() is None:
                lg.kill()
                lg.communicate()
    res = json.loads(out.decode().strip().splitlines()[-1])
    assert res["kind"] == "idle" and res["ready"] == 20 and res["mismatches"] == 0


def test_corrupted_replies_are_counted(bins):
    """An echo server that flips one payload byte: every reply is a mismatch."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()
    conns = []

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            conn.settimeout(0.2)
            conns.append(conn)
            data = b""
            while not stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                data += chunk
                while len(data) >= 4 + 64:  # frames of 64 B
                    frame, data = bytearray(data[:68]), data[68:]
                    frame[10] ^= 0xFF
                    conn.sendall(bytes(frame))

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        rc, res = run_loadgen(bins, "--tcp", "127.0.0.1:%d" % listener.getsockname()[1],
                              "--conns", "1", "--depth", "1", "--size", "64", *ROUND)
    finally:
        stop.set()
        thread.join(10)
        for conn in conns:
            conn.close()
        listener.close()
    assert rc == 1
    assert res["replies_total"] > 0
    assert res["mismatches"] == res["replies_total"]


def test_refuses_non_loopback_targets(bins):
    for target in ("--tcp", "--udp"):
        proc = subprocess.run([bins["loadgen"], target, "192.0.2.1:9", "--duration", "0.1"],
                              capture_output=True, timeout=10)
        assert proc.returncode == 2
        assert b"loopback" in proc.stderr
        assert proc.stdout == b""


def test_harness_end_to_end(bins, tmp_path):
    """run.py with one workload: a fresh server per round, a table, JSON lines."""
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "run.py"), "--quick", "--servers", "asyncio-batched",
         "--workloads", "1c-d1", "--warmup", "0.1", "--duration", "0.3", "--out", str(out),
         "--bin", os.path.dirname(bins["loadgen"])],
        capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert records[0]["type"] == "machine" and records[0]["python"]
    summaries = {r["server"]: r for r in records if r["type"] == "summary"}
    # the C and stdlib baselines are added to a filtered run
    assert set(summaries) == {"c-epoll", "stdlib-threading", "asyncio-batched"}
    for s in summaries.values():
        assert s["status"] == "ok", s
        assert s["mismatches"] == 0 and s["value"] > 0
    assert summaries["c-epoll"]["x_c"] == 1.0
    assert summaries["stdlib-threading"]["x_stdlib"] == 1.0
    table = (out / "table.md").read_text()
    assert "asyncio Protocol, batched" in table and "x C" in table
    assert table.strip() in proc.stdout.decode()


@pytest.mark.parametrize("depth", [1, 4])
def test_requests_budget_answers_exactly_n(bins, depth):
    # --requests N: after the setup request of each connection, exactly N
    # requests are sent and answered, then the run ends by itself (what
    # bench/instructions.py relies on to count instructions per request).
    with Server(SERVER_KINDS["c_echo"](bins)) as srv:
        rc, res = run_loadgen(bins, "--tcp", "127.0.0.1:" + srv.where, "--conns", "3",
                              "--depth", str(depth), "--size", "64", "--warmup", "0",
                              "--duration", "60", "--requests", "1001")
    assert rc == 0 and res["mismatches"] == 0 and res["errors"] == 0, res
    assert res["replies_total"] == 3 + 1001, res
    assert res["requests"] == 1001, res
    assert res["duration"] == 60 and res["wall"] < 30, res


def test_sync_stops_after_setup_and_after_the_last_reply(bins):
    with Server(SERVER_KINDS["c_echo"](bins)) as srv:
        lg = subprocess.Popen(
            [bins["loadgen"], "--tcp", "127.0.0.1:" + srv.where, "--conns", "2",
             "--warmup", "0", "--duration", "60", "--requests", "50", "--sync"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert lg.stderr.readline() == "SETUP 2\n"
            time.sleep(0.2)
            assert lg.poll() is None      # it waits for the go-ahead
            lg.stdin.write("\n")
            lg.stdin.flush()
            assert lg.stderr.readline() == "DONE 50\n"
            lg.stdin.write("\n")
            lg.stdin.flush()
            out, _ = lg.communicate(timeout=20)
        finally:
            if lg.poll() is None:
                lg.kill()
                lg.wait()
    res = json.loads(out)
    assert lg.returncode == 0 and res["replies_total"] == 2 + 50, res


def test_requests_refused_outside_stream_kind(bins):
    # (churn takes --requests since the PROXY benchmark: instructions per connection)
    proc = subprocess.run([bins["loadgen"], "--tcp", "127.0.0.1:9", "--kind", "idle",
                           "--requests", "10"], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 2 and "--requests" in proc.stderr


def test_churn_requests_budget_opens_exactly_n_connections(bins):
    with Server(python_server("cserver_mux.py", "--proxy-protocol", "v2")) as srv:
        rc, res = run_loadgen(bins, "--tcp", "127.0.0.1:" + srv.where, "--kind", "churn",
                              "--conns", "3", "--requests", "50", "--proxy", "v2",
                              "--warmup", "0", "--duration", "30", "--connect-timeout", "10")
    assert rc == 0 and res["mismatches"] == 0 and res["errors"] == 0, res
    assert res["replies_total"] == 50 and res["connects"] == 50, res


def test_harness_runs_the_servers_with_python_option(bins, tmp_path):
    """--python PATH: the Python servers (and the probes for cserver and the
    peers) run under that interpreter, not the harness's own."""
    calls = tmp_path / "calls"
    wrapper = tmp_path / "otherpython"
    wrapper.write_text("#!/bin/sh\necho \"$@\" >> '%s'\nexec '%s' \"$@\"\n"
                       % (calls, sys.executable))
    wrapper.chmod(0o755)
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "run.py"), "--quick", "--servers", "asyncio-batched",
         "--workloads", "1c-d1", "--no-baselines", "--warmup", "0.1", "--duration", "0.3",
         "--out", str(out), "--bin", os.path.dirname(bins["loadgen"]),
         "--python", str(wrapper)],
        capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert records[0]["python"] == "%d.%d.%d" % sys.version_info[:3]
    assert {"uvloop", "twisted", "gevent"} <= set(records[0]["peers"])
    summaries = [r for r in records if r["type"] == "summary"]
    assert [(s["server"], s["status"]) for s in summaries] == [("asyncio-batched", "ok")]
    invoked = calls.read_text()
    assert "asyncio_echo.py" in invoked        # the server itself
    assert "import cserver" in invoked         # the cserver probe


def test_harness_python_option_names_a_missing_interpreter(tmp_path):
    missing = str(tmp_path / "no-such-python")
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "run.py"), "--python", missing],
                          capture_output=True, timeout=60)
    assert proc.returncode == 2
    assert ("--python %s" % missing).encode() in proc.stderr


def test_harness_before_tree_and_interleaved_rounds(bins, tmp_path):
    """--before DIR adds KEY@before servers run from DIR; rounds are
    interleaved: round 1 of every cell before round 2 of any."""
    import cserver
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "cserver").symlink_to(os.path.dirname(os.path.abspath(cserver.__file__)))
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "run.py"), "--quick", "--rounds", "2",
         "--servers", "cserver-mux-raw", "--workloads", "1c-d1",
         "--no-baselines", "--warmup", "0.1", "--duration", "0.3", "--out", str(out),
         "--bin", os.path.dirname(bins["loadgen"]), "--before", str(tree)],
        capture_output=True, timeout=120,
        env={k: v for k, v in os.environ.items() if k != "CSERVER_PURE"})  # compiled only
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    rounds = [(r["server"], r["round"]) for r in records if r["type"] == "round"]
    assert rounds == [("cserver-mux-raw", 0), ("cserver-mux-raw@before", 0),
                      ("cserver-mux-raw", 1), ("cserver-mux-raw@before", 1)]
    summaries = {r["server"]: r["status"] for r in records if r["type"] == "summary"}
    assert summaries == {"cserver-mux-raw": "ok", "cserver-mux-raw@before": "ok"}


def test_harness_before_tree_must_hold_a_built_cserver(tmp_path):
    (tmp_path / "cserver").mkdir()
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "run.py"), "--quick",
                           "--servers", "cserver-mux", "--workloads", "1c-d1",
                           "--before", str(tmp_path)],
                          capture_output=True, timeout=60)
    assert proc.returncode != 0
    assert b"--before" in proc.stderr and b"build it in place" in proc.stderr


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("kind", ["stream", "churn"])
def test_loadgen_proxy_header_opens_every_connection(bins, version, kind):
    """--proxy v1|v2: a PROXY server answers every request; a server
    without PROXY sees the header as garbage (so it really is sent, on
    every connection of a churn too)."""
    args = ["--conns", "3", "--kind", kind, "--proxy", version, *ROUND]
    with Server(python_server("cserver_mux.py", "--proxy-protocol", version)) as srv:
        rc, res = run_loadgen(bins, "--tcp", "127.0.0.1:" + srv.where, *args)
    assert_clean(res, rc)
    if kind == "churn":
        assert res["connects"] >= res["replies_total"] > 3
    with Server(python_server("cserver_mux.py")) as srv:
        rc, res = run_loadgen(bins, "--tcp", "127.0.0.1:" + srv.where, *args)
    assert res["replies_total"] == 0 or res["mismatches"] > 0


def test_loadgen_proxy_refused_for_udp(bins):
    proc = subprocess.run([bins["loadgen"], "--udp", "127.0.0.1:9", "--proxy", "v2"],
                          capture_output=True, timeout=30)
    assert proc.returncode == 2 and b"--proxy does not apply to --udp" in proc.stderr
    proc = subprocess.run([bins["loadgen"], "--tcp", "127.0.0.1:9", "--proxy", "v3"],
                          capture_output=True, timeout=30)
    assert proc.returncode == 2 and b"--proxy must be v1 or v2" in proc.stderr


def test_harness_proxy_runs_the_same_server_with_and_without_proxy(bins, tmp_path):
    """--proxy v2 adds KEY+proxy-v2 beside each cserver multiplexing server,
    with interleaved rounds, both clean."""
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "run.py"), "--quick", "--rounds", "2",
         "--servers", "cserver-mux-raw", "--workloads", "churn", "--proxy", "v2",
         "--no-baselines", "--warmup", "0.1", "--duration", "0.3", "--out", str(out),
         "--bin", os.path.dirname(bins["loadgen"])],
        capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    rounds = [(r["server"], r["round"]) for r in records if r["type"] == "round"]
    assert rounds == [("cserver-mux-raw", 0), ("cserver-mux-raw+proxy-v2", 0),
                      ("cserver-mux-raw", 1), ("cserver-mux-raw+proxy-v2", 1)]
    summaries = {r["server"]: r for r in records if r["type"] == "summary"}
    assert {k: v["status"] for k, v in summaries.items()} == {
        "cserver-mux-raw": "ok", "cserver-mux-raw+proxy-v2": "ok"}
    assert all(v["mismatches"] == 0 for v in summaries.values())


# ---------------------------------------------------------------------------
# TLS: loadgen --tls, c_tls_echo, the servers' --tls-cert/--tls-key, the
# harness's TLS rows (and how they are skipped without OpenSSL's headers)
# ---------------------------------------------------------------------------


def tls_or_skip(bins):
    if bins.get("tls_missing"):
        pytest.skip("no TLS build here: %s" % bins["tls_missing"])


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    cert, key, _ = load_run_module().make_certificate(str(tmp_path_factory.mktemp("tls")))
    return cert, key


TLS_SERVERS = {
    "c_tls_echo": lambda bins, cert, key: [bins["c_tls_echo"], "--port", "0",
                                           "--tls-cert", cert, "--tls-key", key],
    "asyncio": lambda bins, cert, key: python_server("asyncio_echo.py", "--tls-cert", cert,
                                                     "--tls-key", key),
}
TLS_SHAPES = {
    "pipelined": ["--conns", "4", "--depth", "4", "--size", "100"],
    "64k": ["--conns", "2", "--depth", "2", "--size", "65536"],
    "churn": ["--kind", "churn", "--conns", "2"],
}


def assert_tls(res):
    tls = res["tls"]
    assert tls["version"] == "TLSv1.3" and tls["cipher"] == "TLS_AES_128_GCM_SHA256", tls
    assert tls["group"] in ("X25519", ""), tls      # "" before OpenSSL 3.0
    assert tls["sni"] == "localhost", tls
    assert tls["resumed"] == 0 and tls["failed"] == 0 and tls["error"] == "", tls


@pytest.mark.parametrize("shape", sorted(TLS_SHAPES))
@pytest.mark.parametrize("kind", sorted(TLS_SERVERS))
def test_tls_round(bins, tls_files, kind, shape):
    tls_or_skip(bins)
    with Server(TLS_SERVERS[kind](bins, *tls_files)) as srv:
        rc, res = run_loadgen(bins, "--tcp", "127.0.0.1:" + srv.where, "--tls",
                              *TLS_SHAPES[shape], *ROUND)
    assert_clean(res, rc)
    assert_tls(res)
    if shape == "churn":
        # a full handshake per request (none resumed: asserted above)
        assert res["connects"] >= res["tls"]["handshakes"] >= res["replies_total"] > 2, res
    else:
        assert res["tls"]["handshakes"] == res["ready"] == res["conns"], res


def test_tls_load_against_a_plain_server_fails_its_handshakes(bins):
    """It really speaks TLS: a byte echo sends the ClientHello back, which
    is no ServerHello; every handshake fails, with the reason reported."""
    tls_or_skip(bins)
    with Server(SERVER_KINDS["c_echo"](bins)) as srv:
        rc, res = run_loadgen(bins, "--tcp", "127.0.0.1:" + srv.where, "--tls", "--conns", "1",
                              "--warmup", "0", "--duration", "0.3", "--connect-timeout", "2")
    assert res["replies_total"] == 0 and res["tls"]["handshakes"] == 0, res
    assert res["tls"]["failed"] >= 1 and res["tls"]["error"].startswith("handshake"), res


def test_plain_load_against_the_tls_server_gets_no_reply(bins, tls_files):
    tls_or_skip(bins)
    with Server(TLS_SERVERS["c_tls_echo"](bins, *tls_files)) as srv:
        rc, res = run_loadgen(bins, "--tcp", "127.0.0.1:" + srv.where, "--conns", "1",
                              "--warmup", "0", "--duration", "0.3", "--connect-timeout", "2")
    assert res["replies_total"] == 0 and res["tls"] is None, res


def test_loadgen_tls_refused_where_it_does_not_apply(bins):
    tls_or_skip(bins)
    proc = subprocess.run([bins["loadgen"], "--udp", "127.0.0.1:9", "--tls"],
                          capture_output=True, timeout=30)
    assert proc.returncode == 2 and b"--tls does not apply to --udp" in proc.stderr
    proc = subprocess.run([bins["loadgen"], "--tcp", "127.0.0.1:9", "--tls", "--proxy", "v2"],
                          capture_output=True, timeout=30)
    assert proc.returncode == 2 and b"--tls with --proxy" in proc.stderr
    proc = subprocess.run([bins["loadgen"], "--features"], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0 and proc.stdout.startswith("tls "), proc.stdout


def test_harness_tls_rows(bins, tmp_path):
    """TLS cells beside plain ones: the C and stdlib TLS baselines, x plain
    against the same server without TLS; cserver's multiplexing TLS row is
    measured, or says plainly that this cserver has no ssl_context."""
    tls_or_skip(bins)
    import cserver
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "run.py"), "--quick",
         "--only", "asyncio/1c-d1", "--only", "asyncio-tls/tls-1c-d1",
         "--only", "cserver-mux-tls/tls-1c-d1", "--warmup", "0.1", "--duration", "0.3",
         "--out", str(out), "--bin", os.path.dirname(bins["loadgen"])],
        capture_output=True, timeout=180)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert records[0]["tls"]["certificate"] and not records[0]["tls"]["missing"], records[0]
    summaries = {(r["server"], r["workload"]): r for r in records if r["type"] == "summary"}
    assert set(summaries) == {
        ("c-epoll", "1c-d1"), ("stdlib-threading", "1c-d1"), ("asyncio", "1c-d1"),
        ("c-tls", "tls-1c-d1"), ("stdlib-threading-tls", "tls-1c-d1"),
        ("asyncio-tls", "tls-1c-d1"), ("cserver-mux-tls", "tls-1c-d1")}, summaries
    for key in [k for k in summaries if k[0] != "cserver-mux-tls"]:
        assert summaries[key]["status"] == "ok", summaries[key]
        assert summaries[key]["mismatches"] == 0 and summaries[key]["errors"] == 0
    tls = summaries[("asyncio-tls", "tls-1c-d1")]
    assert tls["tls"]["negotiated"] == ["TLSv1.3 TLS_AES_128_GCM_SHA256 X25519"], tls
    assert tls["tls"]["resumed"] == 0 and tls["tls"]["failed"] == 0, tls
    assert summaries[("c-tls", "tls-1c-d1")]["x_c"] == 1.0
    assert summaries[("stdlib-threading-tls", "tls-1c-d1")]["x_stdlib"] == 1.0
    assert tls["x_plain"] == tls["value"] / summaries[("asyncio", "1c-d1")]["value"]
    mux = summaries[("cserver-mux-tls", "tls-1c-d1")]
    if "ssl_context" in getattr(cserver.SelectorTCPServer, "__dict__", {}) or \
            hasattr(cserver.SelectorTCPServer, "ssl_context"):
        assert mux["status"] == "ok" and mux["mismatches"] == 0, mux
    else:
        assert mux["status"] == "skip", mux
        assert "ssl_context not supported by this cserver" in mux["note"], mux
    table = (out / "table.md").read_text()
    assert "| TLS server |" in table and "x plain" in table and "TLS_AES_128_GCM_SHA256" in table


def test_without_openssl_the_tls_rows_are_skipped_loudly(tmp_path):
    """A compiler that cannot find OpenSSL's headers: the load generator is
    built without TLS (and refuses --tls), no c_tls_echo, and the harness
    skips only the TLS rows, saying why on stderr and in the table."""
    real = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    fake = tmp_path / "cc"
    fake.write_text(
        "#!/bin/sh\n"
        "for a in \"$@\"; do\n"
        "  if [ \"$a\" = -lssl ]; then\n"
        "    echo 'probe.c:2:10: fatal error: openssl/ssl.h: No such file or directory' >&2\n"
        "    exit 1\n"
        "  fi\n"
        "done\n"
        "exec '%s' \"$@\"\n" % real)
    fake.chmod(0o755)
    env = dict(os.environ, CC=str(fake))
    bindir = tmp_path / "bin"
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "run.py"), "--quick",
         "--only", "asyncio-batched/1c-d1", "--only", "asyncio-tls/tls-1c-d1", "--no-baselines",
         "--warmup", "0.1", "--duration", "0.3", "--out", str(out), "--bin", str(bindir)],
        capture_output=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    err = proc.stderr.decode()
    assert err.count("THE TLS ROWS ARE SKIPPED") == 2, err     # at the start and at the end
    assert "openssl/ssl.h" in err and "libssl-dev" in err, err
    assert not (bindir / "c_tls_echo").exists()
    features = subprocess.run([str(bindir / "loadgen"), "--features"], capture_output=True,
                              text=True, timeout=30)
    assert features.stdout.strip() == "no-tls"
    refused = subprocess.run([str(bindir / "loadgen"), "--tcp", "127.0.0.1:9", "--tls"],
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "built without OpenSSL" in refused.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    summaries = {r["server"]: r for r in records if r["type"] == "summary"}
    assert summaries["asyncio-batched"]["status"] == "ok"
    assert summaries["asyncio-tls"]["status"] == "skip"
    assert "TLS not measured" in summaries["asyncio-tls"]["note"]
    assert "TLS: NOT MEASURED" in (out / "table.md").read_text()
