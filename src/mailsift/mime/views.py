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
    ``message/rfc822``...).

A view whose bytes equal a strict part's, or an earlier view's, is dropped
(by hash), so ordinary mail has no views and costs one regular-expression pass
over the raw message.  The views are bounded: nesting depth :data:`MAX_DEPTH`,
at most :data:`MAX_VIEWS` views, and their total size at most
:data:`MAX_TOTAL_FACTOR` times the message's plus 1 MB (a decoding is never
bigger than the text it came from, so this only cuts pathological cases).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mailsift.mime import qp
from mailsift.mime.codecs import base64_source_key, decode_base64_chunks, extract_uuencoded, extract_yencoded
from mailsift.mime.tree import Part

MAX_DEPTH = 3
"""How deep decoded views that are messages themselves are parsed again."""

MAX_VIEWS = 256
"""At most this many views per message (the rest are not computed)."""

MAX_TOTAL_FACTOR = 2
"""The views of a message hold at most this many times its size (plus 1 MB)."""

_RUN = re.compile(
    rb"(?:^[ \t]*[A-Za-z0-9+/=]{16,}[ \t]*\r?\n)+(?:^[ \t]*[A-Za-z0-9+/=]{1,15}[ \t]*(?:\r?\n|\Z))?",
    re.MULTILINE,
)
"""A run of base64 lines (the last one may be short)."""

_RUN_MIN = 32
"""Shorter runs are words, not payloads."""

_BOUNDARY_LINE = re.compile(
    rb"^--([^\s][^\r\n]{0,250}?)(?:--)?[ \t]*\r?\n(?=[Cc][Oo][Nn][Tt][Ee][Nn][Tt]-)", re.MULTILINE
)

if TYPE_CHECKING:
    from mailsift.message.mail import Mail
"""A boundary-like line directly followed by a ``Content-`` header."""

_MESSAGE_START = re.compile(rb"\A(?:[!-9;-~]+:[^\r\n]*\r?\n(?:[ \t][^\r\n]*\r?\n)*)+\r?\n", re.DOTALL)
"""A header block at the start of some bytes: a message or a MIME entity."""


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


class _Collector:
    """Gathers views, dropping duplicates and stopping at the bounds."""

    def __init__(self, mail: Mail) -> None:
        self.make = type(mail)  # nested entities are read as messages of the same kind
        self.seen = {_digest(part.data) for part in mail.parts}
        self.views: list[Part] = []
        self.budget = MAX_TOTAL_FACTOR * mail.size + 1024 * 1024

    @property
    def full(self) -> bool:
        return len(self.views) >= MAX_VIEWS or self.budget <= 0

    def add(self, part: Part) -> bool:
        """Keep ``part`` unless it is empty, already seen, or over the bounds; True if kept."""
        if not part.data or self.full:
            return False
        digest = _digest(part.data)
        if digest in self.seen:
            return False
        self.seen.add(digest)
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
        text = match.group().translate(None, b" \t\r\n")
        if len(text) < _RUN_MIN or (skip and base64_source_key(text) in skip):
            continue
        try:
            yield match.start(), decode_base64_chunks(text)
        except ValueError:
            continue


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
    for part in mail.alternates:
        if collector.add(_renamed(part, prefix)):
            _nested(part, collector, depth, prefix)

    for part in mail.parts:
        if part.origin != "mime" or depth >= MAX_DEPTH:
            continue
        for index, entity in enumerate(lenient_split(part.data), start=1):
            if collector.full:
                break
            child = collector.make(data=entity)
            where = f"{prefix}{part.path}~split{index}."
            for child_part in child.parts:
                collector.add(_renamed(child_part, where, origin="lenient:split"))
            _collect(child, collector, depth + 1, where)

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
