"""Message tracking pages, in a real browser against a real server, after real mail.

Mail goes through a real smtpd (:class:`mailsift.testing.ServiceThread`)
with ``log_sql()`` in ``HOOKS`` and a quarantine: one message delivered, one
rejected by a named scanner, one quarantined and then released by a named
admin (:func:`mailsift.storage.quarantine.admin.release`), and one with a hostile
Subject.  The web app (``create_app`` with the tracking routes) is served by
uvicorn on a loopback port; HTTP checks use httpx, the admin's search runs in
Debian's chromium through Playwright and leaves screenshots in
``/tmp/mailsift-screens/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import secrets
import shutil
import smtplib
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import text

from mailsift import config as config_module
from mailsift.config import Config
from mailsift.storage.quarantine.admin import release
from mailsift.storage.quarantine.index import QuarantineFilter, find_entries
from mailsift.testing import RecordingServer, ServiceThread, free_port
from mailsift.web import tracking_pages, users
from mailsift.web.app import create_app

SCREENS = "/tmp/mailsift-screens"
CHROMIUM = "/usr/bin/chromium"
ADMIN = ("root-admin", "admin password 1")
ORDINARY = ("olga", "olga password 1")
HOSTILE_SUBJECT = '<img src="http://203.0.113.9/x.png" onerror="alert(1)"><script>alert(2)</script>'

CONFIG = """\
from mailsift import *
STATE_DIR = {state!r}
SMTP_SERVER = ("127.0.0.1", {next_hop})
DATABASE = db.sqlite()
SCANNERS = [
    reject(regexp_scan([("Bad-Word", "BADWORD")])),
    quarantine("virus", regexp_scan([("Nasty-Virus", "NASTYVIRUS")])),
]
SRV = [smtpd(SCANNERS, "127.0.0.1", 0)]
HOOKS = [log_sql()]
"""


@dataclass
class Site:
    config: Config
    url: str


def send(port: int, sender: str, recipient: str, subject: str, body: str, message_id: str) -> int:
    data = (
        f"From: {sender}\r\nTo: {recipient}\r\nSubject: {subject}\r\nMessage-ID: {message_id}\r\n\r\n{body}\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        try:
            client.sendmail(sender, [recipient], data)
        except smtplib.SMTPDataError as error:
            return error.smtp_code
    return 250


def wait_for_rows(config: Config, count: int, deadline: float = 20.0) -> None:
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        if (
            config.settings.database.call(lambda c: c.execute(text("SELECT count(*) FROM maillog")).scalar_one())
            >= count
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} log rows written")


class WebServer:
    """uvicorn serving ``app`` on a loopback port in a thread, stopped on exit."""

    def __init__(self, app: object) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))  # type: ignore[arg-type]
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> WebServer:
        self.thread.start()
        until = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > until or not self.thread.is_alive():
                raise AssertionError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    workdir = tempfile.mkdtemp(prefix="mailsift-track-web-", dir="/tmp")
    with RecordingServer() as hop:
        path = Path(workdir) / "mailsift.conf.py"
        path.write_text(CONFIG.format(state=f"{workdir}/state", next_hop=hop.port))
        config = config_module.load(str(path))
        with ServiceThread(config.services[0], config.settings) as gateway:
            port = gateway.port
            assert send(port, "alice@a.example", "bob@b.example", "Hello Bob", "hi", "<clean@a.example>") == 250
            assert send(port, "dave@d.example", "bob@b.example", "Offer", "BADWORD", "<bad@d.example>") == 550
            assert send(port, "eve@e.example", "bob@b.example", "Invoice", "NASTYVIRUS", "<virus@e.example>") == 250
            assert send(port, "mal@m.example", "zed@b.example", HOSTILE_SUBJECT, "hello", "<odd@m.example>") == 250
            wait_for_rows(config, 4)
        (entry,) = config.settings.database.call(find_entries, QuarantineFilter(sender="eve@e.example"), time.time())
        asyncio.run(release(config.settings, entry, by="admin-carol"))
        now = time.time()
        for (login, password), is_admin in ((ADMIN, True), (ORDINARY, False)):
            hashed = users.hash_password(password)
            config.settings.database.call(
                functools.partial(users.add_user, is_admin=is_admin, addresses=[f"{login}@b.example"], now=now),
                login,
                hashed,
            )
        app = create_app(config.settings, secret=secrets.token_hex(32), extra_routes=tracking_pages.routes())
        with WebServer(app) as server:
            yield Site(config, f"http://127.0.0.1:{server.port}")
    config.settings.database.dispose()
    shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def logged_in(site: Site, login: str, password: str) -> Iterator[httpx.Client]:
    """An HTTP client with a session of ``login`` (through the login form, CSRF token included)."""
    with httpx.Client(base_url=site.url, timeout=20) as client:
        page = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token is not None
        answer = client.post("/login", data={"login": login, "password": password, "csrf_token": token.group(1)})
        assert answer.status_code == 303, answer.text
        yield client


def test_only_admins_may_track(site: Site) -> None:
    with httpx.Client(base_url=site.url, timeout=20) as anonymous:
        answer = anonymous.get("/track?sender=alice@a.example")
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/login?next=")
        assert anonymous.get("/track/1").status_code == 303
    with logged_in(site, *ORDINARY) as olga:
        refused = olga.get("/track?recipient=bob@b.example")
        assert refused.status_code == 403
        assert "bob@b.example" not in refused.text  # nothing of the log leaks into the refusal
        assert olga.get("/track/1").status_code == 403
    with logged_in(site, *ADMIN) as admin:
        found = admin.get("/track", params={"recipient": "zed@b.example"})
        assert found.status_code == 200
        assert "odd@m.example" in found.text
        assert admin.get("/track", params={"since": "last tuesday"}).status_code == 400
        assert admin.get("/track/999999").status_code == 404


def test_hostile_subject_is_shown_as_text(site: Site) -> None:
    with logged_in(site, *ADMIN) as admin:
        page = admin.get("/track", params={"message_id": "odd@m.example"})
    assert page.status_code == 200
    assert "<img src=" not in page.text
    assert "<script>alert" not in page.text
    assert "&lt;img src=&#34;http://203.0.113.9/x.png&#34;" in page.text


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")
def test_admin_searches_and_reads_a_story_in_a_browser(site: Site, browser: Any) -> None:
    os.makedirs(SCREENS, exist_ok=True)
    remote: list[str] = []
    # the session's one browser (tests/browser/conftest.py): Playwright allows one instance per thread
    if browser is not None:
        try:
            # The session comes from the real login form (CSRF token and all), posted by httpx:
            # chromium posts forms with "Origin: null" under the app's "Referrer-Policy: no-referrer",
            # which auth.check_csrf refuses (reported to the lead), so the cookie is handed over.
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            with logged_in(site, *ADMIN) as admin:
                cookies = [{"name": c.name, "value": c.value, "url": site.url} for c in admin.cookies.jar]
            context.add_cookies(cookies)  # type: ignore[arg-type]
            page = context.new_page()
            page.on("request", lambda r: None if r.url.startswith(site.url) else remote.append(r.url))
            page.goto(f"{site.url}/track")
            assert page.inner_text("h1") == "Message tracking"
            page.fill("input[name=recipient]", "bob@b.example")
            page.click("form.filters button[type=submit]")
            page.wait_for_url(re.compile(r".*/track\?.*recipient=bob%40b\.example.*"))
            rows = page.locator("table.tracking tbody tr")
            assert [rows.nth(i).get_attribute("data-fate") for i in range(rows.count())] == [
                "released",
                "rejected",
                "delivered",
            ]
            assert "by admin-carol" in rows.nth(0).inner_text()
            assert "regexp_scan: Bad-Word" in rows.nth(1).inner_text()
            page.screenshot(path=f"{SCREENS}/track_search.png", full_page=True)

            rows.nth(0).locator("a").click()
            page.wait_for_url(re.compile(r".*/track/\d+$"))
            assert page.inner_text("#story-fate") == "released"
            timeline = page.inner_text("ol.timeline")
            assert "released by admin-carol to <bob@b.example>" in timeline
            assert "quarantined by regexp_scan: Nasty-Virus (level 1.00), not delivered" in timeline
            page.screenshot(path=f"{SCREENS}/track_story.png", full_page=True)

            page.goto(f"{site.url}/track?sender=%40m.example")
            assert page.locator("main img, main script").count() == 0  # the hostile Subject stays text
            assert HOSTILE_SUBJECT in page.inner_text("table.tracking")
            page.screenshot(path=f"{SCREENS}/track_hostile.png", full_page=True)
        finally:
            context.close()
    assert remote == []  # nothing loaded from anywhere but the server
