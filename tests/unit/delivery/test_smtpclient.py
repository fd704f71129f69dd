"""mailsift's reinjection SMTP client against scripted next hops on real sockets."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator, Callable

import pytest

from mailsift.delivery.smtpclient import ConnectionLost, SMTPConnection, wire_blocks, wire_data
from mailsift.services.smtpd import read_data

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], "asyncio.Future[None] | object"]


def reference_wire(message: bytes) -> bytes:
    lines = re.split(rb"\r\n|\r|\n", message)
    if lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"


def test_wire_data_matches_line_by_line_stuffing() -> None:
    rng = random.Random(3)
    for _ in range(3000):
        message = bytes(rng.choice(b"a.\r\n") for _ in range(rng.randrange(0, 40)))
        assert wire_data(message) == reference_wire(message), message


async def test_wire_data_reads_back_through_smtpd() -> None:
    rng = random.Random(4)
    for _ in range(300):
        message = bytes(rng.choice(b"ab.\r\n") for _ in range(rng.randrange(0, 80)))
        reader = asyncio.StreamReader(limit=16)
        reader.feed_data(wire_data(message))
        reader.feed_eof()
        content, problem = await read_data(reader, 10_000, 10_000)
        expected = re.sub(rb"\r\n|\r|\n", b"\r\n", message)  # line ends normalised, nothing else changed
        if expected and not expected.endswith(b"\r\n"):
            expected += b"\r\n"
        assert (content, problem) == (expected, ""), message


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], asyncio.Future[int]]]:
    servers: list[asyncio.base_events.Server] = []

    async def start(script: Script) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await script(reader, writer)  # type: ignore[misc]
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()


async def ehlo_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, extensions: str = "PIPELINING") -> None:
    writer.write(b"220 next.test ESMTP\r\n")
    assert (await reader.readline()).startswith(b"EHLO ")
    writer.write(b"250-next.test\r\n" + b"".join(f"250-{e}\r\n".encode() for e in extensions.split(",")[:-1]))
    writer.write(f"250 {extensions.split(',')[-1]}\r\n".encode())


async def test_ehlo_extensions_and_multiline_replies(scripted: Callable) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await ehlo_ok(reader, writer, "SIZE 1000,XFORWARD NAME ADDR,PIPELINING")
        assert await reader.readline() == b"NOOP\r\n"
        writer.write(b"250-first\r\n250-second\r\n250 third\r\n")
        await reader.readline()

    connection = await SMTPConnection.open("127.0.0.1", await scripted(script), helo="me.test", timeout=5)
    assert connection.extensions == {"size": "1000", "xforward": "NAME ADDR", "pipelining": ""}
    answer = await connection.command(b"NOOP")
    assert (answer.code, answer.lines) == (250, ("first", "second", "third"))
    connection.close()


async def test_helo_fallback_when_ehlo_is_refused(scripted: Callable) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 old.test SMTP\r\n")
        await reader.readline()
        writer.write(b"502 what?\r\n")
        assert (await reader.readline()).startswith(b"HELO me.test")
        writer.write(b"250 old.test\r\n")
        await reader.readline()

    connection = await SMTPConnection.open("127.0.0.1", await scripted(script), helo="me.test", timeout=5)
    assert connection.extensions == {}
    assert not connection.supports("pipelining")
    connection.close()


@pytest.mark.parametrize(
    ("greeting", "message"),
    [
        (b"554 go away\r\n", "greeted with 554"),
        (b"hello there\r\n", "malformed reply"),
        (b"220-" + b"x" * 5000, "too long"),
        (b"", "closed the connection"),
    ],
)
async def test_bad_greetings_are_connection_failures(scripted: Callable, greeting: bytes, message: str) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await writer.drain()

    with pytest.raises(ConnectionLost, match=message):
        await SMTPConnection.open("127.0.0.1", await scripted(script), helo="me.test", timeout=5)


async def test_silent_next_hop_times_out(scripted: Callable) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never greets

    with pytest.raises(ConnectionLost, match="did not answer"):
        await SMTPConnection.open("127.0.0.1", await scripted(script), helo="me.test", timeout=0.3)


async def test_connection_refused() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(ConnectionLost, match="cannot connect"):
        await SMTPConnection.open("127.0.0.1", port, helo="me.test", timeout=5)


async def test_pipelined_commands_are_all_sent_before_any_answer(scripted: Callable) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await ehlo_ok(reader, writer)
        lines = [await reader.readline() for _ in range(4)]  # answers nothing until all four came
        assert lines == [b"MAIL FROM:<a@x.test>\r\n", b"RCPT TO:<b@x.test>\r\n", b"RCPT TO:<c@x.test>\r\n", b"DATA\r\n"]
        writer.write(b"250 ok\r\n250 ok\r\n550 no such user\r\n354 go\r\n")
        await reader.read()

    connection = await SMTPConnection.open("127.0.0.1", await scripted(script), helo="me.test", timeout=5)
    commands = [b"MAIL FROM:<a@x.test>", b"RCPT TO:<b@x.test>", b"RCPT TO:<c@x.test>", b"DATA"]
    answers = await connection.commands(commands)
    assert [a.code for a in answers] == [250, 250, 550, 354]
    connection.close()


async def test_unasked_421_makes_a_connection_unusable(scripted: Callable) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await ehlo_ok(reader, writer)
        await writer.drain()
        writer.write(b"421 4.4.2 idle timeout\r\n")
        await writer.drain()
        await reader.read()

    connection = await SMTPConnection.open("127.0.0.1", await scripted(script), helo="me.test", timeout=5)
    for _ in range(500):  # wait for the 421 to arrive
        if not connection.usable:
            break
        await asyncio.sleep(0.01)
    assert not connection.usable
    connection.close()


async def test_large_content_is_sent_whole_with_flow_control(scripted: Callable) -> None:
    received = bytearray()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await ehlo_ok(reader, writer)
        await reader.readline()
        writer.write(b"354 go\r\n")
        await asyncio.sleep(0.2)  # let the client's send buffer fill up: pause_writing/resume_writing
        while not received.endswith(b"\r\n.\r\n"):
            received.extend(await reader.read(65536))
        writer.write(b"250 queued\r\n")
        await reader.read()

    connection = await SMTPConnection.open("127.0.0.1", await scripted(script), helo="me.test", timeout=10)
    assert (await connection.command(b"DATA")).code == 354
    message = b"".join(b"line %d %s\r\n" % (i, b"z" * 100) for i in range(200_000))  # ~22 MB
    answer = await connection.data(message)
    assert (answer.code, answer.text) == (250, "queued")
    assert bytes(received) == message + b".\r\n"
    connection.close()


async def lhlo_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 next.test LMTP\r\n")
    assert await reader.readline() == b"LHLO me.test\r\n"
    writer.write(b"250-next.test\r\n250-ENHANCEDSTATUSCODES\r\n250 PIPELINING\r\n")


async def read_content(reader: asyncio.StreamReader) -> bytes:
    content = b""
    while not content.endswith(b"\r\n.\r\n"):
        content += await reader.readline()
    return content


async def test_lmtp_says_lhlo_and_reads_one_answer_per_recipient(scripted: Callable) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await lhlo_ok(reader, writer)
        assert await reader.readline() == b"DATA\r\n"
        writer.write(b"354 go\r\n")
        assert await read_content(reader) == b"hi\r\n.\r\n"
        writer.write(b"250 2.0.0 b ok\r\n452 4.2.2 c over quota\r\n550-5.1.1 d\r\n550 5.1.1 unknown\r\n")
        await reader.read()

    connection = await SMTPConnection.open("127.0.0.1", await scripted(script), helo="me.test", timeout=5, lmtp=True)
    assert connection.lmtp
    assert connection.supports("enhancedstatuscodes")
    assert (await connection.command(b"DATA")).code == 354
    answers, lost = await connection.data_each(b"hi\n", 3)
    assert lost is None
    assert [str(a) for a in answers] == ["250 2.0.0 b ok", "452 4.2.2 c over quota", "550 5.1.1 d 5.1.1 unknown"]
    connection.close()


async def test_lmtp_next_hop_dying_between_answers_reports_those_it_gave(scripted: Callable) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await lhlo_ok(reader, writer)
        await reader.readline()
        writer.write(b"354 go\r\n")
        await read_content(reader)
        writer.write(b"250 2.0.0 first ok\r\n")  # then hangs up before the second answer

    connection = await SMTPConnection.open("127.0.0.1", await scripted(script), helo="me.test", timeout=5, lmtp=True)
    await connection.command(b"DATA")
    answers, lost = await connection.data_each(b"hi\r\n", 2)
    assert [a.code for a in answers] == [250]
    assert lost is not None
    assert "closed the connection" in lost.message
    connection.close()


async def test_lmtp_refused_lhlo_is_a_connection_failure_without_helo(scripted: Callable) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 smtp-only.test ESMTP\r\n")
        await reader.readline()
        writer.write(b"500 5.5.1 what is LHLO\r\n")
        await reader.read()  # no HELO comes

    with pytest.raises(ConnectionLost, match="refused LHLO"):
        await SMTPConnection.open("127.0.0.1", await scripted(script), helo="me.test", timeout=5, lmtp=True)


@pytest.mark.parametrize("seed", range(20))
def test_wire_blocks_is_wire_data_block_by_block(seed: int) -> None:
    """A stored message streamed to the next hop (a quarantine release) is sent exactly as wire_data
    sends it whole, wherever the blocks split a CR LF pair, a bare CR or a dot at a line start."""
    rng = random.Random(seed)
    message = bytes(rng.choice(b"ab.\r\n") for _ in range(rng.randrange(0, 200)))
    cuts = sorted(rng.sample(range(len(message) + 1), min(len(message) + 1, rng.randrange(0, 12))))
    blocks = [message[i:j] for i, j in zip([0, *cuts], [*cuts, len(message)], strict=True)]
    assert b"".join(wire_blocks(blocks)) == wire_data(message)
    assert b"".join(wire_blocks([message])) == wire_data(message)
    assert b"".join(wire_blocks([bytes([c]) for c in message])) == wire_data(message)
