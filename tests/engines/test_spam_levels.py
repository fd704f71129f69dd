"""spam_levels and spam_forward against the real, private spamd (local rules, Bayes off).

A spam message of SpamAssassin's own test corpus is scored once; then, for each
band, a spamd user is made (``--virtual-config-dir``) whose ``required_score``
puts that same real score in the band: the st patch's thresholds are relative
to the required score, so moving it moves the bands.  The band each message
must land in is computed from what the real ``spamc -c -u USER`` prints
(score/required), never written into the test, and the whole path runs: spamd,
the decision, quarantine, delivery to a recording next hop, the reply, and the
forwarded copy (sa-forward).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailsift.core.mailpath import MailPath
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Disposition
from mailsift.reporting.spam_forward import spam_forward
from mailsift.scanners.engines.spamassassin import spamassassind
from mailsift.scanners.engines.spamlevels import Band, SpamLevelResult, spam_levels
from mailsift.settings import Settings
from mailsift.testing import Received, RecordingServer
from tests.helpers.paths import CORPORA
from tests.helpers.spamd import SpamdInstance, spamd_instance

pytestmark = pytest.mark.engines
__all__ = ["spamd_instance"]  # the session fixture, imported for pytest

CORPUS = CORPORA / "spamassassin-t-data" / "spam"
QUARANTINE, DELETE, DELTA = 2.1, 4.2, 0.5
SUBJECT_TAG = "SPAM *** "
ADMIN = "antispam@example.test"
RECIPIENT = "user@example.test"
SECONDARY_MX = "192.0.2.25"

REQUIRED_SHIFT = {"clean": +1.0, "LOW": -0.2, "MEDIUM": -0.7, "HIGH": -1.5, "quarantine": -3.0, "delete": -5.0}
"""required_score = real score + shift puts the message in each band (checked against spamc, not assumed)."""


def reference_band(score: float, required: float) -> str:
    """The st patch's bands for QUARANTINE/DELETE/DELTA relative to ``required`` (reference text)."""
    if score >= required + DELETE:
        return "delete"
    if score >= required + QUARANTINE:
        return "quarantine"
    if score >= required + 2 * DELTA:
        return "HIGH"
    if score >= required + DELTA:
        return "MEDIUM"
    if score >= required:
        return "LOW"
    return "clean"


@dataclass(frozen=True)
class Scored:
    """A corpus message and its real score for spamd's default user."""

    path: Path
    data: bytes
    score: float


def spamc_score(spamd: SpamdInstance, data: bytes, *args: str) -> tuple[float, float]:
    done = spamd.spamc(data, "-c", *args)
    score, _, required = done.stdout.decode().strip().partition("/")
    assert required, f"spamc -c printed {done.stdout!r} (stderr {done.stderr!r})"
    return float(score), float(required)


@pytest.fixture(scope="module")
def scored(spamd_instance: SpamdInstance) -> Scored:
    """The first spam of the corpus whose real score leaves room under it for every band's required_score."""
    for path in sorted(p for p in CORPUS.iterdir() if p.is_file() and p.name.isdigit()):
        data = path.read_bytes()
        score, _ = spamc_score(spamd_instance, data)
        if 6.0 <= score < 100.0:  # required_score = score - 5 must stay positive
            return Scored(path, data, score)
    pytest.skip(f"no message of {CORPUS} scores between 6 and 100 here")


def make_user(spamd: SpamdInstance, name: str, required: float) -> str:
    """A spamd user with its own required_score (read by spamd's children, which run as nobody)."""
    folder = spamd.workdir / "users" / name
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    prefs = folder / "user_prefs"
    prefs.write_text(f"required_score {required:.1f}\n")
    prefs.chmod(0o644)
    return name


def user_for(spamd: SpamdInstance, scored: Scored, band: str, prefix: str = "levels") -> str:
    return make_user(spamd, f"{prefix}-{band.lower()}", round(scored.score + REQUIRED_SHIFT[band], 1))


@pytest.fixture
def next_hop() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


def levels(spamd: SpamdInstance, user: str, **options: object) -> spam_levels:
    return spam_levels(
        spamassassind(spamd.address, user),
        subject_tag=SUBJECT_TAG,
        quarantine=QUARANTINE,
        delete=DELETE,
        reject=True,
        relative=True,
        delta=DELTA,
        **options,  # type: ignore[arg-type]
    )


def message(data: bytes, *, sender: str = "spammer@example.net", client: str = "198.51.100.9") -> Mail:
    envelope = Envelope(sender=sender, recipients=[RECIPIENT], client_address=client, queue_id="SPAMQ1")
    return Mail(envelope, data)


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def header(data: bytes, name: str) -> list[str]:
    """Values of header ``name`` in the header block of ``data`` (unfolded)."""
    head = lf(data).partition(b"\n\n")[0].decode("utf-8", "replace")
    unfolded = re.sub(r"\n[ \t]+", " ", head)
    return [
        line.split(":", 1)[1].strip() for line in unfolded.split("\n") if line.lower().startswith(name.lower() + ":")
    ]


def to(server: RecordingServer, recipient: str) -> list[Received]:
    return [m for m in server.messages if m.recipients == [recipient]]


async def run(tmp_path: Path, server: RecordingServer, scanner: spam_levels, mail: Mail, *hooks: spam_forward):
    settings = Settings(state_dir=str(tmp_path), smtp_server=("127.0.0.1", server.port), hooks=hooks)
    path = MailPath([scanner], settings)
    try:
        return await path.process(mail)
    finally:
        await path.close()


@pytest.mark.parametrize("band", list(REQUIRED_SHIFT))
async def test_each_band_with_the_real_score(
    spamd_instance: SpamdInstance, scored: Scored, next_hop: RecordingServer, tmp_path: Path, band: str
) -> None:
    user = user_for(spamd_instance, scored, band)
    score, required = spamc_score(spamd_instance, scored.data, "-u", user)
    assert score == scored.score  # the user's required_score moves the bands, not the score
    expected = reference_band(score, required)
    assert expected == band, f"required_score {required} did not put {score} in {band}"

    mail = message(scored.data)
    decision, outcome = await run(tmp_path, next_hop, levels(spamd_instance, user), mail, spam_forward(ADMIN))
    result = decision.result
    assert isinstance(result, SpamLevelResult)
    assert (result.score, result.required) == (score, required)  # mailsift read what spamc read
    delivered, forwarded = to(next_hop, RECIPIENT), to(next_hop, ADMIN)
    status = f"hits={score:.1f} required={required:.1f}"
    original_subject = header(scored.data, "Subject")[0]

    if expected == "clean":
        assert (result.band, outcome.reply.code) == (Band.CLEAN, 250)
        (copy,) = delivered
        assert header(copy.data, "X-Spam-Status") == [f"No, {status}"]
        assert header(copy.data, "Subject") == [original_subject]
    elif expected in ("LOW", "MEDIUM", "HIGH"):
        assert (result.band, result.subject_level, outcome.reply.code) == (Band.TAGGED, expected, 250)
        (copy,) = delivered
        assert header(copy.data, "Subject") == [f"{SUBJECT_TAG}{expected} {original_subject}"]
        assert header(copy.data, "X-Spam-Status") == [f"Yes, {status}"]
        assert header(copy.data, "X-Spam-Flag") == ["YES"]
        assert lf(copy.data).endswith(lf(scored.data).partition(b"\n\n")[2])  # body untouched
    elif expected == "quarantine":
        assert (decision.disposition, outcome.reply.code) == (Disposition.QUARANTINE, 250)
        assert delivered == []
        (stored,) = outcome.quarantined
        assert "/spam/" in stored
        assert Path(stored).read_bytes().endswith(scored.data)
        (copy,) = forwarded  # sa-forward: the quarantined spam, redirected unmodified with a null sender
        assert (copy.sender, lf(copy.data)) == ("<>", lf(scored.data))
    else:
        assert (result.band, decision.disposition, outcome.reply.code) == (Band.REJECT, Disposition.REJECT, 550)
        assert "SPAM" in outcome.reply.text
        assert (delivered, outcome.quarantined) == ([], ())
    if expected != "quarantine":
        assert forwarded == []


@pytest.mark.parametrize("client", ["127.0.0.1", SECONDARY_MX])
async def test_delete_band_from_a_trusted_client_is_deleted_not_rejected(
    spamd_instance: SpamdInstance, scored: Scored, next_hop: RecordingServer, tmp_path: Path, client: str
) -> None:
    user = user_for(spamd_instance, scored, "delete")
    assert reference_band(*spamc_score(spamd_instance, scored.data, "-u", user)) == "delete"
    scanner = levels(spamd_instance, user, trusted=["127.0.0.0/8", "::1", SECONDARY_MX])
    decision, outcome = await run(tmp_path, next_hop, scanner, message(scored.data, client=client))
    assert isinstance(decision.result, SpamLevelResult)
    assert (decision.result.band, decision.disposition, outcome.reply.code) == (Band.DELETE, Disposition.DROP, 250)
    assert "trusted client" in decision.result.detail
    assert (next_hop.messages, outcome.quarantined) == ([], ())
    other = await run(tmp_path, next_hop, scanner, message(scored.data, client="198.51.100.9"))
    assert other[1].reply.code == 550  # the same spam from anywhere else is rejected


def spamd_checks(spamd: SpamdInstance, user: str) -> int:
    """How many messages spamd's log says it checked for ``user``."""
    log = (spamd.workdir / "spamd.log").read_text(errors="replace")
    return len(re.findall(rf"spamd: checking message .* for {re.escape(user)}:", log))


def wait_for_checks(spamd: SpamdInstance, user: str, count: int, deadline: float = 30.0) -> int:
    end = time.monotonic() + deadline
    while spamd_checks(spamd, user) < count and time.monotonic() < end:
        time.sleep(0.1)
    return spamd_checks(spamd, user)


@pytest.mark.parametrize(
    ("sender", "from_header"),
    [("", None), ("bounces@example.net", b"From: Mail Delivery System <MAILER-DAEMON@mx.example.net>")],
    ids=["null-sender", "from-mailer-daemon"],
)
async def test_bounces_skip_spamd_with_skip_bounces(
    spamd_instance: SpamdInstance,
    scored: Scored,
    next_hop: RecordingServer,
    tmp_path: Path,
    sender: str,
    from_header: bytes | None,
) -> None:
    data = scored.data
    if from_header is not None:
        data = re.sub(rb"(?im)^from:.*\n", from_header + b"\n", data, count=1)
        assert header(data, "From") == [from_header.decode().partition(": ")[2]]
    score, _ = spamc_score(spamd_instance, data)  # the new From: may change the rules hit
    user = make_user(spamd_instance, f"bounce{len(sender)}", round(score + REQUIRED_SHIFT["delete"], 1))
    assert reference_band(*spamc_score(spamd_instance, data, "-u", user)) == "delete"
    wait_for_checks(spamd_instance, user, 1)  # spamc's own check above
    checks = spamd_checks(spamd_instance, user)

    skipped, outcome = await run(
        tmp_path, next_hop, levels(spamd_instance, user, skip_bounces=True), message(data, sender=sender)
    )
    assert isinstance(skipped.result, SpamLevelResult)
    assert (skipped.result.band, outcome.reply.code) == (Band.SKIPPED, 250)
    (copy,) = to(next_hop, RECIPIENT)
    assert lf(copy.data) == lf(data)  # delivered as it came: not scored, not tagged
    checked, rejected = await run(tmp_path, next_hop, levels(spamd_instance, user), message(data, sender=sender))
    assert (checked.disposition, rejected.reply.code) == (Disposition.REJECT, 550)  # the same bounce, checked
    # spamd's own log: the checked run is there, the skipped one never reached it.
    assert wait_for_checks(spamd_instance, user, checks + 1) == checks + 1


async def test_sa_fwd_verbose_adds_the_x_spam_headers(
    spamd_instance: SpamdInstance, scored: Scored, next_hop: RecordingServer, tmp_path: Path
) -> None:
    user = user_for(spamd_instance, scored, "quarantine")
    score, required = spamc_score(spamd_instance, scored.data, "-u", user)
    assert reference_band(score, required) == "quarantine"
    hook = spam_forward(ADMIN, verbose=True)
    decision, outcome = await run(tmp_path, next_hop, levels(spamd_instance, user), message(scored.data), hook)
    assert (decision.disposition, len(outcome.quarantined)) == (Disposition.QUARANTINE, 1)
    (copy,) = to(next_hop, ADMIN)
    assert copy.sender == "<>"
    assert header(copy.data, "X-Spam-Status") == [f"Yes, hits={score:.1f} required={required:.1f}"]
    assert header(copy.data, "X-Spam-Level") == ["*" * min(50, int(score))]
    (report,) = header(copy.data, "X-Spam-Report")
    assert "Content analysis details" in report
    assert f"({score:.1f} points, {required:.1f} required)" in report
    assert lf(copy.data).endswith(lf(scored.data))  # the original follows, unchanged
