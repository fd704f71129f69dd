"""Finding 2: one unauthenticated request grew the worker by ~1 GB.

The attack: ``POST /login`` with ~990 form fields of ~1 MB each, buffered whole before the
CSRF check, on the worker that also serves SMTP.  Now every route has a body limit enforced
before parsing (login a few KB): a ``Content-Length`` beyond it is answered 413 before the body
is read, a chunked body is counted and cut; forms have a field cap; the request line and
headers are bounded by h11.  The real-server tests send the attack to ``mailsift serve`` and
read the worker's peak RSS from /proc; SMTP on the same worker still answers.
"""

from __future__ import annotations

import contextlib
import select
import smtplib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsift.settings import Settings
from tests.helpers.faults import peak_rss_kb
from tests.helpers.webq import (
    PASSWORDS,
    WebGateway,
    csrf_token,
    log_in,
    user_settings,
    web_client,
    web_gateway,
)

FIELDS, FIELD_SIZE = 990, 1_000_000  # each field under Starlette's own 1 MiB part limit, as in the attack
GIVE_UP = 64 * 1024 * 1024
"""Bytes sent without an answer after which the server is taken to be buffering the attack."""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebGateway]:
    with web_gateway(Path(tmp_path_factory.mktemp("weblimits"))) as served:
        yield served


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    with user_settings(tmp_path) as settings:
        yield settings


def _answer(sock: socket.socket) -> bytes:
    """What the server sent (until it closes, or 5 s of silence)."""
    data = b""
    sock.settimeout(5)
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _flood(port: int, *, chunked: bool) -> tuple[int, bytes]:
    """POST /login with FIELDS fields of FIELD_SIZE bytes; stop at the first byte of an answer.

    Returns (bytes of body sent, the answer).  Gives up (no answer) after GIVE_UP bytes.
    """
    field = b"f%d=" + b"A" * FIELD_SIZE + b"&"
    total = sum(len(field % n) for n in range(FIELDS))
    head = b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"Content-Length: %d\r\n\r\n" % total
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        for n in range(FIELDS):
            piece = field % n
            if chunked:
                piece = b"%x\r\n%s\r\n" % (len(piece), piece)
            readable, _, _ = select.select([sock], [], [], 0)
            if readable or sent > GIVE_UP:
                break
            try:
                sock.sendall(piece)
            except OSError:  # the server answered and closed: read what it said
                break
            sent += len(piece)
        return sent, _answer(sock)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_login_flood_is_refused_before_buffering(gateway: WebGateway, chunked: bool) -> None:
    worker = gateway.worker()
    before = peak_rss_kb(worker)
    sent, answer = _flood(gateway.web_port, chunked=chunked)
    assert answer.startswith(b"HTTP/1.1 413"), f"no 413 after {sent} bytes: {answer[:200]!r}"
    assert sent < GIVE_UP
    grown_mb = (peak_rss_kb(worker) - before) / 1024
    assert grown_mb < 48, f"the worker's peak RSS grew by {grown_mb:.0f} MB"
    assert gateway.worker() == worker  # the same worker, alive
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
        refused = client.sendmail("a@example.test", ["b@example.test"], b"Subject: after\r\n\r\nstill here\r\n")
    assert refused == {}


def test_oversized_headers_are_refused_and_the_worker_goes_on(gateway: WebGateway) -> None:
    with socket.create_connection(("127.0.0.1", gateway.web_port), timeout=30) as sock:
        sock.sendall(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        with contextlib.suppress(OSError):
            for n in range(2000):  # 2,000 headers of 1 KB: 2 MB of header
                sock.sendall(b"X-Pad-%d: %s\r\n" % (n, b"p" * 1024))
        answer = _answer(sock)
    assert not answer.startswith(b"HTTP/1.1 200"), answer[:200]
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
        assert client.noop()[0] == 250


async def test_login_body_limit_and_field_cap(settings: Settings) -> None:
    async with web_client(settings) as client:
        token = await csrf_token(client, "/login")
        big = {"login": "alice", "password": "x" * 9000, "csrf_token": token}
        assert (await client.post("/login", data=big)).status_code == 413
        many = {f"f{n}": "" for n in range(300)} | {"login": "alice", "password": "x", "csrf_token": token}
        assert (await client.post("/login", data=many)).status_code == 413
        assert (await log_in(client, "alice", PASSWORDS["alice"])).status_code == 303  # an honest login passes


async def test_other_forms_have_a_modest_limit(settings: Settings) -> None:
    async with web_client(settings) as client:
        assert (await log_in(client, "alice", PASSWORDS["alice"])).status_code == 303
        token = await csrf_token(client, "/prefs")
        huge = {"csrf_token": token, "language": "en", "rows": "50", "pad": "p" * 100_000}
        assert (await client.post("/prefs", data=huge)).status_code == 413

        async def stream() -> object:
            for _ in range(40):  # 40 chunks of 4 KB, no Content-Length: counted and cut
                yield b"pad=" + b"p" * 4092

        response = await client.post(
            "/prefs",
            content=stream(),  # type: ignore[arg-type]
            headers={"content-type": "application/x-www-form-urlencoded", "x-csrf-token": token},
        )
        assert response.status_code == 413
