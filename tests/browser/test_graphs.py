"""The statistics pages in a real browser (Debian's chromium), after real mail through a real smtpd.

The site is the fixture :func:`tests.helpers.stats_site.stats_site` (through conftest.py): eight
messages through an smtpd with ``stats()``, the web app served by uvicorn.  An admin
and a domain admin open the graph pages; the graphs are drawn (bars of the
right count, no CSP violation, nothing loaded from elsewhere) and the pages
are saved as screenshots in ``/tmp/mailsift-screens/``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.helpers.browser import CHROMIUM, SCREENS
from tests.helpers.stats_site import ADMIN, DOMAIN_ADMIN, SENT, Site

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")


@pytest.fixture
def chromium(browser: Any) -> Any:
    """The session's one browser (tests/browser/conftest.py): Playwright's sync API allows one instance per thread."""
    return browser


def open_as(browser: Any, site: Site, login: str, password: str, path: str) -> tuple[Any, list[str], list[str]]:
    """A fresh page logged in as ``login`` on ``path``; also the requests elsewhere and console errors."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    remote: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(site.url) else remote.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{site.url}{path}")
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{site.url}{path}")
    page.wait_for_load_state()
    return page, remote, errors


def shoot(page: Any, name: str) -> None:
    os.makedirs(SCREENS, exist_ok=True)
    page.screenshot(path=os.path.join(SCREENS, f"{name}.png"), full_page=True)


def test_admin_sees_the_graphs(chromium: Any, stats_site: Site) -> None:
    page, remote, errors = open_as(chromium, stats_site, *ADMIN, "/stats?range=hour")
    try:
        graphs = page.locator("svg.stats-graph")
        assert graphs.count() == 4  # messages, bytes, scan time, greylisting
        messages = page.locator("#graph-messages svg")
        assert messages.is_visible()
        box = messages.bounding_box()
        assert box is not None
        assert box["width"] > 500
        assert messages.locator("g.bucket").count() == 12
        values = messages.locator("rect.bar").evaluate_all("rs => rs.map(r => Number(r.dataset.value))")
        assert sum(values) == len(SENT)
        # The bars are really drawn: a rejected bar has its colour and a height.
        rejected = messages.locator('rect.bar[data-series="rejected"]').first
        assert rejected.get_attribute("fill") == "#c8423b"
        height = rejected.bounding_box()
        assert height is not None
        assert height["height"] > 5
        assert page.locator("#stats-totals tr[data-key=clean] td").nth(1).inner_text() == "5"
        shoot(page, "stats_hour_by_verdict")
        page.select_option("select[name=by]", "domain")  # webq.js submits the filters at once
        page.wait_for_url("**/stats?range=hour&by=domain*")
        page.select_option("select[name=range]", "day")
        page.wait_for_url("**/stats?range=day&by=domain*")
        legend = page.locator("#graph-messages svg g.legend").evaluate_all("gs => gs.map(g => g.dataset.series)")
        assert legend == ["b.example", "c.example"]
        assert page.locator("#graph-messages svg g.bucket").count() == 24
        shoot(page, "stats_day_by_domain")
        page.click("nav.pager >> text=month")
        page.wait_for_url("**/stats?range=month*")
        assert page.locator("#graph-messages svg g.bucket").count() == 30
        shoot(page, "stats_month_by_domain")
    finally:
        page.close()
    assert remote == []
    assert [e for e in errors if "Content Security Policy" in e] == []


def test_domain_admin_sees_its_domain(chromium: Any, stats_site: Site) -> None:
    page, remote, _ = open_as(chromium, stats_site, *DOMAIN_ADMIN, "/stats?range=hour")
    try:
        assert "Statistics for c.example" in page.locator("h1").inner_text()
        series = page.locator("#graph-messages svg rect.bar").evaluate_all("rs => rs.map(r => r.dataset.series)")
        assert set(series) == {"clean", "quarantined"}
        assert page.locator("input[name=domain]").count() == 0  # no free-text domain for a domain admin
        shoot(page, "stats_domain_admin")
    finally:
        page.close()
    assert remote == []
