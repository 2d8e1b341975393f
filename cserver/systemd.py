"""systemd's socket activation and readiness protocol, without libsystemd.

- ``listen_fds()`` / ``listen_fds_with_names()``: the listening sockets a
  service manager passed (``LISTEN_FDS``, ``LISTEN_PID``, ``LISTEN_FDNAMES``;
  the descriptors start at ``SD_LISTEN_FDS_START`` = 3), as ``socket``
  objects, close-on-exec, with the variables unset after use;
- ``notify(*states)``: one datagram to ``NOTIFY_SOCKET`` (``READY=1``,
  ``STOPPING=1``, ``RELOADING=1`` ...); False when the variable is unset.

The servers use them: ``SelectorServer.from_systemd()``,
``SelectorServer.from_socket()``, the stdlib-style servers' ``from_socket()``
and ``python -m cserver echo --systemd``; a server notifies READY=1 once it
serves (with workers: once every worker is up), RELOADING=1 on SIGHUP,
STOPPING=1 when it stops.  See ``docs/systemd.md``.

The environment is parsed as ``sd_listen_fds(3)`` does: ``LISTEN_PID``
unset, or another process's pid, means "nothing for this process" (an
empty list, never an error: a child that inherited its parent's variables
must not take its sockets); a ``LISTEN_PID`` or ``LISTEN_FDS`` that is not a
decimal number, a ``LISTEN_FDS`` <= 0 or beyond the process's descriptor
limit, a ``LISTEN_FDNAMES`` with a different count, a descriptor that is not
open or not a socket: ``ValueError`` naming the variable and the value.
With ``unset_environment`` (the default) the three variables are removed in
every case, also when parsing fails, as sd_listen_fds does.
"""

import os
import resource
import socket
import stat
import time

__all__ = ["SD_LISTEN_FDS_START", "listen_fds", "listen_fds_with_names", "notify",
           "notify_reloading", "adopt_socket"]

#: the first descriptor a service manager passes
SD_LISTEN_FDS_START = 3

_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def _decimal(name, text):
    """``text`` as a non-negative decimal int (what systemd writes), else
    ValueError naming the variable."""
    stripped = text.strip()
    if not stripped.isdigit() or not stripped.isascii():
        raise ValueError("%s must be a decimal number, got %r" % (name, text))
    if len(stripped) > 18:
        raise ValueError("%s is out of range, got %r" % (name, text))
    return int(stripped)


def _fd_limit():
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 1 << 20
    return soft


def _parse(environ):
    """The (name, fd) pairs ``environ`` passes to this process, or []."""
    pid_text = environ.get("LISTEN_PID")
    if pid_text is None:
        return []
    pid = _decimal("LISTEN_PID", pid_text)
    if pid != os.getpid():
        return []   # another process's sockets (a parent's variables)
    fds_text = environ.get("LISTEN_FDS")
    if fds_text is None:
        return []
    stripped = fds_text.strip()
    if stripped.startswith("-") and stripped[1:].isdigit():
        raise ValueError("LISTEN_FDS must be a positive number of descriptors, got %r"
                         % (fds_text,))
    n = _decimal("LISTEN_FDS", fds_text)
    if n <= 0:
        raise ValueError("LISTEN_FDS must be a positive number of descriptors, got %r"
                         % (fds_text,))
    limit = _fd_limit()
    if SD_LISTEN_FDS_START + n > limit:
        raise ValueError("LISTEN_FDS=%d: descriptors %d-%d are beyond this process's limit "
                         "(RLIMIT_NOFILE %d)" % (n, SD_LISTEN_FDS_START,
                                                 SD_LISTEN_FDS_START + n - 1, limit))
    names_text = environ.get("LISTEN_FDNAMES")
    if names_text is None:
        names = ["unknown"] * n   # sd_listen_fds_with_names' name for "none given"
    else:
        names = names_text.split(":")
        if len(names) != n:
            raise ValueError("LISTEN_FDNAMES names %d descriptors, LISTEN_FDS=%d: %r"
                             % (len(names), n, names_text))
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n))
    for fd in fds:
        try:
            st = os.fstat(fd)
        except OSError as exc:
            raise ValueError("LISTEN_FDS=%d: descriptor %d is not open (%s)"
                             % (n, fd, exc.strerror)) from None
        if not stat.S_ISSOCK(st.st_mode):
            raise ValueError("LISTEN_FDS=%d: descriptor %d is not a socket" % (n, fd))
    return list(zip(names, fds))


def listen_fds_with_names(unset_environment=True):
    """The sockets passed by the service manager to this process, as a list
    of ``(name, socket.socket)`` in descriptor order (the names from
    ``LISTEN_FDNAMES``, ``"unknown"`` when it is unset).  Each socket is
    made close-on-exec (``sd_listen_fds`` does the same) and belongs to the
    caller.  [] when ``LISTEN_PID`` is unset or names another process.
    Raises ValueError for malformed variables (module docstring)."""
    try:
        pairs = _parse(os.environ)
        result = []
        for name, fd in pairs:
            os.set_inheritable(fd, False)
            result.append((name, socket.socket(fileno=fd)))
        return result
    finally:
        if unset_environment:
            for variable in _VARIABLES:
                os.environ.pop(variable, None)


def listen_fds(unset_environment=True):
    """The sockets passed by the service manager (``listen_fds_with_names()``
    without the names)."""
    return [sock for _, sock in listen_fds_with_names(unset_environment)]


def _notify_address(value):
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]   # an abstract socket
    raise ValueError("NOTIFY_SOCKET must be an absolute path or an abstract name "
                     "(@name), got %r" % (value,))


def notify(*states):
    """Send ``states`` (``"READY=1"``, ``"STATUS=..."`` ...) to the service
    manager as one datagram on ``NOTIFY_SOCKET``.  Returns False when the
    variable is unset or empty (not run by a service manager that listens),
    True once sent.  A state must be ``NAME=value`` on one line (ValueError
    otherwise: a newline would smuggle another assignment in); a malformed
    ``NOTIFY_SOCKET`` is a ValueError, a failed send an OSError."""
    if not states:
        raise ValueError("notify() needs at least one state, e.g. 'READY=1'")
    for state in states:
        if not isinstance(state, str):
            raise TypeError("a state is a str such as 'READY=1', got %r" % (state,))
        if "\n" in state or "=" not in state or state.startswith("="):
            raise ValueError("a state is NAME=value on one line, got %r" % (state,))
    target = os.environ.get("NOTIFY_SOCKET", "")
    if not target:
        return False
    address = _notify_address(target)
    payload = "\n".join(states).encode("utf-8")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(payload, address)
    return True


def notify_reloading():
    """``notify("RELOADING=1", "MONOTONIC_USEC=<now>")``: what a service of
    ``Type=notify-reload`` sends when a reload starts (systemd 253+ waits
    for the READY=1 that follows)."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", "MONOTONIC_USEC=%d" % usec)


def _describe(family, sock_type):
    names = []
    for value, prefix in ((family, "AF_"), (sock_type, "SOCK_")):
        try:
            names.append((socket.AddressFamily if prefix == "AF_" else socket.SocketKind)
                         (value).name)
        except ValueError:
            names.append("%s%d" % (prefix, value))
    return " ".join(names)


def adopt_socket(sock, families, sock_type, who, backlog):
    """Check that ``sock`` fits a server of ``families`` / ``sock_type``
    and is ready to serve; return its bound address.  A stream socket that
    is bound but not listening is put in the listening state (``backlog``);
    one that listens keeps its backlog.  ``who`` names the caller in the
    errors: TypeError for something that is not a socket or of the wrong
    family/type, ValueError for a closed, unbound or connected socket."""
    if not isinstance(sock, socket.socket):
        raise TypeError("%s needs a socket.socket, got %r" % (who, sock))
    if sock.fileno() < 0:
        raise ValueError("%s: the socket is closed" % (who,))
    wanted = " or ".join(_describe(f, sock_type) for f in families)
    if sock.family not in families or sock.type != sock_type:
        raise TypeError("%s needs an %s socket, got %s" % (who, wanted,
                                                           _describe(sock.family, sock.type)))
    address = sock.getsockname()
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        if address[1] == 0:
            raise ValueError("%s: the socket is not bound (port 0)" % (who,))
    elif not address:
        raise ValueError("%s: the socket is not bound (no address)" % (who,))
    if sock_type == socket.SOCK_STREAM:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if not listening:
            try:
                sock.getpeername()
            except OSError:
                pass
            else:
                raise ValueError("%s: the socket is connected, not a listening socket" % (who,))
            sock.listen(backlog)
    sock.set_inheritable(False)
    return address
