"""The load generator of the scale-out tests, run inside its own network
namespace: ``python ns_loadgen.py HOST PORT CONNECTIONS SECONDS MAX``.

CONNECTIONS threads each run one request per connection (connect, send a
unique frame, read the reply, close), one after the other, until SECONDS
have passed or MAX requests were started in all; nothing is ever retried.
Prints ``started`` when the first request is sent, then at the end one JSON
object: every request as ``[start, end, outcome, reply-or-error]`` with
``time.monotonic()`` times (the same clock as the test's: CLOCK_MONOTONIC
is not namespaced), outcome ``"ok"``, ``"refused"`` (the connect failed) or
``"lost"`` (connected, no reply).
"""
import json
import socket
import struct
import sys
import threading
import time

TIMEOUT = 10.0


def _recv_exactly(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("closed after %d of %d bytes" % (len(data), size))
        data += chunk
    return data


def one(address, payload):
    start = time.monotonic()
    try:
        sock = socket.create_connection(address, TIMEOUT)
    except OSError as exc:
        return [start, time.monotonic(), "refused", repr(exc)]
    try:
        sock.sendall(struct.pack("!I", len(payload)) + payload)
        size = struct.unpack("!I", _recv_exactly(sock, 4))[0]
        reply = json.loads(_recv_exactly(sock, size))
        return [start, time.monotonic(), "ok", reply]
    except (OSError, EOFError, ValueError) as exc:
        return [start, time.monotonic(), "lost", repr(exc)]
    finally:
        sock.close()


def main():
    host, port, connections, seconds, limit = sys.argv[1:6]
    address = (host, int(port))
    deadline = time.monotonic() + float(seconds)
    limit = int(limit)
    lock = threading.Lock()
    results = []
    counter = [0]
    first = threading.Event()

    def run(thread_id):
        while time.monotonic() < deadline:
            with lock:
                if counter[0] >= limit:
                    return
                counter[0] += 1
                number = counter[0]
            payload = ("req-%d-%d" % (thread_id, number)).encode()
            first.set()
            result = one(address, payload)
            result.append(payload.decode())
            with lock:
                results.append(result)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(int(connections))]
    for thread in threads:
        thread.start()
    first.wait(TIMEOUT)
    print("started", flush=True)
    for thread in threads:
        thread.join()
    print(json.dumps({"requests": results}), flush=True)


if __name__ == "__main__":
    main()
