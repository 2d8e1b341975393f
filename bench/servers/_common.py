"""Shared command line of the reference servers (not a server itself).

Every server script takes ``--host``/``--port`` (TCP or UDP, port 0 picks a
free one) or ``--unix PATH``, and ``--udp`` where it has a datagram variant.
Once it listens it prints ``READY <port>`` (or ``READY <path>``) on stdout.
A script whose library is not installed prints ``SKIP <reason>`` and exits
with status 3; the harness shows the reason as a note.

``--tls-cert PATH --tls-key PATH`` (the TLS rows: bench/run.py makes a
throwaway pair per run) serve TLS; ``ssl_context(args)`` is the server-side
``ssl.SSLContext`` every Python server uses: ``SSLContext(PROTOCOL_TLS_SERVER)``
and ``load_cert_chain``, nothing tuned (the load generator pins TLS 1.3, the
suite and the group).
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
    p.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate")
    p.add_argument("--tls-key", metavar="PEM", help="... and this private key")
    return p


def ssl_context(args, ssl=None):
    """The server-side SSLContext of --tls-cert/--tls-key, or None.
    ``ssl``: the module to make it with (gevent's: ``gevent.ssl``)."""
    if not args.tls_cert:
        return None
    if args.udp or args.unix:
        skip("TLS runs over TCP here (no --udp, no --unix)")
    if ssl is None:
        import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.tls_cert, args.tls_key)
    return ctx


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

