"""A small SMTP and LMTP client for reinjection, with PIPELINING (RFC 2920).

Why not a library: mailsift used aiosmtplib here first.  It sends one command
and waits for its reply, so each reinjected message took five round trips
(XFORWARD, MAIL, RCPT, DATA, the data) and reinjection was about a third of
mailsift's CPU time per message in ``bench/``.  Postfix's own ``smtp`` client
pipelines the envelope; so does this one: the envelope and DATA go in one
write, the content in a second, two round trips in all.  It speaks only what
reinjection needs (EHLO/HELO, XFORWARD, MAIL, RCPT, DATA, RSET, QUIT, the
SIZE, PIPELINING, 8BITMIME and SMTPUTF8 extensions); no TLS or AUTH, which a
content filter's loopback next hop does not use.

LMTP (RFC 2033) is the same dialogue with ``LHLO`` instead of ``EHLO`` and,
after the content, one answer per accepted recipient instead of one for all
(:meth:`SMTPConnection.data_each`): that is what lets a next hop refuse or
defer one recipient of a message without touching the others.

Content is sent CRLF-normalised and dot-stuffed (:func:`wire_data`), so a bare
``\\n.\\n`` inside a message can never end it early at the next hop.
Every failure of the connection (refused, closed, timed out, a malformed
reply) raises :class:`ConnectionLost`, a :class:`~mailsift.errors.DeliveryError`.
A command line is always one line: one with CR, LF or NUL in it (an address
that would smuggle a second command) is never written
(:class:`~mailsift.message.address.AddressError`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import cast

from mailsift.errors import DeliveryError
from mailsift.message.address import AddressError
from mailsift.message.mail import Mail

MAX_REPLY_LINE = 4096
STREAM_BLOCK = 256 * 1024
"""Bytes read at once from a file-backed message sent as DATA content (:func:`wire_blocks`)."""
MAX_REPLY_LINES = 100
_BARE_LINE_END = re.compile(rb"\r\n|\r|\n")


def one_line(line: bytes) -> bytes:
    """``line`` if it is one command line; :class:`AddressError` if CR, LF or NUL would split it."""
    if b"\r" in line or b"\n" in line or b"\0" in line:
        raise AddressError(f"refusing to send a command with CR, LF or NUL in it: {line[:80]!r}")
    return line


class ConnectionLost(DeliveryError):
    """The connection to the next hop failed, closed or timed out."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One SMTP reply: its code and text lines."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


def wire_data(message: bytes) -> bytes:
    """``message`` as DATA content: CRLF line ends, dot-stuffed, ended by ``.<CRLF>``."""
    crlf = message.count(b"\r\n")
    if message.count(b"\r") != crlf or message.count(b"\n") != crlf:  # a bare CR or LF: normalise
        message = _BARE_LINE_END.sub(b"\r\n", message)
    if message.startswith(b"."):
        message = b"." + message
    if b"\r\n." in message:
        message = message.replace(b"\r\n.", b"\r\n..")
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message + b".\r\n"


def wire_blocks(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """:func:`wire_data` of the concatenated ``blocks``, produced block by block: a stored message
    streamed to the next hop never needs its whole size in memory (a CR at a block's end waits for
    the next block, which may start with its LF; a dot is stuffed at every line start)."""
    line_start, held = True, b""
    for block in blocks:
        block, held = held + block, b""
        if block.endswith(b"\r"):
            block, held = block[:-1], b"\r"
        if not block:
            continue
        block = _BARE_LINE_END.sub(b"\r\n", block)
        if line_start and block.startswith(b"."):
            block = b"." + block
        block = block.replace(b"\r\n.", b"\r\n..")
        line_start = block.endswith(b"\r\n")
        yield block
    if held or not line_start:  # a CR alone at the very end is a line end; else the last line's
        yield b"\r\n"
    yield b".\r\n"


def _content(message: bytes | Mail) -> Iterator[bytes]:
    """The DATA content of ``message``: bytes at once, a :class:`~mailsift.message.mail.Mail` streamed."""
    if isinstance(message, bytes):
        yield wire_data(message)
        return
    with message.open() as stream:
        yield from wire_blocks(iter(lambda: stream.read(STREAM_BLOCK), b""))


class _Protocol(asyncio.Protocol):
    """The socket side: a receive buffer, end-of-file, write flow control."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.closed = False
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def readline(self) -> bytes:
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[: end + 1])
                del self.buffer[: end + 1]
                return line
            if len(self.buffer) > MAX_REPLY_LINE:
                raise ConnectionLost("next hop sent a reply line that is too long")
            if self.closed:
                raise ConnectionLost("next hop closed the connection")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def drain(self) -> None:
        if self._paused and not self.closed:
            self._drained = asyncio.get_running_loop().create_future()
            try:
                await self._drained
            finally:
                self._drained = None


class SMTPConnection:
    """One SMTP session to a next hop; open it with :meth:`open`."""

    def __init__(self, protocol: _Protocol, timeout: float, name: str, *, lmtp: bool = False) -> None:
        self._protocol = protocol
        self.timeout = timeout
        self.name = name
        self.lmtp = lmtp
        self.extensions: dict[str, str] = {}

    @classmethod
    async def open(cls, host: str, port: int, *, helo: str, timeout: float, lmtp: bool = False) -> SMTPConnection:
        """Connect, read the greeting and say EHLO (HELO if EHLO is refused), or LHLO with ``lmtp``.

        A next hop that answers but refuses the session raises ``ConnectionLost``
        too: for the MTA in front, both mean "try again later".  LMTP has no
        HELO to fall back to.
        """
        name = f"lmtp:[{host}]:{port}" if lmtp else f"[{host}]:{port}"
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, protocol = await loop.create_connection(_Protocol, host, port)
        except (OSError, TimeoutError) as error:
            raise ConnectionLost(f"cannot connect to {name}: {error or 'timed out'}") from None
        connection = cls(protocol, timeout, name, lmtp=lmtp)
        try:
            greeting = await connection.read_answer()
            if greeting.code != 220:
                raise ConnectionLost(f"{name} greeted with {greeting}")
            answer = await connection.command((b"LHLO " if lmtp else b"EHLO ") + helo.encode("ascii"))
            if lmtp and answer.code != 250:
                raise ConnectionLost(f"{name} refused LHLO: {answer}")
            if answer.code == 250:
                for line in answer.lines[1:]:
                    keyword, _, params = line.partition(" ")
                    connection.extensions[keyword.lower()] = params
            elif (answer := await connection.command(b"HELO " + helo.encode("ascii"))).code != 250:
                raise ConnectionLost(f"{name} refused HELO: {answer}")
        except BaseException:
            connection.close()
            raise
        return connection

    def supports(self, extension: str) -> bool:
        return extension.lower() in self.extensions

    @property
    def usable(self) -> bool:
        """Still open, and nothing unasked for arrived (such as a 421 before closing)."""
        protocol = self._protocol
        return not (protocol.closed or protocol.buffer or protocol.transport is None or protocol.transport.is_closing())

    async def read_answer(self) -> Answer:
        lines: list[str] = []
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    line = (await self._protocol.readline()).rstrip(b"\r\n")
                    code, separator = line[:3], line[3:4]
                    if not (code.isdigit() and separator in (b" ", b"-", b"")):
                        raise ConnectionLost(f"{self.name} sent a malformed reply: {line[:80]!r}")
                    lines.append(line[4:].decode("utf-8", "replace"))
                    if separator != b"-":
                        return Answer(int(code), tuple(lines))
                    if len(lines) >= MAX_REPLY_LINES:
                        raise ConnectionLost(f"{self.name} sent a reply of too many lines")
        except TimeoutError:
            raise ConnectionLost(f"{self.name} did not answer within {self.timeout:g}s") from None

    async def _write(self, data: bytes) -> None:
        transport = self._protocol.transport
        if transport is None or transport.is_closing() or self._protocol.closed:
            raise ConnectionLost(f"connection to {self.name} is closed")
        transport.write(data)
        try:
            async with asyncio.timeout(self.timeout):
                await self._protocol.drain()
        except TimeoutError:
            raise ConnectionLost(f"{self.name} did not take data within {self.timeout:g}s") from None

    async def command(self, line: bytes) -> Answer:
        one_line(line)
        await self._write(line + b"\r\n")
        return await self.read_answer()

    async def commands(self, lines: list[bytes]) -> list[Answer]:
        """Send ``lines`` and read one answer each: in one write if the next hop pipelines."""
        for line in lines:
            one_line(line)
        if not self.supports("pipelining"):
            return [await self.command(line) for line in lines]
        await self._write(b"".join(line + b"\r\n" for line in lines))
        return [await self.read_answer() for _ in lines]

    async def data(self, message: bytes | Mail) -> Answer:
        """After a 354: send the content (normalised and stuffed; a Mail streamed from its file) and read
        the final answer."""
        for block in _content(message):
            await self._write(block)
        return await self.read_answer()

    async def data_each(self, message: bytes | Mail, count: int) -> tuple[list[Answer], ConnectionLost | None]:
        """LMTP, after a 354: send the content and read ``count`` answers, one per accepted RCPT.

        Returns the answers in RCPT order and, if the connection failed before
        all of them arrived, that error: the recipients without an answer are
        in an unknown state (the caller defers them; a retry may duplicate, it
        never loses).
        """
        answers: list[Answer] = []
        try:
            for block in _content(message):
                await self._write(block)
            for _ in range(count):
                answers.append(await self.read_answer())
        except ConnectionLost as error:
            return answers, error
        return answers, None

    async def quit(self) -> None:
        try:
            await self.command(b"QUIT")
        finally:
            self.close()

    def close(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.close()
