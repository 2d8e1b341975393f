"""Handler-family and address-family mistakes that must be type errors.

Each line marked ``# type: ignore[code]`` is a mistake that fails at run
time (at the first request, or at bind).  The typing check runs mypy with
``--warn-unused-ignores`` and pyright with ``reportUnnecessaryTypeIgnoreComment``
on this file: if a stub change lets one of these lines type-check, its
ignore becomes unused and the check fails.  Never run (only checked).
"""
from __future__ import annotations

import http.server

import cserver
import cserver as socketserver

ADDR = ("127.0.0.1", 0)
PATH = "/tmp/cserver-typing.sock"


class Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


class Frames(cserver.FrameHandler):
    def frame_received(self, frame: bytes) -> None:
        self.send_frame(frame)


class Datagrams(cserver.DatagramHandler):
    pass


def stdlib_handler_on_multiplexing_server() -> None:
    cserver.SelectorTCPServer(ADDR, socketserver.StreamRequestHandler)  # type: ignore[arg-type]
    cserver.SelectorTCPServer(ADDR, Echo)  # type: ignore[arg-type]
    cserver.SelectorTCPServer(ADDR, socketserver.BaseRequestHandler)  # type: ignore[arg-type]
    cserver.SelectorTCPServer(ADDR, cserver.FramedRequestHandler)  # type: ignore[arg-type]
    cserver.SelectorTCPServer(ADDR, http.server.SimpleHTTPRequestHandler)  # type: ignore[arg-type]
    cserver.SelectorUnixStreamServer(PATH, Echo)  # type: ignore[arg-type]
    cserver.SelectorUDPServer(ADDR, socketserver.DatagramRequestHandler)  # type: ignore[arg-type]


def multiplexing_handler_on_stdlib_server() -> None:
    socketserver.TCPServer(ADDR, Frames)  # type: ignore[arg-type]
    socketserver.ThreadingTCPServer(ADDR, cserver.ConnectionHandler)  # type: ignore[arg-type]
    cserver.ThreadPoolTCPServer(ADDR, cserver.FrameHandler)  # type: ignore[arg-type]
    socketserver.UnixStreamServer(PATH, Frames)  # type: ignore[arg-type]
    socketserver.UDPServer(ADDR, Datagrams)  # type: ignore[arg-type]


def wrong_kind_within_a_family() -> None:
    socketserver.UDPServer(ADDR, socketserver.StreamRequestHandler)  # type: ignore[arg-type]
    socketserver.ThreadingUDPServer(ADDR, cserver.FramedRequestHandler)  # type: ignore[arg-type]
    socketserver.TCPServer(ADDR, socketserver.DatagramRequestHandler)  # type: ignore[arg-type]
    cserver.SelectorUDPServer(ADDR, Frames)  # type: ignore[arg-type]
    cserver.SelectorTCPServer(ADDR, Datagrams)  # type: ignore[arg-type]


def wrong_address_family() -> None:
    socketserver.TCPServer(PATH, Echo)  # type: ignore[arg-type]
    socketserver.UnixStreamServer(ADDR, Echo)  # type: ignore[arg-type]
    cserver.SelectorTCPServer(PATH, Frames)  # type: ignore[arg-type]
    cserver.SelectorUnixStreamServer(ADDR, Frames)  # type: ignore[arg-type]
