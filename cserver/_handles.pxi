# The handle base and the waker (included by _loop.pyx).


cdef class Handle:
    """A file descriptor the loop polls (internal).  The loop's only call
    into a handle is ``on_events(events)``: what happens next is the
    handle's."""

    def __cinit__(self):
        self.fd = -1

    def __init__(self):
        raise TypeError("%s objects are created by the event loop" % type(self).__name__)

    cdef int on_events(self, uint32_t ev) except -1:
        return 0


@cython.final
cdef class Waker(Handle):
    """The wake-up pipe: ``call_soon_threadsafe``, ``stop()`` and (on the
    main thread, through ``signal.set_wakeup_fd``) signals write a byte to
    it; the loop drains it."""

    def __cinit__(self):
        self.wfd = -1

    def __dealloc__(self):
        if self.fd >= 0:
            c_close(self.fd)
        if self.wfd >= 0:
            c_close(self.wfd)

    cdef int on_events(self, uint32_t ev) except -1:
        cdef char drain[256]
        while c_read(self.fd, drain, sizeof(drain)) > 0:
            pass
        return 0

    cdef int wake(self) except -1:
        # The descriptor is read and written with the GIL held: a C write(2)
        # on the non-blocking pipe never blocks, so close() (which holds the
        # GIL too) cannot run in between, and a wake-up can never reach a
        # descriptor number that close() released and the process reused.
        # (os.write released the GIL between the two.)  EAGAIN: a wake-up is
        # pending anyway; -1: closed, the loop is gone.  A free-threaded
        # build needs a lock here (docs/freethreading.md).
        cdef char zero = 0
        cdef int fd = self.wfd
        if fd >= 0:
            while c_write(fd, &zero, 1) < 0 and errno == EINTR:
                pass
        return 0

    def install_signal_wakeup(self):
        """On the main thread: make CPython's C signal handler write to the
        wake pipe, so that a signal wakes the poller wherever it lands (just
        before the wait, or in another thread, which never interrupts this
        one's wait) and its Python handler runs at the next pass.  Returns
        the wake-up fd to restore, or None where nothing was installed."""
        if threading.current_thread() is not threading.main_thread():
            return None
        try:
            return signal.set_wakeup_fd(self.wfd, warn_on_full_buffer=False)
        except (ValueError, OSError):
            return None

    def close(self):
        if self.fd >= 0:
            c_close(self.fd)
            self.fd = -1
        if self.wfd >= 0:
            c_close(self.wfd)
            self.wfd = -1


cdef Waker _new_waker(Loop loop):
    cdef Waker w = Waker.__new__(Waker)
    r, wr = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(wr, False)
    w.loop = loop
    w.fd = r
    w.wfd = wr
    return w
