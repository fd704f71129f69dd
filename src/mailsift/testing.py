"""Test doubles shipped with mailsift, for our tests and for users' own.

* :class:`RecordingServer` — a downstream SMTP server (next hop) that records
  every message, with fault injection: refuse connections, answer a chosen
  reply to MAIL/RCPT/DATA, or hang.
* :class:`ServiceThread` — runs one configured service (e.g. ``smtpd``) in a
  background thread with its own event loop, on an ephemeral port.

Both bind to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SMTPEnvelope

from mailsift.services.base import Service
from mailsift.settings import Settings
from mailsift.supervisor import event_loop_factory


@dataclass
class Received:
    """One message as the recording server got it."""

    sender: str
    recipients: list[str]
    data: bytes
    xforward: dict[str, str] = field(default_factory=dict)
    mail_options: list[str] = field(default_factory=list)


class _LoopThread:
    """An event loop in a daemon thread, for servers used from synchronous tests."""

    def __init__(self, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> None:
        self.loop = (loop_factory or asyncio.new_event_loop)()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class _RecordingSMTP(SMTP):
    def __init__(self, owner: RecordingServer) -> None:
        super().__init__(owner, enable_SMTPUTF8=True, hostname="recorder.test", ident="recorder")
        self.owner = owner
        self.xforward: dict[str, str] = {}

    def _hang_up(self, verb: str) -> bool:
        if self.owner.hang_up_at == verb:
            self.owner.hang_up_at = None
            assert self.transport is not None
            self.transport.close()
            return True
        return False

    async def smtp_MAIL(self, arg: str) -> None:  # noqa: N802 - SMTP verb
        if not self._hang_up("MAIL"):
            await super().smtp_MAIL(arg)

    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802 - SMTP verb
        if not self._hang_up("DATA"):
            await super().smtp_DATA(arg)

    async def smtp_XFORWARD(self, arg: str | None) -> None:  # noqa: N802 - SMTP verb
        if self._hang_up("XFORWARD"):
            return
        for item in (arg or "").split():
            key, _, value = item.partition("=")
            self.xforward[key.upper()] = value
        await self.push("250 2.0.0 Ok")


class RecordingServer:
    """A next hop that records messages. Set ``mail_reply``/``rcpt_reply``/``data_reply``
    to an SMTP reply line (``"451 4.3.0 busy"``) to inject faults, ``hang`` to stall DATA,
    ``hang_up_at`` to a verb (``"MAIL"``, ``"XFORWARD"``, ``"DATA"``) to close the connection
    without a reply the next time it comes (as a next hop closing an idle connection), or to
    ``"CONTENT"`` to close it after the content arrived, without the final answer."""

    def __init__(self, *, xforward: bool = True, pipelining: bool = True) -> None:
        self.messages: list[Received] = []
        self.mail_reply: str | None = None
        self.rcpt_reply: str | None = None
        self.data_reply: str | None = None
        self.hang = False
        self.hang_up_at: str | None = None
        self.advertise_xforward = xforward
        self.advertise_pipelining = pipelining
        self.connections = 0
        self._runner = _LoopThread()
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    def start(self) -> RecordingServer:
        async def start() -> None:
            def factory() -> _RecordingSMTP:
                self.connections += 1
                return _RecordingSMTP(self)

            self._server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        self._runner.call(start())
        return self

    def stop(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()

        self._runner.call(stop())
        self._runner.close()

    def __enter__(self) -> RecordingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # aiosmtpd handler hooks
    async def handle_EHLO(  # noqa: N802
        self, server: SMTP, session: Session, envelope: SMTPEnvelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        extra = ["250-PIPELINING"] if self.advertise_pipelining else []
        if self.advertise_xforward:
            extra.append("250-XFORWARD NAME ADDR PROTO HELO IDENT")
        return [*responses[:-1], *extra, responses[-1]]

    async def handle_MAIL(  # noqa: N802
        self, server: SMTP, session: Session, envelope: SMTPEnvelope, address: str, options: list[str]
    ) -> str:
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(  # noqa: N802
        self, server: SMTP, session: Session, envelope: SMTPEnvelope, address: str, options: list[str]
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SMTPEnvelope) -> str:  # noqa: N802
        if self.hang_up_at == "CONTENT":  # the content arrived, the answer never leaves
            self.hang_up_at = None
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()
            return "250 never sent"
        if self.hang:
            await asyncio.sleep(3600)
        if self.data_reply:
            return self.data_reply
        assert isinstance(server, _RecordingSMTP)
        self.messages.append(
            Received(
                envelope.mail_from or "",
                list(envelope.rcpt_tos),
                envelope.original_content or b"",
                dict(server.xforward),
                list(envelope.mail_options),
            )
        )
        return "250 2.0.0 Ok: recorded"


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (for services that need a fixed one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceThread:
    """Runs ``service`` in a background event loop on an ephemeral (or its own) port."""

    def __init__(self, service: Service, settings: Settings | None = None, *, state_dir: str | None = None) -> None:
        self.service = service
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if settings is None:
            if state_dir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="mailsift-test-")
                state_dir = self._tmp.name
            settings = Settings(state_dir=state_dir)
        self.settings = settings
        self._runner: _LoopThread | None = None
        self._running: Any = None
        self.port = 0

    def start(self) -> ServiceThread:
        for sub in ("", "spool", "quarantine"):
            os.makedirs(os.path.join(self.settings.state_dir, sub), exist_ok=True)
        self.service.check(self.settings)
        sock = self.service.bind()
        self.port = sock.getsockname()[1]
        self._runner = _LoopThread(event_loop_factory())  # the workers' loop (uvloop)
        self._running = self._runner.call(self.service.start(sock, self.settings))
        return self

    def drain(self, timeout: float = 5) -> None:
        if self._runner is not None and self._running is not None:
            self._runner.call(self._running.drain(timeout), timeout + 10)
            self._running = None

    def stop(self) -> None:
        self.drain(1)
        if self._runner is not None:
            self._runner.close()
            self._runner = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> ServiceThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def smtp_session_lines(host: str, port: int, payload: bytes, timeout: float = 10) -> list[str]:
    """Send raw bytes to an SMTP server and return every reply line until it closes
    or falls silent (for pipelining and smuggling tests)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        buffer = b""
        sock.sendall(payload)
        sock.settimeout(timeout)
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            buffer += chunk
            if b"\r\n221 " in b"\r\n" + buffer:
                break
    return buffer.decode("utf-8", "replace").splitlines()


def envelope_lines(sender: str, recipients: Sequence[str]) -> bytes:
    """``MAIL FROM``/``RCPT TO`` lines for raw-socket tests."""
    lines = [f"MAIL FROM:<{sender}>"] + [f"RCPT TO:<{r}>" for r in recipients]
    return ("\r\n".join(lines) + "\r\n").encode()
