"""mailsift.mime.codecs: transfer decodings read as leniently as mail clients read them."""

from __future__ import annotations

import base64
import binascii
import io
import zipfile
from email.header import decode_header, make_header

import pytest

from mailsift.message.mail import Mail
from mailsift.mime.codecs import (
    MAX_DECODED_INPUT,
    NOT_DECODED,
    decode_uu_lines,
    decode_words,
    extract_uuencoded,
    transfer_decode,
)
from mailsift.scanners.archive import decompress
from mailsift.scanners.base import MailTarget
from mailsift.scanners.basic import regexp_scan
from mailsift.scanners.parsemail import mime_ext, parsemail
from tests.helpers.decoding import guard_decode_header
from tests.helpers.samples import EICAR

# --------------------------------------------------------------------------- uuencode as the transfer encoding

UU_RULE = [("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")]


def _eicar_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("eicar.com", EICAR)
    return out.getvalue()


UU_ZIP = _eicar_zip()


def uu_lines(data: bytes) -> bytes:
    return b"".join(binascii.b2a_uu(data[i : i + 45]) for i in range(0, len(data), 45))


def uu_block(data: bytes, name: str = "file.zip") -> bytes:
    return b"begin 644 " + name.encode() + b"\n" + uu_lines(data) + b"`\nend\n"


def uu_message(cte: str, body: bytes, ctype: str = 'application/octet-stream; name="invoice.pdf"') -> bytes:
    return (
        b"From: a@example.net\nTo: b@example.org\nSubject: uu\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="XX"\n\n--XX\nContent-Type: text/plain\n\nsee attachment\n--XX\n'
        + f"Content-Type: {ctype}\nContent-Transfer-Encoding: {cte}\n\n".encode()
        + body
        + b"\n--XX--\n"
    )


UU_VARIANTS = {
    # Python's email (get_payload(decode=True)), Thunderbird (mimeenc.cpp), MIME::Tools (MIME::Decoder::UU)
    "x-uuencode": uu_message("x-uuencode", uu_block(UU_ZIP)),
    "X-UUE upper case": uu_message("X-UUE", uu_block(UU_ZIP)),
    "uue with a comment": uu_message("uue (comment)", uu_block(UU_ZIP)),
    "quoted uuencode": uu_message('"uuencode"', uu_block(UU_ZIP)),
    "uuencode, CRLF and mode 0644": uu_message("uuencode", uu_block(UU_ZIP).replace(b"644", b"0644")).replace(
        b"\n", b"\r\n"
    ),
    # Thunderbird skips blank lines and text before "begin"; Python's _decode_uu gives up ("Truncated input")
    "blank lines inside, text before begin": uu_message(
        "x-uuencode", b"here it comes\n" + uu_block(UU_ZIP).replace(b"\n", b"\n\n", 4)
    ),
    # bare lines, no begin/end: Ruby's mail gem (Encodings::UnixToUnix) unpacks them
    "bare lines without begin": uu_message("x-uuencode", uu_lines(UU_ZIP)),
    "x-uuencode on a text/plain part": uu_message("x-uuencode", uu_block(UU_ZIP), "text/plain"),
}


@pytest.mark.parametrize("raw", UU_VARIANTS.values(), ids=UU_VARIANTS.keys())
async def test_uuencode_transfer_encoding_payload_is_seen(raw: bytes) -> None:
    mail = Mail(data=raw)
    assert any(part.data == UU_ZIP for part in [*mail.parts, *mail.views])
    result = await parsemail(decompress(regexp_scan(UU_RULE))).scan(MailTarget(Mail(data=raw)))
    assert result.detected
    assert "EICAR-Test" in result.name


@pytest.mark.parametrize(
    "raw",
    [value for key, value in UU_VARIANTS.items() if key != "bare lines without begin"],
    ids=[key for key in UU_VARIANTS if key != "bare lines without begin"],
)
async def test_the_begin_line_name_is_a_candidate_filename(raw: bytes) -> None:
    named = await parsemail(mime_ext(r"\.zip$")).scan(MailTarget(Mail(data=raw)))
    assert named.detected  # the MIME name is invoice.pdf (or none): file.zip is on the begin line


def test_the_begin_line_name_view_is_kept_although_its_bytes_are_a_strict_parts() -> None:
    mail = Mail(data=UU_VARIANTS["x-uuencode"])
    [strict] = [part for part in mail.parts if part.data == UU_ZIP]
    assert strict.filenames == ("invoice.pdf",)
    assert [view.filenames for view in mail.views if view.data == UU_ZIP] == [("file.zip",)]


def test_a_same_name_uuencode_view_is_still_dropped() -> None:
    raw = uu_message("x-uuencode", uu_block(UU_ZIP), 'application/octet-stream; name="file.zip"')
    assert not [view for view in Mail(data=raw).views if view.data == UU_ZIP]


def test_decode_uu_lines() -> None:
    data = bytes(range(256)) + EICAR
    assert decode_uu_lines(uu_lines(data)) == data
    assert decode_uu_lines(uu_lines(data).replace(b"\n", b"\r\n")) == data
    stripped = b"\n".join(line.rstrip(b" ") for line in uu_lines(b"\x00" * 90 + b"ab").split(b"\n"))
    assert decode_uu_lines(stripped) == b"\x00" * 90 + b"ab"  # trailing blanks cut by a gateway
    assert decode_uu_lines(b"hello world, this is text\n") == b""  # lower case: not uuencode
    assert decode_uu_lines(UU_ZIP) == b""
    assert decode_uu_lines(b"") == b""
    assert decode_uu_lines(b"\n\n") == b""


def test_transfer_decode_uu_with_and_without_begin() -> None:
    assert transfer_decode("x-uuencode", uu_block(UU_ZIP)) == UU_ZIP
    assert transfer_decode("uue", uu_lines(UU_ZIP)) == UU_ZIP
    assert transfer_decode("x-uue", b"not uuencoded at all\n") == b""


def test_a_blank_line_after_begin_decodes_to_nothing() -> None:
    block = b"begin 644 a.bin\n\n" + binascii.b2a_uu(b"hello") + b"\n`\nend\n"
    assert extract_uuencoded(block) == [("a.bin", b"hello")]  # was 32 NUL bytes, then hello


WORD = "=?utf-8?B?" + base64.b64encode("héllo wörld ".encode()).decode() + "?="


def test_megabytes_of_encoded_words_decode_only_a_bounded_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = guard_decode_header(monkeypatch)
    value = " ".join([WORD] * (4 * 1024 * 1024 // (len(WORD) + 1)))  # 4 MB, a header unfolded
    decoded = decode_words(value)
    assert sizes
    assert max(sizes) <= MAX_DECODED_INPUT
    head, _, rest = decoded.partition(NOT_DECODED.split("{", 1)[0])
    assert head == "héllo wörld " * (len(head) // 12)
    assert len(head) >= MAX_DECODED_INPUT // 3
    skipped = len(value) - sizes[0]
    assert decoded.endswith(NOT_DECODED.format(skipped))
    assert rest
    assert len(decoded) < MAX_DECODED_INPUT


def test_a_character_split_across_the_cut_is_not_left_undecoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """One byte per encoded word: the cut may fall inside a character; whole words are dropped until it does not."""
    sizes = guard_decode_header(monkeypatch)
    byte_words = [f"=?utf-8?q?={byte:02X}?=" for byte in "你好".encode()]
    pad = "=?utf-8?q?xxxxx?="  # as long as a byte word: each one moves the cut by one byte
    for shift in range(3):  # the cut lands after each byte of a character in turn
        value = " ".join([pad] * shift + byte_words * (MAX_DECODED_INPUT // 60))
        decoded = decode_words(value)
        head = decoded.partition(" [...")[0]
        assert head.startswith("xxxxx" * shift)
        assert "..." in decoded
        assert set(head[5 * shift :]) == {"你", "好"}  # whole characters only, no word left encoded
    assert max(sizes) <= MAX_DECODED_INPUT


def test_ordinary_encoded_words_decode_as_the_standard_library_does() -> None:
    values = [
        WORD,
        "Re: " + WORD + " " + WORD + " (tail)",
        "=?iso-8859-2?Q?P=F8=EDli=B9_=BEluou=E8k=FD?= =?utf-8?b?a8WvxYg=?=",
        " ".join([WORD] * (MAX_DECODED_INPUT // (len(WORD) + 1))),  # just under the bound: all decoded
    ]
    for value in values:
        assert len(value) <= MAX_DECODED_INPUT
        assert decode_words(value) == str(make_header(decode_header(value)))
    assert decode_words("=?unicode-escape?q?\\x41?=") == "=?unicode-escape?q?\\x41?="
    assert decode_words("=?utf-8?b?A?= plain") == "=?utf-8?b?A?= plain"
    assert decode_words("no words at all " * 10_000) == "no words at all " * 10_000  # never cut without =?
