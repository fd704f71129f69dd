"""One way to find the config for every command (-c, MAILSIFT_CONFIG, /etc/mailsift/config.py,
the bundled default), said with ``-v``; state commands create STATE_DIR as ``serve`` does."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailsift import config as config_module
from mailsift.cli import common
from mailsift.cli.main import main


def write_config(path: Path, state_dir: Path, extra: str = "") -> Path:
    path.write_text(f"from mailsift import *\nSTATE_DIR = {str(state_dir)!r}\nUSER = None\n{extra}")
    return path


@pytest.fixture
def no_etc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No system config (never the real /etc), no MAILSIFT_CONFIG."""
    etc = tmp_path / "etc" / "config.py"
    monkeypatch.setattr(common, "ETC_CONFIG", str(etc))
    monkeypatch.delenv("MAILSIFT_CONFIG", raising=False)
    return etc


def test_the_bundled_default_last(no_etc: Path) -> None:
    assert common.find_config(None) == (config_module.DEFAULT_CONFIG, "the bundled default")


def test_the_system_config_when_it_exists(no_etc: Path, tmp_path: Path) -> None:
    no_etc.parent.mkdir()
    write_config(no_etc, tmp_path / "state")
    assert common.find_config(None) == (str(no_etc), str(no_etc))


def test_the_environment_before_the_system_config(
    no_etc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_etc.parent.mkdir()
    write_config(no_etc, tmp_path / "state")
    monkeypatch.setenv("MAILSIFT_CONFIG", "/somewhere/env.py")
    assert common.find_config(None) == ("/somewhere/env.py", "MAILSIFT_CONFIG")


def test_the_option_first(no_etc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILSIFT_CONFIG", "/somewhere/env.py")
    assert common.find_config("mine.py") == ("mine.py", "-c")


def test_verbose_says_which_config_and_why(no_etc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path / "env.py", tmp_path / "state")
    monkeypatch.setenv("MAILSIFT_CONFIG", str(config))
    result = CliRunner().invoke(main, ["-v", "user", "list"])
    assert result.exit_code == 0, result.output
    assert f"mailsift: config: {config} (from MAILSIFT_CONFIG)" in result.stderr
    quiet = CliRunner().invoke(main, ["user", "list"])
    assert "config:" not in quiet.stderr


def test_check_config_says_which_config_and_why(no_etc: Path, tmp_path: Path) -> None:
    no_etc.parent.mkdir()
    write_config(no_etc, tmp_path / "state")
    result = CliRunner().invoke(main, ["check-config"])
    assert result.exit_code == 0, result.output
    assert f"config: {no_etc} (from {no_etc})" in result.stdout


def test_serve_logs_the_config_first(
    no_etc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_config(tmp_path / "env.py", tmp_path / "state")  # no SRV: serve stops at once
    monkeypatch.setenv("MAILSIFT_CONFIG", str(config))
    with caplog.at_level(logging.INFO):
        result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 2
    assert caplog.records[0].getMessage() == f"config: {config} (from MAILSIFT_CONFIG)"


@pytest.mark.parametrize("euid", [0, 1000], ids=["root", "not-root"])
def test_user_add_before_the_first_serve(
    no_etc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, euid: int
) -> None:
    """Finding 2: STATE_DIR does not exist yet; the system config is found without -c."""
    monkeypatch.setattr(common.os, "geteuid", lambda: euid)  # USER = None: nothing to drop to either way
    state = tmp_path / "not" / "yet" / "state"
    no_etc.parent.mkdir()
    write_config(no_etc, state)
    added = CliRunner().invoke(main, ["user", "add", "admin", "--admin", "--password-stdin"], input="secret-password\n")
    assert added.exit_code == 0, added.output
    assert (state / "mailsift.db").exists()
    assert (state / "quarantine").is_dir()
    assert (state / "spool").is_dir()
    listed = CliRunner().invoke(main, ["user", "list"])
    assert "admin" in listed.stdout


# --------------------------------------------------------------------------- test isolation


def test_the_suite_never_reads_an_installed_system_config() -> None:
    """tests/conftest.py: in process, ETC_CONFIG is a path that cannot exist (below /dev/null)."""
    assert os.environ["MAILSIFT_ETC_CONFIG"] == common.ETC_CONFIG
    assert common.ETC_CONFIG.startswith(os.devnull + os.sep)
    assert not os.path.exists(common.ETC_CONFIG)


def _found_by_a_subprocess(env: dict[str, str]) -> str:
    code = "from mailsift.cli import common; print(common.find_config(None)[0])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_a_subprocess_reads_the_system_config_only_where_the_environment_says(tmp_path: Path) -> None:
    """A fake system config is found through MAILSIFT_ETC_CONFIG; the suite's environment
    (inherited by every subprocess CLI) names none, so an installed one is never read."""
    fake = write_config(tmp_path / "etc-config.py", tmp_path / "state")
    env = {k: v for k, v in os.environ.items() if k != "MAILSIFT_CONFIG"}
    assert _found_by_a_subprocess({**env, "MAILSIFT_ETC_CONFIG": str(fake)}) == str(fake)
    assert _found_by_a_subprocess(env) == config_module.DEFAULT_CONFIG


@pytest.mark.parametrize("command", [["check-config"], ["scan", "-"]], ids=["check-config", "scan"])
def test_check_config_and_scan_create_state_dir(no_etc: Path, tmp_path: Path, command: list[str]) -> None:
    """Build 2: every command creates STATE_DIR as serve does (spool/, quarantine/)."""
    state = tmp_path / "not" / "yet" / "state"
    config = write_config(tmp_path / "config.py", state, "SCANNERS = [const(0.0)]\n")
    result = CliRunner().invoke(main, [command[0], "-c", str(config), *command[1:]], input=b"Subject: x\r\n\r\nhi\r\n")
    assert result.exit_code == 0, result.output
    assert (state / "spool").is_dir()
    assert (state / "quarantine").is_dir()
    assert oct(state.stat().st_mode & 0o777) == oct(0o750)
