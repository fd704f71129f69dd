"""Shared browser-test fixtures: a real ``mailsift serve`` running ``webq``, a recording next hop,
a seeded quarantine, web users, and Playwright with Debian's chromium.

* ``webq_server`` (session): a :class:`~tests.helpers.webq.WebqServer` — ``url``, ``recorder``
  (:class:`~mailsift.testing.RecordingServer`, the SMTP_SERVER), ``settings``
  (to read the database and the store), ``messages`` (name → quarantine id),
  ``users`` (login → password); ``seed(...)`` adds a message;
* ``browser`` (module) and ``context``/``page`` (per test, fresh cookies);
* ``stats_site`` (module, from tests/helpers/stats_site.py): real mail through an smtpd with
  ``stats()``, the statistics pages served by uvicorn.

Plain helpers are in tests/helpers/: ``log_in`` and ``screenshot`` in browser.py, the users
(``PASSWORDS``, ``ADDRESSES``) and ``WebqServer`` in webq.py, ``message_bytes`` in messages.py.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx
import pytest

from mailsift import config as config_module
from mailsift.testing import RecordingServer, free_port
from mailsift.web import users
from tests.helpers.browser import CHROMIUM
from tests.helpers.messages import message_bytes
from tests.helpers.stats_site import stats_site  # noqa: F401 - the fixture (test_graphs.py)
from tests.helpers.webq import ADDRESSES, PASSWORDS, WebqServer

playwright_sync = pytest.importorskip("playwright.sync_api")


CONFIG = """\
from mailsift import *
from mailsift.web.service import webq
STATE_DIR = {state!r}
SMTP_SERVER = ('127.0.0.1', {hop})
DATABASE = db.sqlite()
SCANNERS = [listed()]  # the web offers the own white/black lists only where the scanners consult them
SRV = [webq('127.0.0.1', {port}, scanner=regexp_scan([('EICAR-Test', r'EICAR-STANDARD')]))]
"""


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
    server.seed(  # the CSRF test's message: a user may release spam (a virus: admins only)
        "alice_offer",
        "offers@shop.example",
        ["alice@example.org"],
        message_bytes("offers@shop.example", "alice@example.org", "Offer of the week", "50% off."),
        category="spam",
    )
    server.seed(  # a virus the admin releases
        "bob_virus",
        "billing@bad.example",
        ["bob@example.org"],
        message_bytes("billing@bad.example", "bob@example.org", "Bob's invoice", "See the attachment."),
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
