"""The message being filtered: envelope, raw bytes, and lazy parsed views.

The raw bytes are the truth and are kept exactly as received; a message over
``spool_threshold`` (default 1 MB) lives in a temporary file instead of memory.
Parsed views are computed on first use and cached:

* :attr:`Mail.headers` — the top-level header block, raw and decoded;
* :attr:`Mail.tree` — the MIME tree (:class:`MimeNode`), attached messages
  (``message/rfc822``) parsed recursively;
* :attr:`Mail.parts` — the decoded leaf parts (:class:`Part`), each with every
  candidate filename, its declared type, size and path in the tree, plus
  uuencoded blocks found inside text parts.

Parsing uses the standard library's lenient parser (``compat32`` policy, which
never raises on malformed input but records defects).  That parser keeps a body
as a list of line strings and then joins them, about 2.6 copies of a big
attachment before it is even decoded; so long runs of base64 lines are held out
of it (:class:`_Blobs`) and read back from the raw message when their part is
decoded.  Each leaf's encoded payload is released as soon as it is decoded, so
a parse holds about two copies of the message at most: the raw bytes (or none,
when spooled) and the decoded parts.
"""

from __future__ import annotations

import base64
import binascii
import email.errors
import email.parser
import email.utils
import hashlib
import io
import os
import quopri
import re
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from functools import cached_property
from typing import Any, BinaryIO

DEFAULT_SPOOL_THRESHOLD = 1024 * 1024
_CHUNK = 64 * 1024


@dataclass(slots=True)
class Envelope:
    """The SMTP envelope and where the message came from."""

    sender: str = ""
    recipients: list[str] = field(default_factory=list)
    client_address: str = ""
    client_name: str = ""
    helo: str = ""
    queue_id: str = ""
    protocol: str = "SMTP"
    mail_options: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- headers


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words; undecodable input is returned unchanged."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError, binascii.Error):
        return value


@dataclass(frozen=True, slots=True)
class Header:
    """One header field: its name, raw value (unfolded bytes kept) and decoded value."""

    name: str
    raw: str
    value: str


class Headers:
    """The header fields of a message or part, in order, case-insensitive lookup."""

    def __init__(self, fields: list[Header]) -> None:
        self.fields = fields

    @classmethod
    def from_message(cls, message: Message) -> Headers:
        fields = []
        for name, raw in message.raw_items():
            raw_text = str(raw)
            unfolded = re.sub(r"\r?\n[ \t]", " ", raw_text).strip()
            fields.append(Header(name, raw_text, decode_words(unfolded)))
        return cls(fields)

    def get(self, name: str, default: str = "") -> str:
        lowered = name.lower()
        for header in self.fields:
            if header.name.lower() == lowered:
                return header.value
        return default

    def get_all(self, name: str) -> list[str]:
        lowered = name.lower()
        return [h.value for h in self.fields if h.name.lower() == lowered]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(h.name.lower() == name.lower() for h in self.fields)

    def __iter__(self) -> Iterator[Header]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)


# --------------------------------------------------------------------------- parts


@dataclass(slots=True)
class Part:
    """A decoded leaf of the MIME tree (or a uuencoded block inside one)."""

    path: str
    content_type: str
    filenames: tuple[str, ...]
    data: bytes
    charset: str = ""
    transfer_encoding: str = ""
    origin: str = "mime"
    defects: tuple[str, ...] = ()
    encoded_size: int = 0
    """Size of the payload before transfer decoding (base64 only, without line ends; else 0)."""

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def filename(self) -> str:
        return self.filenames[0] if self.filenames else ""


@dataclass(slots=True)
class MimeNode:
    """A node of the MIME tree: its declared type, path, headers and children."""

    content_type: str
    path: str
    headers: Headers
    children: list[MimeNode] = field(default_factory=list)
    defects: tuple[str, ...] = ()
    boundaries: tuple[str, ...] = ()
    """Every ``boundary`` parameter of the (first) Content-Type, in order (normally one)."""
    disposition_names: tuple[str, ...] = ()
    """The ``filename`` values of Content-Disposition (plain, RFC 2231, encoded words decoded)."""
    type_names: tuple[str, ...] = ()
    """The ``name`` values of Content-Type, decoded likewise."""

    def walk(self) -> Iterator[tuple[int, MimeNode]]:
        """Depth-first, with the depth of each node (root = 0)."""
        stack: list[tuple[int, MimeNode]] = [(0, self)]
        while stack:
            depth, node = stack.pop()
            yield depth, node
            stack.extend((depth + 1, child) for child in reversed(node.children))

    def render(self) -> str:
        """The tree as lines of ``-``-prefixed types (flanker's expected-tree format)."""
        return "\n".join("-" * depth + node.content_type for depth, node in self.walk())


def _param_values(message: Message, param: str, header: str) -> list[str]:
    """Every value of ``param`` in ``header``: plain, RFC 2231 and encoded words."""
    values: list[str] = []
    try:
        params = message.get_params(header=header, unquote=False) or []
    except (ValueError, IndexError, UnicodeError):
        return values
    for key, raw in params[1:]:
        if key.strip().lower() != param:
            continue
        if isinstance(raw, tuple):  # RFC 2231: (charset, language, value), the value still quoted
            raw = (raw[0], raw[1], email.utils.unquote(raw[2]))
            try:
                text = email.utils.collapse_rfc2231_value(raw, errors="replace")
            except (LookupError, UnicodeError):
                text = str(raw[2])
        else:
            text = email.utils.unquote(raw.strip())
        for candidate in (text, decode_words(text)):
            candidate = candidate.strip()
            if candidate and candidate not in values:
                values.append(candidate)
    return values


def candidate_filenames(message: Message) -> tuple[str, ...]:
    """All filenames a mail client could show for this part, distinct, in order."""
    names: list[str] = []
    for value in _param_values(message, "filename", "content-disposition") + _param_values(
        message, "name", "content-type"
    ):
        if value not in names:
            names.append(value)
    return tuple(names)


_UU_BEGIN = re.compile(rb"^begin(?:-base64)? +([0-7]{3,4}) +(.+?)\r?$", re.MULTILINE)


def extract_uuencoded(data: bytes) -> list[tuple[str, bytes]]:
    """Find ``begin 644 name`` … ``end`` blocks in a text and decode them leniently."""
    found: list[tuple[str, bytes]] = []
    for match in _UU_BEGIN.finditer(data):
        name = match.group(2).decode("utf-8", "replace").strip()
        out = bytearray()
        rest = data[match.end() :].split(b"\n")
        for line in rest[1:]:
            line = line.rstrip(b"\r")
            if line.strip() in (b"end", b"`") or (line.strip() == b"" and out):
                if line.strip() == b"end":
                    break
                continue
            try:
                out += binascii.a2b_uu(line)
            except binascii.Error:
                # Broken padding, as some encoders write: decode what the length byte promises.
                nbytes = ((line[0] - 32) & 63) if line else 0
                try:
                    out += binascii.a2b_uu(line[: ((nbytes + 2) // 3) * 4 + 1])
                except binascii.Error:
                    break
        found.append((name, bytes(out)))
    return found


_YBEGIN = re.compile(rb"^=ybegin (.*?)\r?$", re.MULTILINE)
_YEND = re.compile(rb"^=yend\b.*$", re.MULTILINE)
_YPART = re.compile(rb"^=ypart\b.*\r?\n", re.MULTILINE)
_YNAME = re.compile(rb"\bname=(.*)$")
_YENC_SHIFT = bytes((byte - 42) % 256 for byte in range(256))
_YENC_ESCAPE = re.compile(rb"\x13(.)", re.DOTALL)  # "=" after the shift by 42


def _yenc_unescape(match: re.Match[bytes]) -> bytes:
    return bytes(((match.group(1)[0] - 64) % 256,))


def yenc_decode(body: bytes) -> bytes:
    """Decode yEnc data lines (no ``=y`` control lines): shift by 42, ``=`` escapes by 64 more.

    Done with ``translate`` and one regular expression over the whole body, so
    a big payload is never walked byte by byte in Python.
    """
    shifted = body.translate(None, b"\r\n").translate(_YENC_SHIFT)
    return _YENC_ESCAPE.sub(_yenc_unescape, shifted)


def extract_yencoded(data: bytes) -> list[tuple[str, bytes]]:
    """Find ``=ybegin`` … ``=yend`` blocks (single or multi-part) in a text and decode them."""
    found: list[tuple[str, bytes]] = []
    for match in _YBEGIN.finditer(data):
        name_match = _YNAME.search(match.group(1))
        name = name_match.group(1).decode("utf-8", "replace").strip() if name_match else ""
        start = data.find(b"\n", match.end())
        if start < 0:
            continue
        end_match = _YEND.search(data, start)
        body = data[start + 1 : end_match.start() if end_match else len(data)]
        found.append((name, yenc_decode(_YPART.sub(b"", body))))
    return found


_BLOB_LINE = re.compile(rb"[A-Za-z0-9+/=]+\r?\n")
_BLOB_MIN = 64 * 1024
"""Runs of base64 lines at least this long (bytes) are held out of the parser."""


class _Blobs:
    """Long runs of base64 lines, held out of the standard library's parser.

    A line made only of base64 characters cannot be a header, a boundary or the
    empty line ending a header block: to the parser it is opaque body text.  So
    replacing a run of such lines with one placeholder line (a NUL-delimited
    token, with a per-parse nonce, that no such line and no sender can produce)
    leaves the parse exactly as it was, while the parser never holds the run.
    :meth:`expand` puts the run back, read from the raw message, when its part
    is decoded.
    """

    def __init__(self, mail: Mail) -> None:
        self.mail = mail
        self.prefix = ""  # set when a run is held out (messages of 64 KB and more)
        self.spans: list[tuple[int, int]] = []  # raw offsets of each run, without its last line ending

    def feed(self, parser: email.parser.BytesFeedParser) -> None:
        """Feed the raw message to ``parser``, long base64 runs replaced by placeholders."""
        out = bytearray()
        offset = run_start = 0
        pending: bytearray | None = None  # the current run while it is short
        in_run = False
        last = b""

        def end_run() -> None:
            nonlocal in_run, pending
            if pending is not None:
                out.extend(pending)
            else:
                ending = b"\r\n" if last.endswith(b"\r\n") else b"\n"
                out.extend(f"{self.prefix}{len(self.spans)}\x00".encode("ascii") + ending)
                self.spans.append((run_start, offset - len(ending)))
            in_run, pending = False, None

        if self.mail.size < _BLOB_MIN:  # no run can be long enough: feed as is
            with self.mail.open() as stream:
                while chunk := stream.read(_CHUNK):
                    parser.feed(chunk)
            return
        self.prefix = f"\x00mailsift-blob-{secrets.token_hex(8)}-"
        with self.mail.open() as stream:
            for line in stream:
                if _BLOB_LINE.fullmatch(line):
                    if not in_run:
                        in_run, run_start, pending = True, offset, bytearray()
                    if pending is not None:
                        pending += line
                        if len(pending) >= _BLOB_MIN:
                            pending = None
                    last = line
                else:
                    if in_run:
                        end_run()
                    out += line
                offset += len(line)
                if len(out) >= _CHUNK:
                    parser.feed(bytes(out))
                    out.clear()
            if in_run:
                end_run()
        parser.feed(bytes(out))

    def _read(self, start: int, end: int) -> Iterator[bytes]:
        with self.mail.open() as stream:
            stream.seek(start)
            while start < end and (chunk := stream.read(min(_CHUNK, end - start))):
                start += len(chunk)
                yield chunk

    def expand(self, payload: str, *, strip_newlines: bool) -> bytes:
        """The payload's raw bytes, runs put back; without CR/LF if ``strip_newlines``."""

        def clean(chunk: bytes) -> bytes:
            return chunk.translate(None, b"\r\n") if strip_newlines else chunk

        if not self.prefix or self.prefix not in payload:
            return clean(payload.encode("ascii", "surrogateescape"))
        chunks: list[bytes] = []
        position = 0
        token = re.compile(re.escape(self.prefix) + r"(\d+)\x00")  # rare: only messages with long runs
        for match in token.finditer(payload):
            chunks.append(clean(payload[position : match.start()].encode("ascii", "surrogateescape")))
            chunks.extend(clean(chunk) for chunk in self._read(*self.spans[int(match.group(1))]))
            position = match.end()
        chunks.append(clean(payload[position:].encode("ascii", "surrogateescape")))
        return b"".join(chunks)


def _decode_base64(encoded: bytes) -> tuple[bytes, list[email.errors.MessageDefect]]:
    """Lenient base64, as the standard library decodes a part (``email._encoded_words.decode_b``)."""
    pad_error = len(encoded) % 4
    try:
        padding = b"==="[: 4 - pad_error] if pad_error else b""
        defects: list[email.errors.MessageDefect] = [email.errors.InvalidBase64PaddingDefect()] if pad_error else []
        return base64.b64decode(encoded + padding, validate=True), defects
    except binascii.Error:
        pass
    try:
        return base64.b64decode(encoded, validate=False), [email.errors.InvalidBase64CharactersDefect()]
    except binascii.Error:
        pass
    try:
        return base64.b64decode(encoded + b"==", validate=False), [
            email.errors.InvalidBase64CharactersDefect(),
            email.errors.InvalidBase64PaddingDefect(),
        ]
    except binascii.Error:
        return encoded, [email.errors.InvalidBase64LengthDefect()]


KNOWN_ENCODINGS = frozenset(
    {"", "7bit", "8bit", "binary", "base64", "quoted-printable", "x-uuencode", "uuencode", "uue", "x-uue"}
)
"""Content-Transfer-Encoding values a decoder knows; anything else is read as identity."""

_UU_ENCODINGS = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})
_COMMENT = re.compile(r"\([^()]*\)")
_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/=\s]*")
_BASE64_WORD = re.compile(rb"[A-Za-z0-9+/]{40}")
_QP_ESCAPE = re.compile(rb"=[0-9A-F]{2}")
_INNER_PADDING = re.compile(rb"=[A-Za-z0-9+/]")


def normalize_encoding(value: str) -> str:
    """A Content-Transfer-Encoding as a lenient reader sees it: comments, quotes, blanks gone."""
    return re.sub(r"[\s\"']", "", _COMMENT.sub("", value)).lower()


_NOT_BASE64 = bytes(b for b in range(256) if not (chr(b).isascii() and (chr(b).isalnum() or chr(b) in "+/=")))


def decode_base64_chunks(encoded: bytes) -> bytes:
    """Base64 made of several padded pieces (``...==abcd...``), decoded piece by piece.

    The standard library stops at the first padding; some mail clients go on.
    """
    clean = encoded.translate(None, _NOT_BASE64)
    core = clean.rstrip(b"=")
    if b"=" not in core:  # one piece (the usual case): one decode, no piece-by-piece loop
        core = core[: len(core) - (len(core) % 4 == 1)]
        return base64.b64decode(core + b"=" * (-len(core) % 4)) if core else b""
    out = []
    for piece in re.findall(rb"[A-Za-z0-9+/]+=*", clean):
        core = piece.rstrip(b"=")
        core = core[: len(core) - (len(core) % 4 == 1)]  # one dangling character decodes to nothing
        if core:
            out.append(base64.b64decode(core + b"=" * (-len(core) % 4)))
    return b"".join(out)


def transfer_decode(encoding: str, encoded: bytes) -> bytes:
    """Decode ``encoded`` by one transfer encoding, leniently; identity when unknown."""
    if encoding == "base64":
        return _decode_base64(encoded.translate(None, b"\r\n"))[0]
    if encoding == "quoted-printable":
        return quopri.decodestring(encoded)
    if encoding in _UU_ENCODINGS:
        blocks = extract_uuencoded(encoded)
        return blocks[0][1] if blocks else b""
    return encoded


def _alternate_encodings(
    ctes: list[str], used: str, encoded: bytes, data: bytes, defects: list[str]
) -> list[tuple[str, bytes, bytes]]:
    """The other plausible decodings of a leaf, when any is plausible (rare in real mail).

    Plausible: another declared Content-Transfer-Encoding (doubled header, or a
    comment or blank a lenient reader removes), base64 text under a non-base64
    encoding, quoted-printable escapes under another encoding, base64 that the
    strict decoder stopped or stumbled on (the undecoded payload, and the
    piece-by-piece decoding).
    """
    labels: list[str] = []
    for cte in ctes:
        if cte != used and cte not in labels:
            labels.append(cte)
    if used != "base64" and _BASE64_WORD.search(encoded) and _BASE64_TEXT.fullmatch(encoded):
        labels.append("base64")
    if used != "quoted-printable" and len(_QP_ESCAPE.findall(encoded, 0, 64 * 1024)) >= 8:
        labels.append("quoted-printable")
    if used == "base64":
        if defects:
            labels.append("identity")
        if _INNER_PADDING.search(encoded.translate(None, b"\r\n \t")):
            labels.append("base64-chunks")
    found: list[tuple[str, bytes, bytes]] = []
    for label in dict.fromkeys(labels):
        try:
            if label == "base64-chunks":
                decoded = decode_base64_chunks(encoded)
            else:
                decoded = transfer_decode(label, encoded)
        except (ValueError, binascii.Error):
            continue
        if decoded and decoded != data:
            # the views' raw base64 runs decode piece by piece: the same bytes as these two
            # decodings unless padding sits inside the text, so only then skip them there
            same = label == "base64-chunks" or (
                label == "base64" and not _INNER_PADDING.search(encoded.translate(None, b"\r\n \t"))
            )
            source = base64_source_key(encoded) if same else b""
            found.append((label, decoded, source))
    return found


def base64_source_key(text: bytes) -> bytes:
    """A key for base64 text, blanks and line ends ignored: the views do not decode it twice."""
    return hashlib.blake2b(text.translate(None, b" \t\r\n"), digest_size=16).digest()


def _decode_leaf(message: Message, blobs: _Blobs) -> tuple[bytes, tuple[str, ...], list[tuple[str, bytes, bytes]], int]:
    """Decode a leaf's payload as ``get_payload(decode=True)`` does, and release it.

    The encoded payload is taken out of the message first, so that at any time
    about two copies of the part exist (encoded and decoded, or the encoded one
    being assembled), never the four of ``get_payload(decode=True)``.

    Also returns the leaf's other plausible decodings (``(label, data)``), for
    the lenient views; for an ordinary leaf there are none and nothing more is kept.
    """
    payload: Any = getattr(message, "_payload", None)  # the raw text; get_payload() may re-decode it
    message.set_payload("")
    if not isinstance(payload, str):
        return b"", tuple(type(d).__name__ for d in message.defects), [], 0
    raw_encoding = str(message.get("content-transfer-encoding", ""))
    encoding = raw_encoding.lower()
    ctes = [normalize_encoding(str(v)) for v in message.get_all("content-transfer-encoding", [])]
    defects: list[str] = []
    alternates: list[tuple[str, bytes, bytes]] = []
    used = encoding.strip()
    encoded_size = 0
    suspicious = len(ctes) > 1 or (bool(ctes) and ctes[0] != used)
    try:
        if encoding == "base64":
            encoded = blobs.expand(payload, strip_newlines=True)
            del payload
            data, found = _decode_base64(encoded)
            encoded_size = len(encoded)
            for defect in found:
                message.policy.handle_defect(message, defect)
            if suspicious or found or _INNER_PADDING.search(encoded):
                alternates = _alternate_encodings(ctes, "base64", encoded, data, [type(d).__name__ for d in found])
        elif encoding == "quoted-printable":
            encoded = blobs.expand(payload, strip_newlines=False)
            del payload
            data = quopri.decodestring(encoded)
            if suspicious:
                alternates = _alternate_encodings(ctes, used, encoded, data, [])
        elif encoding in _UU_ENCODINGS:  # rare: let the standard library do it
            message.set_payload(blobs.expand(payload, strip_newlines=False).decode("ascii", "surrogateescape"))
            decoded = message.get_payload(decode=True)
            message.set_payload("")
            data = decoded if isinstance(decoded, bytes) else b""
        else:
            data = blobs.expand(payload, strip_newlines=False)
            del payload
            if used not in KNOWN_ENCODINGS:
                defects.append(f"UnknownTransferEncoding: {raw_encoding.strip()[:60]!r}")
            # identity: data is the encoded text; other decodings only when one is plausible
            alternates = _alternate_encodings(ctes, used, data, data, [])
    except (ValueError, TypeError, LookupError, binascii.Error) as error:
        data, defects = b"", [f"undecodable: {error}"]
    defects.extend(type(d).__name__ for d in message.defects)
    return data, tuple(defects), alternates, encoded_size


def _boundaries(message: Message) -> tuple[str, ...]:
    """Every ``boundary`` parameter of the Content-Type (more than one is a red flag)."""
    if message.get("content-type") is None:
        return ()
    try:
        params = message.get_params(header="content-type") or []
    except (ValueError, IndexError, UnicodeError):
        return ()
    found = []
    for key, value in params[1:]:
        if key.strip().lower() == "boundary":
            text = email.utils.collapse_rfc2231_value(value) if isinstance(value, tuple) else str(value)
            found.append(text.rstrip())
    return tuple(found)


def declared_type(message: Message) -> str:
    """The declared content type, lower case.

    RFC 2045 §5.2 says to read an invalid Content-Type (``BINARY;name=x``) as
    ``text/plain``, which is what the standard library does.  A filter must not
    treat a named blob as harmless text, so an invalid type that is present is
    read as ``application/octet-stream`` instead (as flanker does: see the
    torture test's ``Alices_PDP-10``).
    """
    raw = message.get("content-type")
    if raw is not None and "/" not in str(raw).split(";", 1)[0]:
        return "application/octet-stream"
    return message.get_content_type()


class _TreeBuilder:
    """Walks a parsed ``Message`` once, building the :class:`MimeNode` tree and parts."""

    def __init__(self, blobs: _Blobs) -> None:
        self.parts: list[Part] = []
        self.alternates: list[Part] = []
        self.base64_sources: set[bytes] = set()  # keys of base64 texts decoded as alternates
        self.blobs = blobs

    def build(self, message: Message, path: str) -> MimeNode:
        content_type = declared_type(message)
        node = MimeNode(
            content_type,
            path,
            Headers.from_message(message),
            defects=tuple(type(d).__name__ for d in message.defects),
            boundaries=_boundaries(message),
            disposition_names=tuple(_param_values(message, "filename", "content-disposition")),
            type_names=tuple(_param_values(message, "name", "content-type")),
        )
        payload = message.get_payload()
        if message.is_multipart() and isinstance(payload, list):
            for index, child in enumerate(payload, start=1):
                if content_type == "message/rfc822":
                    child_path = path or "1"  # the attached message's body shares its number (IMAP)
                else:
                    child_path = f"{path}.{index}" if path else str(index)
                if isinstance(child, Message):
                    node.children.append(self.build(child, child_path))
            return node
        data, defects, alternates, encoded_size = _decode_leaf(message, self.blobs)  # releases the encoded payload
        leaf_path = path or "1"
        part = Part(
            leaf_path,
            content_type,
            candidate_filenames(message),
            data,
            charset=message.get_content_charset() or "",
            transfer_encoding=str(message.get("content-transfer-encoding", "")).strip().lower(),
            defects=defects,
            encoded_size=encoded_size,
        )
        self.parts.append(part)
        for label, decoded, source in alternates:
            if source:
                self.base64_sources.add(source)
            self.alternates.append(
                Part(
                    f"{leaf_path}~{label}",
                    content_type,
                    part.filenames,
                    decoded,
                    charset=part.charset,
                    transfer_encoding=label,
                    origin=f"decoded:{label}",
                )
            )
        if content_type.startswith("text/") and b"begin " in data:
            for index, (name, decoded) in enumerate(extract_uuencoded(data), start=1):
                self.parts.append(
                    Part(f"{leaf_path}.uu{index}", "application/octet-stream", (name,), decoded, origin="uuencode")
                )
        if content_type.startswith("text/") and b"=ybegin " in data:
            for index, (name, decoded) in enumerate(extract_yencoded(data), start=1):
                names = (name,) if name else ()
                self.parts.append(
                    Part(f"{leaf_path}.yenc{index}", "application/octet-stream", names, decoded, origin="yenc")
                )
        return node


# --------------------------------------------------------------------------- mail


class Mail:
    """A message with its envelope; raw bytes kept exactly, views parsed lazily."""

    def __init__(
        self,
        envelope: Envelope | None = None,
        data: bytes | None = None,
        *,
        path: str | None = None,
        spool_threshold: int = DEFAULT_SPOOL_THRESHOLD,
        spool_dir: str | None = None,
    ) -> None:
        self.envelope = envelope or Envelope()
        self._data: bytes | None = None
        self._path: str | None = None
        self._owns_path = False
        if path is not None:
            self._path = path
            self.size = os.path.getsize(path)
        else:
            data = data or b""
            self.size = len(data)
            if self.size > spool_threshold:
                self._spool(data, spool_dir)
            else:
                self._data = data

    def _spool(self, data: bytes, spool_dir: str | None) -> None:
        fd, name = tempfile.mkstemp(prefix="mailsift-", suffix=".eml", dir=spool_dir)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        self._path, self._owns_path = name, True

    @property
    def spooled(self) -> bool:
        """True when the raw bytes live in a file rather than in memory."""
        return self._data is None

    @property
    def raw(self) -> bytes:
        """The message exactly as received (read from the spool file if spooled)."""
        if self._data is not None:
            return self._data
        assert self._path is not None
        with open(self._path, "rb") as handle:
            return handle.read()

    def open(self) -> BinaryIO:
        """A binary stream of the raw message, without loading a spooled one."""
        if self._data is not None:
            return io.BytesIO(self._data)
        assert self._path is not None
        return open(self._path, "rb")

    def close(self) -> None:
        """Remove the spool file, if this mail made one."""
        if self._owns_path and self._path:
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
            self._owns_path = False

    def __enter__(self) -> Mail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lazy views

    @cached_property
    def _structure(self) -> tuple[MimeNode, list[Part], list[Part], set[bytes]]:
        blobs = _Blobs(self)
        parser = email.parser.BytesFeedParser()
        blobs.feed(parser)
        builder = _TreeBuilder(blobs)
        root = builder.build(parser.close(), "")
        return root, builder.parts, builder.alternates, builder.base64_sources

    @cached_property
    def headers(self) -> Headers:
        """The top-level header fields (only the header block is parsed)."""
        block = bytearray()
        with self.open() as stream:
            for line in stream:
                if line in (b"\r\n", b"\n"):
                    break
                block += line
                if len(block) > 4 * 1024 * 1024:
                    break
        return Headers.from_message(email.parser.BytesHeaderParser().parsebytes(bytes(block)))

    @property
    def tree(self) -> MimeNode:
        return self._structure[0]

    @property
    def parts(self) -> list[Part]:
        return self._structure[1]

    @property
    def alternates(self) -> list[Part]:
        """Other plausible transfer decodings of leaves (doubled or odd encodings); usually empty."""
        return self._structure[2]

    @property
    def base64_sources(self) -> set[bytes]:
        """Keys (:func:`base64_source_key`) of the base64 texts the alternates decoded already."""
        return self._structure[3]

    @cached_property
    def views(self) -> list[Part]:
        """The lenient views: every other reasonable reading of the message (see :mod:`mailsift.views`).

        Parts a mail client could see that the strict :attr:`parts` do not hold,
        deduplicated against them; empty for ordinary mail.  Computed on first use.
        """
        from mailsift.views import compute_views  # views builds on this module

        return compute_views(self)

    @property
    def subject(self) -> str:
        return self.headers.get("subject")

    @property
    def message_id(self) -> str:
        return self.headers.get("message-id")
