"""stamp(): the Received and X-Mailsift headers with the scanners that ran, their versions and the time."""

from __future__ import annotations

import asyncio
import email
import email.policy
import email.utils
import re
from typing import Any

import pytest

from mailsift import const, drop, parsemail, regexp_scan, spamassassind
from mailsift.core.pipeline import Pipeline
from mailsift.errors import ConfigError
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Disposition, Result
from mailsift.message.rewrite import apply_edits
from mailsift.scanners.base import Scanner, Target
from mailsift.scanners.stamp import mailsift_version, stamp


class Versioned(Scanner):
    """A scanner with a version() (sync or async), counting how often it was asked."""

    def __init__(self, name: str, version: str, *, asynchronous: bool = False, fail: bool = False) -> None:
        self.name, self._version, self.asynchronous, self.fail = name, version, asynchronous, fail
        self.asked = 0

    async def scan(self, target: Target) -> Result:
        return Result(0.0, "", self.name)

    def version(self) -> Any:
        self.asked += 1
        if self.fail:
            raise RuntimeError("engine gone")

        async def later() -> str:
            return self._version

        return later() if self.asynchronous else self._version


class Hanging(Versioned):
    def version(self) -> Any:
        return asyncio.sleep(3600)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def mail(**envelope: Any) -> Mail:
    fields = {
        "sender": "alice@example.net",
        "recipients": ["bob@example.test"],
        "client_address": "192.0.2.7",
        "client_name": "mx.example.net",
        "helo": "mx.example.net",
        "queue_id": "4XyZ12",
        "protocol": "ESMTP",
    }
    fields.update(envelope)
    return Mail(Envelope(**fields), b"From: alice@example.net\r\nSubject: hi\r\n\r\nhello\r\n")


def _strip_comments(text: str) -> str:
    out, depth = [], 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            assert depth > 0, f"unbalanced comment in {text!r}"
            depth -= 1
        elif depth == 0:
            out.append(char)
    assert depth == 0, f"unbalanced comment in {text!r}"
    return "".join(out)


def check_received(value: str) -> dict[str, str]:
    """RFC 5322 section 3.6.7: tokens (comments allowed), ';', a date-time; returns the clauses."""
    unfolded = re.sub(r"\r?\n[ \t]+", " ", value)
    assert all(" " <= c <= "~" for c in unfolded), unfolded
    tokens, _, date = _strip_comments(unfolded).rpartition(";")
    assert email.utils.parsedate_to_datetime(date.strip()) is not None
    words = tokens.split()
    clauses = dict(zip(words[::2], words[1::2], strict=True))
    assert set(clauses) <= {"from", "by", "via", "with", "id", "for"}
    for word in words[1::2]:
        assert re.fullmatch(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\[\]:-]+", word), word
    return clauses


async def stamped(scanner: stamp, message: Mail) -> tuple[Any, email.message.Message]:
    decision = await Pipeline([scanner]).evaluate(message)
    out = apply_edits(message.raw, decision.headers, decision.subject_prefix)
    return decision, email.message_from_bytes(out, policy=email.policy.compat32)


async def test_received_and_descriptive_header_with_versions() -> None:
    clamish = Versioned("engine_a", "Engine 1.2/27500", asynchronous=True)
    other = Versioned("engine_b", "7.0 (beta)")
    scanner = stamp(clamish, other, regexp_scan([("Bad", "BADWORD")]), hostname="gw.example.test")
    decision, parsed = await stamped(scanner, mail())
    assert decision.disposition is Disposition.DELIVER
    received = parsed.get_all("Received")
    assert received is not None
    assert len(received) == 1
    clauses = check_received(received[0])
    assert clauses == {"from": "mx.example.net", "by": "gw.example.test", "with": "ESMTP", "id": "4XyZ12"}
    assert "(mx.example.net [192.0.2.7])" in received[0]
    assert f"(mailsift {mailsift_version()})" in received[0]
    assert "engine_a Engine 1.2/27500" in received[0]
    assert "engine_b 7.0 [beta]" in received[0]  # parentheses would end the comment
    assert f"regexp_scan {mailsift_version()}" in received[0]  # a built-in: mailsift's version
    assert re.search(r"; \d+\.\d{3} s\);", re.sub(r"\s+", " ", received[0]))
    descriptive = re.sub(r"\s+", " ", parsed["X-Mailsift"])
    expected = f"mailsift {mailsift_version()} on gw.example.test (Clear. engine_a: Engine 1.2/27500;"
    assert descriptive.startswith(expected)
    assert re.search(r"Processed in \d+\.\d{3} secs\)$", descriptive)
    assert list(parsed.keys())[:2] == ["Received", "X-Mailsift"]  # trace header on top


async def test_lines_stay_short_and_the_header_is_folded() -> None:
    scanner = stamp(*[Versioned(f"engine_{i}", "v" * 60) for i in range(3)], hostname="gw.example.test")
    decision, _ = await stamped(scanner, mail())
    out = apply_edits(b"Subject: x\r\n\r\nbody\r\n", decision.headers)
    assert all(len(line) <= 998 for line in out.split(b"\r\n"))
    assert out.startswith(b"Received: from mx.example.net (mx.example.net [192.0.2.7])\r\n\tby gw.example.test")


async def test_only_the_scanners_that_ran_are_listed() -> None:
    after = Versioned("never_run", "1")
    scanner = stamp(Versioned("first", "1"), drop(const(1.0, "Worm")), after, hostname="h.example")
    decision, _ = await stamped(scanner, mail())
    assert decision.disposition is Disposition.DROP
    received = next(h.value for h in decision.headers if h.name == "Received")
    assert "first 1" in received
    assert "const" in received
    assert "never_run" not in received
    assert after.asked == 0
    descriptive = next(h.value for h in decision.headers if h.name == "X-Mailsift")
    assert "(Worm." in descriptive


async def test_versions_are_cached_for_version_ttl() -> None:
    clock = Clock()
    engine = Versioned("engine", "1.0")
    scanner = stamp(engine, version_ttl=60, clock=clock, hostname="h.example")
    for _ in range(3):
        await stamped(scanner, mail())
    assert engine.asked == 1
    clock.now += 61
    await stamped(scanner, mail())
    assert engine.asked == 2


async def test_a_failing_or_hanging_version_is_unknown_and_never_fails_the_mail() -> None:
    scanner = stamp(
        Versioned("broken", "x", fail=True), Hanging("slow", "x"), version_timeout=0.05, hostname="h.example"
    )
    decision, parsed = await stamped(scanner, mail())
    assert decision.disposition is Disposition.DELIVER
    assert "broken unknown" in parsed["Received"]
    assert "slow unknown" in parsed["Received"]


async def test_external_engine_without_a_version_shows_its_name_only() -> None:
    scanner = stamp(const(0.0), hostname="h.example")
    assert await scanner.version_of(spamassassind(["127.0.0.1", 1])) == ""
    assert await scanner.version_of(const(0.0)) == mailsift_version()


async def test_odd_envelope_gives_a_valid_received() -> None:
    odd = mail(helo="bad helo (x)", client_name="", queue_id="id with space", protocol="E SMTP;")
    _decision, parsed = await stamped(stamp(const(0.0), header=None, hostname="h.example"), odd)
    clauses = check_received(parsed["Received"])
    assert clauses["from"] == "unknown"
    assert clauses["with"] == "ESMTP"
    assert re.fullmatch(r"[0-9a-f]{12}", clauses["id"])  # a generated id: the queue id was not an atom
    assert "X-Mailsift" not in parsed
    local = mail(client_address="", helo="", client_name="", queue_id="")
    _, parsed = await stamped(stamp(const(0.0), header=None, hostname="h.example"), local)
    assert "from" not in check_received(parsed["Received"])


async def test_received_false_keeps_only_the_descriptive_header() -> None:
    decision, parsed = await stamped(stamp(const(0.0), received=False, header="X-Scanned", hostname="h.x"), mail())
    assert [h.name for h in decision.headers] == ["X-Scanned"]
    assert "Received" not in parsed


async def test_under_parsemail_parts_are_not_stamped() -> None:
    message = Mail(
        Envelope(sender="a@b.c", recipients=["d@e.f"]),
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nx\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\ny\r\n--b--\r\n",
    )
    decision = await Pipeline([parsemail(stamp(const(0.0), hostname="h.x"))]).evaluate(message)
    assert decision.headers == ()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"received": "yes"}, "received must be True or False"),
        ({"header": "X Bad"}, "header must be a header name"),
        ({"header": "Received"}, "use received=True"),
        ({"received": False, "header": None}, "nothing to add"),
        ({"hostname": "bad host"}, "hostname must be a domain name"),
        ({"version_ttl": 0}, "version_ttl must be a positive"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        stamp(const(0.0), **options)
