"""Actions as interscanners: they record what to do; the disposition step does it.

``reject``, ``drop``, ``deliver``, ``deliver_to``, ``quarantine``,
``add_header``, ``modify_header``, ``remove_headers``, ``modify_subject`` and
``rename`` wrap scanners like any interscanner and
attach :mod:`mailsift.message.result` action records to the result.  Nothing is sent or
written here (ARCHITECTURE: evaluation is pure).

As in SAGATOR, the first argument may be a pattern (a regular expression
searched in the result's name): ``drop('Worm|Phish', clamd(...))``.  Without
one, a disposition action applies to any detection, and ``add_header`` /
``modify_subject`` to any result with a name (SAGATOR's ``.onlyif('.')``).
``.onlyif(pattern)`` sets the pattern afterwards.

The outermost action wins: ``reject(quarantine('virus', s))`` keeps a copy and
rejects; ``quarantine('virus', drop(s))`` keeps a copy and accepts (250).
"""

from __future__ import annotations

import re
from typing import Any

from mailsift.errors import ConfigError
from mailsift.message.address import address_problem
from mailsift.message.result import (
    CLEAN,
    Action,
    AddHeader,
    DeliverTo,
    Disposition,
    ModifyHeader,
    ModifySubject,
    QuarantineCopy,
    RemoveHeaders,
    Result,
    SetDisposition,
)
from mailsift.scanners.base import Interscanner, Scanner, Target, as_scanners, first_detection
from mailsift.scanners.basic import compile_text

CATEGORY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def expand(template: str, result: Result) -> str:
    """Fill SAGATOR's placeholders: ``%V`` name, ``%S`` scanner, ``%L`` level.

    ``%(VIRNAME)s``, ``%(SCANNER)s`` and ``%(LEVEL)s`` work too; ``%%`` is a
    percent sign.  mailsift adds ``%D``, the result's detail (rule names and
    score of a spam engine, the part of a virus), and ``%R``, a spam engine's
    full report (SpamAssassin's, several lines: the header is folded), or the
    detail when there is none.
    """
    report = getattr(result, "report", "") or result.detail
    values = {"V": result.name, "S": result.scanner, "L": f"{result.level:.2f}", "D": result.detail, "R": report}
    long_names = {"VIRNAME": "V", "SCANNER": "S", "LEVEL": "L"}

    def substitute(match: re.Match[str]) -> str:
        token = match.group(1) or long_names.get(match.group(2) or "", "")
        if match.group(0) == "%%":
            return "%"
        return values.get(token, match.group(0))

    return re.sub(r"%%|%([VSLDR])|%\((VIRNAME|SCANNER|LEVEL)\)s", substitute, template)


class _Action(Interscanner):
    """Shared shape: optional leading pattern, wrapped scanners, ``onlyif``."""

    applies_to_clean_names = False  # add_header/modify_subject: any named result

    def __init__(self, *args: Any) -> None:
        pattern: str | None = None
        if args and isinstance(args[0], str):
            pattern, args = args[0], args[1:]
        super().__init__(*args)
        self.onlyif(pattern)

    def onlyif(self, pattern: str | None) -> _Action:
        """Apply only when the result's name matches ``pattern`` (SAGATOR's ``.onlyif``)."""
        self.pattern = None if pattern is None else compile_text(pattern, self.name)
        return self

    def applies(self, result: Result) -> bool:
        if self.pattern is not None:
            named = result.detected or self.applies_to_clean_names
            return named and bool(self.pattern.search(result.name))
        if self.applies_to_clean_names:
            return bool(result.name)
        return result.detected

    def actions(self, result: Result) -> tuple[Action, ...]:
        raise NotImplementedError

    def describe(self) -> str:
        own = self.arguments()
        if self.pattern is not None:
            own = f"{own}, onlyif={self.pattern.pattern!r}" if own else f"onlyif={self.pattern.pattern!r}"
        return f"{self.name}({own})"

    def arguments(self) -> str:
        return ""

    async def scan(self, target: Target) -> Result:
        result = await self.inner(target)
        if self.applies(result):
            return result.with_actions(*self.actions(result))
        return result


class _Disposition(_Action):
    disposition: Disposition

    def actions(self, result: Result) -> tuple[Action, ...]:
        return (SetDisposition(self.disposition),)


class drop(_Disposition):
    """Accept (250) and discard detected mail, e.g. worms that forge senders."""

    name = "drop"
    disposition = Disposition.DROP


class deliver(_Disposition):
    """Deliver detected mail anyway (forced delivery), with any header edits."""

    name = "deliver"
    disposition = Disposition.DELIVER


class reject(_Disposition):
    """Reject detected mail (550); ``message`` may use %V, %S, %L.

    Detected mail is rejected by default; ``reject`` is for a custom text or to
    override an inner ``drop``/``deliver``/``quarantine``.
    """

    name = "reject"
    disposition = Disposition.REJECT

    def __init__(self, *args: Any, message: str = "") -> None:
        super().__init__(*args)
        self.message = message

    def arguments(self) -> str:
        return f"message={self.message!r}" if self.message else ""

    def actions(self, result: Result) -> tuple[Action, ...]:
        return (SetDisposition(Disposition.REJECT, expand(self.message, result) if self.message else ""),)


class quarantine(_Action):
    """Keep detected mail in the quarantine ``category`` and accept it (250).

    Categories are maildir folders under ``STATE_DIR/quarantine``: ``virus``,
    ``policy``, ``spam`` or a name of your own.  Wrap it in ``reject(...)`` or
    ``deliver(...)`` to keep a copy and reject or deliver instead.
    """

    name = "quarantine"

    def __init__(self, category: Any = "virus", *scanners: Any) -> None:
        if isinstance(category, Scanner | list | tuple):
            scanners, category = (category, *scanners), "virus"
        if not isinstance(category, str) or not CATEGORY.match(category):
            raise ConfigError(
                f"quarantine: category must be a short lower-case name like 'virus', 'spam', 'policy'; got {category!r}"
            )
        super().__init__(*scanners)
        self.category = category

    def arguments(self) -> str:
        return repr(self.category)

    def actions(self, result: Result) -> tuple[Action, ...]:
        return (QuarantineCopy(self.category), SetDisposition(Disposition.QUARANTINE))


class add_header(_Action):
    """Add ``Name: value`` on delivery; ``value`` may use %V, %S, %L, %D and %R (see :func:`expand`)."""

    name = "add_header"
    applies_to_clean_names = True

    def __init__(self, header: str, value: str, *scanners: Any) -> None:
        if not isinstance(header, str) or not re.fullmatch(r"[!-9;-~]+", header):
            raise ConfigError(f"{self.name}: invalid header name {header!r}")
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            raise ConfigError(f"{self.name}: the value must be one line of text, got {value!r}")
        super().__init__(*scanners)
        self.header, self.value = header, value

    def arguments(self) -> str:
        return f"{self.header!r}, {self.value!r}"

    def actions(self, result: Result) -> tuple[Action, ...]:
        return (AddHeader(self.header, expand(self.value, result)),)


class modify_header(add_header):
    """Set ``Name: value`` on delivery: it replaces every field of that name, or is added when there is none.

    SAGATOR's ``modify_header(header, value, scanners)``, e.g.
    ``modify_header('X-Virus-Found', '%V', clamd(...))``; like ``add_header``
    it applies to any result with a name (``.onlyif`` narrows it), and
    ``value`` may use %V, %S, %L, %D and %R.
    """

    name = "modify_header"

    def actions(self, result: Result) -> tuple[Action, ...]:
        return (ModifyHeader(self.header, expand(self.value, result)),)


class remove_headers(Scanner):
    """Remove top-level header fields on delivery: ``remove_headers('X-Spam-')``, ``remove_headers(['X-Virus'])``.

    A string is a regular expression matched at the start of each field's name
    (any case); a list or tuple holds exact names.  Without scanners it always
    applies and is clean (SAGATOR's non-inter ``remove_headers``): put it first
    in ``SCANNERS`` to strip forged ``X-Spam-*`` fields.  With scanners it
    returns their result and applies to any of them (``.onlyif(pattern)``
    narrows it to matching names).  Removal happens before any field is added
    or modified (:func:`mailsift.message.rewrite.apply_edits`), so the fields
    a spam engine, ``add_header`` or ``modify_header`` write are never removed,
    wherever the expressions stand.
    """

    name = "remove_headers"

    def __init__(self, names: Any, *scanners: Any) -> None:
        if isinstance(names, str):
            pattern = names
        elif isinstance(names, list | tuple) and names and all(isinstance(n, str) for n in names):
            for each in names:
                if not re.fullmatch(r"[!-9;-~]+", each):
                    raise ConfigError(f"remove_headers: invalid header name {each!r}")
            pattern = "(?:" + "|".join(re.escape(n) for n in names) + r")\Z"
        else:
            raise ConfigError(
                f"remove_headers: give a regular expression like 'X-Spam-' or a list of header names, got {names!r}"
            )
        if not pattern:
            raise ConfigError("remove_headers: the pattern is empty (it would remove every header field)")
        try:
            re.compile(pattern, re.IGNORECASE)
        except re.error as error:
            raise ConfigError(f"remove_headers: bad regular expression {pattern!r}: {error}") from error
        self.pattern = pattern
        self.children = as_scanners(scanners, self.name) if scanners else []
        self.only: re.Pattern[str] | None = None

    def onlyif(self, pattern: str | None) -> remove_headers:
        """Apply only when the wrapped result's name matches ``pattern``."""
        self.only = None if pattern is None else compile_text(pattern, self.name)
        return self

    def describe(self) -> str:
        return f"remove_headers({self.pattern!r})"

    async def scan(self, target: Target) -> Result:
        if not self.children:
            return CLEAN.with_actions(RemoveHeaders(self.pattern))
        result, _ = await first_detection(self.children, target)
        if self.only is not None and not (result.name and self.only.search(result.name)):
            return result
        return result.with_actions(RemoveHeaders(self.pattern))


class deliver_to(_Action):
    """Deliver detected mail to ``address`` instead of its recipients, or with ``copy=True`` to them and ``address``.

    SAGATOR's ``deliver_to(address, scanners)``: ``deliver_to('virus@example.com',
    clamd(...))`` redirects, ``deliver_to('archive@example.com', spamd(...),
    copy=True)`` adds a recipient.  Either way the detection is delivered (with
    any header edits); the outermost action still wins, so ``reject(deliver_to(...))``
    rejects.  ``.onlyif(pattern)`` narrows it to matching names.  The address
    is checked now (``local@domain``, no CR/LF, no spaces or ``<>``, at most
    512 bytes): it is written into the next hop's ``RCPT TO`` or the milter's
    SMFIR_ADDRCPT.
    """

    name = "deliver_to"

    def __init__(self, address: str, *scanners: Any, copy: bool = False) -> None:
        if not isinstance(address, str):
            raise ConfigError(f"deliver_to: the address must be a string like 'virus@example.com', got {address!r}")
        problem = address_problem(address, need_domain=True)
        if problem or address.lower() == "postmaster":
            raise ConfigError(f"deliver_to: invalid address {address!r}: {problem or 'it needs a domain'}")
        if not isinstance(copy, bool):
            raise ConfigError(f"deliver_to: copy must be True or False, got {copy!r}")
        super().__init__(*scanners)
        self.address, self.copy = address, copy

    def arguments(self) -> str:
        return f"{self.address!r}{', copy=True' if self.copy else ''}"

    def actions(self, result: Result) -> tuple[Action, ...]:
        return (DeliverTo(self.address, self.copy), SetDisposition(Disposition.DELIVER))


class modify_subject(_Action):
    """Prefix the Subject on delivery, e.g. ``modify_subject('[SPAM %L] ', spamd)``."""

    name = "modify_subject"
    applies_to_clean_names = True

    def __init__(self, prefix: str, *scanners: Any) -> None:
        if not isinstance(prefix, str) or "\n" in prefix or "\r" in prefix:
            raise ConfigError(f"modify_subject: the prefix must be one line of text, got {prefix!r}")
        super().__init__(*scanners)
        self.prefix = prefix

    def arguments(self) -> str:
        return repr(self.prefix)

    def actions(self, result: Result) -> tuple[Action, ...]:
        return (ModifySubject(expand(self.prefix, result)),)


class rename(Interscanner):
    """Rewrite the name of a detection: ``rename('Policy.%V', attach_name(...))``."""

    name = "rename"

    def __init__(self, newname: str, *scanners: Any) -> None:
        if not isinstance(newname, str):
            raise ConfigError(f"rename: the new name must be a string, got {newname!r}")
        super().__init__(*scanners)
        self.newname = newname

    def describe(self) -> str:
        return f"rename({self.newname!r})"

    async def scan(self, target: Target) -> Result:
        result = await self.inner(target)
        if result.detected:
            return result.renamed(expand(self.newname, result))
        return result
