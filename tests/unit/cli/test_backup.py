"""``mailsift backup`` / ``mailsift restore``: the round trip of a populated gateway into an
empty STATE_DIR (same quarantine, logins work, a release succeeds), and finding 4: what is
only in SQLite's ``-wal`` survives (a file copy lost it)."""

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
from mailsift.storage.quarantine.store import QuarantineStore
from mailsift.testing import RecordingServer
from mailsift.web import users

MESSAGE = b"From: alice@sender.example\r\nTo: bob@example.test\r\nSubject: held {n}\r\n\r\nbody {n}\r\n"


def write_config(path: Path, state: Path, next_hop: int) -> str:
    path.write_text(
        f"from mailsift import *\nSTATE_DIR = {str(state)!r}\nUSER = None\nSMTP_SERVER = ('127.0.0.1', {next_hop})\n"
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
    settings = config_module.load(config).settings
    store = QuarantineStore(settings.quarantine_dir, settings.database, retry_window=0)
    for n in range(2):
        mail = Mail(
            Envelope(sender="alice@sender.example", recipients=["bob@example.test"]), MESSAGE.replace(b"{n}", b"%d" % n)
        )
        asyncio.run(store.put(mail, "spam", ScanResult(1.0, "Test.Spam", "regexp_scan")))
    assert settings.database is not None
    settings.database.dispose()
    assert run("user", "add", "-c", config, "admin", "--admin", "--password-stdin", input="a-good-password\n")[0] == 0
    assert run("policy", "set", "-c", config, "example.test", "clam=yes,spam=no")[0] == 0
    assert run("lists", "add", "-c", config, "white", "sender", "friend@example.net")[0] == 0
    links.secret(str(state))  # webq.secret
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
    assert users.verify_password(stored.password_hash, "a-good-password")
    assert not users.verify_password(stored.password_hash, "wrong")
    code, out = run("quarantine", "release", "-c", new, before[0], "--by", "admin")
    assert code == 0, out
    assert len(next_hop.messages) == 1
    assert b"held" in next_hop.messages[0].data


def test_restore_refuses_a_state_dir_in_use(tmp_path: Path, gateway: tuple[str, sqlite3.Connection]) -> None:
    config, _holder = gateway
    assert run("backup", "-c", config, str(tmp_path / "backup.tar"))[0] == 0
    code, out = run("restore", "-c", config, str(tmp_path / "backup.tar"))
    assert code == 2
    assert "is not empty" in out
    assert "--force" in out


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
