"""Source lines in tracebacks through cserver's compiled modules.

Cython records each compiled module's source as a relative file name
(``cserver/socketserver.py``, ``cserver/_loop.pyx``).  ``linecache`` asks the
module's loader first: an ``ExtensionFileLoader`` has no source, so on
CPython 3.9-3.12 a traceback through compiled code showed no lines at all, or,
where a relative search of ``sys.path`` or the current directory found another
file of that name, that file's lines.  ``attach()`` gives every compiled
module of the package a loader that is the same ``ExtensionFileLoader`` plus
a ``get_source()`` that reads the ``.py``/``.pyx`` source installed beside the
extension, so tracebacks show cserver's own lines on every version.
"""

import importlib.machinery as _machinery
import os as _os
import sys as _sys


class SourceExtensionFileLoader(_machinery.ExtensionFileLoader):
    """An ``ExtensionFileLoader`` whose ``get_source()`` returns the text of
    the Cython source the extension was compiled from (``name.py`` or
    ``name.pyx`` in the extension's directory), or None if it is absent."""

    def get_source(self, fullname):
        for path in self.source_candidates():
            try:
                with open(path, encoding="utf-8") as f:
                    return f.read()
            except OSError:
                continue
        return None

    def source_candidates(self):
        """The files the source may be in, most likely first."""
        base = self.path
        for suffix in sorted(_machinery.EXTENSION_SUFFIXES, key=len, reverse=True):
            if base.endswith(suffix):
                base = base[:-len(suffix)]
                break
        return [base + ".py", base + ".pyx"]


def attach(package):
    """Give every compiled submodule of ``package`` (already imported) a
    :class:`SourceExtensionFileLoader`; returns the names it changed."""
    changed = []
    prefix = package + "."
    for name, module in list(_sys.modules.items()):
        if not name.startswith(prefix) or module is None:
            continue
        spec = getattr(module, "__spec__", None)
        loader = getattr(spec, "loader", None)
        if type(loader) is not _machinery.ExtensionFileLoader:
            continue
        new = SourceExtensionFileLoader(loader.name, loader.path)
        if not any(_os.path.isfile(p) for p in new.source_candidates()):
            continue
        spec.loader = new
        module.__loader__ = new
        changed.append(name)
    return changed
