"""Issue 12 finding 10 (the terminal half): ``mailsift quarantine list/show`` print no escape sequences.

A hostile Subject (window title, colours, line erase, an 8-bit CSI) was printed
raw to the admin's terminal; ``mailsift track`` already replaced control
characters.  Its function (``printable``, now in mailsift.cli.common) is used by
``quarantine list``/``show`` (and ``lists show``, ``stats``, ``report --dry-run``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path

from click.testing import CliRunner

from mailsift import config as config_module
from mailsift.cli.quarantine import quarantine_group
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Result
from mailsift.storage.quarantine.store import QuarantineStore, file_id

HOSTILE = "Invoice \x1b]0;you have been pwned\x07\x1b[31mred\x1b[2K\x9b2J\x7f end"
TERMINAL_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
"""Anything a terminal acts on, line feeds aside (the table has its own)."""


def quarantined(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "mailsift.conf.py"
    path.write_text(f"from mailsift import *\nSTATE_DIR = {str(tmp_path / 'state')!r}\nDATABASE = db.sqlite()\n")
    settings = config_module.load(str(path)).settings
    subject = "=?utf-8?b?" + base64.b64encode(HOSTILE.encode()).decode() + "?="
    data = f"From: a@example.test\r\nSubject: {subject}\r\nX-Raw: \x1b[2J\x1b]0;title\x07\r\n\r\nbody\r\n".encode()
    mail = Mail(Envelope(sender="a@example.test", recipients=["bob@example.test"]), data)
    store = QuarantineStore(settings.quarantine_dir, settings.database, retry_window=0)
    stored = asyncio.run(store.put(mail, "virus", Result(1.0, "Test.Virus\x1b[5m", "regexp_scan")))
    assert settings.database is not None
    settings.database.dispose()
    return path, file_id(stored)


def test_quarantine_list_and_show_print_no_escape_sequences(tmp_path: Path) -> None:
    config, entry_id = quarantined(tmp_path)
    runner = CliRunner()
    listed = runner.invoke(quarantine_group, ["list", "-c", str(config)])
    assert listed.exit_code == 0, listed.output
    assert "Invoice ?]0;you have been pwned??[31mred?[2K?2J?" in listed.output  # cut at 50
    shown = runner.invoke(quarantine_group, ["show", "-c", str(config), entry_id])
    assert shown.exit_code == 0, shown.output
    assert "Subject:    Invoice ?]0;you have been pwned??[31mred?[2K?2J? end" in shown.output
    assert "X-Raw: \\x1b[2J\\x1b]0;title\\x07" in shown.output
    as_json = runner.invoke(quarantine_group, ["list", "--json", "-c", str(config)])
    assert json.loads(as_json.output)[0]["subject"] == HOSTILE  # the data unchanged, only its encoding escaped
    for output in (listed.output, shown.output, as_json.output):
        assert not TERMINAL_CONTROL.search(output), output
