"""``mailsift track``: what happened to a message, from the command line.

Searches the per-message log (``log_sql`` in ``HOOKS``, table ``maillog`` in
``DATABASE``) by sender, recipient, Message-ID, queue id and time, and shows
each message's fate — delivered, rejected (by which scanner), dropped,
quarantined, released (by whom, when, to whom) — with ``--events`` its
timeline, with ``--json`` everything as JSON.  The queries are those of the
web pages (:mod:`mailsift.reporting.tracking`).

Exit status: 0 messages found, 1 none found, 2 a usage or config error,
3 the database could not be read.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from mailsift.cli.common import config_option, load_config, printable
from mailsift.errors import MailsiftError
from mailsift.reporting.tracking import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_OFFSET,
    StoryPage,
    TrackQuery,
    TrackQueryError,
    find_stories,
    format_time,
    parse_time,
)

TIME_HELP = "an age (2h, 7d, 2w), a date or a UTC date and time (2024-05-01, 2024-05-01T10:00)"


def _cut(text: str, width: int) -> str:
    text = printable(text)
    return text if len(text) <= width else text[: width - 1] + "…"


class TimeParam(click.ParamType[float, Any]):
    """A time for ``--since``/``--until`` (see :func:`mailsift.reporting.tracking.parse_time`)."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_time(str(value))
        except TrackQueryError as error:
            self.fail(str(error), param, ctx)


def _print_table(page: StoryPage, events: bool) -> None:
    rows = [("LOG-ID", "TIME (UTC)", "FATE", "VERDICT", "FROM", "TO", "QUEUE-ID", "NODE", "MESSAGE-ID", "SUBJECT")]
    for story in page.stories:
        recipients = ",".join(story.recipients) + (f",+{story.more_recipients}" if story.more_recipients else "")
        fate = story.fate
        released = [c for c in story.quarantine if c.released_by]
        if released:
            fate += f" (by {released[-1].released_by})"
        rows.append(
            (
                str(story.id),
                format_time(story.time),
                _cut(fate, 30),
                _cut(story.verdict, 40),
                _cut(story.sender or "<>", 30),
                _cut(recipients, 40),
                _cut(story.queue_id or "-", 20),
                _cut(story.node or "-", 16),
                _cut(story.message_id or "-", 40),
                _cut(story.subject, 50),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for number, row in enumerate(rows):
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
        if events and number > 0:
            for event in page.stories[number - 1].events():
                click.echo(f"    {format_time(event.time)}  {printable(event.text)}")


@click.command("track")
@config_option
@click.option("--sender", help="Envelope sender (exact, any case), @example.com for a domain, <> for bounces.")
@click.option("--recipient", help="Envelope recipient (exact, any case), or @example.com for a domain.")
@click.option("--message-id", help="The Message-ID header, with or without <>.")
@click.option("--queue-id", help="The MTA's queue id (as in its own log).")
@click.option("--node", help="Only messages taken by this node of the cluster (its NODE).")
@click.option("--since", type=TimeParam(), help=f"Logged at or after this: {TIME_HELP}.")
@click.option("--until", type=TimeParam(), help=f"Logged before this: {TIME_HELP}.")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_LIMIT),
    default=DEFAULT_LIMIT,
    show_default=True,
    help="At most this many messages, newest first.",
)
@click.option("--offset", type=click.IntRange(0, MAX_OFFSET), default=0, help="Skip this many (the next page).")
@click.option("--events", is_flag=True, help="Show each message's timeline (received, decided, quarantined, released).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the messages with their timelines.")
def track(
    config_path: str | None,
    sender: str | None,
    recipient: str | None,
    message_id: str | None,
    queue_id: str | None,
    since: float | None,
    until: float | None,
    limit: int,
    offset: int,
    node: str | None,
    events: bool,
    as_json: bool,
) -> None:
    """Find messages in the message log and show what happened to each.

    Needs log_sql() in HOOKS. Example: mailsift track --recipient bob@example.org --since 1d --events
    """
    try:
        query = TrackQuery(sender, recipient, message_id, queue_id, since, until, limit, offset, node)
    except TrackQueryError as error:
        raise click.UsageError(str(error)) from None
    config = load_config(config_path, database_for="where log_sql writes the message log")
    try:
        page = config.settings.require_database().call(find_stories, query)
    except MailsiftError as error:
        click.echo(f"mailsift: {error.message}", err=True)
        sys.exit(3)
    if as_json:
        data = {
            "messages": [story.as_dict() for story in page.stories],
            "offset": query.offset,
            "more": page.has_more,
            "next_offset": query.next_page().offset if page.has_more else None,
            "searched_at": format_time(time.time()) + "Z",
        }
        click.echo(json.dumps(data, ensure_ascii=False, indent=1))
    elif page.stories:
        _print_table(page, events)
    more = f"; more with --offset {query.next_page().offset}" if page.has_more else ""
    click.echo(f"{len(page.stories)} message(s){more}", err=True)
    sys.exit(0 if page.stories else 1)
