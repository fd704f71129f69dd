"""Atomic writes on SQLite and PostgreSQL, with the one dialect switch they need.

Several workers and gateways write the same rows at once, so a change that
depends on whether a row exists is one statement, never a read then a write:

* :func:`upsert` — ``INSERT ... ON CONFLICT (key) DO UPDATE SET ...``: insert
  the row, or update the one that holds its key (arithmetic done by the
  database, so no increment is lost); optionally ``RETURNING`` the row as it
  now stands;
* :func:`claim` — ``INSERT ... ON CONFLICT DO NOTHING RETURNING key``: take a
  row if nobody has; of concurrent callers exactly one gets ``True``;
* :func:`delete_batch` — ``DELETE ... WHERE key IN (SELECT key ... LIMIT n)``: one bounded
  batch of a pruning job, so a big backlog never holds one long lock (:func:`delete_in_batches`).

Both dialects spell these alike, but SQLAlchemy builds them from each
dialect's own ``insert`` (:func:`insert` picks it).  Every function takes the
``Connection`` of a transaction opened by
:meth:`mailsift.storage.db.Database.call` (or ``run``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

from sqlalchemy import ColumnElement, CursorResult, Table, delete, select, tuple_
from sqlalchemy.dialects import postgresql as postgresql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection
from sqlalchemy.sql.expression import ColumnClause

Insert: TypeAlias = sqlite_dialect.Insert | postgresql_dialect.Insert
"""An INSERT with ``on_conflict_do_update`` and ``on_conflict_do_nothing``."""

Values: TypeAlias = Mapping[str, Any]
Update: TypeAlias = Mapping[str, Any] | Callable[[Any], Mapping[str, Any]]
"""The ``SET`` of an upsert: column name to value or expression over the stored row's columns
(``table.c``); or a function of the proposed row (``excluded``) returning that mapping."""


def insert(connection: Connection, table: Table) -> Insert:
    """The INSERT of ``connection``'s dialect (SQLite or PostgreSQL) for ``table``."""
    if connection.dialect.name == "sqlite":
        return sqlite_dialect.insert(table)
    if connection.dialect.name == "postgresql":
        return postgresql_dialect.insert(table)
    raise NotImplementedError(f"no atomic upsert for the {connection.dialect.name} dialect")


def _key_columns(table: Table, keys: Sequence[str] | None) -> list[Any]:
    if keys is None:
        return list(table.primary_key.columns)
    return [table.c[key] for key in keys]


def upsert(
    connection: Connection,
    table: Table,
    values: Values | Sequence[Values],
    *,
    update: Update,
    keys: Sequence[str] | None = None,
    returning: Sequence[ColumnElement[Any] | ColumnClause[Any]] = (),
) -> CursorResult[*tuple[Any, ...]]:
    """Insert ``values``, or where a row already holds the same ``keys`` (the primary key by
    default; else the columns of a unique constraint), set ``update`` on it: one atomic statement.

    ``values`` is one row (a mapping) or several (a sequence of mappings, run as one
    executemany).  In ``update`` a column of the table (``table.c.passed + 1``) means the
    stored row's value; pass a function to use the proposed row too::

        upsert(connection, stats, rows, update=lambda new: {"messages": stats.c.messages + new.messages})

    ``returning`` columns are the row as it stands after the statement (one row only).
    """
    statement = insert(connection, table)
    assignments = update(statement.excluded) if callable(update) else update
    statement = statement.on_conflict_do_update(index_elements=_key_columns(table, keys), set_=dict(assignments))
    if isinstance(values, Mapping):
        single = statement.values(**values)
        return connection.execute(single.returning(*returning) if returning else single)
    if returning:
        raise ValueError("upsert: returning needs one row, not several")
    return connection.execute(statement, [dict(row) for row in values])


def claim(connection: Connection, table: Table, values: Values, *, keys: Sequence[str] | None = None) -> bool:
    """Insert the row ``values`` unless one with the same ``keys`` (the primary key by default)
    exists; True if this call inserted it, False if the row was already there.

    One atomic statement: of callers racing for the same key in concurrent transactions,
    exactly one gets True (on PostgreSQL the others wait for its commit; SQLite writers
    take turns).  A later caller gets False until the row is deleted.
    """
    key_columns = _key_columns(table, keys)
    statement = (
        insert(connection, table)
        .values(**values)
        .on_conflict_do_nothing(index_elements=key_columns)
        .returning(*key_columns)
    )
    return connection.execute(statement).first() is not None


PRUNE_BATCH = 5000
"""Rows deleted per transaction by :func:`delete_in_batches`: a short lock each, however big the backlog."""


def delete_batch(connection: Connection, table: Table, where: ColumnElement[bool], limit: int = PRUNE_BATCH) -> int:
    """Delete at most ``limit`` rows of ``table`` matching ``where``; returns how many.

    ``DELETE FROM t WHERE key IN (SELECT key FROM t WHERE ... LIMIT n)`` by the primary key
    (a row value for a composite key): the same statement on SQLite and PostgreSQL, neither of
    which has a portable ``DELETE ... LIMIT``.
    """
    keys = list(table.primary_key.columns)
    chosen = select(*keys).where(where).limit(limit)
    target: Any = keys[0] if len(keys) == 1 else tuple_(*keys)
    return int(connection.execute(delete(table).where(target.in_(chosen))).rowcount or 0)


def delete_in_batches(call: Callable[..., int], prune: Callable[..., int], *args: Any, limit: int | None = None) -> int:
    """Run ``prune(connection, *args, limit)`` (one :func:`delete_batch`) in transactions of its own
    through ``call`` (:meth:`mailsift.storage.db.Database.call`) until a batch deletes fewer than
    ``limit`` rows (:data:`PRUNE_BATCH` by default); returns the rows deleted in all.  Writers wait
    for one batch at most, never for the whole backlog."""
    limit = PRUNE_BATCH if limit is None else limit
    total = 0
    while True:
        removed = call(prune, *args, limit)
        total += removed
        if removed < limit:
            return total
