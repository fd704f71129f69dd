"""The ham of the shared corpora and the README's fuller antivirus example, for the false-positive tests
(tests/corpus/test_ham_false_positives.py with a stand-in for clamd, tests/engines/test_ham_clamd.py
with the real one).

Ham: everything of ``../shared/corpora`` but SpamAssassin's ``spam/`` folder and the messages listed
in ``NOT_HAM`` (malware samples and attachment-policy tests of the other projects, by their
provenance in MANIFEST.tsv and README.md).

``fuller_scanners(av)``: the ``SCANNERS`` of the README block ``name=fuller``, run as written but
for the spam lines (no spamd in these tests) and with ``clamd(...)`` made by ``av``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from typing import Any

import mailsift
from mailsift.scanners.base import Scanner
from tests.helpers.paths import CORPORA
from tests.helpers.readme import named

NOT_HAM = {
    "pymilter-test/honey": "a Klez-era virus mail (.scr as audio/x-wav), payload replaced by a stub",
    "rspamd-functional-messages/bad_ext.dotted_file_name.eml": "rspamd's executable-attachment test",
    "rspamd-functional-messages/exe_attm.eml": "rspamd's executable-attachment test",
    "rspamd-functional-messages/next2last-digits_in_brackets.eml": "rspamd's .msi attachment test",
    "rspamd-functional-messages/next2last-digits_in_parens.eml": "rspamd's .msi attachment test",
    "rspamd-functional-messages/broken_richtext.eml": "carries the EICAR string in a stored zip",
}


def corpora_present() -> bool:
    return (CORPORA / "MANIFEST.tsv").is_file()


def ham() -> list[str]:
    """The ham messages' paths relative to ``CORPORA`` (empty when the corpora are missing)."""
    if not corpora_present():
        return []
    with open(CORPORA / "MANIFEST.tsv", encoding="utf-8", newline="") as handle:
        paths = [row["local_path"] for row in csv.DictReader(handle, delimiter="\t")]
    return [p for p in paths if not p.startswith("spamassassin-t-data/spam/") and p not in NOT_HAM]


#: The lines of the README's fuller example left out here: the import (the names are given) and spam.
_LEFT_OUT = ("from mailsift import *", "SPAM")


def fuller_scanners(av: Callable[..., Scanner]) -> list[Scanner]:
    """The README's fuller example's ``SCANNERS`` without its spam lines, ``clamd(...)`` replaced by ``av``."""
    text = named("fuller").text
    kept = [line for line in text.splitlines() if not any(word in line for word in _LEFT_OUT)]
    dropped = len(text.splitlines()) - len(kept)
    assert dropped == 4, f"the README's fuller example changed ({dropped} lines left out): update tests/helpers/ham.py"
    namespace: dict[str, Any] = {name: getattr(mailsift, name) for name in mailsift.__all__}
    namespace["clamd"] = av
    exec("\n".join(kept), namespace)  # the README's own example
    scanners: list[Scanner] = namespace["SCANNERS"]
    return scanners
