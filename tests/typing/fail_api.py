"""Other API mistakes that must be type errors (see fail_handlers.py for how
the check works).  Never run (only checked)."""
from __future__ import annotations

import sys

import cserver
import cserver as socketserver

ADDR = ("127.0.0.1", 0)


class Raw(cserver.ConnectionHandler):
    pass


class Echo(socketserver.StreamRequestHandler):
    pass


def takes_int(n: int) -> None:
    pass


def options() -> None:
    cserver.SelectorTCPServer(ADDR, Raw, idle_timout=5.0)  # type: ignore[call-arg]
    cserver.SelectorTCPServer(ADDR, Raw, idle_timeout="5")  # type: ignore[arg-type]
    cserver.SelectorTCPServer(ADDR, Raw, loop="epol")  # type: ignore[arg-type]
    cserver.SelectorTCPServer(ADDR, Raw, buffer_pool=cserver.FrameDecoder())  # type: ignore[arg-type]


def context_managers_keep_the_class() -> None:
    with socketserver.TCPServer(ADDR, Echo) as server:
        server.pool_stats()  # type: ignore[attr-defined]
    with cserver.SelectorTCPServer(ADDR, Raw) as selector_server:
        selector_server.pool_stats()  # type: ignore[attr-defined]


def timers() -> None:
    with cserver.SelectorTCPServer(ADDR, Raw) as server:
        server.call_later(1.0, takes_int, "1")  # type: ignore[arg-type]
        server.call_soon(takes_int)  # type: ignore[arg-type]
        server.call_at(server.call_later(1.0, print).when, takes_int, 1, 2)  # type: ignore[arg-type]


def framing() -> None:
    cserver.encode_frame("text")  # type: ignore[arg-type]
    cserver.FrameDecoder(byteorder="middle")  # type: ignore[arg-type]
    cserver.FrameDecoder("!I", 4)  # type: ignore[call-arg]
    frames: list[str] = cserver.FrameDecoder().buffer_updated(0)  # type: ignore[assignment]
    cserver.FramedClient(ADDR).request("text")  # type: ignore[arg-type]
    cserver.FrameEncoder().header_size = 3  # type: ignore[misc]


class SubclassedDecoder(cserver.FrameDecoder):  # type: ignore[misc]
    """cdef classes are final: subclassing fails at import."""


class SubclassedPool(cserver.BufferPool):  # type: ignore[misc]
    pass


class WrongCallback(cserver.FrameHandler):
    def frame_received(self, frame: str) -> None:  # type: ignore[override]
        pass


class WrongReply(cserver.FramedRequestHandler):
    def handle_frame(self, frame: bytes) -> str:  # type: ignore[override]
        return frame.decode()


if sys.version_info >= (3, 15):
    def deprecated_version() -> None:
        """On 3.15 the stdlib deprecates __version__: use cserver.version."""
        print(cserver.__version__)  # type: ignore[attr-defined]
