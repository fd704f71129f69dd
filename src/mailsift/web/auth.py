"""Who is asking: sessions, login and logout, CSRF, login throttling.

* **Sessions** are Starlette's ``SessionMiddleware`` cookies, signed with
  itsdangerous (HttpOnly, SameSite=Lax, ``Secure`` when configured, expiring
  after ``idle_seconds`` without a request).  The cookie holds the user id,
  the user's ``session_version`` (bumped by a password change, so older
  cookies stop working), the login time (a session ends ``session_seconds``
  after it, whatever the activity) and the CSRF token; nothing secret.
* **CSRF**: a random per-session token in every form (:func:`csrf_field`),
  checked on every POST (:func:`check_csrf`, constant-time compare), plus a
  refusal of cross-site requests by ``Origin``/``Sec-Fetch-Site``.
* **Login**: the login name goes through ``userconv``; an unknown name and a
  wrong password get the same page, after the same argon2 work (a verify
  against a dummy hash).  Failed logins are counted in the database per
  client address and per login name (:mod:`mailsift.web.users`), shared by
  every worker; past the limit the answer is 429 for known and unknown
  names alike.
"""

from __future__ import annotations

import hmac
import time
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mailsift.errors import MailsiftError, RequestRefused
from mailsift.storage.db import Database
from mailsift.web import users
from mailsift.web.session import CSRF_FIELD, USER_KEY, csrf_field, csrf_token, current_user
from mailsift.web.templating import render
from mailsift.web.users import User
from mailsift.web.webconfig import WebConfig

__all__ = [
    "LoginRequired",
    "User",
    "UserMiddleware",
    "check_csrf",
    "csrf_field",
    "csrf_token",
    "current_user",
    "require_admin",
    "require_user",
    "routes",
]

CSRF_HEADER = "x-csrf-token"


class LoginRequired(RequestRefused):
    """Raised by :func:`require_user`; answered by a redirect to the login page (GET) or 401."""


# --------------------------------------------------------------------------- who is asking


def require_user(request: Request) -> User:
    """The logged-in user; otherwise :class:`LoginRequired` (redirect to /login or 401)."""
    user = current_user(request)
    if user is None:
        raise LoginRequired()
    return user


def require_admin(request: Request) -> User:
    """The logged-in admin; 403 for an ordinary user, login for nobody."""
    user = require_user(request)
    if not user.is_admin:
        raise HTTPException(403, "Administrators only.")
    return user


def login_required_handler(request: Request, exc: Exception) -> Response:
    if request.method in ("GET", "HEAD"):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    return render(request, "login.html", {"error": "Please log in.", "next": "/", "login": ""}, status_code=401)


class UserMiddleware:
    """Loads the session's user from the database (inside SessionMiddleware), once per request.

    A session whose user is gone, whose ``session_version`` is old (the
    password changed) or whose login is older than ``session_seconds`` is
    cleared.
    """

    def __init__(self, app: ASGIApp, database: Database, config: WebConfig) -> None:
        self.app = app
        self.database = database
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            session: dict[str, Any] = scope.get("session", {})
            user_id = session.get("uid")
            if isinstance(user_id, int):
                stored = await self.database.run(users.load_user, user_id)
                fresh = isinstance(session.get("t"), int | float) and session["t"] > time.time() - (
                    self.config.session_seconds
                )
                if stored is None or stored.session_version != session.get("sv") or not fresh:
                    session.clear()
                else:
                    scope[USER_KEY] = stored.user
        await self.app(scope, receive, send)


# --------------------------------------------------------------------------- CSRF


def _same_origin(request: Request) -> bool:
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":  # no Origin, or hidden by a referrer policy: the token decides
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


def check_csrf(request: Request, form: FormData | None) -> None:
    """403 unless the form (or the X-CSRF-Token header) carries this session's token.

    Call on every state-changing request, before doing anything.
    """
    expected = request.session.get("csrf")
    given = (form.get(CSRF_FIELD) if form is not None else None) or request.headers.get(CSRF_HEADER)
    if (
        not isinstance(expected, str)
        or not isinstance(given, str)
        or not hmac.compare_digest(expected.encode(), given.encode())
        or not _same_origin(request)
    ):
        raise HTTPException(403, "The form has expired or came from another site; reload the page and try again.")


# --------------------------------------------------------------------------- login and logout


def _config(request: Request) -> WebConfig:
    config: WebConfig = request.app.state.web_config
    return config


def _database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def safe_next(target: str | None) -> str:
    """A local path to go to after login (never another site: no scheme, host or ``//``)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return "/" if parts.scheme or parts.netloc else target


async def login_page(request: Request) -> Response:
    if current_user(request) is not None:
        return RedirectResponse(safe_next(request.query_params.get("next")), status_code=303)
    context = {"error": "", "next": safe_next(request.query_params.get("next")), "login": ""}
    return render(request, "login.html", context)


async def login_submit(request: Request) -> Response:
    form = await request.form()
    check_csrf(request, form)
    config, database = _config(request), _database(request)
    typed = str(form.get("login") or "")[: users.MAX_LOGIN]
    password = str(form.get("password") or "")[:1024]
    next_path = safe_next(str(form.get("next") or "/"))
    login = users.convert_login(typed.strip(), config.userconv).strip().lower()
    client = request.client.host if request.client else "unknown"
    keys = [(f"ip:{client}", config.login_failures_per_client), (f"login:{login}", config.login_failures_per_name)]
    now = time.time()
    context = {"next": next_path, "login": typed}
    try:
        if await database.run(users.throttled, keys, now, config.throttle_window):
            error = "Too many failed logins. Try again later."
            return render(request, "login.html", {**context, "error": error}, status_code=429)
        stored = await database.run(users.find_user, login) if login else None
    except MailsiftError:
        return render(request, "login.html", {**context, "error": "Try again later."}, status_code=503)
    if not users.verify_password(stored.password_hash if stored else None, password) or stored is None:
        await database.run(users.count_failure, [key for key, _ in keys], now, config.throttle_window)
        return render(request, "login.html", {**context, "error": "Wrong login or password."}, status_code=401)
    await database.run(users.clear_failures, [f"login:{login}"])
    request.session.clear()  # a new session: new CSRF token, nothing of the anonymous one kept
    request.session.update({"uid": stored.user.id, "sv": stored.session_version, "t": now})
    return RedirectResponse(next_path, status_code=303)


async def logout(request: Request) -> Response:
    check_csrf(request, await request.form())
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


def routes() -> list[BaseRoute]:
    return [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login_submit, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
