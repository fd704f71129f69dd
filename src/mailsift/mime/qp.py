"""Quoted-printable as the mail clients read it where RFC 2045 leaves the reading open.

The strict reading (:attr:`Mail.parts <mailsift.message.mail.Mail.parts>`) is the
standard library's (``binascii.a2b_qp``): an invalid escape stays as written
(``=W`` is ``=W``), ``==41`` is ``=41``, blanks after a soft line break's ``=``
make it a literal ``=`` and the blanks, lower-case hex is decoded.  Other readers
differ, and a sender can hide bytes in the difference:

``rfc``
    RFC 2045 section 6.7: blanks at the end of each line deleted (so ``=`` and
    trailing blanks is a soft line break), an ``=`` not followed by two hex digits
    kept and the next character read again (``E==4Dc`` is ``E=Mc``). Go's
    ``mime/quotedprintable``, Perl's ``MIME::QuotedPrint`` (``decode_qp``),
    Outlook (as [MS-OXCICAL] 2.2.37 documents its decoder).
``thunderbird``
    an invalid escape is three characters passed through as they are (the third
    is not read again: ``=W=41`` stays ``=W=41``), ``=`` before a bare CR is a soft
    line break, trailing blanks are kept: Thunderbird (``mime_decode_qp_buffer`` in
    mailnews/mime/src/mimeenc.cpp); MimeKit's ``QuotedPrintableDecoder`` passes
    invalid escapes through the same way but keeps ``=`` before a bare CR.
``parseint``
    ``=`` with one hex digit and another character is the byte of that digit,
    both characters consumed (``a=b,b`` is ``a\\x0bb``): decoders built on
    JavaScript's ``parseInt`` (postal-mime before 2.4.5, postal-mime issue 75).
``drop``
    an invalid ``=`` and the character after it removed; no reader is known to do
    it, it is kept as a precaution (one more decoding, only when an escape is invalid).

Only a body with an escape that some reading disagrees on (an ``=`` followed by
neither two hex digits nor a line end) gets readings, and only the readings whose
bytes differ from the strict one's are kept.  Every reading is regular-expression
passes and ``binascii.a2b_qp`` over the whole body (no Python loop over bytes but
for Thunderbird's invalid escapes, at most :data:`MAX_CALLBACKS` of them).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator
from itertools import islice

from mailsift.mime.tree import Part, candidate_filenames, new_parser

ODD_ESCAPE = re.compile(rb"=(?![0-9A-Fa-f]{2}|\r?\n|\Z)")
"""An escape the readings disagree on: ``=`` followed by neither two hex digits nor a line end."""

MAX_CALLBACKS = 100_000
"""Above this many invalid escapes in one body, the Thunderbird reading is not made
(it needs a Python call per invalid escape; the other readings still are)."""

_TRAILING_BLANKS = re.compile(rb"[ \t]+(?=\r?\n|\Z)")
_RFC_LITERAL = re.compile(rb"=(?![0-9A-Fa-f]{2}|\r?\n|\Z)")
_TB_TOKEN = re.compile(rb"=(?:(\r\n|\r|\n)|(?![0-9A-Fa-f]{2})[^\r\n]{0,2})")
_ONE_HEX = re.compile(rb"=([0-9A-Fa-f])(?![0-9A-Fa-f])[^\r\n]")
_DROP = re.compile(rb"=(?![0-9A-Fa-f]{2}|\r?\n|\Z)[^\r\n]?")


def decode_rfc(encoded: bytes) -> bytes:
    """RFC 2045's reading (Go, Perl, Outlook): trailing blanks deleted, an invalid ``=`` literal."""
    return binascii.a2b_qp(_RFC_LITERAL.sub(b"=3D", _TRAILING_BLANKS.sub(b"", encoded)))


def _tb_token(match: re.Match[bytes]) -> bytes:
    if match.group(1) is not None:
        return b""  # a soft line break, bare CR included
    return match.group().replace(b"=", b"=3D")


def decode_thunderbird(encoded: bytes) -> bytes:
    """Thunderbird's and MimeKit's reading: an invalid escape is three characters passed through."""
    return binascii.a2b_qp(_TB_TOKEN.sub(_tb_token, encoded))


def decode_parseint(encoded: bytes) -> bytes:
    """``=`` + one hex digit + another character is that digit's byte; other invalid escapes as RFC 2045."""
    one_hex = _ONE_HEX.sub(rb"=0\1", encoded)
    return binascii.a2b_qp(_RFC_LITERAL.sub(b"=3D", one_hex))


def decode_drop(encoded: bytes) -> bytes:
    """Invalid escapes (``=`` and the next character) removed."""
    return binascii.a2b_qp(_DROP.sub(b"", encoded))


def readings(encoded: bytes) -> list[tuple[str, bytes]]:
    """``(label, decoded)`` for each reading of a quoted-printable body that differs from the
    strict one (``binascii.a2b_qp``) and from the readings before it; empty for a body whose
    escapes every reader agrees on (the usual case: one regular-expression search)."""
    if not ODD_ESCAPE.search(encoded):
        return []
    seen = {binascii.a2b_qp(encoded)}
    found: list[tuple[str, bytes]] = []
    decoders = [("rfc", decode_rfc), ("parseint", decode_parseint), ("drop", decode_drop)]
    if sum(1 for _ in islice(ODD_ESCAPE.finditer(encoded), MAX_CALLBACKS + 1)) <= MAX_CALLBACKS:
        decoders.insert(1, ("thunderbird", decode_thunderbird))
    for label, decode in decoders:
        decoded = decode(encoded)
        if decoded not in seen:
            seen.add(decoded)
            found.append((label, decoded))
    return found


_QP_LINE = re.compile(rb"content-transfer-encoding[ \t]*:[^\r\n]*\Z")
_BOUNDARY_PARAM = re.compile(rb"boundary[ \t]*=[ \t]*\"?([^\"\r\n;]{1,200})")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
MAX_HEADER = 64 * 1024
"""How far before its Content-Transfer-Encoding line a header block is looked for."""
MAX_BOUNDARIES = 64
"""At most this many distinct ``boundary`` parameters end a raw quoted-printable body."""


def _line_after(raw: bytes, index: int) -> int:
    end = raw.find(b"\n", index)
    return len(raw) if end < 0 else end + 1


def _occurrences(text: bytes, word: bytes) -> Iterator[int]:
    index = text.find(word)
    while index >= 0:
        yield index
        index = text.find(word, index + len(word))


def _delimiter(raw: bytes, start: int, boundaries: list[bytes]) -> int:
    """Where the first line ``--<boundary>`` at or after ``start`` begins (the end of ``raw`` if none):
    each line that starts with ``--`` is checked, usually the first is the one."""
    candidates = tuple(b"--" + boundary for boundary in boundaries)
    if not candidates:
        return len(raw)
    if raw.startswith(candidates, start):
        return start
    index = raw.find(b"\n--", start)
    while index >= 0:
        if raw.startswith(candidates, index + 1):
            return index + 1
        index = raw.find(b"\n--", index + 3)
    return len(raw)


_SLICE = 1024 * 1024


def _mentions(raw: bytes, word: bytes) -> bool:
    """Whether ``word`` (lower case) occurs in ``raw`` in any case, looked up a slice at a time."""
    return any(word in raw[start : start + _SLICE + len(word) - 1].lower() for start in range(0, len(raw), _SLICE))


def raw_bodies(raw: bytes) -> Iterator[tuple[bytes, bytes]]:
    """``(header block, body)`` of each entity of ``raw`` that declares quoted-printable.

    Found in the raw bytes, wherever the MIME structure puts the entity: its
    header block runs from the line after the previous blank or ``--`` line, its
    body from the blank line after the header to the next line that starts with
    ``--`` and a boundary declared anywhere in ``raw`` (or to the end).  Words are
    looked up with ``bytes.find`` in a lower-case copy (a regular expression
    ignoring case walks every byte, several times slower).
    """
    if not _mentions(raw, b"quoted-printable"):  # the usual case: no lower-case copy of the whole message
        return
    lower = raw.lower()
    boundaries: list[bytes] = []
    for index in _occurrences(lower, b"boundary"):
        param = _BOUNDARY_PARAM.match(lower, index)
        value = raw[param.start(1) : param.end(1)].strip() if param else b""
        if value and value not in boundaries and len(boundaries) < MAX_BOUNDARIES:
            boundaries.append(value)
    position = 0
    for index in _occurrences(lower, b"quoted-printable"):
        line_start = lower.rfind(b"\n", 0, index) + 1
        if index < position or not _QP_LINE.match(lower[line_start:index]):
            continue
        floor = max(0, line_start - MAX_HEADER)
        before = max(lower.rfind(b"\n\n", floor, line_start), lower.rfind(b"\n\r\n", floor, line_start))
        before = max(before, lower.rfind(b"\n--", floor, line_start))
        start = floor if before < 0 else _line_after(raw, before + 1)
        header_end = _HEADER_END.search(raw, index)
        if header_end is None:
            return
        body_start = header_end.end()
        body_end = _delimiter(raw, body_start, boundaries)
        yield raw[start : header_end.start()], raw[body_start:body_end]
        position = max(body_start, body_end)


def raw_views(raw: bytes, prefix: str = "") -> Iterator[Part]:
    """A view (origin ``decoded:quoted-printable~<label>``, path ``raw.qp<n>~<label>``) for each
    reading of each quoted-printable entity of ``raw`` (:func:`raw_bodies`) that differs from
    the strict one, with the filenames of the entity's header."""
    for index, (header, body) in enumerate(raw_bodies(raw), start=1):
        found = readings(body)
        if not found:
            continue
        parser = new_parser()
        parser.feed(header + b"\n\n")
        names = candidate_filenames(parser.close())
        for label, decoded in found:
            path = f"{prefix}raw.qp{index}~{label}"
            yield Part(path, "application/octet-stream", names, decoded, origin=f"decoded:quoted-printable~{label}")
