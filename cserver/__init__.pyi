"""cserver: a compiled, drop-in ``socketserver`` with fast extras.

``import cserver as socketserver`` type-checks as the stdlib module does
(the names of ``cserver.socketserver``), and the extras are typed from the
stubs of the modules that define them: the thread pool
(``cserver.socketserver``), the framing layer (the compiled twin,
``cserver._framing``), the framed handler and client (``cserver.framed``)
and the multiplexing server (``cserver.selectorserver``).

``__all__`` is exactly the stdlib's, as at runtime (``from cserver import
*`` gives the stdlib's names); the other public names are re-exported
explicitly (``X as X``).
"""
import sys
import types
from typing import Final

from cserver import errors as errors
from cserver import framed as framed
from cserver import framing as framing
from cserver import proxy as proxy
from cserver import selectorserver as selectorserver
from cserver import socketserver as socketserver
from cserver._framing import DEFAULT_MAX_FRAME_SIZE as DEFAULT_MAX_FRAME_SIZE
from cserver._framing import BufferPool as BufferPool
from cserver._framing import FrameDecoder as FrameDecoder
from cserver._framing import FrameEncoder as FrameEncoder
from cserver._framing import encode_frame as encode_frame
from cserver.errors import FrameError as FrameError
from cserver.errors import FrameTooLarge as FrameTooLarge
from cserver.errors import IncompleteFrame as IncompleteFrame
from cserver.framed import FramedClient as FramedClient
from cserver.framed import FramedRequestHandler as FramedRequestHandler
from cserver.selectorserver import ConnectionHandler as ConnectionHandler
from cserver.selectorserver import DatagramHandler as DatagramHandler
from cserver.selectorserver import FrameHandler as FrameHandler
from cserver.selectorserver import SelectorServer as SelectorServer
from cserver.selectorserver import SelectorTCPServer as SelectorTCPServer
from cserver.selectorserver import SelectorUDPServer as SelectorUDPServer
from cserver.socketserver import BaseRequestHandler as BaseRequestHandler
from cserver.socketserver import BaseServer as BaseServer
from cserver.socketserver import DatagramRequestHandler as DatagramRequestHandler
from cserver.socketserver import StreamRequestHandler as StreamRequestHandler
from cserver.socketserver import TCPServer as TCPServer
from cserver.socketserver import ThreadingMixIn as ThreadingMixIn
from cserver.socketserver import ThreadingTCPServer as ThreadingTCPServer
from cserver.socketserver import ThreadingUDPServer as ThreadingUDPServer
from cserver.socketserver import ProxyProtocolMixIn as ProxyProtocolMixIn
from cserver.socketserver import TLSMixIn as TLSMixIn
from cserver.socketserver import ThreadPoolMixIn as ThreadPoolMixIn
from cserver.socketserver import ThreadPoolTCPServer as ThreadPoolTCPServer
from cserver.socketserver import ThreadPoolUDPServer as ThreadPoolUDPServer
from cserver.socketserver import UDPServer as UDPServer

if sys.platform != "win32":
    from cserver.selectorserver import SelectorUnixStreamServer as SelectorUnixStreamServer
    from cserver.socketserver import ForkingMixIn as ForkingMixIn
    from cserver.socketserver import ForkingTCPServer as ForkingTCPServer
    from cserver.socketserver import ForkingUDPServer as ForkingUDPServer
    from cserver.socketserver import ThreadingUnixDatagramServer as ThreadingUnixDatagramServer
    from cserver.socketserver import ThreadingUnixStreamServer as ThreadingUnixStreamServer
    from cserver.socketserver import ThreadPoolUnixDatagramServer as ThreadPoolUnixDatagramServer
    from cserver.socketserver import ThreadPoolUnixStreamServer as ThreadPoolUnixStreamServer
    from cserver.socketserver import UnixDatagramServer as UnixDatagramServer
    from cserver.socketserver import UnixStreamServer as UnixStreamServer

    if sys.version_info >= (3, 12):
        from cserver.socketserver import ForkingUnixDatagramServer as ForkingUnixDatagramServer
        from cserver.socketserver import ForkingUnixStreamServer as ForkingUnixStreamServer

# As cserver.socketserver's: the stdlib module's version string, left out
# on 3.15 where the stdlib deprecates it (see socketserver.pyi).
if sys.version_info < (3, 15):
    from cserver.socketserver import __version__ as __version__

__all__: list[str] = [
    "BaseServer",
    "TCPServer",
    "UDPServer",
    "ThreadingUDPServer",
    "ThreadingTCPServer",
    "BaseRequestHandler",
    "StreamRequestHandler",
    "DatagramRequestHandler",
    "ThreadingMixIn",
]
if sys.platform != "win32":
    __all__ += [
        "ForkingUDPServer",
        "ForkingTCPServer",
        "ForkingMixIn",
        "UnixStreamServer",
        "UnixDatagramServer",
        "ThreadingUnixStreamServer",
        "ThreadingUnixDatagramServer",
    ]
    if sys.version_info >= (3, 12):
        __all__ += ["ForkingUnixStreamServer", "ForkingUnixDatagramServer"]

#: cserver's own release (``__version__`` is the stdlib socketserver's).
version: Final[str]
#: True when ``CSERVER_PURE`` selected the pure-Python sources at import.
PURE: Final[bool]

def install(force: bool = False) -> types.ModuleType:
    """Make ``import socketserver`` give cserver in this process (call it
    before the stdlib's users of socketserver are imported); RuntimeError if
    one of them, or the stdlib socketserver, was imported before, unless
    ``force``.  Returns the cserver package.  Idempotent."""

def shadow_path() -> str:
    """A directory that, first on ``PYTHONPATH``, makes ``import
    socketserver`` load cserver in subprocesses too."""
