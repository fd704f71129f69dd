"""The pieces of the privilege model (mailsift.supervisor, services.base, services.daemons, cli.common).

The real drop of a running ``serve`` is tests/security/test_privilege_drop.py.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mailsift import config as config_module
from mailsift import supervisor
from mailsift.cli.common import UMASK
from mailsift.errors import ConfigError
from mailsift.services.base import socket_ids
from mailsift.services.daemons import clamd_daemon
from mailsift.services.smtpd import smtpd

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")


def load(tmp_path: Path, text: str = "") -> config_module.Config:
    path = tmp_path / "config.py"
    path.write_text(f"from mailsift import *\nSTATE_DIR = {str(tmp_path / 'state')!r}\n{text}\n")
    return config_module.load(str(path))


def test_one_umask_for_serve_and_the_commands() -> None:
    assert supervisor.UMASK == UMASK == 0o027


def test_a_command_creates_the_database_closed_to_others(tmp_path: Path) -> None:
    """Finding 5: mailsift.db (and its -wal, -shm) were 0644 whatever made them."""
    config = tmp_path / "config.py"
    config.write_text(f"from mailsift import *\nSTATE_DIR = {str(tmp_path / 'state')!r}\nUSER = None\n")
    done = subprocess.run(
        [sys.executable, "-m", "mailsift", "user", "add", "-c", str(config), "alice", "--password-stdin"],
        input="a long enough password\n",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        preexec_fn=lambda: os.umask(0o022),  # a usual login umask: mailsift sets its own
    )
    assert done.returncode == 0, done.stderr
    made = sorted((tmp_path / "state").glob("mailsift.db*"))
    assert made
    for path in made:
        assert stat.S_IMODE(path.stat().st_mode) & 0o027 == 0, f"{path} is {path.stat().st_mode:o}"


def test_user_defaults_to_mailsift_and_none_keeps_the_current_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAILSIFT_USER", raising=False)
    assert load(tmp_path).settings.user == "mailsift"
    assert load(tmp_path, "USER = None").settings.user is None
    monkeypatch.setenv("MAILSIFT_USER", "")
    assert load(tmp_path).settings.user is None
    with pytest.raises(ConfigError, match="USER must be a user name"):
        load(tmp_path, "USER = 0")


@root_only
def test_an_unknown_user_is_a_config_error_not_a_root_worker(tmp_path: Path) -> None:
    config = load(tmp_path, "USER = 'no-such-user-here'")
    with pytest.raises(ConfigError, match=r"no user 'no-such-user-here'.*will not run as root") as raised:
        supervisor.service_account(config)
    assert raised.value.lineno == 3


def test_not_root_user_must_be_the_current_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load(tmp_path, "USER = 'nobody'")
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    with pytest.raises(ConfigError, match="cannot switch users"):
        supervisor.service_account(config)
    monkeypatch.setattr(os, "geteuid", lambda: pwd.getpwnam("nobody").pw_uid)
    assert supervisor.service_account(config) is None  # already that user: nothing to drop
    assert supervisor.service_account(load(tmp_path, "USER = None")) is None


@root_only
def test_drop_privileges_in_a_child(tmp_path: Path) -> None:
    config = load(tmp_path, "USER = 'nobody'")
    account = supervisor.service_account(config)
    assert account is not None
    assert account.uid == pwd.getpwnam("nobody").pw_uid
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        supervisor.drop_privileges(account)
        os.write(write, f"{os.getuid()} {os.geteuid()} {os.getgid()} {sorted(os.getgroups())}".encode())
        os._exit(0)
    os.close(write)
    seen = os.read(read, 200).decode()
    os.waitpid(pid, 0)
    assert seen == f"{account.uid} {account.uid} {account.gid} {sorted(set(account.groups))}"


def test_state_dir_is_made_0750_and_0751_when_a_daemon_runs_as_its_own_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load(tmp_path, "USER = None")
    supervisor.prepare_state(config)
    for path in (config.settings.state_dir, config.settings.spool_dir, config.settings.quarantine_dir):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o750, path
    other = Path(tempfile.mkdtemp(prefix="ms-", dir="/tmp"))  # short: a unix socket path has 108 bytes
    try:
        daemon = clamd_daemon(str(other / "state" / "clamd" / "clamd.sock"))
        monkeypatch.setattr(clamd_daemon, "runs_as_own_user", property(lambda self: True))
        config = load(other, "USER = None")
        config = config.__class__(config.path, config.settings, config.scanners, config.services, (daemon,))
        supervisor.prepare_state(config)
        assert stat.S_IMODE(os.stat(config.settings.state_dir).st_mode) == 0o751
    finally:
        shutil.rmtree(other)


def test_loose_modes_are_reported_not_changed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = load(tmp_path, "USER = None")
    supervisor.prepare_state(config)
    database = Path(config.settings.state_dir) / "mailsift.db"
    database.write_bytes(b"")
    database.chmod(0o644)
    spooled = Path(config.settings.spool_dir) / "left.eml"
    spooled.write_bytes(b"")
    spooled.chmod(0o660)
    (Path(config.settings.state_dir) / "fine").write_bytes(b"")
    (Path(config.settings.state_dir) / "fine").chmod(0o640)
    with caplog.at_level(logging.WARNING, "mailsift.supervisor"):
        problems = supervisor.report_loose_modes(config)
    assert len(problems) == 2
    assert f"{database} is mode 0644" in problems[0]
    assert f"{spooled} is mode 0660" in problems[1]
    assert "does not change it" in caplog.text
    assert stat.S_IMODE(database.stat().st_mode) == 0o644  # reported, not changed


def test_wrong_owner_is_reported(tmp_path: Path) -> None:
    config = load(tmp_path, "USER = None")
    supervisor.prepare_state(config)
    (Path(config.settings.state_dir) / "mailsift.db").write_bytes(b"")
    account = supervisor.Account("someone", os.geteuid() + 1, os.getegid(), ())
    problems = supervisor.loose_modes(config.settings.state_dir, account)
    assert any("mailsift.db is owned by uid" in p for p in problems)


def test_unix_socket_mode_and_default_owner(tmp_path: Path) -> None:
    service = smtpd([], f"unix:{tmp_path / 'a.sock'}", 0, socket_mode=0o620)
    with service.bind() as sock:
        info = os.stat(tmp_path / "a.sock")
        assert stat.S_IMODE(info.st_mode) == 0o620
        assert (info.st_uid, info.st_gid) == (os.geteuid(), os.getegid())
        assert sock.family.name == "AF_UNIX"


@root_only
def test_unix_socket_owner_and_group(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    service = smtpd([], f"unix:{tmp_path / 'b.sock'}", 0, socket_owner="nobody", socket_group=group)
    with service.bind():
        info = os.stat(tmp_path / "b.sock")
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (nobody.pw_uid, nobody.pw_gid, 0o660)
    with smtpd([], f"unix:{tmp_path / 'c.sock'}", 0).bind(default_user="nobody"):  # USER, when dropping
        assert os.stat(tmp_path / "c.sock").st_uid == nobody.pw_uid


def test_unix_socket_owner_checks() -> None:
    with pytest.raises(ConfigError, match="socket_owner must be a user"):
        smtpd([], "unix:/tmp/x.sock", 0, socket_owner="")
    with pytest.raises(ConfigError, match="no user 'no-such-user-here'"):
        socket_ids("no-such-user-here", None, None, "smtpd")
    with pytest.raises(ConfigError, match="no group 'no-such-group-here'"):
        socket_ids(None, "no-such-group-here", None, "smtpd")
    assert socket_ids(None, None, None, "smtpd") == (-1, -1)


def test_clamd_socket_reachable_through_the_workers_group(tmp_path: Path) -> None:
    daemon = clamd_daemon(str(tmp_path / "clamd" / "clamd.sock"), database=str(tmp_path))
    gid = os.getegid()
    daemon.prepare(str(tmp_path), clients_group=gid)
    conf = (tmp_path / "clamd" / "clamd.conf").read_text()
    assert "LocalSocketMode 666\n" in conf  # reachable only through the directory: clamd's, in the workers' group
    info = os.stat(tmp_path / "clamd")
    assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (gid, 0o750)
    assert stat.S_IMODE(os.stat(tmp_path / "clamd" / "tmp").st_mode) == 0o700


@root_only
def test_code_the_account_cannot_read_is_found_before_any_worker_starts() -> None:
    """A .venv built from a Python under /root (0700): a dropped worker could not import."""
    account = supervisor.Account("nobody", pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid, ())
    closed = Path(tempfile.mkdtemp(prefix="mailsift-closed-", dir="/tmp"))
    try:
        (closed / "lib").mkdir()
        closed.chmod(0o700)
        assert supervisor.unreadable_code(account, [str(closed / "lib")]) == [str(closed / "lib")]
        closed.chmod(0o755)
        assert supervisor.unreadable_code(account, [str(closed / "lib")]) == []
    finally:
        shutil.rmtree(closed)
