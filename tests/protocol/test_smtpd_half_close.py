"""A client that half-closes after a pipelined final dot and QUIT still gets its answers.

Exim's smtp transport (4.96, with PIPELINING) sends ``.`` and ``QUIT`` together and
shuts its side of the connection down (``shutdown(SHUT_WR)``) before it reads the
reply; aiosmtpd cancelled the message on that EOF, so Exim deferred it and sent it
again (tests/integration/test_exim.py met it).  Here a raw socket does the same.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from mailsift import cmd, regexp_scan
from mailsift.testing import RecordingServer, ServiceThread
from tests.helpers.messages import message

Make = Callable[..., ServiceThread]


def exim_like(port: int, data: bytes) -> list[str]:
    """EHLO, pipelined MAIL/RCPT/DATA, then the message, ``.`` and QUIT at once and a half-close."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        sock.sendall(b"EHLO exim.example.test\r\n")
        while not (line := reader.readline()).startswith(b"250 "):
            assert line.startswith(b"250-"), line
        sock.sendall(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        assert [reader.readline()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
        sock.sendall(data + b".\r\nQUIT\r\n")
        sock.shutdown(socket.SHUT_WR)
        rest = reader.read().decode().splitlines()
        reader.close()
        return rest


def test_the_message_is_finished_and_answered_after_a_half_close(
    make_filter: Make, downstream: RecordingServer
) -> None:
    flt = make_filter([cmd(["sleep", "1"]), regexp_scan([("EICAR-Test", "EICAR-STANDARD")])])  # EOF comes mid-scan
    answers = exim_like(flt.port, message("half closed"))
    assert [line[:3] for line in answers] == ["250", "221"], answers
    assert len(downstream.messages) == 1
    assert b"half closed" in downstream.messages[0].data


def test_a_half_close_in_the_middle_of_data_ends_at_the_idle_timeout(
    make_filter: Make, downstream: RecordingServer
) -> None:
    """Bad input: the rest of the message never comes; the connection is closed, nothing relayed."""
    flt = make_filter([regexp_scan([("EICAR-Test", "EICAR-STANDARD")])], timeout=1)
    with socket.create_connection(("127.0.0.1", flt.port), timeout=30) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        sock.sendall(b"HELO exim.example.test\r\n")
        assert reader.readline().startswith(b"250")
        sock.sendall(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        assert [reader.readline()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
        sock.sendall(b"Subject: cut\r\n\r\nhalf a message\r\n")
        sock.shutdown(socket.SHUT_WR)
        rest = reader.read().decode().splitlines()  # the connection ends (the socket timeout bounds the wait)
        reader.close()
    assert [line[:3] for line in rest] == ["421"], rest
    assert downstream.messages == []
