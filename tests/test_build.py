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


# --- importing an uncompiled tree, the shadow path, tracebacks, the toolchain
# check -------------------------------------------------------------------------

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

SOURCES = (os.path.join(SOURCE_TREE, "cserver") if SOURCE_TREE else PACKAGE_DIR)
SETUP_PY = os.path.join(SOURCE_TREE or os.path.dirname(PACKAGE_DIR), "setup.py")


def _uncompiled_tree(root, with_setup_py=True):
    """A copy of cserver's sources (no compiled module) at ``root/cserver``,
    as a fresh checkout has it."""
    shutil.copytree(SOURCES, os.path.join(root, "cserver"),
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "*.c", "__pycache__"))
    if with_setup_py:
        with open(os.path.join(root, "setup.py"), "w") as f:
            f.write("# a checkout\n")
    return root


def _python(code, cwd, **env):
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("PYTHONPATH", "CSERVER_PURE")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=full_env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)


@pytest.mark.parametrize("pure", [False, True], ids=["compiled", "pure"])
def test_import_from_an_uncompiled_checkout_names_the_fix(tmp_path, pure):
    # python -m/-c in a checkout's top directory import its cserver/ first.
    root = _uncompiled_tree(str(tmp_path))
    proc = _python("import cserver", cwd=root, **({"CSERVER_PURE": "1"} if pure else {}))
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: cserver was imported from its source tree "), last
    assert os.path.join(root, "cserver") in last
    assert "pip install -e ." in last and "cserver echo" in last
    missing = last.split("missing ", 1)[1].split(".")[0]
    assert missing.split(", ") == (["_framing", "_loop", "_proxy"] if pure else
                                   list(cserver._COMPILED_PY) + ["_framing", "_loop", "_proxy"])
    assert "circular import" not in proc.stderr


def test_import_of_an_incomplete_installation_says_reinstall(tmp_path):
    root = _uncompiled_tree(str(tmp_path), with_setup_py=False)
    proc = _python("import cserver", cwd=root)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "this cserver installation" in last and "--force-reinstall" in last, last


def test_python_m_cserver_in_an_uncompiled_checkout_fails_with_the_fix(tmp_path):
    root = _uncompiled_tree(str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "cserver", "echo", "--port", "0"], cwd=root,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 1
    assert "source tree" in proc.stderr and "pip install -e ." in proc.stderr, proc.stderr
    assert "circular import" not in proc.stderr


def test_shadow_path_never_yields_the_stdlib_silently(tmp_path):
    # The shadow socketserver.py, first on PYTHONPATH, over an uncompiled
    # checkout: importing socketserver fails loudly instead of giving the
    # stdlib module (or a half-initialized cserver).
    root = _uncompiled_tree(str(tmp_path))
    shadow = os.path.join(root, "cserver", "_shadow")
    proc = _python("import socketserver; print(socketserver.__name__, socketserver.__file__)",
                   cwd=root, PYTHONPATH=shadow)
    assert proc.returncode == 1, proc.stdout
    assert proc.stdout == ""
    assert "ImportError: cserver was imported from its source tree" in proc.stderr


@pytest.mark.skipif(PURE_REQUESTED, reason="CSERVER_PURE=1: nothing is compiled")
def test_tracebacks_through_compiled_modules_show_their_source_lines():
    # Run from / so that no relative path can find a source by chance; on
    # 3.9-3.12 linecache asked the extension loader, which has no source.
    code = textwrap.dedent("""
        import json, traceback, cserver
        entries = []
        for call in (lambda: cserver.TCPServer(("256.0.0.1", 0), cserver.BaseRequestHandler),
                     lambda: cserver.FrameDecoder(length_size=5)):
            try:
                call()
            except Exception as exc:
                entries += [(f.filename, f.lineno, f.line)
                            for f in traceback.extract_tb(exc.__traceback__)]
        print(json.dumps(entries))
    """)
    env = {k: v for k, v in os.environ.items() if k != "CSERVER_PURE"}
    env["PYTHONPATH"] = os.path.dirname(PACKAGE_DIR)
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    import json
    entries = json.loads(proc.stdout)
    compiled = [e for e in entries if e[0].startswith("cserver/")]
    assert {e[0] for e in compiled} >= {"cserver/socketserver.py", "cserver/_framing.pyx"}, entries
    for filename, lineno, line in compiled:
        with open(os.path.join(PACKAGE_DIR, os.path.basename(filename)), encoding="utf-8") as f:
            expected = f.read().splitlines()[lineno - 1].strip()
        assert expected, (filename, lineno)
        assert line == expected, (filename, lineno, line, expected)


def _load_setup_py():
    pytest.importorskip("setuptools", reason="setup.py imports setuptools")
    spec = importlib.util.spec_from_file_location("cserver_setup_py", SETUP_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # __name__ is not "__main__": setup() does not run
    return module


needs_setup_py = pytest.mark.skipif(not os.path.isfile(SETUP_PY), reason="no setup.py here")


@needs_setup_py
def test_toolchain_check_names_a_missing_compiler_and_headers(tmp_path):
    setup_py = _load_setup_py()
    assert setup_py.missing_toolchain([sys.executable, "-c"], [sysconfig_include()]) == []
    problems = setup_py.missing_toolchain(["/nonexistent/cc", "-O2"], [str(tmp_path)])
    assert len(problems) == 2, problems
    assert "no C compiler" in problems[0] and "/nonexistent/cc" in problems[0]
    assert "no Python headers" in problems[1] and str(tmp_path) in problems[1]
    assert "apt install gcc python3-dev" in setup_py.HELP


def sysconfig_include():
    import sysconfig
    return sysconfig.get_paths()["include"]


@needs_setup_py
def test_build_without_a_compiler_stops_before_compiling(tmp_path):
    setuptools = pytest.importorskip("setuptools", reason="setup.py needs setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("setuptools %s < 77 cannot read pyproject.toml's licence (PEP 639); "
                    "the docs env runs this" % setuptools.__version__)
    tree = os.path.dirname(SETUP_PY)
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(os.path.join(tree, name), str(tmp_path))
    _uncompiled_tree(str(tmp_path), with_setup_py=False)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["CC"] = "/nonexistent/cc"
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=str(tmp_path),
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: cannot build cserver's compiled modules from source" in proc.stderr
    assert "no C compiler: '/nonexistent/cc' was not found (from CC=/nonexistent/cc)" in proc.stderr
    assert "apt install gcc python3-dev" in proc.stderr
    assert "Traceback" not in proc.stderr
    # Stopped before cythonizing: no C was generated.
    assert not glob.glob(os.path.join(str(tmp_path), "cserver", "*.c"))


def test_extension_list_matches_the_pyx_sources():
    assert sorted(cserver._EXTENSIONS) == _pyx_modules()


@pytest.mark.skipif(not EXPECT_COMPILED, reason="only for installed builds (tox)")
def test_installed_metadata_is_publishable():
    from importlib import metadata
    meta = metadata.metadata("cserver")
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    classifiers = meta.get_all("Classifier")
    for minor in range(9, 16):
        assert "Programming Language :: Python :: 3.%d" % minor in classifiers
    assert "Typing :: Typed" in classifiers
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    assert not any(c.startswith("License ::") for c in classifiers)  # PEP 639: the expression only
    files = [str(f) for f in metadata.files("cserver")]
    license_file = [f for f in files if f.endswith(".dist-info/licenses/LICENSE")]
    assert license_file, files
    text = metadata.distribution("cserver").locate_file(license_file[0]).read_text()
    assert text.startswith("MIT License") and "2026 cserver contributors" in text
    scripts = [e for e in metadata.distribution("cserver").entry_points
               if e.group == "console_scripts" and e.name == "cserver"]  # 3.9: no group=...
    assert [e.value for e in scripts] == ["cserver.__main__:main"]
    # The sources, for tracebacks through the compiled modules.
    assert any(f.endswith("cserver/_loop.pyx") for f in files)


@needs_setup_py
def test_sdist_carries_the_licence_tests_and_docs(tmp_path):
    setuptools = pytest.importorskip("setuptools", reason="building an sdist needs setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("setuptools %s < 77 (the docs env runs this)" % setuptools.__version__)
    import tarfile
    tree = os.path.dirname(SETUP_PY)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta; "
         "print(build_meta.build_sdist(sys.argv[1]))", str(tmp_path)],
        cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    name = proc.stdout.strip().splitlines()[-1]
    with tarfile.open(os.path.join(str(tmp_path), name)) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    for wanted in ("LICENSE", "CHANGELOG.md", "README.md", "DEVELOP.md", "setup.py",
                   "tests/conftest.py",
                   "tests/test_docs.py", "tests/compat/oracle_runner.py", "docs/compat-tests.md",
                   "tools/build_wheels.sh", "bench/run.py", "bench/loadgen.c",
                   "bench/c_tls_echo.c", "bench/requirements.txt",
                   "cserver/_loop.pyx", "cserver/socketserver.py"):
        assert wanted in names, (wanted, names)
    assert not [n for n in names if n.endswith((".so", ".pyc")) or
                (n.endswith(".c") and not n.startswith("bench/"))], names
