"""The web quarantine in a real browser (Playwright + Debian's chromium) against a real `mailsift serve`.

Log in as a user and as an admin; release to the next hop (after a confirmation page); a user
has no release button for a virus, an admin releases it after confirming; a user cannot see
or act on another user's message by any URL; a state change without the
CSRF token fails; hostile mail shows as text only; screenshots of the main
pages go to /tmp/mailsift-screens/.
"""

from __future__ import annotations

import re
from typing import Any

from tests.helpers.browser import log_in, screenshot
from tests.helpers.webq import WebqServer


def _csrf(page: Any) -> str:
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert token
    return str(token)


def test_login_page_same_answer_for_unknown_user_and_wrong_password(webq_server: WebqServer, page: Any) -> None:
    page.goto(f"{webq_server.url}/q/")
    assert page.url.startswith(f"{webq_server.url}/login")  # not logged in: sent to the login page
    screenshot(page, "login")
    log_in(page, webq_server.url, "alice", "wrong password")
    wrong_password = page.locator("p.error").inner_text()
    log_in(page, webq_server.url, "nobody-here", "wrong password")
    unknown_user = page.locator("p.error").inner_text()
    assert wrong_password == unknown_user == "Wrong login or password."
    cookie = next(c for c in page.context.cookies() if c["name"] == "mailsift_session")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Lax"


def test_user_sees_own_messages_only(webq_server: WebqServer, page: Any) -> None:
    log_in(page, webq_server.url, "alice", webq_server.users["alice"])
    assert page.url == f"{webq_server.url}/q/"
    ids = set(page.locator("tr[data-id]").evaluate_all("rows => rows.map(r => r.dataset.id)"))
    m = webq_server.messages
    assert {m["alice_virus"], m["alice_plain"], m["shared"]} <= ids
    assert m["bob_secret"] not in ids
    assert "bob@example.org" not in page.content()  # the shared message shows alice's own address only
    screenshot(page, "list")
    page.fill("input[name=q]", "Lunch")
    page.click("form.filters button[type=submit]")
    page.wait_for_load_state()
    assert page.locator("tr[data-id]").count() == 1
    assert page.locator("#total").inner_text() == "1"


def test_message_view_shows_hostile_mail_as_text(webq_server: WebqServer, page: Any) -> None:
    remote: list[str] = []
    page.on("request", lambda request: remote.append(request.url) if "127.0.0.1" not in request.url else None)
    log_in(page, webq_server.url, "alice", webq_server.users["alice"])
    page.goto(f"{webq_server.url}/q/{webq_server.messages['alice_virus']}")
    body = page.locator("#body").inner_text()
    assert "Dear customer, pay the invoice." in body
    assert "window.pwned" not in body
    assert "background:red" not in body
    assert page.evaluate("typeof window.pwned") == "undefined"  # ...and never run
    assert page.locator("main img").count() == 0
    assert page.locator("main b").count() == 0
    assert page.title() != "pwned"
    assert remote == []  # no remote load (the tracking pixel)
    assert "Your invoice <b>now</b>" in page.locator("h1").inner_text()  # markup in a header stays text
    assert page.locator("table.attachments td", has_text="invoice.exe").count() == 1
    screenshot(page, "message")
    response = page.request.get(webq_server.url + str(page.locator("table.attachments a").first.get_attribute("href")))
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"].startswith("attachment;")
    assert response.headers["x-content-type-options"] == "nosniff"


def test_release_reaches_the_next_hop(webq_server: WebqServer, page: Any) -> None:
    entry_id = webq_server.messages["alice_plain"]
    before = len(webq_server.recorder.messages)
    log_in(page, webq_server.url, "alice", webq_server.users["alice"])
    page.goto(f"{webq_server.url}/q/{entry_id}")
    page.click("#release")
    page.wait_for_load_state()
    assert len(webq_server.recorder.messages) == before  # the confirmation page first
    page.click("#confirm-release")
    page.wait_for_load_state()
    assert "Released to alice@example.org" in page.locator("p.notice").inner_text()
    assert page.locator("#state").inner_text().startswith("released")
    got = webq_server.recorder.messages[before:]
    assert len(got) == 1
    assert got[0].recipients == ["alice@example.org"]
    assert got[0].sender == "friend@good.example"
    assert b"Subject: Lunch on Friday" in got[0].data
    assert b"X-Mailsift-" not in got[0].data
    entry = webq_server.entry(entry_id)
    assert entry is not None
    assert entry.released_by == "web:alice"


def test_shared_message_released_to_own_address_only(webq_server: WebqServer, page: Any) -> None:
    before = len(webq_server.recorder.messages)
    log_in(page, webq_server.url, "bob", webq_server.users["bob"])
    page.goto(f"{webq_server.url}/q/{webq_server.messages['shared']}")
    assert page.locator("#delete").count() == 0  # alice is a recipient too: bob cannot delete it for her
    page.click("#release")
    page.wait_for_load_state()
    page.click("#confirm-release")
    page.wait_for_load_state()
    got = webq_server.recorder.messages[before:]
    assert [m.recipients for m in got] == [["bob@example.org"]]


def test_user_cannot_reach_another_users_message_by_any_url(webq_server: WebqServer, page: Any) -> None:
    bob_id = webq_server.messages["bob_secret"]
    before = len(webq_server.recorder.messages)
    log_in(page, webq_server.url, "alice", webq_server.users["alice"])
    token = _csrf(page)  # a valid token of alice's own session
    base = webq_server.url
    for path in (f"/q/{bob_id}", f"/q/{bob_id}/raw", f"/q/{bob_id}/part/0", f"/q/{bob_id}/part/1"):
        response = page.request.get(base + path)
        assert response.status == 404, path
        assert b"salary" not in response.body()
        assert b"Only for Bob" not in response.body()
    for query in (f"?q={bob_id}", "?q=salary", "?sender=boss@corp.example", "?category=virus&q=Bob"):
        page.goto(f"{base}/q/{query}")
        assert page.locator("#total").inner_text() == "0", query
    for action in ("release", "delete", "recheck", "list"):
        response = page.request.post(f"{base}/q/{bob_id}/{action}", form={"csrf_token": token, "list": "white"})
        assert response.status == 404, action
    assert len(webq_server.recorder.messages) == before  # nothing released
    entry = webq_server.entry(bob_id)
    assert entry is not None
    assert entry.state == "held"


def test_a_virus_is_released_by_an_admin_only_after_confirming(webq_server: WebqServer, page: Any) -> None:
    before = len(webq_server.recorder.messages)
    log_in(page, webq_server.url, "alice", webq_server.users["alice"])
    page.goto(f"{webq_server.url}/q/{webq_server.messages['alice_virus']}")
    assert page.locator("#release").count() == 0
    assert "Only an administrator" in page.locator("#release-admin-only").inner_text()
    page.click("header form.logout button")
    page.wait_for_load_state()
    entry_id = webq_server.messages["bob_virus"]
    log_in(page, webq_server.url, "admin", webq_server.users["admin"])
    page.goto(f"{webq_server.url}/q/{entry_id}")
    page.click("#release")
    page.wait_for_load_state()
    assert "bob@example.org" in page.locator("#release-targets").inner_text()
    screenshot(page, "release_confirm")
    assert len(webq_server.recorder.messages) == before
    page.click("#confirm-release")
    page.wait_for_load_state()
    assert page.locator("#state").inner_text().startswith("released")
    assert [m.recipients for m in webq_server.recorder.messages[before:]] == [["bob@example.org"]]


def test_state_change_without_csrf_token_fails(webq_server: WebqServer, page: Any) -> None:
    entry_id = webq_server.messages["alice_offer"]
    before = len(webq_server.recorder.messages)
    log_in(page, webq_server.url, "alice", webq_server.users["alice"])
    page.goto(f"{webq_server.url}/q/{entry_id}")
    for form in ({}, {"csrf_token": "forged-token-forged-token-forged-token"}):
        for action in ("release", "delete"):
            response = page.request.post(f"{webq_server.url}/q/{entry_id}/{action}", form=form)
            assert response.status == 403, (action, form)
    # the same with a real form whose token was removed, submitted by the browser itself
    page.evaluate("document.querySelectorAll('input[name=csrf_token]').forEach(i => i.remove())")
    page.click("#release")
    page.wait_for_load_state()
    assert "expired or came from another site" in page.content()
    assert len(webq_server.recorder.messages) == before
    entry = webq_server.entry(entry_id)
    assert entry is not None
    assert entry.state == "held"


def test_admin_sees_every_message_and_preferences(webq_server: WebqServer, page: Any) -> None:
    log_in(page, webq_server.url, "admin", webq_server.users["admin"])
    ids = set(page.locator("tr[data-id]").evaluate_all("rows => rows.map(r => r.dataset.id)"))
    assert set(webq_server.messages.values()) - ids == set()
    assert "(all users)" in page.locator("h1").inner_text()
    page.goto(f"{webq_server.url}/q/{webq_server.messages['bob_secret']}")
    assert "Only for Bob." in page.locator("#body").inner_text()
    page.goto(f"{webq_server.url}/prefs")
    page.select_option("select[name=rows]", "10")
    page.select_option("select[name=language]", "sk")
    page.click("#save")
    page.wait_for_load_state()
    assert page.locator("p.notice").inner_text() == "Nastavenia sú uložené."  # "Preferences saved.", in Slovak now
    assert page.locator("html").get_attribute("lang") == "sk"
    assert page.locator("select[name=rows] option[selected]").inner_text() == "10"
    screenshot(page, "preferences")
    page.select_option("select[name=language]", "")  # back to the browser's language (English) for later tests
    page.click("#save")
    page.wait_for_load_state()
    assert page.locator("p.notice").inner_text() == "Preferences saved."
    assert page.locator("html").get_attribute("lang") == "en"
    page.click("header form.logout button")
    page.wait_for_load_state()
    page.goto(f"{webq_server.url}/q/")
    assert re.search(r"/login\?next=", page.url)
