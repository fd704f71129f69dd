"""The one-click link pages for tests: a gateway config that quarantines as the gateway does,
and the web application with the link pages served by uvicorn on a loopback port; the fixtures
of a gateway's tests are made of (a directory under /tmp, DATABASE on SQLite or PostgreSQL).

Used by tests/unit/reporting/test_links.py, tests/unit/reporting/test_digest.py,
tests/unit/cli/test_once.py and tests/browser/test_digest_links.py.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette

from mailsift import config as config_module
from mailsift.config import Config
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Result as ScanResult
from mailsift.storage.quarantine.store import RETRY_WINDOW, QuarantineStore, file_id
from mailsift.testing import free_port
from mailsift.web.app import create_app
from mailsift.web.links_pages import routes
from mailsift.web.webconfig import WebConfig
from tests.helpers.postgres import fresh_database


class Gateway:
    """A config with STATE_DIR, DATABASE and SMTP_SERVER (and any ``lines`` more), and a way to
    quarantine as the gateway does."""

    def __init__(self, tmp_path: Path, next_hop: int, database: str = "db.sqlite()", lines: str = "") -> None:
        path = tmp_path / "mailsift.conf.py"
        path.write_text(
            "from mailsift import *\n"
            f"STATE_DIR = {str(tmp_path / 'state')!r}\n"
            f"SMTP_SERVER = ('127.0.0.1', {next_hop})\n"
            f"DATABASE = {database}\n" + lines
        )
        self.path = path
        (tmp_path / "state").mkdir(exist_ok=True)
        self.config: Config = config_module.load(str(path))
        self.settings = self.config.settings

    def quarantine(
        self,
        data: bytes,
        *,
        sender: str = "eve@spam.example",
        recipients: tuple[str, ...] = ("bob@example.test",),
        category: str = "spam",
        age: float = 0.0,
        retry_window: float = RETRY_WINDOW,
    ) -> str:
        """Quarantine ``data`` (``age`` seconds ago); its entry id."""
        store = QuarantineStore(
            self.settings.quarantine_dir,
            self.settings.database,
            clock=lambda: time.time() - age,
            retry_window=retry_window,
        )
        mail = Mail(Envelope(sender=sender, recipients=list(recipients), client_address="192.0.2.9"), data)
        return file_id(asyncio.run(store.put(mail, category, ScanResult(7.5, "SPAM", "spamassassind"))))


@contextmanager
def serving(app: Starlette) -> Iterator[str]:
    """``app`` served by uvicorn on a loopback port in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


def link_app(gateway: Gateway, key: bytes, config: WebConfig | None = None) -> Starlette:
    """The web application with the link pages (no quarantine pages: they are another module's)."""
    return create_app(gateway.settings, secret=key, config=config, quarantine=False, extra_routes=routes())


# --------------------------------------------------------------------------- fixtures' parts


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A fresh directory under /tmp, removed afterwards (pytest's own may be made unreachable by
    another run)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def database_option(request: pytest.FixtureRequest, name: str, sqlite_file: Path | None = None) -> str:
    """``DATABASE``'s value for a fixture with ``params=["sqlite", "postgresql"]``: SQLite (the
    default file in ``STATE_DIR``, or ``sqlite_file``), or a fresh database ``name_...`` in the
    module's private PostgreSQL (the module imports tests.helpers.postgres's ``postgres`` fixture)."""
    if request.param == "sqlite":
        return "db.sqlite()" if sqlite_file is None else f"db.sqlite({str(sqlite_file)!r})"
    return f"db.database({fresh_database(request.getfixturevalue('postgres'), name)!r})"
