"""``mailsift backup`` / ``mailsift restore``: the round trip of a populated gateway (quarantine,
users, policies, lists, the message log, secrets) into an empty STATE_DIR (same quarantine and
message log, logins work through the web login form, a release succeeds), ``restore --force``
over a gateway in use, the refusal of a backup whose schema is marked incompatible, and
finding 4: what is only in SQLite's ``-wal`` survives (a file copy lost it).

PostgreSQL: the same round trip through ``pg_dump``/``pg_restore`` against the tests' private
server (tests/helpers/postgres.py; skipped where it cannot run), and the one clear line when
``pg_dump`` is not on PATH."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailsift import config as config_module
from mailsift.cli.main import main
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Result as ScanResult
from mailsift.reporting import links
from mailsift.reporting.logline import MessageRecord, insert_rows, sql_rows
from mailsift.storage.quarantine.store import QuarantineStore, file_id
from mailsift.testing import RecordingServer
from mailsift.web import users
from tests.helpers.postgres import PG_BIN, fresh_database, postgres  # noqa: F401 - the fixture
from tests.helpers.webq import log_in, web_client

MESSAGE = b"From: alice@sender.example\r\nTo: bob@example.test\r\nSubject: held {n}\r\n\r\nbody {n}\r\n"
PASSWORD = "a-good-password"


def write_config(path: Path, state: Path, next_hop: int, database: str = "") -> str:
    path.write_text(
        f"from mailsift import *\nSTATE_DIR = {str(state)!r}\nUSER = None\nSMTP_SERVER = ('127.0.0.1', {next_hop})\n"
        + (f"DATABASE = db.database({database!r})\n" if database else "")
    )
    return str(path)


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=input)
    return result.exit_code, result.stdout + result.stderr


def quarantine_ids(config: str) -> list[str]:
    result = CliRunner().invoke(main, ["quarantine", "list", "-c", config, "--json"])
    assert result.exit_code == 0, result.output
    return sorted(entry["id"] for entry in json.loads(result.stdout))


def table_counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as connection:
        names = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {name: connection.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names}


@pytest.fixture
def next_hop() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


def populate(config: str, *, subjects: tuple[str, ...] = ("held 0", "held 1"), login: str = "admin") -> list[str]:
    """Quarantine one message per subject (each with its message log row), add a user, a policy, a
    list entry and the web secret; returns the quarantine ids."""
    settings = config_module.load(config).settings
    assert settings.database is not None
    store = QuarantineStore(settings.quarantine_dir, settings.database, retry_window=0)
    ids = []
    for n, subject in enumerate(subjects):
        raw = MESSAGE.replace(b"held {n}", subject.encode()).replace(b"{n}", b"%d" % n)
        mail = Mail(Envelope(sender="alice@sender.example", recipients=["bob@example.test"]), raw)
        path = asyncio.run(store.put(mail, "spam", ScanResult(1.0, "Test.Spam", "regexp_scan")))
        ids.append(file_id(os.path.relpath(path, settings.quarantine_dir)))
        record = MessageRecord(
            time=1_700_000_000.0 + n,
            queue_id=f"Q{subject.replace(' ', '')}",
            status="Spam",
            action="quarantine",
            reply="250",
            level=1.0,
            name="Test.Spam",
            scanner="regexp_scan",
            relay_client=False,
            client_address="192.0.2.1",
            client_name="mx.sender.example",
            helo="mx.sender.example",
            elapsed=0.01,
            size=len(raw),
            sender="alice@sender.example",
            recipients=("bob@example.test",),
            subject=subject,
            message_id=f"<{subject.replace(' ', '-')}@sender.example>",
            quarantine=(ids[-1],),
        )
        settings.database.call(insert_rows, sql_rows(record))
    settings.database.dispose()
    assert run("user", "add", "-c", config, login, "--admin", "--password-stdin", input=f"{PASSWORD}\n")[0] == 0
    assert run("policy", "set", "-c", config, "example.test", "clam=yes,spam=no")[0] == 0
    assert run("lists", "add", "-c", config, "white", "sender", "friend@example.net")[0] == 0
    links.secret(settings.state_dir)  # webq.secret
    return sorted(ids)


def tracked(config: str) -> list[dict[str, object]]:
    """What `mailsift track --json` shows of the message log (the time of the search left out)."""
    result = CliRunner().invoke(main, ["track", "-c", config, "--json", "--events", "--since", "2000-01-01"])
    assert result.exit_code == 0, result.output
    messages: list[dict[str, object]] = json.loads(result.stdout)["messages"]
    return messages


def web_login(config: str, login: str, password: str) -> tuple[int, str]:
    """Log in through the web quarantine's login form; the status and the quarantine page after it."""
    settings = config_module.load(config).settings

    async def session() -> tuple[int, str]:
        async with web_client(settings) as client:
            response = await log_in(client, login, password)
            if response.status_code != 303:
                return response.status_code, response.text
            return response.status_code, (await client.get("/q/")).text

    try:
        return asyncio.run(session())
    finally:
        assert settings.database is not None
        settings.database.dispose()


def shows_the_quarantine(config: str, ids: list[str]) -> None:
    """The restored gateway: the admin logs in through the web form and sees every restored message."""
    code, page = web_login(config, "admin", PASSWORD)
    assert code == 303, page
    assert all(entry_id in page for entry_id in ids), page


def released(config: str, entry_id: str, next_hop: RecordingServer) -> bytes:
    """Release ``entry_id`` with ``mailsift quarantine release`` of the restored gateway; what the next hop got."""
    code, out = run("quarantine", "release", "-c", config, entry_id, "--by", "admin")
    assert code == 0, out
    assert len(next_hop.messages) == 1
    return next_hop.messages[0].data


def refused_in_use(config: str, backup: Path) -> None:
    """``restore`` into a gateway in use, without ``--force``: refused, saying why and what to do."""
    code, out = run("restore", "-c", config, str(backup))
    assert code == 2
    assert "is not empty" in out
    assert "--force" in out


@pytest.fixture
def gateway(tmp_path: Path, next_hop: RecordingServer) -> Iterator[tuple[str, sqlite3.Connection]]:
    """A populated gateway whose database keeps its latest writes in ``-wal`` (a reader holds it open)."""
    state = tmp_path / "state"
    config = write_config(tmp_path / "old.py", state, next_hop.port)
    assert run("db", "upgrade", "-c", config)[0] == 0
    # A reader in a transaction: no checkpoint moves what follows from the -wal into the file.
    holder = sqlite3.connect(state / "mailsift.db", isolation_level=None)
    holder.execute("BEGIN")
    holder.execute("SELECT count(*) FROM alembic_version").fetchone()
    populate(config)
    (state / "mail.json").write_text('{"log": 1}\n')
    yield config, holder
    holder.close()


def test_the_round_trip(tmp_path: Path, gateway: tuple[str, sqlite3.Connection], next_hop: RecordingServer) -> None:
    config, _holder = gateway
    state = tmp_path / "state"
    # Finding 4: the database file alone holds none of it, the -wal does.
    (tmp_path / "copy").mkdir()
    shutil.copy(state / "mailsift.db", tmp_path / "copy" / "mailsift.db")
    assert table_counts(tmp_path / "copy" / "mailsift.db").get("web_user", 0) == 0
    assert (state / "mailsift.db-wal").stat().st_size > 0

    before = quarantine_ids(config)
    assert len(before) == 2
    counts = table_counts(state / "mailsift.db")
    code, out = run("backup", "-c", config, str(tmp_path / "backup.tar"))
    assert code == 0, out
    assert stat.S_IMODE(os.stat(tmp_path / "backup.tar").st_mode) == 0o600
    with tarfile.open(tmp_path / "backup.tar") as archive:
        names = set(archive.getnames())
    assert {"manifest.json", "database/mailsift.db", "state/webq.secret", "state/mail.json"} <= names

    # Another machine: an empty STATE_DIR (not even created yet).
    new_state = tmp_path / "new" / "state"
    new = write_config(tmp_path / "new.py", new_state, next_hop.port)
    code, out = run("restore", "-c", new, str(tmp_path / "backup.tar"))
    assert code == 0, out
    assert quarantine_ids(new) == before
    assert table_counts(new_state / "mailsift.db") == counts
    assert (new_state / "webq.secret").read_bytes() == (state / "webq.secret").read_bytes()
    assert (new_state / "mail.json").read_text() == '{"log": 1}\n'
    database = config_module.load(new).settings.database
    assert database is not None
    stored = database.call(users.find_user, "admin")
    database.dispose()
    assert stored is not None
    assert users.verify_password(stored.password_hash, PASSWORD)
    assert not users.verify_password(stored.password_hash, "wrong")
    # policies and lists: the same
    for command in (["policy", "show"], ["lists", "show"]):
        assert run(*command, "-c", new) == run(*command, "-c", config), command
    assert "friend@example.net" in run("lists", "show", "-c", new)[1]
    # the message log: the same stories, pointing at the same quarantine
    logged = tracked(config)
    assert len(logged) == 2
    assert tracked(new) == logged
    assert sorted(str(m["subject"]) for m in logged) == ["held 0", "held 1"]
    # the web login form, with the restored password, shows the restored quarantine
    shows_the_quarantine(new, before)
    assert web_login(new, "admin", "not-the-password")[0] == 401
    assert b"held" in released(new, before[0], next_hop)


def test_restore_force_replaces_a_gateway_in_use(
    tmp_path: Path, gateway: tuple[str, sqlite3.Connection], next_hop: RecordingServer
) -> None:
    config, _holder = gateway
    before, logged = quarantine_ids(config), tracked(config)
    assert run("backup", "-c", config, str(tmp_path / "backup.tar"))[0] == 0
    # another gateway, in use: its own quarantine, message log, user and secret
    other_state = tmp_path / "other"
    other = write_config(tmp_path / "other.py", other_state, next_hop.port)
    assert run("db", "upgrade", "-c", other)[0] == 0
    theirs = populate(other, subjects=("other 0",), login="someone")
    assert run("restore", "-c", other, str(tmp_path / "backup.tar"))[0] == 2  # not without --force
    assert quarantine_ids(other) == theirs
    code, out = run("restore", "--force", "-c", other, str(tmp_path / "backup.tar"))
    assert code == 0, out
    assert quarantine_ids(other) == before
    assert not set(theirs) & set(before)
    assert tracked(other) == logged
    assert not [p for p in (other_state / "quarantine").rglob("*") if p.is_file() and b"other 0" in p.read_bytes()]
    assert web_login(other, "someone", PASSWORD)[0] == 401  # that gateway's user is gone
    assert web_login(other, "admin", PASSWORD)[0] == 303
    assert (other_state / "webq.secret").read_bytes() == (tmp_path / "state" / "webq.secret").read_bytes()
    assert b"Subject: held " in released(other, before[1], next_hop)


def test_restore_refuses_a_backup_of_an_incompatible_newer_schema_in_one_line(
    tmp_path: Path, gateway: tuple[str, sqlite3.Connection], next_hop: RecordingServer
) -> None:
    config, holder = gateway
    holder.close()
    with sqlite3.connect(tmp_path / "state" / "mailsift.db") as connection:  # what a newer mailsift leaves
        connection.execute("INSERT INTO alembic_version VALUES ('0099_future')")
        connection.execute("CREATE TABLE mailsift_incompatible (revision TEXT, min_version TEXT, reason TEXT)")
        connection.execute("INSERT INTO mailsift_incompatible VALUES ('0099_future', '9.0', 'maillog.detail dropped')")
    code, out = run("backup", "-c", config, str(tmp_path / "backup.tar"))
    assert code == 0, out  # a backup is taken whatever the schema
    new = write_config(tmp_path / "new.py", tmp_path / "new", next_hop.port)
    result = CliRunner().invoke(main, ["restore", "-c", new, str(tmp_path / "backup.tar")])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "needs mailsift 9.0 or later" in result.stderr


def test_restore_refuses_a_state_dir_in_use(tmp_path: Path, gateway: tuple[str, sqlite3.Connection]) -> None:
    config, _holder = gateway
    assert run("backup", "-c", config, str(tmp_path / "backup.tar"))[0] == 0
    refused_in_use(config, tmp_path / "backup.tar")


def test_restore_refuses_what_is_not_a_backup(tmp_path: Path, next_hop: RecordingServer) -> None:
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as archive:
        info = tarfile.TarInfo("../outside")
        info.size = 0
        archive.addfile(info)
    config = write_config(tmp_path / "c.py", tmp_path / "state", next_hop.port)
    code, out = run("restore", "-c", config, str(evil))
    assert code == 2
    assert "not a mailsift backup" in out
    assert not (tmp_path / "outside").exists()


def test_postgres_without_pg_dump_names_the_manual_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("psycopg")
    config = tmp_path / "pg.py"
    config.write_text(
        f"from mailsift import *\nSTATE_DIR = {str(tmp_path / 'state')!r}\nUSER = None\n"
        "DATABASE = db.database('postgresql+psycopg://nobody@127.0.0.1:1/none', busy_timeout=1)\n"
    )
    monkeypatch.setenv("PATH", str(tmp_path))  # no pg_dump
    started = time.monotonic()
    code, out = run("backup", "-c", str(config), str(tmp_path / "b.tar"))
    assert code == 2
    assert time.monotonic() - started < 60
    assert out.count("\n") == 1
    assert "pg_dump is not on PATH" in out
    assert "postgresql-client" in out
    assert "docs/upgrading.md" in out
    assert not (tmp_path / "b.tar").exists()
    # and restore, for pg_restore
    (tmp_path / "b.tar").write_bytes(b"")
    code, out = run("restore", "-c", str(config), str(tmp_path / "b.tar"))
    assert code == 2
    assert out.count("\n") == 1, out
    assert "pg_restore is not on PATH" in out
    assert "docs/upgrading.md" in out


def test_the_round_trip_on_postgresql(
    tmp_path: Path,
    postgres: str,  # noqa: F811 - the fixture imported above
    next_hop: RecordingServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pg_dump refuses a server newer than itself: the server's own client tools first on PATH
    server_bin = os.path.dirname(os.path.realpath(os.path.join(PG_BIN, "pg_ctl")))
    monkeypatch.setenv("PATH", f"{server_bin}:{os.environ['PATH']}")
    config = write_config(tmp_path / "old.py", tmp_path / "state", next_hop.port, fresh_database(postgres, "backup"))
    assert run("db", "upgrade", "-c", config)[0] == 0
    before = populate(config)
    logged = tracked(config)
    assert len(logged) == 2
    code, out = run("backup", "-c", config, str(tmp_path / "backup.tar"))
    assert code == 0, out
    with tarfile.open(tmp_path / "backup.tar") as archive:
        names = set(archive.getnames())
        manifest = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert {"database/postgresql.dump", "state/webq.secret"} <= names
    assert "database/mailsift.db" not in names
    assert manifest["dialect"] == "postgresql"

    # another machine: an empty database on the server, an empty STATE_DIR
    restored = fresh_database(postgres, "restored")
    new = write_config(tmp_path / "new.py", tmp_path / "new", next_hop.port, restored)
    code, out = run("restore", "-c", new, str(tmp_path / "backup.tar"))
    assert code == 0, out
    assert quarantine_ids(new) == before
    assert tracked(new) == logged
    shows_the_quarantine(new, before)
    code, out = run("lists", "show", "-c", new)
    assert (code, "friend@example.net" in out) == (0, True), out
    assert run("policy", "show", "-c", new) == run("policy", "show", "-c", config)
    assert "example.test" in run("policy", "show", "-c", new)[1]
    released(new, before[0], next_hop)

    # into a database in use (with an empty STATE_DIR): refused, unless --force
    again = write_config(tmp_path / "again.py", tmp_path / "again", next_hop.port, restored)
    refused_in_use(again, tmp_path / "backup.tar")
    assert not list((tmp_path / "again").rglob("*.secret"))
    code, out = run("restore", "--force", "-c", again, str(tmp_path / "backup.tar"))
    assert code == 0, out
    assert quarantine_ids(again) == before
    assert tracked(again) == logged


def test_a_pg_dump_older_than_the_server_says_what_to_do_in_one_line(
    tmp_path: Path,
    postgres: str,  # noqa: F811 - the fixture imported above
    next_hop: RecordingServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # what pg_dump 15 says of a PostgreSQL 16 server
    fake = tmp_path / "bin" / "pg_dump"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\necho 'pg_dump: error: aborting because of server version mismatch' >&2\n"
        "echo 'pg_dump: detail: server version: 16.4; pg_dump version: 15.18' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    config = write_config(tmp_path / "c.py", tmp_path / "state", next_hop.port, fresh_database(postgres, "mismatch"))
    assert run("db", "upgrade", "-c", config)[0] == 0
    code, out = run("backup", "-c", config, str(tmp_path / "b.tar"))
    assert code == 2
    assert out.count("\n") == 1, out
    assert "pg_dump failed: pg_dump: detail: server version: 16.4; pg_dump version: 15.18" in out
    assert "PATH=/usr/lib/postgresql/<major>/bin:$PATH" in out
    assert "['" not in out
    assert not (tmp_path / "b.tar").exists()
    assert not list(tmp_path.glob(".mailsift-backup-*"))
