"""The database layer (SQLAlchemy Core): greylist and auto-whitelist state.

A config names its database as SAGATOR's did (``db.sqlite()``)::

    smtpd_policy(POLICY_SCANNERS, db.sqlite(), '127.0.0.1', 10031)     # STATE_DIR/mailsift.db
    db.sqlite('/var/lib/mailsift/policy.db')
    db.database('postgresql+psycopg://mailsift@dbhost/mailsift')       # several gateways share it

A :class:`Database` is a description until a worker process first uses it:
engines (and their connections) are created per process, never shared across
the supervisor's fork.  The tables are declared in :mod:`mailsift.storage.schema`.

Correct under several workers:

* every change is one atomic statement (:func:`mailsift.storage.sql.upsert`:
  ``INSERT ... ON CONFLICT DO UPDATE`` with the arithmetic done by the database,
  ``RETURNING`` the new row), so concurrent workers never lose an increment,
  on SQLite and PostgreSQL alike;
* SQLite runs in WAL mode with a busy timeout, and each transaction starts
  with ``BEGIN IMMEDIATE`` (SQLAlchemy's documented pysqlite recipe): a
  transaction that reads and then writes can never fail half-way with
  "database is locked" when another process wrote in between, it waits for
  the write lock up front instead.

Database errors are converted here, at the boundary, into
:class:`DatabaseError` (a :class:`~mailsift.errors.ScannerUnavailable`), so the
policy service answers its configured failure action.  Calls run in a thread
(``asyncio.to_thread``): no async driver is installed, and the event loop must
never block on a lock or a network round trip.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import and_, case, create_engine, delete, event, or_, select, update
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from mailsift import validators
from mailsift.errors import ConfigError, DatabaseError
from mailsift.storage.schema import auto_whitelist_table, greylist_table
from mailsift.storage.sql import upsert

T = TypeVar("T")
log = logging.getLogger("mailsift.db")


class Flag:
    """Set once, read from any thread: a message given up (lighter than a ``threading.Event``,
    which the mail path would build per message; nothing waits on it)."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


ABANDONED: contextvars.ContextVar[Flag | None] = contextvars.ContextVar("mailsift_db_abandoned", default=None)
"""Set by the mail path (:mod:`mailsift.core.deadline`) around one message's database work:
statements are bounded by ``busy_timeout``, and once the event is set (the message's deadline
passed and the MTA got 451) a transaction still running rolls back instead of committing."""

DEFAULT_FILENAME = "mailsift.db"
SUPPORTED = ("sqlite", "postgresql")
"""Dialects with ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` (atomic upserts)."""


# --------------------------------------------------------------------------- database


class Database:
    """A database connection description: ``sqlite(path)`` or ``database(url)``.

    ``busy_timeout`` (seconds) bounds how long a statement waits for another
    process's lock (SQLite) or for a connection (PostgreSQL connect timeout,
    and the pool); past it the call fails with :class:`DatabaseError`.
    """

    def __init__(self, url: str | None = None, *, path: str | None = None, busy_timeout: float = 5.0) -> None:
        self.busy_timeout = validators.positive(busy_timeout, "database: busy_timeout", unit="number of seconds")
        self.path = path
        self._url: URL | None = None
        if url is not None:
            try:
                self._url = make_url(url)
            except (ArgumentError, ValueError, TypeError) as error:
                raise ConfigError(f"database: bad URL {url!r}: {error}") from None
            if self._url.get_backend_name() not in SUPPORTED:
                raise ConfigError(
                    f"database: {self._url.get_backend_name()!r} is not supported; use sqlite or postgresql"
                )
        self._engine: Engine | None = None
        self._pid = 0
        self._ready = False
        self._lock = threading.Lock()

    # ---- configuration

    def configure(self, state_dir: str) -> None:
        """Resolve the default SQLite path under ``state_dir``; check the driver is installed."""
        if self._url is None or self.path is not None:  # sqlite(path): under STATE_DIR unless absolute
            path = self.path or DEFAULT_FILENAME
            path = os.path.join(state_dir, path) if not os.path.isabs(path) else path
            self._url = URL.create("sqlite", database=path)
        try:
            self._url.get_dialect().import_dbapi()
        except (ImportError, NoSuchModuleError) as error:
            raise ConfigError(
                f"database {self.describe()}: its driver is not installed ({error}); "
                "for PostgreSQL install psycopg and use postgresql+psycopg://..."
            ) from None

    @property
    def url(self) -> URL:
        if self._url is None:
            raise ConfigError("database: not configured (call configure(state_dir) first)")
        return self._url

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    def describe(self) -> str:
        if self._url is None:
            return f"sqlite({self.path or 'STATE_DIR/' + DEFAULT_FILENAME})"
        return self._url.render_as_string(hide_password=True)

    # ---- engine (one per process)

    @property
    def engine(self) -> Engine:
        """This process's engine, created on first use (a forked worker gets its own)."""
        with self._lock:
            if self._engine is None or self._pid != os.getpid():
                if self._engine is not None:
                    self._engine.dispose(close=False)  # the parent's connections: leave them to the parent
                self._engine = self._create_engine()
                self._pid = os.getpid()
                self._ready = False
            return self._engine

    def _create_engine(self) -> Engine:
        if self.dialect == "sqlite":
            engine = create_engine(self.url, connect_args={"timeout": self.busy_timeout})
            timeout_ms = int(self.busy_timeout * 1000)

            @event.listens_for(engine, "connect")
            def _on_connect(dbapi_connection: Any, record: Any) -> None:
                # The driver must not open transactions by itself: "begin" below does it.
                dbapi_connection.isolation_level = None
                cursor = dbapi_connection.cursor()
                cursor.execute(f"PRAGMA busy_timeout = {timeout_ms}")
                cursor.execute("PRAGMA journal_mode = WAL")
                # NORMAL in WAL mode: durable against crashes of the process; on a power loss
                # the last transactions may go, which for greylisting means one more retry.
                cursor.execute("PRAGMA synchronous = NORMAL")
                cursor.close()

            @event.listens_for(engine, "begin")
            def _on_begin(connection: Connection) -> None:
                connection.exec_driver_sql("BEGIN IMMEDIATE")

            return engine
        return create_engine(
            self.url,
            connect_args=self._connect_args(),
            pool_timeout=self.busy_timeout,
            pool_pre_ping=True,  # a pooled connection the server closed (restart, failover) is replaced
        )

    def _connect_args(self) -> dict[str, Any]:
        """libpq's bounds for PostgreSQL, unless the URL sets them: a connect that gets no answer
        ends after ``busy_timeout`` (at least 2 s, libpq's floor), and TCP keepalives notice a
        server that vanished (a failover that moved its address) within about half a minute,
        instead of the kernel's two hours."""
        wanted: dict[str, Any] = {
            "connect_timeout": max(2, round(self.busy_timeout)),
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        return {key: value for key, value in wanted.items() if key not in self.url.query}

    def setup(self) -> None:
        """Bring the schema up to date (Alembic, :mod:`mailsift.storage.migrations`), once per process.

        The upgrade runs in one transaction under a lock (SQLite's BEGIN
        IMMEDIATE, PostgreSQL's advisory lock): workers and gateways starting
        together take turns, and the later ones find nothing left to do.  A
        schema marked incompatible with this code raises
        :class:`~mailsift.storage.migrations.SchemaTooNew` (a DatabaseError, one line).
        """
        engine = self.engine
        if self._ready:
            return
        from mailsift.storage import migrations

        with engine.begin() as connection:
            migrations.upgrade(connection, f"database {self.describe()}")
        self._ready = True

    def schema(self) -> Any:
        """The schema's :class:`~mailsift.storage.migrations.SchemaState` (reads only); DatabaseError if unreachable."""
        from mailsift.storage import migrations

        try:
            with self.engine.connect() as connection:
                return migrations.state(connection)
        except SQLAlchemyError as error:
            raise DatabaseError(f"database {self.describe()}: {_short(error)}") from error

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(connection, *args)`` in one transaction; errors become DatabaseError.

        On the message path (:data:`ABANDONED` set) each statement is bounded
        by ``busy_timeout`` (PostgreSQL's ``statement_timeout`` and
        ``lock_timeout``; SQLite's busy timeout always), and a transaction whose
        message was answered meanwhile rolls back instead of committing.

        A connection lost while ``function`` ran (the server restarted, failed
        over, or ended the session: ``pg_terminate_backend``) is tried once
        more on a new connection: the transaction never reached its commit, so
        the server kept none of it.  A connection lost during the commit is not
        retried (its outcome is unknown) and becomes DatabaseError like any
        other failure.
        """
        abandoned = ABANDONED.get()
        try:
            return self._transaction(function, args, abandoned)
        except _Disconnected as lost:
            if abandoned is not None and abandoned.is_set():
                raise DatabaseError(f"database {self.describe()}: {_short(lost.error)}") from lost.error
            log.warning("database %s: connection lost (%s); trying once more", self.describe(), _short(lost.error))
        try:
            return self._transaction(function, args, abandoned)
        except _Disconnected as lost:
            raise DatabaseError(f"database {self.describe()}: {_short(lost.error)}") from lost.error

    def _transaction(self, function: Callable[..., T], args: tuple[Any, ...], abandoned: Flag | None) -> T:
        """One try of :meth:`call`; :class:`_Disconnected` if the connection died before the commit."""
        try:
            self.setup()
            with self.engine.begin() as connection:
                try:
                    if abandoned is not None and self.dialect == "postgresql":
                        ms = int(self.busy_timeout * 1000)
                        connection.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}; SET LOCAL lock_timeout = {ms}")
                    result = function(connection, *args)
                except DBAPIError as error:
                    if error.connection_invalidated:
                        raise _Disconnected(error) from error
                    raise
                if abandoned is not None and abandoned.is_set():
                    raise DatabaseError(f"database {self.describe()}: its message gave up meanwhile: rolled back")
                return result
        except SQLAlchemyError as error:
            raise DatabaseError(f"database {self.describe()}: {_short(error)}") from error
        except OSError as error:
            raise DatabaseError(f"database {self.describe()}: {error}") from error

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """:meth:`call` in a worker thread, so the event loop never waits on the database."""
        return await asyncio.to_thread(self.call, function, *args)

    def migrate(self) -> None:
        """Create or upgrade the schema and check the database answers; DatabaseError if not."""
        self.call(_nothing)

    async def prepare(self) -> None:
        """:meth:`migrate` in a thread."""
        await asyncio.to_thread(self.migrate)

    def dispose(self) -> None:
        """Close this process's pooled connections (when a worker drains)."""
        with self._lock:
            if self._engine is not None and self._pid == os.getpid():
                self._engine.dispose()
            self._engine = None
            self._ready = False


class _Disconnected(DatabaseError):
    """Internal to :meth:`Database.call`: the connection died before the commit (tried once more)."""

    def __init__(self, error: DBAPIError) -> None:
        super().__init__(_short(error))
        self.error = error


def _nothing(connection: Connection) -> None:
    """A transaction that does nothing: proves the database is reachable."""


def _short(error: SQLAlchemyError) -> str:
    """The driver's own message, without SQLAlchemy's statement dump and help link."""
    original = getattr(error, "orig", None)
    return str(original if original is not None else error).splitlines()[0]


def sqlite(path: str | None = None, *, busy_timeout: float = 5.0) -> Database:
    """SAGATOR's ``db.sqlite()``: a SQLite file, ``STATE_DIR/mailsift.db`` by default.

    A relative ``path`` is taken under ``STATE_DIR``.
    """
    if path is not None and (not isinstance(path, str) or not path):
        raise ConfigError(f"sqlite: path must be a file name, got {path!r}")
    return Database(path=path or None, busy_timeout=busy_timeout)


def database(url: str, *, busy_timeout: float = 5.0) -> Database:
    """A database by SQLAlchemy URL: ``database('postgresql+psycopg://user@host/name')``."""
    if not isinstance(url, str) or not url:
        raise ConfigError(f"database: url must be a string like 'postgresql+psycopg://...', got {url!r}")
    return Database(url, busy_timeout=busy_timeout)


# --------------------------------------------------------------------------- greylist state


@dataclass(frozen=True, slots=True)
class GreylistRules:
    """Times in seconds, checked by the ``greylist`` scanner."""

    delay: float
    """A triplet passes once its first sighting is at least this old (``min``)."""
    retry_window: float
    """A triplet never passed and first seen longer ago than this starts over (``expire``)."""
    max_age: float
    """A passed triplet or whitelisted network unused this long starts over."""
    auto_whitelist: int
    """Passes after which the client network skips greylisting (0: never)."""


@dataclass(frozen=True, slots=True)
class GreylistState:
    """The state after one request was counted."""

    passed: bool
    whitelisted: bool
    first_seen: float
    deferred: int
    passes: int
    network_passes: int


def greylist_request(
    connection: Connection, network: str, sender: str, recipient: str, now: float, rules: GreylistRules
) -> GreylistState:
    """Count one request for a triplet and say whether it passes.

    A whitelisted network passes at once (its pass counted on the network).
    Otherwise one upsert counts the triplet: a first sighting (or one that
    starts over) is deferred; a later one passes once ``rules.delay`` has gone
    by since the first sighting, and each pass is counted on the network too.
    """
    awl = auto_whitelist_table.c
    if rules.auto_whitelist > 0:
        row = connection.execute(select(awl.passed, awl.last_seen).where(awl.network == network)).first()
        if row is not None and row.passed >= rules.auto_whitelist and row.last_seen >= now - rules.max_age:
            new = connection.execute(
                update(auto_whitelist_table)
                .where(awl.network == network)
                .values(passed=awl.passed + 1, last_seen=now)
                .returning(awl.passed)
            ).scalar_one()
            return GreylistState(True, True, now, 0, 0, new)
    grey = greylist_table.c
    restart = or_(
        and_(grey.passed == 0, grey.first_seen < now - rules.retry_window),
        and_(grey.passed > 0, grey.last_seen < now - rules.max_age),
    )
    # Clocks of concurrent workers differ by a little, and their requests reach the
    # database in another order than they read the clock: time never goes back
    # for a row (``latest``), and a triplet that passed stays passed.
    latest = case((grey.last_seen > now, grey.last_seen), else_=now)
    ready = or_(grey.passed > 0, grey.first_seen + rules.delay <= latest)
    first_seen, deferred, passes = upsert(
        connection,
        greylist_table,
        {
            "network": network,
            "sender": sender,
            "recipient": recipient,
            "first_seen": now,
            "last_seen": now,
            "deferred": 1,
            "passed": 0,
        },
        update={
            "first_seen": case((restart, now), else_=grey.first_seen),
            "last_seen": latest,
            "deferred": case((restart, 1), (ready, grey.deferred), else_=grey.deferred + 1),
            "passed": case((restart, 0), (ready, grey.passed + 1), else_=grey.passed),
        },
        returning=(grey.first_seen, grey.deferred, grey.passed),
    ).one()
    passed = passes > 0  # ``passed`` grows only once the delay is over, and then on every request
    network_passes = 0
    if passed and rules.auto_whitelist > 0:
        stale = awl.last_seen < now - rules.max_age
        network_passes = upsert(
            connection,
            auto_whitelist_table,
            {"network": network, "first_seen": now, "last_seen": now, "passed": 1},
            update={
                "passed": case((stale, 1), else_=awl.passed + 1),
                "first_seen": case((stale, now), else_=awl.first_seen),
                "last_seen": now,
            },
            returning=(awl.passed,),
        ).scalar_one()
    return GreylistState(passed, False, first_seen, deferred, passes, network_passes)


def greylist_purge(connection: Connection, now: float, rules: GreylistRules) -> int:
    """Delete triplets and networks that would start over anyway; returns rows deleted."""
    grey, awl = greylist_table.c, auto_whitelist_table.c
    removed = connection.execute(
        delete(greylist_table).where(
            or_(
                and_(grey.passed == 0, grey.first_seen < now - rules.retry_window),
                grey.last_seen < now - rules.max_age,
            )
        )
    ).rowcount
    removed += connection.execute(delete(auto_whitelist_table).where(awl.last_seen < now - rules.max_age)).rowcount
    return int(removed)
