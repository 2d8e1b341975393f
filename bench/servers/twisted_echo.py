"""Framed echo on Twisted: ``Int32StringReceiver`` (its 4-byte big-endian
length prefix), ``stringReceived`` answering with ``sendString``.  ``--udp``
runs a ``DatagramProtocol`` echo instead.  ``--tls-cert``/``--tls-key``:
``reactor.listenSSL`` with the ``CertificateOptions`` of a
``PrivateCertificate`` loaded from those files (TLS through pyOpenSSL)."""
from _common import parser, ready, skip

args = parser(__doc__.splitlines()[0]).parse_args()
if args.tls_cert and (args.udp or args.unix):
    skip("TLS runs over TCP here (no --udp, no --unix)")

try:
    from twisted.internet import epollreactor
    epollreactor.install()
    from twisted.internet import protocol, reactor
    from twisted.protocols.basic import Int32StringReceiver
except ImportError as exc:
    skip("twisted is not installed (pip install .[bench]): %s" % exc)


class FramedEcho(Int32StringReceiver):
    def stringReceived(self, string):
        self.sendString(string)


class DatagramEcho(protocol.DatagramProtocol):
    def datagramReceived(self, data, addr):
        self.transport.write(data, addr)


def listen():
    if args.udp:
        port = reactor.listenUDP(args.port, DatagramEcho(), interface=args.host)
        ready(port.getHost().port)
    elif args.unix:
        reactor.listenUNIX(args.unix, protocol.Factory.forProtocol(FramedEcho))
        ready(args.unix)
    elif args.tls_cert:
        port = reactor.listenSSL(args.port, protocol.Factory.forProtocol(FramedEcho),
                                 tls_options(), interface=args.host)
        ready(port.getHost().port)
    else:
        port = reactor.listenTCP(args.port, protocol.Factory.forProtocol(FramedEcho),
                                 interface=args.host)
        ready(port.getHost().port)


def tls_options():
    try:
        from twisted.internet import ssl
        ssl.PrivateCertificate  # absent (a stand-in) without pyOpenSSL
    except (ImportError, AttributeError) as exc:
        skip("Twisted's TLS needs pyOpenSSL (pip install -r bench/requirements.txt): %s" % exc)
    with open(args.tls_cert, "rb") as cert, open(args.tls_key, "rb") as key:
        return ssl.PrivateCertificate.loadPEM(cert.read() + key.read()).options()


reactor.callWhenRunning(listen)
reactor.run()
