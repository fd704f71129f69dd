"""One message through each front end over a real socket: its final answer (protocol tests)."""

from __future__ import annotations

import socket
import struct

from mailsift.services import milter_protocol as mp
from mailsift.testing import smtp_session_lines
from tests.helpers.milter import MilterWire


def _finals(lines: list[str]) -> list[str]:
    finals = [line for line in lines if line[3:4] == " "]
    start = next(i for i, line in enumerate(finals) if line.startswith("354 "))
    return finals[start + 1 :]


def via_smtpd(port: int, data: bytes, timeout: float = 60) -> list[str]:
    """The reply after the content, then QUIT's 221."""
    payload = b"EHLO client.test\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
    return _finals(smtp_session_lines("127.0.0.1", port, payload + data + b".\r\nQUIT\r\n", timeout))


def via_lmtpd(port: int, data: bytes, timeout: float = 60) -> list[str]:
    """One reply per recipient (bob, carol) after the content, then QUIT's 221."""
    payload = b"LHLO client.test\r\nMAIL FROM:<alice@example.test>\r\n"
    payload += b"RCPT TO:<bob@example.test>\r\nRCPT TO:<carol@example.test>\r\nDATA\r\n"
    return _finals(smtp_session_lines("127.0.0.1", port, payload + data + b".\r\nQUIT\r\n", timeout))


def via_milter(
    port: int, headers: list[tuple[bytes, bytes]], body: bytes, timeout: float = 60, queue_id: bytes = b"DEADLINE1"
) -> tuple[bytes, bytes]:
    """The milter's final answer (command, data) to one message (the connection closing first is an EOFError)."""
    wire = MilterWire(port, timeout)
    send, read = wire.send, wire.read
    try:
        send(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF))
        command, data = read()
        assert command == b"O"
        steps = struct.unpack(">III", data[:12])[2]

        def step(command: bytes, data: bytes, no_reply: int) -> None:
            send(command, data)
            if not steps & no_reply:
                assert read() == (mp.SMFIR_CONTINUE, b"")

        step(b"C", b"client.test\0" + b"4" + struct.pack(">H", 4567) + b"192.0.2.10\0", mp.SMFIP_NR_CONN)
        step(b"H", b"helo.test\0", mp.SMFIP_NR_HELO)
        send(b"D", b"Mi\0" + queue_id + b"\0")
        step(b"M", b"<alice@example.test>\0", mp.SMFIP_NR_MAIL)
        step(b"R", b"<bob@example.test>\0", mp.SMFIP_NR_RCPT)
        for name, value in headers:
            step(b"L", name + b"\0" + value + b"\0", mp.SMFIP_NR_HDR)
        step(b"N", b"", mp.SMFIP_NR_EOH)
        for start in range(0, len(body), 60000):
            step(b"B", body[start : start + 60000], mp.SMFIP_NR_BODY)
        send(b"E")
        while True:
            command, data = read()
            if command in b"artdy":
                return command, data
    finally:
        wire.sock.close()


def via_sgfilterd(port: int, data: bytes, timeout: float = 60) -> str:
    """sgfilterd's status line."""
    request = f"MAIL FROM: alice@example.test\nRCPT TO: bob@example.test\nDATA {len(data)}\n".encode() + data
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received, "sgfilterd closed the connection without an answer"
    return received.split(b"\n", 1)[0].decode()
