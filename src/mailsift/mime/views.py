"""Lenient views of a message: every other reasonable reading, for scanning the union.

Attackers hide payloads in MIME that one parser reads one way and a mail
client another: a boundary that does not match, a doubled Content-Type or
Content-Transfer-Encoding, base64 in several padded pieces, an attachment in
the preamble, uuencode or yEnc where no one looks.  :attr:`Mail.parts
<mailsift.message.mail.Mail.parts>` is the strict reading (the standard library's);
:func:`compute_views` adds the other readings, as :class:`~mailsift.message.mail.Part`
objects whose ``origin`` says where they came from:

``decoded:<encoding>``
    another plausible transfer decoding of a strict leaf (made while parsing,
    only for leaves where one is plausible: see ``mail._alternate_encodings``);
``raw:base64``
    each run of base64 lines anywhere in the raw message, decoded leniently,
    wherever the MIME structure puts it (or fails to);
``raw:uuencode``, ``raw:yenc``
    uuencoded and yEnc blocks anywhere in the raw message;
``lenient:split``
    the parts of a leaf that looks like an unsplit multipart (boundary lines
    followed by ``Content-`` headers: a boundary that the declared one does not
    match, a doubled Content-Type...), split on the boundaries found in it;
``nested``
    the parts of a decoded view that is itself a message (base64-encoded
    ``message/rfc822``...);
``lenient:headers``
    a leaf without a Content-Type whose body starts with a header block (behind a
    vertical tab, form feed or bare CR that ends the strict parser's header block
    or hides the header from it), read as an entity;
``lenient:last``
    the message re-read with the *last* of each doubled Content-Type,
    Content-Transfer-Encoding and Content-Disposition header (the strict reading
    takes the first);
``lenient:after``
    the entities after a closing boundary (in the epilogue) or before the first
    one, split on the boundary lines found there.

A view whose bytes equal a strict part's, or an earlier view's, is dropped
(by hash) unless it carries a filename those bytes were not seen with, so
ordinary mail has no views and costs one regular-expression pass
over the raw message.  The views are bounded: nesting depth :data:`MAX_DEPTH`,
at most :data:`MAX_VIEWS` views, and their total size at most
:data:`MAX_TOTAL_FACTOR` times the message's plus 1 MB (a decoding is never
bigger than the text it came from, so this only cuts pathological cases).
"""

from __future__ import annotations

import binascii
import hashlib
import io
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mailsift.mime import qp
from mailsift.mime.binhex import BINHEX_ENCODINGS, BINHEX_TYPES, HINT, find_binhex
from mailsift.mime.codecs import (
    _UU_ENCODINGS,
    base64_chunks_key,
    base64_source_key,
    decode_base64_chunks,
    decode_uu_lines,
    extract_uuencoded,
    extract_yencoded,
    normalize_encoding,
)
from mailsift.mime.tree import STRAY, Part

MAX_DEPTH = 3
"""How deep decoded views that are messages themselves are parsed again."""

MAX_VIEWS = 256
"""At most this many views per message (the rest are not computed)."""

MAX_TOTAL_FACTOR = 2
"""The views of a message hold at most this many times its size (plus 1 MB)."""

_RUN = re.compile(
    rb"(?:^[ \t]*[A-Za-z0-9+/=]{16,}[ \t]*\r?\n)++(?:^[ \t]*[A-Za-z0-9+/=]{1,15}[ \t]*(?:\r?\n|\Z))?",
    re.MULTILINE,
)
"""A run of base64 lines (the last one may be short).  The repetition of lines is possessive
(``++``): the optional short line after it can never fail, so no match changes, but the
expression engine keeps no backtracking state per line (with ``+`` it held about 280 bytes a
line, 3.8 times the run's size)."""

_RUN_MIN = 32
"""Shorter runs are words, not payloads."""

_BOUNDARY_LINE = re.compile(
    rb"^--([^\s][^\r\n]{0,250}?)(?:--)?[ \t]*\r?\n(?=[\v\f\r]*[Cc][Oo][Nn][Tt][Ee][Nn][Tt]-)", re.MULTILINE
)

if TYPE_CHECKING:
    from mailsift.message.mail import Mail
"""A boundary-like line directly followed by a ``Content-`` header."""

_MESSAGE_START = re.compile(rb"\A(?:[!-9;-~]+:[^\r\n]*\r?\n(?:[ \t][^\r\n]*\r?\n)*)+\r?\n", re.DOTALL)
"""A header block at the start of some bytes: a message or a MIME entity."""


_HEADER_JUNK = b"\v\f\r \t"
"""What a header block may start with that ends it for the strict parser (a bare CR is a line end,
a vertical tab or form feed no header name) while other readers skip it (Perl's ``\\s``)."""

_FIELD = rb"[!-9;-~]+[ \t]*:[^\r\n]*(?:\r?\n|\Z)(?:[ \t][^\r\n]*(?:\r?\n|\Z))*"
_HEADER_BLOCK = re.compile(rb"(?:" + _FIELD + rb")+\r?\n")
"""A header block ended by an empty line."""

_CONTENT_FIELD = re.compile(rb"^content-", re.MULTILINE | re.IGNORECASE)

_ENTITY_HEAD = re.compile(rb"(?:\A|^--[^\r\n]*\r?\n)((?:" + _FIELD + rb")+)", re.MULTILINE)
"""A header block at the start of the message or after a boundary-like line."""

_FIELD_NAME = re.compile(rb"(" + _FIELD + rb")")

DOUBLED = frozenset({b"content-type", b"content-transfer-encoding", b"content-disposition"})
"""Headers whose doubling makes readers disagree: Python's email, Perl's MIME::Head and Go's
``textproto.MIMEHeader.Get`` take the first, MimeKit re-reads Content-Disposition at each one (the last)."""


def hidden_entity(data: bytes) -> bytes:
    """The entity a lenient reader sees in a leaf whose body starts with a header block that the
    strict parser did not read as headers (behind a vertical tab, a form feed or a bare CR), or b""."""
    stripped = data.lstrip(_HEADER_JUNK)
    block = _HEADER_BLOCK.match(stripped, 0, 16384)
    if block is None or not _CONTENT_FIELD.search(stripped, 0, block.end()):
        return b""
    return stripped


def last_header_reading(raw: bytes) -> bytes:
    """``raw`` with only the last of each doubled :data:`DOUBLED` header in every header block
    (the message's and each part's, after a boundary-like line), or b"" if none is doubled."""
    out: list[bytes] = []
    position = 0
    for block in _ENTITY_HEAD.finditer(raw):
        fields = [m.group(1) for m in _FIELD_NAME.finditer(raw, block.start(1), block.end(1))]
        names = [field.split(b":", 1)[0].strip().lower() for field in fields]
        doubled = {name for name in names if name in DOUBLED and names.count(name) > 1}
        if not doubled:
            continue
        last = {name: index for index, name in enumerate(names)}
        kept = [
            field
            for index, (field, name) in enumerate(zip(fields, names, strict=True))
            if name not in doubled or last[name] == index
        ]
        out.append(raw[position : block.start(1)])
        out.append(b"".join(kept))
        position = block.end(1)
    if not out:
        return b""
    out.append(raw[position:])
    return b"".join(out)


def _has_doubled_headers(mail: Mail) -> bool:
    for _depth, node in mail.tree.walk():
        names = [header.name.strip().lower().encode("ascii", "replace") for header in node.headers]
        if any(names.count(name) > 1 for name in DOUBLED):
            return True
    return False


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


class _Collector:
    """Gathers views, dropping duplicates and stopping at the bounds."""

    def __init__(self, mail: Mail) -> None:
        self.make = type(mail)  # nested entities are read as messages of the same kind
        self.seen: dict[bytes, set[str]] = {}
        for part in mail.parts:
            self.seen.setdefault(_digest(part.data), set()).update(part.filenames)
        self.views: list[Part] = []
        self.budget = MAX_TOTAL_FACTOR * mail.size + 1024 * 1024

    @property
    def full(self) -> bool:
        return len(self.views) >= MAX_VIEWS or self.budget <= 0

    def add(self, part: Part) -> bool:
        """Keep ``part`` unless it is empty, already seen (with every name it carries), or over the
        bounds; True if kept."""
        if not part.data or self.full:
            return False
        digest = _digest(part.data)
        names = self.seen.get(digest)
        if names is not None and names.issuperset(part.filenames):
            return False
        self.seen.setdefault(digest, set()).update(part.filenames)
        self.views.append(part)
        self.budget -= len(part.data)
        return True


def _body_start(raw: bytes) -> int:
    """Where the top-level header block ends (its DKIM signatures are base64 too, but not payloads)."""
    ends = [index for index in (raw.find(b"\n\n"), raw.find(b"\n\r\n")) if index >= 0]
    return min(ends) if ends else len(raw)


def base64_runs(raw: bytes, skip: set[bytes] | frozenset[bytes] = frozenset()) -> Iterator[tuple[int, bytes]]:
    """``(offset, decoded)`` for each run of base64 lines in the body of ``raw``, decoded leniently;
    runs whose text is in ``skip`` (:func:`mailsift.message.mail.base64_source_key`) are not decoded again."""
    for match in _RUN.finditer(raw, _body_start(raw)):
        if match.end() - match.start() > _STREAM_RUN:
            decoded = _decode_long_run(raw, match.start(), match.end(), skip)
            if decoded is not None:
                yield match.start(), decoded
            continue
        text = match.group().translate(None, b" \t\r\n")
        if len(text) < _RUN_MIN or (skip and base64_source_key(text) in skip):
            continue
        try:
            yield match.start(), decode_base64_chunks(text)
        except ValueError:
            continue


_STREAM_RUN = 1024 * 1024
"""Runs longer than this (bytes of raw text) are decoded a slice at a time (:func:`_decode_long_run`)."""


def _run_texts(raw: bytes, start: int, end: int) -> Iterator[bytes]:
    """The run ``raw[start:end]`` without blanks and line ends, a slice at a time."""
    for position in range(start, end, _STREAM_RUN):
        yield raw[position : min(end, position + _STREAM_RUN)].translate(None, b" \t\r\n")


def _decode_long_run(raw: bytes, start: int, end: int, skip: set[bytes] | frozenset[bytes]) -> bytes | None:
    """``decode_base64_chunks`` of a long run's text (blanks removed), or None when ``skip`` holds
    its key; decoded a slice at a time so that neither the run's text nor a copy of it is held
    whole (the run holds only base64 characters: the text needs no other cleaning).

    Whole quartets are decoded as they come (base64 decodes each quartet alone) until a slice
    holds an ``=``; the rest of the text, from the last whole quartet on, is then decoded by
    :func:`decode_base64_chunks`, which gives what it gives for the whole text: the quartets
    before it hold no ``=``, so they only lengthen its first piece by whole quartets.
    """
    if skip and base64_chunks_key(_run_texts(raw, start, end)) in skip:  # a leaf decoded as base64 already
        return None
    decoded = io.BytesIO()
    carry = b""  # the last incomplete quartet
    rest: list[bytes] = []  # the texts from the first one with an "=" on
    try:
        for text in _run_texts(raw, start, end):
            if rest or b"=" in text:
                rest.append(text)
                continue
            carry += text
            whole = len(carry) - len(carry) % 4
            decoded.write(binascii.a2b_base64(memoryview(carry)[:whole]))
            carry = carry[whole:]
        decoded.write(decode_base64_chunks(carry + b"".join(rest)))
    except ValueError:
        return None
    return decoded.getvalue()


def lenient_split(data: bytes) -> list[bytes]:
    """The entities of ``data`` split on boundary lines found in it (not declared ones).

    Each boundary candidate (a ``--xxx`` line directly followed by a
    ``Content-`` header) splits the data; the entities are what lies between
    its lines, without the boundary lines.  Empty when there is none.
    """
    entities: list[bytes] = []
    if not data.startswith(b"--") and b"\n--" not in data:
        return entities  # no line starts with "--": the regular expression need not walk the data
    for boundary in dict.fromkeys(m.group(1) for m in _BOUNDARY_LINE.finditer(data)):
        delimiter = re.compile(rb"^--" + re.escape(boundary) + rb"(?:--)?[ \t]*\r?\n?", re.MULTILINE)
        pieces = delimiter.split(data)
        entities.extend(piece for piece in pieces[1:] if piece.strip())
    return entities


def _looks_like_message(data: bytes) -> bool:
    head = data[:8192]
    return bool(_MESSAGE_START.match(head)) and b"content-" in head.lower()


def _collect(mail: Mail, collector: _Collector, depth: int, prefix: str) -> None:
    """Add ``mail``'s views (and, nested, its parts) to ``collector``.

    Order matters only for names: the split entities (which carry their
    headers' filenames) come before the nameless raw runs that hold the same bytes.
    """
    strays = []
    for part in mail.alternates:
        if part.origin == STRAY:  # a preamble or epilogue: not a view, only split below
            strays.append(part)
        elif collector.add(_renamed(part, prefix)):
            _nested(part, collector, depth, prefix)

    for part in [*mail.parts, *strays]:
        if part.origin not in ("mime", STRAY) or depth >= MAX_DEPTH:
            continue
        origin = "lenient:split" if part.origin == "mime" else "lenient:after"
        for index, entity in enumerate(lenient_split(part.data), start=1):
            if collector.full:
                break
            child = collector.make(data=_without_last_line_end(entity))
            where = f"{prefix}{part.path}~split{index}."
            for child_part in child.parts:
                collector.add(_renamed(child_part, where, origin=origin))
            _collect(child, collector, depth + 1, where)

    if depth < MAX_DEPTH:
        _reread(mail, collector, depth, prefix)
    for part in mail.parts:
        for view in _decoded_readings(part, prefix, collector.budget):
            collector.add(view)

    raw = mail.raw
    for offset, decoded in base64_runs(raw, mail.base64_sources):
        view = Part(f"{prefix}raw@{offset}", "application/octet-stream", (), decoded, origin="raw:base64")
        if collector.add(view):
            _nested(view, collector, depth, prefix)
    for view in qp.raw_views(raw, prefix):  # quoted-printable as mail clients read it (mime/qp.py)
        if collector.add(view):
            _nested(view, collector, depth, prefix)
    if b"begin " in raw:
        for index, (name, decoded) in enumerate(extract_uuencoded(raw), start=1):
            collector.add(
                Part(f"{prefix}raw.uu{index}", "application/octet-stream", (name,), decoded, origin="raw:uuencode")
            )
    if b"=ybegin " in raw:
        for index, (name, decoded) in enumerate(extract_yencoded(raw), start=1):
            names = (name,) if name else ()
            collector.add(
                Part(f"{prefix}raw.yenc{index}", "application/octet-stream", names, decoded, origin="raw:yenc")
            )
    del raw


def _without_last_line_end(entity: bytes) -> bytes:
    """An entity split off at a delimiter line, without the line end before it (RFC 2046 §5.1.1:
    that CRLF belongs to the delimiter), as the strict parser reads it."""
    if entity.endswith(b"\r\n"):
        return entity[:-2]
    return entity[:-1] if entity.endswith((b"\n", b"\r")) else entity


def _reread(mail: Mail, collector: _Collector, depth: int, prefix: str) -> None:
    """The structural readings: hidden part headers (``lenient:headers``) and the last of doubled
    headers (``lenient:last``)."""
    bare = {
        node.path or "1"
        for _depth, node in mail.tree.walk()
        if not node.children and "content-type" not in node.headers
    }
    for part in mail.parts:
        if part.origin != "mime" or collector.full:
            continue
        if part.path not in bare and part.data[:1] not in (b"\v", b"\f", b"\r"):
            continue
        entity = hidden_entity(part.data)
        if entity:
            child = collector.make(data=entity)
            where = f"{prefix}{part.path}~headers."
            for child_part in [*child.parts, *child.alternates]:
                collector.add(_renamed(child_part, where, origin="lenient:headers"))
            _collect(child, collector, depth + 1, where)
    if collector.full or not _has_doubled_headers(mail):
        return
    reread = last_header_reading(mail.raw)
    if reread:
        child = collector.make(data=reread)
        where = f"{prefix}last:"
        for child_part in [*child.parts, *child.alternates]:
            if child_part.origin != STRAY:
                collector.add(_renamed(child_part, where, origin="lenient:last"))


def _decoded_readings(part: Part, prefix: str, budget: int) -> Iterator[Part]:
    """Readings of a strict part that its transfer decoding left out: bare uuencoded lines under an
    x-uuencode encoding (no ``begin`` line: the standard library keeps the text), and BinHex 4.0
    in a ``mac-binhex40`` (or binhex-encoded, ``.hqx``-named or text) part, its header's name first."""
    encoding = normalize_encoding(part.transfer_encoding)
    if encoding in _UU_ENCODINGS and b"begin " not in part.data:
        decoded = decode_uu_lines(part.data)
        if decoded:
            yield Part(f"{prefix}{part.path}~uu-lines", "application/octet-stream", part.filenames, decoded,
                       origin=f"decoded:{encoding}")  # fmt: skip
    hqx = (
        part.content_type in BINHEX_TYPES
        or encoding in BINHEX_ENCODINGS
        or any(name.lower().endswith(".hqx") for name in part.filenames)
        or (part.content_type.startswith("text/") and b":" in part.data)
    )
    if hqx and budget > 0 and HINT.search(part.data):
        for index, found in enumerate(find_binhex(part.data, budget), start=1):
            names = tuple(dict.fromkeys((found.name, *part.filenames)))
            where = f"{prefix}{part.path}~binhex{index}"
            defects = found.defects
            yield Part(where, "application/octet-stream", names, found.data, origin="decoded:binhex", defects=defects)
            if found.resource:
                yield Part(f"{where}.rsrc", "application/octet-stream", names, found.resource,
                           origin="decoded:binhex-rsrc", defects=defects)  # fmt: skip


def _nested(view: Part, collector: _Collector, depth: int, prefix: str) -> None:
    """If a view is itself a message (e.g. base64 ``message/rfc822``) or a multipart body
    (a base64-encoded multipart), add its parts and views."""
    if depth >= MAX_DEPTH or collector.full:
        return
    if _looks_like_message(view.data):
        entities = [view.data]
    else:
        entities = lenient_split(view.data)
    for index, entity in enumerate(entities, start=1):
        child = collector.make(data=entity)
        where = f"{prefix}{view.path}>{index}."
        for child_part in child.parts:
            collector.add(_renamed(child_part, where, origin="nested"))
        _collect(child, collector, depth + 1, where)


def _renamed(part: Part, prefix: str, origin: str | None = None) -> Part:
    if not prefix and origin is None:
        return part
    return Part(
        prefix + part.path,
        part.content_type,
        part.filenames,
        part.data,
        charset=part.charset,
        transfer_encoding=part.transfer_encoding,
        origin=origin or part.origin,
        defects=part.defects,
    )


def compute_views(mail: Mail) -> list[Part]:
    """Every lenient view of ``mail`` that differs from its strict parts (see the module doc)."""
    collector = _Collector(mail)
    _collect(mail, collector, 0, "")
    return collector.views
