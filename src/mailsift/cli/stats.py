"""``mailsift stats``: the counters of the ``stats()`` hook as a table in the terminal.

Reads the config's ``DATABASE`` (``-c CONFIG``; the bundled config by default)::

    mailsift stats                      # last 24 hours, by verdict
    mailsift stats --since 7d --by scanner
    mailsift stats --by domain --domain example.com

Exit codes: 0 done, 2 bad input or a broken config, 3 the database failed.
"""

from __future__ import annotations

import time

import click

from mailsift.cli.common import config_option_with, fail, load_config
from mailsift.durations import parse_duration
from mailsift.errors import ConfigError, DatabaseError
from mailsift.reporting.counters import GREYLIST_VERDICTS, MAIL_VERDICTS, Total, totals
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
