"""``clamd(...)`` against a fake clamd on a unix socket: fault injection.

The real clamd is tested in ``tests/engines/test_clamd.py``; here a small
server speaking the same protocol (``zIDSESSION``, ``zINSTREAM`` chunks,
numbered answers) answers wrongly on purpose: errors, hangs, dropped
connections, sessions closed while idle or at the next request, wrong request
numbers, endless answers, its own size limit; and a listener that never
accepts, for the connect timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailsift.core.pipeline import Pipeline
from mailsift.errors import ConfigError, ScannerError, ScannerTimeout, ScannerUnavailable
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Disposition
from mailsift.replies import SCANNER_FAILED, SCANNER_TIMEOUT
from mailsift.scanners.base import MailTarget
from mailsift.scanners.engines.clamav import OVERSIZE_NAME, _Session, clamd


class FakeClamd:
    """A clamd look-alike whose ``behaviour`` can change between scans.

    ``ok``, ``found``, ``error`` (answer ``... ERROR`` and end the session, as
    clamd does), ``hang`` (never answer), ``drop`` (close without answering),
    ``close_idle`` (answer, then close the session at once, as an idle timeout
    would), ``close_on_next`` (answer the first request of a connection, close
    at the second), ``wrong_number``, ``endless`` (an answer with no end),
    ``truncated`` (half an answer, then EOF), ``size_limit`` (refuse streams
    over ``limit`` bytes like clamd's StreamMaxLength).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.behaviour = "ok"
        self.limit = 1000
        self.connections = 0
        self.streams: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> FakeClamd:
        self.server = await asyncio.start_unix_server(self.handle, path=str(self.path))
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        await self.server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        prefix, number = "", 0
        try:
            while True:
                command = await reader.readuntil(b"\0")
                if command == b"zIDSESSION\0":
                    prefix = "session"
                    continue
                if command == b"zEND\0":
                    break
                number += 1
                tag = f"{number}: " if prefix else ""
                if command == b"zPING\0":
                    writer.write(f"{tag}PONG\0".encode())
                    continue
                assert command == b"zINSTREAM\0", command
                if self.behaviour == "close_on_next" and number > 1:
                    break
                data = b""
                refused = False
                while True:
                    (length,) = struct.unpack("!L", await reader.readexactly(4))
                    if length == 0:
                        break
                    data += await reader.readexactly(length)
                    if self.behaviour == "size_limit" and len(data) > self.limit:
                        refused = True
                        break
                self.streams.append(data)
                if refused:
                    writer.write(f"{tag}INSTREAM size limit exceeded. ERROR\0".encode())
                    break
                if not await self.answer(writer, tag):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()

    async def answer(self, writer: asyncio.StreamWriter, tag: str) -> bool:
        """Write the answer; False ends the connection."""
        behaviour = self.behaviour
        if behaviour in ("ok", "close_on_next", "size_limit"):
            writer.write(f"{tag}stream: OK\0".encode())
        elif behaviour == "found":
            writer.write(f"{tag}stream: Win.Test.Fake-1 FOUND\0".encode())
        elif behaviour == "error":
            writer.write(f"{tag}Can't allocate memory ERROR\0".encode())
            return False
        elif behaviour == "hang":
            await asyncio.sleep(3600)
        elif behaviour == "drop":
            return False
        elif behaviour == "close_idle":
            writer.write(f"{tag}stream: OK\0".encode())
            return False
        elif behaviour == "wrong_number":
            writer.write(b"99: stream: OK\0")
        elif behaviour == "endless":
            for _ in range(100):
                writer.write(b"x" * 4096)
                await writer.drain()
        elif behaviour == "truncated":
            writer.write(f"{tag}stream: Win.Te".encode())
            return False
        return True


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeClamd]:
    server = await FakeClamd(tmp_path / "clamd.sock").start()
    yield server
    await server.stop()


@pytest.fixture
async def scanner(fake: FakeClamd) -> AsyncIterator[clamd]:
    scanner = clamd(str(fake.path), timeout=1.0, connect_timeout=1.0)
    yield scanner
    await scanner.aclose()


def target(data: bytes) -> MailTarget:
    return MailTarget(Mail(Envelope(sender="a@example.net", recipients=["b@example.org"]), data))


# --------------------------------------------------------------------------- answers


async def test_found_and_clean(fake: FakeClamd, scanner: clamd) -> None:
    fake.behaviour = "found"
    found = await scanner.scan(target(b"payload"))
    assert (found.level, found.name, found.scanner) == (1.0, "Win.Test.Fake-1", "clamd")
    assert "Win.Test.Fake-1 FOUND" in found.detail
    fake.behaviour = "ok"
    clean = await scanner.scan(target(b"payload"))
    assert (clean.level, clean.name) == (0.0, "")
    assert fake.streams == [b"payload", b"payload"]
    assert fake.connections == 1


async def test_error_answer_tempfails_and_the_session_is_replaced(fake: FakeClamd, scanner: clamd) -> None:
    fake.behaviour = "error"
    with pytest.raises(ScannerError, match="Can't allocate memory ERROR") as caught:
        await scanner.scan(target(b"x"))
    assert type(caught.value) is ScannerError
    decision = await Pipeline([scanner]).evaluate(target(b"x").mail)
    assert (decision.disposition, decision.reply) == (Disposition.TEMPFAIL, SCANNER_FAILED)
    fake.behaviour = "ok"
    assert not (await scanner.scan(target(b"x"))).detected
    assert fake.connections == 3  # an errored session is never reused


async def test_hang_is_a_timeout(fake: FakeClamd, scanner: clamd) -> None:
    fake.behaviour = "hang"
    with pytest.raises(ScannerTimeout, match="no answer within 1 s"):
        await scanner.scan(target(b"x"))
    decision = await Pipeline([scanner]).evaluate(target(b"x").mail)
    assert (decision.disposition, decision.reply) == (Disposition.TEMPFAIL, SCANNER_TIMEOUT)
    assert scanner._idle == []  # a session with a pending request is closed, not pooled


async def test_dropped_connection_is_retried_once_then_tempfails(fake: FakeClamd, scanner: clamd) -> None:
    assert not (await scanner.scan(target(b"x"))).detected  # one pooled session
    fake.behaviour = "drop"
    with pytest.raises(ScannerError, match="connection closed before the answer"):
        await scanner.scan(target(b"x"))
    assert fake.connections == 2  # the pooled session, then one fresh connection
    assert len(fake.streams) == 3


async def test_session_closed_while_idle_is_replaced(
    fake: FakeClamd, scanner: clamd, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks: list[bool] = []
    original = _Session.closed_by_peer

    def spy(session: _Session) -> bool:
        checks.append(original(session))
        return checks[-1]

    monkeypatch.setattr(_Session, "closed_by_peer", spy)
    fake.behaviour = "close_idle"
    for _ in range(5):
        assert not (await scanner.scan(target(b"x"))).detected
        await asyncio.sleep(0.05)  # let the close reach us, as an idle timeout would
    assert fake.connections == 5
    assert checks == [True] * 4  # each closed session seen before use: nothing sent into it
    fake.behaviour = "ok"
    await scanner.scan(target(b"x"))
    await scanner.scan(target(b"x"))
    assert checks[-1] is False  # an open session passes the check and is reused
    assert fake.connections == 6


async def test_session_closed_at_the_next_request_is_retried(fake: FakeClamd, scanner: clamd) -> None:
    """The race: the session looks open but clamd drops the request; the scan succeeds on a new one."""
    fake.behaviour = "close_on_next"
    for _ in range(4):
        assert not (await scanner.scan(target(b"x"))).detected
    assert fake.connections == 4
    assert scanner.connections_opened == 4


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ("wrong_number", "answer '99: stream: OK' to request 1"),
        ("endless", "answer longer than"),
        ("truncated", "truncated answer"),
    ],
)
async def test_broken_answers_are_errors(fake: FakeClamd, scanner: clamd, behaviour: str, message: str) -> None:
    fake.behaviour = behaviour
    with pytest.raises(ScannerError, match=message):
        await scanner.scan(target(b"x"))
    assert scanner._idle == []


async def test_clamd_down_is_unavailable(tmp_path: Path) -> None:
    scanner = clamd(str(tmp_path / "missing.sock"))
    with pytest.raises(ScannerUnavailable, match="not reachable: No such file"):
        await scanner.scan(target(b"x"))
    decision = await Pipeline([scanner]).evaluate(target(b"x").mail)
    assert decision.disposition is Disposition.TEMPFAIL


async def test_stopped_fake_is_unavailable(fake: FakeClamd, scanner: clamd) -> None:
    assert not (await scanner.scan(target(b"x"))).detected
    await fake.stop()
    with pytest.raises(ScannerUnavailable):
        await scanner.scan(target(b"x"))


async def test_connect_timeout(tmp_path: Path) -> None:
    """A listener that never accepts and whose backlog is full: connect() never completes."""
    path = tmp_path / "full.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(0)
    fillers: list[socket.socket] = []
    try:
        while True:  # fill the backlog
            filler = socket.socket(socket.AF_UNIX)
            filler.setblocking(False)
            fillers.append(filler)
            try:
                filler.connect(str(path))
            except BlockingIOError:
                break
        scanner = clamd(str(path), connect_timeout=0.3, timeout=5)
        with pytest.raises(ScannerTimeout, match=r"connect timed out after 0\.3 s"):
            await scanner.scan(target(b"x"))
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


# --------------------------------------------------------------------------- size


@pytest.mark.parametrize("oversize", ["detect", "pass", "tempfail"])
async def test_size_limit_of_clamd(fake: FakeClamd, oversize: Any) -> None:
    fake.behaviour, fake.limit = "size_limit", 1000
    scanner = clamd(str(fake.path), stream_max_length=10_000, oversize=oversize, timeout=5)
    try:
        if oversize == "tempfail":
            with pytest.raises(ScannerError, match="not scanned: 5000 bytes exceed clamd's StreamMaxLength"):
                await scanner.scan(target(b"a" * 5000))
        else:
            result = await scanner.scan(target(b"a" * 5000))
            expected = (1.0, OVERSIZE_NAME) if oversize == "detect" else (0.0, "")
            assert (result.level, result.name) == expected
            assert "5000 bytes exceed clamd's StreamMaxLength" in result.detail
        assert not (await scanner.scan(target(b"a" * 1000))).detected  # within both limits
    finally:
        await scanner.aclose()


async def test_size_limit_checked_before_sending(fake: FakeClamd) -> None:
    scanner = clamd(str(fake.path), stream_max_length=100)
    result = await scanner.scan(target(b"a" * 101))
    assert (result.level, result.name) == (1.0, OVERSIZE_NAME)
    assert result.detail == "101 bytes exceed stream_max_length 100"
    assert fake.connections == 0
    assert not (await scanner.scan(target(b"a" * 100))).detected
    await scanner.aclose()


async def test_big_stream_is_chunked_and_complete(fake: FakeClamd, scanner: clamd) -> None:
    data = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MiB, not a multiple of the chunk size
    assert not (await scanner.scan(target(data))).detected
    assert fake.streams == [data]


# --------------------------------------------------------------------------- pool and commands


async def test_pool_keeps_at_most_pool_size_sessions(fake: FakeClamd) -> None:
    scanner = clamd(str(fake.path), pool_size=1)
    await asyncio.gather(*(scanner.scan(target(b"x")) for _ in range(3)))
    assert len(scanner._idle) == 1
    assert fake.connections == 3
    await scanner.aclose()
    no_pool = clamd(str(fake.path), pool_size=0)
    for _ in range(2):
        await no_pool.scan(target(b"x"))
    assert fake.connections == 5
    assert no_pool._idle == []


async def test_sessions_idle_too_long_are_not_reused(fake: FakeClamd) -> None:
    scanner = clamd(str(fake.path), max_idle=0.01)
    await scanner.scan(target(b"x"))
    await asyncio.sleep(0.05)
    await scanner.scan(target(b"x"))
    assert fake.connections == 2
    await scanner.aclose()


async def test_ping(fake: FakeClamd, scanner: clamd) -> None:
    assert await scanner.command("PING") == "PONG"


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"address": ""}, "socket path is empty"),
        ({"address": ["localhost"]}, "address must be"),
        ({"address": ("localhost", 0)}, "address must be"),
        ({"address": ("localhost", "3310")}, "address must be"),
        ({"address": 3310}, "address must be"),
        ({"timeout": 0}, "timeout must be a positive"),
        ({"connect_timeout": "5"}, "connect_timeout must be a positive"),
        ({"stream_max_length": 0}, "stream_max_length must be"),
        ({"stream_max_length": "25M"}, "stream_max_length must be"),
        ({"oversize": "ignore"}, "oversize must be"),
        ({"pool_size": -1}, "pool_size must be"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        clamd(**kwargs)


def test_addresses_and_describe(tmp_path: Path) -> None:
    assert clamd(["localhost", 3310]).address == ("localhost", 3310)
    assert clamd(("127.0.0.1", 3310)).describe() == "clamd(127.0.0.1:3310)"
    assert clamd(tmp_path / "c.sock").address == str(tmp_path / "c.sock")
    assert clamd().describe() == "clamd(/var/run/clamav/clamd.ctl)"
