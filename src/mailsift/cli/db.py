"""``mailsift db upgrade|current|history``: the database schema (Alembic, :mod:`mailsift.storage.migrations`).

``serve`` upgrades the schema on start (under a lock, so one node of several
does it); ``db upgrade`` does it explicitly, e.g. before starting the new
release's nodes.  ``db current`` shows the revisions the database holds
(also those of a newer mailsift) and what is pending; ``db history`` every
revision this code knows, with its description.  Exit status: 0 done, 2 a
config or database error (a schema marked incompatible with this code).
"""

from __future__ import annotations

import click

from mailsift.cli.common import config_option, fail, load_config
from mailsift.errors import DatabaseError
from mailsift.storage import migrations
from mailsift.storage.db import Database


def _database(config_path: str | None) -> Database:
    database = load_config(config_path, database_for="its schema").settings.database
    assert database is not None  # load_config checked it
    return database


def _describe(revision: str) -> str:
    """``0003_maillog: The message log ...`` (the first line of the revision's docstring)."""
    script = migrations.scripts()
    try:
        found = script.get_revision(revision)
    except Exception:  # noqa: BLE001 - alembic's own error for an unknown id
        found = None
    if found is None:
        return f"{revision}: unknown to mailsift (written by a newer release)"
    return f"{revision}: {(found.doc or '').strip().splitlines()[0] if found.doc else ''}"


@click.group("db")
def db_group() -> None:
    """The database schema: upgrade it, show its revisions."""


@db_group.command("upgrade")
@config_option
def upgrade_command(config_path: str | None) -> None:
    """Bring the schema to this release's revisions (what serve does on start)."""
    database = _database(config_path)
    try:
        before = database.schema()
        database.migrate()
        after = database.schema()
    except DatabaseError as error:
        fail(error.message)
    if before.unknown:
        click.echo(before.newer(f"database {database.describe()}"))
        return
    for revision in before.pending:
        click.echo(f"applied {_describe(revision)}")
    click.echo(f"database {database.describe()}: up to date ({', '.join(after.stored)})")


@db_group.command("current")
@config_option
def current_command(config_path: str | None) -> None:
    """The revisions the database holds (its heads), and what an upgrade would apply."""
    database = _database(config_path)
    try:
        found = database.schema()
    except DatabaseError as error:
        fail(error.message)
    where = f"database {database.describe()}"
    if not found.stored:
        click.echo(f"{where}: no schema yet (mailsift db upgrade, or serve, creates it)")
        return
    click.echo(f"{where}:")
    for revision in found.stored:
        click.echo(f"  {_describe(revision)}")
    if found.incompatible:
        click.echo(found.refusal(where))
    elif found.unknown:
        click.echo(found.newer(where))
    elif found.pending:
        click.echo(f"pending (mailsift db upgrade): {', '.join(found.pending)}")
    else:
        click.echo("up to date")


@db_group.command("history")
@config_option
def history_command(config_path: str | None) -> None:
    """Every revision this release knows, base first, marked [applied] when the database has it."""
    database = _database(config_path)
    try:
        found = database.schema()
    except DatabaseError as error:
        fail(error.message)
    script = migrations.scripts()
    done = migrations.applied(script, found.stored)
    for revision in reversed(list(script.walk_revisions())):
        mark = "[applied]" if revision.revision in done else "[pending]"
        down = revision.down_revision or "base"
        click.echo(f"{mark} {_describe(revision.revision)} (on {down})")
