"""The MIME tree builder (mailsift.mime.tree): what it keeps for the lenient views."""

from __future__ import annotations

from mailsift.message.mail import Mail
from mailsift.mime.tree import STRAY

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
