"""A BinHex 4.0 encoder for test fixtures (written from RFC 1741's description, not from any decoder).

Independent of :mod:`mailsift.mime.binhex`: it shares no code with it, and
tests/unit/mime/test_binhex.py checks one fixture against Debian's
``macutils`` (``hexbin``) when it is installed.
"""

from __future__ import annotations

import binascii
import struct

ALPHABET = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"
HEADER_LINE = b"(This file must be converted with BinHex 4.0)"


def rle(data: bytes, *, min_run: int = 3) -> bytes:
    """Run-length encode: runs of ``min_run`` or more as ``x 0x90 n`` (n <= 255), 0x90 itself as ``0x90 0x00``."""
    out = bytearray()
    index = 0
    while index < len(data):
        byte = data[index]
        run = 1
        while index + run < len(data) and data[index + run] == byte and run < 255:
            run += 1
        literal = b"\x90\x00" if byte == 0x90 else bytes((byte,))
        if run >= min_run:
            out += literal + bytes((0x90, run))
        else:
            out += literal * run
        index += run
    return bytes(out)


def six_bit(data: bytes) -> bytes:
    """8-bit bytes to BinHex characters (the last group's missing bits are zero)."""
    out = bytearray()
    bits = value = 0
    for byte in data:
        value = (value << 8) | byte
        bits += 8
        while bits >= 6:
            bits -= 6
            out.append(ALPHABET[(value >> bits) & 63])
    if bits:
        out.append(ALPHABET[(value << (6 - bits)) & 63])
    return bytes(out)


def crc(data: bytes) -> bytes:
    return struct.pack(">H", binascii.crc_hqx(data, 0))


def binhex(
    name: str,
    data: bytes,
    resource: bytes = b"",
    *,
    file_type: bytes = b"ZIP ",
    creator: bytes = b"SITx",
    header_line: bool = True,
    line_length: int = 64,
    newline: bytes = b"\n",
    compress: bool = True,
    bad_crc: str = "",
) -> bytes:
    """The BinHex 4.0 text of a file; ``bad_crc`` ('header', 'data' or 'resource') spoils that CRC."""
    raw_name = name.encode("mac_roman")
    header = (
        bytes((len(raw_name),))
        + raw_name
        + b"\x00"
        + file_type
        + creator
        + b"\x00\x00"
        + struct.pack(">II", len(data), len(resource))
    )

    def checked(block: bytes, which: str) -> bytes:
        value = crc(block)
        if bad_crc == which:
            value = bytes((value[0] ^ 0xFF, value[1]))
        return block + value

    stream = checked(header, "header") + checked(data, "data") + checked(resource, "resource")
    text = b":" + six_bit(rle(stream) if compress else stream.replace(b"\x90", b"\x90\x00")) + b":"
    lines = [text[i : i + line_length] for i in range(0, len(text), line_length)]
    head = [HEADER_LINE, b""] if header_line else []
    return newline.join([*head, *lines]) + newline
