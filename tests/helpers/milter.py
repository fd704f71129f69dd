"""The MTA side of the milter protocol, small: one message per call, every step answered."""

from __future__ import annotations

import socket
import struct


class MilterWire:
    """A TCP connection to a milter, packet by packet (length, command, data)."""

    def __init__(self, port: int, timeout: float = 30) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def send(self, command: bytes, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">I", len(data) + 1) + command + data)

    def exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise EOFError(f"the filter closed the connection without an answer ({len(data)} bytes)")
            data += chunk
        return data

    def read(self) -> tuple[bytes, bytes]:
        (length,) = struct.unpack(">I", self.exactly(4))
        packet = self.exactly(length)
        return packet[:1], packet[1:]


class MilterClient(MilterWire):
    """Sends messages to a milter over TCP as an MTA would (protocol version 6, no no-reply steps)."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.send(b"O", struct.pack(">III", 6, 0x1FF, 0))
        assert self.read()[0] == b"O"
        self._step(b"C", b"client.example.test\0" + b"4" + struct.pack(">H", 4567) + b"192.0.2.10\0")
        self._step(b"H", b"helo.example.test\0")

    def _step(self, command: bytes, data: bytes) -> None:
        self.send(command, data)
        assert self.read() == (b"c", b"")

    def message(self, queue_id: str, sender: str, recipients: list[str], data: bytes) -> tuple[bytes, bytes]:
        """One transaction; the final answer packet (``a`` accept, ``d`` discard, ``y`` reply...)."""
        head, _, body = data.replace(b"\r\n", b"\n").partition(b"\n\n")
        self.send(b"D", b"M" + b"i\0" + queue_id.encode() + b"\0")
        self._step(b"M", f"<{sender}>\0".encode())
        for recipient in recipients:
            self._step(b"R", f"<{recipient}>\0".encode())
        fields: list[tuple[bytes, bytes]] = []
        for line in head.split(b"\n"):
            if line[:1] in (b" ", b"\t") and fields:
                fields[-1] = (fields[-1][0], fields[-1][1] + b"\n" + line)
            else:
                name, _, value = line.partition(b":")
                fields.append((name, value.lstrip(b" ")))
        for name, value in fields:
            self._step(b"L", name + b"\0" + value + b"\0")
        self._step(b"N", b"")
        if body:
            self._step(b"B", body.replace(b"\n", b"\r\n"))
        self.send(b"E")
        while True:
            answer = self.read()
            if answer[0] in b"acdrty":
                return answer

    def close(self) -> None:
        self.sock.close()
