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


class _UpgradesOnly(logging.Filter):
    """Alembic's INFO lines, less its chatter: only "Running upgrade ..." is worth a log line
    (the supervisor checks the schema on every start and reload; "setup plugin ..." comes as
    alembic is imported, hence the filters go on before the import below)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.getMessage().startswith("Running upgrade")


for _name in ("alembic.runtime.migration", "alembic.runtime.plugins"):
    logging.getLogger(_name).addFilter(_UpgradesOnly())

from alembic import command  # noqa: E402 - after the filters above
from alembic.config import Config  # noqa: E402
from sqlalchemy.engine import Connection  # noqa: E402

BASE = "0001"
"""The first revision (greylisting's tables); a feature's first revision builds on it."""


def config(connection: Connection | None = None) -> Config:
    """An Alembic config for this package, bound to ``connection`` when given."""
    cfg = Config()
    cfg.set_main_option("script_location", os.path.dirname(os.path.abspath(__file__)))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(connection: Connection) -> None:
    """Apply every missing revision (to all heads) inside ``connection``'s transaction."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7366518)")  # one upgrader at a time
    command.upgrade(config(connection), "heads")
