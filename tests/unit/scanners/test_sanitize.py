"""``sanitize``: the offending parts replaced by a notice, the rest delivered, a message mail clients open.

Each delivered message is read by two parsers: Python's ``email`` (modern policy,
no defect allowed) and Perl's MIME::Parser (tests/helpers/sanitize.py).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest

from mailsift import attach_name, const, modify_header, parsemail, quarantine, regexp_scan, reject, remove_headers
from mailsift.core.disposition import final_message
from mailsift.core.pipeline import Pipeline
from mailsift.errors import ConfigError
from mailsift.message.mail import Mail
from mailsift.message.result import Decision, Disposition
from mailsift.scanners import sanitize as sanitize_module
from mailsift.scanners.sanitize import sanitize
from tests.helpers.sanitize import EICAR, PDF, have_perl_reader, mixed, perl_parts, python_parts, single

MakeMail = Callable[..., Mail]
VIRUS = regexp_scan([("Eicar-Test-Signature", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")])
needs_perl = pytest.mark.skipif(not have_perl_reader(), reason="Perl's MIME::Parser (libmime-tools-perl) is missing")


async def decide(mail: Mail, *scanners: Any) -> Decision:
    return await Pipeline(scanners).evaluate(mail)


def assert_opens(message: bytes) -> list[tuple[str, str | None, bytes]]:
    parts, defects = python_parts(message)
    assert defects == []
    assert EICAR not in message
    assert all(EICAR not in payload for _, _, payload in parts)
    return parts


# --------------------------------------------------------------------------- the rebuilt message


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"], ids=["crlf", "lf"])
async def test_the_infected_attachment_becomes_a_notice_and_the_rest_is_kept(
    make_mail: MakeMail, newline: bytes
) -> None:
    mail = make_mail(mixed(newline))
    decision = await decide(mail, sanitize(VIRUS))
    assert decision.disposition is Disposition.DELIVER
    assert decision.result.name == "Eicar-Test-Signature"  # still a detection: logged and counted as one
    assert decision.result.detected
    assert decision.sanitized is not None
    assert decision.sanitized.removed == ("part 2 (invoice.com): Eicar-Test-Signature",)
    message = final_message(mail, decision)
    assert (b"\r\n" in message) is (newline == b"\r\n")  # the message keeps its line ends
    parts = assert_opens(message)
    assert [(kind, name) for kind, name, _ in parts] == [
        ("text/plain", None),
        ("text/plain", None),
        ("application/pdf", "report.pdf"),
    ]
    assert parts[0][2].rstrip() == b"Hello Bob, the report is attached."
    assert parts[2][2] == PDF
    notice = parts[1][2].decode()
    assert "File: invoice.com" in notice
    assert "Reason: Eicar-Test-Signature (regexp_scan)" in notice
    assert "Type: application/octet-stream" in notice
    head = message.split(newline + newline, 1)[0]
    assert head == mail.raw.split(newline + newline, 1)[0]  # the top-level header block is untouched


@needs_perl
async def test_perl_mime_parser_reads_the_sanitized_message(make_mail: MakeMail) -> None:
    mail = make_mail(mixed())
    message = final_message(mail, await decide(mail, sanitize(VIRUS)))
    parts, error = perl_parts(message)
    assert error is None
    assert len(parts) == 3
    assert parts[0][1].rstrip() == b"Hello Bob, the report is attached."
    assert parts[1][0] == []
    assert b"File: invoice.com" in parts[1][1]
    assert parts[2] == (["report.pdf"], PDF)


async def test_a_message_that_is_only_the_file_becomes_the_notice(make_mail: MakeMail) -> None:
    mail = make_mail(single())
    decision = await decide(mail, sanitize(VIRUS))
    message = final_message(mail, decision)
    parts = assert_opens(message)
    assert len(parts) == 1
    assert parts[0][0] == "text/plain"
    assert b"File: setup.exe" in parts[0][2]
    assert b"Type: application/x-msdownload" in parts[0][2]
    assert b"Subject: just a file" in message
    assert message.count(b"Content-Type:") == 1


async def test_a_non_ascii_file_name_is_written_quoted_printable(make_mail: MakeMail) -> None:
    mail = make_mail(mixed(eicar_name="=?utf-8?q?fakt=C3=BAra?=.com"))
    message = final_message(mail, await decide(mail, sanitize(VIRUS)))
    assert message.isascii()
    parts = assert_opens(message)
    assert "File: faktúra" in parts[1][2].decode("utf-8")


async def test_several_parts_are_each_replaced(make_mail: MakeMail) -> None:
    mail = make_mail(mixed())
    decision = await decide(mail, sanitize(VIRUS, attach_name([("Policy.PDF", r"\.pdf$")])))
    assert decision.sanitized is not None
    assert decision.sanitized.removed == (
        "part 2 (invoice.com): Eicar-Test-Signature",
        "part 3 (report.pdf): Policy.PDF",
    )
    parts = assert_opens(final_message(mail, decision))
    assert [kind for kind, _, _ in parts] == ["text/plain"] * 3
    assert b"Reason: Policy.PDF (attach_name)" in parts[2][2]


async def test_an_attached_message_keeps_its_structure(make_mail: MakeMail) -> None:
    inner = mixed().replace(b"Subject: the report", b"Subject: forwarded")
    outer = (
        b"From: carol@example.test\r\nSubject: Fwd\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="OUT"\r\n\r\n--OUT\r\nContent-Type: text/plain\r\n\r\nsee below\r\n'
        b"--OUT\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"--OUT--\r\n"
    )
    mail = make_mail(outer)
    decision = await decide(mail, sanitize(VIRUS))
    assert decision.sanitized is not None
    assert decision.sanitized.removed == ("part 2.2 (invoice.com): Eicar-Test-Signature",)
    parts = assert_opens(final_message(mail, decision))
    assert [kind for kind, _, _ in parts] == ["text/plain", "text/plain", "text/plain", "application/pdf"]
    assert parts[3][2] == PDF


async def test_a_uuencoded_block_takes_its_text_part_with_it(make_mail: MakeMail) -> None:
    import binascii

    uu = b"begin 644 eicar.com\r\n" + binascii.b2a_uu(EICAR[:45]) + binascii.b2a_uu(EICAR[45:]) + b"`\r\nend\r\n"
    raw = (
        b"From: a@example.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
        b"--B\r\nContent-Type: text/plain\r\n\r\nfirst\r\n--B\r\nContent-Type: text/plain\r\n\r\nfile:\r\n"
        + uu.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        + b"--B--\r\n"
    )
    mail = make_mail(raw)
    decision = await decide(mail, sanitize(VIRUS))
    assert decision.sanitized is not None, decision.result.detail
    assert decision.sanitized.removed == ("part 2: Eicar-Test-Signature",)
    parts = assert_opens(final_message(mail, decision))
    assert parts[0][2].rstrip() == b"first"


async def test_a_finding_in_another_decoding_of_a_part_removes_that_part(make_mail: MakeMail) -> None:
    """base64 declared as 7bit: the strict part is the base64 text, the view decodes it."""
    raw = mixed().replace(
        b"Content-Transfer-Encoding: base64\r\n\r\nWDVP", b"Content-Transfer-Encoding: 7bit\r\n\r\nWDVP"
    )
    mail = make_mail(raw)
    assert EICAR not in mail.parts[1].data
    decision = await decide(mail, sanitize(VIRUS))
    assert decision.sanitized is not None
    assert decision.sanitized.removed == ("part 2 (invoice.com): Eicar-Test-Signature",)
    assert base64.b64encode(EICAR)[:20] not in final_message(mail, decision)


# --------------------------------------------------------------------------- when it does not sanitize


async def test_a_clean_message_is_left_alone(make_mail: MakeMail) -> None:
    mail = make_mail(mixed().replace(b"EICAR", b"ZZZZZ").replace(base64.b64encode(EICAR[:30])[:40], b"A" * 40))
    decision = await decide(mail, sanitize(const(0.4, "Low"), VIRUS))
    assert decision.disposition is Disposition.DELIVER
    assert decision.sanitized is None
    assert decision.result.level == 0.4  # the highest clean result, as parsemail gives it
    assert final_message(mail, decision) == mail.raw


async def test_what_is_still_found_after_sanitizing_is_not_delivered(make_mail: MakeMail) -> None:
    """A scanner that also finds the notice: the rebuilt message still holds a detection."""
    mail = make_mail(mixed())
    picky = regexp_scan([("Eicar-Test-Signature", r"EICAR-STANDARD|removed by the mail filter")])
    decision = await decide(mail, sanitize(picky))
    assert decision.disposition is Disposition.REJECT
    assert decision.sanitized is None
    assert "not sanitized: still found after sanitizing" in decision.result.detail


@pytest.mark.parametrize(
    ("after_eicar", "why"),
    [
        # EICAR in the epilogue, after a line that looks like another part: only a lenient reading sees it.
        (b" other", "no MIME part to remove (lenient:after reading)"),
        # The same bytes as part 2's in the epilogue: the views leave them out while part 2 holds them;
        # the check after sanitizing does not.
        (b"", "still found after sanitizing"),
    ],
    ids=["a_finding_outside_any_part", "a_copy_hidden_behind_a_removed_part"],
)
async def test_eicar_in_the_epilogue_is_not_sanitized(make_mail: MakeMail, after_eicar: bytes, why: str) -> None:
    raw = mixed() + b"--elsewhere\r\nContent-Type: application/octet-stream\r\n\r\n" + EICAR + after_eicar + b"\r\n"
    mail = make_mail(raw)
    decision = await decide(mail, sanitize(VIRUS))
    assert decision.disposition is Disposition.REJECT
    assert decision.sanitized is None
    assert f"not sanitized: {why}" in decision.result.detail


async def test_a_message_that_cannot_be_rebuilt_is_rejected(
    make_mail: MakeMail, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(raw: bytes, notices: Any) -> bytes:
        raise RecursionError("too deep")

    monkeypatch.setattr(sanitize_module, "rebuild", broken)
    mail = make_mail(mixed())
    decision = await decide(mail, sanitize(VIRUS))
    assert decision.disposition is Disposition.REJECT
    assert "cannot rebuild the message: too deep" in decision.result.detail


def test_rebuild_refuses_a_part_that_is_not_where_the_scan_saw_it() -> None:
    from mailsift.errors import ContentError

    with pytest.raises(ContentError, match="part 2 is application/octet-stream, the scan saw image/png"):
        sanitize_module.rebuild(mixed(), {"2": ("image/png", "notice")})
    with pytest.raises(ContentError, match="not found again: 7"):
        sanitize_module.rebuild(mixed(), {"7": ("text/plain", "notice")})


# --------------------------------------------------------------------------- with other actions


async def test_the_outermost_action_wins(make_mail: MakeMail) -> None:
    mail = make_mail(mixed())
    assert (await decide(mail, quarantine("virus", sanitize(VIRUS)))).disposition is Disposition.QUARANTINE
    assert (await decide(mail, reject(sanitize(VIRUS)))).disposition is Disposition.REJECT


async def test_header_edits_apply_to_the_sanitized_message(make_mail: MakeMail) -> None:
    mail = make_mail(mixed(headers=b"X-Virus-Found: forged\r\n"))
    decision = await decide(mail, remove_headers("X-Virus-"), modify_header("X-Sanitized", "%V", sanitize(VIRUS)))
    message = final_message(mail, decision)
    assert message.startswith(b"X-Sanitized: Eicar-Test-Signature\r\nFrom: alice@example.test\r\n")
    assert b"forged" not in message
    assert_opens(message)


async def test_inside_parsemail_it_only_scans_the_part(make_mail: MakeMail) -> None:
    mail = make_mail(mixed())
    decision = await decide(mail, parsemail(sanitize(VIRUS)))
    assert decision.disposition is Disposition.REJECT
    assert decision.sanitized is None


async def test_a_notice_of_your_own(make_mail: MakeMail) -> None:
    mail = make_mail(mixed())
    decision = await decide(mail, sanitize(VIRUS, notice="Removed %F (%T): %V, 100%% sure"))
    parts = assert_opens(final_message(mail, decision))
    assert parts[1][2] == b"Removed invoice.com (application/octet-stream): Eicar-Test-Signature, 100% sure"


@pytest.mark.parametrize("bad", ["", "   ", 3])
def test_the_notice_must_be_text(bad: Any) -> None:
    with pytest.raises(ConfigError, match="sanitize: notice"):
        sanitize(VIRUS, notice=bad)


def test_describe() -> None:
    assert sanitize(VIRUS).tree() == ["sanitize", "  regexp_scan([Eicar-Test-Signature])"]
    assert sanitize(VIRUS, notice="n").describe() == "sanitize(notice='n')"
