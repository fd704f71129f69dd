"""The MIME tree builder (mailsift.mime.tree): what it keeps for the lenient views."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from mailsift.message.mail import Mail
from mailsift.mime.codecs import MAX_DECODED_INPUT
from mailsift.mime.tree import STRAY, Part
from tests.helpers.decoding import guard_decode_header
from tests.helpers.memory import big_message, peak_above

HEAD = b'From: a@example.net\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n\n'
TEXT = b"--b\nContent-Type: text/plain\n\nhello\n"


def test_an_epilogue_holding_more_parts_is_kept_for_the_views() -> None:
    late = b'--b\nContent-Type: application/zip; name="file.zip"\n\nPK\n--b--\n'
    mail = Mail(data=HEAD + TEXT + b"--b--\n" + late)
    [stray] = [part for part in mail.alternates if part.origin == STRAY]
    assert (stray.path, stray.data) == ("1~epilogue", late)
    assert stray not in mail.views  # the text itself is no view, only what the split finds in it


def test_a_preamble_with_hidden_part_headers_is_kept() -> None:
    early = b"--x\n\vContent-Type: application/zip\n\nPK\n"
    mail = Mail(data=HEAD + early + TEXT + b"--b--\n")
    assert [part.path for part in mail.alternates if part.origin == STRAY] == ["1~preamble"]


def test_an_ordinary_preamble_and_epilogue_are_not_kept() -> None:
    mail = Mail(data=HEAD + b"This is a multi-part message in MIME format.\n" + TEXT + b"--b--\n-- \nsignature\n")
    assert [part for part in mail.alternates if part.origin == STRAY] == []


def test_a_part_header_of_megabytes_of_encoded_words_is_decoded_only_in_part(monkeypatch: pytest.MonkeyPatch) -> None:
    """A part's Subject of 4 MB of folded encoded words (no front end bounds a part's headers but by
    max_size): decode_header sees at most MAX_DECODED_INPUT characters (it saw all 4 MB: ~50 s);
    the raw value stays whole, the decoded one is cut and marked."""
    sizes = guard_decode_header(monkeypatch)
    word = b"=?utf-8?B?" + base64.b64encode("héllo wörld ".encode()) + b"?="
    folded = b"\n ".join([word] * (4 * 1024 * 1024 // (len(word) + 2)))
    part = b"--b\nContent-Type: text/plain\nSubject: " + folded + b"\n\nhello\n--b--\n"
    mail = Mail(data=HEAD + part)
    [node] = mail.tree.children
    [subject] = [header for header in node.headers if header.name == "Subject"]
    assert len(subject.raw) >= 4 * 1024 * 1024 - len(word)
    assert subject.value.startswith("héllo wörld " * 100)
    assert subject.value.endswith("more characters, not decoded]")
    assert len(subject.value) < MAX_DECODED_INPUT
    assert [part.data for part in mail.parts] == [b"hello"]
    assert sizes
    assert max(sizes) <= MAX_DECODED_INPUT


async def test_the_parse_of_a_big_text_part_holds_it_about_once(tmp_path: Path) -> None:
    # a long base64 run is read back from the spool file into the part: its chunks were listed,
    # then joined (twice the part's size at the peak)
    mail = Mail(data=big_message(8, virus=True), spool_dir=str(tmp_path))
    try:
        assert mail.spooled

        async def parse() -> list[Part]:
            return mail.parts

        parts, peak = await peak_above(parse)
        assert [part.size for part in parts] == [mail.size - mail.raw.index(b"X5O!")]
        assert peak < 1.5 * mail.size, f"peak {peak / mail.size:.2f} times the message's size"
    finally:
        mail.close()
