# cython: language_level=3, annotation_typing=False, binding=True
"""Blocking framed I/O on the length-prefix framing layer.

``FramedRequestHandler`` runs on every stdlib-style server of cserver
(``TCPServer``, ``UnixStreamServer``, the ``Threading*``, ``Forking*`` and
``ThreadPool*`` variants): each frame a client sends is passed to
``handle_frame(frame)``; a non-None return value is sent back as a frame.
A peer that breaks the framing (oversized or impossible length, stream cut
inside a frame) gets its connection closed, with the reason logged on the
``cserver.framing`` logger.  A peer that vanishes (a reset, a broken pipe)
between frames has ended its connection, as a close there does: no error.

``FramedClient`` is the other side: a blocking client over TCP or a Unix
socket with ``send_frame``, ``recv_frame`` and ``request``.

Frames are read with ``recv_into`` straight into a pooled C buffer and
decoded in place; a header and its payload are sent with one ``sendmsg``
(scatter/gather), so a large payload is never copied.
"""

import logging
import os
import socket
import sys
from collections import deque

from .errors import FrameError
from .framing import FramingAttributes, framing_for
from .socketserver import BaseRequestHandler

__all__ = ["FramedRequestHandler", "FramedClient", "send_frame"]

logger = logging.getLogger("cserver.framing")

# Up to this size a payload is copied once behind its header and sent with
# one send(); beyond it the header and the payload go out together with
# sendmsg() (scatter/gather) and the payload is not copied.
_COALESCE_LIMIT = 16384


def _as_bytes_view(payload):
    view = memoryview(payload)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


def _can_sendmsg(sock):
    """Whether ``sock`` does scatter/gather writes: not an ``ssl.SSLSocket``
    (its sendmsg() raises NotImplementedError)."""
    if not hasattr(sock, "sendmsg"):
        return False
    ssl = sys.modules.get("ssl")  # not imported: no SSLSocket exists
    return ssl is None or not isinstance(sock, ssl.SSLSocket)


def send_frame(sock, payload, encoder):
    """Send ``payload`` (bytes-like) as one frame on the blocking socket
    ``sock``, its header written by ``encoder`` (a FrameEncoder)."""
    view = _as_bytes_view(payload)
    with view:
        size = view.nbytes
        header = encoder.header(size)
        if size <= _COALESCE_LIMIT or not _can_sendmsg(sock):
            if size <= _COALESCE_LIMIT:
                sock.sendall(b"".join((header, view)))
            else:
                sock.sendall(header)
                sock.sendall(view)
            return
        _sendmsg_all(sock, [header, view], len(header) + size)


def _sendmsg_all(sock, buffers, total):
    """Send every buffer of the list ``buffers`` (``total`` bytes) with
    scatter/gather writes; the list is consumed."""
    if total <= _COALESCE_LIMIT or not _can_sendmsg(sock):
        sock.sendall(b"".join(buffers))
        return
    while buffers:
        sent = sock.sendmsg(buffers[:_IOV_MAX])
        # drop what was sent, keep the rest of a partly sent buffer
        i = 0
        while i < len(buffers) and sent >= len(buffers[i]):
            sent -= len(buffers[i])
            i += 1
        del buffers[:i]
        if sent:
            buffers[0] = memoryview(buffers[0])[sent:]


_IOV_MAX = 512
# Replies to the frames of one read are sent together, up to these bounds.
_BATCH_FRAMES = 256
_BATCH_BYTES = 1 << 20


def _vanished(exc):
    """Whether the socket error ``exc`` says that the peer is gone: it reset
    the connection, a write found it closed (EPIPE: over a Unix socket, or
    OpenSSL's alert after a TLS EOF without close_notify), the local stack
    aborted it, or a TLS EOF without close_notify surfaced as an error."""
    if isinstance(exc, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)):
        return True
    ssl = sys.modules.get("ssl")  # not imported: no SSLSocket exists
    return ssl is not None and isinstance(exc, ssl.SSLEOFError)


class _FrameReader:
    """``recv_frame`` for FramedRequestHandler and FramedClient: frames
    read from the blocking socket ``self._stream`` (a property: the socket
    as it is at the time of the read) through ``self.decoder``, queued in
    ``self._frames`` (a deque) until taken."""

    __slots__ = ()

    def recv_frame(self):
        """The next frame (``bytes``), or None when the peer closed the
        connection between frames.  Raises FrameError on a bad frame
        (IncompleteFrame when the stream ended inside one)."""
        frames = self._frames
        while not frames:
            got = self.decoder.read_from(self._stream)
            if got is None:
                return None
            frames.extend(got)
        return frames.popleft()


class FramedRequestHandler(FramingAttributes, _FrameReader, BaseRequestHandler):
    """Request handler for length-prefixed frames on a stream socket.

    Methods that may be overridden:

    - handle_frame(frame) -> reply or None   # called once per frame
    - frame_error(exc)                        # a peer broke the framing
    - setup(), handle(), finish()             # as for BaseRequestHandler

    Methods for use in handlers:

    - recv_frame() -> bytes, or None at end of stream
    - send_frame(payload)

    A peer that vanishes (reset, broken pipe, aborted, TLS EOF without
    close_notify) between frames has ended the connection, as a close
    between frames has: recv_frame() returns None, a reply returned by
    handle_frame() that can no longer be sent is dropped, and nothing
    reaches the server's handle_error() (a DEBUG line on
    ``cserver.framing``).  Inside a frame it cut that frame short, as a
    close there does: IncompleteFrame, through frame_error().  An error of
    send_frame() called by the handler's own code still propagates.

    Class variables that may be overridden (the header description, as for
    ``FrameDecoder``, inherited from ``cserver.framing.FramingAttributes``;
    the same description is used for replies):

    - frame_format = "!I"
    - length_size, byteorder (instead of frame_format)
    - length_offset, length_adjustment, initial_bytes_to_strip
    - max_frame_size (incoming and outgoing)

    and:

    - buffer_pool (None: the shared default pool)
    - timeout (socket timeout, None for blocking)
    - disable_nagle_algorithm (True: every frame is one send; TCP only)
    """

    __module__ = "cserver"

    buffer_pool = None
    timeout = None
    disable_nagle_algorithm = True

    def setup(self):
        self.connection = self.request
        if self.timeout is not None:
            self.connection.settimeout(self.timeout)
        if (self.disable_nagle_algorithm
                and self.connection.family in (socket.AF_INET, socket.AF_INET6)):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        recipe = framing_for(self, self.buffer_pool)
        self.encoder = recipe.encoder
        self.decoder = recipe.decoder
        self._frames = deque()
        self._replies = []
        self._reply_bytes = 0

    def handle(self):
        """Read frames until the peer closes; pass each to handle_frame()
        and send back any non-None result.  The replies to frames that
        arrived together (in one read) are sent together, in one
        scatter/gather write, once the last of them is handled."""
        frames = self._frames
        try:
            while True:
                frame = self.recv_frame()
                if frame is None:
                    break
                reply = self.handle_frame(frame)
                if reply is not None and not self._queue_reply(reply):
                    return  # the peer vanished: no one reads or sends any more
                if not frames and self._replies and not self._send_replies():
                    return
        except FrameError as exc:
            # the replies to the good frames before the bad one go first
            try:
                self._flush_replies()
            except OSError:
                pass
            self.frame_error(exc)
            return
        self._send_replies()

    def recv_frame(self):
        """The next frame (``bytes``), or None when the peer ended the
        connection between frames: closed it, or vanished (see the class).
        Raises FrameError on a bad frame (IncompleteFrame when the stream
        ended, or the peer vanished, inside one)."""
        try:
            return _FrameReader.recv_frame(self)
        except OSError as exc:
            if not _vanished(exc):
                raise
            self._peer_vanished(exc)
            return None

    def _peer_vanished(self, exc):
        """The peer is gone (``exc``, raised by this connection's socket):
        between frames that ends the connection (logged at DEBUG); inside
        a frame the decoder raises the IncompleteFrame that a close there
        gives (its context: ``exc``)."""
        self.decoder.eof()
        logger.debug("connection from %r ended by the peer: %s: %s",
                     self.client_address, type(exc).__name__, exc)

    def _queue_reply(self, payload):
        """Queue a reply of handle(), sent with the others of its batch;
        False when the batch was full and the peer had vanished (see
        _send_replies)."""
        view = _as_bytes_view(payload)
        header = self.encoder.header(view.nbytes)
        replies = self._replies
        replies.append(header)
        replies.append(view)
        self._reply_bytes += len(header) + view.nbytes
        if len(replies) >= 2 * _BATCH_FRAMES or self._reply_bytes >= _BATCH_BYTES:
            return self._send_replies()
        return True

    def _send_replies(self):
        """_flush_replies() for handle(): False when the peer had vanished
        (the replies are dropped, there is no one to read them).  Only
        handle()'s own writes are judged so: an OSError raised by
        handle_frame() (the handler's send_frame(), or another socket of
        its own) is the handler's and propagates."""
        try:
            self._flush_replies()
        except OSError as exc:
            if not _vanished(exc):
                raise
            self._peer_vanished(exc)
            return False
        return True

    def _flush_replies(self):
        replies, total = self._replies, self._reply_bytes
        self._replies = []
        self._reply_bytes = 0
        if replies:
            _sendmsg_all(self.connection, replies, total)

    def handle_frame(self, frame):
        """Handle one frame (``bytes``); return a reply payload to send it,
        or None.  Override this."""
        raise NotImplementedError(
            "%s must override handle_frame() or handle()" % type(self).__name__)

    def frame_error(self, exc):
        """The peer sent a bad frame (``exc`` is a FrameError): log it.  The
        connection is closed when the handler returns."""
        logger.warning("closing connection from %r: %s: %s",
                       self.client_address, type(exc).__name__, exc)

    @property
    def _stream(self):
        return self.connection

    def send_frame(self, payload):
        """Send ``payload`` (bytes-like) as one frame (after any reply
        queued by handle())."""
        if self._replies:
            self._flush_replies()
        send_frame(self.connection, payload, self.encoder)

    def finish(self):
        self.decoder.close()


_DEFAULTS = FramingAttributes


class FramedClient(_FrameReader):
    """A blocking client for length-prefixed frames.

    ``FramedClient(address, timeout=None, *, frame_format="!I", ...)``
    connects to ``address``: a ``(host, port)`` tuple for TCP, or a path
    (str, bytes or path-like) for a Unix stream socket.  ``timeout`` applies
    to the connect and to every later operation.  The header description
    keywords are those of FrameDecoder.  ``ssl_context`` (a client-side
    ``ssl.SSLContext``) wraps the connection in TLS, handshaken within
    ``timeout``; ``server_hostname`` (the name checked against the
    certificate and sent as SNI) defaults to the host of a ``(host, port)``
    address.  Use as a context manager, or call ``close()``.
    """

    __module__ = "cserver"

    def __init__(self, address, timeout=None, *, frame_format=_DEFAULTS.frame_format,
                 length_size=_DEFAULTS.length_size, byteorder=_DEFAULTS.byteorder,
                 length_offset=_DEFAULTS.length_offset,
                 length_adjustment=_DEFAULTS.length_adjustment,
                 initial_bytes_to_strip=_DEFAULTS.initial_bytes_to_strip,
                 max_frame_size=_DEFAULTS.max_frame_size, buffer_pool=None,
                 source_address=None, ssl_context=None, server_hostname=None):
        self.frame_format = frame_format
        self.length_size = length_size
        self.byteorder = byteorder
        self.length_offset = length_offset
        self.length_adjustment = length_adjustment
        self.initial_bytes_to_strip = initial_bytes_to_strip
        self.max_frame_size = max_frame_size
        recipe = framing_for(self, buffer_pool)
        self.encoder = recipe.encoder
        self.decoder = recipe.decoder
        self._frames = deque()
        self.address = address
        if isinstance(address, (str, bytes, os.PathLike)):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(os.fspath(address))
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection(address, timeout, source_address)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
            except BaseException:
                sock.close()
                raise
            if server_hostname is None and ssl_context is not None:
                server_hostname = address[0]
        if ssl_context is not None:
            try:
                sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname)
            except BaseException:
                sock.close()  # detached by wrap_socket, or still ours
                raise
        self.socket = sock

    @property
    def _stream(self):
        return self.socket

    def fileno(self):
        return self.socket.fileno()

    def send_frame(self, payload):
        """Send ``payload`` (bytes-like) as one frame."""
        send_frame(self.socket, payload, self.encoder)

    def request(self, payload):
        """Send ``payload`` as a frame and return the reply frame.  Raises
        EOFError if the server closes the connection instead of replying."""
        self.send_frame(payload)
        reply = self.recv_frame()
        if reply is None:
            raise EOFError("connection closed by %r before a reply" % (self.address,))
        return reply

    def close(self):
        """Close the connection (idempotent).  The socket is shut down
        first, so the server sees the end of the stream even if a forked
        process inherited a copy of the descriptor."""
        self.decoder.close()
        if self.socket.fileno() >= 0:
            try:
                self.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.socket.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<FramedClient %r fd=%d>" % (self.address, self.socket.fileno())
