"""A cluster on one machine (issue 15, build 7): three ``mailsift serve`` nodes on one private
PostgreSQL, the quarantine in the database, pools of two clamd and two spamd.

* :class:`Daemons` starts the shared daemons once (PostgreSQL from tests/helpers/postgres.py,
  clamd from tests/helpers/clamd.py with its own EICAR signatures, spamd from
  tests/helpers/spamd.py), each in a directory of its own under /tmp.
* :class:`Node` is one gateway: ``mailsift serve -w 1`` (a real process, as an admin runs it)
  with its own ``STATE_DIR``, ``NODE`` name, smtpd and webq ports and its own next hop (a
  :class:`~mailsift.testing.RecordingServer`, the node's sink); nothing on disk is shared.
  :meth:`Node.crash` SIGKILLs the supervisor and every process under it (a machine gone).
* :class:`ClusterClient` is an MTA in front of the cluster: each message goes to the next node
  in turn; a ``4xx`` or no answer is tried again on the following node.
* :func:`account` finds every message again: in the sinks (by ``Message-ID``) and in the
  database quarantine (rows whose stored message carries the ``Message-ID``).

Nothing here measures time: waits are bounded loops.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from mailsift.storage import db
from mailsift.storage.schema import quarantine_chunk_table, quarantine_table
from mailsift.testing import RecordingServer, free_port
from tests.helpers.clamd import ClamdInstance
from tests.helpers.faults import (
    MAILSIFT,
    FaultClient,
    Serve,
    downstream_ids,
    kill_tree,
    pg_ctl,
    settled,
    stored_message_ids,
)
from tests.helpers.postgres import PostgresInstance, fresh_database
from tests.helpers.samples import EICAR_TEXT
from tests.helpers.spamd import SpamdInstance
from tests.helpers.webq import page_token

HOLD_ME = "QUARANTINE-ME"
"""A body with this is quarantined (category ``held``) by every node."""

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*" + "GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
"""SpamAssassin's test string (split so that this file is not itself spam)."""

ADMIN, ADMIN_PASSWORD = "admin", "cluster-Admin-Secret-1"

NODE_CONFIG = """\
from mailsift import *
from mailsift.web.service import webq

STATE_DIR = {state!r}
USER = None  # the suite's servers keep the current user
NODE = {name!r}
DATABASE = db.database({url!r})
QUARANTINE_STORE = "database"
SMTP_SERVER = smtp_relay("127.0.0.1", {sink}, timeout=20)
SCANNERS = [
    quarantine("virus", clamd({clamd!r}, timeout=60)),
    quarantine("spam", spamassassind({spamd!r}, timeout=90)),
    quarantine("held", regexp_scan([("Held", r"{hold}")])),
]
SRV = [smtpd(SCANNERS, "127.0.0.1", {smtp}), webq("127.0.0.1", {web})]
"""


class Daemons:
    """The shared daemons: one PostgreSQL (a fresh database ``url``), two clamd, two spamd."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="msf-cluster-", dir="/tmp"))
        self.root.chmod(0o755)  # spamd's children run as nobody
        self.postgres = PostgresInstance()
        self.clamds = [ClamdInstance(self.root / f"clamd{n}") for n in (1, 2)]
        self.spamds = [SpamdInstance(self.root / f"spamd{n}", children=2) for n in (1, 2)]
        self.url = ""

    def start(self) -> Daemons:
        self.postgres.start()
        self.url = fresh_database(self.postgres.base_url, "cluster")
        with ThreadPoolExecutor(4) as pool:  # spamd loads its rules for seconds: all four at once
            list(pool.map(lambda daemon: daemon.start(), [*self.spamds, *self.clamds]))
        return self

    @property
    def clamd_addresses(self) -> list[Any]:
        """The pool: one clamd by its unix socket, the other by TCP."""
        return [str(self.clamds[0].socket_path), self.clamds[1].tcp_address]

    @property
    def spamd_addresses(self) -> list[tuple[str, int]]:
        return [spamd.address for spamd in self.spamds]

    def revive(self) -> None:
        """Start again whatever a test stopped (the database, a clamd, a spamd)."""
        if not os.path.exists(f"{self.postgres.where}/data/postmaster.pid"):
            pg_ctl(self.postgres, "start")
        for clamd in self.clamds:
            if clamd.pid is None:
                clamd.start()
        for spamd in self.spamds:
            if spamd.process is None or spamd.process.poll() is not None:
                spamd.start()

    def stop(self) -> None:
        for daemon in [*self.clamds, *self.spamds]:
            with contextlib.suppress(Exception):
                daemon.stop()
        self.postgres.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class Node(Serve):
    """One gateway node: ``mailsift serve -w 1`` serving smtpd (``port``) and webq (``web_port``),
    its own ``STATE_DIR`` and sink (``sink``: its next hop)."""

    def __init__(self, root: Path, name: str, daemons: Daemons) -> None:
        self.name = name
        self.daemons = daemons
        self.web_port = free_port()
        self.sink = RecordingServer().start()
        super().__init__(root / name, self.sink.port)

    def write(self, **config: Any) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            NODE_CONFIG.format(
                state=str(self.state),
                name=self.name,
                url=self.daemons.url,
                sink=self.next_hop,
                clamd=self.daemons.clamd_addresses,
                spamd=self.daemons.spamd_addresses,
                hold=HOLD_ME,
                smtp=self.port,
                web=self.web_port,
            )
        )

    def start(self, workers: int = 1, timeout: float = 90) -> Node:
        super().start(workers, timeout)
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/login", timeout=5).status_code == 200:
                    return self
            assert time.monotonic() < deadline, f"node {self.name}: webq did not answer:\n{self.log_text()[-4000:]}"
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def crash(self) -> None:
        """SIGKILL the supervisor and every process under it, at once (the node's machine is gone)."""
        assert self.process is not None
        kill_tree(self.process)

    def cli(self, *args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``mailsift ARGS -c <this node's config>``, as an admin runs it on the node."""
        return subprocess.run(
            [*MAILSIFT, *args, "-c", str(self.config)],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        self.sink.stop()


class Cluster:
    """The daemons and three nodes ``a``, ``b``, ``c``."""

    def __init__(self, daemons: Daemons) -> None:
        self.daemons = daemons
        self.nodes = [Node(daemons.root, name, daemons) for name in ("a", "b", "c")]
        self.database = db.database(daemons.url)
        self.database.configure("/")

    def start(self) -> Cluster:
        """Start the nodes together (they upgrade the schema once, under the lock); add the admin."""
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda node: node.start(), self.nodes))
        added = self.nodes[0].cli("user", "add", ADMIN, "--admin", "--password-stdin", stdin=ADMIN_PASSWORD + "\n")
        assert added.returncode == 0, added.stdout + added.stderr
        return self

    def heal(self) -> None:
        """Everything up again after a test's faults: the daemons, then every node that died."""
        self.daemons.revive()
        for node in self.nodes:
            if not node.alive():
                node.start()

    @property
    def sinks(self) -> list[RecordingServer]:
        return [node.sink for node in self.nodes]

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        self.database.dispose()


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    """The daemons and three started nodes; all stopped afterwards (by pid)."""
    daemons = Daemons()
    cluster: Cluster | None = None
    try:
        daemons.start()
        cluster = Cluster(daemons).start()
        yield cluster
    finally:
        if cluster is not None:
            cluster.close()
        daemons.stop()


# ---------------------------------------------------------------------------------------- the MTA


_turns = itertools.count()


@dataclass
class ClusterClient(FaultClient):
    """An MTA in front of the cluster: message n goes to node n mod 3 first; a ``4xx`` or no answer
    is retried on the next node (``retries`` times, ``retry_delay`` apart).  ``tried`` records the
    port of every attempt, beside ``replies``."""

    ports: list[int] = field(default_factory=list)
    tried: dict[str, list[int]] = field(default_factory=dict)

    def _connection(self) -> Any:
        self.port = self._local.port
        return super()._connection()

    def attempt(self, mid: str, data: bytes) -> int | None:
        with self._lock:
            self.tried.setdefault(mid, []).append(self._local.port)
        return super().attempt(mid, data)

    def _aim(self, attempt: int) -> None:
        if attempt == 0:
            self._local.first = next(_turns)
        self._local.port = self.ports[(self._local.first + attempt) % len(self.ports)]


def cluster_message(case: str, number: int) -> tuple[str, bytes]:
    """Message ``number`` of a load: every 10th carries EICAR (virus), every 20th (offset 5) GTUBE
    (spam), every 25th (offset 3) the held word; the rest is clean.  The Subject carries the id."""
    mid = f"{case}.{number}.{os.getpid()}.{time.monotonic_ns()}@cluster.test"
    if number % 10 == 0:
        body = f"attached\r\n{EICAR_TEXT}"
    elif number % 20 == 5:
        body = f"buy now\r\n{GTUBE}"
    elif number % 25 == 3:
        body = f"please hold {HOLD_ME}"
    else:
        body = f"message {number}: nothing to see here"
    data = (
        f"From: a@example.test\r\nTo: b@example.test\r\nSubject: {mid}\r\nMessage-ID: <{mid}>\r\n\r\n{body}\r\n"
    ).encode()
    return mid, data


def expected_category(number: int) -> str:
    """Where :func:`cluster_message` ``number`` belongs: ``virus``, ``spam``, ``held`` or ``delivered``."""
    if number % 10 == 0:
        return "virus"
    if number % 20 == 5:
        return "spam"
    if number % 25 == 3:
        return "held"
    return "delivered"


# ---------------------------------------------------------------------------------------- accounting


def sink_ids(sinks: Iterable[RecordingServer]) -> Counter[str]:
    return sum((downstream_ids(sink) for sink in sinks), Counter())


def quarantine_rows(database: db.Database) -> dict[str, list[tuple[str, str, str]]]:
    """Message-ID -> ``(entry id, category, state)`` of every database quarantine entry holding it
    (read from the stored message's chunks)."""

    def read(connection: Any) -> list[Any]:
        columns = (quarantine_table.c.id, quarantine_table.c.category, quarantine_table.c.state)
        query = select(*columns, quarantine_chunk_table.c.data).join(
            quarantine_chunk_table, quarantine_chunk_table.c.quarantine_id == quarantine_table.c.id
        )
        return list(connection.execute(query))

    holding: dict[str, set[tuple[str, str, str]]] = {}
    for entry_id, category, state, data in database.call(read):  # the head and the message, chunk by chunk
        for mid in stored_message_ids(bytes(data)):
            holding.setdefault(mid, set()).add((entry_id, category, state))
    return {mid: sorted(entries) for mid, entries in holding.items()}


@dataclass
class Accounting:
    sent: int = 0
    accepted: int = 0
    refused: int = 0
    refused_5xx: int = 0
    tempfailed: int = 0
    """Messages that got a 4xx or no answer at least once."""
    delivered: int = 0
    quarantined: int = 0
    lost: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    """Messages found more than once (or found although refused) that no crash explains."""
    crash_duplicates: list[str] = field(default_factory=list)
    """Found twice, with an attempt left unanswered by the node that was killed (SMTP's own duplicate)."""
    misplaced: list[str] = field(default_factory=list)
    """Found, but not where their content sends them (a virus delivered, a clean message held)."""
    codes: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        for name in ("lost", "duplicates", "crash_duplicates", "misplaced"):
            data[name] = data[name][:10]
        return data


def account(
    client: ClusterClient,
    cluster: Cluster,
    categories: dict[str, str],
    *,
    crashed_port: int | None = None,
    settle: float = 60,
) -> Accounting:
    """Every message of ``client`` found in the sinks or the database quarantine.

    ``categories``: Message-ID -> where it belongs (:func:`expected_category`).  A message that got
    ``250`` must be found exactly once; a refused one never.  A second copy is allowed (and listed in
    ``crash_duplicates``) only where an attempt on ``crashed_port`` got no answer: the node may have
    passed it on and died before its ``250``.
    """
    ids = list(client.replies)
    downstream, rows = settled(
        client,
        ids,
        lambda: (sink_ids(cluster.sinks), quarantine_rows(cluster.database)),
        lambda found, m: found[0][m] or found[1].get(m),
        settle,
    )
    result = Accounting(sent=len(ids))
    codes: Counter[str] = Counter()
    for mid in ids:
        replies = client.replies[mid]
        codes.update("none" if c is None else str(c) for c in replies)
        result.tempfailed += any(c is None or 400 <= c < 500 for c in replies)
        final = client.final(mid)
        delivered, held = downstream[mid], rows.get(mid, [])
        found = delivered + len(held)
        crashed = crashed_port is not None and any(
            port == crashed_port and code is None
            for port, code in zip(client.tried.get(mid, []), replies, strict=False)
        )
        if final is not None and 200 <= final < 300:
            result.accepted += 1
            if found == 0:
                result.lost.append(mid)
                continue
            if found > 1:
                (result.crash_duplicates if crashed else result.duplicates).append(mid)
            result.delivered += delivered > 0
            result.quarantined += bool(held)
            place = categories[mid]
            if (place == "delivered") != (delivered > 0) or (held and {c for _, c, _ in held} != {place}):
                result.misplaced.append(mid)
        else:
            result.refused += 1
            result.refused_5xx += final is not None and final >= 500
            if found:
                (result.crash_duplicates if crashed else result.duplicates).append(mid)
    result.codes = dict(sorted(codes.items()))
    return result


# ---------------------------------------------------------------------------------------- the web quarantine


@contextlib.contextmanager
def web_login(node: Node, login: str = ADMIN, password: str = ADMIN_PASSWORD) -> Iterator[httpx.Client]:
    """A browser-like client logged in on ``node``'s web quarantine (its cookie jar holds the session)."""
    with httpx.Client(base_url=node.url, timeout=60) as client:
        token = page_token(client.get("/login").text)
        form = {"login": login, "password": password, "csrf_token": token, "next": "/q/"}
        response = client.post("/login", data=form)
        assert response.status_code == 303, response.text
        yield client


def web_release(client: httpx.Client, entry_id: str) -> httpx.Response:
    """The release button and its confirmation (``confirm=yes``); the response after the redirect."""
    token = page_token(client.get(f"/q/{entry_id}").text)
    return client.post(f"/q/{entry_id}/release", data={"csrf_token": token, "confirm": "yes"}, follow_redirects=True)


def at_once(*actions: Any) -> list[Any]:
    """Run the callables together, each in its own thread, started by one barrier; their results."""
    barrier = threading.Barrier(len(actions))

    def run(action: Any) -> Any:
        barrier.wait(30)
        return action()

    with ThreadPoolExecutor(len(actions)) as pool:
        return list(pool.map(run, actions))


def send_to(node: Node, case: str, body: str, recipients: tuple[str, ...] = ("b@example.test",)) -> str:
    """One message to ``node`` (must get 250); its Message-ID."""
    mid = f"{case}.{os.getpid()}.{time.monotonic_ns()}@cluster.test"
    data = (
        f"From: eve@spam.example\r\nTo: {', '.join(recipients)}\r\nSubject: {mid}\r\n"
        f"Message-ID: <{mid}>\r\n\r\n{body}\r\n"
    ).encode()
    client = FaultClient(node.port, case, recipients=recipients)
    code = client.send(mid, data)
    assert code == 250, (code, node.log_text()[-3000:])
    return mid
