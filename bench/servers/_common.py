"""Shared command line of the reference servers (not a server itself).

Every server script takes ``--host``/``--port`` (TCP or UDP, port 0 picks a
free one) or ``--unix PATH``, and ``--udp`` where it has a datagram variant.
Once it listens it prints ``READY <port>`` (or ``READY <path>``) on stdout.
A script whose library is not installed prints ``SKIP <reason>`` and exits
with status 3; the harness shows the reason as a note.
"""
import argparse
import os
import sys

SKIP_STATUS = 3


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--unix", metavar="PATH", help="listen on a Unix stream socket")
    p.add_argument("--udp", action="store_true", help="the UDP echo variant")
    return p


def ready(where):
    """Tell the harness the server listens (port number or socket path)."""
    sys.stdout.write("READY %s\n" % (where,))
    sys.stdout.flush()


def skip(reason):
    sys.stdout.write("SKIP %s\n" % (reason,))
    sys.stdout.flush()
    sys.exit(SKIP_STATUS)


def unlink_stale(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

