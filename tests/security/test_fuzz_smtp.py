"""Fuzzing smtpd over a real socket: SMTP sessions from a grammar (every verb, hostile arguments,
XFORWARD, BDAT, AUTH, STARTTLS), line ends of every kind (bare CR, bare LF), huge lines, everything
pipelined in one write, and DATA with dot-stuffing variants and smuggling attempts (``\\n.\\n``,
``\\r\\n.\\r`` ...).

Asserted: each session is answered and closed within a bound after the client's end of input, within a
memory bound, and every reply line is a well-formed SMTP reply (``ddd`` then space or dash); then an
honest client's message is still accepted (250).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsift.services.smtpd import smtpd
from mailsift.testing import RecordingServer, ServiceThread
from tests.helpers import fuzz
from tests.helpers.frontends import via_smtpd

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")  # a big example, reported

VERBS = [b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"RSET", b"NOOP", b"QUIT", b"VRFY", b"EXPN",
         b"HELP", b"XFORWARD", b"BDAT", b"AUTH", b"STARTTLS", b"LHLO", b"mail from:", b"X" * 600, b""]  # fmt: skip
ADDRESSES = st.sampled_from([b"<alice@example.test>", b"<>", b"<bob@example.test> SIZE=100", b"<a@b> BODY=8BITMIME",
                             b"<example.com>", b"<a@b\r\nRCPT TO:<c@d>>", b"<\"a b\"@c.test>", b"<@x,@y:a@b.test>",
                             b"alice@example.test", b"<a@b> SMTPUTF8", b"<a@b> SIZE=999999999999"])  # fmt: skip
_DATA_PIECES = [b"..", b".\r\n", b"\r\n.\r\n", b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b".\r", b"\r\n..\r\n",
                b"\r\nMAIL FROM:<x@y>\r\n", b"\0", b"\xff", b"\r", b"\n", b"Subject: x\r\n\r\n"]  # fmt: skip


@st.composite
def data_section(draw: st.DrawFn) -> bytes:
    pieces = draw(
        st.lists(st.one_of(st.sampled_from(_DATA_PIECES), fuzz.noisy_bytes(60), fuzz.huge(b"d")), max_size=10)
    )
    end = draw(st.sampled_from([b"\r\n.\r\n", b"\r\n.\r\n", b"\n.\n", b".\r\n", b""]))
    return b"".join(pieces) + end


@st.composite
def command(draw: st.DrawFn) -> bytes:
    verb = draw(st.sampled_from(VERBS))
    end = draw(fuzz.NEWLINES) if draw(st.integers(0, 3)) == 0 else b"\r\n"
    if verb in (b"MAIL FROM:", b"RCPT TO:", b"mail from:"):
        return verb + draw(st.one_of(ADDRESSES, fuzz.noisy_bytes(80))) + end
    if verb == b"DATA":
        return b"DATA" + end + draw(data_section())
    if verb == b"XFORWARD":
        name = draw(st.sampled_from([b"NAME", b"ADDR", b"IDENT", b"HELO", b"PROTO", b"SOURCE", b"X"]))
        return b"XFORWARD " + name + b"=" + draw(fuzz.noisy_bytes(40)) + end
    if verb == b"BDAT":
        return b"BDAT " + draw(st.sampled_from([b"5", b"0 LAST", b"-1", b"99999999999"])) + end + b"hello"
    argument = draw(st.one_of(st.just(b" client.test"), st.just(b""), fuzz.noisy_bytes(40), fuzz.huge(b"h")))
    return verb + argument + end


@st.composite
def session(draw: st.DrawFn) -> bytes:
    commands = draw(st.lists(command(), max_size=10))
    if draw(st.booleans()):
        commands[:0] = [
            b"EHLO client.test\r\n",
            b"MAIL FROM:<alice@example.test>\r\n",
            b"RCPT TO:<bob@example.test>\r\n",
        ]
    return b"".join(commands) + b"\r\n.\r\nQUIT\r\n"


REPLY = re.compile(rb"^\d{3}([ -].*)?$")
BOUNDS = fuzz.Bounds("smtpd", seconds=30, memory=512 * fuzz.MB, per_input_byte=64)


def honest(port: int) -> None:
    finals = fuzz.honest(via_smtpd, port, b"Subject: hello\r\n\r\nhonest body\r\n", 20)
    assert finals, "an honest message got no answer"
    assert finals[0].startswith("250 "), f"an honest message got {finals!r}"


def test_fuzz_smtpd() -> None:
    with (
        RecordingServer() as downstream,
        ServiceThread(smtpd([], "127.0.0.1", 0, next_hop=("127.0.0.1", downstream.port), timeout=10)) as thread,
    ):
        honest(thread.port)

        @given(session())
        @fuzz.fuzz_settings(150)
        def check(wire: bytes) -> None:
            with BOUNDS.example(len(wire)):
                answer = fuzz.exchange(thread.port, wire, 20)
                for line in answer.split(b"\r\n")[:-1]:
                    assert REPLY.match(line), f"not an SMTP reply line: {line[:200]!r}"
                honest(thread.port)
            downstream.messages.clear()

        fuzz.run(check, BOUNDS)
