"""``rspamd`` against a real, private rspamd 3.4 (Debian's rules, no network modules).

The corpus test sends every message of rspamd's own functional-test mail to
the same rspamd through mailsift and through the real ``rspamc``, with the
same envelope, and checks that mailsift reads the same action, score,
threshold and symbols, and that its level is ``score / required_score``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailsift.core.pipeline import Pipeline
from mailsift.errors import ScannerUnavailable
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Disposition
from mailsift.scanners.base import MailTarget
from mailsift.scanners.engines.common import SpamResult
from mailsift.scanners.engines.rspamd import rspamd
from tests.helpers.paths import CORPORA
from tests.helpers.rspamd import MAX_MESSAGE, RspamdInstance, rspamd_instance

pytestmark = pytest.mark.engines
__all__ = ["rspamd_instance"]  # the session fixture, imported for pytest

SA_CORPUS = CORPORA / "spamassassin-t-data"
CORPUS = CORPORA / "rspamd-functional-messages"
MESSAGES = sorted(p for p in CORPUS.rglob("*") if p.is_file()) if CORPUS.is_dir() else []
GTUBE = SA_CORPUS / "spam" / "gtube.eml"
HAM = SA_CORPUS / "nice" / "001"  # From: evolve@ximian.com

ENVELOPE = Envelope(
    sender="sender@example.test",
    recipients=["one@example.test", "two@example.test"],
    client_address="192.0.2.1",
    client_name="mx.example.test",
    helo="mx.example.test",
)
RSPAMC_ENVELOPE = (
    "-F",
    "sender@example.test",
    "-r",
    "one@example.test",
    "-r",
    "two@example.test",
    "-i",
    "192.0.2.1",
    "--hostname",
    "mx.example.test",
    "--helo",
    "mx.example.test",
)


@pytest.fixture
async def scanner(rspamd_instance: RspamdInstance) -> AsyncIterator[rspamd]:
    scanner = rspamd(rspamd_instance.url)
    yield scanner
    await scanner.aclose()


async def check(scanner: rspamd, data: bytes, envelope: Envelope | None = None) -> SpamResult:
    result = await scanner.scan(MailTarget(Mail(envelope, data)))
    assert isinstance(result, SpamResult)
    return result


async def test_gtube_is_rejected(scanner: rspamd) -> None:
    result = await check(scanner, GTUBE.read_bytes())
    assert result.detected
    assert result.level >= 1.0
    assert (result.name, result.action) == ("reject", "reject")
    assert "GTUBE" in result.symbols
    assert "GTUBE" in result.detail
    assert result.detail.startswith("action=reject ")


async def test_ham_is_not_detected_and_level_is_score_over_required(scanner: rspamd) -> None:
    result = await check(scanner, HAM.read_bytes(), ENVELOPE)
    assert not result.detected
    assert result.action != "reject"
    assert result.required > 0
    assert result.level == pytest.approx(result.score / result.required)
    assert result.name == ("" if result.action == "no action" else result.action)


async def test_envelope_reaches_rspamd(scanner: rspamd) -> None:
    data = HAM.read_bytes()
    with_envelope = await check(scanner, data, ENVELOPE)
    without = await check(scanner, data)
    # Rcpt: recipients that are not the To: header (this message is from a mailing list)
    assert "FORGED_RECIPIENTS_MAILLIST" in with_envelope.symbols
    assert "FORGED_RECIPIENTS_MAILLIST" not in without.symbols
    # Helo: a name that resolves nowhere (DNS is closed in this rspamd)
    assert "HFILTER_HELO_NORES_A_OR_MX" in with_envelope.symbols
    assert "HFILTER_HELO_NORES_A_OR_MX" not in without.symbols


async def test_connection_is_reused(scanner: rspamd) -> None:
    await check(scanner, GTUBE.read_bytes())
    client = scanner.client()
    await check(scanner, GTUBE.read_bytes())
    assert scanner.client() is client


async def test_over_max_size_is_not_checked(rspamd_instance: RspamdInstance) -> None:
    data = GTUBE.read_bytes()
    small = rspamd(rspamd_instance.url, max_size=len(data) - 1)
    result = await check(small, data)
    assert (result.level, result.name) == (0.0, "")
    assert result.detail.startswith("not checked: over max_size")
    await small.aclose()


@pytest.mark.skipif(not MESSAGES, reason=f"{CORPUS} is missing")
@pytest.mark.parametrize("path", MESSAGES, ids=lambda p: str(p.relative_to(CORPUS)))
async def test_same_verdict_as_rspamc(rspamd_instance: RspamdInstance, scanner: rspamd, path: Path) -> None:
    data = path.read_bytes()
    expected = rspamd_instance.rspamc(data, *RSPAMC_ENVELOPE)
    result = await check(scanner, data, ENVELOPE)
    assert result.action == expected["action"]
    assert result.score == pytest.approx(expected["score"], abs=1e-6)
    assert result.required == pytest.approx(expected["required_score"])
    assert set(result.symbols) == set(expected["symbols"])
    level = expected["score"] / expected["required_score"]
    if expected["action"] == "reject":
        level = max(level, 1.0)
    assert result.level == pytest.approx(level, abs=1e-6)
    assert result.detected is (expected["action"] == "reject" or level >= 1.0)


# --------------------------------------------------------------------------- protocol edges (issue 11, item 4)


def padded(data: bytes, size: int) -> bytes:
    """``data`` with one long last line added to its body, to exactly ``size`` bytes."""
    return data + b"\n" + b"x" * (size - len(data) - 2) + b"\n"


async def test_empty_and_one_byte_messages_get_a_verdict(rspamd_instance: RspamdInstance, scanner: rspamd) -> None:
    """An empty POST (``Content-Length: 0``) is answered like any message, not an HTTP error."""
    for data in (b"", b"x", b"\n"):
        result = await check(scanner, data, ENVELOPE)
        assert result.action in ("no action", "add header", "greylist", "rewrite subject", "soft reject")
    one = await check(scanner, b"x", ENVELOPE)
    expected = rspamd_instance.rspamc(b"x", *RSPAMC_ENVELOPE)
    assert (one.action, one.score) == (expected["action"], pytest.approx(expected["score"]))


async def test_sizes_at_the_buffer_edges(rspamd_instance: RspamdInstance, scanner: rspamd) -> None:
    """A ham padded to 64 KiB - 1, = and + 1: the verdict rspamc gets, on one kept connection."""
    ham = HAM.read_bytes()
    client = scanner.client()
    for size in (65535, 65536, 65537):
        data = padded(ham, size)
        assert len(data) == size
        result = await check(scanner, data, ENVELOPE)
        expected = rspamd_instance.rspamc(data, *RSPAMC_ENVELOPE)
        assert (result.action, result.score) == (expected["action"], pytest.approx(expected["score"]))
        assert set(result.symbols) == set(expected["symbols"])
    assert scanner.client() is client


async def test_rspamd_max_message_edges(rspamd_instance: RspamdInstance) -> None:
    """rspamd's own max_message - 1 and = get a verdict; + 1 is closed by rspamd without an answer:
    ScannerUnavailable and a 451 (never a verdict, never a hang), and the next message is answered.
    With ``max_size`` set to max_message, + 1 is never sent ("not checked")."""
    ham = HAM.read_bytes()
    scanner = rspamd(rspamd_instance.url, max_size=4 * MAX_MESSAGE, timeout=30)
    matching = rspamd(rspamd_instance.url, max_size=MAX_MESSAGE, timeout=30)
    try:
        for size in (MAX_MESSAGE - 1, MAX_MESSAGE):
            result = await check(scanner, padded(ham, size))
            assert result.action in ("no action", "add header", "greylist")
            assert "not checked" not in result.detail
        over_data = padded(ham, MAX_MESSAGE + 1)
        over = Mail(data=over_data)
        with pytest.raises(ScannerUnavailable, match="closed the connection before its answer ended"):
            await scanner.scan(MailTarget(over))
        decision = await Pipeline([scanner]).evaluate(over)
        assert (decision.disposition, decision.reply.code) == (Disposition.TEMPFAIL, 451)
        assert (await check(scanner, GTUBE.read_bytes())).action == "reject"  # rspamd and the client are fine
        result = await check(matching, over_data)
        assert (result.level, result.name) == (0.0, "")
        assert result.detail == f"not checked: over max_size ({MAX_MESSAGE + 1} > {MAX_MESSAGE} bytes)"
        assert "not checked" not in (await check(matching, padded(ham, MAX_MESSAGE))).detail
    finally:
        await scanner.aclose()
        await matching.aclose()
