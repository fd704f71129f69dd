"""The layout of src/mailsift: folders that name what they hold, no name shadowed.

``from mailsift import *`` is the config surface: a direct child module or
package of ``mailsift`` named like an exported name would shadow it for any
code that imports that submodule (``import mailsift.archive`` would replace the
``archive`` hook by a module on the package), the clash that once forced
``archiving.py``.  And the root holds only the config surface and the modules
every layer shares.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import mailsift

ROOT_MODULES = {
    "__init__",
    "__main__",
    "config",
    "durations",
    "errors",
    "replies",
    "settings",
    "supervisor",
    "testing",
    "validators",
    "version",
}
"""The cross-cutting modules allowed at the root; everything else lives in a package."""

PACKAGES = {
    "cli",
    "compat",
    "core",
    "delivery",
    "message",
    "mime",
    "reporting",
    "scanners",
    "services",
    "storage",
    "web",
}


def children() -> dict[str, bool]:
    """Direct children of the package: name -> is a package."""
    return {info.name: info.ispkg for info in pkgutil.iter_modules(mailsift.__path__)}


def test_no_child_module_shadows_an_exported_name() -> None:
    clashes = sorted(set(children()) & set(mailsift.__all__))
    assert clashes == []


def test_every_submodule_imports_and_no_exported_name_is_replaced() -> None:
    """Import every submodule of mailsift; the exported names are still the config objects after."""
    before = {name: getattr(mailsift, name) for name in mailsift.__all__}
    for info in pkgutil.walk_packages(mailsift.__path__, "mailsift."):
        if info.name == "mailsift.storage.migrations.env":
            continue  # Alembic's environment script: runs only inside Alembic
        importlib.import_module(info.name)
    after = {name: getattr(mailsift, name) for name in mailsift.__all__}
    assert [name for name in before if after[name] is not before[name]] == []


def test_root_holds_only_the_config_surface_and_cross_cutting_modules() -> None:
    found = children()
    modules = {name for name, is_package in found.items() if not is_package}
    packages = {name for name, is_package in found.items() if is_package}
    assert modules <= ROOT_MODULES, f"modules at the root that belong in a package: {sorted(modules - ROOT_MODULES)}"
    assert packages == PACKAGES


def test_the_checks_see_a_shadowing_module() -> None:
    """The clash check reads the real directory: a module file named like an export is found."""
    shadow = Path(mailsift.__path__[0]) / "archive.py"
    assert not shadow.exists()
    shadow.write_text('"""a module that would shadow the archive hook"""\n')
    try:
        assert "archive" in set(children()) & set(mailsift.__all__)
    finally:
        shadow.unlink()
