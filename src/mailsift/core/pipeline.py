"""Evaluates ``SCANNERS`` over one message into a :class:`~mailsift.message.result.Decision`.

The whole evaluation order, on one screen::

    for scanner in SCANNERS:            # in order
        result = scanner.scan(mail)     # may raise ScannerError
        if result.detected: stop        # first detection decides (SAGATOR §3.2)
    -> Decision.from_results(trail)     # actions recorded on the way

A :class:`~mailsift.errors.ScannerError` that no ``alternatives``/``recover``
caught becomes a tempfail decision (451): the MTA keeps the mail and retries.
Evaluation is pure: nothing is sent or written here.
"""

from __future__ import annotations

from collections.abc import Sequence

from mailsift.errors import ScannerError
from mailsift.message.mail import Mail
from mailsift.message.result import Decision, Result
from mailsift.scanners.base import MailTarget, Scanner, evaluate


class Pipeline:
    """The configured scanner expressions, evaluated in order."""

    def __init__(self, scanners: Sequence[Scanner]) -> None:
        self.scanners = tuple(scanners)

    async def evaluate(self, mail: Mail) -> Decision:
        target = MailTarget(mail)
        trail: list[Result] = []
        try:
            for scanner in self.scanners:
                result = await evaluate(scanner, target)
                trail.append(result)
                if result.detected:
                    break
        except ScannerError as error:
            return Decision.tempfail(error, trail)
        return Decision.from_results(trail)

    async def aclose(self) -> None:
        """Release what the scanners hold (pooled clamd sessions, HTTP clients).

        A scanner shared by several entries (``cache(spamassassind(...))`` used
        twice) is closed once.
        """
        seen: set[int] = set()
        for scanner in self.scanners:
            await scanner.aclose(seen)

    def tree(self) -> list[str]:
        """The scanner tree, one line per scanner, indented by nesting."""
        return [line for scanner in self.scanners for line in scanner.tree()]
