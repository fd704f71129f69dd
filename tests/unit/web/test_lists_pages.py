"""A user's own white/black lists (mailsift.web.lists_pages) and where the web learns that lists are in use
(mailsift.web.service.webq.bind_config, called by mailsift.config.load)."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import tempfile
import time
from collections.abc import Iterator

import httpx
import pytest

from mailsift import config as config_module
from mailsift.settings import Settings
from mailsift.storage import db
from mailsift.storage import policies as userpolicy
from mailsift.web import users
from mailsift.web.app import create_app
from mailsift.web.service import webq
from mailsift.web.webconfig import WebConfig
from tests.helpers.webq import page_token


@pytest.fixture
def settings() -> Iterator[Settings]:
    state = tempfile.mkdtemp(dir="/tmp", prefix="mailsift-weblists-")
    database = db.sqlite()
    database.configure(state)
    for login, addresses in (("alice", ["alice@example.org", "@example.org"]), ("bob", ["bob@example.org"])):
        add = functools.partial(
            users.add_user,
            login=login,
            password_hash=users.hash_password("pw"),
            is_admin=False,
            addresses=addresses,
            now=time.time(),
        )
        database.call(add)
    yield Settings(state_dir=state, database=database)
    database.dispose()


async def _client(settings: Settings, lists: frozenset[str] = frozenset({"white", "black"})) -> httpx.AsyncClient:
    app = create_app(settings, secret="k" * 40, config=WebConfig(lists_in_use=lists))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://webq.test")
    token = page_token((await client.get("/login")).text)
    answer = await client.post("/login", data={"login": "alice", "password": "pw", "csrf_token": token})
    assert answer.status_code == 303
    return client


def _entries(settings: Settings) -> list[tuple[str, str, str, str]]:
    found = settings.require_database().call(userpolicy.list_entries)
    return [(e.owner, e.list, e.field, e.value) for e in found]


async def test_add_and_remove_own_sender_entries(settings: Settings) -> None:
    client = await _client(settings)
    async with contextlib.aclosing(client):
        page = await client.get("/lists")
        token = page_token(page.text)
        owners = page.text.split('name="owner"')[1].split("</select>")[0]
        assert re.findall(r'<option value="([^"]+)">', owners) == ["alice@example.org"]  # @domain: the admin's
        add = {
            "csrf_token": token,
            "action": "add",
            "list": "white",
            "value": "Friend@Good.Example",
            "owner": "alice@example.org",
        }
        done = await client.post("/lists", data=add, follow_redirects=True)
        assert "friend@good.example added to the white list of alice@example.org." in done.text
        black = {**add, "list": "black", "value": "spam.example"}
        await client.post("/lists", data=black)
        assert _entries(settings) == [
            ("alice@example.org", "black", "sender", "spam.example"),
            ("alice@example.org", "white", "sender", "friend@good.example"),
        ]
        page = (await client.get("/lists")).text
        assert 'data-value="friend@good.example" data-list="white"' in page
        remove = {**add, "action": "remove", "value": "friend@good.example"}
        gone = await client.post("/lists", data=remove, follow_redirects=True)
        assert "removed from the white list" in gone.text
        assert _entries(settings) == [("alice@example.org", "black", "sender", "spam.example")]
        bad = await client.post("/lists", data={**add, "value": "not an address"}, follow_redirects=True)
        assert "Not changed: bad sender" in bad.text


async def test_only_own_mailboxes_and_with_the_csrfpage_token(settings: Settings) -> None:
    client = await _client(settings)
    async with contextlib.aclosing(client):
        token = page_token((await client.get("/lists")).text)
        base = {"csrf_token": token, "action": "add", "list": "white", "value": "x@y.example"}
        for owner in ("bob@example.org", "@example.org", "example.org", "", "someone@example.org"):
            assert (await client.post("/lists", data={**base, "owner": owner})).status_code == 403, owner
        forged = {**base, "owner": "alice@example.org", "csrf_token": "x" * 43}
        assert (await client.post("/lists", data=forged)).status_code == 403
        assert _entries(settings) == []


async def test_lists_not_in_use_says_so_and_changes_nothing(settings: Settings) -> None:
    client = await _client(settings, frozenset())
    async with contextlib.aclosing(client):
        page = await client.get("/lists")
        assert "White and black lists are not in use on this gateway" in page.text
        assert 'id="add-entry"' not in page.text
        data = {
            "csrf_token": page_token(page.text),
            "list": "white",
            "value": "x@y.example",
            "owner": "alice@example.org",
        }
        assert (await client.post("/lists", data=data)).status_code == 409
    only_white = await _client(settings, frozenset({"white"}))
    async with contextlib.aclosing(only_white):
        page = await only_white.get("/lists")
        assert '<option value="black">' not in page.text
        data = {
            "csrf_token": page_token(page.text),
            "list": "black",
            "value": "x@y.example",
            "owner": "alice@example.org",
        }
        assert (await only_white.post("/lists", data=data)).status_code == 400
    assert _entries(settings) == []


@pytest.mark.parametrize(
    ("scanners", "expected"),
    [
        ("[]", set()),
        ("[listed()]", {"white", "black"}),
        ("[whitelisted(), regexp_scan([('X', 'x')])]", {"white"}),
    ],
)
def test_the_config_tells_the_web_which_lists_are_consulted(
    tmp_path: object, scanners: str, expected: set[str]
) -> None:
    path = os.path.join(str(tmp_path), "config.py")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(
            "from mailsift import *\nfrom mailsift.web.service import webq\n"
            f"STATE_DIR = {str(tmp_path)!r}\nDATABASE = db.sqlite()\nSCANNERS = {scanners}\n"
            "SRV = [webq('127.0.0.1', 0)]\n"
        )
    loaded = config_module.load(path)
    try:
        (service,) = loaded.services
        assert isinstance(service, webq)
        assert service.config.lists_in_use == frozenset(expected)
    finally:
        assert loaded.settings.database is not None
        loaded.settings.database.dispose()


async def test_the_lists_notices_speak_the_pages_language(settings: Settings) -> None:
    client = await _client(settings)
    client.headers["Accept-Language"] = "sk"
    async with contextlib.aclosing(client):
        page = await client.get("/lists")
        assert "Vaše biele a čierne zoznamy" in page.text
        add = {
            "csrf_token": page_token(page.text),
            "action": "add",
            "list": "black",
            "value": "Spam.Example",
            "owner": "alice@example.org",
        }
        done = await client.post("/lists", data=add, follow_redirects=True)
        assert "spam.example je pridaný na čierny zoznam adresy alice@example.org." in done.text
        bad = await client.post("/lists", data={**add, "value": "not an address"}, follow_redirects=True)
        assert "Nezmenené: bad sender" in bad.text  # the storage's reason stays as it is
        theirs = await client.post("/lists", data={**add, "owner": "bob@example.org"})
        assert theirs.status_code == 403
        assert "Táto adresa nie je vaša." in theirs.text
