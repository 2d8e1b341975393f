"""CPython's own suites of socketserver's users, on cserver.

``test_httpservers``, ``test_xmlrpc`` and ``test_wsgiref`` of the running
interpreter run unmodified in a fresh interpreter whose ``socketserver`` is
cserver (``cserver.shadow_path()`` first on ``PYTHONPATH``, as the README
tells users): every test that runs must pass, and the servers they start must
really be cserver's classes.
"""
import json
import os
import subprocess
import sys

import pytest

import cserver

RUNNER = r"""
import importlib, json, sys, unittest
import socketserver, cserver
assert socketserver is cserver, socketserver
name = sys.argv[1]
module = importlib.import_module("test." + name)
result = unittest.TextTestRunner(stream=open("/dev/null", "w"), verbosity=0).run(
    unittest.defaultTestLoader.loadTestsFromModule(module))
users = {"test_httpservers": "http.server", "test_xmlrpc": "xmlrpc.server",
         "test_wsgiref": "wsgiref.simple_server"}
user = importlib.import_module(users[name])
bases = [c for klass in vars(user).values() if isinstance(klass, type)
         for c in klass.__mro__ if c.__name__ == "TCPServer"]
print("DEPENDENT " + json.dumps({
    "run": result.testsRun,
    "problems": [t.id() for t, _ in result.failures + result.errors]
                + [t.id() for t in result.unexpectedSuccesses],
    "skipped": [(t.id(), reason) for t, reason in result.skipped],
    "tcpserver_is_cserver": bool(bases) and all(c is cserver.TCPServer for c in bases),
}))
"""


@pytest.mark.parametrize("suite", ["test_httpservers", "test_xmlrpc", "test_wsgiref"])
def test_stdlib_users_suites_pass_on_cserver(suite, tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [cserver.shadow_path()] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, "-c", RUNNER, suite], cwd=str(tmp_path), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("DEPENDENT ")]
    assert lines, proc.stderr[-4000:]
    report = json.loads(lines[-1][len("DEPENDENT "):])
    assert report["problems"] == [], proc.stderr[-6000:]
    assert report["run"] > 30
    assert report["tcpserver_is_cserver"] is True
    for test_id, reason in report["skipped"]:
        assert "socketserver" not in reason and "cserver" not in reason, (test_id, reason)
    assert proc.returncode == 0, proc.stderr[-2000:]
