"""``smtpd_policy`` end to end: a real Postfix asking ``mailsift serve`` at RCPT, and several workers under load.

Postfix is a private instance (``tests/helpers/postfix.py``) without a content
filter, configured as the README tells an administrator::

    smtpd_recipient_restrictions = check_policy_service inet:127.0.0.1:PORT,
                                   permit_mynetworks, reject_unauth_destination

(the test client is in mynetworks, so the policy check comes first).  Waits
are retries with a deadline, never timed assertions.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mailsift.testing import free_port
from tests.helpers.postfix import PostfixInstance, postfix_home

URL = "https://mail.example.test/greylisting/%r.html"

CONFIG = """\
from mailsift.storage import db
from mailsift.scanners.greylist import greylist
from mailsift.services.postfix_policy import smtpd_policy
STATE_DIR = {state!r}
POLICY_SCANNERS = [greylist(min={min}, auto_whitelist={awl}, url={url!r})]
SRV = [smtpd_policy(POLICY_SCANNERS, db.sqlite(), "127.0.0.1", {port})]
"""

needs_postfix = pytest.mark.skipif(
    not os.environ.get("CI") and not os.path.exists("/usr/sbin/postfix"),
    reason="Postfix is installed by scripts/test.sh (required in CI)",
)


class PolicyServe:
    """``mailsift serve`` running a config with one ``smtpd_policy``."""

    def __init__(self, tmp_path: Path, *, delay: float, auto_whitelist: int, workers: int) -> None:
        self.port = free_port()
        self.state = tmp_path / "state"
        self.log = tmp_path / "serve.log"
        config = tmp_path / "policy.conf.py"
        config.write_text(CONFIG.format(state=str(self.state), min=delay, awl=auto_whitelist, url=URL, port=self.port))
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mailsift", "serve", "-c", str(config), "-w", str(workers)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
                break
            except OSError:
                assert self.process.poll() is None, self.log.read_text()
                assert time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def query(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.state / "mailsift.db") as connection:
            return connection.execute(sql, args).fetchall()

    def policy_lines(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if " policy action=" in line]


@pytest.fixture
def greylisting(tmp_path: Path) -> Iterator[tuple[PolicyServe, PostfixInstance]]:
    if os.geteuid() != 0:
        pytest.skip("a private Postfix master must run as root")
    served = PolicyServe(tmp_path, delay=2, auto_whitelist=2, workers=2)
    try:
        restrictions = (
            f"check_policy_service inet:127.0.0.1:{served.port}, permit_mynetworks, reject_unauth_destination"
        )
        with (
            postfix_home() as home,
            PostfixInstance(
                home / "postfix",
                inbound_port=free_port(),
                reinject_port=free_port(),
                content_filter=None,
                maildir_root=home / "mail",
                extra_main_cf={"smtpd_recipient_restrictions": restrictions},
            ) as postfix,
        ):
            yield served, postfix
    finally:
        served.stop()


def attempt(port: int, sender: str, recipient: str, subject: str) -> tuple[int, str]:
    """One delivery attempt as a sending MTA makes it; the RCPT reply (and the mail sent on 250)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("mx.sender.example")
        client.mail(sender)
        code, text = client.rcpt(recipient)
        if code == 250:
            body = f"From: {sender}\r\nTo: {recipient}\r\nSubject: {subject}\r\n\r\nhello\r\n"
            data_code, data_text = client.data(body.encode())
            assert data_code == 250, data_text
        return code, text.decode()


def deliver_through_greylisting(port: int, sender: str, recipient: str, subject: str) -> list[str]:
    """Retry (as an MTA would, sooner) until RCPT is accepted; return the 4xx replies met on the way."""
    deferrals: list[str] = []
    deadline = time.monotonic() + 60
    while True:
        code, text = attempt(port, sender, recipient, subject)
        if code == 250:
            return deferrals
        assert code == 450, text
        deferrals.append(text)
        assert time.monotonic() < deadline, deferrals
        time.sleep(0.3)


@needs_postfix
def test_postfix_greylisting_defer_retry_pass_and_auto_whitelist(greylisting) -> None:
    served, postfix = greylisting
    port = postfix.inbound_port
    # First attempt: 450 with the info URL (%r is the recipient's domain).
    deferrals = deliver_through_greylisting(port, "alice@sender.example", "bob@example.test", "first")
    assert len(deferrals) >= 1
    assert "Greylisted, please try again in" in deferrals[0]
    assert "https://mail.example.test/greylisting/example.test.html" in deferrals[0]
    assert deferrals[0].startswith("4.7.1 <bob@example.test>: Recipient address rejected")
    [delivered] = postfix.wait_delivered("bob@example.test")
    text = delivered.read_text()
    assert "Subject: first" in text
    assert "X-Greylist: delayed " in text  # PREPENDed by the policy answer
    # The database counted every attempt exactly (several workers answered them).
    assert served.query("SELECT network, sender, recipient, deferred, passed FROM greylist") == [
        ("127.0.0.0/24", "alice@sender.example", "bob@example.test", len(deferrals), 1)
    ]
    # A second triplet from the same network: greylisted too; its pass is the network's second.
    assert attempt(port, "carol@other.example", "bob@example.test", "second")[0] == 450
    deliver_through_greylisting(port, "carol@other.example", "bob@example.test", "second")
    assert served.query("SELECT network, passed FROM auto_whitelist") == [("127.0.0.0/24", 2)]
    # Two passes whitelist 127.0.0.0/24: a sender never seen passes at once.
    assert attempt(port, "dave@new.example", "carol@example.test", "third") == (250, "2.1.5 Ok")
    [third] = postfix.wait_delivered("carol@example.test")
    assert "Subject: third" in third.read_text()
    assert "X-Greylist" not in third.read_text()
    assert served.query("SELECT passed FROM auto_whitelist") == [(3,)]
    assert served.query("SELECT count(*) FROM greylist WHERE sender = 'dave@new.example'") == [(0,)]
    postfix.wait_queue_empty()


# --------------------------------------------------------------------------- several workers under load


TRIPLETS = 12
REQUESTS_PER_TRIPLET = 25
CONNECTIONS = 30


def policy_request(number: int) -> bytes:
    client = f"10.0.{number % 3}.{number}"
    return (
        "request=smtpd_access_policy\nprotocol_state=RCPT\n"
        f"client_address={client}\nsender=s{chr(97 + number)}@load.example\nrecipient=r@example.test\n\n"
    ).encode()


def run_connection(port: int, numbers: list[int]) -> list[str]:
    """One connection asking for each triplet number in turn; the actions answered."""
    answers: list[str] = []
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        buffer = b""
        for number in numbers:
            sock.sendall(policy_request(number))
            while b"\n\n" not in buffer:
                chunk = sock.recv(65536)
                assert chunk, f"closed after {answers}"
                buffer += chunk
            block, buffer = buffer.split(b"\n\n", 1)
            answers.append(block.decode())
    return answers


def test_several_workers_lose_no_state_under_parallel_requests(tmp_path: Path) -> None:
    served = PolicyServe(tmp_path, delay=0, auto_whitelist=10**9, workers=3)
    try:
        work = [n for n in range(TRIPLETS) for _ in range(REQUESTS_PER_TRIPLET)]
        batches = [work[i::CONNECTIONS] for i in range(CONNECTIONS)]  # every connection mixes triplets
        with ThreadPoolExecutor(CONNECTIONS) as pool:
            answers = [a for batch in pool.map(lambda b: run_connection(served.port, b), batches) for a in batch]
    finally:
        served.stop()
    assert len(answers) == TRIPLETS * REQUESTS_PER_TRIPLET
    kinds = Counter(answer.split()[0] for answer in answers)
    # min=0: exactly one first sighting per triplet is deferred, all other requests pass.
    assert kinds["action=DEFER_IF_PERMIT"] == TRIPLETS
    assert kinds["action=PREPEND"] == TRIPLETS  # each triplet's first pass carries X-Greylist
    assert kinds["action=DUNNO"] == TRIPLETS * (REQUESTS_PER_TRIPLET - 2)
    rows = served.query("SELECT sender, deferred, passed FROM greylist ORDER BY sender")
    assert rows == [(f"s{chr(97 + n)}@load.example", 1, REQUESTS_PER_TRIPLET - 1) for n in range(TRIPLETS)]
    networks = served.query("SELECT network, passed FROM auto_whitelist ORDER BY network")
    per_network = Counter(f"10.0.{n % 3}.0/24" for n in range(TRIPLETS))
    assert networks == [(net, count * (REQUESTS_PER_TRIPLET - 1)) for net, count in sorted(per_network.items())]
    assert len(served.policy_lines()) == len(answers)  # one log line per request, no error
    assert "Traceback" not in served.log.read_text()
