"""The mail path: Mail → Pipeline → Decision → Disposition → hooks → one log line.

Every front end calls :class:`MailPath`, so none of them duplicates scanning or
delivery logic.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from mailsift import replies
from mailsift.core.deadline import DeadlineDelivery, MessageDeadline
from mailsift.core.disposition import Disposer, Outcome
from mailsift.core.hooks import run_hooks
from mailsift.core.pipeline import Pipeline
from mailsift.core.poison import PoisonWatch
from mailsift.delivery.next_hop import Delivery, resolve
from mailsift.errors import ConfigError, MailsiftError
from mailsift.message.mail import Mail
from mailsift.message.result import Decision, Disposition
from mailsift.replies import Reply
from mailsift.scanners.base import Scanner
from mailsift.settings import Settings
from mailsift.storage.quarantine.dbstore import open_store

log = logging.getLogger("mailsift.mail")

_Carried = TypeVar("_Carried")
"""What carrying a decision out gives: one :class:`Outcome`, or one per recipient."""


class MailPath:
    """The shared path of one message: evaluate, carry out, log one line.

    :meth:`process` answers once for all recipients (smtpd, milter...);
    :meth:`process_each` has an outcome per recipient (lmtpd).  Paths made by
    :meth:`with_scanners` share this one's next hop and quarantine (one
    connection pool), with their own scanners: per-recipient policies.
    """

    def __init__(self, scanners: Sequence[Scanner], settings: Settings, next_hop: Any = None) -> None:
        self.pipeline = Pipeline(scanners)
        self.settings = settings
        target = next_hop or settings.smtp_server
        if target is None:
            raise ConfigError(
                "no next hop: set SMTP_SERVER = ('127.0.0.1', 10025), or next_hop=... on the service, "
                "or deliver locally with next_hop=local_maildir('mail')"
            )
        self.delivery: Delivery = resolve(target, settings.state_dir)
        self.disposer = Disposer(open_store(settings), DeadlineDelivery(self.delivery))
        self.poison = PoisonWatch(settings, self.delivery)  # content-tied tempfails counted, then quarantined
        self._closed: set[int] = set()  # ids of scanners closed, shared with with_scanners() paths

    def with_scanners(self, scanners: Sequence[Scanner]) -> MailPath:
        """A path with other scanners and this one's delivery and quarantine."""
        path = copy.copy(self)
        path.pipeline = Pipeline(scanners)
        return path

    async def process(self, mail: Mail) -> tuple[Decision, Outcome]:
        started = time.monotonic()
        mail.started = started  # the log hooks' "time taken"
        deadline = MessageDeadline(mail, self.settings.message_timeout)
        carried = await self._within(deadline, mail, self.disposer.carry_out)
        if carried is None:
            decision, outcome = deadline.tempfail()
        else:
            decision, outcome = carried
        await self.poison.settle(mail, decision, outcome)
        await run_hooks(self.settings.hooks, mail, decision, outcome, self.settings)
        note = deadline.note(outcome.note)
        _log_line(mail, decision, str(outcome.reply.code), note, time.monotonic() - started, _failed([outcome]))
        return decision, outcome

    async def process_each(self, mail: Mail) -> tuple[Decision, dict[str, Outcome]]:
        """Evaluate once, carry out with an outcome per recipient of ``mail.envelope``."""
        started = time.monotonic()
        mail.started = started
        deadline = MessageDeadline(mail, self.settings.message_timeout)
        carried_each = await self._within(deadline, mail, self.disposer.carry_out_each)
        if carried_each is None:
            decision, failed = deadline.tempfail()
            outcomes = dict.fromkeys(mail.envelope.recipients, failed)
        else:
            decision, outcomes = carried_each
        await self.poison.settle(mail, decision, *outcomes.values())
        if outcomes:
            # Hooks see one outcome for the group: a positive one if any recipient got its
            # copy (archive, notifications concern mail that went through), else the first.
            positive = [o for o in outcomes.values() if o.reply.code < 400]
            shown = positive[0] if positive else next(iter(outcomes.values()))
            await run_hooks(self.settings.hooks, mail, decision, shown, self.settings)
        codes = {outcome.reply.code for outcome in outcomes.values()}
        if len(codes) == 1:
            reply = str(codes.pop())
        else:
            reply = ",".join(f"<{r}>:{outcome.reply.code}" for r, outcome in outcomes.items())
        notes = deadline.note("; ".join(dict.fromkeys(outcome.note for outcome in outcomes.values() if outcome.note)))
        _log_line(mail, decision, reply, notes, time.monotonic() - started, _failed(list(outcomes.values())))
        return decision, outcomes

    async def _within(
        self, deadline: MessageDeadline, mail: Mail, carry_out: Callable[[Mail, Decision], Awaitable[_Carried]]
    ) -> tuple[Decision, _Carried] | None:
        """Evaluate ``mail`` and ``carry_out`` the decision within ``deadline``; None when the
        deadline passed (the caller answers :meth:`MessageDeadline.tempfail`)."""
        try:
            async with deadline:
                decision = await self.poison.evaluate(self.pipeline, mail)
                deadline.enter("quarantining" if decision.quarantine else "disposition")
                return decision, await carry_out(mail, decision)
        except TimeoutError:
            if not deadline.passed:
                raise
            return None

    async def close(self) -> None:
        """Release the scanners' resources and the next hop's connections.

        Paths made by :meth:`with_scanners` share the record of closed scanners,
        so a scanner used in several of them is closed once; closing the shared
        delivery again is harmless (its pool is empty).
        """
        for scanner in self.pipeline.scanners:
            await scanner.aclose(self._closed)
        for hook in self.settings.hooks:
            if id(hook) not in self._closed:
                self._closed.add(id(hook))
                await hook.close()
        await self.delivery.close()


def failure_reply(queue_id: str, error: BaseException) -> Reply:
    """The answer to a message whose processing raised ``error``: always temporary, always logged.

    Each front end's outermost per-message handler calls this.  A
    :class:`~mailsift.errors.MailsiftError` that got this far (the spool is
    full...) answers its own temporary reply; anything else is a bug, logged
    with its traceback, and answers 451.  Never a 5xx.
    """
    if isinstance(error, MailsiftError) and error.reply.is_transient:
        log.warning("queue_id=%s: %s; answering %s", queue_id or "-", error.message, error.reply.code)
        return error.reply
    log.error("queue_id=%s: unexpected error; answering 451", queue_id or "-", exc_info=error)
    return replies.TEMPFAIL


def _failed(outcomes: list[Outcome]) -> str:
    """``"failed"`` when carrying the decision out failed for every recipient (the next hop or the
    quarantine store: the outcome has an error), ``"partial"`` when for some only, else ``""``."""
    failures = sum(outcome.error is not None for outcome in outcomes)
    if not failures:
        return ""
    return "failed" if failures == len(outcomes) else "partial"


def _log_line(mail: Mail, decision: Decision, reply: str, note: str, elapsed: float, failed: str = "") -> None:
    """The one log line per message (per recipient group with lmtpd), on Python's logging.

    ``action`` is the decision's disposition; when carrying it out failed
    (``failed``: the next hop or the quarantine store, the cause in ``note``)
    it says so: ``action=deliver-failed reply=451 ... note=<cause>``
    (``deliver-partial`` when some recipients got their copy).  A decision to
    tempfail is ``action=tempfail``.

    The qmail-scanner-format line, to syslog, a file or JSON lines, and the SQL
    record come from the hooks of :mod:`mailsift.reporting.logline` (``log_syslog``,
    ``log_file``, ``log_sql``).
    """
    if not log.isEnabledFor(logging.INFO):
        return  # the arguments below cost more than the line, at --log-level warning
    env = mail.envelope
    result = decision.result
    log.info(
        "%s action=%s reply=%s level=%.2f name=%s scanner=%s from=<%s> to=%s size=%d client=%s[%s] time=%.3fs%s",
        env.queue_id or "-",
        f"{decision.disposition.value}-{failed}"
        if failed and decision.disposition is not Disposition.TEMPFAIL
        else decision.disposition.value,
        reply,
        result.level,
        result.name or "-",
        result.scanner or "-",
        env.sender,
        ",".join(f"<{r}>" for r in env.recipients),
        mail.size,
        env.client_name or "-",
        env.client_address or "-",
        elapsed,
        f" note={note}" if note else "",
    )
