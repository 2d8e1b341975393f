"""Differential surface test: cserver against the running interpreter's
stdlib ``socketserver``, name by name.

Every public name of the stdlib module, and the internals real code touches,
must exist in cserver with the same kind of object: the same module objects
and functions, and for the classes the same name, MRO shape, class attribute
names and default values, and method signatures.
"""
import inspect
import os
import socket
import sys
import types
import warnings

import pytest

import cserver

import socketserver as stdlib  # the running interpreter's own module

assert stdlib is not cserver, "cserver.install() ran in the pytest process"

STDLIB_NAMES = sorted(n for n in dir(stdlib) if not n.startswith("_"))
INTERNALS = ["_SocketWriter", "_Threads", "_NoThreads", "_ServerSelector"]
STDLIB_CLASSES = sorted(
    n for n in dir(stdlib)
    if isinstance(getattr(stdlib, n), type) and getattr(stdlib, n).__module__ == "socketserver")

# Attributes every class has or that only describe the class itself.
IGNORED_CLASS_ATTRS = {"__module__", "__doc__", "__dict__", "__weakref__", "__qualname__",
                       "__firstlineno__", "__static_attributes__"}
# Per-class state objects that are equal only to themselves (abc caches).
PER_CLASS_STATE = {"_abc_impl"}


def test_stdlib_fixture_is_the_real_stdlib():
    assert stdlib.__file__.endswith(os.path.join("", "socketserver.py"))
    # Not cserver's own file nor its shadow socketserver.py (a path test, not
    # a substring one: the interpreter itself may live under a directory
    # named cserver, as the provisioned 3.14/3.15 do).
    package_dir = os.path.join(os.path.dirname(os.path.realpath(cserver.__file__)), "")
    assert not os.path.realpath(stdlib.__file__).startswith(package_dir)
    assert stdlib is not cserver and not hasattr(stdlib, "install")
    # The lists below are not empty (a surface test that compares nothing
    # would pass for anything).
    assert len(STDLIB_NAMES) > 20 and len(STDLIB_CLASSES) >= 17


def test_all_is_identical():
    assert cserver.__all__ == stdlib.__all__
    assert cserver.socketserver.__all__ == stdlib.__all__


def test_public_names():
    mine = {n for n in dir(cserver) if not n.startswith("_")}
    theirs = {n for n in dir(stdlib) if not n.startswith("_")}
    assert theirs - mine == set()
    # cserver's additions never pretend to be stdlib names and are not in
    # __all__ (CPython's test_all checks __module__ == "socketserver").
    for name in sorted(mine - theirs):
        value = getattr(cserver, name)
        assert name not in cserver.__all__
        module = getattr(value, "__module__", None)
        if isinstance(value, (type, types.FunctionType)):
            assert module is not None and module.startswith("cserver"), (name, module)
        assert module != "socketserver", name


@pytest.mark.parametrize("name", STDLIB_NAMES + INTERNALS)
def test_name(name):
    theirs = getattr(stdlib, name)
    mine = getattr(cserver, name)
    if isinstance(theirs, types.ModuleType) or not (
            isinstance(theirs, type) and theirs.__module__ == "socketserver"):
        # socket, selectors, os, sys, threading, time, BufferedIOBase,
        # _ServerSelector: the very same objects.
        assert mine is theirs, name
        return
    assert isinstance(mine, type)
    assert mine.__name__ == theirs.__name__
    assert mine.__qualname__ == theirs.__qualname__
    assert mine.__module__ == "socketserver"
    # A plain (heap) class, like the stdlib's: subclassable, attributes
    # settable, usable in any mixin order.
    assert type(mine) is type(theirs)
    assert mine.__flags__ & (1 << 9), "not a heap type"  # Py_TPFLAGS_HEAPTYPE
    _check_mro(mine, theirs)
    _check_class_dict(mine, theirs)
    assert cserver.socketserver.__dict__[name] is mine


def _check_mro(mine, theirs):
    assert len(mine.__mro__) == len(theirs.__mro__), (mine.__mro__, theirs.__mro__)
    for m, t in zip(mine.__mro__, theirs.__mro__):
        if t.__module__ == "socketserver":
            assert m.__name__ == t.__name__
            assert m is getattr(cserver, t.__name__)
        else:
            assert m is t
    assert [b.__name__ for b in mine.__bases__] == [b.__name__ for b in theirs.__bases__]


def _check_class_dict(mine, theirs):
    their_attrs = {k: v for k, v in vars(theirs).items() if k not in IGNORED_CLASS_ATTRS}
    my_attrs = {k: v for k, v in vars(mine).items() if k not in IGNORED_CLASS_ATTRS}
    # cserver's documented additions (an inherited socket: from_socket):
    # each is there, is cserver's, and is not a stdlib name; the rest must
    # be the stdlib's exactly
    for extra in cserver.socketserver.EXTRA_CLASS_ATTRS.get(mine.__name__, ()):
        assert extra not in their_attrs, extra
        assert isinstance(my_attrs.pop(extra), classmethod), extra
    assert sorted(my_attrs) == sorted(their_attrs)
    for key, value in their_attrs.items():
        other = my_attrs[key]
        if isinstance(value, (types.FunctionType, staticmethod, classmethod)):
            assert callable(getattr(mine, key)), key
            assert inspect.signature(getattr(mine, key)) == inspect.signature(
                getattr(theirs, key)), key
            assert getattr(mine, key).__name__ == key
        elif isinstance(value, type(stdlib._NoThreads())):
            # ThreadingMixIn._threads: a shared degenerate instance.
            assert type(other).__name__ == type(value).__name__
            assert type(other) is cserver._NoThreads
        else:
            assert type(other) is type(value), key
            if key not in PER_CLASS_STATE:
                assert other == value, key


def test_inherited_defaults_agree():
    # The values every concrete class ends up with, inherited or not.
    names = ["timeout", "address_family", "socket_type", "request_queue_size",
             "allow_reuse_address", "allow_reuse_port", "max_packet_size",
             "daemon_threads", "block_on_close", "max_children", "active_children",
             "rbufsize", "wbufsize", "disable_nagle_algorithm"]
    checked = 0
    for cls_name in STDLIB_CLASSES:
        theirs, mine = getattr(stdlib, cls_name), getattr(cserver, cls_name)
        for attr in names:
            assert hasattr(mine, attr) == hasattr(theirs, attr), (cls_name, attr)
            if hasattr(theirs, attr):
                assert getattr(mine, attr) == getattr(theirs, attr), (cls_name, attr)
                checked += 1
    assert checked > 50


def test_forking_unix_servers_exactly_on_312():
    names = {"ForkingUnixStreamServer", "ForkingUnixDatagramServer"}
    expected = sys.version_info >= (3, 12)
    for name in names:
        assert hasattr(cserver, name) is expected, name
        assert (name in cserver.__all__) is expected, name
        assert hasattr(stdlib, name) is expected, name
    if expected:
        assert [c.__name__ for c in cserver.ForkingUnixStreamServer.__mro__] == [
            "ForkingUnixStreamServer", "ForkingMixIn", "UnixStreamServer", "TCPServer",
            "BaseServer", "object"]


def test_allow_reuse_port_exactly_on_311():
    expected = sys.version_info >= (3, 11)
    for name in ["TCPServer", "UDPServer"]:
        assert ("allow_reuse_port" in vars(getattr(cserver, name))) is expected, name
        assert hasattr(getattr(cserver, name), "allow_reuse_port") is expected, name
    assert hasattr(cserver.BaseServer, "allow_reuse_port") is False


def test_internals_real_code_touches():
    server = cserver.TCPServer(("127.0.0.1", 0), cserver.BaseRequestHandler,
                               bind_and_activate=False)
    try:
        # Name-mangled private state, as in the stdlib.
        assert server._BaseServer__shutdown_request is False
        assert not server._BaseServer__is_shut_down.is_set()
    finally:
        server.server_close()
    assert issubclass(cserver._SocketWriter, cserver.BufferedIOBase)
    assert issubclass(cserver._Threads, list)
    assert cserver._ServerSelector is stdlib._ServerSelector


def test_vars_of_a_server_match_stdlib():
    def make(module):
        return module.TCPServer(("127.0.0.1", 0), module.BaseRequestHandler,
                                bind_and_activate=False)
    a, b = make(stdlib), make(cserver)
    try:
        assert sorted(vars(a)) == sorted(vars(b))
    finally:
        a.server_close()
        b.server_close()


def test_extras_are_cserver_classes():
    for name in cserver.socketserver.EXTRA_NAMES:
        cls = getattr(cserver, name)
        assert cls.__module__ == "cserver", name
        assert name not in cserver.__all__
        assert not hasattr(stdlib, name)
    assert [c.__name__ for c in cserver.ThreadPoolTCPServer.__mro__] == [
        "ThreadPoolTCPServer", "ThreadPoolMixIn", "TCPServer", "BaseServer", "object"]
    assert [c.__name__ for c in cserver.ThreadPoolUDPServer.__mro__] == [
        "ThreadPoolUDPServer", "ThreadPoolMixIn", "UDPServer", "TCPServer", "BaseServer",
        "object"]
    if hasattr(socket, "AF_UNIX"):
        assert cserver.ThreadPoolUnixStreamServer.address_family == socket.AF_UNIX
        assert cserver.ThreadPoolUnixDatagramServer.socket_type == socket.SOCK_DGRAM


def _read_version(module, how):
    """Read ``module.__version__`` one way; return the value, the line that
    read it and the warnings it raised (category, message, file, line)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if how == "attribute":
            value, line = module.__version__, sys._getframe().f_lineno
        elif how == "getattr":
            value, line = getattr(module, "__version__"), sys._getframe().f_lineno
        else:
            namespace = {}
            exec(compile("from %s import __version__" % module.__name__, "<reader>", "exec"),
                 namespace)
            value, line = namespace["__version__"], 1
    return value, line, [(w.category, str(w.message), w.filename, w.lineno) for w in caught]


@pytest.mark.parametrize("how", ["attribute", "getattr", "from-import"])
@pytest.mark.parametrize("name", ["cserver", "cserver.socketserver"])
def test_version_reads_as_on_the_stdlib(name, how):
    """``__version__`` is the stdlib's "0.4"; on 3.15 reading it warns, as
    there, pointing at the line that read it (stacklevel semantics)."""
    mine = sys.modules[name]
    value, line, caught = _read_version(mine, how)
    s_value, s_line, s_caught = _read_version(stdlib, how)
    assert value == s_value == "0.4"
    # The same warnings, at the same reader (this file or the exec'd code).
    assert [w[:2] for w in caught] == [w[:2] for w in s_caught]
    assert [(w[2], w[3] - line) for w in caught] == [(w[2], w[3] - s_line) for w in s_caught]
    if sys.version_info >= (3, 15):
        filename = __file__ if how != "from-import" else "<reader>"
        assert caught == [(DeprecationWarning,
                           "'__version__' is deprecated and slated for removal in Python 3.20",
                           filename, line)]
        assert "__version__" not in vars(mine) and "__version__" not in vars(stdlib)
    else:
        assert caught == []
        assert vars(mine)["__version__"] == vars(stdlib)["__version__"]


def test_version_under_filterwarnings_error_raises_as_on_the_stdlib():
    """Under ``-W error`` (this suite's setting) the 3.15 read raises."""
    for module in (stdlib, cserver, cserver.socketserver):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            if sys.version_info >= (3, 15):
                with pytest.raises(DeprecationWarning, match="__version__"):
                    module.__version__
            else:
                assert module.__version__ == "0.4"


def test_missing_attribute_still_raises():
    for module in (cserver, cserver.socketserver):
        with pytest.raises(AttributeError, match="no_such_name"):
            module.no_such_name


def test_release_version_is_cserver_version():
    assert isinstance(cserver.version, str) and cserver.version != "0.4"
    assert "version" not in cserver.__all__


def test_request_queue_size_is_the_stdlibs():
    expected = getattr(socket, "SOMAXCONN", 5) if sys.version_info >= (3, 15) else 5
    assert stdlib.TCPServer.request_queue_size == expected
    assert cserver.TCPServer.request_queue_size == expected
    assert cserver.UnixStreamServer.request_queue_size == expected
