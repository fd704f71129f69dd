"""The quarantine store and its index, on SQLite and on a private PostgreSQL.

Each message goes through :meth:`QuarantineStore.put` (what the Disposer
calls) or the whole :class:`Disposer`; the index rows, the files and what
``reindex`` would rebuild from the files are compared field by field.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailsift.core.disposition import Disposer
from mailsift.core.pipeline import Pipeline
from mailsift.delivery.next_hop import MaildirDelivery
from mailsift.errors import DatabaseError
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Result
from mailsift.scanners.actions import quarantine
from mailsift.scanners.basic import regexp_scan
from mailsift.storage import db
from mailsift.storage.db import Database
from mailsift.storage.quarantine.index import (
    HELD,
    RELEASED,
    QuarantineFilter,
    add_entry,
    count_entries,
    find_entries,
    get_entry,
    mark_released,
    remove_entry,
)
from mailsift.storage.quarantine.store import (
    DamagedFile,
    QuarantineStore,
    file_id,
    locate,
    read_entry,
    read_original,
    stored_files,
)

DAY = 86400.0
NOW = 1_700_000_000.25


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def message(subject: str = "Hello", body: str = "body", extra: str = "") -> bytes:
    return (f"{extra}From: a@sender.example\r\nTo: b@example.test\r\nSubject: {subject}\r\n\r\n{body}\r\n").encode()


def mail(data: bytes, sender: str = "a@sender.example", recipients: tuple[str, ...] = ("b@example.test",)) -> Mail:
    envelope = Envelope(
        sender=sender,
        recipients=list(recipients),
        client_address="192.0.2.7",
        client_name="mx.sender.example",
        queue_id="4XkQ1",
    )
    return Mail(envelope, data)


VIRUS = Result(1.0, "EICAR-Test", "regexp_scan", "part 2 (eicar.com)")


async def put(store: QuarantineStore, data: bytes, category: str = "virus", **kwargs: object) -> str:
    return await store.put(mail(data, **kwargs), category, VIRUS)  # type: ignore[arg-type]


async def test_put_writes_the_file_then_the_row(database: Database, tmp_path: Path) -> None:
    root = str(tmp_path / "quarantine")
    store = QuarantineStore(root, database, clock=Clock())
    data = message("=?utf-8?q?Gr=C3=BC=C3=9Fe?=", "X5O!P%@AP")
    path = await put(store, data, recipients=("b@example.test", "Carol@Example.test"))
    assert path.startswith(os.path.join(root, "virus", "new") + os.sep)
    assert read_original(path) == data
    [entry] = database.call(find_entries, QuarantineFilter(), NOW)
    assert entry.id == file_id(path)
    assert entry.id in os.path.basename(path)
    assert (entry.created, entry.category, entry.sender) == (NOW, "virus", "a@sender.example")
    assert entry.recipients == ("b@example.test", "Carol@Example.test")
    assert entry.subject == "Grüße"
    assert entry.size == len(data)
    assert (entry.scanner, entry.level, entry.name) == ("regexp_scan", 1.0, "EICAR-Test")
    assert entry.client == "mx.sender.example [192.0.2.7]"
    assert entry.queue_id == "4XkQ1"
    assert entry.path == os.path.relpath(path, root)
    assert (entry.state, entry.released_at, entry.released_by) == (HELD, None, None)
    # Everything the row says can be rebuilt from the file alone (reindex).
    assert read_entry(root, entry.path) == entry


async def test_the_original_is_the_tail_whatever_its_own_headers(database: Database, tmp_path: Path) -> None:
    """An original carrying Return-Path, X-Envelope-To or X-Mailsift-* lines is still cut exactly."""
    root = str(tmp_path / "q")
    forged = "Return-Path: <x@y>\r\nX-Envelope-To: <z@y>\r\nX-Mailsift-Size: 3\r\nX-Mailsift-Quarantine-Id: fake\r\n"
    data = message(extra=forged)
    path = await put(QuarantineStore(root, database, clock=Clock()), data)
    assert read_original(path) == data
    entry = read_entry(root, os.path.relpath(path, root))
    assert entry.recipients == ("b@example.test",)
    assert entry.sender == "a@sender.example"
    assert entry.size == len(data)


async def test_spooled_mail_is_streamed_into_the_store(database: Database, tmp_path: Path) -> None:
    data = message(body="A" * 70 + "\r\n") * 1 + b"B" * 300_000 + b"\r\n"
    spooled = Mail(Envelope(sender="s@x.test", recipients=["r@y.test"]), data, spool_threshold=1000)
    assert spooled.spooled
    path = await QuarantineStore(str(tmp_path / "q"), database).put(spooled, "spam", VIRUS)
    spooled.close()
    assert read_original(path) == data
    [entry] = database.call(find_entries, QuarantineFilter(category="spam"), NOW)
    assert entry.size == len(data)


async def test_filters(database: Database, tmp_path: Path) -> None:
    clock = Clock(NOW - 40 * DAY)
    store = QuarantineStore(str(tmp_path / "q"), database, clock=clock)
    old = file_id(await put(store, message("old"), sender="Boss@Corp.example", recipients=("b@example.test",)))
    clock.now = NOW - 3 * DAY
    mid = file_id(await put(store, message("mid"), "spam", recipients=("c@other.test", "b@example.test")))
    clock.now = NOW - 60
    new = file_id(await put(store, message("new"), "policy", sender="", recipients=("d%x@other.test",)))

    def ids(**kwargs: object) -> list[str]:
        return [e.id for e in database.call(find_entries, QuarantineFilter(**kwargs), NOW)]  # type: ignore[arg-type]

    assert ids() == [new, mid, old]  # newest first
    assert ids(recipient="B@EXAMPLE.TEST") == [mid, old]
    assert ids(recipient="@other.test") == [new, mid]
    assert ids(recipient="%") == []  # LIKE wildcards are escaped
    assert ids(recipient="@x@other.test") == []
    assert ids(sender="boss@corp.example") == [old]
    assert ids(sender="@corp.example") == [old]
    assert ids(sender="") == [new, mid, old]  # empty: no filter
    assert ids(category="spam") == [mid]
    assert ids(older_than=30 * DAY) == [old]
    assert ids(newer_than=7 * DAY) == [new, mid]
    assert ids(older_than=DAY, newer_than=7 * DAY) == [mid]
    assert ids(limit=2) == [new, mid]
    assert ids(ids=[old, "nope", new]) == [new, old]
    database.call(mark_released, mid, "admin", ["b@example.test"], NOW)
    assert ids(state=RELEASED) == [mid]
    assert ids(state=HELD) == [new, old]
    released = database.call(get_entry, mid)
    assert released is not None
    assert (released.state, released.released_at, released.released_by) == (RELEASED, NOW, "admin")
    assert released.recipients == ("c@other.test", "b@example.test")


async def test_adding_twice_keeps_one_row(database: Database, tmp_path: Path) -> None:
    """A row adopted by reindex and the gateway's own row for the same file never collide."""
    root = str(tmp_path / "q")
    path = await put(QuarantineStore(root, database), message(), recipients=("x@y.test", "z@y.test"))
    entry = read_entry(root, os.path.relpath(path, root))
    assert database.call(add_entry, entry) is False
    assert database.call(count_entries) == 1
    assert database.call(get_entry, entry.id).recipients == ("x@y.test", "z@y.test")
    assert database.call(remove_entry, entry.id) is True
    assert database.call(get_entry, entry.id) is None
    assert database.call(remove_entry, entry.id) is False
    assert database.call(add_entry, entry) is True  # adopted again, recipients and all
    assert database.call(get_entry, entry.id) == entry


async def test_disposer_quarantines_and_indexes_before_answering(database: Database, tmp_path: Path) -> None:
    root = str(tmp_path / "q")
    disposer = Disposer(QuarantineStore(root, database), MaildirDelivery(str(tmp_path / "mail")))
    item = mail(message(body="VIRUS-SIGNATURE"), recipients=("b@example.test", "c@example.test"))
    decision = await Pipeline([quarantine("virus", regexp_scan([("Test.Virus", "VIRUS-SIGNATURE")]))]).evaluate(item)
    outcome = await disposer.carry_out(item, decision)
    assert outcome.reply.code == 250
    [path] = outcome.quarantined
    [entry] = database.call(find_entries, QuarantineFilter(), NOW)
    assert (entry.name, entry.scanner, entry.category) == ("Test.Virus", "regexp_scan", "virus")
    assert locate(root, entry) == path
    assert not (tmp_path / "mail").exists()  # quarantined, not delivered


async def test_index_failure_is_a_tempfail_and_leaves_an_adoptable_file(tmp_path: Path) -> None:
    """The database is down: 451 (the MTA retries), and the fsynced file waits for reindex."""
    broken = db.sqlite(str(tmp_path / "no-such-dir" / "index.db"))
    broken.configure(str(tmp_path))
    root = str(tmp_path / "q")
    with pytest.raises(DatabaseError):
        await put(QuarantineStore(root, broken), message())
    disposer = Disposer(QuarantineStore(root, broken), MaildirDelivery(str(tmp_path / "mail")))
    item = mail(message(body="VIRUS-SIGNATURE"))
    decision = await Pipeline([quarantine("virus", regexp_scan([("Test.Virus", "VIRUS-SIGNATURE")]))]).evaluate(item)
    outcome = await disposer.carry_out(item, decision)
    assert outcome.reply.code == 451
    files = list(stored_files(root))
    assert len(files) == 2
    assert {read_entry(root, f).id for f in files} == {file_id(f) for f in files}


async def test_without_a_database_only_the_file_is_written(tmp_path: Path) -> None:
    root = str(tmp_path / "q")
    path = await put(QuarantineStore(root), message())
    assert read_original(path) == message()
    assert [os.path.join(root, f) for f in stored_files(root)] == [path]


def test_a_file_without_a_head_is_damaged(tmp_path: Path) -> None:
    folder = tmp_path / "q" / "virus" / "new"
    folder.mkdir(parents=True)
    (folder / "1.M1P1Q1_20240101T000000-0badf00d.host").write_bytes(message())
    [relative] = stored_files(str(tmp_path / "q"))
    with pytest.raises(DamagedFile):
        read_entry(str(tmp_path / "q"), relative)
    with pytest.raises(DamagedFile):
        read_original(str(tmp_path / "q" / relative))


async def test_locate_follows_a_file_moved_to_cur(database: Database, tmp_path: Path) -> None:
    root = tmp_path / "q"
    path = Path(await put(QuarantineStore(str(root), database), message()))
    [entry] = database.call(find_entries, QuarantineFilter(), NOW)
    moved = root / "virus" / "cur" / (path.name + ":2,S")
    moved.parent.mkdir(exist_ok=True)
    path.rename(moved)
    assert locate(str(root), entry) == str(moved)
    moved.unlink()
    assert locate(str(root), entry) is None


async def test_odd_bytes_and_nul_never_fail_indexing(database: Database, tmp_path: Path) -> None:
    """Raw 8-bit headers and NUL (which PostgreSQL refuses) are stored readably, never an error."""
    root = str(tmp_path / "q")
    data = b"From: a@x.test\r\nSubject: Gr\xc3\xbc\xc3\x9fe \xff\x00end\r\n\r\nbody\r\n"
    item = Mail(Envelope(sender="odd\udcff@x.test", recipients=["r\x00@y.test"]), data)
    path = await QuarantineStore(root, database).put(item, "virus", VIRUS)
    [entry] = database.call(find_entries, QuarantineFilter(), NOW)
    assert entry.subject == "Grüße \ufffd\ufffdend"
    assert entry.sender == "odd\ufffd@x.test"
    assert entry.recipients == ("r\ufffd@y.test",)
    assert read_original(path) == data
