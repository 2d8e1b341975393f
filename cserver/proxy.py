"""The PROXY protocol (v1 and v2) header parser, and the rules the servers
share about who may send a header.

Chooses the compiled twin (``cserver._proxy``) unless ``CSERVER_PURE`` is
set, in which case the pure-Python twin (``cserver._proxy_py``) is used.
Both twins are always importable under their own names (the tests run one
body over both); they have one API, described in ``docs/proxy.md``.

``ProxyParser(mode)`` is sans-IO: ``feed(data)`` returns how many bytes of
``data`` were header, ``done``/``result`` (a ``ProxyInfo``) once complete,
and ``needed`` is a lower bound on the bytes still missing, so a blocking
reader that receives at most ``needed`` bytes at a time never reads past the
header (what ``cserver.socketserver.ProxyProtocolMixIn`` does).

``trusted_networks(value)`` validates a ``trusted_proxies`` option and
returns the ``TrustedNetworks`` that ``is_trusted(family, address)`` checks
a socket peer against: an IPv4-mapped IPv6 peer is matched as IPv4, and a
Unix-socket peer is always trusted (file permissions are the control).
"""

import socket as _socket

from ._env import PURE as _PURE

if _PURE:
    from . import _proxy_py as _impl
else:
    from . import _proxy as _impl

__all__ = ["ProxyParser", "ProxyInfo", "ProxySSL", "ProxyHeaderError", "parse_header",
           "V2_SIGNATURE", "V1_MAX_LENGTH", "V2_MAX_LENGTH", "COMPILED", "MODES",
           "TrustedNetworks", "trusted_networks"]

ProxyParser = _impl.ProxyParser
ProxyInfo = _impl.ProxyInfo
ProxySSL = _impl.ProxySSL
ProxyHeaderError = _impl.ProxyHeaderError
parse_header = _impl.parse_header
V2_SIGNATURE = _impl.V2_SIGNATURE
V1_MAX_LENGTH = _impl.V1_MAX_LENGTH
V2_MAX_LENGTH = _impl.V2_MAX_LENGTH
#: True when the compiled twin is in use.
COMPILED = _impl.__name__.endswith("._proxy")
#: The values a ``proxy_protocol`` option may take to require a header.
MODES = ("v1", "v2", "any")

_INET_FAMILIES = (_socket.AF_INET, _socket.AF_INET6)


class TrustedNetworks:
    """The networks of a validated ``trusted_proxies`` option (made by
    ``trusted_networks``); ``is_trusted(family, address)`` says whether a
    socket peer may send a PROXY header."""

    __slots__ = ("v4", "v6", "source")

    def __init__(self, v4, v6, source):
        self.v4 = tuple(v4)
        self.v6 = tuple(v6)
        self.source = source

    def is_trusted(self, family, address):
        """Whether the peer ``address`` (as ``accept()`` gives it) of a
        socket of ``family`` is in these networks.  Unix-socket peers (any
        family but AF_INET/AF_INET6) are always trusted."""
        if family not in _INET_FAMILIES:
            return True
        import ipaddress
        try:
            host = address[0]
            if family == _socket.AF_INET6 and "%" in host:
                host = host.split("%", 1)[0]  # a link-local scope (fe80::1%eth0)
            ip = ipaddress.ip_address(host)
        except (TypeError, ValueError, IndexError):
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        networks = self.v4 if ip.version == 4 else self.v6
        for network in networks:
            if ip in network:
                return True
        return False

    def __repr__(self):
        return "TrustedNetworks(%s)" % ", ".join(str(n) for n in self.v4 + self.v6)


def trusted_networks(value, option="trusted_proxies"):
    """Validate ``value`` (an iterable of networks, each a ``str`` such as
    ``"10.0.0.0/8"`` or ``"::1"``, or an ``ipaddress`` network or address;
    or one such network alone)
    and return a ``TrustedNetworks``.  Raises TypeError or ValueError
    naming ``option`` and the bad value."""
    import ipaddress
    if isinstance(value, (str, ipaddress.IPv4Network, ipaddress.IPv6Network,
                          ipaddress.IPv4Address, ipaddress.IPv6Address)):
        value = (value,)   # one network: "10.0.0.0/8"
    if isinstance(value, bytes) or value is None:
        raise TypeError("%s must be a network or a sequence of networks (str or ipaddress "
                        "networks), got %r" % (option, value))
    try:
        items = list(value)
    except TypeError:
        raise TypeError("%s must be a network or a sequence of networks (str or ipaddress "
                        "networks), got %r" % (option, value)) from None
    v4, v6 = [], []
    for item in items:
        if isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            network = item
        elif isinstance(item, (str, ipaddress.IPv4Address, ipaddress.IPv6Address)):
            try:
                network = ipaddress.ip_network(item)
            except ValueError as exc:
                raise ValueError("%s: %r is not a network (%s)" % (option, item, exc)) from None
        else:
            raise TypeError("%s: each network must be a str or an ipaddress network, got %r"
                            % (option, item))
        if network.version == 6 and network.network_address.ipv4_mapped is not None \
                and network.prefixlen >= 96:
            # ::ffff:10.0.0.0/104 means 10.0.0.0/8: peers are matched as IPv4
            network = ipaddress.ip_network("%s/%d" % (network.network_address.ipv4_mapped,
                                                      network.prefixlen - 96))
        (v4 if network.version == 4 else v6).append(network)
    return TrustedNetworks(v4, v6, value)
