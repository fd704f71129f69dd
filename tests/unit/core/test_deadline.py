"""The per-message deadline: where the time went, and database work that outlives its message."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from sqlalchemy import Connection, func, insert, select

from mailsift.core.deadline import MessageDeadline
from mailsift.message.mail import Envelope, Mail
from mailsift.storage import db
from mailsift.storage.schema import greylist_table


def mail() -> Mail:
    return Mail(Envelope("a@example.test", ["b@example.test"], queue_id="Q1"), b"Subject: x\r\n\r\nhello\r\n")


def test_a_transaction_still_running_at_the_deadline_rolls_back(tmp_path: Path) -> None:
    """A hung database answers after the message was answered 451: its row must not be committed."""
    database = db.sqlite(str(tmp_path / "m.db"))
    database.configure(str(tmp_path))
    gate, inside = threading.Event(), threading.Event()

    def slow_insert(connection: Connection) -> None:
        connection.execute(
            insert(greylist_table).values(
                network="n", sender="s", recipient="r", first_seen=0, last_seen=0, deferred=1, passed=0
            )
        )
        inside.set()
        gate.wait(10)

    def other_write(connection: Connection) -> None:
        # A write waits for SQLite's write lock: it runs only once the slow transaction ended.
        connection.execute(
            insert(greylist_table).values(
                network="other", sender="s", recipient="r", first_seen=0, last_seen=0, deferred=1, passed=0
            )
        )

    def rows(connection: Connection) -> int:
        query = select(func.count()).select_from(greylist_table).where(greylist_table.c.network == "n")
        return int(connection.execute(query).scalar_one())

    async def main() -> bool:
        message = mail()
        deadline = MessageDeadline(message, 0.3)
        try:
            async with deadline:
                await database.run(slow_insert)
        except TimeoutError:
            pass
        assert deadline.passed
        # The insert ran (or still runs) in its thread; on a loaded machine it may start late.
        assert await asyncio.to_thread(inside.wait, 30)
        gate.set()  # the database wakes up after the answer
        return True

    database.migrate()  # the schema exists before the clock starts
    assert asyncio.run(main())
    database.call(other_write)
    assert database.call(rows) == 0


def test_the_reason_names_the_stage_and_the_time_spent_there() -> None:
    async def main() -> str:
        deadline = MessageDeadline(mail(), 0.2)
        try:
            async with deadline:
                deadline.enter("quarantining")
                await asyncio.sleep(5)
        except TimeoutError:
            pass
        return deadline.tempfail()[1].note

    note = asyncio.run(main())
    assert note.startswith("message_timeout 0.2 s exceeded in quarantining: 0.")
    assert "(scanning 0.0 s)" in note


def test_once_delivery_starts_the_deadline_no_longer_applies() -> None:
    async def main() -> MessageDeadline:
        deadline = MessageDeadline(mail(), 0.2)
        async with deadline:
            deadline.hand_over()
            await asyncio.sleep(0.4)  # the next hop takes its time: its answer decides
        return deadline

    deadline = asyncio.run(main())
    assert not deadline.passed
    assert "passed during delivery" in deadline.note("")
