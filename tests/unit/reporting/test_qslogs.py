"""qmail-scanner's mailstats.csv, quarantine.log and CR: field (reporting/qslogs.py) through the log hooks."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from mailsift import const, quarantine, regexp_scan
from mailsift.core.disposition import Outcome
from mailsift.core.pipeline import Pipeline
from mailsift.errors import ConfigError
from mailsift.message.mail import Envelope, Mail
from mailsift.replies import OK
from mailsift.reporting import qslogs
from mailsift.reporting.logline import build_record, log_file, log_syslog, qmail_scanner_lines
from mailsift.settings import Settings

NOW = 1_700_000_000.0


def mail_of(body: bytes, head: bytes = b"", recipients: tuple[str, ...] = ("bob@example.test",)) -> Mail:
    envelope = Envelope(
        sender="alice@example.net", recipients=list(recipients), client_address="192.0.2.7", queue_id="Q1"
    )
    top = b"From: alice@example.net\r\nSubject: Hello\tthere\r\nMessage-ID: <m1@example.net>\r\nMIME-Version: 1.0\r\n"
    return Mail(envelope, top + head + body)


PGP_MIME = (
    b'Content-Type: multipart/signed; micalg=pgp-sha256; protocol="application/pgp-signature"; boundary=B\r\n\r\n'
    b"--B\r\nContent-Type: text/plain\r\n\r\nsigned\r\n--B\r\nContent-Type: application/pgp-signature\r\n\r\n"
    b"-----BEGIN PGP SIGNATURE-----\r\nxx\r\n-----END PGP SIGNATURE-----\r\n--B--\r\n"
)
PGP_ENCRYPTED = (
    b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary=B\r\n\r\n'
    b"--B\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
    b"--B\r\nContent-Type: application/octet-stream\r\n\r\n-----BEGIN PGP MESSAGE-----\r\nxx\r\n--B--\r\n"
)
OLD_SIGNED = b"Content-Type: text/plain\r\n\r\n-----BEGIN PGP SIGNED MESSAGE-----\r\nHash: SHA1\r\n\r\nhi\r\n"
SMIME_SIGNED = (
    b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; boundary=B\r\n\r\n'
    b"--B\r\nContent-Type: text/plain\r\n\r\nsigned\r\n--B\r\nContent-Type: application/pkcs7-signature\r\n\r\n"
    b"MIAG\r\n--B--\r\n"
)
SMIME_ENCRYPTED = b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n\r\nMIAG\r\n"
DKIM = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.net; s=s1; b=xx\r\n"


def encrypted_zip_message() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", b"secret")
    data = bytearray(buffer.getvalue())
    data[6] |= 0x1  # the local header's "encrypted" flag
    central = data.find(b"PK\x01\x02")
    data[central + 8] |= 0x1  # and the central directory's
    import base64

    encoded = base64.encodebytes(bytes(data))
    return (
        b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nsee\r\n"
        b"--B\r\nContent-Type: application/zip; name=a.zip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + encoded
        + b"--B--\r\n"
    )


@pytest.mark.parametrize(
    ("head", "body", "expected"),
    [
        (b"", b"Content-Type: text/plain\r\n\r\nplain\r\n", ()),
        (b"", PGP_MIME, ("PGP(signed)",)),
        (b"", PGP_ENCRYPTED, ("PGP(encrypted)",)),
        (b"", OLD_SIGNED, ("PGP(old-signed)",)),
        (b"", SMIME_SIGNED, ("SMIME(signed)",)),
        (b"", SMIME_ENCRYPTED, ("SMIME(encrypted)",)),
        (DKIM, b"Content-Type: text/plain\r\n\r\nplain\r\n", ("DomKeys",)),
        (b"", encrypted_zip_message(), ("ZIP(encrypted)",)),
    ],
    ids=["none", "pgp-signed", "pgp-encrypted", "old-signed", "smime-signed", "smime-encrypted", "dkim", "zip"],
)
def test_crypto_items(head: bytes, body: bytes, expected: tuple[str, ...]) -> None:
    assert qslogs.crypto_items(mail_of(body, head)) == expected


async def test_cr_field_sits_after_sa_only_when_asked_for() -> None:
    mail = mail_of(OLD_SIGNED, DKIM)
    decision = await Pipeline([const(0.0)]).evaluate(mail)
    plain = build_record(mail, decision, Outcome(OK), now=NOW, took=0.5)
    with_crypto = build_record(mail, decision, Outcome(OK), now=NOW, took=0.5, crypto=True)
    assert qmail_scanner_lines(plain)[0].split()[0] == "Clear:RC:0(192.0.2.7):Q:Q1:"
    assert qmail_scanner_lines(with_crypto)[0].split()[0] == "Clear:RC:0(192.0.2.7):CR:PGP(old-signed):CR:DomKeys:Q:Q1:"


async def test_mailstats_csv_is_tab_delimited_per_recipient(tmp_path: Path) -> None:
    settings = Settings(state_dir=str(tmp_path))
    hook = log_file("mailstats.csv", format="mailstats", crypto=True)
    hook.check(settings)
    mail = mail_of(OLD_SIGNED, recipients=("bob@example.test", "carol@example.test"))
    decision = await Pipeline([const(0.0)]).evaluate(mail)
    await hook.after(mail, decision, Outcome(OK), settings)
    await hook.close()
    lines = (tmp_path / "mailstats.csv").read_text().splitlines()
    assert len(lines) == 2
    columns = [line.split("\t") for line in lines]
    assert [c[5] for c in columns] == ["bob@example.test", "carol@example.test"]
    first = columns[0]
    assert first[1] == "Clear:RC:0(192.0.2.7):CR:PGP(old-signed):Q:Q1:"
    assert first[3] == str(mail.size)
    assert first[4:] == ["alice@example.net", "bob@example.test", "Hello there", "<m1@example.net>"]
    assert first[0].startswith("20")  # ISO 8601 time


async def test_quarantine_log_has_a_line_for_quarantined_mail_only(tmp_path: Path) -> None:
    settings = Settings(state_dir=str(tmp_path))
    hook = log_file("quarantine.log", format="quarantine")
    hook.check(settings)
    virus = quarantine("virus", regexp_scan([("Eicar-Test", r"EICAR")]))
    for body in (b"Content-Type: text/plain\r\n\r\nclean\r\n", b"Content-Type: text/plain\r\n\r\nEICAR\r\n"):
        mail = mail_of(body)
        decision = await Pipeline([virus]).evaluate(mail)
        kept = ("virus/new/1.eml",) if decision.result.detected else ()
        await hook.after(mail, decision, Outcome(OK, quarantined=kept), settings)
    await hook.close()
    lines = (tmp_path / "quarantine.log").read_text().splitlines()
    assert len(lines) == 1
    columns = lines[0].split("\t")
    assert columns[1:] == [
        "alice@example.net",
        "bob@example.test",
        "Hello there",
        "<m1@example.net>",
        "Eicar-Test",
        "Quarantined_Eicar-Test",
        "virus/new/1.eml",
    ]


def test_formats_are_checked() -> None:
    with pytest.raises(ConfigError, match="format must be one of text, mailstats, quarantine"):
        log_file("x.log", format="csv")
    with pytest.raises(ConfigError, match="not with json=True"):
        log_file("x.log", format="mailstats", json=True)
    assert "format='mailstats'" in log_file("x.csv", format="mailstats").describe()
    assert log_syslog(crypto=True).crypto
