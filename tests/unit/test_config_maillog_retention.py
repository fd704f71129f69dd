"""MAILLOG_RETENTION: how long ``quarantine expire`` and ``stats prune`` keep the per-message log."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailsift.errors import ConfigError
from mailsift.settings import Settings
from tests.helpers.configs import load_with

DAY = 86400.0


def test_unset_it_keeps_90_days(tmp_path: Path) -> None:
    assert load_with(tmp_path, "").settings.maillog_retention == 90 * DAY
    assert Settings(state_dir="/x").maillog_retention == 90 * DAY


@pytest.mark.parametrize(
    ("value", "expected"), [("'30d'", 30 * DAY), ("'2w'", 14 * DAY), ("3600", 3600.0), ("None", None)]
)
def test_a_duration_seconds_or_none(tmp_path: Path, value: str, expected: float | None) -> None:
    assert load_with(tmp_path, f"MAILLOG_RETENTION = {value}").settings.maillog_retention == expected


@pytest.mark.parametrize("value", ["0", "-1", "True", "'soon'", "'0d'", "float('nan')", "[90]"])
def test_anything_else_is_refused_on_its_line(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_with(tmp_path, f"MAILLOG_RETENTION = {value}")
    assert (caught.value.message.split(":")[0].split()[0], caught.value.lineno) == ("MAILLOG_RETENTION", 4)
