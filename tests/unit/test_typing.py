"""The typing surface, at run time: what the checkers and help() read.

The type checks themselves (mypy --strict and pyright on
tests/typing/sample.py, the mistakes of tests/typing/fail_*.py, stubtest)
run in the tox env ``typing``; these tests keep the runtime side honest:
the compiled classes show their signatures to inspect and help(), the
stubs ship with the package, the sample program runs, and the option list
the stubs declare is the one the server accepts.
"""
import ast
import inspect
import os
import pydoc
import subprocess
import sys

import pytest

import cserver
from cserver import _framing, _framing_py, _loop

TIMEOUT = 60.0
PACKAGE_DIR = os.path.dirname(os.path.abspath(cserver.__file__))
SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "typing", "sample.py")


@pytest.mark.parametrize("name", ["FrameDecoder", "FrameEncoder", "BufferPool"])
def test_compiled_framing_classes_have_the_pure_twins_signatures(name):
    compiled, pure = getattr(_framing, name), getattr(_framing_py, name)
    assert type(compiled.__init__).__name__ == "wrapper_descriptor"  # a C slot: no code object
    assert inspect.signature(compiled) == inspect.signature(pure)
    # help() shows it too (3.13+ pydoc wraps a long signature over lines,
    # each prefixed with the class section's " |  ": compare without those)
    def squeeze(text):
        return "".join(text.replace("|", " ").split())
    shown = squeeze(pydoc.render_doc(compiled, renderer=pydoc.plaintext))
    assert squeeze(str(inspect.signature(compiled))) in shown


def test_compiled_framing_class_docstrings_keep_their_text():
    # The text signature is cut off __doc__, not left in front of it.
    assert _framing.FrameDecoder.__doc__.lstrip().startswith("Sans-IO length-prefix frame decoder")
    assert _framing.BufferPool.__doc__.lstrip().startswith("A bounded, thread-safe pool")
    assert _framing.FrameEncoder.__doc__.lstrip().startswith("Writes the header")


@pytest.mark.parametrize("func, expected", [
    (_framing.FrameDecoder.feed, "(self, data)"),
    (_framing.FrameDecoder.get_buffer, "(self, sizehint=-1)"),
    (_framing.encode_frame, "(payload, fmt=None, **layout)"),
    (_loop.Loop.call_later, "(self, delay, fn, *args)"),
    (_loop.Transport.write, "(self, data)"),
    (cserver.TCPServer, "(server_address, RequestHandlerClass, bind_and_activate=True)"),
    (cserver.ThreadPoolTCPServer.pool_stats, "(self)"),
    (cserver.SelectorTCPServer,
     "(server_address, RequestHandlerClass, bind_and_activate=True, **options)"),
    (cserver.SelectorServer.shutdown, "(self, drain_timeout=None)"),
    (cserver.FramedRequestHandler.handle_frame, "(self, frame)"),
])
def test_compiled_callables_have_signatures(func, expected):
    assert str(inspect.signature(func)) == expected


def test_framed_client_signature():
    params = inspect.signature(cserver.FramedClient).parameters
    assert list(params)[:2] == ["address", "timeout"]
    assert params["frame_format"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["max_frame_size"].default == cserver.DEFAULT_MAX_FRAME_SIZE


def test_stubs_and_marker_ship_with_the_package():
    for name in ("__init__", "socketserver", "framing", "_framing", "_loop", "framed",
                 "selectorserver"):
        assert os.path.isfile(os.path.join(PACKAGE_DIR, name + ".pyi")), name
    assert os.path.isfile(os.path.join(PACKAGE_DIR, "py.typed"))


def _stub(name):
    with open(os.path.join(PACKAGE_DIR, name + ".pyi"), encoding="utf-8") as f:
        return ast.parse(f.read())


def _stub_parameters(stub, class_name, method):
    (cls,) = [node for node in stub.body if isinstance(node, ast.ClassDef) and node.name == class_name]
    (func,) = [node for node in cls.body if isinstance(node, ast.FunctionDef) and node.name == method]
    args = func.args
    positional = [(a.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD) for a in args.args[1:]]
    keyword = [(a.arg, inspect.Parameter.KEYWORD_ONLY) for a in args.kwonlyargs]
    return positional + keyword


@pytest.mark.parametrize("name, method", [
    ("FrameDecoder", "__init__"), ("FrameEncoder", "__init__"), ("BufferPool", "__new__"),
])
def test_stub_constructors_of_the_c_classes(name, method):
    # stubtest sees a cdef class's constructor as a slot taking (*args,
    # **kwargs) and cannot check it: compare the stub with the signature
    # inspect reads (the text signature, itself compared with the pure twin).
    runtime = [(p.name, p.kind) for p in inspect.signature(getattr(_framing, name)).parameters.values()]
    assert _stub_parameters(_stub("_framing"), name, method) == runtime


def test_stub_options_are_the_servers_options():
    # SelectorServer(**options) is typed by a TypedDict in the stub, which
    # stubtest cannot compare with the runtime's list: this test does.
    (options,) = [node for node in _stub("selectorserver").body
                  if isinstance(node, ast.ClassDef) and node.name == "_Options"]
    declared = {stmt.target.id for stmt in options.body if isinstance(stmt, ast.AnnAssign)}
    assert declared == set(cserver.selectorserver._OPTIONS)
    for name in declared:  # each option is a class attribute of the same name
        assert hasattr(cserver.SelectorServer, name), name


def test_stub_all_is_literal_and_the_runtimes():
    # Checkers read __all__ only as a literal list (and += of literals);
    # the stub's must name what the runtime's does, here.
    for module, name in ((cserver, "__init__"), (cserver.socketserver, "socketserver"),
                         (cserver.selectorserver, "selectorserver"), (cserver.framed, "framed"),
                         (cserver.framing, "framing"), (_framing, "_framing")):
        names = []

        def collect(body):
            for node in body:
                if isinstance(node, ast.If):  # sys.platform / sys.version_info checks
                    taken = eval(compile(ast.Expression(node.test), name, "eval"), {"sys": sys})
                    collect(node.body if taken else node.orelse)
                elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                    target = node.targets[0] if isinstance(node, ast.Assign) else node.target
                    if isinstance(target, ast.Name) and target.id == "__all__":
                        names.extend(ast.literal_eval(node.value))

        collect(_stub(name).body)
        assert sorted(names) == sorted(module.__all__), name


def test_sample_program_runs():
    """The program the checkers pass (tests/typing/sample.py) works: a fresh
    interpreter runs it end to end over loopback."""
    proc = subprocess.run([sys.executable, SAMPLE], capture_output=True, text=True,
                          timeout=TIMEOUT, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("sample: ok")
