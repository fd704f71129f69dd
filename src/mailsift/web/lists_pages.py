"""A user's own white and black lists (``/lists``): sender entries for the user's own addresses.

The entries are SAGATOR's per-user lists (:mod:`mailsift.storage.policies`):
owner = one of the user's own mailboxes (``local@domain``; a user's ``@domain``
addresses are not offered: a domain's list is the administrator's, with
``mailsift list``), field ``sender``, value an address or a domain.  They take
effect only where the config consults them (``listed()``, ``whitelisted()``,
``blacklisted()`` in the scanners, see ``WebConfig.lists_in_use``); otherwise
the page says the lists are not in use and accepts no change.  Every POST
checks the CSRF token first; an owner that is not the user's answers 403.
Bounded: at most :data:`MAX_ENTRIES` entries per owner, values as
:func:`~mailsift.storage.policies.normalize_value` takes them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import func, select
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from mailsift.errors import ConfigError, MailsiftError
from mailsift.storage import policies
from mailsift.storage.schema import listed_table
from mailsift.web.auth import check_csrf, require_user
from mailsift.web.templating import N_, Text, render, set_flash, take_flash
from mailsift.web.users import User
from mailsift.web.webconfig import WebConfig

log = logging.getLogger("mailsift.webq")
MAX_ENTRIES = 1000
"""Entries one owner may hold (a form submitted in a loop cannot fill the database)."""
NOT_YOURS = Text(N_("That address is not yours."))
ADDED = {
    "white": N_("%(value)s added to the white list of %(owner)s."),
    "black": N_("%(value)s added to the black list of %(owner)s."),
}
REMOVED = {
    "white": N_("%(value)s removed from the white list of %(owner)s."),
    "black": N_("%(value)s removed from the black list of %(owner)s."),
}
NOT_IN_USE = Text(N_("White and black lists are not in use on this gateway: an entry here would change nothing."))


def own_mailboxes(user: User) -> list[str]:
    """The user's addresses that own list entries: whole mailboxes, in their stored form."""
    owners = []
    for address in user.addresses:
        try:
            owners.append(policies.mailbox_owner(address))
        except ConfigError:
            continue  # @domain: the administrator's
    return list(dict.fromkeys(owners))


def _flash(request: Request, text: str, kind: str = "notice") -> None:
    set_flash(request, text, kind)


def _take_flash(request: Request) -> tuple[str, str] | None:
    return take_flash(request)


def _entries(connection: Any, owners: list[str]) -> list[policies.ListEntry]:
    return [e for owner in owners for e in policies.list_entries(connection, owner=owner) if e.field == "sender"]


def _add(connection: Any, which: str, value: str, owner: str, comment: str) -> None:
    count = connection.execute(select(func.count()).where(listed_table.c.owner == owner)).scalar_one()
    if count >= MAX_ENTRIES:
        raise ConfigError(f"{owner} has {MAX_ENTRIES} list entries already; remove some first")
    policies.add_listed(connection, which, "sender", value, owner=owner, comment=comment, now=time.time())


async def lists_page(request: Request) -> Response:
    user = require_user(request)
    config: WebConfig = request.app.state.web_config
    database = request.app.state.settings.require_database()
    owners = own_mailboxes(user)
    if request.method == "POST":
        form = await request.form()
        check_csrf(request, form)
        if not config.lists_in_use:
            raise HTTPException(409, NOT_IN_USE)
        which, owner = str(form.get("list") or ""), str(form.get("owner") or "")[:400]
        value = str(form.get("value") or "")[:600]
        if which not in config.lists_in_use:
            raise HTTPException(400, Text(N_("Choose a list this gateway consults.")))
        try:
            owner = policies.mailbox_owner(owner)
        except ConfigError:
            raise HTTPException(403, NOT_YOURS) from None
        if owner not in owners:
            raise HTTPException(403, NOT_YOURS)
        action = str(form.get("action") or "add")
        try:
            if action == "remove":
                gone = await database.run(lambda c: policies.remove_listed(c, which, "sender", value, owner=owner))
                text = (
                    Text(REMOVED[which], value=value, owner=owner)
                    if gone
                    else Text(N_("%(value)s was not listed."), value=value)
                )
                log.info("webq: %s removed %s from the %s list of %s", user.login, value, which, owner)
            else:
                await database.run(_add, which, value, owner, f"webq {user.login}")
                text = Text(ADDED[which], value=policies.normalize_value("sender", value), owner=owner)
                log.info("webq: %s added %s to the %s list of %s", user.login, value, which, owner)
        except ConfigError as error:
            _flash(request, Text(N_("Not changed: %(reason)s"), reason=error.message), "error")
        except MailsiftError as error:
            log.warning("webq: %s could not change the %s list of %s: %s", user.login, which, owner, error)
            _flash(request, Text(N_("The list could not be changed now; try again later.")), "error")
        else:
            _flash(request, text)
        return RedirectResponse("/lists", status_code=303)
    entries = await database.run(_entries, owners) if owners else []
    context = {
        "owners": owners,
        "entries": entries,
        "lists": [name for name in ("white", "black") if name in config.lists_in_use],
        "flash": _take_flash(request),
    }
    return render(request, "lists_own.html", context)


def routes() -> list[BaseRoute]:
    return [Route("/lists", lists_page, methods=["GET", "POST"])]
