"""The process supervisor of a multiplexing server with ``workers > 1``.

``Supervisor`` forks N worker processes, restarts one that exits (with a
back-off when it keeps dying young), and stops them all on SIGTERM/SIGINT or
when its owner asks: each worker gets SIGTERM and drains for up to
``drain_timeout`` seconds, a second stop signal cuts that short, and a worker
still running 2 s after the deadline is killed.  It knows nothing of servers:
its owner hands it callables (``SelectorServer`` hands it its own worker
body, its stop flag and its signal handler).

Stop signals.  CPython runs a Python signal handler only when something
calls ``PyErr_CheckSignals()`` (the interpreter between bytecodes, or a C
call that an EINTR cut short); compiled code between two C calls does
neither, and a signal the kernel delivers to another thread does not
interrupt the main thread's wait.  A SIGTERM caught at such a moment used to
stay pending until a second signal.  So the supervisor does not depend on
its handler running: its waits are a ``select()`` on a pipe installed as the
signal wake-up fd (``signal.set_wakeup_fd``), into which the C-level handler
writes each signal's number whatever the process was doing, and it counts
the stop signals from there.  Every SIGINT/SIGTERM is seen within one wait
(``TICK``) of its arrival.  Plain Python (not compiled): it runs a few times
per second at most.
"""

import os
import select
import signal
import sys
import threading
import time

__all__ = ["Supervisor"]

#: the longest a supervisor wait lasts (it polls its workers this often)
TICK = 0.05
#: a worker that lived longer than this is restarted at once
_HEALTHY = 5.0
#: the longest back-off before restarting a worker that keeps dying young
_MAX_DELAY = 5.0
#: how long a worker may outlive its drain before it is killed
_KILL_GRACE = 2.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Supervisor:
    """Run ``workers`` processes and keep them running until told to stop.

    Methods for the caller:

    - __init__(workers, start_worker, *, stop_requested, on_signal,
      drain_timeout, logger, prepare=None, before_fork=None,
      worker_started=None, worker_exited=None)
    - run()   # in the process that owns the listening sockets; returns
              # once every worker is stopped

    The callables it is handed:

    - start_worker(slot): the body of worker ``slot`` (0 .. workers-1), run
      in the forked child with SIGINT ignored and SIGTERM handled by
      ``on_signal``; returning exits the worker with status 0, raising
      logs the traceback and exits with status 1.  A restarted worker gets
      its predecessor's slot.
    - stop_requested() -> bool: true once the owner wants everything stopped
      (polled every ``TICK`` seconds).
    - on_signal(signum, frame): the workers' SIGTERM handler.
    - prepare(): called once by ``run()`` after the supervisor took the stop
      signals and before the first fork (the server opens the workers'
      listening sockets there); what it raises stops ``run()``.

    Hooks of a worker's life, each optional, called in the supervisor and
    guarded (what they raise is logged, never stops the supervisor):

    - before_fork(slot): just before the fork of a worker for ``slot``
      (what it leaves in memory, the child inherits).
    - worker_started(slot, pid): just after, in the supervisor.
    - worker_exited(slot, pid, status): once per worker, after it is
      reaped, whatever ended it (a crash, a kill, a restart, the final
      stop); ``status`` is the wait status, None when unknown.  After a
      failed fork: ``worker_exited(slot, None, None)``.
      Every path that reaps a worker calls it (the metrics' retired
      counters depend on it: cserver/_metrics.py).

    Instance variables:

    - workers, drain_timeout, logger
    - stop_signals: the number of SIGTERM/SIGINT received while running
      (only when ``run()`` is called on the main thread: elsewhere the
      signals are not its to take)
    """

    def __init__(self, workers, start_worker, *, stop_requested, on_signal, drain_timeout,
                 logger, prepare=None, before_fork=None, worker_started=None,
                 worker_exited=None):
        self.workers = workers
        self.drain_timeout = drain_timeout
        self.logger = logger
        # the owner's callables
        self._start_worker, self._stop_requested, self._on_signal, self._prepare = (
            start_worker, stop_requested, on_signal, prepare)
        self._before_fork, self._worker_started, self._worker_exited = (
            before_fork, worker_started, worker_exited)
        self._signals = None  # a _StopSignals while run() owns the stop signals
        self._stopping = False

    @property
    def stop_signals(self):
        return self._signals.count if self._signals is not None else 0

    def run(self):
        """Fork the workers, restart those that exit, stop them all when a
        stop signal arrives or ``stop_requested()`` turns true."""
        n = self.workers
        signals = None
        if threading.current_thread() is threading.main_thread():
            signals = _StopSignals()
        self._signals = signals
        self._stopping = False
        children = {}
        started = {}
        delays = [0.0] * n
        try:
            if signals is not None:
                signals.install()
            if self._prepare is not None:
                self._prepare()
            for slot in range(n):
                pid = self._spawn(slot)
                children[pid] = slot
                started[slot] = time.monotonic()
            self.logger.info("supervisor pid %d: %d workers %s", os.getpid(), n,
                             sorted(children))
            while not self._should_stop():
                for pid in list(children):
                    try:
                        done, status = os.waitpid(pid, os.WNOHANG)
                    except ChildProcessError:
                        done, status = pid, None
                    if done == 0:
                        continue
                    slot = children.pop(pid)
                    self._hook(self._worker_exited, slot, pid, status)
                    if status is None:
                        status = 0
                    if self._should_stop():
                        break
                    lived = time.monotonic() - started[slot]
                    delays[slot] = 0.0 if lived > _HEALTHY else \
                        min(max(delays[slot] * 2, 0.1), _MAX_DELAY)
                    self.logger.error(
                        "worker %d (pid %d) exited (%s) after %.1f s; restarting%s",
                        slot, pid, _describe_status(status), lived,
                        " in %.1f s" % delays[slot] if delays[slot] else "")
                    if not self._sleep(delays[slot]):
                        break
                    new = self._spawn(slot)
                    children[new] = slot
                    started[slot] = time.monotonic()
                    self.logger.info("worker %d restarted: pid %d", slot, new)
                self._wait(TICK)
        finally:
            try:
                self._stop_children(children)
            finally:
                self._signals = None
                if signals is not None:
                    signals.uninstall()
                self._stopping = False

    def _should_stop(self):
        if self._signals is not None and self._signals.count:
            self._stopping = True
        return self._stopping or self._stop_requested()

    def _wait(self, timeout):
        """Sleep up to ``timeout`` seconds, less if a stop signal arrives."""
        if self._signals is None:
            time.sleep(timeout)
        else:
            self._signals.wait(timeout)

    def _sleep(self, delay):
        """Wait ``delay`` seconds in ``TICK`` steps; False if told to stop."""
        end = time.monotonic() + delay
        while not self._should_stop():
            left = end - time.monotonic()
            if left <= 0:
                return True
            self._wait(min(left, TICK))
        return False

    def _stop_children(self, children):
        """SIGTERM every worker and reap them: they drain for up to
        ``drain_timeout``; a stop signal during that wait is forwarded (the
        workers then close their connections at once); a worker still
        running ``drain_timeout + 2`` s later is killed."""
        signals = self._signals
        _kill_all(children, signal.SIGTERM)
        seen = signals.count if signals is not None else 0
        cut = False
        deadline = time.monotonic() + (self.drain_timeout or 0) + _KILL_GRACE
        while children and time.monotonic() < deadline:
            for pid in list(children):
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done, status = pid, None
                if done:
                    self._hook(self._worker_exited, children.pop(pid), pid, status)
            if not children:
                break
            if not cut and signals is not None and signals.count > min(seen, 1):
                # a signal after the one that started the stop (or after a
                # shutdown() call): the user does not want to wait
                cut = True
                self.logger.warning("stop signal again: cutting the drain short (%d workers "
                                    "close their connections now)", len(children))
                _kill_all(children, signal.SIGTERM)
                deadline = min(deadline, time.monotonic() + _KILL_GRACE)
            self._wait(0.02)
        for pid in list(children):
            self.logger.error("worker pid %d did not stop in time: killing it", pid)
            status = None
            try:
                os.kill(pid, signal.SIGKILL)
                status = os.waitpid(pid, 0)[1]
            except (ProcessLookupError, ChildProcessError):
                pass
            self._hook(self._worker_exited, children.pop(pid), pid, status)
        self.logger.info("all workers stopped")

    def _hook(self, hook, *args):
        """Call one of the owner's hooks; what it raises is logged."""
        if hook is None:
            return
        try:
            hook(*args)
        except Exception:
            self.logger.exception("supervisor hook %s%r failed",
                                  getattr(hook, "__name__", hook), args)

    def _spawn(self, slot):
        # Stop signals are blocked across fork() until the worker has its
        # own handlers and has dropped the supervisor's wake-up fd: a SIGTERM
        # meant for a new worker must not reach the supervisor's pipe.
        mask = None
        self._hook(self._before_fork, slot)
        if self._signals is not None and hasattr(signal, "pthread_sigmask"):
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self._hook(self._worker_exited, slot, None, None)
            raise
        if pid:
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self._hook(self._worker_started, slot, pid)
            return pid
        code = 0
        try:
            self._become_worker(mask)
            self._start_worker(slot)
        except BaseException:
            code = 1
            try:
                self.logger.exception("worker %d crashed", slot)
            except BaseException:
                pass
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def _become_worker(self, mask):
        """In the forked child: drop the supervisor's signal pipe, install
        the worker's handlers, then unblock the stop signals."""
        if self._signals is not None:
            self._signals.close_in_child()
            self._signals = None
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_signal)
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _kill_all(children, sig):
    for pid in children:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _ignore_signal(signum, frame):
    """The supervisor's Python-level handler: it exists so that the C-level
    one writes to the wake-up fd; the supervisor reads the signal there."""


class _StopSignals:
    """SIGTERM/SIGINT as the supervisor sees them: through a wake-up pipe
    (see "Stop signals" above).  ``count`` is the number received."""

    def __init__(self):
        self.count = 0
        self.previous = {}
        self.previous_fd = None
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)

    def install(self):
        # the wake-up fd first: no signal may be caught before it is there
        self.previous_fd = signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)
        for sig in STOP_SIGNALS:
            self.previous[sig] = signal.signal(sig, _ignore_signal)

    def wait(self, timeout):
        """Wait up to ``timeout`` s or until a signal; count the stop signals."""
        if timeout > 0:
            select.select([self.r], [], [], timeout)
        while True:
            try:
                data = os.read(self.r, 512)
            except BlockingIOError:
                break
            if not data:
                break
            for number in data:
                if number in STOP_SIGNALS:
                    self.count += 1

    def uninstall(self):
        try:
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)
            if self.previous_fd is not None:
                signal.set_wakeup_fd(self.previous_fd)
        finally:
            self.previous = {}
            self.previous_fd = None
            self._close()

    def close_in_child(self):
        """In a forked worker: drop the supervisor's wake-up fd and pipe."""
        signal.set_wakeup_fd(-1)
        self._close()

    def _close(self):
        for fd in (self.r, self.w):
            if fd >= 0:
                os.close(fd)
        self.r = self.w = -1


def _describe_status(status):
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return "killed by %s" % signal.Signals(sig).name
        except ValueError:
            return "killed by signal %d" % sig
    return "exit status %d" % os.WEXITSTATUS(status)
