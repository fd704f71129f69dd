"""The web quarantine under test: :class:`WebqServer` (its URL, recording next hop, settings and
seeded messages) and the web users every webq test shares.

The browser tier's session fixture ``webq_server`` (tests/browser/conftest.py) runs a real
``mailsift serve``; tests/unit/web/test_quarantine_pages.py builds one in-process (ASGI).

Users: ``alice`` (alice@example.org), ``bob`` (bob@example.org), ``admin``
(admin, no address), passwords in ``PASSWORDS``.

:func:`add_users` (:func:`user_settings`: a fresh database holding them) and :func:`logged_in`
serve the in-process tests (tests/security): the web application over ASGI, a user logged in
through ``/login``, and :func:`csrf_token`.

For the attack suite (tests/security/test_web_*.py): :class:`WebGateway`, a real
``mailsift serve`` whose worker runs smtpd *and* webq (one event loop, as in production;
:func:`web_gateway` starts one with its next hop),
:func:`web_client` (an in-process ASGI client of :func:`mailsift.web.app.create_app`),
:func:`csrf_token`, :func:`log_in` and :func:`add_users`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from mailsift import config as config_module
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Result
from mailsift.settings import Settings
from mailsift.storage import db
from mailsift.storage.quarantine.index import QuarantineEntry, get_entry
from mailsift.storage.quarantine.store import QuarantineStore, file_id
from mailsift.testing import RecordingServer, free_port
from mailsift.web import users
from mailsift.web.app import create_app
from mailsift.web.webconfig import WebConfig
from tests.helpers.faults import Serve
from tests.helpers.links import Gateway

PASSWORDS = {"alice": "alice-Secret-1", "bob": "bob-Secret-2", "admin": "admin-Secret-3"}
ADDRESSES = {"alice": ["alice@example.org"], "bob": ["bob@example.org"], "admin": []}


@dataclass
class WebqServer:
    url: str
    recorder: RecordingServer
    settings: Settings
    state_dir: str
    messages: dict[str, str] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=lambda: dict(PASSWORDS))

    def seed(
        self,
        name: str,
        sender: str,
        recipients: Sequence[str],
        raw: bytes,
        *,
        category: str = "virus",
        result: Result | None = None,
    ) -> str:
        """Quarantine ``raw`` for ``recipients`` through the real store (file + index); returns its id."""
        store = QuarantineStore(self.settings.quarantine_dir, self.settings.database)
        mail = Mail(Envelope(sender=sender, recipients=list(recipients), client_address="192.0.2.7"), raw)
        try:
            path = asyncio.run(store.put(mail, category, result or Result(1.0, "EICAR-Test", "regexp_scan")))
        finally:
            mail.close()
        entry_id = file_id(os.path.relpath(path, self.settings.quarantine_dir))
        self.messages[name] = entry_id
        return entry_id

    def entry(self, entry_id: str) -> QuarantineEntry | None:
        entry: QuarantineEntry | None = self.settings.database.call(get_entry, entry_id)
        return entry


def add_users(settings: Settings) -> None:
    """``PASSWORDS``' users (``admin`` an admin) in ``settings.database``."""
    for login, password in PASSWORDS.items():
        add = functools.partial(
            users.add_user,
            login=login,
            password_hash=users.hash_password(password),
            is_admin=login == "admin",
            addresses=ADDRESSES[login],
            now=time.time(),
        )
        settings.database.call(add)


@contextlib.contextmanager
def user_settings(state_dir: Path) -> Iterator[Settings]:
    """Settings over a fresh SQLite database in ``state_dir`` holding :func:`add_users`' users;
    the database is disposed of afterwards."""
    database = db.sqlite()
    database.configure(str(state_dir))
    settings = Settings(state_dir=str(state_dir), database=database)
    add_users(settings)
    try:
        yield settings
    finally:
        database.dispose()


@contextlib.contextmanager
def users_gateway(prefix: str) -> Iterator[tuple[Gateway, RecordingServer]]:
    """A :class:`~tests.helpers.links.Gateway` config (SQLite, STATE_DIR in a new folder of /tmp
    named ``prefix``...) holding :func:`add_users`' users, and its next hop, a recording SMTP
    server; the folder is removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        with RecordingServer() as next_hop:
            gateway = Gateway(path, next_hop.port)
            add_users(gateway.settings)
            try:
                yield gateway, next_hop
            finally:
                gateway.settings.database.dispose()
    finally:
        shutil.rmtree(path, ignore_errors=True)


def page_token(page: str) -> str:
    """The CSRF token of a page's form."""
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


async def logged_in(
    settings: Settings, login: str, *, secret: str, config: WebConfig | None = None, extra_routes: Any = ()
) -> httpx.AsyncClient:
    """A client of the web application (ASGI, in process), logged in as ``login`` (``""``: nobody)."""
    app = create_app(settings, secret=secret, config=config, extra_routes=extra_routes)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://webq.test")
    if login:
        form = {
            "login": login,
            "password": PASSWORDS[login],
            "csrf_token": page_token((await client.get("/login")).text),
        }
        response = await client.post("/login", data=form)
        assert response.status_code == 303, response.text
    return client


async def csrf_token(client: httpx.AsyncClient, path: str = "/prefs") -> str:
    """The CSRF token of the client's session, read from a page's form."""
    return page_token((await client.get(path)).text)


def web_client(
    settings: Settings, config: WebConfig | None = None, *, client: tuple[str, int] = ("127.0.0.1", 40000)
) -> httpx.AsyncClient:
    """An in-process client of the web quarantine (``client``: the peer address the app sees)."""
    app = create_app(settings, secret="s" * 40, config=config or WebConfig())
    transport = httpx.ASGITransport(app=app, client=client)
    return httpx.AsyncClient(transport=transport, base_url="http://webq.test")


async def log_in(client: httpx.AsyncClient, login: str, password: str, **headers: str) -> httpx.Response:
    token = await csrf_token(client, "/login")
    data = {"login": login, "password": password, "csrf_token": token, "next": "/q/"}
    return await client.post("/login", data=data, headers=headers)


GATEWAY_CONFIG = """\
from mailsift import *
from mailsift.web.service import webq

STATE_DIR = {state!r}
SMTP_SERVER = smtp_relay("127.0.0.1", {hop}, timeout=10)
DATABASE = db.sqlite()
SCANNERS = [quarantine("held", regexp_scan([("Held", r"HOLD-ME-PLEASE")]))]
SRV = [smtpd(SCANNERS, "127.0.0.1", {smtp}), webq("127.0.0.1", {web}{webq_options})]
"""


class WebGateway(Serve):
    """``mailsift serve -w 1`` whose one worker serves smtpd (``port``) and webq (``web_port``)
    in the same event loop; the users of ``PASSWORDS`` exist.  ``webq_options``: Python source
    appended to webq's arguments (``", login_failures_per_name=1000"``)."""

    def __init__(self, directory: Path, next_hop: int, webq_options: str = "") -> None:
        self.web_port = free_port()
        self.webq_options = webq_options
        super().__init__(directory, next_hop)

    def write(self, **config: Any) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        text = GATEWAY_CONFIG.format(
            state=str(self.state), hop=self.next_hop, smtp=self.port, web=self.web_port, webq_options=self.webq_options
        )
        self.config.write_text(text)

    def start(self, workers: int = 1, timeout: float = 60) -> WebGateway:
        settings = config_module.load(str(self.config)).settings
        try:
            add_users(settings)
        finally:
            settings.database.dispose()
        super().start(workers, timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/login", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "webq did not answer:\n" + self.log_text()
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def worker(self) -> int:
        """The one worker's pid."""
        (pid,) = self.children()
        return pid


@contextlib.contextmanager
def web_gateway(directory: Path, webq_options: str = "") -> Iterator[WebGateway]:
    """A started :class:`WebGateway` in ``directory`` whose next hop is a :class:`RecordingServer`;
    both are stopped afterwards."""
    recorder = RecordingServer().start()
    served = WebGateway(directory, recorder.port, webq_options)
    try:
        yield served.start()
    finally:
        served.stop()
        recorder.stop()
