"""MIME parameters (Content-Type, Content-Disposition) read every way a mail client reads them.

A parameter such as ``filename`` has one meaning in RFC 2045/2183/2231 and
several in practice: readers split a header at different places (at each
``;`` outside quotes, at each ``;`` regardless of quotes, at whatever looks
like ``key=value``), skip or keep comments, take the first or the last of two
values, put RFC 2231 continuations in numeric or written order, prefer
``name*`` to ``name`` or the reverse, decode RFC 2047 encoded words inside
quotes or not.  A filter that reads one way while the recipient's client reads
another can be shown a decoy name.

:func:`parameter_readings` returns the union: every distinct value a reader
could take for one parameter, the strict RFC reading first.  Everything is
bounded: the header text read (:data:`MAX_HEADER`), the parameters per header
(:data:`MAX_ITEMS`), the continuation sections (:data:`MAX_SECTIONS`), the
encoded words decoded (:data:`MAX_WORDS`), the readings kept
(:data:`MAX_READINGS`) and the length of each (:data:`MAX_VALUE`).  The
functions take any text and never raise.
"""

from __future__ import annotations

import base64
import binascii
import codecs as python_codecs
import functools
import itertools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

MAX_HEADER = 16 * 1024
"""Characters of one header's value that are read (of a longer one: its first and last halves)."""
MAX_ITEMS = 1024
"""Parameters read per header by each splitting."""
MAX_SECTIONS = 64
"""RFC 2231 continuation sections per parameter (a section number above it is ignored)."""
MAX_WORDS = 32
"""RFC 2047 encoded words decoded per value."""
MAX_READINGS = 32
"""Distinct readings kept per parameter (over all the headers of one name)."""
MAX_HEADERS = 4
"""Headers of one name read per part (the first, the last, then the others in order)."""
MAX_TEXT = 32 * 1024
"""Characters of header text read per parameter over all its headers (the first and last headers first)."""
MAX_VALUE = 1024
"""Characters kept of each reading (above ``bad_mime``'s long-filename bound, so that still fires)."""

_T = TypeVar("_T")
_NOT_MAIL = frozenset({"unicode-escape", "raw-unicode-escape", "undefined", "idna", "punycode"})


@dataclass(frozen=True, slots=True)
class Item:
    """One ``key=value`` as one splitting read it."""

    key: str
    """Lower case, blanks and comments around it removed."""
    value: str
    """Outer quotes removed, backslash escapes resolved (for a quoted value)."""
    raw: str
    """Outer quotes removed, escapes kept as written."""


# --------------------------------------------------------------------------- splittings


def _skip_comment(text: str, at: int) -> int:
    """The index after the (nested) comment opening at ``at``; the end if it never closes."""
    depth, end = 0, len(text)
    while at < end:
        char = text[at]
        if char == "\\":
            at += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return at + 1
        at += 1
    return end


def _skip_cfws(text: str, at: int) -> int:
    end = len(text)
    while at < end:
        if text[at] in " \t\r\n":
            at += 1
        elif text[at] == "(":
            at = _skip_comment(text, at)
        else:
            break
    return at


def _quoted(text: str, at: int) -> tuple[str, str, int]:
    """The quoted string opening at ``at``: (unescaped, as written, index after it); unterminated: to the end."""
    out: list[str] = []
    start = at + 1
    at = start
    end = len(text)
    while at < end:
        char = text[at]
        if char == "\\" and at + 1 < end:
            out.append(text[at + 1])
            at += 2
            continue
        if char == '"':
            return "".join(out), text[start:at], at + 1
        out.append(char)
        at += 1
    return "".join(out), text[start:], end


_TSPECIALS = frozenset('()<>@,;:\\"/[]?= \t\r\n')
_VALUE_END = frozenset(';"( \t\r\n')


def split_strict(text: str) -> list[Item]:
    """RFC 2045 with RFC 822's comments and blanks allowed around every token (the standard library's
    ``policy.default``, MimeKit): ``name (x)= file.zip`` is ``name``; junk up to the next ``;`` is skipped."""
    items: list[Item] = []
    at = text.find(";")
    end = len(text)
    while 0 <= at < end and len(items) < MAX_ITEMS:
        at = _skip_cfws(text, at + 1)
        start = at
        while at < end and text[at] not in _TSPECIALS:
            at += 1
        key = text[start:at].lower()
        at = _skip_cfws(text, at)
        if key and at < end and text[at] == "=":
            at = _skip_cfws(text, at + 1)
            if at < end and text[at] == '"':
                value, raw, at = _quoted(text, at)
            else:  # a token; read on past other tspecials (``name=story[1].scr``), as parsers do
                start = at
                while at < end and text[at] not in _VALUE_END:
                    at += 1
                value = raw = text[start:at]
            items.append(Item(key, value, raw))
            at = _skip_cfws(text, at)
        # anything else up to the next ';' outside quotes is junk
        while at < end and text[at] != ";":
            if text[at] == '"':
                at = _quoted(text, at)[2]
            elif text[at] == "(":
                at = _skip_comment(text, at)
            else:
                at += 1
    return items


def split_first_token(text: str) -> list[Item]:
    """Mozilla's reading (Thunderbird: ``nsMIMEHeaderParamImpl::DoParameterInternal``): the key runs to a
    blank, ``=`` or ``;``, blanks are allowed around ``=``, a token value runs to a blank or ``;``, and a
    missing ``;`` after a value ends the header (``filename="a.txt" filename="b.zip"`` is ``a.txt``)."""
    items: list[Item] = []
    at = text.find(";")
    if at < 0:
        return items
    end = len(text)
    at += 1
    while at < end and len(items) < MAX_ITEMS:
        while at < end and text[at].isspace():
            at += 1
        start = at
        while at < end and not text[at].isspace() and text[at] not in "=;":
            at += 1
        key = text[start:at].lower()
        while at < end and text[at].isspace():
            at += 1
        if at < end and text[at] == "=":
            at += 1
            while at < end and text[at].isspace():
                at += 1
            if at < end and text[at] == '"':
                value, raw, at = _quoted(text, at)
            else:
                start = at
                while at < end and not text[at].isspace() and text[at] != ";":
                    at += 1
                value = raw = text[start:at]
            items.append(Item(key, value, raw))
        while at < end and text[at].isspace():
            at += 1
        if at >= end or text[at] != ";":
            break
        at += 1
    return items


def _unquote(value: str) -> tuple[str, str]:
    value = value.strip()
    if len(value) > 1 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        return re.sub(r"\\(.)", r"\1", inner, flags=re.DOTALL), inner
    return value, value


def _split_items(pieces: Iterable[str], *, drop_comments: bool) -> list[Item]:
    items: list[Item] = []
    for piece in pieces:
        if len(items) >= MAX_ITEMS:
            break
        key, equals, value = piece.partition("=")
        if not equals:
            continue
        if drop_comments:  # and quotes and backslashes: ``"name"=x``, ``na\\me=x``
            key = re.sub(r"\([^()]*\)|[\\\"]", "", key)
        value, raw = _unquote(value)
        items.append(Item(key.strip().lower(), value, raw))
    return items


def split_semicolons(text: str) -> list[Item]:
    """The standard library's ``compat32`` and Perl's MIME::Tools: split at each ``;`` outside quotes, the key
    is what precedes the first ``=``, the value the rest, its outer quotes removed only if both are there."""
    pieces = _quote_aware_split(text)[1:]
    return _split_items(pieces, drop_comments=False)


def split_semicolons_uncommented(text: str) -> list[Item]:
    """As :func:`split_semicolons`, comments removed from the key (``name (x)= file.zip`` is ``name``)."""
    return _split_items(_quote_aware_split(text)[1:], drop_comments=True)


def split_every_semicolon(text: str) -> list[Item]:
    """A reader that does not know quotes: every ``;`` splits (``x="a;name=b.zip"`` holds ``name``)."""
    return _split_items(text.split(";", MAX_ITEMS + 1)[1:], drop_comments=True)


_PIECE = re.compile(r'(?:"(?:[^"\\]|\\.)*+"?|[^;"]++)*+', re.DOTALL)


def _quote_aware_split(text: str) -> list[str]:
    """``text`` cut at each ``;`` outside quotes (a regular expression, not a loop over characters)."""
    pieces: list[str] = []
    at, end = 0, len(text)
    while len(pieces) <= MAX_ITEMS:
        match = _PIECE.match(text, at)
        stop = match.end() if match else at
        pieces.append(text[at:stop])
        if stop >= end:
            break
        at = stop + 1
    return pieces


_ANYWHERE = re.compile(
    r'(?<![^\s;=()"])([^\s;=()"]++)'  # a key (starting after a delimiter: no quadratic retries inside one)
    r"\s*(?:\([^()]*\)\s*)*="  # blanks and comments before the '='
    r'\s*(?:"((?:\\.|[^"\\])*)"?|([^\s;"]*))',  # a quoted string (maybe unterminated) or a token
    re.DOTALL,
)


def split_anywhere(text: str) -> list[Item]:
    """The most lenient reader: every ``key=value`` wherever it stands (no ``;`` needed between two)."""
    items: list[Item] = []
    for match in _ANYWHERE.finditer(text):
        if len(items) >= MAX_ITEMS:
            break
        quoted = match.group(2)
        if quoted is not None:
            value, raw = re.sub(r"\\(.)", r"\1", quoted, flags=re.DOTALL), quoted
        else:
            value = raw = match.group(3) or ""
        items.append(Item(match.group(1).lower(), value, raw))
    return items


SPLITTINGS: tuple[Callable[[str], list[Item]], ...] = (
    split_strict,
    split_first_token,
    split_semicolons,
    split_semicolons_uncommented,
    split_every_semicolon,
    split_anywhere,
)
"""Every way of cutting a header into parameters, the strict one first."""


# --------------------------------------------------------------------------- values


_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")


def _percent_bytes(text: str) -> bytes:
    """``%XX`` decoded; everything else as its UTF-8 bytes (a stray ``%`` stays)."""
    out = bytearray()
    position = 0
    for match in _PERCENT.finditer(text):
        out += text[position : match.start()].encode("utf-8", "surrogateescape")
        out.append(int(match.group(1), 16))
        position = match.end()
    out += text[position:].encode("utf-8", "surrogateescape")
    return bytes(out)


@functools.lru_cache(maxsize=256)
def _codec(charset: str) -> str | None:
    """The Python codec of a charset mail may be written in, else None (unknown, or one of Python's own)."""
    charset = charset.strip().strip('"').split("*", 1)[0]  # RFC 2231 section 5: charset*language
    if not charset or len(charset) > 64 or "\0" in charset:
        return None
    try:
        name = python_codecs.lookup(charset).name
    except (LookupError, ValueError, TypeError):
        return None
    if name in _NOT_MAIL:
        return None
    try:  # text encodings only (not base64_codec, rot13...)
        "".encode(name)
        b"".decode(name)
    except (LookupError, TypeError, ValueError, UnicodeError):
        return None
    if not isinstance(python_codecs.decode(b"", name), str):
        return None
    return name


def _decode_bytes(data: bytes, charset: str) -> list[str]:
    """The text a client shows for ``data`` in ``charset``: the declared charset if it decodes, else UTF-8,
    else Latin-1; UTF-16 without a byte order mark both ways (clients differ)."""
    readings: list[str] = []
    codec = _codec(charset) if charset else None
    for name in ([codec] if codec else []) + ["utf-8", "latin-1"]:
        try:
            readings.append(data.decode(name))
            break
        except (UnicodeError, LookupError):
            continue
    if codec in ("utf-16", "utf_16") and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        readings.append(data.decode("utf-16-be", "replace"))
    return readings


def extended_value(raw: str, *, first: bool) -> tuple[str, bytes]:
    """An RFC 2231 extended value: (charset, bytes).  Only the first section carries ``charset'language'``;
    with a single quote Mozilla reads ``charset'value``; without one, the value alone."""
    charset = ""
    if first and "'" in raw:
        parts = raw.split("'", 2)
        charset = parts[0]
        raw = parts[-1]
    return charset, _percent_bytes(raw)


_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,80})\?([BbQq])\?([^?]{0,2000})\?=")


def _word_bytes(kind: str, text: str) -> bytes | None:
    if kind in "Bb":
        cleaned = re.sub(r"[^A-Za-z0-9+/]", "", text)
        cleaned = cleaned[: len(cleaned) - len(cleaned) % 4 if len(cleaned) % 4 == 1 else len(cleaned)]
        try:
            return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4))
        except (binascii.Error, ValueError):
            return None
    return _percent_bytes(text.replace("_", " ").replace("%", "%25").replace("=", "%"))


def decode_encoded_words(value: str) -> list[str]:
    """RFC 2047 encoded words decoded wherever they stand (inside quotes, glued to other text: Thunderbird,
    MimeKit and the standard library's ``policy.default`` decode them in parameters), adjacent words of one
    charset joined before decoding (a character may be split between two), blanks between words dropped.
    UTF-16 without a byte order mark is read both ways.  No encoded word: ``[]``."""
    if "=?" not in value:
        return []
    matches = list(itertools.islice(_ENCODED_WORD.finditer(value), MAX_WORDS))
    if not matches:
        return []
    # runs: literal text, or (charset, bytes) of adjacent words of one charset
    runs: list[str | tuple[str, bytes]] = []
    position = 0
    for match in matches:
        between = value[position : match.start()]
        data = _word_bytes(match.group(2), match.group(3))
        charset = match.group(1)
        if data is None or _codec(charset) is None:
            runs.append(between + match.group(0))
        else:
            adjacent = runs and isinstance(runs[-1], tuple) and not between.strip()
            last = runs[-1] if adjacent else None
            if isinstance(last, tuple) and last[0].lower() == charset.lower():
                runs[-1] = (charset, last[1] + data)
            else:
                if between and not adjacent:
                    runs.append(between)
                runs.append((charset, data))
        position = match.end()
    runs.append(value[position:])
    readings = [""]
    for run in runs:
        if isinstance(run, str):
            readings = [reading + run for reading in readings]
            continue
        texts = _decode_bytes(run[1], run[0])
        readings = [reading + text for reading in readings for text in texts][:4]
    return readings


# --------------------------------------------------------------------------- assembling one parameter


def _section(key: str, param: str) -> tuple[int | None, bool] | None:
    """For a key of ``param``: (section number or None, extended); None if the key is another parameter."""
    if key == param:
        return None, False
    if not key.startswith(param + "*"):
        return None
    rest = key[len(param) + 1 :]
    extended = rest.endswith("*") or rest == ""
    digits = rest.rstrip("*")
    if rest == "":
        return None, True
    if not digits.isdigit() or len(digits) > 4:  # isdigit: also other scripts' digits; int() reads them
        return None
    number = int(digits)
    return (number, extended) if number < MAX_SECTIONS else None


def _join_sections(sections: list[tuple[int, bool, str]]) -> list[str]:
    """The continuation sections (number, extended, raw value) in the given order, joined and decoded."""
    charset = ""
    data = bytearray()
    for index, (number, extended, raw) in enumerate(sections):
        if extended:
            found, chunk = extended_value(raw, first=index == 0 and number == 0)
            charset = charset or found
            data += chunk
        else:
            data += raw.encode("utf-8", "surrogateescape")
    return _decode_bytes(bytes(data), charset)


def assemble(items: list[Item], param: str) -> list[str]:
    """Every reading of ``param`` from one splitting's items: each plain value (first, last and any other),
    each ``param*`` value, and the continuations joined in numeric order (stopping at a gap, as Mozilla does,
    or not), in written order, first or last of a repeated section, with the plain value as section 0."""
    found: list[str] = []
    sections: list[tuple[int, bool, Item]] = []
    plain: list[Item] = []
    for item in items:
        kind = _section(item.key, param)
        if kind is None:
            continue
        number, extended = kind
        if number is None and not extended:
            plain.append(item)
        elif number is None:
            found.extend(_join_sections([(0, True, item.raw)]))
        else:
            sections.append((number, extended, item))
    for item in _ends_first(plain, MAX_READINGS):
        found.append(item.value)
        if item.raw != item.value:
            found.append(item.raw)  # a reader that keeps backslash escapes
    if sections:
        first: dict[int, tuple[bool, str]] = {}
        last: dict[int, tuple[bool, str]] = {}
        for number, extended, item in sections:
            value = item.raw if extended else item.value
            first.setdefault(number, (extended, value))
            last[number] = (extended, value)
        for table in (first, last):
            ordered = sorted(table.items())
            found.extend(_join_sections([(n, e, v) for n, (e, v) in ordered]))
            contiguous = []
            for expected, (number, (extended, value)) in enumerate(ordered):
                if number != expected:
                    break
                contiguous.append((number, extended, value))
            if contiguous:
                found.extend(_join_sections(contiguous))
            if plain and 0 not in table:  # the plain value read as section 0
                with_plain = [(0, False, plain[0].value)] + [(n, e, v) for n, (e, v) in ordered]
                found.extend(_join_sections(with_plain))
        written = [(number, extended, item.raw if extended else item.value) for number, extended, item in sections]
        found.extend(_join_sections(written))
    return found


# --------------------------------------------------------------------------- headers


_FOLD = re.compile(r"\r?\n([ \t])")


def _header_texts(value: str) -> list[str]:
    """The header's value unfolded as RFC 5322 says (the line break removed, the blank kept) and, if it was
    folded, as readers that join the lines (blank removed too); 8-bit text read as UTF-8."""
    if len(value) > MAX_HEADER:  # both ends: one client takes the first value, another the last
        value = value[: MAX_HEADER // 2] + ";" + value[-MAX_HEADER // 2 :]
    if any("\udc80" <= char <= "\udcff" for char in value):  # raw 8-bit bytes, kept by the parser
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    texts = [_FOLD.sub(r"\1", value).replace("\r", "").replace("\n", "")]
    joined = _FOLD.sub("", value).replace("\r", "").replace("\n", "")
    if joined != texts[0]:
        texts.append(joined)
    return texts


def _clean(value: str) -> list[str]:
    """A value and what lenient readers make of it: encoded words decoded, stray quotes removed."""
    value = value.strip()
    readings = [value]
    readings.extend(decode_encoded_words(value))
    for reading in list(readings):
        stripped = reading.strip().strip("\"'").strip()
        if stripped != reading:
            readings.append(stripped)
    return readings


def _ends_first(values: list[_T], keep: int) -> list[_T]:
    """The first and the last values first (what clients take), then the others; at most ``keep``."""
    if len(values) <= 2:
        return values
    picked = [values[0], values[-1], *values[1:-1]]
    return picked[:keep]


def parameter_readings(header_values: Iterable[str], param: str) -> list[str]:
    """Every distinct reading of parameter ``param`` in the given header values (every Content-Type, or every
    Content-Disposition, of one part: one client takes the first header, another the last), empty ones left
    out, at most :data:`MAX_READINGS` of at most :data:`MAX_VALUE` characters each.

    The strict reading of the first header comes first.  The readings of each header, unfolding and
    splitting are taken in turn (the first of each, then the second of each...), the first and the last
    header before the others, so that decoys in one reading cannot push another reading's value out.
    """
    param = param.lower()
    lists: list[list[str]] = []
    budget = MAX_TEXT
    for header_value in _ends_first([str(v) for v in header_values], MAX_HEADERS):
        for text in _header_texts(header_value):
            if budget <= 0:
                break
            budget -= len(text)
            if param not in text.lower().replace("\\", "").replace('"', ""):  # no reading can find it
                continue
            for splitting in SPLITTINGS:
                values = assemble(splitting(text), param)
                lists.append([reading for value in values for reading in _clean(value)])
    readings: list[str] = []
    seen: set[str] = set()
    depth = 0
    while lists and len(readings) < MAX_READINGS:
        lists = [each for each in lists if len(each) > depth]
        for each in lists:
            reading = each[depth][:MAX_VALUE]
            if reading and reading not in seen:
                seen.add(reading)
                readings.append(reading)
                if len(readings) >= MAX_READINGS:
                    break
        depth += 1
    return readings
