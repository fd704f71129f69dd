"""A private PostgreSQL for tests: its own cluster on a Unix socket in a temporary directory.

Debian's PostgreSQL 15 (``/usr/lib/postgresql/15/bin``) is run as the
``postgres`` user with ``initdb``/``pg_ctl``; it listens on a free loopback
port (and a socket in a directory made for it under /tmp, outside pytest's
basetemp, which another run may make unreachable for other users).  Each test gets a
fresh database of its own (:func:`fresh_database`).

Use the fixture by importing it into a test module (or a conftest)::

    from tests.helpers.postgres import fresh_database, postgres  # noqa: F401

    def test_x(postgres: str) -> None:
        url = fresh_database(postgres, "mytest")    # postgresql+psycopg://...

Tests are skipped (not failed) where psycopg or PostgreSQL is missing, or
when not running as root (``su postgres`` is needed).
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsift.storage import db
from mailsift.testing import free_port

PG_BIN = "/usr/local/bin" if os.path.exists("/usr/local/bin/initdb") else "/usr/lib/postgresql/15/bin"
_numbers = itertools.count()


class PostgresInstance:
    """One private cluster; :attr:`base_url` has a ``%s`` where the database name goes."""

    def __init__(self) -> None:
        self.where = ""
        self.base_url = ""

    @staticmethod
    def available() -> str:
        """Why this cannot run here ('' if it can)."""
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "psycopg is not installed"
        if not os.path.exists(f"{PG_BIN}/initdb") or os.geteuid() != 0:
            return "PostgreSQL's initdb (run as the postgres user) is needed"
        return ""

    def _as_postgres(self, *command: str) -> None:
        subprocess.run(
            ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(command)], check=True, capture_output=True, timeout=60
        )

    def start(self) -> PostgresInstance:
        owner = pwd.getpwnam("postgres")
        self.where = tempfile.mkdtemp(prefix="mailsift-pg-", dir="/tmp")
        os.chown(self.where, owner.pw_uid, owner.pw_gid)
        os.chmod(self.where, 0o755)
        # A loopback TCP port, as a gateway would reach its database (and the socket in our directory).
        port = str(free_port())
        options = f'"-c listen_addresses=127.0.0.1 -c unix_socket_directories={self.where} -c fsync=off -p {port}"'
        data = f"{self.where}/data"
        self._as_postgres(f"{PG_BIN}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        self._as_postgres(f"{PG_BIN}/pg_ctl", "-D", data, "-w", "-l", f"{self.where}/log", "-o", options, "start")
        self.base_url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/%s"
        return self

    def stop(self) -> None:
        if self.where and os.path.exists(f"{self.where}/data/postmaster.pid"):
            self._as_postgres(f"{PG_BIN}/pg_ctl", "-D", f"{self.where}/data", "-w", "-m", "fast", "stop")
        if self.where:
            shutil.rmtree(self.where, ignore_errors=True)


def fresh_database(base_url: str, prefix: str = "test") -> str:
    """Create a new empty database in the instance at ``base_url``; returns its URL."""
    name = f"{prefix}_{os.getpid()}_{next(_numbers)}"
    admin = db.database(base_url % "postgres")
    admin.configure("/")
    with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return base_url % name


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A private PostgreSQL for this test module; yields its base URL (``%s`` for the database)."""
    reason = PostgresInstance.available()
    if reason:
        pytest.skip(reason)
    instance = PostgresInstance()
    try:
        instance.start()
        yield instance.base_url
    finally:
        instance.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[db.Database]:
    """The same test on SQLite and on a fresh database of the private PostgreSQL."""
    if request.param == "sqlite":
        database = db.sqlite()
    else:
        database = db.database(fresh_database(request.getfixturevalue("postgres")))
    database.configure(str(tmp_path))
    yield database
    database.dispose()
