"""Finding 7: logout was client-side only; a cookie saved before logout opened the quarantine for hours.

Sessions are now rows in ``web_session`` (the SHA-256 of the cookie's session id): logout, a
password change and the user's removal delete them, and a saved cookie is refused afterwards.
The older protections stay: a new session id at login (no fixation), a signed cookie (no
tampering), and the database holds no id a reader could replay.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from itsdangerous import TimestampSigner
from sqlalchemy import select

from mailsift.settings import Settings
from mailsift.storage.schema import web_session_table
from mailsift.web import users
from mailsift.web.app import SESSION_COOKIE
from tests.helpers.webq import PASSWORDS, csrf_token, log_in, user_settings, web_client


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    with user_settings(tmp_path) as settings:
        yield settings


async def _logged_in_cookie(client: httpx.AsyncClient) -> str:
    assert (await log_in(client, "alice", PASSWORDS["alice"])).status_code == 303
    assert (await client.get("/prefs")).status_code == 200
    return str(client.cookies[SESSION_COOKIE])


async def _opens(settings: Settings, cookie: str) -> bool:
    """Whether a fresh client presenting only ``cookie`` gets alice's preferences page."""
    async with web_client(settings) as replay:
        replay.cookies.set(SESSION_COOKIE, cookie)
        return (await replay.get("/prefs")).status_code == 200


async def test_a_cookie_saved_before_logout_is_refused_after(settings: Settings) -> None:
    async with web_client(settings) as client:
        saved = await _logged_in_cookie(client)
        assert await _opens(settings, saved)
        token = await csrf_token(client, "/prefs")
        assert (await client.post("/logout", data={"csrf_token": token})).status_code == 303
    assert not await _opens(settings, saved)


async def test_password_change_ends_saved_sessions(settings: Settings) -> None:
    async with web_client(settings) as client:
        saved = await _logged_in_cookie(client)
    change = functools.partial(users.update_user, login="alice", password_hash=users.hash_password("new-Secret-9"))
    assert settings.database.call(change)
    assert not await _opens(settings, saved)


async def test_user_removal_ends_saved_sessions(settings: Settings) -> None:
    async with web_client(settings) as client:
        saved = await _logged_in_cookie(client)
    assert settings.database.call(functools.partial(users.delete_user, login="alice"))
    assert not await _opens(settings, saved)
    # a new user who happens to get the same id does not inherit the session
    add = functools.partial(users.add_user, login="alice2", password_hash="x", addresses=[], now=0.0)
    settings.database.call(add)
    assert not await _opens(settings, saved)


async def test_each_login_is_a_new_server_session(settings: Settings) -> None:
    async with web_client(settings) as first, web_client(settings) as second:
        one = await _logged_in_cookie(first)
        two = await _logged_in_cookie(second)
        token = await csrf_token(first, "/prefs")
        assert (await first.post("/logout", data={"csrf_token": token})).status_code == 303
    assert not await _opens(settings, one)
    assert await _opens(settings, two)  # logging out one browser leaves the other


async def test_anonymous_cookie_is_not_kept_at_login(settings: Settings) -> None:
    async with web_client(settings) as client:
        await client.get("/login")
        anonymous = str(client.cookies[SESSION_COOKIE])
        assert (await log_in(client, "alice", PASSWORDS["alice"])).status_code == 303
        assert str(client.cookies[SESSION_COOKIE]) != anonymous
    assert not await _opens(settings, anonymous)


async def test_the_database_holds_no_usable_session_id(settings: Settings) -> None:
    async with web_client(settings) as client:
        await _logged_in_cookie(client)
    rows = settings.database.call(lambda connection: connection.execute(select(web_session_table.c.id)).all())
    assert len(rows) == 1
    stored_id = rows[0].id
    # a signed cookie naming the stored value (what a reader of the database would forge) opens nothing
    payload = base64.b64encode(json.dumps({"sid": stored_id}).encode())
    forged = TimestampSigner("s" * 40).sign(payload).decode()
    assert not await _opens(settings, forged)


async def test_tampered_cookie_is_refused(settings: Settings) -> None:
    async with web_client(settings) as client:
        saved = await _logged_in_cookie(client)
    assert not await _opens(settings, saved[:-2] + ("AA" if not saved.endswith("AA") else "BB"))
