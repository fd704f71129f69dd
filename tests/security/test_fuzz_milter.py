"""Fuzzing the milter: the codec (services/milter_protocol.py: every command's parser, packet framing,
truncated and oversized packets) and a real milter over a socket (sequences of packets of every command,
valid and not, framing broken anywhere), each case followed by an honest MTA's message.

Asserted: the codec raises nothing but MilterProtocolError (and asyncio.IncompleteReadError for a
truncated packet, as read_packet documents); the service closes or answers every case within a bound,
within a memory bound, and then still accepts an honest message.  Budget: tests/security/README.md.
"""

from __future__ import annotations

import asyncio
import functools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsift.services import milter_protocol as mp
from mailsift.services.milter import milter
from mailsift.testing import ServiceThread
from tests.helpers import fuzz
from tests.helpers.frontends import via_milter

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")  # a big example, reported

COMMANDS = [
    mp.SMFIC_ABORT, mp.SMFIC_BODY, mp.SMFIC_CONNECT, mp.SMFIC_MACRO, mp.SMFIC_BODYEOB, mp.SMFIC_HELO,
    mp.SMFIC_QUIT_NC, mp.SMFIC_HEADER, mp.SMFIC_MAIL, mp.SMFIC_EOH, mp.SMFIC_OPTNEG, mp.SMFIC_QUIT,
    mp.SMFIC_RCPT, mp.SMFIC_DATA, mp.SMFIC_UNKNOWN,
]  # fmt: skip


def _z(*items: bytes) -> bytes:
    return b"".join(item + b"\0" for item in items)


@functools.cache
def command_data(command: bytes) -> st.SearchStrategy[bytes]:
    """Data for ``command``: shaped as an MTA sends it (with hostile values), or noise.

    Built once per command: building (and Hypothesis validating) these strategies at every draw was
    most of the codec target's time, enough to pass pytest's 300 s on a loaded machine."""
    text = fuzz.noisy_bytes(120)
    shaped: dict[bytes, st.SearchStrategy[bytes]] = {
        mp.SMFIC_OPTNEG: st.builds(
            lambda v, a, p, rest: struct.pack(">III", v, a, p) + rest,
            st.sampled_from([0, 1, 2, 6, 7, 2**32 - 1]),
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 1),
            st.binary(max_size=8),
        ),
        mp.SMFIC_CONNECT: st.builds(
            lambda host, family, port, address: host + b"\0" + family + struct.pack(">H", port) + address,
            text,
            st.sampled_from([b"4", b"6", b"U", b"L", b"", b"\0", b"x"]),
            st.integers(0, 65535),
            st.one_of(st.just(b"192.0.2.1\0"), st.just(b"IPv6:::1\0"), text),
        ),
        mp.SMFIC_MACRO: st.builds(
            lambda stage, pairs: stage + b"".join(_z(n, v) for n, v in pairs),
            st.sampled_from([*COMMANDS, b"", b"\0"]),
            st.lists(
                st.tuples(st.sampled_from([b"i", b"{i}", b"j", b"{auth_authen}", b"{client_name}", b"_"]), text),
                max_size=8,
            ),
        ),
        mp.SMFIC_MAIL: st.builds(lambda a, args: _z(a, *args), text, st.lists(text, max_size=3)),
        mp.SMFIC_RCPT: st.builds(lambda a, args: _z(a, *args), text, st.lists(text, max_size=3)),
        mp.SMFIC_HEADER: st.builds(_z, text, st.one_of(text, fuzz.huge(b"h"))),
        mp.SMFIC_BODY: st.one_of(text, fuzz.huge(b"b").map(lambda b: b[: mp.MAX_PACKET - 1])),
        mp.SMFIC_HELO: st.builds(_z, text),
    }
    return st.one_of(shaped.get(command, text), text) if command in shaped else text


@st.composite
def packet(draw: st.DrawFn) -> bytes:
    command = draw(st.one_of(st.sampled_from(COMMANDS), st.binary(min_size=1, max_size=1)))
    return mp.packet(command, draw(command_data(command)))


@st.composite
def framing(draw: st.DrawFn) -> bytes:
    """A packet whose framing lies: length 0, over MAX_PACKET, longer or shorter than what follows, cut."""
    body = draw(packet())
    kind = draw(st.sampled_from(["zero", "oversized", "max", "longer", "shorter", "cut", "length-only"]))
    if kind == "zero":
        return struct.pack(">I", 0) + body[4:]
    if kind == "oversized":
        return struct.pack(">I", draw(st.sampled_from([mp.MAX_PACKET + 1, 2**31, 2**32 - 1]))) + body[4:]
    if kind == "max":
        return struct.pack(">I", mp.MAX_PACKET) + b"B" + b"x" * (mp.MAX_PACKET - 1)
    if kind == "longer":
        return struct.pack(">I", len(body) - 4 + draw(st.integers(1, 1000))) + body[4:]
    if kind == "shorter":
        return struct.pack(">I", max(1, len(body) - 4 - draw(st.integers(1, 10)))) + body[4:]
    if kind == "cut":
        return body[: draw(st.integers(0, len(body)))]
    return body[:4]


HONEST_START = [mp.packet(mp.SMFIC_OPTNEG, struct.pack(">III", 6, 0x1FF, 0x1FFFFF))]


@st.composite
def session(draw: st.DrawFn) -> bytes:
    packets = draw(st.lists(packet(), max_size=12))
    if draw(st.booleans()):
        packets = HONEST_START + packets
    if draw(st.booleans()):
        packets.insert(draw(st.integers(0, len(packets))), draw(framing()))
    return b"".join(packets)


# --------------------------------------------------------------------------- the codec

CODEC = fuzz.Bounds("milter-codec", seconds=60, memory=512 * fuzz.MB, per_input_byte=16)
PARSERS = [mp.parse_optneg, mp.parse_macros, mp.parse_connect, mp.parse_header, mp.parse_address, mp.strings]


async def _read_all(data: bytes) -> None:
    reader = asyncio.StreamReader(limit=2 * mp.MAX_PACKET)
    reader.feed_data(data)
    reader.feed_eof()
    while True:
        try:
            _command, payload = await mp.read_packet(reader)
        except asyncio.IncompleteReadError:
            return
        assert len(payload) < mp.MAX_PACKET


@given(st.one_of(session(), st.binary(max_size=300)), st.data())
@fuzz.fuzz_settings(800)
def check_codec(wire: bytes, data: st.DataObject) -> None:
    # drawn before the example's bounds: Hypothesis's own work is neither traced nor timed (tests/helpers/fuzz.py)
    command = data.draw(st.sampled_from(COMMANDS))
    payload = data.draw(command_data(command))
    with CODEC.example(len(wire) + len(payload)):
        try:
            asyncio.run(_read_all(wire))
        except mp.MilterProtocolError:
            pass
        for parse in PARSERS:
            try:
                parse(payload)
            except mp.MilterProtocolError:
                pass


def test_fuzz_milter_codec() -> None:
    fuzz.run(check_codec, CODEC)


# --------------------------------------------------------------------------- a real milter

SESSION = fuzz.Bounds("milter-session", seconds=30, memory=512 * fuzz.MB, per_input_byte=64)


def honest_message(port: int) -> None:
    command, _ = fuzz.honest(via_milter, port, [(b"Subject", b"hello")], b"honest body\r\n", 20)
    assert command == mp.SMFIR_ACCEPT, f"an honest message got {command!r}"


def test_fuzz_milter_sessions() -> None:
    with ServiceThread(milter([], "fuzz", "inet:0@127.0.0.1", timeout=10)) as thread:
        fuzz.fuzz_service(thread.port, session(), SESSION, 250, honest_message)
