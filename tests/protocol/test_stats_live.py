"""Statistics from real mail: a real smtpd with the ``stats()`` hook, then the graphs and ``/metrics``.

Mail goes through a real smtpd (:class:`mailsift.testing.ServiceThread`) with
``stats(flush_interval=0.2)`` and ``log_sql()`` in ``HOOKS``: five clean
messages, two rejected by a named scanner, one quarantined, to two domains
(the ``stats_site`` fixture, tests/helpers/stats_site.py, imported by conftest.py).
The web app (``create_app`` with :func:`mailsift.web.stats_pages.routes`) is
served by uvicorn on a loopback port; the SVG graphs are parsed as XML and
their bars checked against what was sent (and the bytes against the
independent ``maillog`` rows); ``/metrics`` is parsed with prometheus_client's
own text parser.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from tests.helpers.stats_site import ADMIN, DOMAIN_ADMIN, ORDINARY, SENT, TOKEN, Site

SVG = "{http://www.w3.org/2000/svg}"


@contextlib.contextmanager
def logged_in(site: Site, login: str, password: str) -> Iterator[httpx.Client]:
    """An HTTP client with a session of ``login`` (through the login form, CSRF token included)."""
    with httpx.Client(base_url=site.url, timeout=20) as client:
        page = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token is not None
        answer = client.post("/login", data={"login": login, "password": password, "csrf_token": token.group(1)})
        assert answer.status_code == 303, answer.text
        yield client


def graph(client: httpx.Client, **params: str) -> ET.Element:
    answer = client.get("/stats/graph.svg", params=params)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("image/svg+xml")
    return ET.fromstring(answer.content)


def bars(svg: ET.Element) -> dict[str, float]:
    """Sum of the bars' values per series."""
    sums: dict[str, float] = {}
    for rect in svg.iter(f"{SVG}rect"):
        if rect.get("class") == "bar":
            sums[rect.get("data-series", "")] = sums.get(rect.get("data-series", ""), 0.0) + float(
                rect.get("data-value", "0")
            )
    return sums


def buckets(svg: ET.Element) -> list[ET.Element]:
    return [g for g in svg.iter(f"{SVG}g") if g.get("class") == "bucket"]


def maillog_bytes(site: Site, domain: str = "") -> int:
    query = "SELECT coalesce(sum(size), 0) FROM maillog" + (" WHERE recipient LIKE :pattern" if domain else "")
    return int(
        site.config.settings.database.call(lambda c: c.execute(text(query), {"pattern": f"%@{domain}"}).scalar())
    )


def test_graph_bars_show_the_mail_sent(stats_site: Site) -> None:
    with logged_in(stats_site, *ADMIN) as admin:
        hour = graph(admin, range="hour", by="verdict")
        assert len(buckets(hour)) == 12  # five-minute bars over the last hour
        assert bars(hour) == {"clean": 5.0, "rejected": 2.0, "quarantined": 1.0}
        assert sum(float(g.get("data-total", "0")) for g in buckets(hour)) == len(SENT)
        starts = [int(g.get("data-start", "0")) for g in buckets(hour)]
        assert [b - a for a, b in itertools.pairwise(starts)] == [300] * 11
        assert starts[0] <= time.time() - 11 * 300  # the graph ends with the current interval
        # Heights are drawn to one scale: height / value is the same for every bar.
        ratios = [
            float(r.get("height", "0")) / float(r.get("data-value", "1"))
            for r in hour.iter(f"{SVG}rect")
            if r.get("class") == "bar"
        ]
        assert ratios
        assert max(ratios) - min(ratios) < 0.1  # heights are written with one decimal
        for range_name, count in (("day", 24), ("week", 28), ("month", 30)):
            longer = graph(admin, range=range_name)
            assert len(buckets(longer)) == count
            assert bars(longer) == {"clean": 5.0, "rejected": 2.0, "quarantined": 1.0}
        by_domain = graph(admin, range="hour", by="domain")
        assert bars(by_domain) == {"b.example": 5.0, "c.example": 3.0}
        by_scanner = bars(graph(admin, range="day", by="scanner"))
        assert by_scanner.pop("") == 5.0  # nothing detected: no deciding scanner
        assert by_scanner == {"regexp_scan": 3.0}  # both rules are regexp_scan
        size = graph(admin, range="day", metric="bytes")
        assert sum(bars(size).values()) == maillog_bytes(stats_site)  # two hooks, one truth
        page = admin.get("/stats", params={"range": "hour"})
        assert page.status_code == 200
        assert page.text.count('class="stats-graph"') >= 4
        assert re.search(r'<tr data-key="rejected"><td>rejected</td><td>2</td>', page.text)


def test_domain_admin_sees_only_its_domain(stats_site: Site) -> None:
    with logged_in(stats_site, *DOMAIN_ADMIN) as dora:
        mine = graph(dora, range="hour")
        assert bars(mine) == {"clean": 2.0, "quarantined": 1.0}
        assert bars(graph(dora, range="hour", by="domain")) == {"c.example": 3.0}
        assert sum(bars(graph(dora, range="day", metric="bytes")).values()) == maillog_bytes(stats_site, "c.example")
        refused = dora.get("/stats/graph.svg", params={"domain": "b.example"})
        assert refused.status_code == 403
        page = dora.get("/stats", params={"domain": "b.example"})
        assert page.status_code == 403
        assert "rejected" not in page.text
        assert dora.get("/metrics").status_code == 403  # not an admin, not the monitoring host
    with logged_in(stats_site, *ORDINARY) as olga:
        assert olga.get("/stats").status_code == 403
        assert olga.get("/stats/graph.svg").status_code == 403
    with httpx.Client(base_url=stats_site.url, timeout=20) as anonymous:
        answer = anonymous.get("/stats")
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/login?next=")
    with logged_in(stats_site, *ADMIN) as admin:
        assert bars(graph(admin, range="hour", domain="c.example")) == {"clean": 2.0, "quarantined": 1.0}
        assert admin.get("/stats/graph.svg", params={"range": "year"}).status_code == 400


def test_metrics_in_prometheus_format(stats_site: Site) -> None:
    with httpx.Client(base_url=stats_site.url, timeout=20) as scraper:
        assert scraper.get("/metrics").status_code == 403  # loopback is not in metrics_clients here
        assert scraper.get("/metrics", headers={"authorization": "Bearer wrong"}).status_code == 403
        answer = scraper.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    by_verdict: dict[str, float] = {}
    for labels, value in samples["mailsift_messages_total"].items():
        verdict = dict(labels)["verdict"]
        by_verdict[verdict] = by_verdict.get(verdict, 0.0) + value
    assert by_verdict == {"clean": 5.0, "rejected": 2.0, "quarantined": 1.0}
    assert samples["mailsift_messages_total"][(("scanner", ""), ("verdict", "clean"))] == 5.0
    assert samples["mailsift_domain_messages_total"][(("domain", "c.example"), ("verdict", "quarantined"))] == 1.0
    assert samples["mailsift_domain_messages_total"][(("domain", "b.example"), ("verdict", "rejected"))] == 2.0
    assert sum(samples["mailsift_message_bytes_total"].values()) == maillog_bytes(stats_site)
    assert sum(samples["mailsift_recipients_total"].values()) == len(SENT)
    with logged_in(stats_site, *ADMIN) as admin:
        assert admin.get("/metrics").status_code == 200
