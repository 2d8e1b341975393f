"""Build: every module that holds servers, mixins, handlers, the framing layer
and the event loop is compiled by Cython.  There is no silent pure-Python
fallback: without Cython or a C compiler the build fails."""
import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

# Plain-class modules users subclass, compiled from .py (no .pxd beside them).
COMPILED_PY = ["cserver/socketserver.py", "cserver/framed.py", "cserver/selectorserver.py"]


def extensions():
    exts = [Extension(path[:-3].replace("/", "."), [path]) for path in COMPILED_PY]
    for path in sorted(glob.glob("cserver/*.pyx")):
        exts.append(Extension(path[:-4].replace("/", "."), [path]))
    return exts


setup(
    ext_modules=cythonize(
        extensions(),
        compiler_directives={
            "language_level": 3,
            # def functions and methods (of cdef classes too) are
            # cyfunctions, whose signatures inspect.signature, help() and
            # stubtest read from their code objects.  (Cython 3's default,
            # stated so that it cannot change under us.)  It changes def
            # functions only: cdef/cpdef calls on the hot paths are the same
            # C calls.  The cdef classes' constructors, which are slots,
            # carry a text signature at the top of their docstrings.
            # Not "embedsignature": with binding it adds nothing in the
            # "clinic" format (and sets the doc of every undocumented
            # method to "None"); in the other formats it prefixes every
            # docstring with a signature line, which hides the classes'
            # text signatures from inspect.
            "binding": True,
        },
        annotate=bool(os.environ.get("CSERVER_ANNOTATE")),
    ),
)
