"""Policies and lists under a running smtpd, with a real spamd: a change applies to the next message.

The service and the ``mailsift policy``/``lists`` commands share the config's
SQLite DATABASE (``STATE_DIR/mailsift.db``); nothing is restarted between
messages.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailsift.cli.policy import lists, policy
from mailsift.scanners.actions import reject
from mailsift.scanners.engines.spamassassin import spamassassind
from mailsift.scanners.userpolicy import listed, policy_attach, policy_enabled, policy_spam_hits
from mailsift.services.smtpd import smtpd
from mailsift.settings import Settings
from mailsift.storage import db
from mailsift.storage.db import Database
from mailsift.storage.policies import add_listed, set_policy
from mailsift.testing import RecordingServer, ServiceThread
from tests.helpers.spamd import SpamdInstance, spamd_instance  # noqa: F401 - fixture

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
NOW = 1_700_000_000.0


def message(subject: str, body: str, headers: str = "") -> bytes:
    return (
        f"From: alice@sender.test\r\nTo: bob@example.org\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@sender.test>\r\n"
        f"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n{headers}\r\n{body}\r\n"
    ).encode()


def send(port: int, data: bytes, sender: str = "alice@sender.test", rcpt: str = "bob@example.org") -> tuple[int, str]:
    """MAIL, RCPT, DATA; the DATA reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        assert client.ehlo("client.sender.test")[0] == 250
        assert client.mail(sender)[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        code, text = client.data(data)
        return code, text.decode()


@pytest.fixture
def state_dir() -> Iterator[str]:
    where = tempfile.mkdtemp(prefix="mailsift-userpolicy-", dir="/tmp")
    yield where
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def config(state_dir: str) -> str:
    path = os.path.join(state_dir, "config.py")
    Path(path).write_text(f"from mailsift import *\nSTATE_DIR = {state_dir!r}\nSCANNERS = []\n")
    return path


@pytest.fixture
def database(state_dir: str) -> Iterator[Database]:
    """The config's DATABASE as the service sees it (the same file)."""
    database = db.sqlite()
    database.configure(state_dir)
    yield database
    database.dispose()


@pytest.fixture
def downstream() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


@pytest.fixture
def gateway(
    spamd_instance: SpamdInstance,  # noqa: F811 - the imported fixture
    database: Database,
    downstream: RecordingServer,
    state_dir: str,
) -> Iterator[ServiceThread]:
    """smtpd whose pipeline honours the lists, then spam=, spam_hits= and attach= of the policies."""
    spam = spamassassind(spamd_instance.address, report=False)
    scanners = [
        listed(db=database),
        policy_enabled("spam", reject(policy_spam_hits(spam, db=database)), db=database),
        reject(policy_attach(db=database)),
    ]
    service = smtpd(scanners, "127.0.0.1", 0, next_hop=("127.0.0.1", downstream.port))
    with ServiceThread(service, Settings(state_dir=state_dir, database=database)) as thread:
        yield thread


def test_policy_changed_with_the_cli_applies_to_the_next_message(
    gateway: ServiceThread, downstream: RecordingServer, config: str
) -> None:
    runner = CliRunner()
    assert runner.invoke(policy, ["set", "-c", config, "example.org", "spam=no"]).exit_code == 0
    code, _ = send(gateway.port, message("first", GTUBE))
    assert code == 250  # spam checks are off for example.org: delivered
    assert len(downstream.messages) == 1

    result = runner.invoke(policy, ["set", "-c", config, "example.org", "spam=yes"])
    assert result.exit_code == 0, result.output
    code, text = send(gateway.port, message("second", GTUBE))
    assert code == 550, text  # the same running service now checks and rejects
    assert "Spam" in text
    assert len(downstream.messages) == 1

    assert runner.invoke(policy, ["delete", "-c", config, "example.org"]).exit_code == 0
    code, _ = send(gateway.port, message("third", GTUBE))
    assert code == 250  # no entry at all: simscan does no scans
    assert len(downstream.messages) == 2


def test_spam_hits_from_the_policy_is_the_threshold(
    gateway: ServiceThread, downstream: RecordingServer, database: Database
) -> None:
    # GTUBE scores about 1000: a policy threshold above that lets it through, a default one rejects
    database.call(set_policy, "", "spam=yes", NOW)
    code, _ = send(gateway.port, message("default threshold", GTUBE))
    assert code == 550
    database.call(set_policy, "bob@example.org", "spam_hits=5000", NOW)
    code, _ = send(gateway.port, message("high threshold", GTUBE))
    assert code == 250
    assert len(downstream.messages) == 1


def test_attach_list_from_the_policy(gateway: ServiceThread, downstream: RecordingServer, database: Database) -> None:
    mime = "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n"
    attached = (
        "--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XX\r\nContent-Type: application/octet-stream\r\n"
        'Content-Disposition: attachment; filename="invoice.scr"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        "AAAA\r\n--XX--"
    )
    code, _ = send(gateway.port, message("no attach list", attached, mime))
    assert code == 250
    database.call(set_policy, "example.org", "attach=.exe:.scr", NOW)
    code, text = send(gateway.port, message("attach list", attached, mime))
    assert code == 550
    assert "Policy.Attachment" in text
    assert len(downstream.messages) == 1


def test_lists_change_the_next_message(
    gateway: ServiceThread, downstream: RecordingServer, database: Database, config: str
) -> None:
    database.call(set_policy, "", "spam=yes", NOW)
    code, _ = send(gateway.port, message("clean", "Just a short note, see you tomorrow."))
    assert code == 250
    database.call(lambda c: add_listed(c, "black", "sender", "sender.test", now=NOW))
    code, text = send(gateway.port, message("blacklisted", "Just a short note, see you tomorrow."))
    assert code == 550
    assert "Blacklisted" in text
    # bob whitelists alice: his own entry beats the global blacklist, and GTUBE is not scanned
    added = CliRunner().invoke(
        lists, ["add", "-c", config, "--user", "bob@example.org", "white", "sender", "alice@sender.test"]
    )
    assert added.exit_code == 0, added.output
    code, _ = send(gateway.port, message("whitelisted", GTUBE))
    assert code == 250
    assert len(downstream.messages) == 2
