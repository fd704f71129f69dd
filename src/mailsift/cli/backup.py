"""``mailsift backup FILE`` and ``mailsift restore FILE``: the whole state in one archive.

A backup is one tar file (mode 0600: it holds the web secret and the password
hashes) with, in this order:

* ``manifest.json``: the mailsift version, the database's dialect and schema revisions;
* ``database/mailsift.db``: a consistent snapshot of a SQLite database, taken
  with SQLite's online backup API while mailsift runs (copying the file loses
  what is still in ``-wal``), or ``database/postgresql.dump`` from ``pg_dump
  --format=custom`` when ``pg_dump`` is on PATH;
* ``state/quarantine/...``: the quarantined messages (taken after the database,
  so a message quarantined in between is a file without an index row, which
  ``restore`` adopts like ``quarantine reindex``);
* ``state/*.secret`` (``webq.secret``: the web sessions and the digest's
  links) and ``state/mail.json`` when present.

``restore`` puts them into an empty ``STATE_DIR`` and, for PostgreSQL, an empty
database (refusing one that holds anything unless ``--force``), then brings the schema up to this release's
(``db upgrade``) and adopts quarantined files without an index row.
Exit status: 0 done, 2 an error.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator

import click

from mailsift.cli.common import config_option, fail, load_config
from mailsift.config import Config
from mailsift.errors import DatabaseError, MailsiftError
from mailsift.storage.db import Database
from mailsift.storage.quarantine.admin import reindex
from mailsift.version import __version__

SQLITE_MEMBER = "database/mailsift.db"
POSTGRES_MEMBER = "database/postgresql.dump"
STATE_FILES = ("mail.json",)
"""Files of ``STATE_DIR`` kept beside the ``*.secret`` ones when present."""
PG_DUMP_HELP = (
    "pg_dump is not on PATH: install PostgreSQL's client tools (Debian: postgresql-client), "
    "or dump by hand with `pg_dump --format=custom` and keep that file with the backup (docs/upgrading.md)"
)


def _database(config: Config) -> Database:
    database = config.settings.database
    if database is None:
        fail("the config has no DATABASE")
    return database


def _state_files(state_dir: str) -> Iterator[str]:
    """The secrets and the other small files of ``STATE_DIR`` a backup keeps (names)."""
    try:
        names = sorted(os.listdir(state_dir))
    except OSError:
        return
    for name in names:
        if (name.endswith(".secret") or name in STATE_FILES) and os.path.isfile(os.path.join(state_dir, name)):
            yield name


def _snapshot_sqlite(database: Database, target: str) -> None:
    """SQLite's online backup API: a consistent copy, whatever is still in ``-wal``."""
    path = database.url.database or ""
    if not os.path.exists(path):
        fail(f"database {database.describe()}: no such file (nothing to back up yet)")
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=database.busy_timeout)
    copy = sqlite3.connect(target)
    try:
        source.backup(copy)
        copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file in the archive
    finally:
        copy.close()
        source.close()


def _tool_error(tool: str, stderr: str) -> str:
    """One line for a failed pg_dump or pg_restore: its last line, and what to do about a version mismatch."""
    lines = stderr.strip().splitlines()
    said = lines[-1].strip() if lines else "no message"
    if "version mismatch" in stderr:
        said += (
            f"; use the {tool} of the server's major version or newer, first on PATH "
            "(Debian: PATH=/usr/lib/postgresql/<major>/bin:$PATH)"
        )
    return f"{tool} failed: {said}"


def _libpq_url(database: Database) -> str:
    """The URL as libpq takes it (``postgresql://``, without SQLAlchemy's ``+psycopg``)."""
    return database.url.set(drivername="postgresql").render_as_string(hide_password=False)


def _dump_postgres(database: Database, target: str) -> None:
    if shutil.which("pg_dump") is None:
        fail(f"database {database.describe()}: {PG_DUMP_HELP}")
    done = subprocess.run(
        ["pg_dump", "--format=custom", "--no-owner", f"--file={target}", f"--dbname={_libpq_url(database)}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        fail(f"database {database.describe()}: {_tool_error('pg_dump', done.stderr)}")


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
    archive.addfile(info, io.BytesIO(data))


@click.command("backup")
@config_option
@click.argument("file", type=click.Path(dir_okay=False))
def backup_command(config_path: str | None, file: str) -> None:
    """Write the database (a consistent snapshot), the quarantine and the secrets to FILE (a tar, 0600).

    Safe while mailsift runs.  Restore it with `mailsift restore FILE`, on this
    machine or another one.
    """
    config = load_config(config_path, database_for="what is backed up")
    settings = config.settings
    database = _database(config)
    if database.dialect != "sqlite" and shutil.which("pg_dump") is None:  # said before connecting
        fail(f"database {database.describe()}: {PG_DUMP_HELP}")
    try:
        schema = database.schema()
    except DatabaseError as error:
        fail(error.message)
    manifest = {
        "mailsift": __version__,
        "created": time.time(),
        "dialect": database.dialect,
        "revisions": list(schema.stored),
    }
    directory = os.path.dirname(os.path.abspath(file))
    with tempfile.TemporaryDirectory(prefix="mailsift-backup-") as work:
        partial = tempfile.NamedTemporaryFile(dir=directory, prefix=".mailsift-backup-", delete=False)  # noqa: SIM115
        try:
            os.fchmod(partial.fileno(), 0o600)
            with partial, tarfile.open(fileobj=partial, mode="w") as archive:
                _add_bytes(archive, "manifest.json", json.dumps(manifest, indent=1).encode())
                if database.dialect == "sqlite":
                    snapshot = os.path.join(work, "mailsift.db")
                    _snapshot_sqlite(database, snapshot)
                    archive.add(snapshot, SQLITE_MEMBER)
                else:
                    dump = os.path.join(work, "postgresql.dump")
                    _dump_postgres(database, dump)
                    archive.add(dump, POSTGRES_MEMBER)
                if os.path.isdir(settings.quarantine_dir):  # after the database: see the module's docstring
                    archive.add(settings.quarantine_dir, "state/quarantine")
                for name in _state_files(settings.state_dir):
                    archive.add(os.path.join(settings.state_dir, name), f"state/{name}")
                partial.flush()
                os.fsync(partial.fileno())
            os.replace(partial.name, file)
        except BaseException:
            os.unlink(partial.name)
            raise
    click.echo(
        f"backed up {database.describe()} (schema {', '.join(schema.stored) or 'empty'}), "
        f"the quarantine and {', '.join(_state_files(settings.state_dir)) or 'no secrets'} to {file}"
    )


# --------------------------------------------------------------------------- restore


def _occupied(config: Config) -> list[str]:
    """What in ``STATE_DIR`` (and the SQLite database) a restore would overwrite."""
    settings = config.settings
    found: list[str] = []
    for folder, _dirs, files in os.walk(settings.state_dir):
        found.extend(os.path.join(folder, name) for name in files)
    database = settings.database
    if database is not None and database.dialect == "sqlite":
        path = database.url.database or ""
        if os.path.exists(path) and path not in found:
            found.append(path)
    return found


def _members(archive: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The archive's members, checked: regular files and directories under the known names only."""
    members = archive.getmembers()
    for member in members:
        name = member.name
        parts = name.split("/")
        allowed = name in {"manifest.json", SQLITE_MEMBER, POSTGRES_MEMBER} or parts[0] == "state"
        if not allowed or name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
            fail(f"not a mailsift backup: unexpected member {name!r}")
    return members


def _restore_state(archive: tarfile.TarFile, members: list[tarfile.TarInfo], state_dir: str) -> None:
    for member in members:
        if not member.name.startswith("state/"):
            continue
        target = os.path.join(state_dir, member.name.removeprefix("state/"))
        if member.isdir():
            os.makedirs(target, mode=0o750, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(target), mode=0o750, exist_ok=True)
        source = archive.extractfile(member)
        assert source is not None  # a regular file
        with source, open(target, "wb", opener=lambda path, flags: os.open(path, flags, 0o600)) as handle:
            shutil.copyfileobj(source, handle)
            handle.flush()
            os.fsync(handle.fileno())


def _restore_sqlite(archive: tarfile.TarFile, database: Database) -> None:
    path = database.url.database or ""
    for suffix in ("-wal", "-shm", ""):  # a --force restore: no stale -wal may replay over the snapshot
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    source = archive.extractfile(SQLITE_MEMBER)
    assert source is not None
    os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
    with source, open(path, "wb", opener=lambda p, flags: os.open(p, flags, 0o640)) as handle:
        shutil.copyfileobj(source, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _restore_postgres(archive: tarfile.TarFile, database: Database) -> None:
    if shutil.which("pg_restore") is None:
        fail(f"database {database.describe()}: {PG_DUMP_HELP.replace('pg_dump is', 'pg_restore is')}")
    with tempfile.TemporaryDirectory(prefix="mailsift-restore-") as work:
        archive.extract(POSTGRES_MEMBER, work)
        done = subprocess.run(
            [
                "pg_restore",
                "--clean",
                "--if-exists",
                "--no-owner",
                f"--dbname={_libpq_url(database)}",
                os.path.join(work, POSTGRES_MEMBER),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        fail(f"database {database.describe()}: {_tool_error('pg_restore', done.stderr)}")


@click.command("restore")
@config_option
@click.option("--force", is_flag=True, help="Restore into a STATE_DIR (or database) that is not empty, replacing it.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def restore_command(config_path: str | None, force: bool, file: str) -> None:
    """Restore a `mailsift backup` FILE into an empty STATE_DIR, then upgrade the schema.

    Stop mailsift first.  The database goes where the config's DATABASE says
    (the backup's dialect must be the same); the quarantine and the secrets
    under STATE_DIR.
    """
    config = load_config(config_path, database_for="what is restored")
    settings = config.settings
    database = _database(config)
    if database.dialect != "sqlite" and shutil.which("pg_restore") is None:  # said before anything else
        fail(f"database {database.describe()}: {PG_DUMP_HELP.replace('pg_dump is', 'pg_restore is')}")
    occupied = _occupied(config)
    if database.dialect != "sqlite" and not force and not occupied:
        try:  # pg_restore --clean would replace what the database holds
            stored = database.schema().stored
        except DatabaseError as error:
            fail(error.message)
        if stored:
            fail(
                f"database {database.describe()} is not empty (schema {', '.join(stored)}): "
                "restore into an empty database, or --force"
            )
    if occupied and not force:
        fail(f"STATE_DIR {settings.state_dir} is not empty ({occupied[0]}...): restore into an empty one, or --force")
    try:
        archive = tarfile.open(file, mode="r:*")  # noqa: SIM115 - closed by the with below
    except (OSError, tarfile.TarError) as error:
        fail(f"{file}: not a mailsift backup ({error})")
    with archive:
        members = _members(archive)
        names = {m.name for m in members}
        if "manifest.json" not in names:
            fail(f"{file}: not a mailsift backup (no manifest.json)")
        manifest_file = archive.extractfile("manifest.json")
        assert manifest_file is not None
        manifest = json.loads(manifest_file.read())
        if manifest.get("dialect") != database.dialect:
            fail(f"{file}: a {manifest.get('dialect')} backup; this config's DATABASE is {database.dialect}")
        database.dispose()
        if database.dialect == "sqlite":
            _restore_sqlite(archive, database)
        else:
            _restore_postgres(archive, database)
        if force and os.path.isdir(settings.quarantine_dir):
            shutil.rmtree(settings.quarantine_dir)
        _restore_state(archive, members, settings.state_dir)
    try:
        database.migrate()  # the schema of this release (refuses one marked incompatible)
        adopted = reindex(settings).adopted
    except MailsiftError as error:
        fail(error.message)
    click.echo(
        f"restored {file} (mailsift {manifest.get('mailsift')}, schema {', '.join(manifest.get('revisions', []))}) "
        f"into {settings.state_dir}; schema upgraded"
        + (f"; {len(adopted)} quarantined files indexed" if adopted else "")
    )
