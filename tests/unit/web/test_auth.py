"""webq authentication: login, no user enumeration, throttling, sessions, CSRF, headers, userconv, user CLI."""

from __future__ import annotations

import functools
import logging
import re
import tempfile
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from click.testing import CliRunner

from mailsift.cli.users import user_group
from mailsift.settings import Settings
from mailsift.storage import db
from mailsift.web import users
from mailsift.web.app import create_app
from mailsift.web.auth import safe_next
from mailsift.web.webconfig import WebConfig


@pytest.fixture
def settings() -> Iterator[Settings]:
    state = tempfile.mkdtemp(dir="/tmp", prefix="mailsift-webauth-")
    database = db.sqlite()
    database.configure(state)
    for login, admin in (("alice", False), ("root@example.org", True)):
        add = functools.partial(
            users.add_user,
            login=login,
            password_hash=users.hash_password("pw-" + login),
            is_admin=admin,
            addresses=["alice@example.org"] if login == "alice" else [],
            now=time.time(),
        )
        database.call(add)
    yield Settings(state_dir=state, database=database)
    database.dispose()


def _app(settings: Settings, **options: object) -> httpx.AsyncClient:
    config = WebConfig(**options)  # type: ignore[arg-type]
    app = create_app(settings, secret="s" * 40, config=config)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://webq.test")


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with _app(settings) as client:
        yield client


async def _token(client: httpx.AsyncClient, path: str = "/login") -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', (await client.get(path)).text)
    assert found
    return found.group(1)


async def _login(client: httpx.AsyncClient, login: str, password: str) -> httpx.Response:
    token = await _token(client)
    return await client.post("/login", data={"login": login, "password": password, "csrf_token": token, "next": "/q/"})


async def test_login_logout_and_redirects(client: httpx.AsyncClient) -> None:
    assert (await client.get("/q/")).headers["location"] == "/login?next=%2Fq%2F"
    response = await _login(client, "alice", "pw-alice")
    assert response.status_code == 303
    assert response.headers["location"] == "/q/"
    assert (await client.get("/prefs")).status_code == 200
    token = await _token(client, "/prefs")
    assert (await client.post("/logout", data={})).status_code == 403  # logout needs the token too
    assert (await client.post("/logout", data={"csrf_token": token})).status_code == 303
    assert (await client.get("/prefs")).status_code == 303


async def test_unknown_user_and_wrong_password_answer_alike(client: httpx.AsyncClient) -> None:
    wrong = await _login(client, "alice", "nope")
    unknown = await _login(client, "mallory", "nope")
    assert wrong.status_code == unknown.status_code == 401

    def body(response: httpx.Response) -> str:  # the page without the echoed login and the token
        return re.sub(r'value="[^"]*"', "", response.text)

    assert body(wrong) == body(unknown)


async def test_login_throttled_per_login_for_known_and_unknown_names(settings: Settings) -> None:
    # the delay past the 3 free attempts (login_delay) outlasts the test however slow the machine: with
    # the default 5 s, alice's right password came after it under load and was let in (303)
    async with _app(settings, login_failures_per_name=3, login_delay=600) as client:
        for name in ("alice", "mallory"):
            for _ in range(3):
                assert (await _login(client, name, "nope")).status_code == 401
            assert (await _login(client, name, "nope")).status_code == 429
        assert (await _login(client, "alice", "pw-alice")).status_code == 429  # even the right password, for now
        assert (await _login(client, "root@example.org", "pw-root@example.org")).status_code == 303


async def test_login_throttled_per_client(settings: Settings) -> None:
    async with _app(settings, login_failures_per_client=4) as client:
        for n in range(4):
            assert (await _login(client, f"name{n}", "nope")).status_code == 401
        assert (await _login(client, "alice", "pw-alice")).status_code == 429


async def test_password_change_ends_sessions(settings: Settings, client: httpx.AsyncClient) -> None:
    assert (await _login(client, "alice", "pw-alice")).status_code == 303
    assert (await client.get("/prefs")).status_code == 200
    settings.database.call(functools.partial(users.update_user, login="alice", password_hash=users.hash_password("x")))
    assert (await client.get("/prefs")).status_code == 303


async def test_session_expires_after_session_seconds(settings: Settings) -> None:
    async with _app(settings, session_seconds=0.001) as client:
        assert (await _login(client, "alice", "pw-alice")).status_code == 303
        assert (await client.get("/prefs")).status_code == 303


async def test_login_needs_csrf_and_same_origin(client: httpx.AsyncClient) -> None:
    token = await _token(client)
    data = {"login": "alice", "password": "pw-alice", "next": "/"}
    assert (await client.post("/login", data=data)).status_code == 403
    crossed = await client.post("/login", data={**data, "csrf_token": token}, headers={"Origin": "http://evil.test"})
    assert crossed.status_code == 403
    site = await client.post("/login", data={**data, "csrf_token": token}, headers={"Sec-Fetch-Site": "cross-site"})
    assert site.status_code == 403
    assert (await client.post("/login", data={**data, "csrf_token": token})).status_code == 303


async def test_security_headers_and_cookie_flags(settings: Settings) -> None:
    async with _app(settings, secure_cookies=True) as client:
        response = await client.get("/login")
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-store"
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=lax" in cookie
        assert "secure" in cookie


def test_safe_next_never_leaves_the_site() -> None:
    for bad in ("//evil.test/x", "https://evil.test/", "/\\evil.test", "javascript:alert(1)", ""):
        assert safe_next(bad) == "/"
    assert safe_next("/q/?page=2") == "/q/?page=2"


def test_userconv_rewrites_the_login() -> None:
    rules = users.compile_userconv([(r"^([^@]+)$", r"\1@example.org")])
    assert users.convert_login("alice", rules) == "alice@example.org"
    assert users.convert_login("bob@other.test", rules) == "bob@other.test"


async def test_userconv_login_with_short_name(settings: Settings) -> None:
    rules = users.compile_userconv([(r"^root$", r"root@example.org")])
    async with _app(settings, userconv=rules) as client:
        assert (await _login(client, "root", "pw-root@example.org")).status_code == 303


def test_users_cli_add_passwd_list_delete(tmp_path: object) -> None:
    state = tempfile.mkdtemp(dir="/tmp", prefix="mailsift-usercli-")
    config = f"{state}/config.py"
    with open(config, "w", encoding="utf-8") as handle:
        handle.write(f"from mailsift import *\nSTATE_DIR = {state!r}\n")
    runner = CliRunner()
    add = ["add", "-c", config, "carol", "--address", "Carol@Example.org", "--password-stdin"]
    assert runner.invoke(user_group, add, input="a secret passphrase\n").exit_code == 0
    assert runner.invoke(user_group, add, input="a secret passphrase\n").exit_code == 1  # exists already
    listed = runner.invoke(user_group, ["list", "-c", config])
    assert listed.output.strip() == "carol\tuser\tcarol@example.org"
    passwd = runner.invoke(user_group, ["passwd", "-c", config, "carol", "--password-stdin"], input="new passphrase\n")
    assert passwd.exit_code == 0
    assert (
        runner.invoke(
            user_group, ["passwd", "-c", config, "nobody", "--password-stdin"], input="another passphrase\n"
        ).exit_code
        == 1
    )
    assert runner.invoke(user_group, ["delete", "-c", config, "carol"]).exit_code == 0
    assert runner.invoke(user_group, ["list", "-c", config]).output == ""


async def test_logins_are_logged_with_the_client_address(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """Finding 7: failed web logins were not logged at all (nothing for fail2ban)."""
    caplog.set_level(logging.INFO, logger="mailsift.webq")
    async with _app(settings, trusted_proxies=("127.0.0.1",)) as client:
        client.headers["X-Forwarded-For"] = "203.0.113.9"
        assert (await _login(client, "alice", "nope")).status_code == 401
        assert (await _login(client, "alice", "pw-alice")).status_code == 303
    async with _app(settings) as client:  # no trusted proxy: the peer, whatever the header says
        client.headers["X-Forwarded-For"] = "203.0.113.9"
        assert (await _login(client, "Mallory\x1b[2J x", "nope")).status_code == 401
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "mailsift.webq"]
    assert logged == [
        ("WARNING", "webq: login failed for alice from 203.0.113.9"),
        ("INFO", "webq: login ok for alice from 203.0.113.9"),
        ("WARNING", "webq: login failed for mallory?[2j?x from 127.0.0.1"),
    ]
