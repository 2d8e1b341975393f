# Timers (included by _loop.pyx).  The heap orders (when, seq, handle)
# tuples: handles themselves are never compared.


cdef class TimerHandle:
    """Returned by ``call_later``/``call_at``; ``cancel()`` it to drop it."""

    def cancel(self):
        self.cancelled = True
        self.fn = None
        self.args = None

    def __repr__(self):
        return "<TimerHandle when=%r%s>" % (self.when, " cancelled" if self.cancelled else "")


@cython.final
cdef class Timers:
    """The loop's timers: a heap of (when, seq, TimerHandle)."""

    def __cinit__(self):
        self.heap = []

    cdef TimerHandle push(self, double when, object fn, tuple args):
        cdef TimerHandle h = TimerHandle.__new__(TimerHandle)
        h.when = when
        h.fn = fn
        h.args = args
        self.seq += 1
        heapq.heappush(self.heap, (when, self.seq, h))
        return h

    cdef double next_when(self) except? -1.0:
        """When the first timer is due (1e18: none)."""
        return (<tuple>self.heap[0])[0] if self.heap else 1e18

    cdef int run_due(self, Loop loop) except -1:
        """Run every timer due at ``loop.now``, under the loop's guarded
        call (a cancelled one is dropped)."""
        cdef TimerHandle h
        while self.heap and (<tuple>self.heap[0])[0] <= loop.now:
            h = (<tuple>heapq.heappop(self.heap))[2]
            if h.cancelled:
                continue
            fn, args = h.fn, h.args
            h.fn = None
            h.args = None
            loop._call_guarded(fn, args)
        return 0


def _check_callable(method, fn):
    # As asyncio does: a callback that is not callable fails at the call
    # that schedules it, not later inside the loop.
    if not callable(fn):
        raise TypeError("%s() needs a callable, got %r" % (method, fn))
