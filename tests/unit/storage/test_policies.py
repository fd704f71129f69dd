"""Per-domain/per-user policies (simscan's simcontrol): parsing, lookup order, scanners.

On a real SQLite database and a private PostgreSQL (the greylist tests' fixture).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from mailsift.core.pipeline import Pipeline
from mailsift.errors import ConfigError, DatabaseError
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Disposition, Result
from mailsift.scanners.actions import reject
from mailsift.scanners.base import MailTarget, Scanner, Target
from mailsift.scanners.engines.common import SpamResult
from mailsift.scanners.userpolicy import message_policy, policy_attach, policy_enabled, policy_spam_hits
from mailsift.settings import Settings
from mailsift.storage import db, migrations
from mailsift.storage.db import Database
from mailsift.storage.policies import (
    address_keys,
    delete_policy,
    import_simcontrol,
    list_policies,
    lookup_policy,
    parse_settings,
    parse_simcontrol,
    set_policy,
    user_policy_table,
)
from mailsift.storage.schema import metadata

README_EXAMPLE = """\
postmaster@example.com:clam=yes,spam=no,attach=.txt:.com
example.com:clam=no,spam=yes,attach=.mp3
:clam=yes,spam=yes,trophie=yes,spam_hits=20.1
"""


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    database = db.sqlite()
    database.configure(str(tmp_path))
    yield database
    database.dispose()


def load(database: Database, text: str, *, replace: bool = False) -> None:
    database.call(import_simcontrol, parse_simcontrol(text.splitlines()), 0.0, replace)


def lookup(database: Database, sender: str, *recipients: str) -> Any:
    return database.call(lookup_policy, sender, list(recipients))


def mail(sender: str = "alice@sender.test", *recipients: str, body: bytes = b"hello\r\n") -> Mail:
    envelope = Envelope(sender=sender, recipients=list(recipients or ["bob@example.org"]))
    return Mail(envelope, b"From: alice@sender.test\r\nSubject: t\r\n\r\n" + body)


class Probe(Scanner):
    """Counts its runs and returns a fixed result (to see whether a wrapper ran it)."""

    name = "probe"

    def __init__(self, result: Result | None = None) -> None:
        self.runs = 0
        self.result = result or Result(1.0, "Found", "probe")

    async def scan(self, target: Target) -> Result:
        self.runs += 1
        return self.result


# --------------------------------------------------------------------------- parsing


def test_simcontrol_readme_example_parses() -> None:
    entries = parse_simcontrol(["# comment", "", *README_EXAMPLE.splitlines()])
    assert [(e.key, e.settings, e.lineno) for e in entries] == [
        ("postmaster@example.com", {"clam": "yes", "spam": "no", "attach": ".txt:.com"}, 3),
        ("example.com", {"clam": "no", "spam": "yes", "attach": ".mp3"}, 4),
        ("", {"clam": "yes", "spam": "yes", "trophie": "yes", "spam_hits": "20.1"}, 5),
    ]


def test_settings_are_normalized() -> None:
    assert parse_settings(" Clam=YES, spam = no ,attach=.EXE:.scr:.exe") == {
        "clam": "yes",
        "spam": "no",
        "attach": ".exe:.scr",
    }
    assert parse_settings("spam_hits=7") == {"spam_hits": "7.0"}
    assert parse_settings("spamuser=bob,regex=foo") == {"spamuser": "bob", "regex": "foo"}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("example.com clam=yes", "line 2: expected key:settings"),
        ("example.com:clam=maybe", "line 2: bad value for clam"),
        ("example.com:spam_hits=lots", "line 2: bad spam_hits"),
        ("example.com:spam_hits=-1", "line 2: bad spam_hits"),
        ("example.com:spam_hits=inf", "line 2: bad spam_hits"),
        ("example.com:clam", "line 2: bad setting 'clam'"),
        ("example.com:attach=", "line 2: bad setting"),
        ("exa mple.com:clam=yes", "line 2: bad policy key"),
        ("a@b@c:clam=yes", "line 2: bad policy key"),
        ("x" * 5000 + ":clam=yes", "line 2: longer than"),
    ],
)
def test_bad_simcontrol_lines_name_the_line(line: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_simcontrol(["example.org:clam=yes", line])
    assert caught.value.message.startswith(reason), caught.value.message


def test_a_key_listed_twice_keeps_its_last_line() -> None:
    entries = parse_simcontrol(["example.com:clam=yes", "EXAMPLE.com:clam=no"])
    assert [(e.key, e.settings) for e in entries] == [("example.com", {"clam": "no"})]


def test_qmail_extensions_are_looked_up_part_by_part_in_simscans_order() -> None:
    # simscan's per_domain_email_lookup: the domain, then test@, test-list@, test-list-owner@
    assert address_keys("test-list-owner@test.ch") == [
        "test.ch",
        "test@test.ch",
        "test-list@test.ch",
        "test-list-owner@test.ch",
    ]
    assert address_keys("<Bob@Example.COM>") == ["example.com", "bob@example.com"]
    assert address_keys("") == []
    assert address_keys("postmaster") == []
    assert len(address_keys("a-" * 200 + "b@x.test")) == 1 + 32  # bounded


# --------------------------------------------------------------------------- lookups


def test_readme_precedence_address_over_domain_over_default(database: Database) -> None:
    load(database, README_EXAMPLE)
    # recipient postmaster@example.com: default, then example.com, then the address
    policy = lookup(database, "", "postmaster@example.com")
    assert (policy.enabled("clam"), policy.enabled("spam"), policy.enabled("trophie")) == (True, False, True)
    assert policy.attach == (".mp3", ".txt", ".com")  # attach lists add up (simscan's add_attach)
    assert policy.spam_hits == 20.1
    assert policy.matched == ("", "example.com", "postmaster@example.com")
    # another address of the domain: the domain's settings over the default
    policy = lookup(database, "", "bob@example.com")
    assert (policy.enabled("clam"), policy.enabled("spam"), policy.enabled("trophie")) == (False, True, True)
    assert policy.attach == (".mp3",)
    # elsewhere: the default
    policy = lookup(database, "", "carol@example.net")
    assert (policy.enabled("clam"), policy.enabled("spam"), policy.attach) == (True, True, ())


def test_without_any_entry_no_scans_are_done(database: Database) -> None:
    load(database, "example.com:clam=yes")
    policy = lookup(database, "alice@else.test", "bob@example.org")
    assert policy.matched == ()
    assert not policy.enabled("clam")
    assert not policy.enabled("spam")
    assert policy.enabled("clam", default=True)  # a scanner may choose otherwise
    assert policy.spam_hits is None


def test_sender_is_looked_up_first_then_the_recipient_overrides(database: Database) -> None:
    load(database, "sender.test:clam=no,spam=no,spam_hits=5\nexample.org:spam=yes")
    policy = lookup(database, "alice@sender.test", "bob@example.org")
    assert policy.matched == ("sender.test", "example.org")
    assert (policy.enabled("clam"), policy.enabled("spam"), policy.spam_hits) == (False, True, 5.0)
    # the sender's settings alone, when the recipient has none
    policy = lookup(database, "alice@sender.test", "bob@other.test")
    assert (policy.enabled("spam"), policy.spam_hits) == (False, 5.0)


def test_qmail_extension_lookups_longest_prefix_wins(database: Database) -> None:
    load(database, "test.ch:clam=yes,spam=yes\ntest@test.ch:clam=no\ntest-list@test.ch:clam=yes,spam=no")
    policy = lookup(database, "", "test-list-owner@test.ch")
    assert policy.matched == ("test.ch", "test@test.ch", "test-list@test.ch")
    assert (policy.enabled("clam"), policy.enabled("spam")) == (True, False)
    policy = lookup(database, "", "test-other@test.ch")
    assert policy.matched == ("test.ch", "test@test.ch")
    assert (policy.enabled("clam"), policy.enabled("spam")) == (False, True)
    policy = lookup(database, "", "TEST@Test.CH")
    assert policy.enabled("clam") is False


def test_several_recipients_strictest_policy_wins(database: Database) -> None:
    load(
        database,
        "a.test:clam=no,spam=yes,spam_hits=12,attach=.exe,spam_passthru=yes\n"
        "b.test:clam=yes,spam=no,spam_hits=8,attach=.scr,spam_passthru=yes\n"
        "c.test:clam=no,spam=no",
    )
    policy = lookup(database, "", "x@a.test", "y@b.test")
    assert (policy.enabled("clam"), policy.enabled("spam")) == (True, True)
    assert policy.spam_hits == 8.0
    assert set(policy.attach) == {".exe", ".scr"}
    assert policy.enabled("spam_passthru")  # both recipients pass spam through
    policy = lookup(database, "", "x@a.test", "z@c.test")
    assert not policy.enabled("spam_passthru")  # c.test does not: spam is not passed through for it
    assert policy.enabled("spam")
    assert not policy.enabled("clam")
    # the order of recipients does not matter (simscan's "last one wins" would)
    swapped = lookup(database, "", "z@c.test", "x@a.test")
    assert (swapped.settings, set(swapped.attach)) == (policy.settings, set(policy.attach))


def test_set_show_delete_and_replacing_import(database: Database) -> None:
    assert database.call(set_policy, "Example.COM", "clam=yes , spam=no", 1.0) == "clam=yes,spam=no"
    database.call(set_policy, "", "clam=no", 1.0)
    assert database.call(list_policies) == [("", "clam=no"), ("example.com", "clam=yes,spam=no")]
    assert database.call(list_policies, ["EXAMPLE.com"]) == [("example.com", "clam=yes,spam=no")]
    database.call(set_policy, "example.com", "spam=yes", 2.0)  # replaces, does not merge
    assert database.call(list_policies, ["example.com"]) == [("example.com", "spam=yes")]
    assert database.call(delete_policy, "example.com") is True
    assert database.call(delete_policy, "example.com") is False
    load(database, "new.test:clam=yes", replace=True)
    assert database.call(list_policies) == [("new.test", "clam=yes")]
    with pytest.raises(ConfigError):
        database.call(set_policy, "example.com", "clam=perhaps", 1.0)


def test_migration_builds_exactly_the_declared_policy_tables(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    with engine.begin() as connection:
        migrations.upgrade(connection)
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    mine = [d for d in differences if any(name in repr(d) for name in ("'user_policy'", "'listed'", "ix_listed"))]
    assert mine == []
    assert {"user_policy", "listed"} <= set(inspect(engine).get_table_names())
    assert {c["name"] for c in inspect(engine).get_columns("user_policy")} == {
        c.name for c in user_policy_table.columns
    }
    engine.dispose()


# --------------------------------------------------------------------------- scanners


async def test_policy_enabled_runs_its_scanner_only_when_the_policy_says_so(sqlite_db: Database) -> None:
    probe = Probe()
    scanner = policy_enabled("clam", probe, db=sqlite_db)
    load(sqlite_db, "example.org:clam=yes\nexample.net:clam=no")
    on = await scanner.scan(MailTarget(mail("a@s.test", "bob@example.org")))
    assert on.detected
    assert probe.runs == 1
    off = await scanner.scan(MailTarget(mail("a@s.test", "bob@example.net")))
    assert not off.detected
    assert probe.runs == 1
    assert "clam off by policy" in off.detail
    unset = await scanner.scan(MailTarget(mail("a@s.test", "bob@nowhere.test")))
    assert not unset.detected
    assert probe.runs == 1
    default_on = policy_enabled("clam", probe, default=True, db=sqlite_db)
    assert (await default_on.scan(MailTarget(mail("a@s.test", "bob@nowhere.test")))).detected
    assert probe.runs == 2


async def test_a_policy_change_applies_to_the_next_message(sqlite_db: Database) -> None:
    probe = Probe()
    pipeline = Pipeline([policy_enabled("spam", reject(probe), db=sqlite_db)])
    sqlite_db.call(set_policy, "example.org", "spam=no", 1.0)
    assert (await pipeline.evaluate(mail())).disposition is Disposition.DELIVER
    sqlite_db.call(set_policy, "example.org", "spam=yes", 2.0)
    assert (await pipeline.evaluate(mail())).disposition is Disposition.REJECT


async def test_one_lookup_per_message_shared_by_its_scanners(sqlite_db: Database) -> None:
    calls: list[str] = []
    real_run = sqlite_db.run

    async def counting_run(function: Any, *args: Any) -> Any:
        calls.append(function.__name__)
        return await real_run(function, *args)

    sqlite_db.run = counting_run  # type: ignore[method-assign]
    sqlite_db.call(set_policy, "", "clam=yes,spam=yes,attach=.exe", 1.0)
    scanners = [policy_enabled("clam", Probe(Result()), db=sqlite_db), policy_attach(db=sqlite_db)]
    scanners.append(policy_enabled("spam", Probe(Result()), db=sqlite_db))
    message = mail()
    await asyncio.gather(*(s.scan(MailTarget(message)) for s in scanners))
    assert calls == ["lookup_policy"]
    await policy_attach(db=sqlite_db).scan(MailTarget(mail()))  # another message: looked up again
    assert calls == ["lookup_policy", "lookup_policy"]


ATTACHED = (
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
    b"Content-Type: text/plain\r\n\r\nhi\r\n--XX\r\nContent-Type: application/octet-stream\r\n"
    b'Content-Disposition: attachment; filename="Song.MP3"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
    b"AAAA\r\n--XX--\r\n"
)


async def test_policy_attach_blocks_the_policys_endings(sqlite_db: Database) -> None:
    load(sqlite_db, README_EXAMPLE)
    scanner = policy_attach(db=sqlite_db)
    message = Mail(Envelope("a@s.test", ["bob@example.com"]), ATTACHED)
    result = await scanner.scan(MailTarget(message))
    assert result.detected
    assert result.name == "Policy.Attachment"
    assert "Song.MP3" in result.detail
    assert ".mp3" in result.detail
    other = Mail(Envelope("a@s.test", ["bob@example.net"]), ATTACHED)  # the default has no attach list
    assert not (await scanner.scan(MailTarget(other))).detected


class FakeSpam(Scanner):
    """A spam engine's result with a given score (the real spamd is in the live test)."""

    name = "fakespam"

    def __init__(self, score: float, required: float = 5.0) -> None:
        self.score, self.required = score, required

    async def scan(self, target: Target) -> Result:
        level = self.score / self.required
        return SpamResult(level, "Spam" if level >= 1 else "", self.name, "", (), self.score, self.required)


async def test_policy_spam_hits_replaces_the_engines_threshold(sqlite_db: Database) -> None:
    load(sqlite_db, "example.org:spam_hits=20.1\nexample.net:spam_hits=3")
    high = policy_spam_hits(FakeSpam(12.0), db=sqlite_db)
    result = await high.scan(MailTarget(mail("a@s.test", "bob@example.org")))
    assert not result.detected
    assert result.level == pytest.approx(12.0 / 20.1)
    assert isinstance(result, SpamResult)
    assert result.score == 12.0
    assert result.name == ""
    low = policy_spam_hits(FakeSpam(4.0), db=sqlite_db)
    result = await low.scan(MailTarget(mail("a@s.test", "bob@example.net")))
    assert result.detected
    assert result.name == "Spam"
    assert "spam_hits 3" in result.detail
    unset = await low.scan(MailTarget(mail("a@s.test", "bob@example.com")))
    assert unset.level == pytest.approx(4.0 / 5.0)  # the engine's own threshold
    not_spam = policy_spam_hits(Probe(), db=sqlite_db)  # no score: passed through unchanged
    assert (await not_spam.scan(MailTarget(mail("a@s.test", "bob@example.net")))).name == "Found"


async def test_default_database_comes_from_the_config(sqlite_db: Database, tmp_path: Path) -> None:
    """Without db= a scanner uses the DATABASE of the config that holds it, bound once that config is accepted."""
    scanner = policy_enabled("clam", Probe())
    with pytest.raises(ConfigError, match="no database"):
        await message_policy(MailTarget(mail()))
    with pytest.raises(ConfigError, match="no database"):
        await scanner.scan(MailTarget(mail()))  # not bound to a config yet
    scanner.bind_settings(Settings(state_dir=str(tmp_path), database=sqlite_db))
    sqlite_db.call(set_policy, "", "clam=yes", 1.0)
    assert (await scanner.scan(MailTarget(mail()))).detected


async def test_a_database_failure_tempfails_the_message(tmp_path: Path) -> None:
    broken = db.sqlite(str(tmp_path / "missing-dir" / "x.db"))
    broken.configure(str(tmp_path))
    scanner = policy_enabled("clam", Probe(), db=broken)
    with pytest.raises(DatabaseError):
        await scanner.scan(MailTarget(mail()))
    decision = await Pipeline([scanner]).evaluate(mail())
    assert decision.disposition is Disposition.TEMPFAIL
    assert decision.reply.code // 100 == 4


def test_constructor_arguments_are_checked() -> None:
    with pytest.raises(ConfigError):
        policy_enabled("Clam!", Probe())
    with pytest.raises(ConfigError):
        policy_enabled("clam", Probe(), db="db.sqlite")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        policy_attach(virname="")


async def test_spam_passthru_delivers_tagged_spam_for_its_domain(sqlite_db: Database) -> None:
    """simscan's --enable-spam-passthru per domain: spam delivered tagged there, rejected elsewhere;
    over the policy's spam_hits it is rejected all the same."""
    from mailsift.core.pipeline import Pipeline
    from mailsift.message.result import AddHeader, Disposition

    load(sqlite_db, ":spam=yes\nlenient.test:spam_passthru=yes\nstrict.test:spam_passthru=yes,spam_hits=8")
    scanners = [policy_enabled("spam", policy_spam_hits(FakeSpam(7.0), db=sqlite_db), db=sqlite_db)]
    lenient = await Pipeline(scanners).evaluate(mail("a@s.test", "bob@lenient.test"))
    assert lenient.disposition is Disposition.DELIVER
    assert AddHeader("X-Spam-Flag", "YES") in lenient.headers
    assert "spam_passthru (policy): delivered tagged" in lenient.result.detail
    elsewhere = await Pipeline(scanners).evaluate(mail("a@s.test", "bob@other.test"))
    assert elsewhere.disposition is Disposition.REJECT
    mixed = await Pipeline(scanners).evaluate(mail("a@s.test", "bob@lenient.test", "carol@other.test"))
    assert mixed.disposition is Disposition.REJECT  # passthru holds only when every recipient has it
    over_hits = [policy_spam_hits(FakeSpam(9.0), db=sqlite_db)]
    assert (await Pipeline(over_hits).evaluate(mail("a@s.test", "bob@strict.test"))).disposition is Disposition.REJECT
