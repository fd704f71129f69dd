"""A scan longer than Postfix's milter timeout: the milter's SMFIR_PROGRESS keeps Postfix waiting.

A private Postfix (tests/helpers/postfix.py) with ``milter_content_timeout = 5s``
in front of ``mailsift serve``, whose scanners take about 8 s (a real
``sleep`` through ``cmd()``).  With ``progress_interval=2`` the message is
answered as if the scan were quick (delivered with mailsift's header; EICAR
refused with mailsift's ``550``); with progress off (the behaviour before it
existed) Postfix gives up after 5 s and the client gets its
``milter_default_action`` (tempfail).  The packet timing itself is tested in
tests/protocol/test_milter_progress.py.
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
from contextlib import ExitStack, contextmanager
from email import message_from_bytes
from pathlib import Path

import pytest

from mailsift.testing import free_port
from tests.helpers.postfix import PostfixInstance, milter_main_cf, postfix_home
from tests.helpers.samples import EICAR_TEXT as EICAR

MILTER_TIMEOUT = 5
SCAN_SECONDS = 8

CONFIG = """\
from mailsift import *
from mailsift.services.milter import milter
STATE_DIR = {state!r}
SCANNERS = [
    cmd(["sleep", "{scan}"]),
    add_header("X-Mailsift-Checked", "%S", const(0.1, "checked")),
    regexp_scan([("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")]),
]
SRV = [
    milter(SCANNERS, "progress", "inet:{progress}@127.0.0.1", progress_interval=2),
    milter(SCANNERS, "silent", "inet:{silent}@127.0.0.1", progress_interval=None),
]
"""

needs_postfix = pytest.mark.skipif(
    not os.environ.get("CI") and (shutil.which("swaks") is None or not os.path.exists("/usr/sbin/postfix")),
    reason="Postfix and swaks are installed by scripts/setup.sh --test (required in CI)",
)


@contextmanager
def serving(tmp: Path, ports: dict[str, int]) -> Iterator[Path]:
    config = tmp / "mailsift.conf.py"
    config.write_text(CONFIG.format(state=str(tmp / "state"), scan=SCAN_SECONDS, **ports))
    log = tmp / "mailsift.log"
    with log.open("wb") as out:
        mailsift = subprocess.Popen(
            [sys.executable, "-m", "mailsift", "serve", "-c", str(config), "-w", "1"], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 30
        for port in ports.values():
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=2).close()
                    break
                except OSError:
                    assert mailsift.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.1)
        yield log
    finally:
        mailsift.send_signal(signal.SIGTERM)
        mailsift.wait(30)


@pytest.fixture(scope="module")
def gateways() -> Iterator[dict[str, PostfixInstance]]:
    """One Postfix per milter: ``progress`` (progress_interval=2) and ``silent`` (None)."""
    if os.geteuid() != 0:
        pytest.skip("a private Postfix master must run as root")
    with postfix_home(prefix="mailsift-progress-") as home, ExitStack() as stack:
        ports = {"progress": free_port(), "silent": free_port()}
        stack.enter_context(serving(home, ports))
        found = {}
        for name, port in ports.items():
            found[name] = stack.enter_context(
                PostfixInstance(
                    home / f"pf-{name}",
                    inbound_port=free_port(),
                    reinject_port=free_port(),
                    content_filter=None,
                    maildir_root=home / f"mail-{name}",
                    extra_main_cf=milter_main_cf(port, milter_content_timeout=f"{MILTER_TIMEOUT}s"),
                )
            )
        yield found


def swaks(port: int, to: str, body: str, subject: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *("swaks", "--server", f"127.0.0.1:{port}", "--from", "alice@example.test", "--to", to),
            *("--header", f"Subject: {subject}", "--body", body, "--timeout", "120"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@needs_postfix
def test_a_scan_longer_than_the_milter_timeout_is_delivered_with_progress(
    gateways: dict[str, PostfixInstance],
) -> None:
    postfix = gateways["progress"]
    started = time.monotonic()
    sent = swaks(postfix.inbound_port, "bob@example.test", "a slow scan", "slow clean")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert time.monotonic() - started >= SCAN_SECONDS  # the scan did outlast milter_content_timeout
    [delivered] = postfix.wait_delivered("bob@example.test", timeout=60)
    message = message_from_bytes(delivered.read_bytes())
    assert message["X-Mailsift-Checked"] == "const"
    assert message["Subject"] == "slow clean"
    assert "timed out" not in postfix.log_text().lower()


@needs_postfix
def test_eicar_after_a_long_scan_gets_mailsifts_reject(gateways: dict[str, PostfixInstance]) -> None:
    postfix = gateways["progress"]
    sent = swaks(postfix.inbound_port, "carol@example.test", EICAR, "slow eicar")
    assert "<** 550 5.7.1 Rejected by content filter: EICAR-Test (regexp_scan)" in sent.stdout, sent.stdout
    postfix.wait_queue_empty(timeout=30)
    assert not postfix.maildir_new("carol@example.test").exists()


@needs_postfix
def test_without_progress_postfix_gives_up_and_tempfails(gateways: dict[str, PostfixInstance]) -> None:
    """The behaviour before SMFIR_PROGRESS: the milter timeout had to cover the whole scan."""
    postfix = gateways["silent"]
    sent = swaks(postfix.inbound_port, "bob@example.test", "a slow scan", "slow silent")
    assert sent.returncode != 0
    assert "<** 451 4.7.1" in sent.stdout, sent.stdout
    [gave_up] = [line for line in postfix.log_text().splitlines() if "milter inet:127.0.0.1:" in line]
    assert "timed out" in gave_up.lower(), gave_up
    assert not postfix.maildir_new("bob@example.test").exists()
