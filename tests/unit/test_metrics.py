"""The metrics endpoint (``metrics_address``, ``--metrics``): the Prometheus
text exposition served by the server's own loop, summed over its workers.

Every scrape is parsed with ``prometheus_client``'s own parser.  Servers run
on both pollers, in a thread joined in ``finally``; the workers tests run
the command line in a subprocess (its own session, killed as a group at the
end).  The attacker tests play a scraper that trickles, one that sends a
request line of a MiB, 200 at once, a wrong method, HTTP/0.9 and garbage.
"""
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

import cserver
from cserver import _metrics, selectorserver
import support
from support import (TIMEOUT, Echo, RawEcho, child_env, cli, connect_to, frame, recv_exactly,
                     recv_until_eof, serving, wait_for)

KINDS = ["epoll", "selectors"] if selectorserver._loop.HAVE_EPOLL else ["selectors"]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HAS_PROXY = hasattr(selectorserver.SelectorServer, "proxy_protocol")


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


def read_to_eof(sock):
    return recv_until_eof(sock, 1 << 20)


def http(address, request):
    """Send a raw request, return (status, headers dict, body) of the answer."""
    with connect_to(address) as sock:
        sock.sendall(request)
        raw = read_to_eof(sock)
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    assert lines[0].startswith("HTTP/1.1 "), lines[0]
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def scrape(address):
    """GET /metrics: the parsed families, checked for the format's rules,
    as {(sample name, frozenset(labels)): value}."""
    status, headers, body = http(address, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status == 200, body
    assert headers["content-type"] == CONTENT_TYPE
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    text = body.decode("utf-8")
    families = list(text_string_to_metric_families(text))
    assert families
    samples = {}
    for family in families:
        assert family.name.startswith("cserver_"), family.name
        assert family.documentation, family.name
        assert family.type in ("counter", "gauge"), (family.name, family.type)
        assert "# HELP %s " % (family.name + ("_total" if family.type == "counter" else "")) \
            in text
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith("_total"), sample.name
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


def names(samples):
    return {name for name, _ in samples}


def core_of(server):
    return server._get_core()


# -- values ----------------------------------------------------------------------------------

def test_scrape_matches_stats_after_known_traffic(kind):
    class Picky(selectorserver.SelectorTCPServer):
        def verify_request(self, transport, client_address):
            return not getattr(self, "refuse_next", False)

    server = Picky(("127.0.0.1", 0), Echo, loop=kind, metrics_address=("127.0.0.1", 0))
    assert server.metrics_address[1] != 0  # the bound address
    payloads = [b"x" * n for n in (0, 1, 7, 100, 5000, 70000)]
    with serving(server):
        for _ in range(3):
            with socket.create_connection(server.server_address, timeout=TIMEOUT) as c:
                for p in payloads:
                    c.sendall(frame(p))
                    assert recv_exactly(c, 4 + len(p)) == frame(p)
        # a frame error: a header announcing more than max_frame_size
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as c:
            c.sendall(struct.pack("!I", 0xFFFFFFF0))
            read_to_eof(c)
        server.refuse_next = True
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as c:
            assert read_to_eof(c) == b""
        assert wait_for(lambda: server.stats()["connections"] == 0)
        samples = scrape(server.metrics_address)
        stats = server.stats()
        wire = 3 * sum(4 + len(p) for p in payloads)
        assert value(samples, "cserver_received_frames_total") == 18 == stats["frames_in"]
        assert value(samples, "cserver_sent_frames_total") == 18 == stats["frames_out"]
        assert value(samples, "cserver_received_bytes_total") == wire + 4 == stats["bytes_in"]
        assert value(samples, "cserver_sent_bytes_total") == wire == stats["bytes_out"]
        assert value(samples, "cserver_connections_total") == 5 == stats["connections_total"]
        assert value(samples, "cserver_connections") == 0
        assert value(samples, "cserver_connections_refused_total",
                     reason="verify_request") == 1 == stats["connections_rejected"]
        assert value(samples, "cserver_frame_errors_total") == 1 == stats["frame_errors"]
        assert value(samples, "cserver_handler_errors_total") == 0
        for kind_, key in (("idle", "idle_timeouts"), ("first_byte", "first_byte_timeouts"),
                           ("frame", "frame_timeouts"), ("close", "close_timeouts")):
            assert value(samples, "cserver_timeouts_total", kind=kind_) == stats[key]
        pool = stats["pool"]
        assert value(samples, "cserver_read_buffer_bytes") == pool["read_slab_bytes"]
        assert value(samples, "cserver_write_buffer_bytes") == pool["write_buffer_bytes"]
        assert value(samples, "cserver_write_buffer_peak_bytes") == \
            pool["write_buffer_bytes_peak"] > 0
        framing = pool["framing"]
        assert value(samples, "cserver_framing_pool_bytes", state="in_use") == \
            framing["in_use"] * framing["slab_size"]
        assert value(samples, "cserver_framing_pool_bypass_total") == framing["bypass"]
        assert value(samples, "cserver_framing_pool_allocations_total") == \
            framing["allocations"]
        assert value(samples, "cserver_workers_live") == 1
        # scraping is not data traffic: a second scrape sees the same counters
        again = scrape(server.metrics_address)
        assert value(again, "cserver_received_bytes_total") == stats["bytes_in"]
        assert value(again, "cserver_metrics_requests_total", result="ok") == 1


def test_raw_server_has_no_framing_pool_and_no_frames(kind):
    server = selectorserver.SelectorTCPServer(("127.0.0.1", 0), RawEcho, loop=kind,
                                              metrics_address=("127.0.0.1", 0))
    with serving(server):
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as c:
            c.sendall(b"hello")
            assert recv_exactly(c, 5) == b"hello"
        assert wait_for(lambda: server.stats()["connections"] == 0)
        samples = scrape(server.metrics_address)
    assert value(samples, "cserver_received_bytes_total") == 5
    assert value(samples, "cserver_received_frames_total") == 0
    assert not any(n.startswith("cserver_framing_pool") for n in names(samples))


def test_max_connections_does_not_hold_back_scrapes(kind):
    # the data listener stops accepting at max_connections; the endpoint
    # is not a data listener: it still answers, and its scrapes are not
    # connections of the server
    server = selectorserver.SelectorTCPServer(("127.0.0.1", 0), Echo, loop=kind,
                                              max_connections=1,
                                              metrics_address=("127.0.0.1", 0))
    with serving(server):
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as c:
            c.sendall(frame(b"held"))
            assert recv_exactly(c, 8) == frame(b"held")
            assert wait_for(lambda: server.stats()["accepting"] is False)
            for _ in range(5):
                samples = scrape(server.metrics_address)
                assert value(samples, "cserver_connections") == 1
                assert value(samples, "cserver_connections_total") == 1
            assert server.stats()["accepting"] is False
        # the held connection closed: the data listener accepts again
        assert wait_for(lambda: server.stats()["accepting"] is True)
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as c:
            c.sendall(frame(b"next"))
            assert recv_exactly(c, 8) == frame(b"next")


def test_udp_server_metrics(kind):
    class Dgram(cserver.DatagramHandler):
        def datagram_received(self, data, addr):
            self.sendto(data, addr)

    server = selectorserver.SelectorUDPServer(("127.0.0.1", 0), Dgram, loop=kind,
                                              metrics_address=("127.0.0.1", 0))
    with serving(server):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(TIMEOUT)
            for payload in (b"a", b"bb", b"ccc"):
                c.sendto(payload, server.server_address)
                assert c.recvfrom(100)[0] == payload
        samples = scrape(server.metrics_address)
    assert value(samples, "cserver_received_frames_total") == 3   # datagrams, for UDP
    assert value(samples, "cserver_received_bytes_total") == server.stats()["bytes_in"]


def test_tls_families_follow_the_loop(kind, tls):
    """Without an ssl_context the TLS families are absent; with one they
    count handshakes (done, failed) as stats() does."""
    plain = selectorserver.SelectorTCPServer(("127.0.0.1", 0), Echo, loop=kind,
                                             metrics_address=("127.0.0.1", 0))
    with serving(plain):
        assert not any("tls" in name for name in names(scrape(plain.metrics_address)))
    server = selectorserver.SelectorTCPServer(("127.0.0.1", 0), Echo, loop=kind,
                                              metrics_address=("127.0.0.1", 0),
                                              ssl_context=tls.server_context())
    with serving(server):
        client = tls.client_context()
        for _ in range(3):
            with connect_to(server.server_address) as raw:
                with client.wrap_socket(raw, server_hostname="localhost") as c:
                    c.sendall(frame(b"t"))
                    assert recv_exactly(c, 5) == frame(b"t")
        with connect_to(server.server_address) as c:   # not TLS: a failed handshake
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            recv_until_eof(c, 1 << 16)
        assert wait_for(lambda: server.stats()["tls_handshake_errors"] == 1)
        samples = scrape(server.metrics_address)
        stats = server.stats()
    assert value(samples, "cserver_tls_handshakes_total", result="ok") == \
        stats["tls_handshakes"] == 3
    assert value(samples, "cserver_tls_handshakes_total", result="error") == 1
    assert value(samples, "cserver_tls_handshakes_total", result="timeout") == 0
    assert value(samples, "cserver_tls_errors_total") == 0


def test_proxy_families_follow_the_loop(kind):
    """Without the PROXY protocol in the loop the families are absent; with
    it (after proxyloop's merge), they count headers as stats() does."""
    if not HAS_PROXY:
        server = selectorserver.SelectorTCPServer(("127.0.0.1", 0), Echo, loop=kind,
                                                  metrics_address=("127.0.0.1", 0))
        with serving(server):
            samples = scrape(server.metrics_address)
        assert "cserver_proxy_headers_total" not in names(samples)
        assert not any(("reason", "untrusted_proxy") in labels for _, labels in samples)
        return
    server = selectorserver.SelectorTCPServer(("127.0.0.1", 0), Echo, loop=kind,
                                              metrics_address=("127.0.0.1", 0),
                                              proxy_protocol="v1")
    with serving(server):
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as c:
            c.sendall(b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 80\r\n" + frame(b"p"))
            assert recv_exactly(c, 5) == frame(b"p")
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as c:
            c.sendall(b"PROXY GARBAGE\r\n")
            read_to_eof(c)
        assert wait_for(lambda: server.stats()["connections"] == 0)
        assert wait_for(lambda: server.stats()["proxy_errors"] == 1)
        # the scrape sends no PROXY header: the endpoint is not a data
        # listener, proxy_protocol does not apply to it
        samples = scrape(server.metrics_address)
        stats = server.stats()
    assert value(samples, "cserver_proxy_headers_total", result="valid") == \
        stats["proxy_headers"] == 1
    assert value(samples, "cserver_proxy_headers_total", result="invalid") == \
        stats["proxy_errors"] == 1
    assert value(samples, "cserver_proxy_headers_total", result="timeout") == \
        stats["proxy_timeouts"]
    assert value(samples, "cserver_connections_refused_total", reason="untrusted_proxy") == \
        stats["proxy_rejected"]


def test_loop_lag_is_measured(kind):
    class Blocking(cserver.FrameHandler):
        def frame_received(self, frame):
            time.sleep(0.7)  # blocks the loop: the next periodic timer is late
            self.send_frame(frame)

    server = selectorserver.SelectorTCPServer(("127.0.0.1", 0), Blocking, loop=kind,
                                              metrics_address=("127.0.0.1", 0))
    with serving(server):
        time.sleep(0.1)  # the loop runs: its periodic timer is armed
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as c:
            c.sendall(frame(b"z"))
            assert recv_exactly(c, 5) == frame(b"z")
        # a timer is always due within PUBLISH_INTERVAL (0.5 s): blocked for
        # 0.7 s, it ran at least 0.2 s late
        assert wait_for(lambda: value(scrape(server.metrics_address),
                                      "cserver_loop_lag_max_seconds") >= 0.15)
        samples = scrape(server.metrics_address)
    assert 0 <= value(samples, "cserver_loop_lag_seconds") <= \
        value(samples, "cserver_loop_lag_max_seconds")


def test_unix_metrics_address(kind):
    path = os.path.join(tempfile.mkdtemp(prefix="csm", dir="/tmp"), "m")
    try:
        server = selectorserver.SelectorTCPServer(("127.0.0.1", 0), Echo, loop=kind,
                                                  metrics_address=path)
        assert server.metrics_address == path
        with serving(server):
            samples = scrape(path)
            assert value(samples, "cserver_workers_live") == 1
        assert not os.path.exists(path)  # removed by server_close
    finally:
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(os.path.dirname(path))


def test_render_failure_is_a_500_and_the_loop_goes_on(kind, monkeypatch):
    errors = []

    class Server(selectorserver.SelectorTCPServer):
        def handle_error(self, request, client_address):
            errors.append(sys.exc_info()[1])

    server = Server(("127.0.0.1", 0), Echo, loop=kind, metrics_address=("127.0.0.1", 0))

    def broken(total, present):
        raise RuntimeError("render broke")

    with serving(server):
        monkeypatch.setattr(_metrics, "render", broken)
        status, _, body = http(server.metrics_address, b"GET /metrics HTTP/1.0\r\n\r\n")
        assert status == 500
        monkeypatch.undo()
        assert scrape(server.metrics_address)
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as c:
            c.sendall(frame(b"ok"))
            assert recv_exactly(c, 6) == frame(b"ok")
    assert [str(e) for e in errors] == ["render broke"]


# -- the HTTP handler, as an attacker --------------------------------------------------------

@pytest.fixture
def metrics_server(kind):
    server = selectorserver.SelectorTCPServer(("127.0.0.1", 0), Echo, loop=kind,
                                              metrics_address=("127.0.0.1", 0),
                                              metrics_timeout=1.0)
    with serving(server):
        yield server


def data_roundtrip(server, payload=b"still serving"):
    with socket.create_connection(server.server_address, timeout=TIMEOUT) as c:
        c.sendall(frame(payload))
        return recv_exactly(c, 4 + len(payload)) == frame(payload)


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET / HTTP/1.1\r\n\r\n", 404),
    (b"GET /metricsx HTTP/1.1\r\n\r\n", 404),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nab", 405),
    (b"DELETE /metrics HTTP/1.0\r\n\r\n", 405),
    (b"GET /metrics\r\n", 400),                      # HTTP/0.9
    (b"GET /metrics HTTP/2.0\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n", 400),   # a TLS hello, say
    (b"garbage\n", 400),
    (b"GET  /metrics HTTP/1.1\r\n\r\n", 400),
])
def test_bad_requests_are_answered_and_closed(metrics_server, request_bytes, status):
    got, headers, body = http(metrics_server.metrics_address, request_bytes)
    assert got == status
    assert headers["connection"] == "close"
    if status == 405:
        assert headers["allow"] == "GET, HEAD"
    assert data_roundtrip(metrics_server)
    assert core_of(metrics_server).metrics_stats()["refused"] == 1


def test_head_and_query_string(metrics_server):
    status, headers, body = http(metrics_server.metrics_address,
                                 b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    status, headers, body = http(metrics_server.metrics_address,
                                 b"GET /metrics?name[]=x HTTP/1.0\n\n")
    assert status == 200 and headers["content-type"] == CONTENT_TYPE
    assert list(text_string_to_metric_families(body.decode()))


def test_trickled_request_is_cut_at_the_deadline(metrics_server):
    request = b"GET /metrics HTTP/1.1\r\n" + b"X-Slow: " + b"a" * 200
    start = time.monotonic()
    cut = False
    with connect_to(metrics_server.metrics_address) as sock:
        sock.settimeout(0.05)
        for byte in request:   # one byte every 50 ms: 11 s in all, if never cut
            try:
                sock.send(bytes([byte]))
                if sock.recv(100) == b"":
                    cut = True
                    break
            except socket.timeout:
                continue
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
        elapsed = time.monotonic() - start
    assert cut, "a trickled request was never cut"
    assert elapsed < 8.0  # cut at metrics_timeout (1 s), long before the trickle's end
    assert core_of(metrics_server).metrics_stats()["timeouts"] == 1
    assert data_roundtrip(metrics_server)


def test_huge_request_line_is_refused_without_buffering(metrics_server):
    with connect_to(metrics_server.metrics_address) as sock:
        sock.sendall(b"GET /" + b"a" * 16384)
        # answered once its buffer (8 KiB) is full: it did not wait for the
        # rest of the MiB
        answer = sock.recv(100)
        assert answer.startswith(b"HTTP/1.1 414 "), answer
        sent = 16389
        try:
            chunk = b"a" * 65536
            while sent < (1 << 20):
                sent += sock.send(chunk)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass
        read_to_eof(sock)
    core = core_of(metrics_server)
    assert wait_for(lambda: core.metrics_stats()["open"] == 0)
    assert core.metrics_stats()["refused"] == 1
    assert data_roundtrip(metrics_server)


def test_huge_headers_are_refused(metrics_server):
    status, _, _ = http(metrics_server.metrics_address,
                        b"GET /metrics HTTP/1.1\r\nX: " + b"b" * 9000 + b"\r\n\r\n")
    assert status == 431


def test_200_concurrent_scrapers_do_not_stop_data_traffic(kind):
    server = selectorserver.SelectorTCPServer(("127.0.0.1", 0), Echo, loop=kind,
                                              metrics_address=("127.0.0.1", 0),
                                              metrics_timeout=TIMEOUT)
    scrapers = []
    try:
        with serving(server):
            for _ in range(200):
                scrapers.append(connect_to(server.metrics_address))
            # 200 silent scrapers are open (64 accepted, the rest queued)
            assert data_roundtrip(server)
            for sock in scrapers:
                sock.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            for sock in scrapers:
                assert read_to_eof(sock).startswith(b"HTTP/1.1 200 OK\r\n")
            assert data_roundtrip(server)
            stats = core_of(server).metrics_stats()
            # each was closed once answered, none held its slot until the deadline
            assert (stats["ok"], stats["timeouts"]) == (200, 0)
    finally:
        for sock in scrapers:
            sock.close()


# -- options ---------------------------------------------------------------------------------

@pytest.mark.parametrize("address, error", [
    (("127.0.0.1",), ValueError),
    (("127.0.0.1", 70000), ValueError),
    (("127.0.0.1", -1), ValueError),
    (("127.0.0.1", "80"), ValueError),
    (("127.0.0.1", True), ValueError),
    ((1, 80), ValueError),
    ("", ValueError),
    (9100, TypeError),
    (["127.0.0.1", 9100], TypeError),
])
def test_bad_metrics_address(address, error):
    with pytest.raises(error, match="metrics_address"):
        selectorserver.SelectorTCPServer(("127.0.0.1", 0), Echo, metrics_address=address)


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), "5"])
def test_bad_metrics_timeout(timeout):
    with pytest.raises((TypeError, ValueError), match="metrics_timeout"):
        selectorserver.SelectorTCPServer(("127.0.0.1", 0), Echo, metrics_timeout=timeout)


def test_metrics_address_in_use_fails_cleanly():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    before = len(os.listdir("/proc/self/fd"))
    try:
        with pytest.raises(OSError, match=r"metrics_address 127\.0\.0\.1:\d+"):
            selectorserver.SelectorTCPServer(("127.0.0.1", 0), Echo,
                                             metrics_address=taken.getsockname())
        assert len(os.listdir("/proc/self/fd")) == before  # the data socket is closed too
    finally:
        taken.close()


# -- the shared table ------------------------------------------------------------------------

def _values(**fields):
    values = [0] * len(_metrics.FIELDS)
    for name, number in fields.items():
        values[[f for f, _ in _metrics.FIELDS].index(name)] = number
    return values


def test_table_sums_live_cells_and_keeps_retired_counters():
    table = _metrics.SharedTable(2)
    try:
        a, b = table.claim(), table.claim()
        assert (a, b) == (0, 1) and table.claim() is None   # full
        table.publish(a, _values(frames_in=10, connections=3, write_buffer_bytes_peak=7))
        table.publish(b, _values(frames_in=5, connections=1, write_buffer_bytes_peak=9))
        total = _metrics.aggregate(*_table_cells(table))
        assert (total["frames_in"], total["connections"], total["workers_live"]) == (15, 4, 2)
        assert total["write_buffer_bytes_peak"] == 9   # a peak: the largest, not a sum
        table.retire(a)   # worker a is gone: its counters stay, its gauges go
        total = _metrics.aggregate(*_table_cells(table))
        assert (total["frames_in"], total["connections"], total["workers_live"]) == (15, 1, 1)
        c = table.claim()
        assert c == a   # the freed cell, zeroed
        table.publish(c, _values(frames_in=1))
        assert _metrics.aggregate(*_table_cells(table))["frames_in"] == 16
        table.retire(b)
        table.retire(c)
        assert _metrics.aggregate(*_table_cells(table))["frames_in"] == 16
    finally:
        table.close()


def _table_cells(table):
    retired, live = table.snapshot()
    return retired, list(live.values())


@support.FORK_IN_THREADS
def test_table_is_shared_with_a_forked_child():
    table = _metrics.SharedTable(1)
    try:
        cell = table.claim()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            try:
                table.publish(cell, _values(bytes_in=12345))
            finally:
                os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        assert _metrics.aggregate(*_table_cells(table))["bytes_in"] == 12345
    finally:
        table.close()


# -- workers (the command line) --------------------------------------------------------------

def _one_frame_each(port, n):
    for i in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as c:
            c.sendall(frame(b"%04d" % i))
            assert recv_exactly(c, 8) == frame(b"%04d" % i)


def _settled(address, frames):
    """Scrape until every worker has published (staleness: PUBLISH_INTERVAL)
    and the count reached ``frames``; return that scrape."""
    last = {}

    def done():
        last["samples"] = samples = scrape(address)
        return value(samples, "cserver_received_frames_total") >= frames
    wait_for(done)
    return last["samples"]


def _totals_hold_then_grow(address, port, frames):
    """Every scrape (whichever worker answers) says ``frames`` frames and
    connections; 10 more connections add 10 to both."""
    for _ in range(6):
        samples = scrape(address)
        assert value(samples, "cserver_received_frames_total") == frames
        assert value(samples, "cserver_connections_total") == frames
    _one_frame_each(port, 10)
    samples = _settled(address, frames + 10)
    assert value(samples, "cserver_received_frames_total") == frames + 10
    assert value(samples, "cserver_connections_total") == frames + 10


def test_workers_scrape_is_the_sum_and_survives_a_restart(kind):
    reader = cli("--port", "0", "--workers", "2", "--metrics", "127.0.0.1:0", "--loop", kind,
                 merge=True)
    proc = reader.proc
    try:
        port = int(reader.find(r"listening on 127\.0\.0\.1:(\d+)")[0].group(1))
        host, mport = reader.find(r"metrics on http://([\d.]+):(\d+)/metrics")[0].groups()
        address = (host, int(mport))
        workers = reader.find(r"worker (\d) serving on .* pid (\d+)", count=2)
        pids = sorted(int(m.group(2)) for m in workers)
        # 40 connections from 40 source ports: SO_REUSEPORT spreads them
        # over both workers (all on one: 2**-39); the sum must be all 40
        _one_frame_each(port, 40)
        samples = _settled(address, 40)
        assert value(samples, "cserver_received_frames_total") == 40
        assert value(samples, "cserver_connections_total") == 40
        assert value(samples, "cserver_received_bytes_total") == 40 * 8
        assert value(samples, "cserver_workers_live") == 2
        # every scrape, whichever worker answers it, says the same
        for _ in range(6):
            assert value(scrape(address), "cserver_received_frames_total") == 40
        # kill a worker (one the server reported as its child): its
        # counters move to the retired cell, the totals do not go down
        victim = pids[0]
        with open("/proc/%d/stat" % victim) as f:
            assert int(f.read().rsplit(")", 1)[1].split()[1]) == proc.pid
        os.kill(victim, signal.SIGKILL)
        reader.find(r"exited \(killed by SIGKILL\).*restarting")
        reader.find(r"worker \d restarted: pid (\d+)")
        assert wait_for(lambda: value(scrape(address), "cserver_workers_live") == 2)
        _totals_hold_then_grow(address, port, 40)
    finally:
        code = reader.stop()
    assert code == 0, "".join(reader.lines)


def test_workers_totals_survive_a_sighup_reload():
    """A reload replaces every worker (cserver._supervisor): the old
    generation's counters move to the retired cell as it is reaped, so the
    totals never go down and the new workers add to them."""
    reader = cli("--port", "0", "--workers", "2", "--metrics", "127.0.0.1:0", merge=True)
    proc = reader.proc
    try:
        port = int(reader.find(r"listening on 127\.0\.0\.1:(\d+)")[0].group(1))
        host, mport = reader.find(r"metrics on http://([\d.]+):(\d+)/metrics")[0].groups()
        address = (host, int(mport))
        reader.find(r"worker (\d) serving on .* pid (\d+)", count=2)
        _one_frame_each(port, 20)
        assert value(_settled(address, 20), "cserver_connections_total") == 20
        os.kill(proc.pid, signal.SIGHUP)
        reader.find(r"reload 1 done")
        reader.find(r"retired worker \d \(pid \d+\) exited", count=2)
        assert wait_for(lambda: value(scrape(address), "cserver_workers_live") == 2)
        _totals_hold_then_grow(address, port, 20)
    finally:
        code = reader.stop()
    assert code == 0, "".join(reader.lines)


@pytest.mark.parametrize("value_, message", [
    ("9100", "HOST:PORT"),
    ("localhost:99999", "0-65535"),
    ("::1:9100", "brackets"),
])
def test_cli_bad_metrics_value(value_, message):
    out = subprocess.run([sys.executable, "-m", "cserver", "echo", "--metrics", value_],
                         env=child_env(), capture_output=True,
                         timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    assert message in out.stderr.decode(), out.stderr


def test_cli_metrics_address_in_use_is_one_line():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        out = subprocess.run([sys.executable, "-m", "cserver", "echo", "--port", "0",
                              "--metrics", "127.0.0.1:%d" % taken.getsockname()[1]],
                             env=child_env(), capture_output=True,
                             timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    finally:
        taken.close()
    assert out.returncode == 2
    err = out.stderr.decode()
    assert "cannot serve --metrics on 127.0.0.1:" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1


# -- the supervisor's hooks ------------------------------------------------------------------

HOOKS_PROGRAM = r"""
import logging, os, sys, time
from cserver._supervisor import Supervisor
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
marker = sys.argv[1]
stop = []
def on_signal(signum, frame):
    stop.append(signum)
def start_worker(slot):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)          # the first worker dies at once: restarted
    for _ in range(500):     # the second serves until it is stopped
        if stop:
            return
        time.sleep(0.01)
def before_fork(slot): print("before_fork", slot, flush=True)
def worker_started(slot, pid): print("started", slot, pid, flush=True)
def worker_exited(slot, pid, status): print("exited", slot, pid, status, flush=True)
state = {"polls": 0}
def stop_requested():
    state["polls"] += 1
    return state["polls"] > 20
Supervisor(1, start_worker, stop_requested=stop_requested, on_signal=on_signal,
           drain_timeout=1.0, logger=logging.getLogger("t"), before_fork=before_fork,
           worker_started=worker_started, worker_exited=worker_exited).run()
print("done", flush=True)
"""


def test_supervisor_hooks_see_every_worker_once(tmp_path):
    out = subprocess.run([sys.executable, "-c", HOOKS_PROGRAM, str(tmp_path / "m")],
                         env=child_env(), capture_output=True,
                         timeout=TIMEOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    text = out.stdout.decode()
    assert out.returncode == 0 and "done" in text, text + out.stderr.decode()
    events = [line.split() for line in text.splitlines()
              if line.split()[0] in ("before_fork", "started", "exited")]
    started = [e[2] for e in events if e[0] == "started"]
    exited = [e[2] for e in events if e[0] == "exited"]
    assert len(started) == 2 and sorted(started) == sorted(exited), events
    # each worker: before_fork, started, exited, in that order; the first
    # died with status 3 (wait status 3 << 8) before its replacement forked
    assert [e[0] for e in events] == ["before_fork", "started", "exited"] * 2, events
    assert events[2][3] == str(3 << 8)
