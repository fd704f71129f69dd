"""``decompress``: archive members scanned, nested archives, TNEF, and the limits against bombs.

Every archive here is built by the test (libarchive-c's writer, zipfile, gzip,
bz2, lzma, or by hand for the zip bombs), except ClamAV's own test archives
from Debian's clamav-testfiles, which must give up ``clam.exe`` byte for byte.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import libarchive
import pytest

from mailsift.errors import ConfigError, ScannerError
from mailsift.message.mail import Mail
from mailsift.message.result import Result
from mailsift.scanners.archive import decompress
from mailsift.scanners.base import MailTarget, Scanner, Target
from mailsift.scanners.basic import regexp_scan, string_scan
from mailsift.scanners.parsemail import parsemail

MakeMail = Callable[..., Mail]
MiB = 1024 * 1024
EICAR_RULE = [("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")]
TESTFILES = Path("/usr/share/clamav-testfiles")


# --------------------------------------------------------------------------- builders


def write_archive(format_name: str, files: list[tuple[str, bytes]], filter_name: str | None = None, **kw: Any) -> bytes:
    """An archive written by libarchive (the same library that reads it, but a different code path)."""
    out = bytearray()

    def write(block: bytes) -> int:
        out.extend(block)
        return len(block)

    with libarchive.custom_writer(write, format_name, filter_name, **kw) as archive:
        for name, data in files:
            archive.add_file_from_memory(name, len(data), data)
    return bytes(out)


def zip_of(files: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()


def mail_with(attachment: bytes, filename: str, content_type: str = "application/octet-stream") -> bytes:
    message = EmailMessage()
    message["From"] = "a@example.net"
    message["To"] = "b@example.org"
    message["Subject"] = "attachment"
    message.set_content("see attached\n")
    maintype, subtype = content_type.split("/")
    message.add_attachment(attachment, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes()


def forwarded(inner: bytes) -> bytes:
    """``inner`` attached as a message/rfc822 part of another message."""
    return (
        b"From: c@example.net\r\nTo: d@example.org\r\nSubject: Fwd\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
        b"--outer\r\nContent-Type: text/plain\r\n\r\nforwarded\r\n"
        b"--outer\r\nContent-Type: message/rfc822\r\n\r\n"
        + inner.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")
        + b"\r\n--outer--\r\n"
    )


def deflate_raw(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def _local_header(name: bytes, crc: int, csize: int, usize: int) -> bytes:
    return struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, csize, usize, len(name), 0) + name


def _central_entry(name: bytes, crc: int, csize: int, usize: int, offset: int) -> bytes:
    fields = (b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, csize, usize, len(name), 0, 0, 0, 0, 0, offset)
    return struct.pack("<4sHHHHHHIIIHHHHHII", *fields) + name


def overlapping_zip(kernel_size: int, files: int) -> bytes:
    """David Fifield's "better zip bomb" (quoted overlap): every local file header is
    distinct, and each file's deflate stream quotes the next local header in a
    stored block, then runs into the same shared kernel of zeros.  So ``files``
    entries each expand to about ``kernel_size`` from one small kernel."""
    kernel = deflate_raw(bytes(kernel_size))
    zeros_crc = zlib.crc32(bytes(kernel_size))
    names = [f"{i:04d}.bin".encode() for i in range(files)]
    headers: list[bytes] = [b""] * files
    sizes: list[tuple[int, int, int]] = [(0, 0, 0)] * files
    sizes[-1] = (zeros_crc, len(kernel), kernel_size)
    headers[-1] = _local_header(names[-1], *sizes[-1])
    for i in range(files - 2, -1, -1):
        quoted = headers[i + 1]
        crc = 0
        for later in headers[i + 1 :]:
            crc = zlib.crc32(later, crc)
        crc = zlib.crc32(bytes(kernel_size), crc)
        sizes[i] = (crc, 5 + len(quoted) + sizes[i + 1][1], len(quoted) + sizes[i + 1][2])
        headers[i] = _local_header(names[i], *sizes[i])
    body, offsets = b"", []
    for i in range(files):
        offsets.append(len(body))
        body += headers[i]
        if i < files - 1:
            length = len(headers[i + 1])
            body += struct.pack("<BHH", 0, length, length ^ 0xFFFF)  # a stored, non-final deflate block
    body += kernel
    central = b"".join(_central_entry(names[i], *sizes[i], offsets[i]) for i in range(files))
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, files, files, len(central), len(body), 0)
    return body + central + end


def nested_zip(levels: int, fanout: int, leaf_size: int) -> bytes:
    """A 42.zip-style nest: ``fanout`` copies of the level below, ``levels`` deep, zeros at the bottom."""
    data = zip_of([("0.dat", bytes(leaf_size))])
    for level in range(levels):
        data = zip_of([(f"l{level}-{i}.zip", data) for i in range(fanout)])
    return data


# --------------------------------------------------------------------------- helpers


async def scan_mail(scanner: Scanner, data: bytes) -> Result:
    mail = Mail(data=data)
    try:
        return await scanner.scan(MailTarget(mail))
    finally:
        mail.close()


def eicar_finder(**limits: Any) -> Scanner:
    return parsemail(decompress(regexp_scan(EICAR_RULE), **limits))


class Names(Scanner):
    """Records the path of every target it sees; never detects."""

    name = "names"

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.sizes: list[int] = []

    async def scan(self, target: Target) -> Result:
        self.paths.append(target.path)
        self.sizes.append(len(target.data))
        return Result(0.0, "", self.name)


# --------------------------------------------------------------------------- EICAR in every format


def _formats(eicar: bytes) -> dict[str, tuple[str, bytes]]:
    # Padded so that every compressor really compresses (xz stores a lone 68-byte file as is).
    eicar = eicar + b"\r\n" + b"padding line\r\n" * 200
    member = [("docs/eicar.com", eicar)]
    return {
        "zip": ("eicar.zip", zip_of(member)),
        "zip-in-zip": ("outer.zip", zip_of([("inner.zip", zip_of(member))])),
        "tar.gz": ("eicar.tar.gz", write_archive("pax", member, "gzip")),
        "tar.bz2": ("eicar.tar.bz2", write_archive("gnutar", member, "bzip2")),
        "tar.xz": ("eicar.tar.xz", write_archive("ustar", member, "xz")),
        "gz": ("eicar.com.gz", gzip.compress(eicar)),
        "bz2": ("eicar.com.bz2", bz2.compress(eicar)),
        "xz": ("eicar.com.xz", lzma.compress(eicar)),
        "7z": ("eicar.7z", write_archive("7zip", member)),
    }


FORMATS = ["zip", "zip-in-zip", "tar.gz", "tar.bz2", "tar.xz", "gz", "bz2", "xz", "7z"]


@pytest.mark.parametrize("kind", FORMATS)
async def test_eicar_found_inside_archive(kind: str, eicar: bytes) -> None:
    filename, archive = _formats(eicar)[kind]
    assert b"EICAR-STANDARD" not in archive  # only unpacking can find it
    message = mail_with(archive, filename)
    assert not (await scan_mail(parsemail(regexp_scan(EICAR_RULE)), message)).detected
    result = await scan_mail(eicar_finder(), message)
    assert (result.level, result.name) == (1.0, "EICAR-Test")
    assert "eicar.com" in result.detail  # the member path is named


@pytest.mark.parametrize("kind", FORMATS)
async def test_eicar_found_inside_archive_in_attached_message(kind: str, eicar: bytes) -> None:
    filename, archive = _formats(eicar)[kind]
    result = await scan_mail(eicar_finder(), forwarded(mail_with(archive, filename)))
    assert (result.level, result.name) == (1.0, "EICAR-Test")


async def test_member_paths_nest_under_the_part(eicar: bytes) -> None:
    seen = Names()
    archive = zip_of([("a.txt", b"alpha"), ("inner.zip", zip_of([("b.txt", b"beta")]))])
    result = await scan_mail(parsemail(decompress(seen)), mail_with(archive, "x.zip"))
    assert not result.detected
    assert seen.paths == ["1", "2", "2/a.txt", "2/inner.zip", "2/inner.zip/b.txt"]


async def test_clean_archive_and_plain_parts_pass(eicar: bytes) -> None:
    archive = write_archive("7zip", [("readme.txt", b"nothing to see\n" * 100)])
    assert not (await scan_mail(eicar_finder(), mail_with(archive, "clean.7z"))).detected
    assert not (await scan_mail(eicar_finder(), b"From: a@example.net\r\n\r\nplain text\r\n")).detected


async def test_scanner_error_inside_member_is_a_scanner_error(failing: Callable[..., Scanner]) -> None:
    archive = zip_of([("a.txt", b"alpha")])
    with pytest.raises(ScannerError, match="daemon down"):
        await scan_mail(parsemail(decompress(failing())), mail_with(archive, "x.zip"))


# --------------------------------------------------------------------------- TNEF


def tnef_with(name: bytes, data: bytes) -> bytes:
    """A minimal TNEF stream (MS-OXTNEF): signature, key, version, one attachment."""

    def attribute(level: int, attr_id: int, payload: bytes) -> bytes:
        checksum = sum(payload) & 0xFFFF
        return struct.pack("<BII", level, attr_id, len(payload)) + payload + struct.pack("<H", checksum)

    return (
        struct.pack("<IH", 0x223E9F78, 0x0001)
        + attribute(1, 0x00089006, struct.pack("<I", 0x00010000))  # attTnefVersion
        + attribute(2, 0x00069002, b"\x01\x00\x00\x00" + b"\x00" * 10)  # attAttachRendData starts an attachment
        + attribute(2, 0x00018010, name + b"\x00")  # attAttachTitle
        + attribute(2, 0x0006800F, data)  # attAttachData
    )


class Exactly(Scanner):
    """Detects a target whose bytes are exactly ``data`` (a member, never its container)."""

    name = "exactly"

    def __init__(self, data: bytes, virname: str) -> None:
        self.digest, self.virname = hashlib.sha256(data).hexdigest(), virname

    async def scan(self, target: Target) -> Result:
        if hashlib.sha256(target.data).hexdigest() == self.digest:
            return Result(1.0, self.virname, self.name, f"in {target.path}")
        return Result(0.0, "", self.name)


async def test_eicar_found_inside_tnef(eicar: bytes) -> None:
    message = mail_with(tnef_with(b"EICAR.COM", eicar), "winmail.dat", "application/ms-tnef")
    seen = Names()
    assert not (await scan_mail(parsemail(decompress(seen)), message)).detected
    assert seen.paths == ["1", "2", "2/EICAR.COM"]
    result = await scan_mail(parsemail(decompress(Exactly(eicar, "EICAR-Test"))), message)
    assert (result.level, result.name) == (1.0, "EICAR-Test")
    assert "2/EICAR.COM" in result.detail


async def test_broken_tnef_ends_cleanly() -> None:
    message = mail_with(tnef_with(b"A.TXT", b"x" * 100)[:20], "winmail.dat", "application/ms-tnef")
    assert not (await scan_mail(parsemail(decompress(Names())), message)).detected
    result = await scan_mail(parsemail(decompress(Names(), broken="detect")), message)
    assert result.name == "Heuristics.Broken.Archive"


# --------------------------------------------------------------------------- ClamAV's test archives

CLAM_EXE = TESTFILES / "clam.exe"
CLAM_READABLE = [
    "clam.zip",
    "clam.7z",
    "clam.cab",
    "clam.tar.gz",
    "clam.exe.bz2",
    "clam.bz2.zip",
    "clam.tnef",
    "clam.bin-be.cpio",
    "clam.bin-le.cpio",
    "clam.newc.cpio",
    "clam.odc.cpio",
]
# Archives of clam.exe that libarchive 3.6 cannot read (they stay plain data to the scanners):
CLAM_UNREADABLE = {
    "clam.arj": "libarchive has no ARJ reader",
    "clam.d64.zip": "zip method 9 (deflate64) is not supported by libarchive",
    "clam.impl.zip": "zip method 6 (implode) is not supported by libarchive",
    "clam.exe.szdd": "MS-DOS COMPRESS.EXE (SZDD) is not a libarchive format",
}

needs_testfiles = pytest.mark.skipif(not CLAM_EXE.is_file(), reason="Debian package clamav-testfiles not installed")


@needs_testfiles
@pytest.mark.parametrize("filename", CLAM_READABLE)
async def test_clamav_test_archive_gives_up_clam_exe(filename: str) -> None:
    same_bytes = Exactly(CLAM_EXE.read_bytes(), "ClamAV-Test-File")
    archive = (TESTFILES / filename).read_bytes()
    message = mail_with(archive, filename)
    result = await scan_mail(parsemail(decompress(same_bytes)), message)
    assert (result.level, result.name) == (1.0, "ClamAV-Test-File"), result
    assert "clam.exe" in result.detail
    # and the same bytes are not "found" without unpacking:
    assert not (await scan_mail(parsemail(same_bytes), message)).detected


@needs_testfiles
@pytest.mark.parametrize("filename", sorted(CLAM_UNREADABLE))
async def test_clamav_test_archive_libarchive_cannot_read(filename: str) -> None:
    # Documents the list above: no member comes out, and scanning still ends cleanly.
    seen = Names()
    result = await scan_mail(parsemail(decompress(seen)), mail_with((TESTFILES / filename).read_bytes(), filename))
    assert not result.detected
    assert seen.paths == ["1", "2"], CLAM_UNREADABLE[filename]


# --------------------------------------------------------------------------- encrypted archives


@pytest.mark.parametrize("encryption", ["zipcrypt", "aes256"])
async def test_encrypted_zip_is_a_finding(encryption: str, eicar: bytes) -> None:
    archive = write_archive(
        "zip", [("secret.txt", b"invoice " * 50)], options=f"encryption={encryption}", passphrase="1234"
    )
    message = mail_with(archive, "invoice.zip")
    result = await scan_mail(parsemail(decompress(regexp_scan(EICAR_RULE))), message)
    assert (result.level, result.name) == (1.0, "Encrypted.Archive")
    assert "secret.txt" in result.detail
    ignored = await scan_mail(parsemail(decompress(regexp_scan(EICAR_RULE), encrypted="ignore")), message)
    assert not ignored.detected


async def test_encrypted_member_does_not_hide_a_virus_beside_it(eicar: bytes) -> None:
    # A plain member with EICAR next to nothing encrypted: the virus wins over other findings.
    archive = zip_of([("eicar.com", eicar)])
    assert (await scan_mail(eicar_finder(encrypted="detect"), mail_with(archive, "a.zip"))).name == "EICAR-Test"


# --------------------------------------------------------------------------- limits and bombs


async def test_overlapping_zip_bomb_is_a_ratio_finding() -> None:
    bomb = overlapping_zip(kernel_size=2 * MiB, files=100)
    assert len(bomb) < 20_000
    try:
        assert len(zipfile.ZipFile(io.BytesIO(bomb)).read("0050.bin")) > 2 * MiB  # it really is a bomb
    except zipfile.BadZipFile as error:  # a Python with CVE-2024-0450's fix (Debian's 3.11) refuses to expand it
        assert "Overlapped entries" in str(error)  # noqa: PT017
    seen = Names()
    result = await scan_mail(parsemail(decompress(seen)), mail_with(bomb, "bomb.zip"))
    assert (result.level, result.name) == (1.0, "Heuristics.Limits.Exceeded.MaxRatio")
    assert sum(seen.sizes[2:]) < 260 * len(bomb) + 2 * 64 * 1024


async def test_overlapping_zip_bomb_without_ratio_stops_at_the_total_size() -> None:
    bomb = overlapping_zip(kernel_size=2 * MiB, files=100)
    seen = Names()
    result = await scan_mail(
        parsemail(decompress(seen, max_ratio=None, max_total_size=16 * MiB)), mail_with(bomb, "bomb.zip")
    )
    assert (result.level, result.name) == (1.0, "Heuristics.Limits.Exceeded.MaxTotalSize")
    assert sum(seen.sizes[2:]) == 16 * MiB  # what fits is scanned, nothing more is read


async def test_nested_bomb_is_a_finding_and_memory_stays_under_the_limit() -> None:
    bomb = nested_zip(levels=4, fanout=16, leaf_size=32 * MiB)  # 16**4 * 32 MiB = 2 TiB expanded
    assert len(bomb) < 2 * MiB
    message = mail_with(bomb, "42.zip")
    limit = 24 * MiB
    tracemalloc.start()
    try:
        result = await scan_mail(parsemail(decompress(Names(), max_total_size=limit, max_ratio=None)), message)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (result.level, result.name) == (1.0, "Heuristics.Limits.Exceeded.MaxTotalSize")
    # The limit itself, BytesIO's 1/8 growth slack, and the message and its decoded part.
    assert peak < limit * 1.25 + 6 * len(message) + 4 * MiB, peak


async def test_nested_bomb_with_defaults_is_a_ratio_finding() -> None:
    result = await scan_mail(parsemail(decompress(Names())), mail_with(nested_zip(4, 16, 32 * MiB), "42.zip"))
    assert result.name == "Heuristics.Limits.Exceeded.MaxRatio"


def test_bomb_memory_of_the_whole_process_is_bounded(tmp_path: Path) -> None:
    # tracemalloc sees Python objects only; libarchive's own buffers are C memory.  So a
    # child process scans the bomb and reports its peak RSS beside a child that does not.
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(overlapping_zip(kernel_size=4 * MiB, files=250))  # about 1 GiB expanded
    program = textwrap.dedent(
        """
        import asyncio, resource, sys
        from mailsift.message.mail import Mail
        from mailsift.message.result import Result
        from mailsift.scanners.archive import decompress
        from mailsift.scanners.base import DataTarget, MailTarget, Scanner

        class Nothing(Scanner):
            async def scan(self, target):
                return Result(0.0, "", "nothing")

        data = open(sys.argv[1], "rb").read()
        if sys.argv[2] == "scan":
            mail = Mail(data=b"From: a@example.net\\r\\n\\r\\nx\\r\\n")
            target = DataTarget(MailTarget(mail), data, names=("bomb.zip",), path="2")
            scanner = decompress(Nothing(), max_total_size=32 * 1024 * 1024, max_ratio=None)
            print(asyncio.run(scanner.scan(target)).name, file=sys.stderr)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        """
    )

    def peak(mode: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", program, str(bomb), mode], capture_output=True, text=True, check=True, timeout=120
        )
        if mode == "scan":
            assert done.stderr.strip().endswith("Heuristics.Limits.Exceeded.MaxTotalSize"), done.stderr
        return int(done.stdout)

    baseline, scanning = peak("idle"), peak("scan")
    assert scanning - baseline < 32 * MiB * 1.25 + 16 * MiB, (baseline, scanning)


async def test_too_many_members() -> None:
    archive = zip_of([(f"f{i}.txt", b"x") for i in range(30)])
    seen = Names()
    result = await scan_mail(parsemail(decompress(seen, max_members=10)), mail_with(archive, "many.zip"))
    assert (result.level, result.name) == (1.0, "Heuristics.Limits.Exceeded.MaxMembers")
    assert len(seen.paths) == 2 + 10


async def test_members_limit_counts_every_level() -> None:
    archive = zip_of([(f"z{i}.zip", zip_of([(f"f{j}.txt", b"x") for j in range(4)])) for i in range(4)])
    assert not (await scan_mail(parsemail(decompress(Names(), max_members=20)), mail_with(archive, "a.zip"))).detected
    result = await scan_mail(parsemail(decompress(Names(), max_members=19)), mail_with(archive, "a.zip"))
    assert result.name == "Heuristics.Limits.Exceeded.MaxMembers"


async def test_depth_limit(eicar: bytes) -> None:
    archive = zip_of([("eicar.com", eicar)])
    for level in range(3):
        archive = zip_of([(f"level{level}.zip", archive)])
    # 4 containers deep: found with max_depth=4, a depth finding with max_depth=3.
    assert (await scan_mail(eicar_finder(max_depth=4), mail_with(archive, "deep.zip"))).name == "EICAR-Test"
    result = await scan_mail(eicar_finder(max_depth=3), mail_with(archive, "deep.zip"))
    assert (result.level, result.name) == (1.0, "Heuristics.Limits.Exceeded.MaxDepth")
    ignored = await scan_mail(eicar_finder(max_depth=3, limits="ignore"), mail_with(archive, "deep.zip"))
    assert not ignored.detected


async def test_time_limit_stops_the_reading() -> None:
    # A fake clock: one second passes at every look, so the second check is past a 1.5 s limit.
    ticks = iter(range(1_000_000))
    seen = Names()
    archive = zip_of([(f"f{i}.txt", b"data" * 1000) for i in range(20)])
    scanner = parsemail(decompress(seen, max_time=1.5, clock=lambda: float(next(ticks))))
    result = await scan_mail(scanner, mail_with(archive, "slow.zip"))
    assert (result.level, result.name) == (1.0, "Heuristics.Limits.Exceeded.MaxTime")
    assert len(seen.paths) < 2 + 20
    assert not (await scan_mail(parsemail(decompress(Names(), max_time=None)), mail_with(archive, "x.zip"))).detected


async def test_virus_before_the_limit_is_reported_as_the_virus(eicar: bytes) -> None:
    archive = zip_of([("eicar.com", eicar)] + [(f"f{i}.txt", b"x") for i in range(30)])
    result = await scan_mail(eicar_finder(max_members=5), mail_with(archive, "a.zip"))
    assert result.name == "EICAR-Test"


async def test_broken_archive(eicar: bytes) -> None:
    archive = write_archive("pax", [("a.txt", b"alpha " * 10_000), ("b.txt", b"beta")], "gzip")
    truncated = archive[: len(archive) // 2]
    message = mail_with(truncated, "cut.tar.gz")
    assert not (await scan_mail(parsemail(decompress(Names())), message)).detected
    result = await scan_mail(parsemail(decompress(Names(), broken="detect")), message)
    assert (result.level, result.name) == (1.0, "Heuristics.Broken.Archive")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"PK\x03\x04",
        b"PK\x05\x06" + b"\xff" * 18,
        b"\x1f\x8b" + bytes(range(200)),
        b"7z\xbc\xaf\x27\x1c" + b"\0" * 40,
    ],
)
async def test_garbage_that_looks_like_an_archive_ends_cleanly(data: bytes) -> None:
    message = mail_with(data, "x.zip")
    assert not (await scan_mail(parsemail(decompress(string_scan([("X", b"never-there")]))), message)).detected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_depth": -1}, "max_depth must not be negative"),
        ({"max_total_size": 1.5}, "max_total_size must be a whole number"),
        ({"max_ratio": "high"}, "max_ratio must be a number"),
        ({"max_members": True}, "max_members must be a whole number"),
        ({"encrypted": "block"}, "encrypted must be one of"),
        ({"limits": "warn"}, "limits must be one of"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        decompress(regexp_scan(EICAR_RULE), **kwargs)
    with pytest.raises(ConfigError, match="needs at least one scanner"):
        decompress()


def test_describe_names_the_limits() -> None:
    line = decompress(regexp_scan(EICAR_RULE)).describe()
    assert line.startswith("decompress(max_depth=10, max_total_size=104857600, max_ratio=250")
