"""trusted_clients through smtpd: the original client comes from Postfix's XFORWARD."""

from __future__ import annotations

from collections.abc import Callable

from mailsift import regexp_scan, reject
from mailsift.scanners.client import trusted_clients
from mailsift.testing import RecordingServer, ServiceThread, envelope_lines, smtp_session_lines
from tests.helpers.messages import message

SPAM = regexp_scan([("Spam-Word", r"BUY-NOW")])


def session(port: int, client: str) -> list[str]:
    payload = (
        b"EHLO postfix.example.test\r\n"
        + f"XFORWARD ADDR={client} NAME=mx.example.net\r\n".encode()
        + envelope_lines("a@example.net", ["bob@example.test"])
        + b"DATA\r\n"
        + message("offer", "BUY-NOW\r\n")
        + b".\r\nQUIT\r\n"
    )
    return [line for line in smtp_session_lines("127.0.0.1", port, payload) if line[3:4] == " "]


def test_spam_from_the_secondary_mx_is_deleted_not_rejected(
    make_filter: Callable[..., ServiceThread], downstream: RecordingServer
) -> None:
    flt = make_filter([trusted_clients(["127.0.0.0/8", "192.0.2.25"], reject(SPAM))])
    from_secondary = session(flt.port, "192.0.2.25")
    assert from_secondary[-2].startswith("250 "), from_secondary  # accepted and deleted
    from_elsewhere = session(flt.port, "198.51.100.7")
    assert from_elsewhere[-2].startswith("550 "), from_elsewhere
    assert downstream.messages == []  # neither was delivered
