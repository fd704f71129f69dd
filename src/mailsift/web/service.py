"""``webq``: the web quarantine service (SAGATOR's ``webq_jinja``), served by uvicorn.

``webq('127.0.0.1', 8008, userconv=[(r'^([^@]+)$', r'\\1@example.com')])`` in
``SRV`` runs the Starlette application of :mod:`mailsift.web` in every
worker's event loop, on the socket the supervisor bound (as every service).
Users log in with accounts from ``mailsift user add``; see
:mod:`mailsift.web.auth` for sessions, CSRF and login throttling.

Options: ``userconv`` (login rewriting: ``[(regex, replacement), ...]``, the
first matching rule wins), ``secret_file`` (the signing secret; default
``STATE_DIR/webq.secret``, made 0600 at first start and shared with the
digest's signed links; without it, a DATABASE shared by several nodes holds the
secret instead, so every node reads the same: :func:`mailsift.reporting.links.secret`),
``scanner`` (a scanner or list for the "recheck" button), ``url`` (the address users reach the site by, e.g.
``'https://mail.example.com/webq'``: its host name is accepted by /metrics'
Host check and an https URL makes the session cookie ``Secure``), ``hosts``
(more host names the site is reached by), ``secure_cookies`` (default
``None``: ``Secure`` exactly when ``url`` is https; ``True``/``False`` to
force), ``session_hours`` (a session's longest life), ``idle_minutes`` (a
session unused this long ends), ``trusted_proxies`` (addresses or networks
whose X-Forwarded-For names the client: the reverse proxy; default none, so
the socket's peer is the client), ``login_failures_per_name`` (attempts per
login name and client before the progressive delay, default 5),
``login_delay`` (its first step in seconds, doubling, default 5),
``login_failures_per_client`` (attempts per client and ``login_window``,
default 30), ``login_window`` (seconds, default 900), ``max_body`` (bytes of
any request body, default 65536), ``max_login_body`` (of the login and logout
forms, default 8192), ``max_form_fields`` (default 256), ``max_header``
(request line and headers, default 32768), ``metrics_clients`` and
``metrics_token`` (who may read /metrics, see
:mod:`mailsift.web.stats_pages`), ``admin_release`` (quarantine categories only an admin may
release, default ``['virus', 'unscannable']``; also the digest's links),
``min_password_length`` (the shortest password ``mailsift user add|passwd``
take, default 10; ``userconv`` applies to those commands as to the login page).
``language``: the pages' language when neither the user's preference nor the
browser's ``Accept-Language`` names one of the catalogs' (default ``"en"``).
``host`` may name a unix socket (``'unix:/run/mailsift/webq.sock'``,
for a reverse proxy on the same machine), made with ``socket_mode`` (default
0o660).  ``log`` is accepted for SAGATOR configs and ignored (webq logs
to mailsift's log).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from mailsift import validators
from mailsift.errors import ConfigError
from mailsift.scanners.base import as_scanners
from mailsift.services.base import DEFAULT_SOCKET_MODE, Service, check_mode, parse_listen
from mailsift.settings import Settings
from mailsift.storage.quarantine.admin import ADMIN_RELEASE, admin_release_categories
from mailsift.web.webconfig import (
    DEFAULT_BODY_LIMIT,
    DEFAULT_FORM_FIELDS,
    DEFAULT_HEADER_LIMIT,
    DEFAULT_LOGIN_BODY_LIMIT,
    WebConfig,
)

# The web code (Starlette, uvicorn, Jinja2, argon2, prometheus_client) is imported
# when a config names webq or when the service starts, never by `from mailsift import *`:
# a worker that serves only smtpd does not load it (issue 10, item 10).

log = logging.getLogger("mailsift.webq")


class webq(Service):
    """The web quarantine: ``webq(host='127.0.0.1', port=8008, *, userconv=..., scanner=...)``."""

    kind = "webq"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8008,
        *,
        userconv: Sequence[tuple[str, str]] = (),
        secret_file: str | None = None,
        scanner: Any = None,
        url: str | None = None,
        hosts: Sequence[str] = (),
        secure_cookies: bool | None = None,
        session_hours: float = 8.0,
        idle_minutes: float = 60.0,
        trusted_proxies: Sequence[str] = (),
        login_failures_per_name: int = 5,
        login_delay: float = 5.0,
        login_failures_per_client: int = 30,
        login_window: float = 900.0,
        max_body: int = DEFAULT_BODY_LIMIT,
        max_login_body: int = DEFAULT_LOGIN_BODY_LIMIT,
        max_form_fields: int = DEFAULT_FORM_FIELDS,
        max_header: int = DEFAULT_HEADER_LIMIT,
        log: str | None = None,
        metrics_clients: Sequence[str] = ("127.0.0.0/8", "::1/128"),
        metrics_token: str | None = None,
        socket_mode: int = DEFAULT_SOCKET_MODE,
        admin_release: Sequence[str] = ADMIN_RELEASE,
        min_password_length: int = 10,
        language: str = "en",
    ) -> None:
        self.host, self.port = parse_listen(host, port, self.kind)  # TCP, or 'unix:/path' behind a proxy
        self.socket_mode = check_mode(socket_mode, self.kind)
        validators.networks(trusted_proxies, "webq: trusted_proxies", single=False)
        validators.networks(metrics_clients, "webq: metrics_clients", single=False)
        # /metrics: from these clients, with this bearer token, or for an admin session
        self.metrics: dict[str, Any] = {"metrics_clients": tuple(metrics_clients), "metrics_token": metrics_token}
        self.scanners = as_scanners([scanner], self.kind) if scanner is not None else ()
        if secret_file is not None and (not isinstance(secret_file, str) or not secret_file):
            raise ConfigError(f"webq: secret_file must be a file path, got {secret_file!r}")
        session_hours = validators.positive(session_hours, "webq: session_hours")
        idle_minutes = validators.positive(idle_minutes, "webq: idle_minutes")
        scheme, site_hosts = self._site(url, hosts)
        if secure_cookies is None:
            secure_cookies = scheme == "https"
        limits = {
            name: validators.positive_int(value, f"webq: {name}")
            for name, value in (
                ("login_failures_per_name", login_failures_per_name),
                ("login_failures_per_client", login_failures_per_client),
                ("max_body", max_body),
                ("max_login_body", max_login_body),
                ("max_form_fields", max_form_fields),
                ("max_header", max_header),
                ("min_password_length", min_password_length),
            )
        }
        login_delay = validators.positive(login_delay, "webq: login_delay")
        login_window = validators.positive(login_window, "webq: login_window")
        from mailsift.reporting.notifications import LANGUAGES  # the catalogs the pages are translated with

        if language not in LANGUAGES:
            raise ConfigError(f"webq: language {language!r} is not one of {', '.join(LANGUAGES)}")
        self.secret_file = secret_file
        self.url = url
        from mailsift.web.users import compile_userconv  # the web's users code: only when webq is configured

        self.config = WebConfig(
            userconv=compile_userconv(userconv),
            secure_cookies=bool(secure_cookies),
            scanners=self.scanners,
            session_seconds=float(session_hours) * 3600,
            idle_seconds=float(idle_minutes) * 60,
            trusted_proxies=tuple(trusted_proxies),
            admin_release=admin_release_categories(admin_release),
            site_hosts=site_hosts,
            login_failures_per_name=limits["login_failures_per_name"],
            login_failures_per_client=limits["login_failures_per_client"],
            login_delay=float(login_delay),
            throttle_window=float(login_window),
            body_limit=limits["max_body"],
            login_body_limit=limits["max_login_body"],
            form_fields=limits["max_form_fields"],
            header_limit=limits["max_header"],
            min_password_length=limits["min_password_length"],
            language=language,
        )

    def bind_config(self, objects: Iterable[object]) -> None:
        """Note which white/black lists the accepted config consults (called once by :func:`mailsift.config.load`
        with every scanner of the config): the own-lists page and the "Whitelist sender" buttons offer only
        those, and say "lists are not in use" otherwise, instead of claiming an effect they would not have."""
        from mailsift.scanners.userpolicy import blacklisted, listed, whitelisted

        kinds = listed | whitelisted | blacklisted
        lists = {name for item in objects if isinstance(item, kinds) for name in item.lists}
        self.config = dataclasses.replace(self.config, lists_in_use=frozenset(lists))

    @staticmethod
    def _site(url: str | None, hosts: Sequence[str]) -> tuple[str, tuple[str, ...]]:
        """The scheme of ``url`` and every host name the site is reached by."""
        if not isinstance(hosts, list | tuple) or not all(isinstance(h, str) and h for h in hosts):
            raise ConfigError(f"webq: hosts must be a list of host names, got {hosts!r}")
        names = [h.lower() for h in hosts]
        scheme = ""
        if url is not None:
            parts = urlsplit(url) if isinstance(url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"webq: url must be like 'https://mail.example.com/webq', got {url!r}")
            scheme = parts.scheme
            names.append(parts.hostname.lower())
        return scheme, tuple(names)

    def site_url(self) -> str | None:
        """The address users reach the site by: ``url``, else ``http://host:port/``; None on a unix socket."""
        if self.url is not None:
            return str(self.url)
        if self.unix_path is not None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def check(self, settings: Settings) -> None:
        if settings.database is None:
            raise ConfigError("webq needs DATABASE (users and the quarantine index live there)")

    async def start(self, sock: socket.socket, settings: Settings) -> WebServer:
        from mailsift.reporting import links
        from mailsift.web.app import create_app

        secret = await asyncio.to_thread(links.secret, settings.state_dir, self.secret_file, settings.database)
        # the other web pages: digest links, statistics and /metrics, message tracking
        from mailsift.web import links_pages, stats_pages, tracking_pages

        extra = [*links_pages.routes(), *stats_pages.routes(**self.metrics), *tracking_pages.routes()]
        app = create_app(settings, secret=secret, config=self.config, extra_routes=extra)
        server = WebServer(app, self.config)
        await server.start(sock)
        return server


class WebServer:
    """One worker's running webq: uvicorn's server on the inherited socket.

    uvicorn's ``serve()`` installs its own signal handlers, which would take
    SIGTERM from the worker; its parts (``startup``, ``main_loop``,
    ``shutdown``) are used instead, and the worker's drain stops it.
    """

    def __init__(self, app: Any, config: WebConfig) -> None:
        import uvicorn

        self.config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            http="h11",  # h11's bound on the request line and headers (httptools has none of ours)
            proxy_headers=False,  # X-Forwarded-For: mailsift.web.auth.client_address, from trusted_proxies only
            timeout_keep_alive=5,
            timeout_graceful_shutdown=5,
            limit_concurrency=500,
            h11_max_incomplete_event_size=config.header_limit,
        )
        self.server = uvicorn.Server(self.config)
        self._task: asyncio.Task[None] | None = None

    async def start(self, sock: socket.socket) -> None:
        self.config.load()
        self.server.lifespan = self.config.lifespan_class(self.config)
        await self.server.startup(sockets=[sock])
        self._task = asyncio.create_task(self.server.main_loop())

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let requests in progress finish (up to ``timeout``), stop."""
        self.server.should_exit = True
        if self._task is not None:
            await self._task
        self.config.timeout_graceful_shutdown = max(1, int(timeout))
        await self.server.shutdown()
