"""`mailsift serve` as a real process: workers, SIGHUP reload, SIGTERM drain."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsift.testing import RecordingServer, free_port

MAILSIFT = [sys.executable, "-m", "mailsift"]

CONFIG = """\
import asyncio
from mailsift import *
from mailsift.message.result import Result

class slow(Scanner):
    name = "slow"
    async def scan(self, target):
        if b"SLOW" in target.data:
            open(STATE_DIR + "/scanning", "w").close()  # tells the test we are mid-scan
            await asyncio.sleep(1.5)
        return Result(0.0, "", self.name)

STATE_DIR = {state!r}
SMTP_SERVER = ("127.0.0.1", {next_hop})
SCANNERS = [slow(), regexp_scan([("Bad-Word", r"{word}")])]
SRV = [smtpd(SCANNERS, "127.0.0.1", {port})]
"""


class Served:
    def __init__(self, tmp_path: Path, next_hop: int) -> None:
        self.port = free_port()
        self.next_hop = next_hop
        self.config = tmp_path / "mailsift.conf.py"
        self.state = tmp_path / "state"
        self.log = tmp_path / "serve.log"
        self.write("BADWORD1")
        self.process: subprocess.Popen[bytes] | None = None

    def write(self, word: str) -> None:
        self.config.write_text(CONFIG.format(state=str(self.state), next_hop=self.next_hop, port=self.port, word=word))

    def start(self, workers: int = 2) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*MAILSIFT, "serve", "-c", str(self.config), "-w", str(workers), "--drain-seconds", "10"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=2) as client:
                    client.noop()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("mailsift serve did not start:\n" + self.log.read_text())

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def children(self) -> list[int]:
        assert self.process is not None
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]


@pytest.fixture
def downstream() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


@pytest.fixture
def served(tmp_path: Path, downstream: RecordingServer) -> Iterator[Served]:
    instance = Served(tmp_path, downstream.port)
    yield instance
    instance.stop()


def send(port: int, body: str) -> tuple[int, bytes]:
    data = f"From: a@example.test\r\nTo: b@example.test\r\nSubject: t\r\n\r\n{body}\r\n".encode()
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("a@example.test", ["b@example.test"], data)
    except smtplib.SMTPResponseException as error:
        return error.smtp_code, error.smtp_error
    return 250, b""


def test_workers_share_the_socket(served: Served, downstream: RecordingServer) -> None:
    served.start(workers=3)
    assert len(served.children()) == 3
    for i in range(12):
        assert send(served.port, f"message {i}")[0] == 250
    assert len(downstream.messages) == 12


def test_sighup_reloads_and_keeps_old_config_when_broken(served: Served) -> None:
    served.start()
    assert send(served.port, "BADWORD1")[0] == 550
    assert send(served.port, "BADWORD2")[0] == 250

    served.write("BADWORD2")
    served.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while send(served.port, "BADWORD2")[0] != 550:
        assert time.monotonic() < deadline, served.log.read_text()
        time.sleep(0.2)
    assert send(served.port, "BADWORD1")[0] == 250

    served.config.write_text("SCANNERS = [regexp_scan([('x', '(')])]\n")  # broken: NameError on line 1
    served.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "reload failed" not in served.log.read_text():
        assert time.monotonic() < deadline, served.log.read_text()
        time.sleep(0.1)
    assert f"{served.config}:1:" in served.log.read_text()
    assert send(served.port, "BADWORD2")[0] == 550  # the running config is kept


def test_a_reload_failing_a_late_check_keeps_serving_and_respawns_on_the_old_config(
    served: Served, tmp_path: Path
) -> None:
    """The new file loads but its STATE_DIR cannot be made: the supervisor logs it with file:line,
    stays up, and a worker that dies afterwards is replaced by one on the running config."""
    served.start(workers=1)
    assert send(served.port, "BADWORD1")[0] == 550
    (tmp_path / "a-file").write_text("")
    served.config.write_text(
        CONFIG.format(state=str(tmp_path / "a-file" / "state"), next_hop=served.next_hop, port=served.port, word="X")
    )
    served.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "reload failed" not in served.log.read_text():
        assert time.monotonic() < deadline, served.log.read_text()
        time.sleep(0.1)
    assert f"{served.config}:13: STATE_DIR: cannot create" in served.log.read_text()
    [worker] = served.children()
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while served.children() in ([], [worker]):
        assert time.monotonic() < deadline, served.log.read_text()
        time.sleep(0.1)
    assert served.process is not None
    assert served.process.poll() is None
    assert send(served.port, "BADWORD1")[0] == 550  # the respawned worker runs the kept config
    assert send(served.port, "X")[0] == 250


def test_sigterm_drains_the_message_in_progress(served: Served, downstream: RecordingServer) -> None:
    served.start(workers=1)
    outcome: list[tuple[int, bytes]] = []
    sender = threading.Thread(target=lambda: outcome.append(send(served.port, "SLOW")))
    sender.start()
    deadline = time.monotonic() + 20
    while not (served.state / "scanning").exists():
        assert time.monotonic() < deadline, served.log.read_text()
        time.sleep(0.05)
    served.signal(signal.SIGTERM)
    sender.join(30)
    assert outcome == [(250, b"")]
    assert len(downstream.messages) == 1
    assert served.process is not None
    assert served.process.wait(30) == 0
    with pytest.raises(OSError):
        smtplib.SMTP("127.0.0.1", served.port, timeout=2)


def test_a_killed_workers_spool_file_is_removed_when_its_replacement_starts(served: Served) -> None:
    """A worker SIGKILLed inside a transaction leaves its message's spool file; the next worker removes it."""
    served.config.write_text(served.config.read_text() + "SPOOL_THRESHOLD = 64\n")  # every message is spooled
    served.start(workers=1)
    [worker] = served.children()
    cut: list[BaseException] = []

    def send_and_be_cut() -> None:
        try:
            send(served.port, "SLOW " + "x" * 200)
        except (smtplib.SMTPException, OSError) as error:
            cut.append(error)

    sender = threading.Thread(target=send_and_be_cut)
    sender.start()
    deadline = time.monotonic() + 20
    while not (served.state / "scanning").exists():
        assert time.monotonic() < deadline, served.log.read_text()
        time.sleep(0.05)
    spool = served.state / "spool"
    [spooled] = list(spool.iterdir())
    assert spooled.name.startswith(f"mailsift-{worker}-")  # the name carries the worker's pid
    os.kill(worker, signal.SIGKILL)
    sender.join(30)
    assert cut, "the client saw the connection close without an answer: the MTA keeps the message"
    deadline = time.monotonic() + 20
    while served.children() in ([], [worker]) or spooled.exists():
        assert time.monotonic() < deadline, served.log.read_text()
        time.sleep(0.1)
    log = served.log.read_text()
    assert f"removed 1 spool file(s) left by processes that no longer run (or older than 86400 s) in {spool}: " in log
    assert spooled.name in log
