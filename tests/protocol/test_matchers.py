"""The matchers of issue 16 on real sockets: recipient_policy answered at RCPT (smtpd, milter),
smtp_comm on the HELO each front end passes, tempfail's deliberate 4xx (and its hold), and the
condition interscanners regexp_find, sql_find and check_level, through smtpd and the milter."""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailsift import attach_name, const, greylist, reject
from mailsift.scanners.find import check_level, regexp_find, sql_find
from mailsift.scanners.smtpcomm import smtp_comm
from mailsift.scanners.tempfail import tempfail
from mailsift.services import milter_protocol as mp
from mailsift.services.lmtpd import lmtpd
from mailsift.services.milter import milter
from mailsift.services.rcptpolicy import recipient_policy
from mailsift.services.smtpd import smtpd
from mailsift.settings import Settings
from mailsift.storage import db
from mailsift.testing import RecordingServer, ServiceThread, smtp_session_lines
from tests.helpers.milter import MilterWire

ZIP = (
    b"From: a@example.net\r\nMessage-ID: <zip@example.net>\r\nSubject: invoice\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: application/zip; name=invoice.zip\r\n\r\nPK\r\n--b--\r\n"
)
PLAIN = b"From: a@example.net\r\nSubject: hello\r\n\r\nhello\r\n"
OUTBREAK = attach_name({"Outbreak.ZIP": r"\.zip$"})
USER_UNKNOWN = "SELECT 1 FROM users WHERE address = :recipient"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def users(tmp_path: Path) -> str:
    path = tmp_path / "users.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE users (address TEXT)")
        connection.executemany("INSERT INTO users VALUES (?)", [("bob@example.test",), ("carol@example.test",)])
    return f"sqlite:///{path}"


def unknown_users(url: str) -> recipient_policy:
    lookup = sql_find(USER_UNKNOWN, const(1.0, "User.Unknown"), url=url, invert=True)
    return recipient_policy([reject(lookup, message="User unknown")], reject="550 5.1.1")


@pytest.fixture
def downstream() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


@pytest.fixture
def start(tmp_path: Path, downstream: RecordingServer) -> Iterator[Callable[..., ServiceThread]]:
    """Services in threads, stopped before ``downstream`` (their pooled connections to it close first)."""
    started: list[ServiceThread] = []
    database = db.sqlite()
    database.configure(str(tmp_path / "state"))

    def make(service: Any) -> ServiceThread:
        thread = ServiceThread(service, Settings(state_dir=str(tmp_path / "state"), database=database))
        started.append(thread.start())
        return thread

    yield make
    for thread in started:
        thread.stop()
    database.dispose()


def filter_with(downstream: RecordingServer, scanners: list[Any], **options: Any) -> smtpd:
    return smtpd(scanners, "127.0.0.1", 0, next_hop=("127.0.0.1", downstream.port), **options)


def finals(port: int, payload: bytes) -> list[str]:
    return [line for line in smtp_session_lines("127.0.0.1", port, payload) if line[3:4] == " "]


def transaction(recipients: list[str], data: bytes | None, helo: str = "mx.example.net", xforward: str = "") -> bytes:
    """One SMTP session; ``data`` None: DATA alone, for a session whose recipients are all refused
    (the client then sends no content: the 503 is the last answer before QUIT)."""
    lines = [f"EHLO {helo}", *([f"XFORWARD {xforward}"] if xforward else []), "MAIL FROM:<a@example.net>"]
    lines += [f"RCPT TO:<{r}>" for r in recipients]
    content = b"" if data is None else data + b".\r\n"
    return ("\r\n".join([*lines, "DATA"]) + "\r\n").encode() + content + b"QUIT\r\n"


# --------------------------------------------------------------------------- recipient_policy, smtpd


def test_smtpd_refuses_an_unknown_recipient_at_rcpt_and_delivers_to_the_others(
    start: Callable[..., ServiceThread], downstream: RecordingServer, users: str
) -> None:
    flt = start(filter_with(downstream, [], recipient_policy=unknown_users(users)))
    lines = finals(flt.port, transaction(["bob@example.test", "eve@example.test", "carol@example.test"], PLAIN))
    assert lines[3:6] == ["250 2.1.5 Ok", "550 5.1.1 User unknown", "250 2.1.5 Ok"], lines
    assert lines[-2].startswith("250 "), lines
    [received] = downstream.messages
    assert received.recipients == ["bob@example.test", "carol@example.test"]


def test_smtpd_recipient_policy_failure_is_451_never_5xx(
    start: Callable[..., ServiceThread], downstream: RecordingServer, tmp_path: Path
) -> None:
    broken = sql_find(USER_UNKNOWN, const(1.0, "User.Unknown"), url=f"sqlite:///{tmp_path}/empty.db", invert=True)
    flt = start(filter_with(downstream, [], recipient_policy=recipient_policy([reject(broken)])))
    lines = finals(flt.port, transaction(["bob@example.test"], None))
    assert lines[3].startswith("451 4.3.0 "), lines  # no such table: the client retries
    assert not any(line.startswith("5") for line in lines[:4]), lines  # (then 503: DATA with no recipient)
    assert downstream.messages == []


def test_smtpd_greylists_and_tempfails_at_rcpt_with_450(
    start: Callable[..., ServiceThread], downstream: RecordingServer
) -> None:
    policy = recipient_policy([greylist(min=300), tempfail(smtp_comm("Outbreak.Host", client_address=r"^10\."))])
    flt = start(filter_with(downstream, [], recipient_policy=policy))
    lines = finals(flt.port, transaction(["bob@example.test"], None))
    assert lines[3] == "450 4.7.1 Greylisted, please try again in 300 seconds", lines
    assert lines[4].startswith("503 "), lines  # DATA without an accepted recipient
    assert downstream.messages == []


def test_smtpd_greylisting_at_rcpt_passes_later_with_its_header(
    start: Callable[..., ServiceThread], downstream: RecordingServer
) -> None:
    clock = Clock()
    flt = start(filter_with(downstream, [], recipient_policy=recipient_policy([greylist(min=300, clock=clock)])))
    assert finals(flt.port, transaction(["bob@example.test"], None))[3].startswith("450 4.7.1 ")
    clock.now += 301
    lines = finals(flt.port, transaction(["bob@example.test", "carol@example.test"], PLAIN))
    assert lines[3] == "250 2.1.5 Ok", lines
    assert lines[4].startswith("450 4.7.1 "), lines  # carol's triplet is new
    assert lines[-2].startswith("250 "), lines
    [received] = downstream.messages
    assert received.recipients == ["bob@example.test"]
    assert received.data.startswith(b"X-Greylist: delayed 301 seconds by mailsift greylisting\r\nFrom: ")


def test_lmtpd_answers_rcpt_with_the_policy_too(
    start: Callable[..., ServiceThread], downstream: RecordingServer, users: str
) -> None:
    service = lmtpd([], "127.0.0.1", 0, next_hop=("127.0.0.1", downstream.port), recipient_policy=unknown_users(users))
    flt = start(service)
    payload = b"LHLO postfix.test\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<eve@example.test>\r\n"
    payload += b"RCPT TO:<bob@example.test>\r\nDATA\r\n" + PLAIN + b".\r\nQUIT\r\n"
    lines = finals(flt.port, payload)
    assert lines[3:5] == ["550 5.1.1 User unknown", "250 2.1.5 Ok"], lines
    assert lines[-2].startswith("250 "), lines  # one reply: the one recipient accepted
    assert [m.recipients for m in downstream.messages] == [["bob@example.test"]]


# --------------------------------------------------------------------------- smtp_comm, smtpd


@pytest.mark.parametrize(
    ("helo", "xforward", "code"),
    [
        ("localhost", "", "550"),
        ("mx.example.net", "", "250"),
        ("postfix.example.test", "HELO=localhost ADDR=192.0.2.7", "550"),  # the original client's HELO
        ("localhost", "HELO=mx.example.net", "250"),
    ],
)
def test_smtpd_passes_the_helo_to_smtp_comm(
    start: Callable[..., ServiceThread], downstream: RecordingServer, helo: str, xforward: str, code: str
) -> None:
    flt = start(filter_with(downstream, [reject(smtp_comm("Forged.HELO", helo=r"^localhost$"))]))
    lines = finals(flt.port, transaction(["bob@example.test"], PLAIN, helo=helo, xforward=xforward))
    assert lines[-2].startswith(code), lines
    if code == "550":
        assert "Forged.HELO" in lines[-2]


# --------------------------------------------------------------------------- tempfail, smtpd


def test_smtpd_tempfail_defers_the_outbreak_then_the_hold_lets_the_retry_through(
    start: Callable[..., ServiceThread], downstream: RecordingServer
) -> None:
    clock = Clock()
    rule = tempfail(OUTBREAK, message="451 4.7.1 Outbreak in progress, try later", hold="1h", clock=clock)
    flt = start(filter_with(downstream, [rule]))
    first = finals(flt.port, transaction(["bob@example.test"], ZIP))
    assert first[-2] == "451 4.7.1 Outbreak in progress, try later", first
    clock.now += 1800
    assert finals(flt.port, transaction(["bob@example.test"], ZIP))[-2].startswith("451 4.7.1 ")
    assert finals(flt.port, transaction(["bob@example.test"], PLAIN))[-2].startswith("250 ")  # no zip: delivered
    clock.now += 1800
    released = finals(flt.port, transaction(["bob@example.test"], ZIP))
    assert released[-2].startswith("250 "), released
    assert [m.data.count(b"invoice.zip") for m in downstream.messages] == [0, 1]


def test_smtpd_conditions_regexp_find_sql_find_check_level(
    start: Callable[..., ServiceThread], downstream: RecordingServer, users: str
) -> None:
    scanners = [
        reject(regexp_find(r"(?im)^Subject: invoice", OUTBREAK, where="headers"), message="Invoice with a ZIP"),
        reject(sql_find("SELECT 1 FROM users WHERE address = :sender", const(1.0, "Listed"), url=users)),
        reject(check_level(0.5, const(0.7, "Scored"))),
    ]
    flt = start(filter_with(downstream, scanners))
    assert finals(flt.port, transaction(["bob@example.test"], ZIP))[-2] == "550 5.7.1 Invoice with a ZIP"
    scored = finals(flt.port, transaction(["bob@example.test"], PLAIN))[-2]
    assert scored.startswith("550 "), scored
    assert "Scored" in scored


# --------------------------------------------------------------------------- milter


Answer = tuple[bytes, bytes]


class MTA(MilterWire):
    """An MTA that asks for an answer at every step (as Sendmail; Postfix when the milter wants one)."""

    def __init__(self, port: int, helo: str = "helo.example.test") -> None:
        super().__init__(port)
        self.send(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF))
        command, data = self.read()
        assert command == b"O"
        self.protocol = struct.unpack(">III", data[:12])[2]
        self.step(b"C", b"client.example.test\0" + b"4" + struct.pack(">H", 4567) + b"192.0.2.10\0", mp.SMFIP_NR_CONN)
        self.step(b"H", helo.encode() + b"\0", mp.SMFIP_NR_HELO)

    def step(self, command: bytes, data: bytes, no_reply: int) -> tuple[bytes, bytes] | None:
        self.send(command, data)
        if self.protocol & no_reply:
            return None
        return self.read()

    def message(self, recipients: list[str], data: bytes) -> tuple[list[Answer | None], Answer]:
        """The answers to each RCPT, and the final answer."""
        self.send(b"D", b"Mi\0QID1\0")
        self.step(b"M", b"<a@example.net>\0", mp.SMFIP_NR_MAIL)
        answers = [self.step(b"R", f"<{r}>\0".encode(), mp.SMFIP_NR_RCPT) for r in recipients]
        head, _, body = data.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b": ")
            self.step(b"L", name + b"\0" + value + b"\0", mp.SMFIP_NR_HDR)
        self.step(b"N", b"", mp.SMFIP_NR_EOH)
        self.step(b"B", body, mp.SMFIP_NR_BODY)
        self.send(b"E")
        self.edits: list[Answer] = []
        while True:
            answer = self.read()
            if answer[0] in b"acdrty":
                return answers, answer
            self.edits.append(answer)  # header and body edits come before the final answer


def test_milter_answers_each_rcpt_with_the_recipient_policy(start: Callable[..., ServiceThread], users: str) -> None:
    flt = start(milter([], "mailsift", "inet:0@127.0.0.1", recipient_policy=unknown_users(users)))
    mta = MTA(flt.port)
    assert not mta.protocol & mp.SMFIP_NR_RCPT  # the milter asked to answer RCPT
    try:
        answers, final = mta.message(["bob@example.test", "eve@example.test"], PLAIN)
    finally:
        mta.sock.close()
    assert answers[0] == (mp.SMFIR_CONTINUE, b"")
    assert answers[1] is not None
    assert answers[1][0] == mp.SMFIR_REPLYCODE
    assert answers[1][1].startswith(b"550 5.1.1 User unknown")
    assert final[0] == mp.SMFIR_ACCEPT


def test_milter_greylisting_at_rcpt_adds_its_header_when_passed(start: Callable[..., ServiceThread]) -> None:
    clock = Clock()
    policy = recipient_policy([greylist(min=300, clock=clock)])
    flt = start(milter([], "mailsift", "inet:0@127.0.0.1", recipient_policy=policy))
    mta = MTA(flt.port)
    try:
        answers, _ = mta.message(["bob@example.test"], PLAIN)
        assert answers[0] is not None
        assert answers[0][1].startswith(b"450 4.7.1 Greylisted")
        clock.now += 301
        answers, final = mta.message(["bob@example.test"], PLAIN)
    finally:
        mta.sock.close()
    assert answers[0] == (mp.SMFIR_CONTINUE, b"")
    assert final == (mp.SMFIR_ACCEPT, b"")
    assert mta.edits == [(mp.SMFIR_ADDHEADER, b"X-Greylist\0delayed 301 seconds by mailsift greylisting\0")]


def test_milter_without_a_policy_keeps_rcpt_unanswered(start: Callable[..., ServiceThread]) -> None:
    flt = start(milter([], "mailsift", "inet:0@127.0.0.1"))
    mta = MTA(flt.port)
    try:
        assert mta.protocol & mp.SMFIP_NR_RCPT
    finally:
        mta.sock.close()


@pytest.mark.parametrize(("helo", "answer"), [("localhost", b"550 5.7.1 "), ("helo.example.test", None)])
def test_milter_passes_the_helo_to_smtp_comm(
    start: Callable[..., ServiceThread], helo: str, answer: bytes | None
) -> None:
    flt = start(milter([reject(smtp_comm("Forged.HELO", helo=r"^localhost$"))], "mailsift", "inet:0@127.0.0.1"))
    mta = MTA(flt.port, helo=helo)
    try:
        _, final = mta.message(["bob@example.test"], PLAIN)
    finally:
        mta.sock.close()
    if answer is None:
        assert final[0] == mp.SMFIR_ACCEPT
    else:
        assert final[0] == mp.SMFIR_REPLYCODE
        assert final[1].startswith(answer)
        assert b"Forged.HELO" in final[1]


def test_milter_tempfail_answers_451_and_the_conditions_work(start: Callable[..., ServiceThread], users: str) -> None:
    scanners = [
        tempfail(regexp_find(r"(?im)^Subject: invoice", OUTBREAK, where="headers"), message="451 4.7.1 Outbreak"),
        reject(
            check_level(0.5, sql_find("SELECT 1 FROM users WHERE address = :recipient", const(0.7, "Hi"), url=users))
        ),
    ]
    flt = start(milter(scanners, "mailsift", "inet:0@127.0.0.1"))
    mta = MTA(flt.port)
    try:
        _, deferred = mta.message(["bob@example.test"], ZIP)
        _, rejected = mta.message(["carol@example.test"], PLAIN)
        _, accepted = mta.message(["dan@example.test"], PLAIN)
    finally:
        mta.sock.close()
    assert deferred[0] == mp.SMFIR_REPLYCODE
    assert deferred[1].startswith(b"451 4.7.1 Outbreak")
    assert rejected[0] == mp.SMFIR_REPLYCODE
    assert rejected[1].startswith(b"550 ")
    assert accepted[0] == mp.SMFIR_ACCEPT
