"""Results, the operator algebra over them, actions as data, and the Decision.

A :class:`Result` is what one scanner says about one message (or part): a
``level`` (float, ``>= 1.0`` means detected), a short ``name`` (virus name,
``SPAM``, policy reason), the ``scanner`` that produced it, a free ``detail``,
and the :class:`Action` records that action interscanners attached to it.

:func:`combine` implements the operator tables of SAGATOR's README §4
exactly; ``tests/unit/message/test_result.py`` checks every cell.  A failed operand
is represented by the :class:`~mailsift.errors.ScannerError` it raised.

The :class:`Decision` is the pipeline's output: what the disposition step must
do.  Nothing here sends or writes anything.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from mailsift import replies
from mailsift.errors import MailsiftError, ScannerError
from mailsift.replies import Reply

DETECTED = 1.0
"""The level from which a result counts as a detection."""


# --------------------------------------------------------------------------- actions


class Disposition(enum.Enum):
    """What happens to the message as a whole."""

    DELIVER = "deliver"
    REJECT = "reject"
    DROP = "drop"
    QUARANTINE = "quarantine"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True, slots=True)
class SetDisposition:
    """Recorded by ``reject``/``drop``/``deliver``/``quarantine``."""

    disposition: Disposition
    text: str = ""


@dataclass(frozen=True, slots=True)
class QuarantineCopy:
    """Recorded by ``quarantine``: keep a copy in this category."""

    category: str


@dataclass(frozen=True, slots=True)
class AddHeader:
    """Recorded by ``add_header``: prepend ``name: value`` on delivery."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class ModifySubject:
    """Recorded by ``modify_subject``: prefix the Subject on delivery."""

    prefix: str


@dataclass(frozen=True, slots=True)
class ModifyHeader:
    """Recorded by ``modify_header``: ``name: value`` replaces every top-level field ``name`` (added if none)."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class RemoveHeaders:
    """Recorded by ``remove_headers``: top-level fields whose name ``pattern`` matches (from its start,
    any case) are removed on delivery, before any field is added or modified."""

    pattern: str


@dataclass(frozen=True, slots=True)
class DeliverTo:
    """Recorded by ``deliver_to``: deliver to ``address`` instead of the recipients, or also (``copy``)."""

    address: str
    copy: bool = False


@dataclass(frozen=True, slots=True)
class Sanitize:
    """Recorded by ``sanitize``: deliver ``message``, the original with the offending parts replaced by notices.

    ``removed`` says which parts and why, for the log.
    """

    removed: tuple[str, ...]
    message: bytes = field(repr=False, compare=False)


Action = (
    SetDisposition | QuarantineCopy | AddHeader | ModifySubject | ModifyHeader | RemoveHeaders | DeliverTo | Sanitize
)


# --------------------------------------------------------------------------- result


@dataclass(frozen=True, slots=True)
class Result:
    """One scanner's verdict."""

    level: float = 0.0
    name: str = ""
    scanner: str = ""
    detail: str = ""
    actions: tuple[Action, ...] = field(default=())

    @property
    def detected(self) -> bool:
        return self.level >= DETECTED

    def with_actions(self, *actions: Action) -> Result:
        return replace(self, actions=self.actions + actions)

    def renamed(self, name: str) -> Result:
        return replace(self, name=name)


CLEAN = Result(0.0, "", "", "")

Operand = Result | ScannerError
"""An operand of the operator table: a result, or the error of a failed scanner."""


def _merge(left: Result, right: Result, level: float, op: str, *, keep_name: bool = True) -> Result:
    name = (left.name or right.name) if keep_name else ""
    details = "; ".join(d for d in (left.detail, right.detail) if d)
    return Result(level, name, f"{left.scanner}{op}{right.scanner}", details, left.actions + right.actions)


def _divide(left: float, right: float) -> float:
    if right == 0:
        raise ScannerError("division by zero in scanner expression")
    return left / right


ARITHMETIC: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": _divide,
}

COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    ">": operator.gt,
    "==": operator.eq,
    "<=": operator.le,
    ">=": operator.ge,
    "!=": operator.ne,
}

OPERATORS = (*ARITHMETIC, "|", "&", *COMPARISONS)


def combine(op: str, left: Operand, right: Operand) -> Result:
    """Combine two scanner outcomes by SAGATOR's operator tables (README §4).

    ``+ - * /``: both must succeed; the levels are combined arithmetically.
    ``|``: the left result if it succeeded, else the right one; fails if both fail.
    ``&``: both must succeed; ``L1*L2`` if ``L1 >= 1.0``, else ``0.0``.
    Comparisons: both must succeed; ``1.0`` when true, ``0.0`` with the name
    cleaned when false.  A failure raises the failing operand's error.
    """
    if op == "|":
        if isinstance(left, Result):
            return left
        if isinstance(right, Result):
            return right
        raise left
    if isinstance(left, ScannerError):
        raise left
    if isinstance(right, ScannerError):
        raise right
    if op in ARITHMETIC:
        return _merge(left, right, ARITHMETIC[op](left.level, right.level), op)
    if op == "&":
        if left.level >= DETECTED:
            return _merge(left, right, left.level * right.level, op)
        return _merge(left, right, 0.0, op, keep_name=False)
    if op in COMPARISONS:
        true = COMPARISONS[op](left.level, right.level)
        return _merge(left, right, 1.0 if true else 0.0, op, keep_name=true)
    raise ValueError(f"unknown operator {op!r}")


# --------------------------------------------------------------------------- decision


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one message; produced by the pipeline, carried out by disposition."""

    disposition: Disposition
    result: Result
    reply: Reply
    quarantine: tuple[str, ...] = ()
    headers: tuple[AddHeader, ...] = ()
    subject_prefix: str = ""
    error: MailsiftError | None = None
    trail: tuple[Result, ...] = ()
    removals: tuple[RemoveHeaders, ...] = ()
    modified: tuple[ModifyHeader, ...] = ()
    redirect: str = ""
    """``deliver_to``: the one recipient instead of the envelope's (empty: the envelope's)."""
    copies: tuple[str, ...] = ()
    """``deliver_to(copy=True)``: recipients added to the envelope's."""
    sanitized: Sanitize | None = None

    @property
    def delivers(self) -> bool:
        return self.disposition is Disposition.DELIVER

    def recipients_for(self, recipients: Iterable[str]) -> list[str]:
        """The recipients to deliver to: the envelope's, or ``redirect``, plus the ``copies`` not among them."""
        chosen = [self.redirect] if self.redirect else list(recipients)
        known = {address.lower() for address in chosen}
        for address in self.copies:
            if address.lower() not in known:
                known.add(address.lower())
                chosen.append(address)
        return chosen

    @classmethod
    def tempfail(cls, error: MailsiftError, trail: Iterable[Result] = ()) -> Decision:
        result = Result(0.0, type(error).__name__, "", error.message)
        return cls(Disposition.TEMPFAIL, result, error.reply, error=error, trail=tuple(trail))

    @classmethod
    def from_results(cls, results: Iterable[Result]) -> Decision:
        """Build the decision from the results evaluated, the last one deciding.

        Header and subject edits and quarantine copies are collected from every
        result evaluated; recipient changes (``deliver_to``) and a sanitized
        body only from the deciding detection, as its disposition.  The disposition comes from the actions of the
        deciding result, outermost wrapper last (so ``reject(quarantine(x))``
        rejects and keeps a copy); a detection with no explicit disposition is
        rejected, as in SAGATOR.  A result under 1.0 is clean and delivered, even
        if an operator lowered a level that an action had already seen detected.
        """
        trail = tuple(results)
        if trail and trail[-1].detected:
            final = trail[-1]
        else:
            final = max(trail, key=lambda r: r.level, default=CLEAN)
        headers: list[AddHeader] = []
        removals: list[RemoveHeaders] = []
        modified: list[ModifyHeader] = []
        subject = ""
        categories: list[str] = []
        for res in trail:
            for action in res.actions:
                if isinstance(action, AddHeader):
                    headers.append(action)
                elif isinstance(action, RemoveHeaders):
                    removals.append(action)
                elif isinstance(action, ModifyHeader):
                    modified.append(action)
                elif isinstance(action, ModifySubject):
                    subject = action.prefix + subject
                elif isinstance(action, QuarantineCopy) and action.category not in categories:
                    categories.append(action.category)
        chosen: SetDisposition | None = None
        redirect = ""
        copies: list[str] = []
        sanitized: Sanitize | None = None
        for action in final.actions if final.detected else ():  # an operator may lower a detection to clean
            if isinstance(action, SetDisposition):
                chosen = action
            elif isinstance(action, DeliverTo):
                if action.copy:
                    copies.append(action.address)
                else:
                    redirect = action.address  # the outermost wins
            elif isinstance(action, Sanitize):
                sanitized = action
        if chosen is not None:
            disposition = chosen.disposition
        elif final.detected:
            disposition = Disposition.REJECT
        else:
            disposition = Disposition.DELIVER
        reply = _reply_for(disposition, final, chosen.text if chosen else "")
        return cls(
            disposition,
            final,
            reply,
            tuple(categories),
            tuple(headers),
            subject,
            None,
            trail,
            tuple(removals),
            tuple(modified),
            redirect,
            tuple(copies),
            sanitized,
        )


def _reply_for(disposition: Disposition, result: Result, text: str) -> Reply:
    if disposition is Disposition.REJECT:
        reason = text or _describe(result)
        return replies.REJECTED.with_text(reason)
    if disposition is Disposition.DROP:
        return replies.OK_DROPPED
    if disposition is Disposition.QUARANTINE:
        return replies.OK_QUARANTINED
    if disposition is Disposition.TEMPFAIL:  # a rule's deliberate 4xx (greylisting): never a 250
        return replies.TEMPFAIL.with_text(text) if text else replies.TEMPFAIL
    return replies.OK


def _describe(result: Result) -> str:
    """The reject text: ``Rejected: EICAR-Test (regexp_scan)``."""
    name = result.name or "policy violation"
    if result.scanner:
        return f"Rejected by content filter: {name} ({result.scanner})"
    return f"Rejected by content filter: {name}"
