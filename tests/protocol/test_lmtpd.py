"""The lmtpd content filter on real sockets: LHLO, a reply per recipient, per-recipient
policies and delivery, faults of one recipient, bad input."""

from __future__ import annotations

import smtplib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SMTPEnvelope

from mailsift import local_maildir, quarantine, regexp_scan, smtpd
from mailsift.delivery.next_hop import lmtp_relay
from mailsift.errors import ConfigError, ScannerError
from mailsift.message.result import Result
from mailsift.scanners.base import Scanner, Target
from mailsift.services.lmtpd import lmtpd
from mailsift.settings import Settings
from mailsift.testing import RecordingServer, ServiceThread, free_port, smtp_session_lines
from tests.helpers.messages import message

HELLO = regexp_scan([("Hello-Word", r"hello")])


class Counting(Scanner):
    """Records the recipients of each message it scans; never detects."""

    name = "counting"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def scan(self, target: Target) -> Result:
        self.calls.append(list(target.mail.envelope.recipients))
        return Result()


class Closable(Scanner):
    """Counts how often its resources are released."""

    name = "closable"

    def __init__(self) -> None:
        self.closed = 0

    async def scan(self, target: Target) -> Result:
        return Result()

    async def close_resources(self) -> None:
        self.closed += 1


class Failing(Scanner):
    name = "failing"

    async def scan(self, target: Target) -> Result:
        raise ScannerError("engine down")


class PickyServer(RecordingServer):
    """The recording next hop, answering chosen recipients with a chosen RCPT reply."""

    def __init__(self, refuse: dict[str, str]) -> None:
        super().__init__()
        self.refuse = refuse

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: SMTPEnvelope, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        return await super().handle_RCPT(server, session, envelope, address, options)


@pytest.fixture
def next_hop() -> Iterator[PickyServer]:
    with PickyServer({}) as server:
        yield server


@pytest.fixture
def start(tmp_path: Path, next_hop: PickyServer) -> Iterator[Callable[..., ServiceThread]]:
    """Starts services; they stop (closing their next-hop connections) before ``next_hop`` does."""
    started: list[ServiceThread] = []

    def make(service: Any, state: str = "state") -> ServiceThread:
        thread = ServiceThread(service, Settings(state_dir=str(tmp_path / state)))
        started.append(thread.start())
        return thread

    yield make
    for thread in reversed(started):
        thread.stop()


def lmtp(port: int, recipients: list[str], data: bytes, *, sender: str = "alice@example.test") -> list[str]:
    """One pipelined LMTP session; the replies after the content (one per RCPT)."""
    payload = f"LHLO client.test\r\nMAIL FROM:<{sender}>\r\n".encode()
    payload += b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in recipients)
    payload += b"DATA\r\n" + data + b".\r\nQUIT\r\n"
    lines = smtp_session_lines("127.0.0.1", port, payload)
    start = next(i for i, line in enumerate(lines) if line.startswith("354 "))
    assert lines[-1].startswith("221 "), lines
    return lines[start + 1 : -1]


def codes(lines: list[str]) -> list[int]:
    return [int(line[:3]) for line in lines]


def quarantined(tmp_path: Path, category: str) -> list[Path]:
    folder = tmp_path / "state" / "quarantine" / category / "new"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_lhlo_greeting_and_features(start: Callable[..., ServiceThread], next_hop: PickyServer) -> None:
    flt = start(lmtpd([], "127.0.0.1", 0, next_hop=("127.0.0.1", next_hop.port), max_size=100_000))
    lines = smtp_session_lines("127.0.0.1", flt.port, b"LHLO client.test\r\nHELO x\r\nEHLO x\r\nQUIT\r\n")
    assert lines[0].startswith("220 ")
    assert "LMTP" in lines[0]
    features = {line[4:].split()[0] for line in lines[1:] if line.startswith("250")}
    assert {"PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8", "SIZE", "XFORWARD"} <= features
    assert "SIZE 100000" in {line[4:] for line in lines}
    assert [line[:3] for line in lines[-3:]] == ["500", "500", "221"]  # HELO and EHLO are not LMTP


def test_three_recipients_three_policies_three_replies(
    start: Callable[..., ServiceThread], next_hop: PickyServer, tmp_path: Path
) -> None:
    policies = {
        r"^carol@": [HELLO],  # rejected
        r"^dave@": [quarantine("policy", HELLO)],  # held
        r"^eve@": [Failing()],  # scanner down: deferred
        "default": [],  # delivered
    }
    flt = start(lmtpd(policies, "127.0.0.1", 0, next_hop=("127.0.0.1", next_hop.port)))
    data = message("three policies", "hello\r\n")
    rcpts = ["bob@example.test", "carol@example.test", "dave@example.test", "eve@example.test"]
    replies = lmtp(flt.port, rcpts, data)
    assert codes(replies) == [250, 550, 250, 451], replies
    assert "Hello-Word" in replies[1]
    assert "quarantine" in replies[2]
    assert replies[0] != replies[2]  # delivered and held say so differently
    [got] = next_hop.messages
    assert (got.recipients, got.data) == (["bob@example.test"], data)
    [held] = quarantined(tmp_path, "policy")
    assert b"X-Envelope-To: <dave@example.test>\r\n" in held.read_bytes()
    assert b"X-Envelope-To: <bob@" not in held.read_bytes()  # the copy is dave's alone


def test_one_scan_per_scanner_set_and_one_delivery_per_group(
    start: Callable[..., ServiceThread], next_hop: PickyServer
) -> None:
    default, partners = Counting(), Counting()
    partner_set = [partners]
    service = lmtpd(
        [default],
        "127.0.0.1",
        0,
        per_recipient=[(r"@partner\.test$", partner_set), (r"^boss@partner2\.test$", partner_set)],
        next_hop=("127.0.0.1", next_hop.port),
    )
    flt = start(service)
    rcpts = ["a@example.test", "x@PARTNER.test", "b@example.test", "boss@partner2.test", "a@example.test"]
    replies = lmtp(flt.port, rcpts, message("groups"))
    assert codes(replies) == [250] * 5  # one reply per RCPT, the repeated one included
    assert default.calls == [["a@example.test", "b@example.test"]]
    assert partners.calls == [["x@PARTNER.test", "boss@partner2.test"]]  # two patterns, one scanner set: one scan
    assert sorted(m.recipients for m in next_hop.messages) == [
        ["a@example.test", "b@example.test"],
        ["x@PARTNER.test", "boss@partner2.test"],
    ]


def test_pipelined_transactions_in_one_write(start: Callable[..., ServiceThread], next_hop: PickyServer) -> None:
    flt = start(lmtpd({r"^carol@": [HELLO], "default": []}, "127.0.0.1", 0, next_hop=("127.0.0.1", next_hop.port)))
    first, second = message("first", "hello\r\n"), message("second", "hi\r\n")
    payload = (
        b"LHLO c\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<bob@example.test>\r\nRCPT TO:<carol@example.test>\r\n"
        b"DATA\r\n" + first + b".\r\n"
        b"MAIL FROM:<a@example.test>\r\nRCPT TO:<carol@example.test>\r\nDATA\r\n" + second + b".\r\nQUIT\r\n"
    )
    lines = smtp_session_lines("127.0.0.1", flt.port, payload)
    finals = [line[:3] for line in lines if line[3:4] == " "]
    assert finals == ["220", "250", "250", "250", "250", "354", "250", "550", "250", "250", "354", "250", "221"]
    assert [(m.recipients, m.data) for m in next_hop.messages] == [
        (["bob@example.test"], first),
        (["carol@example.test"], second),
    ]


def test_next_hop_refusing_one_recipient_fails_only_that_one(start: Callable[..., ServiceThread]) -> None:
    refuse = {"carol@example.test": "450 4.2.1 mailbox busy", "dave@example.test": "550 5.1.1 no such user"}
    with PickyServer(refuse) as picky:
        flt = start(lmtpd([], "127.0.0.1", 0, next_hop=("127.0.0.1", picky.port)))
        rcpts = ["bob@example.test", "carol@example.test", "dave@example.test", "eve@example.test"]
        replies = lmtp(flt.port, rcpts, message("one busy"))
        assert codes(replies) == [250, 451, 554, 250], replies
        assert "no such user" in replies[2]
        [got] = picky.messages
        assert got.recipients == ["bob@example.test", "eve@example.test"]
        # All refused: no content is sent, each gets its own answer, and the pooled connection still works.
        replies = lmtp(flt.port, ["carol@example.test", "dave@example.test"], message("all refused"))
        assert codes(replies) == [451, 554]
        picky.refuse.clear()
        assert codes(lmtp(flt.port, ["carol@example.test"], message("recovered"))) == [250]
        assert [m.recipients for m in picky.messages] == [got.recipients, ["carol@example.test"]]
        flt.stop()  # before the next hop it holds a connection to


def test_next_hop_down_only_fails_the_recipients_delivered_there(
    start: Callable[..., ServiceThread], next_hop: PickyServer
) -> None:
    # The partner's scanner set delivers through a next hop that is down; the others' is up.
    partners = lmtpd(
        {r"@partner\.test$": [quarantine("policy", HELLO)], "default": []},
        "127.0.0.1",
        0,
        next_hop=("127.0.0.1", free_port()),
    )
    flt = start(partners)
    replies = lmtp(flt.port, ["x@partner.test", "bob@example.test"], message("down", "hello\r\n"))
    assert codes(replies) == [250, 451], replies  # held in quarantine needs no next hop; delivery does
    flt2 = start(lmtpd([], "127.0.0.1", 0, next_hop=("127.0.0.1", next_hop.port)), state="state2")
    assert codes(lmtp(flt2.port, ["bob@example.test"], message("up"))) == [250]


def test_maildir_delivery_fails_per_recipient(start: Callable[..., ServiceThread], tmp_path: Path) -> None:
    mail_root = tmp_path / "mail"
    mail_root.mkdir()
    (mail_root / "carol@example.test").write_text("a file where the Maildir should be")
    flt = start(lmtpd([], "127.0.0.1", 0, next_hop=local_maildir(str(mail_root))))
    data = message("maildir")
    replies = lmtp(flt.port, ["bob@example.test", "carol@example.test"], data)
    assert codes(replies) == [250, 451], replies
    [stored] = (mail_root / "bob@example.test" / "new").iterdir()
    assert stored.read_bytes().endswith(data)


def test_lmtp_next_hop_answers_per_recipient_after_the_content(
    start: Callable[..., ServiceThread], next_hop: PickyServer
) -> None:
    # A real LMTP next hop: a second lmtpd whose own policies refuse carol and defer dave.
    downstream = start(
        lmtpd(
            {r"^carol@": [HELLO], r"^dave@": [Failing()], "default": []},
            "127.0.0.1",
            0,
            next_hop=("127.0.0.1", next_hop.port),
        ),
        state="downstream",
    )
    front = start(lmtpd([], "127.0.0.1", 0, next_hop=lmtp_relay("127.0.0.1", downstream.port)))
    data = message("relayed", "hello\r\n")
    replies = lmtp(front.port, ["bob@example.test", "carol@example.test", "dave@example.test"], data)
    assert codes(replies) == [250, 554, 451], replies
    assert "Hello-Word" in replies[1]  # the next hop's reason is passed on
    [got] = next_hop.messages
    assert (got.recipients, got.data) == (["bob@example.test"], data)


def dying_lmtp_next_hop(listener: socket.socket) -> None:
    """Takes one LMTP transaction for two recipients, answers for the first, then hangs up."""
    connection, _ = listener.accept()
    with connection, connection.makefile("rb") as lines:
        connection.sendall(b"220 dying.test LMTP\r\n")
        assert lines.readline().startswith(b"LHLO ")
        connection.sendall(b"250-dying.test\r\n250 PIPELINING\r\n")
        envelope = [lines.readline() for _ in range(4)]  # MAIL, RCPT, RCPT, DATA
        assert envelope[-1] == b"DATA\r\n", envelope
        connection.sendall(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        while lines.readline() != b".\r\n":
            pass
        connection.sendall(b"250 2.0.0 first delivered\r\n")


def test_lmtp_next_hop_dying_between_answers_defers_the_unanswered(start: Callable[..., ServiceThread]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(30)
        next_hop = threading.Thread(target=dying_lmtp_next_hop, args=(listener,), daemon=True)
        next_hop.start()
        front = start(lmtpd([], "127.0.0.1", 0, next_hop=lmtp_relay("127.0.0.1", listener.getsockname()[1])))
        replies = lmtp(front.port, ["bob@example.test", "carol@example.test"], message("dying"))
        next_hop.join(30)
    assert codes(replies) == [250, 451], replies


def test_smtpd_over_an_lmtp_next_hop_answers_once(start: Callable[..., ServiceThread], next_hop: PickyServer) -> None:
    downstream = start(
        lmtpd({r"^carol@": [HELLO], "default": []}, "127.0.0.1", 0, next_hop=("127.0.0.1", next_hop.port)),
        state="downstream",
    )
    front = start(smtpd([], "127.0.0.1", 0, next_hop=lmtp_relay("127.0.0.1", downstream.port)))
    with smtplib.SMTP("127.0.0.1", front.port, timeout=30) as client:
        client.sendmail("alice@example.test", ["bob@example.test"], message("all ok", "hello\r\n"))
        with pytest.raises(smtplib.SMTPDataError) as error:  # SMTP answers once: partial -> retry all
            client.sendmail("alice@example.test", ["bob@example.test", "carol@example.test"], message("b", "hello\r\n"))
        assert error.value.smtp_code == 451
        with pytest.raises(smtplib.SMTPDataError) as error:
            client.sendmail("alice@example.test", ["carol@example.test"], message("c", "hello\r\n"))
        assert error.value.smtp_code == 554
    assert [m.recipients for m in next_hop.messages] == [["bob@example.test"], ["bob@example.test"]]


def test_bad_input_gets_clear_replies_per_recipient(start: Callable[..., ServiceThread], next_hop: PickyServer) -> None:
    flt = start(lmtpd([], "127.0.0.1", 0, next_hop=("127.0.0.1", next_hop.port), max_size=30_000))
    rcpts = b"RCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\n"
    payload = (
        b"MAIL FROM:<a@example.test>\r\n"  # before LHLO
        b"LHLO c\r\n"
        b"DATA\r\n"  # no transaction
        b"MAIL FROM broken\r\n"
        b"MAIL FROM:<a@example.test>\r\n"
        b"RCPT TO:<bad address@example.test>\r\n"
        + rcpts
        + b"DATA\r\n"
        + (b"X" * 999 + b"\r\n") * 40
        + b".\r\n"  # too big
        b"MAIL FROM:<a@example.test>\r\n"
        + rcpts
        + b"DATA\r\nSubject: long\r\n\r\n"
        + b"Y" * 20000
        + b"\r\n.\r\n"  # line too long
        b"NOSUCHVERB\r\n"
        b"QUIT\r\n"
    )
    lines = smtp_session_lines("127.0.0.1", flt.port, payload)
    finals = [line[:3] for line in lines if line[3:4] == " "]
    assert finals == [
        "220",
        "503",  # MAIL before LHLO
        "250",
        "503",  # DATA without RCPT
        "501",
        "250",
        "501",  # bad recipient syntax
        *["250"] * 3,
        "354",
        *["552"] * 3,  # too big: one reply per recipient, so the client stays in step
        "250",
        *["250"] * 3,
        "354",
        *["500"] * 3,  # line too long, per recipient
        "500",
        "221",
    ], lines
    assert next_hop.messages == []


def test_client_hanging_up_inside_data_delivers_nothing(
    start: Callable[..., ServiceThread], next_hop: PickyServer
) -> None:
    flt = start(lmtpd([], "127.0.0.1", 0, next_hop=("127.0.0.1", next_hop.port)))
    payload = b"LHLO c\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\nSubject: cut\r\n\r\npartial"
    with socket.create_connection(("127.0.0.1", flt.port), timeout=10) as sock:
        sock.sendall(payload)
        sock.recv(65536)
    assert codes(lmtp(flt.port, ["b@example.test"], message("after"))) == [250]  # still serving
    assert [m.data for m in next_hop.messages] == [message("after")]


def test_drain_closes_every_scanner_set_once(start: Callable[..., ServiceThread], next_hop: PickyServer) -> None:
    shared, own = Closable(), Closable()
    service = lmtpd(
        {r"^a@": [own, shared], r"^b@": [shared], "default": [shared]},
        "127.0.0.1",
        0,
        next_hop=("127.0.0.1", next_hop.port),
    )
    flt = start(service)
    assert codes(lmtp(flt.port, ["a@example.test", "b@example.test", "c@example.test"], message("x"))) == [250] * 3
    flt.stop()
    assert (shared.closed, own.closed) == (1, 1)


@pytest.mark.parametrize(
    ("scanners", "options", "error"),
    [
        ({r"@a\.test$": []}, {}, "needs a 'default' entry"),
        ({"(": [], "default": []}, {}, "bad recipient pattern"),
        ({"default": []}, {"per_recipient": [("x", [])]}, "not both"),
        ([], {"per_recipient": [("only a pattern",)]}, "pairs"),
        ([], {"per_recipient": [(r"@a\.test$", ["not a scanner"])]}, "expected a scanner"),
    ],
)
def test_bad_policies_are_config_errors(scanners: Any, options: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        lmtpd(scanners, "127.0.0.1", 10024, **options)


def test_describe_lists_each_pattern_and_its_scanners() -> None:
    service = lmtpd({r"^carol@": [HELLO], r"^x@": [], "default": []}, "127.0.0.1", 10024)
    assert service.describe() == "lmtpd(127.0.0.1:10024; ^carol@: regexp_scan([Hello-Word]); ^x@: no scanners)"
