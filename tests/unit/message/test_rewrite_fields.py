"""``edit_fields`` and the order of ``apply_edits``: fields removed, then replaced, then the Subject's
prefix, then added; only the top-level header block, the body byte for byte."""

from __future__ import annotations

from mailsift.message.result import AddHeader, ModifyHeader, RemoveHeaders
from mailsift.message.rewrite import apply_edits, edit_fields

RAW = (
    b"Received: from a\r\n\tby b\r\n"
    b"X-Spam-Status: No,\r\n  hits=-100 folded\r\n"
    b"Subject: hi\r\n"
    b"X-Spam-Flag: NO\r\n"
    b"\r\n"
    b"X-Spam-Status: body line\r\n"
)


def test_a_removed_field_goes_with_its_continuation_lines() -> None:
    out = edit_fields(RAW, [RemoveHeaders("X-Spam-")])
    assert out == b"Received: from a\r\n\tby b\r\nSubject: hi\r\n\r\nX-Spam-Status: body line\r\n"


def test_a_modified_field_replaces_the_first_and_drops_the_others() -> None:
    raw = b"A: 1\nB: x\nA: 2\n  more\n\nbody\n"
    assert edit_fields(raw, modified=[ModifyHeader("a", "new")]) == b"a: new\nB: x\n\nbody\n"


def test_a_modified_value_is_encoded_and_cannot_add_a_field() -> None:
    out = edit_fields(b"S: x\r\n\r\nb\r\n", modified=[ModifyHeader("X-Found", "Virüs\r\nBcc: v@example.org")])
    head = out.split(b"\r\n\r\n")[0]
    assert head.isascii()
    assert b"\r\nBcc:" not in head
    assert b"=?utf-8?" in head


def test_a_message_without_a_body_or_without_headers() -> None:
    assert edit_fields(b"A: 1\r\nB: 2", [RemoveHeaders("B")]) == b"A: 1\r\n"
    assert edit_fields(b"\r\nbody\r\n", modified=[ModifyHeader("X", "y")]) == b"X: y\r\n\r\nbody\r\n"
    assert edit_fields(b"", modified=[ModifyHeader("X", "y")]) == b"X: y\r\n"


def test_nothing_to_do_returns_the_same_bytes() -> None:
    assert edit_fields(RAW) is RAW
    assert apply_edits(RAW) is RAW


def test_removal_runs_before_additions_and_the_subject_prefix() -> None:
    out = apply_edits(
        RAW,
        [AddHeader("X-Spam-Status", "Yes, hits=9.0")],
        "[SPAM] ",
        removals=[RemoveHeaders("X-Spam-|Subject")],
        modified=[ModifyHeader("X-Spam-Flag", "YES")],
    )
    head, body = out.split(b"\r\n\r\n", 1)
    assert head.split(b"\r\n") == [
        b"X-Spam-Status: Yes, hits=9.0",
        b"Subject: [SPAM]",
        b"X-Spam-Flag: YES",
        b"Received: from a",
        b"\tby b",
    ]
    assert body == b"X-Spam-Status: body line\r\n"
