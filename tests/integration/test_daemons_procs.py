"""Processes under `mailsift serve` (issue 16, build 7): rlimit(...) for the workers and a daemon,
chroot_execvp(..., pid_file=...) for a program that goes into the background (a double-forking
script and the real clamd without Foreground), the report when it does without pid_file, and
chroot= with a static busybox."""

from __future__ import annotations

import os
import re
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailsift.testing import free_port
from tests.helpers import daemonize
from tests.helpers.clamd import CLAMD, TESTFILES, ClamdInstance
from tests.helpers.waiting import wait_for

MAILSIFT = [sys.executable, "-m", "mailsift"]
BUSYBOX = "/bin/busybox"

HEAD = """\
import sys
from mailsift import *
STATE_DIR = {state!r}
SCANNERS = [regexp_scan([("Bad", "BADWORD")])]
SRV = [
    smtpd(SCANNERS, "127.0.0.1", {port}, next_hop=local_maildir({maildir!r})),
"""


def limits(pid: int) -> dict[str, tuple[str, str]]:
    """/proc/<pid>/limits: {"Max open files": (soft, hard), ...}."""
    found = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        match = re.match(r"(Max [a-z ]+?)\s{2,}(\S+)\s+(\S+)", line)
        if match:
            found[match.group(1)] = (match.group(2), match.group(3))
    return found


class Serve:
    def __init__(self, tmp: Path, entries: str) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.config = tmp / "config.py"
        self.config.write_text(
            HEAD.format(state=str(tmp / "state"), port=self.port, maildir=str(tmp / "mail")) + entries + "]\n"
        )
        self.log = tmp / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Serve:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*MAILSIFT, "serve", "-c", str(self.config), "-w", "1"], stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, pattern: str, seconds: float = 60) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"mailsift serve exited ({self.process.returncode}):\n{self.text()}")
            return re.search(pattern, self.text())

        return wait_for(found, seconds, what=pattern)  # type: ignore[return-value]

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[str], Serve]]:
    started: list[Serve] = []

    def make(entries: str) -> Serve:
        started.append(Serve(tmp_path, entries).start())
        return started[-1]

    yield make
    for instance in started:
        instance.kill()
    daemonize.kill_all(str(tmp_path))


# --------------------------------------------------------------------------- rlimit


SLEEPER = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(3600)"


def test_workers_and_a_daemon_run_under_their_rlimit(serve: Callable[[str], Serve], tmp_path: Path) -> None:
    pid_path = tmp_path / "sleeper.pid"
    served = serve(
        "    rlimit(AS=2 * 1024**3, NOFILE=(1000, 2000), CORE=0, CPU=(3600, 7200)),\n"
        f"    chroot_execvp(sys.executable, '-c', {SLEEPER!r}, {str(pid_path)!r},\n"
        "                  rlimit=rlimit(NOFILE=300, FSIZE=10**6, vmem='unlimited')),\n"
    )
    worker = int(served.wait_log(r"worker (\d+) started").group(1))
    served.wait_log("mailsift serving")
    with smtplib.SMTP("127.0.0.1", served.port, timeout=30) as client:  # the worker serves under its limits
        refused = client.sendmail("a@example.org", ["b@example.org"], b"Subject: hi\r\n\r\nhello\r\n")
    assert refused == {}
    got = limits(worker)
    assert got["Max address space"] == (str(2 * 1024**3), str(2 * 1024**3))
    assert got["Max open files"] == ("1000", "2000")
    assert got["Max core file size"] == ("0", "0")
    assert got["Max cpu time"] == ("3600", "7200")
    supervisor = limits(served.process.pid)  # type: ignore[union-attr]
    assert supervisor["Max open files"] != ("1000", "2000")  # the supervisor itself is not limited

    daemon = int(wait_for(lambda: daemonize.read_pid(pid_path), what="the daemon"))  # type: ignore[arg-type]
    got = limits(daemon)
    assert got["Max open files"] == ("300", "300")
    assert got["Max file size"] == ("1000000", "1000000")
    assert got["Max address space"] == ("unlimited", "unlimited")

    # a reload with other limits: the new workers have them
    served.config.write_text(served.config.read_text().replace("NOFILE=(1000, 2000)", "NOFILE=(1500, 2500)"))
    served.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    served.wait_log("reloaded")
    (new,) = {int(pid) for pid in re.findall(r"worker (\d+) started", served.text())} - {worker}
    assert limits(new)["Max open files"] == ("1500", "2500")
    assert served.stop() == 0


def test_a_bad_rlimit_is_a_config_error_with_its_line(tmp_path: Path) -> None:
    config = tmp_path / "config.py"
    config.write_text(
        "from mailsift import *\nSCANNERS = []\nSRV = [\n"
        f"    smtpd(SCANNERS, '127.0.0.1', {free_port()}),\n"
        "    rlimit(NOFILES=1000),\n]\n"
    )
    result = subprocess.run([*MAILSIFT, "check-config", "-c", str(config)], capture_output=True, text=True)
    assert result.returncode != 0
    assert f"{config}:5: rlimit: unknown resource 'NOFILES'" in result.stdout + result.stderr


# --------------------------------------------------------------------------- pid_file


def test_a_daemon_in_the_background_is_supervised_restarted_and_stopped_by_its_pid_file(
    serve: Callable[[str], Serve], tmp_path: Path
) -> None:
    program = daemonize.write_program(tmp_path)
    pid_file = tmp_path / "run" / "background.pid"
    pid_file.parent.mkdir()
    served = serve(
        f"    chroot_execvp(sys.executable, {str(program)!r}, {str(pid_file)!r}, pid_file={str(pid_file)!r}),\n"
    )
    first = int(served.wait_log(r"runs in the background as pid (\d+)").group(1))
    assert daemonize.read_pid(pid_file) == first
    assert daemonize.copies(str(pid_file)) == [first]  # one copy: the launcher is gone

    os.kill(first, signal.SIGKILL)  # it dies: mailsift sees it and starts it again
    served.wait_log(rf"\(pid {first}, from {re.escape(str(pid_file))}\) is gone")
    second = int(served.wait_log(rf"runs in the background as pid (?!{first}\b)(\d+)").group(1))
    assert second != first
    assert daemonize.alive(second)
    assert daemonize.copies(str(pid_file)) == [second]
    assert "went into the background, where mailsift" not in served.text()  # not the no-pid_file report

    assert served.stop() == 0
    assert not daemonize.alive(second)  # stopped by its PID at mailsift's exit
    assert daemonize.copies(str(pid_file)) == []
    assert f"(pid {second}, from {pid_file}) stopped" in served.text()


def test_without_pid_file_a_daemon_going_into_the_background_is_reported_not_restarted(
    serve: Callable[[str], Serve], tmp_path: Path
) -> None:
    program = daemonize.write_program(tmp_path)
    pid_file = tmp_path / "background.pid"
    served = serve(f"    chroot_execvp(sys.executable, {str(program)!r}, {str(pid_file)!r}),\n")
    served.wait_log("it went into the background")
    text = served.text()
    assert "give pid_file= (the file it writes its PID to) or run it in the foreground" in text
    time.sleep(3)  # a restart loop would have started it again after 1 s and 2 s
    assert "starting again" not in served.text()
    daemon = int(wait_for(lambda: daemonize.read_pid(pid_file), what="its pid file"))  # type: ignore[arg-type]
    assert daemonize.copies(str(pid_file)) == [daemon]  # one copy, not one per restart
    assert served.stop() == 0


@pytest.mark.skipif(not os.path.exists(CLAMD), reason="clamd not installed (scripts/setup.sh installs it)")
@pytest.mark.skipif(not (TESTFILES / "clam.exe").exists(), reason="clamav-testfiles not installed")
def test_real_clamd_without_foreground_is_followed_by_its_pid_file(
    serve: Callable[[str], Serve], tmp_path: Path
) -> None:
    pid_file = tmp_path / "clamd" / "clamd.pid"
    clamd = ClamdInstance(tmp_path / "clamd", options={"Foreground": "no", "PidFile": str(pid_file)})
    clamd.workdir.mkdir()
    clamd.write_database()
    clamd.write_config()
    served = serve(
        f"    chroot_execvp({CLAMD!r}, '-c', {str(clamd.conf_path)!r}, pid_file={str(pid_file)!r}),\n"
    )  # SAGATOR's example, chroot_execvp('/usr/sbin/clamd','-c','/etc/clamav.conf'), with its pid_file
    first = int(served.wait_log(r"runs in the background as pid (\d+)", 120).group(1))
    assert os.readlink(f"/proc/{first}/exe") == os.path.realpath(CLAMD)
    os.kill(first, signal.SIGKILL)
    second = int(served.wait_log(rf"runs in the background as pid (?!{first}\b)(\d+)", 120).group(1))
    assert os.readlink(f"/proc/{second}/exe") == os.path.realpath(CLAMD)

    def pong() -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(10)
                sock.connect(str(clamd.socket_path))
                sock.sendall(b"zPING\0")
                return sock.recv(16).startswith(b"PONG")
        except OSError:
            return False

    wait_for(pong, 60, what="clamd to answer")  # the process followed is the clamd that answers
    assert served.stop() == 0
    assert not daemonize.alive(second)


# --------------------------------------------------------------------------- chroot


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot(2) needs root")
@pytest.mark.skipif(
    not os.path.exists(BUSYBOX), reason="no static busybox (scripts/setup.sh --test installs busybox-static)"
)
def test_a_daemon_runs_in_its_chroot(serve: Callable[[str], Serve], tmp_path: Path) -> None:
    jail = tmp_path / "jail"
    (jail / "bin").mkdir(parents=True)
    (jail / "run").mkdir()
    (jail / "dev").mkdir()
    try:  # sh starts a job in the background with its stdin on /dev/null: a jail needs the nodes its program uses
        os.mknod(jail / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod is refused here (a container without CAP_MKNOD): no /dev/null for the jail")
    shutil.copy2(BUSYBOX, jail / "bin" / "busybox")
    for path in (jail, jail / "bin", jail / "run", jail / "dev"):
        path.chmod(0o755)
    script = "ls / > /run/listing; echo $$ > /run/busybox.pid; exec /bin/busybox sleep 3600"
    # and a chrooted daemon that goes into the background, followed by its pid_file (seen from outside)
    background = "/bin/busybox sleep 3600 & echo $! > /run/background.pid"
    outside = jail / "run" / "background.pid"
    served = serve(
        f"    chroot_execvp('/bin/busybox', 'sh', '-c', {script!r}, chroot={str(jail)!r}),\n"
        f"    chroot_execvp('/bin/busybox', 'sh', '-c', {background!r}, chroot={str(jail)!r},"
        f" pid_file={str(outside)!r}),\n"
    )
    pid = int(wait_for(lambda: daemonize.read_pid(jail / "run" / "busybox.pid"), what="busybox"))  # type: ignore[arg-type]
    assert os.readlink(f"/proc/{pid}/root") == str(jail)  # its / is the jail
    assert sorted((jail / "run" / "listing").read_text().split()) == ["bin", "dev", "run"]  # all it sees
    followed = int(served.wait_log(r"runs in the background as pid (\d+)").group(1))
    assert followed == daemonize.read_pid(outside)
    assert os.readlink(f"/proc/{followed}/root") == str(jail)
    assert served.stop() == 0
    assert not daemonize.alive(pid)
    assert not daemonize.alive(followed)
