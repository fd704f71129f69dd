"""A real ``mailsift serve`` running the milter service, for the attack suite (tests/security/).

:class:`MilterServe` writes a config (a milter on a free port, EICAR quarantined
as a virus, ``SMTP_SERVER`` a recording next hop, ``log_file`` in JSON lines),
starts ``mailsift serve -w 1`` and finds its worker, whose memory the tests read
from ``/proc``.  :func:`negotiated` opens an MTA-side connection (every step
answered, as :class:`~tests.helpers.milter.MilterClient` does).
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mailsift.testing import free_port
from tests.helpers.milter import MilterWire

MAILSIFT = [sys.executable, "-m", "mailsift"]
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*\r\n"


def config_text(state: Path, port: int, next_hop: int, options: str = "") -> str:
    return f"""\
from mailsift import *

STATE_DIR = {str(state)!r}
SMTP_SERVER = smtp_relay("127.0.0.1", {next_hop}, timeout=10)
HOOKS = [log_file({str(state.parent / "mail.log")!r}, json=True)]
SCANNERS = [
    quarantine("virus", regexp_scan([("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")])),
]
SRV = [milter(SCANNERS, "attack", "inet:{port}@127.0.0.1"{options})]
"""


def negotiated(port: int, *, steps: int = 0) -> MilterWire:
    """A connection after OPTNEG (version 6, every action; ``steps``: the no-reply flags offered)."""
    wire = MilterWire(port)
    wire.send(b"O", struct.pack(">III", 6, 0x1FF, steps))
    command, _ = wire.read()
    assert command == b"O"
    return wire


@contextlib.contextmanager
def connections(port: int) -> Iterator[Callable[[], MilterWire]]:
    """Open negotiated connections with the function yielded; all are closed at the end."""
    opened: list[MilterWire] = []

    def open_one() -> MilterWire:
        opened.append(negotiated(port))
        return opened[-1]

    try:
        yield open_one
    finally:
        for wire in opened:
            wire.sock.close()


class MilterServe:
    """``mailsift serve -w 1`` with one milter service; its output in ``directory/serve.log``."""

    def __init__(self, directory: Path, next_hop: int, options: str = "") -> None:
        self.directory = directory
        self.state = directory / "state"
        self.port = free_port()
        self.config = directory / "mailsift.conf.py"
        self.log = directory / "serve.log"
        directory.mkdir(parents=True, exist_ok=True)
        self.config.write_text(config_text(self.state, self.port, next_hop, options))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> MilterServe:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*MAILSIFT, "serve", "-c", str(self.config), "-w", "1", "--drain-seconds", "5"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                negotiated(self.port).sock.close()
                return self
            except OSError:
                time.sleep(0.2)
        raise AssertionError("mailsift serve did not start:\n" + self.log_text())

    def worker(self) -> int:
        """The pid of the one worker."""
        assert self.process is not None
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.process.pid)], capture_output=True, text=True)
        pids = [int(pid) for pid in out.stdout.split()]
        assert len(pids) == 1, pids
        return pids[0]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``mailsift <args> -c <config>``."""
        return subprocess.run(
            [*MAILSIFT, *args, "-c", str(self.config)], capture_output=True, text=True, timeout=timeout
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.kill(self.worker(), signal.SIGKILL)
            self.process.kill()
            self.process.wait(30)

    def __enter__(self) -> MilterServe:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def rss_kb(pid: int) -> int:
    """The current resident set of a process, in kB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")
