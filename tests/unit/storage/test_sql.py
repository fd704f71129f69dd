"""storage.sql: the one dialect switch for atomic upserts and claims, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Connection

from mailsift.storage.db import Database
from mailsift.storage.schema import link_action_table, listed_table, stats_table, web_login_throttle_table
from mailsift.storage.sql import claim, delete_batch, delete_in_batches, upsert

T = TypeVar("T")

LINK = {"quarantine_id": "q1", "recipient": "bob@example.org", "action": "release", "state": "sending"}


def together(count: int, work: Callable[[int], T]) -> list[T]:
    """Run ``work(i)`` in ``count`` threads released at once; their results in order."""
    start = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            start.wait()
            results[i] = work(i)
        except BaseException as error:  # reported by the caller's assertion
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    return results


def links(connection: Connection) -> list[tuple[Any, ...]]:
    c = link_action_table.c
    return [tuple(row) for row in connection.execute(select(c.quarantine_id, c.state, c.claimed))]


def test_claim_takes_a_row_once(database: Database) -> None:
    assert database.call(claim, link_action_table, {**LINK, "claimed": 1.0}) is True
    assert database.call(claim, link_action_table, {**LINK, "claimed": 2.0}) is False
    assert database.call(claim, link_action_table, {**LINK, "recipient": "eve@example.org", "claimed": 3.0}) is True
    assert sorted(database.call(links)) == [("q1", "sending", 1.0), ("q1", "sending", 3.0)]  # the first kept


def test_claim_on_a_unique_constraint(database: Database) -> None:
    entry = {"owner": "", "list": "white", "field": "sender", "value": "a@example.org", "created": 1.0, "comment": ""}
    keys = ("owner", "list", "field", "value")
    assert database.call(lambda c: claim(c, listed_table, entry, keys=keys)) is True
    assert database.call(lambda c: claim(c, listed_table, {**entry, "created": 2.0}, keys=keys)) is False
    assert database.call(lambda c: c.execute(select(listed_table.c.created)).scalars().all()) == [1.0]


def test_of_concurrent_claims_exactly_one_wins(database: Database) -> None:
    database.call(lambda connection: None)  # the schema first, so the threads race only for the row
    won = together(6, lambda i: database.call(claim, link_action_table, {**LINK, "claimed": float(i)}))
    assert won.count(True) == 1
    assert database.call(links) == [("q1", "sending", float(won.index(True)))]


def test_upsert_inserts_then_updates_and_returns_the_row(database: Database) -> None:
    t = web_login_throttle_table.c

    def count(connection: Connection) -> int:
        return int(
            upsert(
                connection,
                web_login_throttle_table,
                {"key": "ip:192.0.2.1", "failures": 1, "window_start": 5.0},
                update={"failures": t.failures + 1},
                returning=(t.failures,),
            ).scalar_one()
        )

    assert [database.call(count) for _ in range(3)] == [1, 2, 3]
    assert database.call(lambda c: c.execute(select(t.window_start)).scalars().all()) == [5.0]  # not in ``update``


def test_upsert_of_several_rows_adds_the_proposed_values(database: Database) -> None:
    c = stats_table.c

    def add(connection: Connection, messages: int) -> None:
        rows = [
            {
                "period_start": 0,
                "domain": domain,
                "verdict": "clean",
                "scanner": "",
                "messages": messages,
                "recipients": 1,
                "bytes": 10,
                "scan_seconds": 0.5,
            }
            for domain in ("a.example", "b.example")
        ]
        upsert(
            connection,
            stats_table,
            rows,
            update=lambda new: {"messages": c.messages + new.messages, "bytes": c.bytes + new.bytes},
        )

    database.call(add, 2)
    database.call(add, 3)
    stored = database.call(lambda con: [tuple(r) for r in con.execute(select(c.domain, c.messages, c.bytes))])
    assert sorted(stored) == [("a.example", 5, 20), ("b.example", 5, 20)]


def test_concurrent_upserts_lose_no_increment(database: Database) -> None:
    t = web_login_throttle_table.c
    database.call(lambda connection: None)

    def count(i: int) -> None:
        for _ in range(5):
            database.call(
                lambda connection: upsert(
                    connection,
                    web_login_throttle_table,
                    {"key": "login:alice", "failures": 1, "window_start": 0.0},
                    update={"failures": t.failures + 1},
                )
            )

    together(4, count)
    assert database.call(lambda c: c.execute(select(t.failures)).scalar_one()) == 20


def test_upsert_returns_one_row_only(database: Database) -> None:
    row = {"key": "k", "failures": 1, "window_start": 0.0}
    with pytest.raises(ValueError, match="one row"):
        database.call(
            lambda connection: upsert(
                connection,
                web_login_throttle_table,
                [row, {**row, "key": "l"}],
                update={"failures": 1},
                returning=(web_login_throttle_table.c.key,),
            )
        )


# --------------------------------------------------------------------------- pruning in batches


def _prune_throttle(connection: Connection, before: float, limit: int) -> int:
    return delete_batch(connection, web_login_throttle_table, web_login_throttle_table.c.window_start < before, limit)


def test_delete_in_batches_takes_a_transaction_per_batch_and_keeps_young_rows(database: Database) -> None:
    database.migrate()
    ages = [*range(10), 1000, 1001]
    rows = [{"key": f"ip:192.0.2.{age % 250}-{age}", "failures": 1, "window_start": float(age)} for age in ages]
    database.call(lambda connection: connection.execute(web_login_throttle_table.insert(), rows))
    batches: list[int] = []

    def call(function: Callable[..., int], *args: Any) -> int:
        removed = database.call(function, *args)
        batches.append(removed)
        return removed

    assert delete_in_batches(call, _prune_throttle, 500.0, limit=3) == 10
    assert batches == [3, 3, 3, 1]  # each batch its own transaction; a short one ends it
    t = web_login_throttle_table.c
    left = database.call(lambda connection: sorted(connection.execute(select(t.window_start)).scalars()))
    assert left == [1000.0, 1001.0]
    assert delete_in_batches(call, _prune_throttle, 500.0, limit=3) == 0


def test_delete_batch_on_a_composite_key(database: Database) -> None:
    database.migrate()
    rows = [{**LINK, "quarantine_id": f"q{i}", "claimed": float(i)} for i in range(5)]
    database.call(lambda connection: connection.execute(link_action_table.insert(), rows))
    old = link_action_table.c.claimed < 3.0
    assert database.call(delete_batch, link_action_table, old, 2) == 2
    assert database.call(delete_batch, link_action_table, old, 2) == 1
    assert database.call(delete_batch, link_action_table, old, 2) == 0
    assert sorted(row[0] for row in database.call(links)) == ["q3", "q4"]


@pytest.mark.parametrize(
    ("table", "where", "index"),
    [
        (web_login_throttle_table, lambda c: c.window_start < 500.0, "ix_web_login_throttle_window_start"),
        (link_action_table, lambda c: (c.action == "release") & (c.claimed < 500.0), "ix_link_action_action_claimed"),
    ],
    ids=["login-throttle", "release-links"],
)
def test_a_prune_batch_is_found_through_an_index(database: Database, table: Any, where: Any, index: str) -> None:
    """0016_prune_indexes: the rows of a batch (delete_batch's inner SELECT) are found through an index,
    not by reading the whole table for every batch of a big backlog."""
    database.migrate()
    chosen = select(*table.primary_key.columns).where(where(table.c)).limit(5000)

    def plan(connection: Connection) -> str:
        compiled = chosen.compile(connection, compile_kwargs={"literal_binds": True})
        if connection.dialect.name == "sqlite":
            rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").all()
            return "\n".join(str(row[-1]) for row in rows)
        connection.exec_driver_sql("SET LOCAL enable_seqscan = off")  # a tiny table: ask whether an index CAN serve
        return "\n".join(str(row[0]) for row in connection.exec_driver_sql(f"EXPLAIN {compiled}").all())

    assert index in database.call(plan)
