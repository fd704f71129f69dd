"""Quoted-printable as mail clients read it (mailsift.mime.qp): each reading, and a zip with EICAR hidden
behind each invalid-escape technique found through ``parsemail(decompress(regexp_scan(EICAR)))``."""

from __future__ import annotations

import io
import shutil
import subprocess
import zipfile

import pytest

from mailsift.message.mail import Mail
from mailsift.mime import qp
from mailsift.scanners.archive import decompress
from mailsift.scanners.base import MailTarget
from mailsift.scanners.basic import regexp_scan
from mailsift.scanners.parsemail import parsemail
from tests.helpers.archives import zip_of
from tests.helpers.samples import EICAR

EICAR_RULE = [("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")]
ZIP = zip_of({"eicar.com": EICAR})


def escaped(data: bytes, *, lower: bool = False) -> list[bytes]:
    """Quoted-printable tokens of ``data``: letters and digits as they are, every other byte escaped."""
    form = b"=%02x" if lower else b"=%02X"
    return [bytes((byte,)) if chr(byte).isalnum() else form % byte for byte in data]


def lines(tokens: list[bytes], soft: bytes = b"=\n", width: int = 60) -> bytes:
    """Tokens joined into lines of about ``width`` characters, each ended by ``soft``."""
    out, line = [], b""
    for token in tokens:
        if len(line) + len(token) > width:
            out.append(line)
            line = b""
        line += token
    return soft.join([*out, line])


def message(body: bytes, name: str = "file.zip") -> bytes:
    head = (
        "From: a@example.net\nTo: b@example.org\nSubject: qp\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="XX"\n\n--XX\nContent-Type: text/plain\n\nsee attachment\n'
        f'--XX\nContent-Type: application/zip; name="{name}"\nContent-Transfer-Encoding: quoted-printable\n\n'
    )
    return head.encode() + body + b"\n--XX--\n"


async def found(raw: bytes, *, views: bool = True) -> tuple[bool, str]:
    result = await parsemail(decompress(regexp_scan(EICAR_RULE)), views=views).scan(MailTarget(Mail(data=raw)))
    return result.detected, result.detail


def holders(raw: bytes) -> list[str]:
    """The origins of the parts and views that hold the zip's bytes."""
    mail = Mail(data=raw)
    return [part.origin for part in [*mail.parts, *mail.views] if ZIP in part.data]


# --------------------------------------------------------------------------- the readings


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        (b"a= \nb", {"rfc": b"ab", "drop": b"a\nb"}),
        (b"a=\t\r\nb", {"rfc": b"ab", "drop": b"a\r\nb"}),
        (b"E==4Dc^2", {"rfc": b"E=Mc^2", "thunderbird": b"E==4Dc^2", "drop": b"E4Dc^2"}),
        (b"=W=41", {"thunderbird": b"=W=41", "drop": b"A"}),
        (b"a=\rbcd\nefg", {"rfc": b"a=\rbcd\nefg", "thunderbird": b"abcd\nefg", "drop": b"a\rbcd\nefg"}),
        (b"a=b,b", {"parseint": b"a\x0bb", "drop": b"a,b"}),
        (b"a=Wb=XXc=Hd", {"drop": b"abXcd"}),
    ],
)
def test_each_reading_that_differs_from_the_strict_one(encoded: bytes, expected: dict[str, bytes]) -> None:
    assert dict(qp.readings(encoded)) == expected


@pytest.mark.parametrize("encoded", [b"plain text\n", b"caf=C3=A9 =\nsoft", b"lower =c3=a9", b"end=", b""])
def test_a_body_every_reader_agrees_on_has_no_readings(encoded: bytes) -> None:
    assert qp.readings(encoded) == []


def test_thunderbird_reading_is_skipped_past_its_callback_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qp, "MAX_CALLBACKS", 2)
    assert "thunderbird" not in dict(qp.readings(b"=W=41=W=41=W=41"))
    assert "thunderbird" in dict(qp.readings(b"=W=41"))


PERL_QP = (
    bool(shutil.which("perl"))
    and not subprocess.run(["perl", "-MMIME::QuotedPrint", "-e", "1"], check=False, capture_output=True).returncode
)


@pytest.mark.skipif(not PERL_QP, reason="perl with MIME::QuotedPrint is not installed")
@pytest.mark.parametrize(
    "encoded", [b"a= \nb", b"a=\t\r\nb", b"E==4Dc^2", b"x=4=41 y", b"a=Wb=XXc=Hd", b"lo=c3=a9  \nx"]
)
def test_the_rfc_reading_is_perls(encoded: bytes) -> None:
    """A second, independent reader: Perl's MIME::QuotedPrint::decode_qp gives the same bytes."""
    perl = subprocess.run(
        ["perl", "-MMIME::QuotedPrint", "-e", "binmode STDIN; binmode STDOUT; local $/; print decode_qp(<STDIN>)"],
        input=encoded,
        capture_output=True,
        check=True,
    )
    assert qp.decode_rfc(encoded) == perl.stdout


def test_raw_bodies_end_at_a_declared_boundary_and_carry_the_header() -> None:
    raw = message(b"x=Wy\n--not-a-boundary\nmore")
    [(header, body)] = list(qp.raw_bodies(raw))
    assert header.startswith(b"Content-Type: application/zip")
    assert body == b"x=Wy\n--not-a-boundary\nmore\n"


def test_raw_views_carry_the_entity_s_filenames() -> None:
    views = list(qp.raw_views(message(b"x=Wy"), "p."))
    assert [(v.path, v.origin, v.filenames) for v in views] == [
        ("p.raw.qp1~drop", "decoded:quoted-printable~drop", ("file.zip",))
    ]


# --------------------------------------------------------------------------- hidden payloads

SOFT_BREAKS_WITH_BLANKS = [b"= \n", b"=\t\n", b"= \t \r\n"]


@pytest.mark.parametrize("soft", SOFT_BREAKS_WITH_BLANKS, ids=["space", "tab", "blanks-crlf"])
async def test_soft_line_break_with_trailing_blanks(soft: bytes) -> None:
    """RFC 2045 6.7 (3): trailing blanks are deleted, so ``=`` + blanks is a soft break (Outlook, Go, Perl);
    the standard library keeps ``= `` literally and the zip breaks."""
    raw = message(lines(escaped(ZIP), soft))
    assert holders(raw) == ["decoded:quoted-printable~rfc"]
    detected, detail = await found(raw)
    assert detected
    assert detail.endswith("part raw.qp1~rfc (file.zip) [view decoded:quoted-printable~rfc]")
    assert not (await found(raw, views=False))[0]


@pytest.mark.parametrize("width", [20, 40, 60])
async def test_soft_line_break_before_a_bare_cr(width: int) -> None:
    """Thunderbird reads ``=`` before a bare CR as a soft break; the standard library drops the rest of
    the line (Perl's MIME::QuotedPrint and MimeKit keep the ``=`` and the CR)."""
    raw = message(lines(escaped(ZIP), b"=\r", width))
    assert holders(raw) == ["decoded:quoted-printable~thunderbird"]
    assert (await found(raw))[0]
    assert not (await found(raw, views=False))[0]


@pytest.mark.parametrize("junk", [b"Z", b" ", b"_"])
async def test_equals_with_one_hex_digit_is_that_byte(junk: bytes) -> None:
    """Bytes below 0x10 written as ``=`` + one hex digit + a character (a ``parseInt`` decoder's byte)."""
    tokens = [b"=%X" % byte + junk if byte < 16 else token for byte, token in zip(ZIP, escaped(ZIP), strict=True)]
    raw = message(lines(tokens))
    assert "decoded:quoted-printable~parseint" in holders(raw)
    assert (await found(raw))[0]
    assert not (await found(raw, views=False))[0]


@pytest.mark.parametrize("junk", [b"=W", b"=H", b"=_"])
async def test_invalid_escapes_inserted_as_junk(junk: bytes) -> None:
    """``=W``, ``=H``... between the escapes: every reader named keeps them, a reader that drops them
    gets the zip (the precautionary ``drop`` reading)."""
    tokens = escaped(ZIP)
    raw = message(lines([token + junk if index % 7 == 3 else token for index, token in enumerate(tokens)]))
    assert "decoded:quoted-printable~drop" in holders(raw)
    assert (await found(raw))[0]


def stored_zip(note: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # stored: the note's bytes are in the zip as they are
        archive.writestr("note.txt", note)
        archive.writestr("eicar.com", EICAR, zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


@pytest.mark.parametrize("literal", [b"=W", b"=XX", b"=H"])
async def test_invalid_escapes_are_decoded_through_as_written(literal: bytes) -> None:
    """``=W``, ``=XX``, ``=H`` written unescaped in the payload: every reader named keeps them as they
    are and decodes on, so the strict reading is the zip."""
    archive = stored_zip(b"id" + literal + b"value")
    body = lines(escaped(archive)).replace(b"=3D" + literal[1:], literal)
    assert body.count(literal) >= 1
    mail = Mail(data=message(body))
    assert [part.data for part in mail.parts][1] == archive
    result = await parsemail(decompress(regexp_scan(EICAR_RULE)), views=False).scan(MailTarget(mail))
    assert result.detected


@pytest.mark.parametrize("style", ["lower", "mixed", "lower-crlf"])
async def test_lower_case_hex_is_decoded_by_the_strict_reading(style: str) -> None:
    """Every reader named (the standard library, Thunderbird, MimeKit, Go, Perl) accepts lower-case hex."""
    lower, upper = escaped(ZIP, lower=True), escaped(ZIP)
    tokens = upper if style == "mixed" else lower
    if style == "mixed":
        tokens = [low if index % 2 else up for index, (low, up) in enumerate(zip(lower, upper, strict=True))]
    raw = message(lines(tokens, b"=\r\n" if style == "lower-crlf" else b"=\n"))
    assert holders(raw)[0] == "mime"
    assert (await found(raw, views=False))[0]
