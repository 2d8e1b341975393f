"""Framed echo on asyncio streams: ``readexactly`` the header, then the
payload, ``write`` the reply and ``await drain()``.  ``--loop uvloop`` runs
it on uvloop."""
import asyncio
from struct import pack, unpack

from _common import parser, ready, skip

p = parser(__doc__.splitlines()[0])
p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
args = p.parse_args()
if args.udp:
    skip("streams have no datagram variant")

if args.loop == "uvloop":
    try:
        import uvloop
    except ImportError as exc:
        skip("uvloop is not installed (pip install .[bench]): %s" % exc)
    loop = uvloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)


async def handle(reader, writer):
    try:
        while True:
            header = await reader.readexactly(4)
            (length,) = unpack("!I", header)
            payload = await reader.readexactly(length)
            writer.write(pack("!I", len(payload)) + payload)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main():
    if args.unix:
        await asyncio.start_unix_server(handle, args.unix)
        ready(args.unix)
    else:
        server = await asyncio.start_server(handle, args.host, args.port)
        ready(server.sockets[0].getsockname()[1])


loop.run_until_complete(main())
loop.run_forever()
