"""Fuzzing sgfilterd (SAGATOR's filter protocol, services/sgfilter_protocol.py and sgfilterd.py) over a
real socket: requests of MAIL FROM / RCPT TO / DATA length lines with hostile values, lying lengths,
huge lines, bare CR, NUL and 8-bit bytes, cut anywhere; and the protocol's answer lines.

Asserted: every case is answered or closed within a bound and a memory bound, then an honest request is
still answered 250; an answer line is always one line (``Status.line`` on any text).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsift.services import sgfilter_protocol as sp
from mailsift.services.sgfilterd import sgfilterd
from mailsift.testing import ServiceThread
from tests.helpers import fuzz
from tests.helpers.frontends import via_sgfilterd

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")  # a big example, reported

_END = st.sampled_from([b"\n", b"\n", b"\r\n", b"\r", b""])
_VALUE = st.one_of(st.just(b"alice@example.test"), st.just(b"<bob@example.test>"), st.just(b""), fuzz.noisy_bytes(100))


@st.composite
def line(draw: st.DrawFn) -> bytes:
    verb = draw(st.sampled_from([b"MAIL FROM:", b"RCPT TO:", b"DATA", b"mail from:", b"MAIL FROM", b"QUIT", b"", b"X"]))
    if verb == b"DATA":
        argument = draw(
            st.one_of(
                st.integers(-5, 5000).map(lambda n: str(n).encode()),
                fuzz.noisy_bytes(20),
                st.sampled_from([b"99999999999999999999", b"1e3", b" 12", b"0x10", b"\xd9\xa3"]),
            )
        )
        body = draw(st.one_of(st.binary(max_size=600), fuzz.huge(b"d")))
        return b"DATA " + argument + draw(_END) + body
    value = draw(st.one_of(_VALUE, fuzz.huge(b"a")))
    return verb + draw(st.sampled_from([b" ", b"", b"\t"])) + value + draw(_END)


@st.composite
def request(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(line(), max_size=8))
    if draw(st.booleans()):
        lines.insert(0, b"MAIL FROM: alice@example.test\nRCPT TO: bob@example.test\n")
    wire = b"".join(lines)
    return wire[: draw(st.integers(0, len(wire)))] if draw(st.integers(0, 4)) == 0 else wire


BOUNDS = fuzz.Bounds("sgfilterd", seconds=30, memory=512 * fuzz.MB, per_input_byte=64)


def honest(port: int) -> None:
    answer = fuzz.honest(via_sgfilterd, port, b"Subject: hello\r\n\r\nhonest body\r\n", 20)
    assert answer.startswith("250 "), f"an honest request got {answer!r}"


def test_fuzz_sgfilterd() -> None:
    with ServiceThread(sgfilterd([], "127.0.0.1", 0, timeout=10)) as thread:
        honest(thread.port)

        @given(request(), st.text(max_size=80))
        @fuzz.fuzz_settings(1500)
        def check(wire: bytes, text: str) -> None:
            with BOUNDS.example(len(wire)):
                assert sp.TEMPFAIL.line(1.5, text).count(b"\n") == 1
                fuzz.exchange(thread.port, wire, 20)
                honest(thread.port)

        fuzz.run(check, BOUNDS)
