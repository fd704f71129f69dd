"""Statistics counters: what is counted, atomic upserts (SQLite and PostgreSQL), buckets, the hook's flushing."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mailsift import const, quarantine, reject
from mailsift.cli.stats import stats_command
from mailsift.core.disposition import Outcome
from mailsift.core.pipeline import Pipeline
from mailsift.errors import ConfigError
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Decision, Result
from mailsift.replies import OK, Reply
from mailsift.reporting.counters import (
    GREYLIST_VERDICTS,
    RANGES,
    RESOLUTION,
    TOTAL,
    Counts,
    PolicyCounter,
    Tally,
    greylist_outcome,
    period_of,
    series,
    stats,
    totals,
    upsert_counters,
    verdict_of,
)
from mailsift.settings import Settings
from mailsift.storage import db
from mailsift.storage.db import Database
from tests.helpers.postgres import fresh_database, postgres  # noqa: F401 - the fixture

NOW = 1_700_000_100.0  # inside a five-minute interval, not at its start


def make_mail(recipients: list[str], body: bytes = b"hello\r\n") -> Mail:
    envelope = Envelope(sender="alice@example.net", recipients=recipients, client_address="192.0.2.7")
    return Mail(envelope, b"From: alice@example.net\r\nSubject: hi\r\n\r\n" + body)


async def decide(mail: Mail, *scanners: Any) -> Decision:
    return await Pipeline(list(scanners)).evaluate(mail)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> Iterator[Database]:
    directory = tempfile.mkdtemp(dir="/tmp")
    if request.param == "sqlite":
        database = db.sqlite()
    else:
        database = db.database(fresh_database(request.getfixturevalue("postgres"), "stats"))
    database.configure(directory)
    yield database
    database.dispose()


def read_all(database: Database) -> dict[tuple[int, str, str, str], tuple[int, int, int, float]]:
    from sqlalchemy import select

    from mailsift.reporting.counters import stats_table

    def read(connection: Any) -> Any:
        return {
            (r.period_start, r.domain, r.verdict, r.scanner): (r.messages, r.recipients, r.bytes, r.scan_seconds)
            for r in connection.execute(select(stats_table))
        }

    return database.call(read)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- what is counted


async def test_verdicts_from_real_decisions() -> None:
    mail = make_mail(["bob@example.test"])
    clean = await decide(mail, const(0.0))
    assert verdict_of(clean, Outcome(OK)) == "clean"
    assert verdict_of(clean, Outcome(Reply(554, "5.0.0", "no"))) == "refused"
    assert verdict_of(clean, Outcome(Reply(451, "4.0.0", "later"))) == "tempfail"
    rejected = await decide(mail, reject(const(1.0, "Bad")))
    assert rejected.result.scanner
    assert verdict_of(rejected, Outcome(rejected.reply)) == "rejected"
    quarantined = await decide(mail, quarantine("virus", const(1.0, "Virus")))
    assert verdict_of(quarantined, Outcome(OK, quarantined=("x",))) == "quarantined"


def test_tally_counts_totals_once_and_each_domain() -> None:
    tally = Tally(max_keys=100)
    recipients = ["a@Example.COM", "b@example.com", "c@other.test", "local"]
    tally.count(NOW, recipients, "clean", "", 1000, 0.5)
    period = period_of(NOW)
    assert period % RESOLUTION == 0
    assert period <= NOW < period + RESOLUTION
    assert tally.pending == {
        (period, TOTAL, "clean", ""): Counts(1, 4, 1000, 0.5),
        (period, "example.com", "clean", ""): Counts(1, 2, 1000, 0.5),
        (period, "other.test", "clean", ""): Counts(1, 1, 1000, 0.5),
        (period, "", "clean", ""): Counts(1, 1, 1000, 0.5),
    }
    tally.count(NOW + 1, ["x@example.com"], "clean", "", 10, 0.25)
    assert tally.pending[(period, TOTAL, "clean", "")] == Counts(2, 5, 1010, 0.75)


def test_tally_is_bounded_and_hostile_names_are_cleaned() -> None:
    tally = Tally(max_keys=3)
    tally.count(NOW, ["a@one.test", "b@two.test"], "clean", "", 1, 0.0)  # 3 keys: total, one, two
    tally.count(NOW, ["c@three.test"], "clean", "", 1, 0.0)  # total grows; three is a 4th key: dropped
    assert len(tally.pending) == 3
    assert tally.dropped == 1
    assert tally.pending[(period_of(NOW), TOTAL, "clean", "")].messages == 2
    other = Tally(max_keys=10)
    other.count(NOW, ["x@evil\x00\n" + "d" * 1000], "rejected", "scan\x1b[31m", 1, 0.0)
    for key in other.pending:
        assert all(part.isprintable() and len(part) <= 200 for part in key[1:])


# --------------------------------------------------------------------------- the database


def test_upserts_add_up_and_buckets_sum(database: Database) -> None:
    base = period_of(NOW)
    first = Tally(100)
    first.count(NOW, ["a@example.com"], "clean", "", 100, 0.1)
    first.count(NOW - RESOLUTION, ["a@example.com"], "rejected", "regexp_scan", 50, 0.2)
    database.call(upsert_counters, first.take())
    second = Tally(100)
    second.count(NOW, ["b@example.com", "c@other.test"], "clean", "", 300, 0.3)
    database.call(upsert_counters, second.take())
    rows = read_all(database)
    assert rows[(base, TOTAL, "clean", "")] == (2, 3, 400, pytest.approx(0.4))
    assert rows[(base, "example.com", "clean", "")] == (2, 2, 400, pytest.approx(0.4))
    assert rows[(base, "other.test", "clean", "")] == (1, 1, 300, pytest.approx(0.3))
    assert rows[(base - RESOLUTION, TOTAL, "rejected", "regexp_scan")] == (1, 1, 50, pytest.approx(0.2))

    hour = series_of = database.call(lambda c: series(c, end=NOW, range_=RANGES["hour"]))
    assert series_of.buckets == 12
    assert series_of.step == 300
    assert hour.values == {"clean": [0.0] * 11 + [2.0], "rejected": [0.0] * 10 + [1.0, 0.0]}
    by_domain = database.call(lambda c: series(c, end=NOW, range_=RANGES["hour"], group="domain", metric="bytes"))
    assert by_domain.values == {"example.com": [0.0] * 10 + [50.0, 400.0], "other.test": [0.0] * 11 + [300.0]}
    mine = database.call(lambda c: series(c, end=NOW, range_=RANGES["hour"], domains=["other.test"]))
    assert mine.values == {"clean": [0.0] * 11 + [1.0]}
    # A day graph has hourly buckets: both intervals fall in the last hour bucket or the one before.
    day = database.call(lambda c: series(c, end=NOW, range_=RANGES["day"]))
    assert len(day.values["clean"]) == 24
    assert sum(day.values["clean"]) == 2
    assert sum(day.values["rejected"]) == 1

    by_scanner = database.call(lambda c: totals(c, group=("verdict", "scanner")))
    assert [(t.key, t.messages, t.bytes) for t in by_scanner] == [
        (("clean", ""), 2, 400),
        (("rejected", "regexp_scan"), 1, 50),
    ]
    recent = database.call(lambda c: totals(c, since=NOW))
    assert [(t.key, t.messages) for t in recent] == [(("clean",), 2)]


def _add_many(url: str, directory: str, times: int) -> None:
    database = db.database(url) if url else db.sqlite()
    database.configure(directory)
    for _ in range(times):
        tally = Tally(10)
        tally.count(NOW, ["a@example.com"], "clean", "", 1, 0.0)
        database.call(upsert_counters, tally.take())
    database.dispose()


def test_concurrent_writers_lose_no_increment(database: Database) -> None:
    url = "" if database.dialect == "sqlite" else database.url.render_as_string(hide_password=False)
    state = os.path.dirname(str(database.url.database)) if database.dialect == "sqlite" else "/tmp"
    database.call(upsert_counters, {})  # the schema, before the writers race
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_add_many, args=(url, state, 25)) for _ in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    assert read_all(database)[(period_of(NOW), TOTAL, "clean", "")][0] == 100


# --------------------------------------------------------------------------- the hook


async def test_hook_batches_and_flushes_in_the_background(database: Database) -> None:
    hook = stats(flush_interval=0.2)
    settings = Settings(state_dir="/tmp", database=database)
    hook.check(settings)
    mail = make_mail(["bob@example.test", "carol@example.org"], b"x" * 500)
    decision = await decide(mail, const(0.0))
    for _ in range(3):
        await hook.after(mail, decision, Outcome(OK), settings)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    rows: dict[Any, Any] = {}
    while loop.time() < deadline:
        rows = await asyncio.to_thread(read_all, database)
        if rows:
            break
        await asyncio.sleep(0.05)
    totals_rows = {key: value for key, value in rows.items() if key[1] == TOTAL}
    assert [(key[2], value[:3]) for key, value in totals_rows.items()] == [("clean", (3, 6, 3 * mail.size))]
    await hook.after(mail, await decide(mail, reject(const(1.0, "X"))), Outcome(Reply(554, "5.7.1", "no")), settings)
    await hook.close()  # flushes what is pending
    verdicts = {key[2] for key in read_all(database) if key[1] == "example.org"}
    assert verdicts == {"clean", "rejected"}


async def test_hook_keeps_counts_while_the_database_fails(tmp_path: Any) -> None:
    broken = db.sqlite(str(tmp_path / "missing-dir" / "x.db"))
    broken.configure(str(tmp_path))
    hook = stats(broken, flush_interval=60)
    settings = Settings(state_dir=str(tmp_path))
    hook.check(settings)
    mail = make_mail(["bob@example.test"])
    await hook.after(mail, await decide(mail, const(0.0)), Outcome(OK), settings)
    await hook.flush()  # fails: kept
    assert hook.collector.tally.pending
    assert hook.dropped == 0
    (tmp_path / "missing-dir").mkdir()
    await hook.close()
    assert [value[0] for key, value in read_all(broken).items() if key[1:] == (TOTAL, "clean", "")] == [1]
    broken.dispose()


def test_hook_options_are_checked() -> None:
    for bad in ({"flush_interval": 0}, {"max_keys": 0}, {"close_timeout": -1}, {"flush_interval": True}):
        with pytest.raises(ConfigError):
            stats(**bad)
    with pytest.raises(ConfigError, match="no database"):
        stats().check(Settings(state_dir="/tmp"))


# --------------------------------------------------------------------------- greylisting


async def test_greylist_outcomes_from_the_real_scanner(database: Database) -> None:
    from mailsift.scanners.greylist import PolicyTarget, greylist

    scanner = greylist(min=3600)
    request = {
        "request": "smtpd_access_policy",
        "client_address": "192.0.2.9",
        "sender": "s@example.net",
        "recipient": "r@grey.test",
        "protocol_state": "RCPT",
    }
    first = Decision.from_results([await scanner.scan(PolicyTarget(request, database))])
    assert greylist_outcome(first) == "greylist-deferred"
    assert greylist_outcome(Decision.from_results([Result(0.0, "", "greylist", "passed (triplet passes 1)")])) == (
        "greylist-passed"
    )
    assert greylist_outcome(Decision.from_results([Result(0.0, "", "other", "")])) is None
    counter = PolicyCounter(database)
    counter.count(first, "r@grey.test", 0.01)
    counter.count(Decision.from_results([Result(0.0, "", "x", "")]), "r@grey.test")  # not counted
    await counter.close()
    rows = database.call(lambda c: totals(c, group=("verdict",), verdicts=GREYLIST_VERDICTS))
    assert [(t.key, t.messages) for t in rows] == [(("greylist-deferred",), 1)]


# --------------------------------------------------------------------------- mailsift stats


def stats_config(tmp_path: Path) -> tuple[Path, Database]:
    """A config with STATE_DIR and the default SQLite DATABASE, and that database, open."""
    state = tmp_path / "state"
    state.mkdir()
    config = tmp_path / "config.py"
    config.write_text(f"from mailsift import *\nSTATE_DIR = {str(state)!r}\nDATABASE = db.sqlite()\nSRV = []\n")
    database = db.sqlite()
    database.configure(str(state))
    return config, database


def test_cli_prints_the_table(tmp_path: Any) -> None:
    config, database = stats_config(tmp_path)
    import time

    now = time.time()
    tally = Tally(100)
    for _ in range(3):
        tally.count(now, ["a@example.com"], "clean", "", 2048, 0.01)
    tally.count(now, ["b@other.test"], "rejected", "regexp_scan", 100, 0.02)
    tally.count(now - 3 * 86400, ["b@other.test"], "rejected", "regexp_scan", 100, 0.02)  # outside 24h
    database.call(upsert_counters, tally.take())
    database.dispose()
    runner = CliRunner()
    result = runner.invoke(stats_command, ["-c", str(config)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    clean = next(line.split() for line in lines if line.startswith("clean"))
    assert clean[:3] == ["clean", "3", "3"]
    assert clean[3:5] == ["6.0", "KiB"]
    rejected = next(line.split() for line in lines if line.startswith("rejected"))
    assert rejected[:3] == ["rejected", "1", "1"]
    assert next(line.split() for line in lines if line.startswith("total"))[1] == "4"
    week = runner.invoke(stats_command, ["-c", str(config), "--since", "7d", "--by", "domain"])
    assert week.exit_code == 0, week.output
    assert next(line.split() for line in week.output.splitlines() if line.startswith("other.test"))[1] == "2"
    scanner = runner.invoke(stats_command, ["-c", str(config), "--by", "scanner", "--domain", "other.test"])
    assert [line.split()[:2] for line in scanner.output.splitlines() if line.startswith("regexp_scan")] == [
        ["regexp_scan", "1"]
    ]
    bad = runner.invoke(stats_command, ["-c", str(config), "--since", "soon"])
    assert bad.exit_code == 2
    assert "bad duration" in bad.output


def test_cli_sums_the_cluster_or_shows_one_node(tmp_path: Any) -> None:
    config, database = stats_config(tmp_path)
    for node, messages in (("alpha", 2), ("beta", 3)):
        tally = Tally(100)
        for _ in range(messages):
            tally.count(time.time(), ["a@example.com"], "clean", "", 10, 0.01)
        database.call(upsert_counters, tally.take(), node)
    database.dispose()
    runner = CliRunner()

    def first_count(*options: str) -> list[list[str]]:
        result = runner.invoke(stats_command, ["-c", str(config), *options])
        assert result.exit_code == 0, result.output
        return [line.split()[:2] for line in result.output.splitlines()[1:] if line[:1].isalpha()]

    assert ["clean", "5"] in first_count()  # the whole cluster
    assert ["clean", "2"] in first_count("--node", "alpha")
    assert first_count("--by", "node")[1:3] == [["alpha", "2"], ["beta", "3"]]


# --------------------------------------------------------------------------- the SVG and who sees what


def test_svg_escapes_hostile_names_and_draws_one_bar_per_value() -> None:
    import xml.etree.ElementTree as ET

    from mailsift.reporting.counters import Series
    from mailsift.web.stats_pages import render_svg

    hostile = '<script>alert(1)</script>"&'
    data = Series(1_700_000_000, 300, 12, {hostile: [0.0] * 11 + [3.0], "b.example": [1.0] + [0.0] * 11})
    svg = render_svg(data, title=f"for {hostile}", metric="messages", group="domain", range_name="hour")
    root = ET.fromstring(svg)  # well-formed XML
    names = {element.tag.rsplit("}", 1)[-1] for element in root.iter()}
    assert "script" not in names
    assert "<script>" not in svg
    bars = [e for e in root.iter() if e.get("class") == "bar"]
    assert sorted((e.get("data-series"), e.get("data-value")) for e in bars) == [
        (hostile, "3.0"),
        ("b.example", "1.0"),
    ]
    assert len([e for e in root.iter() if e.get("class") == "bucket"]) == 12
    assert float(bars[0].get("height", "0")) > 0


def test_scope_admin_domain_admin_and_others() -> None:
    from starlette.exceptions import HTTPException

    from mailsift.web.stats_pages import scope_for
    from mailsift.web.users import User

    admin = User(1, "root", True, ())
    assert scope_for(admin, "") is None
    assert scope_for(admin, "Any.Example") == ["any.example"]
    dora = User(2, "dora", False, ("dora@c.example", "@c.example", "@d.example"))
    assert scope_for(dora, "") == ["c.example", "d.example"]
    assert scope_for(dora, "d.example") == ["d.example"]
    for user, domain in ((dora, "b.example"), (User(3, "olga", False, ("olga@b.example",)), "")):
        with pytest.raises(HTTPException) as refused:
            scope_for(user, domain)
        assert refused.value.status_code == 403


async def test_two_nodes_count_into_their_own_rows_and_queries_sum_or_pick_them(database: Database) -> None:
    """Issue 15 item 5: nodes alpha and beta (different NODE) share one database; each adds to its
    own rows, the sums cover the cluster, ``nodes=`` picks one node (what its /metrics shows)."""
    from sqlalchemy import select

    from mailsift.reporting.counters import stats_table

    mail = make_mail(["bob@example.test"], b"x" * 100)
    decision = await decide(mail, const(0.0))
    for node, messages in (("alpha", 2), ("beta", 3)):
        hook = stats(flush_interval=60)
        settings = Settings(state_dir="/tmp", database=database, node=node)
        hook.check(settings)
        for _ in range(messages):
            await hook.after(mail, decision, Outcome(OK), settings)
        await hook.close()

    def read(connection: Any) -> Any:
        c = stats_table.c
        return sorted((r.node, r.domain, r.messages) for r in connection.execute(select(c.node, c.domain, c.messages)))

    assert database.call(read) == [
        ("alpha", "*", 2),
        ("alpha", "example.test", 2),
        ("beta", "*", 3),
        ("beta", "example.test", 3),
    ]
    cluster = database.call(lambda c: totals(c, group=("verdict",)))
    assert [(t.key, t.messages) for t in cluster] == [(("clean",), 5)]
    alpha = database.call(lambda c: totals(c, group=("verdict",), nodes=["alpha"]))
    assert [(t.key, t.messages) for t in alpha] == [(("clean",), 2)]
    per_node = database.call(lambda c: totals(c, group=("node",)))
    assert [(t.key, t.messages) for t in per_node] == [(("alpha",), 2), (("beta",), 3)]
    graph = database.call(lambda c: series(c, end=time.time(), range_=RANGES["hour"], nodes=["beta"]))
    assert sum(graph.values["clean"]) == 3
