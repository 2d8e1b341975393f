"""The build itself: the modules that should be compiled are extension
modules, and a build that silently fell back to pure Python fails here.

Environment:

* ``CSERVER_EXPECT_COMPILED=1`` (tox): the modules are extension modules and
  cserver was imported from an installed copy, outside
  ``CSERVER_SOURCE_TREE`` (which must be set).
* ``CSERVER_PURE=1``: the pure mode was asked for; the modules listed in
  ``cserver._COMPILED_PY`` are loaded from their ``.py`` sources.
* neither (a developer's in-place build): compiled is still required.
"""
import ast
import glob
import importlib
import importlib.machinery
import os
import types

import pytest

import cserver

EXPECT_COMPILED = os.environ.get("CSERVER_EXPECT_COMPILED", "") == "1"
PURE_REQUESTED = os.environ.get("CSERVER_PURE", "").strip().lower() not in (
    "", "0", "false", "no")
SOURCE_TREE = os.environ.get("CSERVER_SOURCE_TREE") or None
PACKAGE_DIR = os.path.dirname(os.path.abspath(cserver.__file__))


def _pyx_modules():
    directory = os.path.join(SOURCE_TREE, "cserver") if SOURCE_TREE else PACKAGE_DIR
    return sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(directory, "*.pyx")))


def _is_extension(module):
    return (any(module.__file__.endswith(s) for s in importlib.machinery.EXTENSION_SUFFIXES)
            and isinstance(module.__spec__.loader, importlib.machinery.ExtensionFileLoader))


def test_environment_is_consistent():
    assert not (EXPECT_COMPILED and PURE_REQUESTED), \
        "CSERVER_EXPECT_COMPILED=1 and CSERVER_PURE=1 contradict each other"
    assert cserver.PURE is PURE_REQUESTED
    assert "socketserver" in cserver._COMPILED_PY


@pytest.mark.skipif(PURE_REQUESTED, reason="CSERVER_PURE=1: see test_pure_mode_loads_sources")
@pytest.mark.parametrize("name", list(cserver._COMPILED_PY) + _pyx_modules())
def test_module_is_compiled(name):
    module = importlib.import_module("cserver." + name)
    assert _is_extension(module), (
        "cserver.%s was loaded from %s: the build fell back to pure Python "
        "(or the in-place build is missing: python3 setup.py build_ext --inplace)"
        % (name, module.__file__))


@pytest.mark.skipif(PURE_REQUESTED, reason="CSERVER_PURE=1")
def test_compat_classes_run_compiled_code():
    # A compiled .py module still holds plain classes, with Cython functions.
    method = vars(cserver.BaseServer)["serve_forever"]
    assert not isinstance(method, types.FunctionType)
    assert type(method).__name__ == "cython_function_or_method"
    assert type(cserver.TCPServer) is type


@pytest.mark.skipif(not EXPECT_COMPILED, reason="only for installed builds (tox)")
def test_imported_from_the_installed_package():
    assert SOURCE_TREE, "CSERVER_EXPECT_COMPILED=1 needs CSERVER_SOURCE_TREE"
    # The source tree's own package directory; tox's environments may live
    # inside the tree (.tox/), so only this directory is forbidden.
    tree_package = os.path.join(os.path.realpath(SOURCE_TREE), "cserver")
    for module in [cserver, cserver.socketserver]:
        where = os.path.realpath(module.__file__)
        assert os.path.dirname(where) != tree_package, (
            "%s imported from the source tree (%s), not the installed package"
            % (module.__name__, where))


@pytest.mark.skipif(not PURE_REQUESTED, reason="CSERVER_PURE=1 not set")
@pytest.mark.parametrize("name", cserver._COMPILED_PY)
def test_pure_mode_loads_sources(name):
    module = importlib.import_module("cserver." + name)
    assert module.__file__.endswith(".py"), module.__file__
    assert isinstance(module.__spec__.loader, importlib.machinery.SourceFileLoader)
    assert getattr(cserver, name) is module
    if name == "socketserver":
        assert isinstance(vars(cserver.BaseServer)["serve_forever"], types.FunctionType)


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(SOURCE_TREE or os.path.dirname(PACKAGE_DIR), "setup.py")),
    reason="no source tree with setup.py to compare with")
def test_setup_and_package_agree_on_compiled_modules():
    setup_py = os.path.join(SOURCE_TREE or os.path.dirname(PACKAGE_DIR), "setup.py")
    with open(setup_py) as f:
        tree = ast.parse(f.read())
    listed = None
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "COMPILED_PY" for t in node.targets):
            listed = ast.literal_eval(node.value)
    assert listed is not None, "setup.py has no COMPILED_PY list"
    assert sorted(listed) == sorted("cserver/%s.py" % n for n in cserver._COMPILED_PY)
