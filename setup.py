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
        compiler_directives={"language_level": 3},
        annotate=bool(os.environ.get("CSERVER_ANNOTATE")),
    ),
)
