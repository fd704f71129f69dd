"""Quarantine idempotence (issue 11, item 5): the MTA's retry of a message reuses its copy.

On SQLite and on a private PostgreSQL, and (issue 15) for both stores where the test is not
about files (``store``: ``files`` or ``database``): a retry after a delivery failure,
after a database failure between the file and its row (the retry marker; the database
store stores nothing then), within and past the retry window; and what the retry key
does and does not depend on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from mailsift.core.disposition import Disposer
from mailsift.core.pipeline import Pipeline
from mailsift.delivery.next_hop import smtp_relay
from mailsift.errors import DatabaseError
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Result
from mailsift.scanners.actions import deliver, quarantine
from mailsift.scanners.basic import regexp_scan
from mailsift.settings import Settings
from mailsift.storage import db
from mailsift.storage.db import Database
from mailsift.storage.quarantine.admin import reindex
from mailsift.storage.quarantine.dbstore import DATABASE_PATH, DatabaseStore, read_chunks, stored_ids
from mailsift.storage.quarantine.index import QuarantineFilter, count_entries, find_entries
from mailsift.storage.quarantine.store import (
    RETRY_MARKERS,
    RETRY_WINDOW,
    QuarantineStore,
    file_id,
    read_original,
    retry_key,
    stored_files,
)
from mailsift.testing import RecordingServer

NOW = 1_700_000_000.0
VIRUS = Result(1.0, "EICAR-Test", "regexp_scan", "")
BODY = b"From: a@sender.example\r\nTo: b@example.test\r\nSubject: Hi\r\n\r\nVIRUS-SIGNATURE\r\n"


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def mail(
    data: bytes = BODY,
    sender: str = "a@sender.example",
    recipients: tuple[str, ...] = ("b@example.test", "c@example.test"),
    threshold: int = 10_000_000,
) -> Mail:
    return Mail(Envelope(sender=sender, recipients=list(recipients), queue_id="Q1"), data, spool_threshold=threshold)


def files(root: str) -> list[str]:
    return list(stored_files(root))


@pytest.fixture(params=["files", "database"])
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_store(kind: str, root: str, database: Database, **options: Any) -> QuarantineStore | DatabaseStore:
    """The store ``kind`` names (``QUARANTINE_STORE``), the file one under ``root``."""
    if kind == "database":
        return DatabaseStore(database, root=root, **options)
    return QuarantineStore(root, database, **options)


def copies(root: str, database: Database) -> int:
    """Messages the stores hold: files under ``root`` and messages kept in the database."""
    return len(files(root)) + len(database.call(stored_ids))


async def test_a_retry_after_a_delivery_failure_reuses_the_quarantine_copy(
    database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture, store: str
) -> None:
    """deliver(quarantine(...)): copy stored, the next hop says 451, the MTA retries: one copy."""
    root = str(tmp_path / "q")
    scanners = [deliver(quarantine("spam", regexp_scan([("Test.Virus", "VIRUS-SIGNATURE")])))]
    with RecordingServer() as next_hop:
        disposer = Disposer(make_store(store, root, database), smtp_relay("127.0.0.1", next_hop.port))
        next_hop.data_reply = "451 4.3.0 try later"
        first = mail(b"Received: from a by b; Mon, 1 Jan 2024\r\n" + BODY)
        outcome = await disposer.carry_out(first, await Pipeline(scanners).evaluate(first))
        assert outcome.reply.code == 451
        assert copies(root, database) == 1
        next_hop.data_reply = None
        # The retry, through another relay hop: a new leading Received line, recipients in another order.
        retry = mail(
            b"Received: from c by d;\r\n\tMon, 1 Jan 2024 10:00\r\nReceived: from a by b; Mon, 1 Jan 2024\r\n" + BODY,
            recipients=("c@example.test", "b@example.test"),
        )
        with caplog.at_level(logging.INFO, logger="mailsift.quarantine"):
            outcome = await disposer.carry_out(retry, await Pipeline(scanners).evaluate(retry))
        await disposer.delivery.close()
        assert outcome.reply.code == 250
        assert len(next_hop.messages) == 1
    assert copies(root, database) == 1, "a second quarantine copy of the retried message"
    assert database.call(count_entries) == 1
    if store == "files":
        assert outcome.quarantined == (os.path.join(root, files(root)[0]),)
    else:
        [entry] = database.call(find_entries, QuarantineFilter(), NOW)
        assert outcome.quarantined == (f"{DATABASE_PATH}/{entry.id}",)
        assert b"".join(read_chunks(database, entry)) == first.raw  # the first attempt's copy
    assert "retried message: quarantine copy" in caplog.text


async def test_a_different_message_envelope_or_category_is_a_new_copy(
    database: Database, tmp_path: Path, store: str
) -> None:
    root = str(tmp_path / "q")
    kind, store = store, make_store(store, root, database)  # type: ignore[assignment]
    paths = {
        await store.put(mail(), "virus", VIRUS),
        await store.put(mail(), "virus", VIRUS),  # the retry: reused
        await store.put(mail(BODY + b"more\r\n"), "virus", VIRUS),
        await store.put(mail(sender="x@sender.example"), "virus", VIRUS),
        await store.put(mail(recipients=("b@example.test",)), "virus", VIRUS),
        await store.put(mail(), "spam", VIRUS),
        # A Received field below another field is content, not a leading trace field.
        await store.put(mail(b"Subject: Hi\r\nReceived: x\r\n\r\nVIRUS-SIGNATURE\r\n"), "virus", VIRUS),
        await store.put(mail(b"Subject: Hi\r\n\r\nVIRUS-SIGNATURE\r\n"), "virus", VIRUS),
    }
    assert len(paths) == 7
    assert database.call(count_entries) == 7 == copies(root, database)
    assert len(files(root)) == (7 if kind == "files" else 0)


async def test_the_retry_window(database: Database, tmp_path: Path, store: str) -> None:
    root, clock, kind = str(tmp_path / "q"), Clock(), store
    store = make_store(kind, root, database, clock=clock)  # type: ignore[assignment]
    first = await store.put(mail(), "virus", VIRUS)
    clock.now = NOW + RETRY_WINDOW - 1
    assert await store.put(mail(), "virus", VIRUS) == first
    clock.now = NOW + RETRY_WINDOW + 1  # the MTA gave up long ago: this is the message sent anew
    assert await store.put(mail(), "virus", VIRUS) != first
    shorter = make_store(kind, root, database, clock=clock, retry_window=60)
    clock.now += 61
    assert database.call(count_entries) == 2
    await shorter.put(mail(), "virus", VIRUS)
    assert database.call(count_entries) == 3
    keys = [e.retry_key for e in database.call(find_entries, QuarantineFilter(), NOW)]
    assert keys == [retry_key(mail(), "virus")] * 3
    assert copies(root, database) == 3


async def test_a_row_whose_file_is_gone_is_not_reused(database: Database, tmp_path: Path) -> None:
    root = str(tmp_path / "q")
    store = QuarantineStore(root, database)
    first = await store.put(mail(), "virus", VIRUS)
    os.unlink(first)
    second = await store.put(mail(), "virus", VIRUS)
    assert second != first
    assert read_original(second) == BODY


async def test_a_copy_whose_row_failed_is_reused_and_indexed_by_the_retry(database: Database, tmp_path: Path) -> None:
    """The database fails between the file's fsync and its row: 451; the retry finds the file (marker)."""
    root = str(tmp_path / "q")
    broken = db.sqlite(str(tmp_path / "no-such-dir" / "index.db"))
    broken.configure(str(tmp_path))
    with pytest.raises(DatabaseError):
        await QuarantineStore(root, broken).put(mail(), "virus", VIRUS)
    with pytest.raises(DatabaseError):  # still down: the same file, still one
        await QuarantineStore(root, broken).put(mail(), "virus", VIRUS)
    [orphan] = files(root)
    path = await QuarantineStore(root, database).put(mail(), "virus", VIRUS)  # the database is back
    assert path == os.path.join(root, orphan)
    assert files(root) == [orphan]
    [entry] = database.call(find_entries, QuarantineFilter(), NOW)
    assert entry.id == file_id(orphan)
    assert os.listdir(os.path.join(root, RETRY_MARKERS)) == []
    assert await QuarantineStore(root, database).put(mail(), "virus", VIRUS) == path


async def test_reindex_adopts_an_orphan_then_the_retry_finds_its_row(database: Database, tmp_path: Path) -> None:
    settings = Settings(state_dir=str(tmp_path), database=database)
    root = settings.quarantine_dir
    broken = db.sqlite(str(tmp_path / "no-such-dir" / "index.db"))
    broken.configure(str(tmp_path))
    with pytest.raises(DatabaseError):
        await QuarantineStore(root, broken).put(mail(), "virus", VIRUS)
    [orphan] = files(root)
    assert reindex(settings).adopted == [file_id(orphan)]
    assert os.listdir(os.path.join(root, RETRY_MARKERS)) == []  # the row carries the key now
    assert await QuarantineStore(root, database).put(mail(), "virus", VIRUS) == os.path.join(root, orphan)
    assert database.call(count_entries) == 1


def test_the_retry_key_streams_a_spooled_message_alike(tmp_path: Path) -> None:
    big = b"Received: from x\r\n" + BODY + b"A" * 300_000 + b"\r\n"
    spooled = mail(big, threshold=1000)
    assert spooled.spooled
    try:
        assert retry_key(spooled, "virus") == retry_key(mail(big), "virus")
        assert retry_key(spooled, "virus") == retry_key(mail(b"X-Mailsift-Score: 1\r\n" + big[18:]), "virus")
    finally:
        spooled.close()
    # A trace field longer than one read is skipped whole.
    long_trace = b"Received: " + b"x" * 200_000 + b"\r\n X" + b"y" * 100 + b"\r\n"
    assert retry_key(mail(long_trace + BODY), "virus") == retry_key(mail(BODY), "virus")
    assert retry_key(mail(BODY), "virus") != retry_key(mail(BODY.replace(b"Hi", b"Ho")), "virus")


async def test_a_failed_database_store_leaves_nothing_and_the_retry_stores_once(
    database: Database, tmp_path: Path
) -> None:
    """The database store's crash point between writing and commit: a database failure rolls the chunks
    and the row back together (nothing half-written shows, no orphan to adopt); the retry stores one copy."""
    broken = db.sqlite(str(tmp_path / "no-such-dir" / "index.db"))
    broken.configure(str(tmp_path))
    with pytest.raises(DatabaseError):
        await DatabaseStore(broken).put(mail(), "virus", VIRUS)
    assert copies(str(tmp_path / "q"), database) == 0
    first = await DatabaseStore(database).put(mail(), "virus", VIRUS)
    assert await DatabaseStore(database).put(mail(), "virus", VIRUS) == first
    [entry] = database.call(find_entries, QuarantineFilter(), NOW)
    assert b"".join(read_chunks(database, entry)) == BODY
    assert reindex(Settings(state_dir=str(tmp_path), database=database)).dangling == []
