"""Fuzzing the Postfix policy service (services/postfix_policy.py): request parsing (``read_request``
on any bytes) and a real service over a socket (attribute lines with hostile names and values, missing
``=``, over-long lines, too many attributes, bare CR, NUL, no final empty line, many requests pipelined).

Asserted: read_request raises only PolicyProtocolError (and asyncio.IncompleteReadError for a request
cut by EOF, as documented); every case is answered or closed within a bound and a memory bound; then an
honest request is still answered ``DUNNO``.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsift.services.postfix_policy import LINE_LIMIT, MAX_ATTRIBUTES, PolicyProtocolError, read_request, smtpd_policy
from mailsift.storage import db
from mailsift.testing import ServiceThread
from tests.helpers import fuzz
from tests.helpers.sockets import recv_until

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")  # a big example, reported

NAMES = [b"request", b"protocol_state", b"sender", b"recipient", b"client_address", b"client_name", b"helo_name",
         b"instance", b"queue_id", b"size", b"sasl_username", b"ccert_subject", b""]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from([b"smtpd_access_policy", b"RCPT", b"a@b.example", b"192.0.2.1"]), fuzz.noisy_bytes(80)
)


@st.composite
def attribute(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["pair", "pair", "pair", "no-equals", "long", "noise"]))
    end = draw(st.sampled_from([b"\n", b"\n", b"\r\n", b"\r"]))
    if kind == "pair":
        return draw(st.sampled_from(NAMES)) + b"=" + draw(VALUES).replace(b"\n", b"") + end
    if kind == "no-equals":
        return draw(fuzz.noisy_bytes(40)).replace(b"\n", b"").replace(b"=", b"") + end
    if kind == "long":
        return b"sender=" + b"x" * draw(st.sampled_from([LINE_LIMIT - 9, LINE_LIMIT, LINE_LIMIT + 1, 100000])) + end
    return draw(fuzz.noisy_bytes(60))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    wire = b""
    for _ in range(draw(st.integers(0, 3))):
        lines = draw(st.lists(attribute(), max_size=10))
        if draw(st.booleans()):
            lines.insert(0, b"request=smtpd_access_policy\n")
        if draw(st.integers(0, 9)) == 0:
            lines += [b"a=b\n"] * (MAX_ATTRIBUTES + 1)
        wire += b"".join(lines) + draw(st.sampled_from([b"\n", b"\n", b"\r\n", b""]))
    return wire


async def _read_all(wire: bytes) -> None:
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    reader.feed_data(wire)
    reader.feed_eof()
    while await read_request(reader) is not None:
        pass


PARSER = fuzz.Bounds("policy-parser", seconds=60, memory=512 * fuzz.MB, per_input_byte=16)


@given(st.one_of(requests(), st.binary(max_size=500)))
@fuzz.fuzz_settings(1500)
def check_parser(wire: bytes) -> None:
    with PARSER.example(len(wire)):
        try:
            asyncio.run(_read_all(wire))
        except (PolicyProtocolError, asyncio.IncompleteReadError):
            pass


def test_fuzz_policy_parser() -> None:
    fuzz.run(check_parser, PARSER)


HONEST = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.7\n"
    b"sender=a@example.test\nrecipient=b@example.test\n\n"
)
SERVICE = fuzz.Bounds("policy-service", seconds=30, memory=512 * fuzz.MB, per_input_byte=64)


def honest(port: int) -> None:
    def ask() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(HONEST)
            return recv_until(sock, b"\n\n")

    answer = fuzz.honest(ask)
    assert answer == b"action=DUNNO\n\n", f"an honest request got {answer!r}"


def test_fuzz_policy_service() -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mailsift-fuzz-") as state:
        service = smtpd_policy([], db.sqlite(f"{state}/policy.db"), "127.0.0.1", 0, idle_timeout=10)
        with ServiceThread(service, state_dir=state) as thread:
            fuzz.fuzz_service(thread.port, requests(), SERVICE, 1500, honest)
