"""Following a daemon by its PID file: the process's identity (PID and start time), stale files and
reused PIDs, and stopping by PID (SIGTERM, then SIGKILL after the grace)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsift.errors import ConfigError
from mailsift.services.daemons import (
    Process,
    chroot_execvp,
    chroot_execvpe,
    is_alive,
    process_start,
    read_pgrp_file,
    read_pid_file,
    started_at,
    stop_process,
)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def test_a_process_is_its_pid_and_start_time(sleeper: subprocess.Popen[bytes]) -> None:
    start = process_start(sleeper.pid)
    assert start is not None
    process = Process(sleeper.pid, start)
    assert is_alive(process)
    assert abs(started_at(process) - time.time()) < 60
    assert not is_alive(Process(sleeper.pid, start + 1))  # the same PID, another process: not it
    sleeper.kill()
    for _ in range(100):  # a zombie (not reaped yet) is not alive
        if not is_alive(process):
            break
        time.sleep(0.05)
    assert not is_alive(process)
    assert process_start(sleeper.pid) is None
    sleeper.wait()
    assert not is_alive(process)


def test_the_pid_file_must_name_a_process_started_since_the_launch(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    pid_file = tmp_path / "d.pid"
    assert read_pid_file(str(pid_file), time.time()) is None  # no file yet
    pid_file.write_text("not a pid\n")
    assert read_pid_file(str(pid_file), time.time()) is None
    pid_file.write_text(f"{sleeper.pid}\n")
    found = read_pid_file(str(pid_file), time.time() - 30)
    assert found is not None
    assert found.pid == sleeper.pid
    # A stale file whose PID now belongs to a process older than the launch: not the daemon.
    assert read_pid_file(str(pid_file), time.time() + 30) is None
    pid_file.write_text("1\n")  # init, and mailsift itself, are never taken
    assert read_pid_file(str(pid_file), 0) is None
    pid_file.write_text(f"{os.getpid()}\n")
    assert read_pid_file(str(pid_file), 0) is None


def test_a_daemon_left_running_is_the_one_older_than_its_file(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    pid_file = tmp_path / "d.pid"
    pid_file.write_text(f"{sleeper.pid}\n")
    assert read_pid_file(str(pid_file)) == Process(sleeper.pid, process_start(sleeper.pid))  # type: ignore[arg-type]
    hour_ago = time.time() - 3600
    os.utime(pid_file, (hour_ago, hour_ago))  # written before this process started: a reused PID
    assert read_pid_file(str(pid_file)) is None


def test_stop_process_terminates_and_kills_a_stubborn_one_after_the_grace() -> None:
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert stubborn.stdout is not None
        assert stubborn.stdout.readline() == b"ready\n"
        first = Process(polite.pid, process_start(polite.pid))  # type: ignore[arg-type]
        second = Process(stubborn.pid, process_start(stubborn.pid))  # type: ignore[arg-type]
        assert stop_process(first, grace=10) is False
        assert polite.wait(5) == -signal.SIGTERM
        assert stop_process(second, grace=0.5) is True
        assert stubborn.wait(5) == -signal.SIGKILL
        assert stop_process(second, grace=0.5) is False  # gone already: nothing is sent
    finally:
        for process in (polite, stubborn):
            if process.poll() is None:
                process.kill()
            process.wait()
        assert stubborn.stdout is not None
        stubborn.stdout.close()


def test_pgrp_file(tmp_path: Path) -> None:
    path = tmp_path / "d.pgrp"
    assert read_pgrp_file(str(path)) is None
    path.write_text("12345\n")
    assert read_pgrp_file(str(path)) == 12345
    path.write_text(f"{os.getpgrp()}\n")  # never mailsift's own group
    assert read_pgrp_file(str(path)) is None


def test_sagators_usage_line_args_and_pid_file() -> None:
    # sagator-services.txt: chroot_execvp('daemon_name',args=[],pid_file='')
    daemon = chroot_execvp("/usr/sbin/clamd", args=["-c", "/etc/clamav.conf"], pid_file="/run/clamd.pid")
    assert daemon.args == ("-c", "/etc/clamav.conf")
    assert daemon.pid_file == "/run/clamd.pid"
    assert chroot_execvp("clamd", "-c", args=["/etc/clamav.conf"]).args == ("-c", "/etc/clamav.conf")
    relative = chroot_execvp("clamd", pid_file="run/clamd.pid")
    assert relative.pid_file == os.path.abspath("run/clamd.pid")
    with pytest.raises(ConfigError, match="chroot_execvp: args must be a list of strings"):
        chroot_execvp("clamd", args="-c /etc/clamav.conf")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="chroot_execvp: pid_file must be a path, got 5"):
        chroot_execvp("clamd", pid_file=5)  # type: ignore[arg-type]
    assert chroot_execvpe("clamd", ["-c", "x"], {"LANG": "C"}, pid_file="/run/c.pid").pid_file == "/run/c.pid"
