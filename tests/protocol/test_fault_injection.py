"""Fault injection on every front end that answers per message: never a 5xx, never a silent hang-up.

One parametrized test: a fault (``OSError`` ENOSPC, ``OSError`` EIO,
``RecursionError``, an unexpected ``RuntimeError``) × the point where it is
raised (spooling, parsing, scanning, quarantining, indexing, delivery) × the
front end (smtpd, lmtpd, milter, sgfilterd).  Each case sends a real message
over a real socket and expects the protocol's temporary failure (a 4xx reply,
the milter's 4xx reply code or TEMPFAIL, sgfilter's 451) and a log line that
names the fault.  The fault is injected with ``monkeypatch`` at the function
the point calls; the spool threshold is small, so every message is spooled.
"""

from __future__ import annotations

import errno
import logging
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mailsift import quarantine, regexp_scan
from mailsift.delivery import maildir
from mailsift.delivery.smtpclient import SMTPConnection
from mailsift.message import mail as mail_module
from mailsift.message.result import Result
from mailsift.mime.tree import TreeBuilder
from mailsift.scanners.base import Scanner, Target
from mailsift.services import milter_protocol as mp
from mailsift.services.lmtpd import lmtpd
from mailsift.services.milter import KeptByMTA, milter
from mailsift.services.sgfilterd import KeepMessage, sgfilterd
from mailsift.services.smtpd import SMTPServer, smtpd
from mailsift.settings import Settings
from mailsift.storage import db
from mailsift.storage.quarantine import store as quarantine_store
from mailsift.testing import RecordingServer, ServiceThread
from tests.helpers.frontends import via_lmtpd, via_milter, via_sgfilterd, via_smtpd

MARK = "(injected)"

FAULTS: dict[str, Callable[[], BaseException]] = {
    "ENOSPC": lambda: OSError(errno.ENOSPC, f"No space left on device {MARK}"),
    "EIO": lambda: OSError(errno.EIO, f"Input/output error {MARK}"),
    "RecursionError": lambda: RecursionError(f"maximum recursion depth exceeded {MARK}"),
    "RuntimeError": lambda: RuntimeError(f"unexpected {MARK}"),
}
POINTS = ("spooling", "parsing", "scanning", "quarantining", "indexing", "delivery")
FRONT_ENDS = ("smtpd", "lmtpd", "milter", "sgfilterd")
HOLD_ME = "QUARANTINE-ME"
"""A body with this is quarantined (the quarantining and indexing points need a copy to store)."""


class ReadsParts(Scanner):
    """Reads the parsed MIME parts (so the message is parsed), then gives a clean verdict."""

    name = "reads_parts"

    async def scan(self, target: Target) -> Result:
        return Result(0.0, "", self.name, f"{len(target.mail.parts)} parts")


def scanners() -> list[Scanner]:
    return [ReadsParts(), quarantine("virus", regexp_scan([("Held", HOLD_ME)]))]


def inject(monkeypatch: pytest.MonkeyPatch, point: str, front_end: str, fault: BaseException) -> None:
    """Make the function ``point`` calls raise ``fault``."""

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise fault

    async def aboom(*args: Any, **kwargs: Any) -> Any:
        raise fault

    if point == "spooling":  # the spool file of a message over the spool threshold
        monkeypatch.setattr(mail_module, "tempfile", SimpleNamespace(mkstemp=boom))
    elif point == "parsing":  # the MIME parser, on the first scanner's read of the parts
        monkeypatch.setattr(TreeBuilder, "build", boom)
    elif point == "scanning":
        monkeypatch.setattr(ReadsParts, "scan", aboom)
    elif point == "quarantining":  # the fsynced copy in the quarantine store
        monkeypatch.setattr(maildir, "store", boom)
    elif point == "indexing":  # the quarantine index row
        monkeypatch.setattr(quarantine_store, "add_entry", boom)
    elif point == "delivery":  # the next hop: the SMTP client's content, or the keeper of the front end
        if front_end in ("smtpd", "lmtpd"):
            monkeypatch.setattr(SMTPConnection, "data", aboom)
        elif front_end == "milter":
            monkeypatch.setattr(KeptByMTA, "deliver", aboom)
        else:
            monkeypatch.setattr(KeepMessage, "deliver", aboom)
    else:  # pragma: no cover - a point without an injection
        raise AssertionError(point)


def body(point: str) -> str:
    lines = [f"line {n} of a message long enough to be spooled" for n in range(20)]
    if point in ("quarantining", "indexing"):
        lines.append(HOLD_ME)
    return "\r\n".join(lines) + "\r\n"


def message(point: str) -> bytes:
    headers = "From: alice@example.test\r\nTo: bob@example.test\r\nSubject: fault\r\nMessage-ID: <f@example.test>\r\n"
    return (headers + "\r\n" + body(point)).encode()


# --------------------------------------------------------------------------- the test


@pytest.fixture
def next_hop() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


def start(front_end: str, tmp_path: Path, next_hop: RecordingServer) -> ServiceThread:
    settings = Settings(
        state_dir=str(tmp_path / "state"), spool_threshold=64, database=db.sqlite(str(tmp_path / "mailsift.db"))
    )
    settings.database.configure(settings.state_dir)
    service: Any
    if front_end == "smtpd":
        service = smtpd(scanners(), "127.0.0.1", 0, next_hop=("127.0.0.1", next_hop.port))
    elif front_end == "lmtpd":
        service = lmtpd(scanners(), "127.0.0.1", 0, next_hop=("127.0.0.1", next_hop.port))
    elif front_end == "milter":
        service = milter(scanners(), "fault", "inet:0@127.0.0.1", timeout=20)
    else:
        service = sgfilterd(scanners(), "127.0.0.1", 0)
    return ServiceThread(service, settings).start()


def mentions(record: logging.LogRecord, fault: BaseException) -> bool:
    """Whether a log record names the fault: in its message, or in the traceback it carries."""
    if MARK in record.getMessage():
        return True
    if record.exc_info and record.exc_info[1] is not None:
        return MARK in "".join(traceback.format_exception(record.exc_info[1]))
    return False


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("fault_name", list(FAULTS))
def test_a_fault_anywhere_is_a_temporary_failure_with_a_log_line(
    fault_name: str,
    point: str,
    front_end: str,
    tmp_path: Path,
    next_hop: RecordingServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mailsift")
    thread = start(front_end, tmp_path, next_hop)
    try:
        fault = FAULTS[fault_name]()
        inject(monkeypatch, point, front_end, fault)
        data = message(point)
        if front_end == "smtpd":
            *answers, quit_reply = via_smtpd(thread.port, data, 20)
            assert quit_reply.startswith("221 "), "the connection must stay usable"
            assert len(answers) == 1, answers
            assert answers[0].startswith("4"), answers
        elif front_end == "lmtpd":
            *answers, quit_reply = via_lmtpd(thread.port, data, 20)
            assert quit_reply.startswith("221 "), "the connection must stay usable"
            assert len(answers) == 2, f"one reply per recipient: {answers}"
            assert all(answer.startswith("4") for answer in answers), answers
        elif front_end == "milter":
            command, answer = via_milter(
                thread.port,
                [(b"From", b"alice@example.test"), (b"Subject", b"fault")],
                body(point).encode(),
                20,
                b"FAULT1",
            )
            assert command == mp.SMFIR_TEMPFAIL or (command == mp.SMFIR_REPLYCODE and answer[:1] == b"4"), (
                command,
                answer,
            )
        else:
            status = via_sgfilterd(thread.port, data, 20)
            assert status.startswith("451 "), status
    finally:
        monkeypatch.undo()
        thread.stop()
    assert next_hop.messages == [], "nothing may be delivered"
    logged = [r for r in caplog.records if r.name.startswith("mailsift") and mentions(r, fault)]
    assert logged, f"no log line names the fault: {[r.getMessage() for r in caplog.records]}"


@pytest.mark.parametrize("front_end", ["smtpd", "lmtpd"])
def test_an_error_outside_the_message_handler_is_451_not_aiosmtpds_500(
    front_end: str,
    tmp_path: Path,
    next_hop: RecordingServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiosmtpd answers an exception in a command with ``500 Error: ...``; mailsift's handler says 451."""
    caplog.set_level(logging.INFO, logger="mailsift")
    fault = RuntimeError(f"unexpected {MARK}")

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise fault

    thread = start(front_end, tmp_path, next_hop)
    try:
        monkeypatch.setattr(SMTPServer, "envelope_of", boom)  # before the per-message handler's try
        send = via_smtpd if front_end == "smtpd" else via_lmtpd
        *answers, quit_reply = send(thread.port, message("delivery"))
    finally:
        monkeypatch.undo()
        thread.stop()
    assert quit_reply.startswith("221 ")
    assert len(answers) == (1 if front_end == "smtpd" else 2), f"one reply (LMTP: per recipient): {answers}"
    assert all(answer.startswith("451 ") for answer in answers), answers
    assert any(r.name.startswith("mailsift") and mentions(r, fault) for r in caplog.records)
