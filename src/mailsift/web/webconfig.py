"""The web quarantine's options, checked once (by the ``webq`` service) and passed in."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from mailsift.storage.quarantine.admin import ADMIN_RELEASE


@dataclass(frozen=True)
class WebConfig:
    """What the pages need besides the global settings.

    ``userconv``: SAGATOR's login rewriting, compiled ``(regex, replacement)``
    pairs.  ``secure_cookies``: mark the session cookie ``Secure`` (set it
    when users reach webq over https, e.g. through a proxy).  ``scanners``:
    what "recheck" runs (empty: no recheck button).  Times are seconds.
    """

    userconv: tuple[tuple[re.Pattern[str], str], ...] = ()
    secure_cookies: bool = False
    scanners: tuple[Any, ...] = ()
    session_seconds: float = 8 * 3600
    """A session ends this long after login, whatever the activity."""
    idle_seconds: float = 3600
    """A session ends after this long without a request (the signed cookie's max age)."""
    link_seconds: float = 7 * 86400
    """Signed message links (for notifications) expire after this long."""
    login_failures_per_name: int = 5
    login_failures_per_client: int = 30
    throttle_window: float = 900
    trusted_proxies: tuple[str, ...] = field(default=("127.0.0.1",))
    """Clients whose X-Forwarded-For names the real client (uvicorn's forwarded_allow_ips)."""
    admin_release: frozenset[str] = frozenset(ADMIN_RELEASE)
    """Quarantine categories only an admin may release (the pages and the digest links)."""
