"""Run the typing checks on the cserver that ``python`` imports.

    python tests/typing/run_checks.py            # what ``tox -e typing`` runs

(in a source tree built in place: ``PYTHONPATH=$PWD python
tests/typing/run_checks.py`` from its root).  Needs mypy and pyright (the
tox env installs the pinned versions).  The checks, each reported with its
time; the exit status is non-zero if any failed:

1. ``mypy --strict`` on sample.py (a program over the whole public API), for
   every interpreter version the stubs distinguish;
2. ``mypy --strict --warn-unused-ignores`` on fail_*.py: every mistake there
   carries ``# type: ignore[code]``; a mistake that stops being an error
   (or changes its error code) leaves an unused ignore, which fails;
3. ``mypy --strict`` on the package's stubs themselves;
4. ``pyright`` (strict, see pyrightconfig.json, which also reports
   unnecessary ``# type: ignore`` comments) on sample.py and fail_*.py, for
   the oldest and the newest version;
5. ``python -m mypy.stubtest cserver``: the stubs against the compiled,
   imported package, with stubtest-allowlist*.txt (a reason on every entry).
   It checks the running interpreter's branches of the stubs' version
   checks; run this script with another interpreter (its own build of
   cserver) for the others.
"""
import glob
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(HERE, "sample.py")
FAIL_FILES = sorted(glob.glob(os.path.join(HERE, "fail_*.py")))
ALLOWLISTS = [os.path.join(HERE, "stubtest-allowlist.txt")]
if sys.version_info < (3, 12):
    ALLOWLISTS.append(os.path.join(HERE, "stubtest-allowlist-before-py312.txt"))
PYRIGHT_CONFIG = os.path.join(HERE, "pyrightconfig.json")
# The versions the stubs' sys.version_info checks tell apart (3.11:
# allow_reuse_port, 3.12: ForkingUnix*, 3.15: no __version__), from the
# oldest each checker still targets to the newest.
MYPY_VERSIONS = ["3.10", "3.11", "3.12", "3.13", "3.14", "3.15"]
PYRIGHT_VERSIONS = ["3.9", "3.15"]


def check_package():
    """The package under check must be the compiled one."""
    import cserver
    import cserver.framing
    compiled = (cserver.framing.COMPILED and not cserver.PURE
                and cserver.socketserver.__file__.endswith((".so", ".pyd")))
    print("cserver %s from %s (%s)" % (cserver.version, os.path.dirname(cserver.__file__),
                                       "compiled" if compiled else "NOT compiled"))
    return compiled


def run(title, argv, cwd):
    print("\n== %s\n$ %s" % (title, " ".join(argv)), flush=True)
    start = time.monotonic()
    code = subprocess.call(argv, cwd=cwd)
    print("-> %s in %.1f s" % ("ok" if code == 0 else "FAILED (exit %d)" % code,
                               time.monotonic() - start), flush=True)
    return code == 0


def main():
    if "CSERVER_PURE" in os.environ:
        sys.exit("run the typing checks without CSERVER_PURE: "
                 "stubtest must see the compiled package")
    results = {"compiled package": check_package()}
    import cserver
    # The modules that have a stub, as -m arguments (given as files, stubs in
    # site-packages confuse mypy's module resolution).
    stub_modules = []
    for path in sorted(glob.glob(os.path.join(os.path.dirname(cserver.__file__), "*.pyi"))):
        name = os.path.basename(path)[:-len(".pyi")]
        stub_modules += ["-m", "cserver" if name == "__init__" else "cserver." + name]
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--show-error-codes"]
    with tempfile.TemporaryDirectory(prefix="cserver-typing-") as scratch:
        for version in MYPY_VERSIONS:
            cache = ["--cache-dir", os.path.join(scratch, "mypy-" + version),
                     "--python-version", version]
            results["mypy sample %s" % version] = run(
                "mypy --strict, sample, Python %s" % version, mypy + cache + [SAMPLE], scratch)
            results["mypy fail files %s" % version] = run(
                "mypy --strict --warn-unused-ignores, fail files, Python %s" % version,
                mypy + cache + ["--warn-unused-ignores"] + FAIL_FILES, scratch)
        results["mypy stubs"] = run(
            "mypy --strict, the package's stubs",
            mypy + ["--cache-dir", os.path.join(scratch, "mypy-stubs")] + stub_modules, scratch)
        for version in PYRIGHT_VERSIONS:
            results["pyright %s" % version] = run(
                "pyright (strict), sample and fail files, Python %s" % version,
                [sys.executable, "-m", "pyright", "-p", PYRIGHT_CONFIG,
                 "--pythonpath", sys.executable, "--pythonversion", version,
                 SAMPLE] + FAIL_FILES, scratch)
        results["stubtest"] = run(
            "stubtest, Python %d.%d" % sys.version_info[:2],
            [sys.executable, "-m", "mypy.stubtest", "cserver"]
            + [arg for path in ALLOWLISTS for arg in ("--allowlist", path)],
            scratch)
    failed = [name for name, ok in results.items() if not ok]
    print("\ntyping: %d passed, %d failed%s" % (
        len(results) - len(failed), len(failed), (": " + ", ".join(failed)) if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
