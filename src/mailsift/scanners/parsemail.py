"""Scanners over the MIME structure: ``parsemail``, ``attach_name``, ``mime_ext``.

``parsemail(s, ...)`` runs its scanners on every decoded leaf part (attached
messages included, uuencoded and yEnc blocks included), then on the lenient
views of the message (:mod:`mailsift.mime.views`), and returns the first
detection, naming the part or view.  ``attach_name`` and ``mime_ext`` look at *every* candidate
filename of a part (Content-Disposition ``filename``, RFC 2231 ``filename*``,
Content-Type ``name``, decoded encoded words): a mail client may show any of
them, so any of them can trigger.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Iterable
from contextlib import aclosing
from typing import Any

from mailsift.errors import ConfigError
from mailsift.message.mail import Mail
from mailsift.message.result import CLEAN, Result
from mailsift.mime.tree import Part
from mailsift.scanners import work
from mailsift.scanners.base import Interscanner, MailTarget, PartTarget, Scanner, Target, evaluate
from mailsift.scanners.basic import _pairs, compile_text

_INLINE_VIEWS = 64 * 1024
"""Views of smaller messages are computed in the event loop (well under a millisecond);
bigger ones in a thread, so one big message does not hold up the worker's other connections."""


class parsemail(Interscanner):
    """Run the wrapped scanners on each decoded part and view; first detection wins.

    ``parsemail(s, ...)`` scans the union of the readings of the message: the
    strict parts (:attr:`Mail.parts <mailsift.message.mail.Mail.parts>`), then, with
    ``views=True`` (the default), every lenient view that differs from them
    (:attr:`Mail.views <mailsift.message.mail.Mail.views>`: other transfer decodings,
    base64/uuencode/yEnc anywhere in the raw message, boundaries found rather
    than declared; see :mod:`mailsift.mime.views`), and with ``raw=True`` the raw
    message itself last.  ``views=False`` is the strict reading alone.
    """

    name = "parsemail"

    def __init__(self, *scanners: Any, views: bool = True, raw: bool = False) -> None:
        super().__init__(*scanners)
        if not isinstance(views, bool) or not isinstance(raw, bool):
            raise ConfigError(f"parsemail: views and raw must be True or False, got {views!r}, {raw!r}")
        self.views, self.raw = views, raw

    def describe(self) -> str:
        options = [
            f"{key}={value}"
            for key, value, default in (("views", self.views, True), ("raw", self.raw, False))
            if value != default
        ]
        return f"parsemail({', '.join(options)})" if options else "parsemail"

    async def _views(self, mail: Mail) -> list[Part]:
        if not self.views:
            return []
        if "views" in mail.__dict__ or mail.size < _INLINE_VIEWS:  # computed already, or quick to compute
            return mail.views
        return await work.in_thread(lambda: mail.views)  # a regular-expression pass and decodings

    @staticmethod
    async def _parts(mail: Mail) -> list[Part]:
        if "_structure" in mail.__dict__ or mail.size < _INLINE_VIEWS:  # parsed already, or quick to parse
            return mail.parts
        return await work.in_thread(lambda: mail.parts)  # a big message's parse stays off the event loop

    async def _targets(self, mail: Mail) -> AsyncGenerator[Target, None]:
        """The strict parts, then the views, then the raw message: the views are computed only
        when no part had a detection (they hold up to twice the message's size while computed)."""
        for part in await self._parts(mail):
            yield PartTarget(mail, part)
        for part in await self._views(mail):
            yield PartTarget(mail, part)
        if self.raw:
            yield MailTarget(mail)

    async def scan(self, target: Target) -> Result:
        if target.part is not None:
            return await self.inner(target)  # already a part: nothing more to split
        best = CLEAN
        async with aclosing(self._targets(target.mail)) as targets:
            async for each in targets:
                for scanner in self.children:
                    result = await evaluate(scanner, each)
                    if result.detected:
                        return Result(
                            result.level, result.name, result.scanner, _where(result.detail, each), result.actions
                        )
                    if result.level > best.level:
                        best = result
        return best


def _where(detail: str, target: Target) -> str:
    """The result's detail, plus which part or view it was found in."""
    part = target.part
    if part is None:
        where = "raw message"
    else:
        where = f"part {part.path}" + (f" ({part.filename})" if part.filename else "")
        if part.origin not in ("mime", "uuencode", "yenc"):
            where += f" [view {part.origin}]"
    return f"{detail}; {where}" if detail else where


def _filenames(target: Target) -> Iterable[tuple[str, str]]:
    """``(part path, filename)`` for the target part, or for every part of the mail."""
    parts = [target.part] if target.part is not None else target.mail.parts
    for part in parts:
        for filename in part.filenames:
            yield part.path, filename


class attach_name(Scanner):
    """Detect attachments by filename: ``attach_name([('Policy.Exe', r'\\.exe$')])``.

    Patterns are regular expressions searched case-insensitively in each
    candidate filename; a plain string rule ``'*.exe'``-style glob is not
    guessed at: write the expression.
    """

    name = "attach_name"

    def __init__(self, rules: Any) -> None:
        self.rules = [
            (name, [compile_text(p, self.name, re.IGNORECASE) for p in patterns])
            for name, patterns in _pairs(rules, self.name)
        ]

    def describe(self) -> str:
        return f"attach_name([{', '.join(name for name, _ in self.rules)}])"

    async def scan(self, target: Target) -> Result:
        for path, filename in _filenames(target):
            for name, patterns in self.rules:
                if any(p.search(filename) for p in patterns):
                    return Result(1.0, name, self.name, f"attachment {filename!r} in part {path}")
        return Result(0.0, "", self.name)


class mime_ext(Scanner):
    """Detect by filename extension, SAGATOR style: ``mime_ext(r'(\\.exe|\\.com|\\.scr)$')``.

    The expression is searched in every candidate filename; ``ignore_case``
    defaults to True (SAGATOR users listed ``.exe|.EXE``; that still works).
    """

    name = "mime_ext"

    def __init__(self, pattern: str, virname: str = "Policy.BadExtension", ignore_case: bool = True) -> None:
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"mime_ext: expected a regular expression string, got {pattern!r}")
        self.pattern = compile_text(pattern, self.name, re.IGNORECASE if ignore_case else 0)
        self.virname = virname

    def describe(self) -> str:
        return f"mime_ext({self.pattern.pattern!r})"

    async def scan(self, target: Target) -> Result:
        for path, filename in _filenames(target):
            if self.pattern.search(filename):
                return Result(1.0, self.virname, self.name, f"attachment {filename!r} in part {path}")
        return Result(0.0, "", self.name)
