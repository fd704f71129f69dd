"""Content-based file types with libmagic: ``file_type(...)`` and ``file_magic(...)``.

``file_magic(rules)`` is SAGATOR's "define a virus by file type (content is
checked)": each rule is ``(name, pattern, ...)`` searched in libmagic's
description of the data (``PE32 executable (GUI) Intel 80386, for MS
Windows``), or in its MIME type with ``mime=True``::

    file_magic([('Policy.Executable', r'^(PE32|MS-DOS executable|ELF)')])

``file_type(rules=DISGUISES)`` finds content that lies about what it is: an
executable or a script whose filename or declared Content-Type claims
something else (``invoice.pdf`` that is a PE file, a batch file declared
``image/jpeg``).  Each :class:`Disguise` says, as data, which detected MIME
types are dangerous and which names and declared types are honest for them:

* if the target has filenames with an extension (any candidate filename: a
  mail client may show any of them), a name whose extension is not honest is
  a disguise;
* with no such name, a declared Content-Type that is not honest is one.

An honestly named ``setup.exe`` is left to name policies (``attach_name``,
``mime_ext``); a shell script pasted in a ``text/plain`` body is honest.

Both scanners read at most the first :data:`MAGIC_BYTES` bytes (libmagic's own
default) and run libmagic in a thread: it is C code that holds no asyncio
loop, and python-magic serialises calls on one handle with a lock.  At the top
level (not under ``parsemail``) they look at every decoded part, like
``attach_name``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from mailsift.errors import ConfigError
from mailsift.message.result import Result
from mailsift.scanners import work
from mailsift.scanners.base import MailTarget, PartTarget, Scanner, Target
from mailsift.scanners.basic import _pairs, compile_text

MAGIC_BYTES = 1024 * 1024
"""Bytes handed to libmagic (its ``MAGIC_PARAM_BYTES_MAX`` default is 1 MiB)."""

_EXTENSION = re.compile(r"\.([A-Za-z][A-Za-z0-9_-]{0,15})$")
"""What counts as a claimed extension: ``report.pdf`` claims ``pdf``; ``README``,
``libz.so.1`` and ``notes.2024`` claim nothing."""


# --------------------------------------------------------------------------- libmagic


class _Magic:
    """Two libmagic handles (MIME type and description), opened once per process."""

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _handles: ClassVar[dict[bool, Any]] = {}

    @classmethod
    def handle(cls, mime: bool) -> Any:
        with cls._lock:
            if mime not in cls._handles:
                try:
                    import magic  # python-magic (and libmagic) when a config names file_type()/file_magic()

                    cls._handles[mime] = magic.Magic(mime=mime)
                except (magic.MagicException, OSError, ImportError) as error:
                    raise ConfigError(f"libmagic cannot be opened: {error}") from None
            return cls._handles[mime]


def identify(data: bytes) -> tuple[str, str]:
    """``(MIME type, description)`` of ``data`` by libmagic; blocking (run it in a thread)."""
    import magic  # imported by handle() when the config was checked

    head = data[:MAGIC_BYTES]
    try:
        mime = str(_Magic.handle(True).from_buffer(head))
        description = str(_Magic.handle(False).from_buffer(head))
    except magic.MagicException as error:
        return "application/octet-stream", f"libmagic error: {error}"
    return mime, description


async def identify_async(data: bytes) -> tuple[str, str]:
    if len(data) <= 4096:
        return identify(data)  # a small buffer costs less than the thread hop
    return await work.in_thread(identify, data)


def _targets(target: Target) -> Iterable[Target]:
    """The target itself, or every decoded part of the message at the top level."""
    if type(target) is MailTarget:
        return [PartTarget(target.mail, part) for part in target.mail.parts]
    return [target]


def _where(target: Target) -> str:
    return f" in {target.path}" if target.path else ""


# --------------------------------------------------------------------------- file_magic


class file_magic(Scanner):
    """Detect by libmagic's description (or MIME type with ``mime=True``).

    ``file_magic([('Policy.Executable', r'^PE32', ...)], mime=False, flags=0)``:
    the first rule whose patterns all match names the finding.
    """

    name = "file_magic"

    def __init__(self, rules: Any, mime: bool = False, flags: int = 0) -> None:
        self.mime = bool(mime)
        self.rules = [
            (virname, [compile_text(p, self.name, flags) for p in patterns])
            for virname, patterns in _pairs(rules, self.name)
        ]
        _Magic.handle(True)
        _Magic.handle(False)

    def describe(self) -> str:
        return f"file_magic([{', '.join(name for name, _ in self.rules)}]{', mime=True' if self.mime else ''})"

    async def scan(self, target: Target) -> Result:
        for each in _targets(target):
            if not each.data:
                continue
            mime, description = await identify_async(each.data)
            text = mime if self.mime else description
            for virname, patterns in self.rules:
                if all(p.search(text) for p in patterns):
                    return Result(1.0, virname, self.name, f"{text[:120]}{_where(each)}")
        return Result(0.0, "", self.name)


# --------------------------------------------------------------------------- file_type


@dataclass(frozen=True)
class Disguise:
    """A dangerous kind of content and what may honestly be claimed for it.

    ``detected`` is a regular expression on libmagic's MIME type; ``names`` one
    on the filename (case-insensitive) that is honest for it; ``declared`` one
    on the declared Content-Type that is honest for it.
    """

    virname: str
    detected: str
    names: str
    declared: str

    def compiled(self) -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
        what = f"file_type rule {self.virname!r}"
        return (
            compile_text(self.detected, what, re.IGNORECASE),
            compile_text(self.names, what, re.IGNORECASE),
            compile_text(self.declared, what, re.IGNORECASE),
        )


EXECUTABLE = Disguise(
    "Policy.Executable.Disguised",
    detected=(
        r"^application/(x-dosexec|vnd\.microsoft\.portable-executable|x-msdownload|x-executable"
        r"|x-pie-executable|x-sharedlib|x-mach-binary|x-elf)$"
    ),
    names=(
        r"\.(exe|com|dll|scr|pif|cpl|sys|drv|ocx|efi|mui|ax|acm|tsp|msi|msp|msu|cab|"
        r"so|elf|bin|o|ko|out|run|app|dylib|bundle|node|pyd|xll|wll)$"
    ),
    declared=(
        r"^application/(octet-stream|x-msdownload|x-msdos-program|x-ms-dos-executable|x-dosexec|x-exe|exe"
        r"|x-winexe|x-executable|x-sharedlib|x-pie-executable|x-elf|x-mach-binary|x-mach-o"
        r"|vnd\.microsoft\.portable-executable|x-ms-installer|x-msi|x-binary|binary|x-download"
        r"|force-download|unknown|x-unknown)$"
    ),
)

SCRIPT = Disguise(
    "Policy.Script.Disguised",
    detected=(
        r"^(text|application)/(x-shellscript|x-sh|x-msdos-batch|x-bat|x-perl|x-python|x-script\.python"
        r"|x-php|x-ruby|x-tcl|x-awk|x-powershell)$"
    ),
    # Scripts are often sent as text on purpose (patches, examples), so text names are honest.
    names=(
        r"\.(sh|bash|csh|tcsh|ksh|zsh|command|bat|cmd|btm|ps1|psm1|psd1|pl|pm|t|cgi|py|pyw|rb|php\d?|phtml"
        r"|tcl|tk|awk|sed|txt|text|asc|log|diff|patch|conf|cfg|ini|in|am|ac|m4|mk|spec|install|dist|sample)$"
    ),
    declared=(
        r"^(text/.*|application/(octet-stream|x-sh|x-shellscript|x-csh|x-bat|x-msdos-batch|x-msdos-program"
        r"|x-msdownload|x-perl|x-python|x-python-code|x-ruby|x-php|x-httpd-php|x-tcl|x-awk|x-powershell"
        r"|x-unknown|unknown))$"
    ),
)

DISGUISES: tuple[Disguise, ...] = (EXECUTABLE, SCRIPT)
"""The default rules of ``file_type``."""


def _as_disguise(rule: Any) -> Disguise:
    if isinstance(rule, Disguise):
        return rule
    if isinstance(rule, dict):
        try:
            return Disguise(**rule)
        except TypeError as error:
            raise ConfigError(f"file_type: bad rule {rule!r}: {error}") from None
    if isinstance(rule, list | tuple) and len(rule) == 4 and all(isinstance(x, str) for x in rule):
        return Disguise(*rule)
    raise ConfigError(f"file_type: a rule is a Disguise, a dict or (virname, detected, names, declared); got {rule!r}")


def _basename(name: str) -> str:
    # Windows drops trailing dots and spaces: "invoice.pdf. " is opened as "invoice.pdf".
    return re.split(r"[/\\]", name)[-1].rstrip(". ")


class file_type(Scanner):
    """Detect executables and scripts named or declared as something else.

    ``file_type(rules=DISGUISES, check_names=True, check_declared=True)``;
    ``rules`` is a list of :class:`Disguise` (or dicts / 4-tuples with its
    fields), e.g. to add PDF-only attachments claimed as images.
    """

    name = "file_type"

    def __init__(self, rules: Sequence[Any] = DISGUISES, check_names: bool = True, check_declared: bool = True) -> None:
        if isinstance(rules, str | bytes) or not isinstance(rules, list | tuple) or not rules:
            raise ConfigError(f"file_type: rules must be a non-empty list, got {rules!r}")
        self.rules = [_as_disguise(rule) for rule in rules]
        self.compiled = [(rule, *rule.compiled()) for rule in self.rules]
        self.check_names, self.check_declared = bool(check_names), bool(check_declared)
        _Magic.handle(True)
        _Magic.handle(False)

    def describe(self) -> str:
        return f"file_type([{', '.join(rule.virname for rule in self.rules)}])"

    def _claim(self, target: Target, names: re.Pattern[str], declared: re.Pattern[str]) -> str:
        """The dishonest claim made for ``target``, or ``""``."""
        claimed = [n for n in map(_basename, target.names) if _EXTENSION.search(n)]
        if claimed:
            if self.check_names:
                for name in claimed:
                    if not names.search(name):
                        return f"named {name!r}"
            return ""
        content_type = target.content_type.lower()
        if self.check_declared and not declared.search(content_type):
            return f"declared {content_type}"
        return ""

    async def scan(self, target: Target) -> Result:
        for each in _targets(target):
            if not each.data:
                continue
            mime, description = await identify_async(each.data)
            for rule, detected, names, declared in self.compiled:
                if not detected.search(mime):
                    continue
                claim = self._claim(each, names, declared)
                if claim:
                    detail = f"{description[:80]} ({mime}) {claim}{_where(each)}"
                    return Result(1.0, rule.virname, self.name, detail)
        return Result(0.0, "", self.name)
