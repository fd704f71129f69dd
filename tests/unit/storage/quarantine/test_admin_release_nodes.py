"""The release claim across nodes (issue 15, item 3), on SQLite and PostgreSQL.

Two gateways (each its own STATE_DIR, NODE and connection pool, one DATABASE, the quarantine
directory shared) release one message.  A release claimed by node A whose sender crashed
before its record is released later by node B, once the claim is stale
(:data:`RELEASE_CLAIM_TIMEOUT`): no claim stuck forever, no second send.  A release whose
message went out but whose record failed (the database failing over right then) must not
be sent again by another node: its record is retried (admin._record_release).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from mailsift.errors import DatabaseError
from mailsift.settings import Settings
from mailsift.storage import db
from mailsift.storage.db import Database
from mailsift.storage.quarantine import admin
from mailsift.storage.quarantine.admin import RELEASE_CLAIM_TIMEOUT, AlreadyReleased, ReleaseInProgress, release
from mailsift.storage.quarantine.index import RELEASED, claim_release, get_entry
from mailsift.storage.schema import quarantine_release_table
from mailsift.testing import RecordingServer
from tests.helpers.quarantined import quarantined

NOW = 1_700_000_000.0


@pytest.fixture
def next_hop() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


@pytest.fixture
def nodes(database: Database, tmp_path: Path, next_hop: RecordingServer) -> Iterator[tuple[Settings, Settings]]:
    """Node A (the fixture's pool) and node B (a pool of its own on the same database)."""
    shared = tmp_path / "shared-quarantine"
    shared.mkdir()
    url = database.url.render_as_string(hide_password=False)
    other = db.database(url)
    made = []
    for name, pool in (("node-a", database), ("node-b", other)):
        state = tmp_path / name
        state.mkdir()
        (state / "quarantine").symlink_to(shared)
        made.append(Settings(state_dir=str(state), database=pool, smtp_server=("127.0.0.1", next_hop.port), node=name))
    yield made[0], made[1]
    other.dispose()


def claims(settings: Settings) -> list[tuple[str, str]]:
    c = quarantine_release_table.c
    query = select(c.quarantine_id, c.claimed_by)
    rows = settings.require_database().call(lambda connection: connection.execute(query).all())
    return [(str(row.quarantine_id), str(row.claimed_by)) for row in rows]


def test_a_claim_of_a_crashed_node_is_released_by_another_once(
    nodes: tuple[Settings, Settings], next_hop: RecordingServer
) -> None:
    a, b = nodes
    entry = quarantined(a)
    # Node A claimed the release, then died before sending (or before recording what it sent).
    assert a.require_database().call(claim_release, entry.id, "web:admin@node-a", NOW, RELEASE_CLAIM_TIMEOUT) is None
    with pytest.raises(ReleaseInProgress, match="already being released by web:admin@node-a"):
        asyncio.run(release(b, entry, by="cli:root@node-b", now=NOW + RELEASE_CLAIM_TIMEOUT - 1))
    assert next_hop.messages == []
    asyncio.run(release(b, entry, by="cli:root@node-b", now=NOW + RELEASE_CLAIM_TIMEOUT + 1))
    assert len(next_hop.messages) == 1
    assert claims(a) == []  # nothing stuck
    after = a.require_database().call(get_entry, entry.id)
    assert after is not None
    assert (after.state, after.released_by) == (RELEASED, "cli:root@node-b")
    with pytest.raises(AlreadyReleased, match="released already by cli:root@node-b"):
        asyncio.run(release(a, entry, by="web:admin@node-a"))
    assert len(next_hop.messages) == 1


def test_a_stale_claim_taken_over_by_two_nodes_at_once_sends_once(
    nodes: tuple[Settings, Settings], next_hop: RecordingServer
) -> None:
    a, b = nodes
    entry = quarantined(a)
    assert a.require_database().call(claim_release, entry.id, "crashed@node-c", NOW, RELEASE_CLAIM_TIMEOUT) is None
    later = NOW + RELEASE_CLAIM_TIMEOUT + 1

    async def both() -> list[Any]:
        return await asyncio.gather(
            release(a, entry, by="node-a", now=later), release(b, entry, by="node-b", now=later), return_exceptions=True
        )

    outcomes = asyncio.run(both())
    winners = [outcome for outcome in outcomes if isinstance(outcome, str)]
    assert len(winners) == 1, outcomes
    assert all(isinstance(o, (ReleaseInProgress, AlreadyReleased)) for o in outcomes if not isinstance(o, str))
    assert len(next_hop.messages) == 1
    assert claims(a) == []


def test_a_release_sent_but_not_recorded_is_not_sent_again_by_another_node(
    nodes: tuple[Settings, Settings], next_hop: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node A's message went out (250), then its record failed once: the database failed over
    (PostgreSQL restarted, item 6).  The record is tried again (the database is back within
    seconds): the release is recorded and node B, after the claim timeout, does not send it again.
    Failed before admin._record_release (``release`` raised DatabaseError, the claim stayed)."""
    a, b = nodes
    entry = quarantined(a)
    real = admin.finish_release
    failures = [OperationalError("UPDATE quarantine", {}, Exception("server closed the connection unexpectedly"))]

    def failing_once(connection: Any, *args: Any) -> None:
        if failures:
            raise failures.pop()
        real(connection, *args)

    monkeypatch.setattr(admin, "finish_release", failing_once)
    outcome: object = None
    try:
        outcome = asyncio.run(release(a, entry, by="web:admin@node-a", now=NOW))
    except DatabaseError as error:  # before the fix: "not released" said, though the message went out
        outcome = error
    assert len(next_hop.messages) == 1
    # Node B (an admin retrying, or a second click) after the claim timeout: must not send it again.
    with pytest.raises(AlreadyReleased, match="released already by web:admin@node-a"):
        asyncio.run(release(b, entry, by="cli:root@node-b", now=NOW + RELEASE_CLAIM_TIMEOUT + 1))
    assert len(next_hop.messages) == 1
    assert isinstance(outcome, str), outcome
    assert claims(a) == []
