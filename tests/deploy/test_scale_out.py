"""The scale-out tests: three backend hosts behind a real HAProxy, each in
a network namespace the test creates (root and ``ip netns`` required; in CI
a missing prerequisite fails).  Marker ``soak``: tox env soak runs them.

Topology (10.213.0.0/16 exists only inside these namespaces; every veth is
created inside them, none in the machine's own namespace)::

    client ns 10.213.100.2 --- 10.213.100.1 hub ns (HAProxy)
                               10.213.K.1 --- 10.213.K.2 backend ns bK (K = 1, 2, 3)

Each backend runs tests/deploy/ns_backend.py: a SelectorTCPServer with
``workers=2``, ``proxy_protocol="v2"``, ``trusted_proxies`` = HAProxy's
address on that link.  HAProxy (``send-proxy-v2``; health checks with a v2
LOCAL header and a framed request whose answer it expects; ``option
redispatch``) balances the connections of tests/deploy/ns_loadgen.py (one
request per connection, nothing retried) run in the client namespace, so
the client's address is neither HAProxy's nor a backend's.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT = "10.213.100.2"
FRONTEND = "10.213.100.1"
PORT = 9000          # inside the backends' own namespaces: nothing else listens there
HOSTS = ("b1", "b2", "b3")
CONNECTIONS = 8      # load generator threads (at most this many requests in flight)

HAPROXY = """
frontend fe
    bind 10.213.100.1:{port}
    default_backend be
backend be
    balance roundrobin
    retries 3
    option redispatch 1
    timeout check 1s
    option tcp-check
    tcp-check send-binary 00000005636865636b
    tcp-check expect string check
    default-server send-proxy-v2 check check-send-proxy inter 100ms fall 2 rise 2
    server b1 10.213.1.2:9000
    server b2 10.213.2.2:9000
    server b3 10.213.3.2:9000
"""


def _children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


class Cluster:
    """The namespaces, the backends (``procs[host]``: the supervisor) and
    HAProxy (``balancer``) of one test."""

    def __init__(self, lab, directory):
        self.lab = lab
        self.directory = directory
        hub = lab.namespace("hub")
        self.client_ns = lab.namespace("c")
        lab.link(hub, "vc", FRONTEND + "/24", self.client_ns, "vh", CLIENT + "/24")
        self.procs = {}
        for k, host in enumerate(HOSTS, 1):
            ns = lab.namespace(host)
            lab.link(hub, "v" + host, "10.213.%d.1/24" % k, ns, "vh", "10.213.%d.2/24" % k)
            with open(self.log_path(host), "wb") as log:
                self.procs[host] = lab.popen(ns, [
                    sys.executable, os.path.join(HERE, "ns_backend.py"), host,
                    "10.213.%d.2" % k, str(PORT), "10.213.%d.1/32" % k, "2"],
                    stdout=log, stderr=subprocess.STDOUT)
        self.balancer = lab.haproxy(hub, HAPROXY, directory)
        # a check passed on each: its workers serve (a server starts UP
        # in HAProxy before any check ran)
        deadline = time.monotonic() + 30
        while not all(len(self.workers(h)) == 2 for h in HOSTS):
            assert time.monotonic() < deadline, self.logs()
            time.sleep(0.05)
        self.balancer.wait_checked_up(HOSTS, timeout=30)

    def log_path(self, host):
        return os.path.join(self.directory, "%s.log" % host)

    def logs(self):
        out = []
        for host in HOSTS:
            with open(self.log_path(host), errors="replace") as f:
                out.append("--- %s ---\n%s" % (host, f.read()[-4000:]))
        return "\n".join(out)

    def workers(self, host):
        return _children(self.procs[host].pid)

    def start_load(self, seconds, limit):
        proc = self.lab.popen(self.client_ns, [
            sys.executable, os.path.join(HERE, "ns_loadgen.py"), FRONTEND,
            str(self.balancer.port), str(CONNECTIONS), str(seconds), str(limit)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "started", proc.stderr.read()
        return proc

    def kill(self, host):
        """SIGKILL a backend's workers and supervisor, by pid (workers first:
        the supervisor cannot restart them).  Returns (t0, t1): before the
        first signal, after the last process is gone."""
        supervisor = self.procs[host]
        victims = self.workers(host)
        t0 = time.monotonic()
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        os.kill(supervisor.pid, signal.SIGKILL)
        supervisor.wait(10)
        deadline = time.monotonic() + 10
        while any(os.path.exists("/proc/%d" % p) and _state(p) != "Z" for p in victims):
            assert time.monotonic() < deadline, "killed workers still running"
            time.sleep(0.005)
        return t0, time.monotonic()

    def reload(self, host, timeout=20):
        """SIGHUP a backend's supervisor; wait until its old workers have
        exited and two new ones run.  Returns (old pids, new pids)."""
        old = set(self.workers(host))
        os.kill(self.procs[host].pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while True:
            now = set(self.workers(host))
            if len(now) == 2 and not now & old:
                return old, now
            assert time.monotonic() < deadline, ("reload of %s did not finish: old %s, now %s"
                                                 % (host, old, now), self.logs())
            time.sleep(0.02)


def _state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _finish(load, timeout=60):
    out, err = load.communicate(timeout=timeout)
    assert load.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])["requests"]


def _check_replies(requests):
    """Every completed request is correct: its own payload back, from one of
    the backends, whose client_address is the load generator's."""
    seen = {}
    for start, end, outcome, reply, payload in requests:
        if outcome != "ok":
            continue
        assert reply["echo"] == payload, (payload, reply)
        assert reply["host"] in HOSTS, reply
        assert reply["client_address"][0] == CLIENT, reply    # not HAProxy's 10.213.K.1
        seen.setdefault(reply["host"], set()).add(reply["pid"])
    return seen


@pytest.mark.soak
def test_scale_out_kill_one_backend_reload_another(lab, tmp_short):
    cluster = Cluster(lab, tmp_short)
    pids_before = {host: set(cluster.workers(host)) for host in HOSTS}
    load = cluster.start_load(seconds=8, limit=200000)
    try:
        time.sleep(2.5)
        t0, t1 = cluster.kill("b1")
        time.sleep(1.0)
        t_reload = time.monotonic()
        old, new = cluster.reload("b2")
        t_reloaded = time.monotonic()
    finally:
        requests = _finish(load)
    seen = _check_replies(requests)
    ok = [r for r in requests if r[2] == "ok"]
    lost = [r for r in requests if r[2] == "lost"]
    refused = [r for r in requests if r[2] == "refused"]
    in_flight_at_kill = [r for r in requests if r[0] < t0 < r[1]]
    print("\nscale-out: %d requests, %d answered, %d lost (all in flight at the kill of b1; "
          "%d requests were in flight then, on all hosts), %d refused, 1 kill, 1 reload "
          "(b2 workers %s -> %s, %.2f s), answered per host: %s"
          % (len(requests), len(ok), len(lost), len(in_flight_at_kill), len(refused),
             sorted(old), sorted(new), t_reloaded - t_reload,
             {h: sum(1 for r in ok if r[3]["host"] == h) for h in HOSTS}))
    assert refused == [], refused[:5]
    # lost: only requests in flight on the killed host when it died
    for start, end, outcome, error, payload in lost:
        assert start < t1 and end >= t0, ("a request lost outside the kill", start, end,
                                          t0, t1, error)
    assert len(lost) <= CONNECTIONS
    # every backend answered, and saw the load generator as its client
    assert set(seen) == set(HOSTS), seen
    # nothing answered by b1 after its death, by b2's old workers after the reload
    assert not [r for r in ok if r[3]["host"] == "b1" and r[0] > t1]
    assert seen["b2"] & new, ("no answer from b2's new workers", seen["b2"], new)
    assert not [r for r in ok if r[3]["host"] == "b2" and r[3]["pid"] in old
                and r[0] > t_reloaded]
    assert seen["b1"] <= pids_before["b1"] and seen["b3"] <= pids_before["b3"]
    assert len(ok) > 100     # the load did run through all of it


@pytest.mark.soak
def test_rolling_restart_behind_haproxy_drops_nothing(lab, tmp_short):
    cluster = Cluster(lab, tmp_short)
    load = cluster.start_load(seconds=9, limit=200000)
    reloads = []
    try:
        time.sleep(1.0)
        for host in HOSTS:
            reloads.append((host,) + cluster.reload(host))
            time.sleep(0.5)
    finally:
        requests = _finish(load)
    seen = _check_replies(requests)
    lost = [r for r in requests if r[2] == "lost"]
    refused = [r for r in requests if r[2] == "refused"]
    print("\nrolling restart: %d requests, %d reloads (one per backend, in turn), %d lost, "
          "%d refused" % (len(requests), len(reloads), len(lost), len(refused)))
    assert lost == [] and refused == [], (lost[:5], refused[:5])
    for host, old, new in reloads:
        assert seen[host] & new, (host, "no answer from its new workers")
    assert len(requests) > 100
