"""Releases are claimed in the database before they are sent (issue 11, item 5), on SQLite and PostgreSQL,
from either quarantine store (``QUARANTINE_STORE`` files or database: issue 15, build 1).

Two releases of one message at once (threads, each with its own connection, as
two gateways or two admins; or two nodes, each with its own Database) send it once;
the loser is told who has it; a claim whose sender died is taken over after the
timeout; a failed send gives it back.  A 50 MB release is streamed: spooled chunk
by chunk, sent block by block (the heap's peak stays below 8 MB).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Result
from mailsift.settings import Settings
from mailsift.storage import db
from mailsift.storage.db import Database
from mailsift.storage.quarantine.admin import (
    RELEASE_CLAIM_TIMEOUT,
    AlreadyReleased,
    QuarantineProblem,
    ReleaseInProgress,
    release,
)
from mailsift.storage.quarantine.dbstore import in_database, open_store
from mailsift.storage.quarantine.index import RELEASED, QuarantineEntry, claim_release, get_entry
from mailsift.storage.quarantine.store import file_id
from mailsift.storage.schema import quarantine_chunk_table
from mailsift.testing import RecordingServer

BIG = 50 * 1024 * 1024
MESSAGE = b"From: eve@spam.example\r\nTo: bob@example.test\r\nSubject: pills\r\n\r\nBuy now.\r\n"


@pytest.fixture
def next_hop() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


@pytest.fixture(params=["files", "database"])
def store(request: pytest.FixtureRequest) -> str:
    """``QUARANTINE_STORE``: every test here runs on both stores."""
    return str(request.param)


def quarantined(settings: Settings, message: Mail | None = None) -> QuarantineEntry:
    item = message or Mail(Envelope(sender="eve@spam.example", recipients=["bob@example.test"]), MESSAGE)
    where = asyncio.run(open_store(settings).put(item, "spam", Result(7.5, "SPAM", "spamassassind")))
    entry = settings.require_database().call(
        get_entry, where.rsplit("/", 1)[-1] if where.startswith(":") else file_id(where)
    )
    assert entry is not None
    assert in_database(entry) == (settings.quarantine_store == "database")
    return entry


def settings_for(database: Database, tmp_path: Path, next_hop: RecordingServer | int, store: str = "files") -> Settings:
    port = next_hop if isinstance(next_hop, int) else next_hop.port
    return Settings(state_dir=str(tmp_path), database=database, smtp_server=("127.0.0.1", port), quarantine_store=store)


def spool_files(settings: Settings) -> list[str]:
    return os.listdir(settings.spool_dir) if os.path.isdir(settings.spool_dir) else []


def test_two_releases_at_the_same_moment_send_once(
    database: Database, tmp_path: Path, next_hop: RecordingServer, store: str
) -> None:
    settings = settings_for(database, tmp_path, next_hop, store)
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


def test_a_held_claim_refuses_until_it_is_stale(
    database: Database, tmp_path: Path, next_hop: RecordingServer, store: str
) -> None:
    settings = settings_for(database, tmp_path, next_hop, store)
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


def test_a_failed_send_gives_the_claim_back(
    database: Database, tmp_path: Path, next_hop: RecordingServer, store: str
) -> None:
    settings = settings_for(database, tmp_path, next_hop, store)
    entry = quarantined(settings)
    next_hop.data_reply = "451 4.3.0 busy"
    with pytest.raises(Exception, match="451"):
        asyncio.run(release(settings, entry, by="node1"))
    next_hop.data_reply = None
    asyncio.run(release(settings, entry, by="node2"))  # not "being released by node1"
    assert len(next_hop.messages) == 1
    assert next_hop.messages[0].data == MESSAGE
    assert spool_files(settings) == [], "the release's spool file is removed"


def test_two_nodes_release_at_once_send_once(
    database: Database, tmp_path: Path, next_hop: RecordingServer, store: str
) -> None:
    """Two nodes (each its own Database on the same database, its own STATE_DIR): one release goes out."""
    other = db.database(database.url.render_as_string(hide_password=False))
    other.configure(str(tmp_path))
    nodes = {
        "nodeA": settings_for(database, tmp_path / "a", next_hop, store),
        "nodeB": settings_for(other, tmp_path / "b", next_hop, store),
    }
    if store == "files":  # the file store needs the one directory both nodes read (NFS)
        nodes = {name: replace(s, state_dir=str(tmp_path / "a")) for name, s in nodes.items()}
    entry = quarantined(nodes["nodeA"])
    start = threading.Barrier(4)
    outcomes: dict[str, object] = {}

    def node(name: str, settings: Settings) -> None:
        start.wait()
        try:
            outcomes[name] = asyncio.run(release(settings, entry, by=name))
        except (ReleaseInProgress, AlreadyReleased) as error:
            outcomes[name] = error

    threads = [
        threading.Thread(target=node, args=(f"{name}-{n}", settings))
        for n in range(2)
        for name, settings in nodes.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    other.dispose()
    assert len(outcomes) == 4
    winners = [name for name, outcome in outcomes.items() if isinstance(outcome, str)]
    assert len(winners) == 1, outcomes
    assert len(next_hop.messages) == 1, "the message was sent more than once"
    assert next_hop.messages[0].data == MESSAGE
    after = database.call(get_entry, entry.id)
    assert (after.state, after.released_by) == (RELEASED, winners[0])


def test_a_missing_message_is_a_problem_and_nothing_is_claimed(
    database: Database, tmp_path: Path, next_hop: RecordingServer, store: str
) -> None:
    settings = settings_for(database, tmp_path, next_hop, store)
    entry = quarantined(settings)
    if in_database(entry):
        database.call(lambda c: c.execute(quarantine_chunk_table.delete()))
    else:
        os.unlink(os.path.join(settings.quarantine_dir, entry.path))
    with pytest.raises(QuarantineProblem, match="cannot read its message"):
        asyncio.run(release(settings, entry, by="node1"))
    assert next_hop.messages == []
    assert database.call(claim_release, entry.id, "node2", 1.0, RELEASE_CLAIM_TIMEOUT) is None  # not claimed
    assert spool_files(settings) == []


class Sink:
    """A next hop that hashes the DATA it gets instead of keeping it (the memory test measures only
    the release): EHLO with PIPELINING, SIZE and 8BITMIME, one message per connection."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.digest = hashlib.sha256()
        self.size = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            connection.sendall(b"220 sink\r\n")
            buffer, in_data = b"", False
            while True:
                if in_data:
                    end = buffer.find(b"\r\n.\r\n")
                    cut = max(0, len(buffer) - 4) if end < 0 else end + 2
                    self.digest.update(buffer[:cut])
                    self.size += cut
                    buffer = buffer[cut:] if end < 0 else buffer[end + 5 :]
                    if end >= 0:
                        in_data = False
                        connection.sendall(b"250 2.0.0 hashed\r\n")
                        continue
                elif b"\r\n" in buffer:
                    line, buffer = buffer.split(b"\r\n", 1)
                    verb = line[:4].upper()
                    if verb == b"EHLO":
                        connection.sendall(b"250-sink\r\n250-PIPELINING\r\n250-SIZE\r\n250 8BITMIME\r\n")
                    elif verb == b"DATA":
                        connection.sendall(b"354 go\r\n")
                        in_data = True
                    elif verb == b"QUIT":
                        connection.sendall(b"221 bye\r\n")
                        return
                    else:
                        connection.sendall(b"250 ok\r\n")
                    continue
                block = connection.recv(256 * 1024)
                if not block:
                    return
                buffer += block

    def close(self) -> None:
        self.listener.close()
        self.thread.join(30)


async def test_a_50_mb_release_needs_no_50_mb_of_memory(database: Database, tmp_path: Path, store: str) -> None:
    """Quarantined from a spool file, released to a next hop: the heap's peak during the release stays
    below 8 MB (it would hold the whole message, twice, if release read it at once), and the next hop
    gets every byte (dot-stuffed lines included)."""
    spooled = tmp_path / "big.eml"
    head = b"From: eve@spam.example\r\nSubject: big\r\n\r\n"
    block = (b"0123456789abcdef" * 4 + b"\r\n" + b".dot-stuffed line\r\n") * 12000
    count = (BIG - len(head)) // len(block)
    digest, stuffed = hashlib.sha256(head), block.replace(b"\r\n.", b"\r\n..")
    with open(spooled, "wb") as handle:
        handle.write(head)
        for _ in range(count):
            handle.write(block)
            digest.update(stuffed)  # what goes on the wire: each line starting with a dot stuffed
    sink = Sink()
    settings = settings_for(database, tmp_path / "state", sink.port, store)
    database.migrate()
    item = Mail(Envelope(sender="eve@spam.example", recipients=["bob@example.test"]), path=str(spooled))
    entry = await asyncio.to_thread(quarantined, settings, item)
    tracemalloc.start()
    try:
        note = await release(settings, entry, by="node1")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        sink.close()
    assert "hashed" in note
    assert entry.size == os.path.getsize(spooled) > 45 * 1024 * 1024
    assert sink.size == len(head) + count * len(stuffed)
    assert sink.digest.hexdigest() == digest.hexdigest(), "the next hop got other bytes"
    assert peak < 8 * 1024 * 1024, f"release: {peak} bytes at the heap's peak for a {entry.size}-byte message"
    assert spool_files(settings) == []
