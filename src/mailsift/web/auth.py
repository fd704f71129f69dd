"""Who is asking: sessions, login and logout, CSRF, login throttling, the client's address.

* **Sessions** are held on the server: the login writes a row in
  ``web_session`` (the SHA-256 of a random session id) and the cookie carries
  the id.  The cookie is Starlette's ``SessionMiddleware`` cookie, signed with
  itsdangerous (HttpOnly, SameSite=Lax, ``Secure`` when the site is https,
  expiring after ``idle_seconds`` without a request), holding the session id
  and the CSRF token; nothing secret besides.  A cookie counts only while its
  row exists: logout deletes it, a password change or the user's removal
  deletes all of the user's (:mod:`mailsift.web.users`), and a session ends
  ``session_seconds`` after login or ``idle_seconds`` unused, on the server
  too — a cookie saved earlier opens nothing afterwards.
* **CSRF**: a random per-session token in every form (:func:`csrf_field`),
  checked on every POST (:func:`check_csrf`, constant-time compare), plus a
  refusal of cross-site requests by ``Origin``/``Sec-Fetch-Site``.
* **Login**: the login name goes through ``userconv``; an unknown name and a
  wrong password get the same page, after the same argon2 work (a verify
  against a dummy hash).  The argon2 work runs in a small thread pool of its
  own (:data:`PASSWORDS`), never on the event loop that also serves mail.
* **Throttling**: each attempt is claimed in the database *before* the
  password is checked (one atomic upsert, shared by every worker), keyed on
  the (login name, client) pair — ``login_failures_per_name`` attempts, then
  a delay doubling from ``login_delay`` — and on the client alone
  (``login_failures_per_client`` per ``throttle_window``).  A stranger's
  failures slow down the stranger only: the user's own client keeps its own
  count.  A successful login clears its pair.
* **The log**: each checked login gives one line, ``webq: login ok for NAME
  from ADDRESS`` (INFO) or ``webq: login failed for NAME from ADDRESS``
  (WARNING; ``login throttled`` when refused before the check), NAME the
  login after ``userconv`` with spaces and control characters shown as ``?``,
  ADDRESS the client below: the form the fail2ban filter
  ``packaging/fail2ban/mailsift-webq.conf`` matches.
* **The client** is the socket's peer; ``X-Forwarded-For`` is believed only
  from a ``trusted_proxies`` peer (default: none), see :func:`client_address`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mailsift import validators
from mailsift.errors import MailsiftError, RequestRefused
from mailsift.storage.db import Database
from mailsift.validators import Network
from mailsift.web import users
from mailsift.web.session import CSRF_FIELD, SESSION_ID, USER_KEY, csrf_field, csrf_token, current_user
from mailsift.web.templating import N_, Text, render
from mailsift.web.users import User
from mailsift.web.webconfig import WebConfig

__all__ = [
    "PASSWORDS",
    "LoginRequired",
    "User",
    "UserMiddleware",
    "check_csrf",
    "client_address",
    "csrf_field",
    "csrf_token",
    "current_user",
    "require_admin",
    "require_user",
    "routes",
]

CSRF_HEADER = "x-csrf-token"
log = logging.getLogger("mailsift.webq")
T = TypeVar("T")


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
        raise HTTPException(403, Text(N_("Administrators only.")))
    return user


def login_required_handler(request: Request, exc: Exception) -> Response:
    if request.method in ("GET", "HEAD"):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    return render(request, "login.html", {"error": "Please log in.", "next": "/", "login": ""}, status_code=401)


class UserMiddleware:
    """Loads the session's user from the database (inside SessionMiddleware), once per request.

    The cookie's session id must name a live ``web_session`` row (not ended by
    logout, a password change or the user's removal; younger than
    ``session_seconds``; used within ``idle_seconds``); otherwise the cookie's
    session is cleared.
    """

    def __init__(self, app: ASGIApp, database: Database, config: WebConfig) -> None:
        self.app = app
        self.database = database
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            session: dict[str, Any] = scope.get("session", {})
            session_id = session.get(SESSION_ID)
            if isinstance(session_id, str):
                stored = await self.database.run(
                    users.load_session,
                    session_id,
                    time.time(),
                    self.config.session_seconds,
                    self.config.idle_seconds,
                )
                if stored is None:
                    session.clear()
                else:
                    scope[USER_KEY] = stored.user
            elif "uid" in session:  # a cookie of the client-side sessions before 0010_websessions
                session.clear()
        await self.app(scope, receive, send)


# --------------------------------------------------------------------------- the client


@functools.lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    return validators.networks(entries, "webq: trusted_proxies", single=False)


def in_networks(address: str, entries: Sequence[str]) -> bool:
    """Whether ``address`` (text) is in one of ``entries`` (addresses or networks)."""
    return validators.address_in(address, _networks(tuple(entries)))


def client_address(request: Request) -> str:
    """The client's address: the socket's peer, or, when the peer is one of ``trusted_proxies``,
    the last ``X-Forwarded-For`` hop that is not a trusted proxy ('' for a unix-socket peer without one)."""
    config: WebConfig = request.app.state.web_config
    peer = request.client.host if request.client else ""
    if not config.trusted_proxies or not in_networks(peer, config.trusted_proxies):
        return peer
    hops = [hop.strip() for value in request.headers.getlist("x-forwarded-for") for hop in value.split(",")]
    for hop in reversed(hops):
        address = validators.ip_address(hop)
        if address is None:
            return peer  # a hop that is not an address: believe nothing further
        if not in_networks(hop, config.trusted_proxies):
            return str(address)
    return peer


# --------------------------------------------------------------------------- password hashing


class PasswordPool:
    """A small thread pool for argon2 (hash and verify), apart from the scanners' threads.

    argon2 takes tens of milliseconds of CPU and memory on purpose; on the
    event loop it would stall every connection of the worker (SMTP included).
    At most ``threads`` run at once and ``waiting`` wait; beyond that
    :class:`~mailsift.errors.RequestRefused` (the login answers 503).  The executor is made at first use in each process
    (after the supervisor's fork).
    """

    def __init__(self, threads: int = 2, waiting: int = 128) -> None:
        self.threads, self.waiting = threads, waiting
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._pending = 0

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None or self._pid != os.getpid():
            self._executor = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="mailsift-password")
            self._pid, self._pending = os.getpid(), 0
        return self._executor

    def _done(self, _future: object) -> None:
        with self._lock:
            self._pending -= 1

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in the pool; counted until the thread finishes (even if the request is gone)."""
        pool = self._pool()
        with self._lock:
            if self._pending >= self.threads + self.waiting:
                raise RequestRefused("too many password checks waiting")
            self._pending += 1
        try:
            future = pool.submit(function, *args)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return await asyncio.wrap_future(future)


PASSWORDS = PasswordPool()
"""The web quarantine's argon2 pool (2 threads, 128 waiting)."""


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
        raise HTTPException(
            403, Text(N_("The form has expired or came from another site; reload the page and try again."))
        )


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


def _claim(connection: Any, keys: tuple[str, str], now: float, config: WebConfig) -> bool:
    """Claim this attempt for its (name, client) pair, then its client: False if either refuses."""
    pair, client = keys
    window = config.throttle_window
    if not users.claim_attempt(
        connection, pair, now, free=config.login_failures_per_name, window=window, delay=config.login_delay
    ):
        return False
    return users.claim_attempt(connection, client, now, free=config.login_failures_per_client, window=window)


def _logged_in(connection: Any, keys: tuple[str, str], session_id: str, user_id: int, now: float, life: float) -> None:
    pair, client = keys
    users.clear_failures(connection, [pair])
    users.forgive_attempt(connection, client)
    users.start_session(connection, session_id, user_id, now, life)


def log_name(login: str) -> str:
    """The login name as logged: one word (spaces and control characters as ``?``), at most 64 characters."""
    shown = "".join(c if c.isprintable() and not c.isspace() else "?" for c in login[:64])
    return shown or "-"


async def login_submit(request: Request) -> Response:
    form = await request.form()
    check_csrf(request, form)
    config, database = _config(request), _database(request)
    typed = str(form.get("login") or "")[: users.MAX_LOGIN]
    password = str(form.get("password") or "")[:1024]
    next_path = safe_next(str(form.get("next") or "/"))
    login = users.login_name(typed, config.userconv)
    client = client_address(request) or "unknown"
    keys = (f"pair:{login}|{client}", f"ip:{client}")
    now = time.time()
    context = {"next": next_path, "login": typed}
    try:
        if not await database.run(_claim, keys, now, config):
            log.warning("webq: login throttled for %s from %s", log_name(login), client)
            error = "Too many failed logins. Try again later."
            return render(request, "login.html", {**context, "error": error}, status_code=429)
        stored = await database.run(users.find_user, login) if login else None
        right = await PASSWORDS.run(users.verify_password, stored.password_hash if stored else None, password)
        if not right or stored is None:
            log.warning("webq: login failed for %s from %s", log_name(login), client)
            return render(request, "login.html", {**context, "error": "Wrong login or password."}, status_code=401)
        session_id = secrets.token_urlsafe(32)
        await database.run(_logged_in, keys, session_id, stored.user.id, now, config.session_seconds)
    except MailsiftError as error:  # the database, or too many password checks waiting
        log.warning("login from %s not checked: %s", client, error)
        return render(request, "login.html", {**context, "error": "Try again later."}, status_code=503)
    log.info("webq: login ok for %s from %s", log_name(login), client)
    request.session.clear()  # a new session: new id, new CSRF token, nothing of the anonymous one kept
    request.session.update({SESSION_ID: session_id})
    return RedirectResponse(next_path, status_code=303)


async def logout(request: Request) -> Response:
    check_csrf(request, await request.form())
    session_id = request.session.get(SESSION_ID)
    if isinstance(session_id, str):
        await _database(request).run(users.end_session, session_id)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


def routes() -> list[BaseRoute]:
    return [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login_submit, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
