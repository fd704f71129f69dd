"""Bulk actions, the own password and the own white/black lists in a real browser (Playwright + Debian's
chromium) against the real `mailsift serve` of tests/browser/conftest.py (its SCANNERS consult lists).

Each test works with its own user and messages (carol, dave), so the other browser tests' counts hold.
"""

from __future__ import annotations

import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from mailsift.storage import policies as userpolicy
from mailsift.web import users
from tests.helpers.browser import log_in, screenshot
from tests.helpers.messages import message_bytes
from tests.helpers.webq import WebqServer


def _user(server: WebqServer, login: str, password: str) -> None:
    database = server.settings.database
    if database.call(lambda connection: users.find_user(connection, login)) is not None:
        return
    add = functools.partial(
        users.add_user,
        login=login,
        password_hash=users.hash_password(password),
        is_admin=False,
        addresses=[f"{login}@example.org"],
        now=time.time(),
    )
    database.call(add)


def _seed(server: WebqServer, name: str, rcpt: str, sender: str, subject: str, category: str) -> str:
    raw = message_bytes(sender, rcpt, subject, "Hello.")
    with ThreadPoolExecutor(1) as pool:  # seed runs asyncio; Playwright's loop holds this thread
        return pool.submit(functools.partial(server.seed, name, sender, [rcpt], raw, category=category)).result()


def _select(page: Any, *ids: str) -> None:
    for entry_id in ids:
        page.check(f"tr[data-id='{entry_id}'] input[name=id]")


@pytest.fixture
def carol(webq_server: WebqServer) -> dict[str, str]:
    _user(webq_server, "carol", "carol-Secret-9")
    rcpt = "carol@example.org"
    return {
        "spam1": _seed(webq_server, "carol_spam1", rcpt, "a@ads.example", "Carol spam one", "spam"),
        "spam2": _seed(webq_server, "carol_spam2", rcpt, "b@ads.example", "Carol spam two", "spam"),
        "virus": _seed(webq_server, "carol_virus", rcpt, "v@bad.example", "Carol virus", "virus"),
    }


def test_bulk_release_asks_and_refuses_the_virus_to_a_user(webq_server: WebqServer, page: Any, carol: Any) -> None:
    before = len(webq_server.recorder.messages)
    log_in(page, webq_server.url, "carol", "carol-Secret-9")
    page.goto(f"{webq_server.url}/q/")
    _select(page, carol["spam1"], carol["virus"])
    page.click("#bulk-release")
    page.wait_for_load_state()
    screenshot(page, "bulk_release_confirm")
    assert "Release 1 message(s)?" in page.locator("#bulk-title").inner_text()
    refused = page.locator(f"tr[data-id='{carol['virus']}'] td.outcome").inner_text()
    assert refused.startswith("Refused: only an administrator can release")
    assert len(webq_server.recorder.messages) == before  # nothing sent before the confirmation
    page.click("#confirm-bulk")
    page.wait_for_load_state()
    outcome = page.locator(f"tr[data-id='{carol['spam1']}'] td.outcome").inner_text()
    assert outcome == "Released to carol@example.org."
    assert len(webq_server.recorder.messages) == before + 1
    assert webq_server.recorder.messages[-1].recipients == ["carol@example.org"]
    virus = webq_server.entry(carol["virus"])
    assert virus is not None
    assert virus.state == "held"


def test_select_all_then_cancel_changes_nothing(webq_server: WebqServer, page: Any, carol: Any) -> None:
    log_in(page, webq_server.url, "carol", "carol-Secret-9")
    page.goto(f"{webq_server.url}/q/")
    page.check("#select-all")
    boxes = page.locator("form#bulk input[name=id]")
    assert boxes.count() >= 3
    assert all(boxes.nth(n).is_checked() for n in range(boxes.count()))
    page.click("#bulk-delete")
    page.wait_for_load_state()
    page.click("#cancel-bulk")
    page.wait_for_load_state()
    assert webq_server.entry(carol["spam2"]) is not None


def test_bulk_delete_and_whitelist(webq_server: WebqServer, page: Any, carol: Any) -> None:
    log_in(page, webq_server.url, "carol", "carol-Secret-9")
    page.goto(f"{webq_server.url}/q/")
    _select(page, carol["spam2"])
    page.click("#bulk-whitelist")
    page.wait_for_load_state()
    page.click("#confirm-bulk")
    page.wait_for_load_state()
    assert "Whitelisted for carol@example.org." in page.locator("#bulk-items").inner_text()
    entries = webq_server.settings.database.call(functools.partial(userpolicy.list_entries, owner="carol@example.org"))
    assert ("white", "b@ads.example") in [(e.list, e.value) for e in entries]
    page.goto(f"{webq_server.url}/q/")
    _select(page, carol["spam2"])
    page.click("#bulk-delete")
    page.wait_for_load_state()
    screenshot(page, "bulk_delete_confirm")
    assert webq_server.entry(carol["spam2"]) is not None  # asked only
    page.click("#confirm-bulk")
    page.wait_for_load_state()
    assert page.locator(f"tr[data-id='{carol['spam2']}'] td.outcome").inner_text() == "Deleted."
    assert webq_server.entry(carol["spam2"]) is None


def test_own_lists_add_and_remove(webq_server: WebqServer, page: Any) -> None:
    _user(webq_server, "dave", "dave-Secret-77")
    log_in(page, webq_server.url, "dave", "dave-Secret-77")
    page.goto(f"{webq_server.url}/q/")
    page.click("#lists-link")
    page.wait_for_load_state()
    page.fill("#add-listed input[name=value]", "Partner@Friends.Example")
    page.select_option("#add-listed select[name=list]", "white")
    page.click("#add-entry")
    page.wait_for_load_state()
    assert "partner@friends.example added to the white list of dave@example.org." in page.content()
    page.fill("#add-listed input[name=value]", "junk.example")
    page.select_option("#add-listed select[name=list]", "black")
    page.click("#add-entry")
    page.wait_for_load_state()
    screenshot(page, "own_lists")
    rows = page.locator("#listed tr[data-value]")
    assert rows.count() == 2
    page.locator("tr[data-value='partner@friends.example'] button.remove").click()
    page.wait_for_load_state()
    assert page.locator("#listed tr[data-value]").count() == 1
    entries = webq_server.settings.database.call(functools.partial(userpolicy.list_entries, owner="dave@example.org"))
    assert [(e.list, e.value) for e in entries] == [("black", "junk.example")]


def test_own_password_change(webq_server: WebqServer, browser: Any) -> None:
    _user(webq_server, "erin", "erin-Secret-55")
    context = browser.new_context()
    other = browser.new_context()
    try:
        page, elsewhere = context.new_page(), other.new_page()
        log_in(elsewhere, webq_server.url, "erin", "erin-Secret-55")
        log_in(page, webq_server.url, "erin", "erin-Secret-55")
        page.goto(f"{webq_server.url}/prefs")
        page.click("#password-link")
        page.wait_for_load_state()
        page.fill("input[name=current]", "erin-Secret-55")
        page.fill("input[name=new]", "erin-New-Secret-66")
        page.fill("input[name=again]", "erin-New-Secret-66")
        page.click("#change-password")
        page.wait_for_load_state()
        assert "Password changed; your other sessions ended." in page.content()
        page.goto(f"{webq_server.url}/q/")
        assert page.url == f"{webq_server.url}/q/"  # this browser stays logged in
        elsewhere.goto(f"{webq_server.url}/q/")
        assert "/login" in elsewhere.url  # the other session ended
        log_in(elsewhere, webq_server.url, "erin", "erin-Secret-55")
        assert "/login" in elsewhere.url  # the old password is refused
        log_in(elsewhere, webq_server.url, "erin", "erin-New-Secret-66")
        assert elsewhere.url == f"{webq_server.url}/q/"
    finally:
        context.close()
        other.close()
