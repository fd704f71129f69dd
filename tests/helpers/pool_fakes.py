"""Fakes and steps for the scanner pool tests: an rspamd that also answers its health check,
a quick pool for a scanner, and the wait for a backend to be let in again.

:class:`mailsift.testing.FakeRspamd` answers its scripted reply to every
request; the pool's health check is ``GET /ping``, which a real rspamd answers
``pong``.  :class:`PingingRspamd` answers that (or, with ``ping_ok`` False, an
HTTP 503) and counts the pings apart from the scans.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mailsift.scanners.base import Target
from mailsift.scanners.engines.common import where
from mailsift.scanners.engines.pool import Backend, Pool
from mailsift.testing import FakeRspamd, http_answer


def quick_pool(scanner: Any, name: str) -> Any:
    """Give ``scanner`` (clamd, spamassassind: ``addresses`` and ``health_check``) a pool whose
    first pause after an ejection is 0.2 s; its two backends."""
    scanner.pool = Pool(name, scanner.addresses, label=where, check=scanner.health_check, first_pause=0.2)
    return scanner.pool.backends


async def readmit(scanner: Any, backend: Backend[Any], clean: Target, rounds: int = 100) -> None:
    """Scan ``clean`` (0.1 s apart, at most ``rounds`` times) until ``backend``, taken out and its
    daemon back, is let in again by its health check once its pause is over."""
    for _ in range(rounds):
        await scanner.scan(clean)
        await scanner.pool.checks_done()
        if backend.state == "up":
            return
        await asyncio.sleep(0.1)


class PingingRspamd(FakeRspamd):
    """A :class:`FakeRspamd` whose ``GET /ping`` is answered ``pong`` (``ping_ok``) or ``503``."""

    def __init__(self) -> None:
        super().__init__()
        self.ping_ok = True
        self.pings = 0

    async def start(self) -> PingingRspamd:
        await super().start()
        return self

    async def __aenter__(self) -> PingingRspamd:
        return await self.start()

    async def restart(self) -> None:
        """Listen again on the same port (after :meth:`stop`): the daemon is back."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def answer(self, lines: list[str], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if not lines[0].startswith("GET /ping "):
            return await super().answer(lines, reader, writer)
        self.pings += 1
        if self.ping_ok:
            await self.send(writer, http_answer(b"pong\r\n", "200 OK", "text/plain"))
        else:
            await self.send(writer, http_answer(b"busy", "503 Service Unavailable", "text/plain"))
        return True
