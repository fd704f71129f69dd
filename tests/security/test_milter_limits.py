"""Issue 12 finding 3 (Build 3): what one milter connection can make a worker hold is bounded.

The attack: every macro stage (any byte names a stage) filled with ~1 MB on
several connections took the workers from ~80 MB to over 1 GB, and the memory
stayed after the connections closed.  Now macros are bounded per stage
(``max_macro_stage_bytes``) and per connection (``max_macro_bytes``), the header
by ``max_headers``/``max_header_bytes``, the recipients by ``max_recipients``;
beyond a limit the message is refused through the milter protocol (a reply
code at end of message) with a log line, and the service answers an honest MTA.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailsift import quarantine, regexp_scan
from mailsift.errors import ConfigError
from mailsift.services.milter import milter
from mailsift.testing import RecordingServer, ServiceThread
from tests.helpers.milter import MilterClient, MilterWire
from tests.helpers.milter_attacks import MilterServe, connections, rss_kb

MB = 1024 * 1024
CONNECT = b"client.example.test\0" + b"4" + struct.pack(">H", 4567) + b"192.0.2.10\0"
HONEST = b"From: a@example.test\r\nSubject: honest\r\n\r\nhello\r\n"


def macro(stage: int, size: int) -> bytes:
    """An SMFIC_MACRO packet's data: one macro of ``size`` bytes for ``stage``."""
    return bytes([stage]) + b"{flood}\0" + b"x" * size + b"\0"


def begin(wire: MilterWire, macros: tuple[bytes, ...] = ()) -> None:
    """CONNECT, HELO, ``macros``, MAIL: once MAIL is answered, the milter has handled the macros."""
    for command, data in ((b"C", CONNECT), (b"H", b"helo.example.test\0")):
        wire.send(command, data)
        assert wire.read() == (b"c", b"")
    for data in macros:  # the MTA waits for no answer to these
        wire.send(b"D", data)
    wire.send(b"M", b"<alice@example.test>\0")
    assert wire.read() == (b"c", b"")


def final_answer(
    wire: MilterWire, recipients: tuple[bytes, ...] = (b"bob@example.test",), macros: tuple[bytes, ...] = ()
) -> tuple[bytes, bytes]:
    """One small message (every step answered), ``macros`` sent after HELO; the answer to end of message."""
    begin(wire, macros)
    return finish(wire, recipients)


def finish(wire: MilterWire, recipients: tuple[bytes, ...] = (b"bob@example.test",)) -> tuple[bytes, bytes]:
    """RCPT, a header, end of message: the final answer."""
    for recipient in recipients:
        wire.send(b"R", b"<" + recipient + b">\0")
        assert wire.read() == (b"c", b"")
    wire.send(b"L", b"Subject\0x\0")
    assert wire.read() == (b"c", b"")
    wire.send(b"E", b"")
    return wire.read()


def honest(port: int, queue_id: str) -> bytes:
    """An honest MTA's message: the command of the final answer (``a``: accepted)."""
    client = MilterClient(port)
    try:
        return client.message(queue_id, "alice@example.test", ["bob@example.test"], HONEST)[0]
    finally:
        client.sock.close()


def test_macro_flood_keeps_the_worker_bounded_and_answering(tmp_path: Path) -> None:
    """The issue's attack against ``mailsift serve``: 4 connections, 40 stages of ~1 MB each (160 MB sent)."""
    with RecordingServer() as hop, MilterServe(tmp_path, hop.port).start() as serve:
        worker = serve.worker()
        assert honest(serve.port, "Q0") == b"a"
        before = rss_kb(worker)
        flood = tuple(macro(stage, MB - 64) for stage in range(0x41, 0x41 + 40))
        with connections(serve.port) as connect:
            wires = [connect() for _ in range(4)]
            for wire in wires:
                begin(wire, flood)  # all four hold their macros now (before end of message)
            grown = rss_kb(worker) - before
            answers = [finish(wire) for wire in wires]
        assert grown < 100 * 1024, f"the worker grew by {grown} kB"
        assert answers == [(b"y", b"451 4.7.0 Too much milter macro data from the MTA\0")] * 4
        assert "bytes of macros for stage" in serve.log_text()
        assert "macros over their limit" in serve.log_text()
        # an honest MTA is still served, on a new connection
        assert honest(serve.port, "Q1") == b"a"


@pytest.fixture
def connect(small_limits: ServiceThread) -> Iterator[Callable[[], MilterWire]]:
    with connections(small_limits.port) as open_one:
        yield open_one


@pytest.fixture
def small_limits(tmp_path: Path) -> Iterator[ServiceThread]:
    service = milter(
        [quarantine("virus", regexp_scan([("EICAR-Test", r"EICAR")]))],
        "limits",
        "inet:0@127.0.0.1",
        max_macro_stage_bytes=4096,
        max_macro_bytes=8192,
        max_headers=20,
        max_header_bytes=4096,
        max_recipients=3,
    )
    with ServiceThread(service, state_dir=str(tmp_path)) as thread:
        yield thread


def test_one_oversized_stage_is_refused_then_the_next_message_passes(
    connect: Callable[[], MilterWire], caplog: pytest.LogCaptureFixture
) -> None:
    wire = connect()
    with caplog.at_level(logging.INFO, "mailsift.milter"):
        over = macro(ord("M"), 5000)  # a message stage, over 4096 bytes
        assert final_answer(wire, macros=(over,)) == (b"y", b"451 4.7.0 Too much milter macro data from the MTA\0")
        assert final_answer(wire) == (b"a", b"")  # the message stage's macros went with that message
    assert f"{len(over) - 1} bytes of macros for stage 'M'" in caplog.text


def test_stages_add_up_to_the_connection_limit(connect: Callable[[], MilterWire]) -> None:
    wire = connect()
    two = (macro(ord("C"), 3000), macro(ord("H"), 3000))  # each under the stage limit, together under 8192
    assert final_answer(wire, macros=two) == (b"a", b"")
    third = macro(ord("L"), 3000)  # 9000 bytes held > 8192 (C and H last for the connection)
    assert final_answer(wire, macros=(third,)) == (b"y", b"451 4.7.0 Too much milter macro data from the MTA\0")


def test_too_many_headers_and_too_large_a_header_are_refused(connect: Callable[[], MilterWire]) -> None:
    for fields in ([(b"X-N", b"%d" % n) for n in range(21)], [(b"X-Big", b"y" * 5000)]):
        wire = connect()
        for command, data in ((b"C", CONNECT), (b"H", b"h\0"), (b"M", b"<a@example.test>\0"), (b"R", b"<b@x.test>\0")):
            wire.send(command, data)
            assert wire.read() == (b"c", b"")
        for name, value in fields:
            wire.send(b"L", name + b"\0" + value + b"\0")
            assert wire.read() == (b"c", b"")
        wire.send(b"E", b"")
        assert wire.read() == (b"y", b"552 5.3.4 Message header too large\0")
        assert final_answer(wire) == (b"a", b"")


def test_too_many_recipients_are_refused(connect: Callable[[], MilterWire]) -> None:
    wire = connect()
    recipients = tuple(b"r%d@example.test" % n for n in range(4))
    assert final_answer(wire, recipients) == (b"y", b"452 4.5.3 Too many recipients\0")


@pytest.mark.parametrize(
    "option", ["max_macro_stage_bytes", "max_macro_bytes", "max_headers", "max_header_bytes", "max_recipients"]
)
def test_limits_are_checked_when_the_config_is_read(option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        milter([], "x", "inet:0@127.0.0.1", **{option: 0})
    with pytest.raises(ConfigError, match=option):
        milter([], "x", "inet:0@127.0.0.1", **{option: True})
