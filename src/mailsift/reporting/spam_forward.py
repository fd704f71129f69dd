"""``spam_forward``: SAGATOR's ``--sa-forward``, a hook that sends each message
``spam_levels`` quarantined to a training address (see :mod:`mailsift.scanners.engines.spamlevels`)."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

from mailsift import validators
from mailsift.core.hooks import Hook
from mailsift.delivery.next_hop import Delivery, resolve
from mailsift.errors import ConfigError, MailsiftError
from mailsift.message.mail import Envelope, Mail
from mailsift.message.rewrite import apply_edits
from mailsift.scanners.engines.spamlevels import Band, SpamLevelResult, spam_headers

if TYPE_CHECKING:
    from mailsift.core.disposition import Outcome
    from mailsift.message.result import Decision
    from mailsift.settings import Settings

log = logging.getLogger("mailsift.spamlevels")

_ADDRESS = re.compile(r"[^\s<>@\x00-\x1f\x7f]+@[^\s<>@\x00-\x1f\x7f]+")


class spam_forward(Hook):
    """``--sa-forward``: redirect each message quarantined by ``spam_levels`` to ``to`` (see the module docstring)."""

    name = "spam_forward"

    def __init__(self, to: str, verbose: bool = False, *, next_hop: Any = None) -> None:
        if not isinstance(to, str) or not _ADDRESS.fullmatch(to):
            raise ConfigError(f"spam_forward: to must be an address like 'antispam@example.com', got {to!r}")
        verbose = validators.flag(verbose, "spam_forward: verbose")
        if next_hop is not None:
            resolve(next_hop, "")  # the form is checked now; relative Maildirs are resolved in check()
        self.to, self.verbose, self.next_hop = to, verbose, next_hop
        self._delivery: Delivery | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def describe(self) -> str:
        return f"spam_forward({self.to}{', verbose' if self.verbose else ''})"

    def check(self, settings: Settings) -> None:
        target = self.next_hop if self.next_hop is not None else settings.smtp_server
        if target is None:
            raise ConfigError("spam_forward needs a next hop: SMTP_SERVER, or next_hop=('127.0.0.1', 10025)")
        resolve(target, settings.state_dir)

    def delivery(self, settings: Settings) -> Delivery:
        """The next hop of the running event loop (its connection pool belongs to one loop)."""
        loop = asyncio.get_running_loop()
        if self._delivery is None or self._loop is not loop:
            self.check(settings)
            self._delivery = resolve(self.next_hop or settings.smtp_server, settings.state_dir)
            self._loop = loop
        return self._delivery

    def message(self, mail: Mail, result: SpamLevelResult) -> bytes:
        """The copy for the admin: the original bytes, with the X-Spam headers when ``verbose``."""
        if not self.verbose:
            return mail.raw
        return apply_edits(mail.raw, spam_headers(result, tagged=True, report=True))

    async def after(self, mail: Mail, decision: Decision, outcome: Outcome, settings: Settings) -> None:
        result = decision.result
        if not (isinstance(result, SpamLevelResult) and result.band is Band.QUARANTINE and outcome.quarantined):
            return  # only "spam mails being quarantined", and only once the copy is safe
        env = mail.envelope
        copy = Mail(
            Envelope(sender="", recipients=[self.to], queue_id=env.queue_id, mail_options=list(env.mail_options)),
            self.message(mail, result),
        )
        try:
            note = await self.delivery(settings).deliver(copy, copy.raw)
        except MailsiftError as error:
            log.warning(
                "queue_id=%s: spam_forward to <%s> failed (the message is safe in %s): %s",
                env.queue_id or "-",
                self.to,
                ", ".join(outcome.quarantined),
                error.message,
            )
            return
        log.info("queue_id=%s: spam copy forwarded to <%s>: %s", env.queue_id or "-", self.to, note)

    async def close(self) -> None:
        if self._delivery is not None and self._loop is asyncio.get_running_loop():
            await self._delivery.close()
        self._delivery = None
