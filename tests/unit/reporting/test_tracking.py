"""Message tracking: real mail through a real smtpd, logged by log_sql, quarantined, released; then found.

The gateway is the config file a site would write (``SCANNERS``, ``SRV``,
``HOOKS = [log_sql()]``, ``DATABASE``), loaded by :func:`mailsift.config.load`
and run by :class:`mailsift.testing.ServiceThread` on a loopback port, with a
:class:`~mailsift.testing.RecordingServer` as next hop.  Four messages get four
fates (delivered, rejected by a named scanner, quarantined, quarantined then
released by a named admin through :func:`mailsift.storage.quarantine.admin.release`);
searches by sender, recipient, Message-ID, queue id and time must tell each
story right, on SQLite and on PostgreSQL, through the queries and through
``mailsift track``.  Paging, bounds and odd input are tested on rows written by
the log's own :func:`~mailsift.reporting.logline.sql_rows`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import smtplib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from mailsift import config as config_module
from mailsift.cli.tracking import track
from mailsift.config import Config
from mailsift.reporting import tracking
from mailsift.reporting.logline import MessageRecord, insert_rows, sql_rows
from mailsift.reporting.tracking import (
    DELIVERED,
    GONE,
    QUARANTINED,
    REJECTED,
    RELEASED_FATE,
    Story,
    TrackQuery,
    TrackQueryError,
    find_stories,
    get_story,
    parse_time,
)
from mailsift.storage.db import Database
from mailsift.storage.quarantine.admin import release
from mailsift.storage.quarantine.index import QuarantineFilter, find_entries, remove_entry
from mailsift.testing import RecordingServer, ServiceThread
from tests.helpers.postgres import fresh_database, postgres  # noqa: F401 - the fixture

CONFIG = """\
from mailsift import *
STATE_DIR = {state!r}
SMTP_SERVER = ("127.0.0.1", {next_hop})
DATABASE = {database}
SCANNERS = [
    reject(regexp_scan([("Bad-Word", "BADWORD")])),
    quarantine("virus", regexp_scan([("Nasty-Virus", "NASTYVIRUS")])),
]
SRV = [smtpd(SCANNERS, "127.0.0.1", 0)]
HOOKS = [log_sql()]
"""


@dataclass
class Sent:
    """What the test sent: Message-IDs by fate, and a time between the first two and the last two."""

    config: Config
    config_path: str
    hop: RecordingServer
    middle: float
    message_ids: dict[str, str]


def message(sender: str, recipients: list[str], subject: str, body: str, message_id: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n"
        f"Message-ID: {message_id}\r\n\r\n{body}\r\n"
    ).encode()


def send(port: int, sender: str, recipients: list[str], data: bytes) -> int:
    """The final SMTP code for the message (250, or the 5xx of DATA)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        try:
            client.sendmail(sender, recipients, data)
        except smtplib.SMTPDataError as error:
            return error.smtp_code
    return 250


def wait_for_rows(database: Database, count: int, deadline: float = 20.0) -> None:
    """log_sql writes in the background: wait (bounded) until ``count`` maillog rows are there."""
    until = time.monotonic() + deadline
    found = 0
    while time.monotonic() < until:
        found = database.call(lambda c: c.execute(text("SELECT count(*) FROM maillog")).scalar_one())
        if found >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"only {found} of {count} log rows written")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def sent(request: pytest.FixtureRequest) -> Iterator[Sent]:
    """Four messages through a real smtpd with log_sql and a quarantine; one quarantined copy released."""
    if request.param == "postgresql":
        base_url = request.getfixturevalue("postgres")
        database = f"db.database({fresh_database(base_url, 'tracking')!r})"
    else:
        database = "db.sqlite()"
    workdir = tempfile.mkdtemp(prefix="mailsift-tracking-", dir="/tmp")
    with RecordingServer() as hop:
        path = Path(workdir) / "mailsift.conf.py"
        path.write_text(CONFIG.format(state=f"{workdir}/state", next_hop=hop.port, database=database))
        config = config_module.load(str(path))
        ids = {
            DELIVERED: "<clean-1@a.example>",
            REJECTED: "<bad-1@d.example>",
            QUARANTINED: "<virus-1@e.example>",
            RELEASED_FATE: "<virus-2@m.example>",
        }
        with ServiceThread(config.services[0], config.settings) as gateway:
            port = gateway.port
            clean = ["bob@b.example", "carol@b.example"]
            assert send(port, "alice@a.example", clean, message("alice", clean, "Hello", "hi", ids[DELIVERED])) == 250
            bad = ["bob@b.example"]
            assert send(port, "Dave@D.example", bad, message("dave", bad, "Offer", "BADWORD", ids[REJECTED])) == 550
            middle = time.time()  # the two above were logged before their reply; the two below after this
            virus = ["frank@b.example"]
            data = message("eve", virus, "Invoice", "NASTYVIRUS", ids[QUARANTINED])
            assert send(port, "eve@e.example", virus, data) == 250
            data = message("mallory", bad, "Wanted", "NASTYVIRUS", ids[RELEASED_FATE])
            assert send(port, "mallory@m.example", bad, data) == 250
            wait_for_rows(config.settings.database, 5)
        assert len(hop.messages) == 1  # only the clean one went on
        (entry,) = config.settings.database.call(
            find_entries, QuarantineFilter(sender="mallory@m.example"), time.time()
        )
        asyncio.run(release(config.settings, entry, by="admin-carol"))
        assert len(hop.messages) == 2
        yield Sent(config, str(path), hop, middle, ids)
        config.settings.database.dispose()
    shutil.rmtree(workdir, ignore_errors=True)


def search(sent: Sent, **terms: object) -> list[Story]:
    return sent.config.settings.database.call(find_stories, TrackQuery(**terms)).stories  # type: ignore[arg-type]


def only(sent: Sent, **terms: object) -> Story:
    stories = search(sent, **terms)
    assert len(stories) == 1, [s.message_id for s in stories]
    return stories[0]


# ------------------------------------------------------------------------------------------ the stories


def test_a_clean_message_is_delivered_to_all_its_recipients(sent: Sent) -> None:
    story = only(sent, message_id=sent.message_ids[DELIVERED])
    assert story.fate == DELIVERED
    assert story.recipients == ("bob@b.example", "carol@b.example")
    assert (story.sender, story.subject, story.reply, story.verdict) == ("alice@a.example", "Hello", "250", "clean")
    assert story.quarantine == ()
    received = sent.hop.messages[0]
    assert sent.message_ids[DELIVERED].encode() in received.data
    assert received.recipients == list(story.recipients)


def test_a_rejected_message_names_the_scanner(sent: Sent) -> None:
    story = only(sent, message_id=sent.message_ids[REJECTED])
    assert story.fate == REJECTED
    assert story.reply == "550"
    assert story.name == "Bad-Word"
    assert story.scanner == "regexp_scan"
    assert story.verdict == "regexp_scan: Bad-Word (level 1.00)"
    assert any("rejected by regexp_scan: Bad-Word" in event.text for event in story.events())


def test_a_quarantined_message_shows_its_held_copy(sent: Sent) -> None:
    story = only(sent, message_id=sent.message_ids[QUARANTINED])
    assert story.fate == QUARANTINED
    (copy,) = story.quarantine
    assert (copy.state, copy.category, copy.released_by) == ("held", "virus", None)
    assert story.name == "Nasty-Virus"
    (entry,) = sent.config.settings.database.call(find_entries, QuarantineFilter(ids=[copy.id]), time.time())
    assert entry.recipients == ("frank@b.example",)


def test_a_released_message_says_by_whom_when_and_to_whom(sent: Sent) -> None:
    story = only(sent, message_id=sent.message_ids[RELEASED_FATE])
    assert story.fate == RELEASED_FATE
    (copy,) = story.quarantine
    assert copy.state == "released"
    assert copy.released_by == "admin-carol"
    assert copy.released_to == ("bob@b.example",)
    assert copy.released_at is not None
    assert copy.released_at >= story.time
    events = [event.text for event in story.events()]
    assert events[-1] == "released by admin-carol to <bob@b.example>"
    assert sent.message_ids[RELEASED_FATE].encode() in sent.hop.messages[1].data  # it really went on


# ------------------------------------------------------------------------------------------ the searches


def test_message_id_matches_with_or_without_brackets(sent: Sent) -> None:
    bare = sent.message_ids[REJECTED].strip("<>")
    assert only(sent, message_id=bare).id == only(sent, message_id=sent.message_ids[REJECTED]).id
    assert search(sent, message_id="<nothing@nowhere>") == []


def test_sender_matches_exactly_ignoring_case_or_by_domain(sent: Sent) -> None:
    assert only(sent, sender="dave@d.example").message_id == sent.message_ids[REJECTED]
    assert only(sent, sender="@M.EXAMPLE").message_id == sent.message_ids[RELEASED_FATE]
    assert search(sent, sender="ave@d.example") == []  # exact, not a substring
    assert search(sent, sender="@%") == []  # LIKE wildcards are text, not patterns
    assert search(sent, sender="@_.example") == []


def test_recipient_finds_every_message_to_it_newest_first_with_all_recipients(sent: Sent) -> None:
    stories = search(sent, recipient="bob@b.example")
    assert [s.message_id for s in stories] == [
        sent.message_ids[RELEASED_FATE],
        sent.message_ids[REJECTED],
        sent.message_ids[DELIVERED],
    ]
    assert stories[-1].recipients == ("bob@b.example", "carol@b.example")  # found through bob, carol shown too
    assert [s.message_id for s in search(sent, recipient="@b.example")] == [
        sent.message_ids[fate] for fate in (RELEASED_FATE, QUARANTINED, REJECTED, DELIVERED)
    ]


def test_time_range_splits_the_messages(sent: Sent) -> None:
    later = {s.message_id for s in search(sent, since=sent.middle)}
    earlier = {s.message_id for s in search(sent, until=sent.middle)}
    assert later == {sent.message_ids[QUARANTINED], sent.message_ids[RELEASED_FATE]}
    assert earlier == {sent.message_ids[DELIVERED], sent.message_ids[REJECTED]}
    both = search(sent, recipient="bob@b.example", since=sent.middle, until=time.time() + 60)
    assert [s.fate for s in both] == [RELEASED_FATE]
    assert search(sent, since=time.time() + 60) == []


def test_queue_id_and_story_id_find_the_same_message(sent: Sent) -> None:
    story = only(sent, message_id=sent.message_ids[QUARANTINED])
    assert story.queue_id  # smtpd gives each message a queue id
    assert only(sent, queue_id=story.queue_id).id == story.id
    again = sent.config.settings.database.call(get_story, story.id)
    assert again == story
    assert sent.config.settings.database.call(get_story, 10**9) is None


# ------------------------------------------------------------------------------------------ the CLI


def test_cli_json_tells_the_release(sent: Sent) -> None:
    result = CliRunner().invoke(
        track, ["-c", sent.config_path, "--message-id", sent.message_ids[RELEASED_FATE], "--json"]
    )
    assert result.exit_code == 0, result.output
    (story,) = json.loads(result.stdout)["messages"]
    assert story["fate"] == "released"
    assert story["quarantine"][0]["released_by"] == "admin-carol"
    assert story["recipients"] == ["bob@b.example"]


def test_cli_table_with_events_and_filters(sent: Sent) -> None:
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sent.middle - 3600))
    result = CliRunner().invoke(
        track, ["-c", sent.config_path, "--sender", "dave@d.example", "--since", since, "--events"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["LOG-ID", "TIME", "(UTC)"]
    assert "rejected" in lines[1]
    assert "regexp_scan: Bad-Word" in lines[1]
    assert any("received from" in line for line in lines[2:])
    assert "1 message(s)" in result.stderr


def test_cli_nothing_found_and_bad_input(sent: Sent) -> None:
    runner = CliRunner()
    nothing = runner.invoke(track, ["-c", sent.config_path, "--sender", "nobody@nowhere.example"])
    assert nothing.exit_code == 1
    assert "0 message(s)" in nothing.stderr
    assert runner.invoke(track, ["-c", sent.config_path, "--since", "yesterday-ish"]).exit_code == 2
    assert runner.invoke(track, ["-c", sent.config_path, "--since", "1d", "--until", "2d"]).exit_code == 2
    assert runner.invoke(track, ["-c", sent.config_path, "--limit", "0"]).exit_code == 2


# ------------------------------------------------------------------------------------------ bounds and odd input


@pytest.fixture
def database() -> Iterator[Database]:
    workdir = tempfile.mkdtemp(prefix="mailsift-tracking-", dir="/tmp")
    db = Database(path=f"{workdir}/log.db")
    db.configure(workdir)
    yield db
    db.dispose()
    shutil.rmtree(workdir, ignore_errors=True)


RECORD = MessageRecord(
    time=1_700_000_000.0,
    queue_id="Q0",
    status="Clear",
    action="deliver",
    reply="250",
    level=0.0,
    name="",
    scanner="",
    relay_client=False,
    client_address="192.0.2.1",
    client_name="mx.example",
    helo="mx.example",
    elapsed=0.01,
    size=100,
    sender="s@example.org",
    recipients=("r@example.net",),
    subject="hi",
    message_id="<m0@example.org>",
)


def log(database: Database, *records: MessageRecord) -> None:
    database.call(insert_rows, [row for record in records for row in sql_rows(record)])


def test_paging_is_bounded_and_complete(database: Database) -> None:
    log(database, *(replace(RECORD, time=RECORD.time + n, queue_id=f"Q{n}", message_id=f"<m{n}@x>") for n in range(7)))
    seen: list[str] = []
    query: TrackQuery | None = TrackQuery(limit=3)
    pages = 0
    while query is not None:
        page = database.call(find_stories, query)
        seen += [s.queue_id for s in page.stories]
        query = query.next_page() if page.has_more else None
        pages += 1
    assert seen == [f"Q{n}" for n in reversed(range(7))]  # newest first, each once
    assert pages == 3
    with pytest.raises(TrackQueryError):
        TrackQuery(offset=tracking.MAX_OFFSET + 1)
    with pytest.raises(TrackQueryError):
        TrackQuery(limit=tracking.MAX_LIMIT + 1)


def test_recipients_of_one_story_are_bounded_and_counted(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "MAX_RECIPIENTS", 2)
    log(database, replace(RECORD, recipients=tuple(f"r{n}@example.net" for n in range(5))))
    (story,) = database.call(find_stories, TrackQuery(recipient="r4@example.net")).stories
    assert story.recipients == ("r0@example.net", "r1@example.net")
    assert story.more_recipients == 3


def test_a_deleted_quarantine_copy_is_told_as_gone(database: Database) -> None:
    log(
        database,
        replace(
            RECORD,
            status="Quarantined_X",
            action="quarantine",
            quarantine=("virus/new/1.2_20240101T000000-0123abcd.h",),
        ),
    )
    (story,) = database.call(find_stories, TrackQuery()).stories
    assert story.fate == QUARANTINED
    assert [(c.id, c.state) for c in story.quarantine] == [("20240101T000000-0123abcd", GONE)]
    assert "no longer stored" in story.events()[-1].text
    assert database.call(remove_entry, "20240101T000000-0123abcd") is False  # indeed not in the index


def test_null_sender_and_hostile_text_are_searched_as_text(database: Database) -> None:
    log(
        database,
        replace(RECORD, sender="", queue_id="Q-bounce"),
        replace(RECORD, time=RECORD.time + 1, sender="x'; DROP TABLE maillog; --@example.org", queue_id="Q-odd"),
    )
    assert [s.queue_id for s in database.call(find_stories, TrackQuery(sender="<>")).stories] == ["Q-bounce"]
    odd = database.call(find_stories, TrackQuery(sender="X'; DROP TABLE maillog; --@example.org")).stories
    assert [s.queue_id for s in odd] == ["Q-odd"]
    assert len(database.call(find_stories, TrackQuery()).stories) == 2


def test_message_id_search_uses_its_index(database: Database) -> None:
    log(database, RECORD)
    plan = database.call(
        lambda c: " ".join(
            str(row[-1])
            for row in c.exec_driver_sql("EXPLAIN QUERY PLAN SELECT id FROM maillog WHERE message_id = 'x'")
        )
    )
    assert "ix_maillog_message_id" in plan


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2h", 1_000_000.0 - 7200),
        ("7d", 1_000_000.0 - 7 * 86400),
        ("2024-05-01", 1714521600.0),
        ("2024-05-01T10:00", 1714557600.0),
        ("2024-05-01 12:00:00+02:00", 1714557600.0),
        ("2024-05-01T10:00Z", 1714557600.0),
        ("1714557600", 1714557600.0),
    ],
)
def test_parse_time(given: str, expected: float) -> None:
    assert parse_time(given, now=1_000_000.0) == expected


@pytest.mark.parametrize("given", ["", "yesterday", "2024-13-01", "7 days", "x" * 100, "-5h"])
def test_parse_time_refuses_nonsense(given: str) -> None:
    with pytest.raises(TrackQueryError):
        parse_time(given)


def test_query_refuses_what_it_cannot_run() -> None:
    with pytest.raises(TrackQueryError):
        TrackQuery(sender="a" * (tracking.MAX_TEXT + 1))
    with pytest.raises(TrackQueryError):
        TrackQuery(sender="a\0b")
    with pytest.raises(TrackQueryError):
        TrackQuery(since=2.0, until=1.0)
    with pytest.raises(TrackQueryError):
        TrackQuery(since=float("nan"))
    assert TrackQuery(sender="  ", recipient=" bob@x ").sender is None
    assert TrackQuery(recipient=" bob@x ").recipient == "bob@x"


@pytest.mark.parametrize(
    ("status", "action", "reply", "fate"),
    [
        ("Dropped_X", "drop", "250", tracking.DROPPED),
        ("Tempfail_X", "tempfail", "451", tracking.TEMPFAILED),
        ("Tempfail", "deliver", "451", tracking.TEMPFAILED),  # the next hop was down
        ("Refused", "deliver", "554", tracking.REFUSED),
        ("Delivered_X", "deliver", "250", DELIVERED),  # deliver(...) forced despite a detection
    ],
)
def test_every_other_fate(database: Database, status: str, action: str, reply: str, fate: str) -> None:
    log(database, replace(RECORD, status=status, action=action, reply=reply, level=1.0, name="X", scanner="s"))
    (story,) = database.call(find_stories, TrackQuery()).stories
    assert story.fate == fate
    assert story.verdict == "s: X (level 1.00)"


def test_cli_output_cannot_drive_the_terminal(tmp_path: Path) -> None:
    state = tempfile.mkdtemp(prefix="mailsift-tracking-", dir="/tmp")
    path = tmp_path / "mailsift.conf.py"
    path.write_text(f"from mailsift import *\nSTATE_DIR = {state!r}\nDATABASE = db.sqlite()\n")
    config = config_module.load(str(path))
    try:
        log(config.settings.database, replace(RECORD, subject="\x1b]0;pwned\x07\x1b[2J hi\r\nthere"))
        result = CliRunner().invoke(track, ["-c", str(path), "--events"])
    finally:
        config.settings.database.dispose()
        shutil.rmtree(state, ignore_errors=True)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout
    assert "\x07" not in result.stdout
    assert "?]0;pwned??[2J hi there" in result.stdout
