"""The digest's one-click links: ``/link/release/<token>`` and ``/link/whitelist/<token>``.

No login: the signed token (:mod:`mailsift.reporting.links`) is the authority, for one
action on one message for one recipient, until it expires.  ``GET`` only shows
what the link would do, with a button; the button ``POST``s (with the
session's CSRF token, :func:`mailsift.web.auth.check_csrf`), so a mail
scanner or a browser prefetching the link never releases anything.  After the
action the answer redirects to the ``GET`` page (post/redirect/get), which
says "done" once (a mark in the session) and from then on "already done": a
second click, a reload or a second ``POST`` never sends the message again.

Release reuses :func:`mailsift.storage.quarantine.admin.release` (to that recipient
only, recorded as ``digest link <recipient>``); whitelisting uses
:func:`mailsift.storage.policies.add_listed` on that recipient's own list.

A link holder is treated as an ordinary user: a release link for a category
only an admin may release (``webq(admin_release=...)``, ``virus`` by default)
is refused (403, "forbidden"), whenever it was signed.  A whitelist link works
only for a mailbox recipient (never ``example.com``: that would whitelist for
a whole domain), only while its message is in the quarantine (links of
rejected mail, which has none, until they expire), and adds the sender once:
after an admin removed the entry, the link says "used" and adds nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from mailsift.errors import ConfigError, MailsiftError
from mailsift.reporting import links
from mailsift.settings import Settings
from mailsift.storage.db import Database
from mailsift.storage.policies import add_listed, list_entries, mailbox_owner, normalize_value
from mailsift.storage.quarantine.admin import (
    AlreadyReleased,
    QuarantineProblem,
    ReleaseInProgress,
    may_release,
    release,
)
from mailsift.storage.quarantine.index import QuarantineEntry, get_entry
from mailsift.web.auth import check_csrf
from mailsift.web.templating import render
from mailsift.web.webconfig import WebConfig

log = logging.getLogger("mailsift.web.links")

MAX_FORM = 4096
"""The confirmation form is one hidden field; anything larger is refused unread."""
DONE_KEY = "mailsift.link_done"
"""Session key naming the link just used: the page after the redirect says "done", a reload "already"."""


def _just_done(request: Request) -> bool:
    """Whether this GET follows this browser's own POST on this link (shown once)."""
    return request.method == "GET" and request.session.pop(DONE_KEY, None) == request.url.path


def _done(request: Request) -> Response:
    request.session[DONE_KEY] = request.url.path
    return RedirectResponse(request.url.path, status_code=303)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def _signer(request: Request) -> links.LinkSigner:
    signer = getattr(request.app.state, "link_signer", None)
    if signer is None:
        signer = links.LinkSigner(request.app.state.secret)
        request.app.state.link_signer = signer
    return signer


def _admin_release(request: Request) -> frozenset[str]:
    config: WebConfig = request.app.state.web_config
    return config.admin_release


def _page(request: Request, status: int, **context: Any) -> Response:
    return render(request, "links_page.html", {"status": status, **context}, status_code=status)


async def _small_form(request: Request) -> FormData | None:
    """The urlencoded form if it is small; None otherwise (Starlette's parser reads any size)."""
    if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
        return None
    declared = request.headers.get("content-length", "")
    if not declared.isdigit() or int(declared) > MAX_FORM:
        return None
    return await request.form(max_files=0, max_fields=8)


def _recipient_of(entry: QuarantineEntry, recipient: str) -> bool:
    return recipient.lower() in {r.lower() for r in entry.recipients}


def _released_to(entry: QuarantineEntry, recipient: str) -> bool:
    """Whether the index records a release to ``recipient`` (by a link, the CLI or webq)."""
    if not entry.released_to:
        return False
    try:
        targets = json.loads(entry.released_to)
    except ValueError:
        return False
    return isinstance(targets, list) and recipient.lower() in {str(t).lower() for t in targets}


def _summary(entry: QuarantineEntry | None) -> dict[str, Any]:
    if entry is None:
        return {}
    return {"sender": entry.sender or "<>", "subject": entry.subject, "created": entry.created, "reason": entry.name}


async def release_view(request: Request) -> Response:
    """Confirm (GET) and carry out (POST) the release of one message to one recipient."""
    try:
        claim = _signer(request).verify(request.path_params["token"], links.RELEASE)
    except links.LinkError as error:
        return _page(request, 410 if error.reason == "expired" else 400, outcome=error.reason, action="release")
    database = _database(request)
    try:
        entry = await database.run(get_entry, claim.entry_id)
        state = await database.run(links.action_state, claim.entry_id, claim.recipient, links.RELEASE)
    except MailsiftError as error:
        log.warning("release link: %s", error.message)
        return _page(request, 503, outcome="unavailable", action="release")
    if entry is None or not _recipient_of(entry, claim.recipient):
        return _page(request, 410, outcome="gone", action="release")
    context = {"action": "release", "recipient": claim.recipient, **_summary(entry)}
    if not may_release(entry.category, admin=False, admin_release=_admin_release(request)):
        log.warning("release link: %s (%s) for <%s> refused: admins only", entry.id, entry.category, claim.recipient)
        return _page(request, 403, outcome="forbidden", category=entry.category, **context)
    if (state is not None and state.state == links.DONE) or _released_to(entry, claim.recipient):
        when = state.done_at if state is not None and state.done_at else entry.released_at
        return _page(request, 200, outcome="done" if _just_done(request) else "already", when=when, **context)
    if request.method == "GET":
        return _page(request, 200, outcome="confirm", **context)
    check_csrf(request, await _small_form(request))
    return await _release(request, entry, claim, context)


async def _release(
    request: Request, entry: QuarantineEntry, claim: links.LinkClaim, context: dict[str, Any]
) -> Response:
    database, now = _database(request), time.time()
    try:
        blocking = await database.run(links.claim, entry.id, claim.recipient, links.RELEASE, now)
    except MailsiftError as error:
        log.warning("release link %s: %s", entry.id, error.message)
        return _page(request, 503, outcome="unavailable", **context)
    if blocking is not None:
        if blocking.state == links.DONE:
            return RedirectResponse(request.url.path, status_code=303)
        return _page(request, 409, outcome="busy", **context)
    try:
        await release(_settings(request), entry, recipients=[claim.recipient], by=f"digest link {claim.recipient}")
    except (ReleaseInProgress, AlreadyReleased) as error:  # the entry's claim: a release by webq, the CLI, a node
        log.info("release link %s to <%s>: %s", entry.id, claim.recipient, error)
        await _quietly(database.run(links.unclaim, entry.id, claim.recipient, links.RELEASE))
        if isinstance(error, AlreadyReleased):
            return RedirectResponse(request.url.path, status_code=303)  # shows "released already"
        return _page(request, 409, outcome="busy", **context)
    except (QuarantineProblem, MailsiftError, ConfigError) as error:
        text = error.message if isinstance(error, MailsiftError | ConfigError) else str(error)
        log.warning("release link %s to <%s> failed: %s", entry.id, claim.recipient, text)
        await _quietly(database.run(links.unclaim, entry.id, claim.recipient, links.RELEASE))
        return _page(request, 503, outcome="failed", **context)
    await _quietly(database.run(links.finish, entry.id, claim.recipient, links.RELEASE, time.time()))
    log.info("release link: %s released to <%s>", entry.id, claim.recipient)
    return _done(request)


async def _quietly(step: Awaitable[None]) -> None:
    """Bookkeeping after the mail was handled: a database failure is logged, not shown."""
    try:
        await step
    except MailsiftError as error:
        log.warning("release link bookkeeping: %s", error.message)


async def whitelist_view(request: Request) -> Response:
    """Confirm (GET) and add (POST) the sender to the recipient's own whitelist, once."""
    try:
        claim = _signer(request).verify(request.path_params["token"], links.WHITELIST)
        sender = normalize_value("sender", claim.sender)
        owner = mailbox_owner(claim.recipient)
    except links.LinkError as error:
        return _page(request, 410 if error.reason == "expired" else 400, outcome=error.reason, action="whitelist")
    except ConfigError:  # no sender to list, or a recipient that is no mailbox (RCPT TO:<example.com>)
        return _page(request, 400, outcome="invalid", action="whitelist")
    context = {"action": "whitelist", "recipient": claim.recipient, "sender": sender}
    config: WebConfig = request.app.state.web_config
    if "white" not in config.lists_in_use:  # no listed()/whitelisted(): an entry would change nothing
        return _page(request, 409, outcome="not_in_use", **context)
    database = _database(request)
    key = links.whitelist_key(sender)
    try:
        entry = await database.run(get_entry, claim.entry_id) if claim.entry_id else None
        listed = await database.run(_whitelisted, owner, sender)
        state = await database.run(links.action_state, key, owner, links.WHITELIST)
    except MailsiftError as error:
        log.warning("whitelist link: %s", error.message)
        return _page(request, 503, outcome="unavailable", **context)
    if claim.entry_id and (entry is None or not _recipient_of(entry, claim.recipient)):
        return _page(request, 410, outcome="gone", **context)  # the message was deleted or expired
    if listed:
        return _page(request, 200, outcome="done" if _just_done(request) else "already", **context)
    if state is not None and state.state == links.DONE:  # a link added it once; an admin removed it since
        return _page(request, 200, outcome="used", when=state.done_at, **context)
    if request.method == "GET":
        return _page(request, 200, outcome="confirm", **context)
    check_csrf(request, await _small_form(request))
    try:
        blocking = await database.run(links.claim, key, owner, links.WHITELIST, time.time())
        if blocking is not None:  # another click is adding it right now, or added it already
            return _page(
                request, 409 if blocking.state == links.SENDING else 200, outcome=_outcome(blocking), **context
            )
        await database.run(_add_white, owner, sender)
        await database.run(links.finish, key, owner, links.WHITELIST, time.time())
    except (MailsiftError, ConfigError) as error:
        log.warning("whitelist link for <%s>: %s", claim.recipient, error.message)
        await _quietly(database.run(links.unclaim, key, owner, links.WHITELIST))
        return _page(request, 503, outcome="failed", **context)
    log.info("whitelist link: <%s> whitelisted sender %s", owner, sender)
    return _done(request)


def _outcome(state: links.ActionState) -> str:
    return "busy" if state.state == links.SENDING else "used"


def _whitelisted(connection: Any, owner: str, sender: str) -> bool:
    return any(
        e.list == "white" and e.field == "sender" and e.value == sender
        for e in list_entries(connection, owner=owner, now=time.time())
    )


def _add_white(connection: Any, owner: str, sender: str) -> None:
    add_listed(connection, "white", "sender", sender, owner=owner, comment="digest link", now=time.time())


def routes() -> list[BaseRoute]:
    """The link pages, for ``create_app(extra_routes=...)``."""
    views: dict[str, Callable[[Request], Awaitable[Response]]] = {
        links.RELEASE: release_view,
        links.WHITELIST: whitelist_view,
    }
    return [
        Route(f"{links.LINK_PREFIX}/{action}/{{token:str}}", view, methods=["GET", "POST"])
        for action, view in views.items()
    ]
