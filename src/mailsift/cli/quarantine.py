"""``mailsift quarantine list|show|release|delete|expire|reindex|migrate``: the quarantine, by hand.

SAGATOR's ``sqback`` (send a badly quarantined mail on) and its tmpwatch
cron line, qmail-scanner's ``-z`` cleanup, with the index in the database
(``DATABASE``) so that any gateway sharing the database and the store
(``STATE_DIR/quarantine``, e.g. a shared mount) can list and release what
another one quarantined.

The operations themselves (release to ``--next-hop``, by default
``SMTP_SERVER``, else the next hop the services share, e.g. the bundled
config's ``local_maildir('mail')``; reindex; delete; expire) are :mod:`mailsift.storage.quarantine.admin`'s,
shared with the web quarantine and the digest links.

Exit status: 0 done, 1 a message could not be found, released or deleted
(including one released meanwhile by another gateway, admin or click: "released
already by X"), 2 a usage or config error, 3 (``release``) another release of a
message holds its claim right now ("already being released by X"): nothing was
sent; a claim its sender never finished (a crash) is taken over after 10 minutes.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import click

from mailsift.cli import housekeeping, once
from mailsift.cli.common import Duration, config_option, load_config, printable, printable_lines
from mailsift.config import Config
from mailsift.core import poison as poison_counts
from mailsift.errors import ConfigError, MailsiftError, StorageError
from mailsift.message.address import address_problem
from mailsift.message.mail import remove_stale_spool
from mailsift.reporting.logline import EscapingFormatter
from mailsift.reporting.verdicts import human_verdict
from mailsift.storage.quarantine.admin import (
    QuarantineProblem,
    ReleaseInProgress,
    delete,
    expire,
    reindex,
    release,
)
from mailsift.storage.quarantine.dbstore import in_database, store_of
from mailsift.storage.quarantine.index import (
    HELD,
    STATES,
    QuarantineEntry,
    QuarantineFilter,
    find_entries,
    get_entry,
)
from mailsift.storage.quarantine.migrate import DIRECTIONS, migrate
from mailsift.storage.quarantine.store import CATEGORIES, locate

log = logging.getLogger("mailsift.quarantine")

_C1 = re.compile("[\x7f-\x9f]")
"""Left raw by ``json.dumps(ensure_ascii=False)`` (it escapes C0): escaped for the terminal too."""

DEFAULT_EXPIRY = "14d"
"""qmail-scanner's ``-z`` removes quarantined mail older than 14 days."""

DEFAULT_EXPIRY_PERIOD = "1h"
"""``quarantine expire --every``: nodes sharing DATABASE expire once per hour between them."""


def parse_next_hop(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6 address]:port`` → ``(host, port)``."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not host:port", param_hint="--next-hop")
    return host, int(port)


def invoking_user() -> str:
    """Who runs the command: the user behind sudo, else the login name."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def _database_failed(error: MailsiftError) -> NoReturn:
    click.echo(f"mailsift: {error.message}", err=True)
    sys.exit(1)


# ---------------------------------------------------------------- the commands


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def _cut(text: str, width: int) -> str:
    text = printable(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def _json_entry(entry: QuarantineEntry) -> dict[str, Any]:
    data = entry.as_dict()
    data["released_to"] = json.loads(entry.released_to) if entry.released_to else None
    data["time"] = _when(entry.created) + "Z"
    return data


def _entries(config: Config, ids: Sequence[str]) -> tuple[list[QuarantineEntry], list[str]]:
    """The rows for ``ids`` and the ids not found."""
    try:
        found = config.settings.require_database().call(find_entries, QuarantineFilter(ids=list(ids)), time.time())
    except MailsiftError as error:
        _database_failed(error)
    by_id = {entry.id: entry for entry in found}
    return [by_id[i] for i in dict.fromkeys(ids) if i in by_id], [i for i in ids if i not in by_id]


@click.group("quarantine")
def quarantine_group() -> None:
    """List, show, release, delete and expire quarantined mail (any gateway sharing DATABASE).

    Quarantined mail lives in STATE_DIR/quarantine/<category>/ (maildir), one
    file per message, indexed in the config's DATABASE.
    """


@quarantine_group.command("list")
@config_option
@click.option("--recipient", help="An envelope recipient (exact, any case), or a domain as @example.com.")
@click.option("--sender", help="The envelope sender (exact, any case), or a domain as @example.com.")
@click.option("--category", help=f"A quarantine folder: {', '.join(CATEGORIES)}, or another configured one.")
@click.option("--state", type=click.Choice(STATES), help="Only held or only released messages.")
@click.option("--older-than", type=Duration(), help="Quarantined longer ago than this (7d, 12h, 30m, 2w).")
@click.option("--newer-than", type=Duration(), help="Quarantined within this time (7d, 12h, 30m, 2w).")
@click.option("--limit", type=click.IntRange(0), default=0, help="At most this many, newest first (0: all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of objects instead of a table.")
def list_command(
    config_path: str | None,
    recipient: str | None,
    sender: str | None,
    category: str | None,
    state: str | None,
    older_than: float | None,
    newer_than: float | None,
    limit: int,
    as_json: bool,
) -> None:
    """List quarantined messages, newest first."""
    config = load_config(config_path, database_for="the quarantine index")
    selection = QuarantineFilter(recipient, sender, category, state, older_than, newer_than, limit or None)
    try:
        entries = config.settings.require_database().call(find_entries, selection, time.time())
    except MailsiftError as error:
        _database_failed(error)
    if as_json:
        click.echo(
            _C1.sub(
                lambda m: f"\\u{ord(m.group()):04x}",
                json.dumps([_json_entry(e) for e in entries], ensure_ascii=False, indent=1),
            )
        )
        return
    rows = [("ID", "TIME (UTC)", "CATEGORY", "VERDICT", "FROM", "TO", "SIZE", "STATE", "SUBJECT")]
    for e in entries:
        # as the web shows it ("Virus: Eicar-Test-Signature"); the scanner and level: `show`, --json
        verdict = human_verdict(e.category, e.name, e.scanner, e.level)
        recipients = ",".join(e.recipients)
        rows.append(
            (
                printable(e.id),
                _when(e.created),
                printable(e.category),
                _cut(verdict, 40),
                _cut(e.sender or "<>", 30),
                _cut(recipients, 40),
                str(e.size),
                printable(e.state),
                _cut(e.subject, 50),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    click.echo(f"{len(entries)} message(s)", err=True)


@quarantine_group.command("show")
@config_option
@click.argument("entry_id", metavar="ID")
@click.option("--raw", is_flag=True, help="Print the original message as received (without mailsift's head).")
def show_command(config_path: str | None, entry_id: str, raw: bool) -> None:
    """Show one message: its verdict, envelope and headers (or --raw, the whole message)."""
    config = load_config(config_path, database_for="the quarantine index")
    try:
        entry = config.settings.require_database().call(get_entry, entry_id)
    except MailsiftError as error:
        _database_failed(error)
    if entry is None:
        click.echo(f"mailsift: no quarantined message {entry_id}", err=True)
        sys.exit(1)
    store = store_of(config.settings, entry)
    where = _where(config, entry)
    if raw:
        try:
            for chunk in store.chunks(entry):
                sys.stdout.buffer.write(chunk)
        except StorageError as error:  # missing, damaged (DamagedFile) or unreadable
            sys.stdout.flush()
            click.echo(f"mailsift: {entry.id}: cannot read {where or entry.path}: {error}", err=True)
            sys.exit(1)
        sys.stdout.flush()
        return
    try:
        header_block = _header_block(store.chunks(entry))
    except StorageError as error:
        if where is None:  # a file gone: the row is still shown (reindex tells it is missing)
            header_block = b""
        else:
            click.echo(f"mailsift: {entry.id}: cannot read {where}: {error}", err=True)
            sys.exit(1)
    released = "-"
    if entry.released_at is not None:
        to = ",".join(f"<{r}>" for r in json.loads(entry.released_to or "[]"))
        released = f"{_when(entry.released_at)} UTC by {entry.released_by} to {to}"
    for label, value in (
        ("Id", entry.id),
        ("Time", f"{_when(entry.created)} UTC"),
        ("Category", entry.category),
        ("Verdict", f"level={entry.level:.2f} name={entry.name or '-'} scanner={entry.scanner or '-'}"),
        ("Client", entry.client),
        ("Queue-Id", entry.queue_id or "-"),
        ("Sender", f"<{entry.sender}>"),
        ("Recipients", ", ".join(f"<{r}>" for r in entry.recipients)),
        ("Size", str(entry.size)),
        ("Subject", entry.subject),
        ("State", entry.state),
        ("Released", released),
        ("File", where or f"{entry.path} (missing)"),
    ):
        click.echo(f"{label + ':':<12}{printable(str(value))}")  # mail-derived: no escape sequences
    click.echo("")
    click.echo(printable_lines(header_block.decode("utf-8", "replace").replace("\r\n", "\n")))


def _where(config: Config, entry: QuarantineEntry) -> str | None:
    """Where ``entry``'s message is: its file, "the database", or None (a file gone)."""
    if in_database(entry):
        return "the database"
    return locate(config.settings.quarantine_dir, entry)


def _header_block(chunks: Iterator[bytes]) -> bytes:
    """The original message's header block: chunks read only until its blank line."""
    data = b""
    for chunk in chunks:
        data += chunk
        if b"\r\n\r\n" in data or b"\n\n" in data:
            break
    return data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]


def _addresses(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    """``--to`` values: each one an address that can go into RCPT TO (no CR/LF, controls, brackets)."""
    for value in values:
        problem = address_problem(value)
        if problem:
            raise click.BadParameter(f"{value!r}: {problem}")
    return values


@quarantine_group.command("release")
@config_option
@click.argument("entry_ids", metavar="ID...", nargs=-1, required=True)
@click.option(
    "--to", "recipients", multiple=True, callback=_addresses, help="Send to this address instead (repeatable)."
)
@click.option(
    "--next-hop",
    help="host:port to reinject to. Default: the config's SMTP_SERVER, else the services' own next hop "
    "(e.g. the bundled config's local Maildir).",
)
@click.option("--by", default=None, help="Who releases (recorded and logged). Default: the login name.")
@click.option("--force", is_flag=True, help="Release again a message already released.")
def release_command(
    config_path: str | None,
    entry_ids: tuple[str, ...],
    recipients: tuple[str, ...],
    next_hop: str | None,
    by: str | None,
    force: bool,
) -> None:
    """Send quarantined messages on to their recipients (SAGATOR's sqback) and record who did."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter("%(name)s: %(message)s"))  # one line per record, no escape sequences
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    config = load_config(config_path, database_for="the quarantine index")
    hop = parse_next_hop(next_hop) if next_hop else None
    who = by or invoking_user()
    entries, missing = _entries(config, entry_ids)
    status = 0
    for entry_id in missing:
        click.echo(f"mailsift: no quarantined message {entry_id}", err=True)
        status = 1
    for entry in entries:
        if entry.state != HELD and not force:
            click.echo(
                f"mailsift: {entry.id} was released already ({_when(entry.released_at)} UTC by "
                f"{entry.released_by}); --force sends it again",
                err=True,
            )
            status = max(status, 1)
            continue
        try:
            note = asyncio.run(
                release(config.settings, entry, recipients=recipients, next_hop=hop, by=who, again=force)
            )
        except ReleaseInProgress as error:  # another gateway, admin or click has it: nothing sent
            click.echo(f"mailsift: {error}", err=True)
            status = max(status, 3)
            continue
        except QuarantineProblem as error:
            click.echo(f"mailsift: {error}", err=True)
            status = max(status, 1)
            continue
        except ConfigError as error:
            click.echo(f"mailsift: {error.message}", err=True)
            sys.exit(2)
        except MailsiftError as error:
            click.echo(f"mailsift: {entry.id}: not released: {error.message}", err=True)
            status = max(status, 1)
            continue
        click.echo(f"{entry.id}: released by {who}: {note}")
    sys.exit(status)


@quarantine_group.command("delete")
@config_option
@click.argument("entry_ids", metavar="ID...", nargs=-1, required=True)
def delete_command(config_path: str | None, entry_ids: tuple[str, ...]) -> None:
    """Delete quarantined messages (row and file)."""
    config = load_config(config_path, database_for="the quarantine index")
    entries, missing = _entries(config, entry_ids)
    for entry_id in missing:
        click.echo(f"mailsift: no quarantined message {entry_id}", err=True)
    for entry in entries:
        try:
            delete(config.settings, entry)
        except MailsiftError as error:
            _database_failed(error)
        except OSError as error:
            click.echo(f"mailsift: {entry.id}: row deleted, file not: {error}", err=True)
            sys.exit(1)
        click.echo(f"{entry.id}: deleted")
    sys.exit(1 if missing else 0)


@quarantine_group.command("expire")
@config_option
@click.option(
    "--older-than",
    type=Duration(),
    default=DEFAULT_EXPIRY,
    show_default=True,
    help="Delete messages quarantined longer ago than this (qmail-scanner -z: 14 days).",
)
@click.option("--category", help="Only this quarantine folder.")
@once.every_option(DEFAULT_EXPIRY_PERIOD, "expire")
@once.force_option
def expire_command(config_path: str | None, older_than: float, category: str | None, every: float, force: bool) -> None:
    """Delete old quarantined mail (after adopting unindexed files, see reindex); also forget poison-mail
    counts idle past POISON's expire, delete the message log older than MAILLOG_RETENTION (90d), used
    release links past their 90 days and quiet login throttling keys (as stats prune does), and remove
    spool files left by workers that no longer run.

    Once per cluster: of the nodes sharing DATABASE, the first in each period (--every) expires;
    the others say who did ("already done by <node> at <time>") and only clean their own spool."""
    config = load_config(config_path, database_for="the quarantine index")
    name = f"quarantine expire --older-than {int(older_than)}" + (f" --category {category}" if category else "")
    try:
        lease = once.take(config.settings, name, every, force)
    except MailsiftError as error:
        _database_failed(error)
    if lease is not None:
        try:
            count = expire(config.settings, older_than, category=category)
            counts = _purge_poison_counts(config)
            pruned = housekeeping.prune_tables(config, time.time()).items()
        except MailsiftError as error:
            once.give_back(config.settings, lease)
            _database_failed(error)
        click.echo(f"expired {count} message(s)")
        if counts:
            click.echo(f"purged {counts} poison-mail attempt count(s)")
        if pruned:
            click.echo(f"pruned {', '.join(pruned)}")
    # Spool files of workers killed inside a transaction (a running worker's own are kept).
    spooled = remove_stale_spool(config.settings.spool_dir)
    if spooled:
        click.echo(f"removed {len(spooled)} stale spool file(s)")


def _purge_poison_counts(config: Config) -> int:
    """Forget the poison-mail attempt counts idle past ``POISON``'s ``expire`` (none without POISON)."""
    watch = config.settings.poison
    database = config.settings.database
    if watch is None or database is None:
        return 0
    before = time.time() - watch.expire
    return database.call(lambda connection: poison_counts.purge(connection, before))


@quarantine_group.command("reindex")
@config_option
def reindex_command(config_path: str | None) -> None:
    """Index stored files that have no row (left by a crash between the file and its row)."""
    config = load_config(config_path, database_for="the quarantine index")
    try:
        found = reindex(config.settings)
    except MailsiftError as error:
        _database_failed(error)
    for entry_id in found.adopted:
        click.echo(f"adopted {entry_id}")
    for problem in found.damaged:
        click.echo(f"mailsift: not a quarantine file: {problem}", err=True)
    for entry_id in found.dangling:
        click.echo(f"mailsift: {entry_id}: indexed, but its file is missing", err=True)
    click.echo(
        f"reindexed: {len(found.adopted)} adopted, {len(found.damaged)} unreadable, {len(found.dangling)} missing"
    )


@quarantine_group.command("migrate")
@config_option
@click.option(
    "--to",
    "to",
    type=click.Choice(DIRECTIONS),
    required=True,
    help="database: move the files of STATE_DIR/quarantine into DATABASE; files: back into STATE_DIR/quarantine.",
)
@click.option("--verbose", "-v", is_flag=True, help="One line per message moved.")
def migrate_command(config_path: str | None, to: str, verbose: bool) -> None:
    """Move the quarantined messages into the database or back into files, entry by entry.

    Each message is streamed (bounded memory) and switched in one transaction; a run
    stopped midway (a crash, ^C) loses nothing, and running it again finishes the job.
    Set QUARANTINE_STORE to match, so that new mail goes to the same store.
    Exit status 1 if a message could not be moved (it stays where it was)."""
    config = load_config(config_path, database_for="the quarantine")
    try:
        done = migrate(config.settings, to, report=click.echo if verbose else lambda line: None)
    except MailsiftError as error:
        _database_failed(error)
    for problem in done.failed:
        click.echo(f"mailsift: not moved: {printable(problem)}", err=True)
    click.echo(
        f"migrated to the {to}: {done.moved} moved, {done.already} already there, "
        f"{done.cleaned} leftover file(s) removed, {len(done.failed)} failed"
    )
    if config.settings.quarantine_store != to:
        click.echo(
            f"mailsift: QUARANTINE_STORE is {config.settings.quarantine_store!r}: new mail still goes there", err=True
        )
    sys.exit(1 if done.failed else 0)
