"""Carries a :class:`~mailsift.result.Decision` out, in a safe order, then says what to answer.

Order: quarantine copies (written and fsynced) → delivery downstream (the next
hop said 2xx, or the Maildir files are fsynced) → only then the positive reply.
Any failure on the way returns that error's reply (451, or 554 when the next
hop refused permanently): the MTA keeps the message and nothing is lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mailsift.delivery import Delivery
from mailsift.errors import MailsiftError
from mailsift.mail import Mail
from mailsift.quarantine_store import QuarantineStore
from mailsift.replies import Reply
from mailsift.result import Decision, Disposition
from mailsift.rewrite import apply_edits

log = logging.getLogger("mailsift.disposition")


@dataclass
class Outcome:
    """What was done: the reply for the MTA and a note for the log."""

    reply: Reply
    note: str = ""
    quarantined: tuple[str, ...] = ()


class Disposer:
    """Carries decisions out for one service: its quarantine store and next hop."""

    def __init__(self, quarantine: QuarantineStore, delivery: Delivery) -> None:
        self.quarantine = quarantine
        self.delivery = delivery

    async def carry_out(self, mail: Mail, decision: Decision) -> Outcome:
        if decision.disposition is Disposition.TEMPFAIL:
            return Outcome(decision.reply, decision.error.message if decision.error else "tempfail")
        stored: list[str] = []
        try:
            for category in decision.quarantine:
                stored.append(await self.quarantine.put(mail, category, decision.result))
            note = ""
            if decision.disposition is Disposition.DELIVER:
                message = apply_edits(mail.raw, decision.headers, decision.subject_prefix)
                note = await self.delivery.deliver(mail, message)
        except MailsiftError as error:
            log.warning("queue_id=%s: %s", mail.envelope.queue_id or "-", error.message)
            return Outcome(error.reply, error.message, tuple(stored))
        return Outcome(decision.reply, note, tuple(stored))
