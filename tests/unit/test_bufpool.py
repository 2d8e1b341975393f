"""The buffer pool: bounds, reuse, thread safety, no leak, stats; and how
the C decoder holds and returns its slabs."""
import gc
import threading

import pytest

from cserver.errors import FrameTooLarge


def test_exhaustion_and_misses(twin):
    pool = twin.BufferPool(slab_size=128, max_slabs=2)
    a, b = pool.lease(), pool.lease()
    assert a is not None and b is not None
    assert pool.lease() is None
    s = pool.stats()
    assert (s["in_use"], s["misses"], s["allocations"], s["high_water"]) == (2, 1, 2, 2)
    a.release()
    c = pool.lease()
    assert c is not None
    assert pool.stats()["hits"] == 1
    b.release()
    c.release()
    assert pool.stats()["in_use"] == 0


def test_reuse_and_surplus_freed(twin):
    pool = twin.BufferPool(slab_size=64, max_slabs=8, max_idle=2)
    leases = [pool.lease() for _ in range(5)]
    addresses = {x.address for x in leases}
    assert len(addresses) == 5
    for x in leases:
        x.release()
    s = pool.stats()
    assert (s["idle"], s["frees"], s["in_use"]) == (2, 3, 0)
    again = pool.lease()
    assert again.address in addresses
    assert pool.stats()["hits"] == 1
    again.release()
    assert pool.trim() == 2
    s = pool.stats()
    assert (s["idle"], s["frees"]) == (0, 5)
    assert s["allocations"] == s["frees"]


def test_lease_is_a_writable_buffer(twin):
    pool = twin.BufferPool(slab_size=256)
    with pool.lease() as buf:
        assert len(buf) == 256
        view = buf.memoryview()
        view[:3] = b"abc"
        assert bytes(view[:3]) == b"abc"
        view.release()
    assert buf.released
    buf.release()   # idempotent
    with pytest.raises(ValueError):
        buf.memoryview()
    assert pool.stats()["in_use"] == 0


def test_release_refused_while_a_view_is_alive(ctwin):
    pool = ctwin.BufferPool(slab_size=64)
    buf = pool.lease()
    view = memoryview(buf)
    with pytest.raises(BufferError):
        buf.release()
    view.release()
    buf.release()
    assert pool.stats()["in_use"] == 0


def test_leased_buffer_not_constructible(ctwin):
    with pytest.raises(TypeError):
        type(ctwin.BufferPool().lease())()


def test_dropped_lease_returns_its_slab(twin):
    pool = twin.BufferPool(slab_size=64)
    pool.lease()   # dropped at once
    gc.collect()
    assert pool.stats()["in_use"] == 0


@pytest.mark.parametrize("kwargs", [dict(slab_size=8), dict(max_slabs=0),
                                    dict(max_slabs=2, max_idle=3), dict(max_idle=-1)])
def test_bad_parameters(twin, kwargs):
    with pytest.raises(ValueError):
        twin.BufferPool(**kwargs)


def test_thread_safety_one_owner_per_slab(twin):
    pool = twin.BufferPool(slab_size=64, max_slabs=6, max_idle=3)
    owned = set()
    lock = threading.Lock()
    errors = []

    def worker():
        try:
            for _ in range(300):
                buf = pool.lease()
                if buf is None:
                    continue
                with lock:
                    assert buf.address not in owned, "slab handed to two owners"
                    owned.add(buf.address)
                with lock:
                    owned.discard(buf.address)
                buf.release()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    s = pool.stats()
    assert s["in_use"] == 0
    assert s["high_water"] <= 6
    assert s["allocations"] - s["frees"] == s["idle"] <= 3


# -- the C decoder's use of the pool --------------------------------------

def test_idle_decoder_holds_no_slab(ctwin):
    pool = ctwin.BufferPool(slab_size=1024)
    dec = ctwin.FrameDecoder(pool=pool)
    assert dec.feed(ctwin.encode_frame(b"x" * 10) * 3) == [b"x" * 10] * 3
    assert pool.stats()["in_use"] == 0          # decoded in place, nothing kept
    assert dec.feed(b"\x00\x00\x00\x05ab") == []
    assert pool.stats()["in_use"] == 1          # the partial frame holds one slab
    assert dec.feed(b"cde") == [b"abcde"]
    assert pool.stats()["in_use"] == 0          # and gives it back when done
    dec.feed(b"\x00")
    dec.close()
    assert pool.stats()["in_use"] == 0
    dec.feed(b"\x00")
    del dec
    gc.collect()
    assert pool.stats()["in_use"] == 0


def test_large_frame_bypasses_the_pool(ctwin):
    pool = ctwin.BufferPool(slab_size=1024)
    dec = ctwin.FrameDecoder(pool=pool)
    wire = ctwin.encode_frame(b"y" * 5000)
    assert dec.feed(wire[:100]) == []
    assert dec.feed(wire[100:3000]) == []
    assert dec.feed(wire[3000:]) == [b"y" * 5000]
    s = pool.stats()
    assert s["bypass"] >= 1 and s["in_use"] == 0


def test_exhausted_pool_falls_back(ctwin):
    pool = ctwin.BufferPool(slab_size=256, max_slabs=2)
    decoders = [ctwin.FrameDecoder(pool=pool) for _ in range(5)]
    for d in decoders:
        assert d.feed(b"\x00\x00\x00\x03a") == []
    s = pool.stats()
    assert s["in_use"] == 2 and s["misses"] == 3
    for d in decoders:
        assert d.feed(b"bc") == [b"abc"]
    assert pool.stats()["in_use"] == 0


def test_failed_decoder_gives_back_its_slab(ctwin):
    pool = ctwin.BufferPool(slab_size=256)
    dec = ctwin.FrameDecoder(pool=pool, max_frame_size=10)
    dec.feed(b"\x00\x00")
    assert pool.stats()["in_use"] == 1
    with pytest.raises(FrameTooLarge):
        dec.feed(b"\x01\x00")
    assert pool.stats()["in_use"] == 0


def test_many_connections_no_leak(ctwin):
    pool = ctwin.BufferPool(slab_size=512, max_slabs=64, max_idle=4)
    for round_ in range(20):
        decs = [ctwin.FrameDecoder(pool=pool) for _ in range(30)]
        for i, d in enumerate(decs):
            d.feed(b"\x00\x00\x00\x10" + b"z" * (i % 16))
        del decs, d
        gc.collect()
        assert pool.stats()["in_use"] == 0
    s = pool.stats()
    assert s["allocations"] - s["frees"] == s["idle"] <= 4
