"""A Twisted TLS client for tests/unit/test_selector_tls.py, run as a child
process (a reactor runs once per process)::

    python twisted_tls_client.py tcp:HOST:PORT|unix:PATH CA_FILE TLSv1.2|TLSv1.3 COUNT SIZE

It connects with Twisted's TLS (pyOpenSSL, ``optionsForClientTLS``: the
certificate verified against CA_FILE, for the name "localhost"), sends
COUNT length-prefixed ("!I") frames of SIZE random bytes at once, reads
until every echo is back, closes (``loseConnection``: close_notify, then
the server's), and prints one JSON line: whether the echo was exact,
whether the server's close_notify came, and the class of the reason
Twisted gave for the end.
Every step is bounded: the whole run fails after 20 s."""
import json
import os
import struct
import sys

from OpenSSL import SSL
from twisted.internet import defer, endpoints, protocol, ssl, task

LIMIT = 20.0


class Echoer(protocol.Protocol):
    def __init__(self, expected, done):
        self.expected = expected
        self.done = done
        self.received = b""

    def connectionMade(self):
        self.transport.write(self.expected)

    def dataReceived(self, data):
        self.received += data
        if len(self.received) >= len(self.expected):
            self.transport.loseConnection()

    def connectionLost(self, reason):
        # the TLS layer's own record of the peer's close_notify (Twisted's
        # Unix transport reports ConnectionLost for a clean end too)
        handle = self.transport.getHandle()
        notified = handle is not None and bool(handle.get_shutdown() & SSL.RECEIVED_SHUTDOWN)
        if not self.done.called:
            self.done.callback({"echoed": self.received == self.expected,
                                "received": len(self.received),
                                "close_notify": notified,
                                "reason": reason.type.__name__})


def main(reactor, target, ca_file, version, count, size):
    with open(ca_file, "rb") as f:
        trust = ssl.Certificate.loadPEM(f.read())
    pinned = getattr(ssl.TLSVersion, version.replace(".", "_"))     # TLSv1_2, TLSv1_3
    options = ssl.optionsForClientTLS("localhost", trustRoot=trust, extraCertificateOptions={
        "raiseMinimumTo": pinned, "lowerMaximumSecurityTo": pinned})
    scheme, _, rest = target.partition(":")
    if scheme == "unix":
        inner = endpoints.UNIXClientEndpoint(reactor, rest, timeout=10)
    else:
        host, _, port = rest.rpartition(":")
        inner = endpoints.TCP4ClientEndpoint(reactor, host, int(port), timeout=10)
    endpoint = endpoints.wrapClientTLS(options, inner)
    payloads = [os.urandom(int(size)) for _ in range(int(count))]
    expected = b"".join(struct.pack("!I", len(p)) + p for p in payloads)
    done = defer.Deferred()
    yield endpoint.connect(protocol.Factory.forProtocol(lambda: Echoer(expected, done)))
    done.addTimeout(LIMIT, reactor)
    result = yield done
    print(json.dumps(result))


if __name__ == "__main__":
    task.react(defer.inlineCallbacks(main), sys.argv[1:])
