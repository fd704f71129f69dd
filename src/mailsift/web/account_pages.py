"""A user's own account: change the password (``/password``).

The form asks for the current password and the new one twice; the new one
must be at least ``webq(min_password_length=...)`` characters (default 10) and
differ from the current one.  The change (:func:`mailsift.web.users.update_user`)
ends every session of the user, this one included; in the same transaction
this browser gets a new session, so the user stays logged in here and nowhere
else.  The current password is checked in the argon2 pool
(:data:`mailsift.web.auth.PASSWORDS`); a wrong one is logged like a failed login.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from mailsift.errors import MailsiftError
from mailsift.web import users
from mailsift.web.auth import PASSWORDS, check_csrf, client_address, require_user
from mailsift.web.session import SESSION_ID
from mailsift.web.templating import render
from mailsift.web.webconfig import WebConfig

log = logging.getLogger("mailsift.webq")
MAX_PASSWORD = 1024


def _changed(
    connection: Any, login: str, password_hash: str, session_id: str, user_id: int, now: float, life: float
) -> None:
    users.update_user(connection, login, password_hash=password_hash)  # ends every session of the user
    users.start_session(connection, session_id, user_id, now, life)  # ... and this browser keeps one


async def password_page(request: Request) -> Response:
    user = require_user(request)
    config: WebConfig = request.app.state.web_config
    context: dict[str, Any] = {"error": "", "min_password": config.min_password_length, "flash": None}
    flash = request.session.pop("flash", None)
    if isinstance(flash, list) and len(flash) == 2:
        context["flash"] = (str(flash[0]), str(flash[1]))
    if request.method != "POST":
        return render(request, "account_password.html", context)
    form = await request.form()
    check_csrf(request, form)
    current = str(form.get("current") or "")[:MAX_PASSWORD]
    new, again = str(form.get("new") or "")[:MAX_PASSWORD], str(form.get("again") or "")[:MAX_PASSWORD]
    error = ""
    if new != again:
        error = "The two new passwords differ."
    elif len(new) < config.min_password_length:
        error = f"The new password must have at least {config.min_password_length} characters."
    elif new == current:
        error = "The new password is the same as the current one."
    if error:
        return render(request, "account_password.html", {**context, "error": error}, status_code=400)
    database = request.app.state.settings.require_database()
    try:
        stored = await database.run(users.find_user, user.login)
        right = await PASSWORDS.run(users.verify_password, stored.password_hash if stored else None, current)
        if not right or stored is None:
            log.warning(
                "webq: password change for %s from %s: wrong current password", user.login, client_address(request)
            )
            error = "The current password is wrong."
            return render(request, "account_password.html", {**context, "error": error}, status_code=400)
        password_hash = await PASSWORDS.run(users.hash_password, new)
        session_id = secrets.token_urlsafe(32)
        config_life = config.session_seconds
        await database.run(_changed, user.login, password_hash, session_id, user.id, time.time(), config_life)
    except MailsiftError as error_:
        log.warning("webq: password change for %s failed: %s", user.login, error_)
        error = "The password could not be changed now; try again later."
        return render(request, "account_password.html", {**context, "error": error}, status_code=503)
    log.info("webq: %s changed their password from %s; their other sessions ended", user.login, client_address(request))
    request.session.clear()
    request.session.update(
        {SESSION_ID: session_id, "flash": ["notice", "Password changed; your other sessions ended."]}
    )
    return RedirectResponse("/password", status_code=303)


def routes() -> list[BaseRoute]:
    return [Route("/password", password_page, methods=["GET", "POST"])]
