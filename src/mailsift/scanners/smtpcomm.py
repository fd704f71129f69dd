"""``smtp_comm``: a detection by the SMTP conversation (SAGATOR's HELO matcher).

``smtp_comm('Forged.HELO', helo=r'^(localhost|mail\\.example\\.com)$')`` detects
mail whose client said ``HELO localhost`` or claimed to be this gateway.  Each
keyword is a regular expression (case ignored unless ``flags`` say) over one
field of the conversation, and the rule detects when *every* field given
matches (a recipient: any of them):

==================  ==========================================================
``helo``            the HELO/EHLO name (XFORWARD ``HELO`` behind Postfix, the
                    milter's HELO, ``helo_name`` of a policy request)
``client_address``  the client's IP address (XFORWARD ``ADDR``...)
``client_name``     its verified host name (``''`` or ``unknown`` when none)
``sender``          the envelope sender (``''`` for the null sender)
``recipient``       an envelope recipient
``protocol``        ``SMTP``, ``ESMTP``, ``ESMTPSA``... (XFORWARD ``PROTO``)
==================  ==========================================================

``invert=True`` detects when the fields do *not* all match.  The level of a
detection is ``level`` (1.0).  It needs no message data, so it works under
``smtpd_policy`` and ``recipient_policy`` at RCPT time too.
"""

from __future__ import annotations

import re
from typing import Any

from mailsift.errors import ConfigError
from mailsift.message.result import Result
from mailsift.scanners.base import Scanner, Target
from mailsift.scanners.basic import compile_text
from mailsift.validators import number

FIELDS = ("helo", "client_address", "client_name", "sender", "recipient", "protocol")


class smtp_comm(Scanner):
    """Detect by the SMTP conversation: ``smtp_comm('Bad.HELO', helo=r'^\\[?\\d+\\.\\d+\\.\\d+\\.\\d+\\]?$')``."""

    name = "smtp_comm"

    def __init__(
        self,
        virname: str = "SMTP.Policy",
        *,
        invert: bool = False,
        flags: int = re.IGNORECASE,
        level: Any = 1.0,
        **fields: Any,
    ) -> None:
        if not isinstance(virname, str) or not virname:
            raise ConfigError(f"smtp_comm: the name must be a non-empty string, got {virname!r}")
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise ConfigError(f"smtp_comm: unknown field(s) {', '.join(unknown)}; use {', '.join(FIELDS)}")
        if not fields:
            raise ConfigError(f"smtp_comm: give at least one field to match ({', '.join(FIELDS)})")
        self.virname, self.invert = virname, bool(invert)
        self.level = number(level, "smtp_comm: level")
        self.patterns = {
            field: compile_text(pattern, f"smtp_comm: {field}", flags)
            for field, pattern in fields.items()
            if field in FIELDS
        }

    def describe(self) -> str:
        fields = ", ".join(f"{field}={pattern.pattern!r}" for field, pattern in self.patterns.items())
        return f"smtp_comm({self.virname!r}, {'not ' if self.invert else ''}{fields})"

    @staticmethod
    def values(target: Target, field: str) -> list[str]:
        envelope = target.mail.envelope
        if field == "recipient":
            return list(envelope.recipients)
        return [str(getattr(envelope, field))]

    async def scan(self, target: Target) -> Result:
        matched: list[str] = []
        for field, pattern in self.patterns.items():
            hit = next((value for value in self.values(target, field) if pattern.search(value)), None)
            if hit is None:
                break
            matched.append(f"{field}={hit!r}")
        else:
            if not self.invert:
                return Result(self.level, self.virname, self.name, "; ".join(matched))
            return Result(0.0, "", self.name)
        if self.invert:
            return Result(self.level, self.virname, self.name, "not " + ", ".join(self.patterns))
        return Result(0.0, "", self.name)
