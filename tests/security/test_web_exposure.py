"""Finding 12: /metrics answered any client of its listener with any ``Host`` header (DNS
rebinding from a browser on the same host), and the session cookie was not ``Secure`` unless
configured.

Now /metrics answers a ``metrics_clients`` address (default loopback, the *real* client: a
request relayed by a trusted proxy counts as the client it names) only with a ``Host`` naming
the site or the listener, or a bearer token (or an admin's session); and the cookie is
``Secure`` whenever webq's ``url`` is https.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mailsift.errors import ConfigError
from mailsift.settings import Settings
from mailsift.testing import ServiceThread
from mailsift.web import stats_pages
from mailsift.web.app import create_app
from mailsift.web.service import webq
from mailsift.web.webconfig import WebConfig
from tests.helpers.webq import user_settings

TOKEN = "scrape-Token-1"


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    with user_settings(tmp_path) as settings:
        yield settings


def _metrics_client(
    settings: Settings, config: WebConfig, peer: str = "127.0.0.1", base_url: str = "http://127.0.0.1:8008"
) -> httpx.AsyncClient:
    routes = stats_pages.routes(metrics_token=TOKEN)
    app = create_app(settings, secret="s" * 40, config=config, extra_routes=routes, quarantine=False)
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    return httpx.AsyncClient(transport=transport, base_url=base_url)


async def test_metrics_refuse_a_rebound_host_name(settings: Settings) -> None:
    async with _metrics_client(settings, WebConfig()) as local:
        assert (await local.get("/metrics")).status_code == 200  # Host: the listener's own address
        assert (await local.get("/metrics", headers={"host": "localhost:8008"})).status_code == 200
        rebound = await local.get("/metrics", headers={"host": "attacker.example:8008"})
        assert rebound.status_code == 403
        token = await local.get("/metrics", headers={"host": "attacker.example", "authorization": f"Bearer {TOKEN}"})
        assert token.status_code == 200  # a bearer token is not something a rebinding page has


async def test_metrics_accept_the_configured_site_name(settings: Settings) -> None:
    config = webq(url="https://mail.example.com/webq", hosts=["mail2.example.com"]).config
    async with _metrics_client(settings, config) as local:
        for host in ("mail.example.com", "mail2.example.com:443"):
            assert (await local.get("/metrics", headers={"host": host})).status_code == 200


async def test_metrics_refuse_clients_outside_the_allowlist(settings: Settings) -> None:
    async with _metrics_client(settings, WebConfig(), peer="203.0.113.5") as remote:
        assert (await remote.get("/metrics")).status_code == 403
        spoofed = await remote.get("/metrics", headers={"x-forwarded-for": "127.0.0.1"})
        assert spoofed.status_code == 403
        assert (await remote.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})).status_code == 200


async def test_metrics_behind_a_proxy_see_the_real_client(settings: Settings) -> None:
    proxied = WebConfig(trusted_proxies=("127.0.0.1",))
    async with _metrics_client(settings, proxied) as proxy:
        relayed = await proxy.get("/metrics", headers={"x-forwarded-for": "203.0.113.5"})
        assert relayed.status_code == 403  # a remote client relayed by the local proxy is still remote
        assert (await proxy.get("/metrics", headers={"x-forwarded-for": "127.0.0.1"})).status_code == 200


def test_metrics_through_uvicorn_refuse_a_rebound_host(settings: Settings) -> None:
    with ServiceThread(webq("127.0.0.1", 0), settings) as served:
        url = f"http://127.0.0.1:{served.port}/metrics"
        assert httpx.get(url, timeout=30).status_code == 200
        assert httpx.get(url, headers={"host": "rebind.attacker.example"}, timeout=30).status_code == 403


async def test_cookie_is_secure_when_the_site_is_https(settings: Settings) -> None:
    cases = [
        (webq(url="https://mail.example.com/webq"), True),
        (webq(url="http://intranet.example/webq"), False),
        (webq(), False),
        (webq(url="https://mail.example.com/webq", secure_cookies=False), False),
        (webq(secure_cookies=True), True),
    ]
    for service, secure in cases:
        assert service.config.secure_cookies is secure
        app = create_app(settings, secret="s" * 40, config=service.config)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://webq.test") as client:
            cookie = (await client.get("/login")).headers["set-cookie"].lower()
        assert ("; secure" in cookie) is secure, cookie


def test_bad_exposure_settings_are_config_errors() -> None:
    for options in ({"url": "mail.example.com"}, {"trusted_proxies": ["not-an-address"]}, {"max_body": 0}):
        with pytest.raises(ConfigError):
            webq(**options)  # type: ignore[arg-type]
