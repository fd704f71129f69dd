"""The quarantine stores side by side (issue 15, build 1): files and the database, each on SQLite and
on a private PostgreSQL: round trip, the MTA's retry, expiry, big messages in bounded memory.

Every test runs four times: ``store`` is ``files`` or ``database``, ``database`` SQLite or PostgreSQL.
"""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mailsift.errors import StorageError
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Result
from mailsift.settings import Settings
from mailsift.storage.db import Database
from mailsift.storage.quarantine.admin import expire, reindex
from mailsift.storage.quarantine.dbstore import (
    CHUNK_SIZE,
    DATABASE_PATH,
    DatabaseStore,
    Store,
    in_database,
    open_store,
)
from mailsift.storage.quarantine.index import QuarantineEntry, QuarantineFilter, count_entries, find_entries
from mailsift.storage.quarantine.store import QuarantineStore, stored_files
from mailsift.storage.schema import quarantine_chunk_table

VIRUS = Result(1.0, "EICAR-Test", "regexp_scan", "")
BODY = b"From: a@sender.example\r\nTo: b@example.test\r\nSubject: Hi\r\n\r\nVIRUS-SIGNATURE\r\n"
BIG = 50 * 1024 * 1024
"""The big message of the issue: 50 MB."""


@pytest.fixture(params=["files", "database"])
def settings(request: pytest.FixtureRequest, database: Database, tmp_path: Path) -> Settings:
    return Settings(state_dir=str(tmp_path), database=database, quarantine_store=request.param)


def mail(data: bytes = BODY, **options: object) -> Mail:
    envelope = Envelope(sender="a@sender.example", recipients=["b@example.test", "c@example.test"], queue_id="Q1")
    if "path" in options:
        return Mail(envelope, path=str(options["path"]))
    return Mail(envelope, data)


def entries(settings: Settings) -> list[QuarantineEntry]:
    return settings.require_database().call(find_entries, QuarantineFilter(), 0.0)


def chunk_rows(database: Database) -> int:
    return int(database.call(lambda c: c.execute(select(func.count()).select_from(quarantine_chunk_table)).scalar()))


def stored(settings: Settings) -> int:
    """Messages held by the store itself: files, or entries with chunks."""
    files = list(stored_files(settings.quarantine_dir))
    rows = settings.require_database().call(
        lambda c: c.execute(
            select(func.count()).select_from(quarantine_chunk_table).where(quarantine_chunk_table.c.seq == 0)
        ).scalar()
    )
    return len(files) + int(rows)


def test_the_config_picks_the_store(settings: Settings) -> None:
    store = open_store(settings)
    assert isinstance(store, DatabaseStore if settings.quarantine_store == "database" else QuarantineStore)


@pytest.mark.parametrize("data", [BODY, b"", b"x" * (CHUNK_SIZE - 1), b"\0\xff" * CHUNK_SIZE + b"end"])
async def test_round_trip(settings: Settings, data: bytes) -> None:
    store: Store = open_store(settings)
    where = await store.put(mail(data), "virus", VIRUS)
    [entry] = entries(settings)
    assert entry.id in where
    assert (entry.category, entry.sender, entry.name) == ("virus", "a@sender.example", "EICAR-Test")
    assert entry.size == len(data)
    assert entry.recipients == ("b@example.test", "c@example.test")
    assert in_database(entry) == (settings.quarantine_store == "database")
    assert all(len(c) <= CHUNK_SIZE for c in store.chunks(entry))
    assert b"".join(store.chunks(entry)) == data
    assert stored(settings) == 1


async def test_the_retry_reuses_the_copy(settings: Settings) -> None:
    store = open_store(settings)
    first = await store.put(mail(), "virus", VIRUS)
    assert await store.put(mail(), "virus", VIRUS) == first
    assert await store.put(mail(), "spam", VIRUS) != first
    assert settings.require_database().call(count_entries) == 2 == stored(settings)


async def test_expiry_deletes_rows_and_messages(settings: Settings) -> None:
    store = open_store(settings)
    await store.put(mail(), "virus", VIRUS)
    await store.put(mail(BODY + b"two\r\n"), "spam", VIRUS)
    assert stored(settings) == 2
    assert reindex(settings).dangling == []  # a message in the database is not a row without a file
    assert expire(settings, 3600.0) == 0  # younger than an hour: kept
    assert expire(settings, 0.0, now=entries(settings)[0].created + 1) == 2
    assert settings.require_database().call(count_entries) == 0
    assert stored(settings) == 0
    assert chunk_rows(settings.require_database()) == 0


async def test_remove(settings: Settings) -> None:
    store = open_store(settings)
    await store.put(mail(), "virus", VIRUS)
    [entry] = entries(settings)
    store.remove(entry)
    assert entries(settings) == []
    assert stored(settings) == 0
    with pytest.raises(StorageError):
        list(store.chunks(entry))


async def test_a_big_message_in_and_out_in_bounded_memory(settings: Settings, tmp_path: Path) -> None:
    """50 MB from a spool file into the store and back: the Python heap's peak stays below 1/8 of it."""
    spooled = tmp_path / "spooled.eml"
    digest = hashlib.sha256()
    with open(spooled, "wb") as handle:
        head = b"From: a@sender.example\r\nSubject: big\r\n\r\n"
        handle.write(head)
        digest.update(head)
        line = b"0123456789abcdef" * 4 + b"\r\n"
        block = line * 16384  # ~1 MB
        while handle.tell() + len(block) <= BIG:
            handle.write(block)
            digest.update(block)
    size = os.path.getsize(spooled)
    store = open_store(settings)
    settings.require_database().migrate()  # as a server does at its start: not the message's memory
    tracemalloc.start()
    try:
        await store.put(mail(path=spooled), "virus", VIRUS)
        _, peak_in = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        [entry] = entries(settings)
        back, length = hashlib.sha256(), 0
        for chunk in store.chunks(entry):
            back.update(chunk)
            length += len(chunk)
        _, peak_out = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert entry.size == size == length
    assert back.hexdigest() == digest.hexdigest()
    assert peak_in < size / 8, f"put: {peak_in} bytes at the peak for a {size}-byte message"
    assert peak_out < size / 8, f"read: {peak_out} bytes at the peak for a {size}-byte message"


async def test_a_database_copy_with_a_missing_chunk_is_refused(database: Database) -> None:
    store = DatabaseStore(database, chunk_size=10)
    await store.put(mail(), "virus", VIRUS)
    [entry] = database.call(find_entries, QuarantineFilter(), 0.0)
    assert entry.path == DATABASE_PATH
    c = quarantine_chunk_table.c
    database.call(lambda conn: conn.execute(quarantine_chunk_table.delete().where(c.seq == 3)))
    with pytest.raises(StorageError, match="indexed"):
        b"".join(store.chunks(entry))


async def test_the_verdicts_detail_is_kept(settings: Settings) -> None:
    store = open_store(settings)
    await store.put(mail(), "spam", Result(6.5, "Spam", "spamassassin", "score 6.5: BAYES_99, URIBL_BLACK"))
    [entry] = entries(settings)
    assert store.detail(entry) == "score 6.5: BAYES_99, URIBL_BLACK"
    assert b"".join(store.chunks(entry)) == BODY


async def test_a_retry_stored_first_in_files_then_in_the_database_keeps_one_copy(
    database: Database, tmp_path: Path
) -> None:
    """QUARANTINE_STORE changed between the MTA's attempts (either way): the retry reuses the first copy."""
    settings = Settings(state_dir=str(tmp_path), database=database, quarantine_store="files")
    first = await open_store(settings).put(mail(), "virus", VIRUS)
    switched = Settings(state_dir=str(tmp_path), database=database, quarantine_store="database")
    assert await open_store(switched).put(mail(), "virus", VIRUS) == first
    assert database.call(count_entries) == 1 == stored(settings)
    # And the other way round: stored in the database, the retry lands on the file store.
    where = await open_store(switched).put(mail(BODY + b"two\r\n"), "spam", VIRUS)
    assert where.startswith(DATABASE_PATH)
    assert await open_store(settings).put(mail(BODY + b"two\r\n"), "spam", VIRUS) == where
    assert database.call(count_entries) == 2 == stored(settings)
    assert len(list(stored_files(settings.quarantine_dir))) == 1


async def test_a_retry_on_a_node_that_cannot_see_the_first_file_stores_a_second_copy(
    database: Database, tmp_path: Path
) -> None:
    """The first attempt's file is on another node's disk (nodes with different QUARANTINE_STORE, no shared
    directory): this node cannot read it, so it keeps its own copy in the database rather than trust it."""
    await QuarantineStore(str(tmp_path / "node-a" / "quarantine"), database).put(mail(), "virus", VIRUS)
    where = await DatabaseStore(database, root=str(tmp_path / "node-b" / "quarantine")).put(mail(), "virus", VIRUS)
    assert where.startswith(DATABASE_PATH)
    assert database.call(count_entries) == 2
