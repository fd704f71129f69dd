"""The scanner protocol, the operator expressions, and the shared evaluation loop.

A scanner is a small object with ``async scan(target) -> Result``.  The
``target`` is the whole message (:class:`MailTarget`) or, under ``parsemail``,
one decoded part (:class:`PartTarget`); both expose ``data``, ``names`` and
``content_type`` so that a content scanner works at either level.

Scanners combine with Python's operators exactly as SAGATOR's README §4 says;
the arithmetic lives in :func:`mailsift.message.result.combine`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import Any

from mailsift.errors import ConfigError, MailsiftError, ScannerError
from mailsift.message.mail import Mail
from mailsift.message.result import CLEAN, Result, combine
from mailsift.mime.tree import Part
from mailsift.scanners import work

# --------------------------------------------------------------------------- targets


class MailTarget:
    """The whole message as a scan target."""

    part: Part | None = None

    def __init__(self, mail: Mail) -> None:
        self.mail = mail

    @property
    def data(self) -> bytes:
        return self.mail.raw

    @property
    def size(self) -> int:
        return self.mail.size

    @property
    def names(self) -> tuple[str, ...]:
        return ()

    @property
    def content_type(self) -> str:
        return "message/rfc822"

    @property
    def path(self) -> str:
        return ""


class PartTarget(MailTarget):
    """One decoded part of a message as a scan target."""

    def __init__(self, mail: Mail, part: Part) -> None:
        super().__init__(mail)
        self.part = part

    @property
    def data(self) -> bytes:
        assert self.part is not None
        return self.part.data

    @property
    def size(self) -> int:
        assert self.part is not None
        return self.part.size

    @property
    def names(self) -> tuple[str, ...]:
        assert self.part is not None
        return self.part.filenames

    @property
    def content_type(self) -> str:
        assert self.part is not None
        return self.part.content_type

    @property
    def path(self) -> str:
        assert self.part is not None
        return self.part.path


class DataTarget(MailTarget):
    """Bytes found inside the message as a scan target: an archive member, a
    decoded view, a TNEF attachment...  It stays "inside" its parent's part (so
    ``parsemail`` under ``decompress`` does not split the mail again), and
    ``depth`` counts the containers it came out of.
    """

    def __init__(
        self,
        parent: MailTarget,
        data: bytes,
        *,
        names: tuple[str, ...] = (),
        content_type: str = "application/octet-stream",
        path: str,
    ) -> None:
        super().__init__(parent.mail)
        self.part = parent.part
        self.parent = parent
        self._data = data
        self._names = names
        self._content_type = content_type
        self._path = path
        self.depth: int = getattr(parent, "depth", 0) + 1

    @property
    def data(self) -> bytes:
        return self._data

    @property
    def size(self) -> int:
        return len(self._data)

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    @property
    def content_type(self) -> str:
        return self._content_type

    @property
    def path(self) -> str:
        return self._path


Target = MailTarget


# --------------------------------------------------------------------------- scanner


class Scanner:
    """Base of every scanner and interscanner.

    Subclasses set ``name`` (the config-file name, e.g. ``regexp_scan``),
    implement :meth:`scan`, and list their wrapped scanners in ``children``.
    """

    name = "scanner"
    children: Sequence[Scanner] = ()

    async def scan(self, target: Target) -> Result:
        raise NotImplementedError

    async def aclose(self, seen: set[int] | None = None) -> None:
        """Release what this scanner and those it wraps hold (pooled connections).

        Called when a worker stops or reloads, and after ``mailsift scan``.
        Scanners with resources override :meth:`close_resources`; ``seen``
        keeps a scanner shared by several expressions from being closed twice.
        """
        seen = set() if seen is None else seen
        if id(self) in seen:
            return
        seen.add(id(self))
        for child in self.children:
            await child.aclose(seen)
        await self.close_resources()

    async def close_resources(self) -> None:
        """This scanner's own resources (none by default)."""

    def describe(self) -> str:
        """One line for ``check-config``'s tree: the name and its own arguments."""
        return self.name

    def tree(self, indent: int = 0) -> list[str]:
        lines = ["  " * indent + self.describe()]
        for child in self.children:
            lines.extend(child.tree(indent + 1))
        return lines

    # SAGATOR's operator algebra (README §4).
    def _op(self, op: str, other: object) -> Any:
        if not isinstance(other, Scanner):
            return NotImplemented
        return Operation(op, self, other)

    def __add__(self, other: object) -> Any:
        return self._op("+", other)

    def __sub__(self, other: object) -> Any:
        return self._op("-", other)

    def __mul__(self, other: object) -> Any:
        return self._op("*", other)

    def __truediv__(self, other: object) -> Any:
        return self._op("/", other)

    def __or__(self, other: object) -> Any:
        return self._op("|", other)

    def __and__(self, other: object) -> Any:
        return self._op("&", other)

    def __lt__(self, other: object) -> Any:
        return self._op("<", other)

    def __gt__(self, other: object) -> Any:
        return self._op(">", other)

    def __le__(self, other: object) -> Any:
        return self._op("<=", other)

    def __ge__(self, other: object) -> Any:
        return self._op(">=", other)

    def __eq__(self, other: object) -> Any:
        return self._op("==", other)

    def __ne__(self, other: object) -> Any:
        return self._op("!=", other)

    __hash__ = object.__hash__


observer: ContextVar[Callable[[Scanner, ScannerError | None], None] | None] = ContextVar(
    "mailsift_scan_observer", default=None
)
"""Told of every scanner's outcome in :func:`evaluate` (``None``: it answered; else its error, told
first by the scanner that raised it): the mail path's scanner health (:mod:`mailsift.core.poison`)."""


async def evaluate(scanner: Scanner, target: Target) -> Result:
    """Run one scanner; any unexpected exception becomes a :class:`ScannerError`.

    This is the one place where a scanner's bug is turned into a tempfail
    instead of a crash: the mail is retried, never lost.  On the mail path the
    message's clock (:mod:`mailsift.scanners.work`) times it and lets the loop breathe.
    """
    clock = work.CLOCK.get()
    if clock is None:
        return await _evaluate(scanner, target)
    await clock.breathe()
    started, finished = clock.enter(), False
    try:
        result = await _evaluate(scanner, target)
        finished = True
        return result
    finally:
        clock.leave(scanner.name, started, target.part.path if target.part is not None else None, finished=finished)


async def _evaluate(scanner: Scanner, target: Target) -> Result:
    watch = observer.get()
    try:
        result = await scanner.scan(target)
    except asyncio.CancelledError:
        raise
    except Exception as error:
        failure = _as_scanner_error(scanner, error)
        if watch is not None:
            watch(scanner, failure)
        if failure is error:
            raise
        raise failure from error
    if watch is not None:
        watch(scanner, None)
    return result


def _as_scanner_error(scanner: Scanner, error: Exception) -> ScannerError:
    """The :class:`ScannerError` a scanner's exception becomes (a ScannerError stays itself)."""
    if isinstance(error, ScannerError):
        return error
    if isinstance(error, MailsiftError):
        return ScannerError(f"{scanner.name}: {error.message}")
    return ScannerError(f"{scanner.name}: {type(error).__name__}: {error}")


async def first_detection(scanners: Sequence[Scanner], target: Target) -> tuple[Result, list[Result]]:
    """Evaluate in order and stop at the first detection (SAGATOR §3.2).

    Returns the deciding result (the detection, else the highest clean level)
    and the trail of every result evaluated.
    """
    trail: list[Result] = []
    best = CLEAN
    for scanner in scanners:
        result = await evaluate(scanner, target)
        trail.append(result)
        if result.detected:
            return result, trail
        if result.level > best.level or not trail[:-1]:
            best = result
    return best, trail


class Operation(Scanner):
    """``left OP right`` for one of SAGATOR's operators."""

    name = "operation"

    def __init__(self, op: str, left: Scanner, right: Scanner) -> None:
        self.op, self.left, self.right = op, left, right
        self.children = (left, right)

    def describe(self) -> str:
        return f"({self.op})"

    async def _outcome(self, scanner: Scanner, target: Target) -> Result | ScannerError:
        try:
            return await evaluate(scanner, target)
        except ScannerError as error:
            return error

    async def scan(self, target: Target) -> Result:
        left = await self._outcome(self.left, target)
        if self.op == "|" and isinstance(left, Result):
            return left  # the right side is only a fallback
        right = await self._outcome(self.right, target)
        return combine(self.op, left, right)


# --------------------------------------------------------------------------- helpers


def as_scanners(items: Iterable[Any], what: str) -> tuple[Scanner, ...]:
    """Flatten ``scanner, [scanner, ...]`` arguments, as SAGATOR accepts both."""
    flat: list[Scanner] = []
    for item in items:
        if isinstance(item, Scanner):
            flat.append(item)
        elif isinstance(item, list | tuple):
            flat.extend(as_scanners(item, what))
        else:
            raise ConfigError(f"{what}: expected a scanner, got {item!r}")
    return tuple(flat)


class Interscanner(Scanner):
    """A scanner wrapping a list of scanners evaluated like ``SCANNERS``."""

    def __init__(self, *scanners: Any) -> None:
        self.children = as_scanners(scanners, self.name)
        if not self.children:
            raise ConfigError(f"{self.name}() needs at least one scanner")

    async def inner(self, target: Target) -> Result:
        result, _ = await first_detection(self.children, target)
        return result
