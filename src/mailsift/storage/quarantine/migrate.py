"""``mailsift quarantine migrate --to database|files``: move a quarantine between the stores.

Entry by entry, each one in bounded memory (the message is streamed in
:data:`~mailsift.storage.quarantine.dbstore.CHUNK_SIZE` pieces), each one
crash-safe and the whole restartable:

* **files → database**: the file's bytes (mailsift's head as chunk 0, the
  message in chunks 1..) and the index row's new ``path`` are committed in one
  transaction; only then is the file removed.  A crash before the commit leaves
  the file and its row as they were; after it, a file whose entry is in the
  database already, which the next run removes.
* **database → files**: the file is written, fsynced and renamed into ``new/``
  first (:func:`mailsift.delivery.maildir.store`, the head and message exactly as
  the file store writes them); then the row's ``path`` and the removal of its
  chunks are committed in one transaction.  A crash in between leaves a file
  whose entry still says "database": the next run finds the file by its id and
  commits it without writing a second one.

Each row is switched with a compare-and-set on its old ``path``: a row deleted,
expired or moved meanwhile (another node, another run) is left alone.  Moving
back and forth leaves byte-identical files (the head is kept verbatim).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from mailsift.delivery import maildir
from mailsift.errors import MailsiftError, StorageError
from mailsift.settings import Settings
from mailsift.storage.db import Database
from mailsift.storage.quarantine.dbstore import CHUNK_SIZE, DATABASE_PATH, in_database, read_chunks, stored_ids
from mailsift.storage.quarantine.index import QuarantineEntry, QuarantineFilter, find_entries
from mailsift.storage.quarantine.store import crash_point, file_id, locate, stored_files, unlink_durably
from mailsift.storage.schema import quarantine_chunk_table, quarantine_table

DIRECTIONS = ("database", "files")


@dataclass
class Migrated:
    """What a run did: entries moved, already in place, files left over by a crash removed, failures."""

    moved: int = 0
    already: int = 0
    cleaned: int = 0
    failed: list[str] = field(default_factory=list)


def migrate(settings: Settings, to: str, *, report: Callable[[str], None] = lambda line: None) -> Migrated:
    """Move every indexed message into the store ``to`` (``"database"`` or ``"files"``)."""
    if to not in DIRECTIONS:
        raise ValueError(f"migrate: --to must be one of {DIRECTIONS}, got {to!r}")
    database = settings.require_database()
    root = settings.quarantine_dir
    done = Migrated()
    entries = database.call(find_entries, QuarantineFilter(), 0.0)
    files = {file_id(relative): relative for relative in stored_files(root)}
    for entry in reversed(entries):  # oldest first
        try:
            if to == "database":
                moved = _into_database(database, root, entry)
            else:
                moved = _into_files(database, root, entry, files.get(entry.id))
        except (MailsiftError, OSError) as error:
            message = error.message if isinstance(error, MailsiftError) else str(error)
            done.failed.append(f"{entry.id}: {message}")
            continue
        if moved:
            done.moved += 1
            report(f"moved {entry.id} to the {to}")
        else:
            done.already += 1
    if to == "database":  # files a crash left after their entry was committed into the database
        in_db = database.call(stored_ids)
        for entry_id, relative in files.items():
            leftover = os.path.join(root, relative)
            if entry_id in in_db and os.path.exists(leftover):
                unlink_durably(leftover)
                done.cleaned += 1
    return done


def _into_database(database: Database, root: str, entry: QuarantineEntry) -> bool:
    if in_database(entry):
        return False
    path = locate(root, entry)
    if path is None:
        raise StorageError(f"the file {entry.path} is missing from {root}")
    relative = os.path.relpath(path, root)
    database.call(_store_file, entry, path, relative)
    crash_point("migrate-committed")
    unlink_durably(path)
    return True


def _store_file(connection: Connection, entry: QuarantineEntry, path: str, relative: str) -> None:
    insert = quarantine_chunk_table.insert()
    c = quarantine_chunk_table.c
    connection.execute(delete(quarantine_chunk_table).where(c.quarantine_id == entry.id))
    with open(path, "rb") as handle:
        head_length = os.fstat(handle.fileno()).st_size - entry.size
        if head_length <= 0:
            raise StorageError(f"{path}: shorter than its indexed size {entry.size}")
        connection.execute(insert, {"quarantine_id": entry.id, "seq": 0, "data": handle.read(head_length)})
        seq = 1
        while block := handle.read(CHUNK_SIZE):
            connection.execute(insert, {"quarantine_id": entry.id, "seq": seq, "data": block})
            seq += 1
    if not _switch(connection, entry, (entry.path, relative), DATABASE_PATH):  # raising rolls the chunks back
        raise StorageError("deleted or moved meanwhile")
    crash_point("migrate-uncommitted")


def _into_files(database: Database, root: str, entry: QuarantineEntry, existing: str | None) -> bool:
    if not in_database(entry):
        return False
    if existing is None:  # else a file written by a run that crashed before its commit: complete (in new/)
        head: Any = database.call(_head, entry.id)
        if head is None:
            raise StorageError("its message is missing from the database")
        source: Any = _Reader(read_chunks(database, entry))  # a read(size) is all maildir.store uses
        path = maildir.store(os.path.join(root, entry.category), [head], tag=entry.id, source=source)
        existing = os.path.relpath(path, root)
        crash_point("migrate-written")
    database.call(_take_file, entry, existing)
    return True


def _head(connection: Connection, entry_id: str) -> bytes | None:
    c = quarantine_chunk_table.c
    data: Any = connection.execute(select(c.data).where(c.quarantine_id == entry_id, c.seq == 0)).scalar()
    return None if data is None else bytes(data)


def _take_file(connection: Connection, entry: QuarantineEntry, relative: str) -> None:
    if _switch(connection, entry, (DATABASE_PATH,), relative):
        c = quarantine_chunk_table.c
        connection.execute(delete(quarantine_chunk_table).where(c.quarantine_id == entry.id))


def _switch(connection: Connection, entry: QuarantineEntry, old: tuple[str, ...], new: str) -> bool:
    q = quarantine_table.c
    statement = update(quarantine_table).where(q.id == entry.id, q.path.in_(list(old))).values(path=new)
    return bool(connection.execute(statement).rowcount)


class _Reader:
    """The chunks of an iterator as a binary stream's ``read(size)`` (for :func:`maildir.store`)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.pending = b""

    def read(self, size: int = -1) -> bytes:
        while not self.pending:
            try:
                self.pending = next(self.chunks)
            except StopIteration:
                return b""
        if size < 0:
            size = len(self.pending)
        block, self.pending = self.pending[:size], self.pending[size:]
        return block
