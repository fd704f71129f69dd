"""The supervisor's reload path (SIGHUP), in process: a rejected config changes nothing.

Workers are not forked here: ``_spawn`` and ``_kill`` are replaced by recorders,
so only the decision is tested (tests/integration/test_serve.py runs the real
``mailsift serve``).
"""

from __future__ import annotations

import gc
import logging
import socket
import sqlite3
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsift import config
from mailsift.core.hooks import Hook
from mailsift.message.mail import Envelope, Mail
from mailsift.scanners.base import MailTarget, Scanner
from mailsift.services.base import Service
from mailsift.services.daemons import Daemon
from mailsift.settings import Settings
from mailsift.storage.db import Database, sqlite
from mailsift.storage.policies import set_policy
from mailsift.supervisor import Supervisor, prepare_database
from mailsift.testing import free_port

RUNNING = """
from mailsift import *

STATE_DIR = {state!r}
DATABASE = db.sqlite({database!r})
SMTP_SERVER = ('127.0.0.1', 10025)
SCANNERS = [policy_enabled('clam', const(1.0, 'Scanned-By-Policy'))]
SRV = [smtpd(SCANNERS, '127.0.0.1', {port})]
"""

REJECTED = """
from mailsift import *

STATE_DIR = {state!r}
DATABASE = db.sqlite({database!r})
SMTP_SERVER = ('127.0.0.1', 10025)
SCANNERS = [policy_enabled('clam', const(1.0, 'Scanned-By-Policy'))]
HOOKS = [{hooks}]
SRV = [{services}]
{tail}
"""

# (the parts of REJECTED that differ, what the log says, the line it names (0: none))
FAILURES = {
    "hook check": ({"hooks": "log_file('/nonexistent-mailsift-dir/mail.log')"}, "log_file: directory", 7),
    "service check": ({"services": "smtpd(SCANNERS, '127.0.0.1', {new_port}, next_hop=5)"}, "next hop", 8),
    "daemon check": (
        {"services": "smtpd(SCANNERS, '127.0.0.1', {new_port}), chroot_execvp('/nonexistent/mailsift-none')"},
        "not found",
        8,
    ),
    "SRV = []": ({"services": ""}, "SRV lists no services", 8),
    "SystemExit in the file": ({"tail": "raise SystemExit(3)"}, "SystemExit: 3", 9),
    "STATE_DIR cannot be created": ({"state": "{file}/state"}, "STATE_DIR", 3),
    "a port already taken": (
        {"services": "smtpd(SCANNERS, '127.0.0.1', {new_port}), smtpd(SCANNERS, '127.0.0.1', {taken_port})"},
        "cannot listen",
        8,
    ),
}


def write(path: Path, text: str) -> None:
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")


def config_objects() -> list[object]:
    gc.collect()
    kinds = (config.Config, Settings, Database, Scanner, Service, Daemon, Hook, socket.socket)
    return [o for o in gc.get_objects() if isinstance(o, kinds)]


async def verdict(scanners: tuple[Scanner, ...]) -> list[str]:
    target = MailTarget(Mail(Envelope(sender="a@example.test", recipients=["b@example.test"]), b"\r\nx\r\n"))
    return [(await scanner.scan(target)).name for scanner in scanners]


@pytest.fixture
def taken() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


@pytest.mark.parametrize("failure", FAILURES, ids=list(FAILURES))
async def test_a_rejected_reload_keeps_the_running_config(
    tmp_path: Path, failure: str, taken: int, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts, message, lineno = FAILURES[failure]
    path = tmp_path / "mailsift.conf.py"
    state, a_db, b_db = tmp_path / "state", tmp_path / "a.db", tmp_path / "b.db"
    write(path, RUNNING.format(state=str(state), database=str(a_db), port=free_port()))
    running = config.load(str(path))
    assert running.settings.database is not None
    running.settings.database.call(set_policy, "", "clam=yes", 1.0)
    supervisor = Supervisor(running, workers=2)
    actions: list[str] = []
    monkeypatch.setattr(supervisor, "_spawn", lambda c: actions.append(f"spawn {c.path}"))
    monkeypatch.setattr(supervisor, "_kill", lambda pid, signum: actions.append(f"kill {pid}"))
    monkeypatch.setattr(supervisor.daemons, "apply", lambda c: actions.append("daemons"))
    supervisor._bind(running)
    sockets = dict(supervisor.sockets)
    (tmp_path / "a-file").write_text("")
    new_port = free_port()
    values = {"state": str(state), "hooks": "", "services": "smtpd(SCANNERS, '127.0.0.1', {new_port})", "tail": ""}
    values.update(parts)
    values = {k: v.format(new_port=new_port, taken_port=taken, file=tmp_path / "a-file") for k, v in values.items()}
    write(path, REJECTED.format(database=str(b_db), **values))
    before = {id(o) for o in config_objects()}

    with caplog.at_level(logging.INFO, "mailsift.supervisor"):
        supervisor.reload()  # must not raise, whatever the new file does

    leftovers = [o for o in config_objects() if id(o) not in before]
    assert leftovers == [], f"objects of the rejected config still reachable: {leftovers}"
    assert supervisor.config is running
    assert supervisor.sockets == sockets
    assert actions == []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", new_port))  # the rejected config's new socket was closed
    assert await verdict(running.scanners) == ["Scanned-By-Policy"]
    assert not b_db.exists()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "reload failed, keeping the running config" in errors[0]
    assert f"{path}:{lineno}: " in errors[0]
    assert message in errors[0]
    for sock in supervisor.sockets.values():
        sock.close()
    running.settings.database.dispose()


def schema_revisions(path: Path) -> set[str]:
    with sqlite3.connect(path) as connection:
        return {row[0] for row in connection.execute("SELECT version_num FROM alembic_version")}


def test_a_reload_brings_a_new_sqlite_database_up_to_date_before_its_workers_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers forked together used to run the migrations on their first message, each on the
    fresh file, and could fail with "database is locked" (451).  The supervisor now does it once,
    before forking, and leaves no connection open for the children to inherit."""
    path = tmp_path / "mailsift.conf.py"
    state, a_db, b_db = tmp_path / "state", tmp_path / "a.db", tmp_path / "b.db"
    write(path, RUNNING.format(state=str(state), database=str(a_db), port=free_port()))
    supervisor = Supervisor(config.load(str(path)), workers=2)
    spawned: list[Database | None] = []
    monkeypatch.setattr(supervisor, "_spawn", lambda c: spawned.append(c.settings.database))
    monkeypatch.setattr(supervisor, "_kill", lambda pid, signum: None)
    monkeypatch.setattr(supervisor.daemons, "apply", lambda c: None)
    supervisor._bind(supervisor.config)
    write(path, RUNNING.format(state=str(state), database=str(b_db), port=free_port()))

    try:
        supervisor.reload()
    finally:
        for sock in supervisor.sockets.values():
            sock.close()

    assert len(spawned) == 2
    assert spawned[0] is supervisor.config.settings.database
    reference = tmp_path / "reference.db"
    reference_db = sqlite(str(reference))
    reference_db.configure(str(tmp_path))
    reference_db.migrate()
    assert schema_revisions(b_db) == schema_revisions(reference) != set()
    assert spawned[0] is not None
    assert spawned[0]._engine is None


def test_a_database_the_supervisor_cannot_open_is_left_to_the_workers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "mailsift.conf.py"
    unreachable = tmp_path / "no-such-dir" / "mailsift.db"
    write(path, RUNNING.format(state=str(tmp_path / "state"), database=str(unreachable), port=free_port()))
    loaded = config.load(str(path))
    with caplog.at_level(logging.WARNING, "mailsift.supervisor"):
        prepare_database(loaded)  # must not raise: the workers answer 451 while it fails
    assert "the workers will try again" in caplog.text
    assert "unable to open database file" in caplog.text


def without_processes(supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    """No worker or daemon is started or stopped: run() serves nothing and returns at once."""
    monkeypatch.setattr(supervisor, "_spawn", lambda c: None)
    monkeypatch.setattr(supervisor, "_kill", lambda pid, signum: None)
    monkeypatch.setattr(supervisor.daemons, "apply", lambda c: None)
    monkeypatch.setattr(supervisor.daemons, "stop_all", lambda: None)
    monkeypatch.setattr(supervisor, "_reap", lambda: supervisor.children.clear())


def reload_and_close(supervisor: Supervisor) -> None:
    """SIGHUP's reload over the running config's sockets, closed after."""
    supervisor._bind(supervisor.config)
    try:
        supervisor.reload()
    finally:
        for sock in supervisor.sockets.values():
            sock.close()


def test_start_and_reload_log_the_node_and_the_config_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 15 item 5: a node running a different config is visible in the log (and in /metrics)."""
    path = tmp_path / "mailsift.conf.py"
    state, database = tmp_path / "state", tmp_path / "m.db"
    write(path, RUNNING.format(state=str(state), database=str(database), port=free_port()) + "NODE = 'gw-a'\n")
    first = config.load(str(path))
    supervisor = Supervisor(first, workers=1)
    without_processes(supervisor, monkeypatch)
    with caplog.at_level(logging.INFO, "mailsift.supervisor"):
        assert supervisor.run() == 0  # no children: serves nothing, stops at once
        write(path, RUNNING.format(state=str(state), database=str(database), port=free_port()) + "NODE = 'gw-a'\n#\n")
        reload_and_close(supervisor)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("node gw-a: config ")]
    fingerprints = [line.rsplit(" ", 1)[-1] for line in lines]
    assert len(lines) == 2, caplog.text
    assert fingerprints[0] == first.settings.config_fingerprint
    assert fingerprints[1] == supervisor.config.settings.config_fingerprint != fingerprints[0]  # the file changed
    assert all(len(f) == 12 and int(f, 16) >= 0 for f in fingerprints)


SAGATOR_SERVED = """
from srv import *
from scanners import *

STATE_DIR = {state!r}
SMTP_SERVER = ('127.0.0.1', 10025)
SCANNERS = [report('admin@example.test', const(0.0, 'clean'))]
SRV = [collector('', -1, '/tmp/status'), smtpd(SCANNERS, '127.0.0.1', {port}, {prefork})]
"""


def test_serve_logs_check_configs_sagator_warnings_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What check-config warns about a SAGATOR config (prefork ignored, collector's statfile, report's
    argument...) is in serve's log at start, once; a reload logs only what is new."""
    path = tmp_path / "sagator.conf"
    state, port = tmp_path / "state", free_port()
    write(path, SAGATOR_SERVED.format(state=str(state), port=port, prefork=4))
    first = config.load(str(path))
    supervisor = Supervisor(first, workers=1)
    without_processes(supervisor, monkeypatch)
    with caplog.at_level(logging.INFO, "mailsift.supervisor"):
        assert supervisor.run() == 0
        started = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        write(path, SAGATOR_SERVED.format(state=str(state), port=port, prefork=8))
        reload_and_close(supervisor)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(started) == 4, started
    assert any("prefork=4 is SAGATOR's process count and is not used" in w for w in started)
    assert any("statfile='/tmp/status' is not written" in w for w in started)
    assert any("report('admin@example.test', ...): this argument is not used" in w for w in started)
    assert all(w.startswith(f"{path}:") and ": warning: " in w for w in started)
    assert warned[len(started) :] == [w.replace("prefork=4", "prefork=8") for w in started if "prefork" in w]
