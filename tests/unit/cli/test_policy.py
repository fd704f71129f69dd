"""``mailsift policy`` and ``mailsift lists`` through click's CliRunner, on a config's SQLite DATABASE."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mailsift import config as config_module
from mailsift.cli.policy import lists, policy
from mailsift.storage.policies import list_entries, list_policies, lookup_policy


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "config.py"
    path.write_text(f"from mailsift import *\nSTATE_DIR = {str(tmp_path / 'state')!r}\nSCANNERS = []\n")
    (tmp_path / "state").mkdir()
    return str(path)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def stored(config: str) -> list[tuple[str, str]]:
    database = config_module.load(config).settings.database
    try:
        return database.call(list_policies)
    finally:
        database.dispose()


SIMCONTROL = """\
# simscan's example
postmaster@example.com:clam=yes,spam=no,attach=.txt:.com
example.com:clam=no,spam=yes,attach=.mp3
:clam=yes,spam=yes,trophie=yes,spam_hits=20.1
"""


def test_import_show_and_lookup(runner: CliRunner, config: str, tmp_path: Path) -> None:
    simcontrol = tmp_path / "simcontrol"
    simcontrol.write_text(SIMCONTROL)
    result = runner.invoke(policy, ["import", "-c", config, str(simcontrol)])
    assert result.exit_code == 0, result.output
    assert "imported 3 policies" in result.output
    assert stored(config) == [
        ("", "clam=yes,spam=yes,trophie=yes,spam_hits=20.1"),
        ("example.com", "clam=no,spam=yes,attach=.mp3"),
        ("postmaster@example.com", "clam=yes,spam=no,attach=.txt:.com"),
    ]
    shown = runner.invoke(policy, ["show", "-c", config])
    assert shown.exit_code == 0
    # show prints a simcontrol file: it imports back to the same set
    (tmp_path / "again").write_text(shown.output)
    assert runner.invoke(policy, ["import", "-c", config, "--replace", str(tmp_path / "again")]).exit_code == 0
    assert len(stored(config)) == 3
    looked_up = runner.invoke(policy, ["lookup", "-c", config, "", "postmaster@example.com"])
    assert looked_up.exit_code == 0
    assert "clam=yes,spam=no" in looked_up.output
    assert "from default, example.com, postmaster@example.com" in looked_up.output


def test_a_bad_file_imports_nothing_and_names_the_line(runner: CliRunner, config: str, tmp_path: Path) -> None:
    simcontrol = tmp_path / "simcontrol"
    simcontrol.write_text("example.com:clam=yes\nexample.net:clam=perhaps\n")
    result = runner.invoke(policy, ["import", "-c", config, str(simcontrol)])
    assert result.exit_code == 2
    assert "line 2: bad value for clam" in result.output
    assert stored(config) == []
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00example.com:clam=yes\n")
    result = runner.invoke(policy, ["import", "-c", config, str(binary)])
    assert result.exit_code == 2
    assert "not UTF-8" in result.output


def test_set_show_delete(runner: CliRunner, config: str) -> None:
    result = runner.invoke(policy, ["set", "-c", config, "Example.ORG", "clam=yes, spam=no"])
    assert result.exit_code == 0, result.output
    assert result.output == "example.org:clam=yes,spam=no\n"
    assert runner.invoke(policy, ["set", "-c", config, "", "clam=no"]).exit_code == 0
    shown = runner.invoke(policy, ["show", "-c", config, "example.org"])
    assert shown.output == "example.org:clam=yes,spam=no\n"
    missing = runner.invoke(policy, ["show", "-c", config, "nowhere.test"])
    assert missing.exit_code == 1
    assert "no policy for nowhere.test" in missing.output
    bad = runner.invoke(policy, ["set", "-c", config, "example.org", "clam=perhaps"])
    assert bad.exit_code == 2
    assert "bad value for clam" in bad.output
    assert runner.invoke(policy, ["delete", "-c", config, "example.org"]).exit_code == 0
    assert runner.invoke(policy, ["delete", "-c", config, "example.org"]).exit_code == 1
    assert stored(config) == [("", "clam=no")]


def test_a_broken_config_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("SCANNERS = [\n")
    result = runner.invoke(policy, ["show", "-c", str(broken)])
    assert result.exit_code == 2
    assert "config error" in result.output


def test_lists_add_show_check_delete_purge(runner: CliRunner, config: str) -> None:
    added = runner.invoke(lists, ["add", "-c", config, "black", "client", "203.0.113.0/24", "--comment", "botnet"])
    assert added.exit_code == 0, added.output
    assert "blacklisted client 203.0.113.0/24 (global, expires never)" in added.output
    mine = runner.invoke(lists, ["add", "-c", config, "--user", "bob@example.org", "white", "sender", "a@friend.test"])
    assert mine.exit_code == 0, mine.output
    expiring = runner.invoke(lists, ["add", "-c", config, "--expires", "7d", "black", "sender", "spam.test"])
    assert expiring.exit_code == 0, expiring.output
    shown = runner.invoke(lists, ["show", "-c", config])
    lines = shown.output.splitlines()
    assert len(lines) == 3
    assert "*\tblack\tclient\t203.0.113.0/24\tnever\tbotnet" in lines
    assert any(line.startswith("bob@example.org\twhite\tsender\ta@friend.test") for line in lines)
    check = runner.invoke(
        lists,
        [
            "check",
            "-c",
            config,
            "--sender",
            "a@friend.test",
            "--recipient",
            "bob@example.org",
            "--client",
            "203.0.113.4",
        ],
    )
    assert check.output.startswith("whitelisted: ")  # bob's own entry beats the global blacklist
    check = runner.invoke(lists, ["check", "-c", config, "--sender", "a@friend.test", "--recipient", "eve@example.org"])
    assert check.output == "not listed\n"
    deleted = runner.invoke(lists, ["delete", "-c", config, "black", "client", "203.0.113.0/24"])
    assert deleted.exit_code == 0
    assert runner.invoke(lists, ["delete", "-c", config, "black", "client", "203.0.113.0/24"]).exit_code == 1
    assert runner.invoke(lists, ["purge", "-c", config]).output == "purged 0 expired entries\n"
    database = config_module.load(config).settings.database
    try:
        assert sorted(e.value for e in database.call(list_entries)) == ["a@friend.test", "spam.test"]
        assert database.call(lookup_policy, "", ["x@y.test"]).matched == ()
    finally:
        database.dispose()


@pytest.mark.parametrize(
    "arguments",
    [
        ["add", "grey", "sender", "a@b.test"],
        ["add", "white", "client", "not-an-ip"],
        ["add", "--expires", "soon", "white", "sender", "a@b.test"],
        ["add", "--user", "a b@c", "white", "sender", "a@b.test"],
    ],
)
def test_lists_bad_input_exits_2(runner: CliRunner, config: str, arguments: list[str]) -> None:
    result = runner.invoke(lists, [arguments[0], "-c", config, *arguments[1:]])
    assert result.exit_code == 2, result.output
