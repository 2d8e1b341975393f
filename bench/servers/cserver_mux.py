"""Echo on cserver's multiplexing server (one thread, epoll, C hot loop).

Default: framed, ``FrameHandler.frame_received`` answering with
``send_frame`` (Python is called once per frame).  ``--raw``: a
``ConnectionHandler`` whose ``data_received`` writes the bytes back (once per
read).  ``--workers N``: N processes with their own ``SO_REUSEPORT``
listeners.  ``--udp``: a datagram handler echoing with ``sendto``.
``--proxy-protocol v1|v2|any``: ``proxy_protocol`` set (the load generator's
``--proxy``).  ``--tls-cert``/``--tls-key``: ``ssl_context=`` a server-side
``ssl.SSLContext`` (TLS in the loop), the handler unchanged.
"""
from _common import parser, ready, skip, ssl_context

p = parser(__doc__.splitlines()[0])
p.add_argument("--raw", action="store_true")
p.add_argument("--workers", type=int, default=0)
p.add_argument("--proxy-protocol", choices=("v1", "v2", "any"),
               help="every connection starts with a PROXY header (loopback is trusted)")
args = p.parse_args()
ctx = ssl_context(args)

try:
    import cserver
except ImportError as exc:
    skip("cserver is not importable: %s" % exc)

if args.udp:
    names = ("SelectorUDPServer", "DatagramHandler")
elif args.unix:
    names = ("SelectorUnixStreamServer", "ConnectionHandler" if args.raw else "FrameHandler")
else:
    names = ("SelectorTCPServer", "ConnectionHandler" if args.raw else "FrameHandler")
missing = [name for name in names if not hasattr(cserver, name)]
if missing:
    skip("cserver.%s is not available (mux branch not merged?)" % ", cserver.".join(missing))
ServerClass = getattr(cserver, names[0])
Base = getattr(cserver, names[1])

if args.udp:
    class Echo(Base):
        def datagram_received(self, data, addr):
            self.sendto(data, addr)
elif args.raw:
    class Echo(Base):
        def data_received(self, data):
            self.write(data)
else:
    class Echo(Base):
        def frame_received(self, frame):
            self.send_frame(frame)

address = args.unix if args.unix else (args.host, args.port)

kwargs = {"workers": args.workers} if args.workers else {}
if args.proxy_protocol:
    kwargs["proxy_protocol"] = args.proxy_protocol
if ctx is not None:
    kwargs["ssl_context"] = ctx
try:
    server = ServerClass(address, Echo, **kwargs)
except TypeError as exc:
    if "ssl_context" in kwargs and "ssl_context" in str(exc):
        skip("ssl_context not supported by this cserver (%s: %s)" % (ServerClass.__name__, exc))
    if not kwargs:
        raise
    skip("this SelectorTCPServer does not take %s: %s" % (", ".join(kwargs), exc))
with server:
    ready(args.unix if args.unix else server.server_address[1])
    server.serve_forever()
