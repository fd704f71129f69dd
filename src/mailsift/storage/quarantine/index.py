"""The quarantine index: one database row per quarantined message, and its queries.

The files in the quarantine store (:mod:`mailsift.storage.quarantine.store`) are the
truth; the index is how they are found without reading them: who sent what to
whom, when, why it was held (the verdict: scanner, level, name), where the
file is (relative to the quarantine root, so gateways mounting one shared
store at different places agree), and whether it was released, when and by
whom (SAGATOR's ``sqback``, with a record).

A row is written right after its file was fsynced, and before the MTA is
answered.  A crash between the two leaves a file without a row: ``mailsift
quarantine reindex`` (which ``expire`` runs first) adopts such files from
their ``X-Mailsift-*`` headers.  Adding is therefore "insert if absent", so a
row written by the gateway and one adopted by a concurrent reindex never
collide.

Each row carries its ``retry_key`` (indexed): the MTA's retry of the same
message finds the row with :func:`find_retry` and reuses it.  A release is
claimed in ``quarantine_release`` (:func:`claim_release`) before it is sent
and the claim dropped when the release is recorded (:func:`finish_release`).

Every function here takes a SQLAlchemy ``Connection`` and is meant to be run
through :meth:`mailsift.storage.db.Database.call` (one transaction) or ``run`` (the
same, in a thread).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.engine import Connection, Row

from mailsift.storage.schema import (
    quarantine_chunk_table,
    quarantine_recipient_table,
    quarantine_release_table,
    quarantine_table,
)
from mailsift.storage.sql import claim

DATABASE_PATH = ":database"
"""The index row's ``path`` of a message kept in the database (no file path starts with ':'):
:mod:`mailsift.storage.quarantine.dbstore`."""
HELD = "held"
RELEASED = "released"
STATES = (HELD, RELEASED)


@dataclass(frozen=True)
class QuarantineEntry:
    """What the index knows about one quarantined message."""

    id: str
    created: float
    category: str
    sender: str
    recipients: tuple[str, ...]
    subject: str
    size: int
    """Size of the original message (without mailsift's envelope headers)."""
    scanner: str
    level: float
    name: str
    client: str
    path: str
    """The file, relative to the quarantine root (``virus/new/<maildir name>``)."""
    queue_id: str = ""
    state: str = HELD
    released_at: float | None = None
    released_by: str | None = None
    released_to: str | None = None
    retry_key: str = ""
    """What stays the same across the MTA's retries (:func:`mailsift.storage.quarantine.store.retry_key`);
    ``''`` for entries older than it."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``list --json``)."""
        data = asdict(self)
        data["recipients"] = list(self.recipients)
        return data

    def with_path(self, path: str) -> QuarantineEntry:
        return replace(self, path=path)


@dataclass(frozen=True)
class QuarantineFilter:
    """Which rows ``list`` (and ``expire``) select; every set field must match.

    ``sender`` and ``recipient`` match an address exactly, ignoring case, or a
    whole domain when given as ``@example.com``.  Ages are seconds before ``now``.
    """

    recipient: str | None = None
    sender: str | None = None
    category: str | None = None
    state: str | None = None
    older_than: float | None = None
    newer_than: float | None = None
    limit: int | None = None
    ids: Sequence[str] = field(default_factory=tuple)


def storable(value: str) -> str:
    """Text any database takes: raw 8-bit bytes (surrogate escapes) read as UTF-8, bad ones
    replaced, and no NUL (PostgreSQL refuses it) — a header must never make indexing fail."""
    return (
        value.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\0", "\N{REPLACEMENT CHARACTER}")
    )


def add_entry(connection: Connection, entry: QuarantineEntry) -> bool:
    """Index ``entry`` unless its id is already there; True if this call added it."""
    values = {key: storable(value) if isinstance(value, str) else value for key, value in entry.as_dict().items()}
    recipients = [storable(r) for r in entry.recipients]
    del values["recipients"]
    if not claim(connection, quarantine_table, values):
        return False
    if recipients:
        connection.execute(
            quarantine_recipient_table.insert(),
            [{"quarantine_id": values["id"], "position": i, "recipient": r} for i, r in enumerate(recipients)],
        )
    return True


def _address_match(column: Any, value: str) -> Any:
    value = value.strip().lower()
    if value.startswith("@"):
        return func.lower(column).endswith(value, autoescape=True)
    return func.lower(column) == value


def find_entries(connection: Connection, selection: QuarantineFilter, now: float) -> list[QuarantineEntry]:
    """The rows matching ``selection``, newest first."""
    q = quarantine_table.c
    statement = select(quarantine_table).order_by(q.created.desc(), q.id)
    if selection.ids:
        statement = statement.where(q.id.in_(list(selection.ids)))
    if selection.category:
        statement = statement.where(q.category == selection.category)
    if selection.state:
        statement = statement.where(q.state == selection.state)
    if selection.sender:
        statement = statement.where(_address_match(q.sender, selection.sender))
    if selection.recipient:
        r = quarantine_recipient_table.c
        statement = statement.where(
            exists().where(r.quarantine_id == q.id, _address_match(r.recipient, selection.recipient))
        )
    if selection.older_than is not None:
        statement = statement.where(q.created < now - selection.older_than)
    if selection.newer_than is not None:
        statement = statement.where(q.created >= now - selection.newer_than)
    if selection.limit:
        statement = statement.limit(selection.limit)
    rows = connection.execute(statement).all()
    return _with_recipients(connection, rows)


def _with_recipients(connection: Connection, rows: Sequence[Row[Any]]) -> list[QuarantineEntry]:
    ids = [row.id for row in rows]
    recipients: dict[str, list[str]] = {i: [] for i in ids}
    r = quarantine_recipient_table.c
    for start in range(0, len(ids), 500):  # bounded IN lists
        chunk = ids[start : start + 500]
        for row in connection.execute(
            select(r.quarantine_id, r.recipient).where(r.quarantine_id.in_(chunk)).order_by(r.quarantine_id, r.position)
        ):
            recipients[row.quarantine_id].append(row.recipient)
    return [QuarantineEntry(recipients=tuple(recipients[row.id]), **row._asdict()) for row in rows]


def get_entry(connection: Connection, entry_id: str) -> QuarantineEntry | None:
    """The row with ``entry_id``, or None."""
    rows = connection.execute(select(quarantine_table).where(quarantine_table.c.id == entry_id)).all()
    found = _with_recipients(connection, rows)
    return found[0] if found else None


def find_retry(connection: Connection, key: str, since: float) -> QuarantineEntry | None:
    """The newest entry stored since ``since`` under the retry key ``key`` (the same message,
    envelope and category), or None."""
    q = quarantine_table.c
    rows = connection.execute(
        select(quarantine_table).where(q.retry_key == key, q.created >= since).order_by(q.created.desc(), q.id).limit(1)
    ).all()
    found = _with_recipients(connection, rows)
    return found[0] if found else None


def known_ids(connection: Connection) -> set[str]:
    """Every indexed id (for ``reindex``: files whose id is not here are orphans)."""
    return set(connection.execute(select(quarantine_table.c.id)).scalars())


def mark_released(connection: Connection, entry_id: str, by: str, to: Sequence[str], now: float) -> bool:
    """Record a release (the last one wins): state, time, who, to which addresses."""
    return bool(
        connection.execute(
            update(quarantine_table)
            .where(quarantine_table.c.id == entry_id)
            .values(state=RELEASED, released_at=now, released_by=by, released_to=json.dumps(list(to)))
        ).rowcount
    )


def remove_entry(connection: Connection, entry_id: str) -> bool:
    """Delete the row (and its recipients, any release claim, and its message if it is kept in the
    database: :mod:`mailsift.storage.quarantine.dbstore`); True if it existed."""
    connection.execute(delete(quarantine_chunk_table).where(quarantine_chunk_table.c.quarantine_id == entry_id))
    connection.execute(delete(quarantine_recipient_table).where(quarantine_recipient_table.c.quarantine_id == entry_id))
    connection.execute(delete(quarantine_release_table).where(quarantine_release_table.c.quarantine_id == entry_id))
    return bool(connection.execute(delete(quarantine_table).where(quarantine_table.c.id == entry_id)).rowcount)


def count_entries(connection: Connection) -> int:
    return int(connection.execute(select(func.count()).select_from(quarantine_table)).scalar_one())


# --------------------------------------------------------------------------- release claims


@dataclass(frozen=True)
class ReleaseClaim:
    """A release in progress: who claimed it and when (Unix seconds)."""

    by: str
    at: float


def claim_release(connection: Connection, entry_id: str, by: str, now: float, stale: float) -> ReleaseClaim | None:
    """Claim the release of ``entry_id`` for ``by``; None if this call has it, else the claim in the way.

    One atomic insert (:func:`mailsift.storage.sql.claim`) decides between concurrent
    releases on any gateway; a claim older than ``stale`` seconds (its sender died
    between the claim and the record) is taken over by a compare-and-set update.
    """
    if claim(connection, quarantine_release_table, {"quarantine_id": entry_id, "claimed_by": by, "claimed_at": now}):
        return None
    c = quarantine_release_table.c
    row = connection.execute(select(c.claimed_by, c.claimed_at).where(c.quarantine_id == entry_id)).first()
    if row is None:  # given back in between: the next attempt may claim it
        return ReleaseClaim("another release", now)
    if row.claimed_at < now - stale:
        taken = connection.execute(
            update(quarantine_release_table)
            .where(c.quarantine_id == entry_id, c.claimed_at == row.claimed_at)
            .values(claimed_by=by, claimed_at=now)
        ).rowcount
        if taken:
            return None
    return ReleaseClaim(row.claimed_by, row.claimed_at)


def unclaim_release(connection: Connection, entry_id: str, by: str, at: float) -> None:
    """Give back this caller's claim (after a failure, or once the release was recorded)."""
    c = quarantine_release_table.c
    connection.execute(
        delete(quarantine_release_table).where(c.quarantine_id == entry_id, c.claimed_by == by, c.claimed_at == at)
    )


def finish_release(
    connection: Connection, entry_id: str, by: str, to: Sequence[str], now: float, claimed_at: float
) -> None:
    """Record the release and drop its claim, in one transaction."""
    mark_released(connection, entry_id, by, to, now)
    unclaim_release(connection, entry_id, by, claimed_at)
