"""The statistics site for tests: real mail through a real smtpd with ``stats()``, then the web app.

:func:`stats_site` (a module-scoped fixture: import it into the test module that uses it) sends
``SENT`` through a real smtpd (:class:`mailsift.testing.ServiceThread`) with
``stats(flush_interval=0.2)`` and ``log_sql()`` in ``HOOKS``: five clean messages, two rejected
by a named scanner, one quarantined, to two domains; adds the web users ``ADMIN``,
``DOMAIN_ADMIN`` (of c.example) and ``ORDINARY``; and serves the web app (``create_app`` with
:func:`mailsift.web.stats_pages.routes`, ``/metrics`` for ``TOKEN``) by uvicorn on a loopback
port.  Used by tests/protocol/test_stats_live.py and tests/browser/test_graphs.py.
"""

from __future__ import annotations

import functools
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

import pytest
import uvicorn
from sqlalchemy import text

from mailsift import config as config_module
from mailsift.config import Config
from mailsift.reporting.counters import totals
from mailsift.testing import RecordingServer, ServiceThread, free_port
from mailsift.web import stats_pages, users
from mailsift.web.app import create_app

ADMIN = ("stats-admin", "admin password 1")
DOMAIN_ADMIN = ("dora", "dora password 1")  # administers c.example
ORDINARY = ("olga", "olga password 1")
TOKEN = "scrape-" + secrets.token_hex(8)

CONFIG = """\
from mailsift import *
from mailsift.reporting.counters import stats
STATE_DIR = {state!r}
USER = None  # the suite's servers keep the current user
SMTP_SERVER = ("127.0.0.1", {next_hop})
DATABASE = db.sqlite()
SCANNERS = [
    reject(regexp_scan([("Bad-Word", "BADWORD")])),
    quarantine("virus", regexp_scan([("Nasty-Virus", "NASTYVIRUS")])),
]
SRV = [smtpd(SCANNERS, "127.0.0.1", 0)]
HOOKS = [stats(flush_interval=0.2), log_sql()]
"""

SENT = [  # (recipient, body, expected reply)
    *[("bob@b.example", f"hello {n}", 250) for n in range(3)],
    *[("bob@b.example", "BADWORD offer", 550) for _ in range(2)],
    ("carol@c.example", "NASTYVIRUS inside", 250),
    *[("carol@c.example", ("x" * 70 + "\r\n") * (15 * n), 250) for n in range(1, 3)],
]


@dataclass
class Site:
    config: Config
    url: str


def send(port: int, recipient: str, body: str) -> int:
    data = f"From: alice@a.example\r\nTo: {recipient}\r\nSubject: stats\r\n\r\n{body}\r\n".encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        try:
            client.sendmail("alice@a.example", [recipient], data)
        except smtplib.SMTPDataError as error:
            return error.smtp_code
    return 250


def wait_for_counts(config: Config, messages: int, deadline: float = 20.0) -> None:
    """The stats hook writes in the background: wait (with a deadline) until every message is counted."""
    until = time.monotonic() + deadline
    counted = 0
    while time.monotonic() < until:
        counted = sum(t.messages for t in config.settings.database.call(lambda c: totals(c)))
        logged = config.settings.database.call(lambda c: c.execute(text("SELECT count(*) FROM maillog")).scalar())
        if counted >= messages and logged >= messages:
            return
        time.sleep(0.05)
    raise AssertionError(f"{counted} of {messages} messages counted")


class WebServer:
    """uvicorn serving ``app`` on a loopback port in a thread, stopped on exit."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
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


def add_users(config: Config) -> None:
    now = time.time()
    database = config.settings.database
    for (login, password), is_admin, addresses in (
        (ADMIN, True, []),
        (DOMAIN_ADMIN, False, ["dora@c.example"]),
        (ORDINARY, False, ["olga@b.example"]),
    ):
        database.call(
            functools.partial(users.add_user, is_admin=is_admin, addresses=addresses, now=now),
            login,
            users.hash_password(password),
        )
    # A domain admin owns "@c.example" (User.addresses); written directly, as users.set_addresses
    # accepts only user@domain so far.
    user_id = database.call(lambda c: users.find_user(c, DOMAIN_ADMIN[0])).user.id
    database.call(
        lambda c: c.execute(users.web_user_address_table.insert().values(user_id=user_id, address="@c.example"))
    )


@pytest.fixture(scope="module")
def stats_site() -> Iterator[Site]:
    workdir = tempfile.mkdtemp(prefix="mailsift-stats-", dir="/tmp")
    with RecordingServer() as hop:
        path = Path(workdir) / "mailsift.conf.py"
        path.write_text(CONFIG.format(state=f"{workdir}/state", next_hop=hop.port))
        config = config_module.load(str(path))
        with ServiceThread(config.services[0], config.settings) as gateway:
            for recipient, body, expected in SENT:
                assert send(gateway.port, recipient, body) == expected
            wait_for_counts(config, len(SENT))
        add_users(config)
        routes = stats_pages.routes(metrics_clients=("192.0.2.0/24",), metrics_token=TOKEN)
        app = create_app(config.settings, secret=secrets.token_hex(32), extra_routes=routes, quarantine=False)
        with WebServer(app) as server:
            yield Site(config, f"http://127.0.0.1:{server.port}")
    config.settings.database.dispose()
    shutil.rmtree(workdir, ignore_errors=True)
