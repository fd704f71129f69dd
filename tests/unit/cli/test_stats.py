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
from sqlalchemy import select

from mailsift import config as config_module
from mailsift.cli.main import main
from mailsift.reporting import links
from mailsift.reporting.counters import TOTAL, Counts, Key, period_of, totals, upsert_counters
from mailsift.storage import leases, sql
from mailsift.storage.db import Database
from mailsift.storage.schema import link_action_table, web_login_throttle_table
from tests.helpers.maillog import log, logged
from tests.helpers.postgres import fresh_database, postgres  # noqa: F401 - the fixture

DAY = 86400.0


class Node:
    """One gateway: its own STATE_DIR and NODE, the cluster's DATABASE."""

    def __init__(self, root: Path, name: str, database: str, extra: str = "") -> None:
        state = root / name / "state"
        state.mkdir(parents=True)
        self.path = root / name / "mailsift.conf.py"
        self.path.write_text(
            f"from mailsift import *\nSTATE_DIR = {str(state)!r}\nNODE = {name!r}\nDATABASE = {database}\n{extra}"
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


def prune_once(first: Node, *others: Node) -> str:
    """``stats prune`` on ``first`` then on ``others``: only the first prunes; its output."""
    results = [node.stats("prune") for node in (first, *others)]
    assert [r.exit_code for r in results] == [0] * len(results), [r.output for r in results]
    for late in results[1:]:
        assert late.stdout == ""
        assert f"already done by {first.path.parent.name} at " in late.stderr
    return results[0].stdout


def test_prune_on_three_nodes_runs_once(nodes: list[Node]) -> None:
    a, b, c = nodes
    count(a.database, 450 * DAY, 420 * DAY, DAY)
    assert prune_once(b, a, c) == "pruned 2 counter row(s)\n"
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


# --------------------------------------------------------------------------- the other tables


def test_prune_deletes_the_message_log_past_maillog_retention(root: Path, nodes: list[Node]) -> None:
    a = nodes[0]
    log(a.database, 100 * DAY, 91 * DAY, 89 * DAY, 8 * DAY, 0)
    result = a.stats("prune")
    assert result.exit_code == 0, result.output
    assert result.stdout == "pruned 0 counter row(s), 2 message log row(s)\n"  # MAILLOG_RETENTION: 90d
    assert logged(a.database) == ["q7689600", "q691200", "q0"]
    database = a.path.read_text().split("DATABASE = ")[1].splitlines()[0]
    forever = Node(root, "forever", database, "MAILLOG_RETENTION = None\n")
    kept = forever.stats("prune", "--force")
    assert kept.stdout == "pruned 0 counter row(s)\n"
    assert len(logged(a.database)) == 3
    week = Node(root, "week", database, "MAILLOG_RETENTION = '7d'\n")
    shorter = week.stats("prune", "--force")
    assert shorter.stdout == "pruned 0 counter row(s), 2 message log row(s)\n"
    assert logged(a.database) == ["q0"]
    for node in (forever, week):
        node.database.dispose()


def test_prune_deletes_a_big_log_in_batches(nodes: list[Node], monkeypatch: pytest.MonkeyPatch) -> None:
    a = nodes[0]
    monkeypatch.setattr(sql, "PRUNE_BATCH", 3)
    log(a.database, *[(100 + n) * DAY for n in range(7)], 0)
    result = a.stats("prune")
    assert result.exit_code == 0, result.output
    assert result.stdout == "pruned 0 counter row(s), 7 message log row(s)\n"
    assert logged(a.database) == ["q0"]


def test_prune_prunes_the_log_once_per_cluster(nodes: list[Node]) -> None:
    a, b, c = nodes
    log(a.database, 200 * DAY, 95 * DAY, DAY)
    assert prune_once(c, b, a) == "pruned 0 counter row(s), 2 message log row(s)\n"
    log(b.database, 120 * DAY)  # logged late: kept until the next period's prune (or --force)
    assert len(logged(a.database)) == 2
    assert b.stats("prune", "--force").stdout == "pruned 0 counter row(s), 1 message log row(s)\n"


def test_maillog_retention_must_be_a_duration(root: Path) -> None:
    config = root / "node.conf.py"
    config.write_text(f"from mailsift import *\nSTATE_DIR = {str(root / 'state')!r}\nMAILLOG_RETENTION = 'soon'\n")
    bad = CliRunner().invoke(main, ["stats", "prune", "-c", str(config)])
    assert bad.exit_code == 2, bad.output
    assert "MAILLOG_RETENTION: bad duration 'soon'" in bad.output


def _link(action: str, key: str, age: float, state: str = links.DONE) -> dict[str, object]:
    claimed = time.time() - age
    done = None if state == links.SENDING else claimed
    return {"quarantine_id": key, "recipient": "bob@example.test", "action": action, "state": state,
            "claimed": claimed, "done_at": done}  # fmt: skip


def test_prune_forgets_used_release_links_but_remembers_whitelist_links(nodes: list[Node]) -> None:
    a = nodes[0]
    rows = [
        _link(links.RELEASE, "old-released", links.MAX_LIFETIME + DAY),
        _link(links.RELEASE, "crashed", links.MAX_LIFETIME + 5 * DAY, links.SENDING),
        _link(links.RELEASE, "young", links.MAX_LIFETIME - DAY),  # a link signed at its click is still good
        _link(links.WHITELIST, links.whitelist_key("eve@spam.example"), 400 * DAY),  # "once, ever"
    ]
    a.database.call(lambda connection: connection.execute(link_action_table.insert(), rows))
    result = a.stats("prune")
    assert result.exit_code == 0, result.output
    assert result.stdout == "pruned 0 counter row(s), 2 used release link(s)\n"
    c = link_action_table.c
    left = a.database.call(lambda connection: sorted(connection.execute(select(c.quarantine_id)).scalars()))
    assert left == ["<eve@spam.example>", "young"]


def throttled(database: Database, *ages: float) -> list[str]:
    """Add a login throttling key last checked ``age`` seconds ago for each age; the keys now stored."""
    now = time.time()
    rows = [{"key": f"ip:192.0.2.{n}", "failures": 3, "window_start": now - age} for n, age in enumerate(ages)]
    t = web_login_throttle_table.c
    if rows:
        database.call(lambda connection: connection.execute(web_login_throttle_table.insert(), rows))
    return list(database.call(lambda connection: sorted(connection.execute(select(t.key)).scalars())))


def test_prune_forgets_login_throttling_keys_past_the_window(root: Path, nodes: list[Node]) -> None:
    a = nodes[0]
    throttled(a.database, 3 * DAY, 2 * DAY, 3600, 0)
    result = a.stats("prune")
    assert result.stdout == "pruned 0 counter row(s), 2 login throttling key(s)\n"
    assert throttled(a.database) == ["ip:192.0.2.2", "ip:192.0.2.3"]
    # A webq whose login window is longer than a day: its keys are kept for that window.
    database = a.path.read_text().split("DATABASE = ")[1].splitlines()[0]
    web = Node(root, "web", database, "SRV = [webq('127.0.0.1', 10080, login_window=4 * 86400)]\n")
    throttled(a.database, 5 * DAY, 3 * DAY)
    result = web.stats("prune", "--force")
    assert result.exit_code == 0, result.output
    assert result.stdout == "pruned 0 counter row(s), 1 login throttling key(s)\n"
    assert throttled(a.database) == ["ip:192.0.2.1", "ip:192.0.2.2", "ip:192.0.2.3"]
    web.database.dispose()
