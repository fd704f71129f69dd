"""``mailsift sgfilter`` (procmail/maildrop filter) against a real sgfilterd: every exit code,
the message on stdout, the mbox From_ line, and the --safe fallback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mailsift import const, deliver, drop, modify_subject, regexp_scan, reject, sender_regexp
from mailsift.cli.main import main
from mailsift.errors import ScannerError
from mailsift.message.result import Result
from mailsift.scanners.base import Scanner, Target
from mailsift.services.sgfilter_client import SG_DELIVER, SG_DROP, SG_REJECT, SG_TEMPFAIL, SG_TOO_BIG, SG_USAGE
from mailsift.services.sgfilterd import sgfilterd
from mailsift.settings import Settings
from mailsift.testing import ServiceThread, free_port
from tests.helpers.samples import EICAR

EICAR_SCAN = regexp_scan([("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")])
CLEAN = b"From: alice@example.test\nTo: bob@example.test\nSubject: hi\n\nHello.\n"
INFECTED = b"From: alice@example.test\nSubject: virus\n\n" + EICAR + b"\n"
FROM_LINE = b"From alice@example.test  Mon Jan  1 00:00:00 2024\n"


class Broken(Scanner):
    name = "broken"

    async def scan(self, target: Target) -> Result:
        raise ScannerError("broken: daemon down")


class Recording(Scanner):
    name = "recording"

    def __init__(self) -> None:
        self.seen: list[tuple[str, list[str], bytes]] = []

    async def scan(self, target: Target) -> Result:
        env = target.mail.envelope
        self.seen.append((env.sender, list(env.recipients), target.data))
        return Result()


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., int]]:
    started: list[ServiceThread] = []

    def make(scanners: list[Any], **options: Any) -> int:
        thread = ServiceThread(sgfilterd(scanners, "127.0.0.1", 0, **options), Settings(state_dir=str(tmp_path)))
        started.append(thread.start())
        return thread.port

    yield make
    for thread in started:
        thread.stop()


def sgfilter(port: int, message: bytes, *args: str, env: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    runner = CliRunner(env=env)
    result = runner.invoke(main, ["sgfilter", "--port", str(port), "--timeout", "20", *args], input=message)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout_bytes, result.stderr


def test_clean_exits_0_with_the_message(make_daemon: Callable[..., int]) -> None:
    port = make_daemon([EICAR_SCAN])
    assert sgfilter(port, CLEAN)[:2] == (SG_DELIVER, CLEAN)


def test_edits_reach_stdout(make_daemon: Callable[..., int]) -> None:
    port = make_daemon([modify_subject("[checked] ", const(0.0, "ok")), EICAR_SCAN])
    assert sgfilter(port, CLEAN)[:2] == (SG_DELIVER, CLEAN.replace(b"Subject: hi", b"Subject: [checked] hi"))


def test_forced_251_exits_0_with_the_message(make_daemon: Callable[..., int]) -> None:
    port = make_daemon([deliver(modify_subject("[VIRUS] ", EICAR_SCAN))])
    code, out, _ = sgfilter(port, INFECTED)
    assert (code, out) == (SG_DELIVER, INFECTED.replace(b"Subject: virus", b"Subject: [VIRUS] virus"))


def test_reject_exits_1_with_the_original(make_daemon: Callable[..., int]) -> None:
    port = make_daemon([reject(EICAR_SCAN)])
    code, out, log = sgfilter(port, INFECTED)
    assert (code, out) == (SG_REJECT, INFECTED)
    assert "550 1.00 EICAR-Test" in log


def test_drop_exits_3_with_the_original(make_daemon: Callable[..., int]) -> None:
    port = make_daemon([drop(EICAR_SCAN)])
    assert sgfilter(port, INFECTED)[:2] == (SG_DROP, INFECTED)


def test_451_exits_75_with_the_original(make_daemon: Callable[..., int]) -> None:
    port = make_daemon([Broken()])
    assert sgfilter(port, CLEAN)[:2] == (SG_TEMPFAIL, CLEAN)


def test_daemon_down_exits_75_with_the_original() -> None:
    code, out, log = sgfilter(free_port(), INFECTED)
    assert (code, out) == (SG_TEMPFAIL, INFECTED)
    assert "no verdict: cannot connect" in log


def test_too_big_exits_65_with_the_original(make_daemon: Callable[..., int]) -> None:
    port = make_daemon([EICAR_SCAN], max_size=2048)
    big = CLEAN + b"x" * 4000 + b"\n"
    assert sgfilter(port, big)[:2] == (SG_TOO_BIG, big)  # the daemon's limit (552)
    assert sgfilter(port, CLEAN, "--max-size", "10")[:2] == (SG_TOO_BIG, CLEAN)  # the client's own, spooled


@pytest.mark.parametrize("args", [("--port", "0"), ("--timeout", "x"), ("--no-such-option",)])
def test_bad_command_line_exits_2(args: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, ["sgfilter", *args], input=CLEAN)
    assert result.exit_code == SG_USAGE


def test_safe_fallback_passes_mail_unchanged_when_the_daemon_is_down() -> None:
    assert sgfilter(free_port(), INFECTED, "--safe")[:2] == (SG_DELIVER, INFECTED)
    assert sgfilter(free_port(), INFECTED, env={"MAILSIFT_SGFILTER_SAFE": "1"})[:2] == (SG_DELIVER, INFECTED)


def test_safe_fallback_on_451_and_too_big(make_daemon: Callable[..., int]) -> None:
    port = make_daemon([Broken()])
    assert sgfilter(port, CLEAN, "--safe")[:2] == (SG_DELIVER, CLEAN)
    assert sgfilter(port, CLEAN, "--safe", "--max-size", "10")[:2] == (SG_DELIVER, CLEAN)


def test_safe_does_not_override_a_verdict(make_daemon: Callable[..., int]) -> None:
    port = make_daemon([reject(EICAR_SCAN)])
    assert sgfilter(port, INFECTED, "--safe")[:2] == (SG_REJECT, INFECTED)


def test_mbox_from_line_stays_first_and_gives_the_sender(make_daemon: Callable[..., int]) -> None:
    recording = Recording()
    port = make_daemon([recording, modify_subject("[x] ", const(0.0, "ok"))])
    code, out, _ = sgfilter(port, FROM_LINE + CLEAN, "--recipient", "bob@example.test")
    assert (code, out) == (SG_DELIVER, FROM_LINE + CLEAN.replace(b"Subject: hi", b"Subject: [x] hi"))
    assert recording.seen == [("alice@example.test", ["bob@example.test"], CLEAN)]


def test_envelope_from_options_and_environment(make_daemon: Callable[..., int]) -> None:
    port = make_daemon([reject(sender_regexp([("Blocked", r"^evil@")]))])
    assert sgfilter(port, CLEAN, "--sender", "evil@example.test")[0] == SG_REJECT
    assert sgfilter(port, CLEAN, env={"SENDER": "evil@example.test", "RECIPIENT": "bob@x.test"})[0] == SG_REJECT
    assert sgfilter(port, CLEAN, env={"SENDER": "good@example.test"})[0] == SG_DELIVER


def test_host_and_port_from_the_environment(make_daemon: Callable[..., int]) -> None:
    port = make_daemon([reject(EICAR_SCAN)])
    result = CliRunner(env={"MAILSIFT_SGFILTERD_PORT": str(port)}).invoke(main, ["sgfilter"], input=INFECTED)
    assert result.exit_code == SG_REJECT


def test_as_a_process_in_a_pipe(make_daemon: Callable[..., int]) -> None:
    """As procmail runs it: a separate process, stdin and stdout pipes."""
    port = make_daemon([EICAR_SCAN])
    done = subprocess.run(
        [sys.executable, "-m", "mailsift", "sgfilter", "--port", str(port), "--timeout", "20"],
        input=FROM_LINE + CLEAN,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (SG_DELIVER, FROM_LINE + CLEAN)
