# The pollers (included by _loop.pyx).  Every difference between epoll and
# selectors lives here.  Interest masks are epoll's bits (EPOLLIN/EPOLLOUT)
# for every poller; wait() fills ``evs`` (an array of epoll_event, whatever
# the poller) and returns how many there are.
#
#   add(fd, events)         start watching fd
#   modify(fd, old, new)    change the mask of a watched fd; the fd stays
#                           watched even with an empty mask where the poller
#                           can (epoll still reports HUP/ERR: no DEL/ADD churn
#                           when a connection pauses)
#   remove(fd, old)         stop watching fd (``old``: its current mask)
#   wait(timeout_ms)        block until events or the timeout (-1: none); the
#                           GIL is released while blocked


cdef class Poller:
    """The base of the pollers (internal): holds the event array."""

    def __cinit__(self, int max_events=512):
        self.max_events = max(max_events, 16)
        self.evs = PyMem_Malloc(sizeof(epoll_event) * self.max_events)
        if self.evs == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self.evs != NULL:
            PyMem_Free(self.evs)
            self.evs = NULL

    def __init__(self, *args):
        raise TypeError("internal")

    cdef int add(self, int fd, uint32_t events) except -1:
        raise NotImplementedError

    cdef int modify(self, int fd, uint32_t old, uint32_t new) except -1:
        raise NotImplementedError

    cdef int remove(self, int fd, uint32_t old) except -1:
        raise NotImplementedError

    cdef int wait(self, int timeout_ms) except -1:
        raise NotImplementedError

    cdef int close(self) except -1:
        return 0


@cython.final
cdef class EpollPoller(Poller):
    """Linux epoll, level-triggered; the events land in C (no Python object
    per event)."""

    def __cinit__(self, int max_events=512):
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise _oserror(errno)

    def __dealloc__(self):
        if self.epfd >= 0:
            c_close(self.epfd)

    cdef int _ctl(self, int op, int fd, uint32_t events) except -1:
        cdef epoll_event ev
        ev.events = events
        ev.data.u64 = 0
        ev.data.fd = fd
        if epoll_ctl(self.epfd, op, fd, &ev) < 0:
            raise _oserror(errno)
        return 0

    cdef int add(self, int fd, uint32_t events) except -1:
        return self._ctl(EPOLL_CTL_ADD, fd, events)

    cdef int modify(self, int fd, uint32_t old, uint32_t new) except -1:
        return self._ctl(EPOLL_CTL_MOD, fd, new)

    cdef int remove(self, int fd, uint32_t old) except -1:
        # the fd may be about to close: a failure is of no interest
        epoll_ctl(self.epfd, EPOLL_CTL_DEL, fd, NULL)
        return 0

    cdef int wait(self, int timeout_ms) except -1:
        cdef int n, err
        cdef epoll_event *evs = <epoll_event *>self.evs
        with nogil:
            n = epoll_wait(self.epfd, evs, self.max_events, timeout_ms)
        if n < 0:
            err = errno
            if err != EINTR:
                raise _oserror(err)
            PyErr_CheckSignals()
            n = 0
        return n

    cdef int close(self) except -1:
        if self.epfd >= 0:
            c_close(self.epfd)
            self.epfd = -1
        return 0


@cython.final
cdef class SelectorsPoller(Poller):
    """``selectors.DefaultSelector()``: where epoll does not exist, or when
    forced.  A selector cannot hold an empty mask: the fd is unregistered
    then, and registered again when its mask is not empty."""

    def __cinit__(self, int max_events=512):
        import selectors
        self.selector = selectors.DefaultSelector()

    cdef int add(self, int fd, uint32_t events) except -1:
        return self.modify(fd, 0, events)

    cdef int modify(self, int fd, uint32_t old, uint32_t new) except -1:
        cdef int mask = (1 if new & EPOLLIN else 0) | (2 if new & EPOLLOUT else 0)
        cdef int was = (1 if old & EPOLLIN else 0) | (2 if old & EPOLLOUT else 0)
        if was == 0:
            if mask:
                self.selector.register(fd, mask)
        elif mask == 0:
            self.selector.unregister(fd)
        elif mask != was:
            self.selector.modify(fd, mask)
        return 0

    cdef int remove(self, int fd, uint32_t old) except -1:
        return self.modify(fd, old, 0)

    cdef int wait(self, int timeout_ms) except -1:
        cdef epoll_event *evs
        cdef int n = 0
        cdef void *grown
        ready = self.selector.select(None if timeout_ms < 0 else timeout_ms / 1000.0)
        if len(ready) > self.max_events:
            grown = PyMem_Realloc(self.evs, sizeof(epoll_event) * len(ready))
            if grown == NULL:
                raise MemoryError()
            self.evs = grown
            self.max_events = len(ready)
        evs = <epoll_event *>self.evs
        for key, mask in ready:
            evs[n].data.u64 = 0
            evs[n].data.fd = key.fd
            evs[n].events = (EPOLLIN if mask & 1 else 0) | (EPOLLOUT if mask & 2 else 0)
            n += 1
        return n

    cdef int close(self) except -1:
        if self.selector is not None:
            self.selector.close()
            self.selector = None
        return 0
