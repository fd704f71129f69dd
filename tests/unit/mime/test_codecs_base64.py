"""Transfer decoders (mailsift.mime.codecs): base64 read through as mail clients read it, each oddity hiding
a zip with EICAR that ``parsemail(decompress(regexp_scan(EICAR)))`` must find."""

from __future__ import annotations

import base64

import pytest

from mailsift.message.mail import Mail
from mailsift.mime import codecs
from mailsift.scanners.archive import decompress
from mailsift.scanners.base import MailTarget
from mailsift.scanners.basic import regexp_scan
from mailsift.scanners.parsemail import parsemail
from tests.helpers.archives import zip_of
from tests.helpers.samples import EICAR

EICAR_RULE = [("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")]
ZIP = zip_of({"eicar.com": EICAR})
B64 = base64.b64encode(ZIP)


def message(body: bytes, cte: str = "base64") -> bytes:
    head = (
        "From: a@example.net\nTo: b@example.org\nSubject: b64\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="XX"\n\n--XX\nContent-Type: text/plain\n\nsee attachment\n'
        f'--XX\nContent-Type: application/zip; name="file.zip"\nContent-Transfer-Encoding: {cte}\n\n'
    )
    return head.encode() + body + b"\n--XX--\n"


def lines(text: bytes, width: int = 76, end: bytes = b"\n") -> bytes:
    return end.join(text[index : index + width] for index in range(0, len(text), width))


def grouped(text: bytes, size: int, junk: bytes) -> bytes:
    """``text`` in groups of ``size`` characters with ``junk`` between them."""
    return junk.join(text[index : index + size] for index in range(0, len(text), size))


async def assert_found(raw: bytes) -> None:
    mail = Mail(data=raw)
    assert any(ZIP in part.data for part in [*mail.parts, *mail.views]), "the zip's bytes are in no part or view"
    result = await parsemail(decompress(regexp_scan(EICAR_RULE))).scan(MailTarget(Mail(data=raw)))
    assert result.detected, result.detail


# --------------------------------------------------------------------------- the decoders


def test_chunks_decode_past_inner_padding_and_skip_non_alphabet_groups() -> None:
    assert codecs.decode_base64_chunks(b"QUJD==QUJD") == b"ABCABC"
    assert codecs.decode_base64_chunks(b"QUI=QUJD") == b"ABABC"
    assert codecs.decode_base64_chunks(b"QUJD#!#QUJD\xff\xfeQQ") == b"ABCABCA"
    assert codecs.decode_base64_chunks(b"QUJDQ") == b"ABC"  # a dangling character decodes to nothing


def test_zero_reading_is_mimekits() -> None:
    """MimeKit's Base64Decoder ranks ``=`` as 0 (``A``): inside the data it neither stops nor realigns."""
    assert codecs.decode_base64_zero(b"QUJD") == b"ABC"
    assert codecs.decode_base64_zero(b"QUI=") == b"AB"
    assert codecs.decode_base64_zero(b"QQ==") == b"A"
    assert codecs.decode_base64_zero(b"QUJD==QUJD") == b"ABC\x00\x04\x14"  # "==QU" is "AAQU", "JD" too short
    assert codecs.decode_base64_zero(b"#QU#JD#Q") == b"ABC"  # non-alphabet skipped, an incomplete quartet dropped
    data = bytes(range(256)) * 3
    assert codecs.decode_base64_zero(base64.b64encode(data).replace(b"A", b"=")) == data


def test_a_body_the_strict_decoder_gives_up_on_gets_the_lenient_decoding() -> None:
    """Non-alphabet groups and one character too many: the standard library decodes nothing at all."""
    encoded = grouped(B64, 8, b"#") + b"Q"
    data, defects = codecs._decode_base64(encoded)
    assert data == encoded
    assert defects
    found = codecs._alternate_encodings([], "base64", encoded, data, [type(d).__name__ for d in defects])
    assert {label: decoded for label, decoded, _ in found}["base64-chunks"] == ZIP


# --------------------------------------------------------------------------- hidden payloads


@pytest.mark.parametrize("width", [500, 4000, len(B64)], ids=["500", "4000", "one-line"])
async def test_unusual_line_lengths(width: int) -> None:
    await assert_found(message(lines(B64, width)))


@pytest.mark.parametrize(
    "junk",
    [b"!! end of attachment !!", b"QUJDREVGR0g=", b"#$%^&*Q"],
    ids=["text", "base64-word", "non-alphabet-and-a-dangling-character"],
)
async def test_junk_after_the_padding(junk: bytes) -> None:
    await assert_found(message(lines(B64) + b"\n" + junk))


@pytest.mark.parametrize(
    ("size", "junk", "tail"),
    [(8, b"#", b"Q"), (4, b"\xff\xfe", b"A"), (8, b" ", b"\nQ"), (4, b"####", b"")],
    ids=["hash-and-a-dangling-character", "8-bit-groups", "blanks-and-a-dangling-character", "hash-groups"],
)
async def test_non_alphabet_groups_between_quads(size: int, junk: bytes, tail: bytes) -> None:
    """Clients skip what is not base64 (Thunderbird's mime_decode_base64_buffer, Python's non-strict
    decoder); with one character too many the standard library decoded nothing and no view had it."""
    await assert_found(message(lines(grouped(B64, size, junk)) + tail))


@pytest.mark.parametrize(
    "body",
    [
        grouped(B64, 40, b"="),
        b"".join(base64.b64encode(ZIP[index : index + 31]) for index in range(0, len(ZIP), 31)),
        b"QQ==" + B64,
    ],
    ids=["between-quads", "padded-pieces", "padded-quad-first"],
)
async def test_padding_inside_the_data(body: bytes) -> None:
    await assert_found(message(lines(body)))


def equals_for_a(text: bytes, every: int) -> bytes:
    """``text`` with every ``every``-th ``A`` written ``=`` (not in its last quartets, whose ``=`` ends it)."""
    head, tail = text[:-8], text[-8:]
    pieces = head.split(b"A")
    out = pieces[0]
    for index, piece in enumerate(pieces[1:]):
        out += (b"=" if index % every == 0 else b"A") + piece
    return out + tail


@pytest.mark.parametrize("every", [1, 2, 5])
async def test_equals_written_for_the_digit_zero(every: int) -> None:
    """``=`` inside the data where the encoded digit is ``A`` (0): MimeKit reads the zip, the standard library
    stops at the first padding and the piece-by-piece reading realigns after it."""
    body = equals_for_a(B64, every)
    assert b"=" in body[:-8]
    mail = Mail(data=message(lines(body)))
    assert ZIP not in mail.parts[1].data
    [view] = [view for view in mail.views if ZIP in view.data]
    assert (view.origin, view.path, view.filenames) == ("decoded:base64~mimekit", "2~base64~mimekit", ("file.zip",))
    await assert_found(message(lines(body)))
