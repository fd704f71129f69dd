"""``tempfail``: qmail-scanner's "greylist" answer for a content rule, a deliberate 4xx.

For an outbreak that the engines do not know yet (a new ZIP worm with random
names): rather than reject or quarantine every ZIP, defer the messages the
rule matches, and let the sending MTAs retry them::

    tempfail(attach_name({'Outbreak.ZIP': r'\\.zip$'}), message='451 4.7.1 Try again later')

* Without ``hold`` (qmail-scanner's behaviour): every attempt is deferred for
  as long as the rule is in the config.  The MTAs keep the mail in their
  queues (Postfix and Sendmail for 5 days) and it flows once you remove the
  rule, after the engines learnt the new virus.
* With ``hold='4h'`` (greylisting by message): the first attempt of a
  message is recorded (a checksum of the detection's name, the envelope and
  the body: the same message retried has the same key, even though a
  ``Received`` line added by the MTA in front changes) and deferred; an
  attempt ``hold`` or more after the first is *released*: the rule counts as
  clean and the rest of ``SCANNERS`` decides, with the engines' signatures of
  hours later.  The state is in ``DATABASE`` (table ``tempfail_hold``,
  revision 0015_tempfail), rows idle for ``expire`` (default 6 days) are
  purged and at most ``max_entries`` are kept (the oldest go first).

``message`` may start with the reply code and enhanced status (``451 4.7.1``;
only 4xx) and use %V, %S, %L (the detection).  A pattern first, as for every
action, limits it to names that match: ``tempfail('Outbreak', ...)``.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import case, delete, func, select
from sqlalchemy.engine import Connection

from mailsift.durations import parse_duration
from mailsift.errors import ConfigError, DatabaseError
from mailsift.message.result import Action, Disposition, Result, SetDisposition
from mailsift.scanners import work
from mailsift.scanners.actions import _Action, expand
from mailsift.scanners.base import Target
from mailsift.scanners.find import configure_once
from mailsift.settings import Settings
from mailsift.storage.db import Database
from mailsift.storage.schema import tempfail_hold_table
from mailsift.storage.sql import upsert
from mailsift.validators import positive, positive_int

DEFAULT_MESSAGE = "451 4.7.1 Message deferred by content filter, please try again later"
_CODE = re.compile(r"^4\d\d(?: 4\.\d{1,3}\.\d{1,3})? ")
_HASH_THRESHOLD = 512 * 1024


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, str):
        try:
            value = parse_duration(value)
        except (ConfigError, ValueError) as error:
            raise ConfigError(f"tempfail: {what}: {error}") from None
    return positive(value, f"tempfail: {what}", unit="a number of seconds or a duration like '4h'")


def message_key(target: Target, rule: str) -> str:
    """The key of one message for one rule: SHA-256 of the rule, envelope, Message-ID and body."""
    mail = target.mail
    envelope = mail.envelope
    digest = hashlib.sha256()
    for part in (rule, envelope.sender.lower(), *sorted(r.lower() for r in envelope.recipients), mail.message_id):
        digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
    with mail.open() as stream:
        for line in stream:  # the body starts after the first empty line
            if line in (b"\r\n", b"\n"):
                break
        while chunk := stream.read(64 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def hold_request(connection: Connection, key: str, rule: str, now: float, expire: float) -> tuple[float, int]:
    """Count one attempt of ``key``; its first attempt (Unix seconds) and the attempts counted.

    A key last seen more than ``expire`` ago starts over.  Time never goes back for a row
    (concurrent workers' clocks differ by a little).
    """
    c = tempfail_hold_table.c
    restart = c.last_seen < now - expire
    row = upsert(
        connection,
        tempfail_hold_table,
        {"key": key, "rule": rule[:255], "first_seen": now, "last_seen": now, "attempts": 1},
        update={
            "first_seen": case((restart, now), else_=c.first_seen),
            "last_seen": case((c.last_seen > now, c.last_seen), else_=now),
            "attempts": case((restart, 1), else_=c.attempts + 1),
        },
        returning=(c.first_seen, c.attempts),
    ).one()
    return float(row[0]), int(row[1])


def hold_purge(connection: Connection, now: float, expire: float, max_entries: int) -> int:
    """Delete rows idle past ``expire``, then the oldest beyond ``max_entries``; rows deleted."""
    c = tempfail_hold_table.c
    removed = int(connection.execute(delete(tempfail_hold_table).where(c.last_seen < now - expire)).rowcount)
    count = int(connection.execute(select(func.count()).select_from(tempfail_hold_table)).scalar_one())
    if count > max_entries:
        oldest = select(c.key).order_by(c.last_seen).limit(count - max_entries).scalar_subquery()
        removed += int(connection.execute(delete(tempfail_hold_table).where(c.key.in_(oldest))).rowcount)
    return removed


class tempfail(_Action):
    """Defer (4xx) what the scanners detect; with ``hold``, let a retry through after that long."""

    name = "tempfail"

    def __init__(
        self,
        *args: Any,
        message: str = DEFAULT_MESSAGE,
        hold: Any = None,
        expire: Any = "6d",
        max_entries: int = 100_000,
        purge_interval: Any = 3600,
        db: Database | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(*args)
        if not isinstance(message, str) or not message or "\n" in message or "\r" in message:
            raise ConfigError(f"tempfail: message must be one line of text, got {message!r}")
        if re.match(r"^\d{3}\b", message) and not _CODE.match(message):
            raise ConfigError(f"tempfail: the reply must be a 4xx like '451 4.7.1 text', got {message!r}")
        self.message = message
        self.hold = None if hold is None else _seconds(hold, "hold")
        self.expire = _seconds(expire, "expire")
        if self.hold is not None and self.expire <= self.hold:
            raise ConfigError(f"tempfail: expire ({expire!r}) must be longer than hold ({hold!r})")
        self.max_entries = positive_int(max_entries, "tempfail: max_entries")
        self.purge_interval = _seconds(purge_interval, "purge_interval")
        if db is not None and not isinstance(db, Database):
            raise ConfigError(f"tempfail: db must be a database like DATABASE or db.sqlite(), got {db!r}")
        self.database = db
        self.config_database: Database | None = None
        self.clock = clock
        self._next_purge = 0.0

    def bind_settings(self, settings: Settings) -> None:
        self.config_database = settings.database
        if self.database is not None:
            configure_once(self.database, settings)

    def arguments(self) -> str:
        hold = f", hold={self.hold:g}s" if self.hold is not None else ""
        return f"message={self.message!r}{hold}"

    def actions(self, result: Result) -> tuple[Action, ...]:
        return (SetDisposition(Disposition.TEMPFAIL, expand(self.message, result)),)

    async def scan(self, target: Target) -> Result:
        result = await self.inner(target)
        if not self.applies(result):
            return result
        if self.hold is None or target.mail.size == 0:  # no message (at RCPT): a plain deferral
            return result.with_actions(*self.actions(result))
        database = self.database if self.database is not None else self.config_database
        if database is None:
            raise DatabaseError("tempfail: hold needs a database (DATABASE, or db=)")
        rule = result.name or "tempfail"
        if target.mail.size > _HASH_THRESHOLD:
            key = await work.in_thread(message_key, target, rule)
        else:
            key = message_key(target, rule)
        now = self.clock()
        first_seen, attempts = await database.run(hold_request, key, rule, now, self.expire)
        if now >= self._next_purge:
            self._next_purge = now + self.purge_interval
            await database.run(hold_purge, now, self.expire, self.max_entries)
        waited = now - first_seen
        if waited >= self.hold:
            note = f"{rule}: released after {int(waited)} s on hold ({attempts - 1} attempt(s) deferred)"
            return Result(0.0, "", self.name, note)
        note = f"attempt {attempts} deferred, released from {int(self.hold - waited) + 1} s on"
        detail = f"{result.detail}; {note}" if result.detail else note
        return Result(result.level, result.name, result.scanner, detail, result.actions + self.actions(result))
