"""The milter wire protocol (version 6), as Sendmail's libmilter and Postfix speak it.

Written here rather than taken from a library: ``pymilter`` needs Sendmail's C
libmilter, and ``purepythonmilter`` (one 0.0.1 alpha release, 2023) runs its own
server with its own signal handlers, listens on TCP only and keeps no state
across callbacks, while a content filter needs the whole transaction at end of
message.  The protocol itself is small: every packet is a 4-byte big-endian
length, a one-byte command and its data; strings are NUL-terminated.

MTA → filter commands are ``SMFIC_*``, filter → MTA responses ``SMFIR_*``.  The
option negotiation (``SMFIC_OPTNEG``) exchanges a version, the actions the
filter may take (``SMFIF_*``) and protocol flags (``SMFIP_*``: steps the MTA may
skip, steps the filter will not answer).  This module is pure: it parses and
builds packets and knows nothing about sessions or mail.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

from mailsift.errors import ProtocolError

VERSION = 6
"""The protocol version spoken (Sendmail 8.14+, Postfix 2.6+)."""

MAX_PACKET = 1024 * 1024 + 16
"""Longest packet accepted; body chunks are at most 64 KiB unless larger sizes are negotiated (we never do)."""

CHUNK = 65535
"""Largest body chunk sent in SMFIR_REPLBODY (libmilter's MILTER_CHUNK_SIZE)."""

MAX_REPLY_TEXT = 900
"""Reply texts are cut to this length (libmilter allows 980 bytes per reply line)."""

# --------------------------------------------------------------------------- commands (MTA → filter)
SMFIC_ABORT = b"A"
SMFIC_BODY = b"B"
SMFIC_CONNECT = b"C"
SMFIC_MACRO = b"D"
SMFIC_BODYEOB = b"E"
SMFIC_HELO = b"H"
SMFIC_QUIT_NC = b"K"
SMFIC_HEADER = b"L"
SMFIC_MAIL = b"M"
SMFIC_EOH = b"N"
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
SMFIC_RCPT = b"R"
SMFIC_DATA = b"T"
SMFIC_UNKNOWN = b"U"

# --------------------------------------------------------------------------- responses (filter → MTA)
SMFIR_ADDRCPT = b"+"
SMFIR_DELRCPT = b"-"
SMFIR_ACCEPT = b"a"
SMFIR_REPLBODY = b"b"
SMFIR_CONTINUE = b"c"
SMFIR_DISCARD = b"d"
SMFIR_ADDHEADER = b"h"
SMFIR_INSHEADER = b"i"
SMFIR_CHGHEADER = b"m"
SMFIR_PROGRESS = b"p"
SMFIR_QUARANTINE = b"q"
SMFIR_REJECT = b"r"
SMFIR_TEMPFAIL = b"t"
SMFIR_REPLYCODE = b"y"
SMFIR_OPTNEG = b"O"

# --------------------------------------------------------------------------- action flags (SMFIF_*)
SMFIF_ADDHDRS = 0x01
SMFIF_CHGBODY = 0x02
SMFIF_ADDRCPT = 0x04
SMFIF_DELRCPT = 0x08
SMFIF_CHGHDRS = 0x10
SMFIF_QUARANTINE = 0x20
SMFIF_CHGFROM = 0x40
SMFIF_ADDRCPT_PAR = 0x80
SMFIF_SETSYMLIST = 0x100

# --------------------------------------------------------------------------- protocol flags (SMFIP_*)
SMFIP_NOCONNECT = 0x01
SMFIP_NOHELO = 0x02
SMFIP_NOMAIL = 0x04
SMFIP_NORCPT = 0x08
SMFIP_NOBODY = 0x10
SMFIP_NOHDRS = 0x20
SMFIP_NOEOH = 0x40
SMFIP_NR_HDR = 0x80
SMFIP_NOUNKNOWN = 0x100
SMFIP_NODATA = 0x200
SMFIP_SKIP = 0x400
SMFIP_RCPT_REJ = 0x800
SMFIP_NR_CONN = 0x1000
SMFIP_NR_HELO = 0x2000
SMFIP_NR_MAIL = 0x4000
SMFIP_NR_RCPT = 0x8000
SMFIP_NR_DATA = 0x10000
SMFIP_NR_UNKN = 0x20000
SMFIP_NR_EOH = 0x40000
SMFIP_NR_BODY = 0x80000
SMFIP_HDR_LEADSPC = 0x100000

NO_REPLY_FLAG: dict[bytes, int] = {
    SMFIC_CONNECT: SMFIP_NR_CONN,
    SMFIC_HELO: SMFIP_NR_HELO,
    SMFIC_MAIL: SMFIP_NR_MAIL,
    SMFIC_RCPT: SMFIP_NR_RCPT,
    SMFIC_DATA: SMFIP_NR_DATA,
    SMFIC_UNKNOWN: SMFIP_NR_UNKN,
    SMFIC_HEADER: SMFIP_NR_HDR,
    SMFIC_EOH: SMFIP_NR_EOH,
    SMFIC_BODY: SMFIP_NR_BODY,
}
"""For each command that is answered, the flag by which the filter says it will not answer it."""

_U32 = struct.Struct(">I")


class MilterProtocolError(ProtocolError):
    """The MTA sent something that is not the milter protocol; the connection is closed."""


# --------------------------------------------------------------------------- reading


async def read_packet(reader: asyncio.StreamReader, limit: int = MAX_PACKET) -> tuple[bytes, bytes]:
    """Read one packet: ``(command, data)``.

    Raises :class:`asyncio.IncompleteReadError` when the MTA hangs up and
    :class:`MilterProtocolError` on an empty or oversized packet (read no further:
    the length cannot be trusted).
    """
    (length,) = _U32.unpack(await reader.readexactly(4))
    if length < 1 or length > limit:
        raise MilterProtocolError(f"packet length {length} out of range 1..{limit}")
    packet = await reader.readexactly(length)
    return packet[:1], packet[1:]


def strings(data: bytes) -> list[bytes]:
    """The NUL-terminated strings of ``data`` (a missing final NUL is tolerated)."""
    if not data:
        return []
    if data.endswith(b"\0"):
        data = data[:-1]
    return data.split(b"\0")


@dataclass(frozen=True, slots=True)
class Options:
    """The result of option negotiation."""

    version: int
    actions: int
    protocol: int

    def replies_to(self, command: bytes) -> bool:
        """Whether the filter answers ``command`` (False for commands negotiated no-reply)."""
        flag = NO_REPLY_FLAG.get(command)
        return flag is None or not self.protocol & flag


NOT_NEGOTIATED = Options(VERSION, 0, 0)
"""Before OPTNEG nothing is agreed: every command is answered, no modification is allowed."""


def parse_optneg(data: bytes) -> tuple[int, int, int]:
    """The MTA's offer: ``(version, actions, protocol)``."""
    if len(data) < 12:
        raise MilterProtocolError(f"OPTNEG needs 12 bytes, got {len(data)}")
    version, actions, protocol = struct.unpack(">III", data[:12])
    if version < 2:
        raise MilterProtocolError(f"milter protocol version {version} is too old")
    return version, actions, protocol


def negotiate(offer: tuple[int, int, int], actions: int, protocol: int) -> Options:
    """What both sides agree on: the lower version, and the wanted flags the MTA offered."""
    version, offered_actions, offered_protocol = offer
    return Options(min(version, VERSION), actions & offered_actions, protocol & offered_protocol)


def parse_macros(data: bytes) -> tuple[bytes, dict[str, str]]:
    """An SMFIC_MACRO packet: the command it precedes and its ``{name: value}`` (braces removed)."""
    if not data:
        raise MilterProtocolError("empty MACRO packet")
    items = strings(data[1:])
    macros = {}
    for name, value in zip(items[0::2], items[1::2], strict=False):
        macros[text(name).strip("{}")] = text(value)
    return data[:1], macros


@dataclass(frozen=True, slots=True)
class ConnectInfo:
    """SMFIC_CONNECT: the client's host name, address family (U, L, 4, 6), port and address."""

    hostname: str
    family: str
    port: int
    address: str


def parse_connect(data: bytes) -> ConnectInfo:
    hostname, sep, rest = data.partition(b"\0")
    if not sep or not rest:
        raise MilterProtocolError("CONNECT without an address family")
    family = text(rest[:1])
    if family == "U":
        return ConnectInfo(text(hostname), family, 0, "")
    if len(rest) < 3:
        raise MilterProtocolError("CONNECT without a port")
    port = struct.unpack(">H", rest[1:3])[0]
    address = text(rest[3:].split(b"\0", 1)[0])
    if address.lower().startswith("ipv6:"):  # Sendmail's notation
        address = address[5:]
    return ConnectInfo(text(hostname), family, port, address)


def parse_header(data: bytes) -> tuple[bytes, bytes]:
    """SMFIC_HEADER: ``(name, value)`` as bytes."""
    items = strings(data)
    if len(items) < 2 or not items[0]:
        raise MilterProtocolError("HEADER needs a name and a value")
    return items[0], items[1]


def parse_address(data: bytes) -> tuple[str, list[str]]:
    """SMFIC_MAIL / SMFIC_RCPT: the address without angle brackets, and the ESMTP parameters."""
    items = strings(data)
    if not items:
        raise MilterProtocolError("MAIL/RCPT without an address")
    address = text(items[0]).strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address, [text(item) for item in items[1:] if item]


def text(value: bytes) -> str:
    """Bytes from the wire as text; undecodable bytes kept (surrogateescape), as the envelope keeps them."""
    return value.decode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------- writing


def packet(command: bytes, data: bytes = b"") -> bytes:
    return _U32.pack(len(data) + 1) + command + data


def optneg_reply(options: Options) -> bytes:
    return packet(SMFIR_OPTNEG, struct.pack(">III", options.version, options.actions, options.protocol))


def reply_code(code: int, status: str, message: str) -> bytes:
    """SMFIR_REPLYCODE: ``"550 5.7.1 text"``.

    ``%`` is doubled, as libmilter's ``smfi_setreply`` requires (Sendmail and
    Postfix treat the text as a format); the text is cut to one bounded line.
    """
    if not 400 <= code < 600:
        raise ValueError(f"a milter reply code must be 4xx or 5xx, got {code}")
    if status and not status.startswith(str(code)[0]):
        status = ""
    clean = "".join(ch if ch.isprintable() else " " for ch in message)[:MAX_REPLY_TEXT].replace("%", "%%")
    line = " ".join(part for part in (str(code), status, clean) if part)
    return packet(SMFIR_REPLYCODE, line.encode("utf-8", "replace") + b"\0")


def add_header(name: bytes, value: bytes) -> bytes:
    return packet(SMFIR_ADDHEADER, name + b"\0" + value + b"\0")


def change_header(name: bytes, index: int, value: bytes) -> bytes:
    """SMFIR_CHGHEADER: the ``index``-th (from 1) field called ``name`` gets ``value``; empty deletes it."""
    return packet(SMFIR_CHGHEADER, _U32.pack(index) + name + b"\0" + value + b"\0")


def replace_body(body: bytes) -> list[bytes]:
    """SMFIR_REPLBODY packets carrying ``body`` (one empty packet for an empty body)."""
    return [packet(SMFIR_REPLBODY, body[i : i + CHUNK]) for i in range(0, len(body), CHUNK)] or [packet(SMFIR_REPLBODY)]


def progress() -> bytes:
    """SMFIR_PROGRESS: still working; the MTA restarts its wait for the answer (libmilter's ``smfi_progress``)."""
    return packet(SMFIR_PROGRESS)


def quarantine(reason: str) -> bytes:
    """SMFIR_QUARANTINE: the MTA holds the message (Postfix: the hold queue)."""
    clean = "".join(ch if ch.isprintable() else " " for ch in reason)[:MAX_REPLY_TEXT] or "quarantined"
    return packet(SMFIR_QUARANTINE, clean.encode("utf-8", "replace") + b"\0")
