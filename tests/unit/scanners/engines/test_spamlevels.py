"""spam_levels band arithmetic and spam_forward, with a fake spam engine (the real spamd: tests/engines).

The fake engine returns a :class:`SpamResult` with a chosen score and required
score; expected bands come from :func:`reference_band`, the st patch's rules
written out plainly, so the module's arithmetic is checked against them on a
grid of scores and at each threshold.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mailsift import config
from mailsift.core.mailpath import MailPath
from mailsift.errors import ConfigError, ScannerError
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Decision, Disposition, ModifySubject, QuarantineCopy, Result, SetDisposition
from mailsift.reporting.spam_forward import spam_forward
from mailsift.scanners.base import MailTarget, Scanner, Target
from mailsift.scanners.engines.common import SpamResult
from mailsift.scanners.engines.spamlevels import Band, SpamLevelResult, spam_levels
from mailsift.settings import Settings
from mailsift.testing import RecordingServer


class FakeSpamEngine(Scanner):
    """Answers like spamassassind with a fixed score and required score; counts its calls."""

    name = "fakespam"

    def __init__(self, score: float, required: float = 5.0) -> None:
        self.score, self.required = score, required
        self.calls = 0

    async def scan(self, target: Target) -> Result:
        self.calls += 1
        level = self.score / self.required if self.required > 0 else 0.0
        return SpamResult(
            level,
            "Spam" if level >= 1.0 else "",
            self.name,
            f"score={self.score:g} required={self.required:g}",
            score=self.score,
            required=self.required,
            report="Content analysis details:   (x points, y required)",
        )


def reference_band(score: float, required: float, *, quarantine: float, delete: float, delta: float) -> str:
    """The st patch's bands, relative to ``required``, as the reference describes them."""
    if score >= required + delete:
        return "delete"
    if score >= required + quarantine:
        return "quarantine"
    if score >= required + 2 * delta:
        return "HIGH"
    if score >= required + delta:
        return "MEDIUM"
    if score >= required:
        return "LOW"
    return "clean"


def mail(sender: str = "spammer@example.net", client: str = "192.0.2.7", head: bytes = b"") -> Mail:
    envelope = Envelope(sender=sender, recipients=["user@example.test"], client_address=client, queue_id="Q1")
    return Mail(envelope, head + b"From: x@example.net\r\nSubject: hello\r\n\r\nbody\r\n")


async def classify(scanner: spam_levels, message: Mail | None = None) -> SpamLevelResult:
    result = await scanner.scan(MailTarget(message or mail()))
    assert isinstance(result, SpamLevelResult)
    return result


def band_of(result: SpamLevelResult) -> str:
    if result.band is Band.TAGGED:
        return result.subject_level
    return "delete" if result.band in (Band.DELETE, Band.REJECT) else result.band.value


SCORES = [round(-2.0 + 0.1 * i, 1) for i in range(150)]  # -2.0 .. 12.9 on spamd's 0.1 grid


@pytest.mark.parametrize("required", [5.0, 6.5, 2.5])
async def test_every_score_falls_in_the_reference_band(required: float) -> None:
    seen = set()
    for score in SCORES:
        scanner = spam_levels(FakeSpamEngine(score, required), quarantine=2.1, delete=4.2, delta=0.5)
        result = await classify(scanner)
        expected = reference_band(score, required, quarantine=2.1, delete=4.2, delta=0.5)
        assert band_of(result) == expected, (score, required)
        seen.add(expected)
    assert seen == {"clean", "LOW", "MEDIUM", "HIGH", "quarantine", "delete"}


async def test_the_patch_example_thresholds_6_5_8_6_10_7() -> None:
    # "required-hits 6.5, sa-quarantine 2.1, sa-delete 4.2: over 6.5 tagged, over 8.6 quarantined, over 10.7 deleted"
    def at(score: float) -> spam_levels:
        return spam_levels(FakeSpamEngine(score, 6.5), quarantine=2.1, delete=4.2, delta=0.5)

    assert (await classify(at(6.4))).band is Band.CLEAN
    assert (await classify(at(6.5))).band is Band.TAGGED
    assert (await classify(at(8.5))).band is Band.TAGGED
    assert (await classify(at(8.6))).band is Band.QUARANTINE
    assert (await classify(at(10.6))).band is Band.QUARANTINE
    assert (await classify(at(10.7))).band is Band.DELETE


@pytest.mark.parametrize(
    ("score", "level"), [(5.0, "LOW"), (5.4, "LOW"), (5.5, "MEDIUM"), (5.9, "MEDIUM"), (6.0, "HIGH")]
)
async def test_subject_level_prefix(score: float, level: str) -> None:
    result = await classify(spam_levels(FakeSpamEngine(score), subject_tag="SPAM *** ", quarantine=2.1, delta=0.5))
    subjects = [a.prefix for a in result.actions if isinstance(a, ModifySubject)]
    assert subjects == [f"SPAM *** {level} "]
    decision = Decision.from_results([result])
    assert decision.disposition is Disposition.DELIVER
    assert decision.subject_prefix == f"SPAM *** {level} "
    assert ("X-Spam-Flag", "YES") in [(h.name, h.value) for h in decision.headers]
    assert f"Yes, hits={score:.1f} required=5.0" in [h.value for h in decision.headers]


async def test_without_delta_the_subject_tag_alone_and_clean_mail_untagged() -> None:
    tagged = Decision.from_results([await classify(spam_levels(FakeSpamEngine(9.0), subject_tag="[SPAM] "))])
    assert (tagged.disposition, tagged.subject_prefix) == (Disposition.DELIVER, "[SPAM] ")
    clean = Decision.from_results([await classify(spam_levels(FakeSpamEngine(4.9), subject_tag="[SPAM] "))])
    assert (clean.disposition, clean.subject_prefix) == (Disposition.DELIVER, "")
    assert [h.value for h in clean.headers if h.name == "X-Spam-Status"] == ["No, hits=4.9 required=5.0"]
    quiet = Decision.from_results([await classify(spam_levels(FakeSpamEngine(9.0), subject_tag=None, headers=False))])
    assert (quiet.subject_prefix, quiet.headers) == ("", ())


async def test_relative_thresholds_follow_the_required_score_absolute_ones_do_not() -> None:
    for required in (2.5, 5.0, 8.0):
        score = required + 3.0
        relative = await classify(spam_levels(FakeSpamEngine(score, required), quarantine=2.1, delete=4.2))
        assert relative.band is Band.QUARANTINE
    absolute = spam_levels(FakeSpamEngine(7.0, 2.5), tag=6.0, quarantine=8.0, delete=10.0, relative=False)
    assert (await classify(absolute)).band is Band.TAGGED  # 7.0 is over 2.5+2.1 but under the absolute 8.0
    assert (await classify(spam_levels(FakeSpamEngine(8.0, 2.5), quarantine=8.0, relative=False))).band is (
        Band.QUARANTINE
    )
    below_required = spam_levels(FakeSpamEngine(3.0, 5.0), quarantine=3.0, delete=9.0, relative=False)
    held = await classify(below_required)
    assert held.band is Band.QUARANTINE
    assert held.detected  # held mail is a detection even under the engine's own threshold
    assert Decision.from_results([held]).disposition is Disposition.QUARANTINE


async def test_tag_offset_above_required_delivers_the_engine_detection_untagged() -> None:
    result = await classify(spam_levels(FakeSpamEngine(5.5, 5.0), tag=1.0, quarantine=3.0))
    assert result.band is Band.CLEAN
    assert result.detected  # spamassassind's level 1.1 is kept ...
    decision = Decision.from_results([result])
    assert decision.disposition is Disposition.DELIVER  # ... but delivered, not rejected
    assert decision.subject_prefix == ""


async def test_quarantine_band_actions() -> None:
    result = await classify(spam_levels(FakeSpamEngine(8.0), quarantine=2.1, delete=4.2, category="junk"))
    assert QuarantineCopy("junk") in result.actions
    decision = Decision.from_results([result])
    assert (decision.disposition, decision.quarantine, decision.reply.code) == (Disposition.QUARANTINE, ("junk",), 250)
    assert "band=quarantine" in decision.result.detail


async def test_delete_band_rejects_unless_the_client_is_trusted() -> None:
    def scanner(reject: bool) -> spam_levels:
        return spam_levels(FakeSpamEngine(9.5), quarantine=2.1, delete=4.2, reject=reject, trusted=["192.0.2.25"])

    rejected = await classify(scanner(True), mail(client="198.51.100.9"))
    assert rejected.band is Band.REJECT
    decision = Decision.from_results([rejected])
    assert (decision.disposition, decision.reply.code) == (Disposition.REJECT, 550)
    assert "SPAM" in decision.reply.text
    secondary_mx = await classify(scanner(True), mail(client="192.0.2.25"))
    assert (secondary_mx.band, Decision.from_results([secondary_mx]).disposition) == (Band.DELETE, Disposition.DROP)
    assert "trusted client" in secondary_mx.detail
    not_rejecting = await classify(scanner(False), mail(client="198.51.100.9"))
    assert Decision.from_results([not_rejecting]).disposition is Disposition.DROP
    assert Decision.from_results([not_rejecting]).quarantine == ()  # deleted: no copy, no notice


@pytest.mark.parametrize("client", ["127.0.0.1", "::1", "::ffff:127.0.0.2"])
async def test_localhost_is_never_rejected_by_default(client: str) -> None:
    result = await classify(spam_levels(FakeSpamEngine(20.0), delete=4.2, reject=True), mail(client=client))
    assert result.band is Band.DELETE
    assert SetDisposition(Disposition.DROP) in result.actions


@pytest.mark.parametrize(
    ("sender", "head"),
    [
        ("", b""),
        ("MAILER-DAEMON@mx.example.net", b""),
        ("bounces@example.net", b"From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n"),
        ("bounces@example.net", b"From: mailer-daemon\r\n"),
    ],
)
async def test_bounces_are_not_given_to_the_engine_with_skip_bounces(sender: str, head: bytes) -> None:
    engine = FakeSpamEngine(50.0)
    message = Mail(
        Envelope(sender=sender, recipients=["u@example.test"], client_address="192.0.2.7"),
        head + b"Subject: Undelivered Mail\r\n\r\nbody\r\n",
    )
    skipped = await classify(spam_levels(engine, delete=4.2, reject=True, skip_bounces=True), message)
    assert (skipped.band, skipped.level, engine.calls) == (Band.SKIPPED, 0.0, 0)
    assert "SA_SKIP_MD" in skipped.detail
    checked = await classify(spam_levels(engine, delete=4.2, reject=True), message)
    assert (checked.band, engine.calls) == (Band.REJECT, 1)


async def test_a_normal_sender_is_checked_with_skip_bounces() -> None:
    engine = FakeSpamEngine(50.0)
    result = await classify(spam_levels(engine, delete=4.2, skip_bounces=True), mail(sender="mailer@example.net"))
    assert (result.band, engine.calls) == (Band.DELETE, 1)


async def test_no_verdict_and_no_spam_score() -> None:
    not_checked = await classify(spam_levels(FakeSpamEngine(0.0, 0.0), quarantine=2.1))
    assert (not_checked.band, not_checked.detected, not_checked.actions) == (Band.SKIPPED, False, ())

    class NotSpam(Scanner):
        async def scan(self, target: Target) -> Result:
            return Result(0.0, "", "plain")

    with pytest.raises(ScannerError, match="no spam score"):
        await spam_levels(NotSpam()).scan(MailTarget(mail()))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reject": True}, "set delete"),
        ({"quarantine": 4.2, "delete": 2.1}, "greater than quarantine"),
        ({"quarantine": 2.0, "delete": 2.0}, "greater than quarantine"),
        ({"quarantine": -1.0}, "above the tag"),
        ({"tag": 1.0, "delete": 0.5}, "above the tag"),
        ({"delta": 0}, "positive"),
        ({"quarantine": "2.1"}, "number"),
        ({"quarantine": float("nan")}, "number"),
        ({"reject": "yes", "delete": 4.2}, "True or False"),
        ({"subject_tag": "a\nb"}, "one line"),
        ({"trusted": ["not-a-net"]}, "bad network"),
        ({"category": "Spam/../x"}, "category"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        spam_levels(FakeSpamEngine(1.0), **kwargs)  # type: ignore[arg-type]


def test_describe() -> None:
    text = spam_levels(FakeSpamEngine(1.0), quarantine=2.1, delete=4.2, reject=True, delta=0.5).describe()
    assert text == "spam_levels(tag=required, quarantine=required+2.1, delete=required+4.2, reject, delta=0.5)"


# ------------------------------------------------------------------ spam_forward (sa-forward)


@pytest.fixture
def recorder() -> RecordingServer:
    with RecordingServer() as server:
        yield server


def forwarding_path(tmp_path: Path, server: RecordingServer, score: float, hook: spam_forward) -> MailPath:
    settings = Settings(state_dir=str(tmp_path), smtp_server=("127.0.0.1", server.port), hooks=(hook,))
    scanner = spam_levels(FakeSpamEngine(score), quarantine=2.1, delete=4.2, reject=True)
    return MailPath([scanner], settings)


@pytest.mark.parametrize("verbose", [False, True])
async def test_quarantined_spam_is_forwarded_with_a_null_sender(
    tmp_path: Path, recorder: RecordingServer, verbose: bool
) -> None:
    hook = spam_forward("antispam@example.test", verbose=verbose)
    path = forwarding_path(tmp_path, recorder, 8.0, hook)
    message = mail()
    decision, outcome = await path.process(message)
    assert (decision.disposition, outcome.reply.code, len(outcome.quarantined)) == (Disposition.QUARANTINE, 250, 1)
    (copy,) = recorder.messages
    assert (copy.sender, copy.recipients) == ("<>", ["antispam@example.test"])  # MAIL FROM:<>
    if verbose:
        head, _, rest = copy.data.partition(b"From: x@example.net")
        assert b"X-Spam-Status: Yes, hits=8.0 required=5.0\r\n" in head
        assert b"X-Spam-Report: Content analysis details:" in head
        assert b"From: x@example.net" + rest == message.raw
    else:
        assert copy.data == message.raw  # redirected unmodified
    await path.close()


@pytest.mark.parametrize("score", [1.0, 5.5, 9.9])
async def test_only_quarantined_spam_is_forwarded(tmp_path: Path, recorder: RecordingServer, score: float) -> None:
    path = forwarding_path(tmp_path, recorder, score, spam_forward("antispam@example.test"))
    decision, _ = await path.process(mail())
    assert decision.disposition is not Disposition.QUARANTINE
    assert all(m.recipients != ["antispam@example.test"] for m in recorder.messages)
    await path.close()


async def test_no_forward_when_the_quarantine_copy_failed(tmp_path: Path, recorder: RecordingServer) -> None:
    path = forwarding_path(tmp_path, recorder, 8.0, spam_forward("antispam@example.test"))
    (tmp_path / "quarantine").write_text("not a directory")  # the quarantine cannot be written
    _, outcome = await path.process(mail())
    assert outcome.reply.code == 451
    assert recorder.messages == []
    await path.close()


async def test_a_failed_forward_is_logged_and_changes_nothing(
    tmp_path: Path, recorder: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    recorder.rcpt_reply = "550 5.1.1 no such user"
    path = forwarding_path(tmp_path, recorder, 8.0, spam_forward("antispam@example.test"))
    with caplog.at_level(logging.WARNING, logger="mailsift.spamlevels"):
        decision, outcome = await path.process(mail())
    assert (decision.disposition, outcome.reply.code) == (Disposition.QUARANTINE, 250)
    assert "spam_forward to <antispam@example.test> failed" in caplog.text
    assert outcome.quarantined[0] in caplog.text
    await path.close()


def test_spam_forward_arguments_and_check(tmp_path: Path) -> None:
    for bad in ("", "antispam", "a b@example.test", "<a@example.test>"):
        with pytest.raises(ConfigError, match="address"):
            spam_forward(bad)
    with pytest.raises(ConfigError, match="verbose"):
        spam_forward("a@example.test", verbose="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="next hop"):
        spam_forward("a@example.test", next_hop="nowhere")
    with pytest.raises(ConfigError, match="needs a next hop"):
        spam_forward("a@example.test").check(Settings(state_dir=str(tmp_path)))
    spam_forward("a@example.test", next_hop=("127.0.0.1", 10025)).check(Settings(state_dir=str(tmp_path)))
    assert spam_forward("a@example.test", True).describe() == "spam_forward(a@example.test, verbose)"


def test_in_a_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.py"
    head = (
        "from mailsift import *\n"
        "from mailsift.scanners.engines.spamlevels import spam_levels\n"
        "from mailsift.reporting.spam_forward import spam_forward\n"
        f"STATE_DIR = {str(tmp_path)!r}\n"
        "SCANNERS = [spam_levels(spamassassind(['127.0.0.1', 783]), quarantine=2.1, delete=4.2, reject=True)]\n"
        "HOOKS = [spam_forward('antispam@example.test', verbose=True)]\n"
    )
    path.write_text(head)
    with pytest.raises(ConfigError, match="spam_forward needs a next hop"):
        config.load(str(path))
    path.write_text(head + "SMTP_SERVER = ('127.0.0.1', 10025)\n")
    loaded = config.load(str(path))
    assert [h.describe() for h in loaded.settings.hooks] == ["spam_forward(antispam@example.test, verbose)"]
