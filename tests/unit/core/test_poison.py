"""Poison mail (core/poison.py): the message key, what counts, scanner health, the counts in the database."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from mailsift.core.mailpath import MailPath
from mailsift.core.poison import (
    ScannerHealth,
    count_attempt,
    counted_reason,
    message_key,
    poison,
    purge,
)
from mailsift.errors import (
    ConfigError,
    ContentError,
    DatabaseError,
    DeliveryError,
    MailsiftError,
    ScannerError,
    ScannerTimeout,
    ScannerUnavailable,
    StorageError,
)
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Disposition, Result, SetDisposition
from mailsift.scanners.base import Scanner, Target
from mailsift.settings import Settings
from mailsift.storage.db import Database
from mailsift.storage.schema import poison_attempt_table

BODY = b"Hello,\r\nthe body.\r\n"
HEAD = b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: a  folded\r\n subject\r\nMessage-ID: <1@x>\r\n"


def mail(data: bytes, sender: str = "alice@example.test", recipients: tuple[str, ...] = ("bob@example.test",)) -> Mail:
    return Mail(Envelope(sender=sender, recipients=list(recipients)), data)


def key(data: bytes, **envelope: object) -> str:
    return message_key(mail(data, **envelope))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the key


@pytest.mark.parametrize(
    "trace",
    [
        b"Received: from mx1.example (mx1 [192.0.2.1]) by gw; Mon, 1 Jan 2024 10:00:00 +0000\r\n",
        b"Return-Path: <alice@example.test>\r\n",
        b"Delivered-To: bob@example.test\r\n",
        b"X-Original-To: bob@example.test\r\n",
        b"X-Mailsift: mailsift 1.0 on gw.example\r\n",
        b"X-Mailsift-Checked: checked\r\n",
        b"Received-SPF: pass (mx1: domain of example.test)\r\n",
        b"Authentication-Results: mx1; spf=pass\r\n",
        b"ARC-Seal: i=1; a=rsa-sha256; t=1700000000; cv=none\r\n",
        b"X-Spam-Status: No, score=0.1\r\n",
    ],
)
def test_trace_headers_are_left_out_of_the_key(trace: bytes) -> None:
    assert key(trace + HEAD + b"\r\n" + BODY) == key(HEAD + b"\r\n" + BODY)
    assert key(HEAD + trace + b"\r\n" + BODY) == key(HEAD + b"\r\n" + BODY)  # wherever it is


def test_each_retry_with_new_trace_headers_has_the_same_key() -> None:
    first = b"Received: by mx1; Mon, 1 Jan 2024 10:00:00 +0000\r\nX-Mailsift: on gw1\r\n" + HEAD
    second = b"Received: by mx2; Mon, 1 Jan 2024 11:30:00 +0000\r\nReceived: by mx1; Mon\r\n" + HEAD
    assert key(first + b"\r\n" + BODY) == key(second + b"\r\n" + BODY)


def test_headers_and_body_below_the_trace_headers_are_in_the_key() -> None:
    plain = key(HEAD + b"\r\n" + BODY)
    assert key(HEAD.replace(b"Subject: a", b"Subject: b") + b"\r\n" + BODY) != plain
    assert key(HEAD + b"X-Other: 1\r\n\r\n" + BODY) != plain
    assert key(HEAD + b"\r\n" + BODY + b"more\r\n") != plain
    assert key(HEAD + b"\r\n" + BODY.replace(b"body", b"bodY")) != plain


def test_the_envelope_is_in_the_key_recipients_in_any_order() -> None:
    data = HEAD + b"\r\n" + BODY
    plain = key(data, recipients=("bob@example.test", "carol@example.test"))
    assert key(data, recipients=("carol@example.test", "bob@example.test")) == plain
    assert key(data, recipients=("bob@example.test",)) != plain
    assert key(data, sender="mallory@example.test", recipients=("bob@example.test", "carol@example.test")) != plain
    assert key(data, sender="", recipients=("bob@example.test", "carol@example.test")) != plain


def test_line_ends_folding_and_trailing_lines_do_not_change_the_key() -> None:
    """smtpd receives CRLF; a milter rebuilds the header lines from the MTA's name/value pairs."""
    crlf = HEAD + b"\r\n" + BODY
    lf = crlf.replace(b"\r\n", b"\n")
    refolded = crlf.replace(b"Subject: a  folded\r\n subject", b"Subject:  a folded subject")
    assert key(lf) == key(crlf) == key(refolded) == key(crlf + b"\r\n\r\n")


def test_a_spooled_message_has_the_same_key(tmp_path: Path) -> None:
    data = HEAD + b"\r\n" + b"line of the body\r\n" * 20_000  # several read chunks, CRLF across their edges
    spooled = Mail(
        Envelope("alice@example.test", ["bob@example.test"]), data, spool_threshold=0, spool_dir=str(tmp_path)
    )
    assert spooled.spooled
    assert message_key(spooled) == key(data) == key(data.replace(b"\r\n", b"\n"))


def test_a_message_without_body_or_separator_has_a_key() -> None:
    assert key(HEAD) == key(HEAD + b"\r\n")
    assert key(b"") != key(HEAD)


# --------------------------------------------------------------------------- what counts


def always() -> bool:
    return True


def never() -> bool:
    return False


def test_content_tied_errors_count_whatever_the_scanners_did() -> None:
    assert counted_reason(ContentError("RecursionError in the MIME parser"), never).startswith("content: ")


@pytest.mark.parametrize(
    "error",
    [
        ScannerUnavailable("clamd down"),
        ScannerTimeout("clamd timed out"),
        DatabaseError("database down"),
        StorageError("disk full"),
        DeliveryError("next hop down"),
        MailsiftError("anything else"),
    ],
)
def test_infrastructure_never_counts(error: MailsiftError) -> None:
    assert counted_reason(error, always) == ""


def test_a_scanner_error_counts_only_while_that_scanner_answers_other_mail() -> None:
    error = ScannerError("clamd: Can't allocate memory ERROR")
    assert counted_reason(error, always).startswith("scanner error on this message only")
    assert counted_reason(error, never) == ""


def test_a_scanner_error_wrapping_the_infrastructure_never_counts() -> None:
    for cause in (StorageError("spool unreadable"), OSError(28, "No space left on device")):
        error = ScannerError("cmd: failed")
        error.__cause__ = cause
        assert counted_reason(error, always) == ""
    wrapped_bug = ScannerError("cmd: TypeError")
    wrapped_bug.__cause__ = TypeError("a scanner's bug on this message")
    assert counted_reason(wrapped_bug, always) != ""


def test_scanner_health_counts_answers_on_other_messages_within_the_window() -> None:
    health, clamd, other = ScannerHealth(), Scanner(), Scanner()
    assert not health.answered_another(clamd, 1, 0.0)
    health.answered(clamd, 1, 100.0)  # earlier parts of message 1 itself
    health.answered(clamd, 1, 101.0)
    assert not health.answered_another(clamd, 1, 0.0)
    assert health.answered_another(clamd, 2, 50.0)  # message 2: clamd answered message 1 lately
    assert not health.answered_another(clamd, 2, 102.0)  # ... but not within the window
    assert not health.answered_another(other, 2, 0.0)  # another scanner answered nothing
    health.answered(clamd, 2, 110.0)
    assert health.answered_another(clamd, 2, 100.0)  # message 1's answer is remembered behind message 2's
    assert health.answered_another(clamd, 1, 105.0)


def test_settings_are_checked() -> None:
    assert poison().max_attempts == 5
    assert poison().category == "unscannable"
    assert poison().expire == 7 * 86400
    assert poison(3, expire=3600, healthy_within="1m").healthy_within == 60
    for bad in ({"max_attempts": 0}, {"max_attempts": True}, {"category": "Bad Name"}, {"expire": "soon"},
                {"expire": -1}, {"healthy_within": 0}, {"admin": "nobody"}):  # fmt: skip
        with pytest.raises(ConfigError, match="poison"):
            poison(**bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the counts


def test_counts_add_up_per_key_and_expire(database: Database) -> None:
    day = 86400.0
    assert database.call(count_attempt, "k1", 1000.0, day, "content", "a@x") == 1
    assert database.call(count_attempt, "k1", 1100.0, day, "content", "a@x") == 2
    assert database.call(count_attempt, "k2", 1100.0, day, "content", "a@x") == 1
    assert database.call(count_attempt, "k1", 1200.0 + day, day, "content", "a@x") == 1  # idle past expire: anew
    rows = database.call(lambda c: c.execute(poison_attempt_table.select()).all())
    assert [row.key for row in rows] == ["k1"]  # k2, idle past expire, was purged on that access
    assert database.call(purge, 1201.0 + day) == 1
    assert database.call(lambda c: c.execute(poison_attempt_table.select()).all()) == []


class Failing(Scanner):
    """Raises ``error`` for a message whose body holds ``POISON``, answers the others."""

    name = "failing"

    def __init__(self, error: MailsiftError) -> None:
        self.error = error

    async def scan(self, target: Target) -> Result:
        if b"POISON" in target.data:
            raise type(self.error)(self.error.message)
        return Result(0.0, "", self.name)


class Deferring(Scanner):
    """A content rule that defers on purpose (a deliberate 4xx, as greylisting)."""

    name = "deferring"

    async def scan(self, target: Target) -> Result:
        return Result(1.0, "Deferred", self.name, "", (SetDisposition(Disposition.TEMPFAIL, "come back later"),))


def run_path(path: MailPath, data: bytes) -> tuple[int, str]:
    async def once() -> tuple[int, str]:
        decision, outcome = await path.process(mail(data))
        return outcome.reply.code, decision.result.name

    return asyncio.run(once())


def path_with(scanner: Scanner, tmp_path: Path, database: Database, **options: object) -> MailPath:
    settings = Settings(
        state_dir=str(tmp_path),
        database=database,
        poison=poison(3, **options),
        hostname="gw.example",  # type: ignore[arg-type]
    )
    (tmp_path / "quarantine").mkdir()
    return MailPath([scanner], settings, next_hop=("127.0.0.1", 9))  # nothing listens: deliveries fail (451)


BAD = HEAD + b"\r\nPOISON\r\n"


def test_a_content_error_is_quarantined_at_max_attempts(tmp_path: Path, database: Database) -> None:
    path = path_with(Failing(ContentError("RecursionError")), tmp_path, database)
    assert run_path(path, BAD) == (451, "ContentError")
    assert run_path(path, BAD) == (451, "ContentError")
    assert run_path(path, BAD) == (250, "Unscannable")
    assert len(list((tmp_path / "quarantine" / "unscannable" / "new").iterdir())) == 1
    assert database.call(lambda c: c.execute(poison_attempt_table.select()).all()) == []  # forgotten once stored
    assert run_path(path, BAD) == (451, "ContentError")  # the same message again: counted anew


@pytest.mark.parametrize("error", [ScannerUnavailable("down"), ScannerTimeout("slow"), DatabaseError("db")])
def test_infrastructure_errors_never_quarantine(tmp_path: Path, database: Database, error: MailsiftError) -> None:
    path = path_with(Failing(error), tmp_path, database)
    for _ in range(6):
        assert run_path(path, BAD)[0] == 451
    assert not (tmp_path / "quarantine" / "unscannable").exists()
    assert database.call(lambda c: c.execute(poison_attempt_table.select()).all()) == []


def test_a_deliberate_4xx_never_counts(tmp_path: Path, database: Database) -> None:
    path = path_with(Deferring(), tmp_path, database)
    for _ in range(6):
        assert run_path(path, BAD) == (451, "Deferred")
    assert database.call(lambda c: c.execute(poison_attempt_table.select()).all()) == []


def test_a_scanner_error_counts_when_the_scanner_answered_other_mail(tmp_path: Path, database: Database) -> None:
    path = path_with(Failing(ScannerError("clamd: Can't allocate memory ERROR")), tmp_path, database)
    assert run_path(path, BAD)[0] == 451  # nothing answered yet: not counted
    assert database.call(lambda c: c.execute(poison_attempt_table.select()).all()) == []
    run_path(path, HEAD + b"\r\nfine\r\n")  # answered (delivery fails: no next hop, still an answer)
    assert run_path(path, BAD)[0] == 451
    assert run_path(path, BAD)[0] == 451
    assert run_path(path, BAD) == (250, "Unscannable")


def test_a_scanner_error_outside_the_health_window_does_not_count(tmp_path: Path, database: Database) -> None:
    path = path_with(Failing(ScannerError("ERROR")), tmp_path, database, healthy_within=0.001)
    run_path(path, HEAD + b"\r\nfine\r\n")
    time.sleep(0.01)
    for _ in range(4):
        assert run_path(path, BAD)[0] == 451
    assert database.call(lambda c: c.execute(poison_attempt_table.select()).all()) == []


def test_no_database_no_poison(tmp_path: Path) -> None:
    settings = Settings(state_dir=str(tmp_path), poison=poison(1))
    path = MailPath([Failing(ContentError("x"))], settings, next_hop=("127.0.0.1", 9))
    assert run_path(path, BAD)[0] == 451
