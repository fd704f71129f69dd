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
UNSET = "\0unset"
"""An environment value that removes the variable (TCPREMOTEIP, RELAYCLIENT may be in the test's own)."""


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
        pass_fds: tuple[int, ...] = (),
        **env: str,
    ) -> Run:
        """Run the command as qmail-smtpd would: message on fd 0 (a pipe), envelope on fd 1 (a pipe)."""
        envelope_read, envelope_write = os.pipe()
        writer = threading.Thread(target=_write_and_close, args=(envelope_write, envelope))
        writer.start()
        environment = {**os.environ, "STANDIN_DIR": str(tmp_path / "queued"), **env}
        for name in [n for n, v in environment.items() if v == UNSET]:
            del environment[name]
        command = [*prefix, sys.executable, "-m", "mailsift", "qmail-queue", "--port", str(port), "--qmail-queue"]
        try:
            done = subprocess.run(
                [*command, str(standin), "--timeout", "20", *args],
                input=message,
                stdout=envelope_read,
                stderr=subprocess.PIPE,
                env=environment,
                pass_fds=pass_fds,
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


# --------------------------------------------------------------------------- the SMTP client (TCPREMOTEIP, RELAYCLIENT)


class Recording(Scanner):
    """Clean; records the client the daemon was told about."""

    name = "recording"

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bool | None]] = []

    async def scan(self, target: Target) -> Result:
        env = target.mail.envelope
        self.seen.append((env.client_address, env.client_name, env.relay_client))
        return Result()


NO_CLIENT = {"TCPREMOTEIP": UNSET, "TCPREMOTEHOST": UNSET, "RELAYCLIENT": UNSET}


def test_tcpserver_environment_reaches_the_scanners(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]
) -> None:
    recording = Recording()
    daemon = make_daemon([recording])
    run = qmail_queue(daemon.port, **{**NO_CLIENT, "TCPREMOTEIP": "192.0.2.7", "TCPREMOTEHOST": "mx.example.test"})
    assert run.code == 0, run.log
    run = qmail_queue(daemon.port, **{**NO_CLIENT, "TCPREMOTEIP": "198.51.100.9", "RELAYCLIENT": ""})
    assert run.code == 0, run.log
    assert recording.seen == [("192.0.2.7", "mx.example.test", False), ("198.51.100.9", "", True)]
    assert "client=198.51.100.9 relay=1" in run.log


def test_local_injection_is_localhost_unless_told_otherwise(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]
) -> None:
    recording = Recording()
    daemon = make_daemon([recording])
    assert qmail_queue(daemon.port, **NO_CLIENT).code == 0
    assert qmail_queue(daemon.port, CLEAN, ENVELOPE, "--local-address", "", **NO_CLIENT).code == 0
    assert qmail_queue(daemon.port, CLEAN, ENVELOPE, "--no-extensions", TCPREMOTEIP="192.0.2.7").code == 0
    assert recording.seen == [("127.0.0.1", "", False), ("", "", False), ("", "", None)]


def test_garbage_in_the_environment_is_left_out(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]
) -> None:
    recording = Recording()
    daemon = make_daemon([recording])
    run = qmail_queue(daemon.port, **{**NO_CLIENT, "TCPREMOTEIP": "not an ip", "TCPREMOTEHOST": "a b\tc"})
    assert run.code == 0, run.log
    assert recording.seen == [("", "", False)]


def test_localhost_is_never_rejected_by_spam_levels(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]
) -> None:
    """qmail-scanner's st patch: with sa-reject, spam from localhost (fetchmail) is deleted, not rejected."""
    from mailsift import spam_levels
    from mailsift.scanners.engines.common import SpamResult

    class Spammy(Scanner):
        name = "spammy"

        async def scan(self, target: Target) -> Result:
            return SpamResult(1.0, "Spam", self.name, score=30.0, required=5.0)

    daemon = make_daemon([spam_levels(Spammy(), delete=10.0, reject=True)])
    outside = qmail_queue(daemon.port, **{**NO_CLIENT, "TCPREMOTEIP": "192.0.2.7"})
    local = qmail_queue(daemon.port, **{**NO_CLIENT, "TCPREMOTEIP": "127.0.0.1", "RELAYCLIENT": ""})
    injected = qmail_queue(daemon.port, **NO_CLIENT)
    assert outside.code == 31, outside.log
    assert (local.code, injected.code) == (0, 0)
    assert "dropped" in local.log
    assert "dropped" in injected.log


def test_the_log_line_says_rc_from_relayclient(tmp_path: Path, standin: Path, qmail_queue: Callable[..., Run]) -> None:
    from mailsift.reporting.logline import log_file

    hook = log_file(str(tmp_path / "mail.log"))
    stats = log_file(str(tmp_path / "mailstats.csv"), format="mailstats", crypto=True)
    service = sgfilterd([EICAR_SCAN], "127.0.0.1", 0)
    thread = ServiceThread(service, Settings(state_dir=str(tmp_path / "state"), hooks=(hook, stats))).start()
    try:
        assert qmail_queue(thread.port, **{**NO_CLIENT, "TCPREMOTEIP": "192.0.2.7", "RELAYCLIENT": ""}).code == 0
        assert qmail_queue(thread.port, **{**NO_CLIENT, "TCPREMOTEIP": "127.0.0.1"}).code == 0
    finally:
        thread.stop()
    lines = (tmp_path / "mail.log").read_text().splitlines()
    statuses = [line.split()[1].split(":Q:")[0] for line in lines[::2]]
    assert statuses == ["Clear:RC:1(192.0.2.7)", "Clear:RC:0(127.0.0.1)"]
    columns = [line.split("\t") for line in (tmp_path / "mailstats.csv").read_text().splitlines()]
    assert [c[1].split(":Q:")[0] for c in columns[::2]] == statuses
    assert [c[5] for c in columns[:2]] == ["bob@example.test", "carol@example.test"]
    assert columns[0][6] == "hi"


# --------------------------------------------------------------------------- the custom-error patch


def _custom_error_run(
    qmail_queue: Callable[..., Run], port: int, message: bytes, *args: str, **env: str
) -> tuple[Run, bytes]:
    """Run with fd 4 a pipe, as the patched qmail_open() gives it; return what was written on it."""
    read_end, write_end = os.pipe()
    try:
        code = f"import os, sys; os.dup2({write_end}, 4); os.close({write_end}); os.execvp(sys.argv[1], sys.argv[1:])"
        prefix = (sys.executable, "-c", code)
        run = qmail_queue(port, message, ENVELOPE, *args, prefix=prefix, pass_fds=(write_end,), **env)
        os.close(write_end)
        write_end = -1
        with os.fdopen(read_end, "rb") as reader:
            read_end = -1
            written = reader.read()
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
    return run, written


def test_custom_error_names_the_virus(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]
) -> None:
    daemon = make_daemon([reject(EICAR_SCAN)])
    run, written = _custom_error_run(qmail_queue, daemon.port, INFECTED, "--custom-error")
    assert run.code == 82, run.log
    assert written == b"DYour email was rejected: EICAR-Test (#5.7.1)"
    assert run.received == []


def test_custom_error_is_off_by_default(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]
) -> None:
    daemon = make_daemon([reject(EICAR_SCAN)])
    run, written = _custom_error_run(qmail_queue, daemon.port, INFECTED)
    assert (run.code, written) == (31, b"")


def test_custom_error_for_a_tempfail_and_an_unreachable_daemon(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]
) -> None:
    daemon = make_daemon([Broken()])
    run, written = _custom_error_run(qmail_queue, daemon.port, CLEAN, MAILSIFT_QMAIL_CUSTOM_ERROR="1")
    assert run.code == 82, run.log
    assert written == b"Ztemporary failure in the content filter, try again later (#4.3.0)"
    run, written = _custom_error_run(qmail_queue, free_port(), CLEAN, "--custom-error")
    assert (run.code, written) == (82, b"Zcontent filter unavailable, try again later (#4.3.0)")


def test_custom_error_cannot_break_the_smtp_reply(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]
) -> None:
    daemon = make_daemon([reject(const(1.0, "Evil\u00e9\u2028name 250 ok"))])
    run, written = _custom_error_run(qmail_queue, daemon.port, CLEAN, "--custom-error")
    assert run.code == 82, run.log
    assert written.startswith(b"DYour email was rejected: Evil")
    assert all(0x20 <= byte < 0x7F for byte in written), written


def test_custom_error_without_the_patchs_descriptor_keeps_the_plain_code(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]
) -> None:
    daemon = make_daemon([reject(EICAR_SCAN)])
    run = qmail_queue(daemon.port, INFECTED, ENVELOPE, "--custom-error", "--custom-error-fd", "97")
    assert run.code == 31, run.log
    assert "fd 97 is not open" in run.log


# --------------------------------------------------------------------------- kept work files (SIMSCAN_DEBUG)


def test_work_files_are_kept_private_for_debugging(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run], tmp_path: Path
) -> None:
    import stat

    work = tmp_path / "work"
    daemon = make_daemon([reject(EICAR_SCAN)])
    old = work / "1000000000.000001.1"
    old.mkdir(parents=True, mode=0o700)
    (old / "msg").write_bytes(b"old")
    os.utime(old, (1_000_000_000, 1_000_000_000))
    work.chmod(0o700)
    run = qmail_queue(daemon.port, INFECTED, ENVELOPE, "--keep-work", str(work))
    assert run.code == 31, run.log
    kept = list(work.iterdir())
    assert len(kept) == 1
    assert kept[0] != old
    files = {f.name: f for f in kept[0].iterdir()}
    assert files["msg"].read_bytes() == INFECTED
    assert files["addr"].read_bytes() == ENVELOPE
    assert files["answer"].read_bytes().startswith(b"550 1.00 EICAR-Test")
    assert b"exit 31" in files["log"].read_bytes()
    assert stat.S_IMODE(kept[0].stat().st_mode) == 0o700
    assert {stat.S_IMODE(f.stat().st_mode) for f in files.values()} == {0o600}


def test_simscan_debug_keeps_work_files_and_nothing_is_kept_without_it(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run], tmp_path: Path
) -> None:
    work = tmp_path / "work"
    daemon = make_daemon([EICAR_SCAN])
    assert qmail_queue(daemon.port).code == 0
    assert not work.exists()
    run = qmail_queue(daemon.port, SIMSCAN_DEBUG="1", MAILSIFT_QMAIL_KEEP_WORK=str(work))
    assert run.code == 0, run.log
    assert [f.name for d in work.iterdir() for f in sorted(d.iterdir())] == ["addr", "answer", "msg"]


def test_work_files_are_not_kept_in_a_directory_others_can_write(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run], tmp_path: Path
) -> None:
    work = tmp_path / "shared"
    work.mkdir()
    work.chmod(0o777)
    daemon = make_daemon([EICAR_SCAN])
    run = qmail_queue(daemon.port, CLEAN, ENVELOPE, "--keep-work", str(work))
    assert run.code == 0, run.log
    assert list(work.iterdir()) == []
    assert "must be a directory of this user, mode 0700" in run.log


# --------------------------------------------------------------------------- a changed body reaches qmail-queue


def test_sanitized_and_header_removed_mail_is_queued_whole_with_answer_length(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]
) -> None:
    """sgfilterd gives its LENGTH when asked: what sanitize or remove_headers made is queued as made."""
    from mailsift import remove_headers, sanitize

    mixed = (
        b"From: alice@example.test\r\nX-Spam-Flag: NO\r\nSubject: mixed\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        b"--B\r\nContent-Type: application/octet-stream; name=v.com\r\n\r\n" + EICAR + b"\r\n--B--\r\n"
    )
    daemon = make_daemon([remove_headers("X-Spam-"), sanitize(EICAR_SCAN)])
    run = qmail_queue(daemon.port, mixed)
    assert run.code == 0, run.log
    ((queued, envelope),) = run.received
    assert envelope == ENVELOPE
    assert EICAR not in queued
    assert b"X-Spam-Flag" not in queued
    assert b"hello" in queued
    plain = qmail_queue(daemon.port, mixed, ENVELOPE, "--no-extensions")  # SAGATOR's protocol: the body must stay
    assert plain.code == 71, plain.log


def test_repeated_mime_headers_renamed_and_queued(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]
) -> None:
    """qmail-scanner's rename: the latter Content-Type becomes X-Duplicate-Content-Type, the mail is queued."""
    from mailsift import bad_mime

    repeated = (
        b"From: a@example.test\r\nContent-Type: text/plain\r\nContent-Type: text/html\r\nSubject: two\r\n\r\nhi\r\n"
    )
    renamed = repeated.replace(b"Content-Type: text/html", b"X-Duplicate-Content-Type: text/html")
    rejecting = make_daemon([EICAR_SCAN, bad_mime()])
    assert qmail_queue(rejecting.port, repeated).code == 31
    daemon = make_daemon([EICAR_SCAN, bad_mime(repeated="rename")])
    run = qmail_queue(daemon.port, repeated)
    assert run.code == 0, run.log
    assert run.received == [(renamed, ENVELOPE)]
    assert "251 1.00 Bad.MIME.Header.Repeated" in run.log


def test_custom_error_leaves_qmails_own_failures_and_drops_alone(
    make_daemon: Callable[..., ServiceThread], qmail_queue: Callable[..., Run]
) -> None:
    daemon = make_daemon([drop(EICAR_SCAN)])
    run, written = _custom_error_run(qmail_queue, daemon.port, INFECTED, "--custom-error")
    assert (run.code, written) == (0, b"")
    bad_envelope = qmail_queue(daemon.port, CLEAN, b"Xbad\0\0", "--custom-error")
    assert bad_envelope.code == 91
    assert "custom error" not in bad_envelope.log
