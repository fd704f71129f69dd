"""``icap`` with a real clamd: what Squid would send, scanned by ClamAV (the private signature DB).

The object reaches clamd as the synthetic message's base64 attachment; clamd
decodes the MIME itself, so the EICAR bytes of a download or an upload are
found wherever they are.  The client is tests/helpers/icap.py.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsift import clamd, icap
from mailsift.settings import Settings
from mailsift.testing import ServiceThread
from tests.helpers.archives import zip_of
from tests.helpers.clamd import EICAR, EICAR_NAMES, ClamdInstance
from tests.helpers.icap import build, exchange, http_request_head, http_response_head, read_head

pytestmark = pytest.mark.engines

URL = "http://example.org/downloads/"


@pytest.fixture
def service(clamd_instance: ClamdInstance, tmp_path: Path) -> Iterator[ServiceThread]:
    scanners = [clamd(("127.0.0.1", clamd_instance.port))]
    thread = ServiceThread(icap(scanners, "127.0.0.1", 0), Settings(state_dir=str(tmp_path / "state")))
    thread.start()
    yield thread
    thread.stop()


def respmod(name: str, body: bytes, *, allow_204: bool = True) -> bytes:
    return build(
        "RESPMOD",
        "respmod",
        req_hdr=http_request_head(URL + name),
        res_hdr=http_response_head(extra=f"Content-Length: {len(body)}\r\n"),
        body=body,
        fields={"Allow": "204"} if allow_204 else {},
    )


@pytest.mark.parametrize(
    ("name", "body"),
    [("eicar.com", EICAR), ("tools.zip", zip_of({"readme.txt": b"hello\n", "eicar.com": EICAR}))],
    ids=["bare", "in-a-zip"],
)
def test_an_eicar_download_gets_the_block_page_naming_clamds_finding(
    service: ServiceThread, name: str, body: bytes
) -> None:
    answer = exchange(service.port, respmod(name, body))
    assert answer.status == 200
    assert answer.http_head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert answer.fields["x-virus-id"] in EICAR_NAMES, answer.fields
    assert answer.fields["x-virus-id"].encode() in answer.body  # the block page names it
    assert EICAR not in answer.body


def test_a_clean_download_passes(service: ServiceThread) -> None:
    body = b"%PDF-1.4 nothing to see here\n" * 100
    assert exchange(service.port, respmod("report.pdf", body)).status == 204  # Squid keeps its copy
    echoed = exchange(service.port, respmod("report.pdf", body, allow_204=False))
    assert echoed.status == 200
    assert echoed.body == body  # byte for byte


def test_a_big_download_is_scanned_whole(service: ServiceThread) -> None:
    """3 MB: over ``early_head``, so the head goes out first; clean, it follows byte for byte;
    with EICAR at its very end, the answer is cut before its last chunk."""
    clean = os.urandom(3 * 1024 * 1024)
    answer = exchange(service.port, respmod("big.bin", clean, allow_204=False))
    assert answer.status == 200
    assert hashlib.sha256(answer.body).digest() == hashlib.sha256(clean).digest()
    infected = clean[: -len(EICAR)] + EICAR
    with socket.create_connection(("127.0.0.1", service.port), timeout=60) as sock:
        sock.sendall(respmod("big.bin", infected, allow_204=False))
        buffer = bytearray()
        assert read_head(sock, buffer).startswith(b"ICAP/1.0 200")
        while data := sock.recv(65536):
            buffer += data
    assert not buffer.endswith(b"0\r\n\r\n")
    assert len(buffer) < len(infected)


def test_an_eicar_upload_is_blocked_on_reqmod(service: ServiceThread) -> None:
    def upload(body: bytes) -> bytes:
        head = http_request_head(URL + "upload", method="POST", extra=f"Content-Length: {len(body)}\r\n")
        return build("REQMOD", "reqmod", req_hdr=head, body=body, fields={"Allow": "204"})

    blocked = exchange(service.port, upload(b"file=" + EICAR))
    assert blocked.status == 200
    assert blocked.http_head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert blocked.fields["x-virus-id"] in EICAR_NAMES
    assert exchange(service.port, upload(b"file=a harmless form field")).status == 204
