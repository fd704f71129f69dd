"""``cmd(...)`` with small real programs (sh, cat, grep, sleep): verdicts from exit
codes and the result regex, stdin and ``{file}``, timeouts that kill the whole
process group, bounded output, bad exit codes and signals, bad arguments."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailsift.core.pipeline import Pipeline
from mailsift.errors import ConfigError, ScannerError, ScannerTimeout, ScannerUnavailable
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Disposition
from mailsift.mime.tree import Part
from mailsift.replies import SCANNER_FAILED, SCANNER_TIMEOUT
from mailsift.scanners.base import MailTarget, PartTarget
from mailsift.scanners.engines.command import FILE, OVERSIZE_NAME, bogofilter, clamscan, cmd
from tests.helpers import engines

# A toy "scanner": exit 1 and "stdin: <word> FOUND" when the data contains VIRUS-<word>.
TOY = [
    "sh",
    "-c",
    'w=$(grep -o "VIRUS-[A-Za-z0-9]*" "${1:--}" | head -n1); '
    'if [ -n "$w" ]; then echo "stdin: $w FOUND"; exit 1; fi; echo "stdin: OK"',
    "toy",
]
TOY_REGEX = r"^stdin: (?P<name>\S+) FOUND$"


def target(data: bytes) -> MailTarget:
    return MailTarget(Mail(Envelope(sender="a@example.net", recipients=["b@example.org"]), data))


def _dead_or_zombie(pid: int) -> bool:
    """Whether ``pid`` is gone or a zombie (SIGKILL is delivered at once; reaping is init's business)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status


def shell(script: str, **options: Any) -> cmd:
    return cmd(["sh", "-c", script], **options)


# --------------------------------------------------------------------------- verdicts


async def test_found_by_exit_code_named_by_regex() -> None:
    scanner = cmd(TOY, TOY_REGEX)
    found = await scanner.scan(target(b"hello VIRUS-Sample42 world"))
    assert (found.level, found.name, found.scanner) == (1.0, "VIRUS-Sample42", "cmd")
    assert found.detail == "stdin: VIRUS-Sample42 FOUND"
    clean = await scanner.scan(target(b"hello world"))
    assert (clean.level, clean.name) == (0.0, "")


async def test_data_in_a_temporary_file(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    scanner = cmd([*TOY[:3], "toy", FILE], TOY_REGEX, tmpdir=str(tmp_path))
    assert scanner.uses_file
    found = await scanner.scan(target(b"VIRUS-InFile"))
    assert found.name == "VIRUS-InFile"
    assert list(tmp_path.iterdir()) == []  # removed afterwards
    recorder = cmd(["sh", "-c", f'cp "$1" {seen}; echo "$1"', "rec", FILE], tmpdir=str(tmp_path))
    part = Part(
        path="2",
        content_type="application/zip",
        filenames=("report.zip",),
        data=b"PK data",
        charset="",
        transfer_encoding="base64",
        origin="",
        defects=(),
    )
    assert not (await recorder.scan(PartTarget(target(b"").mail, part))).detected
    assert seen.read_bytes() == b"PK data"


async def test_regex_decides_when_the_program_always_exits_zero() -> None:
    scanner = shell('grep -q EVIL && echo "infected: Evil.A" || echo "clean"', result_regex=r"infected: (\S+)")
    with pytest.raises(ConfigError):
        cmd(["true"], found_codes=())
    regex_only = cmd(
        ["sh", "-c", 'grep -q EVIL && echo "infected: Evil.A"; exit 0'], r"infected: (\S+)", found_codes=()
    )
    assert (await regex_only.scan(target(b"EVIL"))).name == "Evil.A"  # first group when no ``name`` group
    assert not (await regex_only.scan(target(b"good"))).detected
    # with found_codes (default 1) the exit code decides, not the regex
    assert not (await scanner.scan(target(b"EVIL"))).detected


async def test_found_without_regex_match_uses_virus_name_and_level() -> None:
    scanner = shell("cat >/dev/null; exit 3", found_codes=(3, 4), clean_codes=(0,), level=2.5, virus_name="Custom")
    result = await scanner.scan(target(b"x"))
    assert (result.level, result.name, result.detail) == (2.5, "Custom", "exit code 3")


# --------------------------------------------------------------------------- failures


async def test_unexpected_exit_code_is_an_error_with_stderr() -> None:
    scanner = shell('echo "cannot open database" >&2; exit 2')
    with pytest.raises(ScannerError, match="sh exited with 2: cannot open database"):
        await scanner.scan(target(b"x"))
    decision = await Pipeline([scanner]).evaluate(target(b"x").mail)
    assert (decision.disposition, decision.reply) == (Disposition.TEMPFAIL, SCANNER_FAILED)


async def test_killed_by_a_signal_is_an_error() -> None:
    with pytest.raises(ScannerError, match="killed by signal 9"):
        await shell("kill -9 $$").scan(target(b"x"))


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    scanner = shell(f"sleep 300 & echo $! > {pidfile}; wait", timeout=0.5)
    with pytest.raises(ScannerTimeout, match=r"sh killed after 0\.5 s"):
        await scanner.scan(target(b"x"))
    child = int(pidfile.read_text())
    for _ in range(100):  # SIGKILL takes effect promptly; allow the kernel a moment
        if _dead_or_zombie(child):
            break
        await asyncio.sleep(0.05)
    assert _dead_or_zombie(child)  # the grandchild was killed too (init may not have reaped it yet)
    decision = await Pipeline([shell("sleep 300", timeout=0.5)]).evaluate(target(b"x").mail)
    assert (decision.disposition, decision.reply) == (Disposition.TEMPFAIL, SCANNER_TIMEOUT)


async def test_output_is_bounded() -> None:
    scanner = shell("cat >/dev/null; head -c 5000000 /dev/zero; echo; echo 'x: Big FOUND'; exit 1", max_output=1000)
    result = await scanner.scan(target(b"x"))
    assert (result.name, result.detail) == ("unknown", "exit code 1")  # the tail was never kept
    ok = shell("head -c 5000000 /dev/zero >&2; exit 0", max_output=1000)
    assert not (await ok.scan(target(b"x"))).detected


async def test_program_that_does_not_read_its_input() -> None:
    assert not (await cmd(["true"]).scan(target(b"y" * 5_000_000))).detected
    with pytest.raises(ScannerError, match="false exited with 1"):
        await cmd(["false"], found_codes=(3,)).scan(target(b"y" * 5_000_000))


async def test_program_removed_after_config_load(tmp_path: Path) -> None:
    program = tmp_path / "scanner.sh"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    scanner = cmd([str(program)])
    assert not (await scanner.scan(target(b"x"))).detected
    program.unlink()
    with pytest.raises(ScannerUnavailable, match="cannot run"):
        await scanner.scan(target(b"x"))


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ("clamscan -", {}, "args must be a non-empty list"),
        ([], {}, "args must be a non-empty list"),
        (["/nonexistent/scanner"], {}, "not found or not executable"),
        (["true"], {"result_regex": "("}, "bad result_regex"),
        (["true"], {"result_regex": 5}, "result_regex must be a regular expression"),
        (["true"], {"found_codes": 1}, "found_codes must be a list"),
        (["true"], {"found_codes": (0,)}, "both found and clean"),
        (["true"], {"timeout": 0}, "timeout must be"),
        (["true"], {"max_output": 0}, "max_output must be"),
        (["true"], {"level": "high"}, "level must be a number"),
        (["true"], {"tmpdir": "/nonexistent"}, "is not a directory"),
    ],
)
def test_bad_arguments(args: Any, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cmd(args, **kwargs)


def test_preset_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="database"):
        clamscan(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="threshold"):
        bogofilter(threshold=0)
    with pytest.raises(ConfigError, match="wordlist_dir"):
        bogofilter(str(tmp_path / "missing"))
    assert re.search(r"^cmd\(/\S+/true\)$", cmd(["true"]).describe())


# --------------------------------------------------------------------------- the edge cases every engine shares


async def test_edge_unreachable_program_removed(tmp_path: Path) -> None:
    program = tmp_path / "scanner.sh"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    scanner = cmd([str(program)])
    program.unlink()
    await engines.check_unreachable(scanner, "cmd")


async def test_edge_timeout() -> None:
    await engines.check_timeout(shell("sleep 300", timeout=engines.TIMEOUT), "cmd")


def counting(runs: Path, **options: Any) -> tuple[cmd, Callable[[], int]]:
    """A program that reads its input and counts its runs."""
    scanner = shell(f"cat >/dev/null; echo run >> {runs}", **options)
    return scanner, lambda: len(runs.read_text().splitlines()) if runs.exists() else 0


@pytest.mark.parametrize("oversize", ["detect", "pass", "tempfail"])
async def test_edge_oversize(tmp_path: Path, oversize: Any) -> None:
    scanner, runs = counting(tmp_path / "runs", max_size=1000, oversize=oversize)
    await engines.check_oversize(scanner, 1000, runs, oversize, name=OVERSIZE_NAME)


async def test_no_size_limit_by_default_and_bogofilter_passes_oversize(tmp_path: Path) -> None:
    scanner, runs = counting(tmp_path / "runs")
    assert scanner.size_limit.limit is None
    await scanner.scan(target(b"x" * 5_000_000))
    assert runs() == 1
    wordlists = tmp_path / "wordlists"
    wordlists.mkdir()
    assert bogofilter(str(wordlists), max_size=10).oversize == "pass"
    assert cmd(["true"], max_size=10).oversize == "detect"
    with pytest.raises(ConfigError, match="max_size must be a positive number of bytes"):
        cmd(["true"], max_size=0)
    with pytest.raises(ConfigError, match="oversize must be one of"):
        cmd(["true"], oversize="ignore")  # type: ignore[arg-type]
