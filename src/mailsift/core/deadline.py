"""The per-message deadline: ``MESSAGE_TIMEOUT`` seconds for scanning, database work and disposition.

:class:`~mailsift.core.mailpath.MailPath` runs each message inside a
:class:`MessageDeadline`.  It covers, together:

1. **scanning** (the pipeline, its daemons, its threads);
2. **quarantining** and the other steps before delivery (quarantine files,
   fsynced, and their index rows: the database work of the message);
3. the wait for delivery to **start**.

Past it the MTA gets ``451`` (the milter's tempfail, sgfilterd's ``451``,
lmtpd's ``451`` for each recipient) and the message's one log line says where
the time went: ``note=message_timeout 2.0 s exceeded in scanning: clamd 1.8 s
(3 parts of 16 scanned)``, or ``... in quarantining: 1.9 s there (scanning
0.1 s)``.

**Where the deadline stops.**  Once the hand-over to the next hop has started
(:class:`DeadlineDelivery`: before the connection to it is taken, so no
byte of the message has gone), the deadline no longer
applies: an interrupted hand-over could leave the next hop with the message
while the MTA, answered 451, retries it (a duplicate).  From there the
delivery's own timeouts bound the wait (``smtp_relay(timeout=60)`` per
command) and the reply follows the delivery's answer; if the deadline passed
meanwhile, the log line says so (``message_timeout 2.0 s passed during
delivery ...: its answer stands``).  For the milter and sgfilterd the "next
hop" is the MTA itself (the message is kept for the reply): the hand-over is
immediate, so the deadline covers everything but the reply.  So: keep
``MESSAGE_TIMEOUT`` plus the next hop's timeouts under the MTA's own
(Postfix's ``smtp_data_done_timeout`` for an after-queue content filter,
``milter_content_timeout`` for the milter: 600 s each by default).

**Work that outlives its message.**  Cancelling a coroutine does not stop a
thread.  Scanner work in threads is abandoned and logged
(:mod:`mailsift.scanners.work`); a database transaction of the message still
running when the deadline passes rolls back instead of committing
(:data:`mailsift.storage.db.ABANDONED`), so the MTA's retry does not find a
second quarantine row; and the message path's statements carry the database's
own timeouts (``busy_timeout``: SQLite's lock wait, PostgreSQL's
``statement_timeout`` and ``lock_timeout``), so a hung database usually ends in
its own 451 before the deadline does.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from types import TracebackType
from typing import Any

from mailsift.core.disposition import Outcome
from mailsift.delivery.next_hop import Delivery, PerRecipient
from mailsift.errors import MailsiftError, ScannerTimeout
from mailsift.message.mail import Mail
from mailsift.message.result import Decision
from mailsift.scanners.work import CLOCK, MESSAGE_DEADLINE, ScanClock
from mailsift.storage.db import ABANDONED, Flag

_CURRENT: contextvars.ContextVar[MessageDeadline | None] = contextvars.ContextVar(
    "mailsift_message_deadline", default=None
)
_ENDS = MESSAGE_DEADLINE
"""``Mail.memo`` key: when the message's time is up (lmtpd's recipient groups share one deadline)."""


class MessageDeadline:
    """``async with MessageDeadline(mail, seconds):`` around one message's scanning and disposition.

    A ``TimeoutError`` out of the block with :attr:`passed` set is this
    deadline's; :meth:`tempfail` is then the message's decision and outcome.
    """

    def __init__(self, mail: Mail, seconds: float) -> None:
        self.mail = mail
        self.seconds = seconds
        now = time.monotonic()
        self.ends: float = mail.memo.setdefault(_ENDS, now + seconds)
        self.stage = "scanning"
        self.since = now
        self.spent: dict[str, float] = {}
        self.clock = ScanClock(mail)
        self.passed = False
        self.handed_over: float | None = None
        self.abandon = Flag()
        self._timeout: asyncio.Timeout | None = None
        self._tokens: tuple[Any, ...] = ()

    async def __aenter__(self) -> MessageDeadline:
        loop = asyncio.get_running_loop()
        self._timeout = asyncio.timeout_at(loop.time() + max(0.0, self.ends - time.monotonic()))
        await self._timeout.__aenter__()
        self._tokens = (_CURRENT.set(self), CLOCK.set(self.clock), ABANDONED.set(self.abandon))
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        mine, clock, abandon = self._tokens
        _CURRENT.reset(mine)
        CLOCK.reset(clock)
        ABANDONED.reset(abandon)
        assert self._timeout is not None
        try:
            await self._timeout.__aexit__(kind, error, traceback)
        finally:
            if self._timeout.expired():
                self.passed = True
                self.abandon.set()  # a database transaction of this message still running rolls back

    def enter(self, stage: str) -> None:
        """The message goes on to ``stage`` (``quarantining``, ``delivery``...)."""
        now = time.monotonic()
        self.spent[self.stage] = self.spent.get(self.stage, 0.0) + now - self.since
        self.stage, self.since = stage, now

    def hand_over(self) -> None:
        """Delivery starts: from here the deadline no longer applies (module docstring)."""
        if self.handed_over is None:
            self.enter("delivery")
            self.handed_over = time.monotonic()
            if self._timeout is not None:
                self._timeout.reschedule(None)

    def where(self) -> str:
        """``exceeded in scanning: clamd 1.8 s (3 parts of 16 scanned)``."""
        self.enter(self.stage)
        text = f"message_timeout {self.seconds:g} s exceeded in {self.stage}: "
        if self.stage == "scanning":
            return text + self.clock.summary()
        before = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in self.spent.items() if stage != self.stage)
        return text + f"{self.spent.get(self.stage, 0.0):.1f} s there" + (f" ({before})" if before else "")

    def tempfail(self) -> tuple[Decision, Outcome]:
        """The decision and outcome of a message whose deadline passed: 451, saying where the time went."""
        text = self.where()
        error = ScannerTimeout(text) if self.stage == "scanning" else MailsiftError(text)
        return Decision.tempfail(error), Outcome(error.reply, text, error=error)

    def note(self, note: str) -> str:
        """The outcome's note, plus a word if the deadline passed while the next hop had the message."""
        if self.handed_over is None or time.monotonic() <= self.ends:
            return note
        late = (
            f"message_timeout {self.seconds:g} s passed during delivery (handed over after "
            f"{self.handed_over - (self.ends - self.seconds):.1f} s): its answer stands"
        )
        return f"{note}; {late}" if note else late


def _handing_over() -> None:
    deadline = _CURRENT.get()
    if deadline is not None:
        deadline.hand_over()


class DeadlineDelivery(Delivery):
    """The mail path's delivery: tells the message's deadline that the hand-over starts."""

    def __init__(self, inner: Delivery) -> None:
        self.inner = inner
        self.redirects = inner.redirects

    async def deliver(self, mail: Mail, message: bytes) -> str:
        _handing_over()
        return await self.inner.deliver(mail, message)

    async def deliver_each(self, mail: Mail, message: bytes) -> PerRecipient:
        _handing_over()
        return await self.inner.deliver_each(mail, message)

    async def close(self) -> None:
        await self.inner.close()

    def describe(self) -> str:
        return self.inner.describe()
