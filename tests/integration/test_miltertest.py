"""The milter against OpenDKIM's ``miltertest``: protocol cases a real Postfix will not produce on demand.

Each case is a function of ``milter/cases.lua`` run by ``/usr/bin/miltertest``
(a libmilter-compatible MTA simulator) against mailsift's ``milter`` service on
a real socket: negotiation (full and restricted), macros, abort, and every
answer (accept, reject with code and text, tempfail, discard, quarantine, add
header, change header, body replacement, too big).  mailsift's log lines show
what the path saw (envelope, queue id from ``{i}``, client).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsift import const, deliver, deliver_to, drop, modify_subject, quarantine, regexp_scan, reject, remove_headers
from mailsift.errors import ScannerUnavailable
from mailsift.message.mail import Mail
from mailsift.message.result import Result
from mailsift.scanners.actions import add_header
from mailsift.scanners.base import Scanner, Target
from mailsift.services.milter import KeptByMTA, milter
from mailsift.testing import ServiceThread
from tests.helpers.miltertest import needs_miltertest, run_case

pytestmark = needs_miltertest


class FailsOn(Scanner):
    """Fault injection: a scanner whose daemon is 'down' for mail containing ``word``."""

    name = "fails_on"

    def __init__(self, word: bytes) -> None:
        self.word = word

    async def scan(self, target: Target) -> Result:
        if self.word in target.data:
            raise ScannerUnavailable("test scanner down")
        return Result(0.0, "", self.name)


def scanners() -> list[Scanner]:
    return [
        remove_headers("X-Spam-"),
        deliver_to("quarantine@example.test", regexp_scan([("Redirect-Me", r"REDIRECT-ME")])),
        deliver_to("archive@example.test", regexp_scan([("Copy-Me", r"COPY-ME")]), copy=True),
        add_header("X-Mailsift-Checked", "%S", const(0.1, "checked")),
        FailsOn(b"TEMPFAIL-ME"),
        regexp_scan([("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")]),
        reject(regexp_scan([("Percent", r"PERCENT-ME")]), message="100% refused: %V"),
        deliver(modify_subject("[SPAM] ", regexp_scan([("SPAM", r"cheap pills")]))),
        drop(regexp_scan([("Drop-Me", r"DROP-ME")])),
        quarantine("virus", regexp_scan([("Quarantine-Me", r"QUARANTINE-ME")])),
    ]


class Rewriting(KeptByMTA):
    """Stands in for a future body-rewriting action: the final message's body differs from the MTA's."""

    async def deliver(self, mail: Mail, message: bytes) -> str:
        return await super().deliver(mail, message.replace(b"ORIGINAL-BODY", b"REPLACED-BODY"))


class RewritingMilter(milter):
    def recorder(self) -> KeptByMTA:
        return Rewriting()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    state = tmp_path_factory.mktemp("milter-plain")
    service = milter(scanners(), "mailsift", "inet:0@127.0.0.1", max_size=64 * 1024)
    with ServiceThread(service, state_dir=str(state)) as thread:
        yield thread


@pytest.fixture(scope="module")
def holding(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    state = tmp_path_factory.mktemp("milter-hold")
    service = RewritingMilter(scanners(), "mailsift-hold", "inet:0@127.0.0.1", quarantine_hold=True)
    with ServiceThread(service, state_dir=str(state)) as thread:
        yield thread


def miltertest(thread: ServiceThread, case: str) -> str:
    return run_case("cases.lua", thread, case)


@pytest.fixture
def mail_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="mailsift")
    return caplog


def lines(caplog: pytest.LogCaptureFixture, logger: str = "mailsift.mail") -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == logger]


@pytest.mark.parametrize(
    ("case", "logged"),
    [
        ("accept", "ACC0001 action=deliver reply=250 level=0.10 name=checked"),
        ("changeheader", "CHG0001 action=deliver reply=250 level=1.00 name=SPAM"),
        ("reject", "REJ0001 action=reject reply=550 level=1.00 name=EICAR-Test"),
        ("reject_text", "REJ0002 action=reject reply=550 level=1.00 name=Percent"),
        ("tempfail", "TMP0001 action=tempfail reply=451"),
        ("discard", "DRP0001 action=drop reply=250 level=1.00 name=Drop-Me"),
        ("quarantine", "QUA0001 action=quarantine reply=250 level=1.00 name=Quarantine-Me"),
    ],
)
def test_every_answer(plain: ServiceThread, mail_log: pytest.LogCaptureFixture, case: str, logged: str) -> None:
    miltertest(plain, case)
    [line] = lines(mail_log)
    assert line.startswith(logged), line


def test_quarantine_keeps_an_fsynced_copy_before_discarding(
    plain: ServiceThread, mail_log: pytest.LogCaptureFixture
) -> None:
    folder = Path(plain.settings.quarantine_dir) / "virus"
    before = set(folder.rglob("*")) if folder.exists() else set()
    miltertest(plain, "quarantine")
    stored = [path for path in set(folder.rglob("*")) - before if path.is_file()]
    assert any(b"QUARANTINE-ME" in path.read_bytes() and b"QUA0001" in path.read_bytes() for path in stored)


def test_quarantine_hold_asks_the_mta_to_hold(holding: ServiceThread, mail_log: pytest.LogCaptureFixture) -> None:
    miltertest(holding, "quarantine_hold")
    [line] = lines(mail_log)
    assert line.startswith("QUA0002 action=quarantine reply=250"), line


def test_body_replacement(holding: ServiceThread, mail_log: pytest.LogCaptureFixture) -> None:
    miltertest(holding, "body")
    assert lines(mail_log)[0].startswith("BOD0001 action=deliver reply=250")


def test_deliver_to_redirects_with_addrcpt_and_delrcpt(plain: ServiceThread) -> None:
    miltertest(plain, "redirect")


def test_deliver_to_copy_adds_a_recipient(plain: ServiceThread) -> None:
    miltertest(plain, "copy")


def test_remove_headers_deletes_forged_fields(plain: ServiceThread) -> None:
    miltertest(plain, "remove_headers")


def test_negotiation_requests_only_what_mailsift_uses(plain: ServiceThread) -> None:
    miltertest(plain, "negotiate")


def test_restricted_mta_gets_no_forbidden_edit(plain: ServiceThread, mail_log: pytest.LogCaptureFixture) -> None:
    miltertest(plain, "limited")
    warnings = lines(mail_log, "mailsift.milter")
    assert warnings == ["LIM0001: the MTA did not allow these edits: change b'Subject'"]


def test_macros_and_connection_reach_the_envelope(plain: ServiceThread, mail_log: pytest.LogCaptureFixture) -> None:
    miltertest(plain, "macros")
    [line] = lines(mail_log)
    assert line.startswith("MACRO0001 action=deliver"), line  # the queue id from the {i} macro
    assert "from=<alice@example.test> to=<carol@example.test>" in line
    assert "client=client.example.test[192.0.2.10]" in line


def test_abort_forgets_the_transaction(plain: ServiceThread, mail_log: pytest.LogCaptureFixture) -> None:
    miltertest(plain, "abort")
    [line] = lines(mail_log)  # the aborted EICAR message was never evaluated
    assert line.startswith("ABT0002 action=deliver"), line
    assert "to=<eve@example.test> " in line  # not the aborted transaction's recipient


def test_message_over_max_size_is_refused_without_scanning(
    plain: ServiceThread, mail_log: pytest.LogCaptureFixture
) -> None:
    miltertest(plain, "toobig")
    assert lines(mail_log) == []
    assert any("BIG0001: message over max_size" in message for message in lines(mail_log, "mailsift.milter"))
