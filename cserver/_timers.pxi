# Timer handles (included by _loop.pyx).  The heap orders (when, seq,
# handle) tuples: handles themselves are never compared.


cdef class TimerHandle:
    """Returned by ``call_later``/``call_at``; ``cancel()`` it to drop it."""
    cdef readonly double when
    cdef object fn
    cdef tuple args
    cdef readonly bint cancelled

    def cancel(self):
        self.cancelled = True
        self.fn = None
        self.args = None

    def __repr__(self):
        return "<TimerHandle when=%r%s>" % (self.when, " cancelled" if self.cancelled else "")


def _check_callable(method, fn):
    # As asyncio does: a callback that is not callable fails at the call
    # that schedules it, not later inside the loop.
    if not callable(fn):
        raise TypeError("%s() needs a callable, got %r" % (method, fn))
