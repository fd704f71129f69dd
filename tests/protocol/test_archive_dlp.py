"""archive() and the DLP monitor through a real smtpd on a socket, with swaks as the sending MTA.

The next hop is a RecordingServer; the archive is the Maildir under STATE_DIR.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailsift import regexp_scan, reject
from mailsift.reporting.archive import archive, monitor
from mailsift.services.smtpd import smtpd
from mailsift.settings import Settings
from mailsift.testing import RecordingServer, ServiceThread

pytestmark = pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is installed by scripts/setup.sh")

POLICY = regexp_scan([("Policy.CardNumber", r"4111-1111-1111-1111")])
VIRUS = regexp_scan([("Test.Virus", r"VIRUS-MARKER")])
SCANNERS = [monitor(r"^Policy\.", reject(POLICY)), VIRUS]


@pytest.fixture
def next_hop() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


@pytest.fixture
def gateway(tmp_path: Path, next_hop: RecordingServer) -> Iterator[Callable[..., ServiceThread]]:
    started: list[ServiceThread] = []

    def start(scanners: list[Any], *hooks: Any) -> ServiceThread:
        service = smtpd(scanners, "127.0.0.1", 0, next_hop=("127.0.0.1", next_hop.port))
        settings = Settings(state_dir=str(tmp_path / "state"), hooks=hooks)
        for hook in hooks:
            hook.check(settings)
        started.append(ServiceThread(service, settings).start())
        return started[-1]

    yield start
    for thread in started:
        thread.stop()


def swaks(port: int, sender: str, to: str, body: str) -> int:
    """Send one message with swaks; returns the code of the answer to the message (after DATA)."""
    command = ["swaks", "--server", f"127.0.0.1:{port}", "--from", sender, "--to", to]
    done = subprocess.run(
        [*command, "--header", "Subject: quarterly figures", "--body", body],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    answers = [line for line in done.stdout.splitlines() if line.startswith(("<-  ", "<** "))]
    # EHLO/MAIL/RCPT/DATA/<content>/QUIT: the message's answer is the one before QUIT's 221
    final = [line for line in answers if not line[4:].startswith(("221", "354"))]
    return int(final[-1][4:7])


def archived(tmp_path: Path) -> list[bytes]:
    """The archived files (in ``new/``); nothing may be left half-written in ``tmp/``."""
    root = tmp_path / "state" / "archive"
    if not root.exists():
        return []
    assert list((root / "tmp").iterdir()) == []
    return [p.read_bytes() for p in sorted((root / "new").iterdir())]


def test_a_monitored_dlp_finding_is_delivered_logged_and_archived(
    tmp_path: Path,
    gateway: Callable[..., ServiceThread],
    next_hop: RecordingServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    flt = gateway(SCANNERS, archive(r"^sales@example\.com$"))
    with caplog.at_level(logging.INFO):
        code = swaks(flt.port, "alice@example.test", "partner@outside.test", "card 4111-1111-1111-1111")
    assert code == 250
    (delivered,) = next_hop.messages
    assert delivered.recipients == ["partner@outside.test"]
    assert b"card 4111-1111-1111-1111" in delivered.data
    assert b"X-Mailsift-Monitor" not in delivered.data  # no header unless asked for: DLP stays quiet outside
    (copy,) = archived(tmp_path)  # although the envelope does not match the archive pattern
    head, _, block = copy.rpartition(b"\r\n\r\n*** Qmail-Scanner Envelope Details Begin ***\r\n")
    assert b"card 4111-1111-1111-1111" in head
    assert block == (
        b'X-Qmail-Scanner-Mail-From: "alice@example.test"\r\n'
        b'X-Qmail-Scanner-Rcpt-To: "partner@outside.test"\r\n'
        b"X-Mailsift-DLP: Policy.CardNumber (regexp_scan)\r\n"
        b"*** Qmail-Scanner Envelope Details End ***\r\n"
    )
    dlp = [r.getMessage() for r in caplog.records if r.name == "mailsift.dlp"]
    assert len(dlp) == 1
    assert "DLP: Policy.CardNumber (regexp_scan)" in dlp[0]
    (line,) = [r.getMessage() for r in caplog.records if r.name == "mailsift.mail"]
    assert "action=deliver reply=250" in line
    assert "name=DLP:Policy.CardNumber" in line


def test_a_finding_the_monitor_does_not_match_is_still_blocked(
    tmp_path: Path, gateway: Callable[..., ServiceThread], next_hop: RecordingServer
) -> None:
    flt = gateway(SCANNERS, archive())
    assert swaks(flt.port, "alice@example.test", "bob@example.com", "VIRUS-MARKER") == 550
    assert swaks(flt.port, "alice@example.test", "bob@example.com", "4111-1111-1111-1111 VIRUS-MARKER") == 550
    assert next_hop.messages == []
    assert archived(tmp_path) == []


def test_only_mail_whose_envelope_matches_is_archived(
    tmp_path: Path, gateway: Callable[..., ServiceThread], next_hop: RecordingServer
) -> None:
    flt = gateway(SCANNERS, archive(r"^(support|sales)@example\.com$"))
    assert swaks(flt.port, "alice@example.test", "sales@example.com", "hello sales") == 250
    assert swaks(flt.port, "alice@example.test", "bob@example.com", "hello bob") == 250
    assert swaks(flt.port, "support@example.com", "carol@outside.test", "hello carol") == 250
    assert len(next_hop.messages) == 3
    copies = archived(tmp_path)
    assert len(copies) == 2
    bodies = sorted(b"hello sales" in c for c in copies)
    assert bodies == [False, True]
    assert any(b"hello carol" in c and b'Mail-From: "support@example.com"' in c for c in copies)
    assert not any(b"hello bob" in c for c in copies)


def test_an_archive_failure_keeps_the_250(
    tmp_path: Path, gateway: Callable[..., ServiceThread], next_hop: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "archive").write_text("not a directory")
    flt = gateway(SCANNERS, archive())
    with caplog.at_level(logging.INFO):
        code = swaks(flt.port, "alice@example.test", "partner@outside.test", "card 4111-1111-1111-1111")
    assert code == 250
    assert len(next_hop.messages) == 1
    assert any(
        r.name == "mailsift.archiving" and r.levelno == logging.ERROR and "NOT written" in r.getMessage()
        for r in caplog.records
    )
