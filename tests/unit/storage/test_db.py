"""mailsift.storage.db.Database.call on the message path (ABANDONED set): bounded waits and
no commit once the message was given up — on SQLite and on the private PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection

from mailsift.errors import DatabaseError
from mailsift.storage import db
from mailsift.storage.db import ABANDONED, Database, Flag
from mailsift.storage.schema import listed_table

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
