"""chroot_execvp(..., chroot=...): the jail's checks (root-owned, not writable by others, the program
and its loader inside) and chroot(2) in the child before exec."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mailsift.errors import ConfigError
from mailsift.services.daemons import check_chroot, check_chroot_program, chroot_execvp

BUSYBOX = "/bin/busybox"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a root-owned jail and chroot(2) need root")
needs_busybox = pytest.mark.skipif(
    not os.path.exists(BUSYBOX), reason="no static busybox (scripts/setup.sh --test installs busybox-static)"
)


@pytest.fixture
def jail(tmp_path: Path) -> Path:
    root = tmp_path / "jail"
    (root / "bin").mkdir(parents=True)
    for path in (tmp_path, root, root / "bin"):
        path.chmod(0o755)
    return root


@needs_root
def test_a_root_owned_closed_directory_is_a_jail(jail: Path) -> None:
    assert check_chroot(str(jail)) == str(jail)  # under /tmp: sticky, so writable above is fine


@needs_root
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda jail: jail.chmod(0o777), r"chroot: .*/jail is mode 0777: writable by others than root"),
        (lambda jail: jail.chmod(0o775), r"chroot: .*/jail is mode 0775"),
        (lambda jail: jail.parent.chmod(0o777), r"chroot: .*/test_\w+ is mode 0777"),  # above it, not sticky
        (lambda jail: os.chown(jail, 65534, -1), r"chroot: .*/jail is owned by uid 65534, not root"),
        (lambda jail: os.chown(jail.parent, 65534, -1), r"is owned by uid 65534, not root: its owner could"),
    ],
)
def test_a_directory_others_could_change_is_refused(jail: Path, change: object, message: str) -> None:
    change(jail)  # type: ignore[operator]
    with pytest.raises(ConfigError, match=message):
        check_chroot(str(jail))


def test_not_a_directory_or_relative(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="chroot: must be an absolute directory path, got 'jail'"):
        check_chroot("jail")
    with pytest.raises(ConfigError, match="No such file or directory"):
        check_chroot(str(tmp_path / "missing"))


@needs_root
@needs_busybox
def test_the_program_and_its_loader_must_be_inside(jail: Path) -> None:
    with pytest.raises(ConfigError, match=r"program /bin/busybox is not in .*jail .*must be inside the chroot"):
        check_chroot_program(str(jail), "/bin/busybox")
    with pytest.raises(ConfigError, match=r"by its path inside .* got 'busybox'"):
        check_chroot_program(str(jail), "busybox")
    shutil.copy2(BUSYBOX, jail / "bin" / "busybox")
    check_chroot_program(str(jail), "/bin/busybox")  # static: nothing else needed
    shutil.copy2("/bin/sh", jail / "bin" / "sh")  # dynamic: its loader is not there
    with pytest.raises(ConfigError, match=r"program /bin/sh needs /lib64/ld-linux-x86-64.so.2, which is not in"):
        check_chroot_program(str(jail), "/bin/sh")
    (jail / "bin" / "script").write_text("#!/bin/bash\necho hi\n")
    (jail / "bin" / "script").chmod(0o755)
    with pytest.raises(ConfigError, match=r"program /bin/script needs /bin/bash, which is not in"):
        check_chroot_program(str(jail), "/bin/script")


@needs_root
@needs_busybox
def test_check_resolves_the_jail_and_argv_is_the_path_inside(jail: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy2(BUSYBOX, jail / "bin" / "busybox")
    daemon = chroot_execvp("/bin/busybox", "sleep", "60", chroot=str(jail))
    daemon.check()
    assert daemon.argv() == ["/bin/busybox", "sleep", "60"]  # looked up after chroot(2), inside
    assert daemon.identity() != chroot_execvp("/bin/busybox", "sleep", "60").identity()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ConfigError, match=r"chroot= needs mailsift started as root"):
        daemon.check()


@needs_root
@needs_busybox
def test_the_program_runs_inside(jail: Path) -> None:
    shutil.copy2(BUSYBOX, jail / "bin" / "busybox")
    daemon = chroot_execvp("/bin/busybox", "ls", "/", chroot=str(jail))
    daemon.check()
    assert daemon.needs_child_setup()
    result = subprocess.run(daemon.argv(), preexec_fn=daemon.in_child, capture_output=True, check=True)
    assert result.stdout.split() == [b"bin"]  # its / is the jail
