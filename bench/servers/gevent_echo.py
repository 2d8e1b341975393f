"""Framed echo on gevent's ``StreamServer``: one greenlet per connection
reading the header and payload from ``sock.makefile("rb")`` and answering
with ``sendall``.  ``--udp`` runs a ``DatagramServer`` echo instead.
``--tls-cert``/``--tls-key``: ``StreamServer(..., ssl_context=context)``, the
context made with ``gevent.ssl`` (the stdlib's would block the hub)."""
import struct

from _common import parser, ready, skip, ssl_context, unlink_stale

args = parser(__doc__.splitlines()[0]).parse_args()

try:
    import gevent.socket
    from gevent.server import DatagramServer, StreamServer
except ImportError as exc:
    skip("gevent is not installed (pip install .[bench]): %s" % exc)
if args.tls_cert:
    import gevent.ssl   # its SSLContext makes cooperative SSL sockets
    ctx = ssl_context(args, gevent.ssl)
else:
    ctx = None


def framed_echo(sock, address):
    rfile = sock.makefile("rb")
    try:
        while True:
            header = rfile.read(4)
            if len(header) < 4:
                return
            (length,) = struct.unpack("!I", header)
            payload = rfile.read(length)
            if len(payload) < length:
                return
            sock.sendall(struct.pack("!I", len(payload)) + payload)
    finally:
        rfile.close()


class DatagramEcho(DatagramServer):
    def handle(self, data, address):
        self.socket.sendto(data, address)


if args.udp:
    server = DatagramEcho((args.host, args.port))
    server.start()
    ready(server.address[1])
elif args.unix:
    unlink_stale(args.unix)
    listener = gevent.socket.socket(gevent.socket.AF_UNIX, gevent.socket.SOCK_STREAM)
    listener.bind(args.unix)
    listener.listen(1024)
    server = StreamServer(listener, framed_echo)
    server.start()
    ready(args.unix)
else:
    tls = {"ssl_context": ctx} if ctx is not None else {}
    server = StreamServer((args.host, args.port), framed_echo, **tls)
    server.start()
    ready(server.address[1])
server.serve_forever()
