"""``cserver.install()`` and ``cserver.shadow_path()``: the stdlib's own users
of socketserver (http.server, xmlrpc.server, wsgiref, logging.config) serving
real requests on cserver, each in a fresh interpreter.
"""
import os
import subprocess
import sys
import textwrap

import cserver

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(cserver.__file__)))


def run_python(code, pythonpath=(), timeout=60, prelude=False):
    env = dict(os.environ)
    path = list(pythonpath) + [PACKAGE_PARENT]
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(path)
    code = textwrap.dedent(code)
    if prelude:
        code = PRELUDE + code
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=timeout, cwd="/")
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, "exit %d\nstdout:\n%s\nstderr:\n%s" % (
        proc.returncode, out, err)
    assert "ResourceWarning" not in err, err
    return out


# Helpers defined in every child: serve a server on a thread, stop it.
PRELUDE = """
import sys, threading, time

def start(server):
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    return thread

def stop(server, thread):
    server.shutdown()
    thread.join(10)
    assert not thread.is_alive()
    server.server_close()
"""


def test_install_runs_the_stdlib_servers_on_cserver():
    out = run_python("""
    import cserver
    assert "socketserver" not in sys.modules
    assert cserver.install() is cserver
    assert cserver.install() is cserver  # idempotent
    import socketserver
    assert socketserver is cserver and sys.modules["socketserver"] is cserver

    # Monkeypatching through sys.modules["socketserver"] reaches the servers.
    selectors_made = []
    class RecordingSelector(socketserver._ServerSelector):
        def __init__(self):
            super().__init__()
            selectors_made.append(self)
    socketserver._ServerSelector = RecordingSelector

    import http.server, urllib.request
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"hello " + self.path.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    assert cserver.TCPServer in type(server).__mro__
    assert cserver.ThreadingMixIn in type(server).__mro__
    thread = start(server)
    try:
        url = "http://127.0.0.1:%d/path" % server.server_address[1]
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert reply.status == 200 and reply.read() == b"hello /path"
    finally:
        stop(server, thread)
    assert len(selectors_made) == 1
    print("http ok")

    import xmlrpc.server, xmlrpc.client
    server = xmlrpc.server.SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False)
    assert cserver.TCPServer in type(server).__mro__
    server.register_function(lambda a, b: a * b, "mul")
    thread = start(server)
    try:
        url = "http://127.0.0.1:%d/" % server.server_address[1]
        with xmlrpc.client.ServerProxy(url) as proxy:
            assert proxy.mul(6, 7) == 42
    finally:
        stop(server, thread)
    print("xmlrpc ok")

    from wsgiref.simple_server import make_server, WSGIRequestHandler
    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"wsgi ", environ["PATH_INFO"].encode()]
    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    assert cserver.TCPServer in type(server).__mro__
    thread = start(server)
    try:
        url = "http://127.0.0.1:%d/app" % server.server_address[1]
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert reply.read() == b"wsgi /app"
    finally:
        stop(server, thread)
    assert len(selectors_made) == 3
    print("wsgiref ok")
    """, prelude=True)
    assert out.split() == ["http", "ok", "xmlrpc", "ok", "wsgiref", "ok"]


def test_logging_config_listen_on_cserver():
    out = run_python("""
    import cserver
    cserver.install()
    import json, logging, logging.config, socket, struct, sys, time
    assert logging.config.ThreadingTCPServer is cserver.ThreadingTCPServer
    listener = logging.config.listen(0)
    listener.start()
    try:
        assert listener.ready.wait(10)
        config = json.dumps({"version": 1, "disable_existing_loggers": False,
                             "loggers": {"cserver-test": {"level": "ERROR"}}}).encode()
        with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
            sock.sendall(struct.pack(">L", len(config)) + config)
        deadline = time.monotonic() + 10
        while (logging.getLogger("cserver-test").level != logging.ERROR
               and time.monotonic() < deadline):
            time.sleep(0.01)
        assert logging.getLogger("cserver-test").level == logging.ERROR
    finally:
        logging.config.stopListening()
        listener.join(10)
    assert not listener.is_alive()
    print("logging ok")
    """)
    assert out.strip() == "logging ok"


def test_install_after_a_dependent_raises():
    out = run_python("""
    import sys
    import http.server
    import cserver
    stdlib = sys.modules["socketserver"]
    try:
        cserver.install()
    except RuntimeError as exc:
        message = str(exc)
    else:
        raise AssertionError("install() did not raise")
    assert "http.server" in message and "socketserver" in message, message
    assert sys.modules["socketserver"] is stdlib  # nothing changed
    assert cserver.install(force=True) is cserver
    assert sys.modules["socketserver"] is cserver
    assert cserver.install() is cserver  # idempotent once installed
    # What force cannot change: http.server bound the stdlib classes.
    assert stdlib.TCPServer in http.server.HTTPServer.__mro__
    print(message)
    """)
    assert "http.server" in out


def test_install_after_plain_socketserver_import_raises():
    out = run_python("""
    import socketserver, cserver
    try:
        cserver.install()
    except RuntimeError as exc:
        print(exc)
    else:
        raise AssertionError("install() did not raise")
    """)
    assert "socketserver" in out


def test_shadow_path_reaches_subprocesses():
    shadow = cserver.shadow_path()
    assert os.path.isfile(os.path.join(shadow, "socketserver.py"))
    out = run_python("""
    import socketserver, cserver
    assert socketserver is cserver
    import http.server, urllib.request
    assert cserver.TCPServer in http.server.HTTPServer.__mro__

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"shadowed"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hello)
    thread = start(server)
    try:
        url = "http://127.0.0.1:%d/" % server.server_address[1]
        with urllib.request.urlopen(url, timeout=10) as reply:
            print(reply.read().decode())
    finally:
        stop(server, thread)
    """, pythonpath=[shadow], prelude=True)
    assert out.strip() == "shadowed"
