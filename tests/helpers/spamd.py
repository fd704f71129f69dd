"""A private, throw-away SpamAssassin ``spamd`` for tests.

Local tests only, as ``../shared/peers/20_spamassassin.sh`` runs it: the
rules Debian ships in ``/usr/share/spamassassin`` (no sa-update), ``-L`` (no
DNSBL/URIBL/Razor/Pyzor/DCC), Bayes off.  Everything lives in a work directory::

    WORKDIR/site/           --siteconfigpath: Debian's *.pre (the same plugins
                            as /etc/spamassassin) and our local.cf
    WORKDIR/users/NAME/     --virtual-config-dir: per-user user_prefs; the user
                            ``strict`` has ``required_score 2.5``
    WORKDIR/spamd.sock      a unix socket, beside 127.0.0.1:PORT
    WORKDIR/spamd.pid, spamd.log, spamd.out

spamd runs in the foreground (no ``-d``) as a child of the test process, drops
to ``nobody`` (it refuses to scan as root), and is stopped by its PID; its
preforked children are found by a parent-PID walk and reaped too.

The fixture ``spamd_instance`` (session scope: spamd needs seconds to load the
rules) is imported by the test modules that need it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SPAMD = "/usr/sbin/spamd"
SPAMC = "/usr/bin/spamc"
STRICT_USER = "strict"
STRICT_REQUIRED = 2.5

LOCAL_CF = """\
# mailsift tests: local tests only, no learning, no network.
use_bayes 0
bayes_auto_learn 0
skip_rbl_checks 1
use_razor2 0
use_pyzor 0
use_dcc 0
"""


def free_port() -> int:
    """A currently unused TCP port on 127.0.0.1 (racy, but fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """All descendant PIDs of ``pid`` (by a /proc parent walk: no name matching)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_tree(process: subprocess.Popen[bytes]) -> None:
    """Stop a daemon and every process it forked: SIGTERM, then SIGKILL what is left after 10 s."""
    kids = descendants(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    deadline = time.monotonic() + 10
    while any(alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for kid in kids:
        if alive(kid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(kid, signal.SIGKILL)


class SpamdInstance:
    """spamd on ``127.0.0.1:port`` and on the unix socket ``socket_path``."""

    def __init__(self, workdir: Path, children: int = 3) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.socket_path = str(workdir / "spamd.sock")
        self.children = children
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def _write_config(self) -> None:
        site = self.workdir / "site"
        site.mkdir(parents=True, exist_ok=True)
        for pre in Path("/etc/spamassassin").glob("*.pre"):
            shutil.copy(pre, site / pre.name)
        (site / "local.cf").write_text(LOCAL_CF)
        prefs = self.workdir / "users" / STRICT_USER
        prefs.mkdir(parents=True, exist_ok=True)
        (prefs / "user_prefs").write_text(f"required_score {STRICT_REQUIRED}\n")
        for path in [self.workdir, *self.workdir.rglob("*")]:  # spamd's children run as nobody
            path.chmod(0o755 if path.is_dir() else 0o644)

    def start(self, timeout: float = 120.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        out = (self.workdir / "spamd.out").open("wb")
        self.process = subprocess.Popen(
            [
                SPAMD,
                "-L",
                "-x",
                "-u",
                "nobody",
                f"--listen=127.0.0.1:{self.port}",
                f"--listen={self.socket_path}",
                "-A",
                "127.0.0.1",
                f"--siteconfigpath={self.workdir / 'site'}",
                f"--virtual-config-dir={self.workdir / 'users'}/%u",
                f"-m{self.children}",
                "--min-children=1",
                "--min-spare=1",
                f"--max-spare={self.children}",
                f"--pidfile={self.workdir / 'spamd.pid'}",
                f"-s{self.workdir / 'spamd.log'}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"spamd exited with {self.process.returncode}: {self.log_tail()}")
            if self.ping():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"spamd did not answer PING in {timeout} s: {self.log_tail()}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(self.address, timeout=2) as sock:
                sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
                return sock.recv(100).startswith(b"SPAMD/1.5 0 PONG")
        except OSError:
            return False

    def log_tail(self) -> str:
        texts = []
        for name in ("spamd.out", "spamd.log"):
            with contextlib.suppress(OSError):
                texts.append((self.workdir / name).read_text(errors="replace")[-2000:])
        return "\n".join(texts)

    def spamc(self, data: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
        """Run the real ``spamc`` against this spamd (``-c`` prints ``12.3/5.0``, exit 1 for spam)."""
        return subprocess.run(
            [SPAMC, "-d", "127.0.0.1", "-p", str(self.port), *args],
            input=data,
            capture_output=True,
            timeout=120,
            check=False,
        )

    def stop(self) -> None:
        if self.process is not None:
            stop_tree(self.process)
        self.process = None


@pytest.fixture(scope="session")
def spamd_instance() -> Iterator[SpamdInstance]:
    """One private spamd for the whole session, stopped by PID at the end.

    The work directory is made with ``tempfile.mkdtemp`` directly under /tmp,
    not under pytest's 0700 base directory, because spamd's children run as
    ``nobody`` and must read the per-user preferences.
    """
    if not (os.path.exists(SPAMD) and os.path.exists(SPAMC)):
        pytest.skip("spamassassin's spamd/spamc are not installed (scripts/test.sh installs them)")
    workdir = Path(tempfile.mkdtemp(prefix="mailsift-spamd-"))
    instance = SpamdInstance(workdir)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(workdir, ignore_errors=True)
