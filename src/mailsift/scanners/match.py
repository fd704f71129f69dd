"""Interscanners that combine or guard other scanners.

``match_any``, ``match_all``, ``alternatives``, ``nothing``, ``recover``,
``time_limit`` and ``cache``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from typing import Any

from mailsift.errors import ScannerError, ScannerTimeout
from mailsift.message.result import Result
from mailsift.scanners.base import Interscanner, Scanner, Target, evaluate
from mailsift.validators import positive, positive_int


class match_any(Interscanner):
    """Detected when any wrapped scanner detects; evaluation stops at the first."""

    name = "match_any"

    async def scan(self, target: Target) -> Result:
        return await self.inner(target)


class match_all(Interscanner):
    """Detected only when every wrapped scanner detects.

    Stops at the first scanner that does not detect and returns its result;
    when all detect, the level is the lowest of them and the name the first's.
    """

    name = "match_all"

    async def scan(self, target: Target) -> Result:
        results: list[Result] = []
        for scanner in self.children:
            result = await evaluate(scanner, target)
            if not result.detected:
                return result
            results.append(result)
        level = min(r.level for r in results)
        actions = tuple(a for r in results for a in r.actions)
        detail = "; ".join(r.detail for r in results if r.detail)
        return Result(level, results[0].name, "+".join(r.scanner for r in results), detail, actions)


class alternatives(Interscanner):
    """Use the first scanner that works; fall over to the next one on an error."""

    name = "alternatives"

    async def scan(self, target: Target) -> Result:
        errors: list[str] = []
        for scanner in self.children:
            try:
                return await evaluate(scanner, target)
            except ScannerError as error:
                errors.append(error.message)
        raise ScannerError("all alternatives failed: " + "; ".join(errors))


class nothing(Scanner):
    """A scanner that finds nothing (level 0.0)."""

    name = "nothing"

    async def scan(self, target: Target) -> Result:
        return Result(0.0, "", self.name)


class recover(Interscanner):
    """On a scanner error, return ``level``/``virname`` instead of tempfailing.

    ``recover(clamd(...))`` lets mail through unscanned when clamd is down
    (fail-open); ``recover(clamd(...), level=1.0, virname='Scanner.Down')``
    turns the outage into a detection instead.
    """

    name = "recover"

    def __init__(self, *scanners: Any, level: float = 0.0, virname: str = "") -> None:
        super().__init__(*scanners)
        self.level, self.virname = float(level), virname

    def describe(self) -> str:
        return f"recover(level={self.level}, virname={self.virname!r})"

    async def scan(self, target: Target) -> Result:
        try:
            return await self.inner(target)
        except ScannerError as error:
            return Result(self.level, self.virname, self.name, f"recovered from: {error.message}")


class time_limit(Interscanner):
    """Fail (tempfail, unless caught) when the wrapped scanners take over ``seconds``."""

    name = "time_limit"

    def __init__(self, seconds: float, *scanners: Any) -> None:
        self.seconds = positive(seconds, "time_limit: seconds")
        super().__init__(*scanners)

    def describe(self) -> str:
        return f"time_limit({self.seconds:g})"

    async def scan(self, target: Target) -> Result:
        try:
            return await asyncio.wait_for(self.inner(target), self.seconds)
        except TimeoutError:
            raise ScannerTimeout(f"time_limit: scan took over {self.seconds:g} s") from None


class cache(Interscanner):
    """Remember results by a hash of the scanned bytes (LRU, ``size`` entries).

    The key is the content only: do not wrap scanners whose verdict depends on
    the envelope (``sender_regexp``).  Errors are never cached.
    """

    name = "cache"

    def __init__(self, *scanners: Any, size: int = 4096) -> None:
        self.size = positive_int(size, "cache: size")
        super().__init__(*scanners)
        self._entries: OrderedDict[bytes, Result] = OrderedDict()
        self.hits = 0

    def describe(self) -> str:
        return f"cache(size={self.size})"

    async def scan(self, target: Target) -> Result:
        key = hashlib.sha256(target.data).digest()
        cached = self._entries.get(key)
        if cached is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return cached
        result = await self.inner(target)
        self._entries[key] = result
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return result
