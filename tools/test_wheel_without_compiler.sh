#!/usr/bin/env bash
# Build one wheel with tools/build_wheels.sh, install it into a fresh venv on
# a machine state with no C compiler reachable, and run the test suite on it.
#
#   tools/test_wheel_without_compiler.sh [PYTHON]     (default: python3.11, else python3)
#
# "No compiler reachable": CC and CXX point nowhere and PATH holds only the
# venv and a directory of links to the system's programs minus every C/C++
# compiler and preprocessor (checked: none is found).  pip may only install
# wheels (--only-binary :all:), so nothing is built on the way.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${1:-$(command -v python3.11 || command -v python3)}
PY=$(command -v "$PY")
WORK=$(mktemp -d /tmp/cserver-nocc.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

tools/build_wheels.sh -o "$WORK/wheels" "$PY"
wheel=$(ls "$WORK"/wheels/cserver-*manylinux*.whl)

# PATH without compilers.
mkdir "$WORK/bin"
IFS=: read -r -a dirs <<<"$PATH"
for d in "${dirs[@]}" /usr/local/bin /usr/bin /bin; do
    [ -d "$d" ] || continue
    for f in "$d"/*; do
        name=$(basename "$f")
        case "$name" in
            cc|c++|c89|c99|cpp|gcc|g++|clang|clang++|tcc|icc|*-gcc|*-g++|*-cc|*-c++|*-cpp|gcc-*|g++-*|cpp-*|clang-*|*-gcc-*|*-g++-*|*-cpp-*) continue ;;
        esac
        [ -e "$WORK/bin/$name" ] || ln -s "$f" "$WORK/bin/$name"
    done
done
"$PY" -m venv "$WORK/venv"
export PATH="$WORK/venv/bin:$WORK/bin" CC=/nonexistent/cc CXX=/nonexistent/c++
unset PYTHONPATH CSERVER_PURE
for c in cc gcc c++ g++ clang cpp; do
    if command -v "$c" >/dev/null; then echo "a compiler is reachable: $(command -v "$c")" >&2; exit 1; fi
done

python -m pip install -q --only-binary :all: "$wheel[test]"
cd "$WORK"   # never the source tree: its cserver/ is not the wheel
CSERVER_EXPECT_COMPILED=1 CSERVER_SOURCE_TREE=$ROOT \
    python -m pytest -n 2 -p no:cacheprovider --rootdir="$ROOT" -c "$ROOT/pyproject.toml" -m "not soak" "$ROOT/tests"
