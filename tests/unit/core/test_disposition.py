"""The disposition step with the actions that change what is delivered and to whom:
``deliver_to`` (the recipients of this delivery only), ``sanitize`` (the rebuilt message) and
the header edits on top of it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mailsift.core.disposition import Disposer
from mailsift.delivery.next_hop import Delivery
from mailsift.errors import DeliveryDeferred
from mailsift.message.mail import Mail
from mailsift.message.result import (
    Decision,
    DeliverTo,
    Disposition,
    ModifyHeader,
    RemoveHeaders,
    Result,
    Sanitize,
    SetDisposition,
)

MakeMail = Callable[..., Mail]


class Recording(Delivery):
    """A next hop that keeps the recipients and bytes it was given (or fails with ``error``)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.got: list[tuple[list[str], bytes]] = []
        self.error = error

    def describe(self) -> str:
        return "recording"

    async def deliver(self, mail: Mail, message: bytes) -> str:
        self.got.append((list(mail.envelope.recipients), message))
        if self.error is not None:
            raise self.error
        return "250 ok"


def detection(*actions: Any) -> Decision:
    return Decision.from_results([Result(1.0, "Virus", "test", "", (*actions, SetDisposition(Disposition.DELIVER)))])


@pytest.fixture
def mail(make_mail: MakeMail) -> Mail:
    mail = make_mail("From: a@example.net\nX-Spam-Flag: YES\nSubject: s\n\nbody\n")
    mail.envelope.recipients = ["bob@example.org", "carol@example.org"]
    return mail


async def test_a_redirect_delivers_to_the_new_address_only_and_the_envelope_stays(mail: Mail) -> None:
    delivery = Recording()
    outcome = await Disposer(None, delivery).carry_out(mail, detection(DeliverTo("virus@example.org")))  # type: ignore[arg-type]
    assert outcome.reply.code == 250
    assert delivery.got[0][0] == ["virus@example.org"]
    assert "deliver_to: <virus@example.org>" in outcome.note
    assert mail.envelope.recipients == ["bob@example.org", "carol@example.org"]  # the log and hooks see these


async def test_the_envelope_is_restored_when_the_delivery_fails(mail: Mail) -> None:
    delivery = Recording(DeliveryDeferred("451 later"))
    outcome = await Disposer(None, delivery).carry_out(mail, detection(DeliverTo("virus@example.org")))  # type: ignore[arg-type]
    assert outcome.reply.code == 451
    assert mail.envelope.recipients == ["bob@example.org", "carol@example.org"]


async def test_per_recipient_delivery_with_a_copy_has_one_outcome_for_all(mail: Mail) -> None:
    delivery = Recording()
    decision = detection(DeliverTo("archive@example.org", copy=True))
    outcomes = await Disposer(None, delivery).carry_out_each(mail, decision)  # type: ignore[arg-type]
    assert delivery.got[0][0] == ["bob@example.org", "carol@example.org", "archive@example.org"]
    assert set(outcomes) == {"bob@example.org", "carol@example.org"}
    assert all(outcome.reply.code == 250 for outcome in outcomes.values())


async def test_the_sanitized_message_is_delivered_with_the_header_edits(mail: Mail) -> None:
    delivery = Recording()
    rebuilt = b"From: a@example.net\r\nX-Spam-Flag: YES\r\nSubject: s\r\n\r\nnotice\r\n"
    decision = detection(Sanitize(("part 1: Virus",), rebuilt))
    decision = Decision.from_results([Result(0.0, "", "", "", (RemoveHeaders("X-Spam-"),)), *decision.trail])
    decision = Decision.from_results([*decision.trail, Result(0.5, "n", "", "", (ModifyHeader("X-Virus", "Virus"),))])
    outcome = await Disposer(None, delivery).carry_out(mail, decision)  # type: ignore[arg-type]
    assert delivery.got == [
        (
            ["bob@example.org", "carol@example.org"],
            b"X-Virus: Virus\r\nFrom: a@example.net\r\nSubject: s\r\n\r\nnotice\r\n",
        )
    ]
    assert "(sanitized: part 1: Virus)" in outcome.note


async def test_a_sanitized_message_that_is_not_delivered_is_not_used(mail: Mail) -> None:
    decision = Decision.from_results(
        [Result(1.0, "Virus", "t", "", (Sanitize(("part 1: Virus",), b"x"), SetDisposition(Disposition.DROP)))]
    )
    delivery = Recording()
    outcome = await Disposer(None, delivery).carry_out(mail, decision)  # type: ignore[arg-type]
    assert outcome.reply.code == 250
    assert delivery.got == []


async def test_a_next_hop_that_cannot_redirect_is_a_tempfail_not_the_original_recipients(mail: Mail) -> None:
    """sgfilterd's client delivers to its own recipients: a deliver_to there must not reach them."""
    delivery = Recording()
    delivery.redirects = False
    outcome = await Disposer(None, delivery).carry_out(mail, detection(DeliverTo("virus@example.org")))  # type: ignore[arg-type]
    assert outcome.reply.code == 451
    assert delivery.got == []
    assert "deliver_to" in outcome.note
