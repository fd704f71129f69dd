"""``fusefs(SCANNERS, mountpoint, source)``: on-access scanning through a FUSE filesystem (SAGATOR's fusefs).

SAGATOR's ``fusefs(SCANNERS, '/home', '/realhome')`` showed the files of
``/realhome`` at ``/home`` and scanned each file as it was opened.  mailsift's
does the same, read-only:

* the mount is a **read-only pass-through** of ``source``: listing, ``stat``,
  symlinks and reads are the source's; writes go to ``source`` itself (the
  mount answers ``EROFS``), so a file is never scanned half-written;
* a regular file is **scanned when it is opened**, as a mail with one
  attachment named after the file (``Subject:`` its path), by the same
  scanner expressions as mail (``parsemail(regexp_scan(...))``, ``clamd(...)``,
  ``file_type(...)``...).  A file the scanners would not deliver (a detection
  that rejects, drops or quarantines) is refused with ``EACCES`` and logged on
  ``mailsift.mail`` like a mail finding; a scanner that gives no verdict
  (daemon down, time out) refuses it with ``EIO`` (fail closed) unless
  ``fail_open=True``;
* verdicts are cached by the file's device, inode, mtime and size
  (:class:`VerdictCache`, ``cache_size`` entries, least recently used out):
  an unchanged file is scanned once, a changed one again.  Opens of one file
  while it is being scanned wait for that one scan;
* the file is wrapped into the mail by streaming it into a spool file under
  ``STATE_DIR/spool`` (memory stays bounded while wrapping); the scanners
  read that file as they read a spooled mail.  A file over ``max_size`` bytes
  is not scanned: ``oversize="pass"`` serves it (logged, as ClamAV's on-access
  ``OnAccessMaxFileSize`` does), ``"refuse"`` refuses it with ``EACCES``;
* each file scanned runs the config's ``HOOKS`` as a mail does after its
  disposition (``stats()`` counts it, ``log_file``/``log_syslog``/``log_sql``
  write its line, ``notify(admin=...)`` tells the admin of a finding): a
  refused file with the decision's reply (a reject is counted ``rejected``),
  a served one with 250 (``clean``).  Nothing is quarantined or delivered.

It runs in a process of its own, forked by the root supervisor of
``mailsift serve`` (:meth:`fusefs.start`; kept and restarted like the other
daemons of ``SRV``), on asyncio's own loop (pyfuse3's asyncio mode: the
scanners are asyncio code), never inside a uvloop worker.  It stays root: it
mounts, and it must read every file of ``source``.  Only root can use the
mount unless ``allow_other=True`` (then the kernel checks each user against
the source's modes: ``default_permissions`` is always on).  At stop (SIGTERM)
it unmounts (``fusermount3 -u``, lazily with ``-z`` if the mount is busy); a
stale mount left by a killed process is lazily unmounted before the next start.
Its resource limits are its own ``rlimit=``, else ``SRV``'s ``rlimit(...)`` (the
workers'), set after the fork as a worker's are (it stays root, so hard limits
may be raised).

The binding is pyfuse3 (libfuse's own, LGPL-2.1+, low-level API: inodes and
file handles, so the cache and the refusal live at ``open``), an optional
dependency: ``pip install 'mailsift[fuse]'`` with Debian's ``fuse3`` and
``libfuse3-dev`` (``scripts/setup.sh --test`` installs them).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import email.header
import errno
import importlib.util
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mailsift import replies, validators
from mailsift.core.disposition import Outcome
from mailsift.core.hooks import run_hooks
from mailsift.core.pipeline import Pipeline
from mailsift.errors import ConfigError, MailsiftError, ScannerError, ScannerTimeout, StorageError
from mailsift.message.mail import SPOOL_PREFIX, SPOOL_SUFFIX, Envelope, Mail
from mailsift.message.result import Decision, Disposition
from mailsift.scanners.base import Scanner, as_scanners
from mailsift.services.daemons import Daemon, rlimit
from mailsift.settings import Settings, SettingsBound

if TYPE_CHECKING:
    import pyfuse3

log = logging.getLogger("mailsift.fusefs")
finding_log = logging.getLogger("mailsift.mail")

FUSERMOUNT = "fusermount3"
DEFAULT_MAX_SIZE = 50 * 1024 * 1024
OVERSIZE = ("pass", "refuse")
_CHUNK = 57 * 1024  # a multiple of 57 bytes: each base64 line of 76 characters holds 57
ATTR_TIMEOUT = 1.0
"""Seconds the kernel may keep attributes and names: a file changed in ``source`` shows within a second."""


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the scanners said of one version of a file."""

    allowed: bool
    name: str = ""
    scanner: str = ""
    detail: str = ""
    level: float = 0.0


FileKey = tuple[int, int, int, int]
"""(device, inode, mtime in ns, size): one version of one file."""


def file_key(info: os.stat_result) -> FileKey:
    return (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)


class VerdictCache:
    """Verdicts by :data:`FileKey`, at most ``size`` of them (least recently used out).

    :meth:`verdict` scans a key once: a cached verdict is returned as it is, and
    concurrent calls for a key being scanned wait for that scan.  A scan that
    raises caches nothing (the next open scans again).
    """

    def __init__(self, size: int = 100_000) -> None:
        self.size = validators.positive_int(size, "fusefs: cache_size")
        self._verdicts: collections.OrderedDict[FileKey, Verdict] = collections.OrderedDict()
        self._pending: dict[FileKey, asyncio.Future[Verdict]] = {}

    def __len__(self) -> int:
        return len(self._verdicts)

    def get(self, key: FileKey) -> Verdict | None:
        verdict = self._verdicts.get(key)
        if verdict is not None:
            self._verdicts.move_to_end(key)
        return verdict

    def put(self, key: FileKey, verdict: Verdict) -> None:
        self._verdicts[key] = verdict
        self._verdicts.move_to_end(key)
        while len(self._verdicts) > self.size:
            self._verdicts.popitem(last=False)

    async def verdict(self, key: FileKey, scan: Callable[[], Awaitable[Verdict]]) -> Verdict:
        cached = self.get(key)
        if cached is not None:
            return cached
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            verdict = await scan()
        except Exception as error:
            future.set_exception(error)
            future.exception()  # marked retrieved: no "never retrieved" warning when nobody waited
            raise
        except BaseException:
            future.cancel()
            raise
        else:
            self.put(key, verdict)
            future.set_result(verdict)
            return verdict
        finally:
            del self._pending[key]


# --------------------------------------------------------------------------- the file as a mail


def _filename_parameter(name: str) -> str:
    """``filename="x.exe"``, or RFC 2231's ``filename*=utf-8''...`` for anything but plain ASCII."""
    raw = os.fsencode(name)
    if raw.isascii() and all(0x20 <= b < 0x7F and b not in b'"\\' for b in raw):
        return f'filename="{raw.decode()}"'
    return "filename*=utf-8''" + urllib.parse.quote(raw, safe="")


def _subject(path: str) -> str:
    """The path as a Subject: itself in ASCII, an RFC 2047 encoded word in UTF-8, escaped bytes otherwise."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # a name that is not UTF-8 (surrogate-escaped bytes)
        return os.fsencode(path).decode("ascii", "backslashreplace")
    if path.isascii() and path.isprintable():
        return path
    return email.header.Header(path, "utf-8", maxlinelen=998).encode(linesep="\r\n")


def mail_head(path: str, size: int) -> bytes:
    """The headers of the mail a file is scanned as, up to its one attachment's body."""
    name = _filename_parameter(os.path.basename(path) or "file")
    subject = _subject(path)
    boundary = "mailsift-fusefs-boundary"
    return (
        "From: <>\r\n"
        f"Subject: {subject}\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n'
        f"X-Mailsift-Fusefs-Size: {size}\r\n"
        "\r\n"
        f"--{boundary}\r\n"
        f"Content-Type: application/octet-stream; {name.replace('filename', 'name', 1)}\r\n"
        f"Content-Disposition: attachment; {name}\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
    ).encode("ascii")


MAIL_TAIL = b"\r\n--mailsift-fusefs-boundary--\r\n"


def write_mail(fd: int, path: str, size: int, spool_dir: str) -> str:
    """Stream the open file ``fd`` into a spool file as a mail with one base64 attachment; its path.

    Memory stays bounded (one chunk at a time).  The spool file is named like
    the workers' (``mailsift-<pid>-...eml``), so a crash leaves nothing that the
    next start does not remove.
    """
    os.makedirs(spool_dir, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-fusefs-", suffix=SPOOL_SUFFIX, dir=spool_dir)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(mail_head(path, size))
            offset = 0
            while offset < size:
                chunk = os.pread(fd, min(_CHUNK, size - offset), offset)
                if not chunk:
                    break  # the file shrank meanwhile: the key check after the scan catches it
                offset += len(chunk)
                encoded = base64.encodebytes(chunk)  # 76-character lines ending in \n
                out.write(encoded.replace(b"\n", b"\r\n"))
            out.write(MAIL_TAIL)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    return name


# --------------------------------------------------------------------------- the scan


class FileScanner:
    """Scans open files with the configured scanners, through the verdict cache."""

    def __init__(
        self,
        scanners: Sequence[Scanner],
        spool_dir: str,
        *,
        cache: VerdictCache,
        timeout: float,
        max_size: int,
        oversize: str,
        fail_open: bool,
        settings: Settings | None = None,
    ) -> None:
        self.pipeline = Pipeline(scanners)
        self.settings = settings
        """The config's settings: its ``HOOKS`` run for every file scanned, as for every mail."""
        self.spool_dir = spool_dir
        self.cache = cache
        self.timeout = timeout
        self.max_size = max_size
        self.oversize = oversize
        self.fail_open = fail_open
        self.scans = 0
        """How many files were scanned (not answered from the cache)."""

    async def check(self, fd: int, path: str, who: str = "") -> None:
        """Raise OSError(EACCES) for a file the scanners refuse, OSError(EIO) when they give no verdict.

        ``who``: the process that opened it (``uid=0 pid=123``), for the log."""
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return
        key = file_key(info)
        try:
            verdict = await self.cache.verdict(key, lambda: self._scan(fd, path, info, who))
        except MailsiftError as error:
            if self.fail_open:
                log.warning("fusefs: %s: not scanned (%s): served, fail_open=True", path, error.message)
                return
            log.warning("fusefs: %s: not scanned (%s): refused with EIO", path, error.message)
            raise OSError(errno.EIO, os.strerror(errno.EIO)) from None
        if not verdict.allowed:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    async def _scan(self, fd: int, path: str, info: os.stat_result, who: str) -> Verdict:
        started = time.monotonic()
        if info.st_size > self.max_size:
            allowed = self.oversize == "pass"
            why = f"{info.st_size} bytes exceed max_size {self.max_size}"
            verdict = Verdict(allowed, "" if allowed else "Oversized", "fusefs", f"not scanned: {why}")
            self._log(path, info.st_size, verdict, time.monotonic() - started, who)
            return verdict
        self.scans += 1
        try:
            spooled = await asyncio.to_thread(write_mail, fd, path, info.st_size, self.spool_dir)
        except OSError as error:  # the spool (ENOSPC...) or the file itself (EIO): no verdict
            raise StorageError(f"fusefs: cannot wrap the file for the scanners: {error.strerror or error}") from None
        mail = Mail(Envelope(queue_id=f"fusefs-{os.getpid()}-{self.scans}", protocol="FUSE"), path=spooled)
        mail.started = started  # the log hooks' and the statistics' "time taken"
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    decision = await self.pipeline.evaluate(mail)
            except TimeoutError:
                raise ScannerTimeout(f"fusefs: no verdict within {self.timeout:g} s") from None
            if decision.error is not None:
                raise decision.error
            if decision.disposition is Disposition.TEMPFAIL:  # a rule's deliberate 4xx: no verdict
                raise ScannerError(f"fusefs: the scanners answered {decision.reply.code} ({decision.result.name})")
            if file_key(os.fstat(fd)) != file_key(info):  # changed while scanned: what was scanned is not served
                raise ScannerError("fusefs: the file changed while it was scanned")
            result = decision.result
            verdict = Verdict(decision.delivers, result.name, result.scanner, result.detail, result.level)
            self._log(path, info.st_size, verdict, time.monotonic() - started, who)
            await self._hooks(mail, decision, verdict)  # while the spooled file is there: hooks may read it
            return verdict
        finally:
            with contextlib.suppress(OSError):
                os.unlink(spooled)

    async def aclose(self) -> None:
        """At stop: the scanners' resources, and the hooks' (the statistics write what they counted)."""
        await self.pipeline.aclose()
        for hook in self.settings.hooks if self.settings is not None else ():
            try:
                await hook.close()
            except Exception:
                log.exception("fusefs: closing hook %s failed", hook.describe())

    async def _hooks(self, mail: Mail, decision: Decision, verdict: Verdict) -> None:
        """The config's ``HOOKS`` that record (``Hook.for_files``: the log hooks and ``stats``; a file
        is not mail, so no archive copy, notification or spam copy), as after a mail's disposition:
        a refused file is the decision's reply (a reject is 550, counted ``rejected``; nothing is
        quarantined or delivered), a served one 250.  Errors are logged, never raised; they may
        take ``timeout`` seconds at most (the open waits for them)."""
        hooks = tuple(hook for hook in self.settings.hooks if hook.for_files) if self.settings is not None else ()
        if self.settings is None or not hooks:
            return
        if verdict.allowed:
            outcome = Outcome(replies.OK, "served")
        else:
            outcome = Outcome(decision.reply, "refused with EACCES")
        try:
            async with asyncio.timeout(self.timeout):  # the open waits for them: bounded as the scan is
                await run_hooks(hooks, mail, decision, outcome, self.settings)
        except TimeoutError:
            log.warning("fusefs: the hooks took over %g s for %s; the verdict stands", self.timeout, mail.subject)

    def _log(self, path: str, size: int, verdict: Verdict, elapsed: float, who: str) -> None:
        if verdict.allowed and not verdict.detail.startswith("not scanned"):
            log.debug("fusefs: %s: clean (%.3f s)", path, elapsed)
            return
        finding_log.info(
            "fusefs action=%s reply=%s level=%.2f name=%s scanner=%s path=%s size=%d %stime=%.3fs%s",
            "pass" if verdict.allowed else "refuse",
            "-" if verdict.allowed else "EACCES",
            verdict.level,
            verdict.name or "-",
            verdict.scanner or "-",
            validators.escape_controls(path),
            size,
            f"{who} " if who else "",
            elapsed,
            f" note={validators.escape_controls(verdict.detail)}" if verdict.detail else "",
        )


# --------------------------------------------------------------------------- the filesystem


def _operations(source: str, files: FileScanner) -> pyfuse3.Operations:
    """The pass-through operations (pyfuse3 is imported here: only the fusefs process loads it)."""
    import pyfuse3

    class Passthrough(pyfuse3.Operations):
        """A read-only view of ``source``; ``open`` asks :class:`FileScanner` first."""

        def __init__(self) -> None:
            super().__init__()
            self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: source}
            self.keys: dict[int, tuple[int, int]] = {}
            self.inodes: dict[tuple[int, int], int] = {}
            self.lookups: dict[int, int] = collections.defaultdict(int)
            self.next_inode = pyfuse3.ROOT_INODE + 1
            self.files: dict[int, int] = {}  # file handle -> fd
            self.listings: dict[int, list[tuple[bytes, os.stat_result]]] = {}
            self.listed_inode: dict[int, int] = {}
            self.next_handle = 1
            root = os.lstat(source)
            self.keys[pyfuse3.ROOT_INODE] = (root.st_dev, root.st_ino)
            self.inodes[(root.st_dev, root.st_ino)] = pyfuse3.ROOT_INODE

        # -- inodes

        def path(self, inode: int) -> str:
            try:
                return self.paths[inode]
            except KeyError:
                raise pyfuse3.FUSEError(errno.ESTALE) from None

        def inode_of(self, path: str, info: os.stat_result) -> int:
            key = (info.st_dev, info.st_ino)
            inode = self.inodes.get(key)
            if inode is None:
                inode, self.next_inode = self.next_inode, self.next_inode + 1
                self.inodes[key] = inode
                self.keys[inode] = key
            self.paths[inode] = path  # the last name it was seen under (hard links: any one serves)
            return inode

        def attributes(self, inode: int, info: os.stat_result) -> pyfuse3.EntryAttributes:
            entry = pyfuse3.EntryAttributes()
            entry.st_ino = inode
            entry.generation = 0
            entry.entry_timeout = ATTR_TIMEOUT
            entry.attr_timeout = ATTR_TIMEOUT
            entry.st_mode = info.st_mode
            entry.st_nlink = info.st_nlink
            entry.st_uid = info.st_uid
            entry.st_gid = info.st_gid
            entry.st_rdev = info.st_rdev
            entry.st_size = info.st_size
            entry.st_blksize = info.st_blksize
            entry.st_blocks = info.st_blocks
            entry.st_atime_ns = info.st_atime_ns
            entry.st_mtime_ns = info.st_mtime_ns
            entry.st_ctime_ns = info.st_ctime_ns
            return entry

        def stat(self, path: str) -> os.stat_result:
            try:
                return os.lstat(path)
            except OSError as error:
                raise pyfuse3.FUSEError(error.errno or errno.EIO) from None

        # -- lookups and attributes

        async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
            parent = self.path(parent_inode)
            if name == b".":
                path = parent
            elif name == b"..":
                path = parent if parent_inode == pyfuse3.ROOT_INODE else os.path.dirname(parent)
            else:
                path = os.path.join(parent, os.fsdecode(name))
            info = self.stat(path)
            inode = pyfuse3.ROOT_INODE if path == source else self.inode_of(path, info)
            if name not in (b".", b".."):
                self.lookups[inode] += 1
            return self.attributes(inode, info)

        async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
            for inode, count in inode_list:
                left = self.lookups[inode] - count
                if left > 0 or inode == pyfuse3.ROOT_INODE:
                    self.lookups[inode] = max(left, 0)
                    continue
                self.lookups.pop(inode, None)
                self.paths.pop(inode, None)
                key = self.keys.pop(inode, None)
                if key is not None:
                    self.inodes.pop(key, None)

        async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
            return self.attributes(inode, self.stat(self.path(inode)))

        async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
            try:
                return os.readlink(os.fsencode(self.path(inode)))
            except OSError as error:
                raise pyfuse3.FUSEError(error.errno or errno.EIO) from None

        async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
            found = os.statvfs(source)
            data = pyfuse3.StatvfsData()
            for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail"):
                setattr(data, field, getattr(found, field))
            data.f_namemax = found.f_namemax
            return data

        # -- directories

        async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
            path = self.path(inode)
            if not stat.S_ISDIR(self.stat(path).st_mode):
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            handle, self.next_handle = self.next_handle, self.next_handle + 1
            self.listed_inode[handle] = inode
            return handle

        async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
            directory = self.path(self.listed_inode[fh])
            if start_id == 0 or fh not in self.listings:
                entries: list[tuple[bytes, os.stat_result]] = []
                try:
                    with os.scandir(os.fsencode(directory)) as found:
                        for entry in found:
                            with contextlib.suppress(OSError):
                                entries.append((entry.name, entry.stat(follow_symlinks=False)))
                except OSError as error:
                    raise pyfuse3.FUSEError(error.errno or errno.EIO) from None
                entries.sort()
                self.listings[fh] = entries
            for index, (name, info) in enumerate(self.listings[fh][start_id:], start=start_id):
                path = os.path.join(directory, os.fsdecode(name))
                inode = self.inode_of(path, info)
                if not pyfuse3.readdir_reply(token, name, self.attributes(inode, info), index + 1):
                    break
                self.lookups[inode] += 1

        async def releasedir(self, fh: int) -> None:
            self.listings.pop(fh, None)
            self.listed_inode.pop(fh, None)

        # -- files

        async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC | os.O_CREAT):
                raise pyfuse3.FUSEError(errno.EROFS)
            path = self.path(inode)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as error:
                raise pyfuse3.FUSEError(error.errno or errno.EIO) from None
            try:
                info = os.fstat(fd)
                if (info.st_dev, info.st_ino) != self.keys.get(inode):
                    # replaced since the kernel looked it up (and checked its modes): not the file it asked for
                    raise pyfuse3.FUSEError(errno.ESTALE)
                if not stat.S_ISREG(info.st_mode):
                    raise pyfuse3.FUSEError(errno.EACCES)  # a device, a fifo: only files are served
                os.set_blocking(fd, True)
                await files.check(fd, path, f"uid={ctx.uid} pid={ctx.pid}")
            except OSError as error:
                os.close(fd)
                raise pyfuse3.FUSEError(error.errno or errno.EIO) from None
            except BaseException:
                os.close(fd)
                raise
            handle, self.next_handle = self.next_handle, self.next_handle + 1
            self.files[handle] = fd
            return pyfuse3.FileInfo(fh=handle, keep_cache=False)

        async def read(self, fh: int, off: int, size: int) -> bytes:
            try:
                return os.pread(self.files[fh], size, off)
            except OSError as error:
                raise pyfuse3.FUSEError(error.errno or errno.EIO) from None

        async def release(self, fh: int) -> None:
            fd = self.files.pop(fh, None)
            if fd is not None:
                os.close(fd)

    return Passthrough()


# --------------------------------------------------------------------------- mounts


def is_mounted(path: str) -> bool:
    """Whether ``path`` is a mount point; a FUSE mount whose process died (ENOTCONN) counts."""
    try:
        return os.path.ismount(path) or _stale(path)
    except OSError:
        return True


def _stale(path: str) -> bool:
    try:
        os.stat(path)
    except OSError as error:
        return error.errno == errno.ENOTCONN
    return False


def unmount(mountpoint: str) -> bool:
    """``fusermount3 -u``, then ``-u -z`` (lazy: detached now, gone when the last user lets go); whether it is gone."""
    program = shutil.which(FUSERMOUNT) or FUSERMOUNT
    for args in (["-u"], ["-u", "-z"]):
        if not is_mounted(mountpoint):
            return True
        try:
            subprocess.run([program, *args, mountpoint], capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            log.warning("fusefs: %s %s %s: %s", program, " ".join(args), mountpoint, error)
    return not is_mounted(mountpoint)


def _close_inherited_sockets() -> None:
    """The forked process keeps none of the supervisor's listening sockets (a port given up on reload
    must not stay bound by it)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2:
            continue
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.close(fd)


# --------------------------------------------------------------------------- the config object


def _scanner_tree(scanners: Iterable[Scanner]) -> Iterator[Scanner]:
    seen: set[int] = set()
    pending = list(scanners)
    while pending:
        scanner = pending.pop()
        if id(scanner) not in seen:
            seen.add(id(scanner))
            yield scanner
            pending.extend(scanner.children)


class fusefs(Daemon):
    """On-access scanning: ``fusefs(SCANNERS, '/srv/scanned', '/srv/files')`` (SAGATOR's ``fusefs``).

    ``mountpoint``: an empty directory where the files of ``source`` are seen;
    ``source``: the real directory (SAGATOR's ``root_path``).  Options:
    ``allow_other`` (default False: only root may use the mount), ``fail_open``
    (default False: a file the scanners could not judge is refused with EIO),
    ``max_size`` (bytes; larger files are not scanned) with ``oversize``
    (``"pass"`` or ``"refuse"``), ``timeout`` (seconds per scan),
    ``cache_size`` (verdicts kept), ``rlimit`` (``rlimit(NAME=value, ...)``: its
    process's resource limits; by default ``SRV``'s ``rlimit(...)``, the workers').
    See the module's documentation.
    """

    kind = "fusefs"

    def __init__(
        self,
        scanners: Sequence[Any],
        mountpoint: str,
        source: str = "/",
        *,
        allow_other: bool = False,
        fail_open: bool = False,
        max_size: int = DEFAULT_MAX_SIZE,
        oversize: str = "pass",
        timeout: float = 120.0,
        cache_size: int = 100_000,
        rlimit: rlimit | None = None,
    ) -> None:
        self.scanners = as_scanners(scanners, "fusefs")
        for what, value in (("mountpoint", mountpoint), ("source", source)):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"fusefs: {what} must be a directory path, got {value!r}")
        self.mountpoint = os.path.abspath(mountpoint)
        self.source = os.path.abspath(source)
        self.allow_other = validators.flag(allow_other, "fusefs: allow_other")
        self.fail_open = validators.flag(fail_open, "fusefs: fail_open")
        self.max_size = validators.positive_int(max_size, "fusefs: max_size", unit="number of bytes")
        self.oversize = validators.choice(oversize, "fusefs: oversize", OVERSIZE)
        self.timeout = validators.positive(timeout, "fusefs: timeout", unit="number of seconds")
        self.cache_size = validators.positive_int(cache_size, "fusefs: cache_size")
        self.settings: Settings | None = None
        super().__init__(sys.executable)
        self._processes(rlimit, "", "", "")

    srv_limits: rlimit | None = None
    """``SRV``'s ``rlimit(...)``, set by the supervisor: it runs the config's scanners as a worker does,
    so the workers' limits are its limits unless it has its own ``rlimit=``."""

    def effective_limits(self) -> rlimit | None:
        """The limits its process gets: its own ``rlimit=``, else ``SRV``'s."""
        return self.limits if self.limits is not None else self.srv_limits

    def describe(self) -> str:
        return f"fusefs({self.mountpoint} <- {self.source})"

    def identity(self) -> tuple[Any, ...]:
        scanners = tuple(line for scanner in self.scanners for line in scanner.tree())
        options = (self.allow_other, self.fail_open, self.max_size, self.oversize, self.timeout, self.cache_size)
        limits = self.effective_limits()
        return (self.kind, self.mountpoint, self.source, scanners, options, limits.identity() if limits else ())

    def bind_settings(self, settings: Settings) -> None:
        """The config's settings, and its scanners' (the loader binds the services' scanners, not a daemon's)."""
        self.settings = settings
        for scanner in _scanner_tree(self.scanners):
            if isinstance(scanner, SettingsBound):
                scanner.bind_settings(settings)

    def check(self) -> None:
        if importlib.util.find_spec("pyfuse3") is None:
            raise ConfigError(
                f"{self.describe()}: needs pyfuse3: pip install 'mailsift[fuse]' (with Debian's fuse3 and libfuse3-dev)"
            )
        if not shutil.which(FUSERMOUNT):
            raise ConfigError(f"{self.describe()}: {FUSERMOUNT} not found: install Debian's fuse3")
        inside = os.path.commonpath([self.mountpoint, self.source])
        if inside in (self.mountpoint, self.source):
            raise ConfigError(f"{self.describe()}: the mountpoint and the source must not contain each other")
        if not os.path.isdir(self.source):
            raise ConfigError(f"{self.describe()}: source {self.source} is not a directory")
        if not os.path.isdir(self.mountpoint) and not is_mounted(self.mountpoint):
            raise ConfigError(f"{self.describe()}: mountpoint {self.mountpoint} is not a directory")

    def prepare(self, state_dir: str, clients_group: int | None = None) -> None:
        if is_mounted(self.mountpoint) and not unmount(self.mountpoint):
            raise ConfigError(f"{self.describe()}: {self.mountpoint} is mounted already and cannot be unmounted")

    def log_path(self, state_dir: str) -> str:
        return "mailsift's own log"  # the forked process logs where the supervisor does

    def ready(self) -> bool:
        return os.path.ismount(self.mountpoint)

    def start(self, state_dir: str) -> int:
        """Fork the fusefs process (the supervisor calls this); its pid.  The child never returns."""
        self.prepare(state_dir)
        settings = self.settings or Settings(state_dir=state_dir)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            return pid
        code = 0
        try:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            _close_inherited_sockets()
            os.setsid()
            limits = self.effective_limits()
            if limits is not None:  # as root still, as a worker's (so it may raise hard limits)
                limits.apply()
            self.serve(settings)
        except BaseException:
            log.exception("%s failed", self.describe())
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)

    def serve(self, settings: Settings) -> None:
        """Mount, serve until SIGTERM/SIGINT, unmount (in this process)."""
        import pyfuse3
        import pyfuse3.asyncio

        pyfuse3.asyncio.enable()  # the scanners are asyncio code: pyfuse3 runs on asyncio's loop
        files = FileScanner(
            self.scanners,
            settings.spool_dir,
            cache=VerdictCache(self.cache_size),
            timeout=self.timeout,
            max_size=self.max_size,
            oversize=self.oversize,
            fail_open=self.fail_open,
            settings=settings,
        )
        options = set(pyfuse3.default_options) | {
            "fsname=mailsift",
            "subtype=fusefs",
            "ro",
            "nodev",
            "nosuid",
            "default_permissions",
        }
        options.add("default_permissions")  # the kernel checks each user against the source's modes
        if self.allow_other:
            options.add("allow_other")
        pyfuse3.init(_operations(self.source, files), self.mountpoint, options)
        log.info("%s mounted (pid %d)", self.describe(), os.getpid())
        unmounted = False
        try:

            async def main() -> None:
                loop = asyncio.get_running_loop()
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(signum, pyfuse3.terminate)
                loop.add_signal_handler(signal.SIGHUP, lambda: None)
                try:
                    await pyfuse3.main()
                finally:
                    await files.aclose()

            asyncio.run(main())
            pyfuse3.close(unmount=True)
            unmounted = True
        finally:
            if not unmounted:
                with contextlib.suppress(Exception):
                    pyfuse3.close(unmount=False)
            if not unmount(self.mountpoint):
                log.error("%s: cannot unmount %s", self.describe(), self.mountpoint)
        log.info("%s unmounted", self.describe())
