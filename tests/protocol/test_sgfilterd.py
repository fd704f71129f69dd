"""sgfilterd on real sockets: SAGATOR's protocol, each status, the returned message, bad input."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailsift import add_header, const, deliver, drop, modify_subject, quarantine, regexp_scan, reject, sender_regexp
from mailsift.errors import ScannerError
from mailsift.message.result import Result
from mailsift.scanners.base import Scanner, Target
from mailsift.services.sgfilter_client import Answer, ask
from mailsift.services.sgfilterd import sgfilterd
from mailsift.settings import Settings
from mailsift.testing import ServiceThread
from tests.helpers.messages import message
from tests.helpers.samples import EICAR_TEXT as EICAR

EICAR_SCAN = regexp_scan([("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")])
CLEAN = message("clean") + b"second line\r\n.a dot line\r\n"
INFECTED = message("infected", body=EICAR + "\r\n")


class Recording(Scanner):
    """Clean verdict; records the envelope and bytes it was given."""

    name = "recording"

    def __init__(self) -> None:
        self.seen: list[tuple[str, list[str], bytes]] = []

    async def scan(self, target: Target) -> Result:
        env = target.mail.envelope
        self.seen.append((env.sender, list(env.recipients), target.data))
        return Result(0.0, "", self.name)


class Broken(Scanner):
    name = "broken"

    async def scan(self, target: Target) -> Result:
        raise ScannerError("broken: daemon down")


Make = Callable[..., ServiceThread]
ENV = b"MAIL FROM: a@example.test\nRCPT TO: b@x\n"
BAD_LENGTH = "501 0.00 Syntax: DATA length (a decimal number of bytes)"


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Make]:
    started: list[ServiceThread] = []

    def make(scanners: list[Any], **options: Any) -> ServiceThread:
        thread = ServiceThread(sgfilterd(scanners, "127.0.0.1", 0, **options), Settings(state_dir=str(tmp_path)))
        started.append(thread.start())
        return thread

    yield make
    for thread in started:
        thread.stop()


def request(
    message: bytes, sender: str = "alice@example.test", rcpts: tuple[str, ...] = ("bob@example.test",)
) -> bytes:
    lines = [f"MAIL FROM: {sender}", *(f"RCPT TO: {r}" for r in rcpts), f"DATA {len(message)}"]
    return ("\n".join(lines) + "\n").encode() + message


def exchange(port: int, payload: bytes, *, half_close: bool = True, timeout: float = 20) -> bytes:
    """Send ``payload`` (then EOF, unless ``half_close`` is False); everything until the daemon closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def status_line(answer: bytes) -> str:
    return answer.split(b"\n", 1)[0].decode()


# --------------------------------------------------------------------------- verdicts


def test_250_clean_returns_the_message_byte_for_byte(make_daemon: Make) -> None:
    recording = Recording()
    daemon = make_daemon([recording, EICAR_SCAN])
    answer = exchange(daemon.port, request(CLEAN, "<alice@example.test>", ("<bob@example.test>", "carol@example.test")))
    assert answer == b"250 0.00\n" + CLEAN
    assert recording.seen == [("alice@example.test", ["bob@example.test", "carol@example.test"], CLEAN)]


def test_crlf_lines_and_empty_sender_are_accepted(make_daemon: Make) -> None:
    recording = Recording()
    daemon = make_daemon([recording])
    payload = f"MAIL FROM: <>\r\nrcpt to:bob@example.test\r\nDATA {len(CLEAN)}\r\n".encode() + CLEAN
    assert exchange(daemon.port, payload) == b"250 0.00\n" + CLEAN
    assert recording.seen == [("", ["bob@example.test"], CLEAN)]


def test_250_with_the_configs_edits(make_daemon: Make) -> None:
    daemon = make_daemon([add_header("X-Scanned", "mailsift", const(0.0, "scanned")), EICAR_SCAN])
    answer = exchange(daemon.port, request(CLEAN))
    assert answer == b"250 0.00 scanned\nX-Scanned: mailsift\r\n" + CLEAN  # a clean name is still a name


def test_251_detected_but_delivered_with_the_edits(make_daemon: Make) -> None:
    daemon = make_daemon([deliver(modify_subject("[VIRUS] ", EICAR_SCAN))])
    answer = exchange(daemon.port, request(INFECTED))
    assert status_line(answer) == "251 1.00 EICAR-Test"
    assert answer.split(b"\n", 1)[1] == INFECTED.replace(b"Subject: infected", b"Subject: [VIRUS] infected")


def test_550_reject_returns_no_message(make_daemon: Make) -> None:
    daemon = make_daemon([reject(EICAR_SCAN)])
    assert exchange(daemon.port, request(INFECTED)) == b"550 1.00 EICAR-Test\n"
    assert exchange(daemon.port, request(CLEAN)) == b"250 0.00\n" + CLEAN


def test_550_uses_the_envelope_sender(make_daemon: Make) -> None:
    daemon = make_daemon([reject(sender_regexp([("Blocked.Sender", r"^evil@")]))])
    assert exchange(daemon.port, request(CLEAN, "evil@example.test")) == b"550 1.00 Blocked.Sender\n"
    assert exchange(daemon.port, request(CLEAN, "good@example.test")).startswith(b"250 0.00\n")


def test_551_drop(make_daemon: Make) -> None:
    daemon = make_daemon([drop(EICAR_SCAN)])
    assert exchange(daemon.port, request(INFECTED)) == b"551 1.00 EICAR-Test\n"


def test_551_quarantine_keeps_a_copy(make_daemon: Make, tmp_path: Path) -> None:
    daemon = make_daemon([quarantine("virus", EICAR_SCAN)])
    assert exchange(daemon.port, request(INFECTED)) == b"551 1.00 EICAR-Test\n"
    stored = [p for p in (tmp_path / "quarantine").rglob("*") if p.is_file() and p.read_bytes().endswith(INFECTED)]
    assert len(stored) == 1


def test_451_when_a_scanner_fails(make_daemon: Make) -> None:
    daemon = make_daemon([Broken(), EICAR_SCAN])
    assert exchange(daemon.port, request(CLEAN)) == b"451 0.00 ScannerError\n"


def test_451_when_the_quarantine_cannot_be_written(make_daemon: Make, tmp_path: Path) -> None:
    daemon = make_daemon([deliver(quarantine("virus", EICAR_SCAN))])
    quarantine_dir = tmp_path / "quarantine"
    for child in quarantine_dir.iterdir():
        child.rmdir() if child.is_dir() else child.unlink()
    quarantine_dir.rmdir()
    quarantine_dir.write_text("not a directory")  # the copy cannot be stored: never deliver without it
    assert status_line(exchange(daemon.port, request(INFECTED))).startswith("451 ")


def test_client_reads_each_status(make_daemon: Make) -> None:
    cases = {250: [EICAR_SCAN], 251: [deliver(EICAR_SCAN)], 550: [reject(EICAR_SCAN)], 551: [drop(EICAR_SCAN)]}
    for status, scanners in cases.items():
        daemon = make_daemon(scanners)
        body = CLEAN if status == 250 else INFECTED
        answer = ask("127.0.0.1", daemon.port, "alice@example.test", ["bob@example.test"], body, timeout=20)
        expected_message = body if status in (250, 251) else b""
        level, name = (0.0, "") if status == 250 else (1.0, "EICAR-Test")
        assert answer == Answer(status, level, name, expected_message)
    daemon = make_daemon([Broken()])
    assert ask("127.0.0.1", daemon.port, "", ["bob@example.test"], CLEAN, timeout=20).status == 451


def test_a_big_message_round_trips(make_daemon: Make) -> None:
    daemon = make_daemon([add_header("X-Scanned", "yes", const(0.0, "scanned")), EICAR_SCAN])
    big = message("big", body="x" * 998 + "\r\n") * 1  # headers
    big += b"".join(b"%07d" % i + b"y" * 90 + b"\r\n" for i in range(30_000))  # ~3 MB, over the spool threshold
    answer = ask("127.0.0.1", daemon.port, "a@example.test", ["b@example.test"], big, timeout=60)
    assert (answer.status, answer.message) == (250, b"X-Scanned: yes\r\n" + big)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"HELO there\n", "500 0.00 Unknown command (expected MAIL FROM:, RCPT TO:, DATA length)"),
        (b"RCPT TO: bob@example.test\n", "503 0.00 MAIL FROM: first"),
        (b"DATA 5\nhello", "503 0.00 MAIL FROM: first"),
        (b"MAIL FROM: a@example.test\nDATA 5\nhello", "503 0.00 RCPT TO: needed before DATA"),
        (b"MAIL FROM: a@example.test\nMAIL FROM: b@example.test\n", "503 0.00 MAIL FROM: given twice"),
        (b"MAIL FROM: a@example.test\nRCPT TO:\n", "501 0.00 Syntax: RCPT TO: recipient"),
        (b"MAIL FROM: a b@example.test\n", "501 0.00 Syntax: MAIL FROM: sender"),
        (
            ENV + b"DATA\n",
            BAD_LENGTH,
        ),
        (
            ENV + b"DATA abc\n",
            BAD_LENGTH,
        ),
        (
            ENV + b"DATA -5\n",
            BAD_LENGTH,
        ),
        (
            ENV + b"DATA 1e3\n",
            BAD_LENGTH,
        ),
        (
            ENV + b"DATA 10\nshort",
            "501 0.00 Data shorter than the DATA length: got 5 of 10 bytes",
        ),
        (
            ENV + b"DATA 3\nlonger",
            "501 0.00 Data longer than the DATA length: got over 3 bytes",
        ),
        (b"MAIL FROM: a@example.test\nRCPT TO: b@x\n", "501 0.00 Connection ended before DATA"),
        (b"", "501 0.00 Connection ended before DATA"),
        (b"MAIL FROM: " + b"a" * 5000 + b"\n", "500 0.00 Line too long"),
        (b"MAIL FROM: " + b"a" * 5000, "500 0.00 Line too long"),
    ],
    ids=[
        "unknown-command",
        "rcpt-first",
        "data-first",
        "no-rcpt",
        "mail-twice",
        "empty-rcpt",
        "bad-sender",
        "no-length",
        "letters",
        "negative",
        "float",
        "short-data",
        "long-data",
        "eof-before-data",
        "empty",
        "long-line",
        "long-line-without-end",
    ],
)
def test_bad_input_gets_one_error_line(make_daemon: Make, payload: bytes, expected: str) -> None:
    recording = Recording()
    daemon = make_daemon([recording])
    answer = exchange(daemon.port, payload)
    assert answer == expected.encode() + b"\n"
    assert recording.seen == []


def test_huge_length_is_refused_before_any_data(make_daemon: Make) -> None:
    daemon = make_daemon([Recording()], max_size=100_000)
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=20) as sock:
        sock.sendall(b"MAIL FROM: a@example.test\nRCPT TO: b@example.test\nDATA 99999999999999\n")
        # no data sent, connection left open: the answer comes anyway
        answer = sock.makefile("rb").readline()
    assert answer == b"552 0.00 Message size exceeds fixed maximum message size (100000 bytes)\n"


def test_client_stops_sending_a_message_over_the_daemons_limit(make_daemon: Make) -> None:
    recording = Recording()
    daemon = make_daemon([recording], max_size=100_000)
    huge = b"Subject: big\r\n\r\n" + b"z" * 20_000_000
    answer = ask("127.0.0.1", daemon.port, "a@example.test", ["b@example.test"], huge, timeout=30)
    assert (answer.status, answer.message) == (552, b"")
    assert recording.seen == []


def test_a_silent_client_times_out(make_daemon: Make) -> None:
    daemon = make_daemon([Recording()], timeout=0.5)
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=20) as sock:
        sock.sendall(b"MAIL FROM: a@example.test\nRCPT TO: b@example.test\nDATA 100\nonly this")
        answer = sock.makefile("rb").read()  # the daemon answers and closes; we never send EOF
    assert answer == b"421 0.00 Timeout\n"


def test_too_many_recipients(make_daemon: Make) -> None:
    daemon = make_daemon([Recording()])
    payload = b"MAIL FROM: a@example.test\n" + b"RCPT TO: b@example.test\n" * 1001
    assert exchange(daemon.port, payload) == b"503 0.00 Too many recipients\n"


def test_daemon_serves_on_after_bad_clients(make_daemon: Make) -> None:
    daemon = make_daemon([EICAR_SCAN])
    for payload in (b"garbage\n", b"MAIL FROM: a@x\nRCPT TO: b@x\nDATA 50\nshort", b"\xff\xfe\x00\n"):
        exchange(daemon.port, payload)
    started = time.monotonic()
    while time.monotonic() - started < 20:  # a deadline, not a timing assertion
        if exchange(daemon.port, request(CLEAN)) == b"250 0.00\n" + CLEAN:
            break
    else:
        pytest.fail("the daemon stopped answering")


# --------------------------------------------------------------------------- config


def test_config_surface_defaults_and_checks() -> None:
    from mailsift.errors import ConfigError

    service = sgfilterd([EICAR_SCAN])
    assert (service.host, service.port, service.max_size, service.timeout) == ("127.0.0.1", 27, 50 * 1024 * 1024, 60.0)
    assert service.describe() == "sgfilterd(127.0.0.1:27)"
    assert sgfilterd([EICAR_SCAN], "127.0.0.1", 2727, 4).prefork == 4
    for bad in ({"max_size": 10}, {"timeout": 0}, {"max_connections": 0}, {"max_size": "big"}):
        with pytest.raises(ConfigError):
            sgfilterd([EICAR_SCAN], **bad)
    with pytest.raises(ConfigError):
        sgfilterd([EICAR_SCAN], "127.0.0.1", 70000)


# --------------------------------------------------------------------------- the optional client lines


class ClientRecording(Scanner):
    name = "client_recording"

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bool | None]] = []

    async def scan(self, target: Target) -> Result:
        env = target.mail.envelope
        self.seen.append((env.client_address, env.client_name, env.relay_client))
        return Result(0.0, "", self.name)


def test_client_lines_reach_the_envelope_and_old_requests_still_work(make_daemon: Make) -> None:
    recording = ClientRecording()
    daemon = make_daemon([recording])
    lines = b"MAIL FROM: a@example.test\nCLIENT ADDRESS: 192.0.2.9\nRCPT TO: b@x\nCLIENT NAME: mx.example.test\n"
    answer = exchange(daemon.port, lines + b"RELAY CLIENT: 1\n" + f"DATA {len(CLEAN)}\n".encode() + CLEAN)
    assert status_line(answer) == "250 0.00"
    assert exchange(daemon.port, request(CLEAN)) == b"250 0.00\n" + CLEAN  # SAGATOR's request, unchanged
    assert recording.seen == [("192.0.2.9", "mx.example.test", True), ("", "", None)]


@pytest.mark.parametrize(
    "lines",
    [
        b"CLIENT ADDRESS: 999.1.1.1\n",
        b"CLIENT ADDRESS: 192.0.2.1\nCLIENT ADDRESS: 192.0.2.2\n",
        b"CLIENT NAME: a b\n",
        b"CLIENT NAME: " + b"x" * 300 + b"\n",
        b"RELAY CLIENT: yes\n",
    ],
    ids=["bad-address", "twice", "space-in-name", "long-name", "bad-flag"],
)
def test_bad_client_lines_get_501(make_daemon: Make, lines: bytes) -> None:
    daemon = make_daemon([ClientRecording()])
    answer = exchange(daemon.port, ENV + lines + f"DATA {len(CLEAN)}\n".encode() + CLEAN)
    assert status_line(answer).startswith("501 0.00 Syntax: CLIENT ADDRESS")


def test_trusted_clients_and_client_network_see_the_qmail_client(make_daemon: Make) -> None:
    from mailsift import client_network, trusted_clients
    from mailsift.services.sgfilter_client import ClientInfo

    daemon = make_daemon(
        [trusted_clients("192.0.2.25", reject(EICAR_SCAN)), client_network("198.51.100.0/24", const(1.0, "Net"))]
    )

    def ask_as(address: str, data: bytes) -> Answer:
        return ask("127.0.0.1", daemon.port, "a@x", ["b@x"], data, 20, ClientInfo(address, "", False))

    assert ask_as("203.0.113.1", INFECTED).status == 550
    assert ask_as("192.0.2.25", INFECTED).status == 551  # a trusted secondary MX: dropped, not rejected
    assert ask_as("198.51.100.7", CLEAN).name == "Net"
    assert ask_as("203.0.113.1", CLEAN).status == 250


# --------------------------------------------------------------------------- simscan's spamc user and spam_passthru


def test_spamc_user_per_recipient_and_spam_passthru_through_sgfilterd(make_daemon: Make, tmp_path: Path) -> None:
    """spamd (a fake answering by User:) asked once per recipient domain; the passthru domain gets the spam
    tagged (251 with X-Spam-Flag), the other domain's copy is rejected."""
    import asyncio
    import threading

    from mailsift import policy_enabled, policy_spam_hits, spamassassind
    from mailsift.storage import db
    from mailsift.storage.policies import import_simcontrol, parse_simcontrol
    from mailsift.testing import FakeSpamd, spamd_answer

    users: list[str] = []

    class ByUser(FakeSpamd):
        async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"PING "):
                await self.send(writer, b"SPAMD/1.5 0 PONG\r\n")
                return
            fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
            await reader.readexactly(int(fields[b"Content-length"]))
            users.append(fields.get(b"User", b"-").decode())
            await self.send(writer, spamd_answer())  # spam: 12.3 / 5.0 by default

    loop = asyncio.new_event_loop()
    spamd = ByUser()
    loop.run_until_complete(spamd.start())
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    database = db.sqlite()
    database.configure(str(tmp_path))
    text = ":spam=yes\nlenient.test:spam_passthru=yes"
    database.call(import_simcontrol, parse_simcontrol(text.splitlines()), 0.0, False)
    try:
        spam = spamassassind(spamd.address, "%(domain)s", report=False, users="min")
        daemon = make_daemon([policy_enabled("spam", policy_spam_hits(spam, db=database), db=database)])
        passed = ask("127.0.0.1", daemon.port, "a@x", ["bob@lenient.test"], CLEAN, 20)
        assert passed.status == 251
        assert b"X-Spam-Flag: YES" in passed.message.split(b"\r\n\r\n", 1)[0]
        assert ask("127.0.0.1", daemon.port, "a@x", ["bob@other.test"], CLEAN, 20).status == 550
        both = ask("127.0.0.1", daemon.port, "a@x", ["a@lenient.test", "b@other.test", "c@other.test"], CLEAN, 20)
        assert both.status == 550
        # one spamd request per domain; the two of the last message run at once, in either order
        assert users[:2] == ["lenient.test", "other.test"]
        assert sorted(users[2:]) == ["lenient.test", "other.test"]
    finally:
        database.dispose()
        asyncio.run_coroutine_threadsafe(spamd.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
        loop.close()


def test_answer_length_is_given_only_when_asked(make_daemon: Make) -> None:
    daemon = make_daemon([add_header("X-Scanned", "yes", const(0.0, "scanned"))])
    plain = exchange(daemon.port, request(CLEAN))  # SAGATOR's answer: the message right after the status
    status, edited = plain.split(b"\n", 1)
    assert (status, edited) == (b"250 0.00 scanned", b"X-Scanned: yes\r\n" + CLEAN)
    asked = ENV + b"ANSWER LENGTH: 1\n" + f"DATA {len(CLEAN)}\n".encode() + CLEAN
    assert exchange(daemon.port, asked) == b"250 0.00 scanned\n" + f"LENGTH {len(edited)}\n".encode() + edited
    answer = ask("127.0.0.1", daemon.port, "a@x", ["b@x"], CLEAN, 20, None, True)
    assert answer.message == edited


def test_a_helo_line_reaches_smtp_comm_and_old_clients_omit_it(make_daemon: Make) -> None:
    """``HELO: name`` (optional, like the client lines) is the envelope's HELO, as smtpd's: smtp_comm's
    ``helo`` matcher sees it on the qmail path too; without the line the HELO is empty."""
    from mailsift import smtp_comm

    daemon = make_daemon([reject(smtp_comm("Bad.HELO", helo=r"^\[?\d+\.\d+\.\d+\.\d+\]?$"))])

    def with_helo(helo: bytes) -> bytes:
        return exchange(daemon.port, ENV + b"HELO: " + helo + b"\n" + f"DATA {len(CLEAN)}\n".encode() + CLEAN)

    assert status_line(with_helo(b"[192.0.2.7]")) == "550 1.00 Bad.HELO"
    assert status_line(with_helo(b"mx.example.org")) == "250 0.00"
    assert status_line(with_helo(b"my laptop")) == "250 0.00"  # what clients send, spaces too
    assert exchange(daemon.port, request(CLEAN)) == b"250 0.00\n" + CLEAN  # no HELO line: served as before


@pytest.mark.parametrize(
    "lines",
    [b"HELO: \n", b"HELO: " + b"h" * 300 + b"\n", b"HELO: a\nHELO: b\n", "HELO: caf\u00e9\n".encode()],
    ids=["empty", "long", "twice", "not-ascii"],
)
def test_bad_helo_lines_get_501(make_daemon: Make, lines: bytes) -> None:
    answer = exchange(make_daemon([ClientRecording()]).port, ENV + lines + f"DATA {len(CLEAN)}\n".encode() + CLEAN)
    assert status_line(answer).startswith("501 0.00 Syntax: CLIENT ADDRESS")
    assert "HELO: name" in status_line(answer)


def test_a_helo_line_only_from_client_hosts(make_daemon: Make) -> None:
    """A peer outside client_hosts cannot tell the scanners a HELO either."""
    daemon = make_daemon([ClientRecording()], client_hosts=["192.0.2.0/24"])
    lines = ENV + b"HELO: mx.example.org\n" + f"DATA {len(CLEAN)}\n".encode() + CLEAN
    refused = status_line(exchange(daemon.port, lines))
    assert refused == "503 0.00 Client lines not allowed from this peer (client_hosts)"


def test_client_lines_only_from_client_hosts(make_daemon: Make) -> None:
    """As smtpd's XFORWARD: a peer outside client_hosts cannot claim to be a trusted client."""
    recording = ClientRecording()
    daemon = make_daemon([recording], client_hosts=["192.0.2.0/24"])
    lines = ENV + b"CLIENT ADDRESS: 192.0.2.25\n" + f"DATA {len(CLEAN)}\n".encode() + CLEAN
    refused = status_line(exchange(daemon.port, lines))
    assert refused == "503 0.00 Client lines not allowed from this peer (client_hosts)"
    asked = ENV + b"ANSWER LENGTH: 1\n" + f"DATA {len(CLEAN)}\n".encode() + CLEAN  # the length is no claim
    assert status_line(exchange(daemon.port, asked)) == "250 0.00"
    assert recording.seen == [("", "", None)]
    with pytest.raises(Exception, match="bad client_hosts"):
        sgfilterd([], "127.0.0.1", 0, client_hosts=["not a network"])
