"""Hooks: what is done for every message once its decision was carried out.

Notifications, archive copies, the SQL log, spam copies for training: none of
them decides anything, and none may turn a message that is safe (delivered,
or fsynced in quarantine) into a lost one.  They run after the disposition
step and before the MTA gets its reply; an error in a hook is logged and
never changes the reply.  A hook that must be durable (an archive copy) fsyncs
its own writes.

A config lists them in ``HOOKS``::

    HOOKS = [notify(...), archive(r'@example\\.com$', 'archive'), log_sql(db.sqlite())]
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailsift.core.disposition import Outcome
    from mailsift.message.mail import Mail
    from mailsift.message.result import Decision
    from mailsift.settings import Settings

log = logging.getLogger("mailsift.hooks")


class Hook:
    """Base of ``HOOKS`` entries: override :meth:`after` (and :meth:`check`, :meth:`close`)."""

    name = "hook"
    for_files = False
    """Whether ``fusefs`` runs it for a file it scanned: only hooks that record (the log hooks,
    ``stats``); a file is not mail, so archive copies, notifications and spam copies are not made."""

    def check(self, settings: Settings) -> None:
        """At config load: validate what needs the global settings; raise ConfigError."""

    async def after(self, mail: Mail, decision: Decision, outcome: Outcome, settings: Settings) -> None:
        """Called once per message (per recipient group with lmtpd), after the disposition."""

    async def close(self) -> None:
        """Release resources (when a worker drains)."""

    def describe(self) -> str:
        return self.name


async def run_hooks(
    hooks: tuple[Any, ...], mail: Mail, decision: Decision, outcome: Outcome, settings: Settings
) -> None:
    """Run every hook; errors are logged, never raised (the message is already safe)."""
    for hook in hooks:
        try:
            await hook.after(mail, decision, outcome, settings)
        except Exception:
            log.exception("queue_id=%s: hook %s failed", mail.envelope.queue_id or "-", hook.describe())
