"""fusefs without a mount: the verdict cache, the file as a mail, the scan of an open file, the config checks.

The mounted filesystem (pyfuse3, /dev/fuse) is tested in tests/integration/test_fusefs.py.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import errno
import logging
import os
from pathlib import Path

import pytest

from mailsift import fusefs, parsemail, regexp_scan, rlimit
from mailsift.core.disposition import Outcome
from mailsift.core.hooks import Hook
from mailsift.errors import ConfigError, ScannerError, ScannerUnavailable
from mailsift.message.mail import Mail
from mailsift.message.result import CLEAN, Decision, Result
from mailsift.scanners.base import Scanner, Target
from mailsift.services.fusefs import FileScanner, Verdict, VerdictCache, file_key, write_mail
from mailsift.settings import Settings

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


class Counting(Scanner):
    """Records the Subject (the file's path) of every mail it sees; clean."""

    name = "counting"

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def scan(self, target: Target) -> Result:
        self.seen.append(target.mail.subject)
        return CLEAN


class Failing(Scanner):
    name = "failing"

    async def scan(self, target: Target) -> Result:
        raise ScannerUnavailable("clamd: connection refused")


def eicar_scanner() -> Scanner:
    return parsemail(regexp_scan([("EICAR-Test", rb"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")]))


def file_scanner(tmp_path: Path, *scanners: Scanner, **options: object) -> FileScanner:
    settings: dict[str, object] = {
        "cache": VerdictCache(100),
        "timeout": 30.0,
        "max_size": 1024 * 1024,
        "oversize": "pass",
        "fail_open": False,
    }
    settings.update(options)
    return FileScanner(scanners, str(tmp_path / "spool"), **settings)  # type: ignore[arg-type]


async def check(files: FileScanner, path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        await files.check(fd, str(path))
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the cache


async def test_cache_scans_a_key_once_and_a_new_key_again() -> None:
    cache = VerdictCache(10)
    scans: list[int] = []

    async def scan() -> Verdict:
        scans.append(1)
        return Verdict(True)

    key = (1, 2, 3, 4)
    assert await cache.verdict(key, scan) == Verdict(True)
    assert await cache.verdict(key, scan) == Verdict(True)
    assert len(scans) == 1
    await cache.verdict((1, 2, 5, 4), scan)  # another mtime: another version of the file
    assert len(scans) == 2


async def test_cache_forgets_the_least_recently_used_past_its_size() -> None:
    cache = VerdictCache(2)
    cache.put((0, 1, 0, 0), Verdict(True))
    cache.put((0, 2, 0, 0), Verdict(False, "x"))
    assert cache.get((0, 1, 0, 0)) is not None  # used: now the most recent
    cache.put((0, 3, 0, 0), Verdict(True))
    assert len(cache) == 2
    assert cache.get((0, 2, 0, 0)) is None
    assert cache.get((0, 1, 0, 0)) is not None


async def test_concurrent_opens_of_one_file_share_one_scan() -> None:
    cache = VerdictCache(10)
    release = asyncio.Event()
    scans: list[int] = []

    async def scan() -> Verdict:
        scans.append(1)
        await release.wait()
        return Verdict(False, "EICAR")

    waiting = [asyncio.ensure_future(cache.verdict((1, 1, 1, 1), scan)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    verdicts = await asyncio.gather(*waiting)
    assert scans == [1]
    assert verdicts == [Verdict(False, "EICAR")] * 5


async def test_a_failed_scan_caches_nothing() -> None:
    cache = VerdictCache(10)
    calls: list[int] = []

    async def scan() -> Verdict:
        calls.append(1)
        if len(calls) == 1:
            raise ScannerError("down")
        return Verdict(True)

    with pytest.raises(ScannerError):
        await cache.verdict((1, 1, 1, 1), scan)
    assert len(cache) == 0
    assert await cache.verdict((1, 1, 1, 1), scan) == Verdict(True)
    assert len(calls) == 2


def test_cache_size_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="cache_size"):
        VerdictCache(0)


# --------------------------------------------------------------------------- the file as a mail


@pytest.mark.parametrize("name", ["plain.exe", "résumé €.pdf", 'quote"and\\back.txt'])
def test_a_file_becomes_a_mail_with_one_attachment_named_after_it(tmp_path: Path, name: str) -> None:
    data = os.urandom(200_003)  # not a multiple of the chunk or of 3
    path = tmp_path / name
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        spooled = write_mail(fd, str(path), len(data), str(tmp_path / "spool"))
    finally:
        os.close(fd)
    message = email.message_from_bytes(Path(spooled).read_bytes(), policy=email.policy.default)
    assert message["Subject"] == str(path)
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == name
    assert attachment.get_content() == data  # byte for byte
    assert os.path.basename(spooled).startswith(f"mailsift-{os.getpid()}-")  # the workers' stale-spool sweep knows it


# --------------------------------------------------------------------------- the scan of an open file


async def test_a_clean_file_is_scanned_once_until_it_changes(tmp_path: Path) -> None:
    counting = Counting()
    files = file_scanner(tmp_path, counting)
    path = tmp_path / "clean.txt"
    path.write_bytes(b"hello\n")
    await check(files, path)
    await check(files, path)
    assert counting.seen == [str(path)]
    path.write_bytes(b"hello, changed\n")  # another size (and mtime): scanned again
    await check(files, path)
    assert counting.seen == [str(path)] * 2
    os.utime(path, ns=(1, 1))  # the same size, another mtime: scanned again
    await check(files, path)
    assert len(counting.seen) == 3
    assert os.listdir(tmp_path / "spool") == []  # every wrapped copy removed


async def test_an_infected_file_is_refused_with_eacces_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    counting = Counting()
    files = file_scanner(tmp_path, counting, eicar_scanner())
    path = tmp_path / "eicar.com"
    path.write_bytes(EICAR)
    caplog.set_level(logging.INFO, logger="mailsift.mail")
    for _ in range(2):
        with pytest.raises(OSError) as refused:
            await check(files, path)
        assert refused.value.errno == errno.EACCES
    assert len(counting.seen) == 1  # the refusal is cached too
    [line] = [r.getMessage() for r in caplog.records if r.name == "mailsift.mail"]
    assert "action=refuse reply=EACCES" in line
    assert "name=EICAR-Test scanner=regexp_scan" in line
    assert f"path={path}" in line


async def test_no_verdict_is_eio_unless_fail_open(tmp_path: Path) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(b"data")
    closed = file_scanner(tmp_path, Failing())
    with pytest.raises(OSError) as refused:
        await check(closed, path)
    assert refused.value.errno == errno.EIO
    assert len(closed.cache) == 0  # tried again at the next open
    await check(file_scanner(tmp_path, Failing(), fail_open=True), path)  # served


async def test_a_spool_that_cannot_be_written_is_eio_unless_fail_open(tmp_path: Path) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(b"data")
    (tmp_path / "spool").write_bytes(b"a file where the spool directory should be")
    with pytest.raises(OSError) as refused:
        await check(file_scanner(tmp_path, Counting()), path)
    assert refused.value.errno == errno.EIO
    await check(file_scanner(tmp_path, Counting(), fail_open=True), path)


async def test_a_scan_past_the_timeout_is_eio(tmp_path: Path) -> None:
    class Slow(Scanner):
        name = "slow"

        async def scan(self, target: Target) -> Result:
            await asyncio.sleep(60)
            return CLEAN

    path = tmp_path / "file.bin"
    path.write_bytes(b"data")
    with pytest.raises(OSError) as refused:
        await check(file_scanner(tmp_path, Slow(), timeout=0.05), path)
    assert refused.value.errno == errno.EIO


async def test_a_file_over_max_size_is_not_scanned_and_passes_or_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(EICAR + b"\0" * 2000)
    counting = Counting()
    await check(file_scanner(tmp_path, counting, eicar_scanner(), max_size=1000, oversize="pass"), path)
    with pytest.raises(OSError) as refused:
        await check(file_scanner(tmp_path, counting, eicar_scanner(), max_size=1000, oversize="refuse"), path)
    assert refused.value.errno == errno.EACCES
    assert counting.seen == []


def test_file_key_is_device_inode_mtime_and_size(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    info = os.stat(path)
    assert file_key(info) == (info.st_dev, info.st_ino, info.st_mtime_ns, 3)


# --------------------------------------------------------------------------- the config object


def test_config_checks(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "mnt").mkdir()
    ok = fusefs([eicar_scanner()], str(tmp_path / "mnt"), str(tmp_path / "src"))
    assert ok.describe() == f"fusefs({tmp_path / 'mnt'} <- {tmp_path / 'src'})"
    with pytest.raises(ConfigError, match="must not contain each other"):
        fusefs([eicar_scanner()], str(tmp_path / "src" / "inner"), str(tmp_path / "src")).check()
    with pytest.raises(ConfigError, match=r"source .* is not a directory"):
        fusefs([eicar_scanner()], str(tmp_path / "mnt"), str(tmp_path / "missing")).check()
    with pytest.raises(ConfigError, match="oversize"):
        fusefs([eicar_scanner()], str(tmp_path / "mnt"), str(tmp_path / "src"), oversize="maybe")
    with pytest.raises(ConfigError, match="fail_open"):
        fusefs([eicar_scanner()], str(tmp_path / "mnt"), str(tmp_path / "src"), fail_open="yes")
    with pytest.raises(ConfigError, match="max_size"):
        fusefs([eicar_scanner()], str(tmp_path / "mnt"), str(tmp_path / "src"), max_size=True)


class Seen(Hook):
    """Records what each call of the hook saw: (subject, detected name, reply code, the mail readable)."""

    name = "seen"
    for_files = True

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, bool]] = []

    async def after(self, mail: Mail, decision: Decision, outcome: Outcome, settings: Settings) -> None:
        readable = b"mailsift-fusefs-boundary--" in mail.raw  # read from the spooled file, whole
        self.calls.append((mail.subject, decision.result.name, outcome.reply.code, readable))


async def test_each_file_scanned_runs_the_hooks_as_a_mail_does(tmp_path: Path) -> None:
    """HOOKS (stats, log files, notify) see a refused file as a rejected mail, a served one as 250; cache hits
    run no hook again; the spooled file is still there while they run."""
    seen = Seen()
    settings = Settings(state_dir=str(tmp_path), hooks=(seen,))
    files = file_scanner(tmp_path, eicar_scanner(), settings=settings)
    infected, clean = tmp_path / "eicar.com", tmp_path / "clean.txt"
    infected.write_bytes(EICAR)
    clean.write_bytes(b"clean\n")
    for _ in range(2):
        with pytest.raises(OSError):
            await check(files, infected)
        await check(files, clean)
    assert seen.calls == [(str(infected), "EICAR-Test", 550, True), (str(clean), "", 250, True)]
    assert os.listdir(tmp_path / "spool") == []


async def test_a_file_is_not_archived_notified_or_forwarded_as_mail(tmp_path: Path) -> None:
    """Only the recording hooks run for a file: ``archive()`` (which keeps every delivered mail) would
    copy each clean file read through the mount into STATE_DIR/archive, as root."""
    from mailsift import archive, log_file, notify, spam_forward, stats

    assert [hook.for_files for hook in (log_file("x.log"), stats())] == [True, True]
    assert not any(hook.for_files for hook in (archive(), notify(admin="a@example.test"), spam_forward("s@x.test")))
    seen, archived = Seen(), archive()
    settings = Settings(state_dir=str(tmp_path), hooks=(archived, seen))
    archived.check(settings)
    files = file_scanner(tmp_path, eicar_scanner(), settings=settings)
    clean = tmp_path / "private.txt"
    clean.write_bytes(b"nothing for an archive\n")
    await check(files, clean)
    assert seen.calls == [(str(clean), "", 250, True)]
    assert not (tmp_path / "archive").exists()


class Slow(Hook):
    name = "slow"
    for_files = True

    async def after(self, mail: Mail, decision: Decision, outcome: Outcome, settings: Settings) -> None:
        await asyncio.sleep(3600)


async def test_hooks_are_bounded_by_the_timeout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The open waits for the hooks: a hook that hangs gives up after ``timeout``, the verdict stands."""
    settings = Settings(state_dir=str(tmp_path), hooks=(Slow(),))
    files = file_scanner(tmp_path, eicar_scanner(), settings=settings)
    files.timeout = 0.2
    clean = tmp_path / "clean.txt"
    clean.write_bytes(b"clean\n")
    with caplog.at_level(logging.WARNING, logger="mailsift"):
        await asyncio.wait_for(check(files, clean), 60)
    assert "the hooks took over 0.2 s" in caplog.text


def test_identity_changes_with_its_limits(tmp_path: Path) -> None:
    """SRV's rlimit(...) (set by the supervisor) or its own rlimit=: another limit restarts it at a reload."""
    one = fusefs([eicar_scanner()], str(tmp_path / "mnt"), str(tmp_path / "src"))
    srv = fusefs([eicar_scanner()], str(tmp_path / "mnt"), str(tmp_path / "src"))
    srv.srv_limits = rlimit(NOFILE=1000)
    own = fusefs([eicar_scanner()], str(tmp_path / "mnt"), str(tmp_path / "src"), rlimit=rlimit(NOFILE=900))
    own.srv_limits = rlimit(NOFILE=1000)
    assert len({one.identity(), srv.identity(), own.identity()}) == 3
    assert own.effective_limits() is own.limits
    with pytest.raises(ConfigError, match="rlimit="):
        fusefs([eicar_scanner()], str(tmp_path / "mnt"), str(tmp_path / "src"), rlimit=1000)  # type: ignore[arg-type]


def test_identity_changes_with_the_scanners(tmp_path: Path) -> None:
    one = fusefs([eicar_scanner()], str(tmp_path / "mnt"), str(tmp_path / "src"))
    same = fusefs([eicar_scanner()], str(tmp_path / "mnt"), str(tmp_path / "src"))
    other = fusefs([Counting()], str(tmp_path / "mnt"), str(tmp_path / "src"))
    assert one.identity() == same.identity()  # kept running across a reload
    assert one.identity() != other.identity()  # restarted with the new scanners


def test_offline_commands_never_mount_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``mailsift scan`` starts the config's daemons that are not answering (running_daemons); not a fusefs."""
    from mailsift.config import Config
    from mailsift.settings import Settings
    from mailsift.supervisor import running_daemons

    (tmp_path / "src").mkdir()
    (tmp_path / "mnt").mkdir()
    service = fusefs([eicar_scanner()], str(tmp_path / "mnt"), str(tmp_path / "src"))

    def start(state_dir: str) -> int:
        raise AssertionError("an offline command started the fusefs")

    monkeypatch.setattr(service, "start", start)
    config = Config(str(tmp_path / "config.py"), Settings(state_dir=str(tmp_path / "state")), (), (), (service,))
    said: list[str] = []
    with running_daemons(config, timeout=1, say=said.append):
        pass
    assert said == []
