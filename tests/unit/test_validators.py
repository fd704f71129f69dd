"""``mailsift.validators``: the config value checks every package shares."""

from __future__ import annotations

from typing import Any

import pytest

from mailsift import validators
from mailsift.errors import ConfigError


@pytest.mark.parametrize("bad", [True, False, "1", None, float("nan"), float("inf"), 0, -1, 0.0])
def test_positive_refuses_bools_strings_non_finite_and_non_positive(bad: Any) -> None:
    with pytest.raises(ConfigError, match=r"^x: t must be a positive number of seconds, got "):
        validators.positive(bad, "x: t", unit="number of seconds")


def test_positive_accepts_and_converts() -> None:
    assert validators.positive(2, "x") == 2.0
    assert isinstance(validators.positive(2, "x"), float)
    assert validators.positive(0.5, "x") == 0.5


@pytest.mark.parametrize("bad", [True, 1.0, "3", 0, -2])
def test_positive_int(bad: Any) -> None:
    with pytest.raises(ConfigError, match="x must be a positive integer"):
        validators.positive_int(bad, "x")
    assert validators.positive_int(3, "x") == 3


def test_number_and_integer_bounds() -> None:
    assert validators.number(0, "m", minimum=0, unit="a number of seconds") == 0.0
    with pytest.raises(ConfigError, match=r"m must be a number of seconds >= 1, got 0"):
        validators.number(0, "m", minimum=1, unit="a number of seconds")
    with pytest.raises(ConfigError, match="m must be a number"):
        validators.number(float("nan"), "m")
    with pytest.raises(ConfigError, match="p must be an integer 0-32, got 33"):
        validators.integer(33, "p", minimum=0, maximum=32)
    with pytest.raises(ConfigError, match="p must be an integer 0-32, got True"):
        validators.integer(True, "p", minimum=0, maximum=32)
    assert validators.optional_number(None, "o") is None
    with pytest.raises(ConfigError, match="o must be a number or None"):
        validators.optional_number("1", "o")


def test_non_negative_flag_choice() -> None:
    assert validators.non_negative_int(0, "d") == 0
    with pytest.raises(ConfigError, match="d must not be negative"):
        validators.non_negative_int(-1, "d")
    with pytest.raises(ConfigError, match="d must be a whole number"):
        validators.non_negative_int(1.5, "d")
    with pytest.raises(ConfigError, match="r must be a number"):
        validators.non_negative("high", "r")
    assert validators.flag(False, "f") is False
    with pytest.raises(ConfigError, match="f must be True or False, got 1"):
        validators.flag(1, "f")
    assert validators.choice("a", "c", ("a", "b")) == "a"
    with pytest.raises(ConfigError, match="c must be one of 'a', 'b', got 'z'"):
        validators.choice("z", "c", ("a", "b"))
