"""Once per cluster: a job's lease per period, taken by one node of several (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading

import pytest

from mailsift.storage import leases
from mailsift.storage.db import Database

DAY = 86400.0
MIDNIGHT = 1_714_521_600.0  # 2024-05-01T00:00:00Z


def take(database: Database, holder: str, now: float, *, name: str = "report", force: bool = False) -> leases.Lease:
    return database.call(leases.take, name, leases.period_of(now, DAY), holder, now, force)


def test_period_is_the_aligned_window() -> None:
    assert leases.period_of(MIDNIGHT + 6 * 3600, DAY) == "2024-05-01T00:00:00Z/86400"
    assert leases.period_of(MIDNIGHT - 1, DAY) == "2024-04-30T00:00:00Z/86400"
    assert leases.period_of(MIDNIGHT + 3599, 3600) == "2024-05-01T00:00:00Z/3600"
    with pytest.raises(ValueError):
        leases.period_of(MIDNIGHT, 0)


def test_one_holder_per_period_the_others_see_who(database: Database) -> None:
    first = take(database, "node-a", MIDNIGHT + 6 * 3600)
    second = take(database, "node-b", MIDNIGHT + 6 * 3600 + 2)
    third = take(database, "node-c", MIDNIGHT + 6 * 3600 + 3)
    assert first.ours
    assert not second.ours
    assert not third.ours
    assert (second.holder, second.taken_at) == ("node-a", MIDNIGHT + 6 * 3600)
    assert (third.holder, third.period) == ("node-a", "2024-05-01T00:00:00Z/86400")
    assert take(database, "node-b", MIDNIGHT + 23 * 3600).ours is False  # same period, late
    assert take(database, "node-b", MIDNIGHT + 30 * 3600).ours  # the next day
    assert take(database, "node-c", MIDNIGHT + 6 * 3600, name="quarantine expire").ours  # another job


def test_nodes_on_both_sides_of_a_boundary_take_it_once(database: Database) -> None:
    """A cron line at midnight: one node's clock says 23:59:59.9, the other's 00:00:00.1."""
    before = take(database, "node-a", MIDNIGHT - 0.1)
    after = take(database, "node-b", MIDNIGHT + 0.1)
    assert before.ours
    assert not after.ours
    assert after.holder == "node-a"


def test_force_takes_it_whoever_holds_it(database: Database) -> None:
    take(database, "node-a", MIDNIGHT + 10)
    forced = take(database, "node-b", MIDNIGHT + 20, force=True)
    assert forced.ours
    assert forced.holder == "node-b"
    after = take(database, "node-c", MIDNIGHT + 30)
    assert (after.ours, after.holder, after.taken_at) == (False, "node-b", MIDNIGHT + 20)


def test_a_lease_given_back_is_free_again(database: Database) -> None:
    lease = take(database, "node-a", MIDNIGHT + 10)
    assert database.call(leases.give_back, lease)
    assert not database.call(leases.give_back, lease)  # gone already
    again = take(database, "node-b", MIDNIGHT + 20)
    assert again.ours
    assert again.holder == "node-b"
    assert database.call(leases.prune, MIDNIGHT + 21) == 1


def test_racing_nodes_one_wins(database: Database) -> None:
    """Six threads (nodes) take the same lease at once: exactly one gets it; all name the same holder."""
    database.migrate()
    got: list[leases.Lease] = []
    start = threading.Barrier(6)

    def node(number: int) -> None:
        start.wait()
        got.append(take(database, f"node-{number}", MIDNIGHT + 100 + number / 100))

    threads = [threading.Thread(target=node, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(got) == 6
    assert sum(lease.ours for lease in got) == 1
    assert len({lease.holder for lease in got}) == 1
