"""Poison mail over real sockets: a message that fails on its content is quarantined after max_attempts.

smtpd and the milter in front of one database; a recording next hop; the
message that crashes the MIME parser (2,000 nested multipart levels).
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailsift import attach_name, clamd, parsemail, poison, smtpd
from mailsift.core.poison import message_key
from mailsift.message.mail import Envelope, Mail
from mailsift.services.milter import milter
from mailsift.settings import Settings
from mailsift.storage import db
from mailsift.storage.schema import poison_attempt_table
from mailsift.testing import FakeClamd, RecordingServer, ServiceThread
from tests.helpers.messages import message, nested_multipart, parse, text_of
from tests.helpers.milter import MilterClient

SENDER, RECIPIENTS = "alice@example.test", ["bob@example.test"]
HOSTNAME = "gw.example.test"


def send(port: int, data: bytes) -> int:
    """The code the MTA gets at the end of DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        try:
            client.sendmail(SENDER, RECIPIENTS, data)
        except smtplib.SMTPDataError as error:
            return error.smtp_code
    return 250


def settings(tmp_path: Path, database: db.Database, **options: Any) -> Settings:
    state = tmp_path / "state"
    return Settings(state_dir=str(state), database=database, poison=poison(3), hostname=HOSTNAME, **options)


def counts(database: db.Database) -> list[int]:
    return [row.attempts for row in database.call(lambda c: c.execute(poison_attempt_table.select()).all())]


def quarantined(tmp_path: Path, category: str = "unscannable") -> list[Path]:
    folder = tmp_path / "state" / "quarantine" / category / "new"
    return sorted(folder.iterdir()) if folder.exists() else []


@pytest.fixture
def next_hop() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


@pytest.fixture
def database(tmp_path: Path) -> db.Database:
    shared = db.sqlite(str(tmp_path / "shared.db"))
    shared.configure(str(tmp_path))
    return shared


PARSER = [parsemail(attach_name([("Policy.Exe", r"\.exe$")]))]
NESTED = nested_multipart(2000)


def test_a_message_crashing_the_parser_is_quarantined_after_max_attempts_while_other_mail_flows(
    tmp_path: Path, next_hop: RecordingServer, database: db.Database
) -> None:
    service = smtpd(PARSER, "127.0.0.1", 0, next_hop=("127.0.0.1", next_hop.port))
    with ServiceThread(service, settings(tmp_path, database)) as thread:
        for attempt in (1, 2):
            assert send(thread.port, NESTED) == 451, f"attempt {attempt}"
            assert send(thread.port, message(f"fine {attempt}")) == 250  # other mail flows in between
            assert counts(database) == [attempt]
        assert quarantined(tmp_path) == []
        assert send(thread.port, NESTED) == 250  # attempt 3 = max_attempts: quarantined
        stored = quarantined(tmp_path)
        assert len(stored) == 1
        assert b'boundary="b1999"' in stored[0].read_bytes()
        assert counts(database) == []  # forgotten once stored
    delivered = [m for m in next_hop.messages if m.sender not in ("", "<>")]
    assert [m.recipients for m in delivered] == [RECIPIENTS, RECIPIENTS]  # the two fine ones, never the poison
    notices = [m for m in next_hop.messages if m.sender in ("", "<>")]
    assert [m.recipients for m in notices] == [[f"postmaster@{HOSTNAME}"]]
    notice = parse(notices[0].data)
    assert notice["Auto-Submitted"] == "auto-generated"
    assert "unscannable" in notice["Subject"]
    assert f"unscannable/{stored[0].name}" in text_of(notices[0].data)


def test_the_admin_of_notify_gets_the_notice(tmp_path: Path, next_hop: RecordingServer, database: db.Database) -> None:
    from mailsift import notify

    hook = notify(admin="admin@example.test", next_hop=("127.0.0.1", next_hop.port))
    service = smtpd(PARSER, "127.0.0.1", 0, next_hop=("127.0.0.1", next_hop.port))
    with ServiceThread(service, settings(tmp_path, database, hooks=(hook,))) as thread:
        assert [send(thread.port, NESTED) for _ in range(3)] == [451, 451, 250]
    assert [m.recipients for m in next_hop.messages] == [["admin@example.test"]]


class ClamdThread:
    """A FakeClamd on a unix socket, in a loop of its own, whose behaviour the test changes."""

    def __init__(self, path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.fake = FakeClamd(path)
        self.stopped = False
        asyncio.run_coroutine_threadsafe(self.fake.start(), self.loop).result(10)

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            asyncio.run_coroutine_threadsafe(self.fake.stop(), self.loop).result(10)

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def fake_clamd(tmp_path: Path) -> Iterator[ClamdThread]:
    running = ClamdThread(tmp_path / "clamd.sock")
    yield running
    running.close()


def test_a_scanner_that_is_down_never_quarantines_anything(
    tmp_path: Path, next_hop: RecordingServer, database: db.Database, fake_clamd: ClamdThread
) -> None:
    service = smtpd(
        [clamd(str(fake_clamd.fake.path), timeout=5)], "127.0.0.1", 0, next_hop=("127.0.0.1", next_hop.port)
    )
    with ServiceThread(service, settings(tmp_path, database)) as thread:
        assert send(thread.port, message("fine")) == 250  # clamd answered other mail...
        fake_clamd.stop()  # ... then it stops
        for _ in range(8):
            assert send(thread.port, message("retried")) == 451
    assert counts(database) == []
    assert quarantined(tmp_path) == []
    assert len(next_hop.messages) == 1


def test_clamd_answering_error_for_one_message_while_answering_others_counts(
    tmp_path: Path, next_hop: RecordingServer, database: db.Database, fake_clamd: ClamdThread
) -> None:
    service = smtpd(
        [clamd(str(fake_clamd.fake.path), timeout=5)], "127.0.0.1", 0, next_hop=("127.0.0.1", next_hop.port)
    )
    with ServiceThread(service, settings(tmp_path, database)) as thread:
        fake_clamd.fake.behaviour = "error"
        assert send(thread.port, message("poison")) == 451  # clamd answered nothing else yet: not counted
        assert counts(database) == []
        codes = []
        for attempt in range(3):
            fake_clamd.fake.behaviour = "ok"
            assert send(thread.port, message(f"fine {attempt}")) == 250
            fake_clamd.fake.behaviour = "error"
            codes.append(send(thread.port, message("poison")))
        assert codes == [451, 451, 250]
    assert len(quarantined(tmp_path)) == 1


def test_a_content_rules_deliberate_4xx_never_counts(
    tmp_path: Path, next_hop: RecordingServer, database: db.Database
) -> None:
    from mailsift import regexp_scan
    from mailsift.message.result import Disposition, Result, SetDisposition
    from mailsift.scanners.base import Scanner, Target

    class Defer(Scanner):
        """Defers mail with ``later`` in it on purpose (as greylisting does)."""

        name = "defer"

        async def scan(self, target: Target) -> Result:
            if b"later" in target.data:
                return Result(1.0, "Later", self.name, "", (SetDisposition(Disposition.TEMPFAIL, "later"),))
            return Result(0.0, "", self.name)

    scanners = [regexp_scan([("none", r"^$never")]), Defer()]
    service = smtpd(scanners, "127.0.0.1", 0, next_hop=("127.0.0.1", next_hop.port))
    with ServiceThread(service, settings(tmp_path, database)) as thread:
        assert [send(thread.port, message("come back later")) for _ in range(6)] == [451] * 6
    assert counts(database) == []
    assert quarantined(tmp_path) == []
    assert next_hop.messages == []


def test_smtpd_and_the_milter_count_one_message_together(
    tmp_path: Path, next_hop: RecordingServer, database: db.Database
) -> None:
    """Two front ends (as two gateway nodes) on one database: the milter's retry is the same message."""
    hop = ("127.0.0.1", next_hop.port)
    front = smtpd(PARSER, "127.0.0.1", 0, next_hop=hop)
    back = milter(PARSER, "poison", "inet:0@127.0.0.1")
    by_smtpd = b"Received: from mx1.example.test by gw1; Mon, 1 Jan 2024 10:00:00 +0000\r\n" + NESTED
    by_milter = b"Received: from mx2.example.test by gw2; Mon, 1 Jan 2024 11:00:00 +0000\r\n" + NESTED
    envelope = Envelope(sender=SENDER, recipients=RECIPIENTS)
    assert message_key(Mail(envelope, by_smtpd)) == message_key(Mail(envelope, by_milter))
    other_state = tmp_path / "other"
    with (
        ServiceThread(front, settings(tmp_path, database)) as one,
        ServiceThread(
            back, Settings(state_dir=str(other_state), database=database, poison=poison(3), smtp_server=hop)
        ) as two,
    ):
        assert send(one.port, by_smtpd) == 451
        assert counts(database) == [1]
        client = MilterClient(two.port)
        try:
            assert client.message("Q1", SENDER, RECIPIENTS, by_milter)[0] == b"y"  # a 451 reply
            assert counts(database) == [2]
            assert client.message("Q2", SENDER, RECIPIENTS, by_milter)[0] == b"d"  # stored in mailsift's quarantine
        finally:
            client.close()
    folder = other_state / "quarantine" / "unscannable" / "new"
    assert len(list(folder.iterdir())) == 1
    assert [m.recipients for m in next_hop.messages] == [[f"postmaster@{two.settings.hostname}"]]  # via SMTP_SERVER
