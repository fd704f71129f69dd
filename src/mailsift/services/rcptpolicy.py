"""``recipient_policy(scanners, dbc)``: SAGATOR's policy answered at each ``RCPT TO``.

SAGATOR: "This policy check is invoked after an RCPT TO smtp command is
received [...] This service must be defined before service, which want to use
it."  In mailsift it is listed in ``SRV`` before the ``smtpd`` or ``milter``
that uses it (each later one without a policy of its own takes it), or given
to one directly: ``smtpd(SCANNERS, '0.0.0.0', 25, recipient_policy=POLICY)``.

Each recipient becomes a :class:`~mailsift.scanners.greylist.PolicyTarget`
(the same as a Postfix policy request: ``protocol_state=RCPT``, the client,
HELO, sender and this recipient; no message yet), evaluated by the policy
scanners with the usual first-detection rule, within ``timeout`` seconds:

==================================  ======================================
clean, ``deliver(...)``             the recipient is accepted (250); a passed
                                    ``greylist``'s ``X-Greylist`` is added to the message
deferred (``greylist``, ``tempfail``)  ``defer`` (``450 4.7.1``) and the text
detected: ``reject(...)`` and any   ``reject`` (``550 5.7.1``) and the text
other action (``drop`` and
``quarantine`` need a message;
there is none yet)
a scanner or the database failed,   ``451 4.3.0``: never a 5xx for an
or the time ran out                 internal error
==================================  ======================================

``sql_find`` with ``invert=True`` makes the classic "unknown recipient" check::

    POLICY = recipient_policy([reject(sql_find('SELECT 1 FROM users WHERE address = :recipient',
                                               const(1.0, 'User unknown'), invert=True),
                                      message='User unknown')], reject='550 5.1.1')

It belongs before the queue (a standalone ``smtpd`` on port 25, the milter):
behind Postfix's ``content_filter`` a refused recipient becomes a bounce.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from mailsift.errors import ConfigError, ScannerError
from mailsift.message.mail import Envelope
from mailsift.message.result import Decision, Disposition, Result, SetDisposition
from mailsift.replies import Reply
from mailsift.scanners.base import Scanner, as_scanners, first_detection
from mailsift.scanners.greylist import PolicyTarget
from mailsift.settings import Settings, SettingsBound
from mailsift.storage.db import Database
from mailsift.validators import positive

log = logging.getLogger("mailsift.rcpt")

ACCEPTED = Reply(250, "2.1.5", "Ok")
FAILED = Reply(451, "4.3.0", "Recipient policy temporarily unavailable, try again later")
_CODE = re.compile(r"^([45])\d\d(?: \1\.\d{1,3}\.\d{1,3})?$")


def _code(value: Any, first: str, what: str) -> tuple[int, str]:
    if not isinstance(value, str) or not _CODE.match(value) or not value.startswith(first):
        raise ConfigError(f"recipient_policy: {what} must look like '{first}50 {first}.7.1', got {value!r}")
    code, _, status = value.partition(" ")
    return int(code), status


def _clean(text: str) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()[:400]


class recipient_policy:
    """Answer each ``RCPT TO`` with the policy scanners (see the module's text)."""

    kind = "recipient_policy"

    def __init__(
        self,
        scanners: Sequence[Any],
        dbc: Database | None = None,
        *,
        defer: str = "450 4.7.1",
        reject: str = "550 5.7.1",
        timeout: float = 10.0,
    ) -> None:
        self.scanners: tuple[Scanner, ...] = as_scanners([scanners], self.kind)
        if not self.scanners:
            raise ConfigError("recipient_policy: give at least one policy scanner")
        if dbc is not None and not isinstance(dbc, Database):
            raise ConfigError(f"recipient_policy: dbc must be a database like db.sqlite() or DATABASE, got {dbc!r}")
        self.database = dbc
        self.defer = _code(defer, "4", "defer")
        self.reject = _code(reject, "5", "reject")
        self.timeout = positive(timeout, "recipient_policy: timeout", unit="number of seconds")

    def describe(self) -> str:
        return f"recipient_policy({len(self.scanners)} scanner(s))"

    def check(self, settings: Settings) -> None:
        """Resolve the database (``dbc``, else ``DATABASE``)."""
        if self.database is not None:
            self.database.configure(settings.state_dir)

    def bind_settings(self, settings: Settings) -> None:
        """The database, and ``DATABASE`` for the policy scanners that take it (``sql_find``...)."""
        if self.database is None:
            self.database = settings.database
        pending, seen = list(self.scanners), set()
        while pending:
            scanner = pending.pop()
            if id(scanner) in seen:
                continue
            seen.add(id(scanner))
            if isinstance(scanner, SettingsBound):
                scanner.bind_settings(settings)
            pending.extend(scanner.children)

    def request(self, envelope: Envelope, recipient: str) -> dict[str, str]:
        """The Postfix-style policy request for one recipient of a transaction."""
        return {
            "request": "smtpd_access_policy",
            "protocol_state": "RCPT",
            "protocol_name": envelope.protocol,
            "helo_name": envelope.helo,
            "queue_id": envelope.queue_id,
            "sender": envelope.sender,
            "recipient": recipient,
            "client_address": envelope.client_address,
            "client_name": envelope.client_name,
        }

    async def decide(self, envelope: Envelope, recipient: str, headers: list[bytes] | None = None) -> Reply:
        """The answer to ``RCPT TO:<recipient>``; never raises, never a 5xx for a failure.

        ``headers``: where the header fields of an accepted recipient go (a passed
        ``greylist``'s ``X-Greylist``), ``b"Name: value\\r\\n"``, each once; the front end
        prepends them to the message.
        """
        started = time.monotonic()
        try:
            target = PolicyTarget(self.request(envelope, recipient), self.database)
            _, trail = await asyncio.wait_for(first_detection(self.scanners, target), self.timeout)
            decision = Decision.from_results(trail)
            reply = self.answer(decision)
            result = decision.result
            if reply.is_positive and headers is not None:
                for header in decision.headers:
                    line = f"{header.name}: {_clean(header.value)}\r\n".encode("utf-8", "replace")
                    if line not in headers:
                        headers.append(line)
        except ScannerError as error:
            reply, result = FAILED, Result(0.0, type(error).__name__, "", error.message)
        except TimeoutError:
            reply, result = FAILED, Result(0.0, "Timeout", "", f"over {self.timeout:g} s")
        except Exception as error:  # a bug answers 451 and is logged, never a 5xx
            log.exception("recipient_policy: unexpected error; answering %s", FAILED.code)
            reply, result = FAILED, Result(0.0, type(error).__name__, "", str(error))
        log.info(
            "rcpt reply=%s name=%s scanner=%s from=<%s> to=<%s> client=%s[%s] helo=%s time=%.3fs%s",
            reply.code,
            result.name or "-",
            result.scanner or "-",
            envelope.sender,
            recipient,
            envelope.client_name or "-",
            envelope.client_address or "-",
            envelope.helo or "-",
            time.monotonic() - started,
            f" detail={result.detail}" if result.detail else "",
        )
        return reply

    def answer(self, decision: Decision) -> Reply:
        """A decision as the RCPT reply (see the module's table)."""
        disposition = decision.disposition
        if disposition is Disposition.DELIVER:
            return ACCEPTED
        result = decision.result
        chosen: SetDisposition | None = None
        for action in result.actions if result.detected else ():
            if isinstance(action, SetDisposition):
                chosen = action
        text = _clean(chosen.text) if chosen is not None and chosen.text else ""
        if disposition is Disposition.TEMPFAIL:
            coded = re.match(r"4\d\d(?: 4\.\d{1,3}\.\d{1,3})? (.*)", text)
            return Reply(*self.defer, (coded[1] if coded else text) or "Recipient deferred, try again later")
        return Reply(*self.reject, text or f"Recipient rejected by policy: {result.name or 'policy violation'}")


def checked_policy(policy: Any, kind: str) -> recipient_policy | None:
    """A front end's ``recipient_policy=`` argument: None or a :class:`recipient_policy`."""
    if policy is not None and not isinstance(policy, recipient_policy):
        raise ConfigError(f"{kind}: recipient_policy must be recipient_policy([...]), got {policy!r}")
    return policy


RcptPolicy = recipient_policy
"""The class by a name that front ends' ``recipient_policy=`` parameters do not shadow."""


def link_recipient_policies(entries: Sequence[Any]) -> None:
    """SAGATOR's order in ``SRV``: a ``recipient_policy`` serves the services listed after it that
    answer RCPT (``smtpd``, ``lmtpd``, ``milter``) and have no policy of their own."""
    policy: recipient_policy | None = None
    for entry in entries:
        if isinstance(entry, recipient_policy):
            policy = entry
        elif policy is not None and hasattr(entry, "recipient_policy") and entry.recipient_policy is None:
            entry.recipient_policy = policy
