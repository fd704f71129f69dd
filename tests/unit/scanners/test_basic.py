"""Real scanners that need only the message: const, string_scan, regexp_scan,
sender_regexp, max_file_size, attach_name and mime_ext (filename tricks included)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any

import pytest

from mailsift import (
    attach_name,
    const,
    max_file_size,
    mime_ext,
    parsemail,
    regexp_scan,
    sender_regexp,
    string_scan,
)
from mailsift.errors import ConfigError
from mailsift.message.mail import Mail
from mailsift.message.result import Result
from mailsift.scanners.base import Scanner

MakeMail = Callable[..., Mail]
Run = Callable[[Scanner, Mail], Any]

EXECUTABLES = r"\.(exe|com|scr|pif|bat)$"


# --------------------------------------------------------------------------- const


async def test_const(make_mail: MakeMail, run: Run) -> None:
    result = await run(const(1.0, "Blocked"), make_mail("From: a@example.net\n\nx\n"))
    assert result == Result(1.0, "Blocked", "const")
    assert result.detected
    assert not (await run(const(), make_mail("From: a@example.net\n\nx\n"))).detected


def test_const_level_must_be_a_number() -> None:
    with pytest.raises(ConfigError, match="const: level must be a number"):
        const("high", "x")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- string_scan / regexp_scan


async def test_regexp_scan_issue_form_finds_eicar(make_mail: MakeMail, run: Run, eicar: bytes) -> None:
    scanner = regexp_scan([("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")])
    detected = await run(scanner, make_mail(b"From: a@example.net\r\n\r\n" + eicar + b"\r\n"))
    assert (detected.level, detected.name, detected.scanner) == (1.0, "EICAR-Test", "regexp_scan")
    clean = await run(scanner, make_mail("From: a@example.net\n\nnothing here\n"))
    assert (clean.level, clean.name) == (0.0, "")


async def test_regexp_scan_sagator_form_needs_every_pattern(make_mail: MakeMail, run: Run) -> None:
    scanner = regexp_scan([["Phish.Bank", rb"verify your account", rb"https?://[0-9.]+/"]])
    both = make_mail("From: a@example.net\n\nPlease verify your account at http://192.0.2.7/login\n")
    one = make_mail("From: a@example.net\n\nPlease verify your account at https://bank.example/\n")
    assert (await run(scanner, both)).name == "Phish.Bank"
    assert not (await run(scanner, one)).detected


async def test_regexp_scan_first_matching_rule_wins_and_flags_apply(make_mail: MakeMail, run: Run) -> None:
    mail = make_mail("From: a@example.net\n\nCHEAP pills, cheap WATCHES\n")
    scanner = regexp_scan([("Pills", r"pills"), ("Watches", r"watches")], re.IGNORECASE)
    assert (await run(scanner, mail)).name == "Pills"
    assert (await run(regexp_scan([("Watches", r"watches")]), mail)).detected is False


async def test_regexp_scan_dict_form(make_mail: MakeMail, run: Run) -> None:
    mail = make_mail("From: a@example.net\n\nfoo bar\n")
    assert (await run(regexp_scan({"Bar": r"b.r"}), mail)).name == "Bar"


async def test_string_scan_is_literal(make_mail: MakeMail, run: Run) -> None:
    scanner = string_scan([("Dot", "a.c")])
    assert not (await run(scanner, make_mail("From: a@example.net\n\nabc\n"))).detected
    assert (await run(scanner, make_mail("From: a@example.net\n\na.c\n"))).name == "Dot"


async def test_string_scan_sagator_form_needs_every_string(make_mail: MakeMail, run: Run) -> None:
    scanner = string_scan([("Both", "alpha", b"omega")])
    assert (await run(scanner, make_mail("From: a@example.net\n\nalpha and omega\n"))).detected
    assert not (await run(scanner, make_mail("From: a@example.net\n\nalpha only\n"))).detected


async def test_pattern_scan_on_a_big_message_runs_in_a_thread(make_mail: MakeMail, run: Run) -> None:
    # Over the thread threshold (512 KB) the search moves to a thread; the verdict is the same.
    mail = make_mail(b"From: a@example.net\r\n\r\n" + b"x" * (700 * 1024) + b"NEEDLE\r\n")
    assert (await run(regexp_scan([("Needle", r"NEEDLE")]), mail)).detected
    assert (await run(string_scan([("Needle", "NEEDLE")]), mail)).detected


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([("x", "(")], "bad pattern for 'x'"),
        ([], "non-empty list"),
        ("EICAR", "non-empty list"),
        ([("only-a-name",)], "each rule must be"),
        ([(1, "x")], "each rule must be"),
        ([("x", 5)], "pattern must be str or bytes"),
    ],
)
def test_regexp_scan_checks_its_rules(rules: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        regexp_scan(rules)


# --------------------------------------------------------------------------- sender_regexp


async def test_sender_regexp(make_mail: MakeMail, run: Run) -> None:
    scanner = sender_regexp([("Blocked.Sender", r"@spam\.example$")])
    hit = await run(scanner, make_mail("From: x\n\nx\n", sender="Someone@SPAM.example"))
    assert (hit.level, hit.name) == (1.0, "Blocked.Sender")  # case-insensitive by default
    assert "Someone@SPAM.example" in hit.detail
    miss = await run(scanner, make_mail("From: x@spam.example\n\nx\n", sender="ok@example.org"))
    assert not miss.detected  # the envelope counts, not the From header


def test_sender_regexp_bad_pattern() -> None:
    with pytest.raises(ConfigError, match="sender_regexp: bad regular expression"):
        sender_regexp([("x", "[")])


# --------------------------------------------------------------------------- max_file_size


async def test_max_file_size_on_the_message_and_on_parts(make_mail: MakeMail, run: Run) -> None:
    payload = b"A" * 3000
    mail = make_mail(
        "From: a@example.net\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=XX\n\n"
        "--XX\nContent-Type: text/plain\n\nsmall\n"
        "--XX\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(payload).decode()
        + "--XX--\n"
    )
    assert mail.size > 4000  # base64 makes the message bigger than the part
    whole = await run(max_file_size(4000), mail)
    assert (whole.name, whole.detected) == ("Policy.FileTooBig", True)
    assert not (await run(max_file_size(mail.size), mail)).detected

    per_part = await run(parsemail(max_file_size(2999, "Too.Big")), mail)
    assert (per_part.name, per_part.detected) == ("Too.Big", True)
    assert "3000 > 2999" in per_part.detail
    assert "part 2" in per_part.detail
    assert not (await run(parsemail(max_file_size(3000)), mail)).detected


@pytest.mark.parametrize("size", [-1, 1.5, "10"])
def test_max_file_size_checks_its_size(size: Any) -> None:
    with pytest.raises(ConfigError, match="max_file_size"):
        max_file_size(size)


# --------------------------------------------------------------------------- attach_name / mime_ext


def attachment(disposition: str, content_type: str = "application/octet-stream") -> str:
    """A message whose second part has the given Content-Disposition and Content-Type."""
    return (
        "From: a@example.net\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=XX\n\n"
        "--XX\nContent-Type: text/plain\n\nsee attached\n"
        f"--XX\nContent-Type: {content_type}\nContent-Disposition: {disposition}\n"
        "Content-Transfer-Encoding: base64\n\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAA\n--XX--\n"
    )


def encoded_word(text: str) -> str:
    return "=?utf-8?B?" + base64.b64encode(text.encode()).decode() + "?="


# Each case: (test id, the raw message, the filename expected in the detection).
HIDDEN_NAMES = [
    pytest.param(attachment('attachment; filename="invoice.exe"'), "invoice.exe", id="plain-filename"),
    pytest.param(attachment("attachment; filename*=utf-8''inv%C3%B6ice.exe"), "invöice.exe", id="rfc2231"),
    pytest.param(
        attachment("attachment; filename*0*=utf-8''inv; filename*1*=oice.%65xe"), "invoice.exe", id="rfc2231-split"
    ),
    pytest.param(attachment("attachment; filename*=''invoice%2Eexe"), "invoice.exe", id="rfc2231-no-charset"),
    pytest.param(attachment(f'attachment; filename="{encoded_word("invoice.exe")}"'), "invoice.exe", id="encoded-word"),
    pytest.param(
        attachment('attachment; filename="invoice.pdf"', 'application/pdf; name="invoice.pdf.exe"'),
        "invoice.pdf.exe",
        id="content-type-name-differs",
    ),
    pytest.param(
        attachment("inline", f'application/octet-stream; name="{encoded_word("Rechnung.scr")}"'),
        "Rechnung.scr",
        id="content-type-encoded-word",
    ),
    pytest.param(attachment('attachment; FileName="UPPER.EXE"'), "UPPER.EXE", id="case"),
]


@pytest.mark.parametrize(("message", "filename"), HIDDEN_NAMES)
async def test_mime_ext_sees_every_candidate_filename(
    make_mail: MakeMail, run: Run, message: str, filename: str
) -> None:
    mail = make_mail(message)
    result = await run(mime_ext(EXECUTABLES), mail)
    assert (result.level, result.name) == (1.0, "Policy.BadExtension")
    assert repr(filename) in result.detail
    assert "part 2" in result.detail


@pytest.mark.parametrize(("message", "filename"), HIDDEN_NAMES)
async def test_attach_name_sees_every_candidate_filename(
    make_mail: MakeMail, run: Run, message: str, filename: str
) -> None:
    result = await run(attach_name([("Policy.Exe", r"\.(exe|scr)$")]), make_mail(message))
    assert (result.level, result.name) == (1.0, "Policy.Exe")
    assert repr(filename) in result.detail


async def test_harmless_names_pass(make_mail: MakeMail, run: Run) -> None:
    mail = make_mail(attachment('attachment; filename="report.exe.pdf"', 'application/pdf; name="report.pdf"'))
    assert not (await run(mime_ext(EXECUTABLES), mail)).detected
    assert not (await run(attach_name([("Exe", r"\.exe$")]), mail)).detected


async def test_uuencoded_file_in_a_text_part(make_mail: MakeMail, run: Run) -> None:
    encoded = binascii.b2a_uu(b"MZ fake executable").decode()
    mail = make_mail(
        "From: a@example.net\nSubject: old style\n\nHi, the program is below.\n\n"
        f"begin 644 evil.exe\n{encoded}`\nend\n\nBye.\n"
    )
    result = await run(mime_ext(EXECUTABLES), mail)
    assert result.detected
    assert "'evil.exe' in part 1.uu1" in result.detail
    uu_part = next(p for p in mail.parts if p.origin == "uuencode")
    assert uu_part.data == b"MZ fake executable"


async def test_mime_ext_case_sensitivity_is_configurable(make_mail: MakeMail, run: Run) -> None:
    mail = make_mail(attachment('attachment; filename="SETUP.EXE"'))
    assert (await run(mime_ext(r"\.exe$"), mail)).detected
    assert not (await run(mime_ext(r"\.exe$", ignore_case=False), mail)).detected


async def test_name_scanners_under_parsemail_see_one_part(make_mail: MakeMail, run: Run) -> None:
    mail = make_mail(attachment('attachment; filename="x.exe"'))
    result = await run(parsemail(mime_ext(EXECUTABLES, "Policy.Executable")), mail)
    assert (result.name, result.detected) == ("Policy.Executable", True)
    assert "part 2" in result.detail


@pytest.mark.parametrize("pattern", ["", "(", 5])
def test_mime_ext_checks_its_pattern(pattern: Any) -> None:
    with pytest.raises(ConfigError, match="mime_ext"):
        mime_ext(pattern)


def test_attach_name_checks_its_rules() -> None:
    with pytest.raises(ConfigError, match="attach_name"):
        attach_name([("Exe", "(")])
