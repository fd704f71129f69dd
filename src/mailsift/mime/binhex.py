"""BinHex 4.0 (RFC 1741, ``application/mac-binhex40``): found in a text and decoded leniently.

Python 3.11 removed the standard library's ``binhex`` module (and ``binascii``'s
``a2b_hqx``/``rledecode_hqx``), so this is a small decoder of its own:

* the text between two ``:`` markers (the ``(This file must be converted with
  BinHex 4.0)`` line before it is optional, as mail clients treat it), in a
  64-character alphabet, 6 bits a character, line ends and blanks ignored: the
  same bit packing as base64, so it is mapped onto base64's alphabet with
  ``translate`` and decoded by :mod:`base64` (no Python loop over characters);
* run-length encoding: ``0x90 n`` repeats the byte before it to ``n`` in all,
  ``0x90 0x00`` is a literal ``0x90`` (a Python loop over the markers only, never
  over bytes; the output is cut at ``limit``);
* the header: name length, name, version, type, creator, flags, data and
  resource fork lengths, CRC; then the data fork and its CRC, the resource fork
  and its CRC (CRC-16/XMODEM, ``binascii.crc_hqx``).

A CRC that does not match is noted in :attr:`BinHexFile.defects`, and the forks
are returned all the same, as lenient readers do (a filter must scan what a
client may still open).  Nothing here raises on any input.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from dataclasses import dataclass

ALPHABET = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"
"""The 64 characters of BinHex 4.0, in the order of their 6-bit values."""

_TO_BASE64 = bytes.maketrans(ALPHABET, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_BLANKS = b" \t\r\n"

_BLOCK = re.compile(rb"^[ \t]*:([" + re.escape(ALPHABET) + rb"\s]{24,})(?::|\Z)", re.MULTILINE)
"""A BinHex text: a line starting with ``:``, alphabet characters and line ends up to the closing ``:``
(or the end).  A failed attempt stops at the first character outside the alphabet and no attempt
starts inside another's run (a run ends at the next ``:``), so the search stays linear."""

_RLE = re.compile(rb"\x90(.)", re.DOTALL)

BINHEX_TYPES = frozenset(
    {
        "application/mac-binhex40",
        "application/mac-binhex",
        "application/x-mac-binhex40",
        "application/binhex",
        "application/binhex4",
        "application/x-binhex40",
    }
)
"""Content types under which a BinHex text is sent."""

BINHEX_ENCODINGS = frozenset({"binhex", "binhex40", "mac-binhex40", "x-binhex40", "x-binhex", "x-mac-binhex40"})
"""Content-Transfer-Encoding values MIME::Tools decodes as BinHex (MIME::Decoder::BinHex)."""

HINT = re.compile(rb"converted with BinHex|^[ \t]*:[" + re.escape(ALPHABET) + rb"]{24}", re.MULTILINE)
"""Whether a text may hold BinHex (its header line, or a line starting like one)."""


@dataclass(frozen=True, slots=True)
class BinHexFile:
    """One decoded BinHex file: its Macintosh name, its forks, and what was wrong with it."""

    name: str
    data: bytes
    resource: bytes = b""
    file_type: bytes = b""
    creator: bytes = b""
    defects: tuple[str, ...] = ()


def hqx_bits(text: bytes) -> bytes:
    """The 8-bit stream of a BinHex text (without its ``:`` markers), before run-length decoding."""
    clean = text.translate(_TO_BASE64, _BLANKS)
    clean = clean[: len(clean) - (len(clean) % 4 == 1)]  # one dangling character holds no whole byte
    try:
        return base64.b64decode(clean + b"=" * (-len(clean) % 4))
    except (ValueError, binascii.Error):  # a character outside the alphabet (not from _BLOCK)
        return b""


def rle_expand(stream: bytes, limit: int) -> tuple[bytes, bool]:
    """Undo BinHex's run-length encoding; ``(bytes, truncated)``, at most ``limit`` bytes.

    ``x 0x90 n`` is ``x`` repeated ``n`` times in all, ``0x90 0x00`` a literal 0x90;
    a run repeats the last byte written, itself possibly from a run or a literal 0x90.
    """
    pieces = _RLE.split(stream)  # literal, count, literal, count, ... (split in C)
    out: list[bytes] = []
    total = 0
    last = -1  # the last byte written; -1 before any
    for index, piece in enumerate(pieces):
        if index % 2:  # a count
            count = piece[0]
            if count == 0:
                chunk = b"\x90"
                last = 0x90
            elif last >= 0:
                chunk = bytes((last,)) * (count - 1)
            else:
                continue  # a run with nothing before it: nothing to repeat
        else:
            chunk = piece
            if chunk:
                last = chunk[-1]
        if total + len(chunk) >= limit:
            out.append(chunk[: limit - total])
            return b"".join(out), True
        out.append(chunk)
        total += len(chunk)
    return b"".join(out), False


def _crc(data: bytes) -> int:
    return binascii.crc_hqx(data, 0)


def decode_hqx(text: bytes, limit: int) -> BinHexFile | None:
    """Decode one BinHex text (what lies between its ``:`` markers); None if it is not one."""
    stream, truncated = rle_expand(hqx_bits(text), limit)
    if len(stream) < 22:
        return None
    name_length = stream[0]
    header_end = 1 + name_length + 1 + 4 + 4 + 2 + 4 + 4
    if not 1 <= name_length <= 63 or len(stream) < header_end + 2:
        return None
    name = stream[1 : 1 + name_length]
    version = stream[1 + name_length]
    position = 2 + name_length
    file_type, creator = stream[position : position + 4], stream[position + 4 : position + 8]
    data_length, resource_length = struct.unpack(">II", stream[position + 10 : position + 18])
    (header_crc,) = struct.unpack(">H", stream[header_end : header_end + 2])
    defects: list[str] = []
    if _crc(stream[:header_end]) != header_crc:
        defects.append("BinHexHeaderCRC")
        if version != 0 or (data_length > len(stream) and not truncated):
            return None  # neither its checksum nor its fields say it is BinHex
    start = header_end + 2
    data = stream[start : start + data_length]
    resource_start = start + data_length + 2
    resource = stream[resource_start : resource_start + resource_length]
    if len(data) < data_length or len(resource) < resource_length:
        defects.append("BinHexTruncated" if truncated else "BinHexShort")
    else:
        for fork, crc_at, label in (
            (data, start + data_length, "Data"),
            (resource, resource_start + resource_length, "Resource"),
        ):
            found = stream[crc_at : crc_at + 2]
            if len(found) == 2 and struct.unpack(">H", found)[0] != _crc(fork):
                defects.append(f"BinHex{label}CRC")
    return BinHexFile(name.decode("mac_roman", "replace"), data, resource, file_type, creator, tuple(defects))


def default_limit(size: int) -> int:
    """The output bound when the caller gives none: as the lenient views' (twice the input plus 1 MB)."""
    return 2 * size + 1024 * 1024


def find_binhex(text: bytes, limit: int | None = None) -> list[BinHexFile]:
    """Every BinHex file in ``text`` (with or without the header line), decoded; ``limit`` bounds the
    total bytes of their forks (default :func:`default_limit`)."""
    budget = default_limit(len(text)) if limit is None else limit
    found: list[BinHexFile] = []
    if b":" not in text:
        return found
    for match in _BLOCK.finditer(text):
        if budget <= 0:
            break
        decoded = decode_hqx(match.group(1), budget)
        if decoded is not None:
            found.append(decoded)
            budget -= len(decoded.data) + len(decoded.resource)
    return found
