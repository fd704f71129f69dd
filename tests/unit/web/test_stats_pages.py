"""Statistics pages in a cluster (mailsift.web.stats_pages, issue 15 item 5): the graphs and the table of
any node show every node's counts; ``/metrics`` says what this node did, and which config it runs."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from mailsift.reporting.counters import Counts, period_of, upsert_counters
from mailsift.settings import Settings
from mailsift.web import stats_pages
from tests.helpers.webq import logged_in, user_settings

TOKEN = "t" * 32


def count(settings: Settings, node: str, messages: int) -> None:
    key = (period_of(time.time()), "*", "clean", "")
    settings.require_database().call(upsert_counters, {key: Counts(messages, messages, 100 * messages, 0.5)}, node)


def scraped(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_this_node_and_the_pages_show_every_node(tmp_path: Path) -> None:
    with user_settings(tmp_path) as shared:
        alpha = dataclasses.replace(shared, node="alpha", config_fingerprint="aaaaaaaaaaaa")
        beta = dataclasses.replace(shared, node="beta", config_fingerprint="bbbbbbbbbbbb")
        count(alpha, "alpha", 2)
        count(beta, "beta", 3)
        routes = stats_pages.routes(metrics_clients=(), metrics_token=TOKEN)
        for settings, own, fingerprint in ((alpha, 2.0, "aaaaaaaaaaaa"), (beta, 3.0, "bbbbbbbbbbbb")):
            client = await logged_in(settings, "admin", secret="s" * 40, extra_routes=routes)
            try:
                answer = await client.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
                assert answer.status_code == 200
                metrics = scraped(answer.text)
                assert metrics[("mailsift_messages_total", (("scanner", ""), ("verdict", "clean")))] == own
                assert metrics[("mailsift_config_info", (("fingerprint", fingerprint), ("node", settings.node)))] == 1
                page = await client.get("/stats", params={"by": "node", "range": "hour"})
                assert page.status_code == 200
                table = page.text[page.text.index("<table") :]
                assert "alpha" in table  # both nodes, on either node's page
                assert "beta" in table
                whole = await client.get("/stats", params={"range": "hour"})
                assert ">5<" in whole.text.replace(" ", "")  # the cluster's sum: 2 + 3
            finally:
                await client.aclose()


async def test_the_period_names_are_translated(tmp_path: Path) -> None:
    """The periods of the select, the pager and the totals' heading are whole translated phrases
    (German: "letzter Tag", the adjective agreeing with the noun), not English words in a translated frame."""
    with user_settings(tmp_path) as settings:
        count(settings, "alpha", 1)
        client = await logged_in(settings, "admin", secret="s" * 40, extra_routes=stats_pages.routes())
        try:
            client.headers["Accept-Language"] = "de"
            page = (await client.get("/stats", params={"range": "day"})).text
            english = (await client.get("/stats", params={"range": "day"}, headers={"Accept-Language": "en"})).text
        finally:
            await client.aclose()
    assert "<h2>Summen, letzter Tag</h2>" in page
    for phrase in ("letzte Stunde", "letzter Tag", "letzte Woche", "letzter Monat"):
        assert page.count(f">{phrase}<") == 2, phrase  # the select's option and the pager's link
    assert "<h2>Totals, last day</h2>" in english
    assert english.count(">last month<") == 2
