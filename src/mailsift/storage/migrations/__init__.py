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
"""

from __future__ import annotations

import logging
import os

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

BASE = "0001"
"""The first revision (greylisting's tables); a feature's first revision builds on it."""


def config(connection: Connection | None = None) -> Config:
    """An Alembic config for this package, bound to ``connection`` when given."""
    cfg = Config()
    cfg.set_main_option("script_location", os.path.dirname(os.path.abspath(__file__)))
    cfg.attributes["connection"] = connection
    return cfg


class _UpgradesOnly(logging.Filter):
    """Alembic's INFO lines, less its chatter: only "Running upgrade ..." is worth a log line
    (the supervisor checks the schema on every start and reload)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.getMessage().startswith("Running upgrade")


_QUIET = _UpgradesOnly()


def upgrade(connection: Connection) -> None:
    """Apply every missing revision (to all heads) inside ``connection``'s transaction."""
    for name in ("alembic.runtime.migration", "alembic.runtime.plugins"):
        logger = logging.getLogger(name)
        if _QUIET not in logger.filters:
            logger.addFilter(_QUIET)
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7366518)")  # one upgrader at a time
    command.upgrade(config(connection), "heads")
