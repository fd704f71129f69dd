"""Releases are claimed in the database before they are sent (issue 11, item 5), on SQLite and PostgreSQL.

Two releases of one message at once (threads, each with its own connection, as
two gateways or two admins) send it once; the loser is told who has it; a claim
whose sender died is taken over after the timeout; a failed send gives it back.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Result
from mailsift.settings import Settings
from mailsift.storage.db import Database
from mailsift.storage.quarantine.admin import (
    RELEASE_CLAIM_TIMEOUT,
    AlreadyReleased,
    ReleaseInProgress,
    release,
)
from mailsift.storage.quarantine.index import RELEASED, QuarantineEntry, claim_release, get_entry
from mailsift.storage.quarantine.store import QuarantineStore, file_id
from mailsift.testing import RecordingServer

MESSAGE = b"From: eve@spam.example\r\nTo: bob@example.test\r\nSubject: pills\r\n\r\nBuy now.\r\n"


@pytest.fixture
def next_hop() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


def quarantined(settings: Settings) -> QuarantineEntry:
    store = QuarantineStore(settings.quarantine_dir, settings.database)
    item = Mail(Envelope(sender="eve@spam.example", recipients=["bob@example.test"]), MESSAGE)
    path = asyncio.run(store.put(item, "spam", Result(7.5, "SPAM", "spamassassind")))
    entry = settings.require_database().call(get_entry, file_id(path))
    assert entry is not None
    return entry


def settings_for(database: Database, tmp_path: Path, next_hop: RecordingServer) -> Settings:
    return Settings(state_dir=str(tmp_path), database=database, smtp_server=("127.0.0.1", next_hop.port))


def test_two_releases_at_the_same_moment_send_once(
    database: Database, tmp_path: Path, next_hop: RecordingServer
) -> None:
    settings = settings_for(database, tmp_path, next_hop)
    entry = quarantined(settings)  # both nodes read it while it was held
    start = threading.Barrier(4)
    outcomes: dict[str, object] = {}

    def node(name: str) -> None:
        start.wait()
        try:
            outcomes[name] = asyncio.run(release(settings, entry, by=name))
        except (ReleaseInProgress, AlreadyReleased) as error:
            outcomes[name] = error

    threads = [threading.Thread(target=node, args=(f"node{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(outcomes) == 4
    winners = [name for name, outcome in outcomes.items() if isinstance(outcome, str)]
    assert len(winners) == 1, outcomes
    assert len(next_hop.messages) == 1, "the message was sent more than once"
    for name, outcome in outcomes.items():
        if name not in winners:
            assert f"released already by {winners[0]}" in str(outcome) or "already being released by" in str(outcome)
    after = database.call(get_entry, entry.id)
    assert (after.state, after.released_by) == (RELEASED, winners[0])


def test_a_held_claim_refuses_until_it_is_stale(database: Database, tmp_path: Path, next_hop: RecordingServer) -> None:
    settings = settings_for(database, tmp_path, next_hop)
    entry = quarantined(settings)
    now = 1_700_000_000.0
    assert database.call(claim_release, entry.id, "web:admin", now, RELEASE_CLAIM_TIMEOUT) is None
    with pytest.raises(ReleaseInProgress, match="already being released by web:admin"):
        asyncio.run(release(settings, entry, by="cli:root", now=now + 5))
    assert next_hop.messages == []
    # The claimer died between its claim and its record: after the timeout the claim is taken over.
    asyncio.run(release(settings, entry, by="cli:root", now=now + RELEASE_CLAIM_TIMEOUT + 1))
    assert len(next_hop.messages) == 1
    with pytest.raises(AlreadyReleased, match="released already by cli:root"):
        asyncio.run(release(settings, entry, by="web:admin"))
    asyncio.run(release(settings, entry, by="cli:root", again=True))  # --force: on purpose
    assert len(next_hop.messages) == 2


def test_a_failed_send_gives_the_claim_back(database: Database, tmp_path: Path, next_hop: RecordingServer) -> None:
    settings = settings_for(database, tmp_path, next_hop)
    entry = quarantined(settings)
    next_hop.data_reply = "451 4.3.0 busy"
    with pytest.raises(Exception, match="451"):
        asyncio.run(release(settings, entry, by="node1"))
    next_hop.data_reply = None
    asyncio.run(release(settings, entry, by="node2"))  # not "being released by node1"
    assert len(next_hop.messages) == 1
