"""The MIME tree of a message: header blocks, parts with every candidate filename, and the
parse that keeps long base64 runs out of the standard library's parser (:class:`Blobs`)."""

from __future__ import annotations

import binascii
import email.errors
import email.parser
import email.utils
import io
import quopri
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import TYPE_CHECKING, Any

from mailsift.mime.codecs import (
    _INNER_PADDING,
    _UU_ENCODINGS,
    KNOWN_ENCODINGS,
    _alternate_encodings,
    _decode_base64,
    decode_words,
    extract_uuencoded,
    extract_yencoded,
    is_python_codec,
    normalize_encoding,
)
from mailsift.mime.params import MAX_READINGS, MAX_VALUE, parameter_readings

if TYPE_CHECKING:
    from mailsift.message.mail import Mail

DEFAULT_SPOOL_THRESHOLD = 1024 * 1024
STRAY = "stray"
"""Origin of an alternate holding a multipart's preamble or epilogue text that has boundary-like
lines followed by ``Content-`` headers (a part after the closing boundary): the views split it."""
_STRAY_ENTITY = re.compile(r"^--[^\r\n]+\r?\n[\v\f\r]*[Cc][Oo][Nn][Tt][Ee][Nn][Tt]-", re.MULTILINE)
_CHUNK = 64 * 1024


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


class LenientMessage(Message):
    """The standard library's Message, reading a hostile parameter as absent instead of raising.

    RFC 2231 continuations that mix ``name*`` and ``name*0`` make ``decode_params``
    sort ``None`` against ``int`` (TypeError), and a NUL in an RFC 2231 charset
    makes ``get_content_charset`` fail (ValueError); the feed parser itself calls
    ``get_boundary`` on every multipart, so one such header made the whole message
    unparseable (451 on every retry; found by tests/security/test_fuzz_mime.py).
    The header stays as it was for the scanners that read it raw.
    """

    def get_params(self, failobj: Any = None, header: str = "content-type", unquote: bool = True) -> Any:
        try:
            return super().get_params(failobj, header, unquote)
        except (TypeError, ValueError, IndexError, UnicodeError):
            return failobj

    def get_param(self, param: str, failobj: Any = None, header: str = "content-type", unquote: bool = True) -> Any:
        try:
            value = super().get_param(param, failobj, header, unquote)
            if param.lower() == "charset" and value is not failobj:
                # the standard library's get_payload decodes with get_param("charset") as is: an
                # RFC 2231 charset (a tuple) raised TypeError, a NUL in the name ValueError
                if isinstance(value, tuple):
                    value = email.utils.collapse_rfc2231_value(value)
                if not isinstance(value, str) or "\0" in value or is_python_codec(value):
                    return failobj  # (unicode-escape & co: get_payload would run Python's escape decoder)
            return value
        except (TypeError, ValueError, IndexError, LookupError, UnicodeError):
            return failobj

    def get_boundary(self, failobj: Any = None) -> Any:
        try:
            return super().get_boundary(failobj)
        except (TypeError, ValueError, LookupError, UnicodeError):  # its RFC 2231 charset holds a NUL
            return failobj

    def get_content_charset(self, failobj: Any = None) -> Any:
        try:
            charset = super().get_content_charset(failobj)
        except (TypeError, ValueError, LookupError, UnicodeError):
            return failobj
        return charset if isinstance(charset, str) or charset is failobj else failobj


def new_parser() -> email.parser.BytesFeedParser:
    """The feed parser every MIME reading uses: compat32, on :class:`LenientMessage`."""
    return email.parser.BytesFeedParser(_factory=LenientMessage)


def _param_values(message: Message, param: str, header: str) -> list[str]:
    """Every value of ``param`` in ``header``: the standard library's reading first (plain, RFC 2231 and
    encoded words), then every other reading a mail client may make of each such header, the first and the
    last of a repeated one included (:func:`mailsift.mime.params.parameter_readings`; bounded)."""
    values: list[str] = []
    try:
        params = message.get_params(header=header, unquote=False) or []
    except (ValueError, IndexError, UnicodeError):
        params = []
    for key, raw in params[1:]:
        if key.strip().lower() != param:
            continue
        if isinstance(raw, tuple):  # RFC 2231: (charset, language, value), the value still quoted
            raw = (raw[0], raw[1], email.utils.unquote(raw[2]))
            try:
                text = email.utils.collapse_rfc2231_value(raw, errors="replace")
            except (LookupError, ValueError):  # an unknown charset, or one no codec can be named by (NUL)
                text = str(raw[2])
        else:
            text = email.utils.unquote(raw.strip())
        text = text[: 8 * MAX_VALUE]  # a reading keeps MAX_VALUE characters: decode no more than gives them
        for candidate in (text, decode_words(text)):
            candidate = candidate.strip()[:MAX_VALUE]
            if candidate and candidate not in values and len(values) < MAX_READINGS:
                values.append(candidate)
    for candidate in parameter_readings(message.get_all(header) or [], param):
        if candidate not in values and len(values) < 2 * MAX_READINGS:
            values.append(candidate)
    return values


def candidate_filenames(message: Message) -> tuple[str, ...]:
    """All filenames a mail client could show for this part, distinct, in order: Content-Disposition's
    ``filename``, Content-Type's ``name``, then Content-Disposition's ``name`` (Thunderbird's for an
    attached message: ``mailnews/mime/src/mimemoz2.cpp``)."""
    names: list[str] = []
    for value in (
        _param_values(message, "filename", "content-disposition")
        + _param_values(message, "name", "content-type")
        + _param_values(message, "name", "content-disposition")
    ):
        if value not in names:
            names.append(value)
    return tuple(names)


_BLOB_LINE = re.compile(rb"[A-Za-z0-9+/=]+\r?\n")
_BLOB_MIN = 64 * 1024
"""Runs of base64 lines at least this long (bytes) are held out of the parser."""


class Blobs:
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
        # assembled in a BytesIO: its buffer becomes the bytes returned (a list of chunks and their
        # join held the part twice)
        out = io.BytesIO()
        position = 0
        token = re.compile(re.escape(self.prefix) + r"(\d+)\x00")  # rare: only messages with long runs
        for match in token.finditer(payload):
            out.write(clean(payload[position : match.start()].encode("ascii", "surrogateescape")))
            for chunk in self._read(*self.spans[int(match.group(1))]):
                out.write(clean(chunk))
            position = match.end()
        out.write(clean(payload[position:].encode("ascii", "surrogateescape")))
        return out.getvalue()


def decode_leaf(message: Message, blobs: Blobs) -> tuple[bytes, tuple[str, ...], list[tuple[str, bytes, bytes]], int]:
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
            try:
                text = email.utils.collapse_rfc2231_value(value) if isinstance(value, tuple) else str(value)
            except (ValueError, LookupError):  # a charset no codec is named by (a NUL): the value as written
                text = str(value[2])
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


class TreeBuilder:
    """Walks a parsed ``Message`` once, building the :class:`MimeNode` tree and parts."""

    def __init__(self, blobs: Blobs) -> None:
        self.parts: list[Part] = []
        self.alternates: list[Part] = []
        self.base64_sources: set[bytes] = set()  # keys of base64 texts decoded as alternates
        self.blobs = blobs

    def _strays(self, message: Message, path: str) -> None:
        """Keep a multipart's preamble or epilogue when it holds what looks like more parts."""
        for where, text in (("preamble", message.preamble), ("epilogue", message.epilogue)):
            if text and "--" in text and _STRAY_ENTITY.search(text):
                data = text.encode("ascii", "surrogateescape")
                self.alternates.append(Part(f"{path or '1'}~{where}", "text/plain", (), data, origin=STRAY))

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
            self._strays(message, path)
            return node
        data, defects, alternates, encoded_size = decode_leaf(message, self.blobs)  # releases the encoded payload
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
