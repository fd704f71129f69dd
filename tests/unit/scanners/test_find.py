"""SAGATOR's condition interscanners: regexp_find, sql_find (bound parameters only) and check_level."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mailsift import const, quarantine, reject
from mailsift.core.pipeline import Pipeline
from mailsift.errors import ConfigError, DatabaseError, ScannerError
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Disposition, Result
from mailsift.scanners.base import MailTarget, Scanner, Target
from mailsift.scanners.find import check_level, regexp_find, sql_find
from mailsift.scanners.greylist import PolicyTarget
from mailsift.scanners.match import recover
from mailsift.scanners.parsemail import parsemail
from mailsift.settings import Settings
from mailsift.storage.db import Database
from tests.helpers.postgres import fresh_database

MESSAGE = (
    b"From: a@example.net\r\nSubject: Your Invoice 42\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\nhello there\r\n"
    b"--b\r\nContent-Type: application/zip; name=x.zip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"UEsDBAo=\r\n--b--\r\n"
)


def mail(sender: str = "Alice@Example.NET", recipients: tuple[str, ...] = ("bob@example.test",)) -> Mail:
    envelope = Envelope(
        sender=sender,
        recipients=list(recipients),
        client_address="192.0.2.7",
        client_name="mx.example.net",
        helo="mx.example.net",
    )
    return Mail(envelope, MESSAGE)


class Counting(Scanner):
    """A scanner that says how often it ran."""

    name = "counting"

    def __init__(self, result: Result) -> None:
        self.result, self.runs = result, 0

    async def scan(self, target: Target) -> Result:
        self.runs += 1
        return self.result


# --------------------------------------------------------------------------- regexp_find


async def test_regexp_find_runs_its_scanners_only_when_the_pattern_is_found() -> None:
    inner = Counting(Result(1.0, "Invoice.Zip", "counting"))
    found = await regexp_find(rb"(?m)^Subject: .*invoice", inner, flags=0).scan(MailTarget(mail()))
    assert found.detected is False  # case matters in message bytes unless the pattern says
    assert inner.runs == 0
    found = await regexp_find(rb"(?im)^Subject: .*invoice", inner).scan(MailTarget(mail()))
    assert (found.detected, found.name, inner.runs) == (True, "Invoice.Zip", 1)


async def test_regexp_find_is_a_condition_where_regexp_scan_is_a_detection() -> None:
    """Found but the wrapped scanner is clean: clean (regexp_scan would have detected)."""
    result = await regexp_find("hello", const(0.0, "")).scan(MailTarget(mail()))
    assert result.detected is False
    not_found = await regexp_find("no such text", const(1.0, "X")).scan(MailTarget(mail()))
    assert not_found.level == 0.0
    assert "not found; not run" in not_found.detail


async def test_regexp_find_in_headers_only_and_invert() -> None:
    inner = const(1.0, "Hit")
    assert not (await regexp_find("hello there", inner, where="headers").scan(MailTarget(mail()))).detected
    assert (await regexp_find("hello there", inner).scan(MailTarget(mail()))).detected
    assert (await regexp_find("^Subject: Nope", inner, where="headers", invert=True).scan(MailTarget(mail()))).detected


@pytest.mark.parametrize(
    ("where", "pattern", "hit"),
    [
        ("sender", r"@example\.net$", True),  # case ignored for envelope fields
        ("sender", r"@example\.org$", False),
        ("recipient", r"^bob@", True),
        ("helo", r"^mx\.", True),
        ("client_address", r"^192\.0\.2\.", True),
        ("client_name", r"example\.com$", False),
    ],
)
async def test_regexp_find_over_the_envelope(where: str, pattern: str, hit: bool) -> None:
    result = await regexp_find(pattern, const(1.0, "Hit"), where=where).scan(MailTarget(mail()))
    assert result.detected is hit


async def test_regexp_find_under_parsemail_searches_each_part() -> None:
    scanner = parsemail(regexp_find(rb"^PK", const(1.0, "Zip.Part")))
    result = await scanner.scan(MailTarget(mail()))
    assert (result.detected, result.name) == (True, "Zip.Part")


def test_regexp_find_refuses_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="bad regular expression"):
        regexp_find("(", const(1.0, "x"))
    with pytest.raises(ConfigError, match="where must be one of"):
        regexp_find("x", const(1.0, "x"), where="body")
    with pytest.raises(ConfigError, match="needs at least one scanner"):
        regexp_find("x")


# --------------------------------------------------------------------------- sql_find


def make_table(path: Path, rows: list[tuple[str, str]]) -> str:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE addresses (address TEXT, kind TEXT)")
        connection.executemany("INSERT INTO addresses VALUES (?, ?)", rows)
    return f"sqlite:///{path}"


async def test_sql_find_runs_its_scanners_when_a_row_is_found(tmp_path: Path) -> None:
    url = make_table(tmp_path / "users.db", [("alice@example.net", "blocked")])
    scanner = sql_find(
        "SELECT 1 FROM addresses WHERE address = :sender AND kind = 'blocked'", const(1.0, "Blocked"), url=url
    )
    assert (await scanner.scan(MailTarget(mail()))).detected  # sender lower-cased before the lookup
    clean = await scanner.scan(MailTarget(mail(sender="carol@example.net")))
    assert not clean.detected
    assert "not found; not run" in clean.detail
    await scanner.aclose()


async def test_sql_find_binds_parameters_never_builds_sql(tmp_path: Path) -> None:
    """A sender made of SQL finds nothing and harms nothing: it is a bound value."""
    url = make_table(tmp_path / "users.db", [("alice@example.net", "blocked")])
    scanner = sql_find("SELECT 1 FROM addresses WHERE address = :sender", const(1.0, "Blocked"), url=url)
    evil = "x' OR '1'='1@example.net"
    assert not (await scanner.scan(MailTarget(mail(sender=evil)))).detected
    evil_drop = "x'; DROP TABLE addresses; --@example.net"
    assert not (await scanner.scan(MailTarget(mail(sender=evil_drop)))).detected
    with sqlite3.connect(tmp_path / "users.db") as connection:
        assert connection.execute("SELECT count(*) FROM addresses").fetchone() == (1,)


async def test_sql_find_per_recipient_and_invert_for_unknown_users(tmp_path: Path) -> None:
    url = make_table(tmp_path / "users.db", [("bob@example.test", "user"), ("dan@example.test", "user")])
    unknown = sql_find(
        "SELECT count(*) FROM addresses WHERE address = :recipient", const(1.0, "User.Unknown"), url=url, invert=True
    )
    assert not (await unknown.scan(MailTarget(mail(recipients=("bob@example.test",))))).detected
    assert (await unknown.scan(MailTarget(mail(recipients=("eve@example.test",))))).detected  # count(*) = 0
    known = sql_find("SELECT 1 FROM addresses WHERE address = :recipient", const(1.0, "Known"), url=url)
    either = await known.scan(MailTarget(mail(recipients=("eve@example.test", "DAN@example.test"))))
    assert either.detected  # found for any recipient
    # at RCPT time (a policy request) it is the one recipient of the request
    target = PolicyTarget({"recipient": "eve@example.test", "sender": "a@example.net"})
    assert (await unknown.scan(target)).detected


async def test_sql_find_domain_parameters(tmp_path: Path) -> None:
    url = make_table(tmp_path / "d.db", [("example.net", "domain")])
    scanner = sql_find("SELECT 1 FROM addresses WHERE address = :sender_domain", const(1.0, "Domain"), url=url)
    assert (await scanner.scan(MailTarget(mail()))).detected


async def test_sql_find_uses_the_config_database(database: Database) -> None:
    scanner = sql_find("SELECT 1 WHERE :helo = 'mx.example.net'", const(1.0, "Helo.Known"))
    with pytest.raises(ScannerError, match="no database"):
        await scanner.scan(MailTarget(mail()))
    scanner.bind_settings(Settings(state_dir="/nonexistent", database=database))
    assert (await scanner.scan(MailTarget(mail()))).detected
    explicit = sql_find("SELECT 1 WHERE :client_address = '192.0.2.7'", const(1.0, "Client"), db=database)
    assert (await explicit.scan(MailTarget(mail()))).detected


async def test_sql_find_failing_database_tempfails_unless_recovered(tmp_path: Path) -> None:
    url = make_table(tmp_path / "users.db", [])
    missing = sql_find("SELECT 1 FROM no_such_table WHERE address = :sender", const(1.0, "X"), url=url)
    with pytest.raises(DatabaseError, match="no_such_table"):
        await missing.scan(MailTarget(mail()))
    decision = await Pipeline([missing]).evaluate(mail())
    assert decision.disposition is Disposition.TEMPFAIL
    assert decision.reply.code == 451
    assert not (await recover(missing).scan(MailTarget(mail()))).detected


async def test_sql_find_on_a_postgresql_of_your_own_is_bounded_by_busy_timeout(postgres: str) -> None:
    url = fresh_database(postgres)
    found = sql_find("SELECT 1 WHERE :sender_domain = 'example.net'", const(1.0, "Found"), url=url)
    assert (await found.scan(MailTarget(mail()))).detected
    slow = sql_find("SELECT 1 FROM pg_sleep(30) WHERE :sender <> ''", const(1.0, "X"), url=url, busy_timeout=0.2)
    with pytest.raises(DatabaseError, match="statement timeout"):
        await slow.scan(MailTarget(mail()))
    await found.aclose()
    await slow.aclose()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("DELETE FROM addresses WHERE address = :sender", "must be a SELECT"),
        ("UPDATE addresses SET kind = 'x'", "must be a SELECT"),
        ("SELECT 1 FROM addresses WHERE address = :subject", "unknown parameter"),
    ],
)
def test_sql_find_refuses_what_is_not_a_lookup(query: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        sql_find(query, const(1.0, "X"), url="sqlite:///x.db")


def test_sql_find_refuses_a_bad_url_and_two_databases(database: Database) -> None:
    with pytest.raises(ConfigError, match="bad URL"):
        sql_find("SELECT 1", const(1.0, "X"), url="::nonsense")
    with pytest.raises(ConfigError, match="not both"):
        sql_find("SELECT 1", const(1.0, "X"), url="sqlite:///x.db", db=database)
    with pytest.raises(ConfigError, match="not installed"):
        sql_find("SELECT 1", const(1.0, "X"), url="mysql+nosuchdriver://u@h/d")


# --------------------------------------------------------------------------- check_level


@pytest.mark.parametrize(
    ("level", "maximum", "inner", "detected"),
    [
        (0.6, None, 0.7, True),
        (0.6, None, 0.5, False),
        (0.6, 0.9, 0.95, False),
        (0.6, 0.9, 0.6, True),
        (2.0, None, 1.5, False),  # a detection below the threshold is cleaned
    ],
)
async def test_check_level_cuts_the_scale(level: float, maximum: float | None, inner: float, detected: bool) -> None:
    result = await check_level(level, const(inner, "Spam.Score"), maximum=maximum).scan(MailTarget(mail()))
    assert result.detected is detected
    assert result.name == ("Spam.Score" if detected else "")
    assert f"level {inner:.2f}" in result.detail


async def test_check_level_under_an_action() -> None:
    decision = await Pipeline([quarantine("spam", check_level(0.6, const(0.7, "Spam")))]).evaluate(mail())
    assert (decision.disposition, decision.quarantine) == (Disposition.QUARANTINE, ("spam",))
    below = await Pipeline([reject(check_level(0.8, const(0.7, "Spam")))]).evaluate(mail())
    assert below.disposition is Disposition.DELIVER


def test_check_level_refuses_an_empty_range() -> None:
    with pytest.raises(ConfigError, match="must be above level"):
        check_level(0.9, const(1.0, "x"), maximum=0.5)
