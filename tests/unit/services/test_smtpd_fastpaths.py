"""The smtpd fast paths give what aiosmtpd's own code (or a plain reference) gives."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiosmtpd.smtp import SMTP

from mailsift.services.smtpd import TOO_LONG, TOO_MUCH, FilterSMTP, SMTPServer, _has_long_line, read_data, smtpd
from mailsift.settings import Settings


def reference_data(stream: bytes, size_limit: int, line_limit: int) -> tuple[bytes, str, bytes]:
    """DATA read line by line, as RFC 5321 describes it: (content, error reply, what follows)."""
    lines, position = [], 0
    while True:
        end = stream.index(b"\r\n", position) + 2
        line, position = stream[position:end], end
        if line == b".\r\n":
            break
        lines.append(line)
    raw = b"".join(lines)
    if len(raw) > size_limit:
        return b"", TOO_MUCH, stream[position:]
    if any(len(piece) > line_limit for piece in raw.split(b"\n")):
        return b"", TOO_LONG, stream[position:]
    return b"".join(line[1:] if line.startswith(b".") else line for line in lines), "", stream[position:]


async def read_with_fast_path(stream: bytes, size_limit: int, line_limit: int, reader_limit: int, step: int) -> tuple:
    reader = asyncio.StreamReader(limit=reader_limit)

    async def feed() -> None:  # in pieces, as the network delivers it
        for start in range(0, len(stream), step):
            reader.feed_data(stream[start : start + step])
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.ensure_future(feed())
    content, problem = await read_data(reader, size_limit, line_limit)
    await feeder
    return content, problem, await reader.read()


def random_stream(rng: random.Random) -> bytes:
    """Data built from the characters that matter (dots, CR, LF), ended by CRLF.CRLF and a next command."""
    body = bytes(rng.choice(b"ab..\r\n\r\n") for _ in range(rng.randrange(0, 300)))
    body = body.replace(b"\r\n.\r\n", b"\r\n..\r\n")  # an end marker inside would end it early: stuff it
    if body.startswith(b".\r\n"):
        body = b"." + body
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\nMAIL FROM:<next@example.test>\r\n"


@pytest.mark.parametrize("seed", range(300))
async def test_read_data_matches_line_by_line_reading(seed: int) -> None:
    rng = random.Random(seed)
    stream = random_stream(rng)
    size_limit = rng.choice([10_000, 120, 40])
    line_limit = rng.choice([16384, 30, 8])
    reader_limit = rng.choice([2**16, 16, 5])
    step = rng.choice([1, 3, 7, 64, 4096])
    got = await read_with_fast_path(stream, size_limit, line_limit, reader_limit, step)
    assert got == reference_data(stream, size_limit, line_limit), stream


@pytest.mark.parametrize(
    ("stream", "content"),
    [
        (b".\r\n", b""),  # empty message
        (b"..\r\n.\r\n", b".\r\n"),  # a lone stuffed dot
        (b"a\r\n.\r\n", b"a\r\n"),
        (b"a\n.\nb\r\n.\r\n", b"a\n.\nb\r\n"),  # bare LF: never the end (SMTP smuggling)
        (b"a\r.\r\nb\r\n.\r\n", b"a\r.\r\nb\r\n"),
        (b"x.\r\n.\r\n", b"x.\r\n"),  # a line ending with a dot is not the end
        (b"..x\r\n.y\r\n.\r\n", b".x\r\ny\r\n"),
    ],
)
async def test_read_data_known_cases(stream: bytes, content: bytes) -> None:
    got, problem, rest = await read_with_fast_path(stream + b"QUIT\r\n", 10_000, 1000, 16, 2)
    assert (got, problem, rest) == (content, "", b"QUIT\r\n")


def test_long_line_check_agrees_with_splitting() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        data = bytes(rng.choice(b"aaaa\n") for _ in range(rng.randrange(0, 200)))
        limit = rng.randrange(1, 40)
        assert _has_long_line(data, limit) == any(len(line) > limit for line in data.split(b"\n")), (data, limit)


def _server() -> SMTPServer:
    return SMTPServer(smtpd([], "127.0.0.1", 10024, next_hop=("127.0.0.1", 25)), Settings(state_dir="/nonexistent"))


ADDRESSES = [
    "<a@b.example>",
    "<a.b+c@ex-ample.test> SIZE=100 BODY=8BITMIME",
    "<>",
    "< a@b.example >",
    '<"x y"@b.example>',
    "<@relay.example:a@b.example>",
    "<a@[192.0.2.1]>",
    "<A!#$%&'*+/=?^_`{|}~-Z@B.EXAMPLE>",
    "<a..b@c.example>",
    "<.a@c.example>",
    "<a@-c.example>",
    "<a@c-.example>",
    "<a@c.example",
    "a@c.example",
    "<jürgen@exämple.test> SMTPUTF8",
    "<a@b.example>  SIZE=1",
    "<a@b.example>x",
    "<a@b@c.example>",
]


@pytest.mark.parametrize("arg", ADDRESSES)
async def test_address_fast_path_matches_aiosmtpd(arg: str) -> None:
    server = _server()
    server._protocol()  # the prototype
    session = server._protocol()
    assert isinstance(session, FilterSMTP)
    assert session._getaddr(arg) == SMTP._getaddr(session, arg)


async def test_fast_construction_matches_aiosmtpd_constructor() -> None:
    server = _server()
    first = server._protocol()  # built by aiosmtpd's own constructor
    assert server.prototype is not None
    second = server._protocol()  # built from the prototype
    assert isinstance(first, FilterSMTP)
    assert isinstance(second, FilterSMTP)
    assert vars(first).keys() == vars(second).keys()
    per_session = {"_stream_reader_wr", "_strong_reader", "_closed", "_drain_waiters", "_client_connected_cb"}
    per_session |= {"_smtp_methods", "_auth_methods"}
    for name, value in vars(first).items():
        if name not in per_session:
            assert vars(second)[name] == value, name
    assert second._stream_reader is not first._stream_reader
    assert second._client_connected_cb.__self__ is second
    assert second._smtp_methods.keys() == first._smtp_methods.keys()
    assert all(method.__self__ is second for method in second._smtp_methods.values())
    assert second._auth_methods.keys() == first._auth_methods.keys()
    for name, attr in second._auth_methods.items():
        assert attr.is_builtin == first._auth_methods[name].is_builtin
        assert attr.method.__self__ is (second if attr.is_builtin else first._auth_methods[name].method.__self__)
