"""Fakes for the scanner pool tests: an rspamd that also answers its health check.

:class:`mailsift.testing.FakeRspamd` answers its scripted reply to every
request; the pool's health check is ``GET /ping``, which a real rspamd answers
``pong``.  :class:`PingingRspamd` answers that (or, with ``ping_ok`` False, an
HTTP 503) and counts the pings apart from the scans.
"""

from __future__ import annotations

import asyncio

from mailsift.testing import FakeRspamd, http_answer


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
