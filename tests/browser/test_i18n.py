"""The web pages in each language of the catalogs (Playwright + Debian's chromium, a real `mailsift serve`).

The browser's language (Playwright's ``locale`` sends ``Accept-Language``) picks the catalog
language; a user's preference (Preferences) overrides it; screenshots go to
/tmp/mailsift-screens/i18n-*.png.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mailsift.reporting.notifications import LANGUAGES, translations
from mailsift.web import users
from tests.helpers.browser import log_in, screenshot
from tests.helpers.webq import WebqServer

BROWSER_LOCALES = {
    "en": "en-US", "sk": "sk-SK", "cs": "cs-CZ", "de": "de-DE", "es": "es-ES",
    "it": "it-IT", "fr": "fr-FR", "pt": "pt-BR", "nl": "nl-NL", "pl": "pl-PL",
}  # fmt: skip
"""A browser locale per language (any other: its own code as a tag, ``zh_CN`` -> ``zh-CN``)."""
PASSWORD = "carol-Secret-4-long"


def _(language: str, message: str) -> str:
    return translations(language).gettext(message)


@pytest.fixture(scope="module")
def carol(webq_server: WebqServer) -> str:
    """A user of this module only (its preference changes), owning alice's address to see her quarantine."""
    add = functools.partial(
        users.add_user,
        login="carol-i18n",
        password_hash=users.hash_password(PASSWORD),
        is_admin=False,
        addresses=["alice@example.org"],
        now=time.time(),
    )
    webq_server.settings.database.call(add)
    return "carol-i18n"


@pytest.fixture
def localized(browser: Any) -> Iterator[Any]:
    """A page factory: a fresh context whose browser speaks ``locale``."""
    contexts: list[Any] = []

    def new_page(locale: str) -> Any:
        context = browser.new_context(viewport={"width": 1280, "height": 860}, locale=locale)
        contexts.append(context)
        return context.new_page()

    yield new_page
    for context in contexts:
        context.close()


def test_the_catalog_languages_differ_from_english() -> None:
    for language in LANGUAGES:
        if language != "en":
            assert _(language, "Log in") != "Log in"
            assert _(language, "Preferences") != "Preferences"


@pytest.mark.parametrize("language", LANGUAGES)
def test_pages_render_in_the_browsers_language(
    webq_server: WebqServer, carol: str, localized: Any, language: str
) -> None:
    page = localized(BROWSER_LOCALES.get(language, language.replace("_", "-")))
    page.goto(f"{webq_server.url}/login")
    assert page.locator("html").get_attribute("lang") == language.replace("_", "-")  # BCP 47: zh-CN
    assert page.locator("h1").inner_text() == _(language, "Web quarantine")
    assert page.locator("button[type=submit]").inner_text() == _(language, "Log in")
    screenshot(page, f"i18n-login-{language}")
    log_in(page, webq_server.url, carol, "wrong password")
    assert page.locator("p.error").inner_text() == _(language, "Wrong login or password.")
    log_in(page, webq_server.url, carol, PASSWORD)
    page.goto(f"{webq_server.url}/q/")
    nav = page.locator("header nav").inner_text()
    assert _(language, "Quarantine") in nav
    assert _(language, "Preferences") in nav
    assert page.locator("form.logout button").inner_text() == _(language, "Log out")
    assert "Lunch on Friday" in page.content()  # the quarantine list, with alice's messages
    screenshot(page, f"i18n-quarantine-{language}")
    page.goto(f"{webq_server.url}/prefs")
    assert page.locator("h1").inner_text() == _(language, "Preferences")
    page.goto(f"{webq_server.url}/password")
    assert page.locator("h1").inner_text() == _(language, "Change password")
    if language != "en":
        assert "Log out" not in page.content()


def test_a_users_preference_overrides_the_browser(webq_server: WebqServer, carol: str, localized: Any) -> None:
    page = localized("de-DE")
    log_in(page, webq_server.url, carol, PASSWORD)
    page.goto(f"{webq_server.url}/prefs")
    assert page.locator("h1").inner_text() == "Einstellungen"
    try:
        page.select_option("select[name=language]", "sk")
        page.click("#save")
        page.wait_for_load_state()
        assert page.locator("html").get_attribute("lang") == "sk"
        assert page.locator("h1").inner_text() == "Nastavenia"
        assert page.locator("p.notice").inner_text() == "Nastavenia sú uložené."
        page.goto(f"{webq_server.url}/q/")
        assert "Karanténa" in page.locator("header nav").inner_text()
        screenshot(page, "i18n-preference-sk")
    finally:  # back to the browser's language for the other tests of the module
        page.goto(f"{webq_server.url}/prefs")
        page.select_option("select[name=language]", "")
        page.click("#save")
        page.wait_for_load_state()
    assert page.locator("h1").inner_text() == "Einstellungen"


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_quarantine_pages_render_in_the_browsers_language(
    webq_server: WebqServer, carol: str, localized: Any, language: str
) -> None:
    """The quarantine list, a message, a bulk confirmation and the own lists, each in the catalog's words
    (the strings from the templates and the notes from the code); nothing is changed."""
    page = localized(BROWSER_LOCALES.get(language, language.replace("_", "-")))
    contents: list[str] = []
    log_in(page, webq_server.url, carol, PASSWORD)
    virus = webq_server.messages["alice_virus"]
    page.goto(f"{webq_server.url}/q/")
    assert page.locator("h1").inner_text() == _(language, "Quarantine")
    assert page.locator("form.filters button[type=submit]").inner_text() == _(language, "Filter")
    assert page.locator("#bulk-release").inner_text() == _(language, "Release") + "\u2026"
    assert _(language, "Date (UTC)") in page.locator("table.messages thead").inner_text()
    assert page.locator(f"tr[data-id='{virus}'] td.state").inner_text() == _(language, "held")
    screenshot(page, f"i18n-list-{language}")
    contents.append(page.content())
    page.goto(f"{webq_server.url}/q/{virus}")
    assert page.locator("#state").inner_text() == _(language, "held")
    admin_only = _(language, "Only an administrator can release a message quarantined as %(category)s.")
    assert page.locator("#release-admin-only").inner_text() == admin_only % {"category": "virus"}
    assert page.locator("#whitelist").inner_text() == _(language, "Whitelist sender")
    assert _(language, "Attachments") in [h.inner_text() for h in page.locator("h2").all()]
    screenshot(page, f"i18n-message-{language}")
    contents.append(page.content())
    page.goto(f"{webq_server.url}/q/")
    page.locator(f"tr[data-id='{virus}'] input[name=id]").check()
    page.click("#bulk-release")  # a virus, for a user: refused on the confirmation page, nothing released
    page.wait_for_load_state()
    title = _(language, "%(action)s %(count)s message(s)?") % {"action": _(language, "Release"), "count": 0}
    assert page.locator("#bulk-title").inner_text() == title
    refused = _(language, "Refused: only an administrator can release a message quarantined as %(category)s.")
    assert page.locator(f"#bulk-items tr[data-id='{virus}'] td.outcome").inner_text() == refused % {"category": "virus"}
    assert page.locator("#bulk-nothing").inner_text() == _(
        language, "None of the selected messages can be changed this way."
    )
    screenshot(page, f"i18n-bulk-{language}")
    contents.append(page.content())
    page.goto(f"{webq_server.url}/lists")
    assert page.locator("h1").inner_text() == _(language, "Your white and black lists")
    assert _(language, "Added (UTC)") in page.locator("#listed thead").inner_text()
    screenshot(page, f"i18n-lists-{language}")
    contents.append(page.content())
    if language != "en":
        for english in ("Release to", "Whitelist sender", "Refused:", "Attachments", "Date (UTC)"):
            assert not [content for content in contents if english in content], english
