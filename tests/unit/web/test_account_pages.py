"""A user's own password change (mailsift.web.account_pages), in-process ASGI on SQLite."""

from __future__ import annotations

import contextlib
import functools
import tempfile
import time
from collections.abc import Iterator

import httpx
import pytest

from mailsift.settings import Settings
from mailsift.storage import db
from mailsift.web import users
from mailsift.web.app import create_app
from mailsift.web.webconfig import WebConfig
from tests.helpers.webq import page_token

NEW = "a new long password"


@pytest.fixture
def settings() -> Iterator[Settings]:
    state = tempfile.mkdtemp(dir="/tmp", prefix="mailsift-webaccount-")
    database = db.sqlite()
    database.configure(state)
    add = functools.partial(
        users.add_user,
        login="alice",
        password_hash=users.hash_password("old password"),
        is_admin=False,
        addresses=["alice@example.org"],
        now=time.time(),
    )
    database.call(add)
    yield Settings(state_dir=state, database=database)
    database.dispose()


async def _log_in(app: object, password: str) -> tuple[httpx.AsyncClient, int]:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://webq.test")  # type: ignore[arg-type]
    token = page_token((await client.get("/login")).text)
    answer = await client.post("/login", data={"login": "alice", "password": password, "csrf_token": token})
    return client, answer.status_code


async def test_change_own_password_ends_the_other_sessions(settings: Settings) -> None:
    app = create_app(settings, secret="k" * 40, config=WebConfig())
    here, status = await _log_in(app, "old password")
    assert status == 303
    there, status = await _log_in(app, "old password")
    assert status == 303
    async with contextlib.aclosing(here), contextlib.aclosing(there):
        page = await here.get("/password")
        token = page_token(page.text)
        wrong = await here.post("/password", data={"csrf_token": token, "current": "nope", "new": NEW, "again": NEW})
        assert wrong.status_code == 400
        assert "The current password is wrong." in wrong.text
        short = {"csrf_token": token, "current": "old password", "new": "short", "again": "short"}
        assert "at least 10 characters" in (await here.post("/password", data=short)).text
        differ = {"csrf_token": token, "current": "old password", "new": NEW, "again": NEW + "x"}
        assert "differ" in (await here.post("/password", data=differ)).text
        forged = {"csrf_token": "x" * 43, "current": "old password", "new": NEW, "again": NEW}
        assert (await here.post("/password", data=forged)).status_code == 403
        good = {"csrf_token": token, "current": "old password", "new": NEW, "again": NEW}
        done = await here.post("/password", data=good, follow_redirects=True)
        assert done.status_code == 200
        assert "Password changed; your other sessions ended." in done.text
        assert (await here.get("/q/")).status_code == 200  # this browser stays logged in
        assert (await there.get("/q/")).headers["location"].startswith("/login")  # the other session ended
    old, status = await _log_in(app, "old password")
    await old.aclose()
    assert status == 401
    new, status = await _log_in(app, NEW)
    await new.aclose()
    assert status == 303
