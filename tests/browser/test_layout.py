"""The web quarantine's layout at a phone's 390 px and a desktop's 1,280 px (Debian's chromium).

Each page — login, quarantine list, a message, statistics, tracking, own lists, password, a bulk
confirmation — is measured: the document
is never wider than the window (``document.documentElement.scrollWidth <= innerWidth``), the
user name never overlaps "Log out", the graphs use the width, and dates stay on one line.
At 390 px also in German (the longest words of the catalogs: ``layout_<page>_390_de.png``), and
with data in every table (``test_german_pages_with_data_fit_a_phone``: tracking results, a story,
statistics): no word of the page (a header, a button, a label, a one-word cell) is split inside.
Screenshots go to the test's tmp dir and to /tmp/mailsift-screens/ (``layout_<page>_<width>.png``).
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailsift.web import stats_pages, tracking_pages
from mailsift.web.app import create_app
from tests.helpers.browser import SCREENS, log_in
from tests.helpers.stats_site import ADMIN, Site, WebServer
from tests.helpers.webq import WebqServer

WIDTHS = (390, 1280)


def _fits_in(page: Any, name: str, width: int, tmp_path: Path, suffix: str = "") -> None:
    page.wait_for_load_state()
    shot = tmp_path / f"layout_{name}_{width}{suffix}.png"
    page.screenshot(path=str(shot), full_page=True)
    os.makedirs(SCREENS, exist_ok=True)
    shutil.copy(shot, os.path.join(SCREENS, shot.name))
    scroll, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert scroll <= inner, f"{name} at {width} px: the page is {scroll} px wide"


def _apart(page: Any) -> None:
    who = page.locator("header .who").bounding_box()
    button = page.locator("header form.logout button").bounding_box()
    assert who is not None
    assert button is not None
    assert who["x"] + who["width"] <= button["x"] or who["y"] + who["height"] <= button["y"], (who, button)


@pytest.mark.parametrize(("width", "locale"), [(width, "en-US") for width in WIDTHS] + [(390, "de-DE")])
def test_no_horizontal_overflow(webq_server: WebqServer, browser: Any, width: int, locale: str, tmp_path: Path) -> None:
    """At each width in English, and at 390 px in German (the longest words of the catalogs)."""
    context = browser.new_context(viewport={"width": width, "height": 860}, locale=locale)
    page = context.new_page()
    _fits = functools.partial(_fits_in, suffix="" if locale == "en-US" else "_" + locale[:2])
    try:
        page.goto(f"{webq_server.url}/login")
        _fits(page, "login", width, tmp_path)
        log_in(page, webq_server.url, "admin", webq_server.users["admin"])
        _apart(page)
        _fits(page, "list", width, tmp_path)
        first = page.locator("tr[data-id] td.nowrap").first
        box = first.bounding_box()
        assert box is not None
        assert box["height"] < 2 * 26  # the date on one line (a line is ~22 px)
        page.goto(f"{webq_server.url}/q/{webq_server.messages['alice_virus']}")
        _apart(page)
        _fits(page, "message", width, tmp_path)
        page.goto(f"{webq_server.url}/stats")
        _fits(page, "stats", width, tmp_path)
        graph = page.locator("svg.stats-graph").first.bounding_box()
        main = page.locator("main").bounding_box()
        assert graph is not None
        assert main is not None
        assert graph["width"] >= 0.85 * main["width"]  # the graphs use the width
        page.goto(f"{webq_server.url}/track")
        _fits(page, "track", width, tmp_path)
        page.goto(f"{webq_server.url}/lists")
        _fits(page, "lists", width, tmp_path)
        page.goto(f"{webq_server.url}/password")
        _fits(page, "password", width, tmp_path)
        page.goto(f"{webq_server.url}/q/")
        page.locator("form#bulk input[name=id]").first.check()
        page.click("#bulk-release")  # the confirmation page only: nothing is released
        _fits(page, "bulk", width, tmp_path)
    finally:
        context.close()


def test_a_long_user_name_does_not_overlap_log_out(webq_server: WebqServer, browser: Any, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 860})
    page = context.new_page()
    try:
        log_in(page, webq_server.url, "alice", webq_server.users["alice"])
        page.evaluate("document.querySelector('header .who').textContent = 'a-very-long-login-name@example.org'")
        _apart(page)
        _fits_in(page, "long_name", 390, tmp_path)
    finally:
        context.close()


def test_favicon_is_served(webq_server: WebqServer, page: Any) -> None:
    missing: list[str] = []
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    page.goto(f"{webq_server.url}/login")
    page.wait_for_load_state()
    icon = page.locator("link[rel=icon]").get_attribute("href")
    assert icon == "/static/favicon.svg"
    assert httpx.get(f"{webq_server.url}{icon}").status_code == 200
    answer = httpx.get(f"{webq_server.url}/favicon.ico")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("image/svg+xml")
    assert missing == []


SPLIT_WORDS = """() => {
  // words of the page (not addresses, subjects or ids: .text and the quarantine list's cards) drawn on
  // more than one line, i.e. split inside ("Verbleib" as V/e/r/b/l/e/i/b)
  const split = [];
  const boxes = 'h1, h2, th, td:not(.text), button, label, header.top nav a, .pager';
  for (const box of document.querySelectorAll(boxes)) {
    if (box.closest('table.messages, .text')) continue;
    const walker = document.createTreeWalker(box, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (node.parentElement.closest('.text')) continue;
      for (const word of node.data.matchAll(/[^\\s\\-\\/]+/g)) {
        const range = document.createRange();
        range.setStart(node, word.index);
        range.setEnd(node, word.index + word[0].length);
        const lines = new Set([...range.getClientRects()].filter(r => r.width > 0).map(r => Math.round(r.top)));
        if (lines.size > 1) split.push(word[0]);
      }
    }
  }
  return split;
}"""


def test_german_pages_with_data_fit_a_phone(stats_site: Site, browser: Any, tmp_path: Path) -> None:
    """The main pages in German at 390 px, each table filled (the stats site's real mail and log): the page
    is never wider than the phone and no word is split inside (the pages' ``overflow-wrap: anywhere`` broke
    "Verbleib", "Ergebnis", "zurückgehalten" letter by letter in the tracking table's narrow columns)."""
    routes = [*stats_pages.routes(), *tracking_pages.routes()]
    app = create_app(stats_site.config.settings, secret=secrets.token_hex(32), extra_routes=routes)
    with WebServer(app) as server:
        url = f"http://127.0.0.1:{server.port}"
        context = browser.new_context(viewport={"width": 390, "height": 860}, locale="de-DE")
        page = context.new_page()

        def fits(path: str) -> None:
            page.goto(f"{url}{path}")
            _fits_in(page, "german" + path.replace("/", "_").replace("?", "_"), 390, tmp_path, suffix="_de")
            width = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
            assert width[0] <= width[1], (path, width)
            assert page.evaluate(SPLIT_WORDS) == [], path

        try:
            fits("/login")
            assert page.locator("html").get_attribute("lang") == "de"
            log_in(page, url, *ADMIN)
            page.goto(f"{url}/track?since=7d")
            story = page.locator("tr[data-fate=quarantined] a").first.get_attribute("href")
            page.goto(f"{url}/q/")
            message = page.locator("a.open").first.get_attribute("href")
            assert story
            assert message
            for path in [
                "/q/",
                message,
                "/stats?range=hour",
                "/track?since=7d",
                story,
                "/lists",
                "/password",
                "/prefs",
            ]:
                fits(path)
        finally:
            context.close()
