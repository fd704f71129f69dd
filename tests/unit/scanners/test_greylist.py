"""Greylisting, the auto-whitelist and the policy scanners, on a real SQLite database.

Time is the scanner's ``clock``, set by each test: no test waits or measures.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mailsift.errors import ConfigError, ScannerError, ScannerUnavailable
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import AddHeader, Disposition, SetDisposition
from mailsift.scanners.base import MailTarget
from mailsift.scanners.basic import const, sender_regexp
from mailsift.scanners.client import client_network
from mailsift.scanners.greylist import PolicyTarget, greylist, network_key, recipient_regexp, sender_key
from mailsift.storage import db
from mailsift.storage.db import Database, DatabaseError, GreylistRules, greylist_request

START = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def request(sender: str = "alice@sender.example", recipient: str = "bob@example.test", client: str = "192.0.2.7"):
    return {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "client_address": client,
        "client_name": "mx.sender.example",
        "helo_name": "mx.sender.example",
        "sender": sender,
        "recipient": recipient,
    }


def rows(database: Database, table: str) -> list[tuple[Any, ...]]:
    with database.engine.connect() as connection:
        return [tuple(row) for row in connection.exec_driver_sql(f"SELECT * FROM {table} ORDER BY 1, 2")]


def defer_text(result: Any) -> str:
    [action] = [a for a in result.actions if isinstance(a, SetDisposition)]
    assert action.disposition is Disposition.TEMPFAIL
    return str(action.text)


# --------------------------------------------------------------------------- greylisting


async def test_first_attempt_deferred_retry_too_early_deferred_then_passes(database: Database, clock: Clock) -> None:
    scanner = greylist(min=300, url="https://mail.example.test/greylisting/%r.html", clock=clock)
    first = await scanner.scan(PolicyTarget(request(), database))
    assert first.detected
    assert first.name == "Greylisted"
    assert defer_text(first) == (
        "Greylisted, please try again in 300 seconds, see https://mail.example.test/greylisting/example.test.html"
    )
    clock.now += 120
    early = await scanner.scan(PolicyTarget(request(), database))
    assert early.detected
    assert "try again in 180 seconds" in defer_text(early)
    clock.now += 180
    passed = await scanner.scan(PolicyTarget(request(), database))
    assert not passed.detected
    assert passed.actions == (AddHeader("X-Greylist", "delayed 300 seconds by mailsift greylisting"),)
    clock.now += 10
    again = await scanner.scan(PolicyTarget(request(), database))
    assert not again.detected
    assert again.actions == ()  # the header is for the delayed delivery only
    [(network, sender, recipient, first_seen, last_seen, deferred, passes)] = rows(database, "greylist")
    assert (network, sender, recipient) == ("192.0.2.0/24", "alice@sender.example", "bob@example.test")
    assert (first_seen, last_seen, deferred, passes) == (START, START + 310, 2, 2)


async def test_without_url_the_text_has_no_link(database: Database, clock: Clock) -> None:
    result = await greylist(min=60, clock=clock).scan(PolicyTarget(request(), database))
    assert defer_text(result) == "Greylisted, please try again in 60 seconds"


async def test_triplet_parts_each_make_a_new_entry(database: Database, clock: Clock) -> None:
    scanner = greylist(min=60, auto_whitelist=0, clock=clock)
    assert (await scanner.scan(PolicyTarget(request(), database))).detected
    clock.now += 61
    assert not (await scanner.scan(PolicyTarget(request(), database))).detected
    # same network (another host in the /24): passes; another sender, recipient or network: deferred
    assert not (await scanner.scan(PolicyTarget(request(client="192.0.2.200"), database))).detected
    assert (await scanner.scan(PolicyTarget(request(sender="carol@sender.example"), database))).detected
    assert (await scanner.scan(PolicyTarget(request(recipient="dave@example.test"), database))).detected
    assert (await scanner.scan(PolicyTarget(request(client="192.0.3.7"), database))).detected
    assert len(rows(database, "greylist")) == 4


async def test_never_passed_entry_starts_over_after_expire(database: Database, clock: Clock) -> None:
    scanner = greylist(min=300, expire=3600, clock=clock)
    await scanner.scan(PolicyTarget(request(), database))
    clock.now += 3601
    late = await scanner.scan(PolicyTarget(request(), database))
    assert late.detected
    assert "try again in 300 seconds" in defer_text(late)
    [row] = rows(database, "greylist")
    assert row[3:] == (START + 3601, START + 3601, 1, 0)


async def test_passed_entry_starts_over_after_max_age_unused(database: Database, clock: Clock) -> None:
    scanner = greylist(min=10, max_age=86400, auto_whitelist=0, clock=clock)
    await scanner.scan(PolicyTarget(request(), database))
    clock.now += 10
    assert not (await scanner.scan(PolicyTarget(request(), database))).detected
    clock.now += 86000
    assert not (await scanner.scan(PolicyTarget(request(), database))).detected  # used: kept
    clock.now += 86401
    assert (await scanner.scan(PolicyTarget(request(), database))).detected


async def test_min_zero_defers_only_the_first_sighting(database: Database, clock: Clock) -> None:
    scanner = greylist(min=0, clock=clock)
    assert (await scanner.scan(PolicyTarget(request(), database))).detected
    assert not (await scanner.scan(PolicyTarget(request(), database))).detected


async def test_request_without_recipient_is_not_greylisted(database: Database, clock: Clock) -> None:
    target = PolicyTarget({**request(), "recipient": "", "protocol_state": "DATA"}, database)
    result = await greylist(clock=clock).scan(target)
    assert not result.detected
    assert "not greylisted" in result.detail
    with database.engine.connect() as connection:  # the scanner did not even create the tables
        assert not database.engine.dialect.has_table(connection, "greylist")


async def test_greylist_outside_the_policy_service_is_an_error() -> None:
    mail = Mail(Envelope(sender="a@b.example", recipients=["c@d.example"], client_address="192.0.2.1"), b"x")
    with pytest.raises(ScannerError, match="only under smtpd_policy"):
        await greylist().scan(MailTarget(mail))


# --------------------------------------------------------------------------- auto-whitelist


async def pass_triplet(scanner: greylist, database: Database, clock: Clock, **fields: str) -> None:
    assert (await scanner.scan(PolicyTarget(request(**fields), database))).detected
    clock.now += scanner.rules.delay
    assert not (await scanner.scan(PolicyTarget(request(**fields), database))).detected


async def test_network_is_whitelisted_after_n_passes(database: Database, clock: Clock) -> None:
    scanner = greylist(min=60, auto_whitelist=3, clock=clock)
    await pass_triplet(scanner, database, clock, sender="one@sender.example")
    await pass_triplet(scanner, database, clock, sender="two@sender.example")
    # two passes: a new sender is still greylisted
    assert (await scanner.scan(PolicyTarget(request(sender="three@sender.example"), database))).detected
    clock.now += 60
    assert not (await scanner.scan(PolicyTarget(request(sender="three@sender.example"), database))).detected
    # three passes: a new sender from another host of the /24 passes at once, without a triplet row
    fresh = await scanner.scan(PolicyTarget(request(sender="new@other.example", client="192.0.2.99"), database))
    assert not fresh.detected
    assert "auto-whitelisted" in fresh.detail
    assert fresh.actions == ()
    assert [r[1] for r in rows(database, "greylist")] == [
        "one@sender.example",
        "three@sender.example",
        "two@sender.example",
    ]
    [(network, _, last_seen, passes)] = rows(database, "auto_whitelist")
    assert (network, passes, last_seen) == ("192.0.2.0/24", 4, clock.now)
    # another network is not whitelisted
    elsewhere = request(sender="new@other.example", client="198.51.100.1")
    assert (await scanner.scan(PolicyTarget(elsewhere, database))).detected


async def test_auto_whitelist_off_never_whitelists(database: Database, clock: Clock) -> None:
    scanner = greylist(min=60, auto_whitelist=0, clock=clock)
    for number in range(5):
        await pass_triplet(scanner, database, clock, sender=f"s{chr(97 + number)}@sender.example")
    assert (await scanner.scan(PolicyTarget(request(sender="fresh@sender.example"), database))).detected
    assert rows(database, "auto_whitelist") == []


async def test_whitelisted_network_unused_for_max_age_is_greylisted_again(database: Database, clock: Clock) -> None:
    scanner = greylist(min=60, auto_whitelist=1, max_age=86400, clock=clock)
    await pass_triplet(scanner, database, clock)
    assert not (await scanner.scan(PolicyTarget(request(sender="x@new.example"), database))).detected
    clock.now += 86401
    assert (await scanner.scan(PolicyTarget(request(sender="y@new.example"), database))).detected


async def test_ipv6_clients_share_their_slash_64(database: Database, clock: Clock) -> None:
    scanner = greylist(min=60, auto_whitelist=1, clock=clock)
    await pass_triplet(scanner, database, clock, client="2001:db8:1:2::25")
    same = await scanner.scan(PolicyTarget(request(sender="n@x.example", client="2001:db8:1:2:ffff::1"), database))
    other = await scanner.scan(PolicyTarget(request(sender="n@x.example", client="2001:db8:1:3::25"), database))
    assert (same.detected, other.detected) == (False, True)


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    ("address", "v4", "v6", "key"),
    [
        ("192.0.2.77", 24, 64, "192.0.2.0/24"),
        ("192.0.2.77", 32, 64, "192.0.2.77/32"),
        ("192.0.2.77", 16, 64, "192.0.0.0/16"),
        ("::ffff:192.0.2.77", 24, 64, "192.0.2.0/24"),
        ("2001:db8:aa:bb:cc::1", 24, 64, "2001:db8:aa:bb::/64"),
        ("2001:db8:aa:bb:cc::1", 24, 48, "2001:db8:aa::/48"),
        ("unknown", 24, 64, "unknown"),
        (" 192.0.2.1 ", 24, 64, "192.0.2.0/24"),
    ],
)
def test_network_key(address: str, v4: int, v6: int, key: str) -> None:
    assert network_key(address, v4, v6) == key


@pytest.mark.parametrize(
    ("sender", "key"),
    [
        ("Alice@Example.COM", "alice@example.com"),
        ("alice+lists@example.com", "alice@example.com"),
        ("prvs=4711abcd=bob@example.com", "bob@example.com"),
        ("list-bounces-123-456@lists.example", "list-bounces-#-#@lists.example"),
        ("", ""),
        ("MAILER-DAEMON", "mailer-daemon"),
    ],
)
def test_sender_key(sender: str, key: str) -> None:
    assert sender_key(sender) == key


async def test_custom_prefix_changes_the_network_kept(database: Database, clock: Clock) -> None:
    scanner = greylist(min=60, ipv4_prefix=32, clock=clock)
    await scanner.scan(PolicyTarget(request(), database))
    assert rows(database, "greylist")[0][0] == "192.0.2.7/32"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min": 600, "expire": 300}, "expire"),
        ({"min": -1}, "min"),
        ({"min": "300"}, "min"),
        ({"auto_whitelist": -1}, "auto_whitelist"),
        ({"auto_whitelist": True}, "auto_whitelist"),
        ({"ipv4_prefix": 33}, "ipv4_prefix"),
        ({"ipv6_prefix": -1}, "ipv6_prefix"),
        ({"header": "Bad Header"}, "header"),
        ({"url": "https://x\r\nInjected: yes"}, "url"),
        ({"max_age": 0}, "max_age"),
    ],
)
def test_greylist_options_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        greylist(**options)


# --------------------------------------------------------------------------- allow/deny scanners


async def test_client_network_sees_the_request_client_v4_v6_and_mapped() -> None:
    """The shared ``client_network`` interscanner works on policy requests (allow/deny lists)."""
    trusted = client_network(["10.0.0.0/8", "2001:db8::/32"], const(1.0, "Trusted"))
    blocked = client_network("192.0.2.0/24", const(1.0, "Blocked"))
    for client, name in [
        ("10.1.2.3", "Trusted"),
        ("2001:db8::5", "Trusted"),
        ("::ffff:192.0.2.9", "Blocked"),
        ("198.51.100.1", ""),
        ("unknown", ""),
    ]:
        target = PolicyTarget(request(client=client))
        results = [await trusted.scan(target), await blocked.scan(target)]
        assert [r.name for r in results if r.detected] == ([name] if name else []), client


async def test_recipient_regexp_and_sender_regexp_see_the_request() -> None:
    target = PolicyTarget(request(sender="spam@bad.example", recipient="postmaster@example.test"))
    assert (await recipient_regexp([("Postmaster", r"^postmaster@")]).scan(target)).name == "Postmaster"
    assert not (await recipient_regexp([("Abuse", r"^abuse@")]).scan(target)).detected
    assert (await sender_regexp([("Bad", r"@bad\.example$")]).scan(target)).name == "Bad"


# --------------------------------------------------------------------------- database


def test_sqlite_default_path_is_under_the_state_dir(tmp_path: Path) -> None:
    database = db.sqlite()
    database.configure(str(tmp_path))
    assert database.url.database == str(tmp_path / "mailsift.db")
    relative = db.sqlite("policy.db")
    relative.configure(str(tmp_path))
    assert relative.url.database == str(tmp_path / "policy.db")
    assert db.sqlite("/abs/where.db").describe() == "sqlite(/abs/where.db)"


def test_database_urls_are_checked() -> None:
    with pytest.raises(ConfigError, match="not supported"):
        db.database("mysql://user@host/db")
    with pytest.raises(ConfigError, match="bad URL"):
        db.database("no url at all")
    with pytest.raises(ConfigError, match="busy_timeout"):
        db.sqlite(busy_timeout=0)


def test_postgresql_url_needs_its_driver(tmp_path: Path) -> None:
    database = db.database("postgresql+psycopg://mailsift:secret@127.0.0.1/mailsift")
    assert "secret" not in database.describe()
    try:
        import psycopg  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="driver is not installed"):
            database.configure(str(tmp_path))
    else:
        database.configure(str(tmp_path))


async def test_postgresql_down_is_a_scanner_unavailable_error(clock: Clock) -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed")
    with tempfile.TemporaryDirectory() as nowhere:  # no server listens on this socket directory
        database = db.database(f"postgresql+psycopg://postgres@/x?host={nowhere}&port=5432", busy_timeout=2)
        database.configure("/")
        with pytest.raises(DatabaseError, match="connection"):
            await greylist(clock=clock).scan(PolicyTarget(request(), database))
        database.dispose()


async def test_database_down_is_a_scanner_unavailable_error(tmp_path: Path, clock: Clock) -> None:
    database = db.sqlite(str(tmp_path / "missing-directory" / "x.db"))
    database.configure(str(tmp_path))
    with pytest.raises(DatabaseError, match="unable to open database file") as caught:
        await greylist(clock=clock).scan(PolicyTarget(request(), database))
    assert isinstance(caught.value, ScannerUnavailable)
    database.dispose()


async def test_purge_removes_only_stale_rows(database: Database, clock: Clock) -> None:
    scanner = greylist(min=10, expire=100, max_age=1000, auto_whitelist=1, purge_interval=500, clock=clock)
    await scanner.scan(PolicyTarget(request(sender="stale@x.example"), database))  # purge runs (nothing old)
    await pass_triplet(scanner, database, clock, sender="kept@x.example", client="198.51.100.1")
    clock.now += 500  # the unpassed triplet is past expire; the passed one within max_age
    await scanner.scan(PolicyTarget(request(sender="fresh@y.example", client="203.0.113.1"), database))
    senders = sorted(r[1] for r in rows(database, "greylist"))
    assert senders == ["fresh@y.example", "kept@x.example"]
    assert [r[0] for r in rows(database, "auto_whitelist")] == ["198.51.100.0/24"]


# --------------------------------------------------------------------------- concurrency


RULES = GreylistRules(delay=0, retry_window=3600, max_age=86400, auto_whitelist=10**9)


def _hammer(url: str, triplets: int, rounds: int) -> int:
    """Count ``rounds`` requests on each of ``triplets`` triplets; return how many were deferred."""
    database = db.database(url, busy_timeout=30)
    database.configure("/")
    deferred = 0
    for _ in range(rounds):
        for number in range(triplets):
            state = database.call(greylist_request, "192.0.2.0/24", f"s{chr(97 + number)}@x", "r@y", START, RULES)
            deferred += not state.passed
    database.dispose()
    return deferred


def test_concurrent_threads_and_processes_lose_no_increment(database: Database) -> None:
    url = database.url.render_as_string(hide_password=False)
    triplets, rounds, threads, processes = 5, 20, 4, 3
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool, ThreadPoolExecutor(threads) as executor:
        remote = [pool.apply_async(_hammer, (url, triplets, rounds)) for _ in range(processes)]
        local = [executor.submit(_hammer, url, triplets, rounds) for _ in range(threads)]
        deferred = sum(r.get(120) for r in remote) + sum(f.result(120) for f in local)
    workers = threads + processes
    assert deferred == triplets  # exactly one first sighting per triplet, whoever got there first
    assert [row[5:] for row in rows(database, "greylist")] == [(1, workers * rounds - 1)] * triplets
    [(_, _, _, network_passes)] = rows(database, "auto_whitelist")
    assert network_passes == triplets * (workers * rounds - 1)


def test_run_executes_in_a_thread(database: Database) -> None:
    state = asyncio.run(database.run(greylist_request, "n", "s", "r", START, RULES))
    assert (state.passed, state.deferred) == (False, 1)


async def test_a_worker_with_a_late_clock_counts_after_the_row_not_before(database: Database, clock: Clock) -> None:
    """Requests reach the database in another order than their workers read the clock."""
    scanner = greylist(min=0, clock=clock)
    assert (await scanner.scan(PolicyTarget(request(), database))).detected
    clock.now -= 0.004  # another worker read the clock a little earlier, and got the lock later
    assert not (await scanner.scan(PolicyTarget(request(), database))).detected
    assert not (await greylist(min=300, clock=clock).scan(PolicyTarget(request(), database))).detected  # passed stays
    [row] = rows(database, "greylist")
    assert row[3:] == (START, START, 1, 2)
