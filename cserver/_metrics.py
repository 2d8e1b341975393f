"""The metrics of a multiplexing server, in the Prometheus text exposition
format (version 0.0.4), aggregated across its worker processes.

``SelectorServer(metrics_address=...)`` opens one more listening socket,
before any worker is forked; every worker's loop serves it (the handles of
``cserver/_metrics.pxi``: no thread, no HTTP library), and whichever worker
accepts a scrape answers it with the sum over all of them.  docs/metrics.md
lists every metric.

Aggregation.  ``SharedTable`` is an anonymous shared mapping
(``mmap.mmap(-1, n)``: ``MAP_SHARED | MAP_ANONYMOUS``) made before the fork,
so every worker maps the same pages.  It holds one fixed-layout *cell* per
worker process and one *retired* cell:

- The supervisor claims a free cell for each worker it forks (``claim``;
  the child inherits the number) and, once it has reaped that worker (a
  crash, a kill, a restart, a reload's replacement, the final stop),
  adds the cell's counters to the retired cell and frees the cell
  (``retire``): a worker's counters move, they never vanish, so every
  counter is monotonic across restarts.  Cells are per process, not per
  worker slot: an old worker draining beside its replacement keeps its own.
- Each worker publishes its loop's counters into its cell every
  ``PUBLISH_INTERVAL`` seconds (a loop timer, whose lateness is also the
  loop-lag measurement), at every scrape it answers (its own values are
  then exact) and when its loop stops.
- A scrape sums the retired cell and the live cells for counters; gauges
  are the live workers' (summed, or their maximum for peaks and lag).

Staleness: a scrape sees its own worker's counters as of the scrape and
every other worker's as of that worker's last publication: at most
``PUBLISH_INTERVAL`` plus that worker's loop lag old.  A worker killed
without warning (SIGKILL) loses what it did after its last publication (at
most ``PUBLISH_INTERVAL`` seconds of work); a graceful exit publishes first.

Consistency.  A cell has one writer (its worker; the supervisor only once
the worker is reaped) and is guarded by a sequence number (a seqlock: odd
while a write is in progress); moving a cell to the retired cell is guarded
by the table's generation number the same way, so a reader never counts a
retiring worker twice or not at all.  Readers retry a bounded number of
times and then take what they read.

Plain Python (not compiled): it runs twice a second and once per scrape.
"""

import mmap
import struct
import time

__all__ = ["SharedTable", "Exporter", "PUBLISH_INTERVAL", "FIELDS", "METRICS"]

#: how often each worker publishes its counters (seconds)
PUBLISH_INTERVAL = 0.5

COUNTER, GAUGE, MAX = "counter", "gauge", "max"

#: the fields of a cell, in order, and how they aggregate across workers:
#: COUNTER (monotonic: live cells plus the retired cell), GAUGE (the sum over
#: the live cells), MAX (the maximum over the live cells).  Durations are
#: stored in nanoseconds.
FIELDS = (
    ("connections", GAUGE),
    ("connections_total", COUNTER),
    ("connections_rejected", COUNTER),
    ("bytes_in", COUNTER),
    ("bytes_out", COUNTER),
    ("frames_in", COUNTER),
    ("frames_out", COUNTER),
    ("handler_errors", COUNTER),
    ("frame_errors", COUNTER),
    ("accept_errors", COUNTER),
    ("internal_errors", COUNTER),
    ("idle_timeouts", COUNTER),
    ("first_byte_timeouts", COUNTER),
    ("frame_timeouts", COUNTER),
    ("close_timeouts", COUNTER),
    ("proxy_headers", COUNTER),
    ("proxy_errors", COUNTER),
    ("proxy_timeouts", COUNTER),
    ("proxy_rejected", COUNTER),
    ("tls_handshakes", COUNTER),
    ("tls_handshake_errors", COUNTER),
    ("tls_handshake_timeouts", COUNTER),
    ("tls_errors", COUNTER),
    ("tls_shutdown_timeouts", COUNTER),
    ("read_slab_bytes", GAUGE),
    ("pool_in_use_bytes", GAUGE),
    ("pool_idle_bytes", GAUGE),
    ("pool_peak_bytes", MAX),
    ("pool_allocations", COUNTER),
    ("pool_frees", COUNTER),
    ("pool_hits", COUNTER),
    ("pool_misses", COUNTER),
    ("pool_bypass", COUNTER),
    ("write_buffer_bytes", GAUGE),
    ("write_buffer_bytes_peak", MAX),
    ("loop_lag_ns", MAX),
    ("loop_lag_max_ns", MAX),
    ("scrapes_ok", COUNTER),
    ("scrapes_refused", COUNTER),
    ("scrapes_failed", COUNTER),
    ("scrapes_timeouts", COUNTER),
    ("scrapes_accept_errors", COUNTER),
)
_INDEX = {name: i for i, (name, _) in enumerate(FIELDS)}
#: the stats() keys of the loop counters copied as they are
_DIRECT = tuple(name for name, _ in FIELDS[:[name for name, _ in FIELDS].index("read_slab_bytes")])
#: fields published only where the loop has them (the PROXY protocol's)
_PROXY = ("proxy_headers", "proxy_errors", "proxy_timeouts", "proxy_rejected")
#: ... and TLS's (a loop with an ssl_context)
_TLS = ("tls_handshakes", "tls_handshake_errors", "tls_handshake_timeouts", "tls_errors",
        "tls_shutdown_timeouts")
_POOL = ("pool_in_use_bytes", "pool_idle_bytes", "pool_peak_bytes", "pool_allocations",
         "pool_frees", "pool_hits", "pool_misses", "pool_bypass")

# A cell: seq, state, pid, then the fields (all int64, native order).
_CELL = struct.Struct("=%dq" % (3 + len(FIELDS)))
_SEQ = struct.Struct("=q")
# The table: generation, number of cells; the retired cell; the cells.
_HEAD = struct.Struct("=2q")
_FREE, _LIVE = 0, 1
_RETRIES = 1000


class SharedTable:
    """The workers' counters in shared memory (see the module docstring).

    Methods: ``claim(pid=0) -> cell | None`` and ``retire(cell)`` (by the
    process that forks the workers), ``publish(cell, values)`` (by the
    cell's worker), ``snapshot() -> (retired, {cell: values})`` (by
    anyone), ``close()``."""

    def __init__(self, cells):
        if cells < 1:
            raise ValueError("a metrics table needs at least one cell, got %r" % (cells,))
        self.cells = cells
        self._mem = mmap.mmap(-1, _HEAD.size + (cells + 1) * _CELL.size)
        _HEAD.pack_into(self._mem, 0, 0, cells)

    def _offset(self, cell):
        # cell -1 is the retired cell
        return _HEAD.size + (cell + 1) * _CELL.size

    def claim(self, pid=0):
        """A free cell, now live and zeroed; None when every cell is taken
        (that worker's counters are then not exported)."""
        for cell in range(self.cells):
            off = self._offset(cell)
            if _CELL.unpack_from(self._mem, off)[1] == _FREE:
                _CELL.pack_into(self._mem, off, 0, _LIVE, pid, *([0] * len(FIELDS)))
                return cell
        return None

    def publish(self, cell, values):
        """Write a live cell's values (a sequence in ``FIELDS`` order)."""
        off = self._offset(cell)
        seq, state, pid = _CELL.unpack_from(self._mem, off)[:3]
        seq |= 1  # odd: a write is in progress (also after a writer died mid-write)
        _SEQ.pack_into(self._mem, off, seq)
        _CELL.pack_into(self._mem, off, seq, state, pid, *values)
        _SEQ.pack_into(self._mem, off, seq + 1)

    def retire(self, cell):
        """The worker of ``cell`` is gone (reaped): add its counters to the
        retired cell, free the cell."""
        if cell is None:
            return
        mem = self._mem
        gen = _SEQ.unpack_from(mem, 0)[0] | 1
        _SEQ.pack_into(mem, 0, gen)  # odd: readers retry
        try:
            dead = _CELL.unpack_from(mem, self._offset(cell))[3:]
            retired_off = self._offset(-1)
            retired = list(_CELL.unpack_from(mem, retired_off)[3:])
            for i, (_, kind) in enumerate(FIELDS):
                if kind == COUNTER:
                    retired[i] += dead[i]
            _CELL.pack_into(mem, retired_off, 0, _LIVE, 0, *retired)
            _CELL.pack_into(mem, self._offset(cell), 0, _FREE, 0, *([0] * len(FIELDS)))
        finally:
            _SEQ.pack_into(mem, 0, gen + 1)

    def _read_cell(self, cell):
        off = self._offset(cell)
        mem = self._mem
        for _ in range(_RETRIES):
            seq = _SEQ.unpack_from(mem, off)[0]
            values = _CELL.unpack_from(mem, off)
            if not seq & 1 and _SEQ.unpack_from(mem, off)[0] == seq:
                break
        return values

    def snapshot(self):
        """``(retired, live)``: the retired cell's values and a dict
        ``{cell: values}`` of the live cells, read consistently."""
        mem = self._mem
        for _ in range(_RETRIES):
            gen = _SEQ.unpack_from(mem, 0)[0]
            retired = self._read_cell(-1)[3:]
            live = {}
            for cell in range(self.cells):
                values = self._read_cell(cell)
                if values[1] == _LIVE:
                    live[cell] = values[3:]
            if not gen & 1 and _SEQ.unpack_from(mem, 0)[0] == gen:
                break
        return retired, live

    def close(self):
        self._mem.close()


def loop_values(stats, metrics_stats, lag, lag_max):
    """A cell's values (``FIELDS`` order) from a loop's ``stats()``, its
    ``metrics_stats()`` and the lag measurements (seconds)."""
    values = [0] * len(FIELDS)
    for name in _DIRECT:
        values[_INDEX[name]] = int(stats.get(name, 0))
    pool = stats.get("pool") or {}
    values[_INDEX["read_slab_bytes"]] = pool.get("read_slab_bytes", 0)
    values[_INDEX["write_buffer_bytes"]] = pool.get("write_buffer_bytes", 0)
    values[_INDEX["write_buffer_bytes_peak"]] = pool.get("write_buffer_bytes_peak", 0)
    framing = pool.get("framing")
    if framing:
        slab = framing["slab_size"]
        values[_INDEX["pool_in_use_bytes"]] = framing["in_use"] * slab
        values[_INDEX["pool_idle_bytes"]] = framing["idle"] * slab
        values[_INDEX["pool_peak_bytes"]] = framing["high_water"] * slab
        for key in ("allocations", "frees", "hits", "misses", "bypass"):
            values[_INDEX["pool_" + key]] = framing[key]
    values[_INDEX["loop_lag_ns"]] = int(lag * 1e9)
    values[_INDEX["loop_lag_max_ns"]] = int(lag_max * 1e9)
    for key in ("ok", "refused", "failed", "timeouts", "accept_errors"):
        values[_INDEX["scrapes_" + key]] = metrics_stats.get(key, 0)
    return values


def aggregate(retired, live):
    """One dict ``{field: value}`` from the retired cell and the live cells."""
    total = {}
    for i, (name, kind) in enumerate(FIELDS):
        if kind == COUNTER:
            total[name] = retired[i] + sum(values[i] for values in live)
        elif kind == GAUGE:
            total[name] = sum(values[i] for values in live)
        else:
            total[name] = max((values[i] for values in live), default=0)
    total["workers_live"] = len(live)
    return total


_NS = 1e-9

#: (name, TYPE, HELP, [(labels, field, scale)]): the exposition, in order
METRICS = (
    ("cserver_connections", "gauge", "Open connections.",
     [("", "connections", None)]),
    ("cserver_connections_total", "counter", "Connections accepted.",
     [("", "connections_total", None)]),
    ("cserver_connections_refused_total", "counter",
     "Connections closed at accept: refused by verify_request, or (PROXY protocol on) "
     "from a peer outside trusted_proxies.",
     [('reason="verify_request"', "connections_rejected", None),
      ('reason="untrusted_proxy"', "proxy_rejected", None)]),
    ("cserver_received_bytes_total", "counter", "Bytes received on the data connections.",
     [("", "bytes_in", None)]),
    ("cserver_sent_bytes_total", "counter", "Bytes sent on the data connections.",
     [("", "bytes_out", None)]),
    ("cserver_received_frames_total", "counter",
     "Complete frames received and delivered to frame_received (framed servers).",
     [("", "frames_in", None)]),
    ("cserver_sent_frames_total", "counter", "Frames queued with send_frame.",
     [("", "frames_out", None)]),
    ("cserver_handler_errors_total", "counter",
     "Exceptions raised by user code (handlers, callbacks, timers, verify_request).",
     [("", "handler_errors", None)]),
    ("cserver_frame_errors_total", "counter",
     "Connections closed for breaking the framing (a bad or oversized header, end of "
     "stream inside a frame).",
     [("", "frame_errors", None)]),
    ("cserver_accept_errors_total", "counter",
     "accept() failures on the data listeners (out of descriptors or memory, ...).",
     [("", "accept_errors", None)]),
    ("cserver_internal_errors_total", "counter",
     "Connections closed because the server's own machinery failed (MemoryError, ...).",
     [("", "internal_errors", None)]),
    ("cserver_timeouts_total", "counter",
     "Connections closed by a deadline, by kind: idle (idle_timeout), first_byte "
     "(first_byte_timeout), frame (frame_timeout), close (replies to a protocol error "
     "not read within drain_timeout).",
     [('kind="idle"', "idle_timeouts", None),
      ('kind="first_byte"', "first_byte_timeouts", None),
      ('kind="frame"', "frame_timeouts", None),
      ('kind="close"', "close_timeouts", None)]),
    ("cserver_proxy_headers_total", "counter",
     "PROXY protocol headers, by result: valid, invalid (closed), timeout (not complete "
     "within proxy_header_timeout; closed).",
     [('result="valid"', "proxy_headers", None),
      ('result="invalid"', "proxy_errors", None),
      ('result="timeout"', "proxy_timeouts", None)]),
    ("cserver_tls_handshakes_total", "counter",
     "TLS handshakes, by result: ok, error (failed, or the peer left; closed), timeout (not "
     "done within ssl_handshake_timeout; closed).",
     [('result="ok"', "tls_handshakes", None),
      ('result="error"', "tls_handshake_errors", None),
      ('result="timeout"', "tls_handshake_timeouts", None)]),
    ("cserver_tls_errors_total", "counter",
     "TLS connections closed by a record-layer failure after the handshake (a bad record, "
     "an alert, a refused renegotiation).",
     [("", "tls_errors", None)]),
    ("cserver_tls_shutdown_timeouts_total", "counter",
     "TLS connections closed without the peer's close_notify within ssl_shutdown_timeout.",
     [("", "tls_shutdown_timeouts", None)]),
    ("cserver_read_buffer_bytes", "gauge", "The loops' shared receive buffers (read_size each).",
     [("", "read_slab_bytes", None)]),
    ("cserver_framing_pool_bytes", "gauge",
     "Slabs of the framing buffer pools, by state: in_use (holding partial frames), idle "
     "(kept for reuse).",
     [('state="in_use"', "pool_in_use_bytes", None),
      ('state="idle"', "pool_idle_bytes", None)]),
    ("cserver_framing_pool_peak_bytes", "gauge",
     "The most slab bytes in use at once (the largest of the live workers).",
     [("", "pool_peak_bytes", None)]),
    ("cserver_framing_pool_allocations_total", "counter", "Slabs allocated by the pools.",
     [("", "pool_allocations", None)]),
    ("cserver_framing_pool_frees_total", "counter", "Slabs freed (above the pools' max_idle).",
     [("", "pool_frees", None)]),
    ("cserver_framing_pool_hits_total", "counter", "Leases served by an idle slab.",
     [("", "pool_hits", None)]),
    ("cserver_framing_pool_misses_total", "counter",
     "Leases refused (max_slabs out): the decoder allocated privately.",
     [("", "pool_misses", None)]),
    ("cserver_framing_pool_bypass_total", "counter",
     "Frames larger than a slab, received into buffers of their own.",
     [("", "pool_bypass", None)]),
    ("cserver_write_buffer_bytes", "gauge", "Bytes allocated for the connections' write buffers.",
     [("", "write_buffer_bytes", None)]),
    ("cserver_write_buffer_peak_bytes", "gauge",
     "The most write-buffer bytes allocated at once (the largest of the live workers).",
     [("", "write_buffer_bytes_peak", None)]),
    ("cserver_loop_lag_seconds", "gauge",
     "How late the loop ran its last periodic timer (the largest of the live workers).",
     [("", "loop_lag_ns", _NS)]),
    ("cserver_loop_lag_max_seconds", "gauge",
     "The latest the loop ever ran its periodic timer (the largest of the live workers).",
     [("", "loop_lag_max_ns", _NS)]),
    ("cserver_workers_live", "gauge",
     "Worker processes serving (1 without workers; during a reload, old and new).",
     [("", "workers_live", None)]),
    ("cserver_metrics_requests_total", "counter",
     "Requests to this endpoint, by result: ok, refused (bad request line, method, path or "
     "size), failed (the render raised), timeout (not done within metrics_timeout).",
     [('result="ok"', "scrapes_ok", None),
      ('result="refused"', "scrapes_refused", None),
      ('result="failed"', "scrapes_failed", None),
      ('result="timeout"', "scrapes_timeouts", None)]),
    ("cserver_metrics_accept_errors_total", "counter", "accept() failures on this endpoint.",
     [("", "scrapes_accept_errors", None)]),
)


def render(total, present):
    """The exposition text (bytes) of aggregated values ``total``; fields
    not in ``present`` (those the loop does not have) are left out, and a
    family with no sample too."""
    lines = []
    for name, kind, text, samples in METRICS:
        rows = []
        for labels, field, scale in samples:
            if field not in present:
                continue
            value = total[field]
            value = repr(value * scale) if scale is not None else "%d" % value
            rows.append("%s{%s} %s" % (name, labels, value) if labels else "%s %s" % (name, value))
        if rows:
            lines.append("# HELP %s %s" % (name, text))
            lines.append("# TYPE %s %s" % (name, kind))
            lines.extend(rows)
    lines.append("")
    return "\n".join(lines).encode("utf-8")


def present_fields(stats):
    """The fields a loop with these ``stats()`` has."""
    present = set(name for name, _ in FIELDS) | {"workers_live"}
    if "proxy_headers" not in stats:
        present.difference_update(_PROXY)
    if stats.get("tls_engine") is None:
        present.difference_update(_TLS)
    if not (stats.get("pool") or {}).get("framing"):
        present.difference_update(_POOL)
    return present


class Exporter:
    """A worker's side (one per loop): publishes its loop's counters into
    its cell, measures the loop's lag, renders a scrape.

    ``table`` is the ``SharedTable``, ``cell`` this process's cell (None:
    none was free; its own values are then still in its answers)."""

    def __init__(self, table, cell, interval=PUBLISH_INTERVAL):
        self.table = table
        self.cell = cell
        self.interval = interval
        self.lag = 0.0
        self.lag_max = 0.0
        self.core = None
        self._expected = None

    def attach(self, core, sock, timeout):
        """Serve the metrics socket on ``core`` and start the periodic timer
        (at the loop's first pass: a loop built long before it runs is not
        late)."""
        self.core = core
        core.add_metrics_listener(sock, self.render, timeout)
        core.call_soon(self._schedule)

    def _schedule(self):
        self._expected = time.monotonic() + self.interval
        self.core.call_at(self._expected, self._tick)

    def _tick(self):
        lag = max(time.monotonic() - self._expected, 0.0)
        self.lag = lag
        if lag > self.lag_max:
            self.lag_max = lag
        self.publish()
        self._schedule()

    def values(self, stats=None):
        core = self.core
        if stats is None:
            stats = core.stats()
        return loop_values(stats, core.metrics_stats(), self.lag, self.lag_max)

    def publish(self, stats=None):
        """Write this loop's counters into its cell (no-op without one)."""
        if self.cell is not None and self.core is not None and not self.core.closed:
            self.table.publish(self.cell, self.values(stats))

    def render(self):
        """The answer to a scrape (bytes): this loop's counters, published
        first, summed with every other worker's."""
        stats = self.core.stats()
        own = self.values(stats)
        if self.cell is not None:
            self.table.publish(self.cell, own)
        retired, live = self.table.snapshot()
        cells = list(live.values())
        if self.cell is None:
            cells.append(own)
        elif self.cell not in live:
            cells.append(own)
        return render(aggregate(retired, cells), present_fields(stats))


def workers_cells(workers):
    """How many cells a table for ``workers`` processes has: room for a
    reload's new workers beside the old ones still draining, twice over."""
    return max(1, 4 * workers)

