"""The sgfilterd client's answer parsing with and without mailsift's ``ANSWER LENGTH`` (services/sgfilter_client.py)."""

from __future__ import annotations

import pytest

from mailsift.services.sgfilter_client import (
    ClientInfo,
    DaemonLost,
    client_from_environment,
    custom_error_text,
    parse_answer,
    request,
)

ORIGINAL = b"Subject: hi\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
CHANGED = b"Subject: hi\r\nX-Renamed: x\r\n\r\nother body\r\n"


def test_without_length_a_changed_body_looks_cut() -> None:
    with pytest.raises(DaemonLost, match="cut short"):
        parse_answer(b"250 0.00\n" + CHANGED, ORIGINAL)


def test_with_length_a_changed_body_is_delivered_and_a_cut_one_is_not() -> None:
    answer = parse_answer(b"251 1.00 Bad\n" + f"LENGTH {len(CHANGED)}\n".encode() + CHANGED, ORIGINAL, True)
    assert (answer.status, answer.message) == (251, CHANGED)
    with pytest.raises(DaemonLost, match="cut short"):
        parse_answer(b"250 0.00\n" + f"LENGTH {len(CHANGED) + 1}\n".encode() + CHANGED, ORIGINAL, True)
    with pytest.raises(DaemonLost, match="garbled LENGTH"):
        parse_answer(b"250 0.00\n" + CHANGED, ORIGINAL, True)
    assert parse_answer(b"550 1.00 Virus\n", ORIGINAL, True).name == "Virus"  # no message, no LENGTH


def test_request_lines() -> None:
    sent = request("a@x", ["b@y"], b"M", ClientInfo("192.0.2.1", "mx.x", True), True)
    assert sent == (
        b"MAIL FROM: <a@x>\nRCPT TO: <b@y>\nCLIENT ADDRESS: 192.0.2.1\nCLIENT NAME: mx.x\nRELAY CLIENT: 1\n"
        b"ANSWER LENGTH: 1\nDATA 1\nM"
    )
    assert request("a@x", ["b@y"], b"M") == b"MAIL FROM: <a@x>\nRCPT TO: <b@y>\nDATA 1\nM"


def test_client_from_environment() -> None:
    assert client_from_environment({"TCPREMOTEIP": "::ffff:192.0.2.1"}) == ClientInfo("::ffff:c000:201", "", False)
    assert client_from_environment({}) == ClientInfo("127.0.0.1", "", False)
    assert client_from_environment({"RELAYCLIENT": ""}, "") == ClientInfo("", "", True)


def test_custom_error_texts_are_one_printable_line() -> None:
    from mailsift.services.sgfilter_client import QQ_INTERNAL_BUG, QQ_REJECTED, Answer

    assert (
        custom_error_text(QQ_REJECTED, Answer(550, 1.0, "Worm.X\r\n250 ok"))
        == "DYour email was rejected: Worm.X 250 ok (#5.7.1)"
    )
    assert custom_error_text(QQ_REJECTED, None) == "Dmessage too big for the content filter (#5.3.4)"
    assert custom_error_text(QQ_INTERNAL_BUG, None) is None
