"""The edge cases every engine meets the same way, through ``scanners/engines/common.py``.

Each engine's test module (``tests/unit/scanners/engines/test_<engine>.py``)
runs these with its own scanner, so clamd, spamd, rspamd and cmd are held to
one behaviour:

* :func:`check_unreachable` -- the engine is not there (no unix socket, a
  refused TCP port, a program removed): :class:`ScannerUnavailable` with the
  common wording, and the message is tempfailed (4xx), never passed;
* :func:`check_timeout` -- the engine accepts and never answers: the scan ends
  with :class:`ScannerTimeout` (reply ``SCANNER_TIMEOUT``) and returns within
  ten times the engine's timeout (a bound, not a measurement);
* :func:`check_oversize` -- an object one byte over the engine's size limit is
  never sent and becomes what the engine's docs say (a finding, clean "not
  scanned"/"not checked", or a tempfail); one at the limit is sent;
* :func:`check_cut_short` -- the engine's answer stops part way (the fakes'
  ``cut``: the connection closed, reset, or left open and silent): never a
  verdict, never a hang, but :class:`ScannerUnavailable` (the daemon, not the
  message) or :class:`ScannerTimeout` within the bound, and a ``451``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Literal

import pytest

from mailsift.core.pipeline import Pipeline
from mailsift.errors import ScannerError, ScannerTimeout, ScannerUnavailable
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Disposition
from mailsift.replies import SCANNER_TIMEOUT
from mailsift.scanners.base import MailTarget, Scanner

TIMEOUT = 0.2
"""The engines' timeout in the timeout case: small, so the bound below is small too."""

CUT_TIMEOUT = 10.0
"""The engines' timeout where the answer is cut (closed or reset), not hung: long, so a busy
machine never turns the cut into a timeout; the cut comes at once, so nothing waits for it."""

BOUND = 10
"""A scan that times out returns within ``BOUND`` times the engine's timeout."""

MESSAGE = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: edge case\r\n\r\nhello\r\n"

Oversized = Literal["detect", "pass", "not checked", "tempfail"]

AFTER_CUT = ("close", "reset", "hang")
"""What a fake does after the bytes it sends of a cut answer (``_FakeServer.after_cut``)."""


def message_of(size: int) -> bytes:
    """A message of exactly ``size`` bytes (at least the headers)."""
    assert size >= len(MESSAGE)
    return MESSAGE + b"x" * (size - len(MESSAGE))


def target(data: bytes = MESSAGE) -> MailTarget:
    return MailTarget(Mail(Envelope(sender="a@example.test", recipients=["b@example.test"]), data))


def refused_port() -> int:
    """A loopback TCP port where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def check_unreachable(scanner: Scanner, engine: str) -> ScannerUnavailable:
    """The engine is not there: ScannerUnavailable in the common words, and a tempfail."""
    with pytest.raises(ScannerUnavailable) as caught:
        await asyncio.wait_for(scanner.scan(target()), 30)
    text = caught.value.message
    assert text.startswith(f"{engine}: ")
    assert ", not reachable: " in text or ": cannot run " in text
    decision = await asyncio.wait_for(Pipeline([scanner]).evaluate(target().mail), 30)
    assert decision.disposition is Disposition.TEMPFAIL
    assert decision.reply.code // 100 == 4
    await scanner.aclose()
    return caught.value


async def check_timeout(scanner: Scanner, engine: str, timeout: float = TIMEOUT) -> ScannerTimeout:
    """The engine accepts and never answers: ScannerTimeout within BOUND times ``timeout``, and a tempfail."""
    with pytest.raises(ScannerTimeout) as caught:
        # asyncio.wait_for's own TimeoutError is no ScannerTimeout: a scan that
        # does not return within the bound fails this check.
        await asyncio.wait_for(scanner.scan(target()), BOUND * timeout)
    text = caught.value.message
    assert text.startswith(f"{engine}")
    assert f"{timeout:g} s" in text
    decision = await asyncio.wait_for(Pipeline([scanner]).evaluate(target().mail), BOUND * timeout)
    assert (decision.disposition, decision.reply) == (Disposition.TEMPFAIL, SCANNER_TIMEOUT)
    await scanner.aclose()
    return caught.value


async def check_oversize(
    scanner: Scanner,
    limit: int,
    sent: Callable[[], int],
    expected: Oversized,
    *,
    name: str = "",
) -> None:
    """One byte over ``limit``: not sent, and ``expected``; at the limit: sent and checked."""
    before = sent()
    over = target(message_of(limit + 1))
    if expected == "tempfail":
        with pytest.raises(ScannerError, match=f"not scanned: {limit + 1} bytes exceed") as caught:
            await scanner.scan(over)
        assert type(caught.value) is ScannerError
    else:
        result = await scanner.scan(over)
        assert str(limit + 1) in result.detail
        assert str(limit) in result.detail
        if expected == "detect":
            assert (result.level, result.name) == (1.0, name)
            assert result.detail.startswith(f"{limit + 1} bytes exceed ")
        elif expected == "pass":
            assert (result.level, result.name) == (0.0, "")
            assert result.detail.startswith("not scanned: ")
        else:
            assert (result.level, result.name) == (0.0, "")
            assert result.detail == f"not checked: over max_size ({limit + 1} > {limit} bytes)"
    assert sent() == before  # never sent to the engine
    await scanner.scan(target(message_of(limit)))
    assert sent() == before + 1  # at the limit, it is
    await scanner.aclose()


async def check_cut_short(scanner: Scanner, engine: str, timeout: float = TIMEOUT) -> ScannerError:
    """An answer cut short: ScannerUnavailable or ScannerTimeout within BOUND times ``timeout``, a 451."""
    with pytest.raises((ScannerUnavailable, ScannerTimeout)) as caught:
        await asyncio.wait_for(scanner.scan(target()), BOUND * timeout)
    assert caught.value.message.startswith(engine), caught.value.message
    decision = await asyncio.wait_for(Pipeline([scanner]).evaluate(target().mail), BOUND * timeout)
    assert decision.disposition is Disposition.TEMPFAIL, decision
    assert decision.reply.code == 451
    assert decision.result.level == 0.0
    await scanner.aclose()
    assert isinstance(caught.value, ScannerError)
    return caught.value
