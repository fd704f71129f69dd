"""The web quarantine's options, checked once (by the ``webq`` service) and passed in."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mailsift.storage.quarantine.admin import ADMIN_RELEASE

DEFAULT_BODY_LIMIT = 64 * 1024
DEFAULT_LOGIN_BODY_LIMIT = 8 * 1024
DEFAULT_FORM_FIELDS = 256  # a full page of bulk selection (200 ids) and the form's own fields
DEFAULT_HEADER_LIMIT = 32 * 1024


@dataclass(frozen=True)
class WebConfig:
    """What the pages need besides the global settings.

    ``userconv``: SAGATOR's login rewriting, compiled ``(regex, replacement)``
    pairs.  ``secure_cookies``: mark the session cookie ``Secure`` (the
    ``webq`` service sets it whenever its ``url`` is https, unless told
    otherwise).  ``scanners``: what "recheck" runs (empty: no recheck
    button).  Times are seconds, sizes bytes.
    """

    userconv: tuple[tuple[re.Pattern[str], str], ...] = ()
    secure_cookies: bool = False
    scanners: tuple[Any, ...] = ()
    session_seconds: float = 8 * 3600
    """A session ends this long after login, whatever the activity."""
    idle_seconds: float = 3600
    """A session ends after this long without a request (the server-side row and the cookie's max age)."""
    link_seconds: float = 7 * 86400
    """Signed message links (for notifications) expire after this long."""
    login_failures_per_name: int = 5
    """Logins checked for one (login name, client) pair before the progressive delay starts."""
    login_failures_per_client: int = 30
    """Logins checked for one client (any names) within ``throttle_window``; then 429 for that client."""
    login_delay: float = 5.0
    """The first delay past ``login_failures_per_name``; it doubles at each further attempt, up to the window."""
    throttle_window: float = 900
    """A key's count starts over after this long without a checked attempt."""
    trusted_proxies: tuple[str, ...] = ()
    """Reverse proxies (addresses or networks) whose X-Forwarded-For names the client; default none."""
    site_hosts: tuple[str, ...] = ()
    """Host names the site is reached by (from ``url`` and ``hosts``): /metrics accepts these ``Host`` headers."""
    body_limit: int = DEFAULT_BODY_LIMIT
    """The largest request body of any route (413 beyond it, before parsing)."""
    login_body_limit: int = DEFAULT_LOGIN_BODY_LIMIT
    """The largest body of ``POST /login`` and ``/logout``."""
    form_fields: int = DEFAULT_FORM_FIELDS
    """The most fields a form body may carry (413 beyond)."""
    header_limit: int = DEFAULT_HEADER_LIMIT
    """The request line and headers together (uvicorn's h11 ``max_incomplete_event_size``): 431/400 beyond."""
    min_password_length: int = 10
    """The shortest password a user may choose (``mailsift user add|passwd``, the web's own password change)."""
    lists_in_use: frozenset[str] = frozenset(("white", "black"))
    """The white/black lists the config's scanners consult (``listed()``: both; ``whitelisted()``: white...),
    set by :meth:`mailsift.web.service.webq.bind_config`; the pages offer only these."""
    admin_release: frozenset[str] = frozenset(ADMIN_RELEASE)
    """Quarantine categories only an admin may release (the pages and the digest links)."""
    language: str = "en"
    """The pages' language when neither the user's preference nor the browser's names a catalog language."""
