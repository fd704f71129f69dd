"""``decompress(...)``: run scanners on archive members, with limits against bombs.

``decompress(s, ...)`` is SAGATOR's unpacking interscanner.  For its target
(a decoded part under ``parsemail``, or a member found by an outer
``decompress``) it runs the wrapped scanners on the target itself, then, if
the data is a container, on each member as a
:class:`~mailsift.scanners.base.DataTarget` named ``<part path>/<member>``,
recursing into nested containers.  The first detection wins and names the
member path.

Containers are read with libarchive (libarchive-c): zip, 7z, rar (v4, v5),
cab, tar, cpio, ar, lha, iso9660, xar, each optionally compressed (gzip,
bzip2, xz, lzma, lzip, zstd, lz4, compress); a lone compressed stream
(``.gz``, ``.bz2``, ``.xz``) is read through libarchive's "raw" format as one
member.  MS-TNEF (``winmail.dat``) is read with tnefparse, its attachments
being the members.  libarchive cannot read ARJ, zip's "implode" and
"deflate64" methods, CHM, SIS or SZDD: those are scanned as plain data.

Only formats and filters that work in memory are enabled: never ``mtree``
(its entries name files on *this* host) and never the filters that run an
external program (lrzip, lzop, grzip).

Limits (defaults chosen like amavisd-new's and ClamAV's, scaled for a
gateway that keeps members in memory):

``max_depth=10``
    containers nested in containers (amavisd ``$MAXLEVELS`` 14, ClamAV
    ``MaxRecursion`` 17; real mail hardly ever nests more than 3).
``max_total_size=100 MiB``
    bytes expanded for one target, all levels together (amavisd
    ``$MIN_EXPANSION_QUOTA`` 100 MB, ClamAV ``MaxScanSize`` 400 MB).  This is
    also the memory bound: members are held until scanned, and nothing more
    than this many expanded bytes is ever read.
``max_ratio=250``
    expanded bytes of one container over its own size, checked once more
    than 1 MiB came out of it (amavisd's ``$MAX_EXPANSION_FACTOR`` is 500
    relative to the whole mail; plain text compresses about 10:1, a
    deflate stream cannot exceed about 1032:1, so 250 leaves room for
    repetitive data while stopping deflate bombs early).
``max_members=3000``
    files in all containers together (amavisd ``$MAXFILES`` 3000; ClamAV
    ``MaxFiles`` 10000).
``max_time=30.0``
    seconds of unpacking for one target, checked between blocks of 64 KiB,
    so that the reading thread really stops (ClamAV ``MaxScanTime`` is 120 s
    for everything it does; unpacking is only part of a scan).

Hitting a limit is a finding named like ClamAV's
(``Heuristics.Limits.Exceeded.MaxTotalSize``, ``.MaxRatio``, ``.MaxMembers``,
``.MaxDepth``, ``.MaxTime``) after what was read has been scanned;
``limits='ignore'`` scans what fits and lets the rest pass.  Encrypted
members are ``Encrypted.Archive`` (qmail-scanner's "block password-protected
zip"), or skipped with ``encrypted='ignore'``.  A container libarchive
reports as damaged is scanned as far as it could be read; with
``broken='detect'`` it is also ``Heuristics.Broken.Archive``.
"""

from __future__ import annotations

import ctypes
import io
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from mailsift.errors import ConfigError, ContentError, MailsiftError
from mailsift.message.result import Result
from mailsift.scanners import work
from mailsift.scanners.base import DataTarget, Interscanner, Target
from mailsift.scanners.encrypted import decryptable, open_encrypted
from mailsift.scanners.office import ENCRYPTED_DOCUMENT, ENCRYPTED_LEVELS, OLE_MAGIC, decrypt_for_mail
from mailsift.scanners.passwords import (
    DEFAULT_MAX_PASSWORD_LENGTH,
    DEFAULT_MAX_PASSWORD_TIME,
    DEFAULT_MAX_PASSWORDS,
    Tries,
    mail_candidates,
    tries,
)
from mailsift.validators import choice, non_negative, non_negative_int

MiB = 1024 * 1024

DEFAULT_MAX_DEPTH = 10
DEFAULT_MAX_TOTAL_SIZE = 100 * MiB
DEFAULT_MAX_RATIO = 250.0
DEFAULT_MAX_MEMBERS = 3000
DEFAULT_MAX_TIME = 30.0

RATIO_FLOOR = 1 * MiB
"""The ratio limit applies once a container gave more than this: a 2 KiB text
compressed to 20 bytes is not a bomb."""

BLOCK_SIZE = 64 * 1024
"""Bytes read from libarchive at a time; limits and the clock are checked between blocks."""

READ_FORMATS = ("7zip", "ar", "cab", "cpio", "iso9660", "lha", "rar", "rar5", "tar", "xar", "zip", "raw")
READ_FILTERS = ("gzip", "bzip2", "xz", "lzma", "lzip", "zstd", "lz4", "compress")

TNEF_SIGNATURE = b"\x78\x9f\x3e\x22"
"""0x223E9F78 little-endian: the first four bytes of every TNEF stream."""

LIMIT_PREFIX = "Heuristics.Limits.Exceeded."
ENCRYPTED = "Encrypted.Archive"
BROKEN = "Heuristics.Broken.Archive"

_COMPRESSED_SUFFIX = re.compile(r"\.(gz|gzip|z|bz2|bz|xz|lzma|lz|zst|lz4)$", re.IGNORECASE)


@cache
def _libarchive() -> Any:
    """libarchive-c, imported (and its C library loaded) when the first container is read,
    not when a config names decompress(): a worker that never unpacks does not load it."""
    import libarchive.ffi
    import libarchive.read

    entry_is_encrypted = libarchive.ffi.libarchive.archive_entry_is_encrypted
    entry_is_encrypted.argtypes = [ctypes.c_void_p]
    entry_is_encrypted.restype = ctypes.c_int
    return libarchive


# --------------------------------------------------------------------------- reading (in a thread)


@dataclass
class Budget:
    """What the whole walk of one target may still spend; shared by every level."""

    bytes_left: int
    members_left: int
    deadline: float | None
    clock: Callable[[], float] = time.monotonic
    passwords: list[str] | None = None
    """The message's candidate passwords, read at the first encrypted container."""

    def out_of_time(self) -> bool:
        return self.deadline is not None and self.clock() >= self.deadline


@dataclass
class Member:
    """One file read out of a container."""

    name: str
    data: bytes
    decrypted: bool = False


@dataclass
class Listing:
    """What reading one container gave: its members and why reading stopped early, if it did."""

    format: str
    members: list[Member] = field(default_factory=list)
    limit: str = ""
    limit_detail: str = ""
    encrypted: list[str] = field(default_factory=list)
    broken: str = ""
    passwords_cut: str = ""
    """Why the password tries stopped before every candidate was tried (the message's password time)."""

    def stop(self, limit: str, detail: str) -> None:
        self.limit, self.limit_detail = limit, detail


class _Stop(ContentError):
    """Internal: a limit was hit; the listing says which."""


@contextmanager
def _reader(data: bytes) -> Iterator[Any]:
    """libarchive over ``data`` with our formats and filters (libarchive-c's
    ``memory_reader`` enables only one format, or all of them, mtree included)."""
    libarchive = _libarchive()
    lib = libarchive.ffi.libarchive
    archive_p = libarchive.ffi.read_new()
    try:
        for name in READ_FILTERS:
            getattr(lib, f"archive_read_support_filter_{name}")(ctypes.c_void_p(archive_p))
        for name in READ_FORMATS:
            getattr(lib, f"archive_read_support_format_{name}")(ctypes.c_void_p(archive_p))
        libarchive.ffi.read_open_memory(archive_p, data, len(data))
        yield libarchive.read.ArchiveRead(archive_p)
    finally:
        libarchive.ffi.read_free(archive_p)


def _raw_name(parent_names: tuple[str, ...]) -> str:
    """The member name of a lone compressed stream: ``x.exe.gz`` gives ``x.exe``."""
    for name in parent_names:
        stripped = _COMPRESSED_SUFFIX.sub("", name.rsplit("/", 1)[-1])
        if stripped and stripped != name.rsplit("/", 1)[-1]:
            return stripped
    return "data"


def _looks_encrypted(message: str) -> bool:
    lowered = message.lower()
    return "encrypt" in lowered or "passphrase" in lowered or "password" in lowered


class _Reader:
    """Reads one container's members within the shared budget and this container's ratio."""

    def __init__(self, data: bytes, budget: Budget, max_ratio: float | None) -> None:
        self.data, self.budget, self.max_ratio = data, budget, max_ratio
        self.expanded = 0

    def check_clock(self, listing: Listing) -> None:
        if self.budget.out_of_time():
            listing.stop("MaxTime", "unpacking time limit reached")
            raise _Stop

    def take_member(self, listing: Listing, name: str) -> None:
        if self.budget.members_left <= 0:
            listing.stop("MaxMembers", f"too many members (at {name!r})")
            raise _Stop
        self.budget.members_left -= 1

    def add(self, listing: Listing, out: io.BytesIO, block: bytes, name: str) -> None:
        """Keep ``block`` if the limits allow; stop (keeping what fits) if not."""
        room = self.budget.bytes_left
        if len(block) > room:
            out.write(block[:room])
            self.budget.bytes_left = 0
            listing.stop("MaxTotalSize", f"more than the expansion limit (at {name!r})")
            raise _Stop
        out.write(block)
        self.budget.bytes_left -= len(block)
        self.expanded += len(block)
        if (
            self.max_ratio is not None
            and self.expanded > RATIO_FLOOR
            and self.expanded > self.max_ratio * max(len(self.data), 1)
        ):
            listing.stop("MaxRatio", f"expands more than {self.max_ratio:g} times its size (at {name!r})")
            raise _Stop

    def read_archive(self, names: tuple[str, ...], probe: bool) -> Listing | None:
        listing: Listing | None = None
        name = ""
        libarchive = _libarchive()
        entry_is_encrypted = libarchive.ffi.libarchive.archive_entry_is_encrypted
        try:
            with _reader(self.data) as archive:
                for entry in archive:
                    if listing is None:
                        format_name = archive.format_name.decode("ascii", "replace")
                        filters = [f.decode("ascii", "replace") for f in archive.filter_names]
                        if format_name == "raw" and not filters:
                            return None  # not a container: libarchive's catch-all took it as is
                        listing = Listing(format_name if not filters else f"{format_name}+{'+'.join(filters)}")
                        if probe:
                            return listing
                    self.check_clock(listing)
                    if not entry.isfile:
                        continue
                    name = entry.pathname or f"member{len(listing.members) + 1}"
                    if format_name == "raw":
                        name = _raw_name(names)
                    self.take_member(listing, name)
                    if entry_is_encrypted(ctypes.c_void_p(entry._entry_p)):
                        listing.encrypted.append(name)
                        continue
                    out = io.BytesIO()
                    try:
                        for block in entry.get_blocks(BLOCK_SIZE):
                            self.add(listing, out, block, name)
                            self.check_clock(listing)
                    except libarchive.ArchiveError:
                        if out.tell():  # scan what could be read of a damaged member
                            listing.members.append(Member(name, out.getvalue()))
                        raise
                    except _Stop:
                        listing.members.append(Member(name, out.getvalue()))  # what fits in the limits
                        raise
                    listing.members.append(Member(name, out.getvalue()))
                    del out
        except _Stop:
            pass
        except libarchive.ArchiveError as error:
            message = str(error.msg or error)
            if listing is None:
                listing = Listing("unknown")
            if _looks_encrypted(message):
                listing.encrypted.append(name or "(archive header)")
            else:
                listing.broken = message
        return listing


def _tnef_name(attachment: Any) -> str:
    """An attachment's long (MAPI) filename, else its 8.3 name; tnefparse may fail on either."""
    for getter in (attachment.long_filename, lambda: attachment.name):
        try:
            value = getter()
        except Exception:  # noqa: BLE001, S112 - a malformed name property: try the other name
            continue
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if value:
            return str(value).strip("\x00").strip()
    return ""


def _read_tnef(data: bytes, reader: _Reader) -> Listing:
    import tnefparse  # loaded at the first winmail.dat, not at start

    listing = Listing("tnef")
    try:
        attachments = tnefparse.TNEF(data, do_checksum=False).attachments
    except Exception as error:  # noqa: BLE001 - tnefparse raises exceptions of many kinds on bad input
        listing.broken = f"TNEF: {type(error).__name__}: {error}"
        return listing
    try:
        for number, attachment in enumerate(attachments, 1):
            reader.check_clock(listing)
            name = _tnef_name(attachment) or f"attachment{number}"
            reader.take_member(listing, name)
            out = io.BytesIO()
            try:
                reader.add(listing, out, bytes(attachment.data or b""), name)
            finally:
                listing.members.append(Member(name, out.getvalue()))
    except _Stop:
        pass
    return listing


def read_container(
    data: bytes, names: tuple[str, ...], budget: Budget, max_ratio: float | None, *, probe: bool = False
) -> Listing | None:
    """Read the members of ``data`` if it is a container (``None`` if it is not).

    Blocking: run it in a thread.  ``probe`` only answers whether ``data`` is
    a container (an empty listing) without reading any member.
    """
    if not data:
        return None
    reader = _Reader(data, budget, max_ratio)
    try:
        if data.startswith(TNEF_SIGNATURE):
            return Listing("tnef") if probe else _read_tnef(data, reader)
        return reader.read_archive(names, probe)
    except MailsiftError:
        raise
    except Exception as error:  # libarchive's ArchiveError is a verdict ("broken"); anything else fails on this data
        raise ContentError(f"unpacking failed: {type(error).__name__}: {error}") from error


class _ListingSink:
    """The decryptors' view of a reader: room and clock of the shared budget; opened members join the listing."""

    def __init__(self, reader: _Reader, listing: Listing) -> None:
        self.reader, self.listing = reader, listing

    def room(self) -> int:
        return self.reader.budget.bytes_left

    def out_of_time(self) -> bool:
        return self.reader.budget.out_of_time()

    def keep(self, name: str, data: bytes) -> None:
        self.reader.take_member(self.listing, name)
        out = io.BytesIO()
        try:
            self.reader.add(self.listing, out, data, name)
        finally:
            self.listing.members.append(Member(name, out.getvalue(), decrypted=True))


def decrypt_container(
    data: bytes,
    listing: Listing,
    passwords: list[str],
    budget: Budget,
    max_ratio: float | None,
    password_tries: Tries | None = None,
) -> None:
    """Open the encrypted members of ``listing`` (a zip or 7z read from ``data``) with ``passwords``.

    Opened members join ``listing.members`` (``decrypted=True``); ``listing.encrypted``
    keeps the ones still closed; ``listing.passwords_cut`` says when the message's
    password time (``password_tries``) stopped the tries.  Blocking: run it in a thread.
    """
    kind = decryptable(data)
    if not kind or not passwords:
        return
    if listing.format == "unknown":
        listing.format = "7zip" if kind == "7z" else "zip"
    reader = _Reader(data, budget, max_ratio)
    before = len(listing.members)
    skip = {member.name for member in listing.members}
    try:
        opened, limit = open_encrypted(data, passwords, skip, _ListingSink(reader, listing), password_tries)
    except _Stop:
        opened_names = {member.name for member in listing.members[before:]}
        listing.encrypted = [name for name in listing.encrypted if name not in opened_names]
        return
    except MailsiftError:
        raise
    except Exception:  # noqa: BLE001 - pyzipper/py7zr on a damaged archive: it stays as libarchive saw it
        return
    if limit:
        if not listing.limit:
            what = "unpacking time limit reached" if limit == "MaxTime" else "more than the expansion limit"
            listing.stop(limit, f"{what} (trying passwords)")
        listing.encrypted = [name for name in listing.encrypted if name not in opened.opened]
    elif opened.password:
        listing.encrypted = opened.closed
    listing.passwords_cut = opened.cut


# --------------------------------------------------------------------------- the interscanner


class decompress(Interscanner):
    """Run the wrapped scanners on the target and on every archive member inside it.

    ``decompress(clamd(...), max_depth=10, max_total_size=100*1024*1024,
    max_ratio=250, max_members=3000, max_time=30.0, encrypted='detect',
    limits='detect', broken='ignore', passwords=True, max_passwords=20,
    max_password_length=64, max_password_time=0.5)``; see the module
    documentation for what each limit means and why its default is what it
    is.  ``max_ratio`` and ``max_time`` accept ``None`` (no limit).
    ``passwords``: try the message's candidate passwords
    (:mod:`mailsift.scanners.passwords`) on encrypted zip and 7z members and
    password-protected Office documents, at most ``max_passwords`` of at most
    ``max_password_length`` characters, the tries of all archives and
    documents of the message taking at most ``max_password_time`` seconds
    together (``None``: no limit; never past the message deadline).
    """

    name = "decompress"

    def __init__(
        self,
        *scanners: Any,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_total_size: int = DEFAULT_MAX_TOTAL_SIZE,
        max_ratio: float | None = DEFAULT_MAX_RATIO,
        max_members: int = DEFAULT_MAX_MEMBERS,
        max_time: float | None = DEFAULT_MAX_TIME,
        encrypted: str = "detect",
        limits: str = "detect",
        broken: str = "ignore",
        passwords: bool = True,
        max_passwords: int = DEFAULT_MAX_PASSWORDS,
        max_password_length: int = DEFAULT_MAX_PASSWORD_LENGTH,
        max_password_time: float | None = DEFAULT_MAX_PASSWORD_TIME,
        encrypted_documents: str = "report",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(*scanners)
        self.max_depth = non_negative_int(max_depth, "decompress: max_depth")
        self.max_total_size = non_negative_int(max_total_size, "decompress: max_total_size")
        self.max_ratio = None if max_ratio is None else non_negative(max_ratio, "decompress: max_ratio")
        self.max_members = non_negative_int(max_members, "decompress: max_members")
        self.max_time = None if max_time is None else non_negative(max_time, "decompress: max_time")
        self.encrypted = choice(encrypted, "decompress: encrypted", ("detect", "ignore"))
        self.limits = choice(limits, "decompress: limits", ("detect", "ignore"))
        self.broken = choice(broken, "decompress: broken", ("detect", "ignore"))
        if not isinstance(passwords, bool):
            raise ConfigError(f"decompress: passwords must be True or False, got {passwords!r}")
        self.passwords = passwords
        self.max_passwords = non_negative_int(max_passwords, "decompress: max_passwords")
        self.max_password_length = non_negative_int(max_password_length, "decompress: max_password_length")
        self.max_password_time = (
            None if max_password_time is None else non_negative(max_password_time, "decompress: max_password_time")
        )
        self.encrypted_documents = choice(
            encrypted_documents, "decompress: encrypted_documents", tuple(ENCRYPTED_LEVELS)
        )
        self.clock = clock

    def describe(self) -> str:
        ratio = "none" if self.max_ratio is None else f"{self.max_ratio:g}"
        seconds = "none" if self.max_time is None else f"{self.max_time:g}s"
        password_seconds = "none" if self.max_password_time is None else f"{self.max_password_time:g}s"
        return (
            f"decompress(max_depth={self.max_depth}, max_total_size={self.max_total_size}, max_ratio={ratio}, "
            f"max_members={self.max_members}, max_time={seconds}, encrypted={self.encrypted}, "
            f"limits={self.limits}, broken={self.broken}, passwords={self.passwords}, "
            f"max_passwords={self.max_passwords}, max_password_length={self.max_password_length}, "
            f"max_password_time={password_seconds}, encrypted_documents={self.encrypted_documents})"
        )

    async def scan(self, target: Target) -> Result:
        deadline = None if self.max_time is None else self.clock() + self.max_time
        budget = Budget(self.max_total_size, self.max_members, deadline, self.clock)
        return await self._walk(target, budget, getattr(target, "depth", 0))

    async def _decrypt(self, target: Target, listing: Listing, budget: Budget) -> None:
        if budget.passwords is None:
            budget.passwords = await work.in_thread(
                mail_candidates, target.mail, self.max_passwords, self.max_password_length
            )
        if budget.passwords:
            password_tries = tries(target.mail, self.max_password_time)
            await work.in_thread(
                decrypt_container, target.data, listing, budget.passwords, budget, self.max_ratio, password_tries
            )

    async def _document(self, target: Target, budget: Budget, depth: int) -> Result | None:
        """A password-protected Office document: what its decrypted copy gives, else ``Encrypted.Document``."""
        max_passwords = self.max_passwords if self.passwords else 0
        decryption = await work.in_thread(
            decrypt_for_mail,
            target.mail,
            target.data,
            max_passwords,
            self.max_password_length,
            budget.out_of_time,
            max_password_time=self.max_password_time,
        )
        if decryption is None:
            return None
        where = target.path or "message"
        name = repr(target.names[0]) if target.names else where
        if decryption.plain is None:
            detail = f"{where}: password-protected Office document {name}, no password from the mail opened it"
            if decryption.cut:
                detail += f" ({decryption.cut})"
            return Result(ENCRYPTED_LEVELS[self.encrypted_documents], ENCRYPTED_DOCUMENT, self.name, detail)
        if len(decryption.plain) > budget.bytes_left:
            budget.bytes_left = 0
            return self._finding(LIMIT_PREFIX + "MaxTotalSize", f"{where}: the decrypted document is too big")
        budget.bytes_left -= len(decryption.plain)
        child = DataTarget(target, decryption.plain, names=target.names, path=f"{target.path or 'message'}/(decrypted)")
        result = await self._walk(child, budget, depth + 1)
        if result.detected:
            how = "Excel's built-in password" if decryption.default else "a password from the mail"
            note = f"password-protected Office document {name} opened with {how}"
            return Result(result.level, result.name, result.scanner, f"{result.detail} ({note})", result.actions)
        return result

    def _finding(self, name: str, detail: str) -> Result:
        return Result(1.0, name, self.name, detail)

    async def _walk(self, target: Target, budget: Budget, depth: int) -> Result:
        best = await self.inner(target)
        if best.detected:
            return best
        where = target.path or "message"
        if target.data.startswith(OLE_MAGIC) and self.encrypted_documents != "ignore" and depth < self.max_depth:
            document = await self._document(target, budget, depth)
            if document is not None:
                return document if document.level > best.level or document.detected else best
        probe = depth >= self.max_depth
        listing = await work.in_thread(read_container, target.data, target.names, budget, self.max_ratio, probe=probe)
        if listing is None:
            return best
        if probe:
            if self.limits == "detect":
                return self._finding(
                    LIMIT_PREFIX + "MaxDepth", f"{where}: containers nested deeper than {self.max_depth}"
                )
            return best
        if listing.encrypted and self.passwords and not listing.limit and decryptable(target.data):
            await self._decrypt(target, listing, budget)
        members = listing.members
        listing.members = []  # members are released one by one as they are scanned
        while members:
            member = members.pop(0)
            path = f"{target.path}/{member.name}" if target.path else member.name
            child = DataTarget(target, member.data, names=(member.name,), path=path)
            decrypted = member.decrypted
            del member
            result = await self._walk(child, budget, depth + 1)
            if result.detected:
                detail = result.detail
                if path not in detail:
                    detail = f"{detail}; member {path}" if detail else f"member {path}"
                if decrypted:
                    archive = repr(target.names[0]) if target.names else where
                    detail += f" (encrypted archive {archive} opened with a password from the mail)"
                if detail != result.detail:
                    result = Result(result.level, result.name, result.scanner, detail, result.actions)
                return result
            if result.level > best.level:
                best = result
        if listing.limit and self.limits == "detect":
            return self._finding(LIMIT_PREFIX + listing.limit, f"{where} ({listing.format}): {listing.limit_detail}")
        if listing.encrypted and self.encrypted == "detect":
            shown = ", ".join(repr(n) for n in listing.encrypted[:5])
            cut = f" ({listing.passwords_cut})" if listing.passwords_cut else ""
            return self._finding(ENCRYPTED, f"{where} ({listing.format}): encrypted member(s) {shown}{cut}")
        if listing.broken and self.broken == "detect":
            return self._finding(BROKEN, f"{where} ({listing.format}): {listing.broken}")
        return best
