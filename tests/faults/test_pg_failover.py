"""PostgreSQL failover (issue 15, build 6): a real ``mailsift serve`` whose quarantine store,
greylisting (a Postfix policy service) and SQL log are on a private PostgreSQL.

While PostgreSQL is down, a message that must be quarantined gets ``451`` (its copy cannot be
committed), a clean message is delivered (``250``: nothing on its path needs the database; its
SQL log row is dropped with a warning), and the policy service answers its ``on_error``.  Once
PostgreSQL is back on the same port, the next messages work without restarting mailsift: no
stale pooled connection keeps failing.  Every message is accounted for: ``250`` and found
exactly once (downstream, or in the database's quarantine), or ``4xx``; none lost, none ``5xx``.

A session the server ends (``pg_terminate_backend``, as a failover manager or an administrator
does) is replaced on its next use: the first messages after it are ``250`` at their first try.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailsift.storage import db
from mailsift.testing import free_port
from tests.helpers.faults import (
    HOLD_ME,
    FaultClient,
    FaultyNextHop,
    Serve,
    config_text,
    downstream_ids,
    message,
    message_ids,
    pg_ctl,
    postgres_pids,
)
from tests.helpers.postgres import PostgresInstance, fresh_database
from tests.helpers.sockets import recv_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

POLICY_ON_ERROR = "DEFER_IF_PERMIT Policy service temporarily unavailable"


@pytest.fixture
def next_hop() -> Iterator[FaultyNextHop]:
    server = FaultyNextHop()
    with server:
        yield server


@pytest.fixture
def pg() -> Iterator[PostgresInstance]:
    reason = PostgresInstance.available()
    if reason:
        pytest.skip(reason)
    instance = PostgresInstance().start()
    try:
        yield instance
    finally:
        if not postgres_pids(instance):  # a test that failed while it was stopped
            with contextlib.suppress(Exception):
                pg_ctl(instance, "start")
        instance.stop()


class Gateway:
    """``mailsift serve``: smtpd with QUARANTINE_STORE='database', log_sql, and a policy service
    greylisting on the same PostgreSQL database."""

    def __init__(self, directory: Path, next_hop: int, url: str) -> None:
        self.url = url
        self.policy_port = free_port()
        self.serve = Serve(directory, next_hop)
        extra = f"DATABASE = db.database({url!r})\nQUARANTINE_STORE = 'database'\nHOOKS = [log_sql()]\n"
        policy = f"greylist(min=0, auto_whitelist=0)], DATABASE, '127.0.0.1', {self.policy_port})"
        self.serve.config.write_text(
            config_text(self.serve.state, next_hop, self.serve.port, extra=extra)
            + f"SRV.append(smtpd_policy([{policy})\n"
        )
        self.database = db.database(url)
        self.database.configure(str(directory))

    def policy(self, sender: str, recipient: str = "user@example.test") -> str:
        """One Postfix policy request; the action line's value."""
        request = (
            "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.7\n"
            f"sender={sender}\nrecipient={recipient}\n\n"
        )
        with socket.create_connection(("127.0.0.1", self.policy_port), timeout=60) as sock:
            sock.sendall(request.encode())
            answer = recv_until(sock, b"\n\n")
        return answer.decode().strip().removeprefix("action=")

    def quarantined_ids(self) -> Counter[str]:
        """Message-IDs of the messages held in the database (the message's first chunk)."""
        rows = self.database.call(
            lambda c: c.exec_driver_sql("SELECT data FROM quarantine_chunk WHERE seq = 1").scalars().all()
        )
        found: Counter[str] = Counter()
        for data in rows:
            found.update(set(message_ids(bytes(data))))
        return found

    def logged_ids(self) -> set[str]:
        """Message-IDs in the SQL log."""
        rows = self.database.call(lambda c: c.exec_driver_sql("SELECT message_id FROM maillog").scalars().all())
        return {str(row).strip("<>") for row in rows}


def accounted(client: FaultClient, gateway: Gateway, next_hop: FaultyNextHop) -> dict[str, Any]:
    """Every message of ``client``: accepted and found exactly once (downstream or quarantined
    in the database), or refused with ``4xx``; returns the figures, failing on a loss."""
    deadline = time.monotonic() + 30
    while True:  # a delivery may land a moment after its reply
        copies = downstream_ids(next_hop) + gateway.quarantined_ids()
        accepted = [m for m in client.replies if (client.final(m) or 0) // 100 == 2]
        if all(copies[m] for m in accepted) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    finals = Counter(str(client.final(m)) for m in client.replies)
    figures = {
        "sent": len(client.replies),
        "finals": dict(finals),
        "lost": [m for m in accepted if copies[m] == 0],
        "duplicates": [m for m in client.replies if copies[m] > (1 if m in accepted else 0)],
        "5xx": [m for m in client.replies if (client.final(m) or 0) >= 500],
        "unanswered": [m for m in client.replies if client.final(m) is None],
    }
    assert figures["lost"] == [], figures
    assert figures["duplicates"] == [], figures
    assert figures["5xx"] == [], figures
    assert figures["unanswered"] == [], figures
    return figures


def send(client: FaultClient, what: str, number: int) -> int | None:
    """One message, ``held`` (quarantined by the config's rule) or ``clean``; its reply code."""
    body = f"{what} {number} {HOLD_ME if what == 'held' else 'clean'}"
    return client.send(*message(client.case, number, body))


def test_postgres_stopped_and_started_again(tmp_path: Path, next_hop: FaultyNextHop, pg: PostgresInstance) -> None:
    gateway = Gateway(tmp_path, next_hop.port, fresh_database(pg.base_url, "failover"))
    with gateway.serve.start():
        client = FaultClient(gateway.serve.port, "pg-stop", retries=0, timeout=60)
        # Before: both workers have used the database (their pools hold connections).
        for n in range(6):
            assert send(client, "held" if n % 2 else "clean", n) == 250
        assert gateway.policy("before@example.org").startswith("DEFER_IF_PERMIT Greylisted")

        pg_ctl(pg, "stop")
        during = {n: send(client, "held" if n % 2 else "clean", n) for n in range(10, 16)}
        on_error = gateway.policy("during@example.org")
        pg_ctl(pg, "start")  # same port and data: a restart, as a failover manager's switch looks to a client

        after = {n: send(client, "held" if n % 2 else "clean", n) for n in range(20, 30)}
        greylisted = gateway.policy("after@example.org")
        passed = gateway.policy("after@example.org")
        figures = accounted(client, gateway, next_hop)
        logged = gateway.logged_ids()
        gateway.database.dispose()
        log = gateway.serve.log_text()

    held_during = [code for n, code in during.items() if n % 2]
    clean_during = [code for n, code in during.items() if not n % 2]
    assert all(code is not None and 400 <= code < 500 for code in held_during), (during, figures)
    assert clean_during == [250, 250, 250], (during, log[-3000:])
    assert on_error.startswith(POLICY_ON_ERROR), on_error
    # No stale connection keeps failing: every message after the restart passes at its first try.
    assert set(after.values()) == {250}, (after, log[-3000:])
    assert greylisted.startswith("DEFER_IF_PERMIT Greylisted"), greylisted
    assert not passed.startswith("DEFER"), passed
    assert figures["finals"] == {"250": 19, "451": 3}, figures
    # The SQL log: clean mail flowed while its rows could not be written (dropped, with a warning);
    # the messages after the restart are logged again.
    assert "log_sql: queue_id=" in log
    assert all(m in logged for m in list(client.replies)[-10:]), sorted(logged)


def test_sessions_ended_by_the_server_are_replaced(
    tmp_path: Path, next_hop: FaultyNextHop, pg: PostgresInstance
) -> None:
    """``pg_terminate_backend`` on every session of mailsift's database (a failover manager
    fencing the old primary, an administrator): the next messages are 250 at their first try."""
    url = fresh_database(pg.base_url, "terminated")
    gateway = Gateway(tmp_path, next_hop.port, url)
    with gateway.serve.start():
        client = FaultClient(gateway.serve.port, "pg-terminate", retries=0, timeout=60)
        for n in range(6):
            assert send(client, "held", n) == 250
        assert gateway.policy("before@example.org").startswith("DEFER_IF_PERMIT Greylisted")
        gateway.database.dispose()
        admin = db.database(pg.base_url % "postgres")
        admin.configure(str(tmp_path))
        name = url.rsplit("/", 1)[1]
        ended = admin.call(
            lambda c: c.exec_driver_sql(
                f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{name}'"
            ).scalar_one()
        )
        admin.dispose()
        assert ended >= 2  # both workers' pooled sessions, at least
        after = {n: send(client, "held", n) for n in range(10, 20)}
        policy = gateway.policy("before@example.org")
        figures = accounted(client, gateway, next_hop)
        gateway.database.dispose()
    assert set(after.values()) == {250}, (after, gateway.serve.log_text()[-3000:])
    assert not policy.startswith("DEFER_IF_PERMIT Policy"), policy
    assert figures["finals"] == {"250": 16}, figures
