"""``create_app``: the web quarantine's Starlette application.

Middleware, outermost first: security headers on every answer (a strict
Content-Security-Policy: no inline script, no remote loads, no framing;
``nosniff``; referrers to this site only, so signed links never leak; ``no-store``),
the request body limits (:class:`BodyLimit`: 413 before anything is parsed), the
signed session cookie, then the user of the session (held server-side, see
:mod:`mailsift.web.auth`).  Pages come from
:mod:`mailsift.web.auth`, :mod:`mailsift.web.quarantine_pages` and the
``extra_routes`` of other modules.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailsift.settings import Settings
from mailsift.web import account_pages, auth, lists_pages, quarantine_pages
from mailsift.web.templating import N_, Text, render, templates
from mailsift.web.webconfig import WebConfig

__all__ = ["SESSION_COOKIE", "create_app", "render", "templates"]

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
SESSION_COOKIE = "mailsift_session"

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` (and ``Cache-Control: no-store`` outside /static) to every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend((name, value) for name, value in SECURITY_HEADERS if name not in present)
                if not static and b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


LOGIN_PATHS = frozenset({"/login", "/logout"})


class BodyLimit:
    """Bounds every request body before any page parses it.

    ``POST /login`` and ``/logout`` may carry ``login_body_limit`` bytes, every
    other route ``body_limit``; a urlencoded form at most ``form_fields`` fields
    (a multipart one is bounded by its size and Starlette's own field limit).  A
    ``Content-Length`` beyond the limit is answered 413 at once, without
    reading the body; a body without one (chunked) is counted as it arrives
    and cut at the limit (413, nothing buffered past it; the connection is
    then closed by the server, the rest unread).
    """

    def __init__(self, app: ASGIApp, config: WebConfig) -> None:
        self.app = app
        self.config = config

    def limit(self, path: str) -> int:
        return self.config.login_body_limit if path in LOGIN_PATHS else self.config.body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(str(scope.get("path", "")))
        headers = dict(scope.get("headers", []))
        length = headers.get(b"content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > limit):
            await self._refuse(send)
            return
        form = headers.get(b"content-type", b"").split(b";")[0].strip().lower() == b"application/x-www-form-urlencoded"
        fields_left = self.config.form_fields
        seen = 0

        async def counted() -> Message:
            nonlocal seen, fields_left
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                seen += len(chunk)
                if form:
                    fields_left -= chunk.count(b"&")
                if seen > limit or fields_left < 0:
                    raise HTTPException(413, Text(N_("The request is too large.")))
            return message

        await self.app(scope, counted, send)

    @staticmethod
    async def _refuse(send: Send) -> None:
        body = b"The request is too large.\n"
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": [*headers, (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


async def home(request: Request) -> Response:
    auth.require_user(request)
    return RedirectResponse("/q/", status_code=303)


async def favicon(request: Request) -> Response:
    """``/favicon.ico`` for clients that ask without reading the page's ``<link rel=icon>``."""
    return FileResponse(os.path.join(STATIC_DIR, "favicon.svg"), media_type="image/svg+xml")


async def http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else Text(N_("Internal error."))
    return render(request, "error.html", {"status": status, "detail": detail}, status_code=status)


def create_app(
    settings: Settings,
    *,
    secret: str | bytes,
    config: WebConfig | None = None,
    extra_routes: Sequence[BaseRoute] = (),
    quarantine: bool = True,
) -> Starlette:
    """The web quarantine for ``settings`` (its DATABASE, quarantine and SMTP_SERVER).

    ``secret`` signs the session cookies and message links; ``extra_routes``
    are other modules' pages; ``quarantine=False`` leaves the quarantine
    pages out (for other modules' tests).
    """
    config = config or WebConfig()
    if settings.database is None:
        raise ValueError("create_app: settings.database is required")
    secret_text = secret.decode() if isinstance(secret, bytes) else secret
    routes: list[BaseRoute] = [
        Route("/", home, methods=["GET"]),
        Route("/favicon.ico", favicon, methods=["GET"]),
        *auth.routes(),
    ]
    if quarantine:
        routes.extend(quarantine_pages.routes())
        routes.extend(account_pages.routes())
        routes.extend(lists_pages.routes())
    routes.extend(extra_routes)
    routes.append(Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"))
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(BodyLimit, config=config),
        Middleware(
            SessionMiddleware,
            secret_key=secret_text,
            session_cookie=SESSION_COOKIE,
            max_age=int(config.idle_seconds),
            same_site="lax",
            https_only=config.secure_cookies,
        ),
        Middleware(auth.UserMiddleware, database=settings.database, config=config),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={auth.LoginRequired: auth.login_required_handler, HTTPException: http_error},
    )
    app.state.settings = settings
    app.state.database = settings.database
    app.state.web_config = config
    app.state.secret = secret_text
    return app
