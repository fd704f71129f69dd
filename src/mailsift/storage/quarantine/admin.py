"""The quarantine's operations: release, delete, expire, reindex.

Shared by every place that acts on the quarantine: ``mailsift quarantine``
(:mod:`mailsift.cli.quarantine`), the web quarantine and the digest's
one-click links.  The files are :mod:`mailsift.storage.quarantine.store`'s, the rows
:mod:`mailsift.storage.quarantine.index`'s; the index lives in ``DATABASE``, so any
gateway sharing the database and the store can act on what another one
quarantined.

* :func:`release` sends the original message, without mailsift's
  ``X-Mailsift-*`` envelope headers, to the next hop for its original
  recipients (or others), and only once the next hop accepted it records who
  released it and when (SAGATOR's ``sqback``).
* :func:`reindex` adopts files that have no index row (a crash between the
  fsync of a file and the commit of its row) from their headers;
  :func:`expire` runs it first, so an orphan is expired by its own age, never
  deleted unseen.
* :func:`delete` and :func:`expire` remove the row first, then the file: a
  crash in between leaves an orphan file that :func:`reindex` brings back
  (never a row pointing at nothing).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mailsift.delivery.next_hop import resolve
from mailsift.errors import RequestRefused, StorageError
from mailsift.message.address import check_addresses
from mailsift.message.mail import Envelope, Mail
from mailsift.settings import Settings
from mailsift.storage.quarantine.index import (
    QuarantineEntry,
    QuarantineFilter,
    add_entry,
    find_entries,
    known_ids,
    mark_released,
    remove_entry,
)
from mailsift.storage.quarantine.store import (
    file_id,
    locate,
    read_entry,
    read_original,
    stored_files,
    unlink_durably,
)

log = logging.getLogger("mailsift.quarantine")

TMP_MAX_AGE = 36 * 3600
"""Maildir's rule: a ``tmp/`` file this old is a leftover of a write that never finished."""


class QuarantineProblem(RequestRefused):
    """A message that cannot be released or deleted (missing, damaged, already released)."""


@dataclass(frozen=True)
class Reindexed:
    """What ``reindex`` found: files adopted, files it could not read, rows without a file."""

    adopted: list[str]
    damaged: list[str]
    dangling: list[str]


def reindex(settings: Settings) -> Reindexed:
    """Index every stored file that has no row, from its ``X-Mailsift-*`` head."""
    root = settings.quarantine_dir
    indexed = settings.require_database().call(known_ids)
    on_disk: dict[str, str] = {}
    adopted: list[str] = []
    damaged: list[str] = []
    for relative in stored_files(root):
        entry_id = file_id(relative)
        on_disk[entry_id] = relative
        if entry_id in indexed:
            continue
        try:
            entry = read_entry(root, relative)
        except StorageError as error:  # a damaged file (DamagedFile) or one that cannot be read
            damaged.append(f"{relative}: {error}")
            continue
        if settings.require_database().call(add_entry, entry):
            adopted.append(entry.id)
            log.info("reindex: adopted %s (%s)", entry.id, relative)
    dangling = sorted(indexed - set(on_disk))
    return Reindexed(adopted, damaged, dangling)


async def release(
    settings: Settings,
    entry: QuarantineEntry,
    *,
    recipients: Sequence[str] = (),
    next_hop: Any = None,
    by: str,
    now: float | None = None,
) -> str:
    """Send ``entry``'s original message to the next hop, then record the release; returns the hop's note.

    The message goes to ``recipients`` (default: its original ones) from its
    original sender; mailsift's head is not sent.  Raises
    :class:`QuarantineProblem` or a :class:`~mailsift.errors.MailsiftError`
    (the next hop refused or is down: nothing is recorded).
    """
    path = locate(settings.quarantine_dir, entry)
    if path is None:
        raise QuarantineProblem(f"{entry.id}: the file {entry.path} is missing from {settings.quarantine_dir}")
    try:
        message = await asyncio.to_thread(read_original, path)
    except StorageError as error:  # damaged (DamagedFile) or unreadable
        raise QuarantineProblem(f"{entry.id}: cannot read {path}: {error}") from None
    targets = list(recipients) or list(entry.recipients)
    if not targets:
        raise QuarantineProblem(f"{entry.id}: no recipients (give --to)")
    check_addresses(entry.sender, targets)  # AddressError: CR/LF in a stored address would smuggle commands
    target = next_hop if next_hop is not None else settings.smtp_server
    if target is None:
        raise QuarantineProblem("no next hop: give --next-hop host:port or set SMTP_SERVER")
    delivery = resolve(target, settings.state_dir)
    envelope = Envelope(
        sender=entry.sender,
        recipients=targets,
        queue_id=entry.id,
        mail_options=[] if message.isascii() else ["BODY=8BITMIME"],
    )
    mail = Mail(envelope, message, spool_threshold=len(message) + 1)
    try:
        note = await delivery.deliver(mail, message)
    finally:
        await delivery.close()
    settings.require_database().call(mark_released, entry.id, by, targets, time.time() if now is None else now)
    log.info(
        "released %s by=%s to=%s via %s: %s",
        entry.id,
        by,
        ",".join(f"<{r}>" for r in targets),
        delivery.describe(),
        note,
    )
    return note


def delete(settings: Settings, entry: QuarantineEntry) -> None:
    """Remove ``entry``'s row, then its file (a crash in between leaves an orphan for ``reindex``)."""
    path = locate(settings.quarantine_dir, entry)
    settings.require_database().call(remove_entry, entry.id)
    if path is not None:
        unlink_durably(path)


def expire(settings: Settings, older_than: float, *, category: str | None = None, now: float | None = None) -> int:
    """Reindex orphans, then delete every message older than ``older_than`` seconds; returns how many."""
    now = time.time() if now is None else now
    reindex(settings)
    entries = settings.require_database().call(
        find_entries, QuarantineFilter(category=category, older_than=older_than), now
    )
    for entry in entries:
        delete(settings, entry)
        log.info("expired %s (%s, %s)", entry.id, entry.category, entry.path)
    _clean_tmp(settings.quarantine_dir, now)
    return len(entries)


def _clean_tmp(root: str, now: float) -> None:
    """Remove ``tmp/`` leftovers of writes that never finished (no reply was given for them)."""
    try:
        categories = os.listdir(root)
    except FileNotFoundError:
        return
    for category in categories:
        folder = os.path.join(root, category, "tmp")
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            path = os.path.join(folder, name)
            try:
                if os.path.getmtime(path) < now - TMP_MAX_AGE:
                    os.unlink(path)
            except FileNotFoundError:
                continue
