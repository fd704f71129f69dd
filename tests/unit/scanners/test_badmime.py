"""bad_mime: each of qmail-scanner's format checks on a message that triggers it and
on a near-identical clean one; options; and the corpora's ham raising no
executable or double-extension finding."""

from __future__ import annotations

import base64
import csv
import struct

import pytest

from mailsift.errors import ConfigError
from mailsift.message.mail import Mail
from mailsift.scanners.badmime import CHECKS, bad_mime
from mailsift.scanners.base import MailTarget, PartTarget

HEAD = (
    "From: a@example.net\nTo: b@example.org\nSubject: test\nMIME-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="XX"\n\n'
)


def attachment(headers: str, body: str = "aGVsbG8=") -> str:
    """A two-part message: a text part and one attachment with the given headers."""
    return f"{HEAD}--XX\nContent-Type: text/plain\n\nhello\n--XX\n{headers}\n\n{body}\n--XX--\n"


def named(name: str, content_type: str = "application/octet-stream") -> str:
    return attachment(
        f'Content-Type: {content_type}; name="{name}"\nContent-Disposition: attachment; filename="{name}"\n'
        "Content-Transfer-Encoding: base64"
    )


def pe_image() -> bytes:
    """The smallest bytes that look like a PE image: MZ, e_lfanew -> PE\\0\\0."""
    header = bytearray(b"MZ" + b"\0" * 0x3E)
    struct.pack_into("<I", header, 0x3C, 0x40)
    return bytes(header) + b"PE\0\0" + b"\0" * 64


def with_data(content_type: str, data: bytes) -> str:
    encoded = base64.encodebytes(data).decode()
    return attachment(f'Content-Type: {content_type}; name="x"\nContent-Transfer-Encoding: base64', encoded)


LONG = "b" * 251
# check -> (message that triggers it, clean twin)
CASES: dict[str, tuple[str, str]] = {
    "continuation": (
        'From: a@example.net\nMIME-Version: 1.0\nContent-Type: multipart/mixed;\nboundary="XX"\n\n'
        "--XX\nContent-Type: text/plain\n\nhello\n--XX--\n",
        'From: a@example.net\nMIME-Version: 1.0\nContent-Type: multipart/mixed;\n boundary="XX"\n\n'
        "--XX\nContent-Type: text/plain\n\nhello\n--XX--\n",
    ),
    "comment": (
        attachment("Content-T(xxx)ype: text/plain"),
        attachment("Content-Type: text/plain"),
    ),
    "repeated": (
        attachment("Content-Type: text/plain\nContent-Type: application/octet-stream"),
        attachment("Content-Type: text/plain\nContent-Description: one type"),
    ),
    "long_boundary": (
        HEAD.replace('"XX"', f'"{LONG}"') + f"--{LONG}\nContent-Type: text/plain\n\nhi\n--{LONG}--\n",
        HEAD.replace('"XX"', f'"{LONG[:250]}"') + f"--{LONG[:250]}\nContent-Type: text/plain\n\nhi\n--{LONG[:250]}--\n",
    ),
    "filename_conflict": (
        attachment(
            'Content-Type: application/pdf; name="invoice.pdf"\nContent-Disposition: attachment; filename="invoice.exe"'
        ),
        # the same name written three ways (encoded word, RFC 2231, plain)
        attachment(
            'Content-Type: application/pdf; name="=?utf-8?q?caf=C3=A9.pdf?="\n'
            "Content-Disposition: attachment; filename*=utf-8''caf%C3%A9.pdf"
        ),
    ),
    "double_boundary": (
        HEAD.replace('"XX"', '"XX"; boundary="YY"') + "--XX\nContent-Type: text/plain\n\nhi\n--XX--\n",
        HEAD + '--XX\nContent-Type: multipart/alternative; boundary="YY"\n\n'
        "--YY\nContent-Type: text/plain\n\nhi\n--YY--\n--XX--\n",
    ),
    "exe_in_media": (named("wav.exe", "audio/x-wav"), named("wav.exe")),
    "part_header": (
        attachment("Content-Type: text/plain\nthis line is no header"),
        attachment("Content-Type: text/plain\nX-Note: this line is a header"),
    ),
    "exe_not_application": (with_data("image/gif", pe_image()), with_data("application/octet-stream", pe_image())),
    "long_filename": (named("a" * 253 + ".pdf"), named("a" * 252 + ".pdf")),
    "double_extension": (named("invoice.pdf.exe"), named("setup-2.1.exe")),
    "clsid": (named("readme.{3050F4D8-98B5-11CF-BB82-00AA00BDCE0B}"), named("readme.{3050F4D8}")),
    "undecodable": (
        attachment("Content-Type: application/zip\nContent-Transfer-Encoding: x-secret"),
        attachment("Content-Type: application/zip\nContent-Transfer-Encoding: base64", "aGVs!bG8g*d29y#bGQ="),
    ),
}


def findings(text: str, **options: object) -> list[str]:
    return [check for check, _ in bad_mime(**options).findings(MailTarget(Mail(data=text.encode())))]  # type: ignore[arg-type]


def test_every_check_has_a_case() -> None:
    assert set(CASES) == set(CHECKS)


@pytest.mark.parametrize("check", list(CASES))
async def test_check_triggers_on_its_message(check: str) -> None:
    bad, _ = CASES[check]
    assert check in findings(bad)
    result = await bad_mime(only=[check]).scan(MailTarget(Mail(data=bad.encode())))
    assert result.detected
    assert (result.name, result.scanner) == (CHECKS[check], "bad_mime")
    assert result.detail


@pytest.mark.parametrize("check", list(CASES))
async def test_clean_twin_raises_nothing(check: str) -> None:
    _, clean = CASES[check]
    assert findings(clean) == []
    result = await bad_mime().scan(MailTarget(Mail(data=clean.encode())))
    assert not result.detected
    assert result.name == ""


@pytest.mark.parametrize("check", list(CASES))
async def test_skip_turns_a_check_off(check: str) -> None:
    bad, _ = CASES[check]
    assert check not in findings(bad, skip=[check])


def test_long_filename_is_over_256_characters() -> None:
    assert "long_filename" in findings(named("a" * 253 + ".pdf"))  # 257
    assert "long_filename" not in findings(named("a" * 252 + ".pdf"))  # 256


@pytest.mark.parametrize(
    "name",
    [
        "photo.jpg.scr",
        "invoice.PDF.Exe",
        "report.doc          .exe",
        "song.mp3.exe.",
        "letter.txt.vbs",
        "scan.pdf_.exe",
    ],
)
def test_double_extensions_caught(name: str) -> None:
    assert "double_extension" in findings(named(name))


@pytest.mark.parametrize(
    "name", ["archive.tar.gz", "notes.txt.doc", "setup.2.1.exe", "my.project.exe", "report.final.pdf", "photo.jpg.zip"]
)
def test_common_harmless_double_extensions_pass(name: str) -> None:
    assert "double_extension" not in findings(named(name))


def test_nested_multipart_reusing_its_parents_boundary() -> None:
    text = (
        HEAD
        + '--XX\nContent-Type: multipart/alternative; boundary="XX"\n\n--XX\nContent-Type: text/plain\n\nhi\n--XX--\n'
    )
    assert "double_boundary" in findings(text)


def test_mostly_junk_base64_is_undecodable_but_a_few_stray_characters_are_not() -> None:
    junk = "!!!!#### " * 40 + "aGVsbG8="
    assert "undecodable" in findings(
        attachment("Content-Type: application/zip\nContent-Transfer-Encoding: base64", junk)
    )
    sloppy = base64.encodebytes(b"x" * 300).decode().replace("\n", "!\n")
    assert "undecodable" not in findings(
        attachment("Content-Type: application/zip\nContent-Transfer-Encoding: base64", sloppy)
    )


def test_names_hidden_behind_a_broken_boundary_are_checked_through_the_views() -> None:
    # The declared boundary does not match: strictly there is one text part; a mail
    # client that finds the boundary in the body shows the attachment.
    text = (
        HEAD.replace('"XX"', '"declared"')
        + "--XX\nContent-Type: text/plain\n\nhello\n--XX\n"
        + 'Content-Type: application/octet-stream; name="invoice.pdf.exe"\n'
        + "Content-Transfer-Encoding: base64\n\naGVsbG8=\n--XX--\n"
    )
    assert "double_extension" in findings(text)
    assert "double_extension" not in findings(text, views=False)


async def test_under_parsemail_it_checks_the_one_part() -> None:
    mail = Mail(data=named("photo.jpg.exe", "image/jpeg").encode())
    text_part, attached = mail.parts
    assert not (await bad_mime().scan(PartTarget(mail, text_part))).detected
    result = await bad_mime().scan(PartTarget(mail, attached))
    assert result.name == "Bad.MIME.Executable.MediaType"  # the first part check that fires
    assert "part 2" in result.detail


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown check"):
        bad_mime(only=["continuation", "no_such_check"])
    with pytest.raises(ConfigError, match="unknown check"):
        bad_mime(skip="typo")
    with pytest.raises(ConfigError, match="every check is skipped"):
        bad_mime(only=["clsid"], skip=["clsid"])
    with pytest.raises(ConfigError, match="list of check names"):
        bad_mime(only=3)
    assert bad_mime().describe() == "bad_mime()"
    assert bad_mime(only="clsid").describe() == "bad_mime(only=['clsid'])"
    assert bad_mime(skip=["clsid"]).enabled == tuple(c for c in CHECKS if c != "clsid")


# --------------------------------------------------------------------------- corpora

from tests.helpers.paths import CORPORA  # noqa: E402

EXECUTABLE_CHECKS = ("exe_in_media", "exe_not_application", "double_extension", "clsid")
NOT_HAM = {
    # A real Klez-era virus mail (the payload replaced by a harmless stub): an
    # .scr sent as audio/x-wav, exactly what exe_in_media is for.
    "pymilter-test/honey",
}
"""Corpus messages that are not ham besides SpamAssassin's ``spam/`` folder."""


def _corpus_ham() -> list[str]:
    if not (CORPORA / "MANIFEST.tsv").is_file():
        return []
    with open(CORPORA / "MANIFEST.tsv", encoding="utf-8", newline="") as handle:
        paths = [row["local_path"] for row in csv.DictReader(handle, delimiter="\t")]
    return [p for p in paths if not p.startswith("spamassassin-t-data/spam/") and p not in NOT_HAM]


@pytest.mark.skipif(not (CORPORA / "MANIFEST.tsv").is_file(), reason="mail corpora not found")
def test_corpus_ham_raises_no_executable_or_double_extension_finding() -> None:
    ham = _corpus_ham()
    assert len(ham) > 300
    raised = {}
    for path in ham:
        mail = Mail(data=(CORPORA / path).read_bytes())
        found = list(bad_mime(only=EXECUTABLE_CHECKS).findings(MailTarget(mail)))
        if found:
            raised[path] = found
    assert raised == {}
    honey = Mail(data=(CORPORA / "pymilter-test/honey").read_bytes())  # and the check does fire on the virus
    assert [c for c, _ in bad_mime(only=EXECUTABLE_CHECKS).findings(MailTarget(honey))] == ["exe_in_media"]


# --------------------------------------------------------------------------- empty bodies (issue 14, Build 4)

_EMPTY_BODY_HEAD = b"From: a@example.net\r\nTo: b@example.org\r\nSubject: no body\r\nMessage-ID: <x@example.net>\r\n"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_EMPTY_BODY_HEAD, id="headers-only"),  # SpamAssassin's nice/no_body
        pytest.param(_EMPTY_BODY_HEAD.rstrip(b"\r\n"), id="headers-no-final-newline"),
        pytest.param(_EMPTY_BODY_HEAD + b"\r\n", id="blank-line-no-body"),
        pytest.param(_EMPTY_BODY_HEAD.replace(b"\r\n", b"\n") + b"\n", id="lf-blank-line-no-body"),
        pytest.param(_EMPTY_BODY_HEAD + b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n", id="mime-text"),
        pytest.param(
            _EMPTY_BODY_HEAD
            + b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n",
            id="mime-base64-empty",
        ),
    ],
)
def test_a_message_whose_only_oddity_is_an_empty_body_raises_nothing(data: bytes) -> None:
    assert list(bad_mime().findings(MailTarget(Mail(data=data)))) == []


# --------------------------------------------------------------------------- qmail-scanner's rename of repeated headers

REPEATED = (
    b"From: a@example.test\r\nContent-Type: multipart/mixed; boundary=B\r\n"
    b"Content-Type: text/plain\r\nSubject: two types\r\n\r\n"
    b"--B\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    b"--B\r\nContent-Type: application/octet-stream; name=a.bin\r\nContent-Disposition: attachment\r\n"
    b"Content-Type: text/plain\r\ncontent-disposition: inline\r\n\r\nAAAA\r\n--B--\r\n"
)


def test_rename_repeated_headers_renames_the_latter_ones_only() -> None:
    from mailsift.scanners.badmime import rename_repeated_headers

    renamed, what = rename_repeated_headers(REPEATED)
    assert what == ["message headers: Content-Type", "part 2: Content-Type", "part 2: content-disposition"]
    assert renamed == REPEATED.replace(
        b"\r\nContent-Type: text/plain\r\nSubject", b"\r\nX-Duplicate-Content-Type: text/plain\r\nSubject"
    ).replace(
        b"attachment\r\nContent-Type: text/plain\r\ncontent-disposition",
        b"attachment\r\nX-Duplicate-Content-Type: text/plain\r\nX-Duplicate-content-disposition",
    )
    import email

    parsed = email.message_from_bytes(renamed)
    assert parsed.get_all("Content-Type") == ["multipart/mixed; boundary=B"]
    assert [p.get_content_type() for p in parsed.walk()] == [
        "multipart/mixed",
        "text/plain",
        "application/octet-stream",
    ]
    assert rename_repeated_headers(b"Subject: x\r\n\r\nbody\r\n") == (b"Subject: x\r\n\r\nbody\r\n", [])


async def test_bad_mime_rename_delivers_the_renamed_message() -> None:
    from mailsift.message.result import Decision, Disposition

    scanner = bad_mime(repeated="rename")
    result = await scanner.scan(MailTarget(Mail(data=REPEATED)))
    decision = Decision.from_results([result])
    assert decision.disposition is Disposition.DELIVER
    assert decision.sanitized is not None
    assert b"X-Duplicate-Content-Type: text/plain\r\nSubject" in decision.sanitized.message
    assert result.name == "Bad.MIME.Header.Repeated"
    assert (await bad_mime().scan(MailTarget(Mail(data=REPEATED)))).actions == ()  # the default still rejects
    other = REPEATED.replace(b"name=a.bin", b"name=a.gif.exe")  # another finding wins over the rename
    assert (await scanner.scan(MailTarget(Mail(data=other)))).name != "Bad.MIME.Header.Repeated"
    clean = await scanner.scan(MailTarget(Mail(data=b"Subject: x\r\n\r\nbody\r\n")))
    assert not clean.detected


def test_rename_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="repeated must be 'reject' or 'rename'"):
        bad_mime(repeated="drop")
    with pytest.raises(ConfigError, match="rename_prefix"):
        bad_mime(repeated="rename", rename_prefix="X Bad:")
    assert bad_mime(repeated="rename").describe() == "bad_mime(repeated='rename')"
