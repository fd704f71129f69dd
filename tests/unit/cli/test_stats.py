"""``mailsift stats prune``: old counters deleted, new ones kept; three nodes (three configs, NODE
a/b/c, on one DATABASE, SQLite file or PostgreSQL) run the same cron line and it prunes once;
``--force`` prunes again."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mailsift import config as config_module
from mailsift.cli.main import main
from mailsift.reporting.counters import TOTAL, Counts, Key, period_of, totals, upsert_counters
from mailsift.storage import leases
from mailsift.storage.db import Database
from tests.helpers.postgres import fresh_database, postgres  # noqa: F401 - the fixture

DAY = 86400.0


class Node:
    """One gateway: its own STATE_DIR and NODE, the cluster's DATABASE."""

    def __init__(self, root: Path, name: str, database: str) -> None:
        state = root / name / "state"
        state.mkdir(parents=True)
        self.path = root / name / "mailsift.conf.py"
        self.path.write_text(
            f"from mailsift import *\nSTATE_DIR = {str(state)!r}\nNODE = {name!r}\nDATABASE = {database}\n"
        )
        database_object = config_module.load(str(self.path)).settings.database
        assert isinstance(database_object, Database)
        self.database = database_object

    def stats(self, *arguments: str) -> Result:
        return CliRunner().invoke(main, ["stats", *arguments, "-c", str(self.path)])


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mailsift-prune-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def nodes(request: pytest.FixtureRequest, root: Path) -> Iterator[list[Node]]:
    if request.param == "sqlite":
        database = f"db.sqlite({str(root / 'cluster.db')!r})"
    else:
        database = f"db.database({fresh_database(request.getfixturevalue('postgres'), 'prune')!r})"
    cluster = [Node(root, name, database) for name in ("node-a", "node-b", "node-c")]
    cluster[0].database.migrate()
    yield cluster
    for node in cluster:
        node.database.dispose()


def count(database: Database, *ages: float) -> None:
    """One clean message in the interval ``age`` seconds ago, for each age."""
    now = time.time()
    counts: dict[Key, Counts] = {}
    for age in ages:
        key = (period_of(now - age), TOTAL, "clean", "")
        counts.setdefault(key, Counts()).add(Counts(1, 1, 100, 0.01))
    database.call(upsert_counters, counts)


def messages(database: Database) -> int:
    return sum(total.messages for total in database.call(lambda c: totals(c, since=None)))


def test_prune_deletes_old_counters_and_keeps_new_ones(nodes: list[Node]) -> None:
    a = nodes[0]
    count(a.database, 500 * DAY, 401 * DAY, 399 * DAY, 30 * DAY, 0)
    result = a.stats("prune")
    assert result.exit_code == 0, result.output
    assert result.stdout == "pruned 2 counter row(s)\n"
    assert messages(a.database) == 3
    shorter = a.stats("prune", "--older-than", "7d", "--force")
    assert shorter.exit_code == 0, shorter.output
    assert "pruned 2 counter row(s)" in shorter.stdout
    assert messages(a.database) == 1
    table = a.stats("--since", "1h")  # the table is still ``mailsift stats``
    assert table.exit_code == 0, table.output
    assert next(line.split() for line in table.stdout.splitlines() if line.startswith("clean"))[1] == "1"


def test_prune_on_three_nodes_runs_once(nodes: list[Node]) -> None:
    a, b, c = nodes
    count(a.database, 450 * DAY, 420 * DAY, DAY)
    results = [node.stats("prune") for node in (b, a, c)]
    assert [r.exit_code for r in results] == [0, 0, 0], [r.output for r in results]
    assert results[0].stdout == "pruned 2 counter row(s)\n"
    for late in results[1:]:
        assert late.stdout == ""
        assert "already done by node-b at " in late.stderr
    assert messages(a.database) == 1
    count(c.database, 410 * DAY)  # arrived late (a node's backlog): the next day's prune takes it
    assert c.stats("prune").stdout == ""
    forced = c.stats("prune", "--force")
    assert forced.exit_code == 0, forced.output
    assert forced.stdout == "pruned 1 counter row(s)\n"
    assert messages(a.database) == 1
    assert "already done by node-c at " in a.stats("prune").stderr  # --force took the lease
    before_prune = CliRunner().invoke(main, ["stats", "-c", str(b.path), "prune"])  # -c before the subcommand
    assert "already done by node-c at " in before_prune.stderr


def test_prune_every_and_older_than_make_their_own_jobs(nodes: list[Node]) -> None:
    a, b, _ = nodes
    assert a.stats("prune", "--every", "1h").exit_code == 0
    assert "already done by node-a" in b.stats("prune", "--every", "1h").stderr
    other = b.stats("prune", "--older-than", "30d")  # another retention: its own lease
    assert other.exit_code == 0, other.output
    assert "already done" not in other.stderr
    assert other.stdout == "pruned 0 counter row(s)\n"


def test_prune_forgets_year_old_leases(nodes: list[Node]) -> None:
    a = nodes[0]
    old = time.time() - 500 * DAY
    a.database.call(leases.take, "report --since 86400", leases.period_of(old, DAY), "node-x", old)
    result = a.stats("prune")
    assert result.exit_code == 0, result.output
    assert result.stdout == "pruned 0 counter row(s), forgot 1 old lease(s)\n"


def test_prune_refuses_a_bad_age(root: Path) -> None:
    config = root / "node.conf.py"
    config.write_text(f"from mailsift import *\nSTATE_DIR = {str(root / 'state')!r}\n")
    bad = CliRunner().invoke(main, ["stats", "prune", "-c", str(config), "--older-than", "soon"])
    assert bad.exit_code == 2
    assert "is not an age" in bad.output
