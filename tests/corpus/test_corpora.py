"""Data-driven tests over the shared mail corpora (``<repo>/../shared/corpora``).

The corpora are real test mail of other projects (SpamAssassin, rspamd, flanker,
MimeKit, pymilter, CPython); ``MANIFEST.tsv`` gives each file's source
repository, commit and original path, and every test id here is the file's
``local_path`` from that manifest (its first folder names the source).  A
failure message repeats the full provenance.

Checked for every file: the manifest's sha256 (the data is what we think it
is), a parse without exception (headers, tree, parts), mail.py's own decoding
equal to the standard library's, and the bundled default pipeline deciding
without tempfail or crash.  The torture test's tree must match flanker's
expectation exactly.
"""

from __future__ import annotations

import csv
import email
import email.policy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

import mailsift.mime.tree
from mailsift import config
from mailsift.core.pipeline import Pipeline
from mailsift.message.mail import Mail
from mailsift.message.result import Disposition

CORPORA = Path(__file__).resolve().parents[2].parent / "shared" / "corpora"

if not (CORPORA / "MANIFEST.tsv").is_file():
    pytest.skip(f"mail corpora not found at {CORPORA} (clone shared/ beside the repo)", allow_module_level=True)


class Entry(NamedTuple):
    """One row of MANIFEST.tsv."""

    local_path: str
    size: int
    sha256: str
    source_repo: str
    source_commit: str
    source_path: str

    @property
    def path(self) -> Path:
        return CORPORA / self.local_path

    @property
    def provenance(self) -> str:
        return f"{self.local_path} = {self.source_repo}@{self.source_commit}:{self.source_path}"


def _manifest() -> list[Entry]:
    with open(CORPORA / "MANIFEST.tsv", encoding="utf-8", newline="") as handle:
        rows = csv.DictReader(handle, delimiter="\t")
        return [
            Entry(
                row["local_path"],
                int(row["bytes"]),
                row["sha256"],
                row["source_repo"],
                row["source_commit"],
                row["source_path"],
            )
            for row in rows
        ]


MANIFEST = _manifest()
FILES = [pytest.param(entry, id=entry.local_path) for entry in MANIFEST]

CONTENT_CONFIG = str(Path(__file__).with_name("content_config.py"))

# The verdicts of CONTENT_CONFIG (every content scanner that needs no daemon)
# that are not "deliver": everything else in the corpora must be delivered.
# Executables by name; the EICAR string, which rspamd's broken_richtext.eml
# carries in a stored zip; and five of SpamAssassin's spam samples.
EXPECTED_VERDICTS = {
    "pymilter-test/honey": ("reject", "Policy.Executable"),  # story[1].scr
    "rspamd-functional-messages/bad_ext.dotted_file_name.eml": ("reject", "Policy.Executable"),
    "rspamd-functional-messages/exe_attm.eml": ("reject", "Policy.Executable"),
    "rspamd-functional-messages/next2last-digits_in_brackets.eml": ("reject", "Policy.Executable"),  # .msi
    "rspamd-functional-messages/next2last-digits_in_parens.eml": ("reject", "Policy.Executable"),  # .msi
    "rspamd-functional-messages/broken_richtext.eml": ("quarantine", "EICAR-Test"),
    # parameters on lines of their own, not folded: qmail-scanner's broken continuation
    "spamassassin-t-data/spam/015": ("reject", "Bad.MIME.Header.Continuation"),
    "spamassassin-t-data/spam/016": ("reject", "Bad.MIME.Header.Continuation"),
    "spamassassin-t-data/spam/badmime2.txt": ("reject", "Bad.MIME.Header.Repeated"),  # two Content-Types
    "spamassassin-t-data/spam/olevbmacro/malicemacro.eml": ("quarantine", "Office.Macro.Suspicious"),
    # zippwmacro.eml: macro.zip opens with its "Password: sa" (issue 14; it was Encrypted.Archive): the
    # macro.xlsm inside has VBA but no AutoExec, so office_macros("suspicious") lets it pass, as it would
    # the same workbook unencrypted; parsemail(decompress(office_macros())) finds it (Office.Macro).
}


def test_the_manifest_lists_every_file() -> None:
    on_disk = {
        str(path.relative_to(CORPORA))
        for path in CORPORA.rglob("*")
        if path.is_file() and path.name not in ("MANIFEST.tsv", "README.md")
    }
    assert on_disk == {entry.local_path for entry in MANIFEST}
    assert len(MANIFEST) > 400


@pytest.mark.parametrize("entry", FILES)
def test_file_matches_its_manifest_entry(entry: Entry) -> None:
    data = entry.path.read_bytes()
    assert len(data) == entry.size, entry.provenance
    assert hashlib.sha256(data).hexdigest() == entry.sha256, entry.provenance


@pytest.mark.parametrize("entry", FILES)
def test_file_parses(entry: Entry) -> None:
    data = entry.path.read_bytes()
    mail = Mail(data=data)
    headers = mail.headers
    assert all(header.name for header in headers), entry.provenance
    rendered = mail.tree.render()
    assert rendered, entry.provenance
    parts = mail.parts
    assert parts, entry.provenance
    assert all(part.path for part in parts), entry.provenance
    assert mail.raw == data, entry.provenance


@pytest.mark.parametrize("entry", FILES)
def test_decoding_matches_the_standard_library(entry: Entry, monkeypatch: pytest.MonkeyPatch) -> None:
    # mail.py keeps runs of base64 lines out of the stdlib parser and decodes leaves
    # itself (to bound memory); forcing that on every such line must change nothing.
    data = entry.path.read_bytes()
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    expected = []
    for node in message.walk():
        if not node.is_multipart():
            payload = node.get_payload(decode=True)
            expected.append(payload if isinstance(payload, bytes) else b"")
    default = Mail(data=data)
    monkeypatch.setattr(mailsift.mime.tree, "_BLOB_MIN", 1)
    forced = Mail(data=data)
    assert [p.data for p in forced.parts if p.origin == "mime"] == expected, entry.provenance
    assert [p.data for p in default.parts] == [p.data for p in forced.parts], entry.provenance
    assert forced.tree.render() == default.tree.render(), entry.provenance


def test_torture_tree_matches_flankers_expectation() -> None:
    # flanker-messages/torture.eml is Mark Crispin's MIME torture test; the expected
    # tree comes from flanker's tests/mime/message/scanner_test.py (TORTURE_PARTS).
    expected = (CORPORA / "flanker-messages" / "torture.expected-tree.txt").read_text(encoding="utf-8")
    mail = Mail(data=(CORPORA / "flanker-messages" / "torture.eml").read_bytes())
    assert mail.tree.render() == expected.rstrip("\n")


@pytest.fixture(scope="module")
def content_pipeline() -> Pipeline:
    return Pipeline(config.load(CONTENT_CONFIG).scanners)


@pytest.mark.parametrize("entry", FILES)
async def test_content_pipeline_decides(entry: Entry, content_pipeline: Pipeline) -> None:
    mail = Mail(data=entry.path.read_bytes())
    decision = await content_pipeline.evaluate(mail)
    assert decision.disposition is not Disposition.TEMPFAIL, f"{entry.provenance}: {decision.result.detail}"
    verdict = (decision.disposition.value, decision.result.name)
    assert verdict == EXPECTED_VERDICTS.get(entry.local_path, ("deliver", "")), entry.provenance


def test_the_scan_command_goes_through_every_corpus_message(tmp_path: Path) -> None:
    """`mailsift scan` as a process over the whole corpora directory: one record per
    file, no error or tempfail, the same verdicts.  Each record carries the time the
    message took (figures in the closing notes; not asserted: timing is not a test)."""
    done = subprocess.run(
        [sys.executable, "-m", "mailsift", "scan", "--json", "-c", CONTENT_CONFIG, str(CORPORA)],
        capture_output=True,
        env={**os.environ, "MAILSIFT_STATE_DIR": str(tmp_path)},
        timeout=600,
        check=False,
    )
    assert done.returncode == 1, done.stderr  # detections, no error
    records = {str(Path(r["file"]).relative_to(CORPORA)): r for r in map(json.loads, done.stdout.splitlines())}
    assert {entry.local_path for entry in MANIFEST} <= set(records)
    for path, record in records.items():
        assert record["action"] not in ("error", "tempfail"), record
        if path in {entry.local_path for entry in MANIFEST}:
            assert (record["action"], record["name"]) == EXPECTED_VERDICTS.get(path, ("deliver", "")), record
        assert record["time"] >= 0
