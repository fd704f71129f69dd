"""smtp_comm: a detection by the SMTP conversation (HELO, client, envelope)."""

from __future__ import annotations

import pytest

from mailsift import reject
from mailsift.core.pipeline import Pipeline
from mailsift.errors import ConfigError
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Disposition
from mailsift.scanners.base import MailTarget
from mailsift.scanners.greylist import PolicyTarget
from mailsift.scanners.smtpcomm import smtp_comm


def mail(helo: str = "mx.example.net", client: str = "192.0.2.7", protocol: str = "ESMTP") -> Mail:
    envelope = Envelope(
        sender="a@example.net",
        recipients=["bob@example.test", "carol@example.test"],
        client_address=client,
        client_name="mx.example.net",
        helo=helo,
        protocol=protocol,
    )
    return Mail(envelope, b"Subject: x\r\n\r\nhi\r\n")


@pytest.mark.parametrize(
    ("helo", "detected"),
    [("localhost", True), ("LOCALHOST", True), ("gateway.example.test", True), ("mx.example.net", False), ("", False)],
)
async def test_helo_forged_as_localhost_or_ourselves(helo: str, detected: bool) -> None:
    scanner = smtp_comm("Forged.HELO", helo=r"^(localhost|gateway\.example\.test)$")
    result = await scanner.scan(MailTarget(mail(helo=helo)))
    assert result.detected is detected
    if detected:
        assert (result.name, result.scanner) == ("Forged.HELO", "smtp_comm")
        assert f"helo={helo!r}" in result.detail


async def test_every_field_given_must_match_and_a_recipient_is_any() -> None:
    scanner = smtp_comm("Bare.IP", helo=r"^\[?\d+\.\d+\.\d+\.\d+\]?$", client_address=r"^192\.0\.2\.")
    assert (await scanner.scan(MailTarget(mail(helo="[192.0.2.7]")))).detected
    assert not (await scanner.scan(MailTarget(mail(helo="[192.0.2.7]", client="198.51.100.1")))).detected
    assert (await smtp_comm("Carol", recipient=r"^carol@").scan(MailTarget(mail()))).detected
    assert (await smtp_comm("Auth", protocol=r"^ESMTPS?A$").scan(MailTarget(mail(protocol="ESMTPA")))).detected


async def test_invert_and_an_empty_helo() -> None:
    no_helo = smtp_comm("No.HELO", helo=r".", invert=True)
    assert (await no_helo.scan(MailTarget(mail(helo="")))).detected
    assert not (await no_helo.scan(MailTarget(mail()))).detected


async def test_at_rcpt_time_and_rejected_by_an_action() -> None:
    target = PolicyTarget({"helo_name": "localhost", "client_address": "203.0.113.5", "recipient": "b@example.test"})
    assert (await smtp_comm("Forged.HELO", helo="^localhost$").scan(target)).detected
    decision = await Pipeline([reject(smtp_comm("Forged.HELO", helo="^localhost$"))]).evaluate(mail(helo="localhost"))
    assert decision.disposition is Disposition.REJECT
    assert "Forged.HELO" in decision.reply.text


def test_bad_configs() -> None:
    with pytest.raises(ConfigError, match="at least one field"):
        smtp_comm("X")
    with pytest.raises(ConfigError, match="unknown field"):
        smtp_comm("X", subject="x")
    with pytest.raises(ConfigError, match="bad regular expression"):
        smtp_comm("X", helo="(")
