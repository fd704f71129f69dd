"""Interscanners: parsemail, match_any, match_all, alternatives, nothing, recover, time_limit, cache."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest

from mailsift import (
    alternatives,
    cache,
    const,
    match_all,
    match_any,
    nothing,
    parsemail,
    recover,
    regexp_scan,
    string_scan,
    time_limit,
)
from mailsift.core.pipeline import Pipeline
from mailsift.errors import ConfigError, ScannerError, ScannerTimeout
from mailsift.message.mail import Mail
from mailsift.message.result import Disposition, Result
from mailsift.replies import SCANNER_TIMEOUT
from mailsift.scanners.base import MailTarget, Scanner, Target

EICAR_RULE = [("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")]

MakeMail = Callable[..., Mail]
Run = Callable[[Scanner, Mail], Any]


def eicar_attachment(eicar: bytes, *, filename: str = "eicar.com") -> str:
    """A two-part message with EICAR base64-encoded in the attachment (so not in the raw bytes)."""
    encoded = base64.b64encode(eicar).decode("ascii")
    return f"""\
From: sender@example.net
To: rcpt@example.org
Subject: see attachment
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: text/plain

Hello.
--b1
Content-Type: application/octet-stream
Content-Disposition: attachment; filename="{filename}"
Content-Transfer-Encoding: base64

{encoded}
--b1--
"""


# --------------------------------------------------------------------------- parsemail


async def test_parsemail_finds_base64_eicar_that_a_raw_scan_misses(make_mail: MakeMail, run: Run, eicar: bytes) -> None:
    mail = make_mail(eicar_attachment(eicar))
    assert eicar not in mail.raw  # only the base64 form is in the raw message

    raw_result = await run(regexp_scan(EICAR_RULE), mail)
    assert not raw_result.detected

    result = await run(parsemail(regexp_scan(EICAR_RULE)), mail)
    assert result.detected
    assert (result.name, result.scanner) == ("EICAR-Test", "regexp_scan")
    assert "part 2" in result.detail
    assert "eicar.com" in result.detail


async def test_parsemail_sees_decoded_parts_not_headers(make_mail: MakeMail, run: Run) -> None:
    mail = make_mail(
        "From: a@example.net\nX-Marker: needle-in-header\nMIME-Version: 1.0\n"
        "Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n"
        + base64.b64encode(b"decoded-needle").decode()
        + "\n"
    )
    header_rule = string_scan([("Header", "needle-in-header")])
    body_rule = string_scan([("Body", "decoded-needle")])
    assert (await run(header_rule, mail)).detected
    assert not (await run(parsemail(header_rule), mail)).detected
    assert not (await run(body_rule, mail)).detected
    assert (await run(parsemail(body_rule), mail)).detected


async def test_parsemail_runs_on_each_part_and_stops_at_the_first_detection(
    make_mail: MakeMail, run: Run, counting: Callable[..., Any]
) -> None:
    mail = make_mail(
        "From: a@example.net\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=XX\n\n"
        "--XX\nContent-Type: text/plain\n\nfirst clean\n"
        "--XX\nContent-Type: text/plain\n\nsecond BAD-ONE\n"
        "--XX\nContent-Type: text/plain\n\nthird BAD-TWO\n"
        "--XX--\n"
    )
    probe = counting(0.0, "")
    scanner = parsemail(probe, string_scan([("Bad.One", "BAD-ONE")]), string_scan([("Bad.Two", "BAD-TWO")]))
    result = await run(scanner, mail)
    assert (result.name, result.level) == ("Bad.One", 1.0)
    assert "part 2" in result.detail
    assert probe.calls == 2  # parts 1 and 2; part 3 never scanned
    assert [data.strip() for data in probe.seen] == [b"first clean", b"second BAD-ONE"]


async def test_parsemail_clean_returns_the_highest_level(make_mail: MakeMail, run: Run) -> None:
    mail = make_mail(
        "From: a@example.net\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=XX\n\n"
        "--XX\nContent-Type: text/plain\n\nlow\n--XX\nContent-Type: text/plain\n\nhigher\n--XX--\n"
    )
    scanner = parsemail(string_scan([("Hi", "higher")]) * const(0.7, "") + const(0.1, ""))
    result = await run(scanner, mail)
    assert result.level == pytest.approx(0.8)
    assert not result.detected


async def test_parsemail_looks_into_attached_messages_and_uuencode(make_mail: MakeMail, run: Run, eicar: bytes) -> None:
    import binascii

    inner = eicar_attachment(eicar, filename="inner.com")
    uu_lines = "".join(binascii.b2a_uu(eicar[i : i + 45]).decode() for i in range(0, len(eicar), 45))
    mail = make_mail(
        "From: a@example.net\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=OUT\n\n"
        f"--OUT\nContent-Type: text/plain\n\nsee below\nbegin 644 evil.com\n{uu_lines}`\nend\n"
        f"--OUT\nContent-Type: message/rfc822\n\n{inner}\n--OUT--\n"
    )
    scanner = parsemail(regexp_scan(EICAR_RULE))
    result = await run(scanner, mail)
    assert result.detected
    assert "part 1.uu1" in result.detail  # the uuencoded block comes first

    only_attached = make_mail(
        "From: a@example.net\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=OUT\n\n"
        f"--OUT\nContent-Type: text/plain\n\nclean\n--OUT\nContent-Type: message/rfc822\n\n{inner}\n--OUT--\n"
    )
    result = await run(scanner, only_attached)
    assert result.detected
    assert "part 2.2 (inner.com)" in result.detail


async def test_parsemail_needs_a_scanner() -> None:
    with pytest.raises(ConfigError, match="at least one scanner"):
        parsemail()


# --------------------------------------------------------------------------- match_any / match_all


async def test_match_any_returns_the_first_detection_and_stops(
    make_mail: MakeMail, run: Run, counting: Callable[..., Any]
) -> None:
    mail = make_mail("From: a@example.net\n\nbody\n")
    first, second, third = counting(0.4, ""), counting(1.0, "Second"), counting(1.0, "Third")
    result = await run(match_any(first, [second, third]), mail)  # lists are flattened, as in SAGATOR
    assert (result.level, result.name) == (1.0, "Second")
    assert (first.calls, second.calls, third.calls) == (1, 1, 0)


async def test_match_any_clean_gives_the_highest_level(make_mail: MakeMail, run: Run) -> None:
    mail = make_mail("From: a@example.net\n\nbody\n")
    result = await run(match_any(const(0.2, "a"), const(0.6, "b"), const(0.4, "c")), mail)
    assert (result.level, result.name) == (0.6, "b")


async def test_match_all_detects_only_when_all_detect(
    make_mail: MakeMail, run: Run, counting: Callable[..., Any]
) -> None:
    mail = make_mail("From: a@example.net\n\nbody\n")
    result = await run(match_all(const(2.0, "First"), const(1.5, "Second")), mail)
    assert (result.level, result.name, result.detected) == (1.5, "First", True)

    last = counting(1.0, "Last")
    result = await run(match_all(const(1.0, "First"), const(0.3, "Weak"), last), mail)
    assert (result.level, result.name, result.detected) == (0.3, "Weak", False)
    assert last.calls == 0  # stops at the first scanner that does not detect


# --------------------------------------------------------------------------- alternatives / nothing / recover


async def test_alternatives_uses_the_first_that_works(
    make_mail: MakeMail, run: Run, counting: Callable[..., Any], failing: Callable[..., Any]
) -> None:
    mail = make_mail("From: a@example.net\n\nbody\n")
    primary, backup = counting(1.0, "Primary"), counting(1.0, "Backup")
    assert (await run(alternatives(primary, backup), mail)).name == "Primary"
    assert backup.calls == 0

    down = failing()
    result = await run(alternatives(down, backup), mail)
    assert (result.name, down.calls, backup.calls) == ("Backup", 1, 1)


async def test_alternatives_falls_over_on_an_unexpected_exception(
    make_mail: MakeMail, run: Run, failing: Callable[..., Any]
) -> None:
    mail = make_mail("From: a@example.net\n\nbody\n")
    result = await run(alternatives(failing(KeyError("bug")), const(0.5, "Backup")), mail)
    assert result.name == "Backup"


async def test_alternatives_all_failing_is_an_error(make_mail: MakeMail, run: Run, failing: Callable[..., Any]) -> None:
    mail = make_mail("From: a@example.net\n\nbody\n")
    with pytest.raises(ScannerError, match=r"all alternatives failed: .*first down.*second down"):
        await run(alternatives(failing(ScannerError("first down")), failing(ScannerError("second down"))), mail)


async def test_nothing_finds_nothing(make_mail: MakeMail, run: Run) -> None:
    result = await run(nothing(), make_mail("From: a@example.net\n\nbody\n"))
    assert (result.level, result.name, result.detected) == (0.0, "", False)


async def test_recover_turns_an_error_into_the_configured_result(
    make_mail: MakeMail, run: Run, failing: Callable[..., Any]
) -> None:
    mail = make_mail("From: a@example.net\n\nbody\n")
    fail_open = await run(recover(failing()), mail)
    assert (fail_open.level, fail_open.name, fail_open.detected) == (0.0, "", False)
    assert "daemon down" in fail_open.detail

    fail_closed = await run(recover(failing(), level=1.0, virname="Scanner.Down"), mail)
    assert (fail_closed.level, fail_closed.name, fail_closed.detected) == (1.0, "Scanner.Down", True)

    passthrough = await run(recover(const(0.7, "Fine"), level=1.0, virname="Scanner.Down"), mail)
    assert (passthrough.level, passthrough.name) == (0.7, "Fine")


async def test_recover_in_the_pipeline_avoids_the_tempfail(make_mail: MakeMail, failing: Callable[..., Any]) -> None:
    mail = make_mail("From: a@example.net\n\nbody\n")
    assert (await Pipeline([failing()]).evaluate(mail)).disposition is Disposition.TEMPFAIL
    assert (await Pipeline([recover(failing())]).evaluate(mail)).disposition is Disposition.DELIVER


# --------------------------------------------------------------------------- time_limit


async def test_time_limit_times_out_a_slow_scanner(make_mail: MakeMail, run: Run, slow: Callable[..., Any]) -> None:
    mail = make_mail("From: a@example.net\n\nbody\n")
    with pytest.raises(ScannerTimeout, match=r"0\.05"):
        await run(time_limit(0.05, slow(5.0)), mail)


async def test_time_limit_lets_a_fast_scanner_answer(make_mail: MakeMail, run: Run, slow: Callable[..., Any]) -> None:
    mail = make_mail("From: a@example.net\n\nbody\n")
    result = await run(time_limit(5, slow(0.0, 1.0, "Quick")), mail)
    assert (result.level, result.name) == (1.0, "Quick")


async def test_time_limit_in_the_pipeline_is_a_tempfail_with_the_timeout_reply(
    make_mail: MakeMail, slow: Callable[..., Any]
) -> None:
    decision = await Pipeline([time_limit(0.05, slow(5.0))]).evaluate(make_mail("From: a@example.net\n\nbody\n"))
    assert decision.disposition is Disposition.TEMPFAIL
    assert decision.reply == SCANNER_TIMEOUT
    assert isinstance(decision.error, ScannerTimeout)


async def test_time_limit_timeout_can_be_recovered(make_mail: MakeMail, run: Run, slow: Callable[..., Any]) -> None:
    mail = make_mail("From: a@example.net\n\nbody\n")
    result = await run(recover(time_limit(0.05, slow(5.0)), level=1.0, virname="Too.Slow"), mail)
    assert (result.level, result.name) == (1.0, "Too.Slow")


@pytest.mark.parametrize("seconds", [0, -1, "5", None])
def test_time_limit_checks_its_seconds(seconds: Any) -> None:
    with pytest.raises(ConfigError, match="time_limit"):
        time_limit(seconds, nothing())


# --------------------------------------------------------------------------- cache


async def test_cache_hits_on_the_same_bytes(make_mail: MakeMail, run: Run, counting: Callable[..., Any]) -> None:
    inner = counting(1.0, "Cached")
    scanner = cache(inner)
    first = await run(scanner, make_mail(b"From: a@example.net\r\n\r\nsame\r\n"))
    second = await run(scanner, make_mail(b"From: a@example.net\r\n\r\nsame\r\n"))
    assert inner.calls == 1
    assert scanner.hits == 1
    assert second == first

    await run(scanner, make_mail(b"From: a@example.net\r\n\r\nother\r\n"))
    assert inner.calls == 2
    assert scanner.hits == 1


async def test_cache_is_a_bounded_lru(make_mail: MakeMail, run: Run, counting: Callable[..., Any]) -> None:
    inner = counting(0.0, "")
    scanner = cache(inner, size=2)
    a, b, c = (make_mail(f"From: a@example.net\n\n{body}\n") for body in "abc")
    for mail in (a, b, a, c):  # a is used again before c: b is the least recently used
        await run(scanner, mail)
    assert inner.calls == 3
    assert len(scanner._entries) == 2  # the bound
    await run(scanner, a)
    assert inner.calls == 3  # a was kept
    await run(scanner, b)
    assert inner.calls == 4  # b was evicted


class FailsOnce(Scanner):
    name = "fails_once"

    def __init__(self) -> None:
        self.calls = 0

    async def scan(self, target: Target) -> Result:
        self.calls += 1
        if self.calls == 1:
            raise ScannerError("temporary")
        return Result(0.0, "", self.name)


async def test_cache_does_not_keep_errors(make_mail: MakeMail) -> None:
    inner = FailsOnce()
    scanner = cache(inner)
    mail = make_mail("From: a@example.net\n\nbody\n")
    with pytest.raises(ScannerError, match="temporary"):
        await scanner.scan(MailTarget(mail))
    result = await scanner.scan(MailTarget(mail))
    assert result.scanner == "fails_once"
    assert (inner.calls, scanner.hits) == (2, 0)


async def test_cache_under_parsemail_keys_each_part(
    make_mail: MakeMail, run: Run, counting: Callable[..., Any]
) -> None:
    inner = counting(0.0, "")
    scanner = parsemail(cache(inner))
    body = (
        "From: a@example.net\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=XX\n\n"
        "--XX\nContent-Type: text/plain\n\nsame part\n--XX\nContent-Type: text/plain\n\nsame part\n--XX--\n"
    )
    await run(scanner, make_mail(body))
    assert inner.calls == 1  # the second, identical part is a hit


@pytest.mark.parametrize("size", [0, -5, 1.5])
def test_cache_checks_its_size(size: Any) -> None:
    with pytest.raises(ConfigError, match="cache: size"):
        cache(nothing(), size=size)


def test_interscanners_refuse_non_scanners() -> None:
    with pytest.raises(ConfigError, match="expected a scanner"):
        match_any(nothing(), "oops")
