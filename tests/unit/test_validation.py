"""Fail early: options, handler classes and timer arguments are refused
where the mistake is made, with a message naming the option and the value.

- the multiplexing server's options at construction (before any socket
  exists), and again when its loop is built if the instance changed them;
- handler families: a socketserver-style handler on the multiplexing server,
  a loop handler on a socketserver-style server, a stream handler on UDP;
- call_soon/call_later/call_at: non-callables and NaN at call time, as
  asyncio does.
"""
import math
import threading

import pytest

import cserver
from cserver import selectorserver

TIMEOUT = 10.0


class Echo(cserver.FrameHandler):
    def frame_received(self, frame):
        self.send_frame(frame)


class Raw(cserver.ConnectionHandler):
    pass


class Dgram(cserver.DatagramHandler):
    pass


BAD_OPTIONS = [
    ("workers", 0, ValueError), ("workers", -1, ValueError), ("workers", 1.0, TypeError),
    ("workers", True, TypeError), ("workers", "2", TypeError),
    ("read_size", -1, ValueError), ("read_size", 0, ValueError), ("read_size", 100, ValueError),
    ("idle_timeout", -1, ValueError), ("idle_timeout", 0, ValueError),
    ("idle_timeout", math.nan, ValueError), ("idle_timeout", "5", TypeError),
    ("first_byte_timeout", 0, ValueError), ("first_byte_timeout", -1, ValueError),
    ("first_byte_timeout", math.nan, ValueError), ("first_byte_timeout", "10", TypeError),
    ("frame_timeout", 0, ValueError), ("frame_timeout", math.inf * 0, ValueError),
    ("frame_timeout", "30", TypeError),
    ("max_connections", 0, ValueError), ("max_connections", -3, ValueError),
    ("max_connections", 2.5, TypeError),
    ("high_water", -1, ValueError), ("low_water", -1, ValueError),
    ("low_water", 1 << 20, ValueError),  # above the default high_water
    ("drain_timeout", -0.5, ValueError), ("drain_timeout", math.nan, ValueError),
    ("drain_timeout", None, TypeError),
    ("accept_batch", 0, ValueError), ("request_queue_size", -1, ValueError),
    ("loop", "kqueue", ValueError), ("buffer_pool", "a pool", TypeError),
]


@pytest.mark.parametrize("name, value, error", BAD_OPTIONS,
                         ids=["%s=%r" % (n, v) for n, v, _ in BAD_OPTIONS])
def test_bad_option_fails_at_construction(name, value, error, fd_count):
    before = fd_count()
    with pytest.raises(error) as info:
        cserver.SelectorTCPServer(("127.0.0.1", 0), Echo, **{name: value})
    message = str(info.value)
    assert message.startswith(name + " must be "), message
    assert message.endswith("got %r" % (value,)), message
    assert fd_count() == before  # no socket was made


@pytest.mark.parametrize("name, value, error", BAD_OPTIONS[:6],
                         ids=["%s=%r" % (n, v) for n, v, _ in BAD_OPTIONS[:6]])
def test_bad_class_attribute_fails_at_construction(name, value, error):
    server_class = type("Server", (cserver.SelectorTCPServer,), {name: value})
    with pytest.raises(error, match=name):
        server_class(("127.0.0.1", 0), Echo)


def test_bad_option_set_on_the_instance_fails_before_serving():
    server = cserver.SelectorTCPServer(("127.0.0.1", 0), Echo)
    errors = []

    def run():
        try:
            server.serve_forever()
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    try:
        server.read_size = -1
        thread.start()
        thread.join(TIMEOUT)
        if thread.is_alive():  # it accepted the value: stop it, then fail
            server.shutdown()
        assert [str(e) for e in errors] == ["read_size must be an int >= 4096, got -1"]
        server.read_size = 1 << 16
        server.idle_timeout = -1
        with pytest.raises(ValueError, match=r"idle_timeout .*got -1"):
            server.call_later(1, print)
    finally:
        thread.join(TIMEOUT)
        server.server_close()


@pytest.mark.parametrize("options", [
    {}, {"workers": 1}, {"read_size": 4096}, {"idle_timeout": None}, {"idle_timeout": 0.5},
    {"max_connections": None}, {"max_connections": 1}, {"drain_timeout": 0},
    {"drain_timeout": math.inf}, {"high_water": 0, "low_water": 0},
    {"high_water": 10, "low_water": 10}, {"loop": None}, {"loop": "selectors"},
    # the loop's decoders are compiled: their pool is too (in pure mode as well)
    {"buffer_pool": selectorserver._framing.BufferPool()}, {"request_queue_size": 0}])
def test_good_options_are_accepted(options):
    cserver.SelectorTCPServer(("127.0.0.1", 0), Echo, **options).server_close()


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="'max_conections'"):
        cserver.SelectorTCPServer(("127.0.0.1", 0), Echo, max_conections=3)


@pytest.mark.parametrize("attrs, error, word", [
    ({"max_frame_size": -1}, ValueError, "max_frame_size"),
    ({"length_size": 5, "frame_format": None}, ValueError, "length_size"),
    ({"frame_format": "!x"}, ValueError, "'!x'"),
])
def test_bad_framing_fails_at_construction(attrs, error, word, fd_count):
    handler = type("Bad", (Echo,), attrs)
    before = fd_count()
    with pytest.raises(error, match=word):
        cserver.SelectorTCPServer(("127.0.0.1", 0), handler)
    assert fd_count() == before


# -- handler families ----------------------------------------------------------------


def test_stdlib_style_handler_on_the_multiplexing_server(stdlib_ss, fd_count):
    before = fd_count()
    for handler in (cserver.StreamRequestHandler, cserver.BaseRequestHandler,
                    stdlib_ss.StreamRequestHandler, cserver.FramedRequestHandler):
        with pytest.raises(TypeError) as info:
            cserver.SelectorTCPServer(("127.0.0.1", 0), handler)
        message = str(info.value)
        assert "SelectorTCPServer needs a cserver.ConnectionHandler" in message
        assert handler.__qualname__ in message and "socketserver request handler" in message
    assert fd_count() == before


def test_datagram_handler_on_a_stream_server_and_the_reverse():
    with pytest.raises(TypeError, match=r"needs a cserver.ConnectionHandler.*Dgram"):
        cserver.SelectorTCPServer(("127.0.0.1", 0), Dgram)
    for handler in (Echo, Raw, cserver.DatagramRequestHandler):
        with pytest.raises(TypeError, match=r"SelectorUDPServer needs a cserver.DatagramHandler"):
            cserver.SelectorUDPServer(("127.0.0.1", 0), handler)
    cserver.SelectorUDPServer(("127.0.0.1", 0), Dgram).server_close()


def test_multiplexing_server_still_takes_any_factory():
    # A callable that returns a handler (not a class) is not second-guessed.
    def factory(transport, client_address, server):
        return Echo(transport, client_address, server)

    cserver.SelectorTCPServer(("127.0.0.1", 0), factory).server_close()
    with pytest.raises(TypeError, match="RequestHandlerClass"):
        cserver.SelectorTCPServer(("127.0.0.1", 0), None)


@pytest.mark.parametrize("server_name", ["TCPServer", "ThreadingTCPServer", "ThreadPoolTCPServer",
                                         "UDPServer", "UnixStreamServer"])
@pytest.mark.parametrize("handler", [Echo, Raw, Dgram])
def test_loop_handler_on_a_socketserver_style_server(server_name, handler, short_tmpdir,
                                                     fd_count):
    server_class = getattr(cserver, server_name)
    address = short_tmpdir + "/s" if "Unix" in server_name else ("127.0.0.1", 0)
    before = fd_count()
    with pytest.raises(TypeError) as info:
        server_class(address, handler)
    message = str(info.value)
    assert message.startswith(server_name + " needs a socketserver request handler")
    assert handler.__qualname__ in message
    assert fd_count() == before


def test_socketserver_style_servers_accept_what_the_stdlib_accepts(ss):
    # The stdlib takes any callable, or anything at all, as the handler at
    # construction; cserver refuses only its own loop handlers.
    def handler(request, client_address, server):
        pass

    for value in (handler, None, 42, ss.StreamRequestHandler, ss.DatagramRequestHandler):
        ss.TCPServer(("127.0.0.1", 0), value).server_close()


# -- timers -------------------------------------------------------------------------


@pytest.fixture
def mux():
    server = cserver.SelectorTCPServer(("127.0.0.1", 0), Echo)
    yield server
    server.server_close()


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at"])
@pytest.mark.parametrize("fn", [None, 42, "print"])
def test_timers_reject_non_callables(mux, method, fn):
    args = () if method.startswith("call_soon") else (1.0,)
    with pytest.raises(TypeError, match=r"%s\(\) needs a callable, got %r" % (method, fn)):
        getattr(mux, method)(*(args + (fn,)))
    assert mux.stats()["timers"] == 0


@pytest.mark.parametrize("method", ["call_later", "call_at"])
def test_timers_reject_nan_and_later_timers_still_fire(mux, method):
    with pytest.raises(ValueError, match="nan"):
        getattr(mux, method)(math.nan, print)
    fired = []
    mux.call_later(0.0, fired.append, 1)
    mux.call_later(0.01, fired.append, 2)
    mux.call_later(0.02, mux.shutdown)
    thread = threading.Thread(target=mux.serve_forever)
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert fired == [1, 2]


def test_infinite_delay_is_a_timer_that_never_fires(mux):
    handle = mux.call_later(math.inf, print)
    assert mux.stats()["timers"] == 1
    handle.cancel()


def test_selectorserver_all_is_unchanged():
    # the validation helpers are private
    assert "SelectorServer" in selectorserver.__all__
    assert not [n for n in selectorserver.__all__ if n.startswith("_")]
