"""Decode throughput of length-prefixed frames, in one run:

* cserver's C decoder (``cserver._framing.FrameDecoder.feed``);
* its pure-Python twin (``cserver._framing_py``);
* the ``struct`` idiom users write on a byte buffer (a ``bytearray``, an
  offset, ``struct.unpack_from``, one ``del`` per read -- the careful
  version, without the quadratic ``buf = buf[n:]`` of many recipes);
* the ``rfile`` idiom of socketserver handlers (``rfile.read(4)``,
  ``struct.unpack``, ``rfile.read(n)`` on a buffered reader);
* Twisted's ``Int32StringReceiver.dataReceived`` when Twisted is installed.

Frames of 16 B to 1 MiB ("!I" header) arrive in 64 KiB reads, as from a
socket.  Every frame is delivered as ``bytes`` and dropped, as a server
would after handling it.  Each measurement is repeated; the table shows the
median frames/s and MB/s (payload) with the min-max of the rounds, and the
ratio of the C decoder to each other implementation.

Usage: python bench/bench_decode.py [--quick] [--rounds N] [--chunks]
  --chunks  also: the C decoder on 64 B frames for read sizes 4 KiB-1 MiB
            (the measurement behind the 64 KiB pool slab).
"""
import argparse
import io
import os
import platform
import statistics
import struct
import subprocess
import time

import _cserver_path  # noqa: E402  (bench/ is sys.path[0])

ROOT = _cserver_path.ROOT
_cserver_path.use()  # the checkout when it is built in place, else the installed package

from cserver import _framing, _framing_py  # noqa: E402

SIZES = [16, 64, 256, 1024, 16384, 65536, 1 << 20]
CHUNK = 65536


def c_decoder(chunks):
    feed = _framing.FrameDecoder().feed
    n = 0
    for chunk in chunks:
        n += len(feed(chunk))
    return n


def pure_decoder(chunks):
    feed = _framing_py.FrameDecoder().feed
    n = 0
    for chunk in chunks:
        n += len(feed(chunk))
    return n


def struct_idiom(chunks):
    unpack_from = struct.unpack_from
    buf = bytearray()
    n = 0
    for chunk in chunks:
        buf += chunk
        pos = 0
        end = len(buf)
        frames = []
        while end - pos >= 4:
            (size,) = unpack_from("!I", buf, pos)
            if end - pos - 4 < size:
                break
            frames.append(bytes(buf[pos + 4:pos + 4 + size]))
            pos += 4 + size
        del buf[:pos]
        n += len(frames)
    return n


class _Reads(io.RawIOBase):
    """A raw stream that returns one chunk per read, like a socket."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._rest = b""

    def readable(self):
        return True

    def readinto(self, b):
        if not self._rest:
            self._rest = next(self._chunks, b"")
        n = min(len(b), len(self._rest))
        b[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


def rfile_idiom(chunks):
    rfile = io.BufferedReader(_Reads(chunks), CHUNK)
    read = rfile.read
    unpack = struct.unpack
    n = 0
    while True:
        header = read(4)
        if len(header) < 4:
            return n
        (size,) = unpack("!I", header)
        read(size)  # the frame
        n += 1


def twisted_receiver():
    try:
        from twisted.protocols.basic import Int32StringReceiver
    except ImportError:
        return None

    class Receiver(Int32StringReceiver):
        MAX_LENGTH = 1 << 30

        def __init__(self):
            self.count = 0

        def stringReceived(self, string):
            self.count += 1

    def run(chunks):
        protocol = Receiver()
        for chunk in chunks:
            protocol.dataReceived(chunk)
        return protocol.count
    return run


def make_chunks(size, total):
    count = max(8, total // (size + 4))
    frame = struct.pack("!I", size) + bytes(range(256)) * (size // 256) + bytes(size % 256)
    stream = frame * count
    return [stream[i:i + CHUNK] for i in range(0, len(stream), CHUNK)], count


def measure(fn, chunks, count, rounds):
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        got = fn(chunks)
        elapsed = time.perf_counter() - start
        if got != count:
            raise AssertionError("%s decoded %d frames, expected %d" % (fn.__name__, got, count))
        rates.append(count / elapsed)
    return rates


def fmt_rate(rates, size):
    med = statistics.median(rates)
    return "%10.0f f/s (%8.0f-%8.0f) %8.1f MB/s" % (med, min(rates), max(rates),
                                                   med * size / 1e6)


def header():
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
    except OSError:
        rev = "?"
    print("# bench_decode: %s, Python %s, %s, %d CPUs, git %s"
          % (platform.machine(), platform.python_version(), platform.platform(),
             os.cpu_count(), rev or "?"))


def main():
    global CHUNK
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="less data, 3 rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--chunks", action="store_true", help="read-size sweep too")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)
    total = (2 << 20) if args.quick else (16 << 20)
    header()
    impls = [("C decoder", c_decoder), ("pure twin", pure_decoder),
             ("struct idiom", struct_idiom), ("rfile idiom", rfile_idiom)]
    twisted = twisted_receiver()
    if twisted is not None:
        twisted.__name__ = "twisted"
        impls.append(("Twisted Int32", twisted))
    else:
        print("# Twisted is not installed: Int32StringReceiver skipped "
              "(pip install twisted to include it)")
    print("# %d KiB reads, ~%d MiB per measurement, %d rounds, median (min-max)"
          % (CHUNK >> 10, total >> 20, rounds))
    for size in SIZES:
        chunks, count = make_chunks(size, total)
        results = {}
        for name, fn in impls:
            results[name] = measure(fn, chunks, count, rounds)
        print("\nframe %d B (%d frames)" % (size, count))
        c_med = statistics.median(results["C decoder"])
        for name, _ in impls:
            rates = results[name]
            ratio = c_med / statistics.median(rates)
            print("  %-14s %s   C/this %6.2fx" % (name, fmt_rate(rates, size), ratio))
    if args.chunks:
        print("\n# C decoder, 64 B frames, by read size")
        for chunk in (4096, 16384, 65536, 262144, 1 << 20):
            CHUNK = chunk
            chunks, count = make_chunks(64, total)
            rates = measure(c_decoder, chunks, count, rounds)
            print("  read %7d B  %s" % (chunk, fmt_rate(rates, 64)))


if __name__ == "__main__":
    main()
