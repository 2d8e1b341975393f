"""Regression tests for what the free-threading audit (docs/freethreading.md)
found that can be fixed and shown under the GIL.
"""
import os

import pytest

from cserver import _loop

KINDS = ["selectors"] + (["epoll"] if _loop.HAVE_EPOLL else [])


class _RaceOs:
    """Stands in for the ``os`` module seen by cserver._loop.  Its write()
    plays what another thread may do while ``os.write`` has released the
    GIL: close the loop, then open a pipe whose write end gets the number
    the wake-up pipe's write end had (dup2: what any open() in the process
    may do with the lowest free number)."""

    def __init__(self, loop):
        self.loop = loop
        self.reused = None

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        self.loop.close()
        r, w = os.pipe()
        os.dup2(w, fd)
        os.close(w)
        self.reused = (r, fd)
        return os.write(fd, data)


@pytest.mark.parametrize("kind", KINDS)
def test_wake_racing_close_never_writes_into_a_reused_descriptor(kind, monkeypatch):
    """call_soon_threadsafe() (another thread) racing Loop.close() (the loop's
    thread): the wake-up byte must never land in whatever file reuses the
    wake-up pipe's descriptor number after close()."""
    loop = _loop.Loop(kind)
    race = _RaceOs(loop)
    monkeypatch.setattr(_loop, "os", race)
    calls = []
    try:
        loop.call_soon_threadsafe(calls.append, "called")
        monkeypatch.undo()
        if race.reused is None:
            # No window to race in (the fix): the wake-up and the callback
            # still work, the loop runs it and stops.
            loop.call_soon_threadsafe(loop.stop)
            loop.run()
            assert calls == ["called"]
    finally:
        monkeypatch.undo()
        loop.close()
        if race.reused is not None:
            r, w = race.reused
            os.set_blocking(r, False)
            try:
                stray = os.read(r, 16)
            except BlockingIOError:
                stray = b""
            os.close(r)
            os.close(w)
            assert stray == b"", "the wake-up byte went into an unrelated pipe"


@pytest.mark.parametrize("kind", KINDS)
def test_wake_after_close_is_harmless(kind):
    loop = _loop.Loop(kind)
    loop.close()
    r, w = os.pipe()
    try:
        # refused (it would never run), and nothing is written anywhere
        with pytest.raises(RuntimeError, match="closed loop"):
            loop.call_soon_threadsafe(lambda: None)
        loop.stop()
        os.set_blocking(r, False)
        with pytest.raises(BlockingIOError):
            os.read(r, 16)
    finally:
        os.close(r)
        os.close(w)
