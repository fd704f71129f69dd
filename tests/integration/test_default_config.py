"""The bundled default config under `mailsift serve`, as the README's first command runs it:
its own clamd and spamd, EICAR quarantined by clamd, GTUBE by SpamAssassin, clean mail delivered."""

from __future__ import annotations

import email
import signal
import smtplib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsift.config import DEFAULT_CONFIG
from mailsift.testing import free_port
from tests.helpers.samples import EICAR_TEXT as EICAR

pytestmark = pytest.mark.skipif(
    not (Path("/usr/sbin/clamd").exists() and Path("/usr/sbin/spamd").exists()),
    reason="clamd and spamd are installed by scripts/setup.sh",
)

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def message(subject: str, body: str) -> bytes:
    return (
        f"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@example.test>\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n"
        f"\r\n{body}\r\n"
    ).encode()


class Gateway:
    def __init__(self, tmp_path: Path) -> None:
        self.state = tmp_path / "state"
        self.port, self.spamd_port, self.web_port = free_port(), free_port(), free_port()
        # The bundled file itself, on free ports (10024, 10783 and 10080 may be taken on a test machine).
        text = Path(DEFAULT_CONFIG).read_text().replace("10024", str(self.port)).replace("10783", str(self.spamd_port))
        text = text.replace("10080", str(self.web_port))
        self.config = tmp_path / "default_config.py"
        self.config.write_text(text)
        self.log = tmp_path / "serve.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mailsift", "serve", "-c", str(self.config), "-w", "2"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"MAILSIFT_STATE_DIR": str(self.state), "PATH": "/usr/bin:/bin", "MAILSIFT_USER": ""},
            )
        deadline = time.monotonic() + 120
        while "spamd_daemon" not in self.answering() or "clamd_daemon" not in self.answering():
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "daemons did not answer:\n" + self.log.read_text()
            time.sleep(0.2)

    def answering(self) -> str:
        return " ".join(line for line in self.log.read_text().splitlines() if " answers (" in line)

    def send(self, data: bytes) -> tuple[int, str]:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as client:
                client.sendmail("alice@example.test", ["bob@example.test"], data)
        except smtplib.SMTPResponseException as error:
            return error.smtp_code, error.smtp_error.decode()
        return 250, ""

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    instance = Gateway(tmp_path_factory.mktemp("default-config"))
    yield instance
    assert instance.stop() == 0
    assert "clamd_daemon" in instance.log.read_text()
    assert "stopped" in instance.log.read_text()


def folder(path: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(path.glob("*"))] if path.exists() else []


def test_clean_mail_is_delivered_to_the_maildir(gateway: Gateway) -> None:
    assert gateway.send(message("lunch", "Shall we have lunch at noon?")) == (250, "")
    delivered = folder(gateway.state / "mail" / "bob@example.test" / "new")
    assert any(b"Subject: lunch" in m for m in delivered)


def test_eicar_is_quarantined_by_clamd(gateway: Gateway) -> None:
    assert gateway.send(message("virus", EICAR))[0] == 250  # quarantined mail is accepted
    held = folder(gateway.state / "quarantine" / "virus" / "new")
    [copy] = [m for m in held if b"Subject: virus" in m]
    verdict = email.message_from_bytes(copy)["X-Mailsift-Verdict"]
    assert "name=Eicar-Test-Signature" in verdict
    assert verdict.endswith("scanner=clamd")
    assert not any(b"Subject: virus" in m for m in folder(gateway.state / "mail" / "bob@example.test" / "new"))


def test_gtube_is_quarantined_by_spamassassin(gateway: Gateway) -> None:
    assert gateway.send(message("spam", GTUBE))[0] == 250
    held = folder(gateway.state / "quarantine" / "spam" / "new")
    [copy] = [m for m in held if b"Subject: spam" in m]
    headers = email.message_from_bytes(copy)
    assert "name=Spam; scanner=spamassassind" in headers["X-Mailsift-Verdict"]
    assert "GTUBE" in headers["X-Mailsift-Detail"]


def test_executables_are_refused(gateway: Gateway) -> None:
    data = (
        b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: run me\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n'
        b'--b\r\nContent-Type: application/octet-stream; name="run.exe"\r\n\r\nMZ\r\n--b--\r\n'
    )
    code, text = gateway.send(data)
    assert code == 550
    assert "Executable attachments are not accepted" in text


def test_the_web_quarantine_answers_and_serve_says_how_to_log_in(gateway: Gateway) -> None:
    """Build 10: the first command shows everything: the web URL and the first admin's command."""
    url = f"http://127.0.0.1:{gateway.web_port}/"
    log = gateway.log.read_text()
    assert f"web quarantine: {url} (the first admin: mailsift user add admin --admin -c {gateway.config})" in log
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "login", timeout=30) as answer:
                assert answer.status == 200
                break
        except OSError:
            assert time.monotonic() < deadline, "webq did not answer:\n" + gateway.log.read_text()
            time.sleep(0.2)
    assert (gateway.state / "webq.secret").exists()
