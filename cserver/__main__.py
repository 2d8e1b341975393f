"""``python -m cserver echo``: run an echo server on the multiplexing loop.

Framed by default (each length-prefixed frame, ``"!I"`` header, is sent
back); ``--raw`` echoes bytes as they come.  Logs the address, the pid and
the number of workers at start; Ctrl-C or SIGTERM stops it cleanly (open
connections are drained for up to ``--drain-timeout`` seconds, then closed).
"""

import argparse
import logging
import os
import signal
import socket
import stat
import sys

from . import selectorserver

log = logging.getLogger("cserver")


class FramedEcho(selectorserver.FrameHandler):
    """Sends every frame back."""

    def frame_received(self, frame):
        self.send_frame(frame)


class RawEcho(selectorserver.ConnectionHandler):
    """Sends every byte back."""

    def data_received(self, data):
        self.write(data)


def _parser():
    p = argparse.ArgumentParser(prog="python -m cserver", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    echo = sub.add_parser("echo", help="run an echo server (length-prefixed frames by default)")
    echo.add_argument("--raw", action="store_true", help="echo raw bytes instead of frames")
    echo.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    echo.add_argument("--port", type=int, default=9000, help="TCP port (default 9000; 0: any)")
    echo.add_argument("--unix", metavar="PATH", help="listen on a Unix socket instead of TCP")
    echo.add_argument("--workers", type=int, default=1,
                      help="worker processes, each with its own SO_REUSEPORT listener")
    echo.add_argument("--idle-timeout", type=float, default=None,
                      help="close connections silent for this many seconds")
    echo.add_argument("--max-connections", type=int, default=None)
    echo.add_argument("--max-frame-size", type=int, default=None)
    echo.add_argument("--drain-timeout", type=float, default=5.0)
    echo.add_argument("--loop", choices=("epoll", "selectors"), default=None,
                      help="event loop (default: $CSERVER_LOOP, else epoll where available)")
    echo.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    if args.workers < 1:
        log.error("--workers must be >= 1")
        return 2
    handler = RawEcho if args.raw else FramedEcho
    if args.max_frame_size is not None and not args.raw:
        handler = type("FramedEcho", (FramedEcho,), {"max_frame_size": args.max_frame_size})
    options = dict(workers=args.workers, idle_timeout=args.idle_timeout,
                   max_connections=args.max_connections, drain_timeout=args.drain_timeout,
                   loop=args.loop)
    if args.unix:
        if not hasattr(socket, "AF_UNIX"):
            log.error("Unix sockets are not available here")
            return 2
        try:
            if stat.S_ISSOCK(os.stat(args.unix).st_mode):
                os.unlink(args.unix)  # a stale socket from an earlier run
        except FileNotFoundError:
            pass
        server = selectorserver.SelectorUnixStreamServer(args.unix, handler, **options)
        where = args.unix
    else:
        server = selectorserver.SelectorTCPServer((args.host, args.port), handler, **options)
        where = "%s:%d" % (server.server_address[0], server.server_address[1])
    with server:
        if args.workers == 1:
            # SIGTERM and Ctrl-C: a graceful stop (the handler runs on the
            # loop's thread between passes); the supervisor of workers
            # installs its own.
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda signum, frame: server._request_stop())
        log.info("echo server (%s, %s loop) listening on %s, pid %d, workers %d",
                 "raw" if args.raw else "framed", selectorserver._loop_kind(args.loop),
                 where, os.getpid(), args.workers)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        log.info("stopped")
    if args.unix:
        try:
            os.unlink(args.unix)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
