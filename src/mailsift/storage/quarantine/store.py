"""The quarantine store: Maildir folders per category under ``STATE_DIR/quarantine``.

Each quarantined message is one file in ``<state>/quarantine/<category>/new/``,
written and fsynced, then indexed in the database
(:mod:`mailsift.storage.quarantine.index`), and only then is the MTA answered.  The
file is the original message preceded by mailsift's own envelope headers, so
that the index can always be rebuilt from the files alone (``mailsift
quarantine reindex``)::

    X-Mailsift-Quarantine-Id: 20261121T101500-3f9c2a1b
    X-Mailsift-Category: virus
    X-Mailsift-Time: 1763720100.123456
    X-Mailsift-Size: 2741
    X-Mailsift-Verdict: level=1.00; name=EICAR-Test; scanner=regexp_scan
    X-Mailsift-Detail: part 2 (eicar.com)
    X-Mailsift-Client: mx.example.net [192.0.2.1]
    X-Mailsift-Queue-Id: 4Xk2Lq0bQzz9sWX
    Return-Path: <sender@example.net>
    X-Envelope-To: <rcpt@example.org>

``X-Mailsift-Size`` is the size of the original message, which is exactly the
last that many bytes of the file: a release sends those bytes, whatever
headers the original itself carries (it may have its own ``Return-Path``).
The Maildir file name carries the id too (``<time>.<...>_<id>.<host>``).

Crash safety, in order: the file is written to ``tmp/``, fsynced and renamed
into ``new/`` (:func:`mailsift.delivery.maildir.store`); then the index row is
committed; then :meth:`QuarantineStore.put` returns and the MTA may get its
250.  A crash before the rename leaves a ``tmp/`` file no one answered for;
a crash between rename and commit leaves an orphan file that ``reindex``
adopts; after the commit the entry is complete.  The MTA's retry of the message
(after a crash at any of these points, or a 451 for a later step) reuses the
copy instead of storing a second one: see :func:`retry_key` and
:meth:`QuarantineStore.put`.  ``MAILSIFT_TEST_CRASH_POINT``
(see :func:`crash_point`) kills the process at each of these points, for the
crash test only.
"""

from __future__ import annotations

import asyncio
import email.parser
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from mailsift.delivery import maildir
from mailsift.errors import MailsiftError, StorageError
from mailsift.message.mail import Mail
from mailsift.message.result import Result
from mailsift.mime.tree import Headers
from mailsift.storage.db import Database
from mailsift.storage.quarantine.index import DATABASE_PATH, QuarantineEntry, add_entry, find_retry, remove_entry

log = logging.getLogger("mailsift.quarantine")

CATEGORIES = ("virus", "policy", "spam")
ID_PATTERN = re.compile(r"_(\d{8}T\d{6}-[0-9a-f]{8})\.")
"""The quarantine id inside a Maildir file name."""
MAX_HEAD = 64 * 1024 * 1024
"""Refuse to read a mailsift head larger than this (a damaged or foreign file)."""
DETAIL_HEAD = 64 * 1024
"""The longest head :meth:`QuarantineStore.detail` reads."""
SUBJECT_BLOCK = 256 * 1024
"""How much of an orphan's original header block is read for its Subject."""
RETRY_WINDOW = 5 * 86400.0
"""How long the MTA's retry of a message reuses the copy its first attempt stored (Postfix's
``maximal_queue_lifetime`` is 5 days); :class:`QuarantineStore`'s ``retry_window`` sets another."""
RETRY_MARKERS = ".retry"
"""Under the quarantine root: ``<retry key>`` files naming a stored file not yet indexed (see put)."""
TRACE_FIELDS = (b"received", b"return-path")
"""Trace header fields left out of the retry key (with ``X-Mailsift-*``) while they lead the message."""

# ---------------------------------------------------------------- test-only crash points
#
# FOR THE CRASH TEST ONLY (tests/integration/test_quarantine_crash.py).  The
# variable is read once, when this module is imported (at `mailsift serve`'s
# start); unset, as in any real deployment, crash_point() does nothing.  Its
# value is ``<point>`` or ``<point>:<marker file>``: the process SIGKILLs
# itself when it reaches <point>; with a marker file, only the first time
# (the file is created exclusively), so the MTA's retry can go through.
CRASH_POINT_VARIABLE = "MAILSIFT_TEST_CRASH_POINT"
CRASH_POINTS = (
    "quarantine-written",  # content written to tmp/, not flushed, fsynced or renamed
    "quarantine-stored",  # file fsynced and renamed into new/, no index row yet
    "quarantine-uncommitted",  # index row inserted, its transaction not committed
    "quarantine-indexed",  # index row committed, the MTA not yet answered
)
_CRASH_POINT, _, _CRASH_MARKER = os.environ.get(CRASH_POINT_VARIABLE, "").partition(":")


def crash_point(point: str) -> None:
    """Test-only: SIGKILL this process here if ``MAILSIFT_TEST_CRASH_POINT`` names ``point``."""
    if not _CRASH_POINT or point != _CRASH_POINT:
        return
    if _CRASH_MARKER:
        try:
            os.close(os.open(_CRASH_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return  # crashed here once already
    os.kill(os.getpid(), signal.SIGKILL)


class _CrashAtEnd:
    """Test-only: a source stream that reaches the ``quarantine-written`` crash point at its end."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def read(self, size: int = -1) -> bytes:
        block = self.stream.read(size)
        if not block:
            crash_point("quarantine-written")
        return block


# ---------------------------------------------------------------- ids and the file format


def new_id(now: float | None = None) -> str:
    """A sortable, unique quarantine id: ``YYYYMMDDTHHMMSS-<8 hex>`` (UTC)."""
    moment = time.gmtime(time.time() if now is None else now)
    return time.strftime("%Y%m%dT%H%M%S", moment) + "-" + secrets.token_hex(4)


def _clean(value: str) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in value)


def head(entry: QuarantineEntry, detail: str) -> bytes:
    """mailsift's envelope headers for ``entry`` (CRLF lines, UTF-8)."""
    lines = [
        f"X-Mailsift-Quarantine-Id: {entry.id}",
        f"X-Mailsift-Category: {entry.category}",
        f"X-Mailsift-Time: {entry.created:.6f}",
        f"X-Mailsift-Size: {entry.size}",
        f"X-Mailsift-Verdict: level={entry.level:.2f}; name={_clean(entry.name)}; scanner={_clean(entry.scanner)}",
        *([f"X-Mailsift-Detail: {_clean(detail)[:900]}"] if detail else []),
        f"X-Mailsift-Client: {entry.client}",
        *([f"X-Mailsift-Queue-Id: {_clean(entry.queue_id)}"] if entry.queue_id else []),
        *([f"X-Mailsift-Retry-Key: {entry.retry_key}"] if entry.retry_key else []),
        f"Return-Path: <{_clean(entry.sender)}>",
        *(f"X-Envelope-To: <{_clean(r)}>" for r in entry.recipients),
    ]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def head_detail(block: bytes) -> str:
    """The ``X-Mailsift-Detail`` of a mailsift head (the scanner's detail), or ``""``."""
    for line in block.decode("utf-8", "replace").split("\r\n"):
        name, sep, value = line.partition(": ")
        if sep and name.lower() == "x-mailsift-detail":
            return value
    return ""


class DamagedFile(StorageError):
    """A file in the quarantine store without a readable mailsift head."""


def _read_head(handle: BinaryIO, file_size: int) -> tuple[list[tuple[str, str]], int]:
    """The head's fields and its length in bytes (file size minus ``X-Mailsift-Size``)."""
    fields: list[tuple[str, str]] = []
    size: int | None = None
    for _ in range(8):  # X-Mailsift-Size is among the first lines
        first = handle.readline(64 * 1024).decode("utf-8", "surrogateescape")
        name, _, value = first.rstrip("\r\n").partition(": ")
        if name.lower() == "x-mailsift-size" and value.isdigit():
            size = int(value)
            break
    if size is None or not 0 <= file_size - size <= MAX_HEAD:
        raise DamagedFile("no mailsift quarantine head (X-Mailsift-Size)")
    handle.seek(0)
    head = handle.read(file_size - size).decode("utf-8", "surrogateescape")
    for line in head.split("\r\n"):
        name, sep, value = line.partition(": ")
        if sep:
            fields.append((name.lower(), value))
    return fields, file_size - size


def _address(value: str) -> str:
    """``<address>`` → ``address`` (the last ``>`` closes it)."""
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        return value[1:-1]
    return value


@contextmanager
def _disk(what: str) -> Iterator[None]:
    """The file system's ``OSError`` as :class:`~mailsift.errors.StorageError` (mapped here, once)."""
    try:
        yield
    except OSError as error:
        raise StorageError(f"{what}: {error.strerror or error}") from error


def read_entry(root: str, relative: str) -> QuarantineEntry:
    """Rebuild an index entry from a stored file's head (``reindex``); DamagedFile if it has none."""
    path = os.path.join(root, relative)
    with _disk(f"cannot read {path}"):
        return _read_entry(root, relative, path)


def _read_entry(root: str, relative: str, path: str) -> QuarantineEntry:
    with open(path, "rb") as handle:
        file_size = os.fstat(handle.fileno()).st_size
        fields, head_length = _read_head(handle, file_size)
        handle.seek(head_length)
        block = handle.read(SUBJECT_BLOCK)
    values: dict[str, str] = {}
    recipients: list[str] = []
    for name, value in fields:
        if name == "x-envelope-to":
            recipients.append(_address(value))
        else:
            values.setdefault(name, value)
    entry_id = values.get("x-mailsift-quarantine-id", "")
    if not entry_id:
        raise DamagedFile("no X-Mailsift-Quarantine-Id")
    verdict = dict(
        part.strip().partition("=")[::2] for part in values.get("x-mailsift-verdict", "").split(";") if "=" in part
    )
    try:
        created = float(values.get("x-mailsift-time", ""))
    except ValueError:
        created = os.path.getmtime(path)
    try:
        level = float(verdict.get("level", "0"))
    except ValueError:
        level = 0.0
    header_block = block.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    headers = Headers.from_message(email.parser.BytesHeaderParser().parsebytes(header_block))
    return QuarantineEntry(
        id=entry_id,
        created=created,
        category=values.get("x-mailsift-category", relative.split(os.sep, 1)[0]),
        sender=_address(values.get("return-path", "")),
        recipients=tuple(recipients),
        subject=headers.get("Subject"),
        size=file_size - head_length,
        scanner=verdict.get("scanner", ""),
        level=level,
        name=verdict.get("name", ""),
        client=values.get("x-mailsift-client", ""),
        path=relative,
        queue_id=values.get("x-mailsift-queue-id", ""),
        retry_key=values.get("x-mailsift-retry-key", ""),
    )


def read_original(path: str) -> bytes:
    """The original message stored in ``path``: the file without mailsift's head."""
    with _disk(f"cannot read {path}"), open(path, "rb") as handle:
        file_size = os.fstat(handle.fileno()).st_size
        _fields, head_length = _read_head(handle, file_size)
        handle.seek(head_length)
        return handle.read()


READ_BLOCK = 1024 * 1024
"""Bytes per block when a stored message is read back as a stream (:func:`read_blocks`)."""


def read_blocks(path: str) -> Iterator[bytes]:
    """The original message stored in ``path``, block by block (never all of it in memory)."""
    with _disk(f"cannot read {path}"), open(path, "rb") as handle:
        file_size = os.fstat(handle.fileno()).st_size
        _fields, head_length = _read_head(handle, file_size)
        handle.seek(head_length)
        while block := handle.read(READ_BLOCK):
            yield block


def stored_files(root: str) -> Iterator[str]:
    """Every message file of the store (``<category>/{new,cur}/<name>``), relative to ``root``."""
    try:
        categories = sorted(os.listdir(root))
    except FileNotFoundError:
        return
    for category in categories:
        for sub in ("new", "cur"):
            folder = os.path.join(root, category, sub)
            try:
                names = sorted(os.listdir(folder))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                if ID_PATTERN.search(name):
                    yield os.path.join(category, sub, name)


def file_id(relative: str) -> str:
    """The quarantine id in a stored file's name ('' if none)."""
    found = ID_PATTERN.search(os.path.basename(relative))
    return found.group(1) if found else ""


def locate(root: str, entry: QuarantineEntry) -> str | None:
    """The file of ``entry``: its indexed path, or found again by id (a mail reader moved it to cur/)."""
    path = os.path.join(root, entry.path)
    if os.path.exists(path):
        return path
    for relative in stored_files(root):
        if file_id(relative) == entry.id:
            return os.path.join(root, relative)
    return None


def unlink_durably(path: str) -> None:
    """Remove a stored file and fsync its folder (a missing file is already gone)."""
    with _disk(f"cannot remove {path}"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        try:
            fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            if error.errno == errno.ENOENT:
                return
            raise
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------- writing


def retry_key(mail: Mail, category: str) -> str:
    """What stays the same when the MTA retries ``mail``: a sha256 (hex) of the raw message without
    its leading trace header fields, of the envelope (sender, sorted recipients) and of ``category``.

    Left out are the header fields at the top of the message named ``Received``,
    ``Return-Path`` or ``X-Mailsift-*`` (with their continuation lines), up to the
    first other field: what a relay before mailsift may add anew on each attempt.
    Everything from that field on, body included, is hashed as received.  (The
    quarantine's own key, kept here; the same message is the same bytes below the
    trace headers.)  Streams a spooled message; reads it all once.
    """
    digest = hashlib.sha256()
    with mail.open() as stream:
        skipping = True  # still in the leading trace fields
        partial = False  # the previous chunk ended inside a line
        while skipping:
            line = stream.readline(64 * 1024)
            if not line:
                break
            # A continuation line, or the rest of a long line, belongs to the trace field before it.
            continued, partial = partial or line[:1] in (b" ", b"\t"), not line.endswith(b"\n")
            name = line.split(b":", 1)[0].strip().lower() if b":" in line else b""
            if continued or name in TRACE_FIELDS or name.startswith(b"x-mailsift-"):
                continue
            skipping = False
            digest.update(line)
        while block := stream.read(256 * 1024):
            digest.update(block)
    envelope = mail.envelope
    parts = [digest.hexdigest(), envelope.sender, sorted(envelope.recipients), category]
    return hashlib.sha256(json.dumps(parts).encode("utf-8", "surrogateescape")).hexdigest()


def build_entry(mail: Mail, category: str, result: Result, key: str, now: float) -> QuarantineEntry:
    """The index entry of ``mail`` quarantined in ``category`` at ``now`` (``path`` still empty)."""
    env = mail.envelope
    try:
        subject = mail.headers.get("Subject")
    except MailsiftError:  # the index must not fail on a header (spool, parser): '' then
        subject = ""
    return QuarantineEntry(
        id=new_id(now),
        created=now,
        category=category,
        sender=env.sender,
        recipients=tuple(env.recipients),
        subject=subject,
        size=mail.size,
        scanner=result.scanner,
        level=result.level,
        name=result.name,
        client=f"{_clean(env.client_name or 'unknown')} [{_clean(env.client_address or 'unknown')}]",
        path="",
        queue_id=env.queue_id,
        retry_key=key,
    )


class QuarantineStore:
    """Writes quarantined messages durably under ``root`` and indexes them in ``database``.

    Without a database (tests building bare settings) the files are written
    alone; ``mailsift quarantine reindex`` can index them later.

    ``retry_window`` (seconds, default :data:`RETRY_WINDOW`: 5 days): a message
    stored again within this time with the same :func:`retry_key` (the MTA's
    retry after a 451 or a crash) reuses the first copy: no second file, no
    second row, and the log says so; ``0`` stores every attempt anew.
    """

    def __init__(
        self,
        root: str,
        database: Database | None = None,
        *,
        clock: Callable[[], float] = time.time,
        retry_window: float = RETRY_WINDOW,
    ) -> None:
        self.root = root
        self.database = database
        self.clock = clock
        self.retry_window = retry_window

    def folder(self, category: str) -> str:
        return os.path.join(self.root, category)

    async def put(self, mail: Mail, category: str, result: Result) -> str:
        """Store ``mail`` in ``category``, fsynced, then index it; returns the file path.

        Raises :class:`~mailsift.errors.StorageError` (file) or
        :class:`~mailsift.errors.DatabaseError` (index): both answer 451.  The
        MTA's retry of the same message (:func:`retry_key`) within the retry
        window gets the copy stored before: found by its row, or, when the
        row was never committed (a crash or a database failure after the
        file's fsync), by the marker ``<root>/.retry/<key>`` written with the
        file and removed once its row is committed.
        """
        try:
            key = await asyncio.to_thread(retry_key, mail, category)
        except OSError as error:  # a spooled message that cannot be read
            raise StorageError(f"cannot read the message to quarantine: {error.strerror or error}") from error
        reused = await self._reuse(mail, key) if self.retry_window > 0 else None
        if reused is not None:
            return reused
        try:
            entry, path = await asyncio.to_thread(self._write, mail, category, result, key)
        except OSError as error:  # maildir.store and Mail convert their own; this is what is left
            raise StorageError(f"cannot write to the quarantine: {error.strerror or error}") from error
        crash_point("quarantine-stored")
        if self.database is not None:
            await self.database.run(_index, entry)
        crash_point("quarantine-indexed")
        _drop_marker(self.root, key)
        return path

    async def _reuse(self, mail: Mail, key: str) -> str | None:
        """The path of this message's copy stored within the retry window, or None."""
        since = self.clock() - self.retry_window
        queue_id = mail.envelope.queue_id or "-"
        if self.database is not None:
            try:
                entry = await self.database.run(find_retry, key, since)
            except MailsiftError as error:  # the index step will tell; the file first, as ever
                log.warning("queue_id=%s: quarantine retry lookup failed: %s", queue_id, error.message)
            else:
                if entry is not None and entry.path == DATABASE_PATH:  # stored with QUARANTINE_STORE "database"
                    log.info("queue_id=%s: retried message: quarantine copy %s reused (database)", queue_id, entry.id)
                    return f"{DATABASE_PATH}/{entry.id}"
                path = None if entry is None else await asyncio.to_thread(locate, self.root, entry)
                if entry is not None and path is not None:
                    log.info("queue_id=%s: retried message: quarantine copy %s reused (%s)", queue_id, entry.id, path)
                    return path
        orphan = await asyncio.to_thread(_marked, self.root, key, since)
        if orphan is None:
            return None
        entry, path = orphan
        if self.database is not None:
            await self.database.run(add_entry, entry)
        _drop_marker(self.root, key)
        log.info("queue_id=%s: retried message: unindexed quarantine copy %s indexed, reused", queue_id, entry.id)
        return path

    def _entry(self, mail: Mail, category: str, result: Result, key: str) -> QuarantineEntry:
        return build_entry(mail, category, result, key, self.clock())

    def chunks(self, entry: QuarantineEntry) -> Iterator[bytes]:
        """The original message of ``entry`` (its file without mailsift's head), in blocks of
        :data:`READ_BLOCK`; StorageError if the file is missing, damaged or unreadable."""
        path = locate(self.root, entry)
        if path is None:
            raise StorageError(f"{entry.id}: the file {entry.path} is missing from {self.root}")
        return read_blocks(path)

    def detail(self, entry: QuarantineEntry) -> str:
        """The verdict's detail (``X-Mailsift-Detail`` of the file's head), or ``""``."""
        path = locate(self.root, entry)
        if path is None:
            return ""
        try:
            with open(path, "rb") as handle:
                length = os.fstat(handle.fileno()).st_size - entry.size
                return head_detail(handle.read(length)) if 0 < length <= DETAIL_HEAD else ""
        except OSError:
            return ""

    def remove(self, entry: QuarantineEntry) -> None:
        """Remove ``entry``'s row, then its file (a crash in between leaves an orphan for ``reindex``)."""
        path = locate(self.root, entry)
        if self.database is not None:
            self.database.call(remove_entry, entry.id)
        if path is not None:
            unlink_durably(path)

    def _write(self, mail: Mail, category: str, result: Result, key: str) -> tuple[QuarantineEntry, str]:
        entry = self._entry(mail, category, result, key)
        with mail.open() as stream:
            source: Any = _CrashAtEnd(stream) if _CRASH_POINT else stream
            path = maildir.store(self.folder(category), [head(entry, result.detail)], tag=entry.id, source=source)
        relative = os.path.relpath(path, self.root)
        _write_marker(self.root, key, relative)
        return entry.with_path(relative), path


# ---------------------------------------------------------------- retry markers
#
# A file stored but not yet indexed is found by no query: for that window (and
# after a crash or a database failure in it) <root>/.retry/<key> names it.  The
# marker is not fsynced: lost in a power failure, it costs a duplicate copy at
# worst, never a message.  ``reindex`` removes the markers of files it indexed.


def _marker_path(root: str, key: str) -> str:
    return os.path.join(root, RETRY_MARKERS, key)


def _write_marker(root: str, key: str, relative: str) -> None:
    folder = os.path.join(root, RETRY_MARKERS)
    os.makedirs(folder, exist_ok=True)
    fd = os.open(_marker_path(root, key), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as handle:
        handle.write(relative)


def _drop_marker(root: str, key: str) -> None:
    try:
        os.unlink(_marker_path(root, key))
    except OSError:  # gone already (reindex took it), or never written: nothing to undo
        pass


def _marked(root: str, key: str, since: float) -> tuple[QuarantineEntry, str] | None:
    """The unindexed copy the marker for ``key`` names, if it is still there, whole and recent."""
    try:
        with open(_marker_path(root, key), encoding="utf-8", errors="surrogateescape") as handle:
            relative = handle.read(4096)
        entry = read_entry(root, relative)
    except (OSError, StorageError):  # no marker, or its file is gone or damaged: store anew
        return None
    if entry.retry_key != key or entry.created < since or os.path.isabs(relative) or ".." in relative.split(os.sep):
        return None
    return entry, os.path.join(root, relative)


def retry_markers(root: str) -> dict[str, str]:
    """Every retry marker: key → the relative path it names (``reindex`` cleans them up)."""
    folder = os.path.join(root, RETRY_MARKERS)
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    found: dict[str, str] = {}
    for name in names:
        try:
            with open(os.path.join(folder, name), encoding="utf-8", errors="surrogateescape") as handle:
                found[name] = handle.read(4096)
        except OSError:
            continue
    return found


def drop_retry_marker(root: str, key: str) -> None:
    """Remove the marker of ``key`` (its file is indexed now, or gone)."""
    _drop_marker(root, key)


def _index(connection: Any, entry: QuarantineEntry) -> None:
    add_entry(connection, entry)
    crash_point("quarantine-uncommitted")
