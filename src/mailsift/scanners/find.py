"""SAGATOR's condition interscanners: ``regexp_find``, ``sql_find`` and ``check_level``.

They run their scanners only when a condition holds, and are clean (level 0,
the next entry of ``SCANNERS`` decides) when it does not:

* ``regexp_find(regexp, *scanners, where='data', invert=False)``: the regular
  expression is found in the scanned bytes (``where='data'``: the message, or
  the part under ``parsemail``), in the header block (``'headers'``), in the
  envelope sender or a recipient (``'sender'``, ``'recipient'``), the client's
  HELO name, address or host name (``'helo'``, ``'client_address'``,
  ``'client_name'``).  ``regexp_scan`` *detects* a pattern (level 1.0 and a
  name); ``regexp_find`` is a condition for other scanners:
  ``regexp_find(r'(?im)^Subject: .*invoice', clamd(...), where='headers')``.
  Envelope fields are matched ignoring case unless ``flags`` are given;
* ``sql_find(query, *scanners, db=None, url=None, invert=False)``: the query
  finds a row.  It is a SELECT with bound parameters only (``:sender``,
  ``:recipient``..., :data:`PARAMETERS`), never a string built from the mail:
  ``sql_find("SELECT 1 FROM blocked WHERE address = :sender", const(1.0, 'Blocked'))``.
  A query naming a recipient parameter runs once per recipient and is found
  when it finds a row for any of them.  "Found" is a first row whose first
  value is not empty (NULL, 0, false, ''), so ``SELECT count(*) ...`` works
  too.  The database is ``db=`` (a :class:`~mailsift.storage.db.Database`,
  default the config's ``DATABASE``), or ``url=`` a database of your own
  (``'postgresql+psycopg://mail@db/users'``), read only and never migrated;
* ``check_level(level, *scanners, maximum=None)``: the scanners' result has a
  level of at least ``level`` (and under ``maximum``, when given).  The result
  is then a detection (level ``max(level, 1.0)``, the name kept) and below it
  clean, so a spam engine's scale can be cut anywhere:
  ``quarantine('spam', check_level(0.6, spamassassind(...)))``.

A failed lookup (the database down) is a :class:`~mailsift.errors.DatabaseError`:
the message is tempfailed (451) unless ``recover``/``alternatives`` catch it.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, TextClause, create_engine, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from mailsift.errors import ConfigError, DatabaseError
from mailsift.message.result import DETECTED, Result
from mailsift.scanners import work
from mailsift.scanners.base import Interscanner, Target
from mailsift.scanners.basic import _THREAD_THRESHOLD
from mailsift.settings import Settings
from mailsift.storage.db import Database
from mailsift.validators import number, positive


def configure_once(database: Database, settings: Settings) -> None:
    """A ``db=`` that is not the config's ``DATABASE``: its default path under ``STATE_DIR``."""
    try:
        database.url  # noqa: B018 - configured already (DATABASE, or a URL)
    except ConfigError:
        database.configure(settings.state_dir)


# --------------------------------------------------------------------------- regexp_find

WHERE = ("data", "headers", "sender", "recipient", "helo", "client_address", "client_name")
"""What ``regexp_find`` searches (``where=``)."""


def _envelope_texts(target: Target, where: str) -> list[str]:
    envelope = target.mail.envelope
    if where == "recipient":
        return list(envelope.recipients)
    return [str(getattr(envelope, where))]


def _header_block(data: bytes) -> bytes:
    end = min((i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i != -1), default=len(data))
    return data[:end]


class regexp_find(Interscanner):
    """Run the scanners only when a regular expression is found (see the module's text)."""

    name = "regexp_find"

    def __init__(self, regexp: Any, *scanners: Any, where: str = "data", invert: bool = False, flags: int = 0) -> None:
        if where not in WHERE:
            raise ConfigError(f"regexp_find: where must be one of {', '.join(WHERE)}; got {where!r}")
        self.where, self.invert = where, bool(invert)
        try:
            if where in ("data", "headers"):
                raw = regexp.encode() if isinstance(regexp, str) else regexp
                if not isinstance(raw, bytes):
                    raise TypeError("expected str or bytes")
                self.bytes_pattern: re.Pattern[bytes] | None = re.compile(raw, flags)
                self.text_pattern: re.Pattern[str] | None = None
            else:
                if not isinstance(regexp, str):
                    raise TypeError("expected str")
                self.text_pattern, self.bytes_pattern = re.compile(regexp, flags or re.IGNORECASE), None
        except (re.error, TypeError) as error:
            raise ConfigError(f"regexp_find: bad regular expression {regexp!r}: {error}") from None
        self.regexp = regexp
        super().__init__(*scanners)

    def describe(self) -> str:
        pattern = self.regexp if isinstance(self.regexp, str) else self.regexp.decode("latin-1")
        return f"regexp_find({'not ' if self.invert else ''}{pattern!r} in {self.where})"

    async def found(self, target: Target) -> bool:
        if self.text_pattern is not None:
            pattern = self.text_pattern
            return any(pattern.search(value) for value in _envelope_texts(target, self.where))
        assert self.bytes_pattern is not None
        data = target.data
        if self.where == "headers":
            data = _header_block(data)
        search = self.bytes_pattern.search
        if len(data) > _THREAD_THRESHOLD:
            return await work.in_thread(lambda: search(data) is not None)
        return search(data) is not None

    async def scan(self, target: Target) -> Result:
        if await self.found(target) == self.invert:
            what = "found" if self.invert else "not found"
            return Result(0.0, "", self.name, f"{self.describe()}: {what}; not run")
        return await self.inner(target)


# --------------------------------------------------------------------------- sql_find

PARAMETERS = (
    "sender",
    "sender_local",
    "sender_domain",
    "recipient",
    "recipient_local",
    "recipient_domain",
    "client_address",
    "client_name",
    "helo",
    "queue_id",
)
"""The bound parameters a ``sql_find`` query may name (``:sender``...): lower-cased envelope values."""
_PER_RECIPIENT = {"recipient", "recipient_local", "recipient_domain"}
_READ_ONLY = re.compile(r"^\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*(select|with|values)\b", re.IGNORECASE | re.DOTALL)


def _split(address: str) -> tuple[str, str]:
    local, at, domain = address.rpartition("@")
    return (local, domain) if at else (address, "")


def bound_values(target: Target, recipient: str | None) -> dict[str, str]:
    """The parameters' values for one lookup (``recipient`` None: none in this envelope)."""
    envelope = target.mail.envelope
    sender = envelope.sender.lower()
    values = {
        "sender": sender,
        "sender_local": _split(sender)[0],
        "sender_domain": _split(sender)[1],
        "client_address": envelope.client_address,
        "client_name": envelope.client_name.lower(),
        "helo": envelope.helo.lower(),
        "queue_id": envelope.queue_id,
    }
    rcpt = (recipient or "").lower()
    values.update(recipient=rcpt, recipient_local=_split(rcpt)[0], recipient_domain=_split(rcpt)[1])
    return values


def _found(connection: Connection, statement: TextClause, rows: list[dict[str, str]]) -> str | None:
    """The first parameter set whose query finds a row (its recipient, or ''), else None."""
    for values in rows:
        row = connection.execute(statement, values).first()
        if row is not None and row[0] not in (None, 0, False, "", b""):
            return values["recipient"]
    return None


class _ForeignDatabase:
    """A database of the admin's own (``sql_find(url=...)``): read only, never migrated, one engine per process."""

    def __init__(self, url: str, busy_timeout: float) -> None:
        try:
            self.url = make_url(url)
        except (ArgumentError, ValueError, TypeError) as error:
            raise ConfigError(f"sql_find: bad URL {url!r}: {error}") from None
        self.busy_timeout = busy_timeout
        self._engine: Engine | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def describe(self) -> str:
        return self.url.render_as_string(hide_password=True)

    def check_driver(self) -> None:
        try:
            self.url.get_dialect().import_dbapi()
        except (ImportError, NoSuchModuleError) as error:
            raise ConfigError(f"sql_find: the driver of {self.describe()} is not installed ({error})") from None

    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None or self._pid != os.getpid():
                backend = self.url.get_backend_name()
                if backend == "sqlite":
                    args: dict[str, Any] = {"timeout": self.busy_timeout}
                elif backend == "postgresql":  # a lookup never waits longer than busy_timeout
                    ms = int(self.busy_timeout * 1000)
                    args = {
                        "connect_timeout": max(2, round(self.busy_timeout)),
                        "options": f"-c statement_timeout={ms} -c lock_timeout={ms}",
                    }
                else:
                    args = {}
                self._engine = create_engine(self.url, connect_args=args, pool_pre_ping=True)
                self._pid = os.getpid()
            return self._engine

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            with self.engine().connect() as connection:
                try:
                    return function(connection, *args)
                finally:
                    connection.rollback()  # read only: nothing is ever committed
        except SQLAlchemyError as error:
            original = getattr(error, "orig", None)
            message = str(original if original is not None else error).splitlines()[0]
            raise DatabaseError(f"sql_find: database {self.describe()}: {message}") from error

    def dispose(self) -> None:
        with self._lock:
            if self._engine is not None and self._pid == os.getpid():
                self._engine.dispose()
            self._engine = None


class sql_find(Interscanner):
    """Run the scanners only when a SQL query finds a row (see the module's text)."""

    name = "sql_find"

    def __init__(
        self,
        query: str,
        *scanners: Any,
        db: Database | None = None,
        url: str | None = None,
        invert: bool = False,
        busy_timeout: float = 5.0,
    ) -> None:
        if not isinstance(query, str) or not _READ_ONLY.match(query):
            raise ConfigError(f"sql_find: the query must be a SELECT (or WITH/VALUES), got {query!r}")
        try:
            self.statement = text(query)
        except (ArgumentError, TypeError) as error:
            raise ConfigError(f"sql_find: bad query {query!r}: {error}") from None
        names = set(self.statement._bindparams)
        unknown = sorted(names - set(PARAMETERS))
        if unknown:
            raise ConfigError(
                f"sql_find: unknown parameter(s) {', '.join(':' + n for n in unknown)} in {query!r}; "
                f"use {', '.join(':' + p for p in PARAMETERS)}"
            )
        if db is not None and url is not None:
            raise ConfigError("sql_find: give db= or url=, not both")
        if db is not None and not isinstance(db, Database):
            raise ConfigError(f"sql_find: db must be a database like DATABASE or db.sqlite(), got {db!r}")
        if url is not None and not isinstance(url, str):
            raise ConfigError(f"sql_find: url must be a SQLAlchemy URL string, got {url!r}")
        self.query = query
        self.per_recipient = bool(names & _PER_RECIPIENT)
        self.database = db
        self.config_database: Database | None = None
        self.foreign = (
            None
            if url is None
            else _ForeignDatabase(url, positive(busy_timeout, "sql_find: busy_timeout", unit="number of seconds"))
        )
        if self.foreign is not None:
            self.foreign.check_driver()
        self.invert = bool(invert)
        super().__init__(*scanners)

    def bind_settings(self, settings: Settings) -> None:
        self.config_database = settings.database
        if self.database is not None:
            configure_once(self.database, settings)

    def describe(self) -> str:
        where = self.foreign.describe() if self.foreign is not None else "DATABASE"
        return f"sql_find({'not ' if self.invert else ''}{self.query!r} in {where})"

    async def lookup(self, target: Target) -> str | None:
        """The recipient (or '') for which the query found a row; None when it found none."""
        recipients = target.mail.envelope.recipients if self.per_recipient else [None]
        rows = [bound_values(target, recipient) for recipient in recipients]
        if not rows:
            return None
        if self.foreign is not None:
            found: str | None = await asyncio.to_thread(self.foreign.call, _found, self.statement, rows)
            return found
        database = self.database if self.database is not None else self.config_database
        if database is None:
            raise DatabaseError("sql_find: no database (load a config with DATABASE, or pass db= or url=)")
        return await database.run(_found, self.statement, rows)

    async def scan(self, target: Target) -> Result:
        found = await self.lookup(target)
        if (found is not None) == self.invert:
            what = "found" if self.invert else "not found"
            return Result(0.0, "", self.name, f"{self.describe()}: {what}; not run")
        return await self.inner(target)

    async def close_resources(self) -> None:
        if self.foreign is not None:
            self.foreign.dispose()


# --------------------------------------------------------------------------- check_level


class check_level(Interscanner):
    """A detection when the scanners' level is at least ``level`` (and under ``maximum``)."""

    name = "check_level"

    def __init__(self, level: Any, *scanners: Any, maximum: Any = None) -> None:
        self.level = number(level, "check_level: level")
        self.maximum = None if maximum is None else number(maximum, "check_level: maximum")
        if self.maximum is not None and self.maximum <= self.level:
            raise ConfigError(f"check_level: maximum ({maximum!r}) must be above level ({level!r})")
        super().__init__(*scanners)

    def describe(self) -> str:
        upper = f", maximum={self.maximum:g}" if self.maximum is not None else ""
        return f"check_level({self.level:g}{upper})"

    async def scan(self, target: Target) -> Result:
        result = await self.inner(target)
        inside = result.level >= self.level and (self.maximum is None or result.level < self.maximum)
        note = f"level {result.level:.2f} {'within' if inside else 'outside'} {self.describe()}"
        detail = f"{result.detail}; {note}" if result.detail else note
        if inside:
            return Result(max(result.level, DETECTED), result.name or "Level", result.scanner, detail, result.actions)
        return Result(0.0, "", result.scanner, detail)  # clean: the inner actions no longer apply


__all__ = ["PARAMETERS", "WHERE", "check_level", "regexp_find", "sql_find"]
