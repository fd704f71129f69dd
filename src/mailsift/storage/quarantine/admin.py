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
  released it and when (SAGATOR's ``sqback``).  The release is first
  *claimed* in the database (a ``quarantine_release`` row, one atomic
  insert: :func:`mailsift.storage.sql.claim`), so two gateways, two admins or
  two clicks releasing one message at once send it once: the loser gets
  :class:`ReleaseInProgress` ("being released by X") or, when the winner has
  finished, :class:`AlreadyReleased` ("released by X").  A claim whose sender
  died (a crash after the claim, before the record) is taken over after
  :data:`RELEASE_CLAIM_TIMEOUT` seconds.
* :func:`reindex` adopts files that have no index row (a crash between the
  fsync of a file and the commit of its row) from their headers, and removes
  the store's retry markers of files indexed by now;
  :func:`expire` runs it first, so an orphan is expired by its own age, never
  deleted unseen.
* :func:`delete` and :func:`expire` remove the row first, then the file: a
  crash in between leaves an orphan file that :func:`reindex` brings back
  (never a row pointing at nothing).
* :func:`may_release` is who may release what (``webq(admin_release=...)``):
  the categories in :data:`ADMIN_RELEASE` (``virus``, ``unscannable``) only by
  an admin; the web quarantine and the digest's links ask it, the CLI (run by
  an admin) does not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from mailsift.delivery.next_hop import resolve
from mailsift.errors import ConfigError, DatabaseError, MailsiftError, RequestRefused, StorageError
from mailsift.message.address import check_addresses
from mailsift.message.mail import SPOOL_PREFIX, SPOOL_SUFFIX, Envelope, Mail
from mailsift.settings import Settings
from mailsift.storage.quarantine.dbstore import in_database, store_of, stored_ids
from mailsift.storage.quarantine.index import (
    RELEASED,
    QuarantineEntry,
    QuarantineFilter,
    add_entry,
    claim_release,
    find_entries,
    finish_release,
    get_entry,
    known_ids,
    remove_entry,
    unclaim_release,
)
from mailsift.storage.quarantine.store import (
    drop_retry_marker,
    file_id,
    locate,
    read_entry,
    retry_markers,
    stored_files,
    unlink_durably,
)

log = logging.getLogger("mailsift.quarantine")

TMP_MAX_AGE = 36 * 3600
"""Maildir's rule: a ``tmp/`` file this old is a leftover of a write that never finished."""


RELEASE_CLAIM_TIMEOUT = 600.0
"""Seconds after which a release claim that was never finished (its sender died between the claim
and the record) may be taken over; a send is bounded well below it by the next hop's timeouts."""


ADMIN_RELEASE: tuple[str, ...] = ("virus", "unscannable")
"""The quarantine categories only an admin may release (``webq(admin_release=...)``'s default):
ordinary users release spam and policy mail, never a virus or a message no scanner could read."""
_CATEGORY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def admin_release_categories(value: object) -> frozenset[str]:
    """``webq(admin_release=...)`` checked: a list of category names like ``['virus']``."""
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        raise ConfigError(f"admin_release must be a list of quarantine categories like ['virus'], got {value!r}")
    for name in value:
        if not isinstance(name, str) or not _CATEGORY.match(name):
            raise ConfigError(f"admin_release: {name!r} is not a quarantine category like 'virus'")
    return frozenset(value)


def may_release(category: str, *, admin: bool, admin_release: Collection[str] = ADMIN_RELEASE) -> bool:
    """Whether a user (an admin when ``admin``) may release a message quarantined in ``category``."""
    return admin or category.lower() not in admin_release


class QuarantineProblem(RequestRefused):
    """A message that cannot be released or deleted (missing, damaged, already released)."""


class ReleaseInProgress(QuarantineProblem):
    """Another release of the message holds its claim: nothing was sent (try again later)."""

    def __init__(self, entry_id: str, by: str, since: float) -> None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(since))
        super().__init__(f"{entry_id}: already being released by {by} (since {when} UTC); not sent again")
        self.by, self.since = by, since


class AlreadyReleased(QuarantineProblem):
    """The message was released to these recipients already (by another release that won)."""

    def __init__(self, entry: QuarantineEntry) -> None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry.released_at or 0))
        super().__init__(f"{entry.id}: released already by {entry.released_by} ({when} UTC); not sent again")
        self.entry = entry


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
    dangling = sorted(indexed - set(on_disk) - settings.require_database().call(stored_ids))
    done, present = indexed | set(adopted), set(on_disk.values())
    for key, relative in retry_markers(root).items():
        if file_id(relative) in done or relative not in present:
            drop_retry_marker(root, key)  # indexed now (or gone): its retry finds the row instead
    return Reindexed(adopted, damaged, dangling)


async def release(
    settings: Settings,
    entry: QuarantineEntry,
    *,
    recipients: Sequence[str] = (),
    next_hop: Any = None,
    by: str,
    now: float | None = None,
    again: bool = False,
) -> str:
    """Claim the release of ``entry``, send its original message to the next hop, then record the
    release and drop the claim; returns the hop's note.

    The message goes to ``recipients`` (default: its original ones) from its
    original sender; mailsift's head is not sent.  Raises
    :class:`QuarantineProblem` (:class:`ReleaseInProgress` when another
    release holds the claim, :class:`AlreadyReleased` when the message was
    released to these recipients meanwhile, unless ``again``) or a
    :class:`~mailsift.errors.MailsiftError` (the next hop refused or is down:
    nothing is recorded and the claim is given back).
    """
    spooled, ascii_only = await asyncio.to_thread(spool_message, settings, entry)
    try:
        return await _release(settings, entry, spooled, ascii_only, recipients, next_hop, by, now, again)
    finally:
        _unlink_quietly(spooled)


async def _release(
    settings: Settings,
    entry: QuarantineEntry,
    spooled: str,
    ascii_only: bool,
    recipients: Sequence[str],
    next_hop: Any,
    by: str,
    now: float | None,
    again: bool,
) -> str:
    targets = list(recipients) or list(entry.recipients)
    if not targets:
        raise QuarantineProblem(f"{entry.id}: no recipients (give --to)")
    check_addresses(entry.sender, targets)  # AddressError: CR/LF in a stored address would smuggle commands
    target = next_hop if next_hop is not None else settings.release_hop or settings.smtp_server
    if target is None:
        raise QuarantineProblem(
            "no next hop: give --next-hop host:port or set SMTP_SERVER (the services' next hops differ or are none)"
        )
    database = settings.require_database()
    claimed_at = time.time() if now is None else now
    await database.run(_claim, entry.id, by, claimed_at, targets, again)
    try:
        delivery = resolve(target, settings.state_dir)
        envelope = Envelope(
            sender=entry.sender,
            recipients=targets,
            queue_id=entry.id,
            mail_options=[] if ascii_only else ["BODY=8BITMIME"],
        )
        mail = Mail(envelope, path=spooled)
        try:
            note = await delivery.deliver_streamed(mail)
        finally:
            await delivery.close()
    except BaseException:
        try:
            await database.run(unclaim_release, entry.id, by, claimed_at)
        except MailsiftError as error:  # the claim goes stale and is taken over after the timeout
            log.warning("release of %s: cannot give the claim back: %s", entry.id, error.message)
        raise
    await _record_release(database, entry.id, by, targets, time.time() if now is None else now, claimed_at)
    log.info(
        "released %s by=%s to=%s via %s: %s",
        entry.id,
        by,
        ",".join(f"<{r}>" for r in targets),
        delivery.describe(),
        note,
    )
    return note


RECORD_TRIES = 6
"""Tries to record a release already sent (0.1, 0.2, ... 3.2 s apart: about 6 s in all, far below
RELEASE_CLAIM_TIMEOUT), so a database restart or failover under way does not leave a message that
went out looking unreleased, for another node to send again once the claim goes stale."""


async def _record_release(
    database: Any, entry_id: str, by: str, targets: Sequence[str], when: float, claimed_at: float
) -> None:
    for attempt in range(RECORD_TRIES):
        try:
            await database.run(finish_release, entry_id, by, targets, when, claimed_at)
            return
        except DatabaseError as error:
            if attempt == RECORD_TRIES - 1:
                log.error(
                    "release of %s: sent, but not recorded (the claim stays; do not release it again): %s",
                    entry_id,
                    error.message,
                )
                raise
            log.warning("release of %s: sent; recording it failed, trying again: %s", entry_id, error.message)
            await asyncio.sleep(0.1 * 2**attempt)


def spool_message(settings: Settings, entry: QuarantineEntry) -> tuple[str, bool]:
    """Copy ``entry``'s original message, chunk by chunk from whichever store holds it, into a new
    spool file (``STATE_DIR/spool``, mode 0600, named as :func:`~mailsift.message.mail.write_spool`'s so
    that ``quarantine expire`` removes one a killed process left); its path and whether it is all ASCII.
    A release sends that file, streamed: a 50 MB message never needs 50 MB of memory."""
    store = store_of(settings, entry)
    try:
        os.makedirs(settings.spool_dir, mode=0o700, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-", suffix=SPOOL_SUFFIX, dir=settings.spool_dir)
    except OSError as error:
        raise StorageError(f"cannot spool {entry.id} for its release: {error.strerror or error}") from error
    ascii_only = True
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in store.chunks(entry):
                ascii_only = ascii_only and chunk.isascii()
                handle.write(chunk)
    except StorageError as error:  # missing, damaged (DamagedFile) or unreadable
        _unlink_quietly(path)
        raise QuarantineProblem(f"{entry.id}: cannot read its message: {error}") from None
    except BaseException as error:
        _unlink_quietly(path)
        if isinstance(error, OSError):
            raise StorageError(f"cannot spool {entry.id} for its release: {error.strerror or error}") from error
        raise
    return path, ascii_only


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _claim(connection: Any, entry_id: str, by: str, now: float, targets: Sequence[str], again: bool) -> None:
    """Take the release claim, then check in the same transaction that nobody finished it meanwhile."""
    blocking = claim_release(connection, entry_id, by, now, RELEASE_CLAIM_TIMEOUT)
    if blocking is not None:
        raise ReleaseInProgress(entry_id, blocking.by, blocking.at)
    current = get_entry(connection, entry_id)
    if current is None:  # raising rolls the claim back
        raise QuarantineProblem(f"{entry_id}: no longer in the quarantine (deleted meanwhile)")
    released_to = {str(r).lower() for r in json.loads(current.released_to or "[]")}
    if current.state == RELEASED and not again and {t.lower() for t in targets} <= released_to:
        raise AlreadyReleased(current)


def delete(settings: Settings, entry: QuarantineEntry) -> None:
    """Remove ``entry``'s row, then its file (a crash in between leaves an orphan for ``reindex``); a
    message kept in the database goes with its row, in one transaction."""
    path = None if in_database(entry) else locate(settings.quarantine_dir, entry)
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
