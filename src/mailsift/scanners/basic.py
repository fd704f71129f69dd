"""Real scanners that need nothing but the message: constants, strings, patterns, sizes.

``string_scan`` and ``regexp_scan`` take a list of ``(name, pattern)`` pairs,
as in ``regexp_scan([('EICAR-Test', r'EICAR-STANDARD-ANTIVIRUS-TEST-FILE')])``.
SAGATOR's longer form ``['Name', pattern1, pattern2, ...]`` is accepted too:
the name is returned only when *every* pattern matches.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from mailsift.errors import ConfigError
from mailsift.message.result import Result
from mailsift.scanners import work
from mailsift.scanners.base import Scanner, Target
from mailsift.validators import non_negative_int, number

_THREAD_THRESHOLD = 512 * 1024
"""Searches over more bytes than this run in a thread, so one big message does not
hold up every other connection of the worker for the whole search."""


def _level(level: Any, what: str) -> float:
    return number(level, f"{what}: level")


class const(Scanner):
    """Always return the same level and name: ``const(1.0, 'Blocked')``."""

    name = "const"

    def __init__(self, level: float = 0.0, virname: str = "") -> None:
        self.level = _level(level, "const")
        self.virname = str(virname)

    def describe(self) -> str:
        return f"const({self.level}, {self.virname!r})"

    async def scan(self, target: Target) -> Result:
        return Result(self.level, self.virname, self.name)


def _pairs(rules: Any, what: str) -> list[tuple[str, list[Any]]]:
    if isinstance(rules, dict):
        rules = list(rules.items())
    if not isinstance(rules, list | tuple) or not rules:
        raise ConfigError(f"{what}: expected a non-empty list of (name, pattern) pairs, got {rules!r}")
    parsed: list[tuple[str, list[Any]]] = []
    for rule in rules:
        if not isinstance(rule, list | tuple) or len(rule) < 2 or not isinstance(rule[0], str):
            raise ConfigError(f"{what}: each rule must be (name, pattern, ...), got {rule!r}")
        parsed.append((rule[0], list(rule[1:])))
    return parsed


def _as_bytes(pattern: Any, what: str) -> bytes:
    if isinstance(pattern, bytes):
        return pattern
    if isinstance(pattern, str):
        return pattern.encode("utf-8")
    raise ConfigError(f"{what}: pattern must be str or bytes, got {pattern!r}")


class _PatternScanner(Scanner):
    """Shared loop of ``string_scan`` and ``regexp_scan``: first rule that matches wins."""

    rules: list[tuple[str, list[Any]]]

    def describe(self) -> str:
        return f"{self.name}([{', '.join(name for name, _ in self.rules)}])"

    def _matches(self, pattern: Any, data: bytes) -> bool:
        raise NotImplementedError

    def _search(self, data: bytes) -> str | None:
        for name, patterns in self.rules:
            if all(self._matches(p, data) for p in patterns):
                return name
        return None

    async def scan(self, target: Target) -> Result:
        data = target.data
        if len(data) > _THREAD_THRESHOLD:
            found = await work.in_thread(self._search, data)
        else:
            found = self._search(data)
        if found is None:
            return Result(0.0, "", self.name)
        return Result(1.0, found, self.name, target.path and f"in part {target.path}")


class string_scan(_PatternScanner):
    """Detect when the scanned bytes contain a fixed string."""

    name = "string_scan"

    def __init__(self, rules: Sequence[Any]) -> None:
        self.rules = [(n, [_as_bytes(p, self.name) for p in ps]) for n, ps in _pairs(rules, self.name)]

    def _matches(self, pattern: Any, data: bytes) -> bool:
        return bool(pattern in data)


class regexp_scan(_PatternScanner):
    """Detect when a regular expression matches the scanned bytes."""

    name = "regexp_scan"

    def __init__(self, rules: Sequence[Any], flags: int = 0) -> None:
        self.rules = []
        for name, patterns in _pairs(rules, self.name):
            compiled = []
            for pattern in patterns:
                try:
                    compiled.append(re.compile(_as_bytes(pattern, self.name), flags))
                except re.error as error:
                    raise ConfigError(f"regexp_scan: bad pattern for {name!r}: {error}") from None
            self.rules.append((name, compiled))

    def _matches(self, pattern: Any, data: bytes) -> bool:
        return pattern.search(data) is not None


def compile_text(pattern: str, what: str, flags: int = 0) -> re.Pattern[str]:
    """Compile a user's regular expression, or fail with a config error naming it."""
    try:
        return re.compile(pattern, flags)
    except (re.error, TypeError) as error:
        raise ConfigError(f"{what}: bad regular expression {pattern!r}: {error}") from None


class sender_regexp(Scanner):
    """Detect by the envelope sender: ``sender_regexp([('Blocked', r'@spam\\.example$')])``."""

    name = "sender_regexp"

    def __init__(self, rules: Sequence[Any], flags: int = re.IGNORECASE) -> None:
        self.rules = [
            (name, [compile_text(p, self.name, flags) for p in patterns]) for name, patterns in _pairs(rules, self.name)
        ]

    def describe(self) -> str:
        return f"sender_regexp([{', '.join(name for name, _ in self.rules)}])"

    async def scan(self, target: Target) -> Result:
        sender = target.mail.envelope.sender
        for name, patterns in self.rules:
            if all(p.search(sender) for p in patterns):
                return Result(1.0, name, self.name, f"sender <{sender}>")
        return Result(0.0, "", self.name)


class max_file_size(Scanner):
    """Detect a part (or, at top level, a message) larger than ``size`` bytes."""

    name = "max_file_size"

    def __init__(self, size: int, virname: str = "Policy.FileTooBig") -> None:
        self.size, self.virname = non_negative_int(size, "max_file_size: size"), virname

    def describe(self) -> str:
        return f"max_file_size({self.size})"

    async def scan(self, target: Target) -> Result:
        if target.size > self.size:
            where = f" (part {target.path})" if target.path else ""
            return Result(1.0, self.virname, self.name, f"{target.size} > {self.size} bytes{where}")
        return Result(0.0, "", self.name)
