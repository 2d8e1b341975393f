"""Which cserver the benchmark scripts run: this checkout when it is built in
place for the running interpreter (``pip install -e .`` or ``python setup.py
build_ext --inplace``), else the installed package (``pip install .[bench]``).

``use()`` puts the checkout first on ``sys.path`` and on ``PYTHONPATH`` (for
the child processes) only when it is built.  Children started with
``python -c`` must run in ``CHILD_CWD``: ``-c`` puts the current directory
first on ``sys.path``, and in the checkout's top directory that is the
source ``cserver/``, which has no compiled modules without an in-place build.
"""
import importlib.machinery
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHILD_CWD = HERE
COMPILED = ("socketserver", "framed", "selectorserver", "_framing", "_loop")


def tree_is_built(root=ROOT):
    """True when ``root/cserver`` has every compiled module, for this interpreter."""
    pkg = os.path.join(root, "cserver")
    return all(any(os.path.isfile(os.path.join(pkg, name + suffix))
                   for suffix in importlib.machinery.EXTENSION_SUFFIXES)
               for name in COMPILED)


def use():
    """Choose the cserver to run (see the module docstring); returns a
    description: ``"source tree ROOT"`` or ``"installed"``."""
    if tree_is_built():
        sys.path.insert(0, ROOT)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        return "source tree %s" % ROOT
    return "installed"
