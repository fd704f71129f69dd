"""Test doubles shipped with mailsift, for our tests and for users' own.

* :class:`RecordingServer` — a downstream SMTP server (next hop) that records
  every message, with fault injection: refuse connections, answer a chosen
  reply to MAIL/RCPT/DATA, or hang.
* :class:`ServiceThread` — runs one configured service (e.g. ``smtpd``) in a
  background thread with its own event loop, on an ephemeral port.
* :class:`FakeClamd` — a clamd look-alike (``zIDSESSION``, ``zINSTREAM``,
  numbered answers) for ``clamd(fake.address)``: it finds a virus or not, and
  on demand answers ``ERROR``, hangs, drops the connection, closes idle
  sessions, answers with a wrong request number, an endless or truncated
  answer, refuses streams over a size limit, or sends its answers in pieces.
* :class:`FakeSpamd` — a spamd look-alike (SPAMC/SPAMD framing) for
  ``spamassassind(fake.address)``: it answers scripted bytes
  (:func:`spamd_answer` builds a good one), records each request, and on
  demand hangs, drops the connection or splits its answer.
* :class:`FakeRspamd` — a tiny HTTP/1.1 rspamd for ``rspamd(fake.url)``, with
  the same faults (:func:`http_answer` builds an answer).

The fakes run in the caller's event loop (``async with FakeClamd() as fake:``
in an async test) and record what they were sent (``streams``, ``requests``,
``connections``); ``stop()`` makes the engine "down".  Each listens on
127.0.0.1 (an ephemeral port) or, given a path, on a unix socket.  Example::

    async def test_virus_is_quarantined(tmp_path):
        async with FakeClamd(tmp_path / "clamd.sock", behaviour="found") as fake:
            result = await clamd(fake.address).scan(MailTarget(Mail(data=b"...")))
            assert result.name == fake.virus

Everything binds to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SMTPEnvelope

from mailsift import config
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
        config.bind(config.reachable([self.service], (), self.settings.hooks), self.settings)
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


# =========================================================================== engine fakes


class _FakeServer:
    """What the engine fakes share: a listener in the running loop, its connections, split writes.

    Faults every fake has (attributes, set before or between scans):

    * ``split``: each answer goes in pieces of ``piece`` bytes (3; ``1`` is
      byte by byte) with ``pause`` seconds between them, so the client reads
      it across many reads and must reassemble it;
    * ``cut``: only the first ``cut`` bytes of each answer are sent, then the
      fake does ``after_cut``: ``"close"`` (end the connection: a daemon that
      died mid-answer), ``"reset"`` (an abortive close, TCP RST) or
      ``"hang"`` (stay silent with the connection open).
    """

    def __init__(self, path: str | os.PathLike[str] | None, split: bool) -> None:
        self.path = Path(path) if path is not None else None
        self.split = split
        """Send each answer in pieces (a few bytes, a pause, the rest): the client must reassemble."""
        self.piece = 3
        self.pause = 0.002
        self.cut: int | None = None
        self.after_cut: Literal["close", "reset", "hang"] = "close"
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def address(self) -> str | tuple[str, int]:
        """The unix socket path or ``("127.0.0.1", port)``, as an engine scanner takes it."""
        return str(self.path) if self.path is not None else ("127.0.0.1", self.port)

    async def start(self) -> Any:
        if self.path is not None:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        else:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and cut every connection: the engine is down from now on."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> Any:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self.handle(reader, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await writer.drain()
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Write ``data``, in pieces with pauses when ``split``, cut short after ``cut`` bytes."""
        cut = self.cut is not None and self.cut < len(data)
        if self.cut is not None:
            data = data[: self.cut]
        if not self.split or len(data) < 2:
            writer.write(data)
            await writer.drain()
        else:
            for start in range(0, len(data), self.piece):
                writer.write(data[start : start + self.piece])
                await writer.drain()
                await asyncio.sleep(self.pause)
        if not cut:
            return
        if self.after_cut == "hang":
            await asyncio.sleep(3600)
        if self.after_cut == "reset":
            sock = writer.get_extra_info("socket")
            if sock is not None and sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        raise ConnectionAbortedError("answer cut short on purpose")  # ends this connection's handler


_OUT_OF_SESSION = "Only nCMDS\\n and zCMDS\\0 are accepted inside IDSESSION. ERROR"  # clamd's words

ClamdBehaviour = Literal[
    "ok",
    "found",
    "error",
    "hang",
    "drop",
    "close_idle",
    "close_on_next",
    "wrong_number",
    "endless",
    "truncated",
    "size_limit",
]


class FakeClamd(_FakeServer):
    """A clamd look-alike whose ``behaviour`` can change between scans.

    ``ok``; ``found`` (``virus`` FOUND); ``error`` (answer ``... ERROR`` and end
    the session, as clamd does); ``hang`` (never answer); ``drop`` (close
    without answering); ``close_idle`` (answer, then close the session at once,
    as an idle timeout would); ``close_on_next`` (answer the first request of a
    connection, close at the second); ``wrong_number`` (answer with another
    request's number); ``endless`` (an answer with no end); ``truncated`` (half
    an answer, then EOF); ``size_limit`` (refuse streams over ``limit`` bytes
    like clamd's StreamMaxLength).  ``split`` sends each answer in pieces.
    ``streams`` holds every stream received, ``chunks`` the lengths of each
    stream's data chunks (the terminator not counted), ``commands`` every
    command as received (a stray ``b"\\0"`` is a client out of step: a
    zero-length chunk sent before the terminator), ``connections`` counts
    connections.  Like clamd, an unknown command inside a session is answered
    ``Only nCMDS\\n and zCMDS\\0 are accepted inside IDSESSION. ERROR``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        behaviour: ClamdBehaviour = "ok",
        limit: int = 1000,
        virus: str = "Win.Test.Fake-1",
        split: bool = False,
        signature: bytes | None = None,
    ) -> None:
        super().__init__(path, split)
        self.behaviour: ClamdBehaviour = behaviour
        self.signature = signature
        """Under ``ok``, a stream that contains these bytes is answered ``virus`` FOUND (as a signature)."""
        self.limit = limit
        self.virus = virus
        self.streams: list[bytes] = []
        self.chunks: list[list[int]] = []
        self.commands: list[bytes] = []

    async def start(self) -> FakeClamd:
        await super().start()
        return self

    async def __aenter__(self) -> FakeClamd:
        return await self.start()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session, number = False, 0
        while True:
            command = await reader.readuntil(b"\0")
            self.commands.append(command)
            if command == b"zIDSESSION\0":
                session = True
                continue
            if command == b"zEND\0":
                return
            number += 1
            tag = f"{number}: " if session else ""
            if command in (b"zPING\0", b"PING\0"):
                await self.send(writer, f"{tag}PONG\0".encode())
                continue
            if command == b"zVERSION\0":
                await self.send(writer, f"{tag}ClamAV 1.0.0/27000/Fake\0".encode())
                continue
            if command != b"zINSTREAM\0":
                refusal = _OUT_OF_SESSION if session else "UNKNOWN COMMAND"
                await self.send(writer, f"{tag}{refusal}\0".encode())
                return
            if self.behaviour == "close_on_next" and number > 1:
                return
            data = b""
            refused = False
            chunks: list[int] = []
            self.chunks.append(chunks)
            while True:
                (length,) = struct.unpack("!L", await reader.readexactly(4))
                if length == 0:
                    break
                chunks.append(length)
                data += await reader.readexactly(length)
                if self.behaviour == "size_limit" and len(data) > self.limit:
                    refused = True
                    break
            self.streams.append(data)
            if refused:
                await self.send(writer, f"{tag}INSTREAM size limit exceeded. ERROR\0".encode())
                return
            if self.signature is not None and self.signature in data and self.behaviour == "ok":
                await self.send(writer, f"{tag}stream: {self.virus} FOUND\0".encode())
            elif not await self.answer(writer, tag):
                return

    async def answer(self, writer: asyncio.StreamWriter, tag: str) -> bool:
        """Write the answer to one stream; False ends the connection."""
        behaviour = self.behaviour
        if behaviour in ("ok", "close_on_next", "size_limit"):
            await self.send(writer, f"{tag}stream: OK\0".encode())
        elif behaviour == "found":
            await self.send(writer, f"{tag}stream: {self.virus} FOUND\0".encode())
        elif behaviour == "error":
            await self.send(writer, f"{tag}Can't allocate memory ERROR\0".encode())
            return False
        elif behaviour == "hang":
            await asyncio.sleep(3600)
        elif behaviour == "drop":
            return False
        elif behaviour == "close_idle":
            await self.send(writer, f"{tag}stream: OK\0".encode())
            return False
        elif behaviour == "wrong_number":
            await self.send(writer, b"99: stream: OK\0")
        elif behaviour == "endless":
            for _ in range(100):
                writer.write(b"x" * 4096)
                await writer.drain()
        elif behaviour == "truncated":
            await self.send(writer, f"{tag}stream: Win.Te".encode())
            return False
        return True


SPAMD_REPORT = """\
Spam detection software, running on the system "fake",
has identified this incoming email as possible spam.

Content analysis details:   (12.3 points, 5.0 required)

 pts rule name              description
---- ---------------------- --------------------------------------------------
 2.5 FAKE_RULE_ONE          One rule
 9.8 FAKE_RULE_TWO          Another rule
"""
"""The report :func:`spamd_answer` sends by default."""


def spamd_answer(spam: str = "True ; 12.3 / 5.0", body: str = SPAMD_REPORT, code: str = "0 EX_OK") -> bytes:
    """A SPAMD/1.1 answer: status ``code``, ``Spam: <spam>`` and ``body`` (report or symbols)."""
    data = body.encode()
    return f"SPAMD/1.1 {code}\r\nContent-length: {len(data)}\r\nSpam: {spam}\r\n\r\n".encode() + data


class FakeSpamd(_FakeServer):
    """A spamd look-alike: reads one SPAMC request per connection, answers ``reply``.

    ``reply`` (default :func:`spamd_answer`) is sent as it is, so a test can
    script any malformed answer; ``hang`` never answers, ``drop`` closes
    without a byte, ``split`` sends the answer in pieces.  ``requests`` holds
    each request's head and body.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        reply: bytes | None = None,
        hang: bool = False,
        drop: bool = False,
        split: bool = False,
    ) -> None:
        super().__init__(path, split)
        self.reply = reply if reply is not None else spamd_answer()
        self.hang = hang
        self.drop = drop
        self.requests: list[tuple[bytes, bytes]] = []

    async def start(self) -> FakeSpamd:
        await super().start()
        return self

    async def __aenter__(self) -> FakeSpamd:
        return await self.start()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"PING "):  # spamc's health check (the scanner pool's)
            await self.send(writer, b"SPAMD/1.5 0 PONG\r\n")
            return
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await reader.readexactly(length)
        self.requests.append((head, body))
        if self.hang:
            await asyncio.sleep(3600)
        if not self.drop:
            await self.send(writer, self.reply)


RSPAMD_ANSWER: dict[str, Any] = {
    "is_skipped": False,
    "score": 12.0,
    "required_score": 15.0,
    "action": "add header",
    "symbols": {
        "SMALL": {"name": "SMALL", "score": 0.5},
        "BIG": {"name": "BIG", "score": 10.0},
        "NEGATIVE": {"name": "NEGATIVE", "score": -1.5},
        "ZERO": {"name": "ZERO", "score": 0.0},
    },
}
"""The ``/checkv2`` answer :class:`FakeRspamd` sends by default."""


def http_answer(body: bytes, status: str = "200 OK", content_type: str = "application/json") -> bytes:
    """An HTTP/1.1 answer with ``body``."""
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


class FakeRspamd(_FakeServer):
    """A tiny rspamd on 127.0.0.1: keep-alive HTTP/1.1, answers ``reply`` to every request.

    ``hang`` never answers, ``close`` hangs up after each answer (a truncated
    answer then ends there), ``split`` sends answers in pieces.  ``requests``
    holds each request line, its headers and body.  ``url`` is what
    ``rspamd(...)`` takes.
    """

    def __init__(
        self, *, reply: bytes | None = None, hang: bool = False, close: bool = False, split: bool = False
    ) -> None:
        super().__init__(None, split)
        self.reply = reply if reply is not None else http_answer(json.dumps(RSPAMD_ANSWER).encode())
        self.hang = hang
        self.close = close
        self.requests: list[tuple[str, list[tuple[str, str]], bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeRspamd:
        await super().start()
        return self

    async def __aenter__(self) -> FakeRspamd:
        return await self.start()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # keep-alive: several requests per connection
            head = await reader.readuntil(b"\r\n\r\n")
            if not await self.answer(head.decode("utf-8").split("\r\n"), reader, writer):
                return

    async def answer(self, lines: list[str], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read the body of the request whose request line and headers are ``lines``, record the
        request and send ``reply``; False: hang up (``close``)."""
        headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:] if line)]
        length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
        body = await reader.readexactly(length)
        self.requests.append((lines[0], headers, body))
        if self.hang:
            await asyncio.sleep(3600)
        await self.send(writer, self.reply)
        return not self.close
