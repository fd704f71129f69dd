"""Issue 12 finding 11 (the front-end half): an address without a domain is refused at the door.

smtpd accepted ``RCPT TO:<example.com>`` (no ``@``); a message "to" a bare
domain then let the web quarantine's "whitelist sender" create an entry owned
by ``example.com``.  smtpd, lmtpd and the milter now ask for ``local@domain``
(RFC 5321 §4.1.2) and answer 501 otherwise — except the null sender
``MAIL FROM:<>`` and the recipient ``<postmaster>`` (§4.5.1 requires it to be
accepted).  sgfilterd keeps local user names (its client is a local delivery
agent): see mailsift.message.address.
"""

from __future__ import annotations

import smtplib
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsift import smtpd
from mailsift.message.address import address_problem
from mailsift.services.lmtpd import lmtpd
from mailsift.services.milter import milter
from mailsift.testing import RecordingServer, ServiceThread
from tests.helpers.milter_attacks import connections

NO_DOMAIN = ["example.com", "bob@", "@example.com", "postmaster@"]
CONNECT = b"client.example.test\0" + b"4" + struct.pack(">H", 4567) + b"192.0.2.10\0"


@pytest.fixture
def hop() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


@pytest.fixture(params=["smtpd", "lmtpd"])
def smtp_port(request: pytest.FixtureRequest, tmp_path: Path, hop: RecordingServer) -> Iterator[tuple[str, int]]:
    kind = request.param
    service = (smtpd if kind == "smtpd" else lmtpd)([], "127.0.0.1", 0, next_hop=("127.0.0.1", hop.port))
    with ServiceThread(service, state_dir=str(tmp_path)) as thread:
        yield kind, thread.port


def client(kind: str, port: int) -> smtplib.SMTP:
    if kind == "lmtpd":
        lmtp = smtplib.LMTP("127.0.0.1", port, timeout=10)
        lmtp.ehlo_or_helo_if_needed = lambda: None  # type: ignore[method-assign]
        assert lmtp.docmd("LHLO", "client.test")[0] == 250
        return lmtp
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=10)
    smtp.ehlo("client.test")
    return smtp


@pytest.mark.parametrize("address", NO_DOMAIN)
def test_smtp_front_ends_refuse_a_recipient_without_a_domain(smtp_port: tuple[str, int], address: str) -> None:
    with client(*smtp_port) as smtp:
        assert smtp.docmd("MAIL", "FROM:<alice@example.test>")[0] == 250
        code, _ = smtp.docmd("RCPT", f"TO:<{address}>")
        assert code in (501, 553)  # 553: aiosmtpd's own parser already refuses some
        assert smtp.docmd("RCPT", "TO:<bob@example.test>")[0] == 250


@pytest.mark.parametrize("address", [*NO_DOMAIN, "postmaster"])
def test_smtp_front_ends_refuse_a_sender_without_a_domain(smtp_port: tuple[str, int], address: str) -> None:
    with client(*smtp_port) as smtp:
        assert smtp.docmd("MAIL", f"FROM:<{address}>")[0] in (501, 553)


def test_null_sender_and_postmaster_recipient_are_accepted(smtp_port: tuple[str, int], hop: RecordingServer) -> None:
    kind, port = smtp_port
    with client(kind, port) as smtp:
        assert smtp.docmd("MAIL", "FROM:<>")[0] == 250
        assert smtp.docmd("RCPT", "TO:<Postmaster>")[0] == 250
        assert smtp.docmd("DATA")[0] == 354
        smtp.send(b"From: MAILER-DAEMON@example.test\r\nSubject: bounce\r\n\r\nhi\r\n.\r\n")
        assert smtp.getreply()[0] == 250
    assert [(m.sender, m.recipients) for m in hop.messages] == [("<>", ["Postmaster"])]


@pytest.fixture
def milter_port(tmp_path: Path) -> Iterator[int]:
    with ServiceThread(milter([], "scope", "inet:0@127.0.0.1"), state_dir=str(tmp_path)) as thread:
        yield thread.port


@pytest.mark.parametrize("address", NO_DOMAIN)
def test_milter_refuses_addresses_without_a_domain(milter_port: int, address: str) -> None:
    with connections(milter_port) as connect:
        wire = connect()
        for command, data in ((b"C", CONNECT), (b"H", b"helo.example.test\0")):
            wire.send(command, data)
            assert wire.read() == (b"c", b"")
        wire.send(b"M", b"<alice@example.test>\0")
        assert wire.read() == (b"c", b"")
        wire.send(b"R", f"<{address}>\0".encode())
        assert wire.read() == (b"y", b"501 5.1.3 Bad recipient address syntax\0")
        wire.send(b"R", b"<Postmaster>\0")  # RFC 5321 4.5.1
        assert wire.read() == (b"c", b"")
        second = connect()
        second.send(b"C", CONNECT)
        assert second.read() == (b"c", b"")
        second.send(b"M", f"<{address}>\0".encode())
        assert second.read() == (b"y", b"501 5.1.7 Bad sender address syntax\0")


def test_the_rule_itself() -> None:
    assert address_problem("example.com", need_domain=True) == "no domain (an address is local@domain)"
    assert address_problem("bob@", need_domain=True) == "empty domain"
    assert address_problem("@example.com", need_domain=True) == "empty local part"
    assert address_problem("PostMaster", need_domain=True) == ""
    assert address_problem("postmaster", allow_empty=True, need_domain=True) != ""  # not as a sender
    assert address_problem("", allow_empty=True, need_domain=True) == ""
    assert address_problem("user@[192.0.2.1]", need_domain=True) == ""
    assert address_problem("root") == ""  # sgfilterd and the outgoing checks: a local user name
