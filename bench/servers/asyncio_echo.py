"""Framed echo as an asyncio ``Protocol``, framing in Python.

Default: one ``transport.write`` per message, as most users write it.
``--batched``: the replies to the frames of one ``data_received`` call are
joined and written once.  ``--loop uvloop`` runs the same protocol on
uvloop.  ``--udp`` runs a ``DatagramProtocol`` echo instead.
"""
import asyncio
from struct import pack, unpack_from

from _common import parser, ready, skip

p = parser(__doc__.splitlines()[0])
p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
p.add_argument("--batched", action="store_true")
args = p.parse_args()

if args.loop == "uvloop":
    try:
        import uvloop
    except ImportError as exc:
        skip("uvloop is not installed (pip install .[bench]): %s" % exc)
    loop = uvloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)


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
    if args.unix:
        await loop.create_unix_server(protocol, args.unix)
        ready(args.unix)
    else:
        server = await loop.create_server(protocol, args.host, args.port)
        ready(server.sockets[0].getsockname()[1])


loop.run_until_complete(main())
loop.run_forever()
