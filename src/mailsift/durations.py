"""Durations as written on command lines and in configs: ``90``, ``30m``, ``12h``, ``7d``, ``2w``."""

from __future__ import annotations

import re

from mailsift.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def seconds(text: str, *, bare: bool = True) -> float | None:
    """``text`` in seconds, or None if it is not a duration; a bare number needs ``bare``."""
    found = _DURATION.match(text)
    if found is None or (not found.group(2) and not bare):
        return None
    return float(found.group(1)) * _UNITS[found.group(2).lower()]


def parse_duration(text: str) -> float:
    """A positive duration in seconds (``3600``, ``30m``, ``12h``, ``7d``, ``2w``); ConfigError otherwise."""
    value = seconds(text)
    if value is None or value <= 0:
        raise ConfigError(f"bad duration {text!r}: e.g. 3600, 30m, 12h, 7d, 2w")
    return value
