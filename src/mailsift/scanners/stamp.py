"""Stamping: a ``Received:`` trace header and a descriptive ``X-Mailsift:`` header.

simscan's ``--enable-received`` and qmail-scanner's descriptive
``X-Qmail-Scanner`` header, as one interscanner: ``stamp`` wraps scanner
expressions, evaluates them as ``SCANNERS`` would, and adds, on delivery, the
scanners that ran, their versions and the time they took::

    SCANNERS = [stamp(clamd('/run/clamav/clamd.ctl'), spamassassind(['127.0.0.1', 783]))]

    Received: from mx.example (mx.example [192.0.2.1])
        by gw.example (mailsift 0.1.0)
        with ESMTP id 4XyZ
        (scanners: clamd ClamAV 1.0.7/27500/Tue Jan  2 09:20:00 2024, spamassassind; 0.043 s);
        Tue, 2 Jan 2024 10:00:00 +0100
    X-Mailsift: mailsift 0.1.0 on gw.example
        (Clear. clamd: ClamAV 1.0.7/27500/...; spamassassind.
        Processed in 0.043 secs)

(continuation lines start with a tab)

It is an interscanner rather than a service option so the headers go through
the :class:`~mailsift.message.result.Decision` like ``add_header``'s (and so per
recipient policies can stamp differently).  "The scanners that ran" are the
scanners inside the expressions evaluated (evaluation stops at the first
detection).  A scanner's version is its ``version()`` when it has one;
clamd's comes from its ``VERSION`` command; mailsift's built-in scanners
show the mailsift version; other engines only their name.  Versions are
cached for ``version_ttl`` seconds; a version that cannot be read in
``version_timeout`` seconds is shown as ``unknown`` and never fails the mail.
The Received header is RFC 5322's ``received-token`` list, ``;`` and the
date; the scanners and time are a comment, so any parser accepts it.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from mailsift.errors import ConfigError
from mailsift.message.result import AddHeader, Result
from mailsift.scanners.base import Interscanner, Operation, Scanner, Target, first_detection
from mailsift.validators import flag, positive
from mailsift.version import __version__

_HEADER_NAME = re.compile(r"[!-9;-~]+")
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+")
_EXTERNAL_MODULES = (
    "mailsift.scanners.engines.clamav",
    "mailsift.scanners.engines.spamassassin",
    "mailsift.scanners.engines.rspamd",
    "mailsift.scanners.engines.command",
)
"""Scanners talking to an engine of its own: their version is the engine's, not mailsift's."""


def mailsift_version() -> str:
    return __version__


def _comment_text(text: str) -> str:
    """Printable ASCII safe inside a header comment: no parentheses, backslashes or line breaks."""
    text = re.sub(r"\s+", " ", text).strip()
    text = text.replace("(", "[").replace(")", "]").replace("\\", "/")
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def _atom(text: str, fallback: str) -> str:
    """``text`` if it is one RFC 5322 atom (dots allowed, as in a domain), else ``fallback``."""
    return text if text and _ATOM.fullmatch(text) else fallback


def ran_scanners(scanner: Scanner) -> Iterator[Scanner]:
    """The scanners of an expression worth naming: leaves, and anything with a ``version()``."""
    named = callable(getattr(scanner, "version", None)) or not scanner.children
    if named and not isinstance(scanner, Operation):
        yield scanner
    for child in scanner.children:
        yield from ran_scanners(child)


class stamp(Interscanner):
    """Evaluate ``scanners`` and stamp the message with what ran (see the module docstring).

    ``received``: add the ``Received:`` header (simscan's ``--enable-received``);
    ``header``: the descriptive header's name (``None`` for none); ``hostname``:
    the name in ``by`` (this host's FQDN by default).
    """

    name = "stamp"

    def __init__(
        self,
        *scanners: Any,
        received: bool = True,
        header: str | None = "X-Mailsift",
        hostname: str | None = None,
        version_ttl: float = 300.0,
        version_timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(*scanners)
        flag(received, "stamp: received")
        if header is not None and (not isinstance(header, str) or not _HEADER_NAME.fullmatch(header)):
            raise ConfigError(f"stamp: header must be a header name like 'X-Mailsift' or None, got {header!r}")
        if header is not None and header.lower() == "received":
            raise ConfigError("stamp: use received=True for the Received header; header= is the descriptive one")
        if not received and header is None:
            raise ConfigError("stamp: nothing to add (received=False and header=None)")
        if hostname is not None and (not isinstance(hostname, str) or not _ATOM.fullmatch(hostname)):
            raise ConfigError(f"stamp: hostname must be a domain name, got {hostname!r}")
        self.received, self.header, self._hostname = received, header, hostname
        self.version_ttl = positive(version_ttl, "stamp: version_ttl", unit="number of seconds")
        self.version_timeout = positive(version_timeout, "stamp: version_timeout", unit="number of seconds")
        self.clock, self.wall_clock = clock, wall_clock
        self._versions: dict[int, tuple[Scanner, float, str]] = {}

    def describe(self) -> str:
        options = [f"header={self.header!r}"]
        if not self.received:
            options.append("received=False")
        return f"stamp({', '.join(options)})"

    @property
    def hostname(self) -> str:
        if self._hostname is None:
            self._hostname = _atom(socket.getfqdn(), "localhost")
        return self._hostname

    # ------------------------------------------------------------------ versions

    async def version_of(self, scanner: Scanner) -> str:
        """The scanner's version text ("" when it has none), cached for ``version_ttl`` seconds."""
        now = self.clock()
        cached = self._versions.get(id(scanner))
        if cached is not None and cached[0] is scanner and cached[1] > now:  # ids are reused once freed
            return cached[2]
        ttl = self.version_ttl
        try:
            async with asyncio.timeout(self.version_timeout):
                text = await self._ask_version(scanner)
        except Exception:  # noqa: BLE001 - a version is decoration: never fail or delay the mail for it
            text, ttl = "unknown", min(ttl, 30.0)
        text = _comment_text(text)[:120]
        self._versions[id(scanner)] = (scanner, now + ttl, text)
        return text

    @staticmethod
    async def _ask_version(scanner: Scanner) -> str:
        own = getattr(scanner, "version", None)
        if callable(own):
            value = own()
            if inspect.isawaitable(value):
                value = await value
            return str(value)
        if scanner.name == "clamd" and callable(getattr(scanner, "command", None)):
            return str(await scanner.command("VERSION"))  # type: ignore[attr-defined]
        module = type(scanner).__module__
        if module.startswith("mailsift.") and not module.startswith(_EXTERNAL_MODULES):
            return mailsift_version()
        return ""

    # ------------------------------------------------------------------ scanning

    async def scan(self, target: Target) -> Result:
        started = self.clock()
        result, trail = await first_detection(self.children, target)
        if target.part is not None:
            return result  # under parsemail: the message is stamped once, at the top
        took = self.clock() - started
        seen: set[int] = set()
        named: list[str] = []
        for expression in self.children[: len(trail)]:
            for scanner in ran_scanners(expression):
                if id(scanner) in seen:
                    continue
                seen.add(id(scanner))
                version = await self.version_of(scanner)
                entry = f"{scanner.name} {version}".strip()
                if entry not in named:
                    named.append(entry)
        headers: list[AddHeader] = []
        if self.received:
            headers.append(AddHeader("Received", self.received_value(target, named, took)))
        if self.header:
            headers.append(AddHeader(self.header, self.descriptive_value(result, named, took)))
        return replace(result, actions=(*headers, *result.actions))

    def received_value(self, target: Target, scanners: list[str], took: float) -> str:
        """``from ... by ... with ... id ... (scanners; time); date``, folded at each clause."""
        env = target.mail.envelope
        clauses = []
        if env.client_address or env.helo:
            address = _comment_text(env.client_address)
            client = _comment_text(env.client_name) if env.client_name else ""
            where = f"{client} [{address}]".strip() if address else client
            helo = _atom(env.helo, "") or _atom(env.client_name, "") or "unknown"
            clauses.append(f"from {helo} ({where})" if where else f"from {helo}")
        clauses.append(f"by {self.hostname} (mailsift {_comment_text(mailsift_version())})")
        protocol = _atom(re.sub(r"[^A-Za-z0-9-]", "", env.protocol), "SMTP")
        queue_id = _atom(env.queue_id, "") or secrets.token_hex(6)
        clauses.append(f"with {protocol} id {queue_id}")
        listed = ", ".join(scanners) or "none"
        clauses.append(f"(scanners: {listed}; {took:.3f} s);")
        clauses.append(email.utils.formatdate(self.wall_clock(), localtime=True))
        return "\n".join(clauses)

    def descriptive_value(self, result: Result, scanners: list[str], took: float) -> str:
        """qmail-scanner's descriptive header: who scanned, the verdict, what ran and how long."""
        verdict = _comment_text(result.name) if result.detected and result.name else "Clear"
        listed = "; ".join(s.replace(" ", ": ", 1) for s in scanners) or "no scanner"
        return (
            f"mailsift {_comment_text(mailsift_version())} on {self.hostname}\n"
            f"({verdict}. {listed}.\nProcessed in {took:.3f} secs)"
        )
