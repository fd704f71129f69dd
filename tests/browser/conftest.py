"""Shared browser-test fixtures: a real ``mailsift serve`` running ``webq``, a recording next hop,
a seeded quarantine, web users, and Playwright with Debian's chromium.

Other web helpers' browser tests import from here:

* ``webq_server`` (session): a :class:`WebqServer` — ``url``, ``recorder``
  (:class:`~mailsift.testing.RecordingServer`, the SMTP_SERVER), ``settings``
  (to read the database and the store), ``messages`` (name → quarantine id),
  ``users`` (login → password); ``seed(...)`` adds a message;
* ``browser`` (session) and ``context``/``page`` (per test, fresh cookies);
* :func:`log_in` (page, url, login, password); :func:`screenshot` (page, name).

Users: ``alice`` (alice@example.org), ``bob`` (bob@example.org), ``admin``
(admin, no address), passwords in ``PASSWORDS``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import httpx
import pytest

from mailsift import config as config_module
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Result
from mailsift.settings import Settings
from mailsift.storage.quarantine.index import QuarantineEntry, get_entry
from mailsift.storage.quarantine.store import QuarantineStore, file_id
from mailsift.testing import RecordingServer, free_port
from mailsift.web import users

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
SCREENS = "/tmp/mailsift-screens"
PASSWORDS = {"alice": "alice-Secret-1", "bob": "bob-Secret-2", "admin": "admin-Secret-3"}
ADDRESSES = {"alice": ["alice@example.org"], "bob": ["bob@example.org"], "admin": []}

CONFIG = """\
from mailsift import *
from mailsift.web.service import webq
STATE_DIR = {state!r}
SMTP_SERVER = ('127.0.0.1', {hop})
DATABASE = db.sqlite()
SRV = [webq('127.0.0.1', {port}, scanner=regexp_scan([('EICAR-Test', r'EICAR-STANDARD')]))]
"""


def message_bytes(sender: str, to: str, subject: str, body: str, *, html: str = "", attachment: bytes = b"") -> bytes:
    """A small MIME message: a text part (or an HTML part), and an optional attachment."""
    lines = [f"From: <{sender}>", f"To: <{to}>", f"Subject: {subject}", "Message-ID: <x@test>", "MIME-Version: 1.0"]
    if not html and not attachment:
        return ("\r\n".join([*lines, "Content-Type: text/plain; charset=utf-8", "", body, ""])).encode()
    parts = []
    if html:
        parts.append(f"Content-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n")
    else:
        parts.append(f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n")
    if attachment:
        parts.append(
            'Content-Type: application/octet-stream; name="invoice.exe"\r\n'
            'Content-Disposition: attachment; filename="invoice.exe"\r\n\r\n' + attachment.decode() + "\r\n"
        )
    boundary = "b0undary"
    mime = f"\r\n--{boundary}\r\n".join(["", *parts])[2:]
    head = "\r\n".join([*lines, f'Content-Type: multipart/mixed; boundary="{boundary}"', "", ""])
    return (head + mime + f"\r\n--{boundary}--\r\n").encode()


@dataclass
class WebqServer:
    url: str
    recorder: RecordingServer
    settings: Settings
    state_dir: str
    messages: dict[str, str] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=lambda: dict(PASSWORDS))

    def seed(self, name: str, sender: str, recipients: Sequence[str], raw: bytes, *, category: str = "virus") -> str:
        """Quarantine ``raw`` for ``recipients`` through the real store (file + index); returns its id."""
        store = QuarantineStore(self.settings.quarantine_dir, self.settings.database)
        mail = Mail(Envelope(sender=sender, recipients=list(recipients), client_address="192.0.2.7"), raw)
        try:
            path = asyncio.run(store.put(mail, category, Result(1.0, "EICAR-Test", "regexp_scan")))
        finally:
            mail.close()
        entry_id = file_id(os.path.relpath(path, self.settings.quarantine_dir))
        self.messages[name] = entry_id
        return entry_id

    def entry(self, entry_id: str) -> QuarantineEntry | None:
        entry: QuarantineEntry | None = self.settings.database.call(get_entry, entry_id)
        return entry


def _wait_until_up(url: str, process: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mailsift serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/login", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("webq did not answer within the deadline")


@pytest.fixture(scope="session")
def webq_server() -> Iterator[WebqServer]:
    state = tempfile.mkdtemp(dir="/tmp", prefix="mailsift-webq-")
    recorder = RecordingServer().start()
    port = free_port()
    config_path = os.path.join(state, "config.py")
    with open(config_path, "w", encoding="utf-8") as handle:
        handle.write(CONFIG.format(state=state, hop=recorder.port, port=port))
    config = config_module.load(config_path)
    settings = config.settings
    for login, password in PASSWORDS.items():
        settings.database.call(
            functools.partial(
                users.add_user,
                login=login,
                password_hash=users.hash_password(password),
                is_admin=login == "admin",
                addresses=ADDRESSES[login],
                now=time.time(),
            )
        )
    server = WebqServer(f"http://127.0.0.1:{port}", recorder, settings, state)
    eicar = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
    hostile = (
        "<html><head><style>body{background:red}</style><script>window.pwned=1</script></head><body>"
        "<p>Dear customer, <b>pay</b> the invoice.</p><img src='http://203.0.113.9/track.png'>"
        "<script>document.title='pwned'</script><a href='javascript:alert(1)'>click</a></body></html>"
    )
    server.seed(
        "alice_virus",
        "billing@bad.example",
        ["alice@example.org"],
        message_bytes(
            "billing@bad.example",
            "alice@example.org",
            "Your invoice <b>now</b>",
            "",
            html=hostile,
            attachment=eicar.encode(),
        ),
    )
    server.seed(
        "alice_plain",
        "friend@good.example",
        ["alice@example.org"],
        message_bytes("friend@good.example", "alice@example.org", "Lunch on Friday", "See you at noon.\n-- friend"),
        category="spam",
    )
    server.seed(
        "bob_secret",
        "boss@corp.example",
        ["bob@example.org"],
        message_bytes("boss@corp.example", "bob@example.org", "Bob's private salary", "Only for Bob."),
    )
    server.seed(
        "shared",
        "news@list.example",
        ["alice@example.org", "bob@example.org"],
        message_bytes("news@list.example", "team@example.org", "Team newsletter", "Hello team."),
        category="policy",
    )
    log = open(os.path.join(state, "serve.log"), "wb")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen(
        [sys.executable, "-m", "mailsift", "serve", "-c", config_path, "-w", "1"], stdout=log, stderr=log
    )
    try:
        _wait_until_up(server.url, process, time.monotonic() + 60)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        recorder.stop()
        settings.database.dispose()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Chromium through Playwright's sync API, one per test module.

    While it runs, the thread has Playwright's event loop: no other Playwright
    instance and no ``asyncio.run`` may start in it.  Module scope keeps that
    to the module's browser tests (put them after the module's other tests).
    """
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed")
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def context(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})  # type: ignore[attr-defined]
    yield context
    context.close()


@pytest.fixture
def page(context: object) -> object:
    return context.new_page()  # type: ignore[attr-defined]


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
