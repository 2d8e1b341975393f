"""Helpers of the PROXY protocol server tests (tests/unit/test_selector_proxy.py,
tests/hostile/test_proxy_attacks.py): headers, a server run in a thread,
clients.  Not a test module; what other tests share too is support's."""
import os
import socket
import struct

from support import TIMEOUT, frame, serving  # noqa: F401  (frame: the tests' ph.frame)
from support import fd_count as fds  # noqa: F401
from support import recv_upto as recv_exactly  # noqa: F401  (short on close, as the tests expect)
from support import wait_for as wait_until  # noqa: F401

from cserver import selectorserver

KINDS = ["epoll", "selectors"] if selectorserver._loop.HAVE_EPOLL else ["selectors"]
SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(src="203.0.113.7", dst="192.0.2.1", sport=51000, dport=443, family="TCP4"):
    if family == "UNKNOWN":
        return b"PROXY UNKNOWN\r\n"
    return ("PROXY %s %s %s %d %d\r\n" % (family, src, dst, sport, dport)).encode()


def v2(src="203.0.113.7", dst="192.0.2.1", sport=51000, dport=443, command=1, tlvs=b""):
    """A v2 header: TCP4 or TCP6 (by the address), or LOCAL (command 0)."""
    if command == 0:
        return SIG + b"\x20\x00" + struct.pack("!H", len(tlvs)) + tlvs
    if ":" in src:
        block = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
        fam = 0x21
    else:
        block = socket.inet_aton(src) + socket.inet_aton(dst)
        fam = 0x11
    block += struct.pack("!HH", sport, dport) + tlvs
    return SIG + bytes([0x21, fam]) + struct.pack("!H", len(block)) + block


def running(server):
    """Serve in a thread; at exit shut down, join, close, and check that no
    descriptor or thread is left behind."""
    return serving(server, 0.05, name="proxy-serve", check_leaks=True)


def make_server(kind, where, handler, short_tmpdir=None, **options):
    """A TCP (``where="tcp"``) or Unix (``"unix"``) multiplexing server."""
    if where == "unix":
        return selectorserver.SelectorUnixStreamServer(
            os.path.join(short_tmpdir, "s"), handler, loop=kind, **options)
    return selectorserver.SelectorTCPServer(("127.0.0.1", 0), handler, loop=kind, **options)


def connect(server):
    address = server.server_address
    if isinstance(address, str):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(TIMEOUT)
        s.connect(address)
        return s
    return socket.create_connection(address[:2], timeout=TIMEOUT)


def closed_by_server(sock, timeout=TIMEOUT):
    """True once the server closed ``sock`` (EOF or reset) with nothing sent."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536)
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    return data == b""
