"""``mailsift stats``: the counters of the ``stats()`` hook as a table in the terminal.

Reads the config's ``DATABASE`` (``-c CONFIG``; the bundled config by default)::

    mailsift stats                      # last 24 hours, by verdict
    mailsift stats --since 7d --by scanner
    mailsift stats --by domain --domain example.com
    mailsift stats prune                # delete counters older than 400 days, the message log older
                                        # than MAILLOG_RETENTION (90d)..., once per cluster per day

Exit codes: 0 done (``prune``: also "already done" by another node), 2 bad input or a broken config,
3 the database failed.
"""

from __future__ import annotations

import time
from typing import Any

import click

from mailsift.cli import housekeeping, once
from mailsift.cli.common import Duration, config_option_with, fail, load_config
from mailsift.config import Config
from mailsift.durations import parse_duration
from mailsift.errors import ConfigError, DatabaseError, MailsiftError
from mailsift.reporting import counters
from mailsift.reporting.counters import GREYLIST_VERDICTS, MAIL_VERDICTS, Total, totals
from mailsift.storage import leases, sql
from mailsift.storage.db import Database
from mailsift.validators import escape_controls

CONFIG_HELP = "Config file whose DATABASE holds the counters. Default: as for every command (see -v)."


def _database(config_path: str | None) -> Database:
    database = load_config(config_path).settings.database
    if not isinstance(database, Database):
        fail("the config has no DATABASE", 2)
    return database


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover - the loop returns


def format_table(title: str, rows: list[Total]) -> list[str]:
    """Aligned columns: key, messages, recipients, bytes, scan time (total and mean), and a total line."""
    header = (title, "messages", "recipients", "bytes", "scan s", "mean ms")
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        mean = row.scan_seconds / row.messages * 1000 if row.messages else 0.0
        name = "/".join(part or "-" for part in row.key)
        spent = f"{row.scan_seconds:.2f}"
        lines.append((name, str(row.messages), str(row.recipients), human_bytes(row.bytes), spent, f"{mean:.1f}"))
    messages = sum(row.messages for row in rows)
    seconds = sum(row.scan_seconds for row in rows)
    lines.append(
        (
            "total",
            str(messages),
            str(sum(row.recipients for row in rows)),
            human_bytes(sum(row.bytes for row in rows)),
            f"{seconds:.2f}",
            f"{seconds / messages * 1000 if messages else 0.0:.1f}",
        )
    )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for number, line in enumerate(lines):
        numbers = zip(line[1:], widths[1:], strict=True)
        cells = [line[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in numbers]
        out.append("  ".join(cells).rstrip())
        if number == 0 or number == len(lines) - 2:
            out.append("  ".join("-" * width for width in widths))
    return out


@click.command("stats")
@config_option_with(CONFIG_HELP)
@click.option("--since", default="24h", show_default=True, help="How far back: 3600, 30m, 12h, 7d, 2w.")
@click.option(
    "--by",
    "group",
    type=click.Choice(["verdict", "scanner", "domain", "node"]),
    default="verdict",
    show_default=True,
    help="Group the counters by what was done, by the deciding scanner, or by recipient domain.",
)
@click.option("--domain", "domains", multiple=True, help="Only this recipient domain (repeatable).")
@click.option("--greylist", is_flag=True, help="Greylisting outcomes of smtpd_policy instead of messages.")
@click.option("--node", "nodes", multiple=True, help="Only what this node of the cluster counted (repeatable).")
def stats_command(
    config_path: str | None, since: str, group: str, domains: tuple[str, ...], greylist: bool, nodes: tuple[str, ...]
) -> None:
    """Print message counts, bytes and scan time from the statistics counters."""
    try:
        seconds = parse_duration(since)
    except ConfigError as error:
        fail(error.message, 2)
    verdicts = GREYLIST_VERDICTS if greylist else MAIL_VERDICTS
    database = _database(config_path)
    wanted = [domain.strip().lower() for domain in domains] or None
    try:
        rows = database.call(
            lambda connection: totals(
                connection,
                since=time.time() - seconds,
                group=(group,),
                domains=wanted,
                verdicts=verdicts,
                nodes=list(nodes) or None,
            )
        )
    except DatabaseError as error:
        fail(str(error), 3)
    finally:
        database.dispose()
    scope = f" for {', '.join(wanted)}" if wanted else ""
    scope += f" on {', '.join(nodes)}" if nodes else ""
    click.echo(f"{'greylisting' if greylist else 'messages'} in the last {since}{scope}, by {group}")
    for line in format_table(group, rows):
        click.echo(escape_controls(line))  # domains and scanner names come from mail


# --------------------------------------------------------------------------- stats prune

DEFAULT_RETENTION = "400d"
"""``stats prune``: counters are kept 400 days.  The web graphs reach back a month, but an admin
compares a month with the same month a year ago (``mailsift stats --since``), so a year and a
month is kept; the rows are five-minute sums, small beside the per-message log."""

DEFAULT_PRUNE_PERIOD = "1d"
"""``stats prune --every``: nodes sharing DATABASE prune once per day between them."""

LEASE_RETENTION = 400 * 86400.0
"""Leases of the scheduled jobs older than this are forgotten by ``stats prune`` (a lease only
answers "already done" within its own period, and no job runs less often than yearly)."""


def _prune(database: Database, now: float, older_than: float, config: Config) -> str:
    """Counters (in batches), the tables of :mod:`mailsift.cli.housekeeping`, old leases: what was deleted."""
    removed = sql.delete_in_batches(database.call, counters.prune, now - older_than)
    others = housekeeping.prune_tables(config, now).items()
    forgotten = database.call(leases.prune, now - LEASE_RETENTION)
    text = f"pruned {removed} counter row(s)" + "".join(f", {item}" for item in others)
    return text + (f", forgot {forgotten} old lease(s)" if forgotten else "")


@click.command("prune")
@config_option_with(CONFIG_HELP)
@click.option(
    "--older-than",
    type=Duration(),
    default=DEFAULT_RETENTION,
    show_default=True,
    help="Delete counters of intervals older than this (400d: a year and a month).",
)
@once.every_option(DEFAULT_PRUNE_PERIOD, "prune")
@once.force_option
def prune_command(config_path: str | None, older_than: float, every: float, force: bool) -> None:
    """Delete old statistics counters and the database's other old rows.

    \b
    * counters of intervals older than --older-than (400 days);
    * the per-message log (maillog: tracking, the digest) older than the
      config's MAILLOG_RETENTION (default 90d; None keeps it);
    * used release links claimed more than 90 days ago (no link is honoured
      that long; whitelist links are remembered: an admin's removal stands);
    * login throttling keys quiet for a day (or webq's login_window);
    * leases of the scheduled jobs older than 400 days.

    Deletes in batches of a few thousand rows, each its own transaction.
    quarantine expire prunes the same tables too, all but counters and leases.

    Once per cluster: of the nodes sharing DATABASE, the first in each period (--every)
    prunes; the others say who did ("already done by <node> at <time>") and exit 0."""
    parent = click.get_current_context().parent
    if config_path is None and parent is not None:  # ``mailsift stats -c CONFIG prune``
        config_path = parent.params.get("config_path")
    config = load_config(config_path)
    database = config.settings.database
    if not isinstance(database, Database):
        fail("the config has no DATABASE", 2)
    click.get_current_context().call_on_close(database.dispose)
    try:
        lease = once.take(config.settings, f"stats prune --older-than {int(older_than)}", every, force)
    except MailsiftError as error:
        fail(error.message, 3)
    if lease is None:
        return
    try:
        pruned = _prune(database, time.time(), older_than, config)
    except MailsiftError as error:
        once.give_back(config.settings, lease)
        fail(error.message, 3)
    click.echo(pruned)


def _table_unless_a_subcommand(**options: Any) -> None:
    if click.get_current_context().invoked_subcommand is None:
        assert stats_command.callback is not None
        stats_command.callback(**options)


stats_group = click.Group(
    "stats",
    commands=[prune_command],
    params=stats_command.params,  # the table's options: ``mailsift stats --since 7d`` as before
    callback=_table_unless_a_subcommand,
    invoke_without_command=True,
    help=(
        f"{stats_command.help}\n\n"
        "mailsift stats prune: delete counters older than 400 days, the message log older than "
        "MAILLOG_RETENTION (90d) and other old rows, once per cluster per day (see mailsift stats prune --help)."
    ),
)
"""``mailsift stats``: the table (:func:`stats_command`), or ``mailsift stats prune``."""
