"""Every fenced block of README.md is run by a test or marked skipped with a reason.

The marker grammar and the parser are in tests/helpers/readme.py; the blocks marked
``shell``, ``config`` and ``postfix`` are run by tests/integration/test_readme.py (and the
web quarantine recipe by tests/browser/test_readme_webq.py).  Here, fast: nothing is
unmarked, skips say why, references resolve, every synopsis command and option exists,
and the milter's option list matches the code.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailsift.cli.main import main
from mailsift.services.milter import milter
from tests.helpers import readme

#: While True, ``<!-- readme: pending BRANCH -->`` passes (blocks waiting for wip/opsconfig).
#: The lead sets it False once that branch is merged: a pending block then fails here.
ALLOW_PENDING = False

BLOCKS = readme.blocks()


def test_the_readme_has_blocks() -> None:
    assert len(BLOCKS) > 30


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where() for b in BLOCKS])
def test_every_block_is_run_or_skipped_with_a_reason(block: readme.Block) -> None:
    assert block.kind is not None, f"{block.where()}: no <!-- readme: ... --> marker above this block"
    assert block.kind in readme.KINDS, f"{block.where()}: unknown marker kind {block.kind!r}"
    if block.kind == "skip":
        assert len(block.reason.split()) >= 3, f"{block.where()}: a skip says why (a few words)"
    if block.kind == "pending":
        assert ALLOW_PENDING, f"{block.where()}: still pending ({block.reason}); run it or skip it with a reason"
        assert block.reason.startswith("wip/"), f"{block.where()}: pending names the branch it waits for"


def test_names_are_unique_and_references_resolve() -> None:
    configs = [b.name for b in BLOCKS if b.kind == "config"]
    assert all(configs), configs
    assert len(configs) == len(set(configs)), configs
    for block in BLOCKS:
        for key in ("base", "config"):
            if key in block.args:
                assert block.args[key] in configs, f"{block.where()}: {key}={block.args[key]} names no config block"
        if "serve" in block.args:
            assert block.args["serve"] in (readme.SERVE_BUNDLED, *configs), block.where()
        if block.kind == "postfix":
            assert block.args.get("group") in readme.POSTFIX_GROUPS, f"{block.where()}: unknown Postfix group"
            assert set(block.words) & {"main.cf", "master.cf"}, f"{block.where()}: main.cf or master.cf?"


def test_every_config_block_is_python() -> None:
    for block in readme.of_kind("config"):
        ast.parse(block.text, filename=block.where())


def test_postfix_main_cf_blocks_parse_as_main_cf() -> None:
    """Postfix takes ``#`` comments only on lines of their own: a trailing comment becomes part of the value."""
    for block in BLOCKS:
        if block.kind == "postfix" and "main.cf" in block.words:
            for name, value in readme.postfix_settings(block.text).items():
                assert "#" not in value, f"{block.where()}: {name} = {value!r}"


SYNOPSES = [(b, c) for b in readme.of_kind("synopsis") for c in readme.synopsis_commands(b.text)]


@pytest.mark.parametrize(("block", "command"), SYNOPSES, ids=[f"{b.where()}:{' '.join(c[0])}" for b, c in SYNOPSES])
def test_every_synopsis_command_and_option_exists(block: readme.Block, command: tuple[list[str], list[str]]) -> None:
    path, options = command
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, f"{block.where()}: mailsift {' '.join(path)}: {result.output}"
    for option in options:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", result.output), (
            f"{block.where()}: mailsift {' '.join(path)} has no {option}"
        )


def test_the_synopsis_check_finds_a_missing_command_and_option() -> None:
    [(path, options)] = readme.synopsis_commands("mailsift quarantine list --no-such-option\n")
    assert (path, options) == (["quarantine", "list"], ["--no-such-option"])
    assert "--no-such-option" not in CliRunner().invoke(main, [*path, "--help"]).output
    assert CliRunner().invoke(main, ["quarantine", "no-such-command", "--help"]).exit_code != 0


def test_the_milter_options_in_the_readme_are_the_real_ones() -> None:
    """The milter block's comments list options with their defaults: each is a parameter with that default."""
    [block] = [b for b in readme.of_kind("config") if b.name == "milter"]
    comments = "\n".join(line for line in block.text.splitlines() if line.lstrip().startswith("#"))
    parameters = inspect.signature(milter.__init__).parameters
    named = re.findall(r"\b([a-z_]+)=([\w.()]+)(?: (MB|KiB|MiB)\b)?", comments.split("options:", 1)[1])
    assert len(named) >= 10, named
    units = {"": 1, "KiB": 1024, "MB": 1024 * 1024, "MiB": 1024 * 1024}
    for name, value, unit in named:
        assert name in parameters, f"{block.where()}: milter has no option {name}"
        default = parameters[name].default
        if default is not None:  # None: computed (max_connections_per_address: half of max_connections)
            shown = ast.literal_eval(value) * units[unit] if unit else ast.literal_eval(value)
            assert shown == default, f"{block.where()}: {name}={value} {unit}, the default is {default!r}"


def test_the_parser_reports_unmarked_blocks_and_reads_markers(tmp_path: Path) -> None:
    planted = tmp_path / "README.md"
    planted.write_text(
        "# t\n\n```sh\necho unmarked\n```\n\n<!-- readme: skip: a reason here -->\n\n```\nx\n```\n"
        "* item\n\n  <!-- readme: config name=x prelude -->\n  ```python\n  A = 1\n  ```\n"
        "<!-- readme: pending wip/opsconfig -->\n```\ny\n```\n"
    )
    found = readme.blocks(planted)
    assert [(b.line, b.kind) for b in found] == [(3, None), (9, "skip"), (15, "config"), (19, "pending")]
    assert found[1].reason == "a reason here"
    assert (found[2].name, found[2].words, found[2].text) == ("x", ("prelude",), "A = 1\n")
    assert found[3].reason == "wip/opsconfig"


def test_localize_moves_ports_and_system_paths(tmp_path: Path) -> None:
    text = 'SMTP_SERVER = ("127.0.0.1", 10025)\nc = "scan:[127.0.0.1]:10024"\nm = "inet:3333@127.0.0.1"\n'
    text += 'STATE_DIR = "/var/lib/mailsift"\n'
    out = readme.localize(text, {10025: 1, 10024: 2, 3333: 3}, tmp_path)
    assert out == (
        f'SMTP_SERVER = ("127.0.0.1", 1)\nc = "scan:[127.0.0.1]:2"\nm = "inet:3@127.0.0.1"\n'
        f'STATE_DIR = "{tmp_path}/state"\n'
    )
    with pytest.raises(KeyError):
        readme.localize('("127.0.0.1", 9)', {}, tmp_path)
