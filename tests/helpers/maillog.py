"""Rows of the per-message log (``maillog``) of a given age, for the pruning tests."""

from __future__ import annotations

import time

from sqlalchemy import select

from mailsift.storage.db import Database
from mailsift.storage.schema import maillog_table


def log(database: Database, *ages: float) -> None:
    """One ``maillog`` row logged ``age`` seconds ago for each age, its queue id ``q<age>``."""
    now = time.time()
    base: dict[str, object] = {c.name: "" for c in maillog_table.c if c.name != "id"}
    base.update(level=0.0, relay_client=False, elapsed=0.01, size=100, spam_score=None, spam_required=None)
    rows = [{**base, "time": now - age, "queue_id": f"q{age:.0f}", "action": "deliver"} for age in ages]
    database.call(lambda connection: connection.execute(maillog_table.insert(), rows))


def logged(database: Database) -> list[str]:
    """The queue ids still in the log, oldest first."""
    m = maillog_table.c
    return list(database.call(lambda c: c.execute(select(m.queue_id).order_by(m.time)).scalars().all()))
