"""The PROXY protocol header parser (the compiled twin, or the pure one
under ``CSERVER_PURE=1``: one API, typed here as the compiled twin's) and
the trusted-proxy rules the servers share.  See docs/proxy.md."""
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Final, Union

from cserver._proxy import V1_MAX_LENGTH as V1_MAX_LENGTH
from cserver._proxy import V2_MAX_LENGTH as V2_MAX_LENGTH
from cserver._proxy import V2_SIGNATURE as V2_SIGNATURE
from cserver._proxy import ProxyHeaderError as ProxyHeaderError
from cserver._proxy import ProxyInfo as ProxyInfo
from cserver._proxy import ProxyParser as ProxyParser
from cserver._proxy import ProxySSL as ProxySSL
from cserver._proxy import parse_header as parse_header

__all__: list[str] = [
    "ProxyParser",
    "ProxyInfo",
    "ProxySSL",
    "ProxyHeaderError",
    "parse_header",
    "V2_SIGNATURE",
    "V1_MAX_LENGTH",
    "V2_MAX_LENGTH",
    "COMPILED",
    "MODES",
    "TrustedNetworks",
    "trusted_networks",
]

COMPILED: Final[bool]
"""True when the compiled twin is in use."""
MODES: Final[tuple[str, ...]]
"""The values a ``proxy_protocol`` option may take to require a header."""

_Network = Union[str, IPv4Network, IPv6Network, IPv4Address, IPv6Address]

class TrustedNetworks:
    """The networks of a validated ``trusted_proxies`` option."""

    __slots__ = ("v4", "v6", "source")
    v4: tuple[IPv4Network, ...]
    v6: tuple[IPv6Network, ...]
    source: Iterable[_Network]
    def __init__(self, v4: Iterable[IPv4Network], v6: Iterable[IPv6Network], source: Iterable[_Network]) -> None: ...
    def is_trusted(self, family: int, address: Any) -> bool:
        """Whether a peer (as ``accept()`` gives it) of a socket of ``family``
        may send a header; Unix-socket peers always may."""

def trusted_networks(value: _Network | Iterable[_Network], option: str = "trusted_proxies") -> TrustedNetworks:
    """Validate a ``trusted_proxies`` value (TypeError/ValueError naming
    ``option`` and the value)."""
