"""Build 4 of issue 14: no false positives.  Every ham message of the shared corpora delivers under
the README's fuller antivirus example: clamd on the raw message, ``parsemail(decompress(clamd),
raw=True)``, ``file_type``, ``bad_mime`` (its skip list), ``office_macros``.

This tier starts no clamd: ``regexp_scan(EICAR)`` stands in clamd's place (the one signature the
corpora could trip), and the spam lines of the example are left out (no spamd here).  The real
clamd runs the same set in tests/engines/test_ham_clamd.py.

The ham list and the example's scanners (taken from the README block itself) are in
tests/helpers/ham.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from mailsift.core.pipeline import Pipeline
from mailsift.message.mail import Mail
from mailsift.message.result import Disposition
from mailsift.scanners.base import Scanner
from mailsift.scanners.basic import regexp_scan
from tests.helpers.ham import NOT_HAM, corpora_present, fuller_scanners, ham
from tests.helpers.paths import CORPORA

if not corpora_present():
    pytest.skip(f"mail corpora not found at {CORPORA}", allow_module_level=True)

HAM = ham()
CLAMD = regexp_scan([("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")])  # clamd's stand-in, see above


def _stand_in(*_address: Any, **_options: Any) -> Scanner:
    return CLAMD


@pytest.fixture(scope="module")
def fuller() -> Pipeline:
    return Pipeline(fuller_scanners(_stand_in))


def test_the_ham_list_is_the_corpora_minus_spam() -> None:
    assert len(HAM) > 400
    assert "spamassassin-t-data/nice/no_body" in HAM
    assert all((CORPORA / path).is_file() for path in NOT_HAM)


@pytest.mark.parametrize("path", HAM)
async def test_ham_delivers_under_the_fuller_example(path: str, fuller: Pipeline) -> None:
    decision = await fuller.evaluate(Mail(data=(CORPORA / path).read_bytes()))
    assert decision.disposition is Disposition.DELIVER, f"{path}: {decision.result.name} {decision.result.detail}"
