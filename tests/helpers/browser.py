"""Page helpers for the browser tests (Playwright pages, Debian's chromium): log in through the
form, save a screenshot under ``/tmp/mailsift-screens/``.  The browser and page fixtures are in
tests/browser/conftest.py."""

from __future__ import annotations

import os

CHROMIUM = "/usr/bin/chromium"
SCREENS = "/tmp/mailsift-screens"


def log_in(page: object, url: str, login: str, password: str) -> None:
    """Log in through the form; returns on the page the login led to."""
    page.goto(f"{url}/login")  # type: ignore[attr-defined]
    page.fill("input[name=login]", login)  # type: ignore[attr-defined]
    page.fill("input[name=password]", password)  # type: ignore[attr-defined]
    page.click("button[type=submit]")  # type: ignore[attr-defined]
    page.wait_for_load_state()  # type: ignore[attr-defined]


def screenshot(page: object, name: str) -> str:
    os.makedirs(SCREENS, exist_ok=True)
    path = os.path.join(SCREENS, f"{name}.png")
    page.screenshot(path=path, full_page=True)  # type: ignore[attr-defined]
    return path
