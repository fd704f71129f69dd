"""Poison mail: a message that fails again and again because of its content is quarantined.

Like MailScanner's processing-attempts database.  A message whose processing
ends in a temporary failure *tied to its content* is counted, per message key
(:func:`message_key`), in the ``poison_attempt`` table of ``DATABASE`` (so the
workers and gateway nodes sharing the database count together).  The attempts
before ``max_attempts`` answer the usual ``451``; attempt ``max_attempts`` is
quarantined in ``category`` (``Unscannable``, 250) and the admin gets a notice,
instead of the MTA retrying for days and bouncing with a misleading reason::

    POISON = poison(max_attempts=5, category="unscannable", expire="7d", healthy_within="10m")
    POISON = None                       # never quarantine poison mail (keep answering 451)

What counts (:func:`counted_reason`), and nothing else:

* a ``content_tied`` error (:class:`~mailsift.errors.ContentError`: the MIME
  parser or a decoder failed on this message, e.g. ``RecursionError`` on 1,000+
  nested multipart levels), wherever it is in the error's cause chain;
* a plain :class:`~mailsift.errors.ScannerError` (a scanner answered ``ERROR``
  for this message, or raised an unexpected exception on it) raised by a scanner
  that *answered another message* within ``healthy_within`` seconds in this
  worker (:class:`ScannerHealth`: the last answer per scanner object, by any
  call of :func:`mailsift.scanners.base.evaluate`; an answer on an earlier part
  of the same message does not count as "another").  A plain ScannerError that
  wraps another mailsift error or an ``OSError`` (the disk, a socket) never counts.

Never counted: a scanner that is down or slow (``ScannerUnavailable``,
``ScannerTimeout``), the database (``DatabaseError``), the disk
(``StorageError``), the next hop (``DeliveryError``), and a deliberate ``4xx``
of a content rule (a tempfail decision without an error).  When the count
cannot be written (the database is down) the message gets its 451 as before.

Rows are purged when idle for ``expire`` (default 7 days) on every count, and a
message's row is removed once it is quarantined.
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import hashlib
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete
from sqlalchemy.engine import Connection

from mailsift import replies, validators
from mailsift.delivery.next_hop import resolve
from mailsift.durations import parse_duration
from mailsift.errors import ConfigError, MailsiftError, ScannerError
from mailsift.message.address import address_problem, check_addresses
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import DETECTED, Decision, Disposition, QuarantineCopy, Result, SetDisposition
from mailsift.scanners.actions import CATEGORY
from mailsift.scanners.base import Scanner, observer
from mailsift.storage.schema import poison_attempt_table as table
from mailsift.storage.sql import upsert

if TYPE_CHECKING:
    from mailsift.core.disposition import Outcome
    from mailsift.core.pipeline import Pipeline
    from mailsift.delivery.next_hop import Delivery
    from mailsift.settings import Settings

log = logging.getLogger("mailsift.poison")

TRACE_HEADERS = frozenset(
    {
        "received",
        "return-path",
        "delivered-to",
        "x-original-to",
        "x-envelope-from",
        "x-envelope-to",
        "received-spf",
        "authentication-results",
        "x-virus-scanned",
    }
)
"""Header fields left out of :func:`message_key`: added or changed on the way (by each MTA hop,
at each attempt), so they differ between the MTA's retries of one message."""
TRACE_PREFIXES = ("x-mailsift", "arc-", "x-spam-")
"""Header field name prefixes left out too: mailsift's own stamps (``X-Mailsift``,
``X-Mailsift-*``), ARC sets, spam filters' stamps."""

NAME = "Unscannable"
"""The result name of a message quarantined as poison (``scanner`` ``poison``)."""
_CHUNK = 64 * 1024
_MAX_HEALTH = 4096


# --------------------------------------------------------------------------- the key


def _header_fields(head: bytes) -> Iterator[tuple[bytes, bytes]]:
    """``(lower-case name, value with folding and runs of white space made one space)``."""
    name, value = b"", b""
    for line in head.replace(b"\r\n", b"\n").split(b"\n"):
        if line[:1] in (b" ", b"\t") and name:
            value += b" " + line
            continue
        if name:
            yield name, b" ".join(value.split())
        name, _, value = line.partition(b":")
        name = name.strip().lower()
    if name:
        yield name, b" ".join(value.split())


def _traced(name: bytes) -> bool:
    text = name.decode("latin-1")
    return text in TRACE_HEADERS or text.startswith(TRACE_PREFIXES)


def message_key(mail: Mail) -> str:
    """What stays the same across the MTA's retries of one message, hashed (SHA-256, hex).

    The envelope (sender, recipients sorted and lower-cased), the header fields
    but the trace fields (:data:`TRACE_HEADERS`, :data:`TRACE_PREFIXES`; names
    lower-cased, values unfolded and white space collapsed, in order) and the
    body (line ends as ``LF``, trailing empty lines left out).  The milter and
    smtpd give the same key for one message; the raw bytes are read from the
    spool without parsing (the parser may be what fails on this message).
    """
    digest = hashlib.sha256()
    env = mail.envelope
    digest.update(b"sender\0" + env.sender.encode("utf-8", "surrogateescape") + b"\0")
    for recipient in sorted({r.lower() for r in env.recipients}):
        digest.update(b"rcpt\0" + recipient.encode("utf-8", "surrogateescape") + b"\0")
    with mail.open() as stream:
        head, body = b"", b""
        while True:
            chunk = stream.read(_CHUNK)
            head += chunk
            found = [i for i in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if i >= 0]
            if found or not chunk:
                end = min(found) if found else len(head)
                separator = 4 if head.startswith(b"\r\n\r\n", end) else 2
                head, body = head[:end], head[end + separator :]
                break
        for name, value in _header_fields(head):
            if not _traced(name):
                digest.update(b"field\0" + name + b"\0" + value + b"\0")
        digest.update(b"body\0")
        pending, carry = b"", b""
        while True:
            if not body:
                body = stream.read(_CHUNK)
                if not body:
                    break
            data = carry + body
            carry = b"\r" if data.endswith(b"\r") else b""
            data = (data[:-1] if carry else data).replace(b"\r\n", b"\n")
            stripped = data.rstrip(b"\n")
            if stripped:
                digest.update(pending + stripped)
                pending = data[len(stripped) :]
            else:
                pending += data
            body = b""
        if carry:
            digest.update(pending + carry)
    return digest.hexdigest()


# --------------------------------------------------------------------------- scanner health


class ScannerHealth:
    """When each scanner (object) of this worker last answered, and for which message.

    Per scanner: its last answer (time, message token) and its last answer on
    a message other than that one, so "did it answer another message than
    ``token`` since ``since``" is one look-up, whatever the number of parts.
    """

    def __init__(self) -> None:
        self._last: dict[int, tuple[float, int, float, int]] = {}

    def answered(self, scanner: Scanner, token: int, now: float) -> None:
        key = id(scanner)
        last = self._last.get(key)
        if last is None:
            if len(self._last) >= _MAX_HEALTH:
                self._last.clear()
            self._last[key] = (now, token, float("-inf"), -1)
        elif last[1] == token:
            self._last[key] = (now, token, last[2], last[3])
        else:
            self._last[key] = (now, token, last[0], last[1])

    def answered_another(self, scanner: Scanner, token: int, since: float) -> bool:
        last = self._last.get(id(scanner))
        if last is None:
            return False
        when = last[0] if last[1] != token else last[2]
        return when >= since


def _causes(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(chain) < 20:
        chain.append(current)
        current = current.__cause__
    return chain


def counted_reason(error: MailsiftError, answered_another: Callable[[], bool]) -> str:
    """Why ``error`` counts as tied to the message's content ('' if it does not).

    ``answered_another()`` says whether the scanner that raised ``error``
    answered another message lately (asked only for a plain ScannerError).
    """
    chain = _causes(error)
    if any(isinstance(e, MailsiftError) and e.content_tied for e in chain):
        return f"content: {error.message}"
    if type(error) is not ScannerError:
        return ""  # ScannerUnavailable, ScannerTimeout, DatabaseError... and every non-scanner error
    if any(isinstance(e, MailsiftError | OSError) for e in chain[1:]):
        return ""  # a wrapped infrastructure failure (the spool, the disk, a socket)
    if not answered_another():
        return ""
    return f"scanner error on this message only: {error.message}"


# --------------------------------------------------------------------------- the setting


class poison:
    """``POISON``: quarantine a message after ``max_attempts`` content-tied tempfails.

    ``category``: the quarantine folder (``unscannable``); ``expire``: a count
    idle this long starts over (``7d``; seconds or ``30m``/``12h``/``7d``);
    ``healthy_within``: a scanner's error on a message counts only if it
    answered another message within this time (``10m``); ``admin``: who gets
    the notice (default: ``notify()``'s ``admin``, else ``postmaster@`` this host).
    """

    name = "poison"

    def __init__(
        self,
        max_attempts: int = 5,
        *,
        category: str = "unscannable",
        expire: float | str = "7d",
        healthy_within: float | str = "10m",
        admin: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.max_attempts = validators.integer(max_attempts, "poison: max_attempts", minimum=1, unit="an integer")
        if not isinstance(category, str) or not CATEGORY.match(category):
            raise ConfigError(f"poison: category must be a short lower-case name like 'unscannable', got {category!r}")
        self.category = category
        self.expire = self._duration(expire, "expire")
        self.healthy_within = self._duration(healthy_within, "healthy_within")
        if admin is not None and (not isinstance(admin, str) or "@" not in admin or address_problem(admin)):
            raise ConfigError(f"poison: admin must be an address like 'postmaster@example.com', got {admin!r}")
        self.admin = admin
        self.timeout = validators.positive(timeout, "poison: timeout", unit="number of seconds")
        self.clock: Callable[[], float] = time.time
        """Wall-clock time of the counts (tests move it)."""

    @staticmethod
    def _duration(value: Any, what: str) -> float:
        if isinstance(value, str):
            try:
                return parse_duration(value)
            except ConfigError as error:
                raise ConfigError(f"poison: {what}: {error.message}") from None
        return validators.positive(value, f"poison: {what}", unit="number of seconds or a duration like '7d'")

    def describe(self) -> str:
        return (
            f"poison(max_attempts={self.max_attempts}, category={self.category!r}, expire={self.expire:g}, "
            f"healthy_within={self.healthy_within:g})"
        )


# --------------------------------------------------------------------------- the database


def count_attempt(connection: Connection, key: str, now: float, expire: float, reason: str, sender: str) -> int:
    """Purge counts idle past ``expire``, add one attempt to ``key``'s: the attempts now counted."""
    connection.execute(delete(table).where(table.c.last_seen < now - expire))
    values = {"key": key, "attempts": 1, "first_seen": now, "last_seen": now, "reason": reason[:500], "sender": sender}
    row = upsert(
        connection,
        table,
        values,
        update=lambda new: {"attempts": table.c.attempts + 1, "last_seen": new.last_seen, "reason": new.reason},
        returning=[table.c.attempts],
    ).first()
    return int(row[0]) if row is not None else 1


def forget(connection: Connection, key: str) -> None:
    """Remove ``key``'s count (its message was quarantined)."""
    connection.execute(delete(table).where(table.c.key == key))


def purge(connection: Connection, before: float) -> int:
    """Remove every count idle since before ``before`` (Unix seconds); how many."""
    return int(connection.execute(delete(table).where(table.c.last_seen < before)).rowcount or 0)


# --------------------------------------------------------------------------- on the mail path


class PoisonWatch:
    """The mail path's side of poison mail: watches evaluation, counts, quarantines, notifies.

    :meth:`evaluate` wraps the pipeline's (scanner health and attribution of
    errors through :data:`mailsift.scanners.base.observer`) and turns the
    decision of a poison message's last allowed attempt into a quarantine;
    :meth:`settle` notifies the admin once that quarantine is stored.  With no
    ``POISON`` or no ``DATABASE`` both do nothing.
    """

    def __init__(self, settings: Settings, delivery: Delivery) -> None:
        self.settings = settings
        self.config: poison | None = settings.poison if settings.database is not None else None
        self.delivery = delivery
        self.health = ScannerHealth()
        self._tokens = itertools.count()

    async def evaluate(self, pipeline: Pipeline, mail: Mail) -> Decision:
        config = self.config
        if config is None:
            return await pipeline.evaluate(mail)
        token = next(self._tokens)
        raisers: dict[int, tuple[ScannerError, Scanner]] = {}
        health = self.health

        def watch(scanner: Scanner, error: ScannerError | None) -> None:
            if error is None:
                health.answered(scanner, token, time.monotonic())
            elif id(error) not in raisers:
                raisers[id(error)] = (error, scanner)  # the first to tell is the one that raised it

        reset = observer.set(watch)
        try:
            decision = await pipeline.evaluate(mail)
        finally:
            observer.reset(reset)
        error = decision.error
        if decision.disposition is not Disposition.TEMPFAIL or error is None:
            return decision
        raiser = raisers.get(id(error), (None, None))[1]
        since = time.monotonic() - config.healthy_within
        reason = counted_reason(error, lambda: raiser is not None and health.answered_another(raiser, token, since))
        if not reason:
            return decision
        return await self._count(config, mail, decision, reason)

    async def _count(self, config: poison, mail: Mail, decision: Decision, reason: str) -> Decision:
        queue_id = mail.envelope.queue_id or "-"
        database = self.settings.require_database()
        try:
            key = await asyncio.to_thread(message_key, mail)
            attempts = await database.run(
                count_attempt, key, config.clock(), config.expire, reason, mail.envelope.sender
            )
        except MailsiftError as error:
            log.warning("queue_id=%s: poison: attempt not counted: %s", queue_id, error.message)
            return decision
        if attempts < config.max_attempts:
            log.warning(
                "queue_id=%s: poison: attempt %d of %d failed on this message (%s) key=%s",
                queue_id, attempts, config.max_attempts, reason, key[:16],
            )  # fmt: skip
            return decision
        log.warning(
            "queue_id=%s: poison: attempt %d of %d failed on this message (%s): quarantined in %s as %s",
            queue_id, attempts, config.max_attempts, reason, config.category, NAME,
        )  # fmt: skip
        result = Result(
            DETECTED,
            NAME,
            "poison",
            f"{attempts} attempts: {reason}"[:1000],
            (QuarantineCopy(config.category), SetDisposition(Disposition.QUARANTINE)),
        )
        mail.memo[(__name__, "key")] = key
        return Decision(
            Disposition.QUARANTINE,
            result,
            replies.OK_QUARANTINED,
            (config.category,),
            trail=(*decision.trail, result),
        )

    async def settle(self, mail: Mail, decision: Decision, *outcomes: Outcome) -> None:
        """After a poison message was stored: forget its count and notify the admin."""
        key = mail.memo.get((__name__, "key"))
        config = self.config
        if config is None or key is None or decision.result.name != NAME or decision.result.scanner != "poison":
            return
        stored = [o for o in outcomes if not o.reply.is_transient and o.quarantined]
        if not stored:
            return  # the quarantine failed: 451, the count stays and the next attempt tries again
        queue_id = mail.envelope.queue_id or "-"
        try:
            await self.settings.require_database().run(forget, key)
        except MailsiftError as error:
            log.warning("queue_id=%s: poison: count not removed (it expires): %s", queue_id, error.message)
        await self._notify(config, mail, decision, stored[0])

    def _admin(self, config: poison) -> tuple[str, Any]:
        """The admin address and the notify hook that names it (if any)."""
        hook = next((h for h in self.settings.hooks if getattr(h, "name", "") == "notify"), None)
        admin = config.admin or getattr(hook, "admin", None) or f"postmaster@{self.settings.hostname}"
        return str(admin), hook

    def _notice_delivery(self, hook: Any) -> Delivery:
        """As notifications go: ``notify()``'s next hop, else ``SMTP_SERVER``, else this path's next hop."""
        if hook is not None and hasattr(hook, "delivery"):
            return hook.delivery(self.settings)  # type: ignore[no-any-return]
        if self.settings.smtp_server is None:
            return self.delivery
        return resolve(self.settings.smtp_server, self.settings.state_dir)  # closed after the notice

    async def _notify(self, config: poison, mail: Mail, decision: Decision, outcome: Outcome) -> None:
        admin, hook = self._admin(config)
        queue_id = mail.envelope.queue_id or "-"
        parties = getattr(hook, "parties", {})
        if config.admin is None and config.category in parties.get("admin", ()):
            return  # notify() tells its admin about this category itself
        delivery = self._notice_delivery(hook)
        try:
            check_addresses("", [admin])
            data = self.notice(config, mail, decision, outcome, admin, getattr(hook, "from_address", None))
            envelope = Envelope(sender="", recipients=[admin], queue_id=f"{queue_id}.poison")
            try:
                async with asyncio.timeout(config.timeout):
                    note = await delivery.deliver(Mail(envelope, data), data)
            finally:
                if delivery is not self.delivery and hook is None:
                    await delivery.close()
        except (MailsiftError, TimeoutError) as error:
            log.warning("queue_id=%s: poison: notice to <%s> failed: %s", queue_id, admin, error)
        else:
            log.info("queue_id=%s: poison: admin notified <%s>: %s", queue_id, admin, note)

    def notice(
        self, config: poison, mail: Mail, decision: Decision, outcome: Outcome, admin: str, sender: str | None
    ) -> bytes:
        """The admin's notice (plain text, never parsing the poison message: its raw headers are read)."""
        hostname = self.settings.hostname
        env = mail.envelope
        names = {"subject": "", "message-id": ""}
        with mail.open() as stream:
            head = stream.read(_CHUNK).split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        for name, value in _header_fields(head):
            if name.decode("latin-1") in names and not names[name.decode("latin-1")]:
                names[name.decode("latin-1")] = _clean(value.decode("utf-8", "replace"))
        ids = ", ".join(Path(path).name for path in outcome.quarantined)
        message = EmailMessage(policy=email.policy.SMTP)
        message["From"] = sender or f"postmaster@{hostname}"
        message["To"] = admin
        message["Subject"] = f"mailsift: unscannable message quarantined ({config.category})"
        message["Date"] = email.utils.formatdate(localtime=True)
        message["Message-ID"] = email.utils.make_msgid("poison", domain=hostname)
        message["Auto-Submitted"] = "auto-generated"
        message["X-Mailsift-Notification"] = f"admin; poison; queue_id={_clean(queue_id_of(env), 60)}"
        recipients = ", ".join(f"<{_clean(r)}>" for r in env.recipients[:20])
        lines = [
            f"mailsift on {hostname} could not process a message after {config.max_attempts} attempts",
            "and has quarantined it instead of deferring it again.",
            "",
            f"Reason:      {_clean(decision.result.detail, 500)}",
            f"Quarantine:  {config.category}/{ids}",
            f"Queue id:    {_clean(queue_id_of(env), 100)}",
            f"Sender:      <{_clean(env.sender)}>",
            f"Recipients:  {recipients}{' ...' if len(env.recipients) > 20 else ''}",
            f"Subject:     {names['subject']}",
            f"Message-ID:  {names['message-id']}",
            f"Size:        {mail.size} bytes",
            "",
            f"Release it with: mailsift quarantine release {ids.split(', ')[0]}",
        ]
        message.set_content("\n".join(lines) + "\n")
        return message.as_bytes()


def queue_id_of(env: Envelope) -> str:
    return env.queue_id or "-"


def _clean(value: str, limit: int = 200) -> str:
    text = "".join(ch if ch.isprintable() else " " for ch in value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = [
    "NAME",
    "TRACE_HEADERS",
    "TRACE_PREFIXES",
    "PoisonWatch",
    "ScannerHealth",
    "count_attempt",
    "counted_reason",
    "forget",
    "message_key",
    "poison",
    "purge",
]
