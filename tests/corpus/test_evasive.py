"""Every message of the evasive-MIME set (``bench/evasive/generate.py``): mailsift finds the
payload by its virus name (not only "undecodable") and sees every hidden ``file.zip``; the
controls pass.  A decoder that misses shows up here as a failure, not only as a figure of
``bench/evasive/results.md``.

The cases that miss on wip/evasive (the decoders are written on other branches) are strict
xfails naming the family and the branch: once those are merged the marks come off, and
strict xfail turns a case that starts to pass into a failure until they do.
"""

from __future__ import annotations

import pytest

from mailsift.message.mail import Mail
from mailsift.scanners.archive import decompress
from mailsift.scanners.badmime import bad_mime
from mailsift.scanners.base import MailTarget
from mailsift.scanners.basic import regexp_scan
from mailsift.scanners.parsemail import mime_ext, parsemail
from tests.helpers.evasive import CASES

EICAR = [("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")]

PENDING: dict[str, str] = {}
"""Message id -> the family whose decoder is pending, and its branch."""


def _param(case: tuple[str, str, str, str, str, bytes]) -> object:
    ident = case[0]
    marks = []
    if ident in PENDING:
        marks.append(pytest.mark.xfail(strict=True, reason=f"decoder: {PENDING[ident]}"))
    return pytest.param(case, id=ident, marks=marks)


CONTENT = [_param(c) for c in CASES if c[2] == "content"]
NAMES = [_param(c) for c in CASES if c[2] == "filename"]
CONTROLS = [_param(c) for c in CASES if c[2] == "control"]


def test_the_set_covers_every_family_with_three_messages() -> None:
    families: dict[str, int] = {}
    for _ident, family, _kind, _description, source, _data in CASES:
        if source != "-":  # issue 14's families name who reads them that way
            families[family] = families.get(family, 0) + 1
    assert len(families) >= 27
    assert all(count >= 3 for count in families.values()), families
    assert len({c[0] for c in CASES}) == len(CASES)
    assert len([c for c in CASES if c[4] == "-" and c[2] == "content"]) == 52  # the original set, kept


@pytest.mark.parametrize("case", CONTENT)
async def test_mailsift_finds_the_hidden_payload(case: tuple[str, str, str, str, str, bytes]) -> None:
    ident, family, _kind, description, _source, data = case
    result = await parsemail(decompress(regexp_scan(EICAR)), raw=True).scan(MailTarget(Mail(data=data)))
    assert result.detected, f"{ident} ({family}): {description}"
    assert result.name == "EICAR-Test", f"{ident} ({family}): {description}: {result.name}"


@pytest.mark.parametrize("case", NAMES)
async def test_mailsift_sees_the_hidden_name(case: tuple[str, str, str, str, str, bytes]) -> None:
    ident, family, _kind, description, _source, data = case
    result = await parsemail(mime_ext(r"\.zip$")).scan(MailTarget(Mail(data=data)))
    assert result.detected, f"{ident} ({family}): {description}"


@pytest.mark.parametrize("case", CONTROLS)
async def test_the_controls_pass(case: tuple[str, str, str, str, str, bytes]) -> None:
    ident, _family, _kind, _description, _source, data = case
    mail = Mail(data=data)
    for scanner in (parsemail(decompress(regexp_scan(EICAR)), raw=True), parsemail(mime_ext(r"\.zip$")), bad_mime()):
        result = await scanner.scan(MailTarget(mail))
        assert not result.detected, f"{ident}: {scanner.describe()} found {result.name}"
