"""``mailsift quarantine``: list, show, release, delete, expire, reindex, on SQLite and PostgreSQL.

The round trip (quarantine → list → release → the next hop has it → the
release is recorded) runs on both databases.  Messages are quarantined by
:meth:`QuarantineStore.put`, the step the gateway's Disposer takes; the next
hop is a real SMTP server on loopback (:class:`mailsift.testing.RecordingServer`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from mailsift import config as config_module
from mailsift.cli.quarantine import quarantine_group
from mailsift.config import Config
from mailsift.core import poison
from mailsift.message.mail import Envelope, Mail, process_runs
from mailsift.message.result import Result as ScanResult
from mailsift.storage.quarantine import migrate as migrate_module
from mailsift.storage.quarantine.dbstore import DATABASE_PATH, DatabaseStore, Store
from mailsift.storage.quarantine.index import (
    RELEASED,
    QuarantineFilter,
    claim_release,
    find_entries,
    get_entry,
    mark_released,
)
from mailsift.storage.quarantine.store import QuarantineStore, file_id, read_original, stored_files
from mailsift.storage.schema import quarantine_chunk_table
from mailsift.testing import RecordingServer, free_port
from tests.helpers.postgres import fresh_database, postgres  # noqa: F401 - the fixture

DAY = 86400.0

CONFIG = """\
from mailsift import *
STATE_DIR = {state!r}
SMTP_SERVER = ("127.0.0.1", {next_hop})
DATABASE = {database}
QUARANTINE_STORE = {store!r}
"""


class Gateway:
    """A config file, its loaded settings, and a way to quarantine as the gateway does."""

    def __init__(self, tmp_path: Path, next_hop: int, database: str, store: str = "files") -> None:
        self.path = tmp_path / "mailsift.conf.py"
        (tmp_path / "state").mkdir(exist_ok=True)  # a DatabaseStore writes no file: STATE_DIR as serve makes it
        self.path.write_text(
            CONFIG.format(state=str(tmp_path / "state"), next_hop=next_hop, database=database, store=store)
        )
        self.config: Config = config_module.load(str(self.path))
        self.settings = self.config.settings
        self.root = self.settings.quarantine_dir

    def quarantine(
        self,
        data: bytes,
        *,
        sender: str = "alice@sender.example",
        recipients: tuple[str, ...] = ("bob@example.test",),
        category: str = "virus",
        age: float = 0.0,
        index: bool = True,
    ) -> str:
        database = self.settings.database if index else None
        # Each call is a new arrival (tests store the same bytes twice for two entries): no retry reuse.
        store: Store = QuarantineStore(self.root, database, clock=lambda: time.time() - age, retry_window=0)
        if self.settings.quarantine_store == "database":
            store = DatabaseStore(self.settings.database, clock=lambda: time.time() - age, retry_window=0)
        mail = Mail(Envelope(sender=sender, recipients=list(recipients), client_address="192.0.2.9"), data)
        path = asyncio.run(store.put(mail, category, ScanResult(1.0, "Test.Virus", "regexp_scan")))
        return path.rsplit("/", 1)[-1] if path.startswith(DATABASE_PATH) else file_id(path)

    def cli(self, *args: str, env: dict[str, str] | None = None) -> Result:
        command, *rest = args
        return CliRunner().invoke(quarantine_group, [command, "-c", str(self.path), *rest], env=env)

    def entry(self, entry_id: str):  # type: ignore[no-untyped-def]
        return self.settings.database.call(get_entry, entry_id)


def message(subject: str = "Invoice", body: str = "VIRUS-SIGNATURE", extra: str = "") -> bytes:
    return f"{extra}From: alice@sender.example\r\nTo: bob@example.test\r\nSubject: {subject}\r\n\r\n{body}\r\n".encode()


@pytest.fixture
def next_hop() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


def database_setting(request: pytest.FixtureRequest, name: str = "sqlite") -> str:
    if name == "sqlite":
        return "db.sqlite()"
    return f"db.database({fresh_database(request.getfixturevalue('postgres'), 'qcli')!r})"


@pytest.fixture(params=["sqlite", "postgresql"])
def gateway(request: pytest.FixtureRequest, tmp_path: Path, next_hop: RecordingServer) -> Iterator[Gateway]:
    instance = Gateway(tmp_path, next_hop.port, database_setting(request, request.param))
    yield instance
    instance.settings.database.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_gateway(request: pytest.FixtureRequest, tmp_path: Path, next_hop: RecordingServer) -> Iterator[Gateway]:
    """A gateway with ``QUARANTINE_STORE = "database"``."""
    instance = Gateway(tmp_path, next_hop.port, database_setting(request, request.param), "database")
    yield instance
    instance.settings.database.dispose()


def test_round_trip_quarantine_list_release(gateway: Gateway, next_hop: RecordingServer) -> None:
    data = message(extra="X-Mailsift-Checked: upstream\r\n")
    entry_id = gateway.quarantine(data, recipients=("bob@example.test", "carol@example.test"))
    listed = gateway.cli("list", "--json")
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.stdout)
    assert row["id"] == entry_id
    assert row["state"] == "held"
    assert row["recipients"] == ["bob@example.test", "carol@example.test"]

    released = gateway.cli("release", entry_id, "--by", "admin-ann")
    assert released.exit_code == 0, released.output
    assert f"{entry_id}: released by admin-ann" in released.stdout
    [received] = next_hop.messages
    assert received.sender == "alice@sender.example"
    assert received.recipients == ["bob@example.test", "carol@example.test"]
    assert received.data.replace(b"\r\n", b"\n") == data.replace(b"\r\n", b"\n")  # the original, as received
    assert b"X-Mailsift-Quarantine-Id" not in received.data
    assert b"X-Envelope-To" not in received.data
    entry = gateway.entry(entry_id)
    assert (entry.state, entry.released_by, json.loads(entry.released_to)) == (
        RELEASED,
        "admin-ann",
        ["bob@example.test", "carol@example.test"],
    )
    assert entry.released_at is not None
    assert abs(entry.released_at - time.time()) < 3600  # a real time, recorded now (not a timing check)
    assert json.loads(gateway.cli("list", "--json", "--state", "released").stdout)[0]["released_by"] == "admin-ann"

    again = gateway.cli("release", entry_id)
    assert again.exit_code == 1
    assert "released already" in again.stderr
    assert len(next_hop.messages) == 1
    forced = gateway.cli("release", entry_id, "--force", "--to", "postmaster@example.test", "--by", "bo")
    assert forced.exit_code == 0, forced.output
    assert next_hop.messages[1].recipients == ["postmaster@example.test"]
    assert gateway.entry(entry_id).released_by == "bo"


def test_release_by_defaults_to_the_invoking_user(gateway: Gateway, next_hop: RecordingServer) -> None:
    first, second = gateway.quarantine(message()), gateway.quarantine(message())
    assert gateway.cli("release", first, env={"SUDO_USER": "", "LOGNAME": "operator7", "USER": "x"}).exit_code == 0
    assert gateway.entry(first).released_by == "operator7"
    assert gateway.cli("release", second, env={"SUDO_USER": "realadmin"}).exit_code == 0
    assert gateway.entry(second).released_by == "realadmin"


def test_release_lost_to_another_claim_sends_nothing(gateway: Gateway, next_hop: RecordingServer) -> None:
    """Another gateway or admin is releasing it right now: exit 3, nothing sent; released meanwhile: exit 1."""
    entry_id = gateway.quarantine(message())
    gateway.settings.database.call(claim_release, entry_id, "web:admin", time.time(), 600.0)
    busy = gateway.cli("release", entry_id, "--by", "root")
    assert busy.exit_code == 3, busy.output
    assert "already being released by web:admin" in busy.stderr
    assert next_hop.messages == []
    assert gateway.entry(entry_id).state == "held"
    other = gateway.quarantine(message("other"))
    gateway.settings.database.call(mark_released, other, "node2", ["bob@example.test"], time.time())
    forced = gateway.cli("release", other, "--by", "root", "--force")  # --force sends again, on purpose
    assert forced.exit_code == 0, forced.output
    assert len(next_hop.messages) == 1


def test_release_to_another_next_hop(gateway: Gateway, next_hop: RecordingServer) -> None:
    entry_id = gateway.quarantine(message("Grüße", "Körper"))
    with RecordingServer() as other:
        result = gateway.cli("release", entry_id, "--next-hop", f"127.0.0.1:{other.port}", "--by", "a")
        assert result.exit_code == 0, result.output
        assert len(other.messages) == 1
        assert "8BITMIME" in " ".join(other.messages[0].mail_options).upper()
    assert next_hop.messages == []


def test_release_failing_downstream_records_nothing(gateway: Gateway, next_hop: RecordingServer) -> None:
    entry_id = gateway.quarantine(message())
    next_hop.data_reply = "554 5.7.1 no thanks"
    result = gateway.cli("release", entry_id, "--by", "a")
    assert result.exit_code == 1
    assert "not released" in result.stderr
    assert gateway.entry(entry_id).state == "held"
    down = gateway.cli("release", entry_id, "--next-hop", f"127.0.0.1:{free_port()}", "--by", "a")
    assert down.exit_code == 1
    assert gateway.entry(entry_id).state == "held"
    missing = gateway.cli("release", "20240101T000000-00000000", "--by", "a")
    assert missing.exit_code == 1
    assert "no quarantined message" in missing.stderr
    assert gateway.cli("release", entry_id, "--next-hop", "nonsense").exit_code == 2


def test_list_filters_and_table(gateway: Gateway) -> None:
    old = gateway.quarantine(message("old one"), sender="boss@corp.example", age=40 * DAY)
    spam = gateway.quarantine(message("spammy"), category="spam", recipients=("eve@other.test",), age=3 * DAY)
    new = gateway.quarantine(message("brand new"), category="policy")

    def ids(*args: str) -> list[str]:
        result = gateway.cli("list", "--json", *args)
        assert result.exit_code == 0, result.output
        return [row["id"] for row in json.loads(result.stdout)]

    assert ids() == [new, spam, old]
    assert ids("--recipient", "EVE@other.test") == [spam]
    assert ids("--recipient", "@example.test") == [new, old]
    assert ids("--sender", "@corp.example") == [old]
    assert ids("--category", "spam") == [spam]
    assert ids("--older-than", "30d") == [old]
    assert ids("--newer-than", "1w") == [new, spam]
    assert ids("--older-than", "1d", "--newer-than", "168h") == [spam]
    assert ids("--limit", "1") == [new]
    table = gateway.cli("list")
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "TIME", "(UTC)"]
    assert [line.split()[0] for line in lines[1:]] == [new, spam, old]
    assert "Policy: Test.Virus" in lines[1]  # as a person reads it (issue 13), not "(regexp_scan 1.00)"
    assert lines[2].endswith("spammy")
    bad = gateway.cli("list", "--older-than", "7 parsecs")
    assert bad.exit_code == 2
    assert "is not an age" in bad.output


def test_show_headers_verdict_and_raw(gateway: Gateway) -> None:
    data = message("=?utf-8?q?Gr=C3=BC=C3=9Fe?=", "secret body")
    entry_id = gateway.quarantine(data)
    shown = gateway.cli("show", entry_id)
    assert shown.exit_code == 0, shown.output
    assert f"Id:         {entry_id}" in shown.stdout
    assert "Verdict:    level=1.00 name=Test.Virus scanner=regexp_scan" in shown.stdout
    assert "Subject:    Grüße" in shown.stdout
    assert "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=" in shown.stdout  # the header block as stored
    assert "secret body" not in shown.stdout
    raw = gateway.cli("show", entry_id, "--raw")
    assert raw.exit_code == 0
    assert raw.stdout_bytes == data
    assert gateway.cli("show", "nope").exit_code == 1


def test_delete(gateway: Gateway) -> None:
    keep, drop = gateway.quarantine(message()), gateway.quarantine(message())
    result = gateway.cli("delete", drop)
    assert result.exit_code == 0, result.output
    assert gateway.entry(drop) is None
    assert [file_id(f) for f in stored_files(gateway.root)] == [keep]
    assert gateway.cli("delete", drop).exit_code == 1


def test_expire_adopts_orphans_and_deletes_old_mail(gateway: Gateway) -> None:
    old = gateway.quarantine(message("old"), age=40 * DAY)
    young = gateway.quarantine(message("young"), age=20 * DAY)
    orphan_old = gateway.quarantine(message("orphan old"), age=45 * DAY, index=False)
    orphan_young = gateway.quarantine(message("orphan young"), age=DAY, index=False)
    leftover = Path(gateway.root, "virus", "tmp", "123.M1P2Q3.host")
    leftover.write_bytes(b"half a message")
    fresh_leftover = leftover.with_name("124.M1P2Q3.host")
    fresh_leftover.write_bytes(b"being written")
    two_days_ago = time.time() - 2 * DAY
    os.utime(leftover, (two_days_ago, two_days_ago))

    result = gateway.cli("expire", "--older-than", "30d")
    assert result.exit_code == 0, result.output
    assert "expired 2 message(s)" in result.stdout
    remaining = {e.id for e in gateway.settings.database.call(find_entries, QuarantineFilter(), time.time())}
    assert remaining == {young, orphan_young}
    assert {file_id(f) for f in stored_files(gateway.root)} == {young, orphan_young}
    assert old not in remaining
    assert orphan_old not in remaining
    assert not leftover.exists()
    assert fresh_leftover.exists()


def test_reindex_adopts_orphans_reports_damage_and_missing_files(gateway: Gateway) -> None:
    data = message("orphaned", extra="Return-Path: <forged@x.test>\r\n")
    orphan = gateway.quarantine(data, recipients=("a@x.test", "b@x.test"), index=False)
    indexed = gateway.quarantine(message())
    lost = gateway.quarantine(message())
    [lost_file] = [f for f in stored_files(gateway.root) if file_id(f) == lost]
    os.unlink(os.path.join(gateway.root, lost_file))
    foreign = Path(gateway.root, "virus", "new", "1.M1P1Q1_20240101T000000-0badf00d.host")
    foreign.write_bytes(b"Subject: not ours\r\n\r\nhi\r\n")

    result = gateway.cli("reindex")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"adopted {orphan}", "reindexed: 1 adopted, 1 unreadable, 1 missing"]
    assert "not a quarantine file: virus/new/1.M1P1Q1_20240101T000000-0badf00d.host" in result.stderr
    assert f"{lost}: indexed, but its file is missing" in result.stderr
    entry = gateway.entry(orphan)
    assert (entry.sender, entry.recipients, entry.subject, entry.size) == (
        "alice@sender.example",
        ("a@x.test", "b@x.test"),
        "orphaned",
        len(data),
    )
    [path] = [os.path.join(gateway.root, f) for f in stored_files(gateway.root) if file_id(f) == orphan]
    assert read_original(path) == data
    assert gateway.entry(indexed) is not None
    again = gateway.cli("reindex")
    assert again.stdout.splitlines()[-1] == "reindexed: 0 adopted, 1 unreadable, 1 missing"


def test_expire_forgets_idle_poison_counts_and_removes_dead_workers_spool_files(gateway: Gateway) -> None:
    """`quarantine expire` (the daily cron line) also purges what the mail path leaves behind."""
    database = gateway.settings.database
    assert database is not None
    assert gateway.settings.poison is not None  # a loaded config has poison()
    spool = Path(gateway.settings.spool_dir)
    spool.mkdir(parents=True, exist_ok=True)  # STATE_DIR and its spool, as serve makes them
    now = time.time()
    database.call(lambda c: poison.count_attempt(c, "idle", now - 8 * DAY, 30 * DAY, "ContentError", "a@x.test"))
    database.call(lambda c: poison.count_attempt(c, "recent", now - DAY, 30 * DAY, "ContentError", "a@x.test"))
    dead = next(pid for pid in range(4_000_000, 4_100_000) if not process_runs(pid))
    left_by_dead = spool / f"mailsift-{dead}-abc.eml"
    left_by_dead.write_bytes(b"half a message")
    ours = spool / f"mailsift-{os.getpid()}-def.eml"
    ours.write_bytes(b"a message being received")

    result = gateway.cli("expire", "--older-than", "30d")
    assert result.exit_code == 0, result.output
    assert "purged 1 poison-mail attempt count(s)" in result.stdout
    assert "removed 1 stale spool file(s)" in result.stdout
    keys = database.call(lambda c: sorted(row.key for row in c.execute(select(poison.table))))
    assert keys == ["recent"]
    assert not left_by_dead.exists()
    assert ours.exists()


def test_release_into_the_quick_starts_local_maildir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 10: the bundled config has no SMTP_SERVER; its smtpd delivers into
    local_maildir("mail"), and a release goes there too (it said "no next hop")."""
    state = tmp_path / "state"
    monkeypatch.setenv("MAILSIFT_STATE_DIR", str(state))
    config = config_module.load(config_module.DEFAULT_CONFIG)
    try:
        assert config.settings.smtp_server is None
        store = QuarantineStore(config.settings.quarantine_dir, config.settings.database, retry_window=0)
        mail = Mail(Envelope(sender="alice@sender.example", recipients=["bob@example.test"]), message())
        path = asyncio.run(store.put(mail, "virus", ScanResult(1.0, "Eicar-Test-Signature", "clamd")))
        released = CliRunner().invoke(
            quarantine_group, ["release", "-c", config_module.DEFAULT_CONFIG, file_id(path), "--by", "admin"]
        )
        assert released.exit_code == 0, released.output
        [delivered] = list((state / "mail" / "bob@example.test" / "new").iterdir())
        assert delivered.read_bytes().replace(b"\r\n", b"\n").endswith(message().replace(b"\r\n", b"\n"))
    finally:
        config.settings.database.dispose()


def test_release_needs_one_next_hop_when_the_services_differ(tmp_path: Path) -> None:
    path = tmp_path / "two-hops.py"
    path.write_text(
        f"from mailsift import *\nSTATE_DIR = {str(tmp_path / 'state')!r}\nUSER = None\nSRV = [\n"
        "    smtpd([], '127.0.0.1', 10024, next_hop=local_maildir('mail')),\n"
        "    smtpd([], '127.0.0.1', 10026, next_hop=('127.0.0.1', 10025)),\n]\n"
    )
    assert config_module.load(str(path)).settings.release_hop is None
    path.write_text(path.read_text().replace("next_hop=('127.0.0.1', 10025)", "next_hop=local_maildir('mail')"))
    assert config_module.load(str(path)).settings.release_hop is not None  # the same hop: used


def test_show_and_release_a_message_kept_in_the_database(db_gateway: Gateway, next_hop: RecordingServer) -> None:
    data = message("=?utf-8?q?Gr=C3=BC=C3=9Fe?=", "secret body")
    entry_id = db_gateway.quarantine(data, recipients=("bob@example.test", "carol@example.test"))
    assert db_gateway.entry(entry_id).path == DATABASE_PATH
    assert list(stored_files(db_gateway.root)) == []  # no file on this node
    shown = db_gateway.cli("show", entry_id)
    assert shown.exit_code == 0, shown.output
    assert "Verdict:    level=1.00 name=Test.Virus scanner=regexp_scan" in shown.stdout
    assert "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=" in shown.stdout
    assert "File:       the database" in shown.stdout
    assert "secret body" not in shown.stdout
    raw = db_gateway.cli("show", entry_id, "--raw")
    assert raw.exit_code == 0
    assert raw.stdout_bytes == data
    released = db_gateway.cli("release", entry_id, "--by", "admin-ann")
    assert released.exit_code == 0, released.output
    [received] = next_hop.messages
    assert received.recipients == ["bob@example.test", "carol@example.test"]
    assert received.data.replace(b"\r\n", b"\n") == data.replace(b"\r\n", b"\n")
    assert db_gateway.entry(entry_id).state == RELEASED
    assert db_gateway.cli("delete", entry_id).exit_code == 0
    assert db_gateway.cli("show", entry_id).exit_code == 1


def snapshot(gateway: Gateway) -> tuple[dict[str, bytes], list[dict[str, object]]]:
    """Every stored file (relative path -> its bytes, head included) and the index without paths."""
    files = {f: Path(gateway.root, f).read_bytes() for f in stored_files(gateway.root)}
    rows = gateway.settings.database.call(find_entries, QuarantineFilter(), 0.0)
    return files, [{k: v for k, v in e.as_dict().items() if k != "path"} for e in rows]


def chunk_count(gateway: Gateway) -> int:
    return len(gateway.settings.database.call(lambda c: c.execute(select(quarantine_chunk_table.c.seq)).all()))


def test_migrate_files_to_database_and_back_is_byte_identical(gateway: Gateway, next_hop: RecordingServer) -> None:
    ids = [
        gateway.quarantine(message("one")),
        gateway.quarantine(message("two", "x" * 3_000_000), category="spam"),  # several chunks
        gateway.quarantine(message("three"), recipients=("bob@example.test", "carol@example.test")),
    ]
    before_files, before_rows = snapshot(gateway)
    assert len(before_files) == 3
    moved = gateway.cli("migrate", "--to", "database")
    assert moved.exit_code == 0, moved.output
    assert "migrated to the database: 3 moved, 0 already there, 0 leftover file(s) removed, 0 failed" in moved.stdout
    assert "QUARANTINE_STORE is 'files'" in moved.stderr
    assert list(stored_files(gateway.root)) == []
    assert all(gateway.entry(i).path == DATABASE_PATH for i in ids)
    assert chunk_count(gateway) == 3 + 1 + 3 + 1  # heads, and 3 MB in 1 MB chunks
    raw = gateway.cli("show", ids[1], "--raw")
    assert raw.stdout_bytes == message("two", "x" * 3_000_000)
    again = gateway.cli("migrate", "--to", "database")  # idempotent
    assert "0 moved, 3 already there" in again.stdout
    back = gateway.cli("migrate", "--to", "files")
    assert back.exit_code == 0, back.output
    assert "migrated to the files: 3 moved, 0 already there" in back.stdout
    assert chunk_count(gateway) == 0
    after_files, after_rows = snapshot(gateway)
    assert after_rows == before_rows
    assert sorted(after_files.values()) == sorted(before_files.values()), "not byte-identical"
    assert {file_id(f) for f in after_files} == set(ids)
    assert gateway.cli("release", ids[2]).exit_code == 0
    assert next_hop.messages[0].data.replace(b"\r\n", b"\n") == message("three").replace(b"\r\n", b"\n")


@pytest.mark.parametrize("point", ["migrate-uncommitted", "migrate-committed", "migrate-written"])
def test_migrate_stopped_midway_loses_nothing_and_a_second_run_finishes(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """A crash at each step of one entry's move (raised where the test-only crash point would SIGKILL:
    inside the transaction, after its commit, after the file's fsync): every message is still whole
    in one place, and the next run finishes, with no second copy."""
    ids = [gateway.quarantine(message(f"m{n}")) for n in range(3)]
    before_files, before_rows = snapshot(gateway)

    class Crash(BaseException):
        pass

    def crash_at(name: str) -> None:
        if name == point:
            raise Crash(name)

    if point == "migrate-written":  # a crash on the way back: first move everything into the database
        assert gateway.cli("migrate", "--to", "database").exit_code == 0
    monkeypatch.setattr(migrate_module, "crash_point", crash_at)
    to = "files" if point == "migrate-written" else "database"
    with pytest.raises(Crash):
        migrate_module.migrate(gateway.settings, to)
    monkeypatch.undo()
    for entry_id in ids:  # every message readable, whole, wherever it is now
        assert gateway.cli("show", entry_id, "--raw").stdout_bytes == message(f"m{ids.index(entry_id)}")
    finished = gateway.cli("migrate", "--to", to)
    assert finished.exit_code == 0, finished.output
    if to == "database":
        assert list(stored_files(gateway.root)) == []
        assert chunk_count(gateway) == 6
        if point == "migrate-committed":
            assert "1 leftover file(s) removed" in finished.stdout
    else:
        assert chunk_count(gateway) == 0
        assert len(list(stored_files(gateway.root))) == 3, "a second file for the entry written before the crash"
        after_files, after_rows = snapshot(gateway)
        assert after_rows == before_rows
        assert sorted(after_files.values()) == sorted(before_files.values())
    for entry_id in ids:
        assert gateway.cli("show", entry_id, "--raw").stdout_bytes == message(f"m{ids.index(entry_id)}")


def test_migrate_bounded_memory(gateway: Gateway, tmp_path: Path) -> None:
    """A 20 MB message moved into the database and back: the heap's peak stays below 8 MB."""
    big = tmp_path / "big.eml"
    with open(big, "wb") as handle:
        handle.write(b"Subject: big\r\n\r\n")
        for _ in range(20):
            handle.write((b"y" * 1022 + b"\r\n") * 1024)
    store = QuarantineStore(gateway.root, gateway.settings.database, retry_window=0)
    mail = Mail(Envelope(sender="alice@sender.example", recipients=["bob@example.test"]), path=str(big))
    asyncio.run(store.put(mail, "virus", ScanResult(1.0, "Test.Virus", "regexp_scan")))
    original = list(stored_files(gateway.root))
    content = Path(gateway.root, original[0]).read_bytes()
    for to in ("database", "files"):
        tracemalloc.start()
        try:
            done = migrate_module.migrate(gateway.settings, to)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert (done.moved, done.failed) == (1, [])
        assert peak < 8 * 1024 * 1024, f"migrate --to {to}: {peak} bytes at the heap's peak"
    [after] = list(stored_files(gateway.root))
    assert Path(gateway.root, after).read_bytes() == content
