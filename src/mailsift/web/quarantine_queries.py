"""The quarantine as one web user may see it: ownership is part of every query.

An ordinary user sees a message only if one of its envelope recipients is
one of the user's addresses; an admin sees every message.  The condition is
in the SQL (:func:`visible_to`) of the list, the count and the single-message
lookup, so no page can show, count or act on another user's message, whatever
id or filter the URL carries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, exists, false, func, or_, select, true
from sqlalchemy.engine import Connection

from mailsift.storage.quarantine.index import QuarantineEntry, QuarantineFilter, find_entries, get_entry
from mailsift.storage.schema import quarantine_recipient_table, quarantine_table
from mailsift.web.users import User

SORTS = ("date", "sender", "subject", "size", "category", "level")
_q = quarantine_table.c
_SORT_COLUMNS: dict[str, Any] = {
    "date": _q.created,
    "sender": func.lower(_q.sender),
    "subject": func.lower(_q.subject),
    "size": _q.size,
    "category": _q.category,
    "level": _q.level,
}
MAX_TEXT = 200


@dataclass(frozen=True)
class ListQuery:
    """The list page's search, filters, sort and page, already bounded."""

    text: str = ""
    """Words found in the subject, the sender or the id."""
    category: str = ""
    sender: str = ""
    subject: str = ""
    since: float | None = None
    until: float | None = None
    state: str = ""
    sort: str = "date"
    descending: bool = True
    page: int = 1
    rows: int = 50


def visible_to(user: User) -> ColumnElement[bool]:
    """The SQL condition "``user`` may see this quarantine row".

    A user's address ``@example.com`` makes them the domain's admin: every
    recipient in exactly that domain is theirs (not subdomains).
    """
    if user.is_admin:
        return true()
    if not user.addresses:
        return false()
    r = quarantine_recipient_table.c
    recipient = func.lower(r.recipient)
    exact = [a for a in user.addresses if not a.startswith("@")]
    domains = [a for a in user.addresses if a.startswith("@") and len(a) > 1]
    mine: list[ColumnElement[bool]] = [recipient.in_(exact)] if exact else []
    mine += [recipient.endswith(domain, autoescape=True) for domain in domains]
    return exists().where(r.quarantine_id == _q.id, or_(*mine))


def _contains(column: Any, text: str) -> ColumnElement[bool]:
    return func.lower(column).contains(text.lower()[:MAX_TEXT], autoescape=True)


def _conditions(user: User, query: ListQuery) -> list[ColumnElement[bool]]:
    conditions = [visible_to(user)]
    if query.text:
        for word in query.text.split()[:10]:
            conditions.append(_contains(_q.subject, word) | _contains(_q.sender, word) | (_q.id == word))
    if query.category:
        conditions.append(_q.category == query.category)
    if query.sender:
        conditions.append(_contains(_q.sender, query.sender))
    if query.subject:
        conditions.append(_contains(_q.subject, query.subject))
    if query.since is not None:
        conditions.append(_q.created >= query.since)
    if query.until is not None:
        conditions.append(_q.created < query.until)
    if query.state:
        conditions.append(_q.state == query.state)
    return conditions


def find_page(connection: Connection, user: User, query: ListQuery) -> tuple[list[QuarantineEntry], int]:
    """One page of the messages ``user`` may see that match ``query``, and how many match in all."""
    conditions = _conditions(user, query)
    total = connection.execute(select(func.count()).select_from(quarantine_table).where(*conditions)).scalar_one()
    column = _SORT_COLUMNS.get(query.sort, _q.created)
    order = [column.desc() if query.descending else column.asc(), _q.created.desc(), _q.id]
    ids = list(
        connection.execute(
            select(_q.id)
            .where(*conditions)
            .order_by(*order)
            .limit(query.rows)
            .offset((max(query.page, 1) - 1) * query.rows)
        ).scalars()
    )
    found = {e.id: e for e in find_entries(connection, QuarantineFilter(ids=ids), time.time())} if ids else {}
    return [found[i] for i in ids if i in found], int(total)


def get_visible(connection: Connection, user: User, entry_id: str) -> QuarantineEntry | None:
    """The message ``entry_id`` if ``user`` may see it; None if it is missing or not theirs (alike)."""
    allowed = connection.execute(select(_q.id).where(_q.id == entry_id, visible_to(user))).first()
    return None if allowed is None else get_entry(connection, entry_id)


def categories(connection: Connection, user: User) -> list[str]:
    """The categories of the messages ``user`` may see (for the filter menu)."""
    return list(
        connection.execute(select(_q.category).where(visible_to(user)).distinct().order_by(_q.category)).scalars()
    )


def own_recipients(user: User, entry: QuarantineEntry) -> list[str]:
    """The entry's recipients that are the user's own addresses (in the entry's order)."""
    return [r for r in entry.recipients if owns(user, r)]


def owns(user: User, address: str) -> bool:
    """Whether ``address`` is one of the user's (itself, or in one of their ``@domain`` entries)."""
    address = address.lower()
    return any(address == a or (a.startswith("@") and len(a) > 1 and address.endswith(a)) for a in user.addresses)
