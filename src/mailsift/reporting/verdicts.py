"""Verdicts as a person reads them: ``Virus: Eicar-Test-Signature``, ``Spam, score 12.3 of 5.0``.

A scanner's verdict is stored as a name, a scanner expression, a level and,
in the quarantine file, a detail (``score=12.3 required=5 tests=...`` from
``spamassassind``, ``action=... score=... required=... symbols=A(1.5),...``
from ``rspamd``).  The level of a combined expression
(``spamassassind(...)*const(...)``) is no score anyone knows; the score and the
threshold are read from the detail when there is one.  The web pages and the
digest use :func:`human_verdict`; the message view lists the rules of a spam
verdict with :func:`spam_rules`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_NUMBER = r"(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"
_SCORE = re.compile(rf"(?:^|[\s;])score={_NUMBER}(?=[\s;]|$)")
_REQUIRED = re.compile(rf"(?:^|[\s;])required={_NUMBER}(?=[\s;]|$)")
_TESTS = re.compile(r"(?:^|[\s;])(?:tests|symbols)=(\S*)")
_SCORED_RULE = re.compile(rf"^([A-Za-z0-9_.-]+)\({_NUMBER}\)$")
_RULE = re.compile(r"^[A-Za-z0-9_.-]+$")
SPAM_ENGINES = ("spamassassin", "rspamd")
"""Scanner names whose detections are spam verdicts (``spamassassind``, ``rspamd``)."""
_LABELS = {"virus": "Virus", "spam": "Spam", "unscannable": "Unscannable", "banned": "Banned"}


def N_(message: str) -> str:  # noqa: N802 - gettext's name for "mark for the catalog, translate later"
    return message


_CATALOG_WORDS = (N_("Virus"), N_("Spam"), N_("Unscannable"), N_("Banned"), N_("Clean"), N_("Detected"))
"""The labels, for ``pybabel extract`` (``locale/babel.cfg``): the digest and the web translate them."""


@dataclass(frozen=True)
class SpamScore:
    score: float
    required: float


def spam_score(detail: str) -> SpamScore | None:
    """The score and the threshold of a spam engine's detail, or None."""
    score, required = _SCORE.search(detail or ""), _REQUIRED.search(detail or "")
    if score is None or required is None:
        return None
    return SpamScore(float(score.group(1)), float(required.group(1)))


def spam_rules(detail: str) -> list[tuple[str, float | None]]:
    """The rules (SpamAssassin's ``tests=``, rspamd's ``symbols=``) of a detail, with their points
    when the detail has them (rspamd's ``NAME(1.5)``); at most 200."""
    found = _TESTS.search(detail or "")
    if found is None:
        return []
    rules: list[tuple[str, float | None]] = []
    for part in found.group(1).split(",")[:200]:
        scored = _SCORED_RULE.match(part)
        if scored:
            rules.append((scored.group(1), float(scored.group(2))))
        elif _RULE.match(part):
            rules.append((part, None))
    return rules


def _is_spam(category: str, name: str, scanner: str) -> bool:
    lowered = scanner.lower()
    return category == "spam" or name.lower() == "spam" or any(engine in lowered for engine in SPAM_ENGINES)


def human_verdict(
    category: str,
    name: str,
    scanner: str = "",
    level: float = 0.0,
    detail: str = "",
    gettext: Callable[[str], str] | None = None,
) -> str:
    """One line for a person: ``Virus: Eicar-Test-Signature``, ``Spam, score 12.3 of 5.0``, ``Spam``,
    ``Banned: invoice.exe``, ``Clean``.  The scanner expression and the level are not shown: they
    are for the log (the message view shows them apart).  ``gettext`` translates the words
    (the catalogs of ``reporting/locale``); the virus or file name stays as the scanner gave it."""
    _ = gettext or str
    name = " ".join((name or "").split())[:200]
    category = (category or "").strip()
    if _is_spam(category, name, scanner):
        score = spam_score(detail)
        if score is None:
            return _("Spam")
        return _("Spam, score %(score)s of %(required)s") % {
            "score": f"{score.score:.1f}",
            "required": f"{score.required:.1f}",
        }
    label = _(_LABELS[category]) if category in _LABELS else category.replace("_", " ").capitalize()
    if not label:
        return name or (_("Clean") if level < 1.0 else _("Detected"))
    if name and name.lower() != category.lower():
        return f"{label}: {name}"
    return label
