"""BinHex 4.0 (mailsift.mime.binhex): the decoder, its bounds, other implementations, and messages
hiding a zip with EICAR in BinHex that parsemail(decompress(...)) and mime_ext must see."""

from __future__ import annotations

import io
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from mailsift.message.mail import Mail
from mailsift.mime.binhex import decode_hqx, find_binhex, hqx_bits, rle_expand
from mailsift.scanners.archive import decompress
from mailsift.scanners.base import MailTarget
from mailsift.scanners.basic import regexp_scan
from mailsift.scanners.parsemail import mime_ext, parsemail
from tests.helpers.binhex import binhex, rle, six_bit
from tests.helpers.samples import EICAR

EICAR_RULE = [("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")]


def eicar_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("eicar.com", EICAR)
    return out.getvalue()


ZIP = eicar_zip()
ALL_BYTES = bytes(range(256)) * 2 + b"\x00" * 700 + b"\x90" * 300 + b"a\x90\x90\x90b" + b"z" * 3


# --------------------------------------------------------------------------- the decoder


def test_round_trip_of_every_byte_value_runs_and_0x90() -> None:
    [found] = find_binhex(binhex("all bytes.bin", ALL_BYTES, b"\x90RSRC" * 9))
    assert (found.name, found.data, found.resource, found.defects) == ("all bytes.bin", ALL_BYTES, b"\x90RSRC" * 9, ())
    assert (found.file_type, found.creator) == (b"ZIP ", b"SITx")


@pytest.mark.parametrize("which", ["header", "data", "resource"])
def test_a_wrong_crc_is_noted_and_the_forks_still_returned(which: str) -> None:
    [found] = find_binhex(binhex("file.zip", ZIP, b"rsrc", bad_crc=which))
    assert found.data == ZIP
    assert found.resource == b"rsrc"
    assert found.defects == (
        {"header": "BinHexHeaderCRC", "data": "BinHexDataCRC", "resource": "BinHexResourceCRC"}[which],
    )


def test_without_header_line_compression_or_with_crlf_and_short_lines() -> None:
    for text in (
        binhex("file.zip", ZIP, header_line=False),
        binhex("file.zip", ZIP, compress=False),
        binhex("file.zip", ZIP, newline=b"\r\n", line_length=20),
        b"Some text first: see below\n\n" + binhex("file.zip", ZIP) + b"\n-- \nsignature: here\n",
    ):
        assert [(f.name, f.data) for f in find_binhex(text)] == [("file.zip", ZIP)]


def test_two_files_in_one_text() -> None:
    text = binhex("a.zip", ZIP) + b"\nand\n" + binhex("b.txt", b"hello world")
    assert [(f.name, f.data) for f in find_binhex(text)] == [("a.zip", ZIP), ("b.txt", b"hello world")]


def test_rle_expansion() -> None:
    assert rle_expand(b"a\x90\x05b", 100) == (b"aaaaab", False)
    assert rle_expand(b"\x90\x00\x90\x03", 100) == (b"\x90\x90\x90", False)  # a run of a literal 0x90
    assert rle_expand(b"\x90\x05x", 100) == (b"x", False)  # nothing to repeat
    assert rle_expand(b"a\x90\x01", 100) == (b"a", False)
    assert rle_expand(b"a\x90", 100) == (b"a\x90", False)  # a marker without its count stays
    assert rle_expand(rle(ALL_BYTES), 1 << 20) == (ALL_BYTES, False)


def test_output_is_cut_at_the_limit() -> None:
    bomb = b"a" + b"\x90\xff" * 10_000  # 2.5 MB from 20 KB
    data, truncated = rle_expand(bomb, 1000)
    assert (len(data), truncated) == (1000, True)
    [found] = find_binhex(binhex("big.bin", b"\x00" * 100_000), limit=5000)
    assert len(found.data) < 5000
    assert found.defects == ("BinHexTruncated",)
    text = binhex("big.bin", b"\x00" * 1_000_000)  # ~9 KB of text
    assert len(text) < 20_000
    assert sum(len(f.data) for f in find_binhex(text)) <= 2 * len(text) + 1024 * 1024


def test_text_that_is_not_binhex_gives_nothing() -> None:
    assert find_binhex(b"") == []
    assert find_binhex(b"Subject: hello\n\n:-) this is not binhex at all, no: it is not:\n") == []
    assert find_binhex(b":" + b"A" * 200 + b":") == []  # alphabet, but no valid header
    assert decode_hqx(b"!!!!", 100) is None
    assert hqx_bits(six_bit(b"abc")) == b"abc"


# --------------------------------------------------------------------------- other implementations


def test_debian_macutils_hexbin_reads_our_encoding_and_we_read_its_binhex(tmp_path: Path) -> None:
    """Fixture check against an independent implementation: macutils 2.0b3 (Debian ``macutils``)."""
    if not (shutil.which("hexbin") and shutil.which("binhex")):
        pytest.skip("Debian's macutils (hexbin, binhex) is not installed")
    (tmp_path / "in.hqx").write_bytes(binhex("file.zip", ZIP, b"RSRC" * 3))
    subprocess.run(["hexbin", "-3", "in.hqx"], cwd=tmp_path, check=True, capture_output=True, timeout=30)
    assert (tmp_path / "file.zip.data").read_bytes() == ZIP
    assert (tmp_path / "file.zip.rsrc").read_bytes() == b"RSRC" * 3
    (tmp_path / "plain.data").write_bytes(ALL_BYTES)
    made = subprocess.run(["binhex", "-d", "plain.data"], cwd=tmp_path, check=True, capture_output=True, timeout=30)
    [found] = find_binhex(made.stdout)
    assert (found.name, found.data, found.defects) == ("plain.data", ALL_BYTES, ())


def test_perl_convert_binhex_reads_our_encoding(tmp_path: Path) -> None:
    """The reader behind MIME::Tools' MIME::Decoder::BinHex (Debian ``libconvert-binhex-perl``)."""
    if not shutil.which("perl") or subprocess.run(["perl", "-MConvert::BinHex", "-e1"], capture_output=True).returncode:
        pytest.skip("Perl's Convert::BinHex is not installed")
    (tmp_path / "in.hqx").write_bytes(binhex("file.zip", ZIP))
    script = (
        'my $h = Convert::BinHex->open(Expr => "< $ARGV[0]") or die; $h->read_header; binmode STDOUT;'
        "print STDERR $h->filename; while (defined(my $x = $h->read_data)) { print $x }"
    )
    done = subprocess.run(
        ["perl", "-MConvert::BinHex", "-e", script, tmp_path / "in.hqx"], capture_output=True, timeout=30
    )
    assert done.stdout == ZIP
    assert done.stderr.decode().strip().endswith("file.zip")


# --------------------------------------------------------------------------- messages

HEAD = b"From: a@example.net\nTo: b@example.org\nSubject: binhex\nMIME-Version: 1.0\n"


def message(part_headers: str, body: bytes) -> bytes:
    return (
        HEAD
        + b'Content-Type: multipart/mixed; boundary="XX"\n\n--XX\nContent-Type: text/plain\n\nsee attachment\n'
        + b"--XX\n"
        + part_headers.encode()
        + b"\n\n"
        + body
        + b"\n--XX--\n"
    )


VARIANTS = {
    "mac-binhex40 with header line": message(
        'Content-Type: application/mac-binhex40; name="invoice.hqx"', binhex("file.zip", ZIP)
    ),
    "mac-binhex40 without header line": message(
        "Content-Type: application/mac-binhex40", binhex("file.zip", ZIP, header_line=False)
    ),
    "binhex in a text part": message(
        "Content-Type: text/plain; charset=us-ascii",
        b"Dear customer,\n\nyour invoice follows.\n\n" + binhex("file.zip", ZIP, newline=b"\r\n") + b"\nRegards\n",
    ),
    "x-binhex40 transfer encoding": message(
        'Content-Type: application/octet-stream; name="invoice.pdf"\nContent-Transfer-Encoding: x-binhex40',
        binhex("file.zip", ZIP, header_line=False),
    ),
    "wrong data CRC": message("Content-Type: application/mac-binhex40", binhex("file.zip", ZIP, bad_crc="data")),
    "macutils header line, uncompressed": message(
        "Content-Type: application/x-mac-binhex40",
        binhex("file.zip", ZIP, compress=False).replace(
            b"(This file must be converted with BinHex 4.0)", b"(This file must be converted; you knew that already.)"
        ),
    ),
}


@pytest.mark.parametrize("raw", VARIANTS.values(), ids=VARIANTS.keys())
async def test_binhex_payload_and_name_are_seen(raw: bytes) -> None:
    mail = Mail(data=raw)
    assert any(view.data == ZIP and view.origin == "decoded:binhex" for view in mail.views)
    assert not any(part.data == ZIP for part in mail.parts)  # only the BinHex reading shows it
    result = await parsemail(decompress(regexp_scan(EICAR_RULE))).scan(MailTarget(Mail(data=raw)))
    assert result.detected
    assert "EICAR-Test" in result.name
    named = await parsemail(mime_ext(r"\.zip$")).scan(MailTarget(Mail(data=raw)))
    assert named.detected


async def test_strict_reading_alone_misses_it() -> None:
    raw = VARIANTS["mac-binhex40 with header line"]
    strict = parsemail(decompress(regexp_scan(EICAR_RULE)), views=False)
    assert not (await strict.scan(MailTarget(Mail(data=raw)))).detected


def test_resource_fork_is_a_second_view_and_crc_defects_are_kept() -> None:
    raw = message("Content-Type: application/mac-binhex40", binhex("file.zip", ZIP, b"resource!", bad_crc="header"))
    views = {view.origin: view for view in Mail(data=raw).views}
    assert views["decoded:binhex"].data == ZIP
    assert views["decoded:binhex"].filenames == ("file.zip",)
    assert views["decoded:binhex-rsrc"].data == b"resource!"
    assert views["decoded:binhex"].defects == ("BinHexHeaderCRC",)


def test_ordinary_text_with_colons_has_no_binhex_view() -> None:
    raw = message("Content-Type: text/plain", b"Time: 10:30\nNote: bring the papers:\n:ok\n" * 50)
    assert not any(view.origin.startswith("decoded:binhex") for view in Mail(data=raw).views)
