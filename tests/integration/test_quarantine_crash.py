"""A real ``mailsift serve`` SIGKILLed inside a quarantining transaction never accepts-then-loses.

The worker kills itself (SIGKILL: no cleanup, no finally) at a point named by
the test-only ``MAILSIFT_TEST_CRASH_POINT`` (see :mod:`mailsift.storage.quarantine.store`),
once: the marker file it creates lets the MTA's retry go through.  For every
point the test checks what a sending MTA relies on:

* the crashed attempt got no 250 (so the MTA keeps the message and retries);
* what the crash left behind is either nothing visible (a ``tmp/`` file), an
  orphan file that ``quarantine reindex`` adopts, or a complete indexed entry;
* the retry is answered 250 only with a complete, indexed entry holding
  exactly the message sent, and it is the only one: after a crash past the
  fsync the retry reuses the crashed attempt's copy (found by its row, or by
  the store's retry marker when the row was never committed), so no second
  file and no second row (issue 11, finding 8);
* after ``reindex`` every stored file has a row and every row its file.

Every test runs for both stores (``QUARANTINE_STORE``, issue 15): with
``"database"`` the chunks and the row are one transaction, so a kill between
writing and commit (``quarantine-stored``: chunks written, ``quarantine-uncommitted``:
row written too) leaves nothing at all, and after the commit the entry is whole;
``quarantine-written`` (a file's content, not yet renamed) is a file-store point only.
"""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailsift import config as config_module
from mailsift.cli.quarantine import quarantine_group
from mailsift.storage.quarantine.dbstore import read_chunks, stored_ids
from mailsift.storage.quarantine.index import QuarantineFilter, find_entries, get_entry
from mailsift.storage.quarantine.store import CRASH_POINT_VARIABLE, CRASH_POINTS, read_original, stored_files
from mailsift.testing import RecordingServer, free_port

MAILSIFT = [sys.executable, "-m", "mailsift"]

CONFIG = """\
from mailsift import *
STATE_DIR = {state!r}
SMTP_SERVER = ("127.0.0.1", {next_hop})
SCANNERS = [quarantine("virus", regexp_scan([("Test.Virus", "VIRUS-SIGNATURE")]))]
SRV = [smtpd(SCANNERS, "127.0.0.1", {port})]
QUARANTINE_STORE = {store!r}
"""


class Gateway:
    """``mailsift serve`` with one worker, started with an optional crash point."""

    def __init__(self, tmp_path: Path, next_hop: int, store: str = "files") -> None:
        self.port = free_port()
        self.store = store
        self.state = tmp_path / "state"
        self.config = tmp_path / "mailsift.conf.py"
        self.config.write_text(CONFIG.format(state=str(self.state), next_hop=next_hop, port=self.port, store=store))
        self.log = tmp_path / "serve.log"
        self.marker = tmp_path / "crashed"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, crash_point: str = "") -> None:
        env = dict(os.environ)
        env.pop(CRASH_POINT_VARIABLE, None)
        if crash_point:
            env[CRASH_POINT_VARIABLE] = f"{crash_point}:{self.marker}"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*MAILSIFT, "serve", "-c", str(self.config), "-w", "1", "--drain-seconds", "5"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=5) as client:
                    client.noop()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("mailsift serve did not start:\n" + self.log.read_text())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def entries(self):  # type: ignore[no-untyped-def]
        settings = config_module.load(str(self.config)).settings
        try:
            return settings.database.call(find_entries, QuarantineFilter(), time.time())
        finally:
            settings.database.dispose()

    def files(self) -> dict[str, bytes]:
        """Every message file in new/ or cur/, by relative path, with its original content; with the
        database store, every message kept in the database (by ``:database``: one at most here)."""
        root = str(self.state / "quarantine")
        found = {f: read_original(os.path.join(root, f)) for f in stored_files(root)}
        settings = config_module.load(str(self.config)).settings
        try:
            for entry_id in settings.database.call(stored_ids):
                entry = settings.database.call(get_entry, entry_id)
                assert entry is not None, f"chunks without their row: {entry_id} half-written"
                found[entry.path] = b"".join(read_chunks(settings.database, entry))
        finally:
            settings.database.dispose()
        return found

    def tmp_files(self) -> list[str]:
        folder = self.state / "quarantine" / "virus" / "tmp"
        return sorted(os.listdir(folder)) if folder.exists() else []


@pytest.fixture
def next_hop() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


@pytest.fixture(params=["files", "database"])
def gateway(request: pytest.FixtureRequest, tmp_path: Path, next_hop: RecordingServer) -> Iterator[Gateway]:
    instance = Gateway(tmp_path, next_hop.port, request.param)
    yield instance
    instance.stop()


def send(port: int, data: bytes) -> int:
    """One SMTP transaction; the final reply code, or 0 if the connection died without one."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("alice@sender.example", ["bob@example.test"], data)
    except smtplib.SMTPResponseException as error:
        return error.smtp_code
    except (smtplib.SMTPServerDisconnected, ConnectionError):
        return 0
    return 250


def send_until_answered(port: int, data: bytes, seconds: float = 60) -> int:
    """As an MTA retries: until the gateway (its worker restarted) gives a final answer."""
    deadline = time.monotonic() + seconds
    while True:
        code = send(port, data)
        if code != 0 or time.monotonic() > deadline:
            return code
        time.sleep(0.2)


def message(tag: str) -> bytes:
    return f"From: alice@sender.example\r\nSubject: {tag}\r\n\r\nVIRUS-SIGNATURE {tag}\r\n".encode()


def test_without_a_crash_point_a_quarantined_mail_is_indexed_before_250(
    gateway: Gateway, next_hop: RecordingServer
) -> None:
    gateway.start()
    data = message("plain")
    assert send(gateway.port, data) == 250
    rows = gateway.entries()
    assert len(rows) == 1, "no index row: does MailPath give settings.database to its QuarantineStore?"
    [entry] = rows
    assert gateway.files() == {entry.path: data}
    assert next_hop.messages == []
    assert not gateway.marker.exists()


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_inside_quarantining_never_accepts_and_loses(
    point: str, gateway: Gateway, next_hop: RecordingServer
) -> None:
    if gateway.store == "database" and point == "quarantine-written":
        pytest.skip("a file store point: the database store writes no file")
    gateway.start(crash_point=point)
    data = message(point)

    assert send(gateway.port, data) == 0  # the worker died: no 250, the MTA keeps the message
    assert gateway.marker.exists(), "the crash point was never reached"
    rows, files = gateway.entries(), gateway.files()
    assert all(files[e.path] == data for e in rows), "an indexed entry must be complete"
    if point == "quarantine-written":
        assert (rows, files) == ([], {})  # at most a tmp/ file, which no one answered for
        assert len(gateway.tmp_files()) == 1
    elif gateway.store == "database" and point in ("quarantine-stored", "quarantine-uncommitted"):
        assert (rows, files) == ([], {})  # killed between writing and commit: nothing half-written shows
    elif point in ("quarantine-stored", "quarantine-uncommitted"):
        assert rows == []
        assert list(files.values()) == [data]  # an orphan, fsynced: reindex adopts it
    else:  # committed, then killed before the reply
        assert [e.path for e in rows] == list(files)
        assert list(files.values()) == [data]

    assert send_until_answered(gateway.port, data) == 250  # the MTA's retry
    after = gateway.entries()
    assert len(after) == 1, "the retry's 250 came with exactly one indexed entry (no second copy)"
    [entry] = after
    assert gateway.files() == {entry.path: data}, "no second file"
    if point != "quarantine-written" and (gateway.store == "files" or point == "quarantine-indexed"):
        # the crashed attempt's fsynced (committed) copy is the one reused
        assert entry.path in files
        assert "retried message: " in gateway.log.read_text(), "the log says the copy was reused"
    assert entry.recipients == ("bob@example.test",)
    assert next_hop.messages == []

    result = CliRunner().invoke(quarantine_group, ["reindex", "-c", str(gateway.config)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "reindexed: 0 adopted, 0 unreadable, 0 missing"
    final_rows, final_files = gateway.entries(), gateway.files()
    assert [e.path for e in final_rows] == list(final_files) == [entry.path]
    assert all(content == data for content in final_files.values())
    assert not (gateway.state / "quarantine" / ".retry").exists() or not os.listdir(
        gateway.state / "quarantine" / ".retry"
    ), "no retry marker left once the copy is indexed"
