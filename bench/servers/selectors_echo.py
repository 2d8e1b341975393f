"""Framed echo on the stdlib ``selectors`` module, pure Python: non-blocking
sockets, framing with a ``bytearray`` and ``struct``, the replies of one read
sent with one ``send``, unsent bytes kept until the socket is writable."""
import selectors
import socket
from struct import pack, unpack_from

from _common import parser, ready, skip, unlink_stale

args = parser(__doc__.splitlines()[0]).parse_args()
if args.udp:
    skip("no datagram variant")

sel = selectors.DefaultSelector()


class Connection:
    def __init__(self, sock):
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()

    def on_event(self, mask):
        if mask & selectors.EVENT_WRITE:
            self.flush()
        if mask & selectors.EVENT_READ:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self.close()
                return
            buf = self.inbuf
            buf += data
            replies = []
            while len(buf) >= 4:
                (length,) = unpack_from("!I", buf)
                if len(buf) < 4 + length:
                    break
                frame = bytes(buf[4:4 + length])
                del buf[:4 + length]
                replies.append(pack("!I", len(frame)))
                replies.append(frame)
            if replies:
                self.outbuf += b"".join(replies)
                self.flush()

    def flush(self):
        if self.outbuf:
            try:
                sent = self.sock.send(self.outbuf)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.close()
                return
            del self.outbuf[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbuf else 0)
        if self.sock.fileno() >= 0:
            sel.modify(self.sock, events, self)

    def close(self):
        sel.unregister(self.sock)
        self.sock.close()


if args.unix:
    unlink_stale(args.unix)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(args.unix)
    where = args.unix
else:
    listener = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    where = listener.getsockname()[1]
listener.listen(1024)
listener.setblocking(False)
sel.register(listener, selectors.EVENT_READ, None)
ready(where)

while True:
    for key, mask in sel.select():
        if key.data is None:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            sock.setblocking(False)
            if not args.unix:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sel.register(sock, selectors.EVENT_READ, Connection(sock))
        else:
            key.data.on_event(mask)
