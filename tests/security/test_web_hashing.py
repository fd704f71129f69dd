"""Finding 4: argon2 ran on the event loop; a flood of failed logins stalled SMTP on the same worker.

Now every password check (and hash) of the web quarantine runs in a small thread pool of its own
(``mailsift.web.auth.PASSWORDS``, threads named ``mailsift-password``), apart from the event loop
and from the scanners' threads.  Checked two ways: where the verify runs, and a real worker
answering a whole SMTP transaction while a burst of 100 logins is being hashed.
"""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from mailsift.settings import Settings
from mailsift.web import users
from tests.helpers.webq import PASSWORDS, WebGateway, log_in, user_settings, web_client, web_gateway

BURST = 100
NOOPS = 50


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    with user_settings(tmp_path) as settings:
        yield settings


async def test_password_checks_run_off_the_event_loop(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[threading.Thread] = []
    verify = users.verify_password

    def recording(password_hash: str | None, password: str) -> bool:
        threads.append(threading.current_thread())
        return verify(password_hash, password)

    monkeypatch.setattr(users, "verify_password", recording)
    loop_thread = threading.current_thread()
    async with web_client(settings) as client:
        assert (await log_in(client, "alice", "wrong")).status_code == 401
        assert (await log_in(client, "nobody", "wrong")).status_code == 401  # the dummy verify too
        assert (await log_in(client, "alice", PASSWORDS["alice"])).status_code == 303
    assert len(threads) == 3
    assert all(thread is not loop_thread for thread in threads)
    assert all(thread.name.startswith("mailsift-password") for thread in threads), [t.name for t in threads]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebGateway]:
    options = ", login_failures_per_name=1000, login_failures_per_client=1000"  # every login is hashed
    with web_gateway(Path(tmp_path_factory.mktemp("webhash")), options) as served:
        yield served


def _one_login(url: str, number: int, started: threading.Event) -> tuple[float, int]:
    """A wrong password for a user (a full argon2 verify); returns when it was answered, and the status
    (401; 503 if the database was too busy to claim the attempt under the flood)."""
    with httpx.Client(base_url=url, timeout=300) as client:
        page = client.get("/login").text
        token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        data = {"login": "alice", "password": f"wrong-{number}", "csrf_token": token}
        answer = client.post("/login", data=data)
    started.set()
    assert answer.status_code in (401, 503), answer.status_code
    return time.monotonic(), answer.status_code


def test_smtp_answers_while_a_burst_of_logins_is_hashed(gateway: WebGateway) -> None:
    """The bound is counted in hashes, not seconds: while the loop verified passwords itself, each
    SMTP round trip waited for at least one verify, so the 50 NOOPs saw 50 logins answered or more."""
    worker = gateway.worker()
    started = threading.Event()
    with ThreadPoolExecutor(BURST) as pool:
        answered = [pool.submit(_one_login, gateway.url, n, started) for n in range(BURST)]
        assert started.wait(300), "no login was answered"  # the burst is being hashed
        with smtplib.SMTP("127.0.0.1", gateway.port, timeout=120) as client:
            smtp_start = time.monotonic()
            for _ in range(NOOPS):  # round trips, each needing the worker's loop
                assert client.noop()[0] == 250
            assert client.sendmail("a@example.test", ["b@example.test"], b"Subject: burst\r\n\r\nhi\r\n") == {}
            smtp_done = time.monotonic()
        results = [future.result(timeout=600) for future in answered]
    assert gateway.worker() == worker
    times = [t for t, _ in results]
    assert sum(status == 401 for _, status in results) > BURST // 2  # most were hashed
    during = sum(smtp_start <= t <= smtp_done for t in times)
    assert smtp_done < max(times), "the burst was over before the SMTP session ended"
    assert during < NOOPS // 2, f"{during} logins were answered during the {NOOPS + 4} SMTP round trips"
