"""The command-line presets with the real programs: ``clamscan``/``cmd_clamav``
with the private signature DB, and ``bogofilter`` with a wordlist trained here
from SpamAssassin's test mail (``../shared/corpora/spamassassin-t-data``,
Apache-2.0; see its MANIFEST.tsv)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from mailsift.core.pipeline import Pipeline
from mailsift.errors import ScannerError, ScannerTimeout
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Disposition
from mailsift.scanners.base import MailTarget
from mailsift.scanners.engines.command import FILE, bogofilter, clamscan, cmd, cmd_clamav
from mailsift.scanners.parsemail import parsemail
from tests.helpers.archives import zip_of
from tests.helpers.clamd import EICAR, EICAR_NAMES, TESTFILE_NAMES, TESTFILES, ClamdInstance
from tests.helpers.messages import attachment_mail
from tests.helpers.paths import CORPORA

pytestmark = pytest.mark.engines

CORPUS = CORPORA / "spamassassin-t-data"
SPAM = [CORPUS / "spam" / f"{n:03d}" for n in range(1, 12)]
HAM = [CORPUS / "nice" / f"{n:03d}" for n in range(1, 13)]


def make_mail(data: bytes) -> Mail:
    return Mail(Envelope(sender="alice@example.net", recipients=["bob@example.org"]), data)


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"{program} is not installed (scripts/setup.sh --test installs it)")
    return path


# --------------------------------------------------------------------------- clamscan


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The private signature DB (EICAR + clam.exe), written as ClamdInstance does; no clamd needed."""
    need("clamscan")
    instance = ClamdInstance(tmp_path_factory.mktemp("clamscan"))
    instance.write_database()
    return str(instance.database_dir)


async def test_clamscan_finds_eicar_and_passes_clean(database: str) -> None:
    scanner = clamscan(database)
    found = await scanner.scan(MailTarget(make_mail(attachment_mail(("e.com", EICAR, "application/octet-stream")))))
    assert (found.level, found.scanner) == (1.0, "clamscan")
    assert found.name in EICAR_NAMES
    assert found.detail == f"stdin: {found.name} FOUND"
    clean = await scanner.scan(
        MailTarget(make_mail(attachment_mail(("ok.zip", zip_of({"a": b"b"}), "application/zip"))))
    )
    assert (clean.level, clean.name) == (0.0, "")


@pytest.mark.parametrize("filename", TESTFILE_NAMES)
async def test_clamscan_testfile_attached_is_rejected(database: str, filename: str) -> None:
    data = (TESTFILES / filename).read_bytes()
    decision = await Pipeline([cmd_clamav(database)]).evaluate(
        make_mail(attachment_mail((filename, data, "application/octet-stream")))
    )
    assert decision.disposition is Disposition.REJECT, decision
    assert decision.result.scanner == "cmd_clamav"
    assert decision.result.name.startswith("ClamAV-Test-File")


async def test_clamscan_per_part_and_on_a_file(database: str, tmp_path: Path) -> None:
    raw = attachment_mail(("clam.zip", (TESTFILES / "clam.zip").read_bytes(), "application/zip"))
    per_part = await parsemail(clamscan(database)).scan(MailTarget(make_mail(raw)))
    assert per_part.detected
    assert "clam.zip" in per_part.detail
    on_file = cmd(
        ["clamscan", "--no-summary", "--stdout", "--database", database, FILE],
        r": (?P<name>\S+) FOUND$",
        tmpdir=str(tmp_path),
    )
    result = await on_file.scan(MailTarget(make_mail(raw)))
    assert result.name.startswith("ClamAV-Test-File")
    assert list(tmp_path.iterdir()) == []


async def test_clamscan_without_signatures_is_an_error(tmp_path: Path) -> None:
    need("clamscan")
    (tmp_path / "empty").mkdir()
    scanner = clamscan(str(tmp_path / "empty"))
    with pytest.raises(ScannerError, match=r"clamscan exited with 2: .*No supported database files"):
        await scanner.scan(MailTarget(make_mail(b"x")))
    decision = await Pipeline([scanner]).evaluate(make_mail(b"x"))
    assert decision.disposition is Disposition.TEMPFAIL


async def test_real_command_timeout_is_a_tempfail() -> None:
    scanner = cmd([need("sleep"), "300"], timeout=0.3)
    with pytest.raises(ScannerTimeout, match="sleep killed after"):
        await scanner.scan(MailTarget(make_mail(b"x")))
    decision = await Pipeline([scanner]).evaluate(make_mail(b"x"))
    assert decision.disposition is Disposition.TEMPFAIL
    assert decision.reply.code == 451


# --------------------------------------------------------------------------- bogofilter


def train(directory: Path, spam: list[Path], ham: list[Path]) -> str:
    """Register ``spam`` and ``ham`` in a private wordlist (``bogofilter -d``)."""
    directory.mkdir()
    program = need("bogofilter")
    subprocess.run([program, "-d", str(directory), "-s", "-B", *map(str, spam)], check=True)
    subprocess.run([program, "-d", str(directory), "-n", "-B", *map(str, ham)], check=True)
    return str(directory)


@pytest.fixture(scope="module")
def wordlist(tmp_path_factory: pytest.TempPathFactory) -> str:
    if not CORPUS.is_dir():
        pytest.skip(f"corpus {CORPUS} is missing")
    return train(tmp_path_factory.mktemp("bogo") / "wordlist", SPAM, HAM)


@pytest.mark.parametrize("path", SPAM, ids=lambda p: f"spam/{p.name}")
async def test_bogofilter_trained_spam_is_detected(wordlist: str, path: Path) -> None:
    result = await bogofilter(wordlist).scan(MailTarget(make_mail(path.read_bytes())))
    assert result.level >= 1.0, result
    assert (result.name, result.scanner) == ("SPAM", "bogofilter")
    assert result.detail.startswith("spamicity ")


@pytest.mark.parametrize("path", HAM, ids=lambda p: f"nice/{p.name}")
async def test_bogofilter_trained_ham_is_clean(wordlist: str, path: Path) -> None:
    decision = await Pipeline([bogofilter(wordlist)]).evaluate(make_mail(path.read_bytes()))
    assert decision.disposition is Disposition.DELIVER
    assert decision.result.level < 0.45 / 0.99  # under bogofilter's ham_cutoff


async def test_bogofilter_verdict_follows_the_wordlist(tmp_path: Path, wordlist: str) -> None:
    """The same mail, trained the other way round, gets the opposite verdict."""
    reversed_list = train(tmp_path / "reversed", spam=HAM, ham=SPAM)
    spam = make_mail(SPAM[0].read_bytes())
    assert (await bogofilter(wordlist).scan(MailTarget(spam))).detected
    assert not (await bogofilter(reversed_list).scan(MailTarget(spam))).detected
    decision = await Pipeline([bogofilter(reversed_list)]).evaluate(make_mail(HAM[0].read_bytes()))
    assert decision.disposition is Disposition.REJECT
    assert decision.result.name == "SPAM"


async def test_bogofilter_threshold_scales_the_level(wordlist: str) -> None:
    untrained = sorted((CORPUS / "spam").glob("01[2-8]")) + sorted((CORPUS / "nice").glob("01[3-6]"))
    raw_scanner, default_scanner = bogofilter(wordlist, threshold=1.0), bogofilter(wordlist)
    for path in untrained:  # the first one bogofilter is not sure about
        mail = make_mail(path.read_bytes())
        raw = await raw_scanner.scan(MailTarget(mail))
        spamicity = float(raw.detail.split()[1])
        if 0.01 < spamicity < 0.98:
            break
    else:
        pytest.fail("no untrained message with a middling spamicity")
    assert raw.level == pytest.approx(spamicity)
    default = await default_scanner.scan(MailTarget(mail))
    assert default.level == pytest.approx(spamicity / 0.99)
    half = await bogofilter(wordlist, threshold=spamicity / 2).scan(MailTarget(mail))
    assert (half.level, half.name) == (pytest.approx(2.0), "SPAM")


async def test_bogofilter_without_wordlist_is_an_error(tmp_path: Path) -> None:
    need("bogofilter")
    (tmp_path / "empty").mkdir()
    scanner = bogofilter(str(tmp_path / "empty"))
    with pytest.raises(ScannerError, match=r"bogofilter exited with 3: .*wordlist"):
        await scanner.scan(MailTarget(make_mail(b"Subject: hi\r\n\r\nhello\r\n")))
    decision = await Pipeline([scanner]).evaluate(make_mail(b"Subject: hi\r\n\r\nhello\r\n"))
    assert decision.disposition is Disposition.TEMPFAIL
