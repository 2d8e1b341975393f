"""Framed echo on socketserver, written the way its users write it.

``--impl stdlib`` runs it on the standard library's ``socketserver``;
``--impl cserver`` runs the very same code on ``cserver`` (the compiled
drop-in).  ``--kind tcp`` is the sequential ``TCPServer`` (one connection at
a time), ``threading`` the ``ThreadingTCPServer``, ``threadpool`` cserver's
``ThreadPoolTCPServer`` (64 workers).  Framing: read a 4-byte big-endian
length with ``rfile.read`` and ``struct``, then the payload, then write the
reply.  ``--udp`` runs the ``UDPServer`` datagram echo instead.

``--tls-cert``/``--tls-key``: TLS, the way each library's users do it.  The
stdlib has no TLS server class: its usual recipe wraps the listening socket,
``server.socket = context.wrap_socket(server.socket, server_side=True)``, so
every handshake runs inside ``accept()`` on the serving thread.  cserver has
``TLSMixIn`` (``class S(cserver.TLSMixIn, cserver.ThreadingTCPServer)`` with
``ssl_context``), whose handshakes run in the request's thread.  The handler
is the same in both.
"""
import struct

from _common import parser, ready, skip, ssl_context

p = parser(__doc__.splitlines()[0])
p.add_argument("--impl", choices=("stdlib", "cserver"), default="stdlib")
p.add_argument("--kind", choices=("tcp", "threading", "threadpool"), default="threading")
args = p.parse_args()
ctx = ssl_context(args)

if args.impl == "cserver":
    try:
        import cserver as socketserver
    except ImportError as exc:
        skip("cserver is not importable: %s" % exc)
else:
    import socketserver


class FramedEcho(socketserver.StreamRequestHandler):
    def handle(self):
        while True:
            header = self.rfile.read(4)
            if len(header) < 4:
                return
            (length,) = struct.unpack("!I", header)
            payload = self.rfile.read(length)
            if len(payload) < length:
                return
            self.wfile.write(struct.pack("!I", len(payload)) + payload)


class DatagramEcho(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(data, self.client_address)


if args.udp:
    if args.unix:
        skip("no Unix datagram variant")
    base = socketserver.UDPServer
    handler = DatagramEcho
elif args.kind == "tcp":
    base = socketserver.UnixStreamServer if args.unix else socketserver.TCPServer
    handler = FramedEcho
elif args.kind == "threading":
    base = socketserver.ThreadingUnixStreamServer if args.unix else socketserver.ThreadingTCPServer
    handler = FramedEcho
else:
    if args.impl != "cserver":
        skip("the thread pool server is cserver's")
    base = (socketserver.ThreadPoolUnixStreamServer if args.unix
            else socketserver.ThreadPoolTCPServer)
    handler = FramedEcho


if ctx is not None and args.impl == "cserver":
    if not hasattr(socketserver, "TLSMixIn"):
        skip("cserver.TLSMixIn is not in this cserver")

    class TLSServer(socketserver.TLSMixIn, base):
        ssl_context = ctx

    base = TLSServer


class Server(base):
    allow_reuse_address = True
    daemon_threads = True
    max_workers = 64  # used by the thread pool only


server = Server(args.unix if args.unix else (args.host, args.port), handler)
if ctx is not None and args.impl == "stdlib":
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
with server:
    ready(args.unix if args.unix else server.server_address[1])
    server.serve_forever()
