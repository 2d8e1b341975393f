"""The deploy tests' own rules: a missing program skips only outside CI
(when ``CI`` is set it fails), and a balancer that cannot bind is started
again on another port."""
import socket

import pytest


def test_a_missing_prerequisite_fails_in_ci_and_skips_elsewhere(need, monkeypatch):
    module = need.missing.__globals__
    monkeypatch.setitem(module, "CI", True)
    with pytest.raises(pytest.fail.Exception, match="CI is set but"):
        need.program("csrv-no-such-program")
    monkeypatch.setitem(module, "CI", False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        need.program("csrv-no-such-program")


def test_a_frontend_port_taken_meanwhile_is_retried(haproxy, need, monkeypatch):
    """The first port the fixture picks is taken by someone else before
    HAProxy binds it: HAProxy exits with a bind error and the fixture starts
    it again on another port."""
    module = need.missing.__globals__
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    picks = [taken.getsockname()[1]]
    real = module["_free_port"]
    monkeypatch.setitem(module, "_free_port", lambda host="127.0.0.1": picks.pop()
                        if picks else real(host))
    try:
        balancer = haproxy("""
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server s1 127.0.0.1:9 disabled
""")
        assert balancer.port != taken.getsockname()[1]
        assert "Name: HAProxy" in balancer.admin("show info")
    finally:
        taken.close()
