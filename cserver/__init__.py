"""cserver: a compiled, drop-in ``socketserver`` with fast extras.

``import cserver as socketserver`` gives the running interpreter's
``socketserver`` surface (same ``__all__``, classes, attributes, hooks and
behaviour), compiled by Cython.  ``cserver.install()`` makes the stdlib's own
users (``http.server``, ``xmlrpc.server``, ``wsgiref``, ``logging.config``)
run on it.  See the README for the extras: the bounded thread pool, the
framing layer and the multiplexing server.

Set ``CSERVER_PURE=1`` in the environment before the first import to run the
same code from its Python source instead of the compiled modules (for
debugging and as the oracle of the compiled build).
"""

import os as _os
import sys as _sys
import types as _types

#: cserver's own release.  (``__version__`` is the stdlib socketserver's,
#: "0.4", because code that does ``import cserver as socketserver`` may read
#: it; on 3.15, as there, reading it warns: see ``__getattr__`` below.)
version = "0.1.0"

# Modules compiled by Cython from .py sources; in pure mode their sources are
# loaded instead, in this order (a later one may import an earlier one).
_COMPILED_PY = ("socketserver", "framed", "selectorserver")

from ._env import PURE  # noqa: E402  (the one reader of $CSERVER_PURE)


def _load_pure_sources():
    import importlib.util
    here = _os.path.dirname(__file__)
    for name in _COMPILED_PY:
        full = __name__ + "." + name
        if full in _sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(full, _os.path.join(here, name + ".py"))
        module = importlib.util.module_from_spec(spec)
        _sys.modules[full] = module
        spec.loader.exec_module(module)
        # As the import system does for a submodule it loads itself.
        globals()[name] = module


# Extension modules compiled from .pyx (the event loop, the C framing layer
# and the PROXY header parser, not wired into the servers yet: issue 13):
# needed in pure mode too (the multiplexing server runs on them).
_EXTENSIONS = ("_framing", "_loop", "_proxy")


def _check_compiled():
    """Raise ImportError, naming the fix, when the modules this import needs
    compiled are not built for this interpreter here.

    The usual cause is a source checkout: ``python -m ...`` and ``python -c``
    put the current directory first on ``sys.path``, so the checkout's
    ``cserver/`` (no compiled modules) hides an installed cserver.  Without
    this check the import failed later with a misleading "circular import".
    """
    import importlib.machinery
    import importlib.util
    needed = _EXTENSIONS if PURE else _COMPILED_PY + _EXTENSIONS
    missing = []
    for name in needed:
        spec = importlib.util.find_spec(__name__ + "." + name)
        if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            missing.append(name)
    if not missing:
        return
    here = _os.path.dirname(_os.path.abspath(__file__))
    tree = _os.path.dirname(here)
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    other = sorted(n for n in _os.listdir(here) if n.endswith(".so") or n.endswith(".pyd"))
    found = (" (built here for other interpreters only: %s)" % ", ".join(other)) if other else ""
    if _os.path.isfile(_os.path.join(tree, "setup.py")):
        raise ImportError(
            "cserver was imported from its source tree %s, whose compiled modules "
            "are not built for this interpreter (%s): missing %s%s. Python imports this "
            "tree before any installed cserver when it is the current directory "
            "(python -m, python -c) or on PYTHONPATH. Run the installed command "
            "instead (cserver echo), or run from another directory, or build this "
            "tree in place: pip install -e .  (or: python setup.py build_ext --inplace)"
            % (here, suffix, ", ".join(missing), found))
    raise ImportError(
        "this cserver installation (%s) is incomplete: compiled modules missing for "
        "this interpreter (%s): %s%s. Reinstall it with this interpreter: "
        "%s -m pip install --force-reinstall cserver"
        % (here, suffix, ", ".join(missing), found, _sys.executable))


_check_compiled()

if PURE:
    _load_pure_sources()

from . import socketserver as _compat  # noqa: E402
from .socketserver import *  # noqa: E402,F401,F403
from .socketserver import (  # noqa: E402,F401
    _ServerSelector, _SocketWriter, _Threads,
    _NoThreads, socket, selectors, threading, os, sys, time, BufferedIOBase,
)
# cserver's additions (EXTRA_NAMES), named so that checkers and IDEs see them.
from .socketserver import (  # noqa: E402,F401
    ThreadPoolMixIn, ThreadPoolTCPServer, ThreadPoolUDPServer,
)
from .socketserver import ProxyProtocolMixIn  # noqa: E402,F401
from .socketserver import TLSMixIn  # noqa: E402,F401
if hasattr(_compat.socket, "AF_UNIX"):
    from .socketserver import (  # noqa: E402,F401
        ThreadPoolUnixStreamServer, ThreadPoolUnixDatagramServer,
    )
if _sys.version_info < (3, 15):
    __version__ = _compat.__version__
else:
    def __getattr__(name):
        """3.15's socketserver: ``__version__`` is deprecated, reading it
        warns (at the reader's line) and gives "0.4"."""
        if name == "__version__":
            return _compat._deprecated_version()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# Exactly the stdlib's list: CPython's test_all compares it with the names
# whose __module__ is "socketserver".  cserver's additions are attributes.
__all__ = list(_compat.__all__)


class _Package(_types.ModuleType):
    """Forwards assignments of the compat module's globals to it.

    The servers look up ``socket``, ``selectors``, ``threading`` and
    ``_ServerSelector`` in their own module's globals, late, as the stdlib
    does.  ``cserver._ServerSelector = X`` (or the same through
    ``sys.modules["socketserver"]`` after ``install()``) must reach them, and
    so must any other global of the compat module (``_SocketWriter``,
    ``_Threads``, the classes).
    """

    def __setattr__(self, name, value):
        if name in _FORWARDED:
            setattr(_compat, name, value)
        super().__setattr__(name, value)

    def __delattr__(self, name):
        if name in _FORWARDED and hasattr(_compat, name):
            delattr(_compat, name)
        super().__delattr__(name)


# Every global of the compat module: its code looks them all up late, as the
# stdlib's does (socket, selectors, threading, _ServerSelector, but also
# _SocketWriter in StreamRequestHandler.setup, _Threads in
# ThreadingMixIn.process_request, BaseServer in TCPServer.__init__ ...).
_FORWARDED = frozenset(name for name in vars(_compat) if not name.startswith("__"))


def install(force=False):
    """Make ``import socketserver`` give cserver in this process.

    Call it before importing the stdlib's users of socketserver
    (``http.server``, ``xmlrpc.server``, ``wsgiref.simple_server``,
    ``logging.config``, ``idlelib.rpc``): they bind the module's classes when
    they are imported.  Raises RuntimeError if one of them (or the stdlib
    ``socketserver`` itself) was imported before, unless ``force=True``.
    Returns the cserver package.  Idempotent.
    """
    current = _sys.modules.get("socketserver")
    if current is _sys.modules[__name__]:
        return current
    if not force:
        early = [name for name in _DEPENDENTS if name in _sys.modules]
        if current is not None:
            early.insert(0, "socketserver")
        if early:
            raise RuntimeError(
                "cserver.install() must run before these modules are imported, "
                "they already bound the stdlib socketserver: %s (call install() "
                "earlier, first thing in your main module, or put "
                "cserver.shadow_path() first on PYTHONPATH)"
                % ", ".join(early))
    _sys.modules["socketserver"] = _sys.modules[__name__]
    return _sys.modules[__name__]


_DEPENDENTS = ("http.server", "xmlrpc.server", "wsgiref.simple_server",
               "logging.config", "idlelib.rpc")


def shadow_path():
    """Return a directory that, first on ``PYTHONPATH``, makes ``import
    socketserver`` load cserver in subprocesses too.

    Example::

        env = dict(os.environ, PYTHONPATH=cserver.shadow_path())
        subprocess.run([sys.executable, "-m", "http.server"], env=env)
    """
    return _os.path.join(_os.path.dirname(__file__), "_shadow")

# The framing layer: length-prefix frames, buffer pool, framed handler and
# client; and the multiplexing server.  Attributes of the package, not in
# __all__ (which is the stdlib's).
from .errors import FrameError, FrameTooLarge, IncompleteFrame  # noqa: E402,F401
from .framing import (  # noqa: E402,F401
    DEFAULT_MAX_FRAME_SIZE, BufferPool, FrameDecoder, FrameEncoder, encode_frame,
)
from .framed import FramedClient, FramedRequestHandler  # noqa: E402,F401
from . import errors, framing, framed  # noqa: E402,F401  (attributes in pure mode too)
from . import proxy  # noqa: E402,F401  (the PROXY header parser's chooser)
from .selectorserver import (  # noqa: E402,F401
    SelectorServer, SelectorTCPServer, SelectorUDPServer, ConnectionHandler,
    FrameHandler, DatagramHandler,
)
if hasattr(_compat.socket, "AF_UNIX"):
    from .selectorserver import SelectorUnixStreamServer  # noqa: E402,F401
from . import selectorserver  # noqa: E402,F401  (an attribute in pure mode too)

# Tracebacks through the compiled modules show their source lines.
from . import _sources  # noqa: E402
_sources.attach(__name__)

_sys.modules[__name__].__class__ = _Package
