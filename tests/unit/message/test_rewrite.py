"""Header edits on delivery: added fields prepended, Subject prefixed, body bytes untouched."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable

import pytest

from mailsift import add_header, const, modify_subject
from mailsift.core.pipeline import Pipeline
from mailsift.message.mail import Mail
from mailsift.message.result import AddHeader
from mailsift.message.rewrite import apply_edits

CRLF_MESSAGE = (
    b"From: a@example.net\r\nSubject: hello there\r\nDKIM-Signature: v=1; bh=xyz\r\n\r\n"
    b"Body line 1\r\nSubject: not a header\r\n\r\nlast line without newline"
)
LF_MESSAGE = CRLF_MESSAGE.replace(b"\r\n", b"\n")


def split(message: bytes) -> tuple[bytes, bytes]:
    """(header block, body) of a message, at the first empty line."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        if separator in message:
            head, body = message.split(separator, 1)
            return head, body
    return message, b""


def test_no_edits_returns_the_same_bytes() -> None:
    assert apply_edits(CRLF_MESSAGE) is CRLF_MESSAGE


@pytest.mark.parametrize("raw", [CRLF_MESSAGE, LF_MESSAGE], ids=["crlf", "lf"])
def test_headers_are_prepended_and_the_body_is_untouched(raw: bytes) -> None:
    newline = b"\r\n" if b"\r\n" in raw else b"\n"
    edited = apply_edits(raw, [AddHeader("X-Scanned", "yes"), AddHeader("X-Level", "0.40")])
    assert edited == b"X-Scanned: yes" + newline + b"X-Level: 0.40" + newline + raw
    assert split(edited)[1] == split(raw)[1]


@pytest.mark.parametrize("raw", [CRLF_MESSAGE, LF_MESSAGE], ids=["crlf", "lf"])
def test_subject_prefix_only_touches_the_header_subject(raw: bytes) -> None:
    edited = apply_edits(raw, subject_prefix="[SPAM] ")
    assert b"Subject: [SPAM] hello there" in edited
    assert b"Subject: not a header" in edited  # the body's look-alike line is left alone
    assert split(edited)[1] == split(raw)[1]
    assert len(edited) == len(raw) + len(b"[SPAM] ")


def test_subject_is_added_when_missing() -> None:
    raw = b"From: a@example.net\r\n\r\nbody\r\nSubject: in body\r\n"
    edited = apply_edits(raw, subject_prefix="[SPAM] ")
    assert edited == b"Subject: [SPAM]\r\n" + raw


def test_subject_match_is_case_insensitive() -> None:
    edited = apply_edits(b"From: a\r\nSUBJECT:   x\r\n\r\nb", subject_prefix="[T] ")
    assert edited == b"From: a\r\nSUBJECT:   [T] x\r\n\r\nb"


def test_non_ascii_values_are_encoded_words() -> None:
    edited = apply_edits(CRLF_MESSAGE, [AddHeader("X-Note", "vírus nájdený")], "[ŠPAM] ")
    parsed = email.message_from_bytes(edited, policy=email.policy.default)
    assert parsed["X-Note"] == "vírus nájdený"
    assert parsed["Subject"] == "[ŠPAM] hello there"
    assert edited.isascii()


@pytest.mark.parametrize(
    ("subject", "prefix", "expected"),
    [
        (b"hello", "[SPAM] ", "[SPAM] hello"),
        (b"hello", "[ŠPAM] ", "[ŠPAM] hello"),
        (b"=?utf-8?q?h=C3=A9llo?=", "[SPAM] ", "[SPAM] héllo"),
        (b"=?utf-8?q?h=C3=A9llo?=", "[ŠPAM] ", "[ŠPAM] héllo"),  # space between encoded words is dropped
    ],
)
def test_the_prefixed_subject_reads_as_expected(subject: bytes, prefix: str, expected: str) -> None:
    edited = apply_edits(b"From: a\r\nSubject: " + subject + b"\r\n\r\nbody\r\n", subject_prefix=prefix)
    assert email.message_from_bytes(edited, policy=email.policy.default)["Subject"] == expected


def test_long_non_ascii_values_fold_with_the_message_line_ending() -> None:
    value = "ž" * 80
    edited = apply_edits(CRLF_MESSAGE, [AddHeader("X-Long", value)])
    head = split(edited)[0]
    assert b"\r\n " in head  # folded...
    assert head.count(b"\n") == head.count(b"\r\n")  # ...without a bare LF
    parsed = email.message_from_bytes(edited, policy=email.policy.default)
    assert parsed["X-Long"] == value


def test_line_breaks_in_a_value_cannot_add_a_header() -> None:
    edited = apply_edits(CRLF_MESSAGE, [AddHeader("X-Virus", "Evil\r\nBcc: victim@example.org")], "[V\nX-Injected: 1] ")
    head = split(edited)[0]
    names = [line.split(b":", 1)[0] for line in head.split(b"\r\n")]
    assert b"Bcc" not in names
    assert b"X-Injected" not in names
    assert b"X-Virus: Evil\r\n\tBcc: victim@example.org" in head  # folded: a continuation line
    parsed = email.message_from_bytes(edited, policy=email.policy.default)
    assert " ".join(parsed["X-Virus"].split()) == "Evil Bcc: victim@example.org"
    assert parsed["Bcc"] is None


def test_a_multi_line_report_is_folded() -> None:
    report = "Content analysis details:   (12.3 points, 5.0 required)\n\n pts rule name\n 1.0 GTUBE  test\n"
    edited = apply_edits(CRLF_MESSAGE, [AddHeader("X-Spam-Report", report)])
    head = split(edited)[0]
    assert head.startswith(
        b"X-Spam-Report: Content analysis details:   (12.3 points, 5.0 required)\r\n"
        b"\tpts rule name\r\n\t1.0 GTUBE  test\r\n"
    )
    assert email.message_from_bytes(edited, policy=email.policy.default)["From"] == "a@example.net"


async def test_a_decision_applied_end_to_end(make_mail: Callable[..., Mail]) -> None:
    mail = make_mail(CRLF_MESSAGE)
    decision = await Pipeline(
        [add_header("X-Spam-Level", "%L", modify_subject("[SPAM %V] ", const(0.5, "SPAM")))]
    ).evaluate(mail)
    edited = apply_edits(mail.raw, decision.headers, decision.subject_prefix)
    assert edited.startswith(b"X-Spam-Level: 0.50\r\nFrom: a@example.net\r\nSubject: [SPAM SPAM] hello there\r\n")
    assert split(edited)[1] == split(CRLF_MESSAGE)[1]
