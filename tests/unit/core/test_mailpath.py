"""The mail path's one log line per message: the action says when carrying the decision out failed."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from mailsift.core.mailpath import MailPath
from mailsift.delivery.next_hop import Delivery, PerRecipient
from mailsift.errors import DeliveryDeferred
from mailsift.message.mail import Envelope, Mail
from mailsift.settings import Settings

MESSAGE = b"From: a@example.test\r\nSubject: log line\r\n\r\nhello\r\n"


class Deferring(Delivery):
    """A next hop that answers 4xx for the recipients in ``deferred`` (all of them by default)."""

    def __init__(self, deferred: set[str] | None = None) -> None:
        self.deferred = deferred

    async def deliver(self, mail: Mail, message: bytes) -> str:
        raise DeliveryDeferred("next hop 127.0.0.1:10025: 451 4.3.0 busy")

    async def deliver_each(self, mail: Mail, message: bytes) -> PerRecipient:
        deferred = self.deferred if self.deferred is not None else set(mail.envelope.recipients)
        return {
            r: DeliveryDeferred("next hop 127.0.0.1:10025: 451 4.3.0 busy") if r in deferred else "250 ok"
            for r in mail.envelope.recipients
        }

    def describe(self) -> str:
        return "deferring"


def mail(*recipients: str) -> Mail:
    return Mail(Envelope(sender="a@example.test", recipients=list(recipients), queue_id="Q1"), MESSAGE)


def log_line(caplog: pytest.LogCaptureFixture) -> str:
    [line] = [record.getMessage() for record in caplog.records if record.name == "mailsift.mail"]
    return line


def test_a_failed_delivery_is_logged_as_failed_with_its_cause(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = MailPath([], Settings(state_dir=str(tmp_path)), Deferring())
    with caplog.at_level(logging.INFO, logger="mailsift.mail"):
        _, outcome = asyncio.run(path.process(mail("b@example.test")))
    assert outcome.reply.code == 451
    line = log_line(caplog)
    assert line.startswith("Q1 action=deliver-failed reply=451 level=0.00 "), line
    assert line.endswith(" note=next hop 127.0.0.1:10025: 451 4.3.0 busy"), line


def test_per_recipient_delivery_failed_for_all_or_some(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(state_dir=str(tmp_path))
    with caplog.at_level(logging.INFO, logger="mailsift.mail"):
        asyncio.run(MailPath([], settings, Deferring()).process_each(mail("b@example.test", "c@example.test")))
    assert log_line(caplog).startswith("Q1 action=deliver-failed reply=451 ")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mailsift.mail"):
        path = MailPath([], settings, Deferring({"c@example.test"}))
        asyncio.run(path.process_each(mail("b@example.test", "c@example.test")))
    line = log_line(caplog)
    assert line.startswith("Q1 action=deliver-partial reply=<b@example.test>:250,<c@example.test>:451 "), line


def test_a_delivered_message_keeps_its_action(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mailsift.mail"):
        asyncio.run(MailPath([], Settings(state_dir=str(tmp_path)), Deferring(set())).process_each(mail("b@x.test")))
    assert log_line(caplog).startswith("Q1 action=deliver reply=250 ")
