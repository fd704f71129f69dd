"""Daemons in SRV (SAGATOR's chroot_execvp, clamd_daemon, spamd_daemon) under `mailsift serve`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsift.testing import free_port
from tests.helpers.waiting import wait_for

MAILSIFT = [sys.executable, "-m", "mailsift"]

# A stand-in daemon: writes "<pid> <arg>" to a file named after its argument, then waits.
PROGRAM = """\
import os, sys, time
with open(os.path.join(sys.argv[1], sys.argv[2]), "w") as handle:
    handle.write(str(os.getpid()))
time.sleep(3600)
"""

CONFIG = """\
import sys
from mailsift import *
STATE_DIR = {state!r}
SCANNERS = [regexp_scan([("Bad", "BADWORD")])]
SRV = [
    smtpd(SCANNERS, "127.0.0.1", {port}, next_hop=local_maildir("mail")),
    chroot_execvp(sys.executable, [{program!r}, {pids!r}, {name!r}]),
]
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Served:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.pids = tmp_path / "pids"
        self.pids.mkdir()
        self.program = tmp_path / "fake_daemon.py"
        self.program.write_text(PROGRAM)
        self.config = tmp_path / "config.py"
        self.log = tmp_path / "serve.log"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def write(self, name: str) -> None:
        text = CONFIG.format(
            state=str(self.tmp / "state"), port=self.port, program=str(self.program), pids=str(self.pids), name=name
        )
        self.config.write_text(text)

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*MAILSIFT, "serve", "-c", str(self.config), "-w", "1"], stdout=log, stderr=subprocess.STDOUT
            )

    def pid_of(self, name: str) -> int:
        path = self.pids / name

        def read() -> int:
            try:
                return int(path.read_text() or 0)
            except (OSError, ValueError):
                return 0

        return int(wait_for(read, what=f"daemon {name} to start"))  # type: ignore[arg-type]

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    instance = Served(tmp_path)
    yield instance
    if instance.process is not None and instance.process.poll() is None:
        instance.process.kill()
        instance.process.wait()


def test_daemon_is_started_restarted_kept_on_reload_and_stopped(served: Served) -> None:
    served.write("first")
    served.start()
    first = served.pid_of("first")
    assert alive(first)

    os.kill(first, signal.SIGKILL)  # it dies: mailsift starts it again
    (served.pids / "first").unlink()
    second = served.pid_of("first")
    assert second != first
    assert alive(second)

    assert served.process is not None
    served.process.send_signal(signal.SIGHUP)  # same config: the same daemon keeps running
    wait_for(lambda: "reloaded" in served.log.read_text(), what="reload")
    assert alive(second)
    assert not (served.pids / "second").exists()

    served.write("second")  # changed arguments: the old one is stopped, the new one started
    served.process.send_signal(signal.SIGHUP)
    third = served.pid_of("second")
    wait_for(lambda: not alive(second), what="old daemon to stop")
    assert alive(third)

    assert served.stop() == 0
    assert not alive(third)  # stopped with mailsift
    log = served.log.read_text()
    assert "exited with status -9" in log
    assert "starting again in 1 s" in log


def test_broken_daemon_is_retried_with_growing_pauses(tmp_path: Path) -> None:
    config = tmp_path / "config.py"
    port = free_port()
    config.write_text(
        "import sys\nfrom mailsift import *\n"
        f"STATE_DIR = {str(tmp_path / 'state')!r}\n"
        "SCANNERS = []\n"
        f"SRV = [smtpd(SCANNERS, '127.0.0.1', {port}, next_hop=local_maildir('mail')),\n"
        "       chroot_execvp(sys.executable, '-c', 'import sys; print(\"cannot start: no licence\"); sys.exit(3)')]\n"
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen([*MAILSIFT, "serve", "-c", str(config), "-w", "1"], stdout=output, stderr=output)
    try:
        wait_for(lambda: "starting again in 4 s" in log.read_text(), seconds=90, what="third failure")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:  # mail is still served
            assert sock.recv(100).startswith(b"220")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    text = log.read_text()
    assert "exited with status 3" in text
    assert "cannot start: no licence" in text  # the end of its output is in mailsift's log
    assert "starting again in 1 s" in text
    assert "starting again in 2 s" in text


@pytest.mark.skipif(not os.path.exists("/usr/sbin/clamd"), reason="clamd not installed (scripts/setup.sh installs it)")
def test_clamd_daemon_starts_with_test_signatures_when_there_are_none(tmp_path: Path) -> None:
    state = tmp_path / "state"
    sock_path = state / "clamd" / "clamd.sock"
    config = tmp_path / "config.py"
    port = free_port()
    config.write_text(
        "from mailsift import *\n"
        f"STATE_DIR = {str(state)!r}\n"
        "SCANNERS = []\n"
        f"SRV = [smtpd(SCANNERS, '127.0.0.1', {port}, next_hop=local_maildir('mail')),\n"
        f"       clamd_daemon({str(sock_path)!r}, database={str(tmp_path / 'no-db')!r})]\n"
    )
    (tmp_path / "no-db").mkdir()
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen([*MAILSIFT, "serve", "-c", str(config), "-w", "1"], stdout=output, stderr=output)
    try:
        # an empty database directory: clamd refuses to start, and mailsift says why
        wait_for(lambda: "exited with status" in log.read_text(), seconds=60, what="clamd failure")
        assert "No supported database files found" in log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
