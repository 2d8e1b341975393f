"""Framed echo on cserver's blocking servers with its C framing layer:
``FramedRequestHandler.handle_frame`` answering with ``send_frame``, on a
``ThreadingTCPServer`` (``--kind threadpool``: ``ThreadPoolTCPServer``);
``--tls-cert``/``--tls-key``: with ``cserver.TLSMixIn`` (``ssl_context``)."""
from _common import parser, ready, skip, ssl_context

p = parser(__doc__.splitlines()[0])
p.add_argument("--kind", choices=("threading", "threadpool"), default="threading")
args = p.parse_args()
if args.udp:
    skip("no datagram variant")
ctx = ssl_context(args)

try:
    import cserver
    from cserver import FramedRequestHandler
except ImportError as exc:
    skip("cserver.FramedRequestHandler is not available (framing branch not merged?): %s" % exc)


class FramedEcho(FramedRequestHandler):
    def handle_frame(self, frame):
        self.send_frame(frame)


if args.kind == "threading":
    base = cserver.ThreadingUnixStreamServer if args.unix else cserver.ThreadingTCPServer
else:
    base = cserver.ThreadPoolUnixStreamServer if args.unix else cserver.ThreadPoolTCPServer

if ctx is not None:
    if not hasattr(cserver, "TLSMixIn"):
        skip("cserver.TLSMixIn is not in this cserver")

    class TLSServer(cserver.TLSMixIn, base):
        ssl_context = ctx

    base = TLSServer


class Server(base):
    allow_reuse_address = True
    daemon_threads = True
    max_workers = 64  # used by the thread pool only


with Server(args.unix if args.unix else (args.host, args.port), FramedEcho) as server:
    ready(args.unix if args.unix else server.server_address[1])
    server.serve_forever()
