"""Build 4 of issue 14 with the real clamd: every ham message of the shared corpora delivers under the
README's fuller antivirus example (clamd on the raw message, ``parsemail(decompress(clamd), raw=True)``,
``file_type``, ``bad_mime`` as the example skips it, ``office_macros``), the scanners taken from the
README block itself (tests/helpers/ham.py; the spam lines are left out, no spamd here).

clamd is the session's private instance (tests/engines/conftest.py): EICAR and ClamAV's test
signatures, and clamd's detection options as the default config's ``clamd_daemon`` writes them
(checked below: neither sets any, so both run clamd's defaults, ``HeuristicAlerts yes`` and every
``Alert*`` off).  The messages are scanned once per module, several at a time (one event loop,
``asyncio.gather`` over a bounded number of tasks); each message is then its own test case.
"""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailsift.core.pipeline import Pipeline
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Decision, Disposition
from mailsift.scanners.base import Scanner
from mailsift.scanners.engines.clamav import clamd
from mailsift.services.daemons import clamd_daemon
from tests.helpers.archives import zip_of
from tests.helpers.clamd import EICAR, EICAR_NAMES, ClamdInstance
from tests.helpers.ham import corpora_present, fuller_scanners, ham
from tests.helpers.paths import CORPORA

pytestmark = pytest.mark.engines

if not corpora_present():
    pytest.skip(f"mail corpora not found at {CORPORA}", allow_module_level=True)

HAM = ham()

#: How many messages are in the pipeline at once (the private clamd has MaxThreads 4).
CONCURRENCY = 8

#: clamd.conf lines about where clamd lives and how it runs, not about what it detects.
_PLACE = {
    "Foreground",
    "LocalSocket",
    "LocalSocketMode",
    "FixStaleSocket",
    "TCPSocket",
    "TCPAddr",
    "DatabaseDirectory",
    "TemporaryDirectory",
    "LogFile",
    "LogTime",
    "LogVerbose",
    "MaxThreads",
    "SelfCheck",
    "ConcurrentDatabaseReload",
    "User",
    "StreamMaxLength",  # the scanner's stream_max_length decides first; the ham is far below both
}


def _conf(path: Path) -> dict[str, str]:
    lines = (line.partition(" ") for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {key: value.strip() for key, _, value in lines}


def _pipeline(instance: ClamdInstance) -> Pipeline:
    def real_clamd(_address: Any, **options: Any) -> Scanner:
        return clamd(str(instance.socket_path), **options)

    return Pipeline(fuller_scanners(real_clamd))


def _mail(data: bytes) -> Mail:
    return Mail(Envelope(sender="alice@example.net", recipients=["bob@example.org"]), data)


async def _evaluate_all(pipeline: Pipeline, paths: list[str]) -> dict[str, Decision | BaseException]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(path: str) -> Decision:
        async with gate:
            return await pipeline.evaluate(_mail((CORPORA / path).read_bytes()))

    try:
        outcomes = await asyncio.gather(*(one(path) for path in paths), return_exceptions=True)
    finally:
        await pipeline.aclose()
    return dict(zip(paths, outcomes, strict=True))


@pytest.fixture(scope="module")
def decisions(clamd_instance: ClamdInstance) -> dict[str, Decision | BaseException]:
    """Every ham message through the fuller example with the real clamd, once."""
    return asyncio.run(_evaluate_all(_pipeline(clamd_instance), HAM))


@pytest.fixture
async def pipeline(clamd_instance: ClamdInstance) -> AsyncIterator[Pipeline]:
    made = _pipeline(clamd_instance)
    yield made
    await made.aclose()


# --------------------------------------------------------------------------- the setup is what it claims


def test_the_private_clamd_detects_as_the_default_configs(clamd_instance: ClamdInstance, tmp_path: Path) -> None:
    """The session clamd's detection options (heuristics, alerts, limits) are clamd_daemon's."""
    daemon = clamd_daemon(str(tmp_path / "clamd" / "clamd.sock"), database=str(tmp_path / "db"), user="no-such-user")
    daemon.prepare(str(tmp_path / "state"))
    written = _conf(tmp_path / "clamd" / "clamd.conf")
    private = _conf(clamd_instance.conf_path)
    assert "LocalSocket" in written  # both files were read
    assert "DatabaseDirectory" in private
    detection = {key: value for key, value in written.items() if key not in _PLACE}
    assert {key: value for key, value in private.items() if key not in _PLACE} == detection
    # neither turns a heuristic off (HeuristicAlerts) or on (Alert*): clamd's defaults in both
    assert not [key for key in detection if key.startswith(("Heuristic", "Alert"))]


def test_the_pipeline_is_the_readmes_with_clamd(pipeline: Pipeline) -> None:
    tree = "\n".join(pipeline.tree())
    assert [line for line in pipeline.tree() if not line.startswith(" ")] == [
        "quarantine('virus')",
        "quarantine('virus')",
        "reject()",
        "reject()",
        "quarantine('policy')",
    ]
    assert tree.count("clamd(") == 2
    for name in ("parsemail(raw=True)", "decompress(", "file_type(", "bad_mime(", "office_macros("):
        assert name in tree


def test_every_ham_message_was_scanned(decisions: dict[str, Decision | BaseException]) -> None:
    assert len(HAM) > 400
    assert list(decisions) == HAM


# --------------------------------------------------------------------------- ham delivers


@pytest.mark.parametrize("path", HAM)
def test_ham_delivers_with_the_real_clamd(path: str, decisions: dict[str, Decision | BaseException]) -> None:
    decision = decisions[path]
    if isinstance(decision, BaseException):
        raise decision
    found = decision.result
    assert decision.disposition is Disposition.DELIVER, f"{path}: {found.scanner} {found.name} {found.detail}"
    assert not [r for r in decision.trail if r.detected], decision.trail


# --------------------------------------------------------------------------- and it can fail

#: Ham messages of different shapes to plant EICAR into: plain text, the empty body, multipart with attachments.
PLANTED = ["spamassassin-t-data/nice/001", "spamassassin-t-data/nice/no_body", "cpython-test_email/msg_02.txt"]


def _plant_eicar(raw: bytes) -> bytes:
    """The ham message with a zip holding EICAR attached (base64: clamd must decode to see it)."""
    message = email.message_from_bytes(raw, _class=email.message.EmailMessage, policy=email.policy.compat32)
    planted = email.message.EmailMessage()
    planted.set_content(zip_of({"invoice.com": EICAR}), maintype="application", subtype="zip", filename="invoice.zip")
    if not message.is_multipart():
        message.make_mixed()
    message.attach(planted)
    data = message.as_bytes()
    assert EICAR not in data
    return data


@pytest.mark.parametrize("path", PLANTED)
async def test_eicar_planted_into_ham_is_quarantined(path: str, pipeline: Pipeline) -> None:
    assert path in HAM
    decision = await pipeline.evaluate(_mail(_plant_eicar((CORPORA / path).read_bytes())))
    assert decision.disposition is Disposition.QUARANTINE, decision
    assert decision.quarantine == ("virus",)
    assert decision.result.name in EICAR_NAMES
    assert decision.result.scanner == "clamd"


@pytest.mark.parametrize("path", PLANTED)
async def test_eicar_planted_into_ham_is_found_per_part_too(path: str, pipeline: Pipeline) -> None:
    """The example's second line (every view and member, real clamd) finds it without the first."""
    decision = await Pipeline(pipeline.scanners[1:]).evaluate(_mail(_plant_eicar((CORPORA / path).read_bytes())))
    assert (decision.disposition, decision.quarantine) == (Disposition.QUARANTINE, ("virus",)), decision
    assert decision.result.name in EICAR_NAMES
    assert "invoice" in decision.result.detail  # parsemail names the part (or the member)
