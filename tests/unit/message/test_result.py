"""SAGATOR's operator tables (reference/sagator-readme.txt §4), cell by cell.

Each table cell is one parametrized case, checked twice: on the pure function
:func:`mailsift.message.result.combine` and on Python operators between scanner
objects, evaluated with ``await scanner.scan(MailTarget(mail))``.

Table 1 (``+ - * / | &``), S1/S2 = status of the left/right scanner::

    S1  S2 |  +      -      *      /      |    &
    OK  OK | L1+L2  L1-L2  L1*L2  L1/L2  L1   (1)
    F   OK | Fail   Fail   Fail   Fail   L2   Fail
    OK  F  | Fail   Fail   Fail   Fail   L1   Fail
    F   F  | Fail   Fail   Fail   Fail   Fail Fail

    (1) if L1 >= 1.0: L1*L2, else 0.0

Table 2 (comparisons; ``*`` = 0.0 and the virus name is cleaned)::

              <     >     ==    <=    >=    !=
    L1 < L2 | 1.0   0.0*  0.0*  1.0   0.0*  1.0
    L1 = L2 | 0.0*  0.0*  1.0   1.0   1.0   0.0*
    L1 > L2 | 0.0*  1.0   0.0*  0.0*  1.0   1.0
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import pytest

from mailsift import Result, const
from mailsift.core.pipeline import Pipeline
from mailsift.errors import ScannerError
from mailsift.message.mail import Mail
from mailsift.message.result import OPERATORS, AddHeader, Disposition, combine
from mailsift.scanners.base import MailTarget, Operation, Scanner

PYTHON_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "|": operator.or_,
    "&": operator.and_,
    "<": operator.lt,
    ">": operator.gt,
    "==": operator.eq,
    "<=": operator.le,
    ">=": operator.ge,
    "!=": operator.ne,
}

FAIL = "Fail"
L1, L2 = 2.0, 0.5  # the levels of the OK,OK row of table 1 (L1 >= 1.0)

# Table 1: operator -> {(S1, S2): expected}; an expected level, or "L1"/"L2" (that
# side's result passed through, name included), or FAIL.
TABLE_1: dict[str, dict[tuple[str, str], float | str]] = {
    "+": {("OK", "OK"): L1 + L2, ("F", "OK"): FAIL, ("OK", "F"): FAIL, ("F", "F"): FAIL},
    "-": {("OK", "OK"): L1 - L2, ("F", "OK"): FAIL, ("OK", "F"): FAIL, ("F", "F"): FAIL},
    "*": {("OK", "OK"): L1 * L2, ("F", "OK"): FAIL, ("OK", "F"): FAIL, ("F", "F"): FAIL},
    "/": {("OK", "OK"): L1 / L2, ("F", "OK"): FAIL, ("OK", "F"): FAIL, ("F", "F"): FAIL},
    "|": {("OK", "OK"): "L1", ("F", "OK"): "L2", ("OK", "F"): "L1", ("F", "F"): FAIL},
    "&": {("OK", "OK"): L1 * L2, ("F", "OK"): FAIL, ("OK", "F"): FAIL, ("F", "F"): FAIL},
}

# Table 2: (row, operator) -> (level, name cleaned?)
LESS, EQUAL, GREATER = "L1<L2", "L1=L2", "L1>L2"
ROW_LEVELS = {LESS: (0.5, 2.0), EQUAL: (1.0, 1.0), GREATER: (2.0, 0.5)}
TRUE, FALSE_CLEANED = (1.0, False), (0.0, True)
TABLE_2: dict[str, dict[str, tuple[float, bool]]] = {
    LESS: {"<": TRUE, ">": FALSE_CLEANED, "==": FALSE_CLEANED, "<=": TRUE, ">=": FALSE_CLEANED, "!=": TRUE},
    EQUAL: {"<": FALSE_CLEANED, ">": FALSE_CLEANED, "==": TRUE, "<=": TRUE, ">=": TRUE, "!=": FALSE_CLEANED},
    GREATER: {"<": FALSE_CLEANED, ">": TRUE, "==": FALSE_CLEANED, "<=": FALSE_CLEANED, ">=": TRUE, "!=": TRUE},
}

TABLE_1_CELLS = [
    pytest.param(op, s1, s2, expected, id=f"{op}-{s1},{s2}")
    for op, row in TABLE_1.items()
    for (s1, s2), expected in row.items()
]
TABLE_2_CELLS = [
    pytest.param(op, row, *cell, id=f"{row}-{op}") for row, cells in TABLE_2.items() for op, cell in cells.items()
]


class Broken(Scanner):
    """A scanner that always fails (the "F" status of the tables)."""

    name = "broken"

    def __init__(self, message: str) -> None:
        self.message = message

    async def scan(self, target: MailTarget) -> Result:
        raise ScannerError(self.message)


@pytest.fixture
def mail(make_mail: Callable[..., Mail]) -> Mail:
    return make_mail("From: a@example.net\nSubject: operators\n\nbody\n")


def test_the_tables_cover_every_operator() -> None:
    assert set(TABLE_1) | set(next(iter(TABLE_2.values()))) == set(OPERATORS) == set(PYTHON_OPERATORS)
    assert len(TABLE_1_CELLS) == 6 * 4
    assert len(TABLE_2_CELLS) == 6 * 3


# --------------------------------------------------------------------------- table 1, pure function


def _outcome(status: str, level: float, name: str) -> Result | ScannerError:
    return Result(level, name, f"s{name}") if status == "OK" else ScannerError(f"{name} failed")


@pytest.mark.parametrize(("op", "s1", "s2", "expected"), TABLE_1_CELLS)
def test_table_1_combine(op: str, s1: str, s2: str, expected: float | str) -> None:
    left, right = _outcome(s1, L1, "A"), _outcome(s2, L2, "B")
    if expected == FAIL:
        with pytest.raises(ScannerError) as failure:
            combine(op, left, right)
        # The error raised is the failing operand's own (the left one when both failed).
        assert failure.value is (left if isinstance(left, ScannerError) else right)
        return
    result = combine(op, left, right)
    if expected == "L1":
        assert result is left
    elif expected == "L2":
        assert result is right
    else:
        assert result.level == pytest.approx(expected)
        assert result.name == "A"  # no "*" in table 1: the name is kept
        assert result.scanner == f"sA{op}sB"


# --------------------------------------------------------------------------- table 1, scanner objects


def _scanner(status: str, level: float, name: str) -> Scanner:
    return const(level, name) if status == "OK" else Broken(f"{name} failed")


@pytest.mark.parametrize(("op", "s1", "s2", "expected"), TABLE_1_CELLS)
async def test_table_1_scanner_operators(op: str, s1: str, s2: str, expected: float | str, mail: Mail) -> None:
    expression = PYTHON_OPERATORS[op](_scanner(s1, L1, "A"), _scanner(s2, L2, "B"))
    assert isinstance(expression, Operation)
    assert expression.op == op
    if expected == FAIL:
        with pytest.raises(ScannerError, match="A failed" if s1 == "F" else "B failed"):
            await expression.scan(MailTarget(mail))
        return
    result = await expression.scan(MailTarget(mail))
    if expected == "L1":
        assert (result.level, result.name, result.scanner) == (L1, "A", "const")
    elif expected == "L2":
        assert (result.level, result.name, result.scanner) == (L2, "B", "const")
    else:
        assert result.level == pytest.approx(expected)
        assert result.name == "A"


# Footnote (1) of table 1: "&" gives 0.0 when L1 < 1.0, whatever L2 is.
AND_CASES = [
    pytest.param(2.0, 0.5, 1.0, id="L1>=1:L1*L2"),
    pytest.param(1.0, 3.0, 3.0, id="L1=1:L1*L2"),
    pytest.param(0.99, 5.0, 0.0, id="L1<1:0.0"),
    pytest.param(0.0, 2.0, 0.0, id="L1=0:0.0"),
]


@pytest.mark.parametrize(("left", "right", "expected"), AND_CASES)
async def test_and_footnote(left: float, right: float, expected: float, mail: Mail) -> None:
    assert combine("&", Result(left, "A"), Result(right, "B")).level == pytest.approx(expected)
    result = await (const(left, "A") & const(right, "B")).scan(MailTarget(mail))
    assert result.level == pytest.approx(expected)
    # The table does not mark this 0.0 with "*"; mailsift still clears the name of a
    # 0.0 "&" so that a non-detection carries no virus name (a documented choice).
    assert result.name == ("A" if expected else "")


async def test_and_with_a_low_left_side_still_fails_when_the_right_side_fails(mail: Mail) -> None:
    # Table 1 row "OK F" for "&" is Fail, even when L1 < 1.0 would make the level 0.0.
    with pytest.raises(ScannerError, match="B failed"):
        await (const(0.2, "A") & Broken("B failed")).scan(MailTarget(mail))


# --------------------------------------------------------------------------- table 2


@pytest.mark.parametrize(("op", "row", "level", "cleaned"), TABLE_2_CELLS)
def test_table_2_combine(op: str, row: str, level: float, cleaned: bool) -> None:
    l1, l2 = ROW_LEVELS[row]
    result = combine(op, Result(l1, "A", "sA"), Result(l2, "B", "sB"))
    assert result.level == level
    assert result.name == ("" if cleaned else "A")


@pytest.mark.parametrize(("op", "row", "level", "cleaned"), TABLE_2_CELLS)
async def test_table_2_scanner_operators(op: str, row: str, level: float, cleaned: bool, mail: Mail) -> None:
    l1, l2 = ROW_LEVELS[row]
    expression = PYTHON_OPERATORS[op](const(l1, "A"), const(l2, "B"))
    assert isinstance(expression, Operation)
    result = await expression.scan(MailTarget(mail))
    assert result.level == level
    assert result.name == ("" if cleaned else "A")


@pytest.mark.parametrize("op", list(TABLE_2[LESS]))
@pytest.mark.parametrize(("s1", "s2"), [("F", "OK"), ("OK", "F"), ("F", "F")])
async def test_comparisons_fail_when_a_side_fails(op: str, s1: str, s2: str, mail: Mail) -> None:
    with pytest.raises(ScannerError):
        combine(op, _outcome(s1, 1.0, "A"), _outcome(s2, 1.0, "B"))
    with pytest.raises(ScannerError):
        await PYTHON_OPERATORS[op](_scanner(s1, 1.0, "A"), _scanner(s2, 1.0, "B")).scan(MailTarget(mail))


# --------------------------------------------------------------------------- edges


async def test_division_by_zero_fails(mail: Mail) -> None:
    with pytest.raises(ScannerError, match="division by zero"):
        combine("/", Result(1.0, "A"), Result(0.0, "B"))
    with pytest.raises(ScannerError, match="division by zero"):
        await (const(1.0, "A") / const(0.0, "B")).scan(MailTarget(mail))


async def test_division_by_zero_in_the_pipeline_is_a_tempfail(mail: Mail) -> None:
    decision = await Pipeline([const(1.0, "A") / const(0.0, "B")]).evaluate(mail)
    assert decision.disposition is Disposition.TEMPFAIL
    assert decision.reply.code == 451


def test_unknown_operator() -> None:
    with pytest.raises(ValueError, match="unknown operator"):
        combine("%", Result(1.0), Result(1.0))


async def test_or_does_not_run_the_fallback_when_the_left_side_works(
    mail: Mail, counting: Callable[..., Scanner]
) -> None:
    fallback = counting(1.0, "Fallback")
    result = await (const(0.0, "") | fallback).scan(MailTarget(mail))
    assert result.level == 0.0
    assert fallback.calls == 0


async def test_or_falls_back_when_the_left_side_fails(mail: Mail, counting: Callable[..., Scanner]) -> None:
    fallback = counting(1.0, "Fallback")
    result = await (Broken("down") | fallback).scan(MailTarget(mail))
    assert (result.level, result.name) == (1.0, "Fallback")
    assert fallback.calls == 1


async def test_expressions_nest(mail: Mail) -> None:
    # (0.6 + 0.6) >= 1.0 -> 1.0; the whole is a detection named after the left-most name.
    result = await ((const(0.6, "Half") + const(0.6, "Other")) >= const(1.0, "One")).scan(MailTarget(mail))
    assert (result.level, result.name) == (1.0, "Half")
    assert result.detected


def test_actions_of_both_sides_are_kept() -> None:
    left = Result(1.0, "A").with_actions(AddHeader("X-A", "1"))
    right = Result(1.0, "B").with_actions(AddHeader("X-B", "2"))
    assert combine("+", left, right).actions == (AddHeader("X-A", "1"), AddHeader("X-B", "2"))


def test_a_scanner_and_a_number_do_not_combine() -> None:
    with pytest.raises(TypeError):
        const(1.0) + 1.0
