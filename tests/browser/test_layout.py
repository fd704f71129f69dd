"""The web quarantine's layout at a phone's 390 px and a desktop's 1,280 px (Debian's chromium).

Each page — login, quarantine list, a message, statistics, tracking, own lists, password, a bulk
confirmation — is measured: the document
is never wider than the window (``document.documentElement.scrollWidth <= innerWidth``), the
user name never overlaps "Log out", the graphs use the width, and dates stay on one line.
At 390 px also in German (the longest words of the catalogs: ``layout_<page>_390_de.png``).
Screenshots go to the test's tmp dir and to /tmp/mailsift-screens/ (``layout_<page>_<width>.png``).
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.browser import SCREENS, log_in
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
