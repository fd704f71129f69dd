"""End to end over LMTP with a real Postfix: swaks → Postfix → ``lmtp:`` content filter →
mailsift lmtpd (a scanner set per recipient) → Postfix reinjection → Maildir.

One message for four recipients with four policies; Postfix's own log shows four
different results, one per recipient, from the one LMTP transaction.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailsift.testing import free_port
from tests.helpers.postfix import PostfixInstance, postfix_home

CONFIG = """\
from mailsift import *
from mailsift.services.lmtpd import lmtpd

STATE_DIR = {state!r}
SMTP_SERVER = ("127.0.0.1", {reinject})
POLICY = regexp_scan([("Policy-Word", r"forbidden-word")])
LMTP_SCANNERS = {{
    r"^carol@": [POLICY],                          # refused: bounced by Postfix
    r"^dave@": [quarantine("policy", POLICY)],     # held: Postfix counts it as sent
    r"^eve@": [clamd(("127.0.0.1", {dead}))],      # scanner down: Postfix defers
    "default": [],                                 # delivered through reinjection
}}
SRV = [lmtpd(LMTP_SCANNERS, "127.0.0.1", {port})]
"""

needs_postfix = pytest.mark.skipif(
    not os.environ.get("CI") and (shutil.which("swaks") is None or not os.path.exists("/usr/sbin/postfix")),
    reason="Postfix and swaks are installed by scripts/test.sh (required in CI)",
)


def wait_for(what: str, found: Callable[[], bool], context: Callable[[], str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not found():
        assert time.monotonic() < deadline, f"{what} not seen within {timeout}s\n{context()[-4000:]}"
        time.sleep(0.2)


@pytest.fixture
def lmtp_gateway(tmp_path: Path) -> Iterator[tuple[PostfixInstance, Path, int]]:
    if os.geteuid() != 0:
        pytest.skip("a private Postfix master must run as root")
    filter_port, inbound, reinject = free_port(), free_port(), free_port()
    config = tmp_path / "mailsift.conf.py"
    config.write_text(
        CONFIG.format(state=str(tmp_path / "state"), reinject=reinject, port=filter_port, dead=free_port())
    )
    log = tmp_path / "mailsift.log"
    with log.open("wb") as out:
        mailsift = subprocess.Popen(
            [sys.executable, "-m", "mailsift", "serve", "-c", str(config), "-w", "1"], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", filter_port), timeout=2) as sock:
                    assert sock.recv(512).startswith(b"220 ")
                break
            except OSError:
                assert mailsift.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        with (
            postfix_home() as home,
            PostfixInstance(
                home / "postfix",
                inbound_port=inbound,
                reinject_port=reinject,
                content_filter=f"lmtp:[127.0.0.1]:{filter_port}",
                maildir_root=home / "mail",
                extra_main_cf={"lmtp_send_xforward_command": "yes"},
            ) as postfix,
        ):
            yield postfix, log, filter_port
    finally:
        mailsift.send_signal(signal.SIGTERM)
        mailsift.wait(30)


def status_of(maillog: str, recipient: str, port: int) -> list[str]:
    """Postfix's ``status=...`` results for ``recipient`` from the LMTP hop to mailsift."""
    pattern = re.compile(rf"to=<{re.escape(recipient)}>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{port},.* status=(.*)")
    return [match.group(1) for match in pattern.finditer(maillog)]


@needs_postfix
def test_four_recipients_four_policies_four_results_in_postfix(
    lmtp_gateway: tuple[PostfixInstance, Path, int],
) -> None:
    postfix, log, port = lmtp_gateway
    recipients = ["bob", "carol", "dave", "eve"]
    sent = subprocess.run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{postfix.inbound_port}",
            "--from",
            "alice@example.test",
            "--to",
            ",".join(f"{name}@example.test" for name in recipients),
            "--header",
            "Subject: lmtp policies",
            "--body",
            "this body has the forbidden-word in it",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr

    def seen_all() -> bool:
        maillog = postfix.log_text()
        return all(status_of(maillog, f"{name}@example.test", port) for name in recipients)

    wait_for("a result for every recipient", seen_all, postfix.log_text)
    maillog = postfix.log_text()
    bob, carol, dave, eve = (status_of(maillog, f"{name}@example.test", port)[0] for name in recipients)
    assert bob.startswith("sent (250 2.0.0 Ok: queued"), bob
    assert carol.startswith("bounced "), carol
    assert "550 5.7.1 Rejected by content filter: Policy-Word (regexp_scan)" in carol
    assert dave.startswith("sent (250 2.7.0 Ok: message held in quarantine"), dave
    assert eve.startswith("deferred "), eve
    assert "451 4.3.0" in eve

    # bob's copy came back through the reinjection smtpd into his Maildir; nobody else's did.
    [delivered] = postfix.wait_delivered("bob@example.test", timeout=60)
    text = delivered.read_text()
    assert "Subject: lmtp policies" in text
    assert "forbidden-word" in text
    for name in ("carol", "dave", "eve"):
        assert not list(postfix.maildir_new(f"{name}@example.test").glob("*")), name
    # dave's copy is in the quarantine, his alone.
    [held] = (log.parent / "state" / "quarantine" / "policy" / "new").iterdir()
    held_bytes = held.read_bytes()
    assert b"X-Envelope-To: <dave@example.test>" in held_bytes
    assert b"X-Envelope-To: <bob@" not in held_bytes
    # carol's refusal reached the sender as Postfix's bounce, with mailsift's reason.
    [bounce] = postfix.wait_delivered("alice@example.test", timeout=60)
    assert "Policy-Word" in bounce.read_text()
    # mailsift logged one line per scanner set, all under Postfix's queue id (XFORWARD over LMTP).
    lines = [line for line in log.read_text().splitlines() if " action=" in line]
    queue_ids = {line.split(" INFO ")[1].split()[0] for line in lines}
    assert len(queue_ids) == 1
    assert f"{queue_ids.pop()}: " in maillog
    actions = {re.search(r"action=(\w+) .* to=(\S+)", line).groups() for line in lines}  # type: ignore[union-attr]
    assert {
        ("deliver", "<bob@example.test>"),
        ("reject", "<carol@example.test>"),
        ("quarantine", "<dave@example.test>"),
        ("tempfail", "<eve@example.test>"),
    } <= actions
