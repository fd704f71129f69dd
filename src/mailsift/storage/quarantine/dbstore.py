"""The database quarantine store: the quarantined message itself in ``DATABASE``, in chunks.

``QUARANTINE_STORE = "database"`` (default ``"files"``, :class:`~mailsift.storage.quarantine.store.QuarantineStore`)
keeps each quarantined message in the ``quarantine_chunk`` table: ``seq`` 0 holds
mailsift's head (the ``X-Mailsift-*`` envelope headers a file of the file store
starts with: the verdict's detail lives only there), ``seq`` 1, 2... the
original message, :data:`CHUNK_SIZE` bytes per row,
so that every gateway sharing one PostgreSQL sees the messages, not just the
index, with no shared directory.

The same interface as the file store:

* :meth:`DatabaseStore.put` streams the message (from memory or its spool
  file) into chunk rows and inserts the index row (its ``path`` is
  :data:`DATABASE_PATH`) in **one transaction**, committed before it returns:
  durable means committed, and the MTA gets its 250 only then.  A crash
  before the commit leaves nothing (no orphan, no marker: the MTA's retry
  stores it anew); after the commit the entry is complete.  The MTA's retry
  within the retry window finds the committed row by its
  :func:`~mailsift.storage.quarantine.store.retry_key` and reuses it.
* :meth:`DatabaseStore.chunks` reads the original message back as an
  iterator of chunks, one query per chunk: a 50 MB message never needs 50 MB
  of Python memory, on the way in or out.
* :meth:`DatabaseStore.remove` deletes the row, its recipients and its chunks
  in one transaction (:func:`~mailsift.storage.quarantine.index.remove_entry`).

:func:`open_store` picks the store a config names.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.engine import Connection

from mailsift.errors import MailsiftError, StorageError
from mailsift.message.mail import Mail
from mailsift.message.result import Result
from mailsift.settings import Settings
from mailsift.storage.db import Database
from mailsift.storage.quarantine.index import DATABASE_PATH as DATABASE_PATH
from mailsift.storage.quarantine.index import QuarantineEntry, add_entry, find_retry, remove_entry
from mailsift.storage.quarantine.store import (
    RETRY_WINDOW,
    QuarantineStore,
    build_entry,
    crash_point,
    head,
    head_detail,
    locate,
    log,
    retry_key,
)
from mailsift.storage.schema import quarantine_chunk_table

CHUNK_SIZE = 1024 * 1024
"""Bytes per ``quarantine_chunk`` row (the most a put or a read holds of a message at once)."""
STORES = ("files", "database")
"""``QUARANTINE_STORE``'s values."""


class Store(Protocol):
    """What every quarantine store does (the file store and the database store)."""

    async def put(self, mail: Mail, category: str, result: Result) -> str: ...

    def chunks(self, entry: QuarantineEntry) -> Iterator[bytes]: ...

    def remove(self, entry: QuarantineEntry) -> None: ...

    def detail(self, entry: QuarantineEntry) -> str: ...


def in_database(entry: QuarantineEntry) -> bool:
    """Whether ``entry``'s message is kept in the database (else in a file of the store)."""
    return entry.path == DATABASE_PATH


def open_store(settings: Settings) -> Store:
    """The quarantine store ``settings`` name (``QUARANTINE_STORE``): files under STATE_DIR, or the database."""
    if settings.quarantine_store == "database":
        return DatabaseStore(settings.require_database(), root=settings.quarantine_dir)
    return QuarantineStore(settings.quarantine_dir, settings.database)


def store_of(settings: Settings, entry: QuarantineEntry) -> Store:
    """The store holding ``entry``'s message, whatever ``QUARANTINE_STORE`` says now (a quarantine
    may hold both kinds after the setting changed): what readers (web, release, show) go through."""
    if in_database(entry):
        return DatabaseStore(settings.require_database())
    return QuarantineStore(settings.quarantine_dir, settings.database)


class DatabaseStore:
    """Writes quarantined messages, and their index rows, into ``database`` (one transaction each).

    ``retry_window`` as :class:`~mailsift.storage.quarantine.store.QuarantineStore`'s;
    ``chunk_size``: bytes per row (:data:`CHUNK_SIZE`); ``root``: the file store's folder on this node,
    where the MTA's retry may find the copy its first attempt stored as a file (``QUARANTINE_STORE``
    changed between the attempts).
    """

    def __init__(
        self,
        database: Database,
        *,
        clock: Callable[[], float] = time.time,
        retry_window: float = RETRY_WINDOW,
        chunk_size: int = CHUNK_SIZE,
        root: str | None = None,
    ) -> None:
        self.root = root
        self.database = database
        self.clock = clock
        self.retry_window = retry_window
        self.chunk_size = chunk_size

    async def put(self, mail: Mail, category: str, result: Result) -> str:
        """Store ``mail`` and its index row, committed; returns ``:database/<id>``.

        Raises :class:`~mailsift.errors.StorageError` (the spooled message cannot
        be read) or :class:`~mailsift.errors.DatabaseError`: both answer 451, and
        nothing was stored.
        """
        try:
            key = await asyncio.to_thread(retry_key, mail, category)
        except OSError as error:  # a spooled message that cannot be read
            raise StorageError(f"cannot read the message to quarantine: {error.strerror or error}") from error
        if self.retry_window > 0:
            found = await self.database.run(find_retry, key, self.clock() - self.retry_window)
            reused = None if found is None else await asyncio.to_thread(self._reusable, found)
            if found is not None and reused is not None:
                log.info(
                    "queue_id=%s: retried message: quarantine copy %s reused (%s)",
                    mail.envelope.queue_id or "-",
                    found.id,
                    "database" if in_database(found) else reused,
                )
                return reused
        entry = build_entry(mail, category, result, key, self.clock()).with_path(DATABASE_PATH)
        await self.database.run(_store, entry, head(entry, result.detail), mail, self.chunk_size)
        crash_point("quarantine-indexed")
        return f"{DATABASE_PATH}/{entry.id}"

    def _reusable(self, found: QuarantineEntry) -> str | None:
        """Where the copy of the retried message is: kept in the database (stored in the transaction of
        its row), or a file of this node's file store (the first attempt was stored with
        ``QUARANTINE_STORE = "files"``); None if this node cannot see it (a file on another node's
        disk: a second copy is stored rather than trusting one no reader here can reach)."""
        if in_database(found):
            return f"{DATABASE_PATH}/{found.id}"
        return None if self.root is None else locate(self.root, found)

    def chunks(self, entry: QuarantineEntry) -> Iterator[bytes]:
        """The original message of ``entry``, chunk by chunk (one query each); StorageError if it is
        missing or its size is not the indexed one (the last chunk read tells)."""
        return read_chunks(self.database, entry)

    def remove(self, entry: QuarantineEntry) -> None:
        """Delete ``entry``'s row, recipients and chunks, in one transaction."""
        self.database.call(remove_entry, entry.id)

    def detail(self, entry: QuarantineEntry) -> str:
        """The verdict's detail (``X-Mailsift-Detail`` of the head in chunk 0), or ``""``."""
        return detail_in_database(self.database, entry.id)


def detail_in_database(database: Database, entry_id: str) -> str:
    """The verdict's detail of the message ``entry_id`` kept in ``database``, or ``""`` (gone meanwhile,
    or the database failed: the verdict is shown without it)."""
    try:
        return head_detail(database.call(_chunk, entry_id, 0) or b"")
    except MailsiftError:
        return ""


def read_chunks(database: Database, entry: QuarantineEntry) -> Iterator[bytes]:
    """:meth:`DatabaseStore.chunks` (for any reader holding a database)."""
    if database.call(_chunk, entry.id, 0) is None:
        raise StorageError(f"{entry.id}: its message is missing from the database")
    seq, total = 1, 0
    while (data := database.call(_chunk, entry.id, seq)) is not None:
        total += len(data)
        seq += 1
        yield data
    if total != entry.size:
        raise StorageError(f"{entry.id}: {total} bytes stored in the database, {entry.size} indexed")


def stored_ids(connection: Connection) -> set[str]:
    """Every id with a message in the database (``reindex``: these rows have no file, by design)."""
    c = quarantine_chunk_table.c
    return set(connection.execute(select(c.quarantine_id).where(c.seq == 0)).scalars())


def _chunk(connection: Connection, entry_id: str, seq: int) -> bytes | None:
    c = quarantine_chunk_table.c
    data: Any = connection.execute(select(c.data).where(c.quarantine_id == entry_id, c.seq == seq)).scalar()
    return None if data is None else bytes(data)


def _store(connection: Connection, entry: QuarantineEntry, first: bytes, mail: Mail, chunk_size: int) -> None:
    """The head (chunk 0), the message's chunks, then the index row, in the caller's transaction
    (committed by Database.call)."""
    insert = quarantine_chunk_table.insert()
    connection.execute(insert, {"quarantine_id": entry.id, "seq": 0, "data": first})
    with mail.open() as stream:
        seq = 1
        while True:
            try:
                block = stream.read(chunk_size)
            except OSError as error:
                raise StorageError(f"cannot read the message to quarantine: {error.strerror or error}") from error
            if not block:
                break
            connection.execute(insert, {"quarantine_id": entry.id, "seq": seq, "data": block})
            seq += 1
    crash_point("quarantine-stored")
    add_entry(connection, entry)
    crash_point("quarantine-uncommitted")
