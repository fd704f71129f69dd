"""A program that goes into the background as classic daemons do, for the pid_file tests.

``python BACKGROUND PID_FILE [stubborn]``: the launcher forks and exits 0 at
once; the child starts a session and forks again; the grandchild (the daemon,
reparented away from whoever started the launcher) writes its PID into
PID_FILE (atomically: a temporary file renamed) and sleeps.  ``stubborn``: the
daemon ignores SIGTERM (only SIGKILL stops it).  Its command line carries
PID_FILE, so a test finds every copy by scanning ``/proc`` (:func:`copies`).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

PROGRAM = """\
import os, signal, sys, time
pid_file = sys.argv[1]
if os.fork():
    os._exit(0)  # the launcher: "went into the background"
os.setsid()
if os.fork():
    os._exit(0)
if sys.argv[2:] == ["stubborn"]:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(0.3)  # the PID file comes a little after the launcher exited, as with real daemons
with open(pid_file + ".tmp", "w") as handle:
    handle.write(f"{os.getpid()}\\n")
os.rename(pid_file + ".tmp", pid_file)
while True:
    time.sleep(1)
"""


def write_program(directory: Path) -> Path:
    """The program's file in ``directory``."""
    path = directory / "background_daemon.py"
    path.write_text(PROGRAM)
    return path


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def copies(marker: str) -> list[int]:
    """The live processes whose command line contains ``marker`` (a test's private path)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if marker in cmdline and alive(int(entry)):
            found.append(int(entry))
    return sorted(found)


def kill_all(marker: str) -> None:
    """SIGKILL every copy (test teardown: nothing is left behind whatever the test did)."""
    for pid in copies(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while copies(marker) and time.monotonic() < deadline:
        time.sleep(0.05)


def read_pid(path: Path) -> int:
    """The PID in ``path``, 0 while there is none."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def wait_for_pid(path: Path, seconds: float = 30) -> int:
    """The PID in ``path`` once there is one."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pid = read_pid(path)
        if pid:
            return pid
        time.sleep(0.05)
    raise AssertionError(f"no PID in {path} after {seconds} s")
