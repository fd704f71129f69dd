"""The web quarantine under test: :class:`WebqServer` (its URL, recording next hop, settings and
seeded messages) and the web users every webq test shares.

The browser tier's session fixture ``webq_server`` (tests/browser/conftest.py) runs a real
``mailsift serve``; tests/unit/web/test_quarantine_pages.py builds one in-process (ASGI).

Users: ``alice`` (alice@example.org), ``bob`` (bob@example.org), ``admin``
(admin, no address), passwords in ``PASSWORDS``.

:func:`add_users` and :func:`logged_in` serve the in-process tests (tests/security): the
web application over ASGI, a user logged in through ``/login``, and :func:`csrf_token`.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Result
from mailsift.settings import Settings
from mailsift.storage.quarantine.index import QuarantineEntry, get_entry
from mailsift.storage.quarantine.store import QuarantineStore, file_id
from mailsift.testing import RecordingServer
from mailsift.web import users
from mailsift.web.app import create_app
from mailsift.web.webconfig import WebConfig

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


def add_users(settings: Settings) -> None:
    """Adds ``alice``, ``bob`` and ``admin`` (:data:`ADDRESSES`, :data:`PASSWORDS`)."""
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


def _token(page: str) -> str:
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
        form = {"login": login, "password": PASSWORDS[login], "csrf_token": _token((await client.get("/login")).text)}
        response = await client.post("/login", data=form)
        assert response.status_code == 303, response.text
    return client


async def csrf_token(client: httpx.AsyncClient, path: str = "/prefs") -> str:
    """The CSRF token of the client's session, read from a page's form."""
    return _token((await client.get(path)).text)
