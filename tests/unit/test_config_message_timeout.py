"""MESSAGE_TIMEOUT: the per-message deadline, checked like every number of a config."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailsift import config
from mailsift.errors import ConfigError
from mailsift.settings import Settings
from tests.helpers.configs import load_with


def load(tmp_path: Path, line: str) -> config.Config:
    return load_with(tmp_path, line)


def test_the_default_stays_under_postfix_s_600_s() -> None:
    assert Settings(state_dir="/x").message_timeout == 540.0
    assert Settings(state_dir="/x").message_timeout < 600


def test_unset_it_is_the_default(tmp_path: Path) -> None:
    assert load(tmp_path, "").settings.message_timeout == 540.0


@pytest.mark.parametrize(("value", "expected"), [("30", 30.0), ("2.5", 2.5), ("300", 300.0)])
def test_a_number_of_seconds_is_taken(tmp_path: Path, value: str, expected: float) -> None:
    assert load(tmp_path, f"MESSAGE_TIMEOUT = {value}").settings.message_timeout == expected


@pytest.mark.parametrize("value", ["0", "-1", "True", "'540'", "float('nan')", "float('inf')", "None"])
def test_anything_else_is_refused_naming_its_line(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f"MESSAGE_TIMEOUT = {value}")
    assert "MESSAGE_TIMEOUT must be a positive number of seconds" in caught.value.message
    assert caught.value.lineno == 4
