"""``spamassassind`` against a real, private spamd (local tests only, Bayes off).

The corpus test runs the real ``spamc`` and mailsift against the same spamd for
every message of SpamAssassin's own test mail and checks that mailsift's level
is spamd's ``score/required`` as ``spamc -c`` prints it, and that the rule
names match ``spamc -y`` (SYMBOLS) in both of mailsift's modes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mailsift.message.mail import Mail
from mailsift.scanners.actions import add_header
from mailsift.scanners.base import MailTarget
from mailsift.scanners.engines.common import SpamResult
from mailsift.scanners.engines.spamassassin import SPAMC_MAX_SIZE, spamassassind
from tests.helpers.paths import CORPORA
from tests.helpers.spamd import STRICT_REQUIRED, STRICT_USER, SpamdInstance, spamd_instance

pytestmark = pytest.mark.engines
__all__ = ["spamd_instance"]  # the session fixture, imported for pytest

CORPUS = CORPORA / "spamassassin-t-data"
MESSAGES = sorted(p for p in CORPUS.rglob("*") if p.is_file()) if CORPUS.is_dir() else []
GTUBE = CORPUS / "spam" / "gtube.eml"


async def check(scanner: spamassassind, data: bytes) -> SpamResult:
    result = await scanner.scan(MailTarget(Mail(data=data)))
    assert isinstance(result, SpamResult)
    return result


def spamc_check(spamd: SpamdInstance, data: bytes, *args: str) -> tuple[float, float, bool]:
    """``spamc -c``: (score, required, spam) as the real client prints and exits."""
    done = spamd.spamc(data, "-c", *args)
    score, _, required = done.stdout.decode().strip().partition("/")
    assert required, f"spamc -c printed {done.stdout!r} (stderr {done.stderr!r})"
    assert done.returncode in (0, 1), done
    return float(score), float(required), done.returncode == 1


async def test_gtube_is_spam_with_its_rule_and_report(spamd_instance: SpamdInstance) -> None:
    result = await check(spamassassind(spamd_instance.address), GTUBE.read_bytes())
    assert result.detected
    assert result.level >= 1.0
    assert result.name == "Spam"
    assert result.scanner == "spamassassind"
    assert "GTUBE" in result.symbols
    assert "GTUBE" in result.detail.partition("tests=")[2].split(",")
    assert "GTUBE" in result.report
    assert f"({result.score:.1f} points, {result.required:.1f} required)" in result.report
    assert result.level == pytest.approx(result.score / result.required)


async def test_gtube_over_the_unix_socket(spamd_instance: SpamdInstance) -> None:
    result = await check(spamassassind(spamd_instance.socket_path, report=False), GTUBE.read_bytes())
    assert result.detected
    assert "GTUBE" in result.symbols
    assert result.report == ""


@pytest.mark.skipif(not MESSAGES, reason=f"{CORPUS} is missing")
@pytest.mark.parametrize("path", MESSAGES, ids=lambda p: str(p.relative_to(CORPUS)))
async def test_level_is_spamc_score_over_required(spamd_instance: SpamdInstance, path: Path) -> None:
    data = path.read_bytes()
    score, required, spam = spamc_check(spamd_instance, data)
    with_report = await check(spamassassind(spamd_instance.address), data)
    symbols_only = await check(spamassassind(spamd_instance.address, report=False), data)
    for result in (with_report, symbols_only):
        assert (result.score, result.required) == (score, required)
        assert result.level == pytest.approx(score / required, rel=1e-9)
        assert result.detected is spam
        assert result.name == ("Spam" if spam else "")
    spamc_symbols = spamd_instance.spamc(data, "-y").stdout.decode().strip()
    expected = {name for name in spamc_symbols.split(",") if name}
    assert set(symbols_only.symbols) == expected
    assert set(with_report.symbols) == expected  # read from the report's table


async def test_user_preferences_change_the_threshold(spamd_instance: SpamdInstance) -> None:
    data = (CORPUS / "spam" / "005").read_bytes()
    default = await check(spamassassind(spamd_instance.address), data)
    strict = await check(spamassassind(spamd_instance.address, STRICT_USER), data)
    assert default.required == 5.0
    assert strict.required == STRICT_REQUIRED
    assert strict.score == default.score
    assert strict.level == pytest.approx(default.score / STRICT_REQUIRED)
    assert (strict.score, strict.required, strict.detected) == spamc_check(spamd_instance, data, "-u", STRICT_USER)


async def test_over_max_size_is_not_checked(spamd_instance: SpamdInstance) -> None:
    data = GTUBE.read_bytes()
    result = await check(spamassassind(spamd_instance.address, max_size=len(data) - 1), data)
    assert result.level == 0.0
    assert not result.detected
    assert result.detail.startswith("not checked: over max_size")
    at_limit = await check(spamassassind(spamd_instance.address, max_size=len(data)), data)
    assert at_limit.detected


async def test_add_header_sees_the_spam_level(spamd_instance: SpamdInstance) -> None:
    scanner = add_header("X-Spam-Level", "%V %L", spamassassind(spamd_instance.address))
    result = await scanner.scan(MailTarget(Mail(data=GTUBE.read_bytes())))
    assert isinstance(result, SpamResult)  # the action keeps the spam result and its report
    assert "GTUBE" in result.report
    (header,) = result.actions
    assert header.value == f"Spam {result.level:.2f}"


# --------------------------------------------------------------------------- protocol edges (issue 11, item 4)


def padded(data: bytes, size: int) -> bytes:
    """``data`` with one long last line added to its body, to exactly ``size`` bytes (quick for spamd)."""
    return data + b"\n" + b"x" * (size - len(data) - 2) + b"\n"


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
async def test_empty_and_one_byte_messages_get_a_verdict(spamd_instance: SpamdInstance, tcp: bool) -> None:
    """spamd answers an empty request (``Content-length: 0``, no body) with a verdict, not an error.

    spamc cannot send empty input (``spamc -x`` fails with EX_IOERR, without
    ``-x`` it prints 0/0): spamd's verdict on it is the one on a bare newline.
    """
    address = spamd_instance.address if tcp else spamd_instance.socket_path
    for data in (b"x", b"\n"):
        result = await check(spamassassind(address, report=False), data)
        assert (result.score, result.required, result.detected) == spamc_check(spamd_instance, data)
        assert "EMPTY_MESSAGE" in result.symbols
    empty = await check(spamassassind(address, report=False), b"")
    assert (empty.score, empty.required, empty.detected) == spamc_check(spamd_instance, b"\n")
    assert "EMPTY_MESSAGE" in empty.symbols


async def test_sizes_at_the_stream_buffer_edges(spamd_instance: SpamdInstance) -> None:
    """GTUBE padded to 64 KiB - 1, = and + 1: the whole message reaches spamd each time."""
    gtube = GTUBE.read_bytes()
    for size in (65535, 65536, 65537):
        data = padded(gtube, size)
        assert len(data) == size
        result = await check(spamassassind(spamd_instance.address, report=False), data)
        assert "GTUBE" in result.symbols
        assert result.detected


async def test_default_max_size_edges_match_spamc(spamd_instance: SpamdInstance) -> None:
    """spamc's 500 KiB: - 1 and = are checked, + 1 is not (spamc prints 0/0 and sends nothing)."""
    gtube = GTUBE.read_bytes()
    scanner = spamassassind(spamd_instance.address, report=False)
    for size in (SPAMC_MAX_SIZE - 1, SPAMC_MAX_SIZE):
        result = await check(scanner, padded(gtube, size))
        assert result.detected
        assert "GTUBE" in result.symbols
    over = padded(gtube, SPAMC_MAX_SIZE + 1)
    result = await check(scanner, over)
    assert (result.level, result.name) == (0.0, "")
    assert result.detail == f"not checked: over max_size ({SPAMC_MAX_SIZE + 1} > {SPAMC_MAX_SIZE} bytes)"
    assert spamd_instance.spamc(over, "-c").stdout.strip() == b"0/0"


async def test_gtube_detail_carries_each_rules_points(spamd_instance: SpamdInstance) -> None:
    result = await check(spamassassind(spamd_instance.address), GTUBE.read_bytes())
    points = result.detail.partition("points=")[2].partition(" ")[0].split(",")
    names = result.detail.partition("tests=")[2].split(",")
    assert len(points) == len(names) == len(result.symbols)
    assert float(points[names.index("GTUBE")]) >= 1000  # GTUBE's own score (SpamAssassin's 1000)
    assert sum(map(float, points)) == pytest.approx(result.score, abs=0.1 * len(points))


async def test_per_recipient_user_template_reads_each_recipients_preferences(spamd_instance: SpamdInstance) -> None:
    """simscan's --enable-spamc-user with a real spamd: the strict recipient's required_score counts with
    users='max', the default one's with users='min'."""
    from mailsift.message.mail import Envelope

    data = (CORPUS / "spam" / "005").read_bytes()
    recipients = [f"{STRICT_USER}@example.test", "somebody@example.test"]

    async def check_for(users: str) -> SpamResult:
        scanner = spamassassind(spamd_instance.address, "%(local)s", users=users)
        result = await scanner.scan(MailTarget(Mail(Envelope(sender="a@x", recipients=recipients), data)))
        assert isinstance(result, SpamResult)
        return result

    strictest, mildest = await check_for("max"), await check_for("min")
    assert (strictest.required, mildest.required) == (STRICT_REQUIRED, 5.0)
    assert strictest.score == mildest.score
    assert f"users={STRICT_USER}=" in strictest.detail
    assert "somebody=" in strictest.detail
