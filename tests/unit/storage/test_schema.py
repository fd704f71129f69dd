"""Every table and index is declared in mailsift.storage.schema, nowhere else, whatever the import order.

The walk runs in a fresh interpreter (``subprocess``): SQLAlchemy events record
where each Table and Index is attached (the first mailsift frame on the stack),
then every module under mailsift is imported and every Table, Index and
MetaData reachable as a module attribute (or registered on a MetaData so
reached), and every one the garbage collector knows, is checked against
those declared by the schema module.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect

import mailsift
from mailsift.storage import schema
from mailsift.storage.db import Database

SCHEMA_MODULE = "mailsift.storage.schema"
SOURCE = Path(mailsift.__path__[0])

WALK = r"""
import gc, importlib, json, pkgutil, sys
from sqlalchemy import Index, MetaData, Table, event

sites = {}  # id(object) -> where it was declared


MACHINERY = ("sqlalchemy.sql.", "sqlalchemy.event.", "sqlalchemy.util.")


def declared_at():
    # The module whose code made the object: the innermost frame outside SQLAlchemy's schema machinery.
    frame = sys._getframe(2)  # past this function and the listener
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not name.startswith(MACHINERY):
            return name
        frame = frame.f_back
    return "(unknown)"


def ours(site):
    # Declared by mailsift (a library's own tables, e.g. SQLAlchemy's pg_catalog, are not our schema).
    return site[2] == "mailsift" or site[2].startswith("mailsift.")


@event.listens_for(Table, "after_parent_attach")
def table_attached(table, parent):
    sites[id(table)] = ("table", table.name, declared_at())


@event.listens_for(Index, "after_parent_attach")
def index_attached(index, parent):
    sites[id(index)] = ("index", f"{parent.name}.{index.name}", declared_at())


def shape(metadata):
    return {name: sorted(str(i.name) for i in table.indexes) for name, table in sorted(metadata.tables.items())}


prelude = sys.argv[1]  # code run first, as a module of mailsift's (the test that the walk can fail)
if prelude:
    import types

    fake = types.ModuleType("mailsift.reporting.fake")
    sys.modules[fake.__name__] = fake
    exec(prelude, fake.__dict__)
for name in sys.argv[2:]:
    importlib.import_module(name)
from mailsift.storage import schema

after_first = shape(schema.metadata)
import mailsift

modules = {}
for info in pkgutil.walk_packages(mailsift.__path__, "mailsift."):
    if info.name == "mailsift.storage.migrations.env":
        continue  # Alembic's environment script: runs only inside Alembic
    modules[info.name] = importlib.import_module(info.name)

problems = []


def check(value, where):
    try:
        kind = isinstance(value, (Table, Index, MetaData))
    except Exception:
        return
    if not kind:
        return
    if isinstance(value, MetaData):
        mine = [t.name for t in value.tables.values() if ours(sites.get(id(t), ("", "", "mailsift?")))]
        if value is not schema.metadata and mine:
            problems.append(f"{where}: another MetaData holding {sorted(mine)}")
        for table in value.tables.values():
            check(table, f"{where} (on a MetaData)")
        return
    site = sites.get(id(value))
    if site is None:
        problems.append(f"{where}: {type(value).__name__} {value!r} never attached, so declared nowhere known")
    elif ours(site) and site[2] != "mailsift.storage.schema":
        problems.append(f"{where}: {site[0]} {site[1]} declared in {site[2]}")
    elif not ours(site) and (value.metadata if isinstance(value, Table) else value.table.metadata) is schema.metadata:
        problems.append(f"{where}: {site[0]} {site[1]} added to the schema by {site[2]}")
    if isinstance(value, Table):
        for index in value.indexes:
            check(index, f"{where} (index of {value.name})")


for name, module in sorted(sys.modules.items()):
    if not (name.startswith("mailsift.") and module is not None):
        continue
    for attribute, value in list(vars(module).items()):
        check(value, f"{name}.{attribute}")
for value in gc.get_objects():
    check(value, "(found by gc)")

print(json.dumps({
    "after_first": after_first,
    "after_all": shape(schema.metadata),
    "sites": sorted(site for site in set(sites.values()) if ours(site)),
    "foreign": sorted({site[2] for site in sites.values() if not ours(site)}),
    "problems": sorted(set(problems)),
    "modules": len(modules),
}))
"""


def walk(*first: str, prelude: str = "") -> dict[str, Any]:
    """Run the walk in a fresh interpreter, importing the ``first`` modules before anything else."""
    done = subprocess.run(
        [sys.executable, "-c", WALK, prelude, *first], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def walked() -> dict[str, Any]:
    return walk()


def expected_shape() -> dict[str, list[str]]:
    return {name: sorted(str(i.name) for i in table.indexes) for name, table in sorted(schema.metadata.tables.items())}


def test_every_table_and_index_is_declared_in_storage_schema_and_nowhere_else(walked: dict[str, Any]) -> None:
    assert walked["modules"] > 100  # the walk did import the package
    assert walked["problems"] == []
    elsewhere = [site for site in walked["sites"] if site[2] != SCHEMA_MODULE]
    assert elsewhere == []
    declared = {(kind, name) for kind, name, _ in walked["sites"]}
    assert {("table", name) for name in schema.metadata.tables} <= declared
    assert {("index", f"{t.name}.{i.name}") for t in schema.metadata.tables.values() for i in t.indexes} <= declared


def test_the_walk_sees_a_table_or_index_declared_elsewhere() -> None:
    """The check can fail: a module outside storage/ that adds an index to a schema table (as
    reporting/tracking.py once did), or declares a table of its own, is named."""
    result = walk(
        prelude=(
            "from sqlalchemy import Column, Index, Integer, MetaData, Table\n"
            "from mailsift.storage.schema import maillog_table\n"
            "helo_index = Index('ix_fake', maillog_table.c.helo)\n"
            "fake_table = Table('fake', MetaData(), Column('id', Integer, primary_key=True))\n"
        )
    )
    assert ["index", "maillog.ix_fake", "mailsift.reporting.fake"] in result["sites"]
    assert ["table", "fake", "mailsift.reporting.fake"] in result["sites"]
    assert (
        "mailsift.reporting.fake.helo_index: index maillog.ix_fake declared in mailsift.reporting.fake"
        in (result["problems"])
    )
    assert "mailsift.reporting.fake.fake_table: table fake declared in mailsift.reporting.fake" in result["problems"]
    assert any("another MetaData holding ['fake']" in p for p in result["problems"])
    assert "ix_fake" in result["after_all"]["maillog"]


@pytest.mark.parametrize(
    "first", ["mailsift.reporting.tracking", "mailsift.storage.db", "mailsift.storage.schema", "mailsift.web.users"]
)
def test_the_schema_is_the_same_whatever_the_import_order(walked: dict[str, Any], first: str) -> None:
    """Importing any one module gives the whole schema already; every other import adds nothing to it."""
    result = walk(first)
    assert result["after_first"] == result["after_all"] == walked["after_all"] == expected_shape()
    assert result["problems"] == []


def test_only_the_schema_module_calls_table_index_or_metadata() -> None:
    """In the source: no ``Table(``, ``Index(``, ``MetaData(`` or ``.to_metadata(`` outside storage/schema.py
    (a table made inside a function would escape the import-time walk)."""
    makers = {"Table", "Index", "MetaData", "to_metadata", "tometadata"}
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        if path == SOURCE / "storage" / "schema.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                function = node.func
                name = function.id if isinstance(function, ast.Name) else getattr(function, "attr", "")
                if name in makers:
                    found.append(f"{path.relative_to(SOURCE)}:{node.lineno} {name}(")
    assert found == []


def test_schema_holds_every_table_and_index_the_migrations_build(database: Database) -> None:
    database.call(lambda connection: None)  # brings the schema up to date (the migrations)
    inspector = inspect(database.engine)
    built = set(inspector.get_table_names()) - {"alembic_version"}
    assert built == set(schema.metadata.tables)
    for name in sorted(built):
        indexes = {
            str(i["name"])
            for i in inspector.get_indexes(name)
            if not i.get("duplicates_constraint") and not str(i["name"]).startswith("sqlite_autoindex")
        }
        assert indexes == {str(i.name) for i in schema.metadata.tables[name].indexes}, name
        unique = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(name)}
        declared = {
            tuple(c.name for c in constraint.columns)
            for constraint in schema.metadata.tables[name].constraints
            if type(constraint).__name__ == "UniqueConstraint"
        }
        assert unique == declared, name
    database.dispose()
