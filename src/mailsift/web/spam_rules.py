"""The spam rule table of the message view: each rule with its points and, where known, its description.

The rule names and points come from the verdict's detail in the quarantine
file (``score=12.3 required=5 points=2.5,-0.1 tests=A,B`` from
``spamassassind``'s ``REPORT``; rspamd's ``symbols=A(1.5),...``).  A
SpamAssassin detail without ``points=`` (``report=False``, or a message
quarantined before points were kept) gives the names only.  Descriptions are
read from the message's own ``X-Spam-Report`` header when there is one (a
``spamassassind`` header action added it, or an earlier SpamAssassin): its
``pts rule description`` lines.  Both are bounded: at most
:data:`MAX_RULES` rules, descriptions cut at :data:`MAX_DESCRIPTION` characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from mailsift.reporting.verdicts import spam_rules

MAX_RULES = 200
MAX_DESCRIPTION = 200
_POINTS = re.compile(r"(?:^|[\s;])points=(\S*)")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
_REPORT_LINE = re.compile(r"^\s*\*?\s*(-?\d+(?:\.\d+)?)\s+([A-Za-z0-9_.-]+)\s+(\S.*)$")


@dataclass(frozen=True)
class Rule:
    name: str
    points: float | None
    description: str


def _points(detail: str) -> list[float | None]:
    found = _POINTS.search(detail or "")
    if found is None:
        return []
    return [float(part) if _NUMBER.fullmatch(part) else None for part in found.group(1).split(",")[:MAX_RULES]]


def report_descriptions(reports: Iterable[str]) -> dict[str, str]:
    """Rule name → description, from ``X-Spam-Report`` header values (folded or not)."""
    found: dict[str, str] = {}
    for report in reports:
        for line in report.replace("\r", "").split("\n")[: MAX_RULES * 4]:
            match = _REPORT_LINE.match(line)
            if match and len(found) < MAX_RULES:
                found.setdefault(match.group(2), " ".join(match.group(3).split())[:MAX_DESCRIPTION])
    return found


def rule_rows(detail: str, headers: Iterable[tuple[str, str]] = ()) -> list[Rule]:
    """The rows of the message view's rule table (empty without rules in the detail)."""
    rules = spam_rules(detail)[:MAX_RULES]
    if not rules:
        return []
    points = _points(detail)
    reports = [value for name, value in headers if name.lower() == "x-spam-report"]
    descriptions = report_descriptions(reports) if reports else {}
    rows = []
    for index, (name, known) in enumerate(rules):
        value = known if known is not None else (points[index] if index < len(points) else None)
        rows.append(Rule(name, value, descriptions.get(name, "")))
    return rows
