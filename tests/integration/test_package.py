"""The Debian package (scripts/build-deb.sh): install, units, serve as the unit starts it, remove, purge.

Needs root and dpkg (skipped otherwise, with the reason). Builds the package of this checkout
(about 2.5 minutes on a loaded 2-core machine) unless MAILSIFT_DEB names a prebuilt one. It
installs into the real system (/opt/mailsift, /etc/mailsift, /var/lib/mailsift) and purges it
in a ``finally``; it refuses to run where mailsift is already installed or those paths exist.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.helpers.samples import EICAR

ROOT = Path(__file__).resolve().parents[2]
UNIT_DIR = Path("/lib/systemd/system")
UNITS = ["mailsift.service", "mailsift-expire.service", "mailsift-expire.timer"]
UNITS += ["mailsift-report.service", "mailsift-report.timer"]
STATE = Path("/var/lib/mailsift")
ETC = Path("/etc/mailsift")
F2B_FILTER = Path("/etc/fail2ban/filter.d/mailsift-webq.conf")
# The ports of the bundled default config, which the package installs unchanged but for STATE_DIR.
SMTP_PORT, SPAMD_PORT = 10024, 10783
# What systemd gives a service: no inherited environment (not the tests' MAILSIFT_USER=).
SERVICE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def _installed(package: str) -> bool:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False)
    return "ok installed" in result.stdout or "config-files" in result.stdout


def _port_busy(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _why_not() -> str:
    if os.geteuid() != 0:
        return "installs a Debian package: needs root"
    if not (shutil.which("dpkg") and shutil.which("dpkg-deb")):
        return "needs dpkg and dpkg-deb (a Debian system)"
    if _installed("mailsift"):
        return "a mailsift package is installed here: this test would purge it"
    if STATE.exists() or ETC.exists():
        return f"{STATE} or {ETC} exists without the package: purging would delete it"
    busy = [port for port in (SMTP_PORT, SPAMD_PORT) if _port_busy(port)]
    if busy:
        return f"the default config's ports {busy} are in use on 127.0.0.1"
    return ""


pytestmark = [pytest.mark.integration, pytest.mark.skipif(bool(_why_not()), reason=_why_not() or "-")]


@pytest.fixture(scope="module")
def deb() -> Path:
    given = os.environ.get("MAILSIFT_DEB")
    if given:
        return Path(given)
    built = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-deb.sh")], capture_output=True, text=True, check=False, timeout=600
    )
    assert built.returncode == 0, built.stderr[-3000:]
    path = ROOT / built.stdout.strip().splitlines()[-1]
    assert path.name.startswith("mailsift_"), built.stdout
    assert path.suffix == ".deb", built.stdout
    return path


def exec_start(unit: Path) -> list[str]:
    """The ExecStart= command line of a unit, as systemd splits it (no prefixes, no variables used here)."""
    lines = [line.split("=", 1)[1] for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def send(message: EmailMessage, deadline: float) -> tuple[int, bytes]:
    """Send through the installed gateway, retrying 4xx (spamd may still be starting) until the deadline."""
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", SMTP_PORT, timeout=60) as client:
                client.send_message(message)
                return 250, b""
        except (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused, OSError) as error:
            code = getattr(error, "smtp_code", 0)
            if time.monotonic() > deadline or 500 <= code < 600:
                return code, getattr(error, "smtp_error", str(error).encode())
            time.sleep(1)


def mail(subject: str, attachment: bytes | None = None) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "alice@example.test", "bob@example.test", subject
    message.set_content(f"{subject}: a test through the installed package.\n")
    if attachment is not None:
        message.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="eicar.com")
    return message


@pytest.fixture
def serve() -> Iterator[subprocess.Popen[bytes]]:
    """`mailsift serve` started exactly as mailsift.service's ExecStart says, as root, from /."""
    argv = exec_start(UNIT_DIR / "mailsift.service")
    assert argv == ["/usr/bin/mailsift", "serve", "-c", "/etc/mailsift/config.py"]
    log = open("/tmp/mailsift-package-serve.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        argv, cwd="/", env=SERVICE_ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while not _port_busy(SMTP_PORT):
            assert process.poll() is None, Path(log.name).read_text()[-3000:]
            assert time.monotonic() < deadline, Path(log.name).read_text()[-3000:]
            time.sleep(0.3)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[Path]:
    """The package installed with dpkg -i; removed (data kept) then purged (data gone, user kept) after."""
    result = subprocess.run(["dpkg", "-i", str(deb)], capture_output=True, text=True, check=False)
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        yield deb
        (STATE / "kept-by-remove").write_text("data\n")
        removed = subprocess.run(["dpkg", "-r", "mailsift"], capture_output=True, text=True, check=False)
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert not Path("/usr/bin/mailsift").exists()
        assert not Path("/opt/mailsift").exists()
        assert (STATE / "kept-by-remove").is_file(), "remove kept no data"
        assert (ETC / "config.py").is_file(), "remove kept no config"
    finally:
        purged = subprocess.run(["dpkg", "--purge", "mailsift"], capture_output=True, text=True, check=False)
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not _installed("mailsift")
    assert not STATE.exists(), "purge kept the data"
    assert not ETC.exists(), "purge kept the config"
    assert not F2B_FILTER.exists(), "purge kept the fail2ban filter"
    assert pwd.getpwnam("mailsift"), "purge removed the system user"


def test_package_installs_serves_and_purges(installed: Path, serve: subprocess.Popen[bytes]) -> None:
    user = pwd.getpwnam("mailsift")
    assert user.pw_shell == "/usr/sbin/nologin"
    assert user.pw_uid < 1000
    info = STATE.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o750, user.pw_uid, user.pw_gid)
    config = ETC / "config.py"
    assert 'STATE_DIR = "/var/lib/mailsift"' in config.read_text()
    assert (stat.S_IMODE(config.stat().st_mode), grp.getgrgid(config.stat().st_gid).gr_name) == (0o640, "mailsift")
    conffiles = subprocess.run(["dpkg-query", "-W", "-f=${Conffiles}", "mailsift"], capture_output=True, text=True)
    assert "/etc/mailsift/config.py" in conffiles.stdout
    assert os.readlink("/usr/bin/mailsift") == "/opt/mailsift/bin/mailsift"

    # the mail: a clean one delivered into STATE_DIR's Maildir, a virus quarantined
    deadline = time.monotonic() + 90
    assert send(mail("clean"), deadline) == (250, b"")
    assert send(mail("virus", EICAR), deadline) == (250, b"")
    delivered = list((STATE / "mail" / "bob@example.test" / "new").iterdir())
    assert [path for path in delivered if b"Subject: clean" in path.read_bytes()], delivered
    quarantined = list((STATE / "quarantine" / "virus" / "new").iterdir())
    assert [path for path in quarantined if b"Subject: virus" in path.read_bytes()], quarantined
    # written by the workers, which run as mailsift
    assert {path.stat().st_uid for path in delivered + quarantined} == {user.pw_uid}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (Debian's systemd)")
def test_package_units_verify(installed: Path) -> None:
    units = [str(UNIT_DIR / unit) for unit in UNITS]
    result = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "mailsift" in line] == []
    assert exec_start(UNIT_DIR / "mailsift-expire.service")[:4] == ["/usr/bin/mailsift", "quarantine", "expire", "-c"]
    assert exec_start(UNIT_DIR / "mailsift-report.service")[:3] == ["/usr/bin/mailsift", "report", "-c"]
    enabled = Path("/etc/systemd/system/multi-user.target.wants/mailsift.service")
    assert enabled.is_symlink(), "the service is not enabled on first install"


@pytest.mark.skipif(shutil.which("fail2ban-regex") is None, reason="needs fail2ban-regex (Debian's fail2ban)")
def test_package_fail2ban_filter(installed: Path, tmp_path: Path) -> None:
    log = tmp_path / "mailsift.log"
    log.write_text(
        "2025-01-02 03:04:05,678 mailsift.webq[123] WARNING webq: login failed for admin from 192.0.2.7\n"
        # a name typed as "x from 10.9.9.9" is logged with its spaces as "?" (web/auth.py)
        "2025-01-02 03:04:06,000 mailsift.webq[123] WARNING webq: login failed for x?from?10.9.9.9 "
        "from 2001:db8::5\n"
        "2025-01-02 03:04:07,000 mailsift.webq[123] INFO webq: login ok for admin from 192.0.2.8\n"
    )
    result = subprocess.run(
        ["fail2ban-regex", "-o", "ip", str(log), str(F2B_FILTER)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["192.0.2.7", "2001:db8::5"]
