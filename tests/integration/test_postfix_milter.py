"""End to end with a real Postfix before queue: swaks → Postfix smtpd ⇄ mailsift milter → Maildir.

The Postfix is a private instance (``tests/helpers/postfix.py``) with no content
filter and, as the README tells an administrator, ``smtpd_milters`` pointing at
mailsift's ``milter`` service and ``milter_default_action = tempfail`` (if
mailsift is down, clients are told to retry).  mailsift runs as ``mailsift
serve`` with two workers, so the supervisor's socket binding is used too.
The verdicts reach the SMTP client at DATA time.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes
from pathlib import Path

import pytest

from mailsift.testing import free_port
from tests.helpers.postfix import PostfixInstance, milter_main_cf, postfix_home
from tests.helpers.samples import EICAR_TEXT as EICAR

CONFIG = """\
from mailsift import *
from mailsift.services.milter import milter
STATE_DIR = {state!r}
SCANNERS = [
    add_header("X-Mailsift-Checked", "%S", const(0.1, "checked")),
    regexp_scan([("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")]),
    reject(regexp_scan([("Percent", r"PERCENT-ME")]), message="100% refused: %V"),
    deliver(modify_subject("[SPAM] ", regexp_scan([("SPAM", r"cheap pills")]))),
    quarantine("policy", regexp_scan([("Policy-Hold", r"HOLD-ME-PLEASE")])),
]
SRV = [milter(SCANNERS, "mailsift", "inet:{port}@127.0.0.1", quarantine_hold=True)]
"""

needs_postfix = pytest.mark.skipif(
    not os.environ.get("CI") and (shutil.which("swaks") is None or not os.path.exists("/usr/sbin/postfix")),
    reason="Postfix and swaks are installed by scripts/setup.sh --test (required in CI)",
)


@dataclass
class Gateway:
    postfix: PostfixInstance
    log: Path
    state: Path


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    if os.geteuid() != 0:
        pytest.skip("a private Postfix master must run as root")
    # Not under pytest's basetemp: any concurrent pytest run chmods /tmp/pytest-of-root back to 0700,
    # which Postfix's unprivileged daemons then cannot traverse.
    with postfix_home(prefix="mailsift-milter-e2e-") as home:
        yield from _gateway(home)


def _gateway(tmp: Path) -> Iterator[Gateway]:
    milter_port, inbound, reinject = free_port(), free_port(), free_port()
    config = tmp / "mailsift.conf.py"
    config.write_text(CONFIG.format(state=str(tmp / "state"), port=milter_port))
    log = tmp / "mailsift.log"
    with log.open("wb") as out:
        mailsift = subprocess.Popen(
            [sys.executable, "-m", "mailsift", "serve", "-c", str(config), "-w", "2"], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", milter_port), timeout=2).close()
                break
            except OSError:
                assert mailsift.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        with PostfixInstance(
            tmp / "postfix",
            inbound_port=inbound,
            reinject_port=reinject,
            content_filter=None,
            maildir_root=tmp / "mail",
            extra_main_cf=milter_main_cf(milter_port),
        ) as postfix:
            yield Gateway(postfix, log, tmp / "state")
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


def mailsift_line(gateway: Gateway, marker: str) -> str:
    """The mail log line of mailsift that contains ``marker`` (waiting for it to be written)."""
    deadline = time.monotonic() + 20
    while True:
        lines = [row for row in gateway.log.read_text().splitlines() if marker in row]
        if lines:
            return lines[-1]
        assert time.monotonic() < deadline, gateway.log.read_text()[-3000:]
        time.sleep(0.1)


def no_milter_warnings(postfix: PostfixInstance) -> None:
    warnings = [row for row in postfix.log_text().splitlines() if "warning" in row and "milter" in row]
    assert not warnings, warnings


@needs_postfix
def test_clean_mail_is_delivered_with_the_added_header(gateway: Gateway) -> None:
    postfix = gateway.postfix
    sent = swaks(postfix.inbound_port, "bob@example.test", "hello through the milter", "milter clean")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    [delivered] = postfix.wait_delivered("bob@example.test", timeout=60)
    message = message_from_bytes(delivered.read_bytes())
    assert message["X-Mailsift-Checked"] == "const"
    assert message["Subject"] == "milter clean"
    assert "hello through the milter" in message.get_payload()
    # Postfix's queue id ({i} macro) is in mailsift's log line and in Postfix's own log.
    line = mailsift_line(gateway, "from=<alice@example.test> to=<bob@example.test>")
    assert "action=deliver reply=250" in line
    queue_id = line.split(" INFO ")[1].split()[0]
    assert f"{queue_id}: " in postfix.log_text()
    assert "[127.0.0.1]" in line
    no_milter_warnings(postfix)


@needs_postfix
def test_eicar_is_rejected_at_smtp_time_with_mailsifts_text(gateway: Gateway) -> None:
    postfix = gateway.postfix
    sent = swaks(postfix.inbound_port, "carol@example.test", EICAR, "milter eicar")
    assert sent.returncode != 0  # swaks: the server refused the message
    assert "<** 550 5.7.1 Rejected by content filter: EICAR-Test (regexp_scan)" in sent.stdout, sent.stdout
    assert "action=reject reply=550" in mailsift_line(gateway, "to=<carol@example.test>")
    postfix.wait_queue_empty(timeout=30)
    assert not postfix.maildir_new("carol@example.test").exists()
    no_milter_warnings(postfix)


@needs_postfix
def test_reject_text_with_a_percent_sign_reaches_the_client_unchanged(gateway: Gateway) -> None:
    # libmilter's replies are formats: mailsift sends "%%", Postfix gives the client "%"
    sent = swaks(gateway.postfix.inbound_port, "carol@example.test", "PERCENT-ME", "milter percent")
    assert "<** 550 5.7.1 100% refused: Percent" in sent.stdout, sent.stdout


@needs_postfix
def test_spam_gets_its_subject_changed(gateway: Gateway) -> None:
    postfix = gateway.postfix
    sent = swaks(postfix.inbound_port, "dave@example.test", "buy cheap pills now", "an offer")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    [delivered] = postfix.wait_delivered("dave@example.test", timeout=60)
    message = message_from_bytes(delivered.read_bytes())
    assert message.get_all("Subject") == ["[SPAM] an offer"]  # changed in place, not added
    assert message["X-Mailsift-Checked"] == "const"
    no_milter_warnings(postfix)


@needs_postfix
def test_quarantined_mail_is_kept_by_mailsift_and_held_by_postfix(gateway: Gateway) -> None:
    postfix = gateway.postfix
    sent = swaks(postfix.inbound_port, "eve@example.test", "HOLD-ME-PLEASE", "milter hold")
    assert sent.returncode == 0, sent.stdout + sent.stderr  # accepted: held, not refused
    line = mailsift_line(gateway, "to=<eve@example.test>")
    assert "action=quarantine reply=250" in line
    queue_id = line.split(" INFO ")[1].split()[0]
    stored = list((gateway.state / "quarantine" / "policy").rglob("*"))
    assert any(path.is_file() and b"HOLD-ME-PLEASE" in path.read_bytes() for path in stored)
    deadline = time.monotonic() + 20
    while not (held := [entry["queue_id"] for entry in postfix.queue() if entry.get("queue_name") == "hold"]):
        assert time.monotonic() < deadline, postfix.queue()
        time.sleep(0.2)
    assert held == [queue_id]
    assert f"{queue_id}: milter-hold: END-OF-MESSAGE" in postfix.log_text()
    assert not postfix.maildir_new("eve@example.test").exists()
    no_milter_warnings(postfix)
