"""The scanner pools' per-backend counters in ``/metrics``, summed over a node's worker processes.

The scanning runs in forked worker processes, each with its own pools
(:mod:`mailsift.scanners.engines.pool`), while ``/metrics`` is answered by
whichever worker runs the web service: the counters cross processes through
small files, not through the shared database (``/metrics`` is per node).

* **writing** -- each worker runs a :class:`Publisher`: at most once per
  :data:`INTERVAL` second, when a counter changed, it writes its pools'
  counters to ``STATE_DIR/pools/<pid>.json`` (a temporary file renamed over
  the old one, mode 0600, so a reader never sees half a file); a worker that
  stops removes its file;
* **reading** -- :func:`read` sums the files of the live processes per
  (scanner, backend).  A file whose process is gone (killed, or a PID reused
  by another process: the process start time is in the file and checked) is
  ignored and deleted.  Counters (``requests``, ``failures``, ``ejections``)
  and ``outstanding`` are summed; ``up`` is 1 only if every worker has the
  backend admitted;
* **rendering** -- :class:`PoolCounters` is a prometheus_client collector:
  ``mailsift_scanner_backend_{requests,failures,ejections}_total``,
  ``mailsift_scanner_backend_outstanding`` and ``mailsift_scanner_backend_up``,
  labelled ``scanner`` (the engine: ``clamd``, ``spamassassind``, ``rspamd``)
  and ``backend`` (its address).

prometheus_client is imported only to render (by the web service): a worker
that serves only smtpd never loads it.

A worker killed hard loses at most its last second of counts, and its
counters drop out of the sums (Prometheus reads the drop as a counter reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from mailsift.scanners.engines.pool import Pool

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = logging.getLogger("mailsift.poolstats")

DIRECTORY = "pools"
"""Under STATE_DIR."""
INTERVAL = 1.0
"""Seconds between two writes of a worker's file (at most)."""
COUNTERS = ("requests", "failures", "ejections")
GAUGES = ("outstanding", "up")

Row = dict[str, Any]


def pools_of(objects: Iterable[object]) -> list[Pool[Any]]:
    """The pools of a config's objects (``Config.objects()``: every scanner once), each once."""
    pools: list[Pool[Any]] = []
    for item in objects:
        pool = getattr(item, "pool", None)
        if isinstance(pool, Pool) and all(pool is not seen for seen in pools):
            pools.append(pool)
    return pools


def snapshot(pools: Iterable[Pool[Any]]) -> list[Row]:
    """One row per backend: ``scanner``, ``backend`` and its counters."""
    return [
        {
            "scanner": pool.engine,
            "backend": backend.label,
            "requests": backend.requests,
            "failures": backend.failures,
            "ejections": backend.ejections,
            "outstanding": backend.outstanding,
            "up": 1 if backend.out_until is None else 0,
        }
        for pool in pools
        for backend in pool.backends
    ]


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``), None where unknown: tells a reused PID apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def alive(pid: int, start: str | None) -> bool:
    """Whether ``pid`` is the process that wrote a file (same start time when both are known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive, but maybe a reused PID (the start time tells)
    now = process_start(pid)
    return start is None or now is None or now == start


class Publisher:
    """Writes one worker's pool counters to ``STATE_DIR/pools/<pid>.json`` (see the module docstring)."""

    def __init__(self, pools: Iterable[Pool[Any]], state_dir: str, *, interval: float = INTERVAL) -> None:
        self.pools = list(pools)
        self.directory = os.path.join(state_dir, DIRECTORY)
        self.interval = interval
        self.pid = os.getpid()
        self.path = os.path.join(self.directory, f"{self.pid}.json")
        self._last: list[Row] | None = None
        self._task: asyncio.Task[None] | None = None
        self._failed = False

    def write(self) -> bool:
        """Write the counters if they changed since the last write; whether a file was written."""
        rows = snapshot(self.pools)
        if rows == self._last:
            return False
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        text = json.dumps({"pid": self.pid, "start": process_start(self.pid), "backends": rows})
        handle, temporary = tempfile.mkstemp(prefix=f".{self.pid}.", dir=self.directory)  # mode 0600
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._last = rows
        return True

    async def run(self) -> None:
        while True:
            try:
                self.write()
                self._failed = False
            except OSError as error:
                if not self._failed:  # once, not every second
                    log.warning("cannot write the scanner pool counters to %s: %s", self.path, error)
                self._failed = True
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        """Start writing in the running loop (nothing to do without pools)."""
        if self.pools and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    def stop(self) -> None:
        """Stop writing and remove this process's file (its counters leave the sums)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def read(state_dir: str, *, prune: bool = True) -> list[Row]:
    """The counters of the live workers, summed per (scanner, backend); dead workers' files deleted."""
    directory = os.path.join(state_dir, DIRECTORY)
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    sums: dict[tuple[str, str], Row] = {}
    for name in names:
        stem, dot, extension = name.partition(".")
        if not (stem.isdigit() and dot and extension == "json"):
            continue
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as source:
                data = json.load(source)
            start, rows = data.get("start"), data["backends"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # unreadable, or gone meanwhile
        if not alive(int(stem), start if isinstance(start, str) else None):
            if prune:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            continue
        for row in rows if isinstance(rows, list) else []:
            try:
                key = (str(row["scanner"]), str(row["backend"]))
                values = {name: float(row[name]) for name in (*COUNTERS, *GAUGES)}
            except (KeyError, TypeError, ValueError):
                continue
            total = sums.get(key)
            if total is None:
                sums[key] = {"scanner": key[0], "backend": key[1], **values}
                continue
            for counter in (*COUNTERS, "outstanding"):
                total[counter] += values[counter]
            total["up"] = min(total["up"], values["up"])
    return [sums[key] for key in sorted(sums)]


class PoolCounters:
    """A prometheus_client collector for the rows of :func:`read`."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def collect(self) -> Iterator[Metric]:
        # here, not at the top: every worker publishes, only the web service renders
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["scanner", "backend"]
        families: list[tuple[str, Any]] = [
            (
                "requests",
                CounterMetricFamily(
                    "mailsift_scanner_backend_requests", "Requests sent to a scanner backend.", labels=labels
                ),
            ),
            (
                "failures",
                CounterMetricFamily(
                    "mailsift_scanner_backend_failures",
                    "Failed requests and health checks of a scanner backend.",
                    labels=labels,
                ),
            ),
            (
                "ejections",
                CounterMetricFamily(
                    "mailsift_scanner_backend_ejections", "Times a scanner backend was taken out.", labels=labels
                ),
            ),
            (
                "outstanding",
                GaugeMetricFamily(
                    "mailsift_scanner_backend_outstanding", "Requests under way at a scanner backend.", labels=labels
                ),
            ),
            (
                "up",
                GaugeMetricFamily(
                    "mailsift_scanner_backend_up",
                    "1 if every worker sends traffic to the backend, 0 if it is out somewhere.",
                    labels=labels,
                ),
            ),
        ]
        for field, family in families:
            for row in self.rows:
                family.add_metric([row["scanner"], row["backend"]], row[field])
        if self.rows:
            yield from (family for _, family in families)


def collector(state_dir: str) -> PoolCounters:
    """The collector of this node's pool counters (reads ``STATE_DIR/pools``)."""
    return PoolCounters(read(state_dir))
