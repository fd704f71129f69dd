"""Finding 8: login throttling raced, let anyone lock a user out, and trusted a spoofable header.

The attack: 40 concurrent wrong passwords had 13 checked although the limit was 5; after 5 wrong
attempts by anyone the user's right password got 429; the per-client limit keyed on
``X-Forwarded-For``, believed from loopback, so rotating it gave 35 attempts of 35.

Now each attempt is claimed in the database before the password is checked (one atomic upsert),
keyed on the (login name, client) pair with a progressive delay, plus a per-client limit; and
``X-Forwarded-For`` is believed only from ``trusted_proxies`` (default none).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mailsift.settings import Settings
from mailsift.testing import ServiceThread
from mailsift.web import users
from mailsift.web.service import webq
from mailsift.web.webconfig import WebConfig
from tests.helpers.webq import PASSWORDS, csrf_token, log_in, user_settings, web_client


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    with user_settings(tmp_path) as settings:
        yield settings


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every password actually verified."""
    seen: list[str] = []
    verify = users.verify_password

    def counting(password_hash: str | None, password: str) -> bool:
        seen.append(password)
        return verify(password_hash, password)

    monkeypatch.setattr(users, "verify_password", counting)
    return seen


async def test_concurrent_wrong_passwords_check_at_most_the_limit(settings: Settings, checked: list[str]) -> None:
    async with web_client(settings, WebConfig(login_failures_per_name=5, login_delay=600)) as client:
        token = await csrf_token(client, "/login")
        data = [{"login": "alice", "password": f"guess-{n}", "csrf_token": token} for n in range(40)]
        answers = await asyncio.gather(*(client.post("/login", data=form) for form in data))
    statuses = sorted(answer.status_code for answer in answers)
    assert len(checked) <= 5, f"{len(checked)} passwords checked"
    assert statuses.count(401) == len(checked)
    assert statuses.count(429) == 40 - len(checked)


async def test_a_stranger_cannot_lock_out_the_right_password(settings: Settings) -> None:
    config = WebConfig(login_failures_per_name=5, login_delay=600)
    async with web_client(settings, config, client=("203.0.113.66", 5555)) as stranger:
        for n in range(12):
            assert (await log_in(stranger, "alice", f"guess-{n}")).status_code in (401, 429)
        assert (await log_in(stranger, "alice", PASSWORDS["alice"])).status_code == 429  # that pair waits
    async with web_client(settings, config, client=("198.51.100.20", 6666)) as owner:
        assert (await log_in(owner, "alice", PASSWORDS["alice"])).status_code == 303


async def test_the_delay_grows_and_passes(
    settings: Settings, checked: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [time.time()]

    def ticking() -> float:  # a clock the test moves, still advancing a little at each reading
        clock[0] += 0.001
        return clock[0]

    monkeypatch.setattr(time, "time", ticking)
    config = WebConfig(login_failures_per_name=2, login_delay=10, throttle_window=3600)
    async with web_client(settings, config) as client:
        for n in range(2):
            assert (await log_in(client, "alice", f"guess-{n}")).status_code == 401
        assert (await log_in(client, "alice", "guess-2")).status_code == 429  # 10 s to wait
        clock[0] += 11
        assert (await log_in(client, "alice", "guess-3")).status_code == 401
        clock[0] += 11
        assert (await log_in(client, "alice", "guess-4")).status_code == 429  # now 20 s
        clock[0] += 10
        assert (await log_in(client, "alice", PASSWORDS["alice"])).status_code == 303
    assert checked == ["guess-0", "guess-1", "guess-3", PASSWORDS["alice"]]


async def test_forwarded_for_is_believed_from_trusted_proxies_only(settings: Settings) -> None:
    proxied = WebConfig(login_failures_per_name=2, login_delay=600, trusted_proxies=("127.0.0.1",))
    async with web_client(settings, proxied) as proxy:
        for n in range(3):
            await log_in(proxy, "alice", f"guess-{n}", **{"X-Forwarded-For": "203.0.113.66"})
        assert (await log_in(proxy, "alice", "x", **{"X-Forwarded-For": "203.0.113.66"})).status_code == 429
        # another client behind the same proxy keeps its own count
        right = await log_in(proxy, "alice", PASSWORDS["alice"], **{"X-Forwarded-For": "198.51.100.20"})
        assert right.status_code == 303
    # from a peer that is not a trusted proxy, the header is only a header
    async with web_client(settings, proxied, client=("192.0.2.9", 7777)) as direct:
        for n in range(3):
            await log_in(direct, "bob", f"guess-{n}", **{"X-Forwarded-For": f"10.0.0.{n}"})
        assert (await log_in(direct, "bob", PASSWORDS["bob"], **{"X-Forwarded-For": "10.9.9.9"})).status_code == 429


def test_rotating_forwarded_for_does_not_multiply_attempts(settings: Settings) -> None:
    """The default webq, served by uvicorn: 35 names with a fresh X-Forwarded-For each, from loopback."""
    with ServiceThread(webq("127.0.0.1", 0), settings) as served:
        counted = {401: 0, 429: 0}
        with httpx.Client(base_url=f"http://127.0.0.1:{served.port}", timeout=60) as client:
            for n in range(35):
                page = client.get("/login").text
                token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
                form = {"login": f"name{n}", "password": "guess", "csrf_token": token}
                answer = client.post("/login", data=form, headers={"X-Forwarded-For": f"203.0.113.{n}"})
                counted[answer.status_code] += 1
    assert counted == {401: 30, 429: 5}  # login_failures_per_client of the one real client
