"""Run this interpreter's own ``test/test_socketserver.py`` on cserver.

Run as a script (a fresh process, so that nothing imported the stdlib
socketserver before): binds ``sys.modules["socketserver"]`` to cserver,
imports CPython's test module unmodified from the stdlib's ``test`` package,
runs it with unittest and prints one JSON line with the counts, the ids of
the tests that did not pass, and which module the test file really used.
"""
import json
import sys
import unittest

import cserver

if "socketserver" in sys.modules:
    raise SystemExit("the stdlib socketserver was imported before the oracle bound cserver")
cserver.install()

from test import test_socketserver  # noqa: E402  (CPython's own suite)


def _test_ids(suite):
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            yield from _test_ids(test)
        else:
            yield test.id()


def main():
    suite = unittest.defaultTestLoader.loadTestsFromModule(test_socketserver)
    ids = sorted(_test_ids(suite))
    stream = open("/dev/null", "w") if "-q" in sys.argv else sys.stderr
    result = unittest.TextTestRunner(stream=stream, verbosity=2).run(suite)
    report = {
        "python": "%d.%d.%d" % sys.version_info[:3],
        "run": result.testsRun,
        "tests": ids,
        "failures": [t.id() for t, _ in result.failures],
        "errors": [t.id() for t, _ in result.errors],
        "skipped": [t.id() for t, _ in result.skipped],
        "unexpected_successes": [t.id() for t in result.unexpectedSuccesses],
        "socketserver_module": test_socketserver.socketserver.__name__,
        "socketserver_is_cserver": test_socketserver.socketserver is cserver,
        "compat_file": sys.modules["cserver.socketserver"].__file__,
    }
    print("ORACLE " + json.dumps(report))
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
