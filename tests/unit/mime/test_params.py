"""mime/params.py: every reading of a filename parameter that a mail client could show.

Each technique of issue 14's hidden filenames has several variants, built from the name they hide:
with ``file.zip`` the part's candidate filenames hold ``file.zip`` and ``parsemail(mime_ext(r"\\.zip$"))``
blocks the message; the same variant built with ``file.pdf`` (the control) yields no ``.zip`` name at all.
Which client or library reads each variant which way: docs/evasive-mime.md (the "hidden filenames" lines).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest

from mailsift.message.mail import Mail
from mailsift.mime import params
from mailsift.scanners.base import Scanner
from mailsift.scanners.parsemail import mime_ext, parsemail

MakeMail = Callable[..., Mail]
Run = Callable[[Scanner, Mail], Any]
DECOY = "decoy.txt"
OCTET = "Content-Type: application/octet-stream"


def pct(text: str, encoding: str = "utf-8") -> str:
    return "".join(f"%{byte:02X}" for byte in text.encode(encoding))


def b64(text: str, encoding: str) -> str:
    return base64.b64encode(text.encode(encoding)).decode()


def split(name: str) -> tuple[str, str]:
    """``file.zip`` -> ``file``, ``.zip``."""
    stem, dot, extension = name.rpartition(".")
    return stem, dot + extension


# technique -> variants; each variant: name -> the attachment's header lines
Variant = Callable[[str], str]
TECHNIQUES: dict[str, list[Variant]] = {
    "rfc2231-out-of-order": [
        lambda n: f'{OCTET}\nContent-Disposition: attachment; filename*1="{split(n)[1]}"; filename*0="{split(n)[0]}"',
        lambda n: (
            f'{OCTET}\nContent-Disposition: attachment; filename*2="{n[-1]}"; filename*0="{n[:3]}";'
            f' filename*1="{n[3:-1]}"'
        ),
        lambda n: f"{OCTET}; name*1*={pct(split(n)[1])}; name*0*=utf-8''{pct(split(n)[0])}",
    ],
    "rfc2231-split-lines": [
        lambda n: f'{OCTET}\nContent-Disposition: attachment;\n filename*0="{n[:2]}";\n filename*1="{n[2:]}"',
        lambda n: f"{OCTET};\n\tname*0={n[:4]};\n\tname*1={n[4:]}",
        lambda n: f"{OCTET}\nContent-Disposition: attachment;\n filename*0*=utf-8''{n[:2]};\n filename*1*={pct(n[2:])}",
    ],
    "rfc2231-mixed-plain": [
        lambda n: (
            f'{OCTET}\nContent-Disposition: attachment; filename="{DECOY}"; filename*0="{split(n)[0]}";'
            f' filename*1="{split(n)[1]}"'
        ),
        lambda n: f"{OCTET}; name=\"{DECOY}\"; name*0*=utf-8''{pct(n)}",
        lambda n: f'{OCTET}\nContent-Disposition: attachment; filename*0="{n}"; filename="{DECOY}"',
        lambda n: f"{OCTET}\nContent-Disposition: attachment; filename=\"{DECOY}\"; filename*=utf-8''{pct(n)}",
    ],
    "rfc2231-charset-language": [
        lambda n: f"{OCTET}\nContent-Disposition: attachment; filename*0*=utf-8''{n[:2]}; filename*1*={pct(n[2:])}",
        lambda n: f"{OCTET}\nContent-Disposition: attachment; filename*=utf-8'en'{pct(n)}",
        lambda n: f"{OCTET}\nContent-Disposition: attachment; filename*=utf-16''{pct(n, 'utf-16')}",
        lambda n: f"{OCTET}; name*0*=us-ascii'en-us'{split(n)[0]}; name*1*={pct(split(n)[1])}",
    ],
    "encoded-word": [
        lambda n: f'{OCTET}\nContent-Disposition: attachment; filename="=?utf-16?B?{b64(n, "utf-16")}?="',
        lambda n: f'{OCTET}; name="=?UTF-16LE?B?{b64(n, "utf-16-le")}?="',
        lambda n: f'{OCTET}; name="=?utf-16be?B?{b64(n, "utf-16-be")}?="',
        lambda n: (
            f'{OCTET}\nContent-Disposition: attachment; filename="=?utf-8?B?{b64(split(n)[0], "utf-8")}?={split(n)[1]}"'
        ),
        lambda n: f'{OCTET}; name="=?utf-8?Q?{n[:2]}?= =?utf-8?Q?{n[2:].replace(".", "=2E")}?="',
    ],
    "garbage-around-key": [
        lambda n: f"{OCTET}\nContent-Disposition: attachment; filename (x)= {n}",
        lambda n: f'{OCTET}\nContent-Disposition: attachment; filename = "{n}"',
        lambda n: f'{OCTET}\nContent-Disposition: attachment; filename="{n[:2]}\\{n[2:]}"',
        lambda n: f'{OCTET}\nContent-Disposition: attachment; filename="{DECOY}" filename="{n}"',
        lambda n: f"{OCTET}\nContent-Disposition: attachment; n;x; filename (comment) = {n}",
        lambda n: f'{OCTET}\nContent-Disposition: attachment; x="a;filename={n}"; filename="{DECOY}"',
    ],
    "duplicate-headers": [
        lambda n: (
            f'{OCTET}\nContent-Disposition: attachment; filename="{DECOY}"\n'
            f'Content-Disposition: attachment; filename="{n}"'
        ),
        lambda n: f'{OCTET}; name="{DECOY}"\nContent-Type: application/zip; name="{n}"',
        lambda n: (
            f"{OCTET}\nContent-Disposition: attachment; filename={DECOY}\nContent-Disposition: inline;"
            f" filename={n}\nContent-Disposition: attachment; filename={DECOY}"
        ),
    ],
    "type-vs-disposition": [
        lambda n: f'{OCTET}; name="{n}"\nContent-Disposition: attachment; filename="{DECOY}"',
        lambda n: f'{OCTET}\nContent-Disposition: attachment; name="{n}"',
        lambda n: f"{OCTET}; name*=utf-8''{pct(n)}\nContent-Disposition: attachment; filename=\"{DECOY}\"",
    ],
}
CASES = [
    pytest.param(technique, variant, id=f"{technique}-{index}")
    for technique, variants in TECHNIQUES.items()
    for index, variant in enumerate(variants, start=1)
]


def message(headers: str) -> str:
    """A two-part message: a text part, then the attachment with ``headers``."""
    return (
        "From: a@example.net\nTo: b@example.org\nSubject: test\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="XX"\n\n'
        f"--XX\nContent-Type: text/plain\n\nhello\n--XX\n{headers}\nContent-Transfer-Encoding: base64\n\n"
        "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==\n--XX--\n"
    )


def test_every_technique_has_three_variants_or_more() -> None:
    assert all(len(variants) >= 3 for variants in TECHNIQUES.values())


@pytest.mark.parametrize(("technique", "variant"), CASES)
async def test_the_hidden_zip_name_is_a_candidate_and_blocked(
    make_mail: MakeMail, run: Run, technique: str, variant: Variant
) -> None:
    mail = make_mail(message(variant("file.zip")))
    assert "file.zip" in mail.parts[1].filenames, (technique, mail.parts[1].filenames)
    result = await run(parsemail(mime_ext(r"\.zip$")), mail)
    assert result.detected, technique
    assert "part 2" in result.detail


@pytest.mark.parametrize(("technique", "variant"), CASES)
async def test_the_control_without_a_zip_name_yields_none(
    make_mail: MakeMail, run: Run, technique: str, variant: Variant
) -> None:
    mail = make_mail(message(variant("file.pdf")))
    names = mail.parts[1].filenames
    assert any(name.endswith("file.pdf") or "file.pdf" in name for name in names), names
    assert not [name for name in names if "zip" in name.lower()], names
    assert not (await run(parsemail(mime_ext(r"\.zip$")), mail)).detected


def test_ordinary_names_have_one_reading_and_the_strict_one_comes_first(make_mail: MakeMail) -> None:
    mail = make_mail(message(f'{OCTET}; name="report.pdf"\nContent-Disposition: attachment; filename="report.pdf"'))
    assert mail.parts[1].filenames == ("report.pdf",)
    mail = make_mail(message(f'{OCTET}; name="one.pdf"\nContent-Disposition: attachment; filename="two.exe"'))
    assert mail.parts[1].filenames == ("two.exe", "one.pdf")
    assert params.parameter_readings(["attachment; filename*=iso-8859-1''r%E9sum%E9.pdf"], "filename") == ["résumé.pdf"]


# --------------------------------------------------------------------------- the readings themselves


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # Thunderbird (nsMIMEHeaderParamImpl): the first plain value; no ';' ends the header
        ('attachment; filename="a.txt" filename="b.zip"', "a.txt"),
        # a reader that takes every key=value wherever it stands
        ('attachment; filename="a.txt" filename="b.zip"', "b.zip"),
        # compat32: the value runs to the next ';', outer quotes removed only if both are there
        ('attachment; filename="a.txt" filename="b.zip"', 'a.txt" filename="b.zip'),
        # RFC 2231 sections in numeric order, and in written order
        ('attachment; filename*1="b"; filename*0="a"', "ab"),
        ('attachment; filename*1="b"; filename*0="a"', "ba"),
        # Mozilla stops at a missing section; others join what is there
        ('attachment; filename*0="a"; filename*2="c"', "a"),
        ('attachment; filename*0="a"; filename*2="c"', "ac"),
        # a repeated section: first or last
        ('attachment; filename*0="a"; filename*0="b"', "a"),
        ('attachment; filename*0="a"; filename*0="b"', "b"),
        # the plain value as section 0 (the standard library's policy.default sorts it there)
        ('attachment; filename="a"; filename*1="b"', "ab"),
        # escapes resolved (RFC 822), and kept (a reader that does not know them)
        ('attachment; filename="a\\b"', "ab"),
        ('attachment; filename="a\\b"', "a\\b"),
        # RFC 2231 charset'language' with one quote only: Mozilla reads charset'value
        ("attachment; filename*=utf-8'a%2Eb", "a.b"),
        # an unterminated quoted string runs to the end
        ('attachment; filename="a.b', "a.b"),
        # encoded words: joined across a blank, a character split between two words
        ("attachment; filename==?utf-8?B?w6k=?=", "é"),
        ('attachment; filename="=?utf-8?Q?=C3?= =?utf-8?Q?=A9?="', "é"),
    ],
)
def test_readings(header: str, expected: str) -> None:
    assert expected in params.parameter_readings([header], "filename")


def test_other_parameters_are_not_read_as_the_one_asked() -> None:
    assert params.parameter_readings(['attachment; xfilename="a.zip"; filenames=b.zip'], "filename") == []
    assert params.parameter_readings(['text/plain; charset="file.zip"'], "name") == []
    assert params.parameter_readings([], "filename") == []


def test_python_codecs_and_unknown_charsets_stay_as_written() -> None:
    for word in ("=?unicode-escape?Q?\\x41?=", "=?base64_codec?B?QUFB?=", "=?x-unknown?B?QUFB?="):
        readings = params.parameter_readings([f'attachment; filename="{word}"'], "filename")
        assert word in readings
        assert all(reading.startswith("=?") for reading in readings)


def test_bounds() -> None:
    many = "attachment; " + "; ".join(f'filename="n{i}.txt"' for i in range(500)) + '; filename="last.zip"'
    readings = params.parameter_readings([many], "filename")
    assert len(readings) <= params.MAX_READINGS
    assert "n0.txt" in readings  # the first and the last before the others
    assert "last.zip" in readings
    huge = params.parameter_readings(
        ["attachment; filename=first.txt" + " " * 1_000_000 + "; filename=b.zip"], "filename"
    )
    assert "first.txt" in huge
    assert "b.zip" in huge
    long = params.parameter_readings([f'attachment; filename="{"a" * 100_000}.zip"'], "filename")
    assert long
    assert all(len(reading) <= params.MAX_VALUE for reading in long)
    sections = "attachment; " + "; ".join(f"filename*{i}=x" for i in range(200))
    assert all(len(r) <= params.MAX_SECTIONS for r in params.parameter_readings([sections], "filename"))
    headers = [f"attachment; filename=h{i}.txt" for i in range(100)] + ["attachment; filename=end.zip"]
    readings = params.parameter_readings(headers, "filename")
    assert "h0.txt" in readings
    assert "end.zip" in readings
    assert "h50.txt" not in readings
    words = "attachment; filename=" + "=?utf-8?B?QQ==?=" * 1000
    assert all(len(r) <= params.MAX_VALUE for r in params.parameter_readings([words], "filename"))
