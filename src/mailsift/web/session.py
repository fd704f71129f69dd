"""What a page needs to know of the session: the logged-in user and the CSRF token.

Kept apart from :mod:`mailsift.web.auth` (which logs users in and checks tokens)
so that :mod:`mailsift.web.templating` can put both in every page without
importing the login code.
"""

from __future__ import annotations

import secrets
from typing import Any

from starlette.requests import Request

from mailsift.web.users import User

USER_KEY = "mailsift.user"
SESSION_ID = "sid"
"""The cookie's key for the server-side session id (:mod:`mailsift.web.auth`)."""
CSRF_FIELD = "csrf_token"


def current_user(request: Request) -> User | None:
    """The logged-in user (loaded by :class:`UserMiddleware`), or None."""
    user = request.scope.get(USER_KEY)
    return user if isinstance(user, User) else None


def csrf_token(request: Request) -> str:
    """This session's CSRF token (created on first use)."""
    token = request.session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def csrf_field(request: Request) -> Any:
    """The hidden form field carrying the token (markup safe for templates)."""
    from markupsafe import Markup, escape

    return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, escape(csrf_token(request)))
