"""Once per cluster: a job (the daily digest, quarantine expiry, statistics pruning) done by one node per period.

Every node of a cluster may schedule the same cron line; the first to take the
job's lease for the period does the work, the others see who did::

    lease = database.call(leases.take, "report", leases.period_of(now, 86400), "node-a", now)
    if not lease.ours:
        print(f"already done by {lease.holder} at {leases.when(lease.taken_at)}")

A lease is a row of ``mailsift_leases`` (:data:`~mailsift.storage.schema.lease_table`),
keyed by the job's ``name`` and its ``period`` (the window aligned on multiples of
its length since the epoch, in UTC: ``2024-05-01T00:00:00Z/86400``), taken with
:func:`mailsift.storage.sql.claim` (``INSERT ... ON CONFLICT DO NOTHING``): of
nodes racing for it, exactly one gets it, on SQLite and PostgreSQL alike.

Clocks differ a little between nodes, and a cron line at midnight can fall on
both sides of a period's boundary; so a lease is also refused while the job's
newest lease, of any period, is younger than half a period (:data:`NEAR`).  The
check and the claim run under a per-job lock (PostgreSQL's transaction-scoped
advisory lock; SQLite's ``BEGIN IMMEDIATE`` serializes writers anyway), so two
nodes on both sides of the boundary never both pass it.

``force`` takes the lease whoever holds it (the operator runs the job again).
A lease stays taken after its work, and after a crash in it: run with
``--force`` to do the work again in the same period.  :func:`give_back` drops
a lease whose work failed before anything was done, so another node may retry.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from sqlalchemy import delete, select, text
from sqlalchemy.engine import Connection

from mailsift.storage import sql
from mailsift.storage.schema import lease_table

NEAR = 0.5
"""A job's lease is refused while its newest lease is younger than this fraction of the period."""


@dataclass(frozen=True)
class Lease:
    """The lease of job ``name`` for ``period``: ``ours`` if this call took it, else who holds it."""

    name: str
    period: str
    holder: str
    taken_at: float
    ours: bool


def when(seconds: float) -> str:
    """A lease time as the log shows it: ``2024-05-01T06:00:03Z`` (UTC)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def period_of(now: float, length: float) -> str:
    """The window of ``length`` seconds holding ``now``, aligned on multiples of ``length`` since the epoch."""
    if length <= 0:
        raise ValueError(f"a lease period must be positive, got {length!r}")
    start = int(now // length * length)
    return f"{when(start)}/{int(length)}"


def _length(period: str) -> float:
    return float(period.rpartition("/")[2] or 0)


def _lock(connection: Connection, name: str) -> None:
    """Serialize the takers of one job (PostgreSQL; SQLite's writers take turns already)."""
    if connection.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"mailsift lease {name}".encode()).digest()[:8], "big", signed=True)
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def take(connection: Connection, name: str, period: str, holder: str, now: float, force: bool = False) -> Lease:
    """Take the lease of job ``name`` for ``period`` as ``holder`` unless another node has it (see the module)."""
    _lock(connection, name)
    column = lease_table.c
    if force:
        sql.upsert(
            connection,
            lease_table,
            {"name": name, "period": period, "holder": holder, "taken_at": now},
            update={"holder": holder, "taken_at": now},
        )
        return Lease(name, period, holder, now, True)
    recent = now - _length(period) * NEAR
    newest = connection.execute(
        select(column.period, column.holder, column.taken_at)
        .where(column.name == name, column.taken_at > recent)
        .order_by(column.taken_at.desc())
        .limit(1)
    ).first()
    if newest is not None:
        return Lease(name, str(newest.period), str(newest.holder), float(newest.taken_at), False)
    if sql.claim(connection, lease_table, {"name": name, "period": period, "holder": holder, "taken_at": now}):
        return Lease(name, period, holder, now, True)
    held = connection.execute(
        select(column.holder, column.taken_at).where(column.name == name, column.period == period)
    ).one()
    return Lease(name, period, str(held.holder), float(held.taken_at), False)


def give_back(connection: Connection, lease: Lease) -> bool:
    """Drop ``lease`` (its work failed before anything was done); False if it is no longer this one."""
    column = lease_table.c
    removed = connection.execute(
        delete(lease_table).where(
            column.name == lease.name,
            column.period == lease.period,
            column.holder == lease.holder,
            column.taken_at == lease.taken_at,
        )
    ).rowcount
    return bool(removed)


def prune(connection: Connection, before: float) -> int:
    """Forget leases taken before ``before`` (they only answer "already done" within their period)."""
    return int(connection.execute(delete(lease_table).where(lease_table.c.taken_at < before)).rowcount)
