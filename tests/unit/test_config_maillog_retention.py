"""MAILLOG_RETENTION: how long ``mailsift stats prune`` keeps the per-message log."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailsift import config
from mailsift.errors import ConfigError
from mailsift.settings import Settings

DAY = 86400.0


def load(tmp_path: Path, line: str) -> config.Config:
    path = tmp_path / "mailsift.conf.py"
    state = str(tmp_path / "state")
    head = f"from mailsift import *\nSTATE_DIR = {state!r}\nSMTP_SERVER = ('127.0.0.1', 10025)\n"
    path.write_text(f"{head}{line}\n", encoding="utf-8")
    return config.load(str(path))


def test_unset_it_keeps_90_days(tmp_path: Path) -> None:
    assert load(tmp_path, "").settings.maillog_retention == 90 * DAY
    assert Settings(state_dir="/x").maillog_retention == 90 * DAY


@pytest.mark.parametrize(
    ("value", "expected"), [("'30d'", 30 * DAY), ("'2w'", 14 * DAY), ("3600", 3600.0), ("None", None)]
)
def test_a_duration_seconds_or_none(tmp_path: Path, value: str, expected: float | None) -> None:
    assert load(tmp_path, f"MAILLOG_RETENTION = {value}").settings.maillog_retention == expected


@pytest.mark.parametrize("value", ["0", "-1", "True", "'soon'", "'0d'", "float('nan')", "[90]"])
def test_anything_else_is_refused_naming_its_line(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f"MAILLOG_RETENTION = {value}")
    assert "MAILLOG_RETENTION" in caught.value.message
    assert caught.value.lineno == 4
