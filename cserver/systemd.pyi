"""systemd's socket activation (LISTEN_FDS) and readiness protocol (NOTIFY_SOCKET)."""
import socket
from typing import Final

__all__: list[str] = [
    "SD_LISTEN_FDS_START",
    "listen_fds",
    "listen_fds_with_names",
    "notify",
    "notify_reloading",
    "adopt_socket",
]

#: the first descriptor a service manager passes
SD_LISTEN_FDS_START: Final[int]

def listen_fds_with_names(unset_environment: bool = True) -> list[tuple[str, socket.socket]]:
    """The sockets passed to this process, with their LISTEN_FDNAMES names."""
def listen_fds(unset_environment: bool = True) -> list[socket.socket]:
    """The sockets passed to this process ([] when LISTEN_PID is not this process)."""
def notify(*states: str) -> bool:
    """One datagram to NOTIFY_SOCKET; False when it is unset."""
def notify_reloading() -> bool:
    """notify("RELOADING=1", "MONOTONIC_USEC=<now>")."""
def adopt_socket(
    sock: socket.socket, families: tuple[int, ...], sock_type: int, who: str, backlog: int
) -> object:
    """Check an inherited socket against a server's family and type; listen() it if only bound."""
