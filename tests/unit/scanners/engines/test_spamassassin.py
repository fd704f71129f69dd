"""``spamassassind``'s SPAMC client against :class:`mailsift.testing.FakeSpamd`, for
what a real spamd will not do on demand: be down, hang, answer garbage or cut
its answer short.

The fake speaks the protocol's framing (request head, Content-length body) and
answers whatever bytes a test scripts; it records every request.  The real
spamd tests are in ``tests/engines/test_spamd.py``; the edge cases every engine
shares (unreachable, timeout, oversize) run through ``tests/helpers/engines.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import pytest

from mailsift.errors import ConfigError, ScannerError, ScannerTimeout, ScannerUnavailable
from mailsift.message.mail import Mail
from mailsift.scanners.base import MailTarget, evaluate
from mailsift.scanners.engines.common import SpamResult
from mailsift.scanners.engines.spamassassin import _MAX_ANSWER, MAX_RULES, report_rules, report_symbols, spamassassind
from mailsift.testing import FakeSpamd
from tests.helpers import engines

MESSAGE = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nhello\r\n"

REPORT = """\
Spam detection software, running on the system "vm",
has identified this incoming email as possible spam.

Content preview:  Dear friend, meet us on
   12 Feb 2024 HELLO at noon [...]

Content analysis details:   (12.3 points, 5.0 required)

 pts rule name              description
---- ---------------------- --------------------------------------------------
 2.5 FAKE_RULE_ONE          One rule
                            continued description
-0.1 T_FAKE_NEGATIVE        A negative rule
 9.9 FAKE_LONGER_THAN_THE_COLUMN Rule with a long name
"""


def answer(spam: str = "True ; 12.3 / 5.0", body: str = REPORT, code: str = "0 EX_OK") -> bytes:
    data = body.encode()
    return f"SPAMD/1.1 {code}\r\nContent-length: {len(data)}\r\nSpam: {spam}\r\n\r\n".encode() + data


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeSpamd, tuple[str, int]]]:
    async with FakeSpamd(reply=answer()) as spamd:
        address = spamd.address
        assert isinstance(address, tuple)
        yield spamd, address


async def scan(scanner: spamassassind, data: bytes = MESSAGE) -> SpamResult:
    result = await scanner.scan(MailTarget(Mail(data=data)))
    assert isinstance(result, SpamResult)
    return result


# --------------------------------------------------------------------------- the good path


async def test_request_is_spamc_1_5_with_length_user_and_the_message(fake: tuple[FakeSpamd, tuple[str, int]]) -> None:
    spamd, address = fake
    await scan(spamassassind(address, "alice"))
    ((head, body),) = spamd.requests
    assert head == f"REPORT SPAMC/1.5\r\nContent-length: {len(MESSAGE)}\r\nUser: alice\r\n\r\n".encode()
    assert body == MESSAGE


async def test_symbols_verb_without_user(fake: tuple[FakeSpamd, tuple[str, int]]) -> None:
    spamd, address = fake
    spamd.reply = answer(body="RULE_A,RULE_B")
    result = await scan(spamassassind(address, report=False))
    ((head, _),) = spamd.requests
    assert head.startswith(b"SYMBOLS SPAMC/1.5\r\n")
    assert b"User:" not in head
    assert result.symbols == ("RULE_A", "RULE_B")
    assert result.report == ""


async def test_level_is_score_over_required(fake: tuple[FakeSpamd, tuple[str, int]]) -> None:
    _, address = fake
    result = await scan(spamassassind(address))
    assert result.level == pytest.approx(12.3 / 5.0)
    assert round(result.level, 2) == 2.46
    assert (result.score, result.required) == (12.3, 5.0)
    assert result.detected
    assert result.name == "Spam"
    assert result.symbols == ("FAKE_RULE_ONE", "T_FAKE_NEGATIVE", "FAKE_LONGER_THAN_THE_COLUMN")
    assert result.detail == (  # the points of each rule, from the report's table, in the order of tests=
        "score=12.3 required=5 points=2.5,-0.1,9.9 tests=FAKE_RULE_ONE,T_FAKE_NEGATIVE,FAKE_LONGER_THAN_THE_COLUMN"
    )
    assert result.report == REPORT


@pytest.mark.parametrize(
    ("header", "level", "name"),
    [
        ("False ; 2.5 / 5.0", 0.5, ""),
        ("False ; -1.5 / 5.0", -0.3, ""),
        ("True ; 5.0 / 5.0", 1.0, "Junk"),
        ("True ; 3.0 / 0.0", 1.0, "Junk"),  # a zero threshold: spamd's own verdict
        ("False ; 3.0 / 0.0", 0.0, ""),
    ],
)
async def test_levels_and_names(fake: tuple[FakeSpamd, tuple[str, int]], header: str, level: float, name: str) -> None:
    spamd, address = fake
    spamd.reply = answer(spam=header, body="")
    result = await scan(spamassassind(address, virname="Junk"))
    assert result.level == pytest.approx(level)
    assert result.name == name


async def test_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "spamd.sock")
    async with FakeSpamd(path, reply=answer()) as spamd:
        assert spamd.address == path
        result = await scan(spamassassind(path))
    assert result.detected
    assert len(spamd.requests) == 1


async def test_over_max_size_is_not_sent(fake: tuple[FakeSpamd, tuple[str, int]]) -> None:
    spamd, address = fake
    result = await scan(spamassassind(address, max_size=len(MESSAGE) - 1))
    assert (result.level, result.name) == (0.0, "")
    assert result.detail.startswith("not checked: over max_size")
    assert spamd.connections == 0
    assert (await scan(spamassassind(address, max_size=len(MESSAGE)))).detected


def test_default_max_size_is_spamcs() -> None:
    assert spamassassind().max_size == 512_000


def test_report_symbols_ignores_the_content_preview_and_a_missing_table() -> None:
    assert report_symbols(REPORT) == ("FAKE_RULE_ONE", "T_FAKE_NEGATIVE", "FAKE_LONGER_THAN_THE_COLUMN")
    assert report_symbols(REPORT.replace("\n", "\r\n")) == report_symbols(REPORT)
    assert report_symbols("Content preview: 12 Feb 2024\n") == ()
    assert report_symbols("") == ()


# --------------------------------------------------------------------------- failures -> tempfail


async def test_spamd_down_is_unavailable() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(ScannerUnavailable, match="cannot connect"):
        await scan(spamassassind(("127.0.0.1", port)))


async def test_missing_unix_socket_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ScannerUnavailable):
        await scan(spamassassind(str(tmp_path / "nothing.sock")))


async def test_hanging_spamd_times_out(fake: tuple[FakeSpamd, tuple[str, int]]) -> None:
    spamd, address = fake
    spamd.hang = True
    with pytest.raises(ScannerTimeout, match="no answer"):
        await scan(spamassassind(address, timeout=0.2))
    assert len(spamd.requests) == 1


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (b"", "without an answer"),
        (b"HTTP/1.1 200 OK\r\n\r\n", "malformed answer"),
        (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n", "without a valid Spam header"),
        (b"SPAMD/1.1 0 EX_OK\r\nSpam: Maybe ; 1 / 5\r\n\r\n", "without a valid Spam header"),
        (b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1e9 / 5.0\r\n\r\n", "without a valid Spam header"),
        (b"SPAMD/1.1 0 EX_OK\r\nSpam True\r\n\r\n", "malformed header line"),
        (b"SPAMD/1.0 76 Bad header line: (Content-Length mismatch)\r\n", "answered 76 Bad header line"),
        (b"SPAMD/1.1 74 EX_IOERR\r\n\r\n", "answered 74 EX_IOERR"),
        (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 100\r\nSpam: True ; 1.0 / 5.0\r\n\r\nshort", "cut short"),
        (b"SPAMD/1.1 0 EX_OK\r\nContent-length: -3\r\nSpam: True ; 1.0 / 5.0\r\n\r\n", "bad Content-length"),
        (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 99999999999\r\nSpam: True ; 1.0 / 5.0\r\n\r\n", "bad Content-length"),
        (b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1.0 / 5.0\r\n", "cut short"),
        (b"SPAMD/1.1 0 EX_OK\r\nX: " + b"y" * 100_000, "over 65536 bytes"),
    ],
)
async def test_malformed_answers_are_scanner_errors(
    fake: tuple[FakeSpamd, tuple[str, int]], reply: bytes, match: str
) -> None:
    spamd, address = fake
    spamd.reply = reply
    with pytest.raises(ScannerError, match=match):
        await scan(spamassassind(address))


async def test_answer_without_content_length_is_read_to_the_end(fake: tuple[FakeSpamd, tuple[str, int]]) -> None:
    spamd, address = fake
    spamd.reply = b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 1.0 / 5.0\r\n\r\nRULE_X"
    result = await scan(spamassassind(address, report=False))
    assert result.symbols == ("RULE_X",)
    assert result.level == pytest.approx(0.2)


async def test_errors_become_tempfail_through_evaluate() -> None:
    with pytest.raises(ScannerUnavailable) as caught:
        await evaluate(spamassassind(("127.0.0.1", 1)), MailTarget(Mail(data=MESSAGE)))
    assert caught.value.reply.code // 100 == 4


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs",
    [
        {"address": ("127.0.0.1", 0)},
        {"address": ("127.0.0.1", 70000)},
        {"address": ("127.0.0.1", "783")},
        {"address": ("", 783)},
        {"address": ["127.0.0.1"]},
        {"address": ""},
        {"address": 783},
        {"user": "two words"},
        {"user": "evil\r\nUser: root"},
        {"user": ""},
        {"max_size": 0},
        {"max_size": 1.5},
        {"max_size": True},
        {"timeout": 0},
        {"timeout": float("nan")},
        {"report": "yes"},
        {"virname": ""},
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        spamassassind(**kwargs)  # type: ignore[arg-type]


def test_sagator_address_forms_and_describe() -> None:
    assert spamassassind(["127.0.0.1", 783]).address == ("127.0.0.1", 783)
    assert spamassassind("/run/spamd.sock").address == "/run/spamd.sock"
    assert spamassassind(["localhost", 783], "bob").describe() == (
        "spamassassind(localhost:783, user='bob', max_size=512000, REPORT)"
    )


# --------------------------------------------------------------------------- the edge cases every engine shares


async def test_edge_unreachable_unix_socket(tmp_path: Path) -> None:
    await engines.check_unreachable(spamassassind(str(tmp_path / "no-such.sock")), "spamassassind")


async def test_edge_unreachable_tcp_port() -> None:
    scanner = spamassassind(("127.0.0.1", engines.refused_port()))
    error = await engines.check_unreachable(scanner, "spamassassind")
    assert "Connection refused" in error.message


async def test_edge_timeout() -> None:
    async with FakeSpamd(hang=True) as fake:
        await engines.check_timeout(spamassassind(fake.address, timeout=engines.TIMEOUT), "spamassassind")
        assert len(fake.requests) == 2


async def test_edge_oversize_is_not_checked() -> None:
    async with FakeSpamd() as fake:
        scanner = spamassassind(fake.address, max_size=1000)
        await engines.check_oversize(scanner, 1000, lambda: len(fake.requests), "not checked")


# --------------------------------------------------------------------------- the fake itself


async def test_answer_in_pieces_and_a_dropped_connection() -> None:
    async with FakeSpamd(reply=answer(), split=True) as fake:
        assert (await scan(spamassassind(fake.address))).symbols[0] == "FAKE_RULE_ONE"
        fake.drop = True
        with pytest.raises(ScannerError, match="without an answer"):
            await scan(spamassassind(fake.address))


# --------------------------------------------------------------------------- protocol edges (issue 11)


@pytest.mark.parametrize(
    "size",
    [0, 1, 65535, 65536, 65537, 2 * 65536 + 1],  # empty, one byte, the stream buffer's 64 KiB edges
)
async def test_request_sizes(fake: tuple[FakeSpamd, tuple[str, int]], size: int) -> None:
    """Empty data is ``Content-length: 0`` and nothing else; every size arrives exactly."""
    spamd, address = fake
    data = (MESSAGE + b"x" * size)[:size]
    assert (await scan(spamassassind(address), data)).detected
    ((head, body),) = spamd.requests
    assert head == f"REPORT SPAMC/1.5\r\nContent-length: {size}\r\n\r\n".encode()
    assert body == data


@pytest.mark.parametrize("extra", [-1, 0])
async def test_answer_body_at_its_bound(fake: tuple[FakeSpamd, tuple[str, int]], extra: int) -> None:
    spamd, address = fake
    body = "R" * (_MAX_ANSWER + extra)
    spamd.reply = answer(spam="False ; 1.0 / 5.0", body=body)
    result = await scan(spamassassind(address, report=False))
    assert result.symbols == (body,)


async def test_answer_body_over_its_bound(fake: tuple[FakeSpamd, tuple[str, int]]) -> None:
    spamd, address = fake
    spamd.reply = answer(spam="False ; 1.0 / 5.0", body="R" * (_MAX_ANSWER + 1))
    with pytest.raises(ScannerError, match="bad Content-length"):
        await scan(spamassassind(address, report=False))


async def test_answer_byte_by_byte(fake: tuple[FakeSpamd, tuple[str, int]]) -> None:
    spamd, address = fake
    spamd.reply = answer(body="RULE_A,RULE_B")
    spamd.split, spamd.piece, spamd.pause = True, 1, 0.0005
    result = await scan(spamassassind(address, report=False))
    assert result.symbols == ("RULE_A", "RULE_B")
    assert result.level == pytest.approx(12.3 / 5.0)


ANSWER = answer(body="RULE_A,RULE_B")
HEAD = ANSWER.index(b"\r\n\r\n") + 4
SPAMD_CUTS = [0, 5, len(b"SPAMD/1.1 0 EX_OK\r\n"), HEAD - 1, HEAD, HEAD + 3, len(ANSWER) - 1]
"""Where an answer is cut: no byte, in the status line, after it, in and after the head, in the body."""


@pytest.mark.parametrize("after_cut", ["close", "reset"])
@pytest.mark.parametrize("cut", SPAMD_CUTS)
async def test_connection_closed_mid_answer(cut: int, after_cut: Literal["close", "reset"]) -> None:
    async with FakeSpamd(reply=ANSWER) as fake:
        fake.cut, fake.after_cut = cut, after_cut
        scanner = spamassassind(fake.address, report=False, timeout=engines.CUT_TIMEOUT)
        error = await engines.check_cut_short(scanner, "spamassassind", engines.CUT_TIMEOUT)
        assert isinstance(error, ScannerUnavailable)


@pytest.mark.parametrize("cut", [0, HEAD, len(ANSWER) - 1])
async def test_answer_stopping_mid_way_times_out(cut: int) -> None:
    async with FakeSpamd(reply=ANSWER) as fake:
        fake.cut, fake.after_cut = cut, "hang"
        scanner = spamassassind(fake.address, report=False, timeout=engines.TIMEOUT)
        error = await engines.check_cut_short(scanner, "spamassassind")
        assert isinstance(error, ScannerTimeout)


# --------------------------------------------------------------------------- points per rule


def test_report_rules_keep_each_rules_points_from_the_table_only() -> None:
    preview = "Content preview:  1.5 NOT_A_RULE in the mail\n\n" + REPORT.partition("Content analysis")[2]
    assert report_rules(REPORT) == (
        ("FAKE_RULE_ONE", 2.5),
        ("T_FAKE_NEGATIVE", -0.1),
        ("FAKE_LONGER_THAN_THE_COLUMN", 9.9),
    )
    assert "NOT_A_RULE" not in dict(report_rules(REPORT.replace("Dear friend", preview)))
    assert report_rules("no table here\n 1.0 RULE x") == ()


def test_report_rules_are_bounded_and_a_repeated_rule_counts_once() -> None:
    table = "".join(f" 0.1 RULE_{n} description\n" for n in range(5000))
    report = "pts rule name description\n---- ---- ----\n 1.0 RULE_0 first\n" + table
    rules = report_rules(report)
    assert len(rules) == MAX_RULES
    assert rules[0] == ("RULE_0", 1.0)


async def test_symbols_verb_gives_no_points(fake: tuple[FakeSpamd, tuple[str, int]]) -> None:
    spamd, address = fake
    spamd.reply = answer(body="RULE_A,RULE_B")
    result = await scan(spamassassind(address, report=False))
    assert result.detail == "score=12.3 required=5 tests=RULE_A,RULE_B"


# ---------------------------------------------------- per-recipient user (simscan's --enable-spamc-user)


class PerUserSpamd(FakeSpamd):
    """Answers by the request's ``User:``: each user's own score (5.0 required)."""

    def __init__(self, scores: dict[str, float]) -> None:
        super().__init__()
        self.scores = scores

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"PING "):
            await self.send(writer, b"SPAMD/1.5 0 PONG\r\n")
            return
        fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
        body = await reader.readexactly(int(fields[b"Content-length"]))
        user = fields.get(b"User", b"").decode()
        self.requests.append((head, body))
        score = self.scores.get(user, 0.0)
        await self.send(writer, answer(f"{score >= 5.0} ; {score} / 5.0", body="RULE_A", code="0 EX_OK"))


def to(*recipients: str) -> MailTarget:
    from mailsift.message.mail import Envelope

    return MailTarget(Mail(Envelope(sender="a@example.test", recipients=list(recipients)), MESSAGE))


def users_asked(spamd: FakeSpamd) -> list[str]:
    return sorted(
        line.split(b": ", 1)[1].decode()
        for head, _ in spamd.requests
        for line in head.split(b"\r\n")[1:]
        if line
        if line.startswith(b"User: ")
    )


async def test_per_recipient_user_asks_spamd_once_per_distinct_user() -> None:
    scores = {"bob@example.test": 2.0, "carol@other.test": 9.0}
    async with PerUserSpamd(scores) as spamd:
        scanner = spamassassind(spamd.address, "%(recipient)s", report=False, users="max")
        result = await scanner.scan(to("Bob@example.test", "carol@other.test", "bob@example.test"))
        assert users_asked(spamd) == ["bob@example.test", "carol@other.test"]
        assert isinstance(result, SpamResult)
        assert (result.score, result.name) == (9.0, "Spam")
        assert "users=bob@example.test=2/5, carol@other.test=9/5" in result.detail
        spamd.requests.clear()
        least = spamassassind(spamd.address, "%(recipient)s", report=False, users="min")
        result = await least.scan(to("bob@example.test", "carol@other.test"))
        assert (result.level < 1.0, getattr(result, "score", None)) == (True, 2.0)


async def test_per_domain_user_and_simscans_first_recipient() -> None:
    async with PerUserSpamd({"example.test": 7.0, "other.test": 1.0}) as spamd:
        domain = spamassassind(spamd.address, "%(domain)s", report=False, users="min")
        await domain.scan(to("a@example.test", "b@example.test", "c@other.test"))
        assert users_asked(spamd) == ["example.test", "other.test"]
        spamd.requests.clear()
        first = spamassassind(spamd.address, "%(domain)s", report=False)  # simscan: the first recipient only
        result = await first.scan(to("a@example.test", "c@other.test"))
        assert users_asked(spamd) == ["example.test"]
        assert result.detected


async def test_a_recipient_that_makes_no_user_name_sends_none() -> None:
    async with PerUserSpamd({}) as spamd:
        scanner = spamassassind(spamd.address, "%(local)s", report=False)
        await scanner.scan(to("@example.test"))
        ((head, _),) = spamd.requests
        assert b"User:" not in head


def test_user_templates_are_checked() -> None:
    with pytest.raises(ConfigError, match="user template may use"):
        spamassassind(("127.0.0.1", 783), "%(mailbox)s")
    with pytest.raises(ConfigError, match="users must be one of first, min, max"):
        spamassassind(("127.0.0.1", 783), "%(domain)s", users="all")
    assert "users='max'" in spamassassind(("127.0.0.1", 783), "%(domain)s", users="max").describe()
