"""End to end with a real Postfix: swaks → Postfix → mailsift smtpd → Postfix reinjection → Maildir.

The Postfix is a private instance on loopback ports (``tests/helpers/postfix.py``),
set up exactly as the README tells an administrator: ``content_filter`` to a
``scan`` smtp transport with XFORWARD, and a second smtpd for reinjection.
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsift.testing import free_port
from tests.helpers.postfix import PostfixError, PostfixInstance, postfix_home
from tests.helpers.samples import EICAR_TEXT as EICAR

CONFIG = """\
from mailsift import *
STATE_DIR = {state!r}
SMTP_SERVER = ("127.0.0.1", {reinject})
SCANNERS = [regexp_scan([("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")])]
SRV = [smtpd(SCANNERS, "127.0.0.1", {port})]
"""

needs_postfix = pytest.mark.skipif(
    not os.environ.get("CI") and (shutil.which("swaks") is None or not os.path.exists("/usr/sbin/postfix")),
    reason="Postfix and swaks are installed by scripts/test.sh (required in CI)",
)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[PostfixInstance, Path]]:
    if os.geteuid() != 0:
        pytest.skip("a private Postfix master must run as root")
    filter_port, inbound, reinject = free_port(), free_port(), free_port()
    config = tmp_path / "mailsift.conf.py"
    config.write_text(CONFIG.format(state=str(tmp_path / "state"), reinject=reinject, port=filter_port))
    log = tmp_path / "mailsift.log"
    with log.open("wb") as out:
        mailsift = subprocess.Popen(
            [sys.executable, "-m", "mailsift", "serve", "-c", str(config), "-w", "2"], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                smtplib.SMTP("127.0.0.1", filter_port, timeout=2).quit()
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        with (
            postfix_home() as home,
            PostfixInstance(
                home / "postfix",
                inbound_port=inbound,
                reinject_port=reinject,
                content_filter=PostfixInstance.scan_filter(filter_port),
                maildir_root=home / "mail",
            ) as postfix,
        ):
            yield postfix, log
    finally:
        mailsift.send_signal(signal.SIGTERM)
        mailsift.wait(30)


def swaks(port: int, to: str, body: str, subject: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{port}",
            "--from",
            "alice@example.test",
            "--to",
            to,
            "--header",
            f"Subject: {subject}",
            "--body",
            body,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_postfix
def test_clean_mail_goes_through_postfix_and_mailsift(gateway: tuple[PostfixInstance, Path]) -> None:
    postfix, log = gateway
    sent = swaks(postfix.inbound_port, "bob@example.test", "hello through the filter", "e2e clean")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    [delivered] = postfix.wait_delivered("bob@example.test", timeout=60)
    text = delivered.read_text()
    assert "Subject: e2e clean" in text
    assert "hello through the filter" in text
    # Two Postfix hops: the inbound smtpd and the reinjection smtpd both left a Received line.
    assert text.count("Received: ") >= 2
    # mailsift got Postfix's queue id and client through XFORWARD (IDENT, ADDR) and logs them.
    [line] = [row for row in log.read_text().splitlines() if "action=deliver reply=250" in row]
    queue_id = line.split(" INFO ")[1].split()[0]
    assert f"{queue_id}: " in postfix.log_text()  # the same id in Postfix's own log
    assert "[127.0.0.1]" in line
    postfix.wait_queue_empty(timeout=60)


@needs_postfix
def test_eicar_is_rejected_and_never_delivered(gateway: tuple[PostfixInstance, Path]) -> None:
    postfix, log = gateway
    sent = swaks(postfix.inbound_port, "carol@example.test", EICAR, "e2e eicar")
    assert sent.returncode == 0, sent.stdout + sent.stderr  # Postfix accepted it; the filter decides after queue
    deadline = time.monotonic() + 60
    while "EICAR-Test" not in postfix.log_text():
        assert time.monotonic() < deadline, postfix.log_text()[-3000:] + log.read_text()
        time.sleep(0.2)
    postfix_log = postfix.log_text()
    assert "550 5.7.1" in postfix_log  # mailsift's answer, as Postfix logged it
    assert "action=reject reply=550 level=1.00 name=EICAR-Test" in log.read_text()
    postfix.wait_queue_empty(timeout=60)
    assert not list(postfix.maildir_new("carol@example.test").glob("*"))


@needs_postfix
def test_delivery_goes_on_when_another_pytest_session_resets_its_temp_root(
    gateway: tuple[PostfixInstance, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every pytest session starting on the machine (another run, a pytest subprocess) chmods
    /tmp/pytest-of-<user> back to 0700.  With the instance's tables and Maildirs under it, Postfix's
    daemons (postfix, nobody) lost their way in mid-test and mail was deferred ('mailboxes is
    unavailable ... Permission denied', 'maildir access problem'): done here as such a session would."""
    postfix, _log = gateway
    basetemp = tmp_path_factory.getbasetemp()
    roots = [path for path in (basetemp, *basetemp.parents) if path.name.startswith("pytest-of-")]
    if not roots:
        pytest.skip("--basetemp given: no pytest-of-<user> directory for another session to reset")
    mode = stat.S_IMODE(roots[0].stat().st_mode)
    roots[0].chmod(0o700)
    try:
        sent = swaks(postfix.inbound_port, "dave@example.test", "still delivered", "e2e after the reset")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        [delivered] = postfix.wait_delivered("dave@example.test", timeout=60)
        assert "Subject: e2e after the reset" in delivered.read_text()
    finally:
        roots[0].chmod(mode)


def test_an_instance_under_pytest_basetemp_is_refused(tmp_path: Path) -> None:
    """The instance's directories under tmp_path work until another pytest session starts: refused
    up front (before anything is written or started), whoever runs the tests."""
    # what tmp_path is without --basetemp (/tmp/pytest-of-<user>/pytest-N/...), whatever was given
    base = tmp_path / "pytest-of-someone" / "pytest-1"
    instance = PostfixInstance(
        base / "postfix",
        inbound_port=free_port(),
        reinject_port=free_port(),
        content_filter=None,
        maildir_root=base / "mail",
    )
    try:
        with pytest.raises(PostfixError, match="postfix_home"):
            instance.start()
        assert not (base / "postfix").exists()
    finally:
        instance.stop()


@needs_postfix
def test_the_private_postfix_tables_are_readable_under_any_umask(tmp_path: Path) -> None:
    """A test run in process before this one may leave mailsift's umask (0027) behind:
    Postfix's unprivileged daemons must still read the instance's tables (mail was
    deferred with 'mailboxes ... Permission denied' when they were 0640)."""
    instance = PostfixInstance(
        tmp_path / "postfix",
        inbound_port=free_port(),
        reinject_port=free_port(),
        content_filter=None,
        maildir_root=tmp_path / "mail",
    )
    previous = os.umask(0o077)
    try:
        instance._write_config()
    finally:
        os.umask(previous)
    for name in ("main.cf", "master.cf", "mailboxes"):
        assert (instance.config_dir / name).stat().st_mode & 0o777 == 0o644, name
