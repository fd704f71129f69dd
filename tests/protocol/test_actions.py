"""modify_header, remove_headers, deliver_to and sanitize on real sockets: through smtpd to a
recording next hop, and through the milter (the edits as packets, applied as an MTA applies them:
tests/helpers/milter_edits.py)."""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailsift import (
    add_header,
    deliver,
    deliver_to,
    modify_header,
    recipient_regexp,
    regexp_scan,
    remove_headers,
    sanitize,
    smtpd_policy,
)
from mailsift.services import milter_protocol as mp
from mailsift.services.lmtpd import lmtpd
from mailsift.services.milter import milter
from mailsift.services.sgfilter_client import ask
from mailsift.services.sgfilterd import sgfilterd
from mailsift.settings import Settings
from mailsift.testing import RecordingServer, ServiceThread, smtp_session_lines
from tests.helpers.messages import message
from tests.helpers.milter_edits import EditingMTA, apply_edits
from tests.helpers.sanitize import EICAR, PDF, have_perl_reader, mixed, perl_parts, python_parts, single

VIRUS = regexp_scan([("Eicar-Test-Signature", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")])
SPAMMY = regexp_scan([("Spam", r"cheap pills")])
FORGED = "X-Spam-Status: No, score=-50 (forged)\r\nX-Spam-Flag: NO\r\nX-Virus-Found: none\r\n"


def scanners() -> list[Any]:
    return [
        remove_headers("X-Spam-"),
        add_header("X-Spam-Status", "%V, level=%L", deliver(SPAMMY)),
        modify_header("X-Virus-Found", "%V", sanitize(VIRUS)),
        deliver_to("quarantine@example.test", regexp_scan([("Redirect-Me", r"REDIRECT-ME")])),
        deliver_to("archive@example.test", regexp_scan([("Copy-Me", r"COPY-ME")]), copy=True),
        regexp_scan([("Reject-Me", r"REJECT-ME")]),
    ]


def send(port: int, data: bytes, rcpts: list[str] | None = None) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("alice@example.test", rcpts or ["bob@example.test"], data)


def head(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def assert_sanitized(data: bytes) -> None:
    parts, defects = python_parts(data)
    assert defects == []
    assert EICAR not in data
    assert [kind for kind, _, _ in parts] == ["text/plain", "text/plain", "application/pdf"]
    assert b"File: invoice.com" in parts[1][2]
    assert parts[2][2] == PDF
    if have_perl_reader():
        perl, error = perl_parts(data)
        assert error is None
        assert [names for names, _ in perl] == [[], [], ["report.pdf"]]
        assert b"Reason: Eicar-Test-Signature (regexp_scan)" in perl[1][1]
        assert perl[2][1] == PDF


# --------------------------------------------------------------------------- smtpd


@pytest.fixture
def smtp(make_filter: Callable[..., ServiceThread]) -> ServiceThread:
    return make_filter(scanners())


def test_smtpd_strips_forged_spam_headers_before_its_own_are_added(
    smtp: ServiceThread, downstream: RecordingServer
) -> None:
    send(smtp.port, message("offer", "cheap pills\r\n", headers=FORGED))
    (got,) = downstream.messages
    fields = head(got.data)
    assert [f for f in fields if f.startswith(b"X-Spam-")] == [b"X-Spam-Status: Spam, level=1.00"]
    assert b"X-Virus-Found: none" in fields  # not matched by 'X-Spam-'


def test_smtpd_modify_header_and_sanitize(smtp: ServiceThread, downstream: RecordingServer) -> None:
    send(smtp.port, mixed(headers=b"X-Virus-Found: none (forged)\r\n"))
    (got,) = downstream.messages
    assert got.recipients == ["bob@example.test"]
    assert [f for f in head(got.data) if f.startswith(b"X-Virus-Found")] == [b"X-Virus-Found: Eicar-Test-Signature"]
    assert_sanitized(got.data)


def test_smtpd_deliver_to_redirects(smtp: ServiceThread, downstream: RecordingServer) -> None:
    send(smtp.port, message("r", "REDIRECT-ME\r\n"), ["bob@example.test", "carol@example.test"])
    (got,) = downstream.messages
    assert got.sender == "alice@example.test"
    assert got.recipients == ["quarantine@example.test"]


def test_smtpd_deliver_to_copies(smtp: ServiceThread, downstream: RecordingServer) -> None:
    send(smtp.port, message("c", "COPY-ME\r\n"))
    (got,) = downstream.messages
    assert got.recipients == ["bob@example.test", "archive@example.test"]


def test_smtpd_a_clean_mail_keeps_its_recipients_and_bytes(smtp: ServiceThread, downstream: RecordingServer) -> None:
    data = message("plain", "nothing to see\r\n")
    send(smtp.port, data)
    (got,) = downstream.messages
    assert got.recipients == ["bob@example.test"]
    assert got.data.replace(b"\r\n", b"\n").rstrip(b"\n") == data.replace(b"\r\n", b"\n").rstrip(b"\n")


def test_smtpd_a_finding_it_cannot_sanitize_is_rejected(smtp: ServiceThread, downstream: RecordingServer) -> None:
    stray = mixed() + b"--elsewhere\r\nContent-Type: application/octet-stream\r\n\r\n" + EICAR + b"\r\n"
    with pytest.raises(smtplib.SMTPDataError) as error:
        send(smtp.port, stray)
    assert error.value.smtp_code == 550
    assert b"Eicar-Test-Signature" in error.value.smtp_error
    assert downstream.messages == []


# --------------------------------------------------------------------------- milter


@pytest.fixture
def milter_port(tmp_path: Path) -> Iterator[int]:
    service = milter(scanners(), "mailsift", "inet:0@127.0.0.1")
    thread = ServiceThread(service, Settings(state_dir=str(tmp_path / "state"))).start()
    try:
        yield thread.port
    finally:
        thread.stop()


@pytest.fixture
def mta(milter_port: int) -> Iterator[EditingMTA]:
    client = EditingMTA(milter_port)
    try:
        yield client
    finally:
        client.close()


def test_milter_removes_and_adds_header_fields(mta: EditingMTA) -> None:
    data = message("offer", "cheap pills\r\n", headers=FORGED)
    edits, answer = mta.transaction("Q1", "alice@example.test", ["bob@example.test"], data)
    assert answer == (b"a", b"")
    final, rcpts, codes = apply_edits(data, ["bob@example.test"], edits)
    assert codes == [b"m", b"m"]  # X-Spam-Status changed to mailsift's, X-Spam-Flag changed to empty: removed
    assert [f for f in head(final) if f.startswith(b"X-Spam-")] == [b"X-Spam-Status: Spam, level=1.00"]
    assert b"X-Virus-Found: none" in head(final)
    assert rcpts == ["bob@example.test"]


def test_milter_sanitizes_with_replbody(mta: EditingMTA) -> None:
    data = mixed(headers=b"X-Virus-Found: forged\r\n")
    edits, answer = mta.transaction("Q2", "alice@example.test", ["bob@example.test"], data)
    assert answer == (b"a", b"")
    final, rcpts, codes = apply_edits(data, ["bob@example.test"], edits)
    assert b"b" in codes  # SMFIR_REPLBODY
    assert b"m" in codes  # X-Virus-Found changed in place (SMFIR_CHGHEADER)
    assert [f for f in head(final) if f.startswith(b"X-Virus-Found")] == [b"X-Virus-Found: Eicar-Test-Signature"]
    assert_sanitized(final)
    assert rcpts == ["bob@example.test"]


def test_milter_deliver_to_redirects_with_addrcpt_and_delrcpt(mta: EditingMTA) -> None:
    rcpts = ["bob@example.test", "carol@example.test"]
    data = message("r", "REDIRECT-ME\r\n")
    edits, answer = mta.transaction("Q3", "alice@example.test", rcpts, data)
    assert answer == (b"a", b"")
    final, after, codes = apply_edits(data, rcpts, edits)
    assert codes == [b"+", b"-", b"-"]
    assert after == ["quarantine@example.test"]
    assert final.replace(b"\r\n", b"\n") == data.replace(b"\r\n", b"\n")  # nothing else changed


def test_milter_deliver_to_copies_with_addrcpt(mta: EditingMTA) -> None:
    data = message("c", "COPY-ME\r\n")
    edits, answer = mta.transaction("Q4", "alice@example.test", ["bob@example.test"], data)
    assert answer == (b"a", b"")
    assert [code for code, _ in edits] == [b"+"]
    assert apply_edits(data, ["bob@example.test"], edits)[1] == ["bob@example.test", "archive@example.test"]


def test_milter_a_finding_it_cannot_sanitize_is_rejected(mta: EditingMTA) -> None:
    stray = mixed() + b"--elsewhere\r\nContent-Type: application/octet-stream\r\n\r\n" + EICAR + b"\r\n"
    edits, answer = mta.transaction("Q5", "alice@example.test", ["bob@example.test"], stray)
    assert edits == []
    assert answer[0] == b"y"
    assert answer[1].startswith(b"550 ")


@pytest.mark.parametrize(
    ("refused", "body"),
    [
        (mp.SMFIF_ADDRCPT, b"REDIRECT-ME\r\n"),
        (mp.SMFIF_DELRCPT, b"REDIRECT-ME\r\n"),
        (mp.SMFIF_ADDRCPT, b"COPY-ME\r\n"),
    ],
    ids=["redirect-no-addrcpt", "redirect-no-delrcpt", "copy-no-addrcpt"],
)
def test_milter_answers_451_when_the_mta_refuses_a_recipient_change(
    milter_port: int, refused: int, body: bytes
) -> None:
    """Accepting as it came would hand the detection to the recipients deliver_to took it from."""
    client = EditingMTA(milter_port, actions=0x1FF & ~refused)
    try:
        edits, answer = client.transaction("Q6", "alice@example.test", ["bob@example.test"], message("x", body))
    finally:
        client.close()
    assert edits == []
    assert answer[0] == b"y"
    assert answer[1].startswith(b"451 4.7.1 ")


@pytest.mark.parametrize(
    ("refused", "data"),
    [(mp.SMFIF_CHGBODY, mixed()), (mp.SMFIF_CHGHDRS, single())],
    ids=["body", "content-type-of-a-single-part"],
)
def test_milter_answers_451_when_the_mta_refuses_part_of_a_sanitized_message(
    milter_port: int, refused: int, data: bytes
) -> None:
    client = EditingMTA(milter_port, actions=0x1FF & ~refused)
    try:
        edits, answer = client.transaction("Q7", "alice@example.test", ["bob@example.test"], data)
    finally:
        client.close()
    assert edits == []
    assert answer[1].startswith(b"451 4.7.1 ")


def test_milter_other_refused_edits_are_only_logged(milter_port: int) -> None:
    """A header the MTA does not let mailsift add is no reason to keep the mail back (as before)."""
    client = EditingMTA(milter_port, actions=0x1FF & ~(mp.SMFIF_ADDHDRS | mp.SMFIF_CHGHDRS))
    try:
        edits, answer = client.transaction(
            "Q8", "alice@example.test", ["bob@example.test"], message("o", "cheap pills\r\n")
        )
    finally:
        client.close()
    assert edits == []
    assert answer == (b"a", b"")


# --------------------------------------------------------------------------- sgfilterd


@pytest.fixture
def sgfilter_port(tmp_path: Path) -> Iterator[int]:
    thread = ServiceThread(sgfilterd(scanners(), "127.0.0.1", 0), Settings(state_dir=str(tmp_path / "state"))).start()
    try:
        yield thread.port
    finally:
        thread.stop()


@pytest.mark.parametrize(
    "data",
    [
        message("r", "REDIRECT-ME\r\n"),  # deliver_to: the client delivers to its own recipients
        message("c", "COPY-ME\r\n"),
        message("f", "text\r\n", headers=FORGED),  # remove_headers shortens the header block
        mixed(),  # sanitize replaces the body
    ],
    ids=["redirect", "copy", "remove_headers", "sanitize"],
)
def test_sgfilterd_answers_451_for_what_its_client_cannot_carry(sgfilter_port: int, data: bytes) -> None:
    """Never the original to the original recipients: the message stays with the MTA (qmail retries)."""
    answer = ask("127.0.0.1", sgfilter_port, "alice@example.test", ["bob@example.test"], data, timeout=30)
    assert answer.status == 451
    assert answer.message == b""


def test_sgfilterd_still_delivers_added_header_lines(sgfilter_port: int) -> None:
    data = message("s", "cheap pills\r\n")
    answer = ask("127.0.0.1", sgfilter_port, "alice@example.test", ["bob@example.test"], data, timeout=30)
    assert answer.status == 251
    assert answer.message is not None
    assert answer.message.startswith(b"X-Spam-Status: Spam, level=1.00\r\n")


# --------------------------------------------------------------------------- smtpd_policy


def policy_answer(port: int, recipient: str) -> str:
    attributes = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "client_address": "192.0.2.10",
        "sender": "alice@example.test",
        "recipient": recipient,
    }
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall("".join(f"{k}={v}\n" for k, v in attributes.items()).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n\n"):
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
    return data.decode().removeprefix("action=").strip()


def test_policy_deliver_to_is_postfixs_redirect_or_bcc(tmp_path: Path) -> None:
    service = smtpd_policy(
        [
            deliver_to("quarantine@example.test", recipient_regexp([("Trap", r"^trap@")])),
            deliver_to("admin@example.test", recipient_regexp([("Watched", r"^watched@")]), copy=True),
        ],
        None,
        "127.0.0.1",
        0,
    )
    thread = ServiceThread(service, Settings(state_dir=str(tmp_path / "state"))).start()
    try:
        assert policy_answer(thread.port, "trap@example.test") == "REDIRECT quarantine@example.test"
        assert policy_answer(thread.port, "watched@example.test") == "BCC admin@example.test"
        assert policy_answer(thread.port, "bob@example.test") == "DUNNO"
    finally:
        thread.stop()


# --------------------------------------------------------------------------- lmtpd


def lmtp_replies(port: int, recipients: list[str], data: bytes) -> list[str]:
    payload = b"LHLO client.test\r\nMAIL FROM:<alice@example.test>\r\n"
    payload += b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in recipients)
    payload += b"DATA\r\n" + data + b".\r\nQUIT\r\n"
    lines = smtp_session_lines("127.0.0.1", port, payload)
    start = next(i for i, line in enumerate(lines) if line.startswith("354 "))
    return lines[start + 1 : -1]


@pytest.mark.parametrize(
    ("body", "delivered_to"),
    [
        (b"REDIRECT-ME\r\n", ["quarantine@example.test"]),
        (b"COPY-ME\r\n", ["bob@example.test", "carol@example.test", "archive@example.test"]),
    ],
    ids=["redirect", "copy"],
)
def test_lmtpd_deliver_to_answers_each_recipient(
    tmp_path: Path, downstream: RecordingServer, body: bytes, delivered_to: list[str]
) -> None:
    service = lmtpd(scanners(), "127.0.0.1", 0, next_hop=("127.0.0.1", downstream.port))
    thread = ServiceThread(service, Settings(state_dir=str(tmp_path / "state"))).start()
    try:
        replies = lmtp_replies(thread.port, ["bob@example.test", "carol@example.test"], message("l", body.decode()))
    finally:
        thread.stop()
    assert [line[:4] for line in replies] == ["250 ", "250 "]
    (got,) = downstream.messages
    assert got.recipients == delivered_to
