"""``rspamd``'s HTTP client against :class:`mailsift.testing.FakeRspamd`, for the
faults a real one will not produce on demand: down, hanging, HTTP errors,
broken or huge JSON.

The fake is a tiny HTTP/1.1 server on loopback (so the real httpx stack is
used, connection reuse included); it records each request's headers and body
and answers scripted bytes.  The real rspamd tests are in
``tests/engines/test_rspamd.py``; the edge cases every engine shares
(unreachable, timeout, oversize) run through ``tests/helpers/engines.py``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest

from mailsift.errors import ConfigError, ScannerError, ScannerTimeout, ScannerUnavailable
from mailsift.message.mail import Envelope, Mail
from mailsift.scanners.base import MailTarget
from mailsift.scanners.engines.common import SpamResult
from mailsift.scanners.engines.rspamd import _MAX_ANSWER, rspamd
from mailsift.testing import RSPAMD_ANSWER as FAKE_RSPAMD_ANSWER
from mailsift.testing import FakeRspamd, http_answer
from tests.helpers import engines

MESSAGE = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nhello\r\n"

ANSWER = FAKE_RSPAMD_ANSWER  # the /checkv2 answer FakeRspamd sends by default


def http(body: bytes, status: str = "200 OK", content_type: str = "application/json") -> bytes:
    return http_answer(body, status, content_type)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeRspamd, str]]:
    async with FakeRspamd(reply=http(json.dumps(ANSWER).encode())) as server:
        yield server, server.url


@pytest.fixture
async def scanner(fake: tuple[FakeRspamd, str]) -> AsyncIterator[rspamd]:
    scanner = rspamd(fake[1], timeout=5)
    yield scanner
    await scanner.aclose()


async def scan(scanner: rspamd, envelope: Envelope | None = None, data: bytes = MESSAGE) -> SpamResult:
    result = await scanner.scan(MailTarget(Mail(envelope, data)))
    assert isinstance(result, SpamResult)
    return result


# --------------------------------------------------------------------------- the good path


async def test_posts_the_message_with_the_envelope(fake: tuple[FakeRspamd, str], scanner: rspamd) -> None:
    server, _ = fake
    envelope = Envelope(
        sender="álvaro@exämple.test",
        recipients=["one@example.test", "two@example.test"],
        client_address="192.0.2.7",
        client_name="mx.example.test",
        helo="helo.example.test",
        queue_id="4ABC123",
    )
    await scan(scanner, envelope)
    ((request_line, headers, body),) = server.requests
    assert request_line == "POST /checkv2 HTTP/1.1"
    assert body == MESSAGE
    sent = [(k, v) for k, v in headers if k in ("From", "Rcpt", "IP", "Helo", "Hostname", "Queue-Id")]
    assert sent == [
        ("From", "álvaro@exämple.test"),  # UTF-8 on the wire (SMTPUTF8 senders)
        ("Rcpt", "one@example.test"),
        ("Rcpt", "two@example.test"),
        ("IP", "192.0.2.7"),
        ("Helo", "helo.example.test"),
        ("Hostname", "mx.example.test"),
        ("Queue-Id", "4ABC123"),
    ]


async def test_no_envelope_no_headers_and_extra_headers(fake: tuple[FakeRspamd, str]) -> None:
    server, url = fake
    scanner = rspamd(url, headers={"Settings-ID": "outbound"})
    await scan(scanner, Envelope(client_name="unknown"))
    await scanner.aclose()
    ((_, headers, _),) = server.requests
    names = {k for k, _ in headers}
    assert not names & {"From", "Rcpt", "IP", "Helo", "Hostname", "Queue-Id"}
    assert ("Settings-ID", "outbound") in headers


async def test_result_from_the_answer(scanner: rspamd) -> None:
    result = await scan(scanner)
    assert result.level == pytest.approx(12.0 / 15.0)
    assert not result.detected
    assert (result.name, result.action) == ("add header", "add header")
    assert (result.score, result.required) == (12.0, 15.0)
    assert result.symbols == ("BIG", "NEGATIVE", "SMALL", "ZERO")  # by weight
    assert result.detail == "action=add header score=12 required=15 symbols=BIG(10),NEGATIVE(-1.5),SMALL(0.5),ZERO(0)"


@pytest.mark.parametrize(
    ("score", "required", "action", "level", "name"),
    [
        (20.0, 15.0, "reject", 20.0 / 15.0, "reject"),
        (3.0, 15.0, "reject", 1.0, "reject"),  # forced reject under the threshold is still a detection
        (0.5, 15.0, "no action", 0.5 / 15.0, ""),
        (-2.0, 15.0, "no action", -2.0 / 15.0, ""),
        (16.0, 15.0, "soft reject", 16.0 / 15.0, "soft reject"),
        (5.0, 0.0, "no action", 0.0, ""),
        (5.0, 0.0, "reject", 1.0, "reject"),
    ],
)
async def test_levels_and_names(
    fake: tuple[FakeRspamd, str], scanner: rspamd, score: float, required: float, action: str, level: float, name: str
) -> None:
    server, _ = fake
    server.reply = http(json.dumps({"score": score, "required_score": required, "action": action}).encode())
    result = await scan(scanner)
    assert result.level == pytest.approx(level)
    assert result.name == name
    assert result.symbols == ()


async def test_connection_is_reused(fake: tuple[FakeRspamd, str], scanner: rspamd) -> None:
    server, _ = fake
    for _ in range(3):
        await scan(scanner)
    assert len(server.requests) == 3
    assert server.connections == 1


async def test_over_max_size_is_not_sent(fake: tuple[FakeRspamd, str]) -> None:
    server, url = fake
    scanner = rspamd(url, max_size=len(MESSAGE) - 1)
    result = await scan(scanner)
    assert (result.level, result.name) == (0.0, "")
    assert result.detail.startswith("not checked: over max_size")
    assert server.connections == 0


def test_url_forms() -> None:
    assert rspamd("http://127.0.0.1:11333").url == "http://127.0.0.1:11333/checkv2"
    assert rspamd("http://127.0.0.1:11333/").url == "http://127.0.0.1:11333/checkv2"
    assert rspamd("http://rspamd.internal:11333/checkv2").url == "http://rspamd.internal:11333/checkv2"
    assert rspamd().describe() == f"rspamd(http://127.0.0.1:11333/checkv2, max_size={20 * 1024 * 1024})"


# --------------------------------------------------------------------------- failures -> tempfail


async def test_rspamd_down_is_unavailable() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    scanner = rspamd(f"http://127.0.0.1:{port}")
    with pytest.raises(ScannerUnavailable, match="cannot connect"):
        await scan(scanner)
    await scanner.aclose()


async def test_hanging_rspamd_times_out(fake: tuple[FakeRspamd, str]) -> None:
    server, url = fake
    server.hang = True
    scanner = rspamd(url, timeout=0.2)
    with pytest.raises(ScannerTimeout, match="no answer"):
        await scan(scanner)
    await scanner.aclose()


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (http(b'{"error": "bad message"}', "400 Bad Request"), "HTTP 400: bad message"),
        (http(b"oops", "500 Internal Server Error", "text/plain"), "HTTP 500: b'oops'"),
        (http(b"not json"), "not JSON"),
        (http(b"[1, 2]"), "not a JSON object"),
        (http(b'{"score": 1.0, "action": "no action"}'), "without score"),
        (http(b'{"score": "1", "required_score": 15, "action": "no action"}'), "without score"),
        (http(b'{"score": true, "required_score": 15, "action": "no action"}'), "without score"),
        (http(b'{"score": 1, "required_score": 15, "action": 3}'), "without score"),
        (http(b'{"score": 1, "required_score": 15, "action": "reject", "symbols": []}'), "not an object"),
        (http(b"[" * 100_000 + b"]" * 100_000), "not JSON"),
        (http(b" " * (5 * 1024 * 1024)), "answer over"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{", "RemoteProtocolError"),
        (b"garbage\r\n\r\n", "RemoteProtocolError"),
    ],
)
async def test_bad_answers_are_scanner_errors(
    fake: tuple[FakeRspamd, str], scanner: rspamd, reply: bytes, match: str
) -> None:
    server, _ = fake
    server.reply, server.close = reply, True
    with pytest.raises(ScannerError, match=match):
        await scan(scanner)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs",
    [
        {"url": "ftp://127.0.0.1/"},
        {"url": "127.0.0.1:11333"},
        {"url": "http://"},
        {"url": 11333},
        {"max_size": 0},
        {"timeout": -1},
        {"headers": {"Bad Name": "x"}},
        {"headers": {"Settings-ID": "a\r\nb"}},
        {"headers": ["Settings-ID", "x"]},
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        rspamd(**kwargs)


# --------------------------------------------------------------------------- the edge cases every engine shares


async def test_edge_unreachable_tcp_port() -> None:
    await engines.check_unreachable(rspamd(f"http://127.0.0.1:{engines.refused_port()}"), "rspamd")


async def test_edge_timeout() -> None:
    async with FakeRspamd(hang=True) as fake:
        await engines.check_timeout(rspamd(fake.url, timeout=engines.TIMEOUT), "rspamd")
        assert len(fake.requests) == 2


async def test_edge_oversize_is_not_checked() -> None:
    async with FakeRspamd() as fake:
        scanner = rspamd(fake.url, max_size=1000)
        await engines.check_oversize(scanner, 1000, lambda: len(fake.requests), "not checked")


# --------------------------------------------------------------------------- httpx only with rspamd, the fake


def test_httpx_is_imported_only_when_an_rspamd_scanner_is_built() -> None:
    script = (
        "import sys\n"
        "import mailsift\n"
        "from mailsift.scanners.engines import rspamd as module\n"
        "mailsift.clamd(); mailsift.spamassassind(); mailsift.cmd(['true'])\n"
        "assert 'httpx' not in sys.modules, 'httpx loaded without rspamd'\n"
        "mailsift.rspamd('http://127.0.0.1:11333')\n"
        "assert 'httpx' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


async def test_answer_in_pieces() -> None:
    async with FakeRspamd(split=True) as fake:
        scanner = rspamd(fake.url)
        assert (await scan(scanner)).action == "add header"
        await scanner.aclose()


# --------------------------------------------------------------------------- protocol edges (issue 11)


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 2 * 65536 + 1])
async def test_request_sizes(fake: tuple[FakeRspamd, str], scanner: rspamd, size: int) -> None:
    """Empty data is ``Content-Length: 0`` and no body; every size arrives exactly, on one connection."""
    server, _ = fake
    data = (MESSAGE + b"x" * size)[:size]
    for _ in range(2):
        result = await scanner.scan(MailTarget(Mail(Envelope(sender="a@b.test", recipients=["c@d.test"]), data)))
        assert result.name == "add header"
    assert [body for _, _, body in server.requests] == [data, data]
    for _, headers, _ in server.requests:
        assert ("Content-Length", str(size)) in headers
    assert server.connections == 1


@pytest.mark.parametrize("extra", [-1, 0])
async def test_answer_at_its_bound(fake: tuple[FakeRspamd, str], scanner: rspamd, extra: int) -> None:
    server, _ = fake
    body = json.dumps(ANSWER).encode()
    server.reply = http(body + b" " * (_MAX_ANSWER + extra - len(body)))
    assert (await scan(scanner)).name == "add header"


async def test_answer_one_byte_over_its_bound(fake: tuple[FakeRspamd, str], scanner: rspamd) -> None:
    server, _ = fake
    body = json.dumps(ANSWER).encode()
    server.reply = http(body + b" " * (_MAX_ANSWER + 1 - len(body)))
    with pytest.raises(ScannerError, match="answer over"):
        await scan(scanner)


async def test_answer_byte_by_byte(fake: tuple[FakeRspamd, str], scanner: rspamd) -> None:
    server, _ = fake
    server.split, server.piece, server.pause = True, 1, 0.0002
    for _ in range(2):
        assert (await scan(scanner)).action == "add header"
    assert server.connections == 1


RSPAMD_ANSWER = http(json.dumps(ANSWER).encode())
RSPAMD_HEAD = RSPAMD_ANSWER.index(b"\r\n\r\n") + 4
STATUS_LINE = len(b"HTTP/1.1 200 OK\r\n")
RSPAMD_CUTS = [0, 5, STATUS_LINE, RSPAMD_HEAD - 1, RSPAMD_HEAD, RSPAMD_HEAD + 10, len(RSPAMD_ANSWER) - 1]
"""Where an answer is cut: no byte, in the status line, after it, in and after the head, in the body."""


@pytest.mark.parametrize("after_cut", ["close", "reset"])
@pytest.mark.parametrize("cut", RSPAMD_CUTS)
async def test_connection_closed_mid_answer(cut: int, after_cut: Literal["close", "reset"]) -> None:
    async with FakeRspamd(reply=RSPAMD_ANSWER) as fake:
        fake.cut, fake.after_cut = cut, after_cut
        scanner = rspamd(fake.url, timeout=engines.CUT_TIMEOUT)
        error = await engines.check_cut_short(scanner, "rspamd", engines.CUT_TIMEOUT)
        assert isinstance(error, ScannerUnavailable)


@pytest.mark.parametrize("cut", [0, RSPAMD_HEAD, len(RSPAMD_ANSWER) - 1])
async def test_answer_stopping_mid_way_times_out(cut: int) -> None:
    async with FakeRspamd(reply=RSPAMD_ANSWER) as fake:
        fake.cut, fake.after_cut = cut, "hang"
        error = await engines.check_cut_short(rspamd(fake.url, timeout=engines.TIMEOUT), "rspamd")
        assert isinstance(error, ScannerTimeout)
