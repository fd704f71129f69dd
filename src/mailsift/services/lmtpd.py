"""``lmtpd``: the LMTP content filter (SAGATOR's ``lmtpd``), with a verdict per recipient.

Postfix hands each message over LMTP (``content_filter = lmtp:[127.0.0.1]:10024``);
after the content, LMTP answers once per accepted recipient (RFC 2033 §4.2),
so each recipient can get its own verdict and its own reply:

* **per-recipient scanner sets** (SAGATOR's ``LMTP_SCANNERS``): patterns on
  the recipient address choose the scanners; recipients that share a scanner
  set form one group, and the pipeline runs once per group;
* **per-recipient delivery**: each group's copy goes to the next hop in one
  transaction (:meth:`~mailsift.services.base.MailPath.process_each`), and a
  recipient refused or deferred there (at RCPT, or after the content when the
  next hop is ``lmtp_relay``) gets that answer alone.

A recipient gets 250 only after its own copy was accepted downstream or
stored; everything else is 4xx (or its 5xx).

The session is :class:`~mailsift.services.smtpd.FilterSMTP` (XFORWARD, the
fast DATA reader, drain) with aiosmtpd's LMTP greeting (``LHLO``; ``HELO`` and
``EHLO`` refused).  Only DATA differs: its replies, including the size and
line-length refusals found while reading, go out once per recipient.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import Envelope as SMTPEnvelope
from aiosmtpd.smtp import Session

from mailsift import replies
from mailsift.core.mailpath import failure_reply
from mailsift.errors import ConfigError
from mailsift.message.mail import Mail
from mailsift.scanners.base import Scanner, as_scanners
from mailsift.services.smtpd import FilterSMTP, Handler, SMTPServer, smtpd
from mailsift.settings import Settings

log = logging.getLogger("mailsift.lmtpd")

DEFAULT = "default"
"""The ``LMTP_SCANNERS`` key of the scanners for recipients no pattern matches."""


@dataclasses.dataclass(frozen=True)
class RecipientPolicy:
    """Recipients whose address matches ``pattern`` (``re.search``, any case) use ``scanners``."""

    pattern: re.Pattern[str]
    scanners: tuple[Scanner, ...]


def recipient_policies(
    scanners: Any, per_recipient: Any, what: str
) -> tuple[tuple[Scanner, ...], list[RecipientPolicy]]:
    """The default scanners and the ordered patterns, from either config shape.

    ``scanners`` is a scanner list (the default for everyone) or SAGATOR's
    ``LMTP_SCANNERS`` mapping ``{pattern: scanners, ..., 'default': scanners}``;
    ``per_recipient`` is a list of ``(pattern, scanners)`` pairs.  The first
    matching pattern wins, in the order written.
    """
    if isinstance(scanners, Mapping):
        if per_recipient:
            raise ConfigError(f"{what}: give per-recipient scanners as a mapping or as per_recipient=, not both")
        if DEFAULT not in scanners:
            raise ConfigError(f"{what}: the scanner mapping needs a {DEFAULT!r} entry (use [] to scan nothing)")
        pairs = [(key, value) for key, value in scanners.items() if key != DEFAULT]
        default = scanners[DEFAULT]
    else:
        pairs, default = list(per_recipient or ()), scanners
    policies = []
    for pair in pairs:
        if not (isinstance(pair, tuple | list) and len(pair) == 2 and isinstance(pair[0], str)):
            raise ConfigError(f"{what}: per-recipient entries are ('pattern', scanners) pairs, got {pair!r}")
        pattern, chosen = pair
        try:
            compiled = re.compile(pattern, re.IGNORECASE)
        except re.error as error:
            raise ConfigError(f"{what}: bad recipient pattern {pattern!r}: {error}") from None
        policies.append(RecipientPolicy(compiled, as_scanners([chosen], what)))
    return as_scanners([default], what), policies


class lmtpd(smtpd):
    """LMTP content filter: ``lmtpd(SCANNERS, '127.0.0.1', 10024)``.

    Per-recipient scanners: ``lmtpd(LMTP_SCANNERS, ...)`` with
    ``LMTP_SCANNERS = {r'@example\\.com$': SCANNERS_A, 'default': SCANNERS}``,
    or ``lmtpd(SCANNERS, ..., per_recipient=[(r'@example\\.com$', SCANNERS_A)])``.
    Patterns are regular expressions searched in the recipient address, any
    case; the first match wins.  The other options are :class:`smtpd`'s
    (``next_hop``, e.g. ``lmtp_relay(...)`` for per-recipient answers after
    the content too, ``max_size``, ``max_connections``, ``timeout``,
    ``xforward_hosts``, ``hostname``).
    """

    kind = "lmtpd"

    def __init__(
        self,
        scanners: Any,
        host: str = "127.0.0.1",
        port: int = 10024,
        prefork: int | None = None,
        *,
        per_recipient: Sequence[tuple[str, Any]] = (),
        **options: Any,
    ) -> None:
        default, self.policies = recipient_policies(scanners, per_recipient, self.kind)
        super().__init__(default, host, port, prefork, **options)

    def describe(self) -> str:
        """``lmtpd(host:port)``, then each pattern and its top-level scanners (the default's tree follows)."""
        policies = "".join(
            f"; {policy.pattern.pattern}: {', '.join(s.describe() for s in policy.scanners) or 'no scanners'}"
            for policy in self.policies
        )
        return f"{self.kind}({self.host}:{self.port}{policies})"

    def scanner_sets(self) -> tuple[list[tuple[Scanner, ...]], list[tuple[re.Pattern[str], int]]]:
        """The distinct scanner sets (the default first) and each pattern's index into them."""
        sets: list[tuple[Scanner, ...]] = [self.scanners]
        keys = [tuple(map(id, self.scanners))]
        patterns = []
        for policy in self.policies:
            key = tuple(map(id, policy.scanners))
            if key not in keys:
                keys.append(key)
                sets.append(policy.scanners)
            patterns.append((policy.pattern, keys.index(key)))
        return sets, patterns

    async def start(self, sock: socket.socket, settings: Settings) -> LMTPServer:
        server = LMTPServer(self, settings)
        await server.start(sock)
        return server


class LMTPSession(LMTP, FilterSMTP):
    """FilterSMTP with aiosmtpd's LMTP greeting (LHLO) and one DATA reply per recipient."""

    def refusal(self, problem: str) -> str:
        # after the content, LMTP answers once per accepted RCPT (RFC 2033 §4.2), refusals too;
        # the verdicts are joined the same way by LMTPServer.process
        assert self.envelope is not None
        return "\r\n".join([problem] * len(self.envelope.rcpt_tos))


class LMTPHandler(Handler):
    """smtpd's hooks; LHLO also advertises ENHANCEDSTATUSCODES (an LMTP must, RFC 2033 §5)."""

    async def handle_EHLO(  # noqa: N802 - aiosmtpd hook name
        self, server: FilterSMTP, session: Session, envelope: SMTPEnvelope, hostname: str, responses: list[str]
    ) -> list[str]:
        lines = await super().handle_EHLO(server, session, envelope, hostname, responses)
        return [*lines[:-1], "250-ENHANCEDSTATUSCODES", lines[-1]]


class LMTPServer(SMTPServer):
    """One worker's running ``lmtpd``: smtpd's server with a mail path per scanner set."""

    service: lmtpd
    session_class = LMTPSession
    ident = "mailsift LMTP"

    def __init__(self, service: lmtpd, settings: Settings) -> None:
        super().__init__(service, settings)
        sets, self.patterns = service.scanner_sets()
        self.paths = [self.path, *(self.path.with_scanners(scanners) for scanners in sets[1:])]
        self.handler = LMTPHandler(self)

    def path_index(self, recipient: str) -> int:
        """Which scanner set (index into ``paths``) ``recipient`` gets: the first matching pattern's."""
        for pattern, index in self.patterns:
            if pattern.search(recipient):
                return index
        return 0

    async def process(self, session_protocol: FilterSMTP, session: Session, envelope: SMTPEnvelope) -> str:
        """Scan once per scanner set, deliver per group; the reply lines, one per RCPT, joined."""
        answers: dict[str, str] = {}
        failed = str(replies.TEMPFAIL)  # what a recipient without an answer gets
        queue_id = ""
        mail: Mail | None = None
        try:  # the outermost per-message handler: one temporary failure per recipient, logged
            env = self.envelope_of(session_protocol, session, envelope, protocol="LMTP")
            queue_id = env.queue_id
            groups: dict[int, list[str]] = {}
            for recipient in env.recipients:
                groups.setdefault(self.path_index(recipient), []).append(recipient)
            content = envelope.original_content or b""
            mail = Mail(env, content, spool_threshold=self.settings.spool_threshold, spool_dir=self.settings.spool_dir)
            # One Mail (parsed once) for every group; each group sees its own recipients.
            for index, group in groups.items():
                mail.envelope = dataclasses.replace(env, recipients=group)
                try:
                    _, outcomes = await self.paths[index].process_each(mail)
                except Exception as error:  # noqa: BLE001 - logged by failure_reply; this group only
                    answers.update(dict.fromkeys(group, str(failure_reply(queue_id, error))))
                    continue
                answers.update((recipient, str(outcome.reply)) for recipient, outcome in outcomes.items())
        except Exception as error:  # noqa: BLE001 - logged by failure_reply
            failed = str(failure_reply(queue_id, error))
        finally:
            if mail is not None:
                mail.close()
        return "\r\n".join(answers.get(recipient, failed) for recipient in envelope.rcpt_tos)

    async def closed(self) -> None:
        await super().closed()  # closes the default path and the shared next hop
        for path in self.paths[1:]:
            await path.close()  # each scanner once: the paths share the record of closed ones
