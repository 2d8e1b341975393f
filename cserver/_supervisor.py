"""The process supervisor of a multiplexing server with ``workers > 1``.

``Supervisor`` forks N worker processes, restarts one that exits (with a
back-off when it keeps dying young), replaces them all on SIGHUP (a reload:
see the class docstring), and stops them all on SIGTERM/SIGINT or
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

__all__ = ["Supervisor", "READY_TIMEOUT"]

#: the longest a supervisor wait lasts (it polls its workers this often)
TICK = 0.05
#: a worker that lived longer than this is restarted at once
_HEALTHY = 5.0
#: the longest back-off before restarting a worker that keeps dying young
_MAX_DELAY = 5.0
#: how long a worker may outlive its drain before it is killed
_KILL_GRACE = 2.0
#: a retired worker's last flush, after its drain_timeout (selectorserver)
_RETIRE_FLUSH = 1.0
#: how long a new worker may take to be ready (the server's default)
READY_TIMEOUT = 30.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Worker:
    """A worker process as the supervisor sees it."""

    __slots__ = ("slot", "pid", "started", "ready_r", "ready", "failed")

    def __init__(self, slot, pid, ready_r):
        self.slot, self.pid, self.started, self.ready_r = slot, pid, time.monotonic(), ready_r
        self.ready = ready_r < 0   # without a readiness pipe: ready once forked
        self.failed = None         # why it never became ready


class Supervisor:
    """Run ``workers`` processes and keep them running until told to stop.

    Methods for the caller:

    - __init__(workers, start_worker, *, stop_requested, on_signal,
      drain_timeout, logger, prepare=None, on_retire=None,
      ready_timeout=None, drain_delay=0.0, on_state=None, before_fork=None,
      worker_started=None, worker_exited=None)
    - run()   # in the process that owns the listening sockets; returns
              # once every worker is stopped
    - worker_ready()   # in a worker: "I am serving" (readiness pipe)

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
    - on_retire(signum, frame): given, SIGHUP reloads (below); it is the
      workers' SIGHUP handler: stop accepting, finish the open connections
      (within the owner's drain_timeout), exit.
    - on_state(state): "ready" (every worker is up: at start and after
      each reload), "reloading", "stopping"; what it raises is logged.

    Readiness: with ``ready_timeout`` (seconds), each worker gets the write
    end of a pipe and must call ``worker_ready()`` once it serves; without,
    a worker counts as ready once forked.

    Reload (SIGHUP, with ``on_retire``): a new worker is forked for every
    slot, on the same listening sockets (the owner keeps them open: they
    never close, so no queued connection is lost); once a new worker is
    ready its predecessor gets SIGHUP (``on_retire``) and is reaped, killed
    if it is still running ``drain_timeout + 3`` s later.  A new worker that
    exits or is not ready within ``ready_timeout`` is killed and logged, and
    its predecessor keeps serving.  SIGHUPs that arrive during a reload
    are coalesced into one reload after it.  A reload forks the same
    process image: the workers run the code the supervisor imported.

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

    - workers, drain_timeout, drain_delay, ready_timeout, logger
    - reloads: the number of reloads done
    - stop_signals: the number of SIGTERM/SIGINT received while running
      (only when ``run()`` is called on the main thread: elsewhere the
      signals are not its to take)
    """

    def __init__(self, workers, start_worker, *, stop_requested, on_signal, drain_timeout,
                 logger, prepare=None, on_retire=None, ready_timeout=None, drain_delay=0.0,
                 on_state=None, before_fork=None, worker_started=None, worker_exited=None):
        self.workers = workers
        self.drain_timeout = drain_timeout
        self.drain_delay = drain_delay
        self.ready_timeout = ready_timeout
        self.logger = logger
        self.reloads = 0
        # the owner's callables
        self._start_worker, self._stop_requested, self._on_signal, self._prepare = (
            start_worker, stop_requested, on_signal, prepare)
        self._on_retire, self._on_state = on_retire, on_state
        self._before_fork, self._worker_started, self._worker_exited = (
            before_fork, worker_started, worker_exited)
        self._signals = None  # a _StopSignals while run() owns the stop signals
        self._stopping = False
        self._ready_fds = set()   # the supervisor's ends of the readiness pipes
        self._ready_w = -1        # in a worker: its end

    @property
    def stop_signals(self):
        return self._signals.count if self._signals is not None else 0

    def run(self):
        """Fork the workers, restart those that exit, reload them on SIGHUP,
        stop them all when a stop signal arrives or ``stop_requested()``
        turns true."""
        n = self.workers
        signals = None
        if threading.current_thread() is threading.main_thread():
            signals = _StopSignals(reload=self._on_retire is not None)
        self._signals = signals
        self._stopping = False
        active = {}     # slot -> _Worker
        retiring = {}   # pid -> (_Worker, kill deadline)
        delays = [0.0] * n
        announced = False
        reloads_asked = 0
        try:
            if signals is not None:
                signals.install()
            if self._prepare is not None:
                self._prepare()
            for slot in range(n):
                active[slot] = self._spawn(slot)
            self.logger.info("supervisor pid %d: %d workers %s", os.getpid(), n,
                             sorted(w.pid for w in active.values()))
            while not self._should_stop():
                self._reap_active(active, delays)
                self._reap_retiring(retiring)
                self._poll_ready(active.values())
                if not announced and all(w.ready for w in active.values()):
                    announced = True
                    self._state("ready")
                if signals is not None and signals.hups > reloads_asked and announced:
                    reloads_asked = signals.hups   # those during the reload: one more after
                    self._reload(active, retiring)
                    continue
                self._wait(TICK, [w.ready_r for w in active.values() if w.ready_r >= 0])
        finally:
            try:
                self._state("stopping")
                children = {w.pid: w.slot for w in active.values()}
                children.update((pid, w.slot) for pid, (w, _) in retiring.items())
                self._stop_children(children)
            finally:
                for fd in self._ready_fds:
                    os.close(fd)
                self._ready_fds = set()
                self._signals = None
                if signals is not None:
                    signals.uninstall()
                self._stopping = False

    def _state(self, state):
        if self._on_state is None:
            return
        try:
            self._on_state(state)
        except Exception:
            self.logger.exception("supervisor: reporting the state %r failed", state)

    def _reap_active(self, active, delays):
        """Restart the workers that exited (a back-off for those that keep
        dying young)."""
        for slot, worker in list(active.items()):
            pid = worker.pid
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, None
            if done == 0:
                continue
            self._hook(self._worker_exited, slot, pid, status)
            if status is None:
                status = 0
            self._drop_ready_fd(worker)
            if self._should_stop():
                del active[slot]
                return
            lived = time.monotonic() - worker.started
            delays[slot] = 0.0 if lived > _HEALTHY else \
                min(max(delays[slot] * 2, 0.1), _MAX_DELAY)
            self.logger.error(
                "worker %d (pid %d) exited (%s) after %.1f s; restarting%s",
                slot, pid, _describe_status(status), lived,
                " in %.1f s" % delays[slot] if delays[slot] else "")
            del active[slot]
            if not self._sleep(delays[slot]):
                return
            new = self._spawn(slot)
            active[slot] = new
            self.logger.info("worker %d restarted: pid %d", slot, new.pid)

    def _reap_retiring(self, retiring):
        """Reap the retired workers that exited; kill those past their
        deadline."""
        now = time.monotonic()
        for pid, (worker, deadline) in list(retiring.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, None
            if done:
                del retiring[pid]
                self._hook(self._worker_exited, worker.slot, pid, status)
                self.logger.info("retired worker %d (pid %d) exited (%s)", worker.slot, pid,
                                 _describe_status(status) if status is not None else "reaped")
            elif now >= deadline:
                self.logger.error("retired worker %d (pid %d) did not finish in time: killing it",
                                  worker.slot, pid)
                status = _kill_and_reap(pid)
                del retiring[pid]
                self._hook(self._worker_exited, worker.slot, pid, status)

    def _poll_ready(self, workers):
        """Read the readiness pipes of ``workers`` (non-blocking)."""
        for worker in workers:
            if worker.ready_r < 0:
                continue
            try:
                data = os.read(worker.ready_r, 16)
            except BlockingIOError:
                continue
            except OSError as exc:
                data, worker.failed = b"", "its readiness pipe failed: %s" % exc
            if data:
                worker.ready = True
            elif worker.failed is None:
                worker.failed = "exited before it was ready"
            self._drop_ready_fd(worker)

    def _drop_ready_fd(self, worker):
        if worker.ready_r >= 0:
            self._ready_fds.discard(worker.ready_r)
            os.close(worker.ready_r)
            worker.ready_r = -1

    def _reload(self, active, retiring):
        """SIGHUP: a new generation of workers on the same sockets; each
        old worker retires once its successor is ready."""
        number = self.reloads + 1
        self._state("reloading")
        self.logger.info("reload %d: starting %d new workers", number, len(active))
        fresh = {}
        for slot in sorted(active):
            fresh[slot] = self._spawn(slot)
        deadline = time.monotonic() + (self.ready_timeout or 0)
        while not self._should_stop():
            self._poll_ready(fresh.values())
            pending = [w for w in fresh.values() if not w.ready and w.failed is None]
            if not pending:
                break
            if time.monotonic() >= deadline:
                for w in pending:
                    w.failed = "was not ready within %g s" % (self.ready_timeout or 0)
                break
            self._wait(TICK, [w.ready_r for w in pending if w.ready_r >= 0])
        kill_at = time.monotonic() + (self.drain_timeout or 0) + _RETIRE_FLUSH + _KILL_GRACE
        if self._should_stop():
            # stopping: the new ones are stopped with the others
            for w in fresh.values():
                self._drop_ready_fd(w)
                retiring[w.pid] = (w, kill_at)
            return
        failed = 0
        for slot, w in fresh.items():
            old = active[slot]
            if w.ready:
                active[slot] = w
                retiring[old.pid] = (old, kill_at)
                try:
                    os.kill(old.pid, signal.SIGHUP)
                except ProcessLookupError:
                    pass
                continue
            failed += 1
            self._drop_ready_fd(w)
            status = None
            try:
                os.kill(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                _, status = os.waitpid(w.pid, 0)
            except ChildProcessError:
                pass
            self._hook(self._worker_exited, slot, w.pid, status)
            self.logger.error("reload %d: the new worker %d (pid %d) %s (%s); the old one "
                              "(pid %d) keeps serving", number, slot, w.pid, w.failed,
                              _describe_status(status) if status is not None else "reaped",
                              old.pid)
        self.reloads = number
        self.logger.info("reload %d done: workers %s%s", number,
                         sorted(w.pid for w in active.values()),
                         "; %d new workers failed" % failed if failed else "")
        self._state("ready")

    def worker_ready(self):
        """In a worker: tell the supervisor that this worker serves (once;
        later calls do nothing)."""
        fd, self._ready_w = self._ready_w, -1
        if fd < 0:
            return
        try:
            os.write(fd, b"R")
        except OSError:
            pass
        finally:
            os.close(fd)

    def _should_stop(self):
        if self._signals is not None and self._signals.count:
            self._stopping = True
        return self._stopping or self._stop_requested()

    def _wait(self, timeout, fds=()):
        """Sleep up to ``timeout`` seconds, less if a signal arrives or one
        of ``fds`` is readable."""
        if self._signals is None:
            if fds:
                select.select(list(fds), [], [], timeout)
            else:
                time.sleep(timeout)
        else:
            self._signals.wait(timeout, fds)

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
        """SIGTERM every worker and reap them: they go on accepting for
        ``drain_delay``, then drain for up to ``drain_timeout``; a stop
        signal during that wait is forwarded (the workers then close their
        connections at once); a worker still running ``drain_delay +
        drain_timeout + 2`` s later is killed."""
        signals = self._signals
        _kill_all(children, signal.SIGTERM)
        seen = signals.count if signals is not None else 0
        cut = False
        deadline = time.monotonic() + (self.drain_delay or 0) + (self.drain_timeout or 0) + \
            _KILL_GRACE
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
            status = _kill_and_reap(pid)
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
        # Stop signals (and SIGHUP) are blocked across fork() until the
        # worker has its own handlers and has dropped the supervisor's
        # wake-up fd: a signal meant for a new worker must not reach the
        # supervisor's pipe.
        mask = None
        self._hook(self._before_fork, slot)
        if self._signals is not None and hasattr(signal, "pthread_sigmask"):
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, self._signals.signals)
        ready_r = ready_w = -1
        try:
            if self.ready_timeout is not None:
                ready_r, ready_w = os.pipe()
                os.set_blocking(ready_r, False)
            pid = os.fork()
        except BaseException:
            for fd in (ready_r, ready_w):
                if fd >= 0:
                    os.close(fd)
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self._hook(self._worker_exited, slot, None, None)
            raise
        if pid:
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if ready_w >= 0:
                os.close(ready_w)
                self._ready_fds.add(ready_r)
            self._hook(self._worker_started, slot, pid)
            return _Worker(slot, pid, ready_r)
        code = 0
        try:
            if ready_r >= 0:
                os.close(ready_r)
            self._ready_w = ready_w
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
        """In the forked child: drop the supervisor's signal pipe and its
        ends of the readiness pipes, install the worker's handlers, then
        unblock the signals."""
        for fd in self._ready_fds:
            os.close(fd)
        self._ready_fds = set()
        if self._signals is not None:
            self._signals.close_in_child()
            self._signals = None
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_signal)
        if self._on_retire is not None:
            signal.signal(signal.SIGHUP, self._on_retire)
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _kill_all(children, sig):
    for pid in children:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _kill_and_reap(pid):
    """SIGKILL the child ``pid`` and reap it: its wait status, or None when it
    was gone already (reaped elsewhere)."""
    status = None
    try:
        os.kill(pid, signal.SIGKILL)
        status = os.waitpid(pid, 0)[1]
    except (ProcessLookupError, ChildProcessError):
        pass
    return status


def _ignore_signal(signum, frame):
    """The supervisor's Python-level handler: it exists so that the C-level
    one writes to the wake-up fd; the supervisor reads the signal there."""


class _StopSignals:
    """SIGTERM/SIGINT (and SIGHUP when ``reload``) as the supervisor sees
    them: through a wake-up pipe (see "Stop signals" above).  ``count`` is
    the number of stop signals received, ``hups`` the number of SIGHUPs."""

    def __init__(self, reload=False):
        self.count = 0
        self.hups = 0
        self.signals = STOP_SIGNALS + ((signal.SIGHUP,) if reload else ())
        self.previous = {}
        self.previous_fd = None
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)

    def install(self):
        # the wake-up fd first: no signal may be caught before it is there
        self.previous_fd = signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)
        for sig in self.signals:
            self.previous[sig] = signal.signal(sig, _ignore_signal)

    def wait(self, timeout, fds=()):
        """Wait up to ``timeout`` s, until a signal or until one of ``fds``
        is readable; count the signals."""
        if timeout > 0:
            select.select([self.r] + list(fds), [], [], timeout)
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
                elif number == signal.SIGHUP:
                    self.hups += 1

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
