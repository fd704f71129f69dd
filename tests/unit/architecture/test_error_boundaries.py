"""Foreign errors are mapped once, where they enter: the spool, the parser, an unpacker, the quarantine,
the index, the next hop.  Each test raises the foreign error at the boundary and sees the mapped one."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from mailsift import replies
from mailsift.core.disposition import Disposer
from mailsift.core.pipeline import Pipeline
from mailsift.delivery import maildir
from mailsift.delivery.next_hop import Delivery, hand_over, hand_over_each
from mailsift.errors import ContentError, DatabaseError, DeliveryError, StorageError
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Decision, Disposition, Result
from mailsift.mime.tree import TreeBuilder
from mailsift.scanners import archive
from mailsift.scanners.base import Scanner, Target
from mailsift.storage import db
from mailsift.storage.quarantine import store as quarantine_store
from mailsift.storage.quarantine.store import QuarantineStore

MESSAGE = b"From: a@example.test\r\nSubject: s\r\n\r\n" + b"body line\r\n" * 20


def enospc(*args: Any, **kwargs: Any) -> Any:
    raise OSError(errno.ENOSPC, "No space left on device")


class _FullDisk:
    """A file object whose writes fail as on a full disk (the fd is closed with it)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


# --------------------------------------------------------------------------- the spool


def test_a_full_disk_while_spooling_is_a_storage_error_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: _FullDisk(fd))
    with pytest.raises(StorageError, match="cannot spool the message: No space left on device") as caught:
        Mail(Envelope(), MESSAGE, spool_threshold=16, spool_dir=str(tmp_path))
    assert caught.value.reply.code == 451
    assert not caught.value.content_tied
    assert list(tmp_path.iterdir()) == []  # the half-written spool file is gone


def test_a_vanished_spool_file_is_a_storage_error(tmp_path: Path) -> None:
    with Mail(Envelope(), MESSAGE, spool_threshold=16, spool_dir=str(tmp_path)) as mail:
        for name in tmp_path.iterdir():
            name.unlink()
        with pytest.raises(StorageError, match="cannot read the spooled message"):
            _ = mail.raw
        with pytest.raises(StorageError, match="cannot read the spooled message"):
            _ = mail.parts  # the parser reads the spool: the disk's fault, not the message's
        with pytest.raises(StorageError):
            _ = mail.headers


# --------------------------------------------------------------------------- the parser


@pytest.mark.parametrize("fault", [RecursionError("maximum recursion depth"), UnicodeError("bad"), MemoryError()])
def test_the_parser_failing_on_a_message_is_a_content_error(
    fault: BaseException, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise fault

    monkeypatch.setattr(TreeBuilder, "build", fail)
    mail = Mail(Envelope(), MESSAGE)
    with pytest.raises(ContentError, match=type(fault).__name__) as caught:
        _ = mail.parts
    assert caught.value.content_tied
    assert caught.value.reply == replies.CONTENT_FAILED
    assert caught.value.__cause__ is fault


def test_a_content_error_stays_content_tied_through_the_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    class ReadsParts(Scanner):
        name = "reads_parts"

        async def scan(self, target: Target) -> Result:
            return Result(0.0, "", self.name, str(len(target.mail.parts)))

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(TreeBuilder, "build", fail)
    decision = asyncio.run(Pipeline([ReadsParts()]).evaluate(Mail(Envelope(), MESSAGE)))
    assert decision.disposition is Disposition.TEMPFAIL
    assert isinstance(decision.error, ContentError)
    assert decision.error.content_tied
    assert decision.reply.code == 451


def test_an_unpacker_failing_unexpectedly_is_a_content_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError("libarchive")

    monkeypatch.setattr(archive._Reader, "read_archive", fail)
    with pytest.raises(ContentError, match="unpacking failed: MemoryError"):
        archive.read_container(b"PK\x03\x04 not really", ("a.zip",), archive.Budget(10**6, 10, None), None)


# --------------------------------------------------------------------------- quarantine and index


def test_an_os_error_storing_a_quarantine_copy_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maildir, "store", enospc)  # past maildir.store's own conversion
    quarantine = QuarantineStore(str(tmp_path))
    with pytest.raises(StorageError, match="cannot write to the quarantine: No space left on device"):
        asyncio.run(quarantine.put(Mail(Envelope(), MESSAGE), "virus", Result(1.0, "V", "s")))


def test_an_index_failure_is_a_database_error_with_its_own_reply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def locked(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    database = db.sqlite(str(tmp_path / "index.db"))
    database.configure(str(tmp_path))
    monkeypatch.setattr(quarantine_store, "add_entry", locked)
    quarantine = QuarantineStore(str(tmp_path / "q"), database)
    with pytest.raises(DatabaseError, match="database is locked") as caught:
        asyncio.run(quarantine.put(Mail(Envelope(), MESSAGE), "virus", Result(1.0, "V", "s")))
    assert caught.value.reply == replies.DATABASE_FAILED
    assert "scanner" not in caught.value.reply.text.lower()  # not "Content scanner temporarily unavailable"


# --------------------------------------------------------------------------- the next hop


class Failing(Delivery):
    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def deliver(self, mail: Mail, message: bytes) -> str:
        raise self.error


@pytest.mark.parametrize("error", [OSError(errno.EIO, "Input/output error"), TimeoutError()])
def test_io_errors_a_next_hop_lets_through_are_delivery_errors(error: BaseException) -> None:
    mail = Mail(Envelope(recipients=["a@example.test", "b@example.test"]), MESSAGE)
    with pytest.raises(DeliveryError, match="Failing"):
        asyncio.run(hand_over(Failing(error), mail, MESSAGE))
    with pytest.raises(DeliveryError):
        asyncio.run(hand_over_each(Failing(error), mail, MESSAGE))


def test_the_disposition_answers_451_when_the_next_hop_raises_os_error(tmp_path: Path) -> None:
    mail = Mail(Envelope(recipients=["a@example.test"]), MESSAGE)
    disposer = Disposer(QuarantineStore(str(tmp_path)), Failing(OSError(errno.ECONNRESET, "Connection reset")))
    decision = Decision.from_results([Result(0.0, "", "s")])
    outcome = asyncio.run(disposer.carry_out(mail, decision))
    assert outcome.reply == replies.NEXT_HOP_UNAVAILABLE
    assert isinstance(outcome.error, DeliveryError)
    assert not outcome.error.content_tied
