"""PROXY protocol (v1 and v2) header parser in C, sans IO.

The pure-Python twin ``cserver._proxy_py`` has the same API (without
``capacity``).  Not used by the servers yet (issue 13); see docs/proxy.md.
"""
from _typeshed import ReadableBuffer
from typing import Final, Literal, Union
from typing_extensions import final

__all__: list[str] = [
    "ProxyParser",
    "ProxyInfo",
    "ProxySSL",
    "ProxyHeaderError",
    "parse_header",
    "V2_SIGNATURE",
    "V1_MAX_LENGTH",
    "V2_MAX_LENGTH",
]

V2_SIGNATURE: Final[bytes]
"""The 12 bytes a v2 header starts with."""
V1_MAX_LENGTH: Final[int]
"""107: the longest v1 line, CRLF included."""
V2_MAX_LENGTH: Final[int]
"""16 + 65535: the longest v2 header."""

_Mode = Literal["v1", "v2", "any"]
_Address = Union[tuple[str, int], tuple[str, int, int, int], str, bytes]

class ProxyHeaderError(ValueError):
    """A PROXY protocol header broke the spec (the message says how)."""

class ProxySSL:
    """The SSL TLV of a v2 header."""

    __slots__ = ("client", "verify", "version", "cn", "cipher", "sig_alg", "key_alg",
                 "group", "sig_scheme", "client_cert", "tlvs")
    client: int
    verify: int
    version: str | None
    cn: str | None
    cipher: str | None
    sig_alg: str | None
    key_alg: str | None
    group: str | None
    sig_scheme: str | None
    client_cert: bytes | None
    tlvs: tuple[tuple[int, bytes], ...]
    def __init__(
        self,
        client: int,
        verify: int,
        tlvs: tuple[tuple[int, bytes], ...] | list[tuple[int, bytes]] = (),
        version: str | None = None,
        cn: str | None = None,
        cipher: str | None = None,
        sig_alg: str | None = None,
        key_alg: str | None = None,
        group: str | None = None,
        sig_scheme: str | None = None,
        client_cert: bytes | None = None,
    ) -> None: ...
    @property
    def ssl(self) -> bool:
        """The client connected over SSL/TLS."""
    @property
    def verified(self) -> bool:
        """The client presented a certificate and it was verified."""
    def __eq__(self, other: object) -> bool: ...
    __hash__: None  # type: ignore[assignment]

class ProxyInfo:
    """What a PROXY header said."""

    __slots__ = ("version", "command", "family", "source", "destination", "tlvs",
                 "alpn", "authority", "crc32c", "unique_id", "ssl", "netns")
    version: int
    command: Literal["PROXY", "LOCAL"]
    family: Literal["TCP4", "TCP6", "UDP4", "UDP6", "UNIX", "UNIX_DGRAM", "UNKNOWN", "UNSPEC"]
    source: _Address | None
    destination: _Address | None
    tlvs: tuple[tuple[int, bytes], ...]
    alpn: bytes | None
    authority: str | None
    crc32c: int | None
    unique_id: bytes | None
    ssl: ProxySSL | None
    netns: str | None
    def __init__(
        self,
        version: int,
        command: Literal["PROXY", "LOCAL"],
        family: Literal["TCP4", "TCP6", "UDP4", "UDP6", "UNIX", "UNIX_DGRAM", "UNKNOWN",
                        "UNSPEC"],
        source: _Address | None = None,
        destination: _Address | None = None,
        tlvs: tuple[tuple[int, bytes], ...] | list[tuple[int, bytes]] = (),
        alpn: bytes | None = None,
        authority: str | None = None,
        crc32c: int | None = None,
        unique_id: bytes | None = None,
        ssl: ProxySSL | None = None,
        netns: str | None = None,
    ) -> None: ...
    @property
    def proxied(self) -> bool:
        """The header names the original endpoints (``source`` is set)."""
    def __eq__(self, other: object) -> bool: ...
    __hash__: None  # type: ignore[assignment]

@final
class ProxyParser:
    """A sans-IO reader of one PROXY protocol header."""

    def __init__(self, mode: _Mode = "any") -> None: ...
    def feed(self, data: ReadableBuffer) -> int:
        """Consume header bytes from ``data``; return how many were header
        (0 once done).  Raises ProxyHeaderError, then on every later call."""
    @property
    def mode(self) -> _Mode: ...
    @property
    def version(self) -> int:
        """1 or 2 once decided, else 0."""
    @property
    def done(self) -> bool: ...
    @property
    def failed(self) -> bool: ...
    @property
    def result(self) -> ProxyInfo | None: ...
    @property
    def consumed(self) -> int:
        """Header bytes consumed so far."""
    @property
    def held(self) -> int:
        """Header bytes held in memory now."""
    @property
    def capacity(self) -> int:
        """Size of the buffer that holds the header now."""
    @property
    def needed(self) -> int:
        """A lower bound on the bytes still needed (0 when done or failed)."""

def parse_header(data: ReadableBuffer, mode: _Mode = "any") -> tuple[ProxyInfo, bytes]:
    """``(ProxyInfo, payload)`` of data holding a whole header; raises
    ProxyHeaderError if invalid or incomplete."""

def crc32c(data: ReadableBuffer, crc: int = 0) -> int:
    """CRC32C of ``data`` (continuing from ``crc``)."""
