"""Finding 5: root everywhere, state readable by everyone.

The real ``mailsift serve`` is started as root with ``USER`` naming a test
user made for the purpose: the supervisor stays root, the workers run as the
user (uid, gid and groups read from /proc), everything under ``STATE_DIR`` is
the user's and closed to others (no file beyond 0640, no directory beyond
0750), and another unprivileged user (``nobody``) can read neither the
database, nor the log file, nor the quarantined mail.  A state command run as
root (``mailsift user add``, ``mailsift quarantine list``) leaves nothing owned
by root.  Before the fix the workers ran as uid 0 and ``mailsift.db`` was 0644.
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import accounts
from tests.helpers.samples import EICAR

pytestmark = pytest.mark.skipif(bool(accounts.can_make_users()), reason=accounts.can_make_users() or "root")

MAILSIFT = [sys.executable, "-m", "mailsift"]
USER = f"msdrop{os.getpid() % 100000}"

CONFIG = """\
from mailsift import *
STATE_DIR = {state!r}
USER = {user!r}
HOOKS = [log_file("mailsift.log")]
SCANNERS = [quarantine("virus", parsemail(regexp_scan([("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")])))]
SRV = [
    smtpd(SCANNERS, "127.0.0.1", {port}, next_hop=local_maildir("mail")),
    smtpd(SCANNERS, "unix:{sock}", 0, next_hop=local_maildir("mail"), socket_mode=0o660),
]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory every user may pass through (pytest's tmp_path is under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="mailsift-privdrop-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def user() -> Iterator[str]:
    with accounts.system_user(USER):
        yield USER


def readable_install(user: str) -> str:
    """Why ``user`` cannot run this checkout's Python and mailsift ("" when it can)."""
    found = accounts.as_user(user, sys.executable, "-c", "import mailsift.web.app, mailsift.cli.main")
    if found.returncode == 0:
        return ""
    return (
        f"{user} cannot run {sys.executable} with this checkout ({found.stderr.strip()[-200:]}): build .venv "
        "from /usr/bin/python3 (scripts/setup.sh) in a checkout outside /root"
    )


def message(subject: str, body: str) -> bytes:
    head = f"From: a@example.test\r\nTo: bob@example.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@t>\r\n"
    return f"{head}\r\n{body}\r\n".encode()


def send(port: int, data: bytes) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                client.sendmail("a@example.test", ["bob@example.test"], data)
            return
        except (OSError, smtplib.SMTPServerDisconnected):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def everything(root: Path) -> list[Path]:
    return [root, *sorted(root.rglob("*"))]


def test_serve_as_root_runs_its_workers_as_user_and_keeps_state_dir_closed(base: Path, user: str) -> None:
    why = readable_install(user)
    if why:
        pytest.skip(why)
    entry = accounts.pwd.getpwnam(user)
    state, run = base / "state", base / "run"
    state.mkdir(mode=0o700)  # log_file checks its directory at load; made by root: serve gives it to USER
    run.mkdir(mode=0o755)
    port = free_port()
    config = base / "config.py"
    config.write_text(CONFIG.format(state=str(state), user=user, port=port, sock=str(run / "smtpd.sock")))
    # a state command run as root on a fresh STATE_DIR, before serve: the database it makes is USER's
    added = subprocess.run(
        [*MAILSIFT, "user", "add", "-c", str(config), "alice", "--password-stdin"],
        input="a long enough password\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert added.returncode == 0, added.stderr
    output = (base / "serve.log").open("wb")
    serve = subprocess.Popen(
        [*MAILSIFT, "serve", "-c", str(config), "-w", "2"], stdout=output, stderr=subprocess.STDOUT
    )
    try:
        send(port, message("clean", "hello"))
        send(port, message("virus", EICAR.decode()))
        workers = accounts.children(serve.pid)
        assert len(workers) == 2, (base / "serve.log").read_text()
        uids, gids, _ = accounts.ids(serve.pid)
        assert uids == {0}, "the supervisor stays root (it binds the sockets again on a reload)"
        for pid in workers:
            uids, gids, groups = accounts.ids(pid)
            assert uids == {entry.pw_uid}, f"worker {pid} runs as {uids}"
            assert gids == {entry.pw_gid}, f"worker {pid} has gids {gids}"
            assert 0 not in groups, f"worker {pid} kept root's groups {groups}"

        # the unix socket: USER's (the default owner), mode 0660
        sock = os.stat(run / "smtpd.sock")
        assert (sock.st_uid, sock.st_gid, stat.S_IMODE(sock.st_mode)) == (entry.pw_uid, entry.pw_gid, 0o660)

    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
        output.close()
    # and one after serve has stopped (SQLite's -wal and -shm are made again): still USER's
    listed = subprocess.run(
        [*MAILSIFT, "quarantine", "list", "-c", str(config)], capture_output=True, text=True, timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    assert "virus" in listed.stdout

    database, log = state / "mailsift.db", state / "mailsift.log"
    quarantined = [p for p in (state / "quarantine").rglob("*") if p.is_file()]
    delivered = [p for p in (state / "mail").rglob("*") if p.is_file()]
    assert database.exists()
    assert log.exists()
    assert quarantined
    assert delivered
    assert "EICAR-Test" in log.read_text()

    problems = []
    for path in everything(state):
        info = path.lstat()
        mode = stat.S_IMODE(info.st_mode)
        if info.st_uid != entry.pw_uid:
            problems.append(f"{path} owned by uid {info.st_uid}")
        if mode & 0o027:
            problems.append(f"{path} mode {mode:04o}")
    assert not problems, "\n".join(problems)

    for secret in (database, log, quarantined[0], delivered[0]):
        assert accounts.as_user("nobody", "cat", str(secret)).returncode != 0, f"nobody read {secret}"
        assert accounts.as_user(user, "cat", str(secret)).returncode == 0, f"{user} cannot read {secret}"
    assert accounts.as_user("nobody", "ls", str(state)).returncode != 0, "nobody lists STATE_DIR"
