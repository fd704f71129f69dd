"""docs/architecture.md stays true: its layer drawing is the contract import-linter checks,
and every package and root module its layout table names exists."""

from __future__ import annotations

import re
import tomllib

from tests.helpers.paths import REPO

DOC = REPO / "docs" / "architecture.md"
SRC = REPO / "src" / "mailsift"


def drawn_layers() -> list[list[str]]:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Layers") :]
    block = section[section.index("```") + 3 :]
    block = block[: block.index("```")]
    return [[name.strip() for name in line.split("|")] for line in block.strip().splitlines()]


def contract_layers() -> list[list[str]]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    return [[name.strip().removeprefix("mailsift.") for name in layer.split("|")] for layer in contract["layers"]]


def test_the_drawn_layers_are_the_checked_layers() -> None:
    assert drawn_layers() == contract_layers()


def test_every_package_and_root_module_of_the_layout_table_exists() -> None:
    text = DOC.read_text(encoding="utf-8")
    table = text[text.index("## Layout") : text.index("## Layers")]
    names = re.findall(r"^\| `([a-z_/]+(?:\.py)?)`(?:, `([a-z_/]+\.py)`)*", table, re.MULTILINE)
    found = [name for row in names for name in row if name]
    assert len(found) > 10
    missing = [name for name in found if not (SRC / name).exists()]
    assert missing == []
