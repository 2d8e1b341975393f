"""The oracle: CPython's own test_socketserver.py, unmodified, on cserver.

The suite runs in a fresh interpreter (tests/compat/oracle_runner.py) so
that ``sys.modules["socketserver"]`` is bound to cserver before anything
imports the stdlib module.  Every test must pass, none skipped: 27 of 27 on
3.9 to 3.14, 28 of 28 on 3.15 (which adds TestModule.test_deprecated__version__).
"""
import importlib.machinery
import json
import os
import subprocess
import sys

import pytest

import cserver

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "oracle_runner.py")
#: The number of tests in the running interpreter's own test_socketserver.py
#: (counted in CPython's files of every release the matrix runs: 3.9.18,
#: 3.10.13, 3.11.7, 3.12.1, 3.13.0, 3.14.10 have 27, 3.15.2 has 28).
EXPECTED_TESTS = 28 if sys.version_info >= (3, 15) else 27


@pytest.fixture(scope="module")
def oracle_report():
    proc = subprocess.run(
        [sys.executable, RUNNER],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300,
        universal_newlines=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ORACLE ")]
    assert lines, "the oracle printed no report:\n%s\n%s" % (proc.stdout[-3000:],
                                                            proc.stderr[-6000:])
    report = json.loads(lines[-1][len("ORACLE "):])
    report["returncode"] = proc.returncode
    report["stderr"] = proc.stderr
    return report


def test_oracle_runs_every_test_and_all_pass(oracle_report):
    problems = (oracle_report["failures"] + oracle_report["errors"]
                + oracle_report["unexpected_successes"])
    assert problems == [], oracle_report["stderr"][-8000:]
    assert oracle_report["skipped"] == []
    assert oracle_report["run"] == EXPECTED_TESTS
    assert len(oracle_report["tests"]) == EXPECTED_TESTS
    version_test = "test.test_socketserver.TestModule.test_deprecated__version__"
    assert (version_test in oracle_report["tests"]) is (sys.version_info >= (3, 15))
    assert oracle_report["returncode"] == 0


def test_oracle_really_used_cserver(oracle_report):
    assert oracle_report["socketserver_is_cserver"] is True
    assert oracle_report["socketserver_module"] == "cserver"
    compat_file = oracle_report["compat_file"]
    compiled = compat_file.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert compiled == (not cserver.PURE), compat_file


def test_oracle_python_is_this_python(oracle_report):
    assert oracle_report["python"] == "%d.%d.%d" % sys.version_info[:3]
