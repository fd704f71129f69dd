"""webq quarantine pages and queries (ASGI, SQLite): ownership in the queries, filters, paging,
safe mail display, actions and their limits."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import tempfile
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from mailsift.errors import ConfigError
from mailsift.message.result import Result
from mailsift.scanners.basic import regexp_scan
from mailsift.settings import Settings
from mailsift.storage import db
from mailsift.storage import policies as userpolicy
from mailsift.storage.quarantine.index import claim_release, get_entry
from mailsift.testing import RecordingServer
from mailsift.web import mailview, users
from mailsift.web.app import create_app
from mailsift.web.quarantine_queries import ListQuery, find_page, get_visible
from mailsift.web.users import User
from mailsift.web.webconfig import WebConfig
from tests.helpers.messages import message_bytes
from tests.helpers.webq import WebqServer

ALICE = User(1, "alice", False, ("alice@example.org",))
ADMIN = User(2, "admin", True, ())


@pytest.fixture
async def server() -> AsyncIterator[WebqServer]:
    state = tempfile.mkdtemp(dir="/tmp", prefix="mailsift-webqunit-")
    database = db.sqlite()
    database.configure(state)
    recorder = RecordingServer().start()
    settings = Settings(state_dir=state, database=database, smtp_server=("127.0.0.1", recorder.port))
    server = WebqServer("http://webq.test", recorder, settings, state)
    for login, address in (("alice", "alice@example.org"), ("admin", None)):
        add = functools.partial(
            users.add_user,
            login=login,
            password_hash=users.hash_password("pw"),
            is_admin=address is None,
            addresses=[address] if address else [],
            now=time.time(),
        )
        database.call(add)

    def seed(name: str, recipients: list[str], subject: str, body: str = "hello", category: str = "virus") -> None:
        raw = message_bytes("s@x.test", recipients[0], subject, body)
        server.seed(name, "s@x.test", recipients, raw, category=category)

    # spam: a user may release it (a virus only an admin: tests/security/test_release_policy.py)
    await asyncio.to_thread(seed, "mine", ["Alice@Example.org"], "Mine EICAR-STANDARD", "EICAR-STANDARD", "spam")
    await asyncio.to_thread(seed, "theirs", ["bob@example.org"], "Theirs")
    await asyncio.to_thread(seed, "both", ["alice@example.org", "bob@example.org"], "Both")
    for n in range(12):
        await asyncio.to_thread(seed, f"bulk{n}", ["alice@example.org"], f"Bulk {n:02d}")
    yield server
    recorder.stop()
    database.dispose()


async def _client(server: WebqServer, login: str) -> httpx.AsyncClient:
    config = WebConfig(scanners=(regexp_scan([("EICAR-Test", r"EICAR-STANDARD")]),))
    app = create_app(server.settings, secret="k" * 40, config=config)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=server.url)
    page = await client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token
    response = await client.post("/login", data={"login": login, "password": "pw", "csrf_token": token.group(1)})
    assert response.status_code == 303
    return client


async def _token(client: httpx.AsyncClient) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', (await client.get("/prefs")).text)
    assert found
    return found.group(1)


async def test_queries_carry_ownership(server: WebqServer) -> None:
    m, database = server.messages, server.settings.database
    entries, total = database.call(find_page, ALICE, ListQuery(rows=100))
    assert {e.id for e in entries} == set(m.values()) - {m["theirs"]}
    assert total == len(m) - 1
    assert database.call(get_visible, ALICE, m["theirs"]) is None
    assert database.call(get_visible, ALICE, m["mine"]) is not None  # recipient case does not matter
    assert database.call(get_visible, ADMIN, m["theirs"]) is not None
    nobody = User(3, "nobody", False, ())
    assert database.call(find_page, nobody, ListQuery()) == ([], 0)


async def test_filters_sort_and_paging(server: WebqServer) -> None:
    database = server.settings.database
    page1, total = database.call(find_page, ALICE, ListQuery(subject="bulk", sort="subject", descending=False, rows=5))
    assert total == 12
    assert [e.subject for e in page1] == [f"Bulk {n:02d}" for n in range(5)]
    page3, _ = database.call(
        find_page, ALICE, ListQuery(subject="bulk", sort="subject", descending=False, rows=5, page=3)
    )
    assert [e.subject for e in page3] == ["Bulk 10", "Bulk 11"]
    found, total = database.call(find_page, ALICE, ListQuery(text="theirs"))
    assert (found, total) == ([], 0)
    _future, total = database.call(find_page, ADMIN, ListQuery(since=time.time() + 86400))
    assert total == 0


async def test_pages_answer_404_for_others_messages(server: WebqServer) -> None:
    client = await _client(server, "alice")
    theirs = server.messages["theirs"]
    token = await _token(client)
    async with contextlib.aclosing(client):
        for path in ("", "/raw", "/part/0"):
            assert (await client.get(f"/q/{theirs}{path}")).status_code == 404
        for action in ("release", "delete", "recheck", "list"):
            response = await client.post(f"/q/{theirs}/{action}", data={"csrf_token": token, "list": "white"})
            assert response.status_code == 404
        assert "Theirs</a>" not in (await client.get("/q/?q=Theirs")).text
    assert server.entry(theirs) is not None


async def test_user_cannot_delete_a_message_others_received_too(server: WebqServer) -> None:
    client = await _client(server, "alice")
    async with contextlib.aclosing(client):
        token = await _token(client)
        assert (
            await client.post(f"/q/{server.messages['both']}/delete", data={"csrf_token": token})
        ).status_code == 403
        asked = await client.post(f"/q/{server.messages['mine']}/delete", data={"csrf_token": token})
        assert 'id="confirm-delete"' in asked.text  # the first POST only asks (test_delete_asks_first)
        confirmed = {"csrf_token": token, "confirm": "yes"}
        assert (await client.post(f"/q/{server.messages['mine']}/delete", data=confirmed)).status_code == 303
    assert server.entry(server.messages["both"]) is not None
    assert server.entry(server.messages["mine"]) is None


async def test_whitelist_recheck_and_release(server: WebqServer) -> None:
    client = await _client(server, "alice")
    mine = server.messages["mine"]
    async with contextlib.aclosing(client):
        token = await _token(client)
        await client.post(f"/q/{mine}/list", data={"csrf_token": token, "list": "white"})
        entries = server.settings.database.call(functools.partial(userpolicy.list_entries, owner="alice@example.org"))
        assert [(e.list, e.field, e.value) for e in entries] == [("white", "sender", "s@x.test")]
        response = await client.post(f"/q/{mine}/recheck", data={"csrf_token": token}, follow_redirects=True)
        assert "Recheck: EICAR-Test (level 1.00" in response.text
        asked = await client.post(f"/q/{mine}/release", data={"csrf_token": token})  # the confirmation page
        assert 'id="confirm-release"' in asked.text
        assert server.recorder.messages == []
        confirmed = {"csrf_token": token, "confirm": "yes"}
        response = await client.post(f"/q/{mine}/release", data=confirmed, follow_redirects=True)
        assert "Released to Alice@Example.org" in response.text
    assert [m.recipients for m in server.recorder.messages] == [["Alice@Example.org"]]
    entry = server.settings.database.call(get_entry, mine)
    assert entry is not None
    assert entry.state == "released"


async def test_a_release_claimed_elsewhere_is_not_sent_twice(server: WebqServer) -> None:
    """Another gateway or click holds the release claim: webq says so and sends nothing."""
    mine = server.messages["mine"]
    server.settings.database.call(claim_release, mine, "cli:root", time.time(), 600.0)
    client = await _client(server, "alice")
    async with contextlib.aclosing(client):
        token = await _token(client)
        confirmed = {"csrf_token": token, "confirm": "yes"}
        response = await client.post(f"/q/{mine}/release", data=confirmed, follow_redirects=True)
    assert "being released by cli:root right now" in response.text
    assert server.recorder.messages == []
    entry = server.settings.database.call(get_entry, mine)
    assert entry is not None
    assert entry.state == "held"


def test_html_is_shown_as_text_only() -> None:
    raw = message_bytes(
        "a@x.test", "b@x.test", "s", "", html="<style>p{}</style><p>Hi &amp; <script>evil()</script>bye<img src=x>"
    )
    shown = mailview.view(raw)
    assert shown.text == "Hi & bye"
    assert shown.text_source.startswith("text/html")


def test_broken_mime_does_not_fail() -> None:
    raw = b"Subject: =?bogus?Q?x?=\r\nContent-Type: multipart/mixed; boundary=\r\n\r\n--\r\nx\r\n"
    shown = mailview.view(raw)
    assert isinstance(shown.text, str)
    assert mailview.part_bytes(raw, 99) is None


async def test_a_domain_admin_sees_exactly_its_domain(server: WebqServer) -> None:
    """``@example.org`` owns every recipient in that domain, not in others or in subdomains."""
    m, database = server.messages, server.settings.database
    await asyncio.to_thread(
        server.seed,
        "sub",
        "s@x.test",
        ["carl@sub.example.org"],
        message_bytes("s@x.test", "carl@sub.example.org", "Sub", "x"),
    )
    await asyncio.to_thread(
        server.seed,
        "lookalike",
        "s@x.test",
        ["eve@badexample.org"],
        message_bytes("s@x.test", "eve@badexample.org", "Lookalike", "x"),
    )
    domain_admin = User(4, "postmaster", False, ("@example.org",))
    entries, _ = database.call(find_page, domain_admin, ListQuery(rows=100))
    seen = {e.id for e in entries}
    assert {m["mine"], m["theirs"], m["both"]} <= seen  # alice@ and bob@example.org
    assert m["sub"] not in seen
    assert m["lookalike"] not in seen
    assert database.call(get_visible, domain_admin, m["sub"]) is None
    with pytest.raises(ConfigError, match="bad address"):
        users.normalize_address("@")
    assert users.normalize_address("@Example.ORG") == "@example.org"


async def test_delete_asks_first(server: WebqServer) -> None:
    """The Delete button's POST answers a confirmation page; only its CSRF-checked POST deletes."""
    mine = server.messages["mine"]
    client = await _client(server, "alice")
    async with contextlib.aclosing(client):
        token = await _token(client)
        page = await client.get(f"/q/{mine}")
        assert "data-confirm" not in page.text  # no JavaScript dialog: a page of its own
        asked = await client.post(f"/q/{mine}/delete", data={"csrf_token": token})
        assert asked.status_code == 200
        assert 'id="confirm-delete"' in asked.text
        assert 'name="confirm" value="yes"' in asked.text
        assert server.entry(mine) is not None
        forged = await client.post(f"/q/{mine}/delete", data={"csrf_token": "x" * 43, "confirm": "yes"})
        assert forged.status_code == 403
        assert server.entry(mine) is not None
        done = await client.post(f"/q/{mine}/delete", data={"csrf_token": token, "confirm": "yes"})
        assert done.status_code == 303
    assert server.entry(mine) is None


async def test_no_release_button_after_the_release(server: WebqServer) -> None:
    mine = server.messages["mine"]
    client = await _client(server, "alice")
    async with contextlib.aclosing(client):
        token = await _token(client)
        assert 'id="release"' in (await client.get(f"/q/{mine}")).text
        await client.post(f"/q/{mine}/release", data={"csrf_token": token, "confirm": "yes"})
        page = await client.get(f"/q/{mine}")
        assert 'id="release"' not in page.text
        note = re.search(r'id="released-note">([^<]*)<', page.text)
        assert note is not None
        assert re.fullmatch(r"Released \d{4}-\d\d-\d\d \d\d:\d\d UTC by web:alice\.", note.group(1))


async def test_verdicts_and_spam_rules_read_as_people_read_them(server: WebqServer) -> None:
    detail = "score=12.3 required=5 tests=BAYES_99,URIBL_BLACK"
    spam = Result(99.9, "Spam", "spamassassind*const", detail)
    raw = message_bytes("s@x.test", "alice@example.org", "Cheap pills", "buy")
    spam_id = await asyncio.to_thread(
        server.seed, "spam", "s@x.test", ["alice@example.org"], raw, category="spam", result=spam
    )
    virus = Result(1.0, "Eicar-Test-Signature", "clamd", "")
    virus_id = await asyncio.to_thread(
        server.seed, "virus", "s@x.test", ["alice@example.org"], raw, category="virus", result=virus
    )
    client = await _client(server, "alice")
    async with contextlib.aclosing(client):
        page = (await client.get(f"/q/{spam_id}")).text
        assert '<span id="verdict">Spam, score 12.3 of 5.0</span>' in page
        rules = re.search(r'<table class="rules" id="spam-rules">(.*?)</table>', page, re.S)
        assert rules is not None
        assert re.findall(r"<tr><td>([A-Z_0-9]+)</td>", rules.group(1)) == ["BAYES_99", "URIBL_BLACK"]
        listing = (await client.get("/q/?q=Cheap")).text
        assert '<td class="verdict">Spam</td>' in listing
        assert "Spam [" not in listing
        assert "(99.90)" not in listing
        assert "Virus: Eicar-Test-Signature" in (await client.get(f"/q/{virus_id}")).text
        assert 'id="spam-rules"' not in (await client.get(f"/q/{virus_id}")).text


# --------------------------------------------------------------------------- bulk actions


def _bulk_rows(page: str) -> dict[str, str]:
    """id -> the outcome cell of the bulk page."""
    rows = re.findall(r'<tr data-id="([^"]+)" class="([^"]*)">.*?<td class="outcome[^"]*">([^<]*)</td>', page, re.S)
    return {entry_id: f"{kind}: {text}" for entry_id, kind, text in rows}


async def test_bulk_release_asks_first_then_releases_the_allowed_and_reports_each_refusal(server: WebqServer) -> None:
    m = server.messages
    client = await _client(server, "alice")
    async with contextlib.aclosing(client):
        token = await _token(client)
        ids = [m["mine"], m["bulk0"], m["theirs"]]  # spam (allowed), a virus (admins only), bob's (not visible)
        asked = await client.post("/q/bulk", data={"csrf_token": token, "action": "release", "id": ids})
        assert asked.status_code == 200
        rows = _bulk_rows(asked.text)
        assert rows[m["mine"]] == "allowed: Release to Alice@Example.org."  # as the envelope spelled it
        assert rows[m["bulk0"]].startswith("refused: Refused: only an administrator can release")
        assert rows[m["theirs"]] == "refused: No such message."
        assert "Theirs" not in asked.text  # nothing of bob's message is shown
        assert len(server.recorder.messages) == 0  # the first POST only asks
        assert 'id="confirm-bulk"' in asked.text
        sent = re.findall(r'<input type="hidden" name="id" value="([^"]+)">', asked.text)
        assert sent == [m["mine"]]  # the confirmation carries the allowed ones only
        forged = await client.post(
            "/q/bulk", data={"csrf_token": "x" * 43, "action": "release", "confirm": "yes", "id": ids}
        )
        assert forged.status_code == 403
        done = await client.post(
            "/q/bulk", data={"csrf_token": token, "action": "release", "confirm": "yes", "id": ids}
        )
        rows = _bulk_rows(done.text)
        assert rows[m["mine"]] == "allowed done: Released to Alice@Example.org."
        assert rows[m["bulk0"]].startswith("refused: Refused: only an administrator")
        assert len(server.recorder.messages) == 1
        entry = await server.settings.require_database().run(get_entry, m["bulk0"])
        assert entry is not None
        assert entry.state == "held"


async def test_bulk_delete_and_its_limits(server: WebqServer) -> None:
    m = server.messages
    client = await _client(server, "alice")
    async with contextlib.aclosing(client):
        token = await _token(client)
        ids = [m["bulk1"], m["bulk2"], m["both"]]  # "both" has bob as recipient too: not alice's to delete
        asked = await client.post("/q/bulk", data={"csrf_token": token, "action": "delete", "id": ids})
        assert _bulk_rows(asked.text)[m["both"]].startswith("refused: Refused: it has other recipients")
        assert await server.settings.require_database().run(get_entry, m["bulk1"]) is not None  # asked only
        await client.post("/q/bulk", data={"csrf_token": token, "action": "delete", "confirm": "yes", "id": ids})
        database = server.settings.require_database()
        assert await database.run(get_entry, m["bulk1"]) is None
        assert await database.run(get_entry, m["bulk2"]) is None
        assert await database.run(get_entry, m["both"]) is not None
        too_many = [f"20990101T000000-{n:08x}" for n in range(201)]
        over = await client.post("/q/bulk", data={"csrf_token": token, "action": "delete", "id": too_many})
        assert over.status_code == 400
        assert "at most 200" in over.text
        bad = await client.post("/q/bulk", data={"csrf_token": token, "action": "explode", "id": [m["bulk3"]]})
        assert bad.status_code == 400
        none = await client.post("/q/bulk", data={"csrf_token": token, "action": "delete"})
        assert none.status_code == 303


async def test_bulk_whitelist_only_where_lists_are_in_use(server: WebqServer) -> None:
    m = server.messages
    for lists, expected in ((frozenset(), "not in use"), (frozenset({"white", "black"}), "Whitelisted for")):
        config = WebConfig(lists_in_use=lists)
        app = create_app(server.settings, secret="k" * 40, config=config)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=server.url)
        async with contextlib.aclosing(client):
            await _log_in(client)
            token = await _token(client)
            data = {"csrf_token": token, "action": "whitelist", "confirm": "yes", "id": [m["bulk4"]]}
            done = await client.post("/q/bulk", data=data)
            assert expected in _bulk_rows(done.text)[m["bulk4"]]
            entries = await server.settings.require_database().run(
                functools.partial(userpolicy.list_entries, owner="alice@example.org")
            )
            assert [(e.list, e.value) for e in entries] == ([("white", "s@x.test")] if lists else [])


async def test_whitelist_sender_says_lists_are_not_in_use(server: WebqServer) -> None:
    app = create_app(server.settings, secret="k" * 40, config=WebConfig(lists_in_use=frozenset()))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=server.url)
    async with contextlib.aclosing(client):
        await _log_in(client)
        entry_id = server.messages["bulk5"]
        token = await _token(client)
        page = await client.post(
            f"/q/{entry_id}/list", data={"csrf_token": token, "list": "white"}, follow_redirects=True
        )
        assert "Not whitelisted: White and black lists are not in use" in page.text
        assert 'id="lists-not-in-use"' in page.text  # the message view says so beside the buttons
        assert "s@x.test whitelisted for" not in page.text
        entries = await server.settings.require_database().run(userpolicy.list_entries)
        assert entries == []


async def test_list_page_has_a_checkbox_per_row_and_select_all(server: WebqServer) -> None:
    client = await _client(server, "alice")
    async with contextlib.aclosing(client):
        page = (await client.get("/q/")).text
        rows = re.findall(r'<tr class="[^"]*" data-id="([^"]+)">', page)
        boxes = re.findall(r'<input type="checkbox" name="id" value="([^"]+)"', page)
        assert rows
        assert boxes == rows
        assert 'id="select-all"' in page
        assert '<form method="post" action="/q/bulk" id="bulk">' in page


async def _log_in(client: httpx.AsyncClient) -> None:
    found = re.search(r'name="csrf_token" value="([^"]+)"', (await client.get("/login")).text)
    assert found
    answer = await client.post("/login", data={"login": "alice", "password": "pw", "csrf_token": found.group(1)})
    assert answer.status_code == 303


async def test_message_view_lists_each_rule_with_its_points_and_description(server: WebqServer) -> None:
    detail = "score=12.3 required=5 points=2.5,9.8 tests=BAYES_99,URIBL_BLACK"
    spam = Result(2.46, "Spam", "spamassassind", detail)
    raw = message_bytes("s@x.test", "alice@example.org", "Pills", "buy").replace(
        b"Subject:", b"X-Spam-Report: \r\n\t*  2.5 BAYES_99 BODY: Bayes spam probability is 99 to 100%\r\nSubject:", 1
    )
    spam_id = await asyncio.to_thread(
        server.seed, "rules", "s@x.test", ["alice@example.org"], raw, category="spam", result=spam
    )
    client = await _client(server, "alice")
    async with contextlib.aclosing(client):
        page = (await client.get(f"/q/{spam_id}")).text
        rules = re.search(r'<table class="rules" id="spam-rules">(.*?)</table>', page, re.S)
        assert rules is not None
        rows = re.findall(r'<tr><td>([A-Z_0-9]+)</td><td class="num">([^<]*)</td><td>([^<]*)</td></tr>', rules.group(1))
        assert rows == [("BAYES_99", "2.5", "BODY: Bayes spam probability is 99 to 100%"), ("URIBL_BLACK", "9.8", "")]


# --------------------------------------------------------------------------- the code's texts, translated


async def test_notices_bulk_notes_and_errors_speak_the_pages_language(server: WebqServer) -> None:
    """German (the browser's Accept-Language): the flashes, the bulk notes and the error details of the code."""
    m = server.messages
    client = await _client(server, "alice")
    client.headers["Accept-Language"] = "de"
    async with contextlib.aclosing(client):
        token = await _token(client)
        recheck = await client.post(f"/q/{m['mine']}/recheck", data={"csrf_token": token}, follow_redirects=True)
        assert "Erneute Prüfung: EICAR-Test (Stufe 1.00, regexp" in recheck.text
        ids = [m["mine"], m["bulk0"], m["theirs"]]
        asked = await client.post("/q/bulk", data={"csrf_token": token, "action": "release", "id": ids})
        rows = _bulk_rows(asked.text)
        assert rows[m["mine"]] == "allowed: Freigeben an Alice@Example.org."
        assert rows[m["bulk0"]] == (
            "refused: Abgelehnt: nur ein Administrator kann eine Nachricht freigeben, die als virus in Quarantäne ist."
        )
        assert rows[m["theirs"]] == "refused: Keine solche Nachricht."
        wide = await client.post("/q/bulk", data={"csrf_token": token, "action": "delete", "id": [m["both"]]})
        assert _bulk_rows(wide.text)[m["both"]] == (
            "refused: Abgelehnt: sie hat auch andere Empfänger; fragen Sie einen Administrator."
        )
        confirmed = {"csrf_token": token, "confirm": "yes"}
        released = await client.post(f"/q/{m['mine']}/release", data=confirmed, follow_redirects=True)
        assert "Freigegeben an Alice@Example.org." in released.text
        assert "Released to" not in released.text
        again = await client.post(f"/q/{m['mine']}/release", data=confirmed, follow_redirects=True)
        assert "Diese Nachricht wurde bereits freigegeben." in again.text
        virus = await client.post(f"/q/{m['bulk1']}/release", data=confirmed)
        assert virus.status_code == 403
        assert "Nur ein Administrator kann eine Nachricht freigeben, die als virus in Quarantäne ist." in virus.text
        missing = await client.get("/q/no-such-id")
        assert missing.status_code == 404
        assert "Keine solche Nachricht." in missing.text
        empty = await client.post("/q/bulk", data={"csrf_token": token, "action": "delete"}, follow_redirects=True)
        assert "Wählen Sie zuerst mindestens eine Nachricht aus." in empty.text
        deleted = await client.post(f"/q/{m['bulk2']}/delete", data=confirmed, follow_redirects=True)
        assert f"Nachricht {m['bulk2']} gelöscht." in deleted.text
