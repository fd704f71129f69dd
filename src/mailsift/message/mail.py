"""The message being filtered: envelope, raw bytes, and lazy parsed views.

The raw bytes are the truth and are kept exactly as received; a message over
``spool_threshold`` (default 1 MB) lives in a temporary file instead of memory,
``STATE_DIR/spool/mailsift-<pid>-<random>.eml``: removed when the message is
done, however its processing ended, and, for a process killed meanwhile, by
:func:`remove_stale_spool` when a worker starts (the file's pid no longer runs,
or the file is older than :data:`STALE_SPOOL_SECONDS`).
Parsed views are computed on first use and cached:

* :attr:`Mail.headers` — the top-level header block, raw and decoded;
* :attr:`Mail.tree` — the MIME tree (:class:`MimeNode`), attached messages
  (``message/rfc822``) parsed recursively;
* :attr:`Mail.parts` — the decoded leaf parts (:class:`Part`), each with every
  candidate filename, its declared type, size and path in the tree, plus
  uuencoded blocks found inside text parts.

Parsing uses the standard library's lenient parser (``compat32`` policy, which
never raises on malformed input but records defects).  That parser keeps a body
as a list of line strings and then joins them, about 2.6 copies of a big
attachment before it is even decoded; so long runs of base64 lines are held out
of it (:class:`Blobs`) and read back from the raw message when their part is
decoded.  Each leaf's encoded payload is released as soon as it is decoded, so
a parse holds about two copies of the message at most: the raw bytes (or none,
when spooled) and the decoded parts.

This is where the message's foreign errors enter and are mapped, once: an
``OSError`` writing or reading the spool file is a
:class:`~mailsift.errors.StorageError` (infrastructure: a retry may pass);
anything else the parser raises on the message (``RecursionError``,
``UnicodeError``, ``MemoryError``...) is a :class:`~mailsift.errors.ContentError`
(tied to this message's content: it will fail again).
"""

from __future__ import annotations

import email.errors
import email.parser
import email.utils
import io
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, BinaryIO

from mailsift.errors import ContentError, MailsiftError, StorageError
from mailsift.mime.tree import Blobs, Headers, MimeNode, Part, TreeBuilder, new_parser

DEFAULT_SPOOL_THRESHOLD = 1024 * 1024
_CHUNK = 64 * 1024
SPOOL_PREFIX = "mailsift-"
SPOOL_SUFFIX = ".eml"
STALE_SPOOL_SECONDS = 24 * 3600
"""A spool file older than this is removed at a worker's start even if its pid runs: no message
takes that long (the session and message timeouts are minutes), so its pid was reused."""
_SPOOL_NAME = re.compile(rf"{re.escape(SPOOL_PREFIX)}(?:(\d+)-)?[^/]*{re.escape(SPOOL_SUFFIX)}")

log = logging.getLogger("mailsift.spool")


@dataclass(slots=True)
class Envelope:
    """The SMTP envelope and where the message came from."""

    sender: str = ""
    recipients: list[str] = field(default_factory=list)
    client_address: str = ""
    client_name: str = ""
    helo: str = ""
    queue_id: str = ""
    protocol: str = "SMTP"
    mail_options: list[str] = field(default_factory=list)
    relay_client: bool | None = None
    """qmail's ``RELAYCLIENT`` as the front end was told it (None: not told; the log's ``relay_clients`` decide)."""


# --------------------------------------------------------------------------- mail


class Mail:
    """A message with its envelope; raw bytes kept exactly, views parsed lazily."""

    def __init__(
        self,
        envelope: Envelope | None = None,
        data: bytes | None = None,
        *,
        path: str | None = None,
        spool_threshold: int = DEFAULT_SPOOL_THRESHOLD,
        spool_dir: str | None = None,
    ) -> None:
        self.envelope = envelope or Envelope()
        self.started: float | None = None
        """When the mail path took this message (``time.monotonic()``): the log's "time taken"."""
        self.memo: dict[Any, Any] = {}
        """Lookups made once per message and shared by its scanners (policies, lists); goes with it."""
        self._data: bytes | None = None
        self._path: str | None = None
        self._owns_path = False
        if path is not None:
            self._path = path
            self.size = os.path.getsize(path)
        else:
            data = data or b""
            self.size = len(data)
            if self.size > spool_threshold:
                self._spool(data, spool_dir)
            else:
                self._data = data

    def _spool(self, data: bytes, spool_dir: str | None) -> None:
        try:
            name = write_spool(data, spool_dir)
        except OSError as error:  # ENOSPC, EIO, a missing spool directory: the MTA retries (451)
            raise StorageError(f"cannot spool the message: {error.strerror or error}") from error
        self._path, self._owns_path = name, True

    def elapsed(self) -> float:
        """Seconds since the mail path took this message (0.0 if it has not)."""
        return 0.0 if self.started is None else max(0.0, time.monotonic() - self.started)

    @property
    def spooled(self) -> bool:
        """True when the raw bytes live in a file rather than in memory."""
        return self._data is None

    @property
    def raw(self) -> bytes:
        """The message exactly as received (read from the spool file if spooled)."""
        if self._data is not None:
            return self._data
        assert self._path is not None
        try:
            with open(self._path, "rb") as handle:
                return handle.read()
        except OSError as error:
            raise StorageError(f"cannot read the spooled message: {error.strerror or error}") from error

    def open(self) -> BinaryIO:
        """A binary stream of the raw message, without loading a spooled one."""
        if self._data is not None:
            return io.BytesIO(self._data)
        assert self._path is not None
        try:
            return open(self._path, "rb")
        except OSError as error:
            raise StorageError(f"cannot read the spooled message: {error.strerror or error}") from error

    def close(self) -> None:
        """Remove the spool file, if this mail made one.  Never raises: the message's answer is
        decided already (a file that cannot be removed is logged, and removed at the next start)."""
        if self._owns_path and self._path:
            self._owns_path = False
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
            except OSError as error:
                log.warning("cannot remove the spool file %s: %s", self._path, error.strerror or error)

    def __enter__(self) -> Mail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lazy views

    @cached_property
    def _structure(self) -> tuple[MimeNode, list[Part], list[Part], set[bytes]]:
        with parsing("MIME structure"):
            blobs = Blobs(self)
            parser = new_parser()
            blobs.feed(parser)
            builder = TreeBuilder(blobs)
            root = builder.build(parser.close(), "")
        return root, builder.parts, builder.alternates, builder.base64_sources

    @cached_property
    def headers(self) -> Headers:
        """The top-level header fields (only the header block is parsed)."""
        block = bytearray()
        with parsing("header"):
            with self.open() as stream:
                for line in stream:
                    if line in (b"\r\n", b"\n"):
                        break
                    block += line
                    if len(block) > 4 * 1024 * 1024:
                        break
            return Headers.from_message(email.parser.BytesHeaderParser().parsebytes(bytes(block)))

    @property
    def tree(self) -> MimeNode:
        return self._structure[0]

    @property
    def parts(self) -> list[Part]:
        return self._structure[1]

    @property
    def alternates(self) -> list[Part]:
        """Other plausible transfer decodings of leaves (doubled or odd encodings); usually empty."""
        return self._structure[2]

    @property
    def base64_sources(self) -> set[bytes]:
        """Keys (:func:`base64_source_key`) of the base64 texts the alternates decoded already."""
        return self._structure[3]

    @cached_property
    def views(self) -> list[Part]:
        """The lenient views: every other reasonable reading of the message (see :mod:`mailsift.mime.views`).

        Parts a mail client could see that the strict :attr:`parts` do not hold,
        deduplicated against them; empty for ordinary mail.  Computed on first use.
        """
        from mailsift.mime.views import compute_views  # views builds on this module

        with parsing("lenient views"):
            return compute_views(self)

    @property
    def subject(self) -> str:
        return self.headers.get("subject")

    @property
    def message_id(self) -> str:
        return self.headers.get("message-id")


def write_spool(data: bytes, spool_dir: str | None) -> str:
    """Write ``data`` to a new file in ``spool_dir``; its path.  Nothing is left behind on failure.

    The name carries this process's pid (``mailsift-<pid>-<random>.eml``), so
    :func:`remove_stale_spool` can tell the files of a killed process.
    """
    fd, name = tempfile.mkstemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-", suffix=SPOOL_SUFFIX, dir=spool_dir)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except BaseException:
        try:
            os.unlink(name)
        except OSError:
            pass
        raise
    return name


def process_runs(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def remove_stale_spool(
    spool_dir: str,
    *,
    max_age: float = STALE_SPOOL_SECONDS,
    runs: Callable[[int], bool] = process_runs,
    now: float | None = None,
) -> list[str]:
    """Remove the spool files left by processes that no longer run, and any older than ``max_age``.

    Called when a worker starts: a worker killed (SIGKILL, the OOM killer, a
    crash) inside a transaction never removed its message's file.  A file whose
    pid still runs (a sibling worker, an old one draining after a reload) is
    kept unless older than ``max_age``; a file without a pid (made before
    names carried one) goes by its age alone.  Returns the names removed, logged.
    Never raises: a directory that cannot be read is logged and skipped.
    ``runs`` (pid -> bool) and ``now`` are for tests.
    """
    now = time.time() if now is None else now
    removed: list[str] = []
    try:
        names = os.listdir(spool_dir)
    except FileNotFoundError:
        return removed
    except OSError as error:
        log.warning("cannot list the spool directory %s: %s", spool_dir, error.strerror or error)
        return removed
    for name in sorted(names):
        match = _SPOOL_NAME.fullmatch(name)
        if match is None:
            continue
        path = os.path.join(spool_dir, name)
        try:
            age = now - os.stat(path).st_mtime
            pid = match.group(1)
            if age <= max_age and (pid is None or runs(int(pid))):
                continue
            os.unlink(path)
        except FileNotFoundError:
            continue  # removed meanwhile (its transaction ended, or another worker cleaned up)
        except OSError as error:
            log.warning("cannot remove the stale spool file %s: %s", path, error.strerror or error)
            continue
        removed.append(name)
    if removed:
        log.warning(
            "removed %d spool file(s) left by processes that no longer run (or older than %.0f s) in %s: %s",
            len(removed),
            max_age,
            spool_dir,
            " ".join(removed[:20]) + (" ..." if len(removed) > 20 else ""),
        )
    return removed


@contextmanager
def parsing(what: str) -> Iterator[None]:
    """Map what parsing ``mail`` raises: ``OSError`` (the spool) -> StorageError, the rest -> ContentError."""
    try:
        yield
    except MailsiftError:
        raise
    except OSError as error:
        raise StorageError(f"cannot read the spooled message: {error.strerror or error}") from error
    except Exception as error:  # the parser failed on this message: it will fail again
        raise ContentError(f"cannot parse the message ({what}): {type(error).__name__}: {error}") from error
