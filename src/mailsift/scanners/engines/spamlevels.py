"""Spam levels: qmail-scanner's "st" patch on top of a spam engine, and its sa-forward.

``spam_levels(spamassassind(...), quarantine=+2.1, delete=+4.2, reject=True,
delta=0.5)`` reads the wrapped engine's score and required score and puts the
message in one band, with the patch's semantics (reference:
``qmail-scanner-st-patch.txt``; simscan's ``spam_hits`` is the ``delete`` band
with ``reject``)::

    score <  tag                  clean: delivered, X-Spam-Status: No
    tag  <= score < quarantine    tagged: delivered, subject "SPAM *** LOW" / MEDIUM / HIGH
    quarantine <= score < delete  quarantined (category 'spam'); sa-forward copies it
    delete <= score               deleted (250, no copy), or with reject=True
                                  rejected (550) -- except from trusted clients
                                  (localhost, secondary MXes), where it is deleted

With ``relative=True`` (the patch's behaviour since 2004) the thresholds are
offsets from the engine's required score, so a per-user ``required_score``
moves all bands together; with ``relative=False`` they are absolute scores.
``tag`` defaults to the required score itself, as SpamAssassin tags.  Each
threshold includes its own value (``score >= threshold``, SpamAssassin's own
rule for its required score), compared at 1e-6 so that ``5.0 + 2.1`` and
spamd's ``7.1`` meet.

The subject levels (``--sa-delta``): under ``tag + delta`` LOW, under ``tag +
2*delta`` MEDIUM, above HIGH; the prefix is ``subject_tag`` followed by the
level (``"SPAM *** LOW "``).  With ``skip_bounces`` (the patch's ``SA_SKIP_MD``)
bounces -- an empty envelope sender, or ``MAILER-DAEMON`` as sender or in
``From:`` -- are not given to the spam engine at all (a flood of bounces to
forged addresses then costs nothing); other scanners still see them.

Place ``spam_levels`` after the virus scanners, as qmail-scanner runs
SpamAssassin last: a tagged message is a detection that is delivered, and the
first detection ends the evaluation (SAGATOR semantics).

``spam_forward(to, verbose=False)`` is the patch's ``--sa-forward`` /
``--sa-fwd-verbose``, a :class:`~mailsift.core.hooks.Hook` listed in ``HOOKS``: each
message that ``spam_levels`` put in the quarantine band, once its quarantine
copy is fsynced, is redirected "almost unmodified" to ``to`` for ``sa-learn``.
As the patch does, the original message is resent as it is (not attached to
a new one); with ``verbose`` the X-Spam headers are prepended.  The envelope
sender is null (``<>``), so a failing admin address never bounces to the
(forged) spam sender.  It goes through the next hop's safe delivery path
(``SMTP_SERVER`` or ``next_hop=``); a failure is logged with the quarantine
file and changes nothing else: the message itself is safe in quarantine.
"""

from __future__ import annotations

import email.utils
import enum
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mailsift.errors import ConfigError, ScannerError
from mailsift.message.mail import Mail
from mailsift.message.result import (
    DETECTED,
    Action,
    AddHeader,
    Disposition,
    ModifySubject,
    QuarantineCopy,
    SetDisposition,
)
from mailsift.scanners.actions import CATEGORY, expand
from mailsift.scanners.base import Interscanner, Target
from mailsift.scanners.client import client_in
from mailsift.scanners.engines.common import SpamResult
from mailsift.validators import flag, networks, optional_number, positive

if TYPE_CHECKING:
    from mailsift.message.result import Result

log = logging.getLogger("mailsift.spamlevels")

EPSILON = 1e-6
"""Tolerance of threshold comparisons: spamd reports one decimal, sums of floats do not."""

LOCALHOST = ("127.0.0.0/8", "::1")
"""Never rejected by the patch: "Messages from the LOCALHOST are never rejected"."""

REJECT_MESSAGE = "We have reasons to believe this mail is SPAM"
"""The patch's own example text for its 5xx (``qmail.c``, ``#5.7.1``)."""


class Band(enum.Enum):
    """Where a score falls."""

    SKIPPED = "skipped"  # a bounce not checked (SA_SKIP_MD), or no verdict from the engine
    CLEAN = "clean"
    TAGGED = "tagged"
    QUARANTINE = "quarantine"
    DELETE = "delete"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class SpamLevelResult(SpamResult):
    """The engine's :class:`SpamResult` with the band chosen and the subject level (LOW...)."""

    band: Band = Band.CLEAN
    subject_level: str = ""


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The absolute scores of one message's bands (``None``: band not used)."""

    tag: float
    quarantine: float | None
    delete: float | None

    def band(self, score: float) -> Band:
        """The band of ``score``, without reject/trusted (the caller turns DELETE into REJECT)."""
        if self.delete is not None and reached(score, self.delete):
            return Band.DELETE
        if self.quarantine is not None and reached(score, self.quarantine):
            return Band.QUARANTINE
        if reached(score, self.tag):
            return Band.TAGGED
        return Band.CLEAN

    def subject_level(self, score: float, delta: float | None) -> str:
        """LOW / MEDIUM / HIGH by ``delta`` bands above the tag threshold ("" without delta)."""
        if delta is None:
            return ""
        if not reached(score, self.tag + delta):
            return "LOW"
        if not reached(score, self.tag + 2 * delta):
            return "MEDIUM"
        return "HIGH"


def reached(score: float, threshold: float) -> bool:
    """``score >= threshold`` within :data:`EPSILON`."""
    return score >= threshold - EPSILON


_MAILER_DAEMON = re.compile(r"mailer-daemon(@|$)", re.IGNORECASE)


def is_bounce(mail: Mail) -> bool:
    """A bounce as SA_SKIP_MD sees it: empty envelope sender, or MAILER-DAEMON as sender or ``From:``."""
    sender = mail.envelope.sender.strip()
    if not sender or sender == "<>" or _MAILER_DAEMON.match(sender):
        return True
    _, address = email.utils.parseaddr(mail.headers.get("From"))
    return bool(_MAILER_DAEMON.match(address.strip()))


class spam_levels(Interscanner):
    """qmail-scanner's st-patch spam bands over a spam engine (see the module docstring)."""

    name = "spam_levels"

    def __init__(
        self,
        *scanners: Any,
        tag: float | None = None,
        subject_tag: str | None = "SPAM *** ",
        quarantine: float | None = None,
        delete: float | None = None,
        reject: bool = False,
        relative: bool = True,
        delta: float | None = None,
        trusted: Any = LOCALHOST,
        skip_bounces: bool = False,
        category: str = "spam",
        headers: bool = True,
        message: str = REJECT_MESSAGE,
    ) -> None:
        super().__init__(*scanners)
        self.tag = optional_number(tag, "spam_levels: tag")
        self.quarantine = optional_number(quarantine, "spam_levels: quarantine")
        self.delete = optional_number(delete, "spam_levels: delete")
        self.delta = None if delta is None else positive(delta, "spam_levels: delta")
        self.reject, self.relative = flag(reject, "spam_levels: reject"), flag(relative, "spam_levels: relative")
        self.skip_bounces = flag(skip_bounces, "spam_levels: skip_bounces")
        self.headers = flag(headers, "spam_levels: headers")
        if reject and self.delete is None:
            raise ConfigError("spam_levels: reject=True rejects what reaches delete=...; set delete")
        if self.quarantine is not None and self.delete is not None and not self.delete > self.quarantine:
            raise ConfigError(
                f"spam_levels: delete ({self.delete:g}) must be greater than quarantine ({self.quarantine:g})"
            )
        if relative:
            floor = self.tag if self.tag is not None else 0.0
            for what, threshold in (("quarantine", self.quarantine), ("delete", self.delete)):
                if threshold is not None and not threshold > floor:
                    raise ConfigError(
                        f"spam_levels: {what} ({threshold:+g}) must be above the tag threshold ({floor:+g})"
                    )
        if subject_tag is not None and (not isinstance(subject_tag, str) or "\r" in subject_tag or "\n" in subject_tag):
            raise ConfigError(f"spam_levels: subject_tag must be one line of text or None, got {subject_tag!r}")
        self.subject_tag = subject_tag or ""
        self.trusted = networks(trusted, "spam_levels: trusted") if trusted else ()
        if not isinstance(category, str) or not CATEGORY.match(category):
            raise ConfigError(f"spam_levels: category must be a short lower-case name like 'spam', got {category!r}")
        self.category = category
        if not isinstance(message, str) or "\r" in message or "\n" in message:
            raise ConfigError(f"spam_levels: message must be one line of text, got {message!r}")
        self.message = message

    def describe(self) -> str:
        def show(value: float | None) -> str:
            if value is None:
                return "-"
            return f"required{value:+g}" if self.relative else f"{value:g}"

        tag = show(self.tag) if self.tag is not None else "required"
        parts = [f"tag={tag}", f"quarantine={show(self.quarantine)}", f"delete={show(self.delete)}"]
        if self.reject:
            parts.append("reject")
        if self.delta is not None:
            parts.append(f"delta={self.delta:g}")
        if self.skip_bounces:
            parts.append("skip bounces")
        return f"spam_levels({', '.join(parts)})"

    def thresholds(self, required: float) -> Thresholds:
        """The absolute thresholds for an engine that requires ``required``."""
        base = required if self.relative else 0.0
        tag = required if self.tag is None else base + self.tag
        quarantine = None if self.quarantine is None else base + self.quarantine
        delete = None if self.delete is None else base + self.delete
        return Thresholds(tag, quarantine, delete)

    async def scan(self, target: Target) -> Result:
        if self.skip_bounces and is_bounce(target.mail):
            return SpamLevelResult(0.0, "", self.name, "not checked: a bounce (SA_SKIP_MD)", band=Band.SKIPPED)
        result = await self.inner(target)
        if not isinstance(result, SpamResult):
            raise ScannerError(f"spam_levels: {result.scanner or 'the wrapped scanner'} gave no spam score")
        if result.required <= 0:  # not checked (over max_size): no verdict to put in a band
            return SpamLevelResult(**_fields(result), band=Band.SKIPPED)
        return self.classify(result, trusted=bool(self.trusted) and client_in(target, self.trusted))

    def classify(self, result: SpamResult, *, trusted: bool) -> SpamLevelResult:
        """Put ``result`` in its band and attach that band's actions."""
        limits = self.thresholds(result.required)
        band = limits.band(result.score)
        level, name, note = result.level, result.name, ""
        actions: list[Action] = []
        subject_level = ""
        if band in (Band.CLEAN, Band.TAGGED):
            if band is Band.TAGGED:
                subject_level = limits.subject_level(result.score, self.delta)
                name = name or "Spam"
                if self.subject_tag:
                    actions.append(
                        ModifySubject(f"{self.subject_tag}{subject_level} " if subject_level else self.subject_tag)
                    )
            if self.headers:
                actions.extend(spam_headers(result, tagged=band is Band.TAGGED))
            if level >= DETECTED:  # a detection that this band delivers
                actions.append(SetDisposition(Disposition.DELIVER))
        else:
            level, name = max(level, DETECTED), name or "Spam"  # held: a detection whatever the ratio
            if band is Band.QUARANTINE:
                actions += [QuarantineCopy(self.category), SetDisposition(Disposition.QUARANTINE)]
            elif self.reject and not trusted:
                band = Band.REJECT
                actions.append(SetDisposition(Disposition.REJECT, expand(self.message, result)))
            else:
                if self.reject:
                    note = "trusted client: deleted instead of rejected"
                actions.append(SetDisposition(Disposition.DROP))
        detail = f"{result.detail}; band={band.value}{' ' + subject_level if subject_level else ''}"
        if note:
            detail += f"; {note}"
        fields = _fields(result)
        fields.update(level=level, name=name, detail=detail, actions=result.actions + tuple(actions))
        return SpamLevelResult(**fields, band=band, subject_level=subject_level)


def _fields(result: SpamResult) -> dict[str, Any]:
    """A SpamResult's fields, to build the SpamLevelResult around it."""
    return {
        "level": result.level,
        "name": result.name,
        "scanner": result.scanner,
        "detail": result.detail,
        "actions": result.actions,
        "score": result.score,
        "required": result.required,
        "symbols": result.symbols,
        "report": result.report,
        "action": result.action,
    }


def spam_headers(result: SpamResult, *, tagged: bool, report: bool = False) -> list[AddHeader]:
    """qmail-scanner's FAST_SPAMASSASSIN headers: X-Spam-Status, X-Spam-Level (and X-Spam-Flag, X-Spam-Report)."""
    status = "Yes" if tagged else "No"
    headers = [AddHeader("X-Spam-Status", f"{status}, hits={result.score:.1f} required={result.required:.1f}")]
    stars = min(50, max(0, int(result.score)))  # SpamAssassin's X-Spam-Level: one star per point, at most 50
    headers.append(AddHeader("X-Spam-Level", "*" * stars))
    if tagged:
        headers.append(AddHeader("X-Spam-Flag", "YES"))
    if report and result.report:
        headers.append(AddHeader("X-Spam-Report", result.report))
    return headers
