"""One source for each default and each environment switch, and a command
line that uses only public API.

- The multiplexing servers' class attributes are the defaults: the command
  line's options take theirs from them, and the option table of
  ``docs/selectorserver.md`` states the same values.
- ``CSERVER_PURE`` and ``CSERVER_LOOP`` are read by one module
  (``cserver/_env.py``); every other module imports what it needs.
- ``cserver/__main__.py`` reaches no private name of the package.
- The server hands its loop and its supervisor its own ``logger``.
"""
import ast
import logging
import os
import re

import pytest

import cserver
from cserver import __main__ as cli
from cserver import selectorserver

# The source tree's files (tox runs the tests on an installed package, which
# has neither docs/ nor every source)
TREE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE_DIR = os.path.join(TREE, "cserver")
DOCS = os.path.join(TREE, "docs", "selectorserver.md")
SERVER = cserver.SelectorServer


def _echo_defaults():
    parser = cli._parser()
    args = parser.parse_args(["echo"])
    return vars(args)


@pytest.mark.parametrize("option", ["workers", "idle_timeout", "max_connections",
                                    "drain_timeout", "loop"])
def test_cli_defaults_are_the_servers(option, monkeypatch):
    assert _echo_defaults()[option] == getattr(SERVER, option)
    # ... read from the class, not written again: another class value shows
    sentinel = {"workers": 3, "idle_timeout": 7.5, "max_connections": 11,
                "drain_timeout": 0.25, "loop": "selectors"}[option]
    monkeypatch.setattr(SERVER, option, sentinel)
    assert _echo_defaults()[option] == sentinel


def test_cli_help_states_the_servers_defaults(monkeypatch, capsys):
    monkeypatch.setattr(SERVER, "drain_timeout", 2.5)
    monkeypatch.setattr(SERVER, "workers", 4)
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["echo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default 2.5)" in text and "(default 4)" in text


def _docs_defaults():
    with open(DOCS, encoding="utf-8") as f:
        text = f.read()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\| `(\w+)`(?: / `(\w+)`|, `(\w+)`)? \| ([^|]+) \|", line)
        if m:
            names = [n for n in m.group(1, 2, 3) if n]
            values = [v.strip() for v in re.split(r" / |, ", m.group(4).strip())]
            rows.update(zip(names, values))
    return rows


def _parse(text):
    m = re.fullmatch(r"(\d+) KiB", text)
    if m:
        return int(m.group(1)) * 1024
    return ast.literal_eval(text)


@pytest.mark.parametrize("option", ["request_queue_size", "allow_reuse_address",
                                    "allow_reuse_port", "idle_timeout", "first_byte_timeout",
                                    "frame_timeout", "max_connections", "high_water",
                                    "drain_timeout", "tcp_nodelay", "read_size", "accept_batch",
                                    "workers"])
def test_docs_table_states_the_class_defaults(option):
    rows = _docs_defaults()
    assert option in rows, sorted(rows)
    assert _parse(rows[option]) == getattr(SERVER, option)


def test_docs_table_lists_every_option():
    assert set(_docs_defaults()) == set(selectorserver._OPTIONS)


def _sources():
    for name in sorted(os.listdir(PACKAGE_DIR)):
        if name.endswith((".py", ".pyx")):
            with open(os.path.join(PACKAGE_DIR, name), encoding="utf-8") as f:
                yield name, f.read()


@pytest.mark.parametrize("switch", ["CSERVER_PURE", "CSERVER_LOOP"])
def test_each_environment_switch_is_read_by_one_module(switch):
    # the variable's name as a string in code (not in prose): where it is read
    readers = []
    for name, text in _sources():
        if name.endswith(".py"):
            named = any(isinstance(node, ast.Constant) and node.value == switch
                        for node in ast.walk(ast.parse(text)))
        else:
            named = re.search(r"[\"']%s[\"']" % switch, text) is not None
        if named:
            readers.append(name)
    assert readers == ["_env.py"]


def test_the_command_line_uses_only_public_names():
    with open(os.path.join(PACKAGE_DIR, "__main__.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    cserver_names = {"selectorserver", "server", "cserver"}
    private = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or "cserver" in (node.module or "")):
            private += [a.name for a in node.names if a.name.startswith("_")]
            if (node.module or "").startswith("_") or "._" in (node.module or ""):
                private.append(node.module)
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__") and isinstance(node.value, ast.Name) \
                and node.value.id in cserver_names:
            private.append("%s.%s" % (node.value.id, node.attr))
    assert private == []


def test_public_names_the_command_line_uses():
    assert selectorserver.resolve_loop("selectors") == "selectors"
    assert selectorserver.resolve_loop(None) in ("epoll", "selectors")
    with pytest.raises(ValueError, match="'kqueue'"):
        selectorserver.resolve_loop("kqueue")
    assert "stop_on_signal" in vars(SERVER)


def test_resolve_loop_reads_the_environment_late(monkeypatch):
    monkeypatch.setenv("CSERVER_LOOP", " Selectors ")
    assert selectorserver.resolve_loop() == "selectors"
    monkeypatch.setenv("CSERVER_LOOP", "nope")
    with pytest.raises(ValueError):
        selectorserver.resolve_loop()
    assert selectorserver.resolve_loop("selectors") == "selectors"  # the option wins


class _Echo(cserver.FrameHandler):
    def frame_received(self, frame):
        self.send_frame(frame)


def test_the_server_logs_on_its_logger(caplog):
    mine = logging.getLogger("test.defaults.server")

    class Server(cserver.SelectorTCPServer):
        logger = mine

    server = Server(("127.0.0.1", 0), _Echo)
    try:
        with caplog.at_level(logging.INFO, logger=mine.name):
            server.stop_on_signal(15)
            server.stop_on_signal(15)
    finally:
        server.server_close()
    assert [r.name for r in caplog.records] == [mine.name, mine.name]
    assert "SIGTERM: stopping" in caplog.records[0].getMessage()


def test_the_loop_and_handle_error_log_on_the_servers_logger(caplog):
    import socket
    import struct
    import threading

    mine = logging.getLogger("test.defaults.loop")

    class Boom(cserver.FrameHandler):
        def frame_received(self, frame):
            raise RuntimeError("boom")

    class Server(cserver.SelectorTCPServer):
        logger = mine

    for handler, payload, words in (
            (_Echo, struct.pack("!I", cserver.DEFAULT_MAX_FRAME_SIZE + 1), "closing connection"),
            (Boom, struct.pack("!I", 1) + b"x", "Exception occurred")):
        caplog.clear()
        server = Server(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever)
        with caplog.at_level(logging.INFO, logger=mine.name):
            thread.start()
            try:
                with socket.create_connection(server.server_address, timeout=10) as c:
                    c.sendall(payload)
                    assert c.recv(1) == b""  # the server closed it
            finally:
                server.shutdown()
                thread.join(10)
                server.server_close()
        assert not thread.is_alive()
        assert any(r.name == mine.name and words in r.getMessage() for r in caplog.records), \
            [(r.name, r.getMessage()) for r in caplog.records]
