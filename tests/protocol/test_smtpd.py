"""The smtpd content filter on real sockets: features, replies, faults, safety."""

from __future__ import annotations

import smtplib
import socket
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from mailsift import (
    add_header,
    deliver,
    drop,
    modify_subject,
    quarantine,
    regexp_scan,
    reject,
)
from mailsift.errors import ScannerError
from mailsift.message.result import Result
from mailsift.scanners.base import Scanner, Target
from mailsift.testing import RecordingServer, ServiceThread, envelope_lines, free_port, smtp_session_lines
from tests.helpers.memory import big_message
from tests.helpers.messages import message
from tests.helpers.samples import EICAR_TEXT as EICAR
from tests.helpers.sockets import smtp_to_data

EICAR_SCAN = regexp_scan([("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")])

Make = Callable[..., ServiceThread]


def send(port: int, data: bytes, sender: str = "alice@example.test", rcpts: list[str] | None = None) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(sender, rcpts or ["bob@example.test"], data)


def test_ehlo_advertises_features(make_filter: Make) -> None:
    flt = make_filter([EICAR_SCAN], max_size=1_000_000)
    with smtplib.SMTP("127.0.0.1", flt.port, timeout=10) as client:
        code, _ = client.ehlo("client.example.test")
        assert code == 250
        for feature in ("pipelining", "8bitmime", "smtputf8", "xforward"):
            assert client.has_extn(feature), feature
        assert client.esmtp_features["size"] == "1000000"
        assert set(client.esmtp_features["xforward"].split()) >= {"NAME", "ADDR", "PROTO", "HELO", "IDENT"}


def test_clean_mail_is_relayed_unchanged_after_next_hop_accepts(make_filter: Make, downstream: RecordingServer) -> None:
    flt = make_filter([EICAR_SCAN])
    data = message("clean") + b"line two\r\n.starts with a dot\r\n"
    send(flt.port, data)
    assert len(downstream.messages) == 1
    got = downstream.messages[0]
    assert got.sender == "alice@example.test"
    assert got.recipients == ["bob@example.test"]
    assert got.data == data


def test_pipelined_transaction(make_filter: Make, downstream: RecordingServer) -> None:
    flt = make_filter([EICAR_SCAN])
    payload = (
        b"EHLO client.example.test\r\n"
        + envelope_lines("alice@example.test", ["bob@example.test", "carol@example.test"])
        + b"DATA\r\n"
        + message("pipelined")
        + b".\r\nQUIT\r\n"
    )
    lines = smtp_session_lines("127.0.0.1", flt.port, payload)
    codes = [line[:3] for line in lines if line[3:4] == " "]
    assert codes == ["220", "250", "250", "250", "250", "354", "250", "221"]
    assert downstream.messages[0].recipients == ["bob@example.test", "carol@example.test"]


def test_xforward_is_accepted_and_passed_to_the_next_hop(make_filter: Make, downstream: RecordingServer) -> None:
    flt = make_filter([EICAR_SCAN])
    with smtplib.SMTP("127.0.0.1", flt.port, timeout=10) as client:
        client.ehlo("postfix.example.test")
        code, _ = client.docmd("XFORWARD", "NAME=mx.sender.example ADDR=192.0.2.7 PROTO=ESMTP")
        assert code == 250
        code, _ = client.docmd("XFORWARD", "HELO=sender.example IDENT=4AbCdE")
        assert code == 250
        client.sendmail("alice@example.test", ["bob@example.test"], message("xforward"))
    forwarded = downstream.messages[0].xforward
    assert forwarded["ADDR"] == "192.0.2.7"
    assert forwarded["NAME"] == "mx.sender.example"
    assert forwarded["HELO"] == "sender.example"
    assert forwarded["IDENT"] == "4AbCdE"


def test_xforward_bad_syntax_and_sequence(make_filter: Make) -> None:
    flt = make_filter([EICAR_SCAN])
    with smtplib.SMTP("127.0.0.1", flt.port, timeout=10) as client:
        client.ehlo("x")
        assert client.docmd("XFORWARD", "BOGUS=1")[0] == 501
        assert client.docmd("XFORWARD")[0] == 501
        client.docmd("MAIL", "FROM:<a@example.test>")
        assert client.docmd("XFORWARD", "ADDR=192.0.2.1")[0] == 503


def test_size_declared_too_big_is_refused(make_filter: Make, downstream: RecordingServer) -> None:
    flt = make_filter([EICAR_SCAN], max_size=2048)
    with smtplib.SMTP("127.0.0.1", flt.port, timeout=10) as client:
        client.ehlo("x")
        code, _ = client.docmd("MAIL", "FROM:<a@example.test> SIZE=999999")
        assert code == 552


def test_data_over_size_is_refused_and_not_relayed(make_filter: Make, downstream: RecordingServer) -> None:
    flt = make_filter([EICAR_SCAN], max_size=2048)
    body = ("x" * 70 + "\r\n") * 60  # 4 KB without a SIZE= declaration
    payload = b"EHLO x\r\n" + envelope_lines("a@example.test", ["b@example.test"]) + b"DATA\r\n"
    payload += message("big", body) + b".\r\nQUIT\r\n"
    finals = [line[:3] for line in smtp_session_lines("127.0.0.1", flt.port, payload) if line[3:4] == " "]
    assert finals == ["220", "250", "250", "250", "354", "552", "221"]
    assert downstream.messages == []


@pytest.mark.parametrize(
    "smuggle",
    [
        b"\n.\n",  # bare LF . bare LF
        b"\n.\r\n",  # bare LF . CRLF
        b"\r\n.\n",  # CRLF . bare LF
        b"\r.\r\n",  # bare CR variants
        b"\r\n.\r",
    ],
    ids=["lf-dot-lf", "lf-dot-crlf", "crlf-dot-lf", "cr-dot-crlf", "crlf-dot-cr"],
)
def test_smtp_smuggling_never_ends_data_early(make_filter: Make, downstream: RecordingServer, smuggle: bytes) -> None:
    """A message carrying ``<LF>.<LF>MAIL FROM...`` is one message, never two."""
    flt = make_filter([EICAR_SCAN])
    smuggled = (
        b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n"
    )
    payload = (
        b"EHLO x\r\n"
        + envelope_lines("alice@example.test", ["bob@example.test"])
        + b"DATA\r\nSubject: outer\r\n\r\nbody"
        + smuggle
        + smuggled
        + b".\r\nQUIT\r\n"
    )
    lines = smtp_session_lines("127.0.0.1", flt.port, payload)
    finals = [line for line in lines if line[3:4] == " "]
    assert [line[:3] for line in finals] == ["220", "250", "250", "250", "354", "250", "221"], lines
    assert len(downstream.messages) == 1
    assert downstream.messages[0].sender == "alice@example.test"
    assert b"evil@attacker.test" in downstream.messages[0].data  # still inside the one message's body
    assert all(m.sender != "evil@attacker.test" for m in downstream.messages)


def test_next_hop_down_answers_4xx_and_keeps_nothing(make_filter: Make) -> None:
    flt = make_filter([EICAR_SCAN], next_hop=("127.0.0.1", free_port()))
    with pytest.raises(smtplib.SMTPDataError) as error:
        send(flt.port, message("nexthop down"))
    assert 400 <= error.value.smtp_code < 500


@pytest.mark.parametrize(
    ("where", "reply", "expected"),
    [
        ("mail_reply", "451 4.3.0 try later", 451),
        ("rcpt_reply", "450 4.2.0 mailbox busy", 451),
        ("data_reply", "452 4.3.1 insufficient storage", 451),
        ("rcpt_reply", "550 5.1.1 no such user", 554),
        ("data_reply", "554 5.7.1 content refused", 554),
    ],
)
def test_next_hop_refusals_map_to_our_reply(
    make_filter: Make, downstream: RecordingServer, where: str, reply: str, expected: int
) -> None:
    setattr(downstream, where, reply)
    flt = make_filter([EICAR_SCAN])
    with pytest.raises(smtplib.SMTPDataError) as error:
        send(flt.port, message("refused"))
    assert error.value.smtp_code == expected
    assert downstream.messages == []
    # The connection stays usable for the next message once the next hop recovers.
    setattr(downstream, where, None)
    send(flt.port, message("after recovery"))
    assert len(downstream.messages) == 1


def test_virus_is_rejected_with_its_name(make_filter: Make, downstream: RecordingServer) -> None:
    flt = make_filter([EICAR_SCAN])
    with pytest.raises(smtplib.SMTPDataError) as error:
        send(flt.port, message("virus", EICAR + "\r\n"))
    assert error.value.smtp_code == 550
    assert b"EICAR-Test" in error.value.smtp_error
    assert downstream.messages == []


def test_custom_reject_text(make_filter: Make) -> None:
    flt = make_filter([reject(EICAR_SCAN, message="Virus %V found by %S")])
    with pytest.raises(smtplib.SMTPDataError) as error:
        send(flt.port, message("virus", EICAR + "\r\n"))
    assert error.value.smtp_error.decode().endswith("Virus EICAR-Test found by regexp_scan")


def test_drop_answers_250_and_discards(make_filter: Make, downstream: RecordingServer) -> None:
    flt = make_filter([drop(EICAR_SCAN)])
    send(flt.port, message("dropped", EICAR + "\r\n"))
    assert downstream.messages == []


def test_forced_delivery_with_header_and_subject(make_filter: Make, downstream: RecordingServer) -> None:
    flt = make_filter([deliver(modify_subject("[VIRUS] ", add_header("X-Virus", "%V (%S, %L)", EICAR_SCAN)))])
    send(flt.port, message("forced", EICAR + "\r\n"))
    assert len(downstream.messages) == 1
    data = downstream.messages[0].data
    assert data.startswith(b"X-Virus: EICAR-Test (regexp_scan, 1.00)\r\n")
    assert b"\r\nSubject: [VIRUS] forced\r\n" in data
    assert data.endswith(EICAR.encode() + b"\r\n")


def test_quarantine_stores_durably_and_answers_250(
    make_filter: Make, downstream: RecordingServer, tmp_path: Path
) -> None:
    flt = make_filter([quarantine("virus", EICAR_SCAN)])
    data = message("quarantined", EICAR + "\r\n")
    send(flt.port, data, rcpts=["bob@example.test", "carol@example.test"])
    assert downstream.messages == []
    files = list((tmp_path / "state" / "quarantine" / "virus" / "new").iterdir())
    assert len(files) == 1
    stored = files[0].read_bytes()
    assert stored.endswith(data)
    assert b"X-Mailsift-Category: virus\r\n" in stored
    assert b"X-Envelope-To: <bob@example.test>\r\nX-Envelope-To: <carol@example.test>\r\n" in stored
    assert b"name=EICAR-Test" in stored
    quarantine_id = stored.split(b"X-Mailsift-Quarantine-Id: ")[1].split(b"\r\n")[0].decode()
    assert quarantine_id in files[0].name


def test_quarantine_failure_is_a_tempfail(make_filter: Make, downstream: RecordingServer, tmp_path: Path) -> None:
    flt = make_filter([quarantine("virus", EICAR_SCAN)])
    # Make the category folder impossible to create: a file where the directory should be.
    (tmp_path / "state" / "quarantine" / "virus").write_text("not a directory")
    with pytest.raises(smtplib.SMTPDataError) as error:
        send(flt.port, message("quarantine fails", EICAR + "\r\n"))
    assert error.value.smtp_code == 451


def test_several_recipients_one_delivery(make_filter: Make, downstream: RecordingServer) -> None:
    flt = make_filter([EICAR_SCAN])
    rcpts = [f"user{i}@example.test" for i in range(5)]
    send(flt.port, message("many"), rcpts=rcpts)
    assert len(downstream.messages) == 1
    assert downstream.messages[0].recipients == rcpts


class _Failing(Scanner):
    name = "failing"

    async def scan(self, target: Target) -> Result:
        raise ScannerError("engine down")


def test_scanner_error_is_a_tempfail(make_filter: Make, downstream: RecordingServer) -> None:
    flt = make_filter([_Failing()])
    with pytest.raises(smtplib.SMTPDataError) as error:
        send(flt.port, message("scanner down"))
    assert error.value.smtp_code == 451
    assert downstream.messages == []


def test_non_ascii_addresses_with_smtputf8(make_filter: Make, downstream: RecordingServer) -> None:
    flt = make_filter([EICAR_SCAN])
    with smtplib.SMTP("127.0.0.1", flt.port, timeout=10) as client:
        client.ehlo("x")
        client.sendmail("álvaro@exämple.test", ["jürgen@example.test"], message("utf8"), mail_options=["SMTPUTF8"])
    assert downstream.messages[0].sender == "álvaro@exämple.test"
    assert downstream.messages[0].recipients == ["jürgen@example.test"]


def test_malformed_commands_get_clear_replies(make_filter: Make, downstream: RecordingServer) -> None:
    flt = make_filter([EICAR_SCAN])
    payload = (
        b"EHLO x\r\n"
        b"MAIL FROM broken\r\n"
        b"RCPT TO:<b@example.test>\r\n"
        b"DATA\r\n" + b"X" * 5000 + b"\r\n"
        b"NOSUCHVERB\r\n"
        b"QUIT\r\n"
    )
    lines = smtp_session_lines("127.0.0.1", flt.port, payload)
    finals = [line[:3] for line in lines if line[3:4] == " "]
    assert finals == ["220", "250", "501", "503", "503", "500", "500", "221"], lines
    assert downstream.messages == []


def test_connection_limit_answers_421(make_filter: Make) -> None:
    # all from 127.0.0.1: the per-address limit (default half of max_connections) is raised to reach the global one
    flt = make_filter([EICAR_SCAN], max_connections=2, max_connections_per_address=2)
    held = [socket.create_connection(("127.0.0.1", flt.port), timeout=5) for _ in range(2)]
    try:
        for sock in held:
            assert sock.recv(1024).startswith(b"220")
        with socket.create_connection(("127.0.0.1", flt.port), timeout=5) as extra:
            assert extra.recv(1024).startswith(b"421")
    finally:
        for sock in held:
            sock.close()


def test_drain_lets_the_transaction_in_progress_finish(make_filter: Make, downstream: RecordingServer) -> None:
    flt = make_filter([EICAR_SCAN])
    with smtplib.SMTP("127.0.0.1", flt.port, timeout=10) as client:
        client.ehlo("x")
        client.mail("alice@example.test")
        client.rcpt("bob@example.test")
        flt.drain(timeout=0.5)  # the transaction is open: it is waited for, then closed
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", flt.port), timeout=2).recv(1)


def test_two_pipelined_messages_in_one_write(make_filter: Make, downstream: RecordingServer) -> None:
    """DATA is read in chunks: what follows the end of one message stays for the next command."""
    flt = make_filter([EICAR_SCAN])
    first, second = message("one", "..dot\r\nx.\r\n"), message("two")
    payload = b"EHLO x\r\n"
    for data in (first, second):
        payload += envelope_lines("alice@example.test", ["bob@example.test"]) + b"DATA\r\n" + data + b".\r\n"
    lines = smtp_session_lines("127.0.0.1", flt.port, payload + b"QUIT\r\n")
    finals = [line[:3] for line in lines if line[3:4] == " "]
    assert finals == ["220", "250", "250", "250", "354", "250", "250", "250", "354", "250", "221"], lines
    assert [m.data for m in downstream.messages] == [first.replace(b"\r\n..dot", b"\r\n.dot"), second]


def test_large_message_with_dot_lines_is_relayed_exactly(make_filter: Make, downstream: RecordingServer) -> None:
    flt = make_filter([EICAR_SCAN])
    body = "".join(f".line {i} {'x' * (i % 900)}\r\n" for i in range(2000))  # ~1 MB, every line dot-stuffed
    data = message("large", body)
    send(flt.port, data)  # smtplib stuffs the dots; mailsift must unstuff exactly once
    assert [m.data for m in downstream.messages] == [data]


def test_overlong_line_is_refused_and_session_goes_on(make_filter: Make, downstream: RecordingServer) -> None:
    flt = make_filter([EICAR_SCAN])
    payload = b"EHLO x\r\n" + envelope_lines("a@example.test", ["b@example.test"])
    payload += b"DATA\r\n" + message("long", "y" * 20000 + "\r\n") + b".\r\n"
    payload += envelope_lines("a@example.test", ["b@example.test"]) + b"DATA\r\n" + message("fine") + b".\r\nQUIT\r\n"
    finals = [line[:3] for line in smtp_session_lines("127.0.0.1", flt.port, payload) if line[3:4] == " "]
    assert finals == ["220", "250", "250", "250", "354", "500", "250", "250", "354", "250", "221"]
    assert [m.data for m in downstream.messages] == [message("fine")]


@pytest.mark.parametrize("verb", ["XFORWARD", "MAIL", "DATA"])
def test_pooled_connection_closed_by_next_hop_is_replaced(
    make_filter: Make, downstream: RecordingServer, verb: str
) -> None:
    """A reused next-hop connection that dies before the content was sent is retried on a new one."""
    downstream.advertise_xforward = verb == "XFORWARD"
    flt = make_filter([EICAR_SCAN])
    send(flt.port, message("first"))
    downstream.hang_up_at = verb
    send(flt.port, message("second"))
    assert [m.data for m in downstream.messages] == [message("first"), message("second")]
    assert downstream.connections == 2
    assert downstream.hang_up_at is None  # the hang-up did happen


def test_next_hop_dying_after_the_content_is_a_tempfail_not_a_retry(
    make_filter: Make, downstream: RecordingServer
) -> None:
    """Once the content went out, a lost connection is 451: a retry could deliver twice."""
    flt = make_filter([EICAR_SCAN])
    send(flt.port, message("first"))
    downstream.hang_up_at = "CONTENT"
    with pytest.raises(smtplib.SMTPDataError) as error:
        send(flt.port, message("second"))
    assert error.value.smtp_code == 451
    assert [m.data for m in downstream.messages] == [message("first")]
    send(flt.port, message("third"))
    assert [m.data for m in downstream.messages] == [message("first"), message("third")]


def test_null_sender_is_accepted_and_relayed_as_null(make_filter: Make, downstream: RecordingServer) -> None:
    """Bounces and notifications come with MAIL FROM:<>; the next hop gets MAIL FROM:<> too."""
    flt = make_filter([EICAR_SCAN])
    payload = b"EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n" + message("bounce") + b".\r\nQUIT\r\n"
    finals = [line[:3] for line in smtp_session_lines("127.0.0.1", flt.port, payload) if line[3:4] == " "]
    assert finals == ["220", "250", "250", "250", "354", "250", "221"]
    assert [m.sender for m in downstream.messages] == ["<>"]  # how aiosmtpd records MAIL FROM:<>


class _Traced(Scanner):
    """Records the Python memory allocated (tracemalloc) when the message is scanned, and the peak before."""

    name = "traced"

    def __init__(self) -> None:
        self.during: list[tuple[int, int]] = []

    async def scan(self, target: Target) -> Result:
        self.during.append(tracemalloc.get_traced_memory())
        return Result(0.0, "", self.name)


def test_a_spooled_message_is_received_about_once_and_not_held_while_it_is_scanned(
    make_filter: Make, downstream: RecordingServer
) -> None:
    # The received bytes were held by the DATA command's frame, the aiosmtpd envelope and
    # process() while the whole pipeline ran beside the spool file: once more the message's size;
    # and DATA was read into a list of pieces, then joined: twice its size at the peak
    scanner = _Traced()
    flt = make_filter([scanner])
    data = big_message(6, virus=False)  # 8.2 MB, over the 1 MB spool threshold; no line starts with "."
    with socket.create_connection(("127.0.0.1", flt.port), timeout=60) as client:
        replies = client.makefile("rb")
        smtp_to_data(client, replies)
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            client.sendall(data)  # sent as is: no copy on this side
            client.sendall(b".\r\n")
            reply = replies.readline()
        finally:
            tracemalloc.stop()
        client.sendall(b"QUIT\r\n")
    assert reply.startswith(b"250"), reply
    assert len(scanner.during) == 1
    held, peak = (value - start for value in scanner.during[0])
    assert held < len(data) // 2, f"{held / len(data):.2f} times the message held while it was scanned"
    assert peak < 1.5 * len(data), f"{peak / len(data):.2f} times the message at the peak of its receipt"
    assert downstream.messages[0].data == data
