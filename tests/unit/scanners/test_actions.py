"""Actions: reject, drop, deliver, quarantine, add_header, modify_subject, rename.

Actions only record what to do; each test evaluates a ``Pipeline`` and checks
the :class:`~mailsift.message.result.Decision` (disposition, result, reply,
quarantine, headers, subject_prefix).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mailsift import (
    add_header,
    const,
    deliver,
    drop,
    modify_subject,
    nothing,
    parsemail,
    quarantine,
    reject,
    rename,
    string_scan,
)
from mailsift.core.pipeline import Pipeline
from mailsift.errors import ConfigError
from mailsift.message.mail import Mail
from mailsift.message.result import AddHeader, Decision, Disposition, Result
from mailsift.replies import OK, OK_DROPPED, OK_QUARANTINED, REJECTED
from mailsift.scanners.actions import expand

MakeMail = Callable[..., Mail]


@pytest.fixture
def mail(make_mail: MakeMail) -> Mail:
    return make_mail("From: a@example.net\nSubject: hello\n\nbody with SPAMWORD\n")


async def decide(mail: Mail, *scanners: Any) -> Decision:
    return await Pipeline(scanners).evaluate(mail)


# --------------------------------------------------------------------------- reject / drop / deliver


async def test_a_detection_is_rejected_by_default(mail: Mail) -> None:
    decision = await decide(mail, const(1.0, "Bad"))
    assert decision.disposition is Disposition.REJECT
    assert decision.reply.code == 550
    assert decision.reply.status == REJECTED.status
    assert "Bad" in decision.reply.text
    assert "const" in decision.reply.text


async def test_a_clean_mail_is_delivered(mail: Mail) -> None:
    decision = await decide(mail, const(0.9, "Almost"), nothing())
    assert decision.disposition is Disposition.DELIVER
    assert decision.delivers
    assert decision.reply == OK
    assert decision.quarantine == ()


async def test_reject_with_a_custom_message(mail: Mail) -> None:
    decision = await decide(mail, reject(const(1.5, "Worm.X"), message="No %V here (by %S, level %L), 100%%"))
    assert decision.disposition is Disposition.REJECT
    assert decision.reply.code == 550
    assert decision.reply.text == "No Worm.X here (by const, level 1.50), 100%"


async def test_reject_message_long_placeholders(mail: Mail) -> None:
    decision = await decide(mail, reject(const(1.0, "V"), message="%(VIRNAME)s/%(SCANNER)s/%(LEVEL)s"))
    assert decision.reply.text == "V/const/1.00"


async def test_reject_does_nothing_to_clean_mail(mail: Mail) -> None:
    decision = await decide(mail, reject(const(0.5, "Meh"), message="no"))
    assert decision.disposition is Disposition.DELIVER
    assert decision.reply == OK


async def test_reject_overrides_an_inner_drop(mail: Mail) -> None:
    decision = await decide(mail, reject(drop(const(1.0, "X"))))
    assert decision.disposition is Disposition.REJECT


async def test_drop_accepts_and_discards(mail: Mail) -> None:
    decision = await decide(mail, drop(const(1.0, "Worm.Forged")))
    assert decision.disposition is Disposition.DROP
    assert decision.reply == OK_DROPPED
    assert decision.reply.code == 250


async def test_drop_with_a_pattern_applies_only_to_matching_names(mail: Mail) -> None:
    assert (await decide(mail, drop("Worm|Phish", const(1.0, "Phish.Bank")))).disposition is Disposition.DROP
    assert (await decide(mail, drop("Worm|Phish", const(1.0, "Trojan.X")))).disposition is Disposition.REJECT


async def test_onlyif_sets_the_pattern_afterwards(mail: Mail) -> None:
    scanner = drop(const(1.0, "Trojan.X")).onlyif("^Worm")
    assert (await decide(mail, scanner)).disposition is Disposition.REJECT
    scanner = drop(const(1.0, "Worm.Y")).onlyif("^Worm")
    assert (await decide(mail, scanner)).disposition is Disposition.DROP


async def test_deliver_forces_delivery_of_a_detection(mail: Mail) -> None:
    decision = await decide(mail, deliver(add_header("X-Virus", "%V", const(1.0, "Infected"))))
    assert decision.disposition is Disposition.DELIVER
    assert decision.reply == OK
    assert decision.result.detected
    assert decision.headers == (AddHeader("X-Virus", "Infected"),)


# --------------------------------------------------------------------------- quarantine


async def test_quarantine_records_the_category_and_accepts(mail: Mail) -> None:
    decision = await decide(mail, quarantine("policy", const(1.0, "Bad.Attachment")))
    assert decision.disposition is Disposition.QUARANTINE
    assert decision.quarantine == ("policy",)
    assert decision.reply == OK_QUARANTINED


async def test_quarantine_default_category_is_virus(mail: Mail) -> None:
    decision = await decide(mail, quarantine(const(1.0, "EICAR")))
    assert decision.quarantine == ("virus",)
    assert decision.disposition is Disposition.QUARANTINE


async def test_quarantine_ignores_clean_mail(mail: Mail) -> None:
    decision = await decide(mail, quarantine("spam", const(0.5, "Maybe")))
    assert decision.disposition is Disposition.DELIVER
    assert decision.quarantine == ()


async def test_reject_around_quarantine_rejects_and_keeps_a_copy(mail: Mail) -> None:
    decision = await decide(mail, reject(quarantine("virus", const(1.0, "EICAR")), message="virus %V"))
    assert decision.disposition is Disposition.REJECT
    assert decision.quarantine == ("virus",)
    assert decision.reply.code == 550
    assert decision.reply.text == "virus EICAR"


async def test_quarantine_around_drop_quarantines(mail: Mail) -> None:
    decision = await decide(mail, quarantine("virus", drop(const(1.0, "Worm"))))
    assert decision.disposition is Disposition.QUARANTINE
    assert decision.quarantine == ("virus",)


async def test_deliver_around_quarantine_delivers_and_keeps_a_copy(mail: Mail) -> None:
    decision = await decide(mail, deliver(quarantine("spam", const(1.0, "SPAM"))))
    assert decision.disposition is Disposition.DELIVER
    assert decision.quarantine == ("spam",)


@pytest.mark.parametrize("category", ["Virus", "../etc", "", "a b", "x" * 40, 5])
def test_quarantine_category_is_checked(category: Any) -> None:
    with pytest.raises(ConfigError, match="quarantine: category"):
        quarantine(category, nothing())


# --------------------------------------------------------------------------- add_header / modify_subject


async def test_add_header_expands_placeholders(mail: Mail) -> None:
    decision = await decide(mail, add_header("X-Scan", "%V by %S at %L", const(0.4, "Suspicious")))
    assert decision.disposition is Disposition.DELIVER
    assert decision.headers == (AddHeader("X-Scan", "Suspicious by const at 0.40"),)


async def test_add_header_skips_results_without_a_name(mail: Mail) -> None:
    decision = await decide(mail, add_header("X-Scan", "%V", const(0.0, "")))
    assert decision.headers == ()


async def test_add_header_onlyif_pattern(mail: Mail) -> None:
    tagged = add_header("X-Spam", "yes", const(0.5, "SPAM")).onlyif("^SPAM$")
    assert (await decide(mail, tagged)).headers == (AddHeader("X-Spam", "yes"),)
    untagged = add_header("X-Spam", "yes", const(0.5, "HAM")).onlyif("^SPAM$")
    assert (await decide(mail, untagged)).headers == ()


async def test_headers_of_every_evaluated_result_are_collected(mail: Mail) -> None:
    decision = await decide(
        mail,
        add_header("X-First", "%V", const(0.1, "one")),
        add_header("X-Second", "%V", const(0.2, "two")),
    )
    assert decision.headers == (AddHeader("X-First", "one"), AddHeader("X-Second", "two"))


@pytest.mark.parametrize(("name", "value"), [("Bad Name", "v"), ("X:Y", "v"), ("X-Ok", "two\nlines"), (1, "v")])
def test_add_header_checks_its_arguments(name: Any, value: Any) -> None:
    with pytest.raises(ConfigError, match="add_header"):
        add_header(name, value, nothing())


async def test_modify_subject_prefix(mail: Mail) -> None:
    scanner = modify_subject("[SPAM %L] ", string_scan([("SPAM", "SPAMWORD")]) * const(0.6, ""))
    decision = await decide(mail, scanner)
    assert decision.disposition is Disposition.DELIVER
    assert decision.subject_prefix == "[SPAM 0.60] "


async def test_modify_subject_prefixes_accumulate_in_order(mail: Mail) -> None:
    decision = await decide(mail, modify_subject("[A] ", const(0.1, "a")), modify_subject("[B] ", const(0.1, "b")))
    assert decision.subject_prefix == "[B] [A] "


def test_modify_subject_refuses_line_breaks() -> None:
    with pytest.raises(ConfigError, match="modify_subject"):
        modify_subject("[x]\r\nBcc: a@b", nothing())


# --------------------------------------------------------------------------- rename


async def test_rename_a_detection(mail: Mail) -> None:
    decision = await decide(mail, rename("Policy.%V", const(1.0, "Exe")))
    assert decision.result.name == "Policy.Exe"
    assert decision.disposition is Disposition.REJECT
    assert "Policy.Exe" in decision.reply.text


async def test_rename_leaves_clean_results_alone(mail: Mail) -> None:
    decision = await decide(mail, rename("Policy.%V", const(0.5, "Exe")))
    assert decision.result.name == "Exe"


def test_rename_needs_a_string() -> None:
    with pytest.raises(ConfigError, match="rename"):
        rename(5, nothing())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the deciding result


async def test_a_disposition_whose_level_was_lowered_does_not_apply(mail: Mail) -> None:
    # reject(x) says what to do *if* x is a detection; an operator that brings the level
    # back under 1.0 makes the mail clean, and clean mail is delivered.
    decision = await decide(mail, reject(const(1.0, "X")) - const(0.5, ""))
    assert decision.result.level == 0.5
    assert decision.disposition is Disposition.DELIVER
    assert decision.reply == OK


async def test_actions_under_parsemail_survive(make_mail: MakeMail) -> None:
    mail = make_mail(
        "From: a@example.net\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=XX\n\n"
        "--XX\nContent-Type: text/plain\n\nclean\n--XX\nContent-Type: text/plain\n\nBADWORD\n--XX--\n"
    )
    decision = await decide(mail, parsemail(quarantine("policy", string_scan([("Bad", "BADWORD")]))))
    assert decision.disposition is Disposition.QUARANTINE
    assert decision.quarantine == ("policy",)
    assert "part 2" in decision.result.detail


def test_expand_leaves_unknown_placeholders() -> None:
    assert expand("%X %V %%V", Result(1.0, "N", "s")) == "%X N %V"


def test_expand_detail_and_report() -> None:
    from mailsift.scanners.engines.common import SpamResult

    plain = Result(1.0, "EICAR-Test", "regexp_scan", "part 2 (eicar.com)")
    assert expand("%D | %R", plain) == "part 2 (eicar.com) | part 2 (eicar.com)"  # no report: the detail
    spam = SpamResult(2.46, "Spam", "spamassassind", "score=12.3 required=5", report="line one\nline two")
    assert expand("%R", spam) == "line one\nline two"
    assert expand("%D", spam) == "score=12.3 required=5"
