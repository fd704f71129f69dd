"""Once per cluster: three nodes (three configs on one DATABASE, SQLite file or PostgreSQL) run the same
cron lines; ``report`` sends each digest once and ``quarantine expire`` deletes once; ``--force`` runs again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mailsift.cli.quarantine import quarantine_group
from mailsift.cli.report import report_command
from mailsift.storage.quarantine.index import QuarantineFilter, find_entries
from mailsift.storage.quarantine.store import file_id, stored_files
from mailsift.testing import RecordingServer, free_port
from tests.helpers.links import Gateway, database_option, scratch
from tests.helpers.maillog import log, logged
from tests.helpers.postgres import postgres  # noqa: F401 - the fixture

DAY = 86400.0
BASE = "https://mail.example.com/webq"
MESSAGE = b"From: eve@spam.example\r\nTo: bob@example.test\r\nSubject: Buy\r\n\r\nBuy now.\r\n"


class Node(Gateway):
    """One gateway: its own STATE_DIR and NODE, the cluster's DATABASE; the quarantine directory is
    shared (a symlink, as a shared mount) so that expiry has the same files to delete on every node."""

    def __init__(self, root: Path, name: str, database: str, next_hop: int, quarantine: Path) -> None:
        state = root / name / "state"
        state.mkdir(parents=True)
        (state / "quarantine").symlink_to(quarantine)
        self.name = name
        super().__init__(root / name, next_hop, database, lines=f"NODE = {name!r}\n")

    def quarantine(self, data: bytes, recipient: str, age: float = 0.0) -> str:  # type: ignore[override]
        return super().quarantine(data, recipients=(recipient,), age=age, retry_window=0)

    def report(self, *extra: str) -> Result:
        return CliRunner().invoke(report_command, ["-c", str(self.path), "--url", BASE, *extra])

    def expire(self, *extra: str) -> Result:
        return CliRunner().invoke(quarantine_group, ["expire", "-c", str(self.path), "--older-than", "30d", *extra])


@pytest.fixture
def root() -> Iterator[Path]:
    with scratch("mailsift-once-") as path:
        yield path


@pytest.fixture
def next_hop() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def nodes(request: pytest.FixtureRequest, root: Path, next_hop: RecordingServer) -> Iterator[list[Node]]:
    database = database_option(request, "once", root / "cluster.db")
    quarantine = root / "shared-quarantine"
    quarantine.mkdir()
    cluster = [Node(root, name, database, next_hop.port, quarantine) for name in ("node-a", "node-b", "node-c")]
    yield cluster
    for node in cluster:
        assert node.settings.database is not None
        node.settings.database.dispose()


def test_report_on_three_nodes_sends_each_digest_once(nodes: list[Node], next_hop: RecordingServer) -> None:
    a, b, c = nodes
    a.quarantine(MESSAGE, "bob@example.test")
    b.quarantine(MESSAGE, "carol@example.test")
    first = a.report()
    assert first.exit_code == 0, first.output
    assert "report: 2 report(s) sent, 0 failed" in first.stderr
    for late in (b, c):
        result = late.report()
        assert result.exit_code == 0, result.output
        assert "already done by node-a at " in result.stderr
        assert "sent" not in result.stderr
    assert sorted(r for m in next_hop.messages for r in m.recipients) == ["bob@example.test", "carol@example.test"]
    forced = c.report("--force")  # the operator's rerun
    assert forced.exit_code == 0, forced.output
    assert "report: 2 report(s) sent" in forced.stderr
    assert len(next_hop.messages) == 4


def test_a_dry_run_takes_no_lease(nodes: list[Node], next_hop: RecordingServer) -> None:
    a, b, _ = nodes
    a.quarantine(MESSAGE, "bob@example.test")
    assert a.report("--dry-run").exit_code == 0
    result = b.report()
    assert result.exit_code == 0, result.output
    assert "report: 1 report(s) sent" in result.stderr
    assert len(next_hop.messages) == 1


def test_a_report_that_sent_nothing_gives_the_lease_back(
    nodes: list[Node], root: Path, next_hop: RecordingServer
) -> None:
    a, b, _ = nodes
    a.quarantine(MESSAGE, "bob@example.test")
    database = b.path.read_text().split("DATABASE = ", 1)[1].strip()
    cut_off = Node(root, "node-d", database, free_port(), root / "shared-quarantine")  # its relay is down
    try:
        failed = cut_off.report()
    finally:
        assert cut_off.settings.database is not None
        cut_off.settings.database.dispose()
    assert failed.exit_code == 1
    assert "0 report(s) sent, 1 failed" in failed.stderr
    retried = b.report()
    assert retried.exit_code == 0, retried.output
    assert "report: 1 report(s) sent" in retried.stderr
    assert len(next_hop.messages) == 1


def test_expire_on_three_nodes_deletes_once(nodes: list[Node]) -> None:
    a, b, c = nodes
    old = [a.quarantine(MESSAGE, "bob@example.test", age=40 * DAY) for _ in range(2)]
    young = b.quarantine(MESSAGE, "bob@example.test", age=DAY)
    results = [node.expire() for node in (b, a, c)]
    assert [r.exit_code for r in results] == [0, 0, 0], [r.output for r in results]
    assert "expired 2 message(s)" in results[0].stdout
    for late in results[1:]:
        assert "expired" not in late.stdout
        assert "already done by node-b at " in late.stderr
    database = a.settings.database
    assert database is not None
    remaining = {e.id for e in database.call(find_entries, QuarantineFilter(), time.time())}
    assert remaining == {young}
    assert {file_id(f) for f in stored_files(a.settings.quarantine_dir)} == {young}
    assert not set(old) & remaining
    later = a.quarantine(MESSAGE, "bob@example.test", age=50 * DAY)
    assert c.expire().stdout == ""  # within the hour: already done
    forced = c.expire("--force")
    assert "expired 1 message(s)" in forced.stdout
    assert later not in {file_id(f) for f in stored_files(a.settings.quarantine_dir)}


def test_expire_prunes_the_message_log_once_per_cluster(nodes: list[Node]) -> None:
    """The packaged timer runs ``quarantine expire``, not ``stats prune``: it prunes the log too."""
    a, b, c = nodes
    database = a.settings.database
    assert database is not None
    log(database, 120 * DAY, 91 * DAY, 89 * DAY, 0)
    results = [node.expire() for node in (c, a, b)]
    assert [r.exit_code for r in results] == [0, 0, 0], [r.output for r in results]
    assert results[0].stdout == "expired 0 message(s)\npruned 2 message log row(s)\n"
    for late in results[1:]:
        assert late.stdout == ""
        assert "already done by node-c at " in late.stderr
    assert logged(database) == ["q7689600", "q0"]
    assert a.expire("--force").stdout == "expired 0 message(s)\n"  # nothing left to prune: no line


def test_expire_every_sets_the_period(nodes: list[Node]) -> None:
    a, b, _ = nodes
    assert a.expire("--every", "1h").exit_code == 0
    assert "already done by node-a" in b.expire("--every", "1h").stderr
    assert "already done" not in b.expire("--category", "virus").stderr  # another job: its own lease
