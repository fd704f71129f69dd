"""``bad_mime``: qmail-scanner's MIME format checks, each a named finding.

Viruses of the Klez and Aliz era (and much spam since) were sent in MIME that
is broken on purpose, so that a scanner reads it one way and the mail client
another.  Qmail-Scanner blocked such messages whatever the antivirus said;
``bad_mime()`` does the same.  Every check can be enabled alone
(``bad_mime(only=[...])``) or left out (``bad_mime(skip=[...])``):

=====================  ====================================  ==============================================
check                  finding                               what it looks for
=====================  ====================================  ==============================================
``continuation``       ``Bad.MIME.Header.Continuation``      a MIME header's parameter on a line of its own
                                                             (not folded), or a header block that starts
                                                             with a continuation line
``comment``            ``Bad.MIME.Header.Comment``           a comment inside a header name
                                                             (``Content-T(xxx)ype:``)
``repeated``           ``Bad.MIME.Header.Repeated``          Content-Type, Content-Transfer-Encoding or
                                                             Content-Disposition twice in one header block
``long_boundary``      ``Bad.MIME.Boundary.TooLong``         a boundary over 250 characters
``filename_conflict``  ``Bad.MIME.Filename.Conflict``        one attachment with differing filenames
                                                             (``name`` vs ``filename``, or doubled)
``double_boundary``    ``Bad.MIME.Boundary.Repeated``        a boundary defined twice: two ``boundary``
                                                             parameters, or a nested multipart reusing an
                                                             enclosing one's boundary
``exe_in_media``       ``Bad.MIME.Executable.MediaType``     a Windows executable name in a non-application
                                                             type (``audio/wav`` named ``wav.exe``)
``part_header``        ``Bad.MIME.Part.BrokenHeader``        a broken header inside a MIME part (a line that
                                                             is no header, a name with blanks or controls)
``exe_not_application``  ``Bad.MIME.Executable.NotApplication``  a Windows executable (PE) whose type is
                                                             not ``application/...`` (``notepad.gif``)
``long_filename``      ``Bad.MIME.Filename.TooLong``         a filename over 256 characters
``double_extension``   ``Bad.MIME.Filename.DoubleExtension`` ``file.gif.exe``: an executable extension after
                                                             a document or media one (``setup.2.1.exe`` or
                                                             ``notes.txt.doc`` are fine)
``clsid``              ``Bad.MIME.Filename.CLSID``           a CLSID extension (``file.{3050F4D8-...}``)
``undecodable``        ``Broken.MIME.Undecodable``           a part whose declared transfer encoding cannot
                                                             be decoded (unknown encoding, base64 that is
                                                             mostly not base64)
=====================  ====================================  ==============================================

Repeated MIME headers can be renamed instead of rejected, as qmail-scanner
did ("repeated occurrences of MIME headers makes Q-S rename the latter ones to
nullify them"): ``bad_mime(repeated='rename')``.  Every occurrence after the
first of Content-Type, Content-Transfer-Encoding or Content-Disposition, in the
message's and in every part's header block, gets ``rename_prefix`` (default
``X-Duplicate-``: the reference does not give qmail-scanner's own name) and the
message is delivered, renamed (a ``deliver`` with a rebuilt message, as
``sanitize``: its finding stays ``Bad.MIME.Header.Repeated``, logged
``Delivered_...``).  Any other finding still wins.  As a delivered detection
ends the evaluation, put it **last** in ``SCANNERS``, after the virus and spam
scanners, which then have seen the message first.

On the whole message every check runs over every MIME entity (attached
messages included) and every filename of the strict parts and of the lenient
views (so a name hidden behind a broken boundary counts too).  Under
``parsemail`` it checks the one part it is given.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from mailsift.errors import ConfigError
from mailsift.message.mail import Mail
from mailsift.message.result import Disposition, Result, Sanitize, SetDisposition
from mailsift.mime.codecs import decode_words
from mailsift.mime.tree import MimeNode, Part
from mailsift.scanners import work
from mailsift.scanners.base import Scanner, Target
from mailsift.validators import flag

CHECKS: dict[str, str] = {
    "continuation": "Bad.MIME.Header.Continuation",
    "comment": "Bad.MIME.Header.Comment",
    "repeated": "Bad.MIME.Header.Repeated",
    "long_boundary": "Bad.MIME.Boundary.TooLong",
    "filename_conflict": "Bad.MIME.Filename.Conflict",
    "double_boundary": "Bad.MIME.Boundary.Repeated",
    "exe_in_media": "Bad.MIME.Executable.MediaType",
    "part_header": "Bad.MIME.Part.BrokenHeader",
    "exe_not_application": "Bad.MIME.Executable.NotApplication",
    "long_filename": "Bad.MIME.Filename.TooLong",
    "double_extension": "Bad.MIME.Filename.DoubleExtension",
    "clsid": "Bad.MIME.Filename.CLSID",
    "undecodable": "Broken.MIME.Undecodable",
}
"""Check name -> finding name, in the order the checks run."""

MAX_BOUNDARY = 250
DEFAULT_RENAME_PREFIX = "X-Duplicate-"
"""``bad_mime(repeated='rename')``: what a repeated MIME header's name is prefixed with."""
MAX_FILENAME = 256

WINDOWS_EXECUTABLE = (
    "exe|com|scr|pif|bat|cmd|vbs|vbe|js|jse|wsf|wsh|ws|wsc|sct|lnk|hta|cpl|msi|msp|mst|dll|ocx|sys|drv|"
    "reg|inf|chm|hlp|shs|shb|job|ps1|psc1|application|gadget|msc|scf|url|jar"
)
"""Extensions Windows runs (or hands to an interpreter) on a double click."""

DECOY = (
    "txt|text|rtf|doc|docx|docm|xls|xlsx|xlsm|ppt|pptx|pps|ppsx|pdf|odt|ods|odp|csv|xml|"
    "htm|html|jpg|jpeg|gif|png|bmp|tif|tiff|ico|svg|webp|mp3|mp4|wav|wma|wmv|avi|mpg|mpeg|mov|mkv|"
    "zip|rar|7z|gz|tgz|tar|eml|msg|ics|vcf"
)
"""Extensions a user trusts: the disguise in front of an executable one."""

_EXECUTABLE_NAME = re.compile(rf"\.(?:{WINDOWS_EXECUTABLE})$", re.IGNORECASE)
_DOUBLE_EXTENSION = re.compile(rf"\.(?:{DECOY})[\s_.]*\.(?:{WINDOWS_EXECUTABLE})$", re.IGNORECASE)
_CLSID = re.compile(r"\.?\{[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\}$", re.IGNORECASE)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""A well-formed header field name (RFC 5322 ftext, without the oddities)."""

_UNFOLDED_PARAMETER = re.compile(
    rb"^content-(?:type|disposition)[ \t]*:[^\r\n]*\r?\n(?:[ \t][^\r\n]*\r?\n)*"
    rb"[A-Za-z0-9_-]+\*?(?:[0-9]+\*?)?[ \t]*=",
    re.IGNORECASE | re.MULTILINE,
)
"""A Content-Type/-Disposition followed by a parameter line that was not folded."""

_SINGLE = ("content-type", "content-transfer-encoding", "content-disposition")
_BROKEN_BLOCK = ("MissingHeaderBodySeparatorDefect", "MisplacedEnvelopeHeaderDefect")
_UNDECODABLE = ("UnknownTransferEncoding", "undecodable:")
"""Defects of a leaf that no decoder gets past (a dangling base64 character is not one:
mail clients drop it, and real mail has it)."""
_JUNK_BASE64 = "InvalidBase64CharactersDefect"

Finding = tuple[str, str]
"""(check name, detail)."""


def _clean_name(name: str) -> str:
    """A filename as Windows takes it: trailing dots and blanks dropped."""
    return name.strip().rstrip(". ")


def _is_windows_executable(data: bytes) -> bool:
    """A PE image: ``MZ``, and ``PE\\0\\0`` where the DOS header points."""
    if len(data) < 0x40 or data[:2] != b"MZ":
        return False
    (offset,) = struct.unpack_from("<I", data, 0x3C)
    return data[offset : offset + 4] == b"PE\0\0"


# --------------------------------------------------------------------------- checks on entities


def _entity_findings(mail: Mail) -> Iterator[Finding]:
    """The header and structure checks, over every MIME entity of the message."""
    if _UNFOLDED_PARAMETER.search(mail.raw):
        yield "continuation", "a MIME header parameter on a line of its own (not folded)"
    stack: list[tuple[MimeNode, tuple[str, ...]]] = [(mail.tree, ())]
    while stack:
        node, outer = stack.pop()
        where = f"part {node.path}" if node.path else "message headers"
        if "FirstHeaderLineIsContinuationDefect" in node.defects and (node.path or _indented_header(mail)):
            yield "continuation", f"{where}: header block starts with a continuation line"
        for header in node.headers:
            if "(" in header.name or ")" in header.name:
                yield "comment", f"{where}: comment in header name {header.name[:80]!r}"
        names = [header.name.lower() for header in node.headers]
        for single in _SINGLE:
            if names.count(single) > 1:
                yield "repeated", f"{where}: {names.count(single)} {single} headers"
        for boundary in node.boundaries:
            if len(boundary) > MAX_BOUNDARY:
                yield "long_boundary", f"{where}: boundary of {len(boundary)} characters"
        if len(set(node.boundaries)) > 1 or (node.boundaries and node.boundaries[0] in outer):
            yield "double_boundary", f"{where}: boundary defined twice"
        if node.path:  # inside a part
            broken = [h.name for h in node.headers if not _TOKEN.fullmatch(h.name)]
            if broken:
                yield "part_header", f"{where}: broken header name {broken[0][:80]!r}"
            elif any(defect in node.defects for defect in _BROKEN_BLOCK):
                yield "part_header", f"{where}: a line in the headers that is no header"
        names_found = _distinct_names(node.disposition_names + node.type_names)
        if len(names_found) > 1:
            shown = ", ".join(repr(n[:60]) for n in names_found[:3])
            yield "filename_conflict", f"{where}: differing filenames {shown}"
        stack.extend((child, outer + node.boundaries[:1]) for child in node.children)


def _indented_header(mail: Mail) -> bool:
    """The message's first line is indented text (a blank first line is only stray whitespace)."""
    with mail.open() as stream:
        first = stream.readline(1024)
    return first[:1] in (b" ", b"\t") and bool(first.strip())


def _distinct_names(values: Iterable[str]) -> list[str]:
    """Filenames that differ once encoded words are decoded and case and blanks ignored."""
    found: dict[str, str] = {}
    for value in values:
        decoded = decode_words(value)
        found.setdefault(" ".join(decoded.split()).casefold(), decoded)
    return list(found.values())


# --------------------------------------------------------------------------- checks on parts


def _part_findings(part: Part) -> Iterator[Finding]:
    """The filename, type and decoding checks of one part (or view)."""
    where = f"part {part.path}"
    major = part.content_type.split("/", 1)[0]
    for raw_name in part.filenames:
        name = _clean_name(raw_name)
        shown = repr(name[:80] + ("..." if len(name) > 80 else ""))
        if _EXECUTABLE_NAME.search(name) and major not in ("application", "multipart"):
            yield "exe_in_media", f"{where}: {shown} sent as {part.content_type}"
        if len(raw_name) > MAX_FILENAME:
            yield "long_filename", f"{where}: filename of {len(raw_name)} characters"
        if _DOUBLE_EXTENSION.search(name):
            yield "double_extension", f"{where}: {shown}"
        if _CLSID.search(name):
            yield "clsid", f"{where}: {shown}"
    if major != "application" and _is_windows_executable(part.data):
        yield "exe_not_application", f"{where}: a Windows executable sent as {part.content_type}"
    if part.origin == "mime":
        for defect in part.defects:
            if defect.startswith(_UNDECODABLE):
                yield "undecodable", f"{where}: {defect[:120]}"
                break
        else:
            if part.transfer_encoding == "base64" and _JUNK_BASE64 in part.defects and _mostly_junk(part):
                yield "undecodable", f"{where}: base64 that is mostly not base64"


def _mostly_junk(part: Part) -> bool:
    """Base64 with stray characters decodes anyway (mail clients skip them); a part whose
    decoding came out much shorter than its encoded size says there was mostly junk."""
    return part.size * 2 < part.encoded_size if part.encoded_size else False


# --------------------------------------------------------------------------- the scanner


def _names(value: Any, what: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple | set | frozenset):
        raise ConfigError(f"bad_mime: {what} must be a list of check names, got {value!r}")
    unknown = [name for name in value if name not in CHECKS]
    if unknown:
        raise ConfigError(f"bad_mime: unknown check(s) {unknown!r}; known: {', '.join(CHECKS)}")
    return frozenset(value)


class bad_mime(Scanner):
    """qmail-scanner's MIME format checks: ``bad_mime()``, ``bad_mime(only=[...])``, ``bad_mime(skip=[...])``.

    Returns the first finding (level 1.0, named after the check, see the module
    docstring); ``views=False`` looks at the strict parts' filenames only.
    """

    name = "bad_mime"

    def __init__(
        self,
        only: Any = None,
        skip: Any = None,
        views: bool = True,
        *,
        repeated: str = "reject",
        rename_prefix: str = DEFAULT_RENAME_PREFIX,
    ) -> None:
        chosen = _names(only, "only") or frozenset(CHECKS)
        self.enabled = tuple(check for check in CHECKS if check in chosen - _names(skip, "skip"))
        if not self.enabled:
            raise ConfigError("bad_mime: every check is skipped")
        self.views = flag(views, "bad_mime: views")
        if repeated not in ("reject", "rename"):
            raise ConfigError(f"bad_mime: repeated must be 'reject' or 'rename', got {repeated!r}")
        if not isinstance(rename_prefix, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,40}", rename_prefix):
            raise ConfigError(
                f"bad_mime: rename_prefix must be a header name start like 'X-Duplicate-', got {rename_prefix!r}"
            )
        self.rename = repeated == "rename" and "repeated" in self.enabled
        self.rename_prefix = rename_prefix

    def describe(self) -> str:
        rename = ", repeated='rename'" if self.rename else ""
        if len(self.enabled) == len(CHECKS):
            return f"bad_mime({rename[2:]})"
        return f"bad_mime(only={list(self.enabled)!r}{rename})"

    def findings(self, target: Target) -> Iterator[Finding]:
        """Every finding of the enabled checks, in check order per entity and part."""
        found: Iterable[Finding]
        if target.part is not None:
            found = _part_findings(target.part)
        else:
            parts = list(target.mail.parts)
            if self.views:
                parts.extend(target.mail.views)
            found = _chain(_entity_findings(target.mail), *(_part_findings(part) for part in parts))
        skipped = {"repeated"} if self.rename else set()
        return (finding for finding in found if finding[0] in self.enabled and finding[0] not in skipped)

    def _first(self, target: Target) -> Finding | None:
        return next(iter(self.findings(target)), None)

    async def scan(self, target: Target) -> Result:
        first: Callable[[], Finding | None] = lambda: self._first(target)  # noqa: E731
        finding = await work.in_thread(first) if target.size > 256 * 1024 else first()
        if finding is None:
            if self.rename and target.part is None:
                return await self._renamed(target)
            return Result(0.0, "", self.name)
        check, detail = finding
        return Result(1.0, CHECKS[check], self.name, detail)

    async def _renamed(self, target: Target) -> Result:
        """qmail-scanner's rename: the message with repeated MIME headers renamed, delivered (clean if none)."""
        raw = target.mail.raw
        rename: Callable[[], tuple[bytes, list[str]]] = lambda: rename_repeated_headers(raw, self.rename_prefix)  # noqa: E731
        message, renamed = await work.in_thread(rename) if len(raw) > 256 * 1024 else rename()
        if not renamed:
            return Result(0.0, "", self.name)
        what = tuple(f"renamed {item}" for item in renamed[:20])
        detail = "; ".join(what) + (f"; and {len(renamed) - 20} more" if len(renamed) > 20 else "")
        actions = (Sanitize(what, message), SetDisposition(Disposition.DELIVER))
        return Result(1.0, CHECKS["repeated"], self.name, detail, actions)


# --------------------------------------------------------------------------- qmail-scanner's rename

MAX_RENAME_DEPTH = 20
MAX_RENAME_PARTS = 5000
_LINE = re.compile(rb"[^\n]*(?:\n|$)")
_BOUNDARY = re.compile(rb'boundary\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))', re.IGNORECASE)
_SINGLE_BYTES = tuple(name.encode() for name in _SINGLE)


def rename_repeated_headers(raw: bytes, prefix: str = DEFAULT_RENAME_PREFIX) -> tuple[bytes, list[str]]:
    """``raw`` with every repeated Content-Type, Content-Transfer-Encoding and Content-Disposition
    after the first, in each header block (the message's, each part's, attached messages'), given
    ``prefix``; and what was renamed (``part 1.2: Content-Type``).  Nothing else changes a byte."""
    inserts: list[int] = []
    renamed: list[str] = []
    budget = [MAX_RENAME_PARTS]
    _rename_entity(raw, 0, len(raw), "", 0, inserts, renamed, budget)
    if not inserts:
        return raw, []
    pieces, last, tag = [], 0, prefix.encode()
    for offset in sorted(inserts):
        pieces += [raw[last:offset], tag]
        last = offset
    pieces.append(raw[last:])
    return b"".join(pieces), renamed


def _rename_entity(
    raw: bytes, start: int, end: int, path: str, depth: int, inserts: list[int], renamed: list[str], budget: list[int]
) -> None:
    """Rename in the header block at ``start``, then in the parts of its body (up to ``end``)."""
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_RENAME_DEPTH:
        return
    seen: set[bytes] = set()
    content_type = b""
    position = start
    current: bytes | None = None
    while position < end:
        line = _LINE.match(raw, position, end)
        assert line is not None
        text = line.group()
        if not text or text in (b"\r\n", b"\n"):
            position = line.end()
            break
        if text[:1] in (b" ", b"\t"):
            if current == b"content-type":
                content_type += text
        else:
            name = text.split(b":", 1)[0].strip().lower()
            current = name
            if name in _SINGLE_BYTES:
                if name in seen:
                    inserts.append(position)
                    where = f"part {path}" if path else "message headers"
                    renamed.append(f"{where}: {text.split(b':', 1)[0].decode('ascii', 'replace')}")
                    current = None  # a renamed Content-Type is not the one that counts
                else:
                    seen.add(name)
                    if name == b"content-type":
                        content_type = text.split(b":", 1)[1] if b":" in text else b""
        position = line.end()
    kind = content_type.strip().split(b";", 1)[0].strip().lower()
    if kind.startswith(b"multipart/"):
        match = _BOUNDARY.search(content_type)
        if match:
            boundary = match.group(1) or match.group(2)
            for number, (part_start, part_end) in enumerate(_part_ranges(raw, position, end, boundary), 1):
                _rename_entity(
                    raw,
                    part_start,
                    part_end,
                    f"{path}.{number}" if path else str(number),
                    depth + 1,
                    inserts,
                    renamed,
                    budget,
                )
    elif kind == b"message/rfc822":
        _rename_entity(raw, position, end, f"{path}.1" if path else "1", depth + 1, inserts, renamed, budget)


def _part_ranges(raw: bytes, start: int, end: int, boundary: bytes) -> Iterator[tuple[int, int]]:
    """The byte ranges of the parts between ``--boundary`` lines (up to ``--boundary--``)."""
    delimiter = b"--" + boundary
    part_start: int | None = None
    position = start
    while position < end:
        line = _LINE.match(raw, position, end)
        assert line is not None
        if not line.group():
            break
        stripped = line.group().rstrip(b"\r\n").rstrip(b" \t")
        if stripped.startswith(delimiter):
            rest = stripped[len(delimiter) :]
            if rest in (b"", b"--"):
                if part_start is not None:
                    yield part_start, position
                if rest == b"--":
                    return
                part_start = line.end()
        position = line.end()
    if part_start is not None:
        yield part_start, end


def _chain(*iterables: Iterable[Finding]) -> Iterator[Finding]:
    for iterable in iterables:
        yield from iterable
