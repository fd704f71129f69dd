"""The cluster on one machine (issue 15, build 7; harness in tests/helpers/cluster.py).

Three ``mailsift serve`` nodes ``a``, ``b``, ``c`` (real processes, each with its own STATE_DIR and
sink, nothing on disk shared), one private PostgreSQL holding everything (``QUARANTINE_STORE =
'database'``), pools of two clamd and two spamd.  The daemons and nodes start once for the module;
a test that kills or stops something gets it back at its end (:meth:`Cluster.heal`).

* a counted load over the three nodes with one node SIGKILLed, one clamd and one spamd stopped
  (and PostgreSQL restarted) mid-load: every message accounted for, none lost, none doubled except
  where the killed node may have passed a message on before its 250, no 5xx;
* a message quarantined on ``a`` is viewed and released on ``b``, two simultaneous releases (from
  ``b`` and ``c``) send it once;
* ``mailsift report`` and ``mailsift quarantine expire`` run on all three nodes at once do their work once;
* a digest link made on ``a`` and a web session made on ``a`` work on ``b``.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import update

from mailsift.storage.schema import quarantine_table
from tests.helpers.clamd import CLAMD
from tests.helpers.cluster import (
    HOLD_ME,
    Cluster,
    ClusterClient,
    account,
    at_once,
    cluster_message,
    expected_category,
    quarantine_rows,
    running_cluster,
    send_to,
    sink_ids,
    web_login,
)
from tests.helpers.faults import background, pg_ctl
from tests.helpers.postgres import PostgresInstance
from tests.helpers.spamd import SPAMD
from tests.helpers.webq import page_token

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]
"""Each test within 4 minutes (the first one starts the daemons and nodes); the tier takes about
3 minutes on 2 cores, 5 at most."""

LOAD = 180
"""Messages per load: 18 with EICAR, 9 with GTUBE, 7 held, the rest clean."""
CONCURRENCY = 6
DAY = 86400.0
LINK = re.compile(r"http://127\.0\.0\.1:\d+(/link/release/[^\s\"<>]+)")


@pytest.fixture(scope="module")
def running() -> Iterator[Cluster]:
    reason = PostgresInstance.available()
    if not reason and not (os.access(CLAMD, os.X_OK) and os.path.exists(SPAMD)):
        reason = "clamd and spamd are needed (scripts/setup.sh --test installs them)"
    if reason:
        pytest.skip(reason)
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def cluster(running: Cluster) -> Iterator[Cluster]:
    running.heal()
    yield running
    running.heal()


def digests(cluster: Cluster) -> Counter[str]:
    """Recipients of the digests in the sinks (``X-Mailsift-Notification: digest``)."""
    found: Counter[str] = Counter()
    for sink in cluster.sinks:
        for received in list(sink.messages):
            if b"\r\nX-Mailsift-Notification: digest\r\n" in received.data.split(b"\r\n\r\n", 1)[0]:
                found.update(received.recipients)
    return found


def entry_of(cluster: Cluster, mid: str) -> tuple[str, str, str]:
    (entry,) = quarantine_rows(cluster.database)[mid]
    return entry


# ---------------------------------------------------------------------------------------- a) the counted load


def test_accounting_finds_a_lost_and_a_doubled_message(cluster: Cluster) -> None:
    """Not a case: the accounting itself can fail (a message taken out of a sink is lost, one
    copied in is a duplicate), so the load tests' "none lost, none doubled" can fail too."""
    client = ClusterClient(port=cluster.nodes[0].port, case="self", retries=2, ports=[n.port for n in cluster.nodes])
    categories: dict[str, str] = {}
    for number in (1, 2, 4, 7):  # clean messages, one per node and one more
        mid, data = cluster_message("self", number)
        categories[mid] = expected_category(number)
        assert client.send(mid, data) == 250
    assert account(client, cluster, categories).lost == []
    lost, doubled = list(categories)[:2]
    for sink in cluster.sinks:
        for received in list(sink.messages):
            if lost in received.data.decode(errors="replace"):
                sink.messages.remove(received)
            if doubled in received.data.decode(errors="replace"):
                sink.messages.append(received)
    accounting = account(client, cluster, categories, settle=1)
    assert accounting.lost == [lost]
    assert accounting.duplicates == [doubled]


@pytest.mark.parametrize("postgres_restart", [False, True], ids=["node-and-scanners", "and-postgres-restart"])
def test_counted_load_survives_a_killed_node_and_stopped_daemons(cluster: Cluster, postgres_restart: bool) -> None:
    """LOAD messages from CONCURRENCY MTA threads, spread over a, b, c; at a quarter node ``a`` is
    SIGKILLed, at 40% one clamd and one spamd are stopped, at 55% PostgreSQL is restarted (stopped,
    3 s, started).  A 4xx or no answer is retried on the next node (as an MTA with several MX)."""
    a = cluster.nodes[0]
    client = ClusterClient(
        port=a.port, case="load", retries=10, retry_delay=1.0, timeout=120, ports=[n.port for n in cluster.nodes]
    )
    categories: dict[str, str] = {}
    events: list[str] = []

    def faults(stop: threading.Event) -> None:
        def reach(share: float) -> bool:
            while len(client.replies) < LOAD * share:
                if stop.wait(0.05):
                    return False
            return True

        if not reach(0.25):
            return
        a.crash()
        events.append("node a killed")
        if not reach(0.40):
            return
        cluster.daemons.clamds[0].stop()
        cluster.daemons.spamds[0].stop()
        events.append("clamd 1 and spamd 1 stopped")
        if postgres_restart and reach(0.55):
            pg_ctl(cluster.daemons.postgres, "stop")
            stop.wait(3)
            pg_ctl(cluster.daemons.postgres, "start")
            events.append("postgres restarted")

    def one(number: int) -> None:
        mid, data = cluster_message("load", number)
        categories[mid] = expected_category(number)
        client.send(mid, data)

    try:
        with background(faults):
            threads = [
                threading.Thread(target=lambda k=k: [one(n) for n in range(k, LOAD, CONCURRENCY)])
                for k in range(CONCURRENCY)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(280)
        client.retry_refused()  # the MTA's later retry of anything still deferred
        accounting = account(client, cluster, categories, crashed_port=a.port)
    finally:
        if cluster.daemons.postgres.where and not os.path.exists(
            f"{cluster.daemons.postgres.where}/data/postmaster.pid"
        ):
            pg_ctl(cluster.daemons.postgres, "start")
    summary = {**accounting.summary(), "events": events}
    print(f"cluster load: {summary}")  # the figures, shown with -s or on failure
    assert events[:2] == ["node a killed", "clamd 1 and spamd 1 stopped"], summary
    assert not postgres_restart or events[2:] == ["postgres restarted"], summary
    assert accounting.sent == LOAD, summary
    assert accounting.lost == [], summary
    assert accounting.refused == 0, summary  # every message got its 250 in the end
    assert accounting.refused_5xx == 0, summary
    assert accounting.duplicates == [], summary
    assert len(accounting.crash_duplicates) <= CONCURRENCY, summary  # at most the killed node's messages in flight
    assert accounting.misplaced == [], summary  # every EICAR held as virus, GTUBE as spam, the rest delivered
    assert accounting.quarantined == sum(place != "delivered" for place in categories.values()), summary
    assert accounting.tempfailed > 0, summary  # the faults were seen


# ---------------------------------------------------------------------------------------- b) release across nodes


def test_quarantined_on_a_viewed_and_released_on_b_once(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    mid = send_to(a, "release", f"hold {HOLD_ME}")
    entry_id, category, state = entry_of(cluster, mid)
    assert (category, state) == ("held", "held")
    with web_login(b) as on_b, web_login(c) as on_c:
        page = on_b.get(f"/q/{entry_id}")
        assert page.status_code == 200, page.text[:2000]
        assert mid in page.text  # the subject
        raw = on_b.get(f"/q/{entry_id}/raw")
        assert raw.status_code == 200
        assert f"Message-ID: <{mid}>".encode() in raw.content
        tokens = [page_token(client.get(f"/q/{entry_id}").text) for client in (on_b, on_c)]
        answers = at_once(
            *[
                lambda client=client, token=token: client.post(
                    f"/q/{entry_id}/release", data={"csrf_token": token, "confirm": "yes"}, follow_redirects=True
                )
                for client, token in zip((on_b, on_c), tokens, strict=True)
            ]
        )
        assert [r.status_code for r in answers] == [200, 200], [r.text[:500] for r in answers]
        texts = " | ".join(r.text for r in answers)
        assert sink_ids(cluster.sinks)[mid] == 1, (texts[-3000:], b.log_text()[-2000:], c.log_text()[-2000:])
        assert "Released to" in texts
        assert "not sent twice" in texts or "released already" in texts
    entry_id, category, state = entry_of(cluster, mid)
    assert state == "released"
    again = c.cli("quarantine", "release", entry_id)  # a third try, from the command line of c
    assert again.returncode == 1, again.stdout + again.stderr
    assert "released already" in again.stdout + again.stderr
    assert sink_ids(cluster.sinks)[mid] == 1


# ---------------------------------------------------------------------------------------- c) once per cluster


def test_report_on_three_nodes_at_once_sends_each_digest_once(cluster: Cluster) -> None:
    recipients = [f"report-{name}@example.test" for name in "abc"]
    for node, recipient in zip(cluster.nodes, recipients, strict=True):
        send_to(node, "report", f"hold {HOLD_ME}", recipients=(recipient,))
    before = digests(cluster)
    runs = at_once(
        *[lambda node=node: node.cli("report", "--since", "24h", "--url", node.url) for node in cluster.nodes]
    )
    outputs = [r.stdout + r.stderr for r in runs]
    assert [r.returncode for r in runs] == [0, 0, 0], outputs
    assert sum("report(s) sent" in text for text in outputs) == 1, outputs
    assert sum("already done by " in text for text in outputs) == 2, outputs
    sent = digests(cluster) - before
    assert all(sent[r] == 1 for r in recipients), sent
    assert set(sent.values()) == {1}, sent  # nobody got two


def test_expire_on_three_nodes_at_once_deletes_once(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    mids = [send_to(node, "expire", f"hold {HOLD_ME}") for node in (a, b, c)]
    ids = [entry_of(cluster, mid)[0] for mid in mids]
    old = ids[:2]

    def age(connection: object) -> None:
        statement = update(quarantine_table).where(quarantine_table.c.id.in_(old))
        connection.execute(statement.values(created=quarantine_table.c.created - 40 * DAY))  # type: ignore[attr-defined]

    cluster.database.call(age)
    runs = at_once(
        *[lambda node=node: node.cli("quarantine", "expire", "--older-than", "30d") for node in cluster.nodes]
    )
    outputs = [r.stdout + r.stderr for r in runs]
    assert [r.returncode for r in runs] == [0, 0, 0], outputs
    assert sum("expired 2 message(s)" in text for text in outputs) == 1, outputs
    assert sum("already done by " in text for text in outputs) == 2, outputs
    rows = quarantine_rows(cluster.database)
    assert mids[0] not in rows
    assert mids[1] not in rows
    assert [entry for entry, _, _ in rows[mids[2]]] == [ids[2]]


# ---------------------------------------------------------------------------------------- d) shared secrets


def test_digest_link_made_on_a_works_on_b(cluster: Cluster) -> None:
    a, b, _ = cluster.nodes
    recipient = f"dora.{time.monotonic_ns()}@example.test"
    send_to(a, "link", f"hold {HOLD_ME}", recipients=(recipient,))
    made = a.cli("report", "--since", "24h", "--url", a.url, "--dry-run")  # made on a, nothing sent
    assert made.returncode == 0, made.stderr
    report = made.stdout[made.stdout.index(recipient) :]
    found = LINK.search(report)
    assert found, made.stdout[-3000:]
    path = found.group(1)
    page = httpx.get(f"{b.url}{path}", timeout=60)
    assert page.status_code == 200, page.text[:2000]
    assert 'name="csrf_token"' in page.text  # the confirmation form: the signature holds on b
    forged = path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")
    assert httpx.get(f"{b.url}{forged}", timeout=60).status_code == 400  # a link b cannot verify is refused


def test_digest_link_released_on_b_and_c_at_once_sends_once(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    recipient = f"erin.{time.monotonic_ns()}@example.test"
    mid = send_to(a, "linkrelease", f"hold {HOLD_ME}", recipients=(recipient,))
    made = a.cli("report", "--since", "24h", "--url", a.url, "--dry-run")
    found = LINK.search(made.stdout[made.stdout.index(recipient) :])
    assert found, made.stdout[-3000:]
    path = found.group(1)
    with httpx.Client(base_url=b.url, timeout=60) as on_b, httpx.Client(base_url=c.url, timeout=60) as on_c:
        tokens = [page_token(client.get(path).text) for client in (on_b, on_c)]
        answers = at_once(
            *[
                lambda client=client, token=token: client.post(path, data={"csrf_token": token}, follow_redirects=True)
                for client, token in zip((on_b, on_c), tokens, strict=True)
            ]
        )
    assert all(r.status_code in (200, 409) for r in answers), [(r.status_code, r.text[:500]) for r in answers]
    assert sink_ids(cluster.sinks)[mid] == 1, ([r.text[-1500:] for r in answers], b.log_text()[-2000:])
    assert entry_of(cluster, mid)[2] == "released"


def test_web_session_made_on_a_works_on_b(cluster: Cluster) -> None:
    a, b, _ = cluster.nodes
    with web_login(a) as browser:
        page = browser.get(f"{b.url}/q/")  # the same cookie, another node
        assert page.status_code == 200, page.text[:2000]
        assert "/logout" in page.text
    stranger = httpx.get(f"{b.url}/q/", timeout=60)  # without the session: the login page
    assert stranger.status_code in (302, 303, 307)
    assert "/login" in stranger.headers["location"]
