"""Framed echo on Twisted: ``Int32StringReceiver`` (its 4-byte big-endian
length prefix), ``stringReceived`` answering with ``sendString``.  ``--udp``
runs a ``DatagramProtocol`` echo instead."""
from _common import parser, ready, skip

args = parser(__doc__.splitlines()[0]).parse_args()

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
    else:
        port = reactor.listenTCP(args.port, protocol.Factory.forProtocol(FramedEcho),
                                 interface=args.host)
        ready(port.getHost().port)


reactor.callWhenRunning(listen)
reactor.run()
