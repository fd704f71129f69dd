"""The pipeline loop and the Decision it produces."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mailsift import add_header, const, modify_subject, nothing, quarantine
from mailsift.core.pipeline import Pipeline
from mailsift.errors import ConfigError, ScannerError, ScannerUnavailable
from mailsift.message.mail import Mail
from mailsift.message.result import CLEAN, AddHeader, Decision, Disposition, Result
from mailsift.replies import OK, SCANNER_FAILED

MakeMail = Callable[..., Mail]


@pytest.fixture
def mail(make_mail: MakeMail) -> Mail:
    return make_mail("From: a@example.net\nSubject: s\n\nbody\n")


async def test_the_first_detection_stops_evaluation(mail: Mail, counting: Callable[..., Any]) -> None:
    before, detecting, after = counting(0.3, "low"), counting(1.0, "Hit"), counting(1.0, "Later")
    decision = await Pipeline([before, detecting, after]).evaluate(mail)
    assert (before.calls, detecting.calls, after.calls) == (1, 1, 0)
    assert decision.result.name == "Hit"
    assert decision.disposition is Disposition.REJECT
    assert [r.name for r in decision.trail] == ["low", "Hit"]


async def test_every_scanner_runs_when_nothing_is_detected(mail: Mail, counting: Callable[..., Any]) -> None:
    scanners = [counting(0.2, "a"), counting(0.7, "b"), counting(0.1, "c")]
    decision = await Pipeline(scanners).evaluate(mail)
    assert [s.calls for s in scanners] == [1, 1, 1]
    assert decision.disposition is Disposition.DELIVER
    assert (decision.result.level, decision.result.name) == (0.7, "b")  # the highest clean level


async def test_an_empty_pipeline_delivers(mail: Mail) -> None:
    decision = await Pipeline([]).evaluate(mail)
    assert decision.disposition is Disposition.DELIVER
    assert decision.result == CLEAN
    assert decision.reply == OK


async def test_a_scanner_error_is_a_tempfail(
    mail: Mail, failing: Callable[..., Any], counting: Callable[..., Any]
) -> None:
    after = counting(1.0, "Never")
    decision = await Pipeline([const(0.2, "ok"), failing(), after]).evaluate(mail)
    assert decision.disposition is Disposition.TEMPFAIL
    assert decision.reply == SCANNER_FAILED
    assert decision.reply.code == 451
    assert decision.reply.is_transient
    assert isinstance(decision.error, ScannerError)
    assert "daemon down" in decision.result.detail
    assert [r.name for r in decision.trail] == ["ok"]
    assert after.calls == 0
    assert not decision.delivers


async def test_a_subclass_error_keeps_its_reply(mail: Mail, failing: Callable[..., Any]) -> None:
    error = ScannerUnavailable("clamd: connection refused")
    decision = await Pipeline([failing(error)]).evaluate(mail)
    assert decision.error is error
    assert decision.reply.code == 451


@pytest.mark.parametrize("error", [KeyError("missing"), ZeroDivisionError("oops"), RuntimeError("bug")])
async def test_an_unexpected_exception_is_a_tempfail_not_a_crash(
    mail: Mail, failing: Callable[..., Any], error: Exception
) -> None:
    decision = await Pipeline([failing(error)]).evaluate(mail)
    assert decision.disposition is Disposition.TEMPFAIL
    assert decision.reply.code == 451
    assert isinstance(decision.error, ScannerError)
    assert type(error).__name__ in decision.error.message
    assert decision.error.__cause__ is error


async def test_a_mailsift_error_of_another_kind_becomes_a_scanner_error(
    mail: Mail, failing: Callable[..., Any]
) -> None:
    decision = await Pipeline([failing(ConfigError("bad setting"))]).evaluate(mail)
    assert decision.disposition is Disposition.TEMPFAIL
    assert isinstance(decision.error, ScannerError)
    assert "bad setting" in decision.error.message


async def test_an_error_inside_an_expression_is_a_tempfail(mail: Mail, failing: Callable[..., Any]) -> None:
    decision = await Pipeline([const(1.0, "x") + failing(KeyError("k"))]).evaluate(mail)
    assert decision.disposition is Disposition.TEMPFAIL


async def test_edits_are_collected_from_the_whole_trail(mail: Mail) -> None:
    decision = await Pipeline(
        [
            add_header("X-Checked", "%S", const(0.1, "pre")),
            modify_subject("[tag] ", const(0.2, "tagged")),
            quarantine("spam", const(1.0, "SPAM")),
            add_header("X-Never", "x", const(0.1, "never")),
        ]
    ).evaluate(mail)
    assert decision.disposition is Disposition.QUARANTINE
    assert decision.headers == (AddHeader("X-Checked", "const"),)
    assert decision.subject_prefix == "[tag] "
    assert decision.quarantine == ("spam",)


def test_from_results_picks_the_last_detection() -> None:
    decision = Decision.from_results([Result(0.5, "a"), Result(2.0, "b", "s")])
    assert decision.result.name == "b"
    assert decision.disposition is Disposition.REJECT
    assert decision.reply.text == "Rejected by content filter: b (s)"


def test_reject_text_without_a_name_or_scanner() -> None:
    decision = Decision.from_results([Result(1.0)])
    assert decision.reply.text == "Rejected by content filter: policy violation"


def test_tempfail_decision() -> None:
    error = ScannerError("x failed")
    decision = Decision.tempfail(error, [Result(0.1, "a")])
    assert decision.disposition is Disposition.TEMPFAIL
    assert decision.result.name == "ScannerError"
    assert decision.result.detail == "x failed"
    assert decision.reply == SCANNER_FAILED
    assert decision.trail == (Result(0.1, "a"),)


def test_pipeline_tree() -> None:
    pipeline = Pipeline([quarantine("virus", const(1.0, "V") | nothing()), nothing()])
    assert pipeline.tree() == [
        "quarantine('virus')",
        "  (|)",
        "    const(1.0, 'V')",
        "    nothing",
        "nothing",
    ]
