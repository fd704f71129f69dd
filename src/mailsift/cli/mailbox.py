"""Mailboxes for ``mailsift scan-mailbox`` (SAGATOR's sgscan): read, and write cleaned copies.

Two formats, told apart by what the path is:

* an **mbox** file: messages separated by ``From `` lines.  It is read as a
  stream, one message at a time (memory is bounded by the largest message,
  not the mailbox).  A ``From `` line starts a message at the top of the file
  or after an empty line (the rule mutt and Dovecot follow; a ``From `` line
  inside a paragraph stays in the body).  The separator line is not given to
  the scanners; ``>From`` quoting is left as it is.
* a **Maildir** (a directory with ``cur/`` and ``new/``), with its Maildir++
  subfolders (``.Sent/``, ``.Archive/``...): every file of ``cur/`` and
  ``new/`` is a message; ``tmp/`` (deliveries in progress) is skipped.

The cleaned copy goes *beside* the original: ``<mbox>.clean`` or
``<Maildir>.clean/``.  Kept messages are copied byte for byte (an mbox
message with its ``From `` line and separator, a Maildir file under the
same name), so the copy is exactly the original minus the removed messages.
The copy is written under a temporary name and renamed into place at the
end, so a crash never leaves a half-written ``.clean``; the original is only
ever opened for reading.  An existing output is refused unless ``force``.

Python's :mod:`mailbox` module is not used for mbox: it rewrites ``From ``
lines and quoting when writing, and the copy must be byte-identical.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from mailsift.errors import RequestRefused

CLEAN_SUFFIX = ".clean"
UTF8_BOM = b"\xef\xbb\xbf"


class MailboxError(RequestRefused):
    """A mailbox that cannot be read, or a cleaned copy that cannot be written."""


@dataclass(frozen=True)
class Message:
    """One message of a mailbox.

    ``key`` names it for the report (``#3`` in an mbox, ``cur/1700000000.x:2,S``
    in a Maildir); ``data`` is what the scanners see; ``raw`` is what a cleaned
    copy gets (mbox: with the ``From `` line); ``size`` is the bytes it took in
    the mailbox (for the progress bar).
    """

    key: str
    data: bytes
    raw: bytes
    size: int


def is_maildir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "cur")) and os.path.isdir(os.path.join(path, "new"))


def clean_path(path: str) -> str:
    """Where the cleaned copy of ``path`` goes."""
    return os.path.normpath(path) + CLEAN_SUFFIX


def open_mailbox(path: str) -> Mailbox:
    """The mbox file or Maildir at ``path``."""
    if os.path.isdir(path):
        if not is_maildir(path):
            raise MailboxError(f"{path}: a directory but not a Maildir (no cur/ and new/)")
        return Maildir(path)
    if not os.path.exists(path):
        raise MailboxError(f"{path}: no such file or directory")
    return Mbox(path)


class Mailbox:
    """Common surface of :class:`Mbox` and :class:`Maildir`."""

    def __init__(self, path: str) -> None:
        self.path = path

    @property
    def size(self) -> int:
        """Total bytes of the messages (the progress bar's length)."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Message]:
        raise NotImplementedError

    def cleaner(self, *, force: bool = False) -> Cleaner:
        """A writer of the cleaned copy; refuses an existing output unless ``force``."""
        raise NotImplementedError


# --------------------------------------------------------------------------- mbox


def _is_blank(line: bytes) -> bool:
    return line in (b"\n", b"\r\n")


class Mbox(Mailbox):
    """An mbox file, read one message at a time."""

    @property
    def size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except OSError as error:
            raise MailboxError(f"{self.path}: {error.strerror}") from None

    def __iter__(self) -> Iterator[Message]:
        try:
            with open(self.path, "rb") as handle:
                yield from self._messages(handle)
        except OSError as error:
            raise MailboxError(f"{self.path}: {error.strerror or error}") from None

    def _messages(self, handle: BinaryIO) -> Iterator[Message]:
        lines: list[bytes] = []
        number = 0
        previous_blank = True
        for line in handle:
            if number == 0 and not lines and line.startswith(UTF8_BOM):
                line = line[len(UTF8_BOM) :]  # some tools write one; dropped from the copy too
            if previous_blank and line.startswith(b"From "):
                if lines:
                    number += 1
                    yield self._message(number, lines)
                lines = [line]
            elif not lines:
                if number == 0 and not _is_blank(line):
                    raise MailboxError(f"{self.path}: not an mbox file (it does not start with a 'From ' line)")
            else:
                lines.append(line)
            previous_blank = _is_blank(line)
        if lines:
            yield self._message(number + 1, lines)

    @staticmethod
    def _message(number: int, lines: list[bytes]) -> Message:
        raw = b"".join(lines)
        body = lines[1:]
        if body and _is_blank(body[-1]):
            body = body[:-1]  # the separator before the next From line
        return Message(f"#{number}", b"".join(body), raw, len(raw))

    def cleaner(self, *, force: bool = False) -> Cleaner:
        return MboxCleaner(self.path, force=force)


# --------------------------------------------------------------------------- Maildir


class Maildir(Mailbox):
    """A Maildir and its Maildir++ subfolders; messages in name order, folder by folder."""

    def folders(self) -> list[str]:
        """Relative paths of the Maildir (``""``) and its ``.Sub`` folders."""
        found = [""]
        try:
            names = sorted(os.listdir(self.path))
        except OSError as error:
            raise MailboxError(f"{self.path}: {error.strerror}") from None
        found += [n for n in names if n.startswith(".") and n not in (".", "..") and is_maildir(self._full(n))]
        return found

    def _full(self, relative: str) -> str:
        return os.path.join(self.path, relative) if relative else self.path

    def files(self) -> Iterator[str]:
        """Relative paths of the message files (``cur/...``, ``.Sent/new/...``)."""
        for folder in self.folders():
            for sub in ("cur", "new"):
                where = os.path.join(self._full(folder), sub)
                try:
                    entries = sorted(os.scandir(where), key=lambda e: e.name)
                except OSError as error:
                    raise MailboxError(f"{where}: {error.strerror}") from None
                for entry in entries:
                    if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                        yield os.path.join(folder, sub, entry.name)

    @property
    def size(self) -> int:
        total = 0
        for relative in self.files():
            try:
                total += os.lstat(self._full(relative)).st_size
            except OSError:
                pass  # gone meanwhile: the read will say so
        return total

    def __iter__(self) -> Iterator[Message]:
        for relative in self.files():
            path = self._full(relative)
            try:
                with open(path, "rb") as handle:
                    data = handle.read()
            except FileNotFoundError:
                continue  # moved by the mail client (new/ -> cur/) while we scanned
            except OSError as error:
                raise MailboxError(f"{path}: {error.strerror or error}") from None
            yield Message(relative, data, data, len(data))

    def cleaner(self, *, force: bool = False) -> Cleaner:
        return MaildirCleaner(self.path, self.folders(), force=force)


# --------------------------------------------------------------------------- cleaned copies


class Cleaner:
    """Writes the cleaned copy of one mailbox: :meth:`keep` the clean messages,
    then :meth:`commit` (rename into place) or :meth:`abort` (remove the partial copy)."""

    def __init__(self, original: str, *, force: bool) -> None:
        self.original = original
        self.output = clean_path(original)
        self.force = force
        self.kept = 0
        if os.path.lexists(self.output) and not force:
            raise MailboxError(f"{self.output} exists (use --force to replace it)")

    def keep(self, message: Message) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class MboxCleaner(Cleaner):
    """``<mbox>.clean``: the kept messages' bytes, in their original order."""

    def __init__(self, original: str, *, force: bool) -> None:
        super().__init__(original, force=force)
        folder = os.path.dirname(self.output) or "."
        try:
            fd, self._temporary = tempfile.mkstemp(prefix=os.path.basename(self.output) + ".", dir=folder)
        except OSError as error:
            raise MailboxError(f"cannot write beside {original}: {error.strerror}") from None
        self._handle = os.fdopen(fd, "wb")  # mkstemp: mode 0600, never wider than a mailbox should be

    def keep(self, message: Message) -> None:
        try:
            self._handle.write(message.raw)
        except OSError as error:
            raise MailboxError(f"{self._temporary}: {error.strerror}") from None
        self.kept += 1

    def commit(self) -> None:
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            os.chmod(self._temporary, stat.S_IMODE(os.stat(self.original).st_mode))
            os.replace(self._temporary, self.output)
        except OSError as error:
            self.abort()
            raise MailboxError(f"{self.output}: {error.strerror}") from None

    def abort(self) -> None:
        self._handle.close()
        try:
            os.unlink(self._temporary)
        except FileNotFoundError:
            pass


class MaildirCleaner(Cleaner):
    """``<Maildir>.clean/``: the same folders, the kept files under their own names."""

    def __init__(self, original: str, folders: list[str], *, force: bool) -> None:
        super().__init__(original, force=force)
        parent = os.path.dirname(self.output) or "."
        try:
            self._temporary = tempfile.mkdtemp(prefix=os.path.basename(self.output) + ".", dir=parent)
            for folder in folders:
                for sub in ("cur", "new", "tmp"):
                    os.makedirs(os.path.join(self._temporary, folder, sub), mode=0o700, exist_ok=True)
        except OSError as error:
            raise MailboxError(f"cannot write beside {original}: {error.strerror}") from None

    def keep(self, message: Message) -> None:
        target = os.path.join(self._temporary, message.key)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(message.raw)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            raise MailboxError(f"{target}: {error.strerror}") from None
        self.kept += 1

    def commit(self) -> None:
        try:
            if os.path.lexists(self.output):  # only with force (checked at construction)
                previous = tempfile.mkdtemp(
                    prefix=os.path.basename(self.output) + ".old.", dir=os.path.dirname(self.output) or "."
                )
                os.replace(self.output, os.path.join(previous, "old"))
                os.replace(self._temporary, self.output)
                shutil.rmtree(previous)
            else:
                os.replace(self._temporary, self.output)
        except OSError as error:
            self.abort()
            raise MailboxError(f"{self.output}: {error.strerror}") from None

    def abort(self) -> None:
        shutil.rmtree(self._temporary, ignore_errors=True)
