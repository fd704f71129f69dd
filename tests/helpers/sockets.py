"""Small socket steps for tests that speak a daemon's protocol by hand."""

from __future__ import annotations

import socket
from typing import BinaryIO


def recv_until(sock: socket.socket, end: bytes) -> bytes:
    """What ``sock`` sends until it ends with ``end`` (included), or until the peer closes."""
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def smtp_to_data(sock: socket.socket, replies: BinaryIO) -> None:
    """Greeting, HELO, MAIL and RCPT, then DATA, by hand on ``sock`` (``replies`` its reading
    file), each reply checked: the content may be sent next."""
    assert replies.readline().startswith(b"220")
    sock.sendall(b"HELO client.test\r\n")
    assert replies.readline().startswith(b"250")
    sock.sendall(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    assert [replies.readline()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
