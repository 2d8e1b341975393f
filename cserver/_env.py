"""cserver's environment switches: each one is read here, and only here.

- ``CSERVER_PURE`` (``1``/``true``/``yes``: on; unset, empty, ``0``,
  ``false``, ``no``: off), read once, at the first import of cserver: run the
  compiled modules from their Python sources and use the framing layer's
  pure twin (``cserver.PURE``, ``cserver.framing.COMPILED``).
- ``CSERVER_LOOP`` (``epoll`` or ``selectors``), read each time a
  multiplexing server resolves its ``loop`` option (``loop=None``), so that
  setting it after the import still counts.

systemd's protocol variables (``LISTEN_FDS``, ``LISTEN_PID``,
``LISTEN_FDNAMES``, ``NOTIFY_SOCKET``) are not switches of cserver's: they
are read (and the first three unset) by ``cserver.systemd``.
"""

import os

__all__ = ["PURE", "requested_loop"]


def _flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


#: True when ``CSERVER_PURE`` asked for the pure-Python sources.
PURE = _flag("CSERVER_PURE")


def requested_loop():
    """The loop ``CSERVER_LOOP`` names now (lowercased), or None when it is
    unset or blank.  Not validated here: the server checks the value."""
    return os.environ.get("CSERVER_LOOP", "").strip().lower() or None
