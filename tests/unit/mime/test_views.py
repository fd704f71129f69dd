"""Lenient views (mailsift.mime.views), yEnc, and parsemail scanning the union of the readings."""

from __future__ import annotations

import base64
import binascii
import io
import zipfile

import pytest

import mailsift.mime.views
from mailsift.message.mail import Mail
from mailsift.mime.codecs import decode_base64_chunks, extract_yencoded, yenc_decode
from mailsift.mime.views import base64_runs, lenient_split
from mailsift.scanners.archive import decompress
from mailsift.scanners.base import MailTarget
from mailsift.scanners.basic import regexp_scan, string_scan
from mailsift.scanners.parsemail import parsemail
from tests.helpers.samples import EICAR

EICAR_RULE = [("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")]
HEAD = "From: a@example.net\nTo: b@example.org\nSubject: views\nMIME-Version: 1.0\n"
TEXT = "Content-Type: text/plain\n\nsee attachment\n"


def b64(data: bytes) -> str:
    return base64.encodebytes(data).decode()


def message(content_type: str, parts: list[str], boundary: str = "XX") -> bytes:
    body = "".join(f"--{boundary}\n{part}" for part in parts)
    return (HEAD + content_type + "\npreamble\n" + body + f"--{boundary}--\n").encode()


def attachment(cte: str, body: str, ctype: str = 'application/octet-stream; name="eicar.com"') -> str:
    return f"Content-Type: {ctype}\n{cte}\n{body}"


async def scan(mail: Mail, **options: bool) -> tuple[bool, str]:
    result = await parsemail(regexp_scan(EICAR_RULE), **options).scan(MailTarget(mail))
    return result.detected, result.detail


# --------------------------------------------------------------------------- yEnc


def yencode(data: bytes, name: str = "file.bin") -> bytes:
    """A straightforward yEnc encoder (escaping NUL, LF, CR, '=' and leading blanks/dots)."""
    out, line = bytearray(), bytearray()
    for byte in data:
        value = (byte + 42) % 256
        if value in (0, 10, 13, 61) or (value in (9, 32, 46) and not line):
            line += bytes((61, (value + 64) % 256))
        else:
            line.append(value)
        if len(line) >= 64:
            out += line + b"\r\n"
            line.clear()
    out += line + b"\r\n"
    return (
        f"=ybegin line=64 size={len(data)} name={name}\r\n".encode()
        + bytes(out)
        + f"=yend size={len(data)}\r\n".encode()
    )


def test_yenc_round_trip_of_every_byte_value() -> None:
    data = bytes(range(256)) * 3 + EICAR
    [(name, decoded)] = extract_yencoded(b"some text\n" + yencode(data, "all bytes.bin") + b"more text\n")
    assert (name, decoded) == ("all bytes.bin", data)


def test_yenc_multipart_lines_are_skipped() -> None:
    block = yencode(b"hello world" * 20)
    lines = block.split(b"\r\n")
    with_part = b"\r\n".join([lines[0], b"=ypart begin=1 end=220", *lines[1:]])
    assert extract_yencoded(with_part) == [("file.bin", b"hello world" * 20)]


def test_yenc_decode_is_the_inverse_of_the_shift() -> None:
    assert yenc_decode(bytes((0x2A + 1, 0x3D, 0x40 + 0x2A, 0x0D, 0x0A))) == b"\x01\x00"


def test_yenc_block_in_a_text_part_is_an_extra_part() -> None:
    raw = (HEAD + "Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n\n").encode()
    mail = Mail(data=raw + b"files follow\n" + yencode(EICAR, "eicar.com"))
    [_, yenc] = mail.parts
    assert (yenc.path, yenc.origin, yenc.filenames, yenc.data) == ("1.yenc1", "yenc", ("eicar.com",), EICAR)


# --------------------------------------------------------------------------- views


def test_ordinary_mail_has_no_views() -> None:
    mail = Mail(
        data=message(
            'Content-Type: multipart/mixed; boundary="XX"\n',
            [TEXT, attachment("Content-Transfer-Encoding: base64\n", b64(EICAR))],
        )
    )
    assert mail.views == []


def test_doubled_transfer_encoding_gives_the_other_decoding() -> None:
    mail = Mail(
        data=message(
            'Content-Type: multipart/mixed; boundary="XX"\n',
            [TEXT, attachment("Content-Transfer-Encoding: 7bit\nContent-Transfer-Encoding: base64\n", b64(EICAR))],
        )
    )
    assert EICAR not in [part.data for part in mail.parts]  # the strict reading takes the first: 7bit
    [view] = [v for v in mail.views if v.data == EICAR]
    assert (view.origin, view.path, view.filenames) == ("decoded:base64", "2~base64", ("eicar.com",))


async def test_parsemail_finds_what_only_a_view_shows_and_says_which() -> None:
    mail = Mail(
        data=message(
            'Content-Type: multipart/mixed; boundary="XX"\n',
            [TEXT, attachment("Content-Transfer-Encoding: base64 (comment)\n", b64(EICAR))],
        )
    )
    detected, detail = await scan(mail)
    assert detected
    assert "[view decoded:base64]" in detail
    assert await scan(mail, views=False) == (False, "")


def test_boundary_that_does_not_match_is_found_in_the_body() -> None:
    mail = Mail(
        data=message(
            'Content-Type: multipart/mixed; boundary="DECLARED"\n',
            [TEXT, attachment("Content-Transfer-Encoding: base64\n", b64(EICAR))],
        )
    )
    assert [p.content_type for p in mail.parts] == ["multipart/mixed"]  # strictly: one unsplit part
    split = [v for v in mail.views if v.origin == "lenient:split"]
    assert [v.data for v in split if v.filenames == ("eicar.com",)] == [EICAR]


def test_payload_in_the_preamble_is_a_raw_base64_view() -> None:
    raw = (
        HEAD + 'Content-Type: multipart/mixed; boundary="XX"\n\n' + b64(EICAR * 2) + "--XX\n" + TEXT + "--XX--\n"
    ).encode()
    mail = Mail(data=raw)
    assert all(EICAR not in part.data for part in mail.parts)
    assert [v.origin for v in mail.views if v.data == EICAR * 2] == ["raw:base64"]


def test_base64_in_padded_pieces() -> None:
    pieces = "".join(base64.b64encode(EICAR[i : i + 5]).decode() for i in range(0, len(EICAR), 5))
    assert decode_base64_chunks(pieces.encode()) == EICAR
    mail = Mail(
        data=message(
            'Content-Type: multipart/mixed; boundary="XX"\n',
            [TEXT, attachment("Content-Transfer-Encoding: base64\n", pieces + "\n")],
        )
    )
    assert mail.parts[1].data != EICAR  # the standard library stops at the first padding
    assert EICAR in [v.data for v in mail.views]


def test_base64_encoded_attached_message_is_parsed_as_a_message() -> None:
    inner = message(
        'Content-Type: multipart/mixed; boundary="IN"\n',
        [TEXT, attachment("Content-Transfer-Encoding: base64\n", b64(EICAR))],
        "IN",
    )
    mail = Mail(
        data=message(
            'Content-Type: multipart/mixed; boundary="XX"\n',
            [TEXT, "Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n" + b64(inner)],
        )
    )
    assert EICAR not in [part.data for part in mail.parts]
    assert "nested" in [v.origin for v in mail.views if v.data == EICAR]


def test_uuencode_in_the_preamble_is_found() -> None:
    uu = "".join(binascii.b2a_uu(EICAR[i : i + 45]).decode() for i in range(0, len(EICAR), 45))
    raw = (
        HEAD
        + 'Content-Type: multipart/mixed; boundary="XX"\n\nbegin 644 e.com\n'
        + uu
        + "`\nend\n--XX\n"
        + TEXT
        + "--XX--\n"
    ).encode()
    mail = Mail(data=raw)
    assert [(v.origin, v.filenames) for v in mail.views if v.data == EICAR] == [("raw:uuencode", ("e.com",))]


def test_dkim_signatures_in_the_top_headers_are_not_payloads() -> None:
    signature = (
        "DKIM-Signature: v=1; a=rsa-sha256; b=\n\t"
        + "\n\t".join(["QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3"] * 4)
        + "\n"
    )
    mail = Mail(data=(HEAD + signature + "Content-Type: text/plain\n\nhello\n").encode())
    assert list(base64_runs(mail.raw)) == []
    assert mail.views == []


def test_lenient_split_needs_content_headers_after_the_boundary() -> None:
    assert lenient_split(b"-----Original Message-----\nFrom: x\n\ntext\n") == []
    assert lenient_split(b"--b\nContent-Type: text/plain\n\none\n--b\nContent-Type: text/plain\n\ntwo\n--b--\n") == [
        b"Content-Type: text/plain\n\none\n",
        b"Content-Type: text/plain\n\ntwo\n",
    ]


def test_views_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mailsift.mime.views, "MAX_VIEWS", 2)
    preamble = "".join(b64(EICAR + bytes([i])) + "\n" for i in range(5))
    raw = (HEAD + 'Content-Type: multipart/mixed; boundary="XX"\n\n' + preamble + "--XX\n" + TEXT + "--XX--\n").encode()
    assert len(Mail(data=raw).views) == 2


def test_views_of_deeply_nested_encodings_stop_at_max_depth() -> None:
    data = message(
        'Content-Type: multipart/mixed; boundary="XX"\n',
        [TEXT, attachment("Content-Transfer-Encoding: base64\n", b64(EICAR))],
    )
    for _ in range(mailsift.mime.views.MAX_DEPTH + 3):  # message in base64 in message in base64 ...
        data = (HEAD + "Content-Type: text/plain\nContent-Transfer-Encoding: 7bit\n\n").encode() + base64.encodebytes(
            data
        )
    views = Mail(data=data).views
    assert views  # the first levels are opened
    assert EICAR not in [v.data for v in views]  # the bottom is out of reach


# --------------------------------------------------------------------------- parsemail options


async def test_raw_option_scans_the_raw_message_last() -> None:
    mail = Mail(data=(HEAD + "X-Marker: needle-in-header\nContent-Type: text/plain\n\nbody\n").encode())
    rule = string_scan([("Header", "needle-in-header")])
    assert not (await parsemail(rule).scan(MailTarget(mail))).detected
    result = await parsemail(rule, raw=True).scan(MailTarget(mail))
    assert result.detected
    assert result.detail.endswith("raw message")


def test_parsemail_options_are_checked_and_described() -> None:
    from mailsift.errors import ConfigError

    with pytest.raises(ConfigError, match="views and raw"):
        parsemail(regexp_scan(EICAR_RULE), views="yes")  # type: ignore[arg-type]
    assert parsemail(regexp_scan(EICAR_RULE)).describe() == "parsemail"
    assert parsemail(regexp_scan(EICAR_RULE), views=False, raw=True).describe() == "parsemail(views=False, raw=True)"


async def test_eicar_zip_behind_a_doubled_content_type_is_found_by_decompress() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("eicar.com", EICAR)
    raw = message(
        'Content-Type: text/plain\nContent-Type: multipart/mixed; boundary="XX"\n',
        [TEXT, attachment("Content-Transfer-Encoding: base64\n", b64(out.getvalue()), 'application/zip; name="a.zip"')],
    )
    mail = Mail(data=raw)
    scanner = parsemail(decompress(regexp_scan(EICAR_RULE)))
    result = await scanner.scan(MailTarget(mail))
    assert result.detected
    assert "[view " in result.detail  # found in a view (the base64 run; the split gives the same bytes)
    strict = parsemail(decompress(regexp_scan(EICAR_RULE)), views=False)
    assert not (await strict.scan(MailTarget(Mail(data=raw)))).detected
