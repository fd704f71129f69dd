"""``sanitize``: remove the offending attachments, put a text notice in their place, deliver the rest.

``sanitize(clamd(...), attach_name(...))`` runs its scanners on each decoded
part (:attr:`Mail.parts <mailsift.message.mail.Mail.parts>`) and each lenient
view (:attr:`Mail.views <mailsift.message.mail.Mail.views>`), as ``parsemail`` does.
Every part one of them detects is replaced by a ``text/plain`` part saying
which file was removed and why (:data:`NOTICE`); the result is the first
detection, still a detection (logged and counted under its name), with a
:class:`~mailsift.message.result.Sanitize` action carrying the rebuilt message
and ``SetDisposition(DELIVER)``: the disposition step delivers the rebuilt
message instead of the original (the milter: SMFIR_REPLBODY and the header
changes).  As with every action, the outermost wins:
``quarantine('virus', sanitize(...))`` keeps and holds the whole message.

It never delivers what its scanners still find.  The rebuilt message is
parsed again and scanned part by part *and* view by view (the lenient
readings of :mod:`mailsift.mime.views`); the detection is returned without
the ``Sanitize`` action (so rejected, unless an outer action says otherwise)
when:

* the finding is in a reading that is no MIME part (a preamble, a boundary
  found rather than declared, base64 found in the raw text); a finding in
  another decoding of a part (``2~base64``) or in a uuencoded or yEnc block
  inside a text part removes that part;
* the rebuilt message still holds a detection, or its parts do not line up
  with those found (an ambiguous structure);
* the message cannot be rebuilt (the parser fails on it).

The rebuilt message is made by the standard library (``compat32``): the
header blocks of the parts kept may be refolded and a missing closing
boundary is added, but their contents are the same.

Its result carries the rebuilt message (as big as the original): put ``cache``
inside it (``sanitize(cache(clamd(...)))``), never around it.

Inside ``parsemail`` (on one part) it just runs its scanners.  Use it with
scanners that judge parts (antivirus engines, ``attach_name``,
``file_type``...): a spam engine judges the whole message, which has no part
to remove.
"""

from __future__ import annotations

import email.charset
import io
import re
from collections.abc import Sequence
from email.generator import BytesGenerator
from email.message import Message
from typing import Any

from mailsift.errors import ConfigError, ContentError
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import CLEAN, Disposition, Result, Sanitize, SetDisposition
from mailsift.mime.tree import Part, declared_type, new_parser
from mailsift.scanners import work
from mailsift.scanners.actions import expand
from mailsift.scanners.base import Interscanner, PartTarget, Target, first_detection
from mailsift.validators import escape_controls

NOTICE = "This attachment was removed by the mail filter.\n\nFile: %F\nType: %T\nReason: %V (%S)\n"
"""The default notice: ``%F`` file name, ``%T`` declared type, and :func:`~mailsift.scanners.actions.expand`'s
``%V`` (the finding), ``%S`` (the scanner), ``%L``, ``%D``."""

_INLINE = 64 * 1024
"""Smaller messages are rebuilt in the event loop; bigger ones in a scanner thread."""
_SUFFIX = re.compile(r"\.(?:uu|yenc)\d+$")
_HUGE = 1 << 62
"""The rebuilt message is checked in memory (it is in memory already): never spooled."""


def _container(part: Part, strict: dict[str, Part]) -> Part | None:
    """The strict MIME leaf to replace for ``part``; None when there is none (a preamble, a found boundary...)."""
    if part.origin == "mime":
        return part
    if part.origin in ("uuencode", "yenc"):  # a block inside a text part: that part goes
        return strict.get(_SUFFIX.sub("", part.path))
    if part.origin.startswith("decoded:"):  # another decoding of a strict part ("2~base64"): that part goes
        return strict.get(part.path.partition("~")[0])
    return None


def _notice_payload(message: Message, text: str) -> None:
    """Make ``message`` (a leaf) a ``text/plain`` notice: its Content-* fields replaced, its body ``text``."""
    for key in {name.lower() for name in message}:
        if key.startswith("content-"):
            del message[key]
    if text.isascii():
        message["Content-Type"] = 'text/plain; charset="us-ascii"'
        message["Content-Transfer-Encoding"] = "7bit"
        message["Content-Disposition"] = "inline"
        message.set_payload(text)
        return
    charset = email.charset.Charset("utf-8")
    charset.body_encoding = email.charset.QP
    message["Content-Disposition"] = "inline"
    message.set_payload(text, charset)  # adds Content-Type and Content-Transfer-Encoding


def rebuild(raw: bytes, notices: dict[str, tuple[str, str]]) -> bytes:
    """``raw`` with the leaf at each path of ``notices`` replaced by its notice text.

    ``notices`` maps a part path (numbered as :class:`~mailsift.mime.tree.TreeBuilder`
    numbers them) to ``(declared type, notice text)``; a leaf whose type differs,
    or a path not found, raises :class:`~mailsift.errors.ContentError`.
    """
    parser = new_parser()
    parser.feed(raw)
    root = parser.close()
    found: set[str] = set()

    def walk(message: Message, path: str) -> None:
        payload = message.get_payload()
        content_type = declared_type(message)
        if message.is_multipart() and isinstance(payload, list):
            for index, child in enumerate(payload, start=1):
                if content_type == "message/rfc822":
                    child_path = path or "1"
                else:
                    child_path = f"{path}.{index}" if path else str(index)
                if isinstance(child, Message):
                    walk(child, child_path)
            return
        leaf = path or "1"
        if leaf in notices:
            expected, text = notices[leaf]
            if content_type != expected:
                raise ContentError(f"part {leaf} is {content_type}, the scan saw {expected}")
            _notice_payload(message, text)
            found.add(leaf)

    walk(root, "")
    missing = set(notices) - found
    if missing:
        raise ContentError(f"parts not found again: {', '.join(sorted(missing))}")
    newline = "\r\n" if b"\r\n" in raw[:4096] else "\n"
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, maxheaderlen=0).flatten(root, linesep=newline)
    return out.getvalue()


class sanitize(Interscanner):
    """Replace each part its scanners detect by a text notice, and deliver the rest (see the module).

    ``notice`` is the text put in place of a removed part: ``%F`` the file
    name (or ``(no name)``), ``%T`` its declared type, ``%V`` the finding,
    ``%S`` the scanner, ``%L`` the level, ``%D`` the detail.
    """

    name = "sanitize"

    def __init__(self, *scanners: Any, notice: str = NOTICE) -> None:
        if not isinstance(notice, str) or not notice.strip():
            raise ConfigError(f"sanitize: notice must be a non-empty text, got {notice!r}")
        super().__init__(*scanners)
        self.notice = notice

    def describe(self) -> str:
        return "sanitize" if self.notice == NOTICE else f"sanitize(notice={self.notice!r})"

    def text(self, part: Part, result: Result) -> str:
        """The notice for ``part``, removed for ``result`` (its file name decoded where the mail has encoded words)."""
        readable = [name for name in part.filenames if "=?" not in name] or list(part.filenames)
        filename = escape_controls(readable[0]) if readable else "(no name)"
        text = self.notice.replace("%F", filename.replace("%", "%%")).replace("%T", part.content_type)
        return expand(text, result)

    async def _scan_parts(self, parts: Sequence[Part], mail: Mail) -> tuple[list[tuple[Part, Result]], Result]:
        """Every detected part with its detection, and the highest clean result (as parsemail gives it)."""
        found: list[tuple[Part, Result]] = []
        best = CLEAN
        for part in parts:
            result, _ = await first_detection(self.children, PartTarget(mail, part))
            if result.detected:
                found.append((part, result))
            elif result.level > best.level:
                best = result
        return found, best

    @staticmethod
    async def _parts(mail: Mail) -> list[Part]:
        """The strict parts; a big message's parse stays off the event loop."""
        return mail.parts if mail.size < _INLINE else await work.in_thread(lambda: mail.parts)

    @staticmethod
    async def _views(mail: Mail) -> list[Part]:
        return mail.views if mail.size < _INLINE else await work.in_thread(lambda: mail.views)

    async def scan(self, target: Target) -> Result:
        if target.part is not None:
            result, _ = await first_detection(self.children, target)
            return result  # inside parsemail: one part, nothing to rebuild
        mail = target.mail
        parts = await self._parts(mail)
        found, best = await self._scan_parts([*parts, *await self._views(mail)], mail)
        if not found:
            return best
        strict = {part.path: part for part in parts if part.origin == "mime"}
        notices: dict[str, tuple[str, str]] = {}
        reasons: dict[str, str] = {}
        for part, result in found:
            container = _container(part, strict)
            if container is None:
                return _unsanitized(result, part, f"no MIME part to remove ({part.origin} reading)")
            if container.path not in notices:
                notices[container.path] = (container.content_type, self.text(container, result))
                reasons[container.path] = result.name
        try:
            raw = mail.raw
            if mail.size < _INLINE:
                message = rebuild(raw, notices)
            else:
                message = await work.in_thread(lambda: rebuild(raw, notices))
        except Exception as error:  # noqa: BLE001 - a part not found again, or any parser failure
            return _unsanitized(found[0][1], found[0][0], f"cannot rebuild the message: {error}")
        with Mail(Envelope(), message, spool_threshold=_HUGE) as check:
            again, _ = await self._scan_parts([*await self._parts(check), *await self._views(check)], check)
        if again:
            return _unsanitized(found[0][1], found[0][0], f"still found after sanitizing: {again[0][1].name}")
        removed = tuple(
            f"part {path}"
            + (f" ({escape_controls(strict[path].filename)})" if strict[path].filename else "")
            + f": {reasons[path]}"
            for path in notices
        )
        first = found[0][1]
        actions = tuple(action for _, result in found for action in result.actions)
        return Result(
            first.level,
            first.name,
            first.scanner,
            "; ".join(filter(None, (first.detail, "sanitized " + ", ".join(removed)))),
            (*actions, Sanitize(removed, message), SetDisposition(Disposition.DELIVER)),
        )


def _unsanitized(result: Result, part: Part, why: str) -> Result:
    """The detection as it is (no Sanitize action), its detail saying why it was not sanitized."""
    where = f"part {part.path}" + (f" ({escape_controls(part.filename)})" if part.filename else "")
    detail = "; ".join(filter(None, (result.detail, f"{where}; not sanitized: {why}")))
    return Result(result.level, result.name, result.scanner, detail, result.actions)
