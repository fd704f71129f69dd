"""Statistics pages (SAGATOR's RRDtool graphs, server-side SVG) and the Prometheus ``/metrics``.

* ``/stats``: graphs of the ``stats()`` counters over the last hour, day, week
  or month (``?range=``), stacked by verdict, scanner or domain (``?by=``):
  messages, bytes, scan time, greylisting outcomes; and a totals table.
* ``/stats/graph.svg``: one graph as a standalone SVG image (same options,
  plus ``metric=`` and ``kind=mail|greylist``).
* ``/metrics``: the counters in Prometheus' text format, of this node only
  (``NODE``), and ``mailsift_config_info{node, fingerprint}``.

The graphs and the table show the whole cluster (every node writes into the
one database; ``?by=node`` breaks them down per node); ``/metrics`` shows what
this node did, so a scraper of every node sums without counting twice.

Who sees what, decided before any query: an admin sees everything (or one
domain with ``?domain=``); a domain admin (a user owning ``@example.com``
entries in :attr:`User.addresses`) sees only the rows of those domains; anyone
else gets 403.  The pages only read (GET), so they carry no CSRF token.

The graphs are drawn on the server as SVG with :mod:`xml.etree.ElementTree`:
no JavaScript charting library (the pages' Content-Security-Policy allows no
inline script, a bar chart needs none, and the graph works with scripts off
and in a screenshot); ElementTree escapes every text and attribute, so a
hostile domain or scanner name can never become markup.  Shapes use
presentation attributes (``fill=``), not ``style``, so the strict CSP's
``style-src 'self'`` does not blank them.

``/metrics`` is generated from the database, not from per-process counters:
the workers are forked, each counting its own messages, and only the
database holds the sum (of every worker and every gateway sharing it).  The
all-time sums are read at each scrape and exposed as counters through a
prometheus_client collector; a counter only decreases if old intervals are
pruned, which Prometheus treats as a counter reset.  It answers an admin's
session, a request with ``Authorization: Bearer <metrics_token>``, or a
client from ``metrics_clients`` (loopback by default; the client as
:func:`mailsift.web.auth.client_address` finds it, so a request relayed by a
trusted proxy counts as its real client) whose ``Host`` header names the site
(webq's ``url``/``hosts``) or the listener's own address — a page on another
site that rebinds its DNS name to 127.0.0.1 sends its own name and is refused.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from sqlalchemy.engine import Connection
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mailsift import validators
from mailsift.errors import MailsiftError
from mailsift.reporting import poolstats
from mailsift.reporting.counters import GREYLIST_VERDICTS, MAIL_VERDICTS, RANGES, Range, Series, Total, series, totals
from mailsift.settings import Settings
from mailsift.storage.db import Database
from mailsift.web.auth import client_address, current_user, require_user
from mailsift.web.templating import N_, Text, render
from mailsift.web.users import User
from mailsift.web.webconfig import WebConfig

PERIODS = {"hour": N_("last hour"), "day": N_("last day"), "week": N_("last week"), "month": N_("last month")}
"""The graph ranges (:data:`RANGES`) as the pages name them, translated: a whole phrase each, as
"last" agrees with the noun in many languages (letzte Stunde, letzter Tag)."""

DEFAULT_METRICS_CLIENTS = ("127.0.0.0/8", "::1/128")
SVG_NS = "http://www.w3.org/2000/svg"
WIDTH, HEIGHT = 760, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 58
COLOURS = {
    "clean": "#3c9a5f",
    "delivered": "#e0a526",
    "quarantined": "#8e5bb5",
    "rejected": "#c8423b",
    "dropped": "#6b7580",
    "tempfail": "#2f7fc1",
    "refused": "#9a6a3c",
    "greylist-deferred": "#e0a526",
    "greylist-passed": "#3c9a5f",
    "greylist-whitelisted": "#2f7fc1",
}
PALETTE = ("#2f7fc1", "#c8423b", "#3c9a5f", "#e0a526", "#8e5bb5", "#17a2a6", "#9a6a3c", "#d45f9c", "#6b7580")
MAX_GROUPS = 9
"""Groups drawn at most (the biggest); the rest are summed as ``other``."""
METRIC_TITLES = {
    "messages": "Messages",
    "recipients": "Recipients",
    "bytes": "Bytes",
    "scan_seconds": "Scan time (s)",
}
LABEL_FORMATS = {"hour": "%H:%M", "day": "%H:%M", "week": "%a %d", "month": "%m-%d"}
LABEL_EVERY = {"hour": 2, "day": 3, "week": 4, "month": 5}


# --------------------------------------------------------------------------- who sees what


def managed_domains(user: User) -> tuple[str, ...]:
    """The domains a user administers: its ``@example.com`` address entries."""
    return tuple(sorted({a[1:].lower() for a in user.addresses if a.startswith("@") and len(a) > 1}))


def scope_for(user: User, domain: str) -> list[str] | None:
    """The domains ``user`` may read (None: all), narrowed to ``domain`` if asked; 403 otherwise."""
    domain = domain.strip().lower()
    if user.is_admin:
        return [domain] if domain else None
    mine = managed_domains(user)
    if not mine:
        raise HTTPException(403, Text(N_("Statistics are for administrators and domain administrators.")))
    if domain:
        if domain not in mine:
            raise HTTPException(403, Text(N_("Not one of your domains.")))
        return [domain]
    return list(mine)


@dataclass(frozen=True)
class GraphRequest:
    """The graph options from the URL, checked."""

    range_: Range
    group: str
    domain: str

    @classmethod
    def parse(cls, request: Request) -> GraphRequest:
        params = request.query_params
        range_name = params.get("range", "day")
        group = params.get("by", "verdict")
        if range_name not in RANGES:
            raise HTTPException(400, Text(N_("range must be one of %(ranges)s."), ranges=", ".join(RANGES)))
        if group not in ("verdict", "scanner", "domain", "node"):
            raise HTTPException(400, Text(N_("by must be verdict, scanner, domain or node.")))
        return cls(RANGES[range_name], group, params.get("domain", "")[:255])


# --------------------------------------------------------------------------- SVG


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above ``value`` (axis top)."""
    if value <= 0:
        return 1.0
    power = 1.0
    while power * 10 <= value:
        power *= 10
    while power > value:
        power /= 10
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power  # pragma: no cover - the loop returns


def format_value(value: float, metric: str) -> str:
    if metric == "bytes":
        for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(value) < 1024 or unit == "TiB":
                return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
            value /= 1024
    if metric == "scan_seconds":
        return f"{value:.3g} s"
    return f"{value:.0f}" if value == int(value) else f"{value:.3g}"


def _limit_groups(values: dict[str, list[float]]) -> dict[str, list[float]]:
    """At most :data:`MAX_GROUPS` groups: the biggest, in their order; the rest as ``other``."""
    if len(values) <= MAX_GROUPS:
        return values
    biggest = sorted(values, key=lambda key: -sum(values[key]))[: MAX_GROUPS - 1]
    kept = {key: row for key, row in values.items() if key in biggest}
    rest = [row for key, row in values.items() if key not in biggest]
    kept["other"] = [sum(column) for column in zip(*rest, strict=True)]
    return kept


def colour_of(group: str, key: str, index: int) -> str:
    if group == "verdict" and key in COLOURS:
        return COLOURS[key]
    return PALETTE[index % len(PALETTE)]


def render_svg(data: Series, *, title: str, metric: str, group: str, range_name: str) -> str:
    """A stacked bar chart of ``data``: one ``<g class="bucket">`` per bucket, one rect per non-zero value.

    Every bucket carries ``data-start`` (Unix seconds) and ``data-total``;
    every bar ``data-series`` and ``data-value``, and a ``<title>`` tooltip.
    """
    values = _limit_groups(data.values)
    sums = [sum(row[i] for row in values.values()) for i in range(data.buckets)]
    top = _nice_ceiling(max(sums, default=0.0))
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_width / data.buckets
    bar = max(1.0, slot * 0.8)
    svg = ET.Element(
        "svg",
        {
            "xmlns": SVG_NS,
            "width": str(WIDTH),
            "height": str(HEIGHT),
            "viewBox": f"0 0 {WIDTH} {HEIGHT}",
            "role": "img",
            "class": "stats-graph",
            "data-metric": metric,
            "data-range": range_name,
            "data-by": group,
        },
    )
    ET.SubElement(svg, "title").text = title
    ET.SubElement(svg, "rect", {"x": "0", "y": "0", "width": str(WIDTH), "height": str(HEIGHT), "fill": "#ffffff"})
    heading = ET.SubElement(svg, "text", {"x": str(LEFT), "y": "18", "font-size": "14", "font-weight": "600"})
    heading.text = title
    font = {"font-family": "system-ui, sans-serif", "font-size": "11", "fill": "#1d2329"}
    for step in range(5):  # grid lines and the value axis
        value = top * step / 4
        y = TOP + plot_height - plot_height * step / 4
        ET.SubElement(
            svg,
            "line",
            {"x1": str(LEFT), "x2": str(WIDTH - RIGHT), "y1": f"{y:.1f}", "y2": f"{y:.1f}", "stroke": "#dde1e6"},
        )
        tick = ET.SubElement(svg, "text", {"x": str(LEFT - 6), "y": f"{y + 4:.1f}", "text-anchor": "end", **font})
        tick.text = format_value(value, metric)
    starts = data.bucket_starts()
    every = LABEL_EVERY.get(range_name, 1)
    for index, start in enumerate(starts):
        x = LEFT + index * slot + (slot - bar) / 2
        bucket = ET.SubElement(
            svg,
            "g",
            {
                "class": "bucket",
                "data-start": str(start),
                "data-total": repr(float(sums[index])),
            },
        )
        base = float(TOP + plot_height)
        for number, (key, row) in enumerate(values.items()):
            value = row[index]
            if value <= 0:
                continue
            height = plot_height * value / top
            base -= height
            rect = ET.SubElement(
                bucket,
                "rect",
                {
                    "class": "bar",
                    "x": f"{x:.1f}",
                    "y": f"{base:.1f}",
                    "width": f"{bar:.1f}",
                    "height": f"{height:.1f}",
                    "fill": colour_of(group, key, number),
                    "data-series": key,
                    "data-value": repr(float(value)),
                },
            )
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(start))
            ET.SubElement(rect, "title").text = f"{key or '-'}: {format_value(value, metric)} ({when})"
        if index % every == 0:
            label = ET.SubElement(
                svg,
                "text",
                {"x": f"{x + bar / 2:.1f}", "y": str(TOP + plot_height + 14), "text-anchor": "middle", **font},
            )
            label.text = time.strftime(LABEL_FORMATS.get(range_name, "%H:%M"), time.gmtime(start))
    legend_y = HEIGHT - 18
    x = float(LEFT)
    for number, (key, row) in enumerate(values.items()):
        colour = colour_of(group, key, number)
        entry = ET.SubElement(svg, "g", {"class": "legend", "data-series": key, "data-total": repr(float(sum(row)))})
        ET.SubElement(
            entry,
            "rect",
            {
                "x": f"{x:.1f}",
                "y": str(legend_y - 9),
                "width": "10",
                "height": "10",
                "fill": colour,
            },
        )
        text = ET.SubElement(entry, "text", {"x": f"{x + 14:.1f}", "y": str(legend_y), **font})
        name = key or "-"
        text.text = f"{name[:40]} ({format_value(sum(row), metric)})"
        x += 24 + 7 * min(len(text.text), 48)
    if not values:
        empty = ET.SubElement(svg, "text", {"x": str(LEFT + 8), "y": str(TOP + plot_height / 2), **font})
        empty.text = "No messages counted in this period."
    return ET.tostring(svg, encoding="unicode")


# --------------------------------------------------------------------------- pages


def _database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def _query(request: Request, function: Any, *args: Any) -> Any:
    try:
        return await _database(request).run(function, *args)
    except MailsiftError as error:
        raise HTTPException(
            503, Text(N_("The statistics database is unavailable: %(reason)s"), reason=error.message)
        ) from None


def _graph(
    connection: Connection,
    options: GraphRequest,
    domains: list[str] | None,
    metric: str,
    verdicts: Sequence[str],
    title: str,
    now: float,
) -> str:
    group = "verdict" if tuple(verdicts) == GREYLIST_VERDICTS else options.group
    data = series(
        connection, end=now, range_=options.range_, group=group, metric=metric, domains=domains, verdicts=verdicts
    )
    return render_svg(data, title=title, metric=metric, group=group, range_name=options.range_.name)


def _title(metric: str, options: GraphRequest, greylist: bool) -> str:
    what = "Greylisting outcomes" if greylist else f"{METRIC_TITLES[metric]} by {options.group}"
    scope = f" for {options.domain}" if options.domain else ""
    return f"{what}{scope}, last {options.range_.name} (UTC)"


def _page_data(
    connection: Connection, options: GraphRequest, domains: list[str] | None, now: float
) -> tuple[list[tuple[str, str]], list[Total]]:
    graphs = []
    for metric in ("messages", "bytes", "scan_seconds"):
        graph = _graph(connection, options, domains, metric, MAIL_VERDICTS, _title(metric, options, False), now)
        graphs.append((metric, graph))
    greylist = _graph(
        connection, options, domains, "messages", GREYLIST_VERDICTS, _title("messages", options, True), now
    )
    graphs.append(("greylist", greylist))
    since = now - options.range_.span
    table = totals(connection, since=since, group=(options.group,), domains=domains, verdicts=MAIL_VERDICTS)
    return graphs, table


async def stats_page(request: Request) -> Response:
    user = require_user(request)
    options = GraphRequest.parse(request)
    domains = scope_for(user, options.domain)
    graphs, table = await _query(request, _page_data, options, domains, time.time())
    context = {
        "graphs": [(name, Markup(svg)) for name, svg in graphs],  # noqa: S704 - ElementTree escaped it
        "table": table,
        "options": options,
        "ranges": list(RANGES),
        "periods": PERIODS,
        "groups": ("verdict", "scanner", "domain", "node"),
        "domains": managed_domains(user),
        "format_value": format_value,
    }
    return render(request, "stats_index.html", context)


async def graph_svg(request: Request) -> Response:
    user = require_user(request)
    options = GraphRequest.parse(request)
    metric = request.query_params.get("metric", "messages")
    kind = request.query_params.get("kind", "mail")
    if metric not in METRIC_TITLES or kind not in ("mail", "greylist"):
        raise HTTPException(400, Text(N_("metric or kind unknown.")))
    domains = scope_for(user, options.domain)
    verdicts = GREYLIST_VERDICTS if kind == "greylist" else MAIL_VERDICTS
    title = _title(metric, options, kind == "greylist")
    svg = await _query(request, _graph, options, domains, metric, verdicts, title, time.time())
    return Response(
        '<?xml version="1.0" encoding="UTF-8"?>\n' + svg,
        media_type="image/svg+xml",
        headers={"content-security-policy": "default-src 'none'; frame-ancestors 'none'"},
    )


# --------------------------------------------------------------------------- /metrics


class DatabaseCounters:
    """A prometheus_client collector yielding the all-time sums read from the database."""

    def __init__(
        self, by_scanner: list[Total], by_domain: list[Total], greylist: list[Total], config: tuple[str, str] = ("", "")
    ) -> None:
        self.by_scanner, self.by_domain, self.greylist = by_scanner, by_domain, greylist
        self.config = config
        """(node, config fingerprint) of this node."""

    def collect(self) -> Iterator[Metric]:
        messages = CounterMetricFamily(
            "mailsift_messages", "Messages by verdict and deciding scanner.", labels=["verdict", "scanner"]
        )
        recipients = CounterMetricFamily("mailsift_recipients", "Recipients of counted messages.", labels=["verdict"])
        size = CounterMetricFamily("mailsift_message_bytes", "Message bytes by verdict.", labels=["verdict"])
        seconds = CounterMetricFamily("mailsift_scan_seconds", "Time from taking to answering.", labels=["verdict"])
        per_verdict: dict[str, list[float]] = {}
        for total in self.by_scanner:
            verdict, scanner = total.key
            messages.add_metric([verdict, scanner], total.messages)
            sums = per_verdict.setdefault(verdict, [0, 0, 0.0])
            sums[0] += total.recipients
            sums[1] += total.bytes
            sums[2] += total.scan_seconds
        for verdict, (recipient_count, byte_count, spent) in per_verdict.items():
            recipients.add_metric([verdict], recipient_count)
            size.add_metric([verdict], byte_count)
            seconds.add_metric([verdict], spent)
        domains = CounterMetricFamily(
            "mailsift_domain_messages", "Messages by recipient domain and verdict.", labels=["domain", "verdict"]
        )
        for total in self.by_domain:
            domains.add_metric(list(total.key), total.messages)
        greylist = CounterMetricFamily(
            "mailsift_greylist_requests", "smtpd_policy greylisting outcomes.", labels=["outcome"]
        )
        for total in self.greylist:
            greylist.add_metric([total.key[0].removeprefix("greylist-")], total.messages)
        info = GaugeMetricFamily(
            "mailsift_config_info", "The config this node runs (its fingerprint).", labels=["node", "fingerprint"]
        )
        info.add_metric(list(self.config), 1)
        yield from (messages, recipients, size, seconds, domains, greylist, info)


def _metrics_data(connection: Connection, node: str = "", fingerprint: str = "") -> DatabaseCounters:
    """This node's counters (what it did; the other nodes' /metrics say theirs)."""
    nodes = [node]
    return DatabaseCounters(
        totals(connection, group=("verdict", "scanner"), nodes=nodes),
        totals(connection, group=("domain", "verdict"), nodes=nodes),
        totals(connection, group=("verdict",), verdicts=GREYLIST_VERDICTS, nodes=nodes),
        (node, fingerprint),
    )


def _host_name(value: str) -> str:
    """The name of a ``Host`` header, without its port (``[::1]:8008`` -> ``::1``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else ""
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _allowed_host(request: Request) -> bool:
    """Whether the ``Host`` header names this site: a configured name, or the listener's own address
    (``localhost`` too when that address is loopback)."""
    name = _host_name(request.headers.get("host", ""))
    if not name:
        return False
    config: WebConfig | None = getattr(request.app.state, "web_config", None)
    names = {host.lower() for host in (config.site_hosts if config else ())}
    server = request.scope.get("server")
    if server and server[0]:
        own = str(server[0]).lower()
        names.add(own.strip("[]"))
        try:
            if ipaddress.ip_address(own.strip("[]")).is_loopback:
                names.add("localhost")
        except ValueError:
            pass
    return name in names


def metrics_endpoint(metrics_clients: Iterable[str], metrics_token: str | None) -> Any:
    networks = validators.networks(tuple(metrics_clients), "webq: metrics_clients", single=False)

    async def metrics(request: Request) -> Response:
        bearer = request.headers.get("authorization", "")
        token_ok = bool(metrics_token) and hmac.compare_digest(bearer.encode(), f"Bearer {metrics_token}".encode())
        user = current_user(request)
        monitor = validators.address_in(client_address(request), networks) and _allowed_host(request)
        if not (token_ok or monitor or (user is not None and user.is_admin)):
            raise HTTPException(403, Text(N_("Metrics are for the monitoring host and administrators.")))
        settings: Settings = request.app.state.settings
        collector = await _query(request, _metrics_data, settings.node_name, settings.config_fingerprint)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        registry.register(await asyncio.to_thread(poolstats.collector, request.app.state.settings.state_dir))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics


def routes(
    *, metrics_clients: Iterable[str] = DEFAULT_METRICS_CLIENTS, metrics_token: str | None = None
) -> list[BaseRoute]:
    """``/stats``, ``/stats/graph.svg`` and ``/metrics`` (who may scrape: see the module docstring)."""
    return [
        Route("/stats", stats_page, methods=["GET"]),
        Route("/stats/graph.svg", graph_svg, methods=["GET"]),
        Route("/metrics", metrics_endpoint(metrics_clients, metrics_token), methods=["GET"]),
    ]
