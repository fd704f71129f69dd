"""fusefs mounted for real: a FUSE pass-through over a temporary source directory (pyfuse3, /dev/fuse).

The mount is made by :meth:`fusefs.start`, the fork the supervisor of ``mailsift serve``
does, and taken down at the end (SIGTERM, then a lazy ``fusermount3 -u -z`` if anything is
left).  Where mounting is refused (not root, no /dev/fuse, no fusermount3, no pyfuse3, or a
trial mount fails: a container without the right) the module is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailsift import clamd, fusefs, parsemail, regexp_scan, rlimit
from mailsift.message.result import CLEAN, Result
from mailsift.scanners.base import Scanner, Target
from mailsift.settings import Settings
from mailsift.testing import free_port
from tests.helpers.clamd import CLAMD, ClamdInstance

pytestmark = pytest.mark.timeout(120)

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

PROBE = """
import sys, pyfuse3
pyfuse3.init(pyfuse3.Operations(), sys.argv[1], set())
pyfuse3.close(unmount=True)
"""


def refused() -> str:
    """Why FUSE cannot be mounted here ('' if it can)."""
    if os.geteuid() != 0:
        return "mounting FUSE needs root here (/dev/fuse is root's)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if not shutil.which("fusermount3"):
        return "fusermount3 missing (Debian's fuse3: scripts/setup.sh --test)"
    try:
        import pyfuse3  # noqa: F401 - only whether it is there
    except ImportError:
        return "pyfuse3 missing (pip install 'mailsift[fuse]')"
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"mailsift-fuse-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        run = subprocess.run([sys.executable, "-c", PROBE, str(probe)], capture_output=True, text=True, timeout=30)
    finally:
        lazy_unmount(probe)
        probe.rmdir()
    if run.returncode != 0:
        lines = (run.stderr or run.stdout).strip().splitlines()
        return f"a trial FUSE mount was refused: {lines[-1] if lines else run.returncode}"
    return ""


def lazy_unmount(path: Path) -> None:
    if os.path.ismount(path) or _stale(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, check=False)


def _stale(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as error:
        return error.errno == errno.ENOTCONN
    return False


class Recording(Scanner):
    """Appends the Subject (the file's path) of each mail it sees to a file: the scans, counted
    from the test process (the scanner runs in the forked fusefs process)."""

    name = "recording"

    def __init__(self, log: Path) -> None:
        self.log = log

    async def scan(self, target: Target) -> Result:
        with open(self.log, "a", encoding="utf-8") as out:
            out.write(target.mail.subject + "\n")
        return CLEAN


@dataclass
class Mount:
    source: Path
    mountpoint: Path
    scans_log: Path
    pid: int

    def scans(self, name: str) -> int:
        if not self.scans_log.exists():
            return 0
        return self.scans_log.read_text(encoding="utf-8").splitlines().count(str(self.source / name))


def mount(
    tmp: Path,
    *scanners: Scanner,
    allow_other: bool = False,
    limits: rlimit | None = None,
    srv_limits: rlimit | None = None,
) -> Mount:
    source, mountpoint, state = tmp / "source", tmp / "mnt", tmp / "state"
    for directory in (source, mountpoint, state):
        directory.mkdir(exist_ok=True)
    scans_log = tmp / "scans.log"
    if not scanners:
        scanners = (parsemail(regexp_scan([("EICAR-Test", rb"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")])),)
    service = fusefs(
        [Recording(scans_log), *scanners],
        str(mountpoint),
        str(source),
        timeout=20.0,
        allow_other=allow_other,
        rlimit=limits,
    )
    service.srv_limits = srv_limits
    service.check()
    service.bind_settings(Settings(state_dir=str(state)))
    pid = service.start(str(state))
    deadline = time.monotonic() + 30
    while not service.ready():
        done, status = os.waitpid(pid, os.WNOHANG)
        assert not done, f"the fusefs process exited with {os.waitstatus_to_exitcode(status)} before it mounted"
        assert time.monotonic() < deadline, "not mounted within 30 s"
        time.sleep(0.05)
    return Mount(source, mountpoint, scans_log, pid)


def unmount(mounted: Mount) -> int | None:
    """SIGTERM, wait (10 s), SIGKILL if needed; then a lazy unmount of anything left. The exit code."""
    code = None
    try:
        os.kill(mounted.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done, status = os.waitpid(mounted.pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.05)
        else:
            os.kill(mounted.pid, signal.SIGKILL)
            os.waitpid(mounted.pid, 0)
    finally:
        lazy_unmount(mounted.mountpoint)
    return code


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    why = refused()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("fusefs")
    (tmp / "source").mkdir()
    (tmp / "source" / "sub").mkdir()
    (tmp / "source" / "sub" / "deep.txt").write_bytes(b"deep\n")
    (tmp / "source" / "sub" / "link").symlink_to("../clean.bin")
    (tmp / "source" / "clean.bin").write_bytes(bytes(range(256)) * 4096 + os.urandom(12345))  # ~1 MB
    (tmp / "source" / "eicar.com").write_bytes(EICAR)
    result = mount(tmp)
    try:
        yield result
    finally:
        unmount(result)


def test_a_clean_file_reads_byte_for_byte(mounted: Mount) -> None:
    expected = (mounted.source / "clean.bin").read_bytes()
    assert (mounted.mountpoint / "clean.bin").read_bytes() == expected
    with open(mounted.mountpoint / "clean.bin", "rb") as handle:
        handle.seek(500_000)
        assert handle.read(70_000) == expected[500_000:570_000]
    assert (mounted.mountpoint / "sub" / "link").read_bytes() == expected  # through the symlink


def test_an_eicar_file_is_refused_with_eacces(mounted: Mount) -> None:
    with pytest.raises(PermissionError) as refusal:
        open(mounted.mountpoint / "eicar.com", "rb")  # noqa: SIM115 - the open itself is refused
    assert refusal.value.errno == errno.EACCES
    assert os.stat(mounted.mountpoint / "eicar.com").st_size == len(EICAR)  # still listed and stat-able


def test_an_unchanged_file_is_scanned_once(mounted: Mount) -> None:
    (mounted.source / "once.txt").write_bytes(b"read me three times\n")
    for _ in range(3):
        assert (mounted.mountpoint / "once.txt").read_bytes() == b"read me three times\n"
    assert mounted.scans("once.txt") == 1
    for _ in range(2):
        with pytest.raises(PermissionError):
            open(mounted.mountpoint / "eicar.com", "rb")  # noqa: SIM115
    assert mounted.scans("eicar.com") == 1  # the refusal is cached as well


def test_a_changed_file_is_scanned_again(mounted: Mount) -> None:
    path = mounted.source / "changing.com"
    clean = b"c" * len(EICAR)  # the same size: only the mtime tells the versions apart
    path.write_bytes(clean)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert (mounted.mountpoint / "changing.com").read_bytes() == clean
    path.write_bytes(EICAR)  # changed in the source, where writes go
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    with pytest.raises(PermissionError):
        open(mounted.mountpoint / "changing.com", "rb")  # noqa: SIM115
    assert mounted.scans("changing.com") == 2


def test_listing_and_stat_pass_through(mounted: Mount) -> None:
    assert sorted(os.listdir(mounted.mountpoint)) == sorted(os.listdir(mounted.source))
    assert sorted(os.listdir(mounted.mountpoint / "sub")) == sorted(os.listdir(mounted.source / "sub"))
    for name in ("clean.bin", "sub", "sub/deep.txt"):
        seen, real = os.stat(mounted.mountpoint / name), os.stat(mounted.source / name)
        assert (seen.st_mode, seen.st_size, seen.st_uid, seen.st_gid, seen.st_mtime_ns) == (
            real.st_mode,
            real.st_size,
            real.st_uid,
            real.st_gid,
            real.st_mtime_ns,
        ), name
    assert os.readlink(mounted.mountpoint / "sub" / "link") == "../clean.bin"
    assert (mounted.mountpoint / "sub" / "deep.txt").read_text() == "deep\n"


def test_the_mount_is_read_only(mounted: Mount) -> None:
    with pytest.raises(OSError) as refusal:
        open(mounted.mountpoint / "clean.bin", "r+b")  # noqa: SIM115
    assert refusal.value.errno == errno.EROFS
    with pytest.raises(OSError) as refusal:
        (mounted.mountpoint / "new.txt").write_bytes(b"x")
    assert refusal.value.errno == errno.EROFS
    assert not (mounted.source / "new.txt").exists()


def one_file_source(tmp_path: Path) -> None:
    """Skip where FUSE cannot be mounted; else ``tmp_path/source`` with one file ``f``."""
    why = refused()
    if why:
        pytest.skip(why)
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "f").write_bytes(b"f")


def test_sigterm_unmounts(tmp_path: Path) -> None:
    one_file_source(tmp_path)
    mounted = mount(tmp_path)
    try:
        assert os.path.ismount(mounted.mountpoint)
        assert (mounted.mountpoint / "f").read_bytes() == b"f"
    finally:
        code = unmount(mounted)
    assert code == 0
    assert not os.path.ismount(mounted.mountpoint)
    assert os.listdir(mounted.mountpoint) == []  # the empty directory under it again


def test_with_a_real_clamd_and_fail_closed_when_it_stops(tmp_path: Path) -> None:
    """clamd (a private instance with EICAR signatures) judges each file; with clamd gone an open is EIO."""
    why = refused()
    if why:
        pytest.skip(why)
    if not os.path.exists(CLAMD):
        pytest.skip("clamd is not installed (Debian's clamav-daemon: scripts/setup.sh)")
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "clean.txt").write_bytes(b"nothing to see\n" * 1000)
    (tmp_path / "source" / "eicar.com").write_bytes(EICAR)
    with ClamdInstance(tmp_path / "clamd") as daemon:
        mounted = mount(tmp_path, clamd(daemon.socket_path))
        try:
            assert (mounted.mountpoint / "clean.txt").read_bytes() == b"nothing to see\n" * 1000
            with pytest.raises(PermissionError):
                open(mounted.mountpoint / "eicar.com", "rb")  # noqa: SIM115
            daemon.stop()
            (mounted.source / "later.txt").write_bytes(b"written while clamd is down\n")
            with pytest.raises(OSError) as failed:
                open(mounted.mountpoint / "later.txt", "rb")  # noqa: SIM115
            assert failed.value.errno == errno.EIO  # no verdict: fail closed
            assert (mounted.mountpoint / "clean.txt").read_bytes().startswith(b"nothing")  # judged before: cached
            daemon.start()
            assert (mounted.mountpoint / "later.txt").read_bytes() == b"written while clamd is down\n"
        finally:
            unmount(mounted)


class Slow(Scanner):
    """Takes half a second: concurrent opens meet while it scans."""

    name = "slow"

    async def scan(self, target: Target) -> Result:
        await asyncio.sleep(0.5)
        return CLEAN


def test_concurrent_opens_of_one_file_share_one_scan(tmp_path: Path) -> None:
    why = refused()
    if why:
        pytest.skip(why)
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "shared.txt").write_bytes(b"opened by four at once\n")
    mounted = mount(tmp_path, Slow())
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            reads = list(pool.map(lambda _: (mounted.mountpoint / "shared.txt").read_bytes(), range(4)))
        assert reads == [b"opened by four at once\n"] * 4
        assert mounted.scans("shared.txt") == 1
    finally:
        unmount(mounted)


NOBODY = 65534


def read_as_nobody(path: Path) -> int:
    """Open and read ``path`` as uid/gid 65534 (nobody) in a child; 0, or the errno it got."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            with open(path, "rb") as handle:
                handle.read()
        except OSError as error:
            code = error.errno or 255
        except BaseException:
            code = 254
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.parametrize("allow_other", [False, True])
def test_who_can_read_through_the_mount(allow_other: bool) -> None:
    """Root only by default; with allow_other, every user as the source's modes allow (default_permissions)."""
    why = refused()
    if why:
        pytest.skip(why)
    top = Path(tempfile.mkdtemp(prefix="mailsift-fusefs-"))  # not under pytest's 0700 directory: nobody must reach it
    try:
        top.chmod(0o755)
        (top / "source").mkdir(mode=0o755)
        (top / "source" / "public.txt").write_bytes(b"public\n")
        (top / "source" / "public.txt").chmod(0o644)
        (top / "source" / "private.txt").write_bytes(b"private\n")
        (top / "source" / "private.txt").chmod(0o600)
        mounted = mount(top, allow_other=allow_other)
        try:
            assert read_as_nobody(top / "source" / "public.txt") == 0  # the source itself: nobody can read it
            if allow_other:
                assert read_as_nobody(mounted.mountpoint / "public.txt") == 0
                assert read_as_nobody(mounted.mountpoint / "private.txt") == errno.EACCES  # the source's modes hold
            else:
                assert read_as_nobody(mounted.mountpoint / "public.txt") == errno.EACCES  # root's mount only
            assert (mounted.mountpoint / "private.txt").read_bytes() == b"private\n"  # root, of course
        finally:
            unmount(mounted)
    finally:
        shutil.rmtree(top, ignore_errors=True)


SERVE_CONFIG = """\
from mailsift import *
STATE_DIR = {state!r}
SMTP_SERVER = ("127.0.0.1", {next_hop})
SCANNERS = [parsemail(regexp_scan([("EICAR-Test", rb"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")]))]
SRV = [smtpd(SCANNERS, "127.0.0.1", {port}), fusefs(SCANNERS, {mountpoint!r}, {source!r}){more}]
{extra}"""


@contextlib.contextmanager
def serving(
    tmp_path: Path, more: str = "", extra: str = ""
) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path, Path]]:
    """``mailsift serve`` with an smtpd and a fusefs, until the fusefs is mounted: (serve, source, mountpoint, log).

    ``more``: more entries of SRV (", rlimit(...)"); ``extra``: more lines of the config (HOOKS...)."""
    why = refused()
    if why:
        pytest.skip(why)
    source, mountpoint = tmp_path / "source", tmp_path / "mnt"
    source.mkdir()
    mountpoint.mkdir()
    (source / "clean.txt").write_bytes(b"clean\n")
    (source / "eicar.com").write_bytes(EICAR)
    config = tmp_path / "config.py"
    config.write_text(
        SERVE_CONFIG.format(
            state=str(tmp_path / "state"),
            next_hop=free_port(),
            port=free_port(),
            mountpoint=str(mountpoint),
            source=str(source),
            more=more,
            extra=extra,
        )
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        serve = subprocess.Popen(
            [sys.executable, "-m", "mailsift", "serve", "-c", str(config), "-w", "1", "--drain-seconds", "5"],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_mounted(serve, mountpoint, log)
        yield serve, source, mountpoint, log
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        lazy_unmount(mountpoint)


def wait_mounted(serve: subprocess.Popen[bytes], mountpoint: Path, log: Path) -> None:
    deadline = time.monotonic() + 30
    while not os.path.ismount(mountpoint):
        assert serve.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "not mounted within 30 s:\n" + log.read_text()
        time.sleep(0.1)


def test_mailsift_serve_mounts_it_and_unmounts_it_at_stop(tmp_path: Path) -> None:
    """The root supervisor forks the fusefs process, the finding is in serve's log, SIGTERM unmounts."""
    with serving(tmp_path) as (serve, source, mountpoint, log):
        assert (mountpoint / "clean.txt").read_bytes() == b"clean\n"
        with pytest.raises(PermissionError):
            open(mountpoint / "eicar.com", "rb")  # noqa: SIM115
        serve.send_signal(signal.SIGHUP)  # the same config: the same fusefs goes on, mounted
        deadline = time.monotonic() + 30
        while "reloaded:" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert log.read_text().count(" mounted (pid ") == 1
        assert (mountpoint / "clean.txt").read_bytes() == b"clean\n"
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0, log.read_text()
        assert not os.path.ismount(mountpoint), log.read_text()
        text = log.read_text()
        assert "fusefs action=refuse reply=EACCES" in text
        assert f"path={source / 'eicar.com'}" in text
        assert "unmounted" in text


def test_a_killed_fusefs_is_restarted_over_its_stale_mount(tmp_path: Path) -> None:
    """SIGKILL leaves a dead mount (ENOTCONN); the supervisor restarts the process, which unmounts it lazily first."""
    with serving(tmp_path) as (serve, _source, mountpoint, log):
        mounted = [line for line in log.read_text().splitlines() if " mounted (pid " in line]
        [pid] = [int(line.rsplit("(pid ", 1)[1].split(")")[0]) for line in mounted]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not _stale(mountpoint):
            assert time.monotonic() < deadline, "the mount did not go stale"
            time.sleep(0.05)
        deadline = time.monotonic() + 30
        while True:  # restarted after the supervisor's pause (1 s), mounted again
            with contextlib.suppress(OSError):
                if (mountpoint / "clean.txt").read_bytes() == b"clean\n":
                    break
            assert time.monotonic() < deadline, "not mounted again within 30 s:\n" + log.read_text()
            time.sleep(0.1)
        with pytest.raises(PermissionError):
            open(mountpoint / "eicar.com", "rb")  # noqa: SIM115
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0, log.read_text()
        assert not os.path.ismount(mountpoint), log.read_text()
        assert not _stale(mountpoint), log.read_text()


def fusefs_pid(log: Path) -> int:
    """The pid of the fusefs process that mounted last, from serve's log."""
    mounted = [line for line in log.read_text().splitlines() if " mounted (pid " in line]
    return int(mounted[-1].rsplit("(pid ", 1)[1].split(")")[0])


HOOKS_CONFIG = """\
DATABASE = db.sqlite()
HOOKS = [stats(flush_interval=1), log_file("files.log", json=True)]
"""


def stats_table(config: Path, by: str) -> dict[str, str]:
    """``mailsift stats -c CONFIG --by BY``: the messages of each row."""
    shown = subprocess.run(
        [sys.executable, "-m", "mailsift", "stats", "-c", str(config), "--by", by],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    return {line.split()[0]: line.split()[1] for line in shown.stdout.splitlines()[2:] if line and line[0] != "-"}


def test_a_refused_file_runs_the_hooks_and_is_counted_like_a_mail(tmp_path: Path) -> None:
    """A fusefs finding goes through HOOKS as a mail finding does: stats() counts it (``mailsift stats``),
    log_file writes its line; a clean file is counted clean; files answered from the cache are not counted again."""
    with serving(tmp_path, extra=HOOKS_CONFIG) as (serve, source, mountpoint, log):
        assert (mountpoint / "clean.txt").read_bytes() == b"clean\n"
        for _ in range(2):
            with pytest.raises(PermissionError):
                open(mountpoint / "eicar.com", "rb")  # noqa: SIM115
        serve.send_signal(signal.SIGTERM)  # the stats hook writes what it counted when the process stops
        assert serve.wait(60) == 0, log.read_text()
    by_verdict = stats_table(tmp_path / "config.py", "verdict")
    assert (by_verdict.get("rejected"), by_verdict.get("clean")) == ("1", "1"), by_verdict
    assert stats_table(tmp_path / "config.py", "scanner").get("regexp_scan") == "1"
    lines = [json.loads(line) for line in (tmp_path / "state" / "files.log").read_text().splitlines()]
    assert [(line["name"], line["subject"]) for line in lines if line["name"]] == [
        ("EICAR-Test", str(source / "eicar.com"))
    ], lines
    assert len(lines) == 2, lines  # the clean file, the refused one: once each


def limits_of(pid: int) -> dict[str, tuple[str, str]]:
    """/proc/<pid>/limits: {"Max open files": (soft, hard), ...}."""
    found = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        name, soft, hard = line[:26].strip(), *line[26:].split()[:2]
        found[name] = (soft, hard)
    return found


def test_srv_rlimit_reaches_the_fusefs_process(tmp_path: Path) -> None:
    """SRV's rlimit(...) limits the fusefs process as it limits the workers (it runs the same scanners)."""
    with serving(tmp_path, more=", rlimit(NOFILE=(1000, 1001), CORE=0)") as (serve, _source, mountpoint, log):
        limits = limits_of(fusefs_pid(log))
        assert limits["Max open files"] == ("1000", "1001"), limits
        assert limits["Max core file size"] == ("0", "0"), limits
        assert (mountpoint / "clean.txt").read_bytes() == b"clean\n"  # and it serves under them
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0, log.read_text()


def test_its_own_rlimit_comes_before_srv_s(tmp_path: Path) -> None:
    """fusefs(..., rlimit=rlimit(...)) sets its process's limits, as a daemon's rlimit= does."""
    one_file_source(tmp_path)
    own = rlimit(NOFILE=(900, 901))
    mounted = mount(tmp_path, limits=own, srv_limits=rlimit(NOFILE=(1000, 1001)))
    try:
        assert limits_of(mounted.pid)["Max open files"] == ("900", "901")
        assert (mounted.mountpoint / "f").read_bytes() == b"f"
    finally:
        assert unmount(mounted) == 0
