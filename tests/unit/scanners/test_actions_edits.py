"""SAGATOR's actions modify_header, remove_headers and deliver_to: what they record, what the Decision
holds, and the message the disposition step delivers (:func:`mailsift.core.disposition.final_message`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mailsift import (
    add_header,
    const,
    deliver_to,
    modify_header,
    quarantine,
    regexp_scan,
    reject,
    remove_headers,
)
from mailsift.core.disposition import final_message
from mailsift.core.pipeline import Pipeline
from mailsift.errors import ConfigError
from mailsift.message.mail import Mail
from mailsift.message.result import Decision, DeliverTo, Disposition, ModifyHeader, RemoveHeaders

MakeMail = Callable[..., Mail]

FORGED = (
    "From: a@example.net\n"
    "X-Spam-Status: No, hits=-100 (forged by the sender)\n"
    "X-Spam-Flag: NO\n"
    "Subject: hello\n"
    "X-Virus-Found: none (forged)\n"
    "X-Spam-Level: \n"
    "X-Virus-Found: again\n"
    "\n"
    "body\n"
    "X-Spam-Status: in the body stays\n"
)


@pytest.fixture
def mail(make_mail: MakeMail) -> Mail:
    return make_mail(FORGED)


async def decide(mail: Mail, *scanners: Any) -> Decision:
    return await Pipeline(scanners).evaluate(mail)


def header_lines(message: bytes) -> list[str]:
    head = message.split(b"\r\n\r\n", 1)[0].decode()
    return head.split("\r\n")


# --------------------------------------------------------------------------- remove_headers


async def test_remove_headers_strips_forged_spam_fields_and_is_clean(mail: Mail) -> None:
    decision = await decide(mail, remove_headers("X-Spam-"))
    assert decision.disposition is Disposition.DELIVER
    assert decision.removals == (RemoveHeaders("X-Spam-"),)
    out = final_message(mail, decision)
    assert header_lines(out) == [
        "From: a@example.net",
        "Subject: hello",
        "X-Virus-Found: none (forged)",
        "X-Virus-Found: again",
    ]
    assert out.endswith(b"\r\n\r\nbody\r\nX-Spam-Status: in the body stays\r\n")  # the body is never touched


async def test_remove_headers_matches_from_the_start_in_any_case(mail: Mail) -> None:
    decision = await decide(mail, remove_headers("x-SPAM-(status|flag)"))
    assert header_lines(final_message(mail, decision)) == [
        "From: a@example.net",
        "Subject: hello",
        "X-Virus-Found: none (forged)",
        "X-Spam-Level: ",
        "X-Virus-Found: again",
    ]
    decision = await decide(mail, remove_headers("Spam"))  # not at the start of any name
    assert final_message(mail, decision) == mail.raw


async def test_remove_headers_with_a_list_removes_exact_names_only(mail: Mail) -> None:
    decision = await decide(mail, remove_headers(["x-virus-found", "X-Spam"]))
    lines = header_lines(final_message(mail, decision))
    assert not any(line.lower().startswith("x-virus-found") for line in lines)
    assert "X-Spam-Flag: NO" in lines  # "X-Spam" is a name, not a prefix


async def test_fields_mailsift_writes_are_never_removed(mail: Mail) -> None:
    """remove_headers runs before any field is added or modified, wherever the expressions stand."""
    decision = await decide(
        mail,
        add_header("X-Spam-Status", "Yes, score=%L", const(0.5, "Spam")),
        modify_header("X-Spam-Flag", "YES", const(0.5, "Spam")),
        remove_headers("X-Spam-"),
    )
    lines = header_lines(final_message(mail, decision))
    assert [line for line in lines if line.startswith("X-Spam-")] == [
        "X-Spam-Status: Yes, score=0.50",
        "X-Spam-Flag: YES",
    ]


async def test_remove_headers_wrapping_a_scanner_keeps_its_result(mail: Mail) -> None:
    decision = await decide(mail, remove_headers("X-Virus-", const(1.0, "Virus")))
    assert decision.disposition is Disposition.REJECT
    assert decision.result.name == "Virus"
    assert decision.removals == (RemoveHeaders("X-Virus-"),)
    only = remove_headers("X-Virus-", const(0.5, "Other")).onlyif("^Virus$")
    assert (await decide(mail, only)).removals == ()


@pytest.mark.parametrize("bad", ["", [], ["ok", "bad name"], ["a:b"], 3, "(unclosed"])
def test_remove_headers_refuses_bad_arguments(bad: Any) -> None:
    with pytest.raises(ConfigError, match="remove_headers"):
        remove_headers(bad)


# --------------------------------------------------------------------------- modify_header


async def test_modify_header_replaces_every_field_of_its_name_in_place(mail: Mail) -> None:
    decision = await decide(mail, modify_header("X-Virus-Found", "%V (%S)", const(1.0, "Eicar-Test")))
    assert decision.modified == (ModifyHeader("X-Virus-Found", "Eicar-Test (const)"),)
    lines = header_lines(final_message(mail, decision))
    assert lines.index("X-Virus-Found: Eicar-Test (const)") == 4  # where the first one stood
    assert [line for line in lines if line.startswith("X-Virus-Found")] == ["X-Virus-Found: Eicar-Test (const)"]


async def test_modify_header_adds_the_field_when_there_is_none(make_mail: MakeMail) -> None:
    mail = make_mail("From: a@example.net\nSubject: s\n\nbody\n")
    decision = await decide(mail, modify_header("X-Checked", "yes", const(0.1, "checked")))
    assert final_message(mail, decision) == b"X-Checked: yes\r\n" + mail.raw


async def test_modify_header_applies_like_add_header(mail: Mail) -> None:
    """To any result with a name (a clean one too), not to a nameless clean one; onlyif narrows it."""
    assert (await decide(mail, modify_header("X-A", "v", const(0.0)))).modified == ()
    assert (await decide(mail, modify_header("X-A", "v", const(0.2, "Named")))).modified == (ModifyHeader("X-A", "v"),)
    narrowed = modify_header("X-A", "v", const(1.0, "Spam")).onlyif("^Virus")
    assert (await decide(mail, narrowed)).modified == ()


async def test_a_modified_value_cannot_start_a_header_of_its_own(mail: Mail) -> None:
    decision = await decide(mail, modify_header("X-Virus-Found", "%V", const(1.0, "Evil\r\nBcc: victim@example.org")))
    lines = header_lines(final_message(mail, decision))
    assert not any(line.startswith("Bcc") for line in lines)


@pytest.mark.parametrize(("name", "value"), [("Bad Name", "v"), ("X-A:", "v"), ("X-A", "two\nlines")])
def test_modify_header_refuses_bad_arguments(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=r"^modify_header: (invalid header name|the value must be one line)"):
        modify_header(name, value, const(1.0))


# --------------------------------------------------------------------------- deliver_to


async def test_deliver_to_redirects_a_detection(mail: Mail) -> None:
    decision = await decide(mail, deliver_to("virus-admin@example.org", regexp_scan([("Body", "body")])))
    assert decision.disposition is Disposition.DELIVER
    assert decision.redirect == "virus-admin@example.org"
    assert decision.recipients_for(["rcpt@example.org"]) == ["virus-admin@example.org"]


async def test_deliver_to_copy_adds_a_recipient_once(mail: Mail) -> None:
    decision = await decide(mail, deliver_to("Archive@example.org", const(1.0, "Spam"), copy=True))
    assert decision.disposition is Disposition.DELIVER
    assert decision.copies == ("Archive@example.org",)
    assert decision.recipients_for(["rcpt@example.org"]) == ["rcpt@example.org", "Archive@example.org"]
    assert decision.recipients_for(["archive@example.org"]) == ["archive@example.org"]


async def test_deliver_to_leaves_clean_mail_and_other_names_alone(mail: Mail) -> None:
    assert (await decide(mail, deliver_to("x@example.org", const(0.5, "Named")))).recipients_for(["r@e.org"]) == [
        "r@e.org"
    ]
    decision = await decide(mail, deliver_to("x@example.org", const(1.0, "Spam")).onlyif("^Virus"))
    assert decision.disposition is Disposition.REJECT
    assert decision.redirect == ""


async def test_the_outermost_action_wins_over_deliver_to(mail: Mail) -> None:
    decision = await decide(mail, reject(deliver_to("x@example.org", const(1.0, "Virus"))))
    assert decision.disposition is Disposition.REJECT
    decision = await decide(mail, quarantine("virus", deliver_to("x@example.org", const(1.0, "Virus"))))
    assert decision.disposition is Disposition.QUARANTINE
    decision = await decide(mail, deliver_to("outer@example.org", deliver_to("inner@example.org", const(1.0, "V"))))
    assert decision.redirect == "outer@example.org"


async def test_a_deliver_to_on_a_lowered_detection_changes_nothing(mail: Mail) -> None:
    """An operator that lowers the detection to clean drops its disposition, recipients included."""
    lowered = deliver_to("x@example.org", const(1.0, "V")) * const(0.5)
    decision = await decide(mail, lowered)
    assert decision.disposition is Disposition.DELIVER
    assert decision.redirect == ""
    assert DeliverTo("x@example.org") in decision.trail[0].actions


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "postmaster",
        "nodomain",
        "a@example.org\r\nRCPT TO:<victim@example.org>",
        "a@example.org>",
        "<a@example.org>",
        "a b@example.org",
        "a@" + "x" * 600,
        "a@exa\x00mple.org",
        None,
    ],
)
def test_deliver_to_checks_the_address_it_writes_into_rcpt_to(bad: Any) -> None:
    with pytest.raises(ConfigError, match="deliver_to"):
        deliver_to(bad, const(1.0))


def test_deliver_to_copy_is_a_flag() -> None:
    with pytest.raises(ConfigError, match="copy"):
        deliver_to("a@example.org", const(1.0), copy="yes")  # type: ignore[arg-type]


def test_describe_names_the_arguments() -> None:
    assert deliver_to("a@example.org", const(1.0), copy=True).describe() == "deliver_to('a@example.org', copy=True)"
    assert remove_headers("X-Spam-").describe() == "remove_headers('X-Spam-')"
    assert modify_header("X-A", "%V", const(1.0)).describe() == "modify_header('X-A', '%V')"
    assert add_header("X-A", "v", const(1.0)).describe() == "add_header('X-A', 'v')"
