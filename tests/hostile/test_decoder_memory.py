"""Hostile peers against the framing layer's memory.

``tests/hostile/`` holds attacks a network peer can make on cserver; each
test plays the attacker, then checks that the server still serves a
well-behaved client and that what the attack cost stays within a stated
bound.  This module: header-only floods.  A header announces a frame; a
decoder that allocated the whole announced body as soon as the header was
complete would let a few bytes per peer pin up to ``max_frame_size`` each
(and, with an 8-byte field and a large limit, one header reserve
gigabytes).  A header reserves at most one pool slab (64 KiB by default)
and a large frame's buffer grows with the bytes that actually arrive (at
most twice what was received).

Every attack runs in a child process under ``RLIMIT_AS`` (address-space
limit: VmSize, which counts reserved-but-untouched memory, the kind a
header used to reserve) and reports ``VmSize``/``VmRSS`` from
``/proc/self/status``; the bounds asserted are the documented ones
(docs/framing.md, "What one peer can pin").  Bounded: a few hundred to two
thousand connections or decoders, seconds each.
"""
import json
import os
import resource
import select
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import tracemalloc

import pytest

import cserver

#: One pool slab (the default BufferPool), the most a header may reserve.
SLAB = 65536
#: What a header may add besides its slab: allocator rounding, the bytes
#: object's header (the idle connection itself is measured first and not
#: counted: the loop's and the threads' own costs are not the decoder's).
PER_HEADER = 4096
#: Interpreter and allocator noise after the baseline was taken.
FIXED = 32 << 20
TIMEOUT = 20


def _status_code():
    return textwrap.dedent('''
        def vm_status():
            out = {}
            with open("/proc/self/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in ("VmSize", "VmRSS", "VmPeak"):
                        out[key] = int(value.split()[0]) * 1024
            return out
    ''')


def _run_child(code, *args, env_extra=None):
    env = dict(os.environ)
    env["MALLOC_ARENA_MAX"] = "2"   # per-thread arenas would reserve 64 MiB each
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-c", _status_code() + textwrap.dedent(code)]
                          + [str(a) for a in args],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


DECODERS_CHILD = '''
    import importlib, json, resource, sys
    mod = importlib.import_module(sys.argv[1])
    n, budget, announce, length_size = (int(a) for a in sys.argv[2:6])
    decoders = [mod.FrameDecoder(length_size=length_size, max_frame_size=1 << 62)
                for _ in range(n)]
    header = announce.to_bytes(length_size, "big")
    base = vm_status()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (base["VmSize"] + budget, hard))
    for d in decoders:
        assert d.feed(header) == [], "a frame from a header alone"
        assert d.pending == length_size
    after = vm_status()
    print(json.dumps({"base": base, "after": after}))
'''


@pytest.mark.parametrize("module", ["cserver._framing", "cserver._framing_py"],
                         ids=["C", "py"])
@pytest.mark.parametrize("length_size,announce", [(8, 1 << 30), (4, (1 << 32) - 1)],
                         ids=["Q-1GiB", "I-4GiB"])
def test_many_decoders_each_given_a_huge_header(module, length_size, announce):
    """2,000 decoders, each fed one header announcing a 1 GiB (or 4 GiB)
    frame, under a 512 MiB address-space budget: no MemoryError, and VmSize
    grows by at most one slab plus bookkeeping per decoder (7da4050: the
    first header alone reserved the gigabyte)."""
    n, budget = 2000, 512 << 20
    got = _run_child(DECODERS_CHILD, module, n, budget, announce, length_size)
    grown = got["after"]["VmSize"] - got["base"]["VmSize"]
    rss = got["after"]["VmRSS"] - got["base"]["VmRSS"]
    bound = n * (SLAB + 1024) + FIXED
    assert grown <= bound, (grown, bound)
    assert rss <= bound, (rss, bound)


SERVER_CHILD = '''
    import json, resource, socket, sys, threading
    import cserver

    budget = int(sys.argv[1])

    class Echo(cserver.FrameHandler):
        def frame_received(self, frame):
            if frame == b"status":
                self.send_frame(json.dumps(vm_status()).encode())
            else:
                self.send_frame(frame)

    class Server(cserver.SelectorTCPServer):
        # a header-only peer is a slow peer, not a bad one: keep per-frame
        # deadlines (if this cserver has them) out of this test's way
        frame_timeout = 300.0
        idle_timeout = None

    with Server(("127.0.0.1", 0), Echo) as server:
        base = vm_status()
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (base["VmSize"] + budget, hard))
        print(json.dumps({"port": server.server_address[1], "base": base}), flush=True)
        threading.Thread(target=lambda: (sys.stdin.read(), server.shutdown()),
                         daemon=True).start()
        server.serve_forever()
    print(json.dumps({"stopped": True}), flush=True)
'''

THREADED_CHILD = '''
    import json, resource, socket, sys, threading
    import cserver

    budget = int(sys.argv[1])
    threading.stack_size(256 * 1024)

    class Echo(cserver.FramedRequestHandler):
        def handle_frame(self, frame):
            if frame == b"status":
                return json.dumps(vm_status()).encode()
            return frame

    class Server(cserver.ThreadingTCPServer):
        daemon_threads = True
        block_on_close = False
        request_queue_size = 1024

    with Server(("127.0.0.1", 0), Echo) as server:
        base = vm_status()
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (base["VmSize"] + budget, hard))
        print(json.dumps({"port": server.server_address[1], "base": base}), flush=True)
        threading.Thread(target=lambda: (sys.stdin.read(), server.shutdown()),
                         daemon=True).start()
        server.serve_forever()
    print(json.dumps({"stopped": True}), flush=True)
'''


def _raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = soft if soft >= want else min(want, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return soft, hard, new


def _settled_status(client):
    """The server's /proc/self/status once VmSize stops moving (the server
    has read what was sent to it), polled for at most a few seconds."""
    last = None
    for _ in range(60):
        status = json.loads(client.request(b"status"))
        if last is not None and status["VmSize"] == last["VmSize"]:
            return status
        last = status
        time.sleep(0.05)
    return last


def _header_flood(child_code, n, budget):
    """Start ``child_code`` (a server under RLIMIT_AS = its VmSize + budget),
    connect ``n`` peers, then have each send a header announcing a 1 MiB
    frame (the default limit) and nothing more; a good client checks that
    its echo still comes back and that no attacker was dropped.  Returns
    (n, what the idle connections cost, what the headers added), in bytes of
    the server's VmSize."""
    soft, hard, limit = _raise_nofile(2 * n + 256)
    n = min(n, limit - 256)
    env = dict(os.environ, MALLOC_ARENA_MAX="2")
    # the server's log (a line per dropped peer at the end) goes to a file:
    # a pipe nobody reads could fill and stall it
    errors = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, "-c", _status_code() + textwrap.dedent(child_code),
                             str(budget)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=errors, text=True, env=env)
    attackers = []
    try:
        line = proc.stdout.readline()
        if not line:
            proc.wait(TIMEOUT)
            errors.seek(0)
            pytest.fail("the server did not start: %s" % errors.read()[-3000:])
        hello = json.loads(line)
        address = ("127.0.0.1", hello["port"])
        for _ in range(n):
            attackers.append(socket.create_connection(address, timeout=TIMEOUT))
        with cserver.FramedClient(address, timeout=TIMEOUT) as good:
            # accepted after every attacker: they are all connected now
            idle = _settled_status(good)
            header = (1 << 20).to_bytes(4, "big")      # announces exactly the limit
            for s in attackers:
                s.sendall(header)
            assert good.request(b"hello") == b"hello"
            flooded = _settled_status(good)
            for s in attackers[::max(1, n // 50)]:
                s.sendall(b"x")     # a byte of body: the frame buffers are in use
            assert good.request(b"hello again") == b"hello again"
            after = _settled_status(good)
        readable, _, _ = select.select(attackers, [], [], 0)
        if readable:
            errors.seek(0)
            pytest.fail("%d attackers were disconnected; server log: %s"
                        % (len(readable), errors.read()[-2000:]))
        return (n, idle["VmSize"] - hello["base"]["VmSize"],
                max(flooded["VmSize"], after["VmSize"]) - idle["VmSize"])
    finally:
        for s in attackers:
            s.close()
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(TIMEOUT)
        proc.stdout.close()
        errors.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_header_flood_multiplexing_server():
    """1,000 peers each send one header announcing 1 MiB to a
    SelectorTCPServer whose address space is capped at its VmSize + 256 MiB:
    7da4050 reserved 1 MiB per header (about 1 GiB: MemoryError escaped
    serve_forever and the server died); now each pins one slab at most and
    a good client is served."""
    n, idle, added = _header_flood(SERVER_CHILD, 1000, 256 << 20)
    print("%d peers: idle connections %d B each, a header %d B more each"
          % (n, idle // n, added // n))
    assert added <= n * (SLAB + PER_HEADER) + FIXED, (n, idle, added)


def test_header_flood_threaded_framed_handler():
    """200 peers each send one header announcing 1 MiB to a
    ThreadingTCPServer + FramedRequestHandler (256 KiB thread stacks) capped
    at its VmSize + 160 MiB: 7da4050 reserved 1 MiB per header (each
    handler thread died with MemoryError and dropped its peer); now each
    pins one slab plus its thread."""
    n, idle, added = _header_flood(THREADED_CHILD, 200, 160 << 20)
    print("%d peers: idle connections %d B each, a header %d B more each"
          % (n, idle // n, added // n))
    assert added <= n * (SLAB + PER_HEADER) + FIXED, (n, idle, added)


def test_framed_client_against_a_hostile_server():
    """FramedClient.recv_frame: a server that sends only a header announcing
    the largest frame the client's limit allows (here 1 GiB) makes the
    client reserve at most one slab while it waits."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    done = threading.Event()
    sent = threading.Event()

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.sendall((1 << 30).to_bytes(8, "big"))
            sent.set()
            done.wait(TIMEOUT)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with cserver.FramedClient(listener.getsockname(), timeout=0.5, frame_format="!Q",
                                  max_frame_size=1 << 30) as client:
            # the header is in the client's socket buffer before the clock
            # of its 0.5 s timeout starts (a loaded machine may be slow to send)
            assert sent.wait(TIMEOUT)
            pool = client.decoder.pool
            idle_before = pool.stats()["idle"]
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                with pytest.raises(socket.timeout):
                    client.recv_frame()
                held = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            assert client.decoder.pending == 8
            # a slab the read borrowed and gave back stays in the shared
            # pool's idle cache (bounded by max_idle for every decoder):
            # that is not memory this peer holds
            cached = (pool.stats()["idle"] - idle_before) * pool.slab_size
        assert held - cached <= SLAB + 4096, (held, cached)
    finally:
        done.set()
        thread.join(TIMEOUT)
        listener.close()


OOM_CHILD = '''
    import importlib, json, resource, sys
    mod = importlib.import_module(sys.argv[1])
    dec = mod.FrameDecoder("!Q", max_frame_size=1 << 40,
                           pool=mod.BufferPool(slab_size=4096))
    chunk = bytes(1 << 20)
    base = vm_status()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (base["VmSize"] + (96 << 20), hard))
    # a 1 GiB frame whose body really arrives, until memory runs out
    out = dec.feed((1 << 30).to_bytes(8, "big"))
    error = None
    try:
        for _ in range(1024):
            out += dec.feed(chunk)
    except MemoryError as exc:
        error = str(exc)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    later = []
    for data in (bytes(64), (5).to_bytes(8, "big") + b"hello"):
        try:
            later.append(repr(dec.feed(data)))
        except MemoryError:
            later.append("MemoryError")
    print(json.dumps({"frames": len(out), "error": error, "failed": dec.failed,
                      "later": later}))
'''


#: Under ``tox -e asan`` the ASan runtime is preloaded: exhausting an
#: RLIMIT_AS on purpose then kills ASan's own internal allocator (a fatal
#: error of the tool, not of cserver), so that one test runs in the other
#: environments only.
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")


@pytest.mark.skipif(UNDER_ASAN, reason="exhausting RLIMIT_AS kills ASan's own allocator")
@pytest.mark.parametrize("module", ["cserver._framing", "cserver._framing_py"],
                         ids=["C", "py"])
def test_out_of_memory_mid_frame_fails_the_decoder(module):
    """When a frame's buffer cannot grow, the decoder raises MemoryError
    and is failed: later input raises MemoryError too, and is never
    decoded as headers (the rest of the cut frame would be smuggled)."""
    got = _run_child(OOM_CHILD, module)
    assert got["frames"] == 0
    assert got["error"] and "out of memory" in got["error"], got
    assert got["failed"] is True
    assert got["later"] == ["MemoryError", "MemoryError"], got
