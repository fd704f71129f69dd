"""Shared fixtures of the unit tests: EICAR, mail builders and tiny test scanners.

The test scanners are handed out by factory fixtures (``counting``, ``failing``,
``slow``) so that every test module uses the same few doubles.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mailsift.errors import ScannerError
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Result
from mailsift.scanners.base import MailTarget, Scanner, Target
from tests.helpers.postgres import database, postgres  # noqa: F401 - shared fixtures: SQLite and PostgreSQL

# Built from pieces so that this file is not itself flagged by a virus scanner.
from tests.helpers.samples import EICAR


class Counting(Scanner):
    """Returns a fixed result (or delegates to ``inner``) and counts its calls."""

    name = "counting"

    def __init__(self, level: float = 0.0, virname: str = "", inner: Scanner | None = None) -> None:
        self.level, self.virname, self.inner = level, virname, inner
        self.calls = 0
        self.seen: list[bytes] = []

    async def scan(self, target: Target) -> Result:
        self.calls += 1
        self.seen.append(target.data)
        if self.inner is not None:
            return await self.inner.scan(target)
        return Result(self.level, self.virname, self.name)


class Failing(Scanner):
    """Raises the given exception (a ScannerError by default) and counts its calls."""

    name = "failing"

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error if error is not None else ScannerError("failing: daemon down")
        self.calls = 0

    async def scan(self, target: Target) -> Result:
        self.calls += 1
        raise self.error


class Slow(Scanner):
    """Sleeps ``seconds`` before answering a fixed result."""

    name = "slow"

    def __init__(self, seconds: float, level: float = 1.0, virname: str = "Slow") -> None:
        self.seconds, self.level, self.virname = seconds, level, virname

    async def scan(self, target: Target) -> Result:
        await asyncio.sleep(self.seconds)
        return Result(self.level, self.virname, self.name)


@pytest.fixture
def eicar() -> bytes:
    return EICAR


@pytest.fixture
def counting() -> Callable[..., Counting]:
    return Counting


@pytest.fixture
def failing() -> Callable[..., Failing]:
    return Failing


@pytest.fixture
def slow() -> Callable[..., Slow]:
    return Slow


@pytest.fixture
def make_mail() -> Iterator[Callable[..., Mail]]:
    """Build a :class:`Mail` from bytes or text (LF turned into CRLF for text); closed afterwards."""
    made: list[Mail] = []

    def build(data: bytes | str, *, sender: str = "sender@example.net", **kwargs: Any) -> Mail:
        if isinstance(data, str):
            data = data.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
        envelope = Envelope(sender=sender, recipients=["rcpt@example.org"])
        mail = Mail(envelope, data, **kwargs)
        made.append(mail)
        return mail

    yield build
    for mail in made:
        mail.close()


@pytest.fixture
def run() -> Callable[[Scanner, Mail], Any]:
    """``await run(scanner, mail)``: scan the whole message."""

    async def scan(scanner: Scanner, mail: Mail) -> Result:
        return await scanner.scan(MailTarget(mail))

    return scan
