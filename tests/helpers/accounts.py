"""System accounts and processes for the privilege tests: a throw-away user, /proc, another user's view."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager


def can_make_users() -> str:
    """Why the real privilege drop cannot be tested here ("" when it can)."""
    if os.geteuid() != 0:
        return "the privilege drop needs root (serve started as root drops its workers to USER)"
    missing = [tool for tool in ("useradd", "userdel", "runuser") if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} to create a test user"
    return ""


@contextmanager
def system_user(name: str) -> Iterator[pwd.struct_passwd]:
    """A system user and group ``name`` (no home, no shell) for the duration; removed afterwards."""
    subprocess.run(["userdel", name], capture_output=True, check=False)  # a leftover of a killed run
    useradd = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"]
    subprocess.run(
        [*useradd, "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", name], capture_output=True, check=False)


def as_user(user: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``user`` (``runuser -u``), its output captured."""
    command = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=timeout)


def status(pid: int) -> dict[str, str]:
    """``/proc/<pid>/status`` as a dict (``Uid``, ``Gid``, ``Groups``, ``PPid``...)."""
    fields: dict[str, str] = {}
    with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def ids(pid: int) -> tuple[set[int], set[int], set[int]]:
    """A process's real/effective/saved/fs uids, gids, and supplementary groups."""
    found = status(pid)
    return (
        {int(v) for v in found["Uid"].split()},
        {int(v) for v in found["Gid"].split()},
        {int(v) for v in found["Groups"].split()},
    )


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if status(int(entry)).get("PPid") == str(pid):
                    found.append(int(entry))
            except OSError:
                continue
    return found
