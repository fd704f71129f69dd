"""``mailsift scan --json`` shows what the actions of SAGATOR's §4 would do, from a config file that
uses them by their names (``from mailsift import *``)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from mailsift.cli.main import main
from tests.helpers.sanitize import mixed

CONFIG = """from mailsift import *
STATE_DIR = {state!r}
VIRUS = regexp_scan([('Eicar-Test-Signature', r'EICAR-STANDARD-ANTIVIRUS-TEST-FILE')])
SCANNERS = [
    remove_headers('X-Spam-'),
    modify_header('X-Virus-Found', '%V', deliver_to('virus@example.test', sanitize(VIRUS), copy=True)),
]
"""


def test_scan_reports_removed_modified_recipients_and_sanitized_parts(tmp_path: Path) -> None:
    config = tmp_path / "config.py"
    config.write_text(CONFIG.format(state=str(tmp_path / "state")), encoding="utf-8")
    message = tmp_path / "virus.eml"
    message.write_bytes(mixed())
    runner = CliRunner(catch_exceptions=False)
    result = runner.invoke(main, ["scan", "--json", "-c", str(config), str(message)])
    assert result.exit_code == 1  # a detection, delivered sanitized
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["action"] == "deliver"
    assert record["remove_headers"] == ["X-Spam-"]
    assert record["modify_headers"] == ["X-Virus-Found: Eicar-Test-Signature"]
    assert record["deliver_to"] == {"redirect": "", "copies": ["virus@example.test"]}
    assert record["sanitized"] == ["part 2 (invoice.com): Eicar-Test-Signature"]
    check = runner.invoke(main, ["check-config", "-c", str(config)])
    assert check.exit_code == 0, check.output
    assert "deliver_to('virus@example.test', copy=True)" in check.output
    assert "sanitize" in check.output
