"""The MTA's side of a milter's edits: every packet before the final answer, and the message they make.

``EditingMTA.transaction`` sends one message (as :class:`tests.helpers.milter.MilterClient`
does) and keeps every modification packet; :func:`apply_edits` applies them as an
MTA does (SMFIR_ADDHEADER appends, SMFIR_CHGHEADER changes or with an empty value
deletes the n-th field of a name, SMFIR_REPLBODY chunks replace the body,
SMFIR_ADDRCPT/SMFIR_DELRCPT change the recipients).  Written from the protocol,
not from mailsift's code.
"""

from __future__ import annotations

import struct

from tests.helpers.milter import MilterClient, MilterWire

FINAL = b"acdrty"


class EditingMTA(MilterClient):
    """A milter client that returns the modification packets with the final answer.

    ``actions`` is the SMFIF_* set the MTA offers (all by default).
    """

    def __init__(self, port: int, actions: int = 0x1FF) -> None:
        MilterWire.__init__(self, port)
        self.send(b"O", struct.pack(">III", 6, actions, 0))
        assert self.read()[0] == b"O"
        self._step(b"C", b"client.example.test\0" + b"4" + struct.pack(">H", 4567) + b"192.0.2.10\0")
        self._step(b"H", b"helo.example.test\0")

    def transaction(
        self, queue_id: str, sender: str, recipients: list[str], data: bytes
    ) -> tuple[list[tuple[bytes, bytes]], tuple[bytes, bytes]]:
        self.edits: list[tuple[bytes, bytes]] = []
        read = self.read

        def recording() -> tuple[bytes, bytes]:
            packet = read()
            if packet[0] not in FINAL and packet != (b"c", b""):
                self.edits.append(packet)
            return packet

        self.read = recording  # type: ignore[method-assign]
        try:
            answer = self.message(queue_id, sender, recipients, data)
        finally:
            del self.read
        return self.edits, answer


def _strings(data: bytes) -> list[bytes]:
    return data.split(b"\0")[:-1]


def apply_edits(
    data: bytes, recipients: list[str], edits: list[tuple[bytes, bytes]]
) -> tuple[bytes, list[str], list[bytes]]:
    """The message (CRLF) and recipients after ``edits``, and the packet codes seen in order."""
    head, _, body = data.replace(b"\r\n", b"\n").partition(b"\n\n")
    fields: list[list[bytes]] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1] += b"\n" + line
        else:
            name, _, value = line.partition(b":")
            fields.append([name, value.lstrip(b" ")])
    new_body: bytes | None = None
    rcpts = list(recipients)
    codes: list[bytes] = []
    for code, payload in edits:
        codes.append(code)
        if code == b"h":
            name, value = _strings(payload)
            fields.append([name, value])
        elif code == b"m":
            (index,) = struct.unpack(">I", payload[:4])
            name, value = _strings(payload[4:])
            same = [f for f in fields if f[0].lower() == name.lower()]
            if index > len(same):
                if value:
                    fields.append([name, value])
            elif value:
                same[index - 1][1] = value
            else:
                fields.remove(same[index - 1])
        elif code == b"b":
            new_body = (new_body or b"") + payload
        elif code == b"+":
            rcpts.append(_strings(payload)[0].decode().strip("<>"))
        elif code == b"-":
            rcpts.remove(_strings(payload)[0].decode().strip("<>"))
        else:
            raise AssertionError(f"unexpected packet {code!r}")
    lines = b"\r\n".join(name + b": " + value.replace(b"\n", b"\r\n") for name, value in fields)
    final_body = new_body if new_body is not None else body.replace(b"\n", b"\r\n")
    return lines + b"\r\n\r\n" + final_body, rcpts, codes
