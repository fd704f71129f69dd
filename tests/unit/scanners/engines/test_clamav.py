"""``clamd(...)`` against :class:`mailsift.testing.FakeClamd` on a unix socket: fault injection.

The real clamd is tested in ``tests/engines/test_clamd.py``; here a small
server speaking the same protocol (``zIDSESSION``, ``zINSTREAM`` chunks,
numbered answers) answers wrongly on purpose: errors, hangs, dropped
connections, sessions closed while idle or at the next request, wrong request
numbers, endless answers, its own size limit, answers in pieces; and a
listener that never accepts, for the connect timeout.  The edge cases every
engine shares (unreachable, timeout, oversize) run through
``tests/helpers/engines.py``.
"""

from __future__ import annotations

import asyncio
import socket
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
from mailsift.scanners.engines.clamav import _CHUNK, OVERSIZE_NAME, _Session, clamd
from mailsift.scanners.match import recover
from mailsift.scanners.parsemail import parsemail
from mailsift.testing import FakeClamd
from tests.helpers import engines
from tests.helpers.messages import attachment_mail


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


# --------------------------------------------------------------------------- the edge cases every engine shares


async def test_edge_unreachable_unix_socket(tmp_path: Path) -> None:
    await engines.check_unreachable(clamd(str(tmp_path / "no-such.sock")), "clamd")


async def test_edge_unreachable_tcp_port() -> None:
    error = await engines.check_unreachable(clamd(("127.0.0.1", engines.refused_port())), "clamd")
    assert "Connection refused" in error.message


async def test_edge_timeout(tmp_path: Path) -> None:
    async with FakeClamd(tmp_path / "clamd.sock", behaviour="hang") as fake:
        await engines.check_timeout(clamd(fake.address, timeout=engines.TIMEOUT), "clamd")
        assert len(fake.streams) == 2  # the scan and the pipeline's: both reached clamd


async def test_edge_oversize_is_a_finding(tmp_path: Path) -> None:
    async with FakeClamd(tmp_path / "clamd.sock") as fake:
        scanner = clamd(fake.address, stream_max_length=1000)
        await engines.check_oversize(scanner, 1000, lambda: len(fake.streams), "detect", name=OVERSIZE_NAME)


@pytest.mark.parametrize("oversize", ["pass", "tempfail"])
async def test_edge_oversize_policies(tmp_path: Path, oversize: Any) -> None:
    async with FakeClamd(tmp_path / "clamd.sock") as fake:
        scanner = clamd(fake.address, stream_max_length=1000, oversize=oversize)
        await engines.check_oversize(scanner, 1000, lambda: len(fake.streams), oversize)


# --------------------------------------------------------------------------- the fake itself


async def test_answers_in_pieces_are_reassembled(tmp_path: Path) -> None:
    async with FakeClamd(tmp_path / "clamd.sock", behaviour="found", split=True) as fake:
        scanner = clamd(fake.address)
        result = await scanner.scan(target(b"x"))
        assert result.name == fake.virus
        assert await scanner.command("VERSION") == "ClamAV 1.0.0/27000/Fake"
        await scanner.aclose()


async def test_fake_on_tcp_and_stopped_is_down() -> None:
    fake = await FakeClamd().start()
    assert isinstance(fake.address, tuple)
    scanner = clamd(fake.address)
    assert not (await scanner.scan(target(b"x"))).detected
    await fake.stop()
    with pytest.raises(ScannerUnavailable):
        await scanner.scan(target(b"x"))
    await scanner.aclose()


# --------------------------------------------------------------------------- protocol edges (issue 11)


async def test_empty_object_is_the_terminator_alone(fake: FakeClamd, scanner: clamd) -> None:
    """Finding 1: no zero-length data chunk; clamd would read the real terminator as a command."""
    for _ in range(3):
        assert not (await scanner.scan(target(b""))).detected
    assert not (await scanner.scan(target(b"x"))).detected
    assert fake.streams == [b"", b"", b"", b"x"]
    assert fake.chunks == [[], [], [], [1]]
    assert fake.commands == [b"zIDSESSION\0"] + [b"zINSTREAM\0"] * 4  # nothing stray between them
    assert fake.connections == 1


async def test_empty_attachment_next_to_a_virus_through_parsemail(fake: FakeClamd, scanner: clamd) -> None:
    mail = target(
        attachment_mail(("empty.txt", b"", "text/plain"), ("virus.com", b"VIRUS", "application/octet-stream"))
    ).mail
    fake.signature = b"VIRUS"  # the part after the empty one is infected
    for expression in (parsemail(scanner), recover(parsemail(scanner), level=0.0)):
        decision = await Pipeline([expression]).evaluate(mail)
        assert decision.disposition is Disposition.REJECT, decision
        assert decision.result.name == fake.virus
    assert b"" in fake.streams
    assert b"\0" not in fake.commands
    assert all(0 not in chunks for chunks in fake.chunks)
    assert fake.connections == 1


@pytest.mark.parametrize(
    ("size", "chunks"),
    [
        (1, [1]),
        (_CHUNK - 1, [_CHUNK - 1]),
        (_CHUNK, [_CHUNK]),
        (_CHUNK + 1, [_CHUNK, 1]),
        (2 * _CHUNK, [_CHUNK, _CHUNK]),
        (2 * _CHUNK + 1, [_CHUNK, _CHUNK, 1]),
    ],
)
async def test_chunk_boundaries(fake: FakeClamd, scanner: clamd, size: int, chunks: list[int]) -> None:
    data = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    assert not (await scanner.scan(target(data))).detected
    assert not (await scanner.scan(target(data))).detected  # and the session is still in step
    assert fake.streams == [data, data]
    assert fake.chunks == [chunks, chunks]
    assert fake.connections == 1


async def test_answers_byte_by_byte(fake: FakeClamd, scanner: clamd) -> None:
    """Every answer split into one-byte writes: reassembled, and the session stays in step."""
    fake.split, fake.piece, fake.pause = True, 1, 0.0005
    fake.signature = b"VIRUS"
    for data in (b"", b"clean", b"a VIRUS here", b"clean again"):
        result = await scanner.scan(target(data))
        assert result.detected == (b"VIRUS" in data)
    assert await scanner.command("PING") == "PONG"
    assert fake.connections == 2  # one session for the scans, one connection for PING


# the answer "1: stream: Win.Test.Fake-1 FOUND\0" (33 bytes) cut after 0, 1, 3, 11 and 32 bytes
CLAMD_CUTS = [0, 1, 3, 11, 32]


@pytest.mark.parametrize("after_cut", ["close", "reset"])
@pytest.mark.parametrize("cut", CLAMD_CUTS)
async def test_connection_closed_mid_answer(cut: int, after_cut: Any) -> None:
    """A clamd that dies in the middle of its answer: no verdict (not even a complete-looking
    ``... FOUND`` without its NUL), ScannerUnavailable, 451."""
    async with FakeClamd(behaviour="found") as fake:
        fake.cut, fake.after_cut = cut, after_cut
        scanner = clamd(fake.address, timeout=engines.CUT_TIMEOUT)
        error = await engines.check_cut_short(scanner, "clamd", engines.CUT_TIMEOUT)
        assert isinstance(error, ScannerUnavailable)
        assert len(fake.streams) >= 2


@pytest.mark.parametrize("cut", [0, 11, 32])
async def test_answer_stopping_mid_way_times_out(cut: int) -> None:
    async with FakeClamd(behaviour="found") as fake:
        fake.cut, fake.after_cut = cut, "hang"
        error = await engines.check_cut_short(clamd(fake.address, timeout=engines.TIMEOUT), "clamd")
        assert isinstance(error, ScannerTimeout)
