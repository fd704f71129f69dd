"""Message tracking: what happened to a message, from the log, the quarantine index and its releases.

An admin asks "where is the mail from alice to bob of yesterday?".  The
answer is a :class:`Story` per message, built from three records mailsift
already keeps:

* the per-message log (``maillog``, written by the ``log_sql`` hook), one row
  per recipient: envelope, Message-ID, queue id, the verdict (status, action,
  reply, scanner, name, level) and the quarantine copies it made;
* the quarantine index (``quarantine``): where each copy went, whether it is
  still held, or released — when, by whom, to which addresses;
* nothing else: the MTA's own log is found through the queue id shown.

Every node of a cluster logs into the same table, so a search on any node
finds the mail of all of them; each story names the node that took the message
(``maillog.node``; ``''`` for rows logged before revision 0014_node), and
``node=`` narrows a search to one node.

The rows of one log record share their time, queue id, Message-ID, sender and
status; that is how a story is put together again (:func:`find_stories`).  A
log row names its quarantine copies by file path (or id); the quarantine id is
in the file name, so the join is by quarantine id, exact and indexed.
Searches by Message-ID and queue id use the log's ``ix_maillog_message_id``
and ``ix_maillog_queue_id`` (declared with the table in
:mod:`mailsift.storage.schema`, built by migration 0008).

Every query is bounded: a page holds at most :data:`MAX_LIMIT` stories, paging
goes at most :data:`MAX_OFFSET` stories deep, a story lists at most
:data:`MAX_RECIPIENTS` recipients, and search text is at most
:data:`MAX_TEXT` characters.  Bad input raises :class:`TrackQueryError` (a
ValueError), which front ends show as a message, never as a crash.

Functions taking a ``Connection`` are meant for
:meth:`mailsift.storage.db.Database.call` (one transaction) or ``run`` (in a thread).
"""

from __future__ import annotations

import datetime
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.engine import Connection, Row

from mailsift.durations import seconds
from mailsift.errors import RequestRefused
from mailsift.storage.quarantine.index import RELEASED, QuarantineEntry, QuarantineFilter, find_entries
from mailsift.storage.schema import maillog_table

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
"""Stories on one page at most."""
MAX_OFFSET = 10_000
"""How deep paging may go (stories skipped); narrow the search to see older ones."""
MAX_RECIPIENTS = 1000
"""Recipients listed per story at most (the rest are counted)."""
MAX_TEXT = 998
"""Longest search text accepted (RFC 5322's line limit; no address or Message-ID is longer)."""

# Fates: the one word an admin reads first.
DELIVERED = "delivered"
REJECTED = "rejected"
QUARANTINED = "quarantined"
RELEASED_FATE = "released"
DROPPED = "dropped"
TEMPFAILED = "tempfailed"
REFUSED = "refused"
FATES = (DELIVERED, REJECTED, QUARANTINED, RELEASED_FATE, DROPPED, TEMPFAILED, REFUSED)

GONE = "gone"
"""State of a quarantine copy whose index row no longer exists (deleted or expired)."""

_QUARANTINE_ID = re.compile(r"(?<![0-9A-Za-z])(\d{8}T\d{6}-[0-9a-f]{8})(?![0-9A-Za-z])")


class TrackQueryError(RequestRefused, ValueError):
    """A search that cannot be run as given (bad time, too long, limit out of range)."""


# --------------------------------------------------------------------------- the question


@dataclass(frozen=True)
class TrackQuery:
    """What to look for; every field set must match.

    ``sender`` and ``recipient`` match an address exactly, ignoring case, or a
    whole domain given as ``@example.com``; ``<>`` is the null sender.
    ``message_id`` matches with or without its angle brackets, ``queue_id``
    exactly.  ``since``/``until`` are Unix seconds (``since <= time < until``).
    Stories come newest first, ``limit`` per page, after skipping ``offset``.
    """

    sender: str | None = None
    recipient: str | None = None
    message_id: str | None = None
    queue_id: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    node: str | None = None
    """The node that took the message, exactly (None: every node)."""

    def __post_init__(self) -> None:
        for name in ("sender", "recipient", "message_id", "queue_id", "node"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise TrackQueryError(f"{name}: text expected")
            value = value.strip()
            if len(value) > MAX_TEXT:
                raise TrackQueryError(f"{name}: longer than {MAX_TEXT} characters")
            if "\0" in value:
                raise TrackQueryError(f"{name}: contains a NUL character")
            object.__setattr__(self, name, value or None)
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or not 1 <= self.limit <= MAX_LIMIT:
            raise TrackQueryError(f"limit: a whole number from 1 to {MAX_LIMIT}")
        if isinstance(self.offset, bool) or not isinstance(self.offset, int) or not 0 <= self.offset <= MAX_OFFSET:
            raise TrackQueryError(f"cannot page deeper than {MAX_OFFSET} messages: narrow the search")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value != value):
                raise TrackQueryError(f"{name}: a time is expected")
        if self.since is not None and self.until is not None and self.since > self.until:
            raise TrackQueryError("since: later than until")

    def next_page(self) -> TrackQuery:
        return replace(self, offset=self.offset + self.limit)

    def previous_page(self) -> TrackQuery:
        return replace(self, offset=max(0, self.offset - self.limit))


def parse_time(text: str, now: float | None = None) -> float:
    """A point in time as Unix seconds: an age (``2h``, ``7d``, ``30m``, ``2w``: that long
    before ``now``), an ISO 8601 date or date and time (``2024-05-01``, ``2024-05-01T10:00``,
    ``2024-05-01 10:00:00+02:00``; UTC when no offset is given), or Unix seconds.

    Raises :class:`TrackQueryError` for anything else.
    """
    text = text.strip()
    if not text or len(text) > 64:
        raise TrackQueryError(f"{text[:64]!r} is not a time like 2h, 7d, 2024-05-01 or 2024-05-01T10:00")
    age = seconds(text, bare=False)
    if age is not None:
        return (time.time() if now is None else now) - age
    if re.fullmatch(r"\d{9,11}(?:\.\d+)?", text):
        return float(text)
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise TrackQueryError(f"{text!r} is not a time like 2h, 7d, 2024-05-01 or 2024-05-01T10:00") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def format_time(seconds: float | None) -> str:
    """``2024-05-01 10:00:00`` in UTC (``-`` for none), the form the CLI and the pages show."""
    if seconds is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


# --------------------------------------------------------------------------- the answer


@dataclass(frozen=True)
class TrackedCopy:
    """One quarantine copy a message got, as the index knows it now."""

    id: str
    state: str
    """``held``, ``released``, or :data:`GONE` (no longer in the index)."""
    category: str = ""
    released_at: float | None = None
    released_by: str | None = None
    released_to: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "category": self.category,
            "released_at": None if self.released_at is None else _iso(self.released_at),
            "released_by": self.released_by,
            "released_to": list(self.released_to),
        }


@dataclass(frozen=True)
class Event:
    """One line of a story's timeline."""

    time: float
    text: str


@dataclass(frozen=True)
class Story:
    """What happened to one message (one log record: all its recipients, or one LMTP group)."""

    id: int
    """The first log row of the message: the reference for :func:`get_story`."""
    time: float
    queue_id: str
    message_id: str
    sender: str
    subject: str
    size: int
    client_address: str
    client_name: str
    helo: str
    status: str
    action: str
    reply: str
    level: float
    name: str
    scanner: str
    note: str
    elapsed: float
    spam_score: float | None
    spam_required: float | None
    recipients: tuple[str, ...]
    more_recipients: int = 0
    attachments: tuple[tuple[str, int], ...] = ()
    quarantine: tuple[TrackedCopy, ...] = field(default_factory=tuple)
    node: str = ""
    """The node that took the message (``''``: logged before nodes were recorded)."""

    @property
    def fate(self) -> str:
        """One of :data:`FATES`: the final answer the mail got, a release winning over quarantine."""
        if self.action == "tempfail" or self.status.startswith("Tempfail") or self.reply.startswith("4"):
            return TEMPFAILED
        if self.action == "reject":
            return REJECTED
        if self.action == "drop":
            return DROPPED
        if self.action == "quarantine":
            return RELEASED_FATE if any(c.state == RELEASED for c in self.quarantine) else QUARANTINED
        if self.reply.startswith("5"):
            return REFUSED
        return DELIVERED

    @property
    def verdict(self) -> str:
        """Which scanner decided and why, e.g. ``regexp_scan: Bad-Word (level 1.00)``; ``clean`` if none detected."""
        if self.level < 1.0:
            return "clean"
        return f"{self.scanner or '-'}: {self.name or '-'} (level {self.level:.2f})"

    def events(self) -> list[Event]:
        """The timeline: received, decided, each quarantine copy and its release, oldest first."""
        client = self.client_name or "unknown"
        by = f", by node {self.node}" if self.node else ""
        events = [
            Event(
                self.time - self.elapsed,
                f"received from {client} [{self.client_address or 'unknown'}] (HELO {self.helo or '-'}), "
                f"{self.size} bytes, {len(self.recipients) + self.more_recipients} recipient(s){by}",
            ),
        ]
        verb, tail = {
            DELIVERED: ("delivered to the next hop", ""),
            REJECTED: ("rejected", ""),
            QUARANTINED: ("quarantined", ", not delivered"),
            RELEASED_FATE: ("quarantined", ", not delivered"),
            DROPPED: ("dropped", " (accepted, not delivered)"),
            TEMPFAILED: ("temporarily refused", ": the MTA keeps it and retries"),
            REFUSED: ("refused by the next hop", ""),
        }[self.fate]
        verdict = "" if self.verdict == "clean" else f" by {self.verdict}"
        note = f"; {self.note}" if self.note else ""
        events.append(Event(self.time, f"{verb}{verdict}{tail}; reply {self.reply} ({self.status}){note}"))
        for copy in self.quarantine:
            if copy.state == GONE:
                events.append(Event(self.time, f"quarantine copy {copy.id}: no longer stored (deleted or expired)"))
                continue
            events.append(Event(self.time, f"quarantine copy {copy.id} kept in {copy.category}"))
            if copy.state == RELEASED and copy.released_at is not None:
                to = ", ".join(f"<{r}>" for r in copy.released_to) or "its recipients"
                events.append(Event(copy.released_at, f"released by {copy.released_by or 'unknown'} to {to}"))
        return sorted(events, key=lambda event: event.time)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready data (``mailsift track --json``); times in ISO 8601, UTC."""
        return {
            "id": self.id,
            "time": _iso(self.time),
            "fate": self.fate,
            "verdict": self.verdict,
            "queue_id": self.queue_id,
            "node": self.node,
            "message_id": self.message_id,
            "sender": self.sender,
            "recipients": list(self.recipients),
            "more_recipients": self.more_recipients,
            "subject": self.subject,
            "size": self.size,
            "client_address": self.client_address,
            "client_name": self.client_name,
            "helo": self.helo,
            "status": self.status,
            "action": self.action,
            "reply": self.reply,
            "level": self.level,
            "name": self.name,
            "scanner": self.scanner,
            "note": self.note,
            "elapsed": self.elapsed,
            "spam_score": self.spam_score,
            "spam_required": self.spam_required,
            "attachments": [{"name": n, "size": s} for n, s in self.attachments],
            "quarantine": [c.as_dict() for c in self.quarantine],
            "events": [{"time": _iso(e.time), "text": e.text} for e in self.events()],
        }


@dataclass(frozen=True)
class StoryPage:
    """One page of search results, newest first."""

    query: TrackQuery
    stories: list[Story]
    has_more: bool
    """True when a next page exists (``query.next_page()``)."""


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat()


# --------------------------------------------------------------------------- queries


def _address_match(column: Any, value: str) -> ColumnElement[bool]:
    """Exact address ignoring case, ``@domain`` for a whole domain, ``<>`` for the null sender."""
    value = value.strip().lower()
    if value in ("<>", '""'):
        return column == ""  # type: ignore[no-any-return]
    value = value.removeprefix("<").removesuffix(">")
    if value.startswith("@"):
        return func.lower(column).endswith(value, autoescape=True)
    return func.lower(column) == value


def _filters(query: TrackQuery) -> list[ColumnElement[bool]]:
    m = maillog_table.c
    where: list[ColumnElement[bool]] = []
    if query.sender is not None:
        where.append(_address_match(m.sender, query.sender))
    if query.recipient is not None:
        where.append(_address_match(m.recipient, query.recipient))
    if query.message_id is not None:
        bare = query.message_id.removeprefix("<").removesuffix(">").strip()
        where.append(m.message_id.in_([f"<{bare}>", bare]))  # the header as written, with or without brackets
    if query.queue_id is not None:
        where.append(m.queue_id == query.queue_id)
    if query.node is not None:
        where.append(m.node == query.node)
    if query.since is not None:
        where.append(m.time >= query.since)
    if query.until is not None:
        where.append(m.time < query.until)
    return where


_KEY = ("time", "queue_id", "message_id", "sender", "status", "node")
"""The columns one log record's rows share: together they tell one message (or LMTP group) of one node."""


def find_stories(connection: Connection, query: TrackQuery) -> StoryPage:
    """The messages matching ``query``, newest first, one page of them.

    A message matched through one of its recipients is shown with all of them.
    """
    m = maillog_table.c
    key = [m[name] for name in _KEY]
    first = func.min(m.id)
    statement = (
        select(first.label("first"), *key)
        .where(*_filters(query))
        .group_by(*key)
        .order_by(m.time.desc(), first.desc())
        .limit(query.limit + 1)
        .offset(query.offset)
    )
    groups = connection.execute(statement).all()
    stories = [_rows_story(connection, group) for group in groups[: query.limit]]
    return StoryPage(
        query, _with_quarantine(connection, [s for s in stories if s is not None]), len(groups) > query.limit
    )


def get_story(connection: Connection, row_id: int) -> Story | None:
    """The message one of whose log rows has id ``row_id`` (a :attr:`Story.id`), or None."""
    m = maillog_table.c
    row = connection.execute(select(*[m[name] for name in _KEY]).where(m.id == row_id)).first()
    if row is None:
        return None
    story = _rows_story(connection, row)
    return None if story is None else _with_quarantine(connection, [story])[0]


def _rows_story(connection: Connection, group: Row[Any]) -> Story | None:
    """All log rows of the record ``group`` names (bounded), made into a story."""
    m = maillog_table.c
    match = and_(*[m[name] == getattr(group, name) for name in _KEY])
    rows = connection.execute(select(maillog_table).where(match).order_by(m.id).limit(MAX_RECIPIENTS + 1)).all()
    if not rows:
        return None  # gone between the two queries (a concurrent cleanup)
    more = 0
    if len(rows) > MAX_RECIPIENTS:
        total = connection.execute(select(func.count()).select_from(maillog_table).where(match)).scalar_one()
        rows, more = rows[:MAX_RECIPIENTS], int(total) - MAX_RECIPIENTS
    head = rows[0]
    copies = tuple(TrackedCopy(id=i, state=GONE) for i in quarantine_ids(head.quarantine))
    return Story(
        id=head.id,
        time=head.time,
        queue_id=head.queue_id,
        message_id=head.message_id,
        sender=head.sender,
        subject=head.subject,
        size=head.size,
        client_address=head.client_address,
        client_name=head.client_name,
        helo=head.helo,
        status=head.status,
        action=head.action,
        reply=head.reply,
        level=head.level,
        name=head.name,
        scanner=head.scanner,
        note=head.note,
        elapsed=head.elapsed,
        spam_score=head.spam_score,
        spam_required=head.spam_required,
        recipients=tuple(dict.fromkeys(row.recipient for row in rows)),
        more_recipients=more,
        attachments=_attachments(head.attachments),
        quarantine=copies,
        node=head.node,
    )


def quarantine_ids(value: str) -> list[str]:
    """The quarantine ids a log row names (its ``quarantine`` column: file paths or ids), in order."""
    return list(dict.fromkeys(_QUARANTINE_ID.findall(value or "")))


def _attachments(value: str) -> tuple[tuple[str, int], ...]:
    try:
        items = json.loads(value or "[]")
    except ValueError:
        return ()
    if not isinstance(items, list):
        return ()
    return tuple(
        (str(item.get("name", "")), int(item.get("size", 0)))
        for item in items
        if isinstance(item, dict) and isinstance(item.get("size", 0), int)
    )


def _with_quarantine(connection: Connection, stories: Sequence[Story]) -> list[Story]:
    """The stories with their quarantine copies' present state (one query for the page)."""
    wanted = [copy.id for story in stories for copy in story.quarantine]
    if not wanted:
        return list(stories)
    entries = {entry.id: entry for entry in find_entries(connection, QuarantineFilter(ids=wanted), time.time())}
    return [
        replace(story, quarantine=tuple(_copy(copy.id, entries.get(copy.id)) for copy in story.quarantine))
        for story in stories
    ]


def _copy(entry_id: str, entry: QuarantineEntry | None) -> TrackedCopy:
    if entry is None:
        return TrackedCopy(id=entry_id, state=GONE)
    return TrackedCopy(
        id=entry.id,
        state=entry.state,
        category=entry.category,
        released_at=entry.released_at,
        released_by=entry.released_by,
        released_to=_released_to(entry.released_to),
    )


def _released_to(value: str | None) -> tuple[str, ...]:
    try:
        addresses = json.loads(value) if value else []
    except ValueError:
        return ()
    return tuple(str(a) for a in addresses) if isinstance(addresses, list) else ()


def fates(stories: Iterable[Story]) -> dict[str, int]:
    """How many stories ended each way (for a page's summary line)."""
    counts = dict.fromkeys(FATES, 0)
    for story in stories:
        counts[story.fate] += 1
    return {fate: count for fate, count in counts.items() if count}
