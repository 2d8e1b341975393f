"""TLS on the multiplexing server (``ssl_context``, ``ssl_handshake_timeout``,
``ssl_shutdown_timeout``): echo of frames and raw bytes over TLS 1.2 and
1.3 with Python's ``ssl``, ``openssl s_client``, asyncio and Twisted as
clients; what ``get_extra_info`` tells; certificates the client refuses and
client certificates (mTLS, the peer's certificate seen by
``verify_request``); frames cut across records and many in one; a 1 MiB
frame; the half-close, ``close()``'s close_notify and ``abort()``'s none;
backpressure; PROXY header then TLS; the stats counters; the options; the
command line.  The serving tests run on both pollers, on TCP and Unix
listeners where the transport matters, and on both TLS engines
(``tls_engine``: libssl from C, or ``ssl.SSLObject``) for the main cases.
The attacker's side is tests/hostile/test_selector_tls_attacks.py.
Certificates come from the ``tls`` fixture (tests/conftest.py)."""
import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cserver
import support
from cserver import selectorserver
from support import child_env, cli

import proxyhelp as ph
import tlsloop as tl

CI = bool(os.environ.get("CI"))
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(params=tl.KINDS)
def kind(request):
    return request.param


@pytest.fixture(params=["tcp", "unix"])
def where(request):
    return request.param


@pytest.fixture(params=sorted(tl.VERSIONS))
def version(request):
    return request.param


def no_tls_trouble(stats, handshakes):
    """The TLS counters of a server whose clients all behaved."""
    assert {k: stats[k] for k in tl.TLS_COUNTERS} == dict(
        tls_handshakes=handshakes, tls_handshake_errors=0, tls_handshake_timeouts=0,
        tls_errors=0, tls_shutdown_timeouts=0)


def finish(conn):
    """A clean end from the client: close_notify, the server's answer, close."""
    try:
        conn.unwrap().close()
    finally:
        conn.close()


# -- echo ------------------------------------------------------------------------


def test_frames_echo_over_tls(kind, where, version, tls_engine, tls, short_tmpdir):
    rec = tl.Recorder()
    framed = tl.handlers(rec)[0]
    server = tl.build(kind, where, short_tmpdir, framed, tls.server_context(), rec)
    payloads = [b"first", os.urandom(70000), b"third"]
    with tl.running(server):
        conn = tl.connect(server, tls.client_context(version=tl.VERSIONS[version]))
        try:
            assert conn.version() == version
            conn.sendall(b"".join(tl.frame(p) for p in payloads))
            assert [tl.recv_frame(conn) for _ in payloads] == payloads
            conn.sendall(tl.frame(b"again"))
            assert tl.recv_frame(conn) == b"again"
        finally:
            finish(conn)
        assert tl.wait_until(lambda: rec.lost)
        stats = server.stats()
    assert stats["tls_engine"] == tls_engine
    no_tls_trouble(stats, 1)
    assert stats["frames_in"] == stats["frames_out"] == 4
    # application bytes (docs/tls.md, "Counting"), not the records on the wire
    sent = sum(len(tl.frame(p)) for p in payloads + [b"again"])
    assert stats["bytes_in"] == stats["bytes_out"] == sent
    assert stats["connections"] == 0
    assert rec.frames == [5, 70000, 5, 5]
    assert [m["version"] for m in rec.made] == [version]
    assert rec.lost == [None]
    assert len(rec.verified) == 1


def test_raw_bytes_echo_over_tls(kind, where, tls_engine, tls, short_tmpdir):
    rec = tl.Recorder()
    server = tl.build(kind, where, short_tmpdir, tl.handlers(rec)[1], tls.server_context())
    data = os.urandom(300 * 1024)
    with tl.running(server):
        conn = tl.connect(server, tls.client_context())
        try:
            conn.sendall(data)
            assert tl.recv_exactly(conn, len(data)) == data
        finally:
            finish(conn)
        assert tl.wait_until(lambda: rec.lost)
        stats = server.stats()
    no_tls_trouble(stats, 1)
    assert stats["tls_engine"] == tls_engine
    assert rec.lost == [None]


def test_get_extra_info_as_asyncio(kind, where, version, tls_engine, tls, short_tmpdir):
    rec = tl.Recorder()
    ctx = tls.server_context()
    server = tl.build(kind, where, short_tmpdir, tl.handlers(rec)[0], ctx, rec)
    with tl.running(server):
        conn = tl.connect(server, tls.client_context(version=tl.VERSIONS[version]))
        try:
            conn.sendall(tl.frame(b"x"))
            assert tl.recv_frame(conn) == b"x"
            client_cipher = conn.cipher()
            client_name = conn.getsockname()
        finally:
            finish(conn)
        assert tl.wait_until(lambda: rec.lost)
    (seen,) = rec.made
    assert seen["sslcontext"] is ctx
    assert seen["peercert"] is None             # no client certificate was asked for
    assert seen["compression"] is None          # OpenSSL 3 has none
    assert seen["cipher"] == client_cipher      # (name, protocol, secret bits)
    assert seen["version"] == version
    obj = seen["ssl_object"]
    assert obj.cipher() == client_cipher and obj.getpeercert() is None
    assert obj.server_side is True
    assert seen["proxy"] is None
    if where == "tcp":
        assert seen["peername"][:2] == client_name[:2]
        assert seen["client_address"][:2] == client_name[:2]
    assert rec.verified == [(seen["client_address"], None)]


def test_the_contexts_sni_callback_and_alpn_work(kind, tls_engine, tls):
    # the connection is the context's: its callbacks run, ALPN is chosen
    names = []
    ctx = tls.server_context()
    ctx.set_alpn_protocols(["h2", "x-cserver"])
    ctx.sni_callback = lambda obj, name, context: names.append(name)
    rec = tl.Recorder()
    server = tl.build(kind, "tcp", None, tl.handlers(rec)[0], ctx)
    client = tls.client_context()
    client.set_alpn_protocols(["x-cserver"])
    with tl.running(server):
        conn = tl.connect(server, client)
        try:
            assert conn.selected_alpn_protocol() == "x-cserver"
            conn.sendall(tl.frame(b"alpn"))
            assert tl.recv_frame(conn) == b"alpn"
        finally:
            finish(conn)
        assert tl.wait_until(lambda: rec.lost)
    assert names == ["localhost"]
    assert rec.made[0]["ssl_object"].selected_alpn_protocol() == "x-cserver"


def test_sessions_are_resumed(kind, version, tls_engine, tls):
    # TLS 1.3: the tickets the server sends after the handshake reach the
    # client; TLS 1.2: the session id or ticket of the full handshake
    rec = tl.Recorder()
    server = tl.build(kind, "tcp", None, tl.handlers(rec)[0], tls.server_context())
    client = tls.client_context(version=tl.VERSIONS[version])
    reused = []
    with tl.running(server):
        session = None
        for _ in range(3):
            sock = tl.raw_connect(server.server_address)
            conn = client.wrap_socket(sock, server_hostname="localhost", session=session,
                                      suppress_ragged_eofs=False)
            try:
                conn.sendall(tl.frame(b"s"))
                assert tl.recv_frame(conn) == b"s"
                reused.append(conn.session_reused)
                session = conn.session
            finally:
                finish(conn)
        assert tl.wait_until(lambda: len(rec.lost) == 3)
        stats = server.stats()
    assert reused == [False, True, True]
    no_tls_trouble(stats, 3)


def test_the_handshake_happens_before_the_handler_exists(kind, tls_engine, tls):
    # verify_request and connection_made only after the handshake: a
    # client that connects and sends nothing gets no handler
    rec = tl.Recorder()
    server = tl.build(kind, "tcp", None, tl.handlers(rec)[0], tls.server_context(), rec,
                      ssl_handshake_timeout=30)
    with tl.running(server):
        with tl.raw_connect(server.server_address) as silent:
            assert tl.wait_until(lambda: server.stats()["connections"] == 1)
            time.sleep(0.2)
            assert rec.verified == [] and rec.made == []
            conn = tl.connect(server, tls.client_context())
            try:
                assert tl.wait_until(lambda: len(rec.made) == 1)
                assert len(rec.verified) == 1
            finally:
                finish(conn)
            assert silent.fileno() >= 0
        assert tl.wait_until(lambda: server.stats()["connections"] == 0)


# -- certificates ----------------------------------------------------------------


@pytest.mark.parametrize("chain, hostname, client_error", [
    ("wrong_name", "localhost", "Hostname mismatch"),
    ("server", "elsewhere.example", "Hostname mismatch"),
    ("expired", "localhost", "certificate has expired"),
    ("unknown", "localhost", "unable to get local issuer certificate"),
])
def test_a_certificate_the_client_refuses_is_a_handshake_error(
        kind, tls_engine, chain, hostname, client_error, version, tls):
    rec = tl.Recorder()
    server = tl.build(kind, "tcp", None, tl.handlers(rec)[0],
                      tls.server_context(chain=getattr(tls, chain)), rec)
    with tl.running(server):
        with pytest.raises(ssl.SSLCertVerificationError, match=client_error):
            tl.connect(server, tls.client_context(version=tl.VERSIONS[version]),
                       server_hostname=hostname)
        assert tl.wait_until(lambda: server.stats()["tls_handshake_errors"] == 1)
        assert tl.wait_until(lambda: server.stats()["connections"] == 0)
        assert rec.verified == [] and rec.made == []
        # still serving: a client that does not verify gets through
        conn = tl.connect(server, tls.lax_client_context())
        try:
            conn.sendall(tl.frame(b"in"))
            assert tl.recv_frame(conn) == b"in"
        finally:
            finish(conn)
        stats = server.stats()
    assert stats["tls_handshakes"] == 1 and stats["tls_handshake_errors"] == 1
    assert stats["tls_handshake_timeouts"] == stats["tls_errors"] == 0
    assert len(rec.made) == 1


def test_client_certificate_seen_by_verify_request(kind, where, version, tls_engine, tls,
                                                   short_tmpdir):
    rec = tl.Recorder()
    server = tl.build(kind, where, short_tmpdir, tl.handlers(rec)[0],
                      tls.server_context(require_client_cert=True), rec)
    with tl.running(server):
        conn = tl.connect(server, tls.client_context(chain=tls.client,
                                                     version=tl.VERSIONS[version]))
        try:
            conn.sendall(tl.frame(b"mtls"))
            assert tl.recv_frame(conn) == b"mtls"
        finally:
            finish(conn)
        assert tl.wait_until(lambda: rec.lost)
        stats = server.stats()
    (address, cert), = rec.verified
    assert dict(x[0] for x in cert["subject"]) == {"commonName": "a client"}
    assert dict(x[0] for x in cert["issuer"]) == {"commonName": "cserver test CA"}
    assert rec.made[0]["peercert"] == cert
    assert rec.made[0]["ssl_object"].getpeercert() == cert
    no_tls_trouble(stats, 1)


def test_verify_request_may_refuse_by_certificate(kind, tls_engine, tls):
    class Picky(selectorserver.SelectorTCPServer):
        def verify_request(self, transport, client_address):
            subject = dict(x[0] for x in transport.get_extra_info("peercert")["subject"])
            return subject["commonName"] == "someone else"

    rec = tl.Recorder()
    server = Picky(("127.0.0.1", 0), tl.handlers(rec)[0], loop=kind,
                   ssl_context=tls.server_context(require_client_cert=True))
    with tl.running(server):
        conn = tl.connect(server, tls.client_context(chain=tls.client))
        try:
            conn.sendall(tl.frame(b"refused"))
            data, how = tl.read_end(conn)
        finally:
            conn.close()
        assert tl.wait_until(lambda: server.stats()["connections"] == 0)
        stats = server.stats()
    assert data == b"" and how in ("close_notify", "eof", "reset")
    assert rec.made == []
    assert stats["tls_handshakes"] == 1 and stats["tls_handshake_errors"] == 0


@pytest.mark.parametrize("client_chain", ["none", "client_unknown"])
def test_client_certificate_required_and_missing_or_unknown(kind, version, tls_engine, tls,
                                                            client_chain):
    rec = tl.Recorder()
    server = tl.build(kind, "tcp", None, tl.handlers(rec)[0],
                      tls.server_context(require_client_cert=True), rec)
    chain = None if client_chain == "none" else getattr(tls, client_chain)
    with tl.running(server):
        # TLS 1.2 fails in the client's handshake; with TLS 1.3 the client's
        # handshake completes first and the server's alert arrives at the
        # first read
        data = b""
        try:
            conn = tl.connect(server, tls.client_context(chain=chain,
                                                         version=tl.VERSIONS[version]))
        except (ssl.SSLError, ConnectionError):
            pass
        else:
            try:
                conn.sendall(tl.frame(b"let me in"))
                data, how = tl.read_end(conn)
            except (ssl.SSLError, ConnectionError):
                pass
            finally:
                conn.close()
        assert data == b""
        assert tl.wait_until(lambda: server.stats()["tls_handshake_errors"] == 1)
        assert tl.wait_until(lambda: server.stats()["connections"] == 0)
        stats = server.stats()
    assert rec.verified == [] and rec.made == []
    assert stats["tls_handshakes"] == 0 and stats["frames_in"] == 0


@pytest.mark.parametrize("server_version, client_version", [
    ("TLSv1.3", "TLSv1.2"), ("TLSv1.2", "TLSv1.3")])
def test_a_protocol_mismatch_is_a_handshake_error(kind, tls_engine, server_version,
                                                  client_version, tls):
    rec = tl.Recorder()
    server = tl.build(kind, "tcp", None, tl.handlers(rec)[0],
                      tls.server_context(version=tl.VERSIONS[server_version]), rec)
    with tl.running(server):
        with pytest.raises(ssl.SSLError):
            tl.connect(server, tls.client_context(version=tl.VERSIONS[client_version]))
        assert tl.wait_until(lambda: server.stats()["tls_handshake_errors"] == 1)
        conn = tl.connect(server, tls.client_context())
        try:
            assert conn.version() == server_version
        finally:
            finish(conn)
    assert rec.verified and len(rec.made) == 1


# -- other clients ---------------------------------------------------------------




def s_client_args(server, tls, *flags):
    address = server.server_address
    where = (["-unix", address] if isinstance(address, str)
             else ["-connect", "%s:%d" % address[:2]])
    return [support.openssl_program(), "s_client"] + where + list(flags) + [
        "-CAfile", tls.ca, "-verify_return_error", "-verify_hostname", "localhost",
        "-servername", "localhost"]


class CloseOnQuit(cserver.ConnectionHandler):
    """Raw echo; "QUIT" closes (close_notify), "ABORT" aborts."""
    seen = None

    def connection_made(self):
        obj = self.transport.get_extra_info("ssl_object")
        self.seen.append(obj.version())
        self.data = b""

    def data_received(self, data):
        self.write(data)
        self.data += data
        if b"QUIT\n" in self.data:
            self.transport.close()
        elif b"ABORT\n" in self.data:
            self.transport.abort()


@pytest.mark.parametrize("flag, expected", [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")])
def test_openssl_s_client(kind, where, flag, expected, tls_engine, tls, short_tmpdir):
    seen = []
    handler = type("H", (CloseOnQuit,), {"seen": seen})
    server = tl.build(kind, where, short_tmpdir, handler, tls.server_context())
    with tl.running(server):
        # -quiet implies -ign_eof: s_client reads the server until it closes
        done = subprocess.run(s_client_args(server, tls, flag, "-quiet"),
                              input=b"over openssl\nQUIT\n", stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=tl.TIMEOUT, check=False)
        assert tl.wait_until(lambda: server.stats()["connections"] == 0)
        stats = server.stats()
    # exit status 0: the server's close_notify ended it (without one,
    # OpenSSL 3's s_client says "unexpected eof while reading", status 1)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"over openssl\nQUIT\n"
    assert seen == [expected]
    no_tls_trouble(stats, 1)
    assert stats["tls_engine"] == tls_engine


def test_openssl_s_client_sees_no_close_notify_after_abort(kind, tls_engine, tls):
    seen = []
    server = tl.build(kind, "tcp", None, type("H", (CloseOnQuit,), {"seen": seen}),
                      tls.server_context())
    with tl.running(server):
        done = subprocess.run(s_client_args(server, tls, "-quiet"),
                              input=b"ABORT\n", stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=tl.TIMEOUT, check=False)
    assert done.returncode == 1, done.stderr.decode()
    assert b"unexpected eof" in done.stderr
    assert seen == ["TLSv1.3"]


async def _asyncio_client(server, ctx, payloads):
    address = server.server_address
    if isinstance(address, str):
        reader, writer = await asyncio.open_unix_connection(
            address, ssl=ctx, server_hostname="localhost", ssl_handshake_timeout=tl.TIMEOUT)
    else:
        reader, writer = await asyncio.open_connection(
            address[0], address[1], ssl=ctx, server_hostname="localhost",
            ssl_handshake_timeout=tl.TIMEOUT)
    try:
        version = writer.get_extra_info("ssl_object").version()
        replies = []
        for payload in payloads:
            writer.write(tl.frame(payload))
        await writer.drain()
        for _ in payloads:
            size = int.from_bytes(await reader.readexactly(4), "big")
            replies.append(await reader.readexactly(size))
        return version, replies
    finally:
        writer.close()
        await writer.wait_closed()   # asyncio sends close_notify and waits for ours


def test_asyncio_tls_client(kind, where, version, tls_engine, tls, short_tmpdir):
    rec = tl.Recorder()
    server = tl.build(kind, where, short_tmpdir, tl.handlers(rec)[0], tls.server_context())
    payloads = [b"a", os.urandom(200000), b"c" * 100]

    async def run():
        return await asyncio.wait_for(
            _asyncio_client(server, tls.client_context(version=tl.VERSIONS[version]),
                            payloads), tl.TIMEOUT)

    with tl.running(server):
        got_version, replies = asyncio.run(run())
        assert tl.wait_until(lambda: rec.lost)
        stats = server.stats()
    assert got_version == version
    assert replies == payloads
    assert rec.lost == [None]
    no_tls_trouble(stats, 1)


def test_twisted_tls_client(kind, where, version, tls_engine, tls, short_tmpdir):
    """Twisted's TLS (pyOpenSSL, its memory-BIO protocol), in a child
    process (a reactor runs once per process)."""
    rec = tl.Recorder()
    server = tl.build(kind, where, short_tmpdir, tl.handlers(rec)[0], tls.server_context())
    address = server.server_address
    target = ("unix:" + address) if isinstance(address, str) else "tcp:%s:%d" % address[:2]
    with tl.running(server):
        done = subprocess.run(
            [sys.executable, os.path.join(HERE, "..", "twisted_tls_client.py"), target,
             tls.ca, version, "5", "50000"],
            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            timeout=3 * tl.TIMEOUT, check=False)
        assert done.returncode == 0, done.stderr.decode()
        assert tl.wait_until(lambda: rec.lost)
        stats = server.stats()
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert result["echoed"] is True, result
    assert result["close_notify"] is True, result           # the server's came
    if where == "tcp":
        # (over Unix sockets Twisted says ConnectionLost for a clean end
        # too, against the stdlib's ssl server as well)
        assert result["reason"] == "ConnectionDone", result
    assert [m["version"] for m in rec.made] == [version]
    assert rec.frames == [50000] * 5
    assert rec.lost == [None]
    no_tls_trouble(stats, 1)


# -- records and frames ----------------------------------------------------------


def test_many_frames_in_one_record_and_one_frame_over_many(kind, where, tls_engine, tls,
                                                          short_tmpdir):
    rec = tl.Recorder()
    server = tl.build(kind, where, short_tmpdir, tl.handlers(rec)[0], tls.server_context())
    with tl.running(server):
        with tl.BioClient(server.server_address, tls.client_context()) as c:
            c.handshake()
            # ten frames, one write: one record
            small = [b"%d" % i * (i + 1) for i in range(10)]
            c.send(b"".join(tl.frame(p) for p in small))
            # one frame: its header in a record of its own, then the body in
            # records of 1, 2, 3... bytes, then a 40 KB rest (three records)
            body = os.urandom(40000 + 55)
            cipher = c.encrypt(tl.frame(body)[:4])
            pos = 0
            for n in range(1, 11):
                cipher += c.encrypt(body[pos:pos + n])
                pos += n
            cipher += c.encrypt(body[pos:])
            c.send_raw(cipher)
            expected = b"".join(tl.frame(p) for p in small) + tl.frame(body)
            assert c.read(len(expected)) == expected
            c.send_close_notify()
            assert c.read_end() == (b"", "close_notify")
        assert tl.wait_until(lambda: rec.lost)
        stats = server.stats()
    assert rec.frames == [len(p) for p in small] + [len(body)]
    no_tls_trouble(stats, 1)


def test_ciphertext_cut_anywhere(kind, tls_engine, tls):
    """Records split across TCP segments at random points (the header of a
    record, its tag, between records) arrive whole, in order."""
    rec = tl.Recorder()
    server = tl.build(kind, "tcp", None, tl.handlers(rec)[0], tls.server_context())
    with tl.running(server):
        @settings(max_examples=25, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(payloads=st.lists(st.binary(min_size=0, max_size=3000), min_size=1,
                                 max_size=5),
               cuts=st.lists(st.integers(min_value=0, max_value=20000), max_size=12))
        def check(payloads, cuts):
            with tl.BioClient(server.server_address, tls.client_context()) as c:
                c.handshake()
                cipher = b"".join(c.encrypt(tl.frame(p)) for p in payloads)
                points = sorted({min(x, len(cipher)) for x in cuts} | {0, len(cipher)})
                for a, b in zip(points, points[1:]):
                    c.send_raw(cipher[a:b])
                    time.sleep(0.001)
                expected = b"".join(tl.frame(p) for p in payloads)
                assert c.read(len(expected)) == expected
                c.send_close_notify()
                assert c.read_end()[1] == "close_notify"
        check()
        stats = server.stats()
    assert stats["tls_handshake_errors"] == stats["tls_errors"] == 0


def test_more_than_a_read_buffer_in_one_burst(kind, tls_engine, tls):
    # with the smallest read buffer, one burst holds many reads' worth of
    # records: what the TLS buffers still hold is read without a new event
    rec = tl.Recorder()
    server = tl.build(kind, "tcp", None, tl.handlers(rec)[0], tls.server_context(),
                      read_size=4096)
    payloads = [b"%05d" % i * 20 for i in range(3000)]
    data = b"".join(tl.frame(p) for p in payloads)          # ~310 KB
    with tl.running(server):
        with tl.BioClient(server.server_address, tls.client_context()) as c:
            c.handshake()
            c.send(data)
            assert c.read(len(data)) == data
            c.send_close_notify()
            assert c.read_end() == (b"", "close_notify")
        assert tl.wait_until(lambda: rec.lost)
        stats = server.stats()
    assert len(rec.frames) == 3000
    no_tls_trouble(stats, 1)


@pytest.mark.parametrize("where_paused", ["connection_made", "frame_received"])
def test_pause_reading_holds_what_tls_buffered(kind, tls_engine, where_paused, tls):
    # the frames that came with the client's Finished (one segment), or a
    # burst after the first frame: nothing is delivered while paused, all
    # of it after resume_reading, though no new byte arrives to wake the loop
    events = []

    class Pausing(cserver.FrameHandler):
        def connection_made(self):
            if where_paused == "connection_made":
                self.pause()

        def pause(self):
            self.transport.pause_reading()
            events.append("pause")
            self.server.call_later(0.3, self.resume)

        def resume(self):
            events.append("resume")
            self.transport.resume_reading()

        def frame_received(self, payload):
            events.append(payload)
            self.send_frame(payload)
            if where_paused == "frame_received" and payload == payloads[0]:
                self.pause()

    server = tl.build(kind, "tcp", None, Pausing, tls.server_context(), read_size=4096)
    # 20 KB: several records, more than one read (read_size 4096) of them
    payloads = [b"p%03d" % i + b"." * 96 for i in range(200)]
    data = b"".join(tl.frame(p) for p in payloads)
    with tl.running(server):
        with tl.BioClient(server.server_address,
                          tls.client_context(version=ssl.TLSVersion.TLSv1_3)) as c:
            c.handshake(flush=False)           # Finished and the frames: one send
            c.send(data)
            assert c.read(len(data)) == data
            c.send_close_notify()
            assert c.read_end()[1] == "close_notify"
    first = 0 if where_paused == "connection_made" else 1
    assert events[:first] == payloads[:first]
    assert events[first] == "pause" and events[first + 1] == "resume", events[:5]
    assert [e for e in events if e not in ("pause", "resume")] == payloads


def test_a_1_mib_frame(kind, where, version, tls_engine, tls, short_tmpdir):
    rec = tl.Recorder()
    server = tl.build(kind, where, short_tmpdir, tl.handlers(rec)[0], tls.server_context())
    payload = os.urandom(1 << 20)      # DEFAULT_MAX_FRAME_SIZE: the largest accepted
    with tl.running(server):
        conn = tl.connect(server, tls.client_context(version=tl.VERSIONS[version]))
        try:
            conn.sendall(tl.frame(payload))
            assert tl.recv_frame(conn) == payload
            conn.sendall(tl.frame(b"after"))
            assert tl.recv_frame(conn) == b"after"
        finally:
            finish(conn)
        assert tl.wait_until(lambda: rec.lost)
        stats = server.stats()
    assert rec.frames == [1 << 20, 5]
    no_tls_trouble(stats, 1)


# -- the end of a connection -----------------------------------------------------


@pytest.mark.parametrize("sends", ["one-send", "two-sends"])
def test_half_close_the_replies_still_arrive(kind, where, version, sends, tls_engine, tls,
                                             short_tmpdir):
    # frames, then the client's close_notify (in the same send, or once the
    # replies are back): every reply comes back, eof_received is called
    # once, the server answers with its own close_notify
    rec = tl.Recorder()
    server = tl.build(kind, where, short_tmpdir, tl.handlers(rec)[0], tls.server_context())
    payloads = [b"one", os.urandom(30000), b"three"]
    expected = b"".join(tl.frame(p) for p in payloads)
    with tl.running(server):
        with tl.BioClient(server.server_address,
                          tls.client_context(version=tl.VERSIONS[version])) as c:
            c.handshake()
            if sends == "one-send":
                c.obj.write(expected)
                c.send_close_notify()       # the data and the close_notify, one send
                data, how = c.read_end()
            else:
                c.send(expected)
                data = c.read(len(expected))
                c.send_close_notify()
                rest, how = c.read_end()
                data += rest
        assert tl.wait_until(lambda: rec.lost)
        stats = server.stats()
    assert data == expected
    assert how == "close_notify"
    assert len(rec.eofs) == 1 and rec.lost == [None]
    no_tls_trouble(stats, 1)


def test_half_close_eof_received_true_keeps_writing(kind, tls_engine, tls):
    class Late(cserver.FrameHandler):
        lost = []

        def frame_received(self, payload):
            self.send_frame(payload)

        def eof_received(self):
            self.server.call_later(0.1, self.late)
            return True

        def late(self):
            self.send_frame(b"late")
            self.close()

        def connection_lost(self, exc):
            self.lost.append(exc)

    server = tl.build(kind, "tcp", None, Late, tls.server_context())
    with tl.running(server):
        with tl.BioClient(server.server_address, tls.client_context()) as c:
            c.handshake()
            c.send(tl.frame(b"early"))
            assert c.read(9) == tl.frame(b"early")
            c.send_close_notify()
            data, how = c.read_end()
        assert tl.wait_until(lambda: Late.lost)
    assert data == tl.frame(b"late")
    assert how == "close_notify"
    assert Late.lost == [None]


@pytest.mark.parametrize("ending", ["close", "abort"])
def test_close_sends_close_notify_abort_sends_none(kind, where, ending, tls_engine, tls,
                                                   short_tmpdir):
    class Ender(cserver.FrameHandler):
        lost = []

        def frame_received(self, payload):
            self.send_frame(payload)
            if payload == b"end":
                getattr(self.transport, ending)()

        def connection_lost(self, exc):
            self.lost.append(exc)

    server = tl.build(kind, where, short_tmpdir, Ender, tls.server_context())
    with tl.running(server):
        conn = tl.connect(server, tls.client_context())
        try:
            conn.sendall(tl.frame(b"first"))
            assert tl.recv_frame(conn) == b"first"
            conn.sendall(tl.frame(b"end"))
            data, how = tl.read_end(conn)
        finally:
            conn.close()
        assert tl.wait_until(lambda: Ender.lost)
        stats = server.stats()
    if ending == "close":
        # the reply, then close_notify (SSLSocket.recv() returns b"" only then)
        assert (data, how) == (tl.frame(b"end"), "close_notify")
    else:
        # the buffered reply may be gone; no close_notify in any case
        assert how in ("eof", "reset") and data in (b"", tl.frame(b"end"))
    assert stats["tls_handshakes"] == 1 and stats["tls_errors"] == 0


def test_close_waits_for_the_peers_close_notify(kind, tls_engine, tls):
    # the client answers at once: the connection ends long before the
    # shutdown timeout, and none is counted
    rec = tl.Recorder()
    server = tl.build(kind, "tcp", None, type("E", (tl.handlers(rec)[0],), {
        "frame_received": lambda self, p: self.close()}), tls.server_context(),
        ssl_shutdown_timeout=30.0)
    with tl.running(server):
        conn = tl.connect(server, tls.client_context())
        try:
            conn.sendall(tl.frame(b"bye"))
            start = time.monotonic()
            conn.unwrap()          # reads the server's close_notify, answers
            assert tl.wait_until(lambda: rec.lost)
            assert time.monotonic() - start < tl.TIMEOUT
        finally:
            conn.close()
        stats = server.stats()
    assert rec.lost == [None]
    no_tls_trouble(stats, 1)


def test_a_peer_that_never_answers_close_notify_is_cut_at_ssl_shutdown_timeout(
        kind, tls_engine, tls):
    rec = tl.Recorder()
    timeout = 0.5
    server = tl.build(kind, "tcp", None, type("E", (tl.handlers(rec)[0],), {
        "frame_received": lambda self, p: self.close()}), tls.server_context(),
        ssl_shutdown_timeout=timeout)
    with tl.running(server):
        with tl.BioClient(server.server_address, tls.client_context()) as c:
            c.handshake()
            c.send(tl.frame(b"bye"))
            # the server's close_notify arrives; this client never answers
            with pytest.raises(EOFError, match="close_notify"):
                c.read(1)
            notified = time.monotonic()
            c.sock.settimeout(tl.TIMEOUT)
            assert c.sock.recv(100) == b""          # then the TCP close
            waited = time.monotonic() - notified
        assert tl.wait_until(lambda: rec.lost)
        stats = server.stats()
    assert timeout * 0.8 <= waited < tl.TIMEOUT, waited
    assert stats["tls_shutdown_timeouts"] == 1
    assert stats["tls_handshakes"] == 1 and stats["tls_errors"] == 0


def test_shutdown_closes_tls_connections_with_close_notify(kind, tls_engine, tls):
    rec = tl.Recorder()
    server = tl.build(kind, "tcp", None, tl.handlers(rec)[0], tls.server_context(),
                      drain_timeout=1.0, ssl_shutdown_timeout=30.0, ssl_handshake_timeout=30.0)
    thread_done = []
    with tl.running(server):
        conns = [tl.connect(server, tls.client_context()) for _ in range(3)]
        pending = tl.raw_connect(server.server_address)       # mid-handshake
        pending.sendall(tl.client_hello(tls.client_context())[:50])
        try:
            for conn in conns:
                conn.sendall(tl.frame(b"hi"))
                assert tl.recv_frame(conn) == b"hi"
            start = time.monotonic()
            server.shutdown()
            thread_done.append(time.monotonic() - start)
            ends = [tl.read_end(conn) for conn in conns]
            assert tl.closed_by_server(pending)[1]
        finally:
            for conn in conns:
                conn.close()
            pending.close()
    # bounded by drain_timeout (1 s), not by ssl_shutdown_timeout (30 s)
    assert thread_done[0] < 5.0
    assert ends == [(b"", "close_notify")] * 3
    assert len(rec.made) == 3 and rec.lost == [None] * 3


# -- backpressure ----------------------------------------------------------------


def test_a_never_reading_client_pauses_the_writer(kind, where, tls_engine, tls, short_tmpdir):
    """The handler writes a 16 KiB chunk a loop pass whenever it may (the
    loop looks at the buffer when it flushes, at the end of a pass); the
    client reads nothing.  pause_writing comes, the write buffer (plaintext and
    ciphertext not yet sent) stays near high_water, the total written stays
    far below what it would write unchecked (64 MiB); then the client reads
    it all, intact, and resume_writing came."""
    chunk = bytes(range(256)) * 64
    limit = 64 << 20
    high = 64 * 1024
    state = {"written": 0, "paused": 0, "resumed": 0, "max_buffer": 0, "handler": None}

    class Producer(cserver.ConnectionHandler):
        def connection_made(self):
            state["handler"] = self
            self.paused = False
            self.pump()

        def pump(self):
            if self.paused or self.transport.is_closing():
                return
            if state["written"] >= limit:
                self.close()
                return
            state["max_buffer"] = max(state["max_buffer"],
                                      self.transport.get_write_buffer_size())
            self.write(chunk)
            state["written"] += len(chunk)
            self.server.call_soon(self.pump)      # the next pass

        def pause_writing(self):
            self.paused = True
            state["paused"] += 1

        def resume_writing(self):
            self.paused = False
            state["resumed"] += 1
            self.server.call_soon(self.pump)

    server = tl.build(kind, where, short_tmpdir, Producer, tls.server_context(),
                      high_water=high)
    with tl.running(server):
        conn = tl.connect(server, tls.client_context())
        try:
            assert tl.wait_until(lambda: state["paused"])
            # wait until the writer stops making progress (kernel buffers full)
            last, still = -1, 0
            deadline = time.monotonic() + tl.TIMEOUT
            while still < 5 and time.monotonic() < deadline:
                time.sleep(0.1)
                now = state["written"]
                still = still + 1 if now == last else 0
                last = now
            assert still >= 5, "the writer never stopped: %d bytes" % state["written"]
            stalled = state["written"]
            transport = state["handler"].transport
            size = []
            server.call_soon_threadsafe(lambda: size.append(transport.get_write_buffer_size()))
            assert tl.wait_until(lambda: size)
            # the socket buffers of both ends plus about high_water: far below
            # the 64 MiB an unchecked writer would have queued
            assert stalled < 24 << 20, stalled
            assert state["max_buffer"] <= high + 2 * len(chunk) + 4096, state["max_buffer"]
            assert 0 < size[0] <= high + 2 * len(chunk) + 4096, size
            assert server.stats()["pool"]["write_buffer_bytes"] <= 4 * high + 4 * len(chunk)
            # now read everything: it is all there, in order
            received = 0
            while received < limit:
                block = conn.recv(1 << 20)
                assert block, "closed after %d bytes" % received
                start = received % len(chunk)
                expected = (chunk * (len(block) // len(chunk) + 2))[start:start + len(block)]
                assert block == expected, received
                received += len(block)
            assert received == limit
            assert tl.read_end(conn) == (b"", "close_notify")
        finally:
            conn.close()
    assert state["resumed"] >= 1 and state["paused"] >= state["resumed"]


# -- PROXY header, then TLS ------------------------------------------------------


@pytest.mark.parametrize("mode, header", [("v2", ph.v2()), ("v1", ph.v1())])
def test_proxy_header_then_tls(kind, where, mode, header, tls_engine, tls, short_tmpdir):
    rec = tl.Recorder()
    server = tl.build(kind, where, short_tmpdir, tl.handlers(rec)[0], tls.server_context(),
                      rec, proxy_protocol=mode)
    with tl.running(server):
        conn = tl.connect(server, tls.client_context(), prefix=header)
        try:
            conn.sendall(tl.frame(b"proxied"))
            assert tl.recv_frame(conn) == b"proxied"
        finally:
            finish(conn)
        assert tl.wait_until(lambda: rec.lost)
        stats = server.stats()
    assert rec.verified == [(("203.0.113.7", 51000), None)]
    (seen,) = rec.made
    assert seen["client_address"] == ("203.0.113.7", 51000)
    assert seen["proxy"].source == ("203.0.113.7", 51000)
    assert seen["version"] == "TLSv1.3"
    assert stats["proxy_headers"] == 1 and stats["proxy_errors"] == 0
    no_tls_trouble(stats, 1)


def test_proxy_header_then_plaintext_is_a_handshake_error(kind, tls_engine, tls):
    rec = tl.Recorder()
    server = tl.build(kind, "tcp", None, tl.handlers(rec)[0], tls.server_context(), rec,
                      proxy_protocol="v2")
    with tl.running(server):
        with tl.raw_connect(server.server_address) as c:
            c.sendall(ph.v2() + b"GET / HTTP/1.0\r\n\r\n")
            data, closed = tl.closed_by_server(c)
        assert closed and (data == b"" or data[:1] == b"\x15")
        # and TLS without the header: the PROXY parser refuses the ClientHello
        with pytest.raises((ssl.SSLError, ConnectionError)):
            tl.connect(server, tls.client_context())
        assert tl.wait_until(lambda: server.stats()["proxy_errors"] == 1)
        assert tl.wait_until(lambda: server.stats()["connections"] == 0)
        stats = server.stats()
    assert stats["proxy_headers"] == 1
    assert stats["tls_handshake_errors"] == 1 and stats["tls_handshakes"] == 0
    assert rec.verified == [] and rec.made == []


# -- counters --------------------------------------------------------------------


def test_the_counters_count_each_kind_of_end_once(kind, tls_engine, tls):
    rec = tl.Recorder()
    server = tl.build(kind, "tcp", None, tl.handlers(rec)[0], tls.server_context(), rec,
                      ssl_handshake_timeout=0.5)
    with tl.running(server):
        before = server.stats()
        assert {k: before[k] for k in tl.TLS_COUNTERS} == dict.fromkeys(tl.TLS_COUNTERS, 0)
        for _ in range(3):                                  # three good ones
            conn = tl.connect(server, tls.client_context())
            try:
                conn.sendall(tl.frame(b"ok"))
                assert tl.recv_frame(conn) == b"ok"
            finally:
                finish(conn)
        for _ in range(2):                                  # two plaintext
            with tl.raw_connect(server.server_address) as c:
                c.sendall(b"hello?\r\n\r\n")
                assert tl.closed_by_server(c)[1]
        with tl.raw_connect(server.server_address) as c:    # one silent: cut at 0.5 s
            assert tl.closed_by_server(c)[1]
        with tl.BioClient(server.server_address, tls.client_context()) as c:
            c.handshake()                                   # one broken record
            record = bytearray(c.encrypt(tl.frame(b"x")))
            record[-1] ^= 0xFF
            c.send_raw(bytes(record))
            assert c.read_end()[1] != "close_notify"
        assert tl.wait_until(lambda: server.stats()["connections"] == 0)
        assert tl.wait_until(lambda: len(rec.lost) == 4)
        stats = server.stats()
    assert {k: stats[k] for k in tl.TLS_COUNTERS} == dict(
        tls_handshakes=4, tls_handshake_errors=2, tls_handshake_timeouts=1, tls_errors=1,
        tls_shutdown_timeouts=0)
    assert stats["frames_in"] == 3
    assert rec.lost[:3] == [None] * 3 and isinstance(rec.lost[3], ssl.SSLError)
    assert stats["first_byte_timeouts"] == stats["idle_timeouts"] == 0


# -- options ---------------------------------------------------------------------


def test_defaults():
    assert selectorserver.SelectorServer.ssl_context is None
    assert selectorserver.SelectorServer.ssl_handshake_timeout == 10.0
    assert selectorserver.SelectorServer.ssl_shutdown_timeout == 5.0


def test_without_ssl_context_nothing_changes(kind):
    rec = tl.Recorder()
    server = selectorserver.SelectorTCPServer(("127.0.0.1", 0), tl.handlers(rec)[0], loop=kind)
    with tl.running(server):
        with tl.raw_connect(server.server_address) as c:
            c.sendall(tl.frame(b"\x16\x03\x01 not a handshake"))
            assert tl.recv_frame(c) == b"\x16\x03\x01 not a handshake"
        stats = server.stats()
    assert {k: stats[k] for k in tl.TLS_COUNTERS} == dict.fromkeys(tl.TLS_COUNTERS, 0)
    assert rec.made[0]["ssl_object"] is None and rec.made[0]["peercert"] is None
    assert rec.made[0]["sslcontext"] is None and rec.made[0]["cipher"] is None


@pytest.mark.parametrize("options, error, text", [
    (dict(ssl_context="cert.pem"), TypeError, "ssl_context"),
    (dict(ssl_context=object()), TypeError, "ssl_context"),
    (dict(ssl_context="client"), (TypeError, ValueError), "client"),
    (dict(ssl_context="server", ssl_handshake_timeout=0), ValueError, "ssl_handshake_timeout"),
    (dict(ssl_context="server", ssl_handshake_timeout=-1.0), ValueError, "-1.0"),
    (dict(ssl_context="server", ssl_handshake_timeout=float("nan")), ValueError,
     "ssl_handshake_timeout"),
    (dict(ssl_context="server", ssl_handshake_timeout="1"), TypeError,
     "ssl_handshake_timeout"),
    (dict(ssl_context="server", ssl_shutdown_timeout=-1), ValueError, "ssl_shutdown_timeout"),
    (dict(ssl_context="server", ssl_shutdown_timeout="5"), TypeError, "ssl_shutdown_timeout"),
])
def test_bad_options_fail_before_the_socket_exists(options, error, text, tls, fd_count):
    options = dict(options)
    if options["ssl_context"] == "client":
        options["ssl_context"] = tls.client_context()
    elif options["ssl_context"] == "server":
        options["ssl_context"] = tls.server_context()
    before = fd_count()
    with pytest.raises(error) as info:
        selectorserver.SelectorTCPServer(("127.0.0.1", 0), cserver.FrameHandler, **options)
    assert text in str(info.value)
    assert "unexpected keyword" not in str(info.value)     # refused as a bad value
    assert fd_count() == before


def test_ssl_context_as_a_class_attribute(kind, tls):
    rec = tl.Recorder()

    class Server(selectorserver.SelectorTCPServer):
        ssl_context = tls.server_context()
        ssl_handshake_timeout = 2.0

    server = Server(("127.0.0.1", 0), tl.handlers(rec)[0], loop=kind)
    with tl.running(server):
        conn = tl.connect(server, tls.client_context())
        try:
            conn.sendall(tl.frame(b"cls"))
            assert tl.recv_frame(conn) == b"cls"
        finally:
            finish(conn)
    assert rec.made[0]["sslcontext"] is Server.ssl_context


def test_udp_refuses_ssl_context(tls):
    with pytest.raises((TypeError, ValueError), match="ssl_context") as info:
        selectorserver.SelectorUDPServer(("127.0.0.1", 0), cserver.DatagramHandler,
                                         bind_and_activate=False,
                                         ssl_context=tls.server_context())
    # refused as an option UDP cannot use, not as an unknown keyword
    assert "unexpected keyword" not in str(info.value)
    assert "SelectorUDPServer" in str(info.value)


def test_an_unknown_engine_name_is_an_error(tls, monkeypatch):
    monkeypatch.setenv("CSERVER_TLS_ENGINE", "gnutls")
    with pytest.raises(ValueError, match="gnutls"):
        server = selectorserver.SelectorTCPServer(("127.0.0.1", 0), cserver.FrameHandler,
                                                  ssl_context=tls.server_context())
        try:
            server.stats()     # builds the loop, if the constructor did not look
        finally:
            server.server_close()


# -- the command line ------------------------------------------------------------


@pytest.mark.parametrize("raw", [False, True], ids=["framed", "raw"])
@pytest.mark.parametrize("on_unix", [False, True], ids=["tcp", "unix"])
def test_cli_tls_cert_and_key(raw, on_unix, tls, short_tmpdir):
    args = ["--tls-cert", tls.server[0], "--tls-key", tls.server[1]]
    path = os.path.join(short_tmpdir, "e")
    args += ["--unix", path] if on_unix else ["--port", "0"]
    if raw:
        args.append("--raw")
    output = cli(*args, merge=True)
    try:
        if on_unix:
            output.find(r"listening on " + path)
            address = path
        else:
            address = ("127.0.0.1",
                       int(output.find(r"listening on 127\.0\.0\.1:(\d+)")[0].group(1)))
        sock = tl.raw_connect(address)
        conn = tls.client_context().wrap_socket(sock, server_hostname="localhost")
        try:
            message = tl.frame(b"over the cli")
            conn.sendall(message)
            assert tl.recv_exactly(conn, len(message)) == message
            assert conn.version() == "TLSv1.3"
        finally:
            conn.close()
        with tl.raw_connect(address) as plain:           # plaintext: refused
            plain.sendall(tl.frame(b"plain"))
            data, closed = tl.closed_by_server(plain)
        assert closed and tl.frame(b"plain") not in data
        output.send_signal(signal.SIGINT)
        code = output.wait(tl.TIMEOUT)
    finally:
        output.kill()
    assert code == 0, output.text()


@pytest.mark.parametrize("which", ["cert-only", "key-only", "missing-file", "not-a-cert"])
def test_cli_tls_mistakes_are_one_line(which, tls, short_tmpdir):
    bogus = os.path.join(short_tmpdir, "bogus.pem")
    with open(bogus, "w") as f:
        f.write("not a certificate\n")
    args = {
        "cert-only": ["--tls-cert", tls.server[0]],
        "key-only": ["--tls-key", tls.server[1]],
        "missing-file": ["--tls-cert", os.path.join(short_tmpdir, "nope.pem"),
                         "--tls-key", tls.server[1]],
        "not-a-cert": ["--tls-cert", bogus, "--tls-key", tls.server[1]],
    }[which]
    proc = subprocess.run([sys.executable, "-m", "cserver", "echo", "--port", "0"] + args,
                          env=child_env(), stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=tl.TIMEOUT, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "--tls" in err, err
    assert "unrecognized arguments" not in err, err       # known options, a bad use


# -- the end of a connection, when the peer's end and ours cross -----------------


@pytest.mark.parametrize("eof_result", [None, True])
def test_a_large_reply_survives_the_peers_close_notify_and_fin(kind, tls_engine, eof_result,
                                                               tls):
    # the client sends a request, its close_notify and its FIN, then reads
    # slowly; the reply is far more than the socket buffers hold, so the
    # server is still sending when it closes (eof_received: None closes at
    # once, True closes later): all of the reply arrives, then close_notify
    # (a plain connection delivers it all too: the end of the peer's side
    # does not cut what is still owed to it)
    size = 16 << 20
    reply = os.urandom(size)
    lost = []

    class Big(cserver.ConnectionHandler):
        def data_received(self, data):
            self.write(reply)

        def eof_received(self):
            if eof_result:
                self.server.call_later(0.1, self.close)
            return eof_result

        def connection_lost(self, exc):
            lost.append(exc)

    server = tl.build(kind, "tcp", None, Big, tls.server_context(), ssl_shutdown_timeout=30.0)
    with tl.running(server):
        with tl.BioClient(server.server_address, tls.client_context()) as c:
            c.handshake()
            time.sleep(0.2)                       # the handshake done on the server too
            c.obj.write(b"go")
            c.send_close_notify()                 # the request and close_notify, one send
            time.sleep(0.4)                       # the server fills the buffers, closes
            c.sock.shutdown(socket.SHUT_WR)       # then the FIN, while it still sends
            time.sleep(0.2)
            data, how = c.read_end()
        assert tl.wait_until(lambda: lost)
        stats = server.stats()
    assert (len(data), how) == (size, "close_notify")
    assert data == reply
    assert lost == [None]
    no_tls_trouble(stats, 1)


def test_pause_reading_then_the_peers_close_notify_in_the_same_read(kind, tls_engine, tls):
    # frames and the client's close_notify arrive in one segment (a client
    # that half-closes TLS and waits for the server's close_notify: no FIN);
    # the handler pauses on the first frame and resumes later: the rest of
    # the frames, then eof_received, then the server's close_notify, though
    # no new byte arrives to wake the loop
    events = []

    class Pausing(cserver.FrameHandler):
        def frame_received(self, payload):
            events.append(payload)
            self.send_frame(payload)
            if payload == payloads[0]:
                self.transport.pause_reading()
                self.server.call_later(0.2, self.transport.resume_reading)

        def eof_received(self):
            events.append("eof")

    payloads = [b"f%d" % i for i in range(5)]
    data = b"".join(tl.frame(p) for p in payloads)
    server = tl.build(kind, "tcp", None, Pausing, tls.server_context())
    with tl.running(server):
        with tl.BioClient(server.server_address, tls.client_context()) as c:
            c.handshake()
            c.obj.write(data)
            c.send_close_notify()
            got, how = c.read_end()
    assert (got, how) == (data, "close_notify")
    assert events == payloads + ["eof"]


def test_close_in_connection_made_sees_the_close_notify_already_received(kind, tls_engine,
                                                                         tls):
    # the client's Finished, a request and its close_notify come in one
    # segment; connection_made answers and closes: the peer's close_notify
    # is already in the TLS buffers (no event will announce it), so the
    # connection ends at once, not at ssl_shutdown_timeout
    lost = []

    class Busy(cserver.FrameHandler):
        def connection_made(self):
            self.send_frame(b"busy")
            self.close()

        def connection_lost(self, exc):
            lost.append(time.monotonic())

    server = tl.build(kind, "tcp", None, Busy, tls.server_context(), ssl_shutdown_timeout=5.0)
    with tl.running(server):
        with tl.BioClient(server.server_address,
                          tls.client_context(version=ssl.TLSVersion.TLSv1_3)) as c:
            c.handshake(flush=False)
            c.obj.write(tl.frame(b"request"))
            c.send_close_notify()                 # Finished, request, close_notify
            start = time.monotonic()
            got, how = c.read_end()
            assert (got, how) == (tl.frame(b"busy"), "close_notify")
            c.sock.settimeout(tl.TIMEOUT)
            assert c.sock.recv(10) == b""         # the TCP close
            closed = time.monotonic() - start
        assert tl.wait_until(lambda: lost)
        stats = server.stats()
    assert closed < 2.0, closed
    no_tls_trouble(stats, 1)


def test_resume_writing_reads_the_close_notify_already_received(kind, tls_engine, tls):
    # the client's Finished, a request and its close_notify in one segment,
    # no FIN (it waits for the server's close_notify); the reply is far
    # more than high_water, so the server pauses writing (and reading)
    # before it has read that close_notify: once the client has read it
    # all, resume_writing must read what the TLS buffers hold, the end of
    # stream included (no event will announce it)
    size = 4 << 20
    reply = os.urandom(size)
    lost = []

    class Big(cserver.ConnectionHandler):
        def data_received(self, data):
            self.write(reply)

        def connection_lost(self, exc):
            lost.append(exc)

    server = tl.build(kind, "tcp", None, Big, tls.server_context())
    with tl.running(server):
        with tl.BioClient(server.server_address,
                          tls.client_context(version=ssl.TLSVersion.TLSv1_3)) as c:
            c.handshake(flush=False)
            c.obj.write(b"go")
            c.send_close_notify()                 # Finished, request, close_notify
            time.sleep(0.3)
            data, how = c.read_end()
        assert tl.wait_until(lambda: lost)
        stats = server.stats()
    assert (len(data), how) == (size, "close_notify")
    assert data == reply
    no_tls_trouble(stats, 1)
