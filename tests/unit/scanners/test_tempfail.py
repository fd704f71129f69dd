"""tempfail: qmail-scanner's "greylist" answer for a content rule (a deliberate 4xx),
and its hold: a retry of the same message released after a delay, state bounded in the database.

Time is the action's ``clock``: no test waits or measures.
"""

from __future__ import annotations

from typing import Any

import pytest

from mailsift import attach_name, const, quarantine
from mailsift.core.pipeline import Pipeline
from mailsift.errors import ConfigError
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Decision, Disposition
from mailsift.scanners.base import MailTarget
from mailsift.scanners.greylist import PolicyTarget
from mailsift.scanners.tempfail import hold_purge, message_key, tempfail
from mailsift.services.postfix_policy import smtpd_policy
from mailsift.settings import Settings
from mailsift.storage.db import Database

START = 1_700_000_000.0
ZIP_MAIL = (
    b"Received: from a by b; Mon, 1 Jan 2024 00:00:0%d +0000\r\n"
    b"Message-ID: <1@example.net>\r\nSubject: invoice\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: application/zip; name=invoice.zip\r\n\r\nPK\r\n--b--\r\n"
)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def zip_mail(attempt: int = 0, sender: str = "a@example.net", body: bytes = b"") -> Mail:
    data = (ZIP_MAIL % attempt) + body
    return Mail(Envelope(sender=sender, recipients=["b@example.test"]), data)


OUTBREAK = attach_name({"Outbreak.ZIP": r"\.zip$"})


def rows(database: Database) -> list[tuple[Any, ...]]:
    with database.engine.connect() as connection:
        return sorted(tuple(r) for r in connection.exec_driver_sql("SELECT rule, attempts FROM tempfail_hold"))


async def test_without_hold_every_attempt_is_deferred_as_qmail_scanner_does() -> None:
    pipeline = Pipeline([tempfail(OUTBREAK, message="451 4.7.1 Outbreak (%V), try later")])
    for attempt in range(3):
        decision = await pipeline.evaluate(zip_mail(attempt))
        assert decision.disposition is Disposition.TEMPFAIL
        assert (decision.reply.code, decision.reply.status) == (451, "4.7.1")
        assert decision.reply.text == "Outbreak (Outbreak.ZIP), try later"
    clean = await pipeline.evaluate(Mail(Envelope(sender="a@example.net"), b"Subject: hi\r\n\r\nno zip\r\n"))
    assert clean.disposition is Disposition.DELIVER


async def test_default_text_and_a_pattern_first() -> None:
    decision = await Pipeline([tempfail("Outbreak", OUTBREAK)]).evaluate(zip_mail())
    assert str(decision.reply) == "451 4.7.1 Message deferred by content filter, please try again later"
    other = await Pipeline([tempfail("Worm", OUTBREAK)]).evaluate(zip_mail())
    assert other.disposition is Disposition.REJECT  # the pattern does not match: the detection decides


async def test_hold_releases_the_same_message_after_the_delay(database: Database) -> None:
    clock = Clock()
    rule = tempfail(OUTBREAK, hold="4h", db=database, clock=clock)
    pipeline = Pipeline([rule, quarantine("virus", const(0.0, ""))])
    first = await pipeline.evaluate(zip_mail(0))
    assert first.disposition is Disposition.TEMPFAIL
    assert "attempt 1 deferred" in first.result.detail
    clock.now += 3600
    again = await pipeline.evaluate(zip_mail(1))  # another Received line: the same message
    assert again.disposition is Disposition.TEMPFAIL
    assert "attempt 2 deferred" in again.result.detail
    other = await pipeline.evaluate(zip_mail(0, sender="c@example.net"))  # another message: its own clock
    assert other.disposition is Disposition.TEMPFAIL
    clock.now += 3 * 3600
    released = await pipeline.evaluate(zip_mail(2))
    assert released.disposition is Disposition.DELIVER  # the rest of SCANNERS decides: clean here
    [result] = [r for r in released.trail if r.scanner == "tempfail"]
    assert "released after 14400 s on hold (2 attempt(s) deferred)" in result.detail
    assert rows(database) == [("Outbreak.ZIP", 1), ("Outbreak.ZIP", 3)]


async def test_a_released_message_still_meets_the_later_scanners(database: Database) -> None:
    """The point of the hold: hours later the engines know the virus, and they decide."""
    clock = Clock()
    pipeline = Pipeline([tempfail(OUTBREAK, hold=600, db=database, clock=clock), const(1.0, "Worm.New")])
    assert (await pipeline.evaluate(zip_mail())).disposition is Disposition.TEMPFAIL
    clock.now += 601
    decision = await pipeline.evaluate(zip_mail())
    assert (decision.disposition, decision.result.name) == (Disposition.REJECT, "Worm.New")


async def test_hold_uses_the_config_database_and_starts_over_after_expire(database: Database) -> None:
    clock = Clock()
    rule = tempfail(OUTBREAK, hold=600, expire="1d", clock=clock)
    rule.bind_settings(Settings(state_dir="/nonexistent", database=database))
    assert (await Pipeline([rule]).evaluate(zip_mail())).disposition is Disposition.TEMPFAIL
    clock.now += 2 * 86400  # idle past expire: the next attempt is a first one again
    assert (await Pipeline([rule]).evaluate(zip_mail())).disposition is Disposition.TEMPFAIL


async def test_the_state_is_bounded(database: Database) -> None:
    clock = Clock()
    rule = tempfail(OUTBREAK, hold=600, expire="1d", max_entries=3, purge_interval=60, db=database, clock=clock)
    for n in range(5):
        clock.now += 1
        await Pipeline([rule]).evaluate(zip_mail(body=b"%d" % n))
    assert len(rows(database)) == 5  # purged at most once per purge_interval
    clock.now += 61
    await Pipeline([rule]).evaluate(zip_mail(body=b"last"))
    assert len(rows(database)) == 3  # the oldest went first
    clock.now += 2 * 86400
    assert database.call(hold_purge, clock.now, 86400.0, 3) == 3  # idle past expire


async def test_without_a_database_the_hold_tempfails_with_the_database_error() -> None:
    decision = await Pipeline([tempfail(OUTBREAK, hold=600)]).evaluate(zip_mail())
    assert decision.disposition is Disposition.TEMPFAIL
    assert decision.error is not None
    assert "needs a database" in decision.error.message


async def test_at_rcpt_time_it_is_a_plain_deferral(database: Database) -> None:
    database.migrate()
    rule = tempfail(const(1.0, "Outbreak"), hold=600, db=database)
    result = await rule.scan(PolicyTarget({"recipient": "b@example.test"}, database))
    assert result.detected
    assert rows(database) == []


def test_the_key_ignores_the_header_block_but_not_the_envelope_or_body() -> None:
    key = message_key(MailTarget(zip_mail(0)), "R")
    assert message_key(MailTarget(zip_mail(5)), "R") == key
    assert message_key(MailTarget(zip_mail(0, sender="x@example.net")), "R") != key
    assert message_key(MailTarget(zip_mail(0, body=b"more")), "R") != key
    assert message_key(MailTarget(zip_mail(0)), "Other") != key


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"message": "550 5.7.1 no"}, "must be a 4xx"),
        ({"message": "two\nlines"}, "one line"),
        ({"hold": "2d", "expire": "1d"}, "must be longer than hold"),
        ({"hold": "soon"}, "bad duration"),
        ({"max_entries": 0}, "max_entries"),
    ],
)
def test_bad_configs(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tempfail(OUTBREAK, **kwargs)


async def test_under_smtpd_policy_the_text_goes_under_the_defer_verb() -> None:
    rule = tempfail(const(1.0, "Outbreak"), message="451 4.7.1 Outbreak, try later")
    result = await rule.scan(PolicyTarget({"recipient": "b@example.test"}))
    service = smtpd_policy([rule], defer="DEFER_IF_PERMIT")
    assert service.answer(Decision.from_results([result])) == "DEFER_IF_PERMIT Outbreak, try later"
