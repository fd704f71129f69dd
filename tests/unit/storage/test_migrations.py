"""The Alembic migrations build exactly the schema the code declares, and upgrading twice is harmless."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from mailsift.storage import migrations
from mailsift.storage.db import Database
from mailsift.storage.schema import metadata


def test_migrations_build_the_declared_schema(database: Database) -> None:
    engine = database.engine
    with engine.begin() as connection:
        migrations.upgrade(connection)
    with engine.begin() as connection:
        migrations.upgrade(connection)  # a second gateway or worker: nothing left to do
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == [], "a table or column without a migration (or the reverse): " + repr(differences)
    tables = set(inspect(engine).get_table_names())
    assert {"alembic_version", "greylist", "auto_whitelist"} <= tables
    assert tables == {*metadata.tables, "alembic_version"}


def test_every_feature_builds_on_the_base_revision() -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrations.config())
    bases = script.get_bases()
    assert bases == [migrations.BASE]  # one history; features branch from it and upgrade goes to every head


def test_the_log_names_each_revision_applied_and_nothing_else(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """The supervisor checks the schema on every start and reload: an upgrade is worth one line,
    naming the revisions applied; Alembic's own INFO lines ("Context impl", "Will assume ...",
    "setup plugin", a "Running upgrade" per revision: 11 lines for a new database, in the serve log
    of the child that migrates as USER) show only at DEBUG."""
    caplog.set_level(logging.INFO)  # the root logger at INFO, as `serve --log-level info`
    with database.engine.begin() as connection:
        migrations.upgrade(connection, "database test")
    first = [(r.name, r.getMessage()) for r in caplog.records]
    caplog.clear()
    with database.engine.begin() as connection:
        migrations.upgrade(connection, "database test")
    [(name, line)] = first
    assert name == "mailsift.storage.migrations"
    assert line.startswith("database test: schema created (revisions 0001, 0002, "), line
    assert "0010_websessions" in line
    assert [r.getMessage() for r in caplog.records] == []


def test_alembic_speaks_at_debug(database: Database, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # `serve --log-level debug`
    # ...in a fresh process; here an earlier in-process CLI test may have quieted "alembic" (QUIET_LOGGERS).
    caplog.set_level(logging.DEBUG, logger="alembic")
    with database.engine.begin() as connection:
        migrations.upgrade(connection)
    assert any(r.name == "alembic.runtime.migration" and "Running upgrade" in r.getMessage() for r in caplog.records)


def test_importing_the_migrations_logs_nothing() -> None:
    """Alembic logs "setup plugin ..." as it is imported: filtered before the import."""
    code = "import logging; logging.basicConfig(level=logging.INFO); import mailsift.storage.migrations"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stderr == ""


def test_0014_node_gives_older_rows_no_node_and_puts_the_node_in_the_stats_key(database: Database) -> None:
    """Rows written before 0014_node get node '' (unknown: the node that migrates did not write
    them all); afterwards two nodes' counts of one interval are two rows."""
    from alembic import command
    from sqlalchemy import text

    with database.engine.begin() as connection:
        command.upgrade(migrations.config(connection), "0003")
        command.upgrade(migrations.config(connection), "0007")
        connection.execute(
            text(
                "INSERT INTO stats_counter (period_start, domain, verdict, scanner, messages, recipients, bytes, "
                "scan_seconds) VALUES (300, '*', 'clean', '', 4, 4, 400, 1.5)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO maillog (time, queue_id, status, action, reply, level, name, scanner, relay_client, "
                "client_address, client_name, helo, elapsed, size, sender, recipient, subject, message_id, "
                "attachments, quarantine, note) VALUES (1.0, 'q', 'Clear', 'deliver', '250', 0, '', '', false, "
                "'', '', '', 0, 1, '', 'r@x', '', '', '[]', '', '')"
            )
        )
    with database.engine.begin() as connection:
        migrations.upgrade(connection)
    with database.engine.begin() as connection:
        assert connection.execute(text("SELECT node, messages, bytes FROM stats_counter")).all() == [("", 4, 400)]
        assert connection.execute(text("SELECT node FROM maillog")).all() == [("",)]
        connection.execute(
            text(
                "INSERT INTO stats_counter (period_start, domain, verdict, scanner, node, messages, recipients, "
                "bytes, scan_seconds) VALUES (300, '*', 'clean', '', 'alpha', 1, 1, 10, 0.1)"
            )
        )
    assert inspect(database.engine).get_pk_constraint("stats_counter")["constrained_columns"] == [
        "period_start",
        "domain",
        "verdict",
        "scanner",
        "node",
    ]
