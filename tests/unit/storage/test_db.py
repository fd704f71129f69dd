"""mailsift.storage.db.Database.call on the message path (ABANDONED set): bounded waits and
no commit once the message was given up — on SQLite and on the private PostgreSQL."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection

from mailsift.errors import DatabaseError
from mailsift.storage import db
from mailsift.storage.db import ABANDONED, Database, Flag
from mailsift.storage.schema import listed_table
from tests.helpers.postgres import fresh_database

GENEROUS = 60.0
"""How long a test waits for a call that must end by itself (a bound, not a measurement)."""


def count(connection: Connection) -> int:
    return int(connection.execute(select(func.count()).select_from(listed_table)).scalar_one())


def add_row(connection: Connection, flag: Flag | None = None) -> None:
    row = {"owner": "", "list": "white", "field": "from", "value": "one@example.test", "created": 0.0, "comment": ""}
    connection.execute(insert(listed_table).values(**row))
    if flag is not None:
        flag.set()  # the message's deadline passes while its transaction runs


@pytest.fixture
def locked(database: Database) -> Iterator[Database]:
    """``database`` (busy_timeout 1 s) while another session holds a lock on the table it uses."""
    database.busy_timeout = 1.0
    database.migrate()
    database.dispose()
    holder = db.database(database.url.render_as_string(hide_password=False))
    holder.configure("/")
    with holder.engine.connect() as connection:
        transaction = connection.begin()  # SQLite: BEGIN IMMEDIATE, the write lock
        if database.dialect == "postgresql":
            connection.exec_driver_sql(f"LOCK TABLE {listed_table.name} IN ACCESS EXCLUSIVE MODE")
        try:
            yield database
        finally:
            transaction.rollback()
    holder.dispose()


def call_in_thread(database: Database, function: object, flag: Flag | None) -> BaseException | None:
    """``database.call(function)`` in a thread with ``ABANDONED`` set to ``flag``; its exception."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        token = ABANDONED.set(flag)
        try:
            database.call(function)  # type: ignore[arg-type]
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)
        finally:
            ABANDONED.reset(token)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(GENEROUS)
    assert outcome, f"the call still waits for the lock after {GENEROUS:.0f} s: statement not bounded"
    return outcome[0]


def test_on_the_message_path_a_held_lock_fails_the_call_within_its_busy_timeout(locked: Database) -> None:
    """PostgreSQL: SET LOCAL statement_timeout/lock_timeout; SQLite: its busy timeout.  Without
    them a lock held elsewhere would hold the message (and its thread) until the lock went."""
    error = call_in_thread(locked, count, Flag())
    assert isinstance(error, DatabaseError), error


def test_a_transaction_whose_message_was_given_up_rolls_back(database: Database) -> None:
    flag = Flag()
    database.migrate()
    error = call_in_thread(database, lambda connection: add_row(connection, flag), flag)
    assert isinstance(error, DatabaseError)
    assert "gave up meanwhile" in str(error)
    assert database.call(count) == 0  # the MTA got 451 and will retry: no row left behind


def test_off_the_message_path_the_same_transaction_commits(database: Database) -> None:
    database.migrate()
    assert call_in_thread(database, add_row, None) is None
    assert database.call(count) == 1


# --------------------------------------------------------------------------- a lost connection (issue 15, build 6)


@pytest.fixture
def pg(postgres: str, tmp_path: Path) -> Iterator[Database]:
    """A fresh database of the private PostgreSQL (sessions are PostgreSQL's)."""
    database = db.database(fresh_database(postgres, "lost"))
    database.configure(str(tmp_path))
    yield database
    database.dispose()


def _admin(database: Database) -> Database:
    """A second Database on the same PostgreSQL database (another pool, another session)."""
    admin = db.database(database.url.render_as_string(hide_password=False))
    admin.configure("/")
    return admin


def terminate_others(database: Database) -> int:
    """``pg_terminate_backend`` every other session of ``database``'s PostgreSQL database; how many."""
    admin = _admin(database)
    try:
        return int(
            admin.call(
                lambda c: c.exec_driver_sql(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).scalar_one()
            )
        )
    finally:
        admin.dispose()


def test_a_pooled_connection_the_server_ended_is_replaced_on_the_next_use(pg: Database) -> None:
    """The server ended the idle pooled session (a restart, a failover, pg_terminate_backend):
    the next call works, on a new connection (the pool pings a connection before handing it out)."""
    pg.migrate()
    before = pg.call(lambda c: c.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
    assert terminate_others(pg) >= 1
    assert pg.call(count) == 0
    after = pg.call(lambda c: c.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
    assert after != before


def test_a_connection_lost_before_the_commit_is_tried_once_more(pg: Database) -> None:
    """The session ends in the middle of a transaction (after the pool's ping): the server kept
    nothing of it, so the whole transaction runs once more on a new connection, and commits once."""
    pg.migrate()
    tries: list[int] = []

    def add_then_lose_the_session(connection: Connection) -> None:
        tries.append(1)
        add_row(connection)
        if len(tries) == 1:
            connection.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")

    pg.call(add_then_lose_the_session)
    assert len(tries) == 2
    assert pg.call(count) == 1


def test_a_connection_lost_twice_is_a_database_error(pg: Database) -> None:
    pg.migrate()
    tries: list[int] = []

    def always_lose_the_session(connection: Connection) -> None:
        tries.append(1)
        add_row(connection)
        connection.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")

    with pytest.raises(DatabaseError):
        pg.call(always_lose_the_session)
    assert len(tries) == 2  # once more, not forever
    assert pg.call(count) == 0


def test_a_lost_connection_of_a_message_given_up_is_not_tried_again(pg: Database) -> None:
    pg.migrate()
    flag = Flag()
    tries: list[int] = []

    def lose_the_session(connection: Connection) -> None:
        tries.append(1)
        flag.set()  # the message's deadline passed meanwhile: the MTA has its 451
        connection.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")

    assert isinstance(call_in_thread(pg, lose_the_session, flag), DatabaseError)
    assert len(tries) == 1


def test_a_server_that_never_answers_the_connect_fails_within_a_bound() -> None:
    """A listening socket that never speaks (a hung or unreachable server): connect_timeout ends
    the call (busy_timeout 1 s; libpq's floor is 2 s), so a message's database work cannot hang."""
    pytest.importorskip("psycopg")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        database = db.database(f"postgresql+psycopg://nobody@127.0.0.1:{port}/nothing", busy_timeout=1)
        database.configure("/")
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                database.migrate()
                outcome.append(None)
            except BaseException as error:
                outcome.append(error)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(GENEROUS)
        assert outcome, f"connecting to a silent server still waits after {GENEROUS:.0f} s"
        assert isinstance(outcome[0], DatabaseError)
        database.dispose()


def test_the_url_overrides_the_connect_bounds() -> None:
    pytest.importorskip("psycopg")
    database = db.database("postgresql+psycopg://u@h/d?connect_timeout=30&keepalives=0", busy_timeout=5)
    database.configure("/")
    args = database._connect_args()
    assert "connect_timeout" not in args
    assert "keepalives" not in args
    assert args["keepalives_idle"] == 10
    assert db.database("postgresql+psycopg://u@h/d", busy_timeout=5)._connect_args()["connect_timeout"] == 5
