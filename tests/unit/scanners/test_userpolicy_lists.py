"""White and black lists (SAGATOR's add_listed): matching, scopes, expiry, precedence, scanners.

Time is an injected clock; the database is a real SQLite file and a private PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailsift.core.pipeline import Pipeline
from mailsift.errors import ConfigError
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Disposition, Result
from mailsift.scanners.actions import reject
from mailsift.scanners.base import Scanner, Target
from mailsift.scanners.userpolicy import blacklisted, listed, whitelisted
from mailsift.storage import db
from mailsift.storage.db import Database
from mailsift.storage.policies import (
    Verdict,
    add_listed,
    list_entries,
    lookup_verdict,
    purge_listed,
    remove_listed,
)

NOW = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def add(database: Database, list_name: str, field: str, value: str, **options: Any) -> None:
    options.setdefault("now", NOW)
    database.call(lambda c: add_listed(c, list_name, field, value, **options))


def verdict(
    database: Database, sender: str = "spammer@bad.test", *recipients: str, client: str = "192.0.2.9", now: float = NOW
) -> Verdict:
    return database.call(lookup_verdict, sender, list(recipients or ["bob@example.org"]), client, now)


def mail(sender: str = "spammer@bad.test", *recipients: str, client: str = "192.0.2.9") -> Mail:
    envelope = Envelope(sender=sender, recipients=list(recipients or ["bob@example.org"]), client_address=client)
    return Mail(envelope, b"From: x@bad.test\r\nSubject: t\r\n\r\nbody\r\n")


class Detects(Scanner):
    """Always detects: stands for any content scanner that would reject."""

    name = "detects"

    def __init__(self) -> None:
        self.runs = 0

    async def scan(self, target: Target) -> Result:
        self.runs += 1
        return Result(1.0, "Found", self.name)


# --------------------------------------------------------------------------- matching


def test_sender_by_address_and_by_domain(database: Database) -> None:
    add(database, "black", "sender", "Spammer@Bad.TEST")
    assert verdict(database, "spammer@bad.test").list == "black"
    assert verdict(database, "<SPAMMER@bad.test>").list == "black"
    assert verdict(database, "other@bad.test").list == ""
    add(database, "black", "sender", "@worse.test")
    assert verdict(database, "anyone@worse.test").list == "black"
    assert verdict(database, "anyone@sub.worse.test").list == ""  # the domain itself, not its subdomains
    assert verdict(database, "").list == ""  # the null sender matches no sender entry


def test_recipient_entries(database: Database) -> None:
    add(database, "white", "recipient", "postmaster@example.org")  # global: always deliver to postmaster
    assert verdict(database, "x@bad.test", "postmaster@example.org").list == "white"
    assert verdict(database, "x@bad.test", "bob@example.org").list == ""


def test_client_by_address_and_network(database: Database) -> None:
    add(database, "black", "client", "198.51.100.0/24")
    add(database, "white", "client", "2001:db8::1")
    assert verdict(database, client="198.51.100.77").list == "black"
    assert verdict(database, client="[198.51.100.77]").list == "black"
    assert verdict(database, client="::ffff:198.51.100.77").list == "black"  # IPv4-mapped
    assert verdict(database, client="198.51.101.1").list == ""
    assert verdict(database, client="2001:db8::1").list == "white"
    assert verdict(database, client="").list == ""  # unknown client: in no network
    assert verdict(database, client="[UNAVAILABLE]").list == ""


def test_per_user_entries_apply_to_that_user_only(database: Database) -> None:
    add(database, "black", "sender", "spammer@bad.test", owner="bob@example.org")
    assert verdict(database, "spammer@bad.test", "bob@example.org").list == "black"
    assert verdict(database, "spammer@bad.test", "carol@example.org").list == ""
    add(database, "black", "sender", "bad.test", owner="example.org")  # a domain's own list
    assert verdict(database, "spammer@bad.test", "carol@example.org").list == "black"
    assert verdict(database, "spammer@bad.test", "dave@example.net").list == ""
    # a user's list covers its qmail extension addresses
    assert verdict(database, "spammer@bad.test", "bob-news@example.org").list == "black"


# --------------------------------------------------------------------------- precedence


def test_whitelist_beats_blacklist_in_the_same_scope(database: Database) -> None:
    add(database, "black", "client", "192.0.2.0/24")
    add(database, "white", "sender", "partner@bad.test")
    found = verdict(database, "partner@bad.test", client="192.0.2.9")
    assert found.list == "white"
    assert [e.value for e in found.entries] == ["partner@bad.test"]
    assert verdict(database, "other@bad.test", client="192.0.2.9").list == "black"


def test_a_users_entries_beat_global_ones(database: Database) -> None:
    add(database, "white", "sender", "bad.test")  # global whitelist
    add(database, "black", "sender", "spammer@bad.test", owner="bob@example.org")
    assert verdict(database, "spammer@bad.test", "bob@example.org").list == "black"
    assert verdict(database, "spammer@bad.test", "carol@example.org").list == "white"
    add(database, "black", "client", "192.0.2.0/24")  # global blacklist
    add(database, "white", "sender", "friend@bad.test", owner="carol@example.org")
    assert verdict(database, "friend@bad.test", "carol@example.org").list == "white"


def test_several_recipients_must_agree(database: Database) -> None:
    add(database, "black", "sender", "spammer@bad.test", owner="bob@example.org")
    assert verdict(database, "spammer@bad.test", "bob@example.org", "carol@example.org").list == ""
    add(database, "black", "sender", "spammer@bad.test", owner="carol@example.org")
    both = verdict(database, "spammer@bad.test", "bob@example.org", "carol@example.org")
    assert both.list == "black"
    assert sorted(e.owner for e in both.entries) == ["bob@example.org", "carol@example.org"]
    add(database, "white", "sender", "spammer@bad.test", owner="dave@example.org")
    assert verdict(database, "spammer@bad.test", "bob@example.org", "dave@example.org").list == ""


# --------------------------------------------------------------------------- expiry and maintenance


def test_entries_expire(database: Database) -> None:
    add(database, "black", "sender", "spammer@bad.test", expires=NOW + 3600)
    assert verdict(database, now=NOW + 3599).list == "black"
    assert verdict(database, now=NOW + 3600).list == ""
    assert len(database.call(list_entries)) == 1
    assert database.call(lambda c: list_entries(c, now=NOW + 3600)) == []
    add(database, "white", "sender", "kept@bad.test")  # never expires
    assert database.call(purge_listed, NOW + 3600) == 1
    assert [e.value for e in database.call(list_entries)] == ["kept@bad.test"]


def test_adding_again_renews_and_remove(database: Database) -> None:
    add(database, "black", "sender", "spammer@bad.test", expires=NOW + 10, comment="first")
    add(database, "black", "sender", "SPAMMER@bad.test", expires=None, comment="again", now=NOW + 5)
    [entry] = database.call(list_entries)
    assert (entry.expires, entry.comment, entry.created) == (None, "again", NOW + 5)
    assert verdict(database, now=NOW + 100).list == "black"
    assert database.call(lambda c: remove_listed(c, "black", "sender", "spammer@bad.test")) is True
    assert database.call(lambda c: remove_listed(c, "black", "sender", "spammer@bad.test")) is False
    assert verdict(database).list == ""


@pytest.mark.parametrize(
    ("list_name", "field", "value"),
    [
        ("grey", "sender", "a@b.test"),
        ("white", "helo", "a@b.test"),
        ("white", "client", "not-an-ip"),
        ("white", "client", "300.1.2.3"),
        ("white", "sender", ""),
        ("white", "sender", "a b@c.test"),
        ("white", "sender", "a@"),
    ],
)
def test_bad_entries_are_refused(tmp_path: Path, list_name: str, field: str, value: str) -> None:
    database = db.sqlite()
    database.configure(str(tmp_path))
    with pytest.raises(ConfigError):
        add(database, list_name, field, value)
    assert database.call(list_entries) == []
    database.dispose()


# --------------------------------------------------------------------------- scanners


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    database = db.sqlite()
    database.configure(str(tmp_path))
    yield database
    database.dispose()


async def test_listed_delivers_whitelisted_mail_unscanned_and_rejects_blacklisted(sqlite_db: Database) -> None:
    content = Detects()
    pipeline = Pipeline([listed(db=sqlite_db), reject(content)])
    add(sqlite_db, "white", "sender", "partner@good.test")
    add(sqlite_db, "black", "client", "203.0.113.0/24")
    white = await pipeline.evaluate(mail("partner@good.test", client="203.0.113.5"))
    assert white.disposition is Disposition.DELIVER
    assert white.result.name == "Whitelisted"
    assert content.runs == 0
    black = await pipeline.evaluate(mail("someone@good.test", client="203.0.113.5"))
    assert black.disposition is Disposition.REJECT
    assert black.reply.code == 550
    assert "Blacklisted" in black.reply.text
    assert content.runs == 0
    neither = await pipeline.evaluate(mail("someone@good.test", client="192.0.2.1"))
    assert neither.disposition is Disposition.REJECT
    assert neither.result.name == "Found"
    assert content.runs == 1


async def test_whitelisted_and_blacklisted_follow_the_same_verdict(sqlite_db: Database) -> None:
    clock = Clock()
    add(sqlite_db, "black", "client", "203.0.113.0/24")
    add(sqlite_db, "white", "sender", "partner@good.test", expires=NOW + 60)
    # blacklisted listed first: it does not reject the whitelisted partner
    pipeline = Pipeline(
        [blacklisted(db=sqlite_db, clock=clock, message="go away: %D"), whitelisted(db=sqlite_db, clock=clock)]
    )
    first = await pipeline.evaluate(mail("partner@good.test", client="203.0.113.5"))
    assert first.disposition is Disposition.DELIVER
    clock.now = NOW + 60  # the whitelist entry expired
    second = await pipeline.evaluate(mail("partner@good.test", client="203.0.113.5"))
    assert second.disposition is Disposition.REJECT
    assert "go away: blacklisted client 203.0.113.0/24 (global)" in second.reply.text


async def test_a_list_change_applies_to_the_next_message(sqlite_db: Database) -> None:
    pipeline = Pipeline([listed(db=sqlite_db)])
    assert (await pipeline.evaluate(mail())).disposition is Disposition.DELIVER
    assert (await pipeline.evaluate(mail())).result.level == 0.0
    add(sqlite_db, "black", "sender", "bad.test")
    assert (await pipeline.evaluate(mail())).disposition is Disposition.REJECT
