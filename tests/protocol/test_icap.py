"""``icap`` over real sockets: OPTIONS, RESPMOD, REQMOD, preview, 204, the block page, failures and limits.

The client is tests/helpers/icap.py (independent of the service's code); the
last tests run c-icap's own ``c-icap-client`` (Debian's c-icap package) for
conformance with another implementation.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailsift import clamd, icap, parsemail, regexp_scan
from mailsift.testing import ServiceThread, free_port
from tests.helpers.icap import (
    EICAR,
    build,
    chunked,
    exchange,
    http_request_head,
    http_response_head,
    read_answer,
    read_head,
    streamed_exchange,
)
from tests.helpers.squid import generated, generated_sha256

SCANNERS = [parsemail(regexp_scan([("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")]))]
URL = "http://example.org/files/thing.bin"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    started: list[ServiceThread] = []

    def start(scanners: list[Any] | None = None, **options: Any) -> ServiceThread:
        thread = ServiceThread(icap(SCANNERS if scanners is None else scanners, "127.0.0.1", 0, **options))
        thread.settings = type(thread.settings)(state_dir=str(tmp_path / f"state{len(started)}"))
        started.append(thread.start())
        return thread

    yield start
    for thread in started:
        thread.stop()


def spool_files(thread: ServiceThread) -> list[str]:
    """The files left in the spool, once the request's clean-up (right after its answer) had time."""
    deadline = time.monotonic() + 5
    while (names := os.listdir(thread.settings.spool_dir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return names


def respmod(body: bytes | None, *, allow_204: bool = True, length: bool = True, **fields: str) -> bytes:
    extra = f"Content-Length: {len(body)}\r\n" if body is not None and length else ""
    headers = {"Allow": "204"} if allow_204 else {}
    headers.update(fields)
    return build(
        "RESPMOD",
        "respmod",
        req_hdr=http_request_head(URL),
        res_hdr=http_response_head(extra=extra),
        body=body,
        fields=headers,
    )


# ---------------------------------------------------------------------------------------------- OPTIONS


def test_options_say_what_the_service_does(serve: Any) -> None:
    thread = serve(max_connections=10)
    for service, method in (("respmod", "RESPMOD"), ("reqmod", "REQMOD")):
        answer = exchange(thread.port, build("OPTIONS", service))
        assert answer.status == 200
        assert answer.fields["methods"] == method
        assert answer.fields["allow"] == "204"
        assert answer.fields["max-connections"] == "5"  # the per-address limit: half of max_connections
        assert answer.fields["istag"].startswith('"ms-')
        assert len(answer.fields["istag"]) <= 34
        assert "preview" not in answer.fields  # Squid 5 stalls on previews of big bodies: none asked
    assert exchange(thread.port, build("OPTIONS", "other")).status == 404


def test_the_istag_changes_with_the_scanners(serve: Any) -> None:
    first = exchange(serve().port, build("OPTIONS", "respmod")).fields["istag"]
    second = exchange(serve([regexp_scan([("X", "y")])]).port, build("OPTIONS", "respmod")).fields["istag"]
    assert first != second


def test_a_preview_is_asked_when_configured(serve: Any) -> None:
    answer = exchange(serve(preview=1024).port, build("OPTIONS", "respmod"))
    assert (answer.fields["preview"], answer.fields["transfer-preview"]) == ("1024", "*")


# ---------------------------------------------------------------------------------------------- RESPMOD


def test_a_clean_object_gets_204_where_allowed_and_comes_back_whole_otherwise(serve: Any) -> None:
    thread = serve()
    body = os.urandom(30_000)
    assert exchange(thread.port, respmod(body)).status == 204
    answer = exchange(thread.port, respmod(body, allow_204=False))
    assert answer.status == 200
    assert answer.body == body
    assert answer.http_head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert spool_files(thread) == []


def test_a_big_object_gets_its_head_early_and_comes_back_byte_for_byte(serve: Any) -> None:
    thread = serve()
    body = os.urandom(3 * 1024 * 1024 + 17)  # over early_head (64 KiB): the head goes out before the scan
    answer = exchange(thread.port, respmod(body))
    assert answer.status == 200
    assert hashlib.sha256(answer.body).digest() == hashlib.sha256(body).digest()
    assert spool_files(thread) == []


def test_eicar_gets_the_block_page(serve: Any) -> None:
    thread = serve()
    answer = exchange(thread.port, respmod(EICAR))
    assert answer.status == 200
    assert answer.http_head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"EICAR-Test" in answer.body
    assert EICAR not in answer.body
    assert answer.fields["x-virus-id"] == "EICAR-Test"
    assert "Threat=EICAR-Test;" in answer.fields["x-infection-found"]
    assert spool_files(thread) == []


def test_eicar_in_a_big_object_cuts_the_answer(serve: Any) -> None:
    """Over ``early_head`` the head has gone out: a finding closes the connection before the
    last chunk, so the client never gets a complete object."""
    thread = serve()
    body = os.urandom(200_000) + EICAR + os.urandom(1000)
    with socket.create_connection(("127.0.0.1", thread.port), timeout=30) as sock:
        sock.sendall(respmod(body))
        buffer = bytearray()
        head = read_head(sock, buffer)
        assert head.startswith(b"ICAP/1.0 200")
        while data := sock.recv(65536):
            buffer += data
        assert not buffer.endswith(b"0\r\n\r\n")
        assert EICAR not in buffer


def chunks_until_quiet(sock: socket.socket, buffer: bytearray, quiet: float) -> list[bytes]:
    """The answer's body chunks that arrive before ``quiet`` seconds pass without any (the last
    chunk, if it comes, as ``b""``)."""
    chunks: list[bytes] = []
    sock.settimeout(quiet)
    try:
        while True:
            while b"\r\n" not in buffer:
                data = sock.recv(65536)
                if not data:
                    return chunks
                buffer += data
            line, _, rest = bytes(buffer).partition(b"\r\n")
            size = int(line, 16)
            while len(rest) < size + 2:
                data = sock.recv(65536)
                if not data:
                    return chunks
                rest += data
            chunks.append(rest[:size])
            buffer[:] = rest[size + 2 :]
            if size == 0:
                return chunks
    except TimeoutError:
        return chunks
    finally:
        sock.settimeout(30)


@pytest.mark.parametrize("infected", [False, True])
def test_a_held_object_trickles_one_byte_per_silence(serve: Any, infected: bool) -> None:
    """Squid 5 (bug 5352) reads the origin again only once its client takes some of the answer:
    while an object whose head went out early is held for its verdict, each ``trickle`` seconds of
    silence release its next byte, at most one per 32 KiB received (3 of 100,000 bytes here); the
    rest follows the verdict from there, or a finding cuts the answer."""
    thread = serve(trickle=0.2)
    body = os.urandom(100_000 - len(EICAR)) + (EICAR if infected else os.urandom(len(EICAR)))
    request = respmod(body, allow_204=False, length=False)
    assert request.endswith(b"0\r\n\r\n")
    with socket.create_connection(("127.0.0.1", thread.port), timeout=30) as sock:
        sock.sendall(request[:-5])  # all but the last chunk: the object is not complete yet
        buffer = bytearray()
        assert read_head(sock, buffer).startswith(b"ICAP/1.0 200")
        assert read_head(sock, buffer).startswith(b"HTTP/1.1 200 OK")  # the early HTTP head
        early = chunks_until_quiet(sock, buffer, quiet=2.0)  # 10 silences of 0.2 s
        assert early == [body[0:1], body[1:2], body[2:3]]
        sock.sendall(request[-5:])
        rest = chunks_until_quiet(sock, buffer, quiet=10.0)
    if infected:
        assert rest == []  # cut: no more bytes, no last chunk
    else:
        assert rest[-1] == b""
        assert b"".join(early + rest) == body
    assert spool_files(thread) == []


def test_trickle_none_sends_nothing_before_the_verdict(serve: Any) -> None:
    from mailsift.errors import ConfigError

    with pytest.raises(ConfigError, match="icap: trickle must be a positive number of seconds"):
        icap(SCANNERS, trickle=0)
    thread = serve(trickle=None)
    body = os.urandom(100_000)
    request = respmod(body, allow_204=False, length=False)
    with socket.create_connection(("127.0.0.1", thread.port), timeout=30) as sock:
        sock.sendall(request[:-5])
        buffer = bytearray()
        assert read_head(sock, buffer).startswith(b"ICAP/1.0 200")
        assert read_head(sock, buffer).startswith(b"HTTP/1.1 200 OK")
        assert chunks_until_quiet(sock, buffer, quiet=1.0) == []
        sock.sendall(request[-5:])
        assert b"".join(chunks_until_quiet(sock, buffer, quiet=10.0)) == body


def test_a_scanner_failure_answers_500_and_fail_open_passes(serve: Any) -> None:
    broken = [clamd(("127.0.0.1", free_port()), connect_timeout=1)]
    assert exchange(serve(broken).port, respmod(b"anything")).status == 500
    assert exchange(serve(broken, fail_open=True).port, respmod(b"anything")).status == 204


def test_preview_ieof_and_100_continue(serve: Any) -> None:
    thread = serve(preview=10, early_head=None)
    whole = (
        b"RESPMOD icap://127.0.0.1/respmod ICAP/1.0\r\nHost: x\r\nPreview: 10\r\n"
        b"Encapsulated: res-hdr=0, res-body=%d\r\n\r\n" % len(http_response_head()) + http_response_head()
    )
    answer = exchange(thread.port, whole + b"5\r\nhello\r\n0; ieof\r\n\r\n")
    assert answer.status == 204  # the whole body was in the preview: 204 is the preview's answer
    with socket.create_connection(("127.0.0.1", thread.port), timeout=30) as sock:
        sock.sendall(whole + b"a\r\n0123456789\r\n0\r\n\r\n")
        buffer = bytearray()
        assert read_head(sock, buffer).startswith(b"ICAP/1.0 100 Continue")
        sock.sendall(chunked(EICAR))
        answer = read_answer(sock, buffer)
        assert b"EICAR-Test" in answer.body


def test_two_requests_on_one_connection(serve: Any) -> None:
    thread = serve()
    with socket.create_connection(("127.0.0.1", thread.port), timeout=30) as sock:
        buffer = bytearray()
        sock.sendall(respmod(b"clean") + respmod(EICAR))
        assert read_answer(sock, buffer).status == 204
        assert b"EICAR-Test" in read_answer(sock, buffer).body


# ---------------------------------------------------------------------------------------------- REQMOD


def test_reqmod_scans_uploads_and_passes_requests_without_a_body(serve: Any) -> None:
    thread = serve()
    upload = build(
        "REQMOD",
        "reqmod",
        req_hdr=http_request_head(URL, "POST", f"Content-Length: {len(EICAR)}\r\n"),
        body=EICAR,
        fields={"Allow": "204"},
    )
    answer = exchange(thread.port, upload)
    assert answer.http_head.startswith(b"HTTP/1.1 403")
    assert b"This upload was blocked" in answer.body
    bodiless = build("REQMOD", "reqmod", req_hdr=http_request_head(URL), fields={"Allow": "204"})
    assert exchange(thread.port, bodiless).status == 204
    answer = exchange(thread.port, build("REQMOD", "reqmod", req_hdr=http_request_head(URL)))
    assert answer.status == 200  # no Allow: 204: the request's head comes back unchanged
    assert answer.http_head == http_request_head(URL)


MB = 1024 * 1024


def upload_head(size: int | None, allow_204: bool) -> bytes:
    """A REQMOD request up to its body: a POST of ``size`` bytes (None: no ``Content-Length``)."""
    req_hdr = http_request_head(URL, "POST", "" if size is None else f"Content-Length: {size}\r\n")
    allow = "Allow: 204\r\n" if allow_204 else ""
    return (
        f"REQMOD icap://127.0.0.1/reqmod ICAP/1.0\r\nHost: 127.0.0.1\r\n{allow}"
        f"Encapsulated: req-hdr=0, req-body={len(req_hdr)}\r\n\r\n"
    ).encode() + req_hdr


def peak_growth_kib(run: Any) -> int:
    """How much this process's peak RSS (VmHWM, reset first) grows over its RSS while ``run()`` runs
    (the service runs in a thread of this process)."""

    def kib(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(field)

    Path("/proc/self/clear_refs").write_text("5")
    idle = kib("VmRSS")
    run()
    return kib("VmHWM") - idle


@pytest.mark.parametrize("length", [True, False])
def test_a_100_mb_upload_streams_on_byte_for_byte_with_bounded_memory(serve: Any, length: bool) -> None:
    """Over ``max_object_size`` with ``oversize="pass"``: the upload goes on unscanned, streamed from
    the spool file as it arrives (with a length: from its first byte; without: once the limit is
    passed), and the worker's memory grows by far less than the upload."""
    thread = serve(max_object_size=4 * MB, oversize="pass")
    size = 100 * MB + 1
    head = upload_head(size if length else None, allow_204=False)
    got: list[Any] = []
    growth = peak_growth_kib(lambda: got.append(streamed_exchange(thread.port, head, generated(size))))
    streamed = got[0]
    assert streamed.answer.status == 200
    assert streamed.answer.http_head == http_request_head(URL, "POST", f"Content-Length: {size}\r\n" if length else "")
    assert (streamed.size, streamed.sha256) == (size, generated_sha256(size))
    assert growth < 32 * 1024, f"peak RSS grew by {growth} KiB over a {size} byte upload"
    assert spool_files(thread) == []
    print(f"length={length}: peak RSS +{growth / 1024:.1f} MiB over a {size} byte upload")


@pytest.mark.parametrize("length", [True, False])
def test_a_100_mb_upload_over_the_limit_is_blocked_with_bounded_memory(serve: Any, length: bool) -> None:
    """``oversize="block"`` (the default): the block page, whether the length announced it or the
    limit was passed while the upload arrived; the rest is read and dropped, memory stays flat."""
    thread = serve(max_object_size=4 * MB)
    size = 100 * MB
    head = upload_head(size if length else None, allow_204=True)
    got: list[Any] = []
    growth = peak_growth_kib(lambda: got.append(streamed_exchange(thread.port, head, generated(size))))
    answer = got[0].answer
    assert answer.http_head.startswith(b"HTTP/1.1 403")
    assert answer.fields["x-virus-id"] == "Heuristics.Limits.Exceeded.MaxObjectSize"
    assert b"This upload was blocked" in got[0].head
    assert got[0].size < 100_000
    assert growth < 32 * 1024, f"peak RSS grew by {growth} KiB over a {size} byte upload"
    assert spool_files(thread) == []
    print(f"length={length}: peak RSS +{growth / 1024:.1f} MiB over a {size} byte upload")


def test_eicar_at_the_end_of_a_large_upload_is_blocked(serve: Any) -> None:
    """12 MiB (under the default 16 MiB ``max_object_size``) then EICAR: the whole upload is spooled
    and scanned before the answer, so its last bytes still decide (uploads get no early head); the
    same upload without EICAR comes back byte for byte."""
    thread = serve()
    size = 12 * MB

    def infected() -> Iterator[bytes]:
        yield from generated(size)
        yield EICAR

    streamed = streamed_exchange(thread.port, upload_head(size + len(EICAR), allow_204=True), infected())
    assert streamed.answer.http_head.startswith(b"HTTP/1.1 403")
    assert streamed.answer.fields["x-virus-id"] == "EICAR-Test"
    assert b"EICAR-Test" in streamed.head
    clean = streamed_exchange(thread.port, upload_head(None, allow_204=False), generated(size))
    assert clean.answer.status == 200
    assert (clean.size, clean.sha256) == (size, generated_sha256(size))
    assert spool_files(thread) == []


def test_a_method_on_the_wrong_service_is_405(serve: Any) -> None:
    request = build("REQMOD", "respmod", req_hdr=http_request_head(URL))
    assert exchange(serve().port, request).status == 405


# ---------------------------------------------------------------------------------------------- oversize


def test_oversize_pass_streams_the_object_unscanned(serve: Any) -> None:
    thread = serve(max_object_size=100_000, oversize="pass")
    body = os.urandom(1_000_000) + EICAR  # past the limit: not scanned
    answer = exchange(thread.port, respmod(body, allow_204=False, length=False))
    assert answer.status == 200
    assert answer.body == body
    assert spool_files(thread) == []


def test_oversize_block_with_and_without_a_length(serve: Any) -> None:
    thread = serve(max_object_size=100_000, early_head=None)
    for length in (True, False):
        answer = exchange(thread.port, respmod(os.urandom(300_000), length=length))
        assert answer.http_head.startswith(b"HTTP/1.1 403"), length
        assert b"Heuristics.Limits.Exceeded.MaxObjectSize" in answer.body


def test_a_length_over_the_limit_is_decided_on_the_preview(serve: Any) -> None:
    thread = serve(max_object_size=1000, oversize="pass", preview=10)
    head = http_response_head(extra="Content-Length: 5000\r\n")
    request = (
        b"RESPMOD icap://h/respmod ICAP/1.0\r\nPreview: 10\r\nEncapsulated: res-hdr=0, res-body=%d\r\n\r\n" % len(head)
        + head
        + b"a\r\n0123456789\r\n0\r\n\r\n"
    )
    assert exchange(thread.port, request).status == 204  # the rest is never sent


# ---------------------------------------------------------------------------------------------- limits


def closed_after(port: int, data: bytes, timeout: float = 10) -> tuple[bytes, float]:
    """Send ``data``; what comes back until the service closes, and how long that took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received, time.monotonic() - started


def test_a_head_over_max_header_bytes_is_refused(serve: Any) -> None:
    thread = serve(max_header_bytes=2048)
    request = b"OPTIONS icap://h/respmod ICAP/1.0\r\nX-Fill: " + b"a" * 10_000 + b"\r\n\r\n"
    received, _ = closed_after(thread.port, request)
    assert received.startswith(b"ICAP/1.0 400")


def test_encapsulated_headers_over_their_limit_are_refused_before_being_read(serve: Any) -> None:
    thread = serve(max_http_header_bytes=4096)
    request = b"RESPMOD icap://h/respmod ICAP/1.0\r\nEncapsulated: res-hdr=0, res-body=999999\r\n\r\n"
    received, _ = closed_after(thread.port, request)  # nothing of the 999999 bytes is sent
    assert received.startswith(b"ICAP/1.0 400")


@pytest.mark.parametrize(
    "chunk_line", [b"zz\r\n", b"1" * 20 + b"\r\n", b"5\r\nhelloXX\r\n", b"9" * 2000 + b"\r\n", b"9" * 20_000]
)
def test_bad_chunks_are_refused(serve: Any, chunk_line: bytes) -> None:
    thread = serve()
    request = respmod(b"")[: -len(b"0\r\n\r\n")]  # the head, without the body's last chunk
    received, _ = closed_after(thread.port, request + chunk_line)
    assert received.startswith(b"ICAP/1.0 400")
    assert spool_files(thread) == []


def test_a_silent_client_is_closed_after_the_timeout(serve: Any) -> None:
    thread = serve(timeout=0.5)
    received, elapsed = closed_after(thread.port, respmod(b"x" * 100)[:-20])
    assert received.startswith(b"ICAP/1.0 408")
    assert elapsed < 10 * 0.5 + 5


def test_a_client_outside_clients_is_closed_unanswered(serve: Any) -> None:
    thread = serve(clients=["192.0.2.0/24"])
    received, _ = closed_after(thread.port, build("OPTIONS", "respmod"))
    assert received == b""


def test_max_connections_per_address(serve: Any) -> None:
    thread = serve(max_connections=4, max_connections_per_address=2)
    held = [socket.create_connection(("127.0.0.1", thread.port), timeout=5) for _ in range(2)]
    try:
        time.sleep(0.2)
        received, _ = closed_after(thread.port, build("OPTIONS", "respmod"))
        assert received == b""
    finally:
        for sock in held:
            sock.close()


# ---------------------------------------------------------------------------------------------- c-icap-client

C_ICAP_CLIENT = shutil.which("c-icap-client")
needs_client = pytest.mark.skipif(C_ICAP_CLIENT is None, reason="c-icap-client is not installed (package c-icap)")


def c_icap_client(port: int, *args: str, tmp_path: Path) -> tuple[str, bytes]:
    out = tmp_path / f"out-{time.monotonic_ns()}"
    assert C_ICAP_CLIENT is not None
    done = subprocess.run(
        [C_ICAP_CLIENT, "-i", "127.0.0.1", "-p", str(port), *args, "-o", str(out), "-v"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout + done.stderr, out.read_bytes() if out.exists() else b""


@needs_client
def test_c_icap_client_options(serve: Any, tmp_path: Path) -> None:
    text, _ = c_icap_client(serve().port, "-s", "respmod", tmp_path=tmp_path)
    assert "Methods: RESPMOD" in text
    assert "Allow 204: Yes" in text


@needs_client
def test_c_icap_client_respmod_and_reqmod(serve: Any, tmp_path: Path) -> None:
    thread = serve()
    eicar = tmp_path / "eicar.com"
    eicar.write_bytes(EICAR)
    clean = tmp_path / "clean.bin"
    clean.write_bytes(os.urandom(200_000))
    text, page = c_icap_client(thread.port, "-s", "respmod", "-f", str(eicar), "-resp", URL, tmp_path=tmp_path)
    assert "HTTP/1.1 403 Forbidden" in text
    assert b"EICAR-Test" in page
    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom(20_000))
    text, _ = c_icap_client(thread.port, "-s", "respmod", "-f", str(small), "-resp", URL, tmp_path=tmp_path)
    assert "ICAP/1.0 204" in text
    text, body = c_icap_client(
        thread.port, "-s", "respmod", "-f", str(clean), "-resp", URL, "-no204", tmp_path=tmp_path
    )
    assert body == clean.read_bytes()
    text, page = c_icap_client(thread.port, "-s", "reqmod", "-f", str(eicar), "-req", URL, tmp_path=tmp_path)
    assert b"This upload was blocked" in page
    for preview in ("-nopreview", "-w"):
        extra = [preview] if preview == "-nopreview" else [preview, "512"]
        text, page = c_icap_client(
            thread.port, "-s", "respmod", "-f", str(eicar), "-resp", URL, *extra, tmp_path=tmp_path
        )
        assert b"EICAR-Test" in page, (preview, text)
    assert spool_files(thread) == []


def test_a_client_that_resets_mid_body_leaves_nothing_behind(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    thread = serve()
    request = respmod(os.urandom(500_000))
    with socket.create_connection(("127.0.0.1", thread.port), timeout=10) as sock:
        sock.sendall(request[:200_000])
        time.sleep(0.3)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
    assert spool_files(thread) == []
    assert exchange(thread.port, build("OPTIONS", "respmod")).status == 200  # still serving
    assert not [record for record in caplog.records if record.levelname == "ERROR"]
