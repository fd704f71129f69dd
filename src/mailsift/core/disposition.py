"""Carries a :class:`~mailsift.message.result.Decision` out, in a safe order, then says what to answer.

Order: quarantine copies (written and fsynced, then indexed in the database:
:meth:`~mailsift.storage.quarantine.store.QuarantineStore.put`) → delivery downstream (the next
hop said 2xx, or the Maildir files are fsynced) → only then the positive reply.
Any failure on the way returns that error's reply (451, or 554 when the next
hop refused permanently): the MTA keeps the message and nothing is lost.

:meth:`Disposer.carry_out_each` is the same order with an outcome per
recipient (``lmtpd``): the quarantine copy is shared, delivery is per
recipient (:meth:`~mailsift.delivery.next_hop.Delivery.deliver_each`), and a recipient
gets its positive reply only if its own copy was accepted or stored.

The delivered message is :func:`final_message`: ``sanitize``'s rebuilt message
when it sanitized one, else the original bytes, with the header edits of
:func:`~mailsift.message.rewrite.apply_edits` (removed fields first, then
modified, then added).  ``deliver_to`` changes the recipients of this delivery
only (:meth:`~mailsift.message.result.Decision.recipients_for`); the envelope
the log and the hooks see stays the one received.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from mailsift.delivery.next_hop import Delivery, hand_over, hand_over_each
from mailsift.errors import DeliveryError, MailsiftError
from mailsift.message.mail import Mail
from mailsift.message.result import Decision, Disposition
from mailsift.message.rewrite import apply_edits
from mailsift.replies import Reply
from mailsift.storage.quarantine.dbstore import Store

log = logging.getLogger("mailsift.disposition")


@dataclass
class Outcome:
    """What was done: the reply for the MTA and a note for the log."""

    reply: Reply
    note: str = ""
    quarantined: tuple[str, ...] = ()
    error: MailsiftError | None = None
    """The error that ended the message's processing (``error.content_tied`` says whose fault)."""


class Disposer:
    """Carries decisions out for one service: its quarantine store and next hop."""

    def __init__(self, quarantine: Store, delivery: Delivery) -> None:
        self.quarantine = quarantine
        self.delivery = delivery

    async def carry_out(self, mail: Mail, decision: Decision) -> Outcome:
        """Carry ``decision`` out for all recipients at once; one outcome."""
        if decision.disposition is Disposition.TEMPFAIL:
            return Outcome(
                decision.reply, decision.error.message if decision.error else "tempfail", error=decision.error
            )
        stored: list[str] = []
        try:
            await self._store(mail, decision, stored)
            note = ""
            if decision.disposition is Disposition.DELIVER:
                note = await self._deliver(mail, decision)
        except MailsiftError as error:
            return self._failed(mail, error, stored)
        return Outcome(decision.reply, note, tuple(stored))

    async def carry_out_each(self, mail: Mail, decision: Decision) -> dict[str, Outcome]:
        """Carry ``decision`` out with one outcome per recipient of ``mail.envelope``."""
        recipients = mail.envelope.recipients
        if decision.disposition is not Disposition.DELIVER or decision.recipients_for(recipients) != recipients:
            return dict.fromkeys(recipients, await self.carry_out(mail, decision))  # deliver_to: one outcome
        stored: list[str] = []
        try:
            await self._store(mail, decision, stored)
            message = final_message(mail, decision)
            results = await hand_over_each(self.delivery, mail, message)
        except MailsiftError as error:
            return dict.fromkeys(recipients, self._failed(mail, error, stored))
        outcomes: dict[str, Outcome] = {}
        for recipient in recipients:
            result = results.get(recipient)
            if isinstance(result, str):
                outcomes[recipient] = Outcome(decision.reply, result, tuple(stored))
            else:  # an error, or a recipient the delivery forgot: never a 250 without a copy
                failure = result or DeliveryError(f"no delivery outcome for <{recipient}>")
                outcomes[recipient] = self._failed(mail, failure, stored)
        return outcomes

    async def _deliver(self, mail: Mail, decision: Decision) -> str:
        """Hand the final message over, to the recipients ``deliver_to`` chose; the note for the log."""
        message = final_message(mail, decision)
        received = mail.envelope
        recipients = decision.recipients_for(received.recipients)
        if recipients == received.recipients:
            note = await hand_over(self.delivery, mail, message)
        elif not self.delivery.redirects:
            raise DeliveryError(f"{self.delivery.describe()} delivers to the recipients received only (deliver_to)")
        else:
            mail.envelope = replace(received, recipients=recipients)
            try:
                note = await hand_over(self.delivery, mail, message)
            finally:
                mail.envelope = received
            note = f"{note} (deliver_to: {', '.join(f'<{r}>' for r in recipients)})"
        if decision.sanitized is not None:
            note = f"{note} (sanitized: {'; '.join(decision.sanitized.removed)})"
        return note

    async def _store(self, mail: Mail, decision: Decision, stored: list[str]) -> None:
        """The quarantine copies, written and fsynced (appended to ``stored`` as they are)."""
        for category in decision.quarantine:
            stored.append(await self.quarantine.put(mail, category, decision.result))

    @staticmethod
    def _failed(mail: Mail, error: MailsiftError, stored: list[str]) -> Outcome:
        log.warning("queue_id=%s: %s", mail.envelope.queue_id or "-", error.message)
        return Outcome(error.reply, error.message, tuple(stored), error)


def final_message(mail: Mail, decision: Decision) -> bytes:
    """The bytes delivered for ``decision``: the sanitized or original message with the header edits."""
    raw = decision.sanitized.message if decision.sanitized is not None else mail.raw
    return apply_edits(
        raw, decision.headers, decision.subject_prefix, removals=decision.removals, modified=decision.modified
    )
