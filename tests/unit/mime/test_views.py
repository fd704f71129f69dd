"""Lenient views (mailsift.mime.views), yEnc, and parsemail scanning the union of the readings."""

from __future__ import annotations

import base64
import binascii
import io
import quopri
import zipfile
from pathlib import Path

import pytest

import mailsift.mime.views
from mailsift.message.mail import Mail
from mailsift.mime.codecs import decode_base64_chunks, extract_yencoded, yenc_decode
from mailsift.mime.tree import Part
from mailsift.mime.views import base64_runs, hidden_entity, last_header_reading, lenient_split
from mailsift.scanners.archive import decompress
from mailsift.scanners.base import MailTarget
from mailsift.scanners.basic import regexp_scan, string_scan
from mailsift.scanners.parsemail import mime_ext, parsemail
from tests.helpers.memory import big_message, peak_above
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


# --------------------------------------------------------------------------- structural readings (issue 14)
#
# Each variant hides a deflated zip holding EICAR in a part named file.zip.  What readers do with them
# (checked with Perl's MIME::Tools 5.510 and the sources of Python's email, Go's mime and MimeKit):
# - part headers behind a vertical tab, form feed or bare CR: Python's feed parser ends the header
#   block at the bare CR (a line end to it) and takes a \v line for body text; MIME::Tools drops the
#   line starting with \v/\f/\r (Perl's \s) and reads the headers after it;
# - doubled boundaries: MIME::Tools takes the last `boundary` parameter, Python the first, Go's
#   mime.ParseMediaType refuses a duplicate parameter;
# - `boundary= "xyz"` / `boundary ="xyz"`: Python's _parseparam and Go's consumeMediaParam strip the
#   blanks around '=', MIME::Tools too;
# - doubled Content-Type / Content-Transfer-Encoding: Python, MIME::Tools (MIME::Head->get(tag, 0)) and
#   Go's Header.Get take the first; MimeKit re-parses Content-Disposition at each one (the last).

ZIP_NAME = "file.zip"


def eicar_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("eicar.com", EICAR)
    return out.getvalue()


ZIP = eicar_zip()
ZIP_B64 = b64(ZIP)
ZIP_QP = quopri.encodestring(ZIP).decode("ascii")
ZIP_HEADERS = f'Content-Type: application/zip; name="{ZIP_NAME}"\nContent-Transfer-Encoding: base64\n\n'
ZIP_QP_HEADERS = f'Content-Type: application/zip; name="{ZIP_NAME}"\nContent-Transfer-Encoding: quoted-printable\n\n'
MIXED = 'Content-Type: multipart/mixed; boundary="b"\n'


def multipart(body: str, content_type: str = MIXED, crlf: bool = False) -> bytes:
    raw = (HEAD + content_type + "\n" + body).encode()
    return raw.replace(b"\n", b"\r\n") if crlf else raw


def in_parts(hidden: str) -> str:
    """A text part, then the hidden part, then the closing boundary ``b``."""
    return f"--b\n{TEXT}--b\n{hidden}--b--\n"


STRUCTURAL = {
    # part headers that begin with a vertical tab, a form feed or a bare CR
    "headers-vt": multipart(in_parts("\v" + ZIP_HEADERS + ZIP_B64)),
    "headers-vt-qp": multipart(in_parts("\v" + ZIP_QP_HEADERS + ZIP_QP + "\n")),
    "headers-cr": multipart(in_parts("\r" + ZIP_HEADERS + ZIP_B64)),
    "headers-cr-crlf": multipart(in_parts("\r" + ZIP_HEADERS + ZIP_B64), crlf=True),
    "headers-cr-qp": multipart(in_parts("\r" + ZIP_QP_HEADERS + ZIP_QP + "\n")),
    "headers-ff": multipart(in_parts("\f" + ZIP_HEADERS + ZIP_B64)),
    "headers-vt-junk-line": multipart(in_parts("\vX-Junk: 1\n" + ZIP_HEADERS + ZIP_B64)),
    "headers-vt-second-line": multipart(in_parts("Content-Disposition: attachment\n\v" + ZIP_HEADERS + ZIP_B64)),
    # doubled boundaries
    "boundary-line-twice": multipart(f"--b\n{TEXT}--b\n--b\n{ZIP_HEADERS}{ZIP_B64}--b--\n"),
    "boundary-four-dashes": multipart(f"--b\n{TEXT}----b\n{ZIP_HEADERS}{ZIP_B64}--b--\n"),
    "boundary-four-dashes-qp": multipart(f"--b\n{TEXT}----b\n{ZIP_QP_HEADERS}{ZIP_QP}\n--b--\n"),
    "boundary-param-twice": multipart(
        f"--a\n{TEXT}--b\n{ZIP_HEADERS}{ZIP_B64}--b--\n--a--\n",
        'Content-Type: multipart/mixed; boundary="a"; boundary="b"\n',
    ),
    "boundary-after-close": multipart(f"--b\n{TEXT}--b--\n--b\n{ZIP_HEADERS}{ZIP_B64}--b--\n"),
    "boundary-after-close-qp": multipart(f"--b\n{TEXT}--b--\n--b\n{ZIP_QP_HEADERS}{ZIP_QP}\n--b--\n"),
    # a boundary parameter with a blank before the quote or the '='
    "boundary-space-before-quote": multipart(
        f"--xyz\n{TEXT}--xyz\n{ZIP_HEADERS}{ZIP_B64}--xyz--\n", 'Content-Type: multipart/mixed; boundary= "xyz"\n'
    ),
    "boundary-space-before-equals": multipart(
        f"--xyz\n{TEXT}--xyz\n{ZIP_HEADERS}{ZIP_B64}--xyz--\n", 'Content-Type: multipart/mixed; boundary ="xyz"\n'
    ),
    "boundary-folded-before-quote": multipart(
        f"--xyz\n{TEXT}--xyz\n{ZIP_HEADERS}{ZIP_B64}--xyz--\n", 'Content-Type: multipart/mixed; boundary=\n\t"xyz"\n'
    ),
    "boundary-space-quotes-in-lines": multipart(
        f'--"xyz"\n{TEXT}--"xyz"\n{ZIP_HEADERS}{ZIP_B64}--"xyz"--\n', 'Content-Type: multipart/mixed; boundary= "xyz"\n'
    ),
    # duplicated Content-Type / Content-Transfer-Encoding: first or last
    "ct-doubled-zip-last": multipart(
        ZIP_B64,
        f'{MIXED}Content-Type: application/zip; name="{ZIP_NAME}"\nContent-Transfer-Encoding: base64\n',
    ),
    "ct-doubled-part-text-first": multipart(
        in_parts(
            f'Content-Type: text/plain\nContent-Type: application/zip; name="{ZIP_NAME}"\n'
            f"Content-Transfer-Encoding: base64\n\n{ZIP_B64}"
        )
    ),
    "ct-doubled-two-multiparts": multipart(
        f"--a\n{TEXT}--a--\n--b\n{ZIP_HEADERS}{ZIP_B64}--b--\n",
        'Content-Type: multipart/mixed; boundary="a"\n' + MIXED,
    ),
    "ct-doubled-qp-last": multipart(
        in_parts(
            f'Content-Type: text/plain\nContent-Type: application/zip; name="{ZIP_NAME}"\n'
            f"Content-Transfer-Encoding: 7bit\nContent-Transfer-Encoding: quoted-printable\n\n{ZIP_QP}\n"
        )
    ),
    "cte-doubled-base64-last": multipart(
        in_parts(
            f'Content-Type: application/zip; name="{ZIP_NAME}"\nContent-Transfer-Encoding: 7bit\n'
            f"Content-Transfer-Encoding: base64\n\n{ZIP_B64}"
        )
    ),
}


@pytest.mark.parametrize("name", sorted(STRUCTURAL))
async def test_structural_trick_hides_neither_the_zip_nor_its_name(name: str) -> None:
    mail = Mail(data=STRUCTURAL[name])
    readings = [*mail.parts, *mail.views]
    assert ZIP in [part.data for part in readings], "the payload is in no part or view"
    named = [part.filenames for part in readings if part.data == ZIP]
    assert any(ZIP_NAME in names for names in named), f"no reading of the zip carries its name: {named}"
    content = await parsemail(decompress(regexp_scan(EICAR_RULE))).scan(MailTarget(mail))
    assert content.detected
    assert (await parsemail(mime_ext(r"\.zip$")).scan(MailTarget(mail))).detected


@pytest.mark.parametrize(
    ("name", "origin"),
    [
        ("headers-vt-qp", "lenient:headers"),
        ("headers-cr", "lenient:headers"),
        ("boundary-after-close-qp", "lenient:after"),
        ("ct-doubled-two-multiparts", "lenient:after"),
        # the strict part carries the last Content-Type's name itself (mime.params reads every header),
        # so the lenient:last reading of the same bytes adds nothing and is dropped
        ("ct-doubled-zip-last", "mime"),
    ],
)
def test_structural_reading_says_where_it_comes_from(name: str, origin: str) -> None:
    mail = Mail(data=STRUCTURAL[name])
    readings = [*mail.parts, *mail.views]
    assert origin in [v.origin for v in readings if v.data == ZIP and ZIP_NAME in v.filenames]


def test_hidden_entity_needs_a_content_header_block() -> None:
    assert hidden_entity(b"\vContent-Type: text/plain\n\nhi\n") == b"Content-Type: text/plain\n\nhi\n"
    assert hidden_entity(b"\r\fX-A: 1\nContent-Type: text/plain\n\nhi\n").startswith(b"X-A: 1\n")
    assert hidden_entity(b"From: a\nTo: b\n\nforwarded text\n") == b""  # headers, but no Content- one
    assert hidden_entity(b"Content-Type: text/plain\nno blank line after") == b""
    assert hidden_entity(b"plain words\n") == b""


def test_last_header_reading_keeps_only_the_last_of_doubled_content_headers() -> None:
    raw = (
        b"Subject: s\nContent-Type: text/plain\nContent-Type: multipart/mixed;\n boundary=b\n\n"
        b"--b\nContent-Transfer-Encoding: 7bit\nX-A: 1\nContent-Transfer-Encoding: base64\n\nQUJD\n--b--\n"
    )
    assert last_header_reading(raw) == (
        b"Subject: s\nContent-Type: multipart/mixed;\n boundary=b\n\n"
        b"--b\nX-A: 1\nContent-Transfer-Encoding: base64\n\nQUJD\n--b--\n"
    )
    assert last_header_reading(b"Subject: s\nContent-Type: text/plain\n\nbody\n") == b""


def test_a_view_with_the_same_bytes_is_kept_only_for_a_new_name() -> None:
    mail = Mail(data=STRUCTURAL["ct-doubled-part-text-first"])
    [strict] = [part for part in mail.parts if part.data == ZIP]
    # the first Content-Type (text/plain) has no name; mime.params reads the second one's
    assert ZIP_NAME in strict.filenames
    assert [v.filenames for v in mail.views if v.data == ZIP] == []  # no new name: no view
    assert Mail(data=STRUCTURAL["boundary-line-twice"]).views == []  # the strict reading has it all


def test_corpus_like_mail_gets_no_structural_views() -> None:
    forwarded = multipart(in_parts("Content-Type: text/plain\n\nFrom: x\nTo: y\nSubject: fwd\n\nhello\n"))
    assert Mail(data=forwarded).views == []
    epilogue = multipart(f"--b\n{TEXT}--b--\nthanks, -- the sender\n")
    assert Mail(data=epilogue).views == []


def _long_run_cases() -> list[bytes]:
    """Runs of base64 lines: plain, padded, padded pieces inside, a dangling character, blanks."""
    lines = base64.encodebytes(bytes(range(256)) * 40).splitlines()
    plain = b"\r\n".join(lines[:-1]) + b"\r\n"
    return [
        plain,
        base64.encodebytes(bytes(range(256)) * 40 + b"x").replace(b"\n", b"\r\n"),  # ends "=="
        base64.encodebytes(bytes(range(256)) * 40 + b"xy"),  # ends "="
        plain + b"QUJD" + b"QQ==QkM=" * 4 + b"\r\n" + plain,  # padded pieces inside the run
        b"QQ==" + plain,  # padding in the first line
        plain + b"QUJDR\r\n",  # a dangling character at the end
        b" \t" + plain.replace(b"\r\n", b" \t\r\n"),  # blanks around the lines
    ]


@pytest.mark.parametrize("stream", [5, 64, 4099, 1 << 20])
@pytest.mark.parametrize("case", range(7))
def test_long_base64_runs_decode_a_slice_at_a_time_as_the_whole_text_does(
    monkeypatch: pytest.MonkeyPatch, stream: int, case: int
) -> None:
    raw = b"Subject: runs\r\n\r\nsome text\r\n" + _long_run_cases()[case] + b"\r\nmore text\r\n"
    expected = list(base64_runs(raw))  # the whole-text decoding (runs under 1 MB)
    assert expected
    assert all(data for _, data in expected)
    monkeypatch.setattr(mailsift.mime.views, "_STREAM_RUN", stream)
    assert list(base64_runs(raw)) == expected
    (offset, _), end = expected[0], raw.index(b"more text")
    if case < 3:  # no padding inside: the standard library's decoding
        assert expected == [(offset, base64.b64decode(b"".join(raw[offset:end].split())))]
    skip = {mailsift.mime.codecs.base64_source_key(raw[offset:end])}
    assert list(base64_runs(raw, skip)) == []


@pytest.mark.parametrize(
    ("virus", "origins"),
    [(False, ["decoded:base64"]), (True, ["raw:base64"])],
    ids=["a base64 body (an alternate)", "a text line, then base64 (a raw run)"],
)
async def test_views_of_a_big_base64_body_peak_under_twice_its_size(
    tmp_path: Path, virus: bool, origins: list[str]
) -> None:
    # the base64 run's expression held 3.8x its size of backtracking state, then the run's text,
    # its copy and a lower-case copy of the message were held together: 6.7x, then 3.0x
    mail = Mail(data=big_message(8, virus=virus), spool_dir=str(tmp_path))
    try:
        assert mail.spooled
        mail.parts  # noqa: B018 - parsed before the measure

        async def views() -> list[Part]:
            return mail.views

        found, peak = await peak_above(views)
        assert [view.origin for view in found] == origins  # the alternate's run is not decoded twice
        assert peak < 2 * mail.size, f"peak {peak / mail.size:.2f} times the message's size"
    finally:
        mail.close()
