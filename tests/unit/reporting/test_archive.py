"""archive(): qmail-scanner's archive maildir with the envelope appended; monitor(): DLP monitor mode."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailsift import add_header, config, parsemail, quarantine, regexp_scan, reject
from mailsift.core.mailpath import MailPath
from mailsift.errors import ConfigError
from mailsift.message.mail import Envelope, Mail
from mailsift.reporting.archive import MonitoredResult, archive, monitor, monitored_findings
from mailsift.scanners.base import MailTarget
from mailsift.settings import Settings
from mailsift.testing import RecordingServer

BODY = b"From: a@example.net\r\nTo: b@example.com\r\nSubject: hello\r\n\r\nsome text\r\n"
POLICY = regexp_scan([("Policy.CardNumber", r"4111-1111-1111-1111")])
VIRUS = regexp_scan([("Test.Virus", r"VIRUS-MARKER")])


@pytest.fixture
def next_hop() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


def make_path(tmp_path: Path, server: RecordingServer, scanners: list[Any], *hooks: Any) -> MailPath:
    settings = Settings(state_dir=str(tmp_path / "state"), hooks=hooks)
    for hook in hooks:
        hook.check(settings)
    return MailPath(scanners, settings, next_hop=("127.0.0.1", server.port))


def mail(sender: str, *recipients: str, body: bytes = BODY, queue_id: str = "Q1", **options: Any) -> Mail:
    return Mail(Envelope(sender=sender, recipients=list(recipients), queue_id=queue_id), body, **options)


def archived(tmp_path: Path, folder: str = "archive") -> list[bytes]:
    """The archived files (in ``new/``); nothing may be left half-written in ``tmp/``."""
    root = tmp_path / "state" / folder
    if not root.exists():
        return []
    assert list((root / "tmp").iterdir()) == []
    return [p.read_bytes() for p in sorted((root / "new").iterdir())]


# --------------------------------------------------------------------------- envelope matching


@pytest.mark.parametrize(
    ("sender", "recipients", "expected"),
    [
        ("boss@example.com", ["x@other.test"], True),  # the sender matches
        ("x@other.test", ["y@other.test", "sales@EXAMPLE.COM"], True),  # the 2nd recipient, any case
        ("x@other.test", ["y@other.test"], False),
        ("x@example.com.evil.test", ["y@other.test"], False),  # "$" ends one address, not the list
        ("", ["y@other.test"], False),  # the null sender
    ],
)
async def test_only_mail_whose_envelope_matches_is_archived(
    tmp_path: Path, next_hop: RecordingServer, sender: str, recipients: list[str], expected: bool
) -> None:
    path = make_path(tmp_path, next_hop, [POLICY], archive(r"@example\.com$"))
    _, outcome = await path.process(mail(sender, *recipients))
    await path.close()
    assert outcome.reply.code == 250
    assert len(next_hop.messages) == 1
    copies = archived(tmp_path)
    assert len(copies) == (1 if expected else 0)
    if expected:
        assert copies[0].startswith(BODY)


async def test_without_a_pattern_all_delivered_mail_is_archived(tmp_path: Path, next_hop: RecordingServer) -> None:
    path = make_path(tmp_path, next_hop, [POLICY], archive())
    for n in range(3):
        await path.process(mail(f"u{n}@a.test", f"r{n}@b.test", queue_id=f"Q{n}"))
    await path.close()
    assert len(archived(tmp_path)) == 3


# --------------------------------------------------------------------------- the envelope, appended


async def test_the_envelope_is_appended_as_qmail_scanner_does(tmp_path: Path, next_hop: RecordingServer) -> None:
    path = make_path(tmp_path, next_hop, [POLICY], archive(r"@example\.com$"))
    await path.process(mail("alice@example.com", "bob@example.com", "carol@other.test"))
    await path.close()
    (copy,) = archived(tmp_path)
    assert copy == BODY + (
        b"\r\n"
        b"*** Qmail-Scanner Envelope Details Begin ***\r\n"
        b'X-Qmail-Scanner-Mail-From: "alice@example.com"\r\n'
        b'X-Qmail-Scanner-Rcpt-To: "bob@example.com,carol@other.test"\r\n'
        b"*** Qmail-Scanner Envelope Details End ***\r\n"
    )
    assert next_hop.messages[0].data.rstrip(b"\r\n") == BODY.rstrip(b"\r\n")  # the delivered copy has no block


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"Subject: lf\n\nline\n", b"Subject: lf\n\nline\n\n*** Qmail-Scanner Envelope Details Begin ***\n"),
        (b"Subject: cut\r\n\r\nno newline", b"Subject: cut\r\n\r\nno newline\r\n\r\n*** Qmail-Scanner Envelope"),
    ],
    ids=["lf-line-endings", "no-final-newline"],
)
async def test_the_block_follows_the_message_line_endings(
    tmp_path: Path, next_hop: RecordingServer, body: bytes, expected: bytes
) -> None:
    path = make_path(tmp_path, next_hop, [POLICY], archive())
    await path.process(mail("a@example.com", "b@example.com", body=body))
    await path.close()
    (copy,) = archived(tmp_path)
    assert copy.startswith(expected)
    newline = b"\r\n" if b"\r\n" in body else b"\n"
    assert copy.endswith(
        b'Rcpt-To: "b@example.com"' + newline + b"*** Qmail-Scanner Envelope Details End ***" + newline
    )


async def test_a_spooled_message_is_archived_whole(tmp_path: Path, next_hop: RecordingServer) -> None:
    body = b"Subject: big\r\n\r\n" + b"".join(b"line %07d of a long message\r\n" % n for n in range(40_000))
    spool = tmp_path / "spool"
    spool.mkdir()
    big = mail("a@example.com", "b@example.com", body=body, spool_threshold=64 * 1024, spool_dir=str(spool))
    assert big.spooled
    assert len(body) > 1024 * 1024
    path = make_path(tmp_path, next_hop, [POLICY], archive())
    await path.process(big)
    await path.close()
    (copy,) = archived(tmp_path)
    assert copy.startswith(body)
    assert copy[len(body) :].startswith(b"\r\n*** Qmail-Scanner Envelope Details Begin ***\r\n")


async def test_archive_copies_are_fsynced_in_tmp_then_renamed_into_new(
    tmp_path: Path, next_hop: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(source: str, target: str) -> None:
        events.append(("rename", f"{source} -> {target}"))
        real_rename(source, target)

    path = make_path(tmp_path, next_hop, [POLICY], archive())
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    await path.process(mail("a@example.com", "b@example.com"))
    await path.close()
    root = str(tmp_path / "state" / "archive")
    (name,) = os.listdir(f"{root}/new")
    assert events == [
        ("fsync", f"{root}/tmp/{name}"),  # the file, still in tmp/
        ("rename", f"{root}/tmp/{name} -> {root}/new/{name}"),
        ("fsync", f"{root}/new"),  # the directory entry
    ]
    assert os.listdir(f"{root}/tmp") == []
    assert os.path.isdir(f"{root}/cur")


# --------------------------------------------------------------------------- what is not archived


async def test_blocked_or_unaccepted_mail_is_not_archived(tmp_path: Path, next_hop: RecordingServer) -> None:
    path = make_path(
        tmp_path, next_hop, [quarantine("policy", regexp_scan([("Q", "QUARANTINE-ME")])), VIRUS], archive()
    )
    _, rejected = await path.process(mail("a@example.com", "b@example.com", body=b"Subject: x\r\n\r\nVIRUS-MARKER\r\n"))
    _, held = await path.process(mail("a@example.com", "b@example.com", body=b"Subject: x\r\n\r\nQUARANTINE-ME\r\n"))
    next_hop.data_reply = "451 4.3.0 busy"
    _, deferred = await path.process(mail("a@example.com", "b@example.com"))
    await path.close()
    assert (rejected.reply.code, held.reply.code, deferred.reply.code) == (550, 250, 451)
    assert archived(tmp_path) == []  # the quarantine keeps the held one; the deferred one will come again


# --------------------------------------------------------------------------- failures


async def test_an_unwritable_archive_never_changes_the_reply(
    tmp_path: Path, next_hop: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    path = make_path(tmp_path, next_hop, [POLICY], archive())
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "state" / "archive").write_text("a file where the archive maildir should be")  # even root fails
    with caplog.at_level(logging.INFO):
        _, outcome = await path.process(mail("a@example.com", "b@example.com", queue_id="QFAIL"))
    await path.close()
    assert outcome.reply.code == 250
    assert len(next_hop.messages) == 1  # delivered
    errors = [r for r in caplog.records if r.name == "mailsift.archiving" and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "QFAIL archive copy NOT written" in errors[0].getMessage()


# --------------------------------------------------------------------------- DLP monitor


async def test_monitor_lets_a_matching_finding_through_logs_and_archives_it(
    tmp_path: Path, next_hop: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    scanners = [monitor(r"^Policy\.", reject(POLICY), header="X-Mailsift-Monitor"), VIRUS]
    path = make_path(tmp_path, next_hop, scanners, archive(r"@example\.com$"))
    body = b"Subject: card\r\n\r\ncard 4111-1111-1111-1111\r\n"
    with caplog.at_level(logging.INFO):
        decision, outcome = await path.process(mail("a@outside.test", "b@elsewhere.test", body=body, queue_id="QDLP"))
    await path.close()
    assert (decision.disposition.value, outcome.reply.code) == ("deliver", 250)
    (delivered,) = next_hop.messages
    assert delivered.data.startswith(b"X-Mailsift-Monitor: Policy.CardNumber\r\n")
    (copy,) = archived(tmp_path)  # archived although the envelope does not match
    assert copy.startswith(body)
    assert b"\r\nX-Mailsift-DLP: Policy.CardNumber (regexp_scan)\r\n*** Qmail-Scanner Envelope Details End" in copy
    assert [f.monitored for f in monitored_findings(decision)] == ["Policy.CardNumber"]
    dlp = [r.getMessage() for r in caplog.records if r.name == "mailsift.dlp"]
    assert len(dlp) == 1
    assert dlp[0].startswith("QDLP DLP: Policy.CardNumber (regexp_scan) level=1.00 monitored, not blocked")
    lines = [r.getMessage() for r in caplog.records if r.name == "mailsift.mail"]
    assert "action=deliver reply=250" in lines[0]
    assert "name=DLP:Policy.CardNumber" in lines[0]
    assert any(
        r.name == "mailsift.archiving" and "QDLP archived DLP:Policy.CardNumber" in r.getMessage()
        for r in caplog.records
    )


async def test_a_non_matching_finding_is_still_blocked(tmp_path: Path, next_hop: RecordingServer) -> None:
    path = make_path(tmp_path, next_hop, [monitor(r"^Policy\.", POLICY, VIRUS)], archive())
    decision, outcome = await path.process(
        mail("a@example.com", "b@example.com", body=b"Subject: x\r\n\r\nVIRUS-MARKER\r\n")
    )
    await path.close()
    assert (decision.disposition.value, outcome.reply.code) == ("reject", 550)
    assert decision.result.name == "Test.Virus"
    assert next_hop.messages == []
    assert archived(tmp_path) == []


async def test_a_dlp_hit_does_not_exempt_the_message_from_later_scanners(
    tmp_path: Path, next_hop: RecordingServer
) -> None:
    path = make_path(tmp_path, next_hop, [monitor(r"^Policy\.", POLICY), VIRUS], archive())
    body = b"Subject: x\r\n\r\n4111-1111-1111-1111 and VIRUS-MARKER\r\n"
    decision, outcome = await path.process(mail("a@example.com", "b@example.com", body=body))
    await path.close()
    assert (decision.disposition.value, outcome.reply.code) == ("reject", 550)
    assert [r.name for r in decision.trail] == ["DLP:Policy.CardNumber", "Test.Virus"]
    assert archived(tmp_path) == []  # rejected mail is not archived, monitored or not


async def test_monitor_drops_the_inner_blocking_actions_only() -> None:
    scanner = monitor("^Policy", quarantine("policy", POLICY))
    target = MailTarget(mail("a@x.test", "b@y.test", body=b"Subject: x\r\n\r\n4111-1111-1111-1111\r\n"))
    result = await scanner.scan(target)
    assert isinstance(result, MonitoredResult)
    assert (result.level, result.detected, result.actions) == (0.0, False, ())
    assert (result.monitored, result.monitored_level, result.name) == (
        "Policy.CardNumber",
        1.0,
        "DLP:Policy.CardNumber",
    )
    clean = await scanner.scan(MailTarget(mail("a@x.test", "b@y.test")))
    assert not isinstance(clean, MonitoredResult)
    assert (clean.level, clean.name) == (0.0, "")


# --------------------------------------------------------------------------- configuration


def test_archive_and_monitor_in_a_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.py"
    path.write_text(
        "from mailsift import *\nfrom mailsift.reporting.archive import archive, monitor\n"
        f"STATE_DIR = {str(tmp_path)!r}\n"
        "SCANNERS = [monitor(r'^Policy\\.', regexp_scan([('Policy.X', 'secret')]))]\n"
        "HOOKS = [archive(r'@example\\.com$', folder='archive/sales')]\n"
    )
    loaded = config.load(str(path))
    (hook,) = loaded.settings.hooks
    assert hook.describe() == "archive(envelope ~ '@example\\\\.com$' -> archive/sales)"
    assert hook.directory(loaded.settings) == str(tmp_path / "archive" / "sales")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: archive("(unclosed"), "bad regular expression"),
        (lambda: archive(r".", folder="../outside"), "inside STATE_DIR"),
        (lambda: archive(r".", folder=""), "folder must be"),
        (lambda: monitor(r"(", POLICY), "bad regular expression"),
        (lambda: monitor(POLICY), "pattern of finding names"),
        (lambda: monitor("^P", POLICY, header="Bad Header:"), "invalid header name"),
        (lambda: monitor("^P"), "needs at least one scanner"),
    ],
)
def test_bad_arguments_are_config_errors(make: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


@pytest.mark.parametrize("folder", ["quarantine", "quarantine/archive", "spool", "."])
def test_the_archive_may_not_share_the_quarantine_or_spool(tmp_path: Path, folder: str) -> None:
    with pytest.raises(ConfigError, match="overlaps"):
        archive(folder=folder).check(Settings(state_dir=str(tmp_path)))


async def test_monitor_over_parsemail_and_under_an_action_wrapper(tmp_path: Path, next_hop: RecordingServer) -> None:
    attachment = (
        b"From: a@x.test\r\nSubject: report\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
        b'--b\r\nContent-Type: text/csv; name="cards.csv"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        + base64.encodebytes(b"name,card\r\nbob,4111-1111-1111-1111\r\n").replace(b"\n", b"\r\n")
        + b"--b--\r\n"
    )
    assert b"4111" not in attachment  # only the decoded part shows it
    scanners = [add_header("X-Checked", "%V", monitor(r"^Policy\.", parsemail(POLICY)))]
    path = make_path(tmp_path, next_hop, scanners, archive(r"^nobody@"))
    decision, outcome = await path.process(mail("a@x.test", "b@y.test", body=attachment))
    await path.close()
    assert outcome.reply.code == 250
    assert next_hop.messages[0].data.startswith(b"X-Checked: DLP:Policy.CardNumber\r\n")
    assert [f.monitored for f in monitored_findings(decision)] == ["Policy.CardNumber"]
    assert "part 2 (cards.csv)" in decision.trail[0].detail
    assert len(archived(tmp_path)) == 1
