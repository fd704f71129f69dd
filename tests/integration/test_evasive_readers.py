"""The evasive set checked by an independent reader: Perl's MIME::Tools (``bench/evasive/readers.pl``)
and Python's ``email`` (``policy=default``).  A message that neither opens is no evasion against
these readers; the list of those is fixed here, so that a generator change that breaks a
message (or a reader that starts to open one) shows up.
"""

from __future__ import annotations

import os

import pytest

from tests.helpers.evasive import CASES, readers

if not readers.mime_tools_available():
    if os.environ.get("CI"):
        pytest.fail("Perl's MIME::Tools is missing (scripts/setup.sh --test installs libmime-tools-perl)")
    pytest.skip("Perl's MIME::Tools missing: apt-get install libmime-tools-perl", allow_module_level=True)

NO_READER = {
    # the original 52: odd headers and placements that Python's modern parser and MIME::Tools do not follow
    "b64-pieces", "cte-quoted", "cte-doubled-7bit-first", "cte-missing", "cte-unknown", "cte-on-multipart",
    "ct-doubled-text-first", "ct-doubled-two-boundaries", "ct-comment-in-name", "ct-space-before-colon",
    "ct-param-unfolded", "boundary-mismatch", "boundary-missing", "payload-in-preamble", "payload-in-epilogue",
    "uuencode-in-preamble", "yenc-in-text", "rfc822-base64", "rfc822-broken-inner",
    # issue 14's: uuencode without 'end' under names MIME::Tools does not know; BinHex that MIME::Tools
    # does not decode (no header line, a blank line after it, or a 7bit part); a close delimiter
    # followed by more parts; the duplicated headers whose last one names file.zip (both readers take the first)
    "uucte-x-uue-3", "uucte-uue-3", "uucte-uuencode-3",
    "binhex-header-1", "binhex-no-header-1", "binhex-no-header-2", "binhex-no-header-3",
    "boundary-doubled-2",
    "name-duplicate-disposition-1", "name-duplicate-disposition-3",
    "name-duplicate-content-type-1", "name-duplicate-content-type-3",
}  # fmt: skip


@pytest.fixture(scope="module")
def readings() -> dict[str, tuple[object, object]]:
    perl = readers.mime_tools({c[0]: c[5] for c in CASES})
    return {c[0]: (readers.python_email(c[5]), perl[c[0]]) for c in CASES}


def _opens(kind: str, reading: object) -> bool:
    return bool(reading.eicar if kind == "content" else reading.sees("file.zip"))  # type: ignore[attr-defined]


def test_mime_tools_reads_the_well_formed_messages(readings: dict[str, tuple[object, object]]) -> None:
    _, perl = readings["control-plain"]
    assert perl.eicar  # type: ignore[attr-defined]
    for ident in ("name-rfc2231-out-of-order-1", "name-utf16-encoded-word-1", "binhex-header-2", "uucte-x-uuencode-1"):
        kind = next(c[2] for c in CASES if c[0] == ident)
        assert _opens(kind, readings[ident][1]), ident
    _, control = readings["control-no-zip-name"]
    assert not control.sees("file.zip")  # type: ignore[attr-defined]
    assert control.zip  # type: ignore[attr-defined]


def test_every_case_opens_in_a_reader_except_the_listed_ones(readings: dict[str, tuple[object, object]]) -> None:
    unopened = {
        ident
        for ident, _family, kind, *_ in CASES
        if kind != "control" and not any(_opens(kind, reading) for reading in readings[ident])
    }
    assert unopened == NO_READER
