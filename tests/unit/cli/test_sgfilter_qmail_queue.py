"""``mailsift qmail-queue`` as qmail-smtpd runs it: a process with the message on fd 0 and
the envelope on fd 1, a real sgfilterd, and a qmail-queue stand-in
(``data/qmail_queue_standin.py``, built from qmail-queue(8)) that records what it receives.

Each exit code the command can give is shown here, and the stand-in must get
exactly the message and envelope the command was given, for mail to deliver only.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailsift import add_header, const, deliver, drop, quarantine, regexp_scan, reject
from mailsift.errors import ScannerError
from mailsift.message.result import Result
from mailsift.scanners.base import Scanner, Target
from mailsift.services.sgfilterd import sgfilterd
from mailsift.settings import Settings
from mailsift.testing import ServiceThread, free_port
from tests.helpers.paths import UNIT_DATA
from tests.helpers.samples import EICAR

STANDIN = UNIT_DATA / "qmail_queue_standin.py"
EICAR_SCAN = regexp_scan([("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")])
CLEAN = (
    b"Received: from client.example.test (192.0.2.1) by mx.example.test\r\n"
    b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nHello.\r\n.dot line\r\n\xe9 8bit\r\n"
)
INFECTED = b"From: alice@example.test\r\nSubject: virus\r\n\r\n" + EICAR + b"\r\n"
ENVELOPE = b"Falice@example.test\0Tbob@example.test\0Tcarol@example.test\0\0"


class Broken(Scanner):
    name = "broken"

    async def scan(self, target: Target) -> Result:
        raise ScannerError("broken: daemon down")


class Stall(Scanner):
    """Never answers in time (cancelled when the daemon drains)."""

    name = "stall"

    async def scan(self, target: Target) -> Result:
        import asyncio

        await asyncio.sleep(30)
        return Result()


@dataclass
class Run:
    code: int
    log: str
    received: list[tuple[bytes, bytes]]


@pytest.fixture
def standin(tmp_path: Path) -> Path:
    """An executable qmail-queue stand-in (a tiny shell wrapper around the recorder)."""
    (tmp_path / "queued").mkdir()
    script = tmp_path / "qmail-queue"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" "$@"\n')
    script.chmod(0o755)
    return script


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., ServiceThread]]:
    started: list[ServiceThread] = []

    def make(scanners: list[Any], **options: Any) -> ServiceThread:
        service = sgfilterd(scanners, "127.0.0.1", 0, **options)
        thread = ServiceThread(service, Settings(state_dir=str(tmp_path / "state")))
        started.append(thread.start())
        return thread

    yield make
    for thread in started:
        thread.stop()


@pytest.fixture
def qmail_queue(tmp_path: Path, standin: Path) -> Callable[..., Run]:
    def run(
        port: int,
        message: bytes = CLEAN,
        envelope: bytes = ENVELOPE,
        *args: str,
        prefix: tuple[str, ...] = (),
        **env: str,
    ) -> Run:
        """Run the command as qmail-smtpd would: message on fd 0 (a pipe), envelope on fd 1 (a pipe)."""
        envelope_read, envelope_write = os.pipe()
        writer = threading.Thread(target=_write_and_close, args=(envelope_write, envelope))
        writer.start()
        environment = {**os.environ, "STANDIN_DIR": str(tmp_path / "queued"), **env}
        command = [*prefix, sys.executable, "-m", "mailsift", "qmail-queue", "--port", str(port), "--qmail-queue"]
        try:
            done = subprocess.run(
                [*command, str(standin), "--timeout", "20", *args],
                input=message,
                stdout=envelope_read,
                stderr=subprocess.PIPE,
                env=environment,
                timeout=120,
                check=False,
            )
        finally:
            os.close(envelope_read)
            writer.join()
        return Run(done.returncode, done.stderr.decode(), received(tmp_path / "queued"))

    return run


def _write_and_close(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except BrokenPipeError:
        pass
    finally:
        os.close(fd)


def received(directory: Path) -> list[tuple[bytes, bytes]]:
    count = len(list(directory.glob("*.message")))
    return [
        ((directory / f"{n}.message").read_bytes(), (directory / f"{n}.envelope").read_bytes()) for n in range(count)
    ]


# --------------------------------------------------------------------------- delivered


def test_clean_mail_reaches_qmail_queue_byte_for_byte(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]
) -> None:
    daemon = make_daemon([EICAR_SCAN])
    run = qmail_queue(daemon.port)
    assert run.code == 0, run.log
    assert run.received == [(CLEAN, ENVELOPE)]
    assert "answer=250 0.00: queued" in run.log


def test_the_configs_headers_are_added_and_nothing_else(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]
) -> None:
    daemon = make_daemon([add_header("X-Scanned", "mailsift", const(0.0, "ok")), EICAR_SCAN])
    run = qmail_queue(daemon.port)
    assert run.code == 0, run.log
    assert run.received == [(b"X-Scanned: mailsift\r\n" + CLEAN, ENVELOPE)]


def test_forced_delivery_251_is_queued(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]
) -> None:
    daemon = make_daemon([deliver(EICAR_SCAN)])
    run = qmail_queue(daemon.port, INFECTED)
    assert run.code == 0, run.log
    assert run.received == [(INFECTED, ENVELOPE)]


def test_the_real_qmail_queues_exit_code_is_ours(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]
) -> None:
    daemon = make_daemon([EICAR_SCAN])
    run = qmail_queue(daemon.port, STANDIN_EXIT="53")
    assert run.code == 53
    assert run.received == [(CLEAN, ENVELOPE)]


def test_empty_sender_and_trailing_bytes_after_the_envelope(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]
) -> None:
    daemon = make_daemon([EICAR_SCAN])
    envelope = b"F\0Tpostmaster@example.test\0\0"
    run = qmail_queue(daemon.port, CLEAN, envelope + b"ignored")
    assert run.code == 0, run.log
    assert run.received == [(CLEAN, envelope)]


# --------------------------------------------------------------------------- not delivered


def test_reject_550_exits_31(make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]) -> None:
    daemon = make_daemon([reject(EICAR_SCAN)])
    run = qmail_queue(daemon.port, INFECTED)
    assert run.code == 31
    assert run.received == []
    assert "550 1.00 EICAR-Test" in run.log


@pytest.mark.parametrize("action", [drop, lambda s: quarantine("virus", s)], ids=["drop", "quarantine"])
def test_drop_551_exits_0_without_queueing(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run], action: Any
) -> None:
    daemon = make_daemon([action(EICAR_SCAN)])
    run = qmail_queue(daemon.port, INFECTED)
    assert run.code == 0
    assert run.received == []
    assert "dropped" in run.log


def test_tempfail_451_exits_71(make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]) -> None:
    daemon = make_daemon([Broken()])
    run = qmail_queue(daemon.port)
    assert (run.code, run.received) == (71, [])


def test_timeout_exits_72(make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]) -> None:
    daemon = make_daemon([Stall()])
    run = qmail_queue(daemon.port, CLEAN, ENVELOPE, "--timeout", "0.5")
    assert (run.code, run.received) == (72, [])


def test_daemon_down_exits_73(qmail_queue: Callable[..., Run]) -> None:
    run = qmail_queue(free_port())
    assert (run.code, run.received) == (73, [])
    assert "cannot connect" in run.log


def test_garbled_answer_exits_74(qmail_queue: Callable[..., Run]) -> None:
    with _one_shot_server(b"hello, I am not sgfilterd\n") as port:
        run = qmail_queue(port)
    assert (run.code, run.received) == (74, [])


def test_answer_cut_short_exits_74(qmail_queue: Callable[..., Run]) -> None:
    with _one_shot_server(b"250 0.00\n" + CLEAN[:40]) as port:  # the daemon died while sending
        run = qmail_queue(port)
    assert (run.code, run.received) == (74, [])


def test_over_the_size_limit_exits_31(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]
) -> None:
    daemon = make_daemon([EICAR_SCAN], max_size=2048)
    big = CLEAN + b"x" * 5000 + b"\r\n"
    by_daemon = qmail_queue(daemon.port, big)  # the daemon's limit: it answers 552
    assert (by_daemon.code, by_daemon.received) == (31, [])
    assert "552 0.00" in by_daemon.log
    by_client = qmail_queue(daemon.port, big, ENVELOPE, "--max-size", "100")  # the client's own limit
    assert (by_client.code, by_client.received) == (31, [])
    assert "over 100 bytes" in by_client.log


# --------------------------------------------------------------------------- bad input, local failures


@pytest.mark.parametrize(
    ("envelope", "code"),
    [
        (b"Falice@example.test\0Tbob@example.test\0", 54),  # EOF before the final 0 byte
        (b"Falice@example.test", 54),
        (b"", 54),
        (b"Xalice@example.test\0Tbob@example.test\0\0", 91),
        (b"Falice@example.test\0Xbob@example.test\0\0", 91),
        (b"Falice@example.test\0\0", 91),  # no recipient
        (b"F" + b"a" * 600 + b"@example.test\0Tbob@example.test\0\0", 11),
    ],
    ids=[
        "no-final-zero",
        "no-zero-at-all",
        "empty",
        "bad-first-letter",
        "bad-recipient-letter",
        "no-recipient",
        "too-long",
    ],
)
def test_envelope_errors(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run], envelope: bytes, code: int
) -> None:
    daemon = make_daemon([EICAR_SCAN])
    run = qmail_queue(daemon.port, CLEAN, envelope)
    assert (run.code, run.received) == (code, [])


def test_real_qmail_queue_missing_exits_81(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run], tmp_path: Path
) -> None:
    daemon = make_daemon([EICAR_SCAN])
    run = qmail_queue(daemon.port, CLEAN, ENVELOPE, "--qmail-queue", str(tmp_path / "no-such-qmail-queue"))
    assert run.code == 81
    assert "cannot execute" in run.log


def test_temporary_file_not_writable_exits_53(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run], tmp_path: Path
) -> None:
    daemon = make_daemon([EICAR_SCAN])
    # files may not grow past 16 bytes: writing the message to the temporary file fails (EFBIG)
    run = qmail_queue(daemon.port, CLEAN, ENVELOPE, prefix=("prlimit", "--fsize=16:16", "--"))
    assert (run.code, run.received) == (53, [])
    assert "cannot write a temporary file" in run.log


# --------------------------------------------------------------------------- --safe


def test_safe_passes_the_original_when_the_daemon_is_down(qmail_queue: Callable[..., Run]) -> None:
    run = qmail_queue(free_port(), CLEAN, ENVELOPE, "--safe")
    assert run.code == 0, run.log
    assert run.received == [(CLEAN, ENVELOPE)]
    assert "queued unscanned (--safe)" in run.log


def test_safe_still_rejects(make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]) -> None:
    daemon = make_daemon([reject(EICAR_SCAN)])
    run = qmail_queue(daemon.port, INFECTED, ENVELOPE, "--safe")
    assert (run.code, run.received) == (31, [])


def test_safe_on_451(make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]) -> None:
    daemon = make_daemon([Broken()])
    run = qmail_queue(daemon.port, INFECTED, ENVELOPE, "--safe")
    assert (run.code, run.received) == (0, [(INFECTED, ENVELOPE)])


# --------------------------------------------------------------------------- helpers


class _one_shot_server:  # used as a context manager, reads like a function
    """A TCP server that reads one request and answers ``reply`` (a broken sgfilterd)."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        connection, _ = self.sock.accept()
        with connection:
            connection.settimeout(20)
            while chunk := connection.recv(65536):  # until the client's EOF
                del chunk
            connection.sendall(self.reply)

    def __enter__(self) -> int:
        self.thread.start()
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.thread.join(30)
        self.sock.close()


def test_safe_on_the_daemons_size_limit(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]
) -> None:
    daemon = make_daemon([EICAR_SCAN], max_size=2048)
    big = CLEAN + b"x" * 5000 + b"\r\n"
    run = qmail_queue(daemon.port, big, ENVELOPE, "--safe")
    assert (run.code, run.received) == (0, [(big, ENVELOPE)])
