"""``python -m cserver echo``: run an echo server on the multiplexing loop.

Framed by default (each length-prefixed frame, ``"!I"`` header, is sent
back); ``--raw`` echoes bytes as they come.  Logs the address, the pid and
the number of workers at start; Ctrl-C or SIGTERM stops it cleanly (open
connections are drained for up to ``--drain-timeout`` seconds, then closed;
a second Ctrl-C or SIGTERM closes them at once).

A mistake on the command line or in the environment (a bad number, an
address in use or that does not resolve, a path that cannot be used, another
server already listening there) is one line on stderr and exit status 2,
never a traceback.
"""

import argparse
import logging
import math
import os
import signal
import socket
import stat
import sys

from . import selectorserver, systemd, version

log = logging.getLogger("cserver")

PROG = "python -m cserver"

# The servers' class attributes are the defaults of the options below.
_SERVER = selectorserver.SelectorServer


class FramedEcho(selectorserver.FrameHandler):
    """Sends every frame back."""

    def frame_received(self, frame):
        self.send_frame(frame)


class RawEcho(selectorserver.ConnectionHandler):
    """Sends every byte back."""

    def data_received(self, data):
        self.write(data)


class UsageError(Exception):
    """A user's mistake: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block)."""

    def error(self, message):
        self.exit(2, "%s: error: %s (see --help)\n" % (self.prog, message))


# -- argument types: each names the value it refuses -------------------------


def _int(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not an integer: %r" % (text,)) from None


def _port(text):
    port = _int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("a TCP port is 0-65535 (0: any free port), got %s"
                                         % (text,))
    return port


def _positive_int(text):
    number = _int(text)
    if number < 1:
        raise argparse.ArgumentTypeError("must be a positive integer, got %s" % (text,))
    return number


def _size(text):
    number = _int(text)
    if number < 0:
        raise argparse.ArgumentTypeError("must be an integer >= 0, got %s" % (text,))
    return number


def _seconds(text, zero_ok):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number of seconds: %r" % (text,)) from None
    if math.isnan(value) or value < 0 or (value == 0 and not zero_ok):
        raise argparse.ArgumentTypeError("must be a number of seconds %s, got %s"
                                         % (">= 0" if zero_ok else "> 0", text))
    return value


def _timeout(text):
    return _seconds(text, zero_ok=False)


def _drain(text):
    return _seconds(text, zero_ok=True)


def _metrics_address(text):
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6; port 0: any free port) or a
    Unix socket path (anything with a ``/``)."""
    if "/" in text:
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError("HOST:PORT or a Unix socket path (with a /), got %r"
                                         % (text,))
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError("an IPv6 host goes in brackets: [%s]:%s" % (host, port))
    return (host, _port(port))


def _describe(value, none, fmt):
    return none if value is None else fmt % value


def _bytes(size):
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return "%d %s" % (size // scale, unit)
    return "%d bytes" % size


def _parser():
    p = _Parser(prog=PROG, description="cserver's command line.",
                epilog="Run '%s echo --help' for the echo server's options." % PROG)
    p.add_argument("--version", action="version", version="cserver " + version,
                   help="print cserver's release and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    echo = sub.add_parser(
        "echo", help="run an echo server (length-prefixed frames by default)",
        description="Run an echo server on the multiplexing loop. Framed by default: "
                    "each frame (a 4-byte big-endian length, then the payload) is sent "
                    "back; --raw echoes bytes as they come. Ctrl-C or SIGTERM stops it "
                    "(buffered replies are sent for up to --drain-timeout seconds); a "
                    "second one closes the connections at once.")
    echo.add_argument("--raw", action="store_true", help="echo raw bytes instead of frames")
    echo.add_argument("--host", default="127.0.0.1",
                      help="address to bind (default 127.0.0.1; an IPv6 address binds IPv6)")
    echo.add_argument("--port", type=_port, default=9000,
                      help="TCP port, 0-65535 (default 9000; 0: any free port)")
    echo.add_argument("--unix", metavar="PATH",
                      help="listen on a Unix socket at PATH instead of TCP (a stale socket "
                           "left there is replaced; a live one is an error)")
    echo.add_argument("--workers", type=_positive_int, default=_SERVER.workers, metavar="N",
                      help="worker processes, each with its own SO_REUSEPORT listener "
                           "(default %d)" % _SERVER.workers)
    echo.add_argument("--idle-timeout", type=_timeout, default=_SERVER.idle_timeout,
                      metavar="S", help="close connections silent for S seconds (default: %s)"
                      % _describe(_SERVER.idle_timeout, "never", "%g"))
    echo.add_argument("--max-connections", type=_positive_int, default=_SERVER.max_connections,
                      metavar="N", help="stop accepting at N open connections (default: %s)"
                      % _describe(_SERVER.max_connections, "no limit", "%d"))
    echo.add_argument("--max-frame-size", type=_size, default=None, metavar="BYTES",
                      help="largest frame payload accepted (default %s; framed mode)"
                      % _bytes(FramedEcho.max_frame_size))
    echo.add_argument("--drain-timeout", type=_drain, default=_SERVER.drain_timeout,
                      metavar="S", help="seconds a stop spends sending buffered replies "
                      "(default %g)" % _SERVER.drain_timeout)
    echo.add_argument("--drain-delay", type=_drain, default=_SERVER.drain_delay,
                      metavar="S", help="on SIGTERM, go on accepting for S seconds (while "
                      "balancers deregister the server) before stopping (default %g)"
                      % _SERVER.drain_delay)
    echo.add_argument("--systemd", action="store_true",
                      help="serve the listening socket systemd passed (socket activation: "
                           "LISTEN_FDS); --host, --port and --unix are not used")
    echo.add_argument("--systemd-name", metavar="NAME",
                      help="with --systemd: the socket's FileDescriptorName= (when several "
                           "are passed)")
    echo.add_argument("--loop", choices=selectorserver.LOOP_KINDS, default=_SERVER.loop,
                      help="event loop (default: $CSERVER_LOOP, else epoll where available)")
    echo.add_argument("--metrics", type=_metrics_address, default=None, metavar="HOST:PORT",
                      help="serve Prometheus metrics (GET /metrics) on HOST:PORT ([V6]:PORT; "
                           "port 0: any free port) or on a Unix socket PATH, from the "
                           "server's own loop, summed over the workers (default: off)")
    echo.add_argument("--proxy-protocol", choices=selectorserver.PROXY_MODES,
                      default=_SERVER.proxy_protocol,
                      help="every connection starts with a PROXY protocol header of this "
                           "version (from a balancer: HAProxy send-proxy/send-proxy-v2, nginx "
                           "proxy_protocol); the handlers see the original client "
                           "(default: no header)")
    echo.add_argument("--trusted-proxy", action="append", metavar="NET", dest="trusted_proxies",
                      help="a network allowed to send the PROXY header, e.g. 10.0.0.0/8 "
                           "(repeatable; default %s; others are closed at accept)"
                      % " ".join(_SERVER.trusted_proxies))
    echo.add_argument("--tls-cert", metavar="PEM",
                      help="serve TLS with this certificate chain (PEM; the key too, unless "
                           "--tls-key is given); the handshake runs in the loop")
    echo.add_argument("--tls-key", metavar="PEM", help="with --tls-cert: the private key (PEM)")
    echo.add_argument("--tls-handshake-timeout", type=float, metavar="SECONDS",
                      default=_SERVER.ssl_handshake_timeout,
                      help="with --tls-cert: seconds for the whole handshake "
                           "(default %(default)s)")
    echo.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return p


# -- Unix socket paths -----------------------------------------------------------


def _claim_unix_path(path):
    """Make ``path`` free for a new socket: nothing there, or a stale socket
    (one that refuses connections: its server is gone), which is removed.
    A socket that accepts a connection belongs to a live server: never
    remove it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError("cannot use --unix %s: %s" % (path, exc.strerror)) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError("--unix %s exists and is not a socket (not removed)" % (path,))
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:
        pass  # stale: nobody listens
    except (socket.timeout, BlockingIOError):
        raise UsageError("another server is listening on --unix %s (its backlog is full)"
                         % (path,)) from None
    except OSError as exc:
        raise UsageError("--unix %s is a socket in use (%s); not removed"
                         % (path, exc.strerror or exc)) from None
    else:
        raise UsageError("another server is listening on --unix %s" % (path,))
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise UsageError("cannot remove the stale socket --unix %s: %s"
                         % (path, exc.strerror)) from None


def _identity(path):
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _release_unix_path(path, identity):
    """Remove the socket at ``path`` if it is still the one this process
    created (same device and inode), never a successor's."""
    if identity is not None and _identity(path) == identity:
        try:
            os.unlink(path)
        except OSError:
            pass


def _systemd_server(args, handler, options):
    """The server on systemd's socket (--systemd)."""
    if args.unix:
        raise UsageError("--systemd and --unix: the socket comes from systemd")
    try:
        sockets = systemd.listen_fds_with_names()
    except ValueError as exc:
        raise UsageError("--systemd: %s" % (exc,)) from None
    if not sockets:
        raise UsageError("--systemd: no socket was passed (LISTEN_FDS unset, or LISTEN_PID "
                         "is not this process)")
    names = [name for name, _ in sockets]
    if args.systemd_name is not None:
        chosen = [sock for name, sock in sockets if name == args.systemd_name]
        if not chosen:
            _close_all(sockets)
            raise UsageError("--systemd-name %s: no such socket was passed (%s)"
                             % (args.systemd_name, ", ".join(names)))
    else:
        chosen = [sock for _, sock in sockets]
        if len(chosen) > 1:
            _close_all(sockets)
            raise UsageError("--systemd: %d sockets were passed (%s): choose one with "
                             "--systemd-name" % (len(chosen), ", ".join(names)))
    sock = chosen[0]
    for _, other in sockets:
        if other is not sock:
            other.close()
    cls = selectorserver.SelectorTCPServer
    if sock.family == getattr(socket, "AF_UNIX", None):
        cls = selectorserver.SelectorUnixStreamServer
    try:
        return cls.from_socket(sock, handler, **options)
    except (ValueError, TypeError, OSError) as exc:
        sock.close()
        raise UsageError("--systemd: %s" % (exc,)) from None


def _close_all(pairs):
    for _, sock in pairs:
        sock.close()


def _make_server(args, handler, options):
    """Build the server, turning the mistakes into UsageError."""
    if args.systemd:
        return _systemd_server(args, handler, options)
    if args.systemd_name is not None:
        raise UsageError("--systemd-name needs --systemd")
    if args.unix:
        if not hasattr(socket, "AF_UNIX"):
            raise UsageError("--unix: Unix sockets are not available here")
        where = args.unix
        _claim_unix_path(args.unix)
    else:
        where = "[%s]:%d" % (args.host, args.port) if ":" in args.host else \
            "%s:%d" % (args.host, args.port)
    try:
        if args.unix:
            return selectorserver.SelectorUnixStreamServer(args.unix, handler, **options)
        return selectorserver.SelectorTCPServer((args.host, args.port), handler, **options)
    except socket.gaierror as exc:
        raise UsageError("cannot listen on %s: bad --host %r (%s)"
                         % (where, args.host, exc.strerror or exc)) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if reason.startswith("metrics_address "):
            raise UsageError("cannot serve --metrics on " + reason[len("metrics_address "):]) \
                from None
        if where in reason:  # the library named the address already
            raise UsageError(reason) from None
        raise UsageError("cannot listen on %s: %s" % (where, reason)) from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise UsageError(str(exc)) from None


def _describe_metrics(address):
    if isinstance(address, tuple):
        host = "[%s]" % address[0] if ":" in address[0] else address[0]
        return "http://%s:%d/metrics" % (host, address[1])
    return "unix:%s (GET /metrics)" % (address,)


def main(argv=None):
    """Run the command line; return the exit status."""
    try:
        return _main(argv)
    except UsageError as exc:
        sys.stderr.write("%s echo: error: %s\n" % (PROG, exc))
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the server took over the signal
        return 130


def _tls_context(cert, key):
    """The server context of --tls-cert/--tls-key: ssl's defaults for a
    server (TLS 1.2 and up), the chain loaded; a bad file is a usage error
    that names it."""
    import ssl
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError("--tls-cert %s%s: cannot load the certificate and key: %s"
                         % (cert, "" if key is None else " --tls-key %s" % key, exc))
    return ctx


def _main(argv):
    args = _parser().parse_args(argv)
    if args.raw and args.max_frame_size is not None:
        raise UsageError("--max-frame-size %d: frames are not decoded with --raw"
                         % (args.max_frame_size,))
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    if args.trusted_proxies is not None and args.proxy_protocol is None:
        raise UsageError("--trusted-proxy needs --proxy-protocol")
    if args.tls_key is not None and args.tls_cert is None:
        raise UsageError("--tls-key needs --tls-cert")
    handler = RawEcho if args.raw else FramedEcho
    if args.max_frame_size is not None:
        handler = type("FramedEcho", (FramedEcho,), {"max_frame_size": args.max_frame_size})
    options = dict(workers=args.workers, idle_timeout=args.idle_timeout,
                   max_connections=args.max_connections, drain_timeout=args.drain_timeout,
                   drain_delay=args.drain_delay, loop=args.loop)
    if args.metrics is not None:
        options["metrics_address"] = args.metrics
    if args.proxy_protocol is not None:
        options["proxy_protocol"] = args.proxy_protocol
        if args.trusted_proxies is not None:
            options["trusted_proxies"] = tuple(args.trusted_proxies)
    if args.tls_cert is not None:
        options["ssl_context"] = _tls_context(args.tls_cert, args.tls_key)
        options["ssl_handshake_timeout"] = args.tls_handshake_timeout
    server = _make_server(args, handler, options)
    unix = args.unix if not args.systemd else None
    identity = _identity(unix) if unix else None
    try:
        with server:
            if isinstance(server.server_address, tuple):
                where = "%s:%d" % (server.server_address[0], server.server_address[1])
            else:
                where = server.server_address
                if isinstance(where, bytes):
                    where = where.decode("utf-8", "replace")
            if args.workers == 1:
                # SIGTERM and Ctrl-C: a graceful stop, a second one cuts the
                # drain short (the handler runs on the loop's thread between
                # passes); the supervisor of workers installs its own.
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, server.stop_on_signal)
                # a reload forks new workers: one process cannot replace itself
                signal.signal(signal.SIGHUP, _ignore_hup)
            log.info("echo server (%s%s, %s loop) listening on %s%s, pid %d, workers %d",
                     "raw" if args.raw else "framed", ", TLS" if args.tls_cert else "",
                     selectorserver.resolve_loop(args.loop),
                     where, " (from systemd)" if args.systemd else "", os.getpid(),
                     args.workers)
            if args.metrics is not None:
                log.info("metrics on %s", _describe_metrics(server.metrics_address))
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
            log.info("stopped")
    finally:
        if unix:
            _release_unix_path(unix, identity)
    return 0


def _ignore_hup(signum, frame):
    log.warning("SIGHUP ignored: a reload needs --workers 2 or more (it forks new workers "
                "on the same socket); restart this server to run new code")


if __name__ == "__main__":
    sys.exit(main())
