"""Build: every module that holds servers, mixins, handlers, the framing layer
and the event loop is compiled by Cython.  There is no silent pure-Python
fallback: without Cython or a C compiler the build fails, with a message
that says what is missing and how to get it (or where to get a wheel).

The toolchain is checked and the sources are cythonized only when extensions
are built (``build_ext``, which ``pip install``, ``pip wheel`` and
``bdist_wheel`` run), never for an sdist.
"""
import glob
import os
import shutil
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext

# Plain-class modules users subclass, compiled from .py (no .pxd beside them).
COMPILED_PY = ["cserver/socketserver.py", "cserver/framed.py", "cserver/selectorserver.py"]

HELP = (
    "Install a C compiler and the Python headers (Debian/Ubuntu: "
    "apt install gcc python3-dev; Fedora/RHEL: dnf install gcc python3-devel; "
    "Alpine: apk add gcc musl-dev python3-dev), or install a prebuilt wheel "
    "(tools/build_wheels.sh builds them; see the README)."
)


def extensions():
    exts = [Extension(path[:-3].replace("/", "."), [path]) for path in COMPILED_PY]
    for path in sorted(glob.glob("cserver/*.pyx")):
        exts.append(Extension(path[:-4].replace("/", "."), [path]))
    return exts


COMPILER_DIRECTIVES = {
    "language_level": 3,
    # def functions and methods (of cdef classes too) are cyfunctions, whose
    # signatures inspect.signature, help() and stubtest read from their code
    # objects.  (Cython 3's default, stated so that it cannot change under
    # us.)  It changes def functions only: cdef/cpdef calls on the hot paths
    # are the same C calls.  The cdef classes' constructors, which are slots,
    # carry a text signature at the top of their docstrings.  Not
    # "embedsignature": with binding it adds nothing in the "clinic" format
    # (and sets the doc of every undocumented method to "None"); in the other
    # formats it prefixes every docstring with a signature line, which hides
    # the classes' text signatures from inspect.
    "binding": True,
}


def missing_toolchain(compiler_command, include_dirs):
    """What is missing to compile the extensions, as a list of sentences
    (empty when nothing is).

    ``compiler_command`` is the compiler's argv as distutils will run it
    (``compiler.compiler_so``), ``include_dirs`` where ``Python.h`` may be.
    """
    problems = []
    program = compiler_command[0] if compiler_command else None
    if not program or shutil.which(program) is None:
        where = "CC=%s" % os.environ["CC"] if os.environ.get("CC") else "PATH"
        problems.append("no C compiler: %r was not found (from %s)" % (program, where))
    if not any(os.path.isfile(os.path.join(d, "Python.h")) for d in include_dirs if d):
        problems.append(
            "no Python headers: Python.h is not in %s" % (", ".join(d for d in include_dirs if d)
                                                          or "any include directory"))
    return problems


class build_ext(_build_ext):
    """Checks the toolchain, then cythonizes, then compiles (in parallel:
    one job per CPU unless ``-j`` says otherwise)."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1

    def build_extensions(self):
        include_dirs = list(self.compiler.include_dirs) + list(self.include_dirs or []) + [
            sysconfig.get_paths()["include"], sysconfig.get_paths()["platinclude"]]
        problems = missing_toolchain(getattr(self.compiler, "compiler_so", None), include_dirs)
        if problems:
            sys.exit("error: cannot build cserver's compiled modules from source (%s) "
                     "for %s:\n  - %s\n%s" % (
                         os.path.abspath(os.path.dirname(__file__) or "."), sys.executable,
                         "\n  - ".join(problems), HELP))
        try:
            from Cython.Build import cythonize
        except ImportError:
            sys.exit("error: cannot build cserver from source: Cython is not installed "
                     "(pip install 'Cython>=3.0.8,<4'; pip install . brings it itself "
                     "unless --no-build-isolation is given)")
        cythonized = cythonize(
            self.extensions,
            compiler_directives=COMPILER_DIRECTIVES,
            annotate=bool(os.environ.get("CSERVER_ANNOTATE")),
            nthreads=self.parallel if self.parallel > 1 else 0,
        )
        # Keep setuptools' own Extension objects (finalize_options annotated
        # them); take the generated C sources from Cython's copies.
        by_name = {ext.name: ext for ext in cythonized}
        for ext in self.extensions:
            ext.sources = by_name[ext.name].sources
        super().build_extensions()


if __name__ == "__main__":
    setup(ext_modules=extensions(), cmdclass={"build_ext": build_ext})
