"""Small socket steps for tests that speak a daemon's protocol by hand."""

from __future__ import annotations

import socket


def recv_until(sock: socket.socket, end: bytes) -> bytes:
    """What ``sock`` sends until it ends with ``end`` (included), or until the peer closes."""
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data
