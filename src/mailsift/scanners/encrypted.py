"""Encrypted zip and 7z members opened with candidate passwords (see :mod:`mailsift.scanners.passwords`).

libarchive lists encrypted members but does not decrypt AES zip or 7z; this
module does, for :class:`~mailsift.scanners.archive.decompress`:

- zip, ZipCrypto and WinZip AES (AE-1, AE-2): pyzipper (MIT; a maintained
  fork of the standard library's zipfile that adds AES; it reads ZipCrypto too);
- 7z (AES-256 + SHA-256, with or without encrypted headers): py7zr (LGPL-2.1+).

RAR is not decrypted: libarchive reads RAR but not encrypted RAR, and the
Python readers (rarfile) run the non-free ``unrar`` (or ``unar``/``7z`` with
its non-free RAR codec), which Debian main does not have; an encrypted RAR
stays ``Encrypted.Archive``.

Each candidate is tried on each still-closed member (the last password that
worked first).  A wrong password is found out cheaply for most members
(ZipCrypto's check byte, AES's verifier, 7z's encrypted header); the rest
fail on the CRC, the AES authentication code or the decompressor.  A member
is read whole and checked before anything of it is kept, into a buffer never
bigger than what the caller's :class:`Sink` still allows, and the clock is
checked between blocks and between candidates: a wrong password that passes
the first check cannot expand past the limits.  The message's password time
(:class:`~mailsift.scanners.passwords.Tries`) is checked before each candidate:
when it is spent, the members still closed stay closed (``Opened.cut``).
Blocking: run in a thread.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mailsift.errors import ContentError
from mailsift.scanners.passwords import Tries

ZIP_MAGIC = b"PK\x03\x04"
SEVEN_ZIP_MAGIC = b"7z\xbc\xaf\x27\x1c"
BLOCK_SIZE = 64 * 1024
TOO_BIG = "MaxTotalSize"
OUT_OF_TIME = "MaxTime"


class Sink(Protocol):
    """What the caller lets the decryption spend (archive.py's reader, over its shared budget)."""

    def room(self) -> int:
        """Bytes that may still be expanded."""

    def out_of_time(self) -> bool:
        """The unpacking time is over."""

    def keep(self, name: str, data: bytes) -> None:
        """Count and keep one opened member (may raise when a limit is reached)."""


@dataclass
class Opened:
    """What the candidates opened: the password that did (the last one, when several did)
    and the members still closed."""

    password: str = ""
    opened: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    tried: int = 0
    cut: str = ""
    """Why the tries stopped before every candidate was tried (``Tries.describe``), or ``''``."""


def _too_big(name: str) -> ContentError:
    """A member expands past the room left: it is not kept (the limit is reported by the caller)."""
    return ContentError(f"{TOO_BIG}: {name}")


def _out_of_time() -> ContentError:
    return ContentError(OUT_OF_TIME)


def decryptable(data: bytes) -> str:
    """``'zip'``, ``'7z'`` or ``''``: which decryptor reads ``data``."""
    if data.startswith(ZIP_MAGIC):
        return "zip"
    if data.startswith(SEVEN_ZIP_MAGIC):
        return "7z"
    return ""


def _ordered(passwords: Sequence[str], last: str) -> list[str]:
    return [last, *[p for p in passwords if p != last]] if last else list(passwords)


def _read_zip_member(archive: Any, info: Any, password: bytes, sink: Sink) -> bytes:
    room = sink.room()
    out = io.BytesIO()
    with archive.open(info, pwd=password) as stream:
        while True:
            if sink.out_of_time():
                raise _out_of_time()
            block = stream.read(BLOCK_SIZE)
            if not block:
                return out.getvalue()
            if out.tell() + len(block) > room:
                raise _too_big(info.filename)
            out.write(block)


def open_zip(data: bytes, passwords: Sequence[str], sink: Sink, opened: Opened, tries: Tries) -> None:
    """Open the encrypted members of a zip with the first candidate that works for each."""
    import pyzipper  # loaded at the first encrypted zip

    with pyzipper.AESZipFile(io.BytesIO(data)) as archive:
        members = [info for info in archive.infolist() if info.flag_bits & 0x1 and not info.is_dir()]
        for info in members:
            data_out: bytes | None = None
            for password in _ordered(passwords, opened.password):
                if sink.out_of_time():
                    raise _out_of_time()
                if not tries.more():
                    break
                opened.tried += 1
                try:
                    with tries.trying():
                        data_out = _read_zip_member(archive, info, password.encode("utf-8"), sink)
                except ContentError:
                    raise
                except Exception:  # noqa: BLE001, S112 - a wrong password fails in many ways (check byte, CRC, zlib, HMAC)
                    continue
                opened.password = password
                break
            if data_out is None:
                opened.closed.append(info.filename)
                continue
            opened.opened.append(info.filename)
            sink.keep(info.filename, data_out)


def _seven_zip_writers(sink: Sink) -> Any:
    from py7zr.io import Py7zIO, WriterFactory

    class Writer(Py7zIO):
        def __init__(self, factory: Factory, name: str) -> None:
            self.factory, self.name, self.buffer = factory, name, io.BytesIO()

        def write(self, s: bytes | bytearray) -> int:
            if sink.out_of_time():
                raise _out_of_time()
            self.factory.total += len(s)
            if self.factory.total > self.factory.room:
                raise _too_big(self.name)
            return self.buffer.write(s)

        def read(self, size: int | None = None) -> bytes:
            return b""

        def seek(self, offset: int, whence: int = 0) -> int:
            return self.buffer.tell()

        def flush(self) -> None:
            pass

        def size(self) -> int:
            return self.buffer.tell()

    class Factory(WriterFactory):
        def __init__(self) -> None:
            self.room = sink.room()
            self.total = 0
            self.products: dict[str, Writer] = {}

        def create(self, filename: str) -> Py7zIO:
            writer = Writer(self, filename)
            self.products[filename] = writer
            return writer

    return Factory()


def try_7z(data: bytes, password: str, factory: Any) -> None:
    """Extract the whole 7z ``data`` with ``password`` into ``factory``'s writers (raises if it is wrong)."""
    import py7zr  # loaded at the first encrypted 7z

    with py7zr.SevenZipFile(io.BytesIO(data), password=password) as archive:
        archive.extract(factory=factory)


def open_7z(data: bytes, passwords: Sequence[str], skip: set[str], sink: Sink, opened: Opened, tries: Tries) -> None:
    """Open an encrypted 7z with the first candidate that extracts it whole (CRCs checked)."""
    for password in _ordered(passwords, opened.password):
        if sink.out_of_time():
            raise _out_of_time()
        if not tries.more():
            break
        opened.tried += 1
        factory = _seven_zip_writers(sink)
        try:
            with tries.trying():
                try_7z(data, password, factory)
        except ContentError:
            raise
        except Exception:  # noqa: BLE001, S112 - a wrong password fails in many ways (header, CRC, LZMA)
            continue
        opened.password = password
        for name, writer in factory.products.items():
            if name in skip:
                continue  # read already by libarchive (not encrypted)
            opened.opened.append(name)
            sink.keep(name, writer.buffer.getvalue())
        return
    opened.closed.append("(7z archive)")


def open_encrypted(
    data: bytes, passwords: Sequence[str], skip: set[str], sink: Sink, tries: Tries | None = None
) -> tuple[Opened, str]:
    """Try ``passwords`` on ``data`` (a zip or a 7z); ``(what opened, why it stopped early or '')``.

    ``skip``: members read already (a 7z is extracted whole).  The reason is
    ``'MaxTotalSize'`` or ``'MaxTime'`` when a limit stopped the trying.  When
    the message's password time (``tries``; unlimited if ``None``) ran out,
    ``Opened.cut`` says so and the members not opened stay in ``Opened.closed``.
    """
    opened = Opened()
    tries = tries or Tries()
    kind = decryptable(data)
    try:
        if kind == "zip":
            open_zip(data, passwords, sink, opened, tries)
        elif kind == "7z":
            open_7z(data, passwords, skip, sink, opened, tries)
    except ContentError as error:
        if type(error) is not ContentError:  # the caller's own stop (a limit it enforces in keep())
            raise
        return opened, OUT_OF_TIME if error.message == OUT_OF_TIME else TOO_BIG
    opened.cut = tries.describe(len(passwords))
    return opened, ""
