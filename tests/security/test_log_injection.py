"""Issue 12 findings 1 and 10 (the log half): no value from the outside forges a log line or a terminal escape.

XFORWARD ``IDENT``/``NAME`` with CR/LF (xtext ``+0D+0A``) from a trusted host
were written into the log line and stored in the database.  Now control
characters in XFORWARD values are escaped where they come in (the database
keeps ``\\r\\n`` as text), the per-message lines escape C0, DEL and C1 (a
Subject's ``ESC``/``CSI``), and mailsift's own log (stderr) escapes every
record's message in one place (:class:`mailsift.reporting.logline.EscapingFormatter`).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import smtplib
from pathlib import Path

from sqlalchemy import select

from mailsift import quarantine, regexp_scan
from mailsift.reporting.logline import EscapingFormatter, log_file, log_sql
from mailsift.services.smtpd import smtpd
from mailsift.settings import Settings
from mailsift.storage import db
from mailsift.storage.schema import maillog_table
from mailsift.testing import RecordingServer, ServiceThread
from mailsift.validators import escape_controls

RAW_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
"""What must never be in a log line (TAB aside: the text line's fields never have one either)."""
SUBJECT = "pay now \x1b]0;pwned\x07\x1b[2J\x9b31m"
XFORWARD = (
    "NAME=evil.example+0D+0AClear:RC:1(192.0.2.1):Q:forged ADDR=127.0.0.1 "
    "IDENT=Q1+0D+0Aforged+1B[2J HELO=helo+1B]0;title+07"
)


def encoded(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


def test_xforward_and_subject_controls_reach_neither_log_nor_database(tmp_path: Path) -> None:
    state = tmp_path / "state"
    database = db.sqlite(str(tmp_path / "mailsift.db"))
    hooks = (log_file(str(tmp_path / "text.log")), log_file(str(tmp_path / "json.log"), json=True), log_sql())
    settings = Settings(state_dir=str(state), database=database, hooks=hooks)
    database.configure(settings.state_dir)
    scanners = [quarantine("virus", regexp_scan([("Held", "QUARANTINE-ME")]))]
    message = f"From: a@example.test\r\nSubject: {encoded(SUBJECT)}\r\n\r\nhello\r\n".encode()
    with RecordingServer() as hop:
        service = smtpd(scanners, "127.0.0.1", 0, next_hop=("127.0.0.1", hop.port))
        with ServiceThread(service, settings) as thread, smtplib.SMTP("127.0.0.1", thread.port, timeout=30) as client:
            client.ehlo("client.test")
            assert client.docmd("XFORWARD", XFORWARD)[0] == 250  # loopback is a trusted XFORWARD host
            client.sendmail("alice@example.test", ["bob@example.test"], message)
            client.sendmail("alice@example.test", ["bob@example.test"], message + b"QUARANTINE-ME\r\n")
        assert len(hop.messages) == 1
    text_lines = (tmp_path / "text.log").read_text(encoding="utf-8").splitlines()
    json_lines = (tmp_path / "json.log").read_text(encoding="utf-8").splitlines()
    assert len(text_lines) == 2  # one line per message: nothing forged
    assert len(json_lines) == 2
    for line in text_lines + json_lines:
        assert not RAW_CONTROL.search(line), line
    record = json.loads(json_lines[0])
    assert record["client_name"] == "evil.example\\r\\nClear:RC:1(192.0.2.1):Q:forged"
    assert record["queue_id"] == "Q1\\r\\nforged\\x1b[2J"
    assert record["helo"] == "helo\\x1b]0;title\\x07"
    rows = database.call(lambda connection: connection.execute(select(maillog_table)).mappings().all())
    assert len(rows) == 2
    for row in rows:
        for column in ("client_name", "helo", "queue_id", "client_address"):
            assert not RAW_CONTROL.search(row[column]), (column, row[column])
    entries = database.call(lambda connection: connection.exec_driver_sql("SELECT * FROM quarantine").mappings().all())
    assert len(entries) == 1
    for column, value in entries[0].items():
        if isinstance(value, str) and column != "subject":  # the Subject is the message's: escaped when shown
            assert not RAW_CONTROL.search(value), (column, value)


def test_the_service_log_escapes_every_message() -> None:
    formatter = EscapingFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord(
        "mailsift.test", logging.WARNING, __file__, 1, "from=<%s> name=%s", ("a@x\r\nFAKE: line", "\x1b[2J\x9b"), None
    )
    assert formatter.format(record) == "WARNING from=<a@x\\r\\nFAKE: line> name=\\x1b[2J\\x9b"
    try:
        raise ValueError("boom")
    except ValueError as error:
        failed = logging.LogRecord("t", logging.ERROR, __file__, 1, "x\ny", None, (type(error), error, None))
    assert formatter.format(failed).splitlines()[0] == "ERROR x\\ny"  # the traceback keeps its own lines


def test_escape_controls() -> None:
    assert escape_controls("plain ü text") == "plain ü text"
    assert escape_controls("a\r\nb\tc\0d\x7fe\x85f\u2028g\u202eh\udc80") == (
        "a\\r\\nb\\tc\\x00d\\x7fe\\x85f\\u2028g\\u202eh\\udc80"
    )
