"""Durable Maildir writes: the one place mailsift puts a message on disk for keeps.

A message is written to ``tmp/``, flushed and ``fsync``-ed, renamed into
``new/``, and the directory is ``fsync``-ed too: after :func:`store` returns,
the message survives a crash or power loss.  ``OSError`` (disk full, permission
denied) is converted into :class:`~mailsift.errors.StorageError` here, which the
MTA sees as a 451.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Iterable
from typing import BinaryIO

from mailsift.errors import StorageError

_counter = itertools.count()


def _host() -> str:
    """This host's name as Maildir file names carry it (looked up per name, not at import)."""
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"


def ensure(root: str) -> None:
    """Create ``root/{tmp,new,cur}`` if missing."""
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(root, sub), mode=0o700, exist_ok=True)


def unique_name(tag: str = "") -> str:
    """A Maildir file name: ``<seconds>.M<usec>P<pid>Q<n>[_<tag>].<host>``."""
    now = time.time()
    seconds, micro = int(now), int((now % 1) * 1_000_000)
    suffix = f"_{tag}" if tag else ""
    return f"{seconds}.M{micro}P{os.getpid()}Q{next(_counter)}{suffix}.{_host()}"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def store(root: str, chunks: Iterable[bytes], *, tag: str = "", source: BinaryIO | None = None) -> str:
    """Write a message durably into the Maildir at ``root``; returns its path in ``new/``.

    The message is the concatenation of ``chunks`` followed by ``source`` (a
    stream copied in blocks, so a spooled message is not loaded into memory).
    """
    name = unique_name(tag)
    tmp_path = os.path.join(root, "tmp", name)
    new_path = os.path.join(root, "new", name)
    try:
        ensure(root)
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                if source is not None:
                    while block := source.read(256 * 1024):
                        handle.write(block)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            _unlink_quietly(tmp_path)
            raise
        os.rename(tmp_path, new_path)
        _fsync_dir(os.path.join(root, "new"))
    except OSError as error:
        raise StorageError(f"cannot write to maildir {root}: {error.strerror or error}") from error
    return new_path


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
