"""The database's old rows that no job of their own deletes, pruned by both scheduled jobs.

``mailsift quarantine expire`` (the packaged timer, the README's cron line) and ``mailsift stats
prune`` each call :func:`prune_tables` under their own once-per-cluster lease, so the rows go
whichever of the two a gateway schedules:

* ``maillog`` (the per-message log: tracking, the digest) older than ``MAILLOG_RETENTION``
  (``'90d'`` by default; None keeps it);
* ``link_action`` release rows claimed more than :data:`mailsift.reporting.links.MAX_LIFETIME`
  ago: the token of such a click is refused as expired before the row is read, so a used link
  never works again (whitelist rows stay: a link adds a sender once, ever);
* ``web_login_throttle`` keys quiet for :data:`THROTTLE_RETENTION` (or the longest
  ``webq(login_window=...)``): past the window a key starts over anyway.

Each table is deleted in batches of :data:`mailsift.storage.sql.PRUNE_BATCH` rows, one
transaction each (:func:`mailsift.storage.sql.delete_in_batches`), so a year's backlog never
holds one long lock.  Every other table is bounded by design or pruned by its own writer (see
:mod:`mailsift.storage.schema`).
"""

from __future__ import annotations

from dataclasses import dataclass

from mailsift.config import Config
from mailsift.reporting import links, logline
from mailsift.storage import sql
from mailsift.web import users
from mailsift.web.service import webq

THROTTLE_RETENTION = 86400.0
"""Login throttling keys quiet this long (or for the longest ``webq(login_window=...)``, if longer)
are forgotten: past the window a key starts over anyway."""


@dataclass(frozen=True)
class Pruned:
    """How many rows :func:`prune_tables` deleted, per table."""

    maillog: int = 0
    links: int = 0
    throttle: int = 0

    def items(self) -> list[str]:
        """``20417 message log row(s)``... for each table that lost rows."""
        counts = [
            (self.maillog, "message log row(s)"),
            (self.links, "used release link(s)"),
            (self.throttle, "login throttling key(s)"),
        ]
        return [f"{count} {what}" for count, what in counts if count]


def login_window(config: Config) -> float:
    """How long a quiet login throttling key is kept: a day, or the longest ``login_window`` of the config's webq."""
    windows = [service.config.throttle_window for service in config.services if isinstance(service, webq)]
    return max([THROTTLE_RETENTION, *windows])


def prune_tables(config: Config, now: float) -> Pruned:
    """Delete the old rows of ``maillog``, ``link_action`` and ``web_login_throttle``; DatabaseError if it fails."""
    database = config.settings.require_database()
    retention = config.settings.maillog_retention
    call = database.call
    return Pruned(
        maillog=0 if retention is None else sql.delete_in_batches(call, logline.prune, now - retention),
        links=sql.delete_in_batches(call, links.prune, now),
        throttle=sql.delete_in_batches(call, users.prune_attempts, now - login_window(config)),
    )
