"""Statistics: counters per five-minute interval in the database (SAGATOR's collector, modernised).

The ``stats()`` hook counts every message after its disposition::

    HOOKS = [stats()]                  # writes to DATABASE

Counted per (interval start, recipient domain, verdict, scanner, node): messages,
recipients, bytes and scan time.  ``node`` is the node that counted (``NODE``,
:attr:`mailsift.settings.Settings.node_name`): each node adds to its own rows, so
``/metrics`` can say what this node did, while the graphs and ``mailsift stats``
sum every node (or one, with ``nodes=``).  ``domain`` ``*`` holds the totals (a
message to two domains counts once there, and once in each domain's rows).
The verdict is what was done: ``clean``, ``delivered`` (detected, delivered
anyway), ``rejected``, ``dropped``, ``quarantined``, ``tempfail``, ``refused``
(clean, but the next hop refused it); the scanner is the deciding scanner's
name (empty when nothing was detected).  Greylisting outcomes of ``smtpd_policy`` are counted
in the same table with verdicts ``greylist-deferred``, ``greylist-passed`` and
``greylist-whitelisted`` (see :class:`PolicyCounter`).

The mail path never waits on the database: counts are summed in memory per
process and written every ``flush_interval`` seconds by a background task,
as one transaction of atomic upserts (``INSERT ... ON CONFLICT DO UPDATE SET
messages = messages + excluded.messages``), so forked workers and several
gateways sharing PostgreSQL add up without losing an increment.  Rows are
written in key order so two writers never deadlock on PostgreSQL.

Loss is bounded: a worker killed hard loses at most the counts of its last
``flush_interval`` seconds; a database that fails keeps the counts in memory
(retried at the next flush) up to ``max_keys`` distinct keys, beyond which new
keys are dropped and counted in :attr:`stats.dropped` with a warning.  A
draining worker flushes once more (up to ``close_timeout`` seconds).

Graphs, ``/metrics`` and ``mailsift stats`` read the table with
:func:`series` and :func:`totals`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, select
from sqlalchemy.engine import Connection

from mailsift import validators
from mailsift.core.hooks import Hook
from mailsift.errors import ConfigError, MailsiftError
from mailsift.message.result import Disposition
from mailsift.storage.db import Database
from mailsift.storage.schema import stats_table
from mailsift.storage.sql import delete_batch, upsert

if TYPE_CHECKING:
    from mailsift.core.disposition import Outcome
    from mailsift.message.mail import Mail
    from mailsift.message.result import Decision
    from mailsift.settings import Settings

log = logging.getLogger("mailsift.counters")

RESOLUTION = 300
"""Seconds per stored interval (SAGATOR's graphs were fed every five minutes)."""
TOTAL = "*"
"""The ``domain`` of the totals rows."""
MAIL_VERDICTS = ("clean", "delivered", "quarantined", "rejected", "dropped", "tempfail", "refused")
GREYLIST_VERDICTS = ("greylist-deferred", "greylist-passed", "greylist-whitelisted")
GROUPS = ("verdict", "scanner", "domain", "node")
MAX_LABEL = 200
"""Longest domain or scanner name stored (envelope input is hostile)."""

# --------------------------------------------------------------------------- what is counted


Key = tuple[int, str, str, str]
"""(period_start, domain, verdict, scanner); the node is the process's own (:attr:`Collector.node`)."""


@dataclass(slots=True)
class Counts:
    """The summed values of one key."""

    messages: int = 0
    recipients: int = 0
    bytes: int = 0
    scan_seconds: float = 0.0

    def add(self, other: Counts) -> None:
        self.messages += other.messages
        self.recipients += other.recipients
        self.bytes += other.bytes
        self.scan_seconds += other.scan_seconds


def label(text: str) -> str:
    """A domain or scanner name fit to store and show: printable, bounded, lower-case domains stay so."""
    text = "".join(c if c.isprintable() else "?" for c in text[:MAX_LABEL])
    return text.encode("utf-8", "replace").decode("utf-8")


def domain_of(address: str) -> str:
    """The recipient's domain, lower-cased (empty for a local name without ``@``)."""
    _, at, domain = address.rpartition("@")
    return label(domain.strip().rstrip(">").lower()) if at else ""


def verdict_of(decision: Decision, outcome: Outcome) -> str:
    """What was done with the message (one of :data:`MAIL_VERDICTS`)."""
    code = outcome.reply.code
    if decision.disposition is Disposition.TEMPFAIL or 400 <= code < 500:
        return "tempfail"
    if decision.result.detected:
        return {
            Disposition.DELIVER: "delivered",
            Disposition.REJECT: "rejected",
            Disposition.DROP: "dropped",
            Disposition.QUARANTINE: "quarantined",
        }[decision.disposition]
    return "refused" if code >= 500 else "clean"


def period_of(now: float) -> int:
    return int(now // RESOLUTION) * RESOLUTION


class Tally:
    """Counts summed in memory, bounded to ``max_keys`` distinct keys."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self.pending: dict[Key, Counts] = {}
        self.dropped = 0

    def add(self, key: Key, counts: Counts) -> None:
        entry = self.pending.get(key)
        if entry is None:
            if len(self.pending) >= self.max_keys:
                self.dropped += counts.messages
                return
            entry = self.pending[key] = Counts()
        entry.add(counts)

    def count(
        self,
        now: float,
        recipients: Sequence[str],
        verdict: str,
        scanner: str,
        size: int,
        seconds: float,
    ) -> None:
        """One message: a totals row and one row per recipient domain."""
        period, scanner = period_of(now), label(scanner)
        self.add((period, TOTAL, verdict, scanner), Counts(1, len(recipients), size, seconds))
        per_domain: dict[str, int] = {}
        for recipient in recipients:
            domain = domain_of(recipient)
            per_domain[domain] = per_domain.get(domain, 0) + 1
        for domain, count in per_domain.items():
            self.add((period, domain, verdict, scanner), Counts(1, count, size, seconds))

    def take(self) -> dict[Key, Counts]:
        pending, self.pending = self.pending, {}
        return pending

    def put_back(self, counts: dict[Key, Counts]) -> None:
        """Counts whose write failed: kept for the next flush (within the bound)."""
        for key, value in counts.items():
            self.add(key, value)


def upsert_counters(connection: Connection, counts: dict[Key, Counts], node: str = "") -> None:
    """Add ``counts`` (of ``node``) to the table, atomically per row, in key order (no deadlock between writers)."""
    if not counts:
        return
    column = stats_table.c
    rows = [
        {
            "period_start": key[0],
            "domain": key[1],
            "verdict": key[2],
            "scanner": key[3],
            "node": node,
            "messages": value.messages,
            "recipients": value.recipients,
            "bytes": value.bytes,
            "scan_seconds": value.scan_seconds,
        }
        for key, value in sorted(counts.items())
    ]
    upsert(
        connection,
        stats_table,
        rows,
        update=lambda new: {
            "messages": column.messages + new.messages,
            "recipients": column.recipients + new.recipients,
            "bytes": column.bytes + new.bytes,
            "scan_seconds": column.scan_seconds + new.scan_seconds,
        },
    )


# --------------------------------------------------------------------------- the writer


class Collector:
    """Per-process counts for one database, written in the background every ``flush_interval``."""

    def __init__(self, *, flush_interval: float, max_keys: int, close_timeout: float) -> None:
        self.flush_interval, self.close_timeout = flush_interval, close_timeout
        self.tally = Tally(max_keys)
        self.database: Database | None = None
        self.node = ""
        """The node counting (``NODE``): the rows this process adds to."""
        self._task: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def started(self, database: Database, node: str = "") -> None:
        """Make sure the background writer runs in this event loop; ``node``: whose counts these are."""
        self.database, self.node = database, node
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop, self._lock = loop, asyncio.Lock()
            self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush()

    async def flush(self) -> None:
        """Write what is pending now (failures are logged and kept for the next try)."""
        if self.database is None or self._lock is None:
            return
        async with self._lock:
            counts = self.tally.take()
            if not counts:
                return
            try:
                await self.database.run(upsert_counters, counts, self.node)
            except MailsiftError as error:
                self.tally.put_back(counts)
                log.warning("stats: counters not written yet (kept, retried): %s", error.message)
            except Exception:
                self.tally.put_back(counts)
                log.exception("stats: counters not written yet (kept, retried)")

    async def close(self) -> None:
        """Stop the writer and flush once more (up to ``close_timeout`` seconds)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await asyncio.wait_for(self.flush(), self.close_timeout)
        except TimeoutError:
            log.warning("stats: counters of the last %g s not written (database too slow)", self.flush_interval)


class stats(Hook):
    """Count every message in the ``stats_counter`` table (``db``: ``DATABASE`` when not given).

    ``flush_interval`` seconds between writes (the most a hard crash loses),
    ``max_keys`` distinct (interval, domain, verdict, scanner) keys kept in
    memory while the database is unreachable.
    """

    name = "stats"
    for_files = True  # fusefs counts the files it scanned

    def __init__(
        self,
        db: Database | None = None,
        *,
        flush_interval: float = 5.0,
        max_keys: int = 20000,
        close_timeout: float = 10.0,
    ) -> None:
        if db is not None and not isinstance(db, Database):
            raise ConfigError(f"stats: db must be db.sqlite(...) or db.database(...), got {db!r}")
        self.db = db
        self._database: Database | None = db
        self.collector = Collector(
            flush_interval=validators.positive(flush_interval, "stats: flush_interval", unit="number of seconds"),
            max_keys=validators.positive_int(max_keys, "stats: max_keys"),
            close_timeout=validators.positive(close_timeout, "stats: close_timeout", unit="number of seconds"),
        )

    @property
    def dropped(self) -> int:
        """Messages not counted because ``max_keys`` keys were waiting."""
        return self.collector.tally.dropped

    def describe(self) -> str:
        return f"stats({self._database.describe() if self._database else 'DATABASE'})"

    def check(self, settings: Settings) -> None:
        if self.db is not None:
            self.db.configure(settings.state_dir)
        elif settings.database is None:
            raise ConfigError("stats: no database: set DATABASE or give stats(db.sqlite(...))")
        else:
            self._database = settings.database

    async def after(self, mail: Mail, decision: Decision, outcome: Outcome, settings: Settings) -> None:
        database = self._database or settings.database
        if database is None:
            raise ConfigError("stats: no database")
        self.collector.started(database, settings.node_name)
        self.collector.tally.count(
            time.time(),
            mail.envelope.recipients,
            verdict_of(decision, outcome),
            decision.result.scanner if decision.result.detected else "",  # a clean result decides nothing
            mail.size,
            mail.elapsed(),
        )

    async def flush(self) -> None:
        """Write the pending counts now (tests, and before a report)."""
        await self.collector.flush()

    async def close(self) -> None:
        await self.collector.close()


# --------------------------------------------------------------------------- greylisting (smtpd_policy)


def greylist_outcome(decision: Decision) -> str | None:
    """``greylist-deferred``/``-passed``/``-whitelisted`` if the greylist scanner answered, else None."""
    for result in (decision.result, *decision.trail):
        if result.scanner != "greylist":
            continue
        if result.detected:
            return "greylist-deferred"
        if "auto-whitelisted" in result.detail:
            return "greylist-whitelisted"
        if result.detail.startswith("passed"):
            return "greylist-passed"
    return None


class PolicyCounter:
    """The greylisting outcomes of one running ``smtpd_policy``, counted into its database.

    Owned by the service's server (:class:`mailsift.services.postfix_policy.PolicyServer`):
    it counts with :meth:`count` (in the event loop; never waits) and flushes
    with :meth:`close` when it drains.  Requests the greylist scanner did not
    answer are not counted.
    """

    def __init__(self, database: Database, node: str = "") -> None:
        self.database, self.node = database, node
        self.collector = Collector(flush_interval=5.0, max_keys=20000, close_timeout=10.0)

    def count(self, decision: Decision, recipient: str, seconds: float = 0.0) -> None:
        outcome = greylist_outcome(decision)
        if outcome is None:
            return
        self.collector.started(self.database, self.node)
        self.collector.tally.count(time.time(), [recipient] if recipient else [], outcome, "greylist", 0, seconds)

    async def close(self) -> None:
        """Flush and stop counting."""
        await self.collector.close()


# --------------------------------------------------------------------------- queries


@dataclass(frozen=True, slots=True)
class Range:
    """A graph's time span: ``buckets`` bars of ``step`` seconds each."""

    name: str
    step: int
    buckets: int

    @property
    def span(self) -> int:
        return self.step * self.buckets


RANGES = {
    "hour": Range("hour", 300, 12),
    "day": Range("day", 3600, 24),
    "week": Range("week", 6 * 3600, 28),
    "month": Range("month", 86400, 30),
}
"""SAGATOR's RRDtool pages: the last hour, day, week and month."""
METRICS = ("messages", "recipients", "bytes", "scan_seconds")


@dataclass(frozen=True, slots=True)
class Series:
    """Values per bucket and group: ``values[group][i]`` is bucket ``i`` starting at ``start + i*step``."""

    start: int
    step: int
    buckets: int
    values: dict[str, list[float]] = field(default_factory=dict)

    def bucket_starts(self) -> list[int]:
        return [self.start + i * self.step for i in range(self.buckets)]


def _scope(domains: Iterable[str] | None, group: str, nodes: Iterable[str] | None = None) -> Any:
    """The rows to read: the totals (all domains), or the given domains' rows; of every node, or of ``nodes``."""
    column = stats_table.c.domain
    if domains is None:
        scope = column != TOTAL if group == "domain" else column == TOTAL
    else:
        scope = column.in_(sorted(set(domains)))
    return scope if nodes is None else and_(scope, stats_table.c.node.in_(sorted(set(nodes))))


def series(
    connection: Connection,
    *,
    end: float,
    range_: Range,
    group: str = "verdict",
    metric: str = "messages",
    domains: Iterable[str] | None = None,
    verdicts: Sequence[str] = MAIL_VERDICTS,
    nodes: Iterable[str] | None = None,
) -> Series:
    """Sums of ``metric`` per bucket of ``range_`` ending with the bucket holding ``end``, per ``group``.

    ``domains`` None reads everything (admins); otherwise only those domains'
    rows (a domain admin), summed.  ``nodes`` None sums every node of the cluster.
    """
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}")
    last = int(end // range_.step) * range_.step
    start = last - (range_.buckets - 1) * range_.step
    column = stats_table.c
    bucket = (column.period_start - start) // range_.step
    grouped = getattr(column, group)
    rows = connection.execute(
        select(bucket.label("bucket"), grouped.label("key"), func.sum(getattr(column, metric)).label("value"))
        .where(column.period_start >= start, column.period_start < start + range_.span)
        .where(_scope(domains, group, nodes), column.verdict.in_(list(verdicts)))
        .group_by(bucket, grouped)
    ).all()
    values: dict[str, list[float]] = {}
    for row in rows:
        index = int(row.bucket)
        if 0 <= index < range_.buckets:
            values.setdefault(row.key, [0.0] * range_.buckets)[index] += float(row.value or 0)
    if group == "verdict":  # a fixed order, so colours and stacking stay put between pages
        order = [v for v in verdicts if v in values]
        values = {key: values[key] for key in order}
    else:
        values = dict(sorted(values.items()))
    return Series(start, range_.step, range_.buckets, values)


@dataclass(frozen=True, slots=True)
class Total:
    """Sums for one key (the values of the grouping columns, in order)."""

    key: tuple[str, ...]
    messages: int
    recipients: int
    bytes: int
    scan_seconds: float


def totals(
    connection: Connection,
    *,
    since: float | None = None,
    group: Sequence[str] = ("verdict",),
    domains: Iterable[str] | None = None,
    verdicts: Sequence[str] | None = MAIL_VERDICTS,
    nodes: Iterable[str] | None = None,
) -> list[Total]:
    """Sums since ``since`` (all time if None) per value of the ``group`` columns.

    ``domains`` None reads the totals rows (or, grouped by domain, every
    domain's rows); otherwise only those domains' rows.  ``nodes`` None sums
    every node; otherwise only those nodes' rows (``/metrics``: this node's).
    """
    if not group or any(name not in GROUPS for name in group):
        raise ValueError(f"group must be columns among {GROUPS}")
    column = stats_table.c
    keys = [getattr(column, name) for name in group]
    query = select(
        *keys,
        func.sum(column.messages),
        func.sum(column.recipients),
        func.sum(column.bytes),
        func.sum(column.scan_seconds),
    ).where(_scope(domains, "domain" if "domain" in group else "verdict", nodes))
    if since is not None:
        query = query.where(column.period_start >= period_of(since))
    if verdicts is not None:
        query = query.where(column.verdict.in_(list(verdicts)))
    rows = connection.execute(query.group_by(*keys).order_by(*keys)).all()
    width = len(keys)
    return [
        Total(
            tuple(str(value) for value in row[:width]),
            int(row[width]),
            int(row[width + 1]),
            int(row[width + 2]),
            float(row[width + 3]),
        )
        for row in rows
    ]


def prune(connection: Connection, before: float, limit: int | None = None) -> int:
    """Delete intervals older than ``before`` (at most ``limit`` rows: one batch of
    :func:`mailsift.storage.sql.delete_in_batches`); returns rows deleted (for a daily expiry)."""
    if limit is not None:
        return delete_batch(connection, stats_table, stats_table.c.period_start < before, limit)
    return int(connection.execute(stats_table.delete().where(stats_table.c.period_start < before)).rowcount)
