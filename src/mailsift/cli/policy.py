"""``mailsift policy`` (simscan's simcontrol, in the database) and ``mailsift lists`` (white/black lists).

Both work on the config's ``DATABASE`` (``-c CONFIG``; the bundled config by
default) while mailsift runs: the next message sees the change, nothing to
rebuild or restart (simscan needed ``simscanmk``).

Exit codes: 0 done, 1 nothing found (``delete``, ``show`` of a missing key),
2 bad input or a broken config (the message says which line or value), 3 the
database failed.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from mailsift.cli.common import config_option_with, fail, load_config, printable
from mailsift.durations import parse_duration
from mailsift.errors import ConfigError, DatabaseError
from mailsift.storage.db import Database
from mailsift.storage.policies import (
    FIELDS,
    LISTS,
    add_listed,
    delete_policy,
    import_simcontrol,
    list_entries,
    list_policies,
    lookup_policy,
    lookup_verdict,
    parse_simcontrol,
    purge_listed,
    remove_listed,
    set_policy,
)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

CONFIG_HELP = "Config file whose DATABASE holds the policies and lists. Default: as for every command (see -v)."
config_option = config_option_with(CONFIG_HELP)


def _database(config_path: str | None) -> Database:
    database = load_config(config_path).settings.database
    if not isinstance(database, Database):
        fail("the config has no DATABASE", 2)
    return database


def _run(config_path: str | None, function: Callable[..., T], *args: Any, **options: Any) -> T:
    """``function(connection, *args, **options)`` in one transaction on the config's database."""
    database = _database(config_path)
    try:
        return database.call(lambda connection: function(connection, *args, **options))
    except ConfigError as error:
        fail(error.message, 2)
    except DatabaseError as error:
        fail(str(error), 3)
    finally:
        database.dispose()


def _show_key(key: str) -> str:
    return key or "(default)"


# =========================================================================== policy


@click.group("policy")
def policy() -> None:
    """Per-domain and per-user policies (simscan's simcontrol): clam=yes,spam=no,attach=.exe,spam_hits=20.

    Keys are an address, a domain, or '' for the default.  For a message the
    default applies first, then the sender's and the recipient's domain and
    address (qmail extensions part by part: test@x, test-list@x,
    test-list-owner@x), each overriding what it sets.
    """


@policy.command("import")
@config_option
@click.option("--replace", is_flag=True, help="Delete every stored policy first (the file becomes the whole set).")
@click.argument("file", type=click.File("r", encoding="utf-8"))
def policy_import(config_path: str | None, replace: bool, file: Any) -> None:
    """Read a simcontrol FILE (key:settings lines, # comments) into the database, all or nothing."""
    try:
        entries = parse_simcontrol(file)
    except ConfigError as error:
        fail(f"{file.name}: {error.message}", 2)
    except UnicodeDecodeError as error:
        fail(f"{file.name}: not UTF-8 text ({error.reason})", 2)
    count = _run(config_path, import_simcontrol, entries, time.time(), replace)
    click.echo(f"imported {count} {'policy' if count == 1 else 'policies'} from {file.name}")


@policy.command("set")
@config_option
@click.argument("key")
@click.argument("settings")
def policy_set(config_path: str | None, key: str, settings: str) -> None:
    """Set KEY's policy to SETTINGS (replacing it): policy set example.com clam=yes,spam=no."""
    text = _run(config_path, set_policy, key, settings, time.time())
    click.echo(f"{key.strip().lower()}:{text}")


@policy.command("show")
@config_option
@click.argument("keys", nargs=-1)
def policy_show(config_path: str | None, keys: tuple[str, ...]) -> None:
    """Print the stored policies (all, or KEYS) as simcontrol lines."""
    rows = _run(config_path, list_policies, keys)
    for key, settings in rows:
        click.echo(f"{key}:{settings}")
    if keys and len(rows) < len(set(keys)):
        found = {key for key, _ in rows}
        missing = [k for k in keys if k.strip().lower() not in found]
        fail(f"no policy for {', '.join(_show_key(k) for k in missing)}", 1)


@policy.command("delete")
@config_option
@click.argument("key")
def policy_delete(config_path: str | None, key: str) -> None:
    """Delete KEY's policy ('' is the default)."""
    if not _run(config_path, delete_policy, key):
        fail(f"no policy for {_show_key(key)}", 1)
    click.echo(f"deleted {_show_key(key.strip().lower())}")


@policy.command("lookup")
@config_option
@click.argument("sender")
@click.argument("recipients", nargs=-1)
def policy_lookup(config_path: str | None, sender: str, recipients: tuple[str, ...]) -> None:
    """Print the policy a message from SENDER to RECIPIENTS gets ('' for the null sender)."""
    click.echo(_run(config_path, lookup_policy, sender, list(recipients)).describe())


# =========================================================================== lists


@click.group("lists")
def lists() -> None:
    """White and black lists (SAGATOR's add_listed) by sender, recipient or client address.

    Entries are global or belong to a user (--user an address or a domain) and
    may expire.  A user's entries beat its domain's, which beat global ones;
    within one of these, the whitelist beats the blacklist.
    """


_LIST = click.Choice(LISTS)
_FIELD = click.Choice(FIELDS)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@lists.command("add")
@config_option
@click.option("--user", "owner", default="", help="Owner: an address or a domain (default: global).")
@click.option("--expires", default=None, help="Expire after this long: 3600, 30m, 12h, 7d, 2w (default: never).")
@click.option("--comment", default="", help="A note shown by 'lists show'.")
@click.argument("list_name", metavar="white|black", type=_LIST)
@click.argument("field", metavar="sender|recipient|client", type=_FIELD)
@click.argument("value")
def lists_add(
    config_path: str | None, owner: str, expires: str | None, comment: str, list_name: str, field: str, value: str
) -> None:
    """Add VALUE (address, domain, or client IP/network) to a list, or renew it."""
    now = time.time()
    try:
        until = None if expires is None else now + parse_duration(expires)
    except ConfigError as error:
        fail(error.message, 2)
    entry = _run(config_path, add_listed, list_name, field, value, owner=owner, expires=until, comment=comment, now=now)
    scope = f"for {entry.owner}" if entry.owner else "global"
    click.echo(f"{entry.list}listed {entry.field} {entry.value} ({scope}, expires {_when(entry.expires)})")


@lists.command("delete")
@config_option
@click.option("--user", "owner", default="", help="Owner: an address or a domain (default: global).")
@click.argument("list_name", metavar="white|black", type=_LIST)
@click.argument("field", metavar="sender|recipient|client", type=_FIELD)
@click.argument("value")
def lists_delete(config_path: str | None, owner: str, list_name: str, field: str, value: str) -> None:
    """Remove an entry."""
    if not _run(config_path, remove_listed, list_name, field, value, owner=owner):
        fail(f"no such entry: {list_name} {field} {value}" + (f" of {owner}" if owner else " (global)"), 1)
    click.echo(f"deleted {list_name} {field} {value}")


@lists.command("show")
@config_option
@click.option("--user", "owner", default=None, help="Only this owner's entries ('' for the global ones).")
@click.option("--expired", is_flag=True, help="Include expired entries.")
def lists_show(config_path: str | None, owner: str | None, expired: bool) -> None:
    """Print entries: owner, list, field, value, expiry, comment (tab-separated)."""
    for entry in _run(config_path, list_entries, owner=owner, now=None if expired else time.time()):
        fields = (entry.owner or "*", entry.list, entry.field, entry.value, _when(entry.expires), entry.comment)
        click.echo("\t".join(printable(field) for field in fields))  # values may come from mail (web whitelisting)


@lists.command("purge")
@config_option
def lists_purge(config_path: str | None) -> None:
    """Delete expired entries."""
    click.echo(f"purged {_run(config_path, purge_listed, time.time())} expired entries")


@lists.command("check")
@config_option
@click.option("--sender", default="", help="Envelope sender.")
@click.option("--recipient", "recipients", multiple=True, help="Envelope recipient (repeatable).")
@click.option("--client", default="", help="Client IP address.")
def lists_check(config_path: str | None, sender: str, recipients: tuple[str, ...], client: str) -> None:
    """Print what the lists say about a message: white, black or not listed, and why."""
    verdict = _run(config_path, lookup_verdict, sender, list(recipients), client, time.time())
    click.echo(f"{verdict.list}listed: {verdict.describe()}" if verdict.list else "not listed")
