"""Human verdicts on the tracking pages (mailsift.web.tracking_pages): the story, the search list, the timeline."""

from __future__ import annotations

import dataclasses

from mailsift.reporting.tracking import Story, TrackedCopy
from mailsift.web.tracking_pages import _humane, human_story_verdict

STORY = Story(
    id=1,
    time=1_700_000_000.0,
    queue_id="Q1",
    message_id="<m@x>",
    sender="s@x.example",
    subject="hi",
    size=100,
    client_address="192.0.2.1",
    client_name="mx.example",
    helo="mx.example",
    status="Quarantined",
    action="quarantine",
    reply="250",
    level=1.0,
    name="Eicar-Test-Signature",
    scanner="clamd",
    note="",
    elapsed=0.5,
    spam_score=None,
    spam_required=None,
    recipients=("r@y.example",),
    quarantine=(TrackedCopy("20231114T221320-0001", "held", "virus"),),
)


def test_story_verdicts_read_as_people_read_them() -> None:
    assert human_story_verdict(STORY) == "Virus: Eicar-Test-Signature"
    spam = dataclasses.replace(
        STORY, name="Spam", scanner="spamassassind*const", level=99.9, spam_score=12.3, spam_required=5.0, quarantine=()
    )
    assert human_story_verdict(spam) == "Spam, score 12.3 of 5.0"
    clean = dataclasses.replace(STORY, level=0.1, name="", action="deliver", quarantine=())
    assert human_story_verdict(clean) == "Clean"


def test_the_timeline_names_the_human_verdict_on_the_decision() -> None:
    human = human_story_verdict(STORY)
    marked = [(_humane(event.text, STORY, human), event.text) for event in STORY.events()]
    assert [text for prefix, text in marked if prefix] == [
        "quarantined by clamd: Eicar-Test-Signature (level 1.00), not delivered; reply 250 (Quarantined)"
    ]
    assert {prefix for prefix, _ in marked} == {"", "Virus: Eicar-Test-Signature"}
    clean = dataclasses.replace(STORY, level=0.1, name="", action="deliver", quarantine=())
    assert all(_humane(event.text, clean, "Clean") == "" for event in clean.events())
