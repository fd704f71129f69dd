"""rlimit(...): SAGATOR's resource-limit service (sagator-services.txt rlimit()): names, values,
the errors, and the limits it sets (in a forked child, as a worker or a daemon gets them)."""

from __future__ import annotations

import ast
import os
import resource
from pathlib import Path

import pytest

from mailsift import config as config_module
from mailsift.errors import ConfigError
from mailsift.services.daemons import MIN_MEMORY, chroot_execvp, clamd_daemon, rlimit, spamd_daemon


def in_child(limits: rlimit, names: list[str]) -> list[tuple[int, int]] | str:
    """Apply ``limits`` in a forked child: the limits it then has, or the error it got."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            limits.apply()
            got = [resource.getrlimit(getattr(resource, f"RLIMIT_{name}")) for name in names]
            os.write(write, repr(got).encode())
        except OSError as error:
            os.write(write, repr(str(error)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    return ast.literal_eval(text)  # type: ignore[no-any-return]


def test_sagators_names_and_values_set_those_limits() -> None:
    limits = rlimit(AS=2 * 1024**3, NOFILE=(1000, 2000), CORE=0, cpu=(3600, 7200), FSIZE="unlimited")
    got = in_child(limits, ["AS", "NOFILE", "CORE", "CPU", "FSIZE"])
    infinity = resource.RLIM_INFINITY
    assert got == [(2 * 1024**3,) * 2, (1000, 2000), (0, 0), (3600, 7200), (infinity, infinity)]
    assert limits.describe() == "rlimit(AS=2147483648, CORE=0, CPU=(3600, 7200), FSIZE=unlimited, NOFILE=(1000, 2000))"


def test_vmem_is_linux_address_space() -> None:
    assert rlimit(VMEM=MIN_MEMORY).limits == {"AS": (MIN_MEMORY, MIN_MEMORY)}
    with pytest.raises(ConfigError, match=r"rlimit: AS is given twice \('VMEM' is AS\)"):
        rlimit(AS=MIN_MEMORY, VMEM=MIN_MEMORY)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({}, "rlimit: give at least one limit"),
        ({"NOFILES": 10}, "rlimit: unknown resource 'NOFILES'; this system limits AS, CORE, CPU, DATA"),
        ({"NOFILE": -5}, "rlimit: NOFILE must be a whole number >= 0"),
        ({"NOFILE": "4096"}, "rlimit: NOFILE must be a whole number >= 0"),
        ({"NOFILE": 4096.5}, "rlimit: NOFILE must be a whole number >= 0"),
        ({"CORE": True}, "rlimit: CORE must be a whole number >= 0"),
        ({"NOFILE": (1, 2, 3)}, r"rlimit: NOFILE must be a number or \(soft, hard\)"),
        ({"NOFILE": (4096, 1024)}, "rlimit: NOFILE: the soft limit 4096 is above the hard one 1024"),
        ({"NOFILE": ("unlimited", 1024)}, "rlimit: NOFILE: the soft limit unlimited is above the hard one 1024"),
        ({"NOFILE": 10}, "rlimit: NOFILE=10 is too small: a mailsift process needs at least 64"),
        ({"AS": 30000000}, r"rlimit: AS=30000000 \(29 MiB\) is too small for a mailsift process"),
        ({"DATA": 100 * 2**20}, r"give at least 256 MiB"),
    ],
)
def test_bad_names_and_values_are_config_errors(limits: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rlimit(**limits)


def test_only_root_may_raise_a_hard_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    rlimit(NOFILE=(min(soft, 512), min(hard, 1024)))  # lowering is anyone's right
    if hard == resource.RLIM_INFINITY:
        pytest.skip("the hard limit of open files is unlimited here: nothing to raise")
    with pytest.raises(ConfigError, match=f"rlimit: NOFILE hard limit {hard + 1} is above this process's"):
        rlimit(NOFILE=hard + 1)
    with pytest.raises(ConfigError, match="only root may raise a hard limit"):
        rlimit(NOFILE="unlimited")


def test_a_limit_the_kernel_refuses_says_which() -> None:
    limits = rlimit(NOFILE=64)
    limits.limits["NOFILE"] = (2**40, 2**40)  # beyond the kernel's fs.nr_open, even for root
    got = in_child(limits, ["NOFILE"])
    assert isinstance(got, str)
    assert got.startswith("rlimit: cannot set NOFILE to 1099511627776: ")


def test_daemons_take_their_own_rlimit_and_it_is_part_of_their_identity() -> None:
    plain = chroot_execvp("sleep", "60")
    limited = chroot_execvp("sleep", "60", rlimit=rlimit(NOFILE=300))
    assert limited.limits is not None
    assert limited.limits.limits == {"NOFILE": (300, 300)}
    assert plain.identity() != limited.identity()  # a changed limit restarts it on a reload
    assert clamd_daemon("/tmp/x/clamd.sock", rlimit=rlimit(AS=2**31)).limits is not None
    assert spamd_daemon(rlimit=rlimit(NOFILE=300)).identity() != spamd_daemon().identity()
    with pytest.raises(ConfigError, match=r"chroot_execvp: rlimit= must be rlimit\(NAME=value, ...\)"):
        chroot_execvp("sleep", "60", rlimit={"NOFILE": 300})  # type: ignore[arg-type]


def write(tmp_path: Path, srv: str) -> Path:
    path = tmp_path / "config.py"
    path.write_text(
        "from mailsift import *\n"
        f"STATE_DIR = {str(tmp_path / 'state')!r}\n"
        "SCANNERS = []\nSMTP_SERVER = ('127.0.0.1', 10025)\n"
        "SRV = [\n"
        '    smtpd(SCANNERS, "127.0.0.1", 10024),\n'
        f"{srv}]\n"
    )
    return path


def test_srv_rlimit_is_the_workers_and_given_once(tmp_path: Path) -> None:
    loaded = config_module.load(str(write(tmp_path, "    rlimit(NOFILE=4096, CORE=0),\n")))
    assert loaded.rlimit is not None
    assert loaded.rlimit.limits == {"NOFILE": (4096, 4096), "CORE": (0, 0)}
    assert config_module.load(str(write(tmp_path, ""))).rlimit is None
    path = write(tmp_path, "    rlimit(NOFILE=4096),\n    rlimit(CORE=0),\n")
    with pytest.raises(ConfigError, match=r"SRV lists rlimit\(...\) more than once"):
        config_module.load(str(path))
    path = write(tmp_path, "    rlimit(AS=30000000),\n")
    with pytest.raises(ConfigError) as caught:
        config_module.load(str(path))
    assert str(caught.value).startswith(f"{path}:7: rlimit: AS=30000000")
