"""Framed echo as an asyncio ``Protocol``, framing in Python.

Default: one ``transport.write`` per message, as most users write it.
``--batched``: the replies to the frames of one ``data_received`` call are
joined and written once.  ``--loop uvloop`` / ``--loop rloop`` runs the same
protocol on uvloop / rloop (an event loop in Rust).  ``--aiofastnet``: the
server is made by ``aiofastnet.create_server(loop, ...)`` (its transports,
and its SSL engine, on that loop).  ``--tls-cert``/``--tls-key``: TLS with
``create_server(..., ssl=context)``.  ``--udp`` runs a ``DatagramProtocol``
echo instead.
"""
import asyncio
from struct import pack, unpack_from

from _common import parser, ready, skip, ssl_context

p = parser(__doc__.splitlines()[0])
p.add_argument("--loop", choices=("asyncio", "uvloop", "rloop"), default="asyncio")
p.add_argument("--aiofastnet", action="store_true")
p.add_argument("--batched", action="store_true")
args = p.parse_args()
ctx = ssl_context(args)

if args.loop == "uvloop":
    try:
        import uvloop
    except ImportError as exc:
        skip("uvloop is not installed (pip install -r bench/requirements.txt): %s" % exc)
    loop = uvloop.new_event_loop()
elif args.loop == "rloop":
    try:
        import rloop
    except ImportError as exc:
        skip("rloop is not installed (pip install -r bench/requirements.txt): %s" % exc)
    if ctx is not None or args.unix:
        skip("rloop has no SSL and no Unix sockets (its README)")
    loop = rloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
if args.aiofastnet:
    try:
        import aiofastnet
    except ImportError as exc:
        skip("aiofastnet is not installed (pip install -r bench/requirements.txt): %s" % exc)
    if args.udp:
        skip("the aiofastnet rows are TCP")


class FramedEcho(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = bytearray()

    def data_received(self, data):
        buffer = self.buffer
        buffer += data
        while len(buffer) >= 4:
            (length,) = unpack_from("!I", buffer)
            if len(buffer) < 4 + length:
                break
            frame = bytes(buffer[4:4 + length])
            del buffer[:4 + length]
            self.transport.write(pack("!I", len(frame)) + frame)


class BatchedFramedEcho(FramedEcho):
    def data_received(self, data):
        buffer = self.buffer
        buffer += data
        replies = []
        while len(buffer) >= 4:
            (length,) = unpack_from("!I", buffer)
            if len(buffer) < 4 + length:
                break
            frame = bytes(buffer[4:4 + length])
            del buffer[:4 + length]
            replies.append(pack("!I", len(frame)))
            replies.append(frame)
        if replies:
            self.transport.write(b"".join(replies))


class DatagramEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


async def main():
    if args.udp:
        transport, _ = await loop.create_datagram_endpoint(
            DatagramEcho, local_addr=(args.host, args.port))
        ready(transport.get_extra_info("sockname")[1])
        return
    protocol = BatchedFramedEcho if args.batched else FramedEcho
    if args.unix and args.aiofastnet:
        await aiofastnet.create_unix_server(loop, protocol, args.unix)
        ready(args.unix)
    elif args.unix:
        await loop.create_unix_server(protocol, args.unix)
        ready(args.unix)
    else:
        if args.aiofastnet:
            server = await aiofastnet.create_server(loop, protocol, args.host, args.port, ssl=ctx)
        else:
            server = await loop.create_server(protocol, args.host, args.port, ssl=ctx)
        ready(server.sockets[0].getsockname()[1])


loop.run_until_complete(main())
loop.run_forever()
