"""``clamd(...)`` against the real clamd (private instance, private signature DB).

Every file of clamav-testfiles attached to a mail, EICAR in archives built here
(zip, zip in zip, tar.gz, 7z) and in an attached message, through the
mailsift pipeline; both addresses (unix socket, TCP as SAGATOR's
``['127.0.0.1', port]``); session reuse counted by clamd's own request numbers;
clamd restarted, stopped, and refusing an oversized stream.
"""

from __future__ import annotations

import asyncio
import email.message
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailsift.core.pipeline import Pipeline
from mailsift.errors import ScannerError, ScannerUnavailable
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Disposition
from mailsift.scanners.base import MailTarget
from mailsift.scanners.engines.clamav import OVERSIZE_NAME, clamd
from mailsift.scanners.match import recover
from mailsift.scanners.parsemail import parsemail
from tests.helpers.archives import seven_zip_of, tar_gz_of, zip_of
from tests.helpers.clamd import EICAR, EICAR_NAMES, TESTFILE_NAMES, TESTFILES, ClamdInstance
from tests.helpers.messages import attachment_mail

pytestmark = pytest.mark.engines

# --------------------------------------------------------------------------- helpers


def make_mail(data: bytes) -> Mail:
    return Mail(Envelope(sender="alice@example.net", recipients=["bob@example.org"]), data)


@pytest.fixture
async def scanner(clamd_instance: ClamdInstance) -> AsyncIterator[clamd]:
    """A clamd scanner on the session instance's unix socket, its sessions closed afterwards."""
    scanner = clamd(str(clamd_instance.socket_path))
    yield scanner
    await scanner.aclose()


@pytest.fixture
def private_clamd(tmp_path: Path) -> Iterator[Callable[..., ClamdInstance]]:
    """A clamd of the test's own (to restart, stop or limit it), stopped afterwards."""
    started: list[ClamdInstance] = []

    def start(**options: Any) -> ClamdInstance:
        instance = ClamdInstance(tmp_path / f"clamd{len(started)}", **options)
        started.append(instance)
        instance.start()
        return instance

    yield start
    for instance in started:
        instance.stop()


# --------------------------------------------------------------------------- the instance


def test_instance_answers_on_both_sockets(clamd_instance: ClamdInstance) -> None:
    assert clamd_instance.pid is not None
    assert clamd_instance.command("PING") == "PONG"
    assert clamd_instance.command("PING", tcp=True) == "PONG"
    assert clamd_instance.command("VERSION").startswith("ClamAV ")


# --------------------------------------------------------------------------- detections through the pipeline


def test_every_testfile_is_listed() -> None:
    assert len(TESTFILE_NAMES) >= 40, "clamav-testfiles is missing (scripts/setup.sh --test installs it)"


@pytest.mark.parametrize("filename", TESTFILE_NAMES)
async def test_clamav_testfile_attached_is_rejected(scanner: clamd, filename: str) -> None:
    data = (TESTFILES / filename).read_bytes()
    mail = make_mail(attachment_mail((filename, data, "application/octet-stream")))
    decision = await Pipeline([scanner]).evaluate(mail)
    assert decision.disposition is Disposition.REJECT, decision
    assert decision.result.scanner == "clamd"
    assert decision.result.name.startswith("ClamAV-Test-File")
    assert decision.result.name.endswith(".UNOFFICIAL")  # kept as clamd says it
    assert decision.reply.code == 550


@pytest.mark.parametrize("filename", TESTFILE_NAMES)
async def test_clamav_testfile_found_per_part(scanner: clamd, filename: str) -> None:
    data = (TESTFILES / filename).read_bytes()
    mail = make_mail(attachment_mail((filename, data, "application/octet-stream")))
    result = await parsemail(scanner).scan(MailTarget(mail))
    assert result.detected
    assert result.name.startswith("ClamAV-Test-File")
    assert filename in result.detail  # parsemail names the part


def eicar_containers(tmp_path: Path) -> dict[str, tuple[str, bytes, str]]:
    inner_zip = zip_of({"eicar.com": EICAR})
    return {
        "zip": ("eicar.zip", inner_zip, "application/zip"),
        "zip-in-zip": ("outer.zip", zip_of({"inner.zip": inner_zip, "readme.txt": b"hello"}), "application/zip"),
        "tar.gz": ("eicar.tar.gz", tar_gz_of({"dir/eicar.com": EICAR}), "application/gzip"),
        "7z": ("eicar.7z", seven_zip_of(tmp_path, {"eicar.com": EICAR}), "application/x-7z-compressed"),
        "message/rfc822": (
            "fwd.eml",
            attachment_mail(("eicar.com", EICAR, "application/octet-stream")),
            "message/rfc822",
        ),
    }


@pytest.mark.parametrize("container", ["zip", "zip-in-zip", "tar.gz", "7z", "message/rfc822"])
@pytest.mark.parametrize("per_part", [False, True], ids=["whole", "parsemail"])
async def test_eicar_in_container_is_rejected(scanner: clamd, tmp_path: Path, container: str, per_part: bool) -> None:
    filename, data, mime_type = eicar_containers(tmp_path)[container]
    if mime_type == "message/rfc822":
        outer = email.message.EmailMessage()
        outer["Subject"] = "fwd"
        outer.set_content("forwarded")
        inner = email.message_from_bytes(data, _class=email.message.EmailMessage)
        outer.add_attachment(inner, filename=filename)
        raw = bytes(outer)
        assert b"Content-Type: message/rfc822" in raw
    else:
        raw = attachment_mail((filename, data, mime_type))
    assert EICAR not in raw  # encoded: only a scanner that decodes can find it
    decision = await Pipeline([parsemail(scanner) if per_part else scanner]).evaluate(make_mail(raw))
    assert decision.disposition is Disposition.REJECT, decision
    assert decision.result.name in EICAR_NAMES


async def test_clean_mail_and_clean_archives_are_delivered(scanner: clamd, tmp_path: Path) -> None:
    clean = {"notes.txt": b"nothing to see", "data.bin": bytes(range(256)) * 10}
    raw = attachment_mail(
        ("clean.zip", zip_of(clean), "application/zip"),
        ("clean.tar.gz", tar_gz_of(clean), "application/gzip"),
        ("clean.7z", seven_zip_of(tmp_path, clean), "application/x-7z-compressed"),
    )
    for scanners in ([scanner], [parsemail(scanner)]):
        decision = await Pipeline(scanners).evaluate(make_mail(raw))
        assert decision.disposition is Disposition.DELIVER, decision
        assert decision.result.level == 0.0


async def test_tcp_address_in_sagator_form(clamd_instance: ClamdInstance) -> None:
    scanner = clamd(["127.0.0.1", clamd_instance.port])
    try:
        found = await scanner.scan(MailTarget(make_mail(attachment_mail(("e.com", EICAR, "application/octet-stream")))))
        clean = await scanner.scan(MailTarget(make_mail(attachment_mail())))
    finally:
        await scanner.aclose()
    assert (found.level, found.name in EICAR_NAMES, found.scanner) == (1.0, True, "clamd")
    assert "127.0.0.1" in found.detail
    assert not clean.detected


async def test_multi_chunk_stream_is_sent_whole(scanner: clamd) -> None:
    """3 MiB: more than one INSTREAM chunk; EICAR in the last bytes is still found."""
    padding = b"x" * (3 * 1024 * 1024)
    assert await scanner.instream(padding) == "stream: OK"
    found = await scanner.instream(padding + b"\n" + EICAR)
    assert found.endswith(" FOUND")


async def test_command_version(scanner: clamd) -> None:
    assert (await scanner.command("VERSION")).startswith("ClamAV ")


# --------------------------------------------------------------------------- sessions


async def test_many_scans_share_one_session(scanner: clamd) -> None:
    """clamd numbers the requests of a session: answer 50 on one connection proves the reuse."""
    for number in range(50):
        data = EICAR if number % 10 == 0 else f"clean message {number}".encode()
        result = await scanner.scan(MailTarget(make_mail(data)))
        assert result.detected == (number % 10 == 0)
    assert scanner.connections_opened == 1
    [session] = scanner._idle
    assert session.requests == 50  # checked against clamd's "50: stream: ..." answer


async def test_concurrent_scans_use_a_bounded_pool(clamd_instance: ClamdInstance) -> None:
    scanner = clamd(str(clamd_instance.socket_path), pool_size=2)
    try:
        targets = [MailTarget(make_mail(f"message {n}".encode())) for n in range(8)]
        for _ in range(3):
            results = await asyncio.gather(*(scanner.scan(t) for t in targets))
            assert not any(r.detected for r in results)
        assert len(scanner._idle) == 2
        assert scanner.connections_opened <= 8 + 2 * 6  # at most 8 at once; the pool keeps 2
    finally:
        await scanner.aclose()
    assert scanner._idle == []


async def test_clamd_restarted_between_scans(private_clamd: Callable[..., ClamdInstance]) -> None:
    instance = private_clamd()
    scanner = clamd(str(instance.socket_path))
    try:
        assert (await scanner.scan(MailTarget(make_mail(EICAR)))).detected
        old_pid = instance.pid
        instance.restart()
        assert instance.pid != old_pid
        result = await scanner.scan(MailTarget(make_mail(EICAR)))  # the pooled session is dead
        assert result.detected
        assert scanner.connections_opened == 2
        assert not (await scanner.scan(MailTarget(make_mail(b"clean")))).detected
        assert scanner.connections_opened == 2
    finally:
        await scanner.aclose()


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
async def test_clamd_down_is_unavailable(private_clamd: Callable[..., ClamdInstance], tcp: bool) -> None:
    instance = private_clamd()
    scanner = clamd(["127.0.0.1", instance.port] if tcp else str(instance.socket_path))
    try:
        assert not (await scanner.scan(MailTarget(make_mail(b"clean")))).detected
        instance.stop()
        with pytest.raises(ScannerUnavailable, match="not reachable"):
            await scanner.scan(MailTarget(make_mail(b"clean")))
        decision = await Pipeline([scanner]).evaluate(make_mail(b"clean"))
        assert decision.disposition is Disposition.TEMPFAIL
        assert decision.reply.code == 451
    finally:
        await scanner.aclose()


# --------------------------------------------------------------------------- size limits


async def test_clamd_own_size_limit_follows_the_oversize_policy(private_clamd: Callable[..., ClamdInstance]) -> None:
    """clamd limited to 1M, the scanner told 4M: clamd's own refusal is handled like ours."""
    instance = private_clamd(stream_max_length="1M")
    big = b"y" * (1024 * 1024 + 1)
    detect = clamd(str(instance.socket_path), stream_max_length=4 * 1024 * 1024)
    tempfail = clamd(str(instance.socket_path), stream_max_length=4 * 1024 * 1024, oversize="tempfail")
    try:
        result = await detect.scan(MailTarget(make_mail(big)))
        assert (result.level, result.name) == (1.0, OVERSIZE_NAME)
        assert "StreamMaxLength" in result.detail
        assert await detect.instream(b"z" * (1024 * 1024)) == "stream: OK"  # exactly the limit, new session
        with pytest.raises(ScannerError, match="not scanned"):
            await tempfail.scan(MailTarget(make_mail(big)))
    finally:
        await detect.aclose()
        await tempfail.aclose()


async def test_matching_limit_is_checked_before_sending(scanner: clamd, clamd_instance: ClamdInstance) -> None:
    limited = clamd(str(clamd_instance.socket_path), stream_max_length=1000, oversize="pass")
    result = await limited.scan(MailTarget(make_mail(b"a" * 1001)))
    assert (result.level, result.name) == (0.0, "")
    assert result.detail.startswith("not scanned: 1001 bytes exceed")
    assert limited.connections_opened == 0
    assert not (await limited.scan(MailTarget(make_mail(b"a" * 1000)))).detected
    await limited.aclose()


def test_pooled_session_outlives_its_event_loop(clamd_instance: ClamdInstance) -> None:
    """Sessions are plain sockets: a scanner built at config load serves one loop after another."""
    scanner = clamd(str(clamd_instance.socket_path))
    for _ in range(3):
        assert asyncio.run(scanner.scan(MailTarget(make_mail(EICAR)))).detected
    assert scanner.connections_opened == 1
    asyncio.run(scanner.aclose())


# --------------------------------------------------------------------------- empty objects (issue 11, finding 1)

EMPTY = ("empty.txt", b"", "application/octet-stream")


async def test_empty_attachment_is_scanned_clean_per_part(scanner: clamd) -> None:
    """An empty part is an INSTREAM with no data chunk: clean, and the session stays in step."""
    mail = make_mail(attachment_mail(EMPTY))
    for _ in range(3):  # the same session, again and again
        result = await parsemail(scanner).scan(MailTarget(mail))
        assert (result.level, result.name) == (0.0, ""), result
    decision = await Pipeline([parsemail(scanner)]).evaluate(mail)
    assert decision.disposition is Disposition.DELIVER, decision
    assert await scanner.instream(b"") == "stream: OK"
    found = await scanner.scan(MailTarget(make_mail(EICAR)))  # the next scans are still answered
    assert found.name in EICAR_NAMES
    assert not (await scanner.scan(MailTarget(make_mail(b"clean")))).detected
    assert scanner.connections_opened == 1  # one session all along: clamd never saw a stray command
    [session] = scanner._idle
    assert session.requests == 3 * 2 + 2 + 1 + 2  # text part and empty part per parsemail, then the rest


@pytest.mark.parametrize("fail_open", [False, True], ids=["parsemail", "recover-level-0"])
async def test_eicar_next_to_an_empty_attachment_is_found(scanner: clamd, fail_open: bool) -> None:
    """An empty file next to a virus must not carry it through, even under the documented fail-open."""
    for attachments in [(EMPTY, ("eicar.com", EICAR, "application/octet-stream"))] * 2 + [
        (("eicar.com", EICAR, "application/octet-stream"), EMPTY)
    ]:
        expression = parsemail(scanner)
        pipeline = Pipeline([recover(expression, level=0.0) if fail_open else expression])
        decision = await pipeline.evaluate(make_mail(attachment_mail(*attachments)))
        assert decision.disposition is Disposition.REJECT, decision
        assert decision.result.name in EICAR_NAMES


# --------------------------------------------------------------------------- protocol edges (issue 11, item 4)

SMALL_LIMIT = 64 * 1024
"""The StreamMaxLength of ``small_clamd``: streams at its edges stay cheap."""


@pytest.fixture(scope="module")
def small_clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdInstance]:
    """A clamd whose own StreamMaxLength is SMALL_LIMIT bytes, for this module's size edges."""
    instance = ClamdInstance(tmp_path_factory.mktemp("clamd-small"), stream_max_length=str(SMALL_LIMIT))
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def address_of(instance: ClamdInstance, tcp: bool) -> Any:
    return ["127.0.0.1", instance.port] if tcp else str(instance.socket_path)


def eicar_across(size: int, boundary: int) -> bytes:
    """``size`` bytes with an EICAR line whose first half ends at ``boundary`` (a chunk edge)."""
    head = b"x" * (boundary - len(EICAR) // 2 - 1) + b"\n" + EICAR + b"\n"
    return head + b"x" * (size - len(head))


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
async def test_instream_sizes_at_the_chunk_edges(clamd_instance: ClamdInstance, tcp: bool) -> None:
    """Empty, one byte, one chunk - 1, = and + 1, two chunks: all answered on one session."""
    from mailsift.scanners.engines.clamav import _CHUNK

    scanner = clamd(address_of(clamd_instance, tcp))
    try:
        for size in (0, 1, _CHUNK - 1, _CHUNK, _CHUNK + 1, 2 * _CHUNK):
            assert await scanner.instream(b"c" * size) == "stream: OK", size
        for size in (_CHUNK + 64, 2 * _CHUNK + 1):
            data = eicar_across(size, _CHUNK)
            assert data[_CHUNK - 34 : _CHUNK + 34] == EICAR  # across the chunk edge
            assert len(data) == size
            assert (await scanner.instream(data)).removeprefix("stream: ").removesuffix(" FOUND") in EICAR_NAMES
        assert await scanner.instream(b"") == "stream: OK"
        assert scanner.connections_opened == 1  # every answer in step: one session throughout
        assert scanner._idle[0].requests == 9
    finally:
        await scanner.aclose()


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
@pytest.mark.parametrize("oversize", ["detect", "pass", "tempfail"])
async def test_clamd_stream_max_length_edges(small_clamd: ClamdInstance, tcp: bool, oversize: Any) -> None:
    """clamd's own StreamMaxLength - 1 and = are scanned; + 1 (and far more, in several chunks) is
    refused by clamd ("INSTREAM size limit exceeded") and becomes the oversize policy, not a broken
    session: the next scans are answered."""
    scanner = clamd(address_of(small_clamd, tcp), stream_max_length=16 * 1024 * 1024, oversize=oversize)
    try:
        for size in (SMALL_LIMIT - 1, SMALL_LIMIT):
            assert not (await scanner.scan(MailTarget(make_mail(b"s" * size)))).detected
        for size in (SMALL_LIMIT + 1, 3 * 1024 * 1024 + 5):
            if oversize == "tempfail":
                with pytest.raises(
                    ScannerError, match=f"not scanned: {size} bytes exceed clamd's StreamMaxLength"
                ) as caught:
                    await scanner.scan(MailTarget(make_mail(b"s" * size)))
                assert type(caught.value) is ScannerError
            else:
                result = await scanner.scan(MailTarget(make_mail(b"s" * size)))
                expected = (1.0, OVERSIZE_NAME) if oversize == "detect" else (0.0, "")
                assert (result.level, result.name) == expected, result
                assert f"{size} bytes exceed clamd's StreamMaxLength" in result.detail
            found = await scanner.scan(MailTarget(make_mail(EICAR)))  # the next scan is answered
            assert found.name in EICAR_NAMES
        assert await scanner.instream(b"") == "stream: OK"
    finally:
        await scanner.aclose()


async def test_own_limit_edges_are_not_sent(small_clamd: ClamdInstance) -> None:
    """stream_max_length set to clamd's: - 1 and = are sent, + 1 never is."""
    scanner = clamd(str(small_clamd.socket_path), stream_max_length=SMALL_LIMIT)
    try:
        for size in (SMALL_LIMIT - 1, SMALL_LIMIT):
            assert not (await scanner.scan(MailTarget(make_mail(b"s" * size)))).detected
        result = await scanner.scan(MailTarget(make_mail(b"s" * (SMALL_LIMIT + 1))))
        assert (result.level, result.name, result.detail) == (
            1.0,
            OVERSIZE_NAME,
            f"{SMALL_LIMIT + 1} bytes exceed stream_max_length {SMALL_LIMIT}",
        )
        assert scanner._idle[0].requests == 2  # the third was never sent
    finally:
        await scanner.aclose()
