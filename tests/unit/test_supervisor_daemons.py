"""DaemonKeeper and daemons in the background (chroot_execvp(..., pid_file=...)), in process: the
keeper is driven as the supervisor drives it (reap, exited, tend), with real forking programs
(tests/helpers/daemonize.py).  tests/integration/test_daemons_procs.py runs them under `mailsift serve`."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from mailsift.config import Config
from mailsift.services.daemons import Daemon, chroot_execvp
from mailsift.supervisor import DaemonKeeper
from tests.helpers import daemonize


def config_of(tmp_path: Path, *daemons: Daemon) -> Config:
    return cast(Config, SimpleNamespace(settings=SimpleNamespace(state_dir=str(tmp_path / "state")), daemons=daemons))


def drive(keeper: DaemonKeeper, until: Callable[[], object], seconds: float = 30) -> None:
    """Reap, report and tend as Supervisor.run does, until ``until()`` holds."""
    deadline = time.monotonic() + seconds
    while not until():
        assert time.monotonic() < deadline, "timed out"
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            keeper.exited(pid, os.waitstatus_to_exitcode(status), restart=True)
        keeper.tend()
        time.sleep(0.05)


@pytest.fixture
def keeper(tmp_path: Path) -> Iterator[DaemonKeeper]:
    instance = DaemonKeeper()
    instance.STOP_GRACE = 2.0
    yield instance
    instance.stop_all()
    daemonize.kill_all(str(tmp_path))


def background(tmp_path: Path) -> tuple[chroot_execvp, Path]:
    program = daemonize.write_program(tmp_path)
    pid_file = tmp_path / "d.pid"
    return chroot_execvp(sys.executable, str(program), str(pid_file), pid_file=str(pid_file)), pid_file


def test_no_pid_in_the_file_in_time_is_a_failure_and_a_restart(
    keeper: DaemonKeeper, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keeper.PID_FILE_WAIT = 1.0
    daemon = chroot_execvp(sys.executable, "-c", "pass", pid_file=str(tmp_path / "never.pid"))
    with caplog.at_level(logging.INFO, "mailsift.supervisor"):
        keeper.apply(config_of(tmp_path, daemon))
        drive(keeper, lambda: keeper.restarts)
    assert f"no live process in its pid_file {tmp_path / 'never.pid'} 1 s after" in caplog.text
    assert "starting again in 1 s" in caplog.text


def test_a_daemon_left_running_is_followed_not_started_twice(
    keeper: DaemonKeeper, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    daemon, pid_file = background(tmp_path)
    (tmp_path / "state").mkdir()
    # as an earlier mailsift started it: the launcher went into the background, the daemon runs on
    assert os.spawnv(os.P_WAIT, sys.executable, [sys.executable, *daemon.args]) == 0
    pid = daemonize.wait_for_pid(pid_file)
    with caplog.at_level(logging.INFO, "mailsift.supervisor"):
        keeper.apply(config_of(tmp_path, daemon))
    assert f"still running as pid {pid}" in caplog.text
    assert keeper.background.keys() == {pid}
    drive(keeper, lambda: True)
    assert daemonize.copies(str(pid_file)) == [pid]  # not a second copy
    keeper.stop_all()
    assert not daemonize.alive(pid)


def test_stopping_while_the_pid_file_is_awaited_stops_the_daemon(keeper: DaemonKeeper, tmp_path: Path) -> None:
    daemon, pid_file = background(tmp_path)
    keeper.apply(config_of(tmp_path, daemon))
    drive(keeper, lambda: keeper.awaiting)  # the launcher is gone; the daemon writes its PID 0.3 s later
    assert not keeper.background
    keeper.stop_all()
    assert daemonize.copies(str(pid_file)) == []
    assert not keeper.awaiting


def test_a_reload_without_it_stops_it_for_good(keeper: DaemonKeeper, tmp_path: Path) -> None:
    daemon, _ = background(tmp_path)
    keeper.apply(config_of(tmp_path, daemon))
    drive(keeper, lambda: keeper.background)
    (pid,) = keeper.background
    keeper.apply(config_of(tmp_path))
    assert not daemonize.alive(pid)
    assert not keeper.running
    assert not keeper.restarts
    assert not keeper.awaiting


def test_a_foreground_program_with_pid_file_is_stopped_without_waiting_for_the_file(
    keeper: DaemonKeeper, tmp_path: Path
) -> None:
    pid_file = tmp_path / "fg.pid"
    program = "import os, signal, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
    daemon = chroot_execvp(sys.executable, "-c", program, str(pid_file), pid_file=str(pid_file))
    keeper.apply(config_of(tmp_path, daemon))
    pid = daemonize.wait_for_pid(pid_file)
    assert keeper.running.keys() == {pid}  # its own child: followed as such
    keeper.apply(config_of(tmp_path))
    assert not daemonize.alive(pid)
    assert not keeper.awaiting  # stopped by mailsift: its exit is not "went into the background"
