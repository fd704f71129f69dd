"""The ``mailsift`` command: ``scan`` (offline verdicts, exit 0/1/2) and ``check-config``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from mailsift import config as config_module
from mailsift.cli.main import announce_web, main
from tests.helpers.paths import UNIT_DATA

OFFLINE = str(UNIT_DATA / "offline_config.py")  # no daemons to start
CLEAN = b"From: a@example.net\r\nTo: b@example.org\r\nSubject: hello\r\n\r\nJust text.\r\n"


def eicar_message(eicar: bytes) -> bytes:
    return b"From: a@example.net\r\nSubject: test\r\n\r\n" + eicar + b"\r\n"


@pytest.fixture
def runner(tmp_path: Path) -> CliRunner:
    # The bundled config reads its state directory from the environment: keep it in tmp.
    return CliRunner(env={"MAILSIFT_STATE_DIR": str(tmp_path / "state")}, catch_exceptions=False)


@pytest.fixture
def messages(tmp_path: Path, eicar: bytes) -> Path:
    folder = tmp_path / "messages"
    folder.mkdir()
    (folder / "1-clean.eml").write_bytes(CLEAN)
    (folder / "2-eicar.eml").write_bytes(eicar_message(eicar))
    (folder / ".hidden.eml").write_bytes(eicar_message(eicar))  # dot files are skipped
    return folder


def etc_isolation() -> dict[str, str]:
    """The part of the suite's environment a subprocess given its own ``env`` must keep."""
    return {"MAILSIFT_ETC_CONFIG": os.environ["MAILSIFT_ETC_CONFIG"]}


def records(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


# --------------------------------------------------------------------------- scan


def test_scan_a_clean_file(runner: CliRunner, messages: Path) -> None:
    path = str(messages / "1-clean.eml")
    result = runner.invoke(main, ["scan", "-c", OFFLINE, "--json", path])
    assert result.exit_code == 0, result.output
    [record] = records(result)
    assert record["file"] == path
    assert record["action"] == "deliver"
    assert record["level"] == 0.0
    assert record["name"] == ""
    assert "scanner" in record
    assert record["reply"].startswith("250 ")


def test_scan_an_eicar_file(runner: CliRunner, messages: Path) -> None:
    path = str(messages / "2-eicar.eml")
    result = runner.invoke(main, ["scan", "-c", OFFLINE, "--json", path])
    assert result.exit_code == 1
    [record] = records(result)
    assert (record["file"], record["action"], record["level"]) == (path, "quarantine", 1.0)
    assert (record["name"], record["scanner"]) == ("EICAR-Test", "regexp_scan")
    assert record["quarantine"] == ["virus"]


def test_scan_a_directory(runner: CliRunner, messages: Path) -> None:
    result = runner.invoke(main, ["scan", "-c", OFFLINE, "--json", str(messages)])
    assert result.exit_code == 1
    found = records(result)
    assert [Path(r["file"]).name for r in found] == ["1-clean.eml", "2-eicar.eml"]
    assert [r["action"] for r in found] == ["deliver", "quarantine"]


def test_scan_stdin(runner: CliRunner, eicar: bytes) -> None:
    result = runner.invoke(main, ["scan", "-c", OFFLINE, "--json", "-"], input=eicar_message(eicar))
    assert result.exit_code == 1
    [record] = records(result)
    assert (record["file"], record["name"]) == ("-", "EICAR-Test")

    clean = runner.invoke(main, ["scan", "-c", OFFLINE, "--json", "-"], input=CLEAN)
    assert clean.exit_code == 0
    assert records(clean)[0]["action"] == "deliver"


def test_scan_an_unreadable_file(runner: CliRunner, messages: Path, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.eml")
    result = runner.invoke(main, ["scan", "-c", OFFLINE, "--json", missing, str(messages / "1-clean.eml")])
    assert result.exit_code == 2
    first, second = records(result)
    assert (first["file"], first["action"]) == (missing, "error")
    assert first["error"]
    assert second["action"] == "deliver"  # one bad file does not stop the others


@pytest.mark.parametrize("missing_first", [True, False], ids=["error-then-detection", "detection-then-error"])
def test_an_error_wins_over_a_detection_in_the_exit_status(
    runner: CliRunner, messages: Path, tmp_path: Path, missing_first: bool
) -> None:
    paths = [str(messages / "2-eicar.eml"), str(tmp_path / "missing.eml")]
    if missing_first:
        paths.reverse()
    result = runner.invoke(main, ["scan", "-c", OFFLINE, *paths])
    assert result.exit_code == 2


def test_scan_plain_output(runner: CliRunner, messages: Path) -> None:
    result = runner.invoke(main, ["scan", "-c", OFFLINE, str(messages)])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"{messages / '1-clean.eml'}: deliver level=0.0"
    assert lines[1] == f"{messages / '2-eicar.eml'}: quarantine level=1.0 EICAR-Test (regexp_scan)"


def write_config(tmp_path: Path, body: str) -> str:
    path = tmp_path / "test-config.py"
    path.write_text(f"from mailsift import *\nSTATE_DIR = {str(tmp_path)!r}\n{body}", encoding="utf-8")
    return str(path)


def test_a_failing_scanner_exits_2(runner: CliRunner, messages: Path, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "class broken(Scanner):\n"
        "    name = 'broken'\n"
        "    async def scan(self, target):\n"
        "        raise RuntimeError('always')\n"
        "SCANNERS = [broken()]\n",
    )
    result = runner.invoke(main, ["scan", "--json", "-c", config, str(messages / "1-clean.eml")])
    assert result.exit_code == 2
    [record] = records(result)
    assert record["action"] == "tempfail"
    assert record["reply"].startswith("451 ")
    assert "always" in record["detail"]


def test_scan_uses_the_given_envelope(runner: CliRunner, messages: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, "SCANNERS = [sender_regexp([('Blocked', r'@spam\\.example$')])]\n")
    path = str(messages / "1-clean.eml")
    blocked = runner.invoke(main, ["scan", "--json", "-c", config, "--sender", "x@spam.example", path])
    assert (blocked.exit_code, records(blocked)[0]["action"]) == (1, "reject")
    allowed = runner.invoke(main, ["scan", "--json", "-c", config, "--sender", "x@ok.example", path])
    assert (allowed.exit_code, records(allowed)[0]["action"]) == (0, "deliver")


def test_scan_reports_header_edits(runner: CliRunner, messages: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, "SCANNERS = [add_header('X-Checked', '%S', const(0.2, 'tag'))]\n")
    result = runner.invoke(main, ["scan", "--json", "-c", config, str(messages / "1-clean.eml")])
    assert result.exit_code == 0
    assert records(result)[0]["headers"] == ["X-Checked: const"]


def test_scan_needs_a_path(runner: CliRunner) -> None:
    assert runner.invoke(main, ["scan"]).exit_code == 2


# --------------------------------------------------------------------------- check-config


def test_check_config_prints_the_tree(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["check-config"])
    assert result.exit_code == 0
    out = result.stdout
    assert f"SCANNERS:\n  listed\n  quarantine('virus')\n    clamd({tmp_path}/state/clamd/clamd.sock)\n" in out
    assert "reject(message='Executable attachments are not accepted (%V)')" in out
    assert "SRV:\n  smtpd(127.0.0.1:10024)\n" in out
    assert f"  clamd_daemon({tmp_path}/state/clamd/clamd.sock)\n  spamd_daemon(127.0.0.1:10783)\n" in out
    assert f"state directory: {tmp_path / 'state'}" in out
    assert out.rstrip().endswith("config OK")
    assert (tmp_path / "state" / "quarantine").is_dir()  # Build 2: check-config creates STATE_DIR as serve does


def test_check_config_on_a_broken_config(runner: CliRunner, tmp_path: Path) -> None:
    path = write_config(tmp_path, "\n\nSCANNERS = [regexp_scan([('x', '(')])]\n")  # line 5
    result = runner.invoke(main, ["check-config", "-c", path])
    assert result.exit_code == 2
    assert f"{path}:5: " in result.stderr
    assert "config OK" not in result.stdout


AFTER_QUEUE_CONFIG = """\
EXE = parsemail(mime_ext(r"\\.exe$", "Policy.Executable"))
SCANNERS = [
    quarantine("virus", regexp_scan([("EICAR", "EICAR-STANDARD")])),
    reject(EXE, message="no executables"),
    drop(reject("Worm", regexp_scan([("Worm.X", "worm")]))),
]
SRV = [
    smtpd(SCANNERS, "127.0.0.1", 10024, next_hop=("127.0.0.1", 10025){after_queue}),
]
"""


def test_check_config_warns_about_rejects_after_the_queue(runner: CliRunner, tmp_path: Path) -> None:
    """Finding 8 / Build 9: behind Postfix's content_filter a reject is a bounce (backscatter)."""
    path = write_config(tmp_path, AFTER_QUEUE_CONFIG.format(after_queue=", after_queue=True"))
    result = runner.invoke(main, ["check-config", "-c", path])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if "backscatter" in line]
    assert len(warned) == 2, result.stderr  # one line per reject action, the inner one too
    srv_line = 9  # the file's line that assigns SRV (write_config adds two lines)
    prefix = f"{path}:{srv_line}: warning: smtpd(127.0.0.1:10024) has after_queue=True"
    assert all(line.startswith(prefix) for line in warned)
    assert "reject(message='no executables')" in warned[0]
    assert "reject(onlyif='Worm')" in warned[1]
    assert result.stdout.rstrip().endswith("config OK")


def test_check_config_does_not_warn_before_the_queue(runner: CliRunner, tmp_path: Path) -> None:
    """The standalone quick start is itself the receiving MTA: its reject is right, no warning."""
    path = write_config(tmp_path, AFTER_QUEUE_CONFIG.format(after_queue=""))
    result = runner.invoke(main, ["check-config", "-c", path])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr


def test_after_queue_must_be_a_flag(runner: CliRunner, tmp_path: Path) -> None:
    path = write_config(tmp_path, AFTER_QUEUE_CONFIG.format(after_queue=", after_queue='yes'"))
    result = runner.invoke(main, ["check-config", "-c", path])
    assert result.exit_code == 2
    assert "after_queue must be True or False" in result.stderr


LISTS_CONFIG = """\
SCANNERS = [{lists}quarantine("spam", regexp_scan([("Spam.X", "viagra")]))]
SRV = [smtpd(SCANNERS, "127.0.0.1", 10024, next_hop=("127.0.0.1", 10025)), webq("127.0.0.1", 10080)]
"""


def test_check_config_warns_when_webq_offers_lists_nobody_consults(runner: CliRunner, tmp_path: Path) -> None:
    """Finding 3: "Whitelist sender" did nothing with the default config and nothing warned."""
    path = write_config(tmp_path, LISTS_CONFIG.format(lists=""))
    result = runner.invoke(main, ["check-config", "-c", path])
    assert result.exit_code == 0, result.output
    assert f"{path}:4: warning: webq(127.0.0.1:10080) offers white/black lists" in result.stderr
    assert "listed()" in result.stderr


@pytest.mark.parametrize("lists", ["listed(), ", "whitelisted(), "])
def test_no_lists_warning_when_the_scanners_consult_them(runner: CliRunner, tmp_path: Path, lists: str) -> None:
    path = write_config(tmp_path, LISTS_CONFIG.format(lists=lists))
    result = runner.invoke(main, ["check-config", "-c", path])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr


def test_check_config_shows_hooks_reporter_next_hops_and_the_url(runner: CliRunner, tmp_path: Path) -> None:
    """Build 11: which file and why, HOOKS, the reporter, each service's next hop, webq's URL."""
    path = write_config(
        tmp_path,
        "USER = None\nSMTP_SERVER = ('127.0.0.1', 10025)\nHOOKS = [log_sql()]\n"
        "SRV = [\n"
        "    smtpd([], '127.0.0.1', 10024, next_hop=local_maildir('mail')),\n"
        "    smtpd([], '127.0.0.1', 10026),\n"
        "    webq('127.0.0.1', 10080),\n"
        "    webq('127.0.0.1', 10081, url='https://mail.example.test/webq'),\n"
        "    reporter(webq='https://mail.example.test/webq'),\n"
        "]\n",
    )
    result = runner.invoke(main, ["check-config", "-c", path])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"config: {path} (from -c)\n" in out
    assert "SMTP_SERVER: smtp:[127.0.0.1]:10025\n" in out
    assert "release to: smtp:[127.0.0.1]:10025\n" in out
    assert "HOOKS:\n  log_sql(" in out
    assert "reporter: reporter(webq='https://mail.example.test/webq', language='en', from_address=" in out
    assert f"  smtpd(127.0.0.1:10024)\n    next hop: maildir:{tmp_path}/mail\n" in out
    assert "  smtpd(127.0.0.1:10026)\n    next hop: smtp:[127.0.0.1]:10025\n" in out  # SMTP_SERVER
    assert "  webq(127.0.0.1:10080)\n    URL: http://127.0.0.1:10080/\n" in out
    assert "  webq(127.0.0.1:10081)\n    URL: https://mail.example.test/webq\n" in out


def test_check_config_says_when_there_are_no_hooks_and_no_reporter(runner: CliRunner, tmp_path: Path) -> None:
    path = write_config(tmp_path, "USER = None\nSRV = [smtpd([], '127.0.0.1', 10024, next_hop=local_maildir())]\n")
    out = runner.invoke(main, ["check-config", "-c", path]).stdout
    assert "HOOKS: none\n" in out
    assert "reporter: none (the defaults)\n" in out
    assert f"release to: maildir:{tmp_path}/mail\n" in out


def test_the_bundled_config_consults_the_lists_and_serves_the_web(runner: CliRunner, tmp_path: Path) -> None:
    """Build 10 / finding 3: the default SCANNERS has listed() (no lists warning) and a loopback webq."""
    result = runner.invoke(main, ["check-config"])
    assert result.exit_code == 0, result.output
    assert "SCANNERS:\n  listed\n" in result.stdout
    assert "  webq(127.0.0.1:10080)\n    URL: http://127.0.0.1:10080/\n" in result.stdout
    assert "HOOKS:\n  log_sql(" in result.stdout
    assert "warning" not in result.stderr


def test_check_config_with_a_log_file_in_a_state_dir_not_made_yet(runner: CliRunner, tmp_path: Path) -> None:
    """A fresh machine: log_file("mail.json") (under STATE_DIR) loads before check-config makes STATE_DIR
    (was "log_file: directory ... does not exist", the README's HOOKS block on a fresh machine)."""
    state = tmp_path / "fresh" / "state"
    path = tmp_path / "hooks.py"
    path.write_text(
        f"from mailsift import *\nSTATE_DIR = {str(state)!r}\nUSER = None\n"
        "HOOKS = [log_file('mail.json', json=True)]\nSRV = [smtpd([], '127.0.0.1', 10024, next_hop=local_maildir())]\n"
    )
    result = runner.invoke(main, ["check-config", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert "HOOKS:\n  log_file('mail.json', json=True)\n" in result.stdout
    assert state.is_dir()
    # A STATE_DIR that cannot be made is still one clear line.
    (tmp_path / "blocker").write_text("a file")
    path.write_text(path.read_text().replace(str(state), str(tmp_path / "blocker" / "state")))
    result = runner.invoke(main, ["check-config", "-c", str(path)])
    assert result.exit_code == 2
    assert f"STATE_DIR: cannot create {tmp_path / 'blocker' / 'state'}" in result.output


@pytest.mark.parametrize("given", [True, False], ids=["-c", "bundled"])
def test_serve_announces_the_web_url_and_the_first_admin_command(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, given: bool
) -> None:
    path = write_config(tmp_path, "USER = None\nSRV = [webq('127.0.0.1', 10080)]\n")
    config = config_module.load(path)
    with caplog.at_level(logging.INFO, logger="mailsift.serve"):
        announce_web(config, path if given else None)
    option = f" -c {path}" if given else ""
    assert caplog.messages == [
        f"web quarantine: http://127.0.0.1:10080/ (the first admin: mailsift user add admin --admin{option})"
    ]


def test_scan_with_a_broken_config(runner: CliRunner, tmp_path: Path, messages: Path) -> None:
    path = write_config(tmp_path, "SCANNERS = [nothing(]\n")
    result = runner.invoke(main, ["scan", "-c", path, str(messages)])
    assert result.exit_code == 2
    assert f"{path}:3: syntax error" in result.stderr


@pytest.mark.skipif(not Path("/usr/sbin/clamd").exists(), reason="clamd not installed (scripts/setup.sh installs it)")
def test_the_installed_command(tmp_path: Path, eicar: bytes) -> None:
    # The console script end to end: a real process, stdin, exit status, and the
    # bundled config's own clamd (and spamd), started for the run: /usr/sbin is
    # not on PATH here, mailsift finds them anyway.
    command = Path(sys.executable).with_name("mailsift")
    if not command.exists():
        pytest.skip(f"no console script next to {sys.executable}")
    done = subprocess.run(
        [str(command), "scan", "--json", "-"],
        input=eicar_message(eicar),
        capture_output=True,
        # the suite's MAILSIFT_ETC_CONFIG: never an installed /etc/mailsift/config.py (tests/conftest.py)
        env={"MAILSIFT_STATE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", **etc_isolation()},
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    record = json.loads(done.stdout)
    assert record["name"].startswith("Eicar-Test-Signature")
    assert (record["scanner"], record["action"]) == ("clamd", "quarantine")
    assert b"starting it for this run" in done.stderr
    has_system_signatures = bool(list(Path("/var/lib/clamav").glob("*.c[vl]d")))
    assert (b"TEST SIGNATURES ONLY" in done.stderr) is not has_system_signatures


# --------------------------------------------------------------------------- scan-mailbox (see test_scan_mailbox)


def test_scan_and_scan_mailbox_give_the_same_verdict(runner: CliRunner, tmp_path: Path, eicar: bytes) -> None:
    config = write_config(
        tmp_path, "SCANNERS = [quarantine('virus', parsemail(regexp_scan([('EICAR-Test', r'EICAR-STANDARD')])))]\n"
    )
    data = eicar_message(eicar)
    (tmp_path / "one.eml").write_bytes(data)
    (tmp_path / "box.mbox").write_bytes(b"From a@example.net Mon Jan  1 10:00:00 2024\n" + data)
    single = runner.invoke(main, ["scan", "--json", "-c", config, str(tmp_path / "one.eml")])
    boxed = runner.invoke(main, ["scan-mailbox", "--json", "-c", config, str(tmp_path / "box.mbox")])
    assert single.exit_code == boxed.exit_code == 1
    [from_file] = records(single)
    [from_box] = records(boxed)
    assert from_box.pop("mailbox") == str(tmp_path / "box.mbox")
    assert from_box.pop("message") == "#1"
    assert from_file.pop("file") == str(tmp_path / "one.eml")
    assert from_box.pop("time") >= 0  # each its own
    assert from_file.pop("time") >= 0
    assert from_box == from_file
    assert from_box["name"] == "EICAR-Test"


# --------------------------------------------------------------------------- sgfilterd clients


def test_help_lists_the_sgfilterd_clients() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "sgfilter " in result.output
    assert "qmail-queue " in result.output


@pytest.mark.parametrize(
    ("command", "codes"),
    [
        ("sgfilter", ["0 ", "1 ", "3 ", "2 ", "65 ", "75 "]),
        ("qmail-queue", ["0 ", "11 ", "31 ", "53 ", "54 ", "71 ", "72 ", "73 ", "74 ", "81 ", "91 "]),
    ],
)
def test_client_help_documents_every_exit_code(command: str, codes: list[str]) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    documented = [line.split()[0] + " " for line in result.output.splitlines() if line[:6].strip().isdigit()]
    assert documented == codes
