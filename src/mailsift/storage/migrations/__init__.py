"""mailsift's database schema, as Alembic migrations.

Every database mailsift uses (SQLite in the state directory, or PostgreSQL)
is brought to the newest schema by :func:`upgrade` before first use, under a
lock (SQLite's ``BEGIN IMMEDIATE``, PostgreSQL's advisory lock), so workers
and gateways starting together never race.

Each feature owns its tables and its revision files in ``versions/``: a new
feature's first revision has ``down_revision = "0001"`` (the base), so
features may add revisions side by side; :func:`upgrade` goes to every head.
The tables and indexes they build are declared in
:mod:`mailsift.storage.schema` (on its :data:`~mailsift.storage.schema.metadata`);
a change to the schema is made there and in a new revision here, together.

Expand, then contract (docs/upgrading.md): within a major version a revision
only adds (new tables, nullable columns, indexes), so a node one release older
keeps working on the newer schema during a rolling upgrade.  Such a node finds
revision ids it does not know in ``alembic_version``: it warns and runs,
without upgrading.  A revision that removes or changes what older code uses
declares it with :func:`mark_incompatible` (a row in :data:`INCOMPATIBLE_TABLE`);
code that does not know that revision then refuses the database
(:class:`SchemaTooNew`, one line saying what to do) instead of failing on it.
"""

from __future__ import annotations

import logging
import os


class _QuietBelowDebug(logging.Filter):
    """Alembic's INFO lines ("Context impl", "Will assume ...", "setup plugin ...", one "Running
    upgrade" per revision) only when the log is at DEBUG: :func:`upgrade` says what it did in one
    line of its own.  On the loggers themselves, so every process that migrates (serve's
    supervisor, the child it runs as USER, a worker, a command) is quiet without any setup of its
    own; "setup plugin ..." comes as alembic is imported, hence the filters go on before the import below."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or logging.getLogger().isEnabledFor(logging.DEBUG)


for _name in ("alembic.runtime.migration", "alembic.runtime.plugins"):
    logging.getLogger(_name).addFilter(_QuietBelowDebug())

from dataclasses import dataclass  # noqa: E402

import sqlalchemy as sa  # noqa: E402
from alembic import command  # noqa: E402 - after the filters above
from alembic.config import Config  # noqa: E402
from alembic.script import Script, ScriptDirectory  # noqa: E402
from sqlalchemy.engine import Connection  # noqa: E402

from mailsift.errors import DatabaseError  # noqa: E402
from mailsift.version import __version__  # noqa: E402

log = logging.getLogger(__name__)

BASE = "0001"
"""The first revision (greylisting's tables); a feature's first revision builds on it."""

VERSION_TABLE = "alembic_version"
INCOMPATIBLE_TABLE = "mailsift_incompatible"
"""One row per revision that older code must not run on: ``revision``, ``min_version``
(the first mailsift release that knows it), ``reason``.  Only code that does not know
the revision reads it as a refusal."""

incompatible_table = sa.table(INCOMPATIBLE_TABLE, sa.column("revision"), sa.column("min_version"), sa.column("reason"))
"""Read and written here only; created by the first :func:`mark_incompatible` (Alembic's own
bookkeeping like ``alembic_version``, not a table of :mod:`mailsift.storage.schema`)."""


class SchemaTooNew(DatabaseError):
    """The database's schema declares itself incompatible with this (older) code."""


@dataclass(frozen=True)
class SchemaState:
    """What a database holds, compared with the revisions this code knows."""

    stored: tuple[str, ...]
    """The revision ids in ``alembic_version`` (the heads applied; empty: a new database)."""
    unknown: tuple[str, ...]
    """Stored revisions this code does not know: written by a newer mailsift."""
    incompatible: tuple[tuple[str, str, str], ...]
    """Of those, the ones marked incompatible: ``(revision, min_version, reason)``."""
    pending: tuple[str, ...]
    """Revisions this code knows and the database lacks (applied by ``upgrade``)."""

    def refusal(self, where: str) -> str:
        """The one line that says why this code must not use the database, and what to do."""
        revision, min_version, reason = self.incompatible[0]
        because = f" ({reason})" if reason else ""
        return (
            f"{where}: its schema (revision {revision}{because}) needs mailsift {min_version} or later, "
            f"this is {__version__}: upgrade mailsift on this node, or restore a backup taken before the upgrade"
        )

    def newer(self, where: str) -> str:
        return (
            f"{where}: its schema is newer than this mailsift {__version__} knows (revision "
            f"{', '.join(self.unknown)}), marked compatible: running on it; upgrade this node soon"
        )


def config(connection: Connection | None = None) -> Config:
    """An Alembic config for this package, bound to ``connection`` when given."""
    cfg = Config()
    cfg.set_main_option("script_location", os.path.dirname(os.path.abspath(__file__)))
    cfg.attributes["connection"] = connection
    return cfg


def scripts() -> ScriptDirectory:
    """The revisions this code knows."""
    return ScriptDirectory.from_config(config())


def applied(script: ScriptDirectory, heads: tuple[str, ...]) -> set[str]:
    """Every known revision at or below ``heads`` (what a database at those heads holds)."""
    done: set[str] = set()
    pending = [h for h in heads if _known(script, h)]
    while pending:
        revision = script.get_revision(pending.pop())
        if revision is None or revision.revision in done:
            continue
        done.add(revision.revision)
        pending.extend(_downs(revision))
    return done


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except Exception:  # noqa: BLE001 - alembic raises its own errors for unknown ids
        return False


def _downs(revision: Script) -> list[str]:
    """What ``revision`` stands on: its down revisions and its ``depends_on``."""
    found: list[str] = []
    for value in (revision.down_revision, revision.dependencies):
        if value:
            found.extend([value] if isinstance(value, str) else value)
    return found


def state(connection: Connection) -> SchemaState:
    """Compare the database's revisions with this code's (reads only)."""
    script = scripts()
    tables = set(sa.inspect(connection).get_table_names())
    stored: tuple[str, ...] = ()
    if VERSION_TABLE in tables:
        stored = tuple(sorted(connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalars()))
    unknown = tuple(r for r in stored if not _known(script, r))
    marked: tuple[tuple[str, str, str], ...] = ()
    if unknown and INCOMPATIBLE_TABLE in tables:
        c = incompatible_table.c
        rows = connection.execute(sa.select(c.revision, c.min_version, c.reason).where(c.revision.in_(unknown)))
        marked = tuple((row.revision, row.min_version, row.reason) for row in rows)
    known = {r.revision for r in script.walk_revisions()}
    pending = () if unknown else tuple(sorted(known - applied(script, stored)))
    return SchemaState(stored, unknown, marked, pending)


def upgrade(connection: Connection, where: str = "database") -> SchemaState:
    """Apply every missing revision (to all heads) inside ``connection``'s transaction.

    A database marked incompatible with this code raises :class:`SchemaTooNew`;
    a newer one that is not marked is used as it is (a warning, no upgrade).
    """
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7366518)")  # one upgrader at a time
    found = state(connection)
    if found.incompatible:
        raise SchemaTooNew(found.refusal(where))
    if found.unknown:
        log.warning("%s", found.newer(where))
        return found
    if found.pending:
        command.upgrade(config(connection), "heads")
        done = "schema created" if not found.stored else "schema upgraded"
        log.info("%s: %s (revisions %s)", where, done, ", ".join(found.pending))
    return found


def mark_incompatible(revision: str, min_version: str, reason: str = "") -> None:
    """For a contract revision's ``upgrade()``: code that does not know ``revision`` must refuse the database.

    Call it from inside the revision (it uses Alembic's ``op``), e.g.
    ``mark_incompatible(revision, "2.0", "message_log.detail dropped")``.
    """
    from alembic import op

    bind = op.get_bind()
    if INCOMPATIBLE_TABLE not in sa.inspect(bind).get_table_names():
        op.create_table(
            INCOMPATIBLE_TABLE,
            sa.Column("revision", sa.Text, primary_key=True),
            sa.Column("min_version", sa.Text, nullable=False),
            sa.Column("reason", sa.Text, nullable=False, server_default=""),
        )
    bind.execute(sa.insert(incompatible_table).values(revision=revision, min_version=min_version, reason=reason))
