"""The tests' own layout: unit tests mirror the packages, and test modules share code only
through tests/helpers/.

* No file under tests/ imports from a test module or a conftest (absolute, relative, or
  inside a function): a test module is collected, not imported, and a conftest holds
  fixtures for its folder.  Shared plain code lives in tests/helpers/; a fixture defined
  there is imported into the conftest or test module that uses it.  Allowed: tests.helpers,
  mailsift, the standard library and third-party packages.
* A unit test is tests/unit/<package>/test_<module>.py for an existing
  src/mailsift/<package>/<module>.py (tests/unit/test_<module>.py for a root module,
  test_init.py for a package's ``__init__``), or test_<module>_<aspect>.py for one aspect
  of it; tests/unit/architecture/ (whole-tree checks) and tests/unit/data/ (test data) are
  apart.  Every test folder is a package (``__init__.py``).

The checks read files (``ast``), so the self-tests below run them on a planted tree.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]
SRC = TESTS.parent / "src" / "mailsift"
HELPERS = "tests.helpers"
APART = {"architecture", "data"}
"""Folders of tests/unit that do not mirror a package."""


def _dotted(path: Path, tests: Path) -> list[str]:
    """The module name of ``path`` as parts, the tests folder being the top package ``tests``."""
    parts = ["tests", *path.relative_to(tests).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported(path: Path, tests: Path) -> list[tuple[int, str]]:
    """Every module (or module attribute) the file imports, absolute, with its line number."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _dotted(path, tests)
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # ``from tests import helpers`` names a module; ``from x.test_y import f`` an attribute.
            found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return found


def _forbidden(name: str) -> bool:
    first = name.split(".")[0]
    if first in ("conftest",) or first.startswith("test_"):
        return True  # a test module or conftest imported through sys.path
    if first != "tests":
        return False  # mailsift, the standard library, third-party packages
    return not (name == HELPERS or name.startswith(HELPERS + "."))


def import_problems(tests: Path) -> list[str]:
    """Imports of test modules or conftests by any file under ``tests``."""
    problems = []
    for path in sorted(tests.rglob("*.py")):
        for line, name in sorted(imported(path, tests)):
            if _forbidden(name):
                where = path.relative_to(tests.parent)
                problems.append(f"{where}:{line} imports {name} (shared code goes in tests/helpers/)")
    return problems


def layout_problems(unit: Path, src: Path) -> list[str]:
    """Files of ``unit`` (tests/unit) not at test_<module>[_<aspect>].py of a module of ``src``."""
    problems = []
    for folder in sorted(p for p in [unit, *unit.rglob("*")] if p.is_dir()):
        relative = folder.relative_to(unit)
        if "__pycache__" in relative.parts or relative.parts[:1] == ("data",):
            continue
        if not (folder / "__init__.py").is_file():
            problems.append(f"tests/unit/{relative.as_posix()}: a test folder without __init__.py")
    for path in sorted(unit.rglob("*.py")):
        relative = path.relative_to(unit)
        if relative.parts[0] in APART or path.name in ("__init__.py", "conftest.py"):
            continue
        shown = f"tests/unit/{relative.as_posix()}"
        package = src.joinpath(*relative.parts[:-1])
        mirrored = "/".join(["src/mailsift", *relative.parts[:-1]])
        if not path.name.startswith("test_"):
            problems.append(f"{shown}: not a test module (shared code goes in tests/helpers/)")
        elif not (package / "__init__.py").is_file():
            problems.append(f"{shown}: no package {mirrored}")
        else:
            modules = {"init" if p.stem == "__init__" else p.stem for p in package.glob("*.py")}
            modules |= {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}  # subpackages
            stem = path.stem.removeprefix("test_")
            if not any(stem == module or stem.startswith(module + "_") for module in modules):
                problems.append(f"{shown}: no module {mirrored}/{stem}.py (nor a prefix of it)")
    return problems


# --------------------------------------------------------------------------- the real tree


def test_no_test_module_imports_another_test_module_or_a_conftest() -> None:
    problems = import_problems(TESTS)
    assert problems == [], "\n".join(["", *problems])


def test_unit_tests_mirror_the_packages() -> None:
    problems = layout_problems(TESTS / "unit", SRC)
    assert problems == [], "\n".join(["", *problems])


# --------------------------------------------------------------------------- the checks find planted files


def _plant(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_the_import_check_finds_imports_of_test_modules_and_conftests(tmp_path: Path) -> None:
    tests = tmp_path / "tests"
    _plant(
        tests,
        {
            "__init__.py": "",
            "helpers/__init__.py": "",
            "helpers/links.py": "from mailsift.reporting import links\n",
            "protocol/__init__.py": "",
            "protocol/conftest.py": "import pytest\nfrom tests.helpers.links import links\n",
            "protocol/test_a.py": (
                "import os\n"
                "import pytest\n"
                "from mailsift.message.mail import Mail\n"
                "from tests import helpers\n"
                "from tests.helpers.links import links\n"
                "from tests.helpers import links as also\n"
                "from . import test_c\n"  # line 7
                "from .conftest import message\n"
                "from tests.protocol.test_b import helper\n"
                "import tests.unit.test_x\n"  # line 10
                "from ..unit.reporting.test_links import Gateway\n"
                "import conftest\n"
                "def later():\n"
                "    from tests.browser.conftest import WebqServer\n"  # line 14
            ),
            "helpers/bad.py": "from tests.engines.test_clamd import zip_of\n",
        },
    )
    assert import_problems(tests) == [
        "tests/helpers/bad.py:1 imports tests.engines.test_clamd.zip_of (shared code goes in tests/helpers/)",
        *[
            f"tests/protocol/test_a.py:{line} imports {name} (shared code goes in tests/helpers/)"
            for line, name in (
                (7, "tests.protocol.test_c"),
                (8, "tests.protocol.conftest.message"),
                (9, "tests.protocol.test_b.helper"),
                (10, "tests.unit.test_x"),
                (11, "tests.unit.reporting.test_links.Gateway"),
                (12, "conftest"),
                (14, "tests.browser.conftest.WebqServer"),
            )
        ],
    ]


def test_the_layout_check_finds_misplaced_unit_tests(tmp_path: Path) -> None:
    src = tmp_path / "src" / "mailsift"
    unit = tmp_path / "tests" / "unit"
    _plant(
        src,
        {
            "__init__.py": "",
            "config.py": "",
            "scanners/__init__.py": "",
            "scanners/userpolicy.py": "",
            "services/__init__.py": "",
            "services/milter_protocol.py": "",
            "storage/__init__.py": "",
            "storage/migrations/__init__.py": "",
        },
    )
    _plant(
        unit,
        {
            "__init__.py": "",
            "conftest.py": "",
            "test_init.py": "",
            "test_config.py": "",
            "test_settings.py": "",  # no such root module
            "architecture/__init__.py": "",
            "architecture/test_anything.py": "",
            "data/standin.py": "",
            "scanners/__init__.py": "",
            "scanners/test_userpolicy.py": "",
            "scanners/test_userpolicy_lists.py": "",  # an aspect of userpolicy
            "scanners/test_user.py": "",  # a prefix of a module is not a module
            "scanners/util.py": "",  # shared code in a test folder
            "services/test_milter_protocol.py": "",  # the folder has no __init__.py
            "storage/__init__.py": "",
            "storage/test_migrations.py": "",  # a subpackage as a whole
            "web/__init__.py": "",
            "web/test_app.py": "",  # no such package
        },
    )
    assert layout_problems(unit, src) == [
        "tests/unit/services: a test folder without __init__.py",
        "tests/unit/scanners/test_user.py: no module src/mailsift/scanners/user.py (nor a prefix of it)",
        "tests/unit/scanners/util.py: not a test module (shared code goes in tests/helpers/)",
        "tests/unit/test_settings.py: no module src/mailsift/settings.py (nor a prefix of it)",
        "tests/unit/web/test_app.py: no package src/mailsift/web",
    ]
