"""The milter service on real sockets, with a small MTA-side client written here, and its codec.

The client encodes commands itself (``struct``), independently of the
module under test; it covers what miltertest and Postfix do not produce on
demand: version-2 MTAs (no no-reply flags), malformed and oversized packets,
a vanishing MTA, idle timeouts, connection reuse (QUIT_NC), storage failure,
unix sockets, draining, folded headers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsift import const, modify_subject, quarantine, regexp_scan
from mailsift.errors import ConfigError
from mailsift.scanners.actions import add_header, deliver
from mailsift.scanners.base import Scanner
from mailsift.services import milter_protocol as mp
from mailsift.services.milter import edits, milter, parse_connection, split_message
from mailsift.settings import Settings
from mailsift.testing import ServiceThread

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*\r\n"
ALL_ACTIONS = 0x1FF
ALL_STEPS = 0x1FFFFF


def scanners() -> list[Scanner]:
    return [
        add_header("X-Mailsift-Checked", "%S", const(0.1, "checked")),
        regexp_scan([("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")]),
        deliver(modify_subject("[SPAM] ", regexp_scan([("SPAM", r"cheap pills")]))),
        quarantine("virus", regexp_scan([("Quarantine-Me", r"QUARANTINE-ME")])),
    ]


# --------------------------------------------------------------------------- an MTA-side client


class MTA:
    """Speaks the MTA side of the milter protocol over a real socket."""

    def __init__(self, address: tuple[str, int] | str) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        try:
            self.sock.connect(address)
        except OSError:
            self.sock.close()
            raise

    def send(self, command: bytes, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">I", len(data) + 1) + command + data)

    def _exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise EOFError(f"closed after {len(data)} of {count} bytes")
            data += chunk
        return data

    def read(self) -> tuple[bytes, bytes]:
        (length,) = struct.unpack(">I", self._exactly(4))
        packet = self._exactly(length)
        return packet[:1], packet[1:]

    def closed(self) -> bool:
        """Whether the filter closed the connection (waits up to the socket timeout)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def negotiate(self, version: int = 6, actions: int = ALL_ACTIONS, steps: int = ALL_STEPS) -> tuple[int, int, int]:
        self.send(b"O", struct.pack(">III", version, actions, steps))
        command, data = self.read()
        assert command == b"O"
        agreed = struct.unpack(">III", data[:12])
        self.steps = agreed[2]
        return agreed

    def command(self, command: bytes, data: bytes, no_reply_flag: int) -> None:
        """Send a command and, unless it was negotiated no-reply, read its CONTINUE."""
        self.send(command, data)
        if not self.steps & no_reply_flag:
            assert self.read() == (b"c", b"")

    def connect(self, host: bytes = b"client.example.test", address: bytes = b"192.0.2.10") -> None:
        self.send(b"D", b"C" + b"j\0mx.example.test\0")
        self.command(b"C", host + b"\0" + b"4" + struct.pack(">H", 4567) + address + b"\0", mp.SMFIP_NR_CONN)
        self.command(b"H", b"helo.example.test\0", mp.SMFIP_NR_HELO)

    def begin(self, queue_id: bytes, recipients: tuple[bytes, ...] = (b"bob@example.test",)) -> None:
        self.send(b"D", b"M" + b"i\0" + queue_id + b"\0")
        self.command(b"M", b"<alice@example.test>\0BODY=8BITMIME\0", mp.SMFIP_NR_MAIL)
        for recipient in recipients:
            self.command(b"R", b"<" + recipient + b">\0", mp.SMFIP_NR_RCPT)

    def content(self, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        for name, value in headers:
            self.command(b"L", name + b"\0" + value + b"\0", mp.SMFIP_NR_HDR)
        self.command(b"N", b"", mp.SMFIP_NR_EOH)
        if body:
            self.command(b"B", body, mp.SMFIP_NR_BODY)

    def end(self) -> list[tuple[bytes, bytes]]:
        """SMFIC_BODYEOB; every packet up to the final answer."""
        self.send(b"E")
        answers = []
        while True:
            answers.append(self.read())
            if answers[-1][0] in b"artdy":
                return answers

    def message(
        self, queue_id: bytes, body: bytes, subject: bytes = b"hello", extra: list[tuple[bytes, bytes]] | None = None
    ) -> list[tuple[bytes, bytes]]:
        self.begin(queue_id)
        self.content([(b"From", b"alice@example.test"), (b"Subject", subject), *(extra or [])], body)
        return self.end()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def service_thread(tmp_path: Path) -> Iterator[ServiceThread]:
    with ServiceThread(milter(scanners(), "test", "inet:0@127.0.0.1", timeout=2), state_dir=str(tmp_path)) as thread:
        yield thread


@pytest.fixture
def mta(service_thread: ServiceThread) -> Iterator[MTA]:
    client = MTA(("127.0.0.1", service_thread.port))
    yield client
    client.close()


@pytest.fixture
def mail_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="mailsift")
    return caplog


def logged(caplog: pytest.LogCaptureFixture, logger: str = "mailsift.mail") -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == logger]


def wait_for(predicate: object, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


# --------------------------------------------------------------------------- sessions


def test_full_offer_gets_no_reply_steps_and_the_edits(mta: MTA, mail_log: pytest.LogCaptureFixture) -> None:
    version, actions, steps = mta.negotiate()
    assert version == 6
    assert actions == (  # the recipient flags: deliver_to (tests/protocol/test_actions.py)
        mp.SMFIF_ADDHDRS
        | mp.SMFIF_CHGHDRS
        | mp.SMFIF_CHGBODY
        | mp.SMFIF_QUARANTINE
        | mp.SMFIF_ADDRCPT
        | mp.SMFIF_DELRCPT
    )
    wanted = mp.SMFIP_NR_HDR | mp.SMFIP_NR_BODY | mp.SMFIP_NR_MAIL | mp.SMFIP_NR_RCPT | mp.SMFIP_NODATA
    assert steps & wanted == wanted
    assert not steps & (mp.SMFIP_NOHDRS | mp.SMFIP_NOBODY | mp.SMFIP_NOMAIL | mp.SMFIP_NORCPT)
    mta.connect()
    answers = mta.message(b"Q1", b"buy cheap pills\r\n", subject=b"an offer")
    assert answers == [
        (b"h", b"X-Mailsift-Checked\0const\0"),
        (b"m", struct.pack(">I", 1) + b"Subject\0[SPAM] an offer\0"),
        (b"a", b""),
    ]
    [line] = logged(mail_log)
    assert line.startswith("Q1 action=deliver reply=250 level=1.00 name=SPAM")
    assert "from=<alice@example.test> to=<bob@example.test>" in line
    assert "client=client.example.test[192.0.2.10]" in line


def test_version_2_mta_gets_every_step_answered(mta: MTA) -> None:
    assert mta.negotiate(version=2, actions=mp.SMFIF_ADDHDRS | mp.SMFIF_CHGHDRS, steps=0) == (
        2,
        mp.SMFIF_ADDHDRS | mp.SMFIF_CHGHDRS,
        0,
    )
    mta.connect()  # each step reads its CONTINUE (steps == 0)
    answers = mta.message(b"Q2", EICAR)
    assert answers == [(b"y", b"550 5.7.1 Rejected by content filter: EICAR-Test (regexp_scan)\0")]


def test_two_messages_and_an_abort_on_one_connection(mta: MTA, mail_log: pytest.LogCaptureFixture) -> None:
    mta.negotiate()
    mta.connect()
    assert mta.message(b"Q3", b"clean\r\n")[-1] == (b"a", b"")
    mta.begin(b"Q4", (b"carol@example.test",))
    mta.content([(b"Subject", b"aborted")], EICAR)
    mta.send(b"A")  # no answer to ABORT
    mta.send(b"D", b"M" + b"i\0Q5\0")
    mta.send(b"M", b"<alice@example.test>\0")
    mta.send(b"R", b"<dave@example.test>\0")
    mta.content([(b"Subject", b"after")], b"clean\r\n")
    assert mta.end()[-1] == (b"a", b"")
    lines = logged(mail_log)
    assert [line.split()[0] for line in lines] == ["Q3", "Q5"]
    assert "to=<dave@example.test> " in lines[1]


def test_folded_subject_is_rebuilt_and_changed_with_lf_folding(mta: MTA, mail_log: pytest.LogCaptureFixture) -> None:
    mta.negotiate()
    mta.connect()
    answers = mta.message(b"Q6", b"cheap pills\r\n", subject=b"first line\n\tsecond line")
    assert (b"m", struct.pack(">I", 1) + b"Subject\0[SPAM] first line\n\tsecond line\0") in answers


def test_quit_nc_starts_a_new_session_on_the_same_connection(mta: MTA, mail_log: pytest.LogCaptureFixture) -> None:
    mta.negotiate()
    mta.connect(b"first.example.test", b"192.0.2.1")
    mta.send(b"K")
    mta.connect(b"second.example.test", b"192.0.2.2")
    mta.message(b"Q7", b"clean\r\n")
    [line] = logged(mail_log)
    assert "client=second.example.test[192.0.2.2]" in line


def test_client_without_name_and_unknown_family(mta: MTA, mail_log: pytest.LogCaptureFixture) -> None:
    mta.negotiate()
    mta.send(b"C", b"[192.0.2.9]\0U")
    mta.message(b"Q8", b"clean\r\n")
    [line] = logged(mail_log)
    assert "client=-[-]" in line


def test_message_over_max_size_is_refused(tmp_path: Path, mail_log: pytest.LogCaptureFixture) -> None:
    service = milter(scanners(), "small", "inet:0@127.0.0.1", max_size=4096)
    with ServiceThread(service, state_dir=str(tmp_path)) as thread:
        mta = MTA(("127.0.0.1", thread.port))
        mta.negotiate()
        mta.connect()
        mta.begin(b"Q9")
        mta.content([(b"Subject", b"big")], b"x" * 3000 + b"\r\n")
        mta.send(b"B", b"y" * 3000 + b"\r\n")
        assert mta.end() == [(b"y", b"552 5.3.4 Message size exceeds fixed maximum message size\0")]
        # the next message on the connection is fine again
        assert mta.message(b"Q10", b"small\r\n")[-1] == (b"a", b"")
        mta.close()
    assert [line.split()[0] for line in logged(mail_log)] == ["Q10"]


def test_storage_failure_is_a_tempfail(tmp_path: Path, mail_log: pytest.LogCaptureFixture) -> None:
    with ServiceThread(milter(scanners(), "t", "inet:0@127.0.0.1"), state_dir=str(tmp_path)) as thread:
        quarantine_dir = Path(thread.settings.quarantine_dir)
        quarantine_dir.rmdir()
        quarantine_dir.write_text("not a directory")  # the copy cannot be stored: the MTA must retry
        mta = MTA(("127.0.0.1", thread.port))
        mta.negotiate()
        mta.connect()
        [(command, data)] = mta.message(b"Q11", b"QUARANTINE-ME\r\n")
        mta.close()
    assert command == b"y"
    assert data.startswith(b"451 4.3.0 ")


# --------------------------------------------------------------------------- bad input


def test_oversized_packet_closes_the_connection(service_thread: ServiceThread, mta: MTA) -> None:
    mta.sock.sendall(struct.pack(">I", mp.MAX_PACKET + 1) + b"B")
    assert mta.closed()
    second = MTA(("127.0.0.1", service_thread.port))  # the service is unharmed
    assert second.negotiate()[0] == 6
    second.close()


@pytest.mark.parametrize(
    "packet",
    [
        struct.pack(">I", 0),  # empty packet
        struct.pack(">I", 1) + b"Z",  # unknown command
        struct.pack(">I", 5) + b"O" + b"\0\0\0\0",  # short OPTNEG
        struct.pack(">I", 13) + b"O" + struct.pack(">III", 1, 0, 0),  # version 1
        struct.pack(">I", 3) + b"Cx\0",  # CONNECT without family
        struct.pack(">I", 1) + b"L",  # HEADER without name
    ],
)
def test_malformed_packets_close_the_connection(mta: MTA, packet: bytes, mail_log: pytest.LogCaptureFixture) -> None:
    mta.sock.sendall(packet)
    assert mta.closed()
    assert any("protocol error" in line for line in logged(mail_log, "mailsift.milter"))


def test_mta_vanishing_mid_message_evaluates_nothing(
    service_thread: ServiceThread, mta: MTA, mail_log: pytest.LogCaptureFixture
) -> None:
    mta.negotiate()
    mta.connect()
    mta.begin(b"Q12")
    mta.content([(b"Subject", b"gone")], b"half a message")
    mta.close()
    second = MTA(("127.0.0.1", service_thread.port))
    second.negotiate()
    second.connect()
    assert second.message(b"Q13", b"clean\r\n")[-1] == (b"a", b"")
    second.close()
    assert [line.split()[0] for line in logged(mail_log)] == ["Q13"]


def test_silent_mta_is_disconnected_after_the_timeout(mta: MTA) -> None:
    mta.negotiate()
    mta.sock.settimeout(30)
    assert mta.closed()  # the service's timeout is 2 s; the socket's 30 s: the filter closed it


# --------------------------------------------------------------------------- draining


def test_drain_closes_idle_connections_and_finishes_messages(tmp_path: Path) -> None:
    thread = ServiceThread(milter(scanners(), "t", "inet:0@127.0.0.1"), state_dir=str(tmp_path)).start()
    try:
        idle, busy = MTA(("127.0.0.1", thread.port)), MTA(("127.0.0.1", thread.port))
        idle.negotiate()
        busy.negotiate(steps=0)  # every step answered: the message is surely in flight when the drain starts
        for client in (idle, busy):
            client.connect()
        busy.begin(b"Q14")
        busy.content([(b"Subject", b"in flight")], b"clean\r\n")
        assert thread._runner is not None
        # drain in the service's loop without waiting for it here (private parts of ServiceThread)
        draining = asyncio.run_coroutine_threadsafe(thread._running.drain(10), thread._runner.loop)
        assert idle.closed()
        assert busy.end()[-1] == (b"a", b"")  # the message in flight got its answer
        assert busy.closed()  # and then the connection was closed
        draining.result(15)
        idle.close()
        busy.close()
        with pytest.raises(OSError):
            MTA(("127.0.0.1", thread.port))  # no longer accepting
    finally:
        thread._running = None
        thread.stop()


# --------------------------------------------------------------------------- unix sockets


def test_unix_socket_transaction_and_permissions(tmp_path: Path) -> None:
    path = tmp_path / "milter.sock"
    service = milter(scanners(), "t", f"unix:{path}")
    assert (service.host, service.port) == (f"unix:{path}", 0)
    with ServiceThread(service, state_dir=str(tmp_path / "state")):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        mta = MTA(str(path))
        mta.negotiate()
        mta.connect()
        assert mta.message(b"Q15", EICAR)[-1][0] == b"y"
        mta.close()


def test_unix_socket_stale_in_use_and_not_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "milter.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on: replaced
    sock = milter(scanners(), "t", f"unix:{path}", umask=0o077).bind()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
        with pytest.raises(ConfigError, match="in use"):
            milter(scanners(), "t", f"unix:{path}").bind()
    finally:
        sock.close()
    other = tmp_path / "file"
    other.write_text("x")
    with pytest.raises(ConfigError, match="not a socket"):
        milter(scanners(), "t", f"unix:{other}").bind()


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("connection", "parsed"),
    [
        ("inet:3333@127.0.0.1", ("inet", "127.0.0.1", 3333)),
        ("inet:3333@[127.0.0.1]", ("inet", "127.0.0.1", 3333)),
        ("inet:3333", ("inet", "0.0.0.0", 3333)),
        ("inet6:3333@::1", ("inet", "::1", 3333)),
        ("unix:/run/mailsift/milter.sock", ("unix", "/run/mailsift/milter.sock", 0)),
        ("local:/run/m.sock", ("unix", "/run/m.sock", 0)),
    ],
)
def test_connection_strings(connection: str, parsed: tuple[str, str, int]) -> None:
    assert parse_connection(connection) == parsed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"connection": "3333"}, "connection must look like"),
        ({"connection": "inet:x@127.0.0.1"}, "bad port"),
        ({"connection": "inet:70000@127.0.0.1"}, "bad port"),
        ({"connection": "unix:relative.sock"}, "must be absolute"),
        ({"connection": "tcp:3333@h"}, "unknown socket type"),
        ({"name": ""}, "name must be"),
        ({"umask": "0117"}, "umask"),
        ({"max_size": 10}, "max_size"),
        ({"timeout": 0}, "timeout"),
        ({"max_connections": 0}, "max_connections"),
    ],
)
def test_config_errors(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"name": "t", "connection": "inet:3333@127.0.0.1", **kwargs}
    with pytest.raises(ConfigError, match=message):
        milter(scanners(), **arguments)  # type: ignore[arg-type]


def test_check_needs_no_next_hop(tmp_path: Path) -> None:
    milter(scanners(), "t", "inet:3333@127.0.0.1").check(Settings(state_dir=str(tmp_path)))


# --------------------------------------------------------------------------- codec and edits


def test_reply_code_escapes_percent_and_bounds_the_text() -> None:
    assert mp.reply_code(550, "5.7.1", "100% bad\r\nnext") == mp.packet(b"y", b"550 5.7.1 100%% bad  next\0")
    assert len(mp.reply_code(451, "4.3.0", "x" * 5000)) < 1000
    assert mp.reply_code(451, "5.7.1", "mismatch") == mp.packet(b"y", b"451 mismatch\0")  # class must agree
    with pytest.raises(ValueError, match="4xx or 5xx"):
        mp.reply_code(250, "2.0.0", "ok")


def test_connect_parsing() -> None:
    assert mp.parse_connect(b"h\x006" + struct.pack(">H", 25) + b"IPv6:2001:db8::1\0") == mp.ConnectInfo(
        "h", "6", 25, "2001:db8::1"
    )
    assert mp.parse_connect(b"h\0L\0\0/tmp/s\0").family == "L"
    with pytest.raises(mp.MilterProtocolError):
        mp.parse_connect(b"h\x004\0")


def test_macros_parsing() -> None:
    assert mp.parse_macros(b"Mi\0Q1\0{mail_addr}\0a@b\0") == (b"M", {"i": "Q1", "mail_addr": "a@b"})


def test_split_message() -> None:
    fields, body = split_message(b"A: 1\r\nB:2\r\n folded\r\n\r\nbody\r\n\r\nmore")
    assert fields == [(b"A", b"1"), (b"B", b"2\n folded")]
    assert body == b"body\r\n\r\nmore"


def test_edits_change_add_remove_and_body() -> None:
    original = b"Subject: a\r\nReceived: r1\r\nReceived: r2\r\nX-Old: 1\r\n\r\nbody\r\n"
    final = b"X-New: v\r\nSubject: [S] a\r\nReceived: r1\r\nReceived: r2\r\n\r\nnew body\r\n"
    packets, refused = edits(original, final, ALL_ACTIONS)
    assert refused == []
    assert packets == [
        mp.add_header(b"X-New", b"v"),
        mp.change_header(b"Subject", 1, b"[S] a"),
        mp.change_header(b"X-Old", 1, b""),
        mp.packet(b"b", b"new body\r\n"),
    ]


def test_edits_second_occurrence_and_big_body() -> None:
    body = b"z" * (mp.CHUNK + 10)
    packets, _ = edits(b"S: 1\r\nS: 2\r\n\r\nold", b"S: 1\r\nS: two\r\n\r\n" + body, ALL_ACTIONS)
    assert packets[0] == mp.change_header(b"S", 2, b"two")
    assert [p[4:5] for p in packets[1:]] == [b"b", b"b"]
    assert b"".join(p[5:] for p in packets[1:]) == body


def test_edits_not_allowed_are_reported() -> None:
    packets, refused = edits(b"Subject: a\r\n\r\nb", b"X: 1\r\nSubject: [S] a\r\n\r\nc", mp.SMFIF_ADDHDRS)
    assert packets == [mp.add_header(b"X", b"1")]
    assert refused == ["change b'Subject'", "replace the body"]
