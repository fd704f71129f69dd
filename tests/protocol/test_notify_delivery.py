"""Notifications on real sockets: smtpd stops a message, notify() sends the notice over SMTP.

The notice goes out with ``MAIL FROM:<>`` and ``Auto-Submitted: auto-replied``
through the same SMTP delivery as mail; when it comes back through the filter
and is stopped itself, nobody is notified about it: no loop.
"""

from __future__ import annotations

import email
import email.policy
import logging
import smtplib
import tempfile
from collections.abc import Iterator

import pytest

from mailsift import regexp_scan, reject
from mailsift.core.mailpath import MailPath
from mailsift.message.mail import Envelope, Mail
from mailsift.reporting.notifications import notify
from mailsift.services.smtpd import smtpd
from mailsift.settings import Settings
from mailsift.testing import Received, RecordingServer, ServiceThread, free_port

BADWORD = regexp_scan([("Bad-Word", "BADWORD")])


@pytest.fixture
def state_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="mailsift-notify-", dir="/tmp") as path:
        yield path


@pytest.fixture
def hop() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


def message(subject: str, body: str) -> bytes:
    return (
        f"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@example.test>\r\n\r\n{body}\r\n"
    ).encode()


def send(port: int, data: bytes) -> int:
    """Send ``data`` from alice to bob; the code of the final answer."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        try:
            client.sendmail("alice@example.test", ["bob@example.test"], data)
        except smtplib.SMTPDataError as error:
            return error.smtp_code
    return 250


def parsed(received: Received) -> email.message.EmailMessage:
    message = email.message_from_bytes(received.data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def test_notification_is_delivered_with_a_null_sender(state_dir: str, hop: RecordingServer) -> None:
    hook = notify("psender,admin", admin="postmaster@example.test", language="de")
    settings = Settings(state_dir=state_dir, smtp_server=("127.0.0.1", hop.port), hooks=(hook,))
    with ServiceThread(smtpd([reject(BADWORD)], "127.0.0.1", 0), settings) as flt:
        assert send(flt.port, message("offer", "BADWORD inside")) == 550
    assert [(m.sender, m.recipients) for m in hop.messages] == [
        ("<>", ["alice@example.test"]),  # MAIL FROM:<>
        ("<>", ["postmaster@example.test"]),
    ]
    to_sender, to_admin = (parsed(m) for m in hop.messages)
    for notice in (to_sender, to_admin):
        assert notice["Auto-Submitted"] == "auto-replied"
        assert notice["From"] == "postmaster@example.test"
        assert notice["Content-Language"] == "de"
    assert to_sender["To"] == "alice@example.test"
    assert to_sender["Subject"] == "Ihre Nachricht wurde nicht zugestellt: offer"
    assert to_sender["In-Reply-To"] == "<offer@example.test>"
    body = to_sender.get_body()
    assert body is not None
    assert "vom Inhaltsfilter angehalten (Bad-Word)" in " ".join(body.get_content().split())
    assert hop.messages[0].xforward.get("IDENT", "").endswith(".notify")  # the notice's own queue id


def test_notification_passes_through_the_filter_like_any_mail(state_dir: str, hop: RecordingServer) -> None:
    port = free_port()  # notices are sent back into the filter, as through an MTA that filters everything
    hook = notify(next_hop=("127.0.0.1", port))
    settings = Settings(state_dir=state_dir, hooks=(hook,))
    service = smtpd([reject(BADWORD)], "127.0.0.1", port, next_hop=("127.0.0.1", hop.port))
    with ServiceThread(service, settings):
        assert send(port, message("offer", "BADWORD inside")) == 550
    (notice,) = hop.messages  # the notice quotes the subject, not the body: it passed the filter
    assert (notice.sender, notice.recipients) == ("<>", ["alice@example.test"])
    assert parsed(notice)["Auto-Submitted"] == "auto-replied"


def test_a_notification_about_a_notification_is_never_sent_through_smtpd(
    state_dir: str, hop: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailsift")
    port = free_port()
    hook = notify("psender,admin", admin="postmaster@example.test", next_hop=("127.0.0.1", port))
    settings = Settings(state_dir=state_dir, hooks=(hook,))
    service = smtpd([reject(BADWORD)], "127.0.0.1", port, next_hop=("127.0.0.1", hop.port))
    with ServiceThread(service, settings):
        # BADWORD in the subject: every notice quotes it, so the filter rejects the notices too
        assert send(port, message("BADWORD offer", "hello")) == 550
    lines = [record.getMessage() for record in caplog.records]
    rejected = [line for line in lines if " action=reject " in line]
    assert len(rejected) == 3, lines  # the message, then its two notices; nothing after that
    assert sum("from=<alice@example.test>" in line for line in rejected) == 1
    assert sum("from=<>" in line for line in rejected) == 2
    assert sum("no notification: null sender" in line for line in lines) == 2
    failed = [line for line in lines if "notification to <" in line and "failed" in line]
    assert len(failed) == 2  # the two notices, refused by the filter, were logged; no third was tried
    assert hop.messages == []


def test_hook_errors_never_change_the_reply(state_dir: str, hop: RecordingServer) -> None:
    hook = notify(next_hop=("127.0.0.1", free_port()), timeout=5)  # nobody listens there
    settings = Settings(state_dir=state_dir, hooks=(hook,))
    with ServiceThread(smtpd([reject(BADWORD)], "127.0.0.1", 0, next_hop=("127.0.0.1", hop.port)), settings) as flt:
        assert send(flt.port, message("offer", "BADWORD inside")) == 550
        assert send(flt.port, message("clean", "hello")) == 250
    assert [m.recipients for m in hop.messages] == [["bob@example.test"]]


@pytest.mark.parametrize(
    ("sender", "reason"),
    [
        ("", "null sender"),
        ("<>", "null sender"),
        ("filter@relay.example.test", "a notification"),  # a relay that replaced <>
    ],
)
async def test_a_notification_about_a_notification_is_never_sent(
    state_dir: str, hop: RecordingServer, caplog: pytest.LogCaptureFixture, sender: str, reason: str
) -> None:
    """The notices really sent come back to the filter, are stopped again, and nobody is told."""
    caplog.set_level(logging.INFO, logger="mailsift")
    hook = notify("psender,admin", admin="postmaster@example.test", next_hop=("127.0.0.1", hop.port))
    settings = Settings(state_dir=state_dir, hooks=(hook,))
    path = MailPath([reject(BADWORD)], settings, next_hop=("127.0.0.1", hop.port))
    original = Mail(Envelope("alice@example.test", ["bob@example.test"], queue_id="Q1"), message("BADWORD offer", "hi"))
    await path.process(original)
    notices = list(hop.messages)
    assert [(m.sender, m.recipients) for m in notices] == [
        ("<>", ["alice@example.test"]),
        ("<>", ["postmaster@example.test"]),
    ]
    for number, notice in enumerate(notices):  # each notice quotes "BADWORD offer": the filter stops it too
        envelope = Envelope(sender, notice.recipients, queue_id=f"N{number}")
        decision, outcome = await path.process(Mail(envelope, notice.data))
        assert (decision.result.name, outcome.reply.code) == ("Bad-Word", 550)
    await path.close()
    assert hop.messages == notices  # no notice about a notice
    lines = [record.getMessage() for record in caplog.records]
    assert [line for line in lines if "no notification" in line] == [
        f"queue_id=N0: no notification: {reason}",
        f"queue_id=N1: no notification: {reason}",
    ]
