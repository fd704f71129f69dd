"""SpamAssassin's ``spamd`` over the SPAMC protocol: ``spamassassind(['127.0.0.1', 783])``.

``level = score / required``, so ``1.0`` is exactly SpamAssassin's own spam
threshold and ``12.3/5.0`` is ``2.46``; operators can then scale or compare
spam levels like any other level (SAGATOR README §4).  The result is a
:class:`~mailsift.scanners.engines.common.SpamResult` carrying the score, the
threshold, the rule names and the full text report, for later header actions.

The protocol is written here on asyncio streams because no maintained
asynchronous client exists on PyPI (the sync ones block a worker for the whole
scan).  It is small: one request head (``REPORT SPAMC/1.5``, ``Content-length``,
``User``), the message, then a ``SPAMD/1.1`` status line, headers
(``Content-length``, ``Spam: True ; 12.3 / 5.0``) and a body.  spamd closes
the connection after each answer: there is nothing to pool.

The detail reads ``score=12.3 required=5 points=5,-0.1,2.5 tests=A,B,C``:
with the ``REPORT`` verb (the default) each rule's points, read from the
report's table at no extra cost (the report is the answer anyway), in the
order of ``tests=``; with ``report=False`` (``SYMBOLS``) spamd gives the names
only and the detail has no ``points=``.

Messages over ``max_size`` are not sent at all (level 0, detail ``not
checked: over max_size``), which is what ``spamc`` does with its 500 KiB
default: spam filters are slow on big mail and spammers do not send big mail.

Failures are mapped by :mod:`.common`, as for every engine: spamd down, or
the connection closed or reset before the answer ended ->
:class:`~mailsift.errors.ScannerUnavailable`, no answer in ``timeout`` seconds
-> :class:`~mailsift.errors.ScannerTimeout`, an answer that cannot be read or
spamd's own error status -> :class:`~mailsift.errors.ScannerError`: the
message is tempfailed, never passed unchecked by accident.
"""

from __future__ import annotations

import asyncio
import re
import socket
from dataclasses import dataclass, replace
from typing import Any

from mailsift.errors import ConfigError, ScannerError, ScannerTimeout, ScannerUnavailable
from mailsift.message.result import Result
from mailsift.scanners.base import Scanner, Target
from mailsift.scanners.engines.common import (
    Address,
    SizeLimit,
    SpamResult,
    connect,
    deadline,
    no_answer,
    not_checked,
    parse_address,
    spam_level,
    unavailable,
    where,
)
from mailsift.scanners.engines.pool import Pool, backend_list
from mailsift.validators import flag, positive

SPAMC_MAX_SIZE = 512_000
"""``spamc``'s default ``-s``: 500 KiB; bigger messages are not checked."""

_MAX_ANSWER = 4 * 1024 * 1024
"""No spamd answer (a report, a symbol list) is bigger; a longer one is malformed."""

_MAX_HEAD = 64 * 1024
"""Bound on the SPAMD status line and headers."""

SpamdAddress = Address

USERS = ("first", "min", "max")
"""``spamassassind(users=...)``: whose verdict a per-recipient ``user`` template makes the message's."""

_USER = re.compile(r"[^\s\x00-\x1f\x7f]{1,256}")


def _user_fields(recipient: str) -> dict[str, str]:
    local, _, domain = recipient.rpartition("@") if "@" in recipient else (recipient, "", "")
    return {"recipient": recipient.lower(), "local": local.lower(), "domain": domain.lower()}


def spamd_address(address: Any) -> SpamdAddress:
    """Check SAGATOR's address forms: ``['127.0.0.1', 783]`` / ``('host', port)`` or a unix socket path."""
    return parse_address(address, "spamassassind")


@dataclass(frozen=True, slots=True)
class SpamdAnswer:
    """What spamd said: its verdict line ``Spam: True ; 12.3 / 5.0`` and the body."""

    spam: bool
    score: float
    required: float
    body: str


_STATUS = re.compile(rb"SPAMD/(\d+)\.(\d+) +(\d+) +([^\r\n]*)")
_SPAM_HEADER = re.compile(r"(True|False|Yes|No) *; *(-?\d+(?:\.\d+)?) */ *(-?\d+(?:\.\d+)?)")
_REPORT_LINE = re.compile(r"^ *(-?\d+(?:\.\d+)?) +([A-Za-z0-9_]+)(?: |$)", re.MULTILINE)


def parse_spamd_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    """Split a SPAMD answer's head into (code, message, headers); raise on anything else."""
    lines = head.split(b"\r\n")
    status = _STATUS.fullmatch(lines[0])
    if status is None:
        raise ScannerError(f"spamassassind: malformed answer {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            raise ScannerError(f"spamassassind: malformed header line {line[:80]!r}")
        headers[name.strip().decode("ascii", "replace").lower()] = value.strip().decode("utf-8", "replace")
    return int(status.group(3)), status.group(4).decode("utf-8", "replace"), headers


def parse_spamd_answer(code: int, message: str, headers: dict[str, str], body: bytes) -> SpamdAnswer:
    """Read spamd's verdict; a non-zero code (``76 Bad header line``...) is a ScannerError."""
    if code != 0:
        raise ScannerError(f"spamassassind: spamd answered {code} {message}".rstrip())
    spam = _SPAM_HEADER.fullmatch(headers.get("spam", ""))
    if spam is None:
        raise ScannerError(f"spamassassind: answer without a valid Spam header: {headers.get('spam')!r}")
    return SpamdAnswer(
        spam.group(1) in ("True", "Yes"),
        float(spam.group(2)),
        float(spam.group(3)),
        body.decode("utf-8", "replace"),
    )


MAX_RULES = 200
"""Rules read from one report at most (SpamAssassin reports a few dozen)."""


def report_rules(report: str) -> tuple[tuple[str, float], ...]:
    """The rules of SpamAssassin's report table (``pts rule name description``) with their points.

    Only lines under the ``---- ----`` rule of the table are read, so numbers in
    the content preview above it are not taken for rules.  A site that replaces
    the ``report`` template with one without that table gets no rules (the
    score is unaffected); use ``report=False`` (the ``SYMBOLS`` verb) there.
    A rule listed twice counts once (its first line); at most :data:`MAX_RULES`.
    """
    _, rule, table = report.replace("\r\n", "\n").partition("\n---- ")
    if not rule:
        return ()
    table = table.partition("\n")[2]
    rules: dict[str, float] = {}
    for match in _REPORT_LINE.finditer(table):
        if len(rules) >= MAX_RULES:
            break
        rules.setdefault(match.group(2), float(match.group(1)))
    return tuple(rules.items())


def report_symbols(report: str) -> tuple[str, ...]:
    """The rule names of SpamAssassin's report table (:func:`report_rules` without the points)."""
    return tuple(name for name, _ in report_rules(report))


def rules_detail(rules: tuple[tuple[str, float], ...]) -> str:
    """``points=1.5,-0.1`` for the detail (in the order of its ``tests=``), or ``""`` without points."""
    return "points=" + ",".join(f"{points:g}" for _, points in rules) if rules else ""


class spamassassind(Scanner):
    """SpamAssassin's ``spamd``: ``spamassassind(['127.0.0.1', 783])``.

    ``user`` is ``spamc -u``: spamd loads that user's preferences (with
    ``--virtual-config-dir``, SQL or LDAP preferences).  A template makes it
    per recipient (simscan's ``--enable-spamc-user``): ``%(recipient)s`` (the
    address), ``%(local)s``, ``%(domain)s``, e.g. ``user='%(recipient)s'``.
    spamd is asked once per distinct user; ``users`` says whose verdict is the
    message's: ``'first'`` (simscan: the first recipient's user, the only one
    asked), ``'min'`` (the least spammy: no recipient loses mail their own
    settings accept) or ``'max'`` (the most spammy).  ``report=True`` asks
    for the full text report (``REPORT`` verb; rule names are read from its
    table); ``report=False`` asks only for the rule names (``SYMBOLS`` verb).
    A detection is named ``virname`` (``Spam``).
    """

    name = "spamassassind"

    def __init__(
        self,
        address: Any = ("127.0.0.1", 783),
        user: str | None = None,
        *,
        max_size: int = SPAMC_MAX_SIZE,
        timeout: float = 120.0,
        report: bool = True,
        virname: str = "Spam",
        users: str = "first",
    ) -> None:
        self.addresses = [spamd_address(one) for one in backend_list(address)]
        self.address = self.addresses[0]
        self.pool: Pool[SpamdAddress] = Pool("spamassassind", self.addresses, label=where, check=self.health_check)
        if user is not None and (not isinstance(user, str) or not re.fullmatch(r"[^\s\x00-\x1f\x7f]{1,256}", user)):
            raise ConfigError(f"spamassassind: user must be a name without spaces or control characters, got {user!r}")
        self.user = user
        self.per_recipient = user is not None and "%(" in user
        if self.per_recipient:
            assert user is not None
            try:
                user % _user_fields("a@b")
            except (KeyError, ValueError, TypeError):
                raise ConfigError(
                    f"spamassassind: user template may use %(recipient)s, %(local)s, %(domain)s, got {user!r}"
                ) from None
        if users not in USERS:
            raise ConfigError(f"spamassassind: users must be one of {', '.join(USERS)}, got {users!r}")
        self.users = users
        self.size_limit = SizeLimit.checked("max_size", max_size, "spamassassind")
        self.max_size: int = max_size
        self.timeout = positive(timeout, "spamassassind: timeout", unit="number of seconds")
        self.verb = "REPORT" if flag(report, "spamassassind: report") else "SYMBOLS"
        if not isinstance(virname, str) or not virname:
            raise ConfigError(f"spamassassind: virname must be a non-empty string, got {virname!r}")
        self.virname = virname

    def where(self) -> str:
        return ", ".join(where(address) for address in self.addresses)

    def describe(self) -> str:
        user = f", user={self.user!r}" if self.user else ""
        user += f", users={self.users!r}" if self.per_recipient and self.users != "first" else ""
        return f"spamassassind({self.where()}{user}, max_size={self.max_size}, {self.verb})"

    def users_for(self, recipients: list[str]) -> list[str]:
        """The distinct spamd users to ask for a message to ``recipients``, in recipient order."""
        if not self.per_recipient:
            return [self.user or ""]
        assert self.user is not None
        found: list[str] = []
        for recipient in recipients[:1] if self.users == "first" else recipients:
            user = self.user % _user_fields(recipient)
            if _USER.fullmatch(user) and user not in found:
                found.append(user)
        return found or [""]

    def request(self, data: bytes, user: str | None = None) -> bytes:
        """The SPAMC/1.5 request head for ``data`` (the body follows it unchanged)."""
        head = f"{self.verb} SPAMC/1.5\r\nContent-length: {len(data)}\r\n"
        user = self.user if user is None and not self.per_recipient else user
        if user:
            head += f"User: {user}\r\n"
        return (head + "\r\n").encode("utf-8")

    async def scan(self, target: Target) -> Result:
        if self.size_limit.exceeded(target.size):
            return not_checked(self.name, target.size, self.size_limit)
        data = target.data
        if not self.per_recipient:
            return self._result(await self._ask(data, None))
        users = self.users_for(list(target.mail.envelope.recipients))
        answers = await asyncio.gather(*(self._ask(data, user) for user in users))
        results = [self._result(answer) for answer in answers]
        if len(results) == 1:
            chosen = results[0]
        else:
            pick = min if self.users == "min" else max
            chosen = pick(results, key=lambda r: r.level)
        scores = ", ".join(f"{user or '-'}={r.score:g}/{r.required:g}" for user, r in zip(users, results, strict=True))
        return replace(chosen, detail=f"{chosen.detail} users={scores}")

    async def _ask(self, data: bytes, user: str | None) -> SpamdAnswer:
        async def exchange_at(address: SpamdAddress) -> SpamdAnswer:
            async with deadline(self.timeout, lambda: self._no_answer(address)):
                return await self._exchange(data, address, user)

        return await self.pool.run(exchange_at)

    def _result(self, answer: SpamdAnswer) -> SpamResult:
        rules = report_rules(answer.body) if self.verb == "REPORT" else ()
        symbols = tuple(name for name, _ in rules) if self.verb == "REPORT" else _symbol_list(answer.body)
        level = spam_level(answer.score, answer.required, answer.spam)
        points = rules_detail(rules)  # the REPORT's points per rule, before tests= (the web's rule table)
        detail = f"score={answer.score:g} required={answer.required:g} {points + ' ' if points else ''}"
        detail += f"tests={','.join(symbols)}"
        return SpamResult(
            level,
            self.virname if level >= 1.0 else "",
            self.name,
            detail,
            score=answer.score,
            required=answer.required,
            symbols=symbols,
            report=answer.body if self.verb == "REPORT" else "",
        )

    def _no_answer(self, address: SpamdAddress) -> ScannerTimeout:
        return no_answer("spamassassind", where(address), self.timeout)

    async def health_check(self, address: SpamdAddress) -> None:
        """The pool's health check: ``PING SPAMC/1.5`` answered ``SPAMD/1.x 0 PONG``."""
        reader, writer = await self._connect(address)
        try:
            writer.write(b"PING SPAMC/1.5\r\n\r\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
        status = _STATUS.fullmatch(line.rstrip(b"\r\n"))
        if status is None or status.group(3) != b"0" or status.group(4).strip() != b"PONG":
            raise ScannerError(f"spamassassind {where(address)}: PING answered {line[:80]!r}")

    async def _connect(self, address: SpamdAddress) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = await connect(address, "spamassassind")
        try:
            if sock.family == socket.AF_UNIX:
                return await asyncio.open_unix_connection(sock=sock, limit=_MAX_HEAD)
            return await asyncio.open_connection(sock=sock, limit=_MAX_HEAD)
        except OSError as error:
            sock.close()
            raise unavailable("spamassassind", where(address), error) from None

    async def _exchange(self, data: bytes, address: SpamdAddress, user: str | None = None) -> SpamdAnswer:
        reader, writer = await self._connect(address)
        try:
            try:
                writer.write(self.request(data, user))
                writer.write(data)
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()  # as spamc does: the whole message has been sent
            except OSError:
                pass  # spamd may have answered and closed early (an error): read what it said
            return await self._read_answer(reader, address)
        except OSError as error:
            raise ScannerUnavailable(f"spamassassind: connection to {where(address)} lost: {error}") from None
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    async def _read_answer(self, reader: asyncio.StreamReader, address: SpamdAddress) -> SpamdAnswer:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as error:
            if not error.partial:
                raise ScannerUnavailable(
                    f"spamassassind: {where(address)} closed the connection without an answer"
                ) from None
            status, crlf, _ = error.partial.partition(b"\r\n")
            if crlf:  # spamd's protocol errors are one status line, then it closes.
                code, message, headers = parse_spamd_head(status)
                if code != 0:
                    parse_spamd_answer(code, message, headers, b"")  # raises with spamd's own words
            # spamd died or was restarted mid-answer: the daemon's failure, not the message's.
            raise ScannerUnavailable(f"spamassassind: answer cut short after {error.partial[:80]!r}") from None
        except asyncio.LimitOverrunError:
            raise ScannerError(f"spamassassind: answer head over {_MAX_HEAD} bytes") from None
        code, message, headers = parse_spamd_head(head[:-4])
        if code != 0:
            return parse_spamd_answer(code, message, headers, b"")
        length_text = headers.get("content-length")
        if length_text is None:
            body = await reader.read(_MAX_ANSWER + 1)
            if len(body) > _MAX_ANSWER or (not reader.at_eof() and await reader.read(1)):
                raise ScannerError(f"spamassassind: answer body over {_MAX_ANSWER} bytes")
        else:
            if not length_text.isdigit() or int(length_text) > _MAX_ANSWER:
                raise ScannerError(f"spamassassind: bad Content-length {length_text[:40]!r} in answer")
            try:
                body = await reader.readexactly(int(length_text))
            except asyncio.IncompleteReadError as error:
                raise ScannerUnavailable(
                    f"spamassassind: answer cut short ({len(error.partial)} of {length_text} bytes)"
                ) from None
        return parse_spamd_answer(code, message, headers, body)


def _symbol_list(body: str) -> tuple[str, ...]:
    return tuple(name for name in (part.strip() for part in body.split(",")) if name)
