"""``mailsift db upgrade|current|history``, and the refusal of a schema marked incompatible
(finding 5: a newer schema used to give a 90-line traceback)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailsift.cli.main import main
from mailsift.config import load
from mailsift.errors import DatabaseError
from mailsift.storage import migrations

FUTURE = "0099_future"


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "config.py"
    path.write_text(
        "from mailsift import *\n"
        f"STATE_DIR = {str(tmp_path / 'state')!r}\n"
        "USER = None\n"
        "SRV = [smtpd([], '127.0.0.1', 10024, next_hop=local_maildir('mail'))]\n"
    )
    return str(path)


def run(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=input)
    return result.exit_code, result.stdout, result.stderr


def known() -> list[str]:
    return sorted(r.revision for r in migrations.scripts().walk_revisions())


def database_file(config: str) -> Path:
    return Path(config).parent / "state" / "mailsift.db"


def newer_schema(config: str, *, incompatible: bool) -> None:
    """What a newer mailsift leaves: a head this code does not know, maybe marked incompatible."""
    assert run("db", "upgrade", "-c", config)[0] == 0
    with sqlite3.connect(database_file(config)) as connection:
        connection.execute("INSERT INTO alembic_version VALUES (?)", (FUTURE,))  # a new head beside ours
        if incompatible:
            connection.execute("CREATE TABLE mailsift_incompatible (revision TEXT, min_version TEXT, reason TEXT)")
            connection.execute(
                "INSERT INTO mailsift_incompatible VALUES (?, ?, ?)", (FUTURE, "9.0", "maillog.detail dropped")
            )


def test_upgrade_then_current_then_history(config: str) -> None:
    code, out, _ = run("db", "current", "-c", config)
    assert (code, "no schema yet" in out) == (0, True)
    code, out, _ = run("db", "upgrade", "-c", config)
    assert code == 0, out
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("applied ")] == [
        f"applied {r}" for r in known()
    ]
    assert "applied 0003: " in out
    assert "up to date" in out
    code, out, _ = run("db", "current", "-c", config)
    assert code == 0
    assert out.rstrip().endswith("up to date")
    assert "  0010_websessions: Server-side web sessions" in out
    code, out, _ = run("db", "history", "-c", config)
    assert code == 0
    assert len(out.splitlines()) == len(known())
    assert all(line.startswith("[applied] ") for line in out.splitlines())
    assert out.splitlines()[0].startswith("[applied] 0001")
    code, out, _ = run("db", "upgrade", "-c", config)
    assert "applied" not in out  # nothing left to do


def test_history_before_an_upgrade_shows_pending(config: str) -> None:
    code, out, _ = run("db", "history", "-c", config)
    assert code == 0
    assert all(line.startswith("[pending] ") for line in out.splitlines())


def test_a_newer_compatible_schema_runs_with_a_warning(config: str, caplog: pytest.LogCaptureFixture) -> None:
    newer_schema(config, incompatible=False)
    code, out, _ = run("db", "current", "-c", config)
    assert code == 0
    assert f"{FUTURE}: unknown to mailsift" in out
    assert "marked compatible: running on it" in out
    code, out, err = run("user", "add", "-c", config, "bob", "--password-stdin", input="a-password\n")
    assert code == 0, out + err
    assert "marked compatible" in caplog.text  # the migration step warned, and did not upgrade
    assert "Can't locate revision" not in out + err
    database = load(config).settings.database
    assert database is not None
    database.migrate()  # the workers' path: no error
    database.dispose()


def test_an_incompatible_schema_is_refused_in_one_line(config: str) -> None:
    newer_schema(config, incompatible=True)
    for command in (["user", "list"], ["serve"], ["quarantine", "list"], ["db", "upgrade"]):
        code, out, err = run(*command, "-c", config)
        assert code == 2, (command, out, err)
        assert len(err.splitlines()) == 1, (command, err)
        assert f"revision {FUTURE} (maillog.detail dropped)) needs mailsift 9.0 or later" in err
        assert "upgrade mailsift on this node" in err
    code, out, _ = run("db", "current", "-c", config)  # still shows what is there
    assert code == 0
    assert "needs mailsift 9.0" in out
    database = load(config).settings.database
    assert database is not None
    with pytest.raises(DatabaseError, match=r"needs mailsift 9\.0 or later"):
        database.migrate()  # the workers' path: one line too
    database.dispose()


def test_mark_incompatible_is_what_the_check_reads(tmp_path: Path) -> None:
    """A contract revision's call, run through Alembic's op on a real connection."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.begin() as connection:
        migrations.upgrade(connection)
        with Operations.context(MigrationContext.configure(connection)):
            migrations.mark_incompatible(FUTURE, "9.0", "why")
        connection.exec_driver_sql(f"INSERT INTO alembic_version VALUES ('{FUTURE}')")
        found = migrations.state(connection)
    engine.dispose()
    assert found.unknown == (FUTURE,)
    assert found.incompatible == ((FUTURE, "9.0", "why"),)
