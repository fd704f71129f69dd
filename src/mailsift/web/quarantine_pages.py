"""The quarantine pages: list, message, raw and attachment download, actions, preferences.

Every page asks :func:`~mailsift.web.auth.require_user` first, and finds
messages only through :mod:`mailsift.web.quarantine_queries`, whose queries
carry the ownership condition: a message that is not the user's answers 404,
exactly as a missing one.  Every POST checks the CSRF token before anything
else.  Actions reuse the quarantine's operations (:func:`mailsift.storage.quarantine.admin.release`,
:func:`~mailsift.storage.quarantine.admin.delete`), so the web and the CLI release and
record alike.

* release: an ordinary user releases to their own addresses among the
  message's recipients, and only categories :func:`~mailsift.storage.quarantine.admin.may_release`
  allows them (not ``virus`` or ``unscannable`` by default: ``webq(admin_release=...)``);
  an admin to all of its recipients.  The button asks first: its POST answers a
  confirmation page whose own POST (with the CSRF token and ``confirm``) releases;
  once every such recipient has it, the page shows who released it and when, no button;
* delete: an ordinary user may delete a message only when every recipient is
  theirs (it would vanish for the others too); an admin always; asked first like release;
* recheck: runs ``webq(scanner=...)`` over the original and shows the verdict;
* white/black list: the sender, for the user's own addresses among the
  recipients (SAGATOR's per-user lists, :func:`mailsift.storage.policies.add_listed`).
"""

from __future__ import annotations

import asyncio
import calendar
import functools
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from mailsift.core.pipeline import Pipeline
from mailsift.errors import ConfigError, MailsiftError, StorageError
from mailsift.message.mail import Envelope, Mail
from mailsift.reporting.notifications import translations
from mailsift.reporting.verdicts import human_verdict
from mailsift.settings import Settings
from mailsift.storage import policies as userpolicy
from mailsift.storage.quarantine.admin import (
    AlreadyReleased,
    QuarantineProblem,
    ReleaseInProgress,
    delete,
    may_release,
    release,
)
from mailsift.storage.quarantine.dbstore import store_of
from mailsift.storage.quarantine.index import HELD, STATES, QuarantineEntry
from mailsift.storage.quarantine.store import DamagedFile
from mailsift.web import mailview, users
from mailsift.web.auth import check_csrf, require_user
from mailsift.web.lists_pages import NOT_IN_USE
from mailsift.web.quarantine_queries import SORTS, ListQuery, categories, find_page, get_visible, own_recipients
from mailsift.web.spam_rules import rule_rows
from mailsift.web.templating import N_, Text, render, request_language, set_flash, take_flash
from mailsift.web.users import User
from mailsift.web.webconfig import WebConfig

log = logging.getLogger("mailsift.webq")
MAX_PAGE = 100_000


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _config(request: Request) -> WebConfig:
    config: WebConfig = request.app.state.web_config
    return config


def _flash(request: Request, text: str, kind: str = "notice") -> None:
    set_flash(request, text, kind)


def _take_flash(request: Request) -> tuple[str, str] | None:
    return take_flash(request)


def _date(value: str, *, end: bool = False) -> float | None:
    """``YYYY-MM-DD`` (UTC) → Unix seconds (the day's start, or the next day's with ``end``)."""
    try:
        day = time.strptime(value.strip(), "%Y-%m-%d")
    except ValueError:
        return None
    return float(calendar.timegm(day) + (86400 if end else 0))


def _int(value: str | None, default: int, low: int, high: int) -> int:
    try:
        number = int(value or "")
    except ValueError:
        return default
    return min(max(number, low), high)


async def _entry(request: Request, user: User) -> QuarantineEntry:
    entry_id = str(request.path_params["entry_id"])[:100]
    entry: QuarantineEntry | None = await _settings(request).require_database().run(get_visible, user, entry_id)
    if entry is None:
        raise HTTPException(404, Text(N_("No such message.")))
    return entry


async def _original(request: Request, entry: QuarantineEntry) -> bytes:
    store = store_of(_settings(request), entry)
    try:
        return await asyncio.to_thread(lambda: b"".join(store.chunks(entry)))
    except DamagedFile:
        raise HTTPException(500, Text(N_("The message file cannot be read."))) from None
    except StorageError:  # missing (a file moved away, rows gone), damaged or unreadable
        raise HTTPException(410, Text(N_("The message file is missing from the quarantine."))) from None
    except MailsiftError:  # the database failed meanwhile
        raise HTTPException(500, Text(N_("The message file cannot be read."))) from None


async def _detail(request: Request, entry: QuarantineEntry) -> str:
    try:
        return await asyncio.to_thread(store_of(_settings(request), entry).detail, entry)
    except MailsiftError:  # the verdict without its detail
        return ""


# --------------------------------------------------------------------------- pages


async def list_page(request: Request) -> Response:
    user = require_user(request)
    params = request.query_params
    sort = params.get("sort", "date")
    query = ListQuery(
        text=params.get("q", "")[:200].strip(),
        category=params.get("category", "")[:64],
        sender=params.get("sender", "")[:200].strip(),
        subject=params.get("subject", "")[:200].strip(),
        since=_date(params.get("since", "")),
        until=_date(params.get("until", ""), end=True),
        state=params.get("state", "") if params.get("state", "") in STATES else "",
        sort=sort if sort in SORTS else "date",
        descending=params.get("order", "desc") != "asc",
        page=_int(params.get("page"), 1, 1, MAX_PAGE),
        rows=user.rows,
    )
    database = _settings(request).require_database()
    entries, total = await database.run(find_page, user, query)
    known_categories = await database.run(categories, user)
    pages = max(1, -(-total // query.rows))
    kept = {k: v for k, v in params.items() if k != "page" and v}

    def page_link(page: int) -> str:
        return "?" + urlencode({**kept, "page": page})

    def sort_link(column: str) -> str:
        order = "asc" if query.sort == column and query.descending else "desc"
        return "?" + urlencode(
            {**{k: v for k, v in kept.items() if k not in ("sort", "order")}, "sort": column, "order": order}
        )

    context = {
        "entries": [(e, e.recipients if user.is_admin else own_recipients(user, e)) for e in entries],
        "total": total,
        "query": query,
        "params": params,
        "pages": pages,
        "page_link": page_link,
        "sort_link": sort_link,
        "categories": known_categories,
        "states": STATES,
        "flash": _take_flash(request),
    }
    return render(request, "q_list.html", context)


async def message_page(request: Request) -> Response:
    user = require_user(request)
    entry = await _entry(request, user)
    raw = await _original(request, entry)
    shown = await asyncio.to_thread(mailview.view, raw)
    released_to = json.loads(entry.released_to) if entry.released_to else []
    detail = await _detail(request, entry)
    context = {
        "detail": detail,
        "spam_rules": rule_rows(detail, shown.all_headers),
        "entry": entry,
        "recipients": entry.recipients if user.is_admin else own_recipients(user, entry),
        "released_to": released_to,
        "view": shown,
        "can_delete": user.is_admin or len(own_recipients(user, entry)) == len(entry.recipients),
        "can_release": _may_release(request, user, entry),
        "released_already": _released_already(user, entry),
        "can_recheck": bool(_config(request).scanners),
        "lists_in_use": _config(request).lists_in_use,
        "flash": _take_flash(request),
        "quoted_id": quote(entry.id, safe=""),
    }
    return render(request, "q_message.html", context)


async def raw_download(request: Request) -> Response:
    user = require_user(request)
    entry = await _entry(request, user)
    raw = await _original(request, entry)
    return _download(raw, f"{entry.id}.eml")


async def part_download(request: Request) -> Response:
    user = require_user(request)
    entry = await _entry(request, user)
    raw = await _original(request, entry)
    found = await asyncio.to_thread(mailview.part_bytes, raw, _int(request.path_params["index"], -1, -1, 10**6))
    if found is None:
        raise HTTPException(404, Text(N_("No such part.")))
    return _download(found[1], found[0])


def _download(content: bytes, filename: str) -> Response:
    """Always a download, never shown inline: octet-stream, attachment, nosniff (by the middleware)."""
    ascii_name = "".join(c if c.isalnum() or c in "._-" else "_" for c in filename)[:100] or "download.bin"
    disposition = f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename[:200], safe='')}"
    return Response(content, media_type="application/octet-stream", headers={"Content-Disposition": disposition})


# --------------------------------------------------------------------------- actions


def _back(entry: QuarantineEntry) -> RedirectResponse:
    return RedirectResponse(f"/q/{quote(entry.id, safe='')}", status_code=303)


def _release_targets(user: User, entry: QuarantineEntry) -> list[str]:
    return list(entry.recipients) if user.is_admin else own_recipients(user, entry)


def _released_already(user: User, entry: QuarantineEntry) -> bool:
    """Whether every recipient this user would release to has the message already (no button then)."""
    done = set(json.loads(entry.released_to)) if entry.released_to else set()
    return entry.state != HELD and set(_release_targets(user, entry)) <= done


def _admin_only(entry: QuarantineEntry) -> Text:
    return Text(N_("Only an administrator can release a message quarantined as %(category)s."), category=entry.category)


def _may_release(request: Request, user: User, entry: QuarantineEntry) -> bool:
    return may_release(entry.category, admin=user.is_admin, admin_release=_config(request).admin_release)


async def release_action(request: Request) -> Response:
    form = await request.form()
    check_csrf(request, form)
    user = require_user(request)
    entry = await _entry(request, user)
    if not _may_release(request, user, entry):
        log.warning("webq: %s may not release %s (%s): refused", user.login, entry.id, entry.category)
        raise HTTPException(403, _admin_only(entry))
    targets = _release_targets(user, entry)
    if _released_already(user, entry):
        _flash(request, Text(N_("This message was released already.")), "error")
        return _back(entry)
    if form.get("confirm") != "yes":  # the first POST asks; the confirmation's POST releases
        context = {"entry": entry, "targets": targets, "quoted_id": quote(entry.id, safe="")}
        return render(request, "q_release.html", context)
    try:
        await release(_settings(request), entry, recipients=targets, by=f"web:{user.login}")
    except ReleaseInProgress as error:  # another click, admin or gateway holds the claim: nothing sent
        log.info("webq: %s: %s", user.login, error)
        _flash(
            request,
            Text(N_("This message is being released by %(user)s right now; it is not sent twice."), user=error.by),
            "error",
        )
        return _back(entry)
    except AlreadyReleased as error:
        _flash(
            request, Text(N_("This message was released already by %(user)s."), user=error.entry.released_by), "error"
        )
        return _back(entry)
    except (QuarantineProblem, MailsiftError) as error:
        log.warning("webq: %s could not release %s: %s", user.login, entry.id, error)
        _flash(request, Text(N_("The message could not be released now; try again later.")), "error")
        return _back(entry)
    _flash(request, Text(N_("Released to %(targets)s."), targets=", ".join(targets)))
    return _back(entry)


async def delete_action(request: Request) -> Response:
    form = await request.form()
    check_csrf(request, form)
    user = require_user(request)
    entry = await _entry(request, user)
    if not user.is_admin and len(own_recipients(user, entry)) != len(entry.recipients):
        raise HTTPException(403, Text(N_("This message has other recipients too; ask an administrator to delete it.")))
    if form.get("confirm") != "yes":  # the first POST asks; the confirmation's POST deletes
        return render(request, "q_delete.html", {"entry": entry, "quoted_id": quote(entry.id, safe="")})
    try:
        await asyncio.to_thread(delete, _settings(request), entry)
    except MailsiftError as error:  # the store and the database map their own OSError
        log.warning("webq: %s could not delete %s: %s", user.login, entry.id, error)
        _flash(request, Text(N_("The message could not be deleted now; try again later.")), "error")
        return _back(entry)
    log.info("webq: %s deleted %s", user.login, entry.id)
    _flash(request, Text(N_("Message %(id)s deleted."), id=entry.id))
    return RedirectResponse("/q/", status_code=303)


async def recheck_action(request: Request) -> Response:
    check_csrf(request, await request.form())
    user = require_user(request)
    entry = await _entry(request, user)
    scanners = _config(request).scanners
    if not scanners:
        raise HTTPException(404, Text(N_("No scanner is configured for rechecking.")))
    raw = await _original(request, entry)
    envelope = Envelope(sender=entry.sender, recipients=list(entry.recipients), queue_id=entry.id)
    mail = Mail(envelope, raw, spool_threshold=len(raw) + 1)
    pipeline = Pipeline(scanners)
    try:
        decision = await pipeline.evaluate(mail)
    except Exception as error:  # noqa: BLE001 - any scanner failure is shown, never a 500
        log.warning("webq: recheck of %s failed: %s", entry.id, error)
        _flash(request, Text(N_("The recheck failed; the scanner is not available now.")), "error")
        return _back(entry)
    finally:
        mail.close()
    result = decision.result
    gettext = translations(request_language(request)).gettext  # the verdict's words, in the page's language
    verdict = human_verdict("", result.name, result.scanner, result.level, result.detail, gettext)
    text = Text(  # the level and scanner: what was run
        N_("Recheck: %(verdict)s (level %(level)s, %(scanner)s)."),
        verdict=verdict,
        level=f"{result.level:.2f}",
        scanner=result.scanner or "-",
    )
    _flash(request, text, "error" if result.level >= 1.0 else "notice")
    return _back(entry)


async def list_sender_action(request: Request) -> Response:
    form = await request.form()
    check_csrf(request, form)
    user = require_user(request)
    entry = await _entry(request, user)
    which = str(form.get("list") or "")
    if which not in ("white", "black") or not entry.sender:
        raise HTTPException(
            400, Text(N_("Choose the white or the black list; a message without sender cannot be listed."))
        )
    owners = _list_owners(user, entry)
    if which not in _config(request).lists_in_use:  # the scanners would never read the entry
        not_listed = N_("Not whitelisted: %(reason)s") if which == "white" else N_("Not blacklisted: %(reason)s")
        _flash(request, Text(not_listed, reason=NOT_IN_USE), "error")
        return _back(entry)
    try:
        await _settings(request).require_database().run(_add_sender, which, [(entry.sender, owners)], user.login)
    except (ConfigError, MailsiftError) as error:
        _flash(request, Text(N_("Not listed: %(reason)s"), reason=str(error)), "error")
        return _back(entry)
    listed = (
        N_("%(sender)s whitelisted for %(owners)s.")
        if which == "white"
        else N_("%(sender)s blacklisted for %(owners)s.")
    )
    _flash(request, Text(listed, sender=entry.sender, owners=", ".join(owners)))
    return _back(entry)


def _list_owners(user: User, entry: QuarantineEntry) -> list[str]:
    """The list owners for "whitelist sender" of ``entry``: the user's own mailboxes among its recipients
    (an admin's: all of them); HTTPException when there is none."""
    owners = own_recipients(user, entry) or (list(entry.recipients) if user.is_admin else [])
    if not owners:
        raise HTTPException(403, Text(N_("None of the recipients is yours.")))
    owners = list(dict.fromkeys(owner for owner in map(_mailbox, owners) if owner))
    if not owners:  # e.g. RCPT TO:<example.com>: never a domain's or a global entry
        raise HTTPException(
            400, Text(N_("No recipient of this message is a mailbox (local@domain) a list could belong to."))
        )
    return owners


def _add_sender(connection: Any, which: str, pairs: list[tuple[str, list[str]]], login: str) -> None:
    """Add each (sender, owners) pair to the ``which`` list, in one transaction."""
    now = time.time()
    for sender, owners in pairs:
        for owner in owners:
            userpolicy.add_listed(connection, which, "sender", sender, owner=owner, comment=f"webq {login}", now=now)


def _mailbox(recipient: str) -> str:
    """The recipient as a list owner, or ``""`` when it is not a whole mailbox."""
    try:
        return userpolicy.mailbox_owner(recipient)
    except ConfigError:
        return ""


# --------------------------------------------------------------------------- bulk actions

BULK_ACTIONS = ("release", "delete", "whitelist")
MAX_BULK = 200
"""Messages one bulk action takes at most (a full page at the largest "rows per page")."""
REFUSED = N_("Refused: %(reason)s")
NOT_WHITELISTED = N_("Not whitelisted: %(reason)s")
COULD_NOT = {
    "release": N_("Could not release it now; try again later."),
    "delete": N_("Could not delete it now; try again later."),
    "whitelist": N_("Could not whitelist it now; try again later."),
}


@dataclass
class BulkItem:
    """One selected message of a bulk action: what will happen (or happened) to it."""

    id: str
    entry: QuarantineEntry | None
    allowed: bool
    note: str
    """What will happen (or happened) to it: a :class:`~mailsift.web.templating.Text`, shown translated."""
    targets: list[str] = field(default_factory=list)
    done: bool = False


def _visible_many(connection: Any, user: User, ids: list[str]) -> dict[str, QuarantineEntry]:
    found = {}
    for entry_id in ids:
        entry = get_visible(connection, user, entry_id)
        if entry is not None:
            found[entry_id] = entry
    return found


def _plan(request: Request, user: User, action: str, entry_id: str, entry: QuarantineEntry | None) -> BulkItem:
    """What ``action`` would do to one selected message, or why it is refused (checked as the single actions)."""
    if entry is None:  # missing, or not this user's: alike, as for a single message
        return BulkItem(entry_id, None, False, Text(N_("No such message.")))
    if action == "release":
        targets = _release_targets(user, entry)
        if not _may_release(request, user, entry):
            return BulkItem(
                entry_id,
                entry,
                False,
                Text(
                    N_("Refused: only an administrator can release a message quarantined as %(category)s."),
                    category=entry.category,
                ),
            )
        if _released_already(user, entry):
            return BulkItem(entry_id, entry, False, Text(N_("Released already.")))
        return BulkItem(entry_id, entry, True, Text(N_("Release to %(targets)s."), targets=", ".join(targets)), targets)
    if action == "delete":
        if not user.is_admin and len(own_recipients(user, entry)) != len(entry.recipients):
            note = Text(REFUSED, reason=Text(N_("it has other recipients too; ask an administrator.")))
            return BulkItem(entry_id, entry, False, note)
        return BulkItem(entry_id, entry, True, Text(N_("Delete for good.")))
    if "white" not in _config(request).lists_in_use:
        return BulkItem(entry_id, entry, False, Text(NOT_WHITELISTED, reason=NOT_IN_USE))
    if not entry.sender:
        return BulkItem(
            entry_id, entry, False, Text(REFUSED, reason=Text(N_("a message without sender cannot be listed.")))
        )
    try:
        owners = _list_owners(user, entry)
    except HTTPException as error:
        return BulkItem(entry_id, entry, False, Text(REFUSED, reason=error.detail))
    note = Text(N_("Whitelist %(sender)s for %(owners)s."), sender=entry.sender, owners=", ".join(owners))
    return BulkItem(entry_id, entry, True, note, owners)


async def _carry_out(request: Request, user: User, action: str, items: list[BulkItem]) -> None:
    """Do ``action`` for every allowed item; each item's note says what happened to it."""
    settings = _settings(request)
    allowed = [item for item in items if item.allowed and item.entry is not None]
    if action == "whitelist":
        pairs = [(item.entry.sender, item.targets) for item in allowed if item.entry is not None]
        try:
            await settings.require_database().run(_add_sender, "white", pairs, user.login)
        except (ConfigError, MailsiftError) as error:
            for item in allowed:
                item.note = Text(NOT_WHITELISTED, reason=str(error))
            return
        for item in allowed:
            item.done, item.note = True, Text(N_("Whitelisted for %(owners)s."), owners=", ".join(item.targets))
        return
    for item in allowed:
        entry = item.entry
        assert entry is not None
        try:
            if action == "release":
                await release(settings, entry, recipients=item.targets, by=f"web:{user.login}")
                item.note = Text(N_("Released to %(targets)s."), targets=", ".join(item.targets))
            else:
                await asyncio.to_thread(delete, settings, entry)
                item.note = Text(N_("Deleted."))
            item.done = True
        except ReleaseInProgress as error:
            item.note = Text(N_("Not released: %(user)s is releasing it right now."), user=error.by)
        except AlreadyReleased as error:
            item.note = Text(N_("Released already by %(user)s."), user=error.entry.released_by)
        except (QuarantineProblem, MailsiftError) as error:
            log.warning("webq: %s could not %s %s: %s", user.login, action, entry.id, error)
            item.note = Text(COULD_NOT[action])


async def bulk_action(request: Request) -> Response:
    """``POST /q/bulk``: ``action`` (release, delete, whitelist) for the selected ``id`` fields.

    The first POST answers a confirmation page listing each message and what
    will happen to it (or why it is refused); its own POST (``confirm=yes``)
    re-checks every message and carries the action out for the allowed ones.
    At most :data:`MAX_BULK` messages."""
    form = await request.form()
    check_csrf(request, form)
    user = require_user(request)
    action = str(form.get("action") or "")
    if action not in BULK_ACTIONS:
        raise HTTPException(400, Text(N_("Choose release, delete or whitelist.")))
    ids = list(dict.fromkeys(str(value)[:100] for value in form.getlist("id")))
    if not ids:
        _flash(request, Text(N_("Select at least one message first.")), "error")
        return RedirectResponse("/q/", status_code=303)
    if len(ids) > MAX_BULK:
        raise HTTPException(400, Text(N_("Select at most %(count)s messages at once."), count=MAX_BULK))
    entries = await _settings(request).require_database().run(_visible_many, user, ids)
    items = [_plan(request, user, action, entry_id, entries.get(entry_id)) for entry_id in ids]
    confirmed = form.get("confirm") == "yes"
    if confirmed:
        await _carry_out(request, user, action, items)
        done = sum(item.done for item in items)
        log.info("webq: %s bulk %s: %d of %d selected", user.login, action, done, len(items))
    context = {"action": action, "items": items, "confirmed": confirmed, "allowed": sum(i.allowed for i in items)}
    return render(request, "q_bulk.html", context)


async def preferences_page(request: Request) -> Response:
    user = require_user(request)
    if request.method == "POST":
        form = await request.form()
        check_csrf(request, form)
        language = str(form.get("language") or "")
        rows = _int(str(form.get("rows") or ""), 0, 0, 10**6)
        if (language and language not in users.LANGUAGES) or rows not in users.ROWS_CHOICES:
            raise HTTPException(400, Text(N_("Choose a language and a number of rows from the lists.")))
        await (
            _settings(request)
            .require_database()
            .run(functools.partial(users.set_preferences, user_id=user.id, language=language, rows=rows))
        )
        _flash(request, Text(N_("Preferences saved.")))
        return RedirectResponse("/prefs", status_code=303)
    context = {"languages": users.LANGUAGES, "rows_choices": users.ROWS_CHOICES, "flash": _take_flash(request)}
    return render(request, "q_prefs.html", context)


def routes() -> list[BaseRoute]:
    return [
        Route("/q/", list_page, methods=["GET"]),
        Route("/q/bulk", bulk_action, methods=["POST"]),
        Route("/q/{entry_id}", message_page, methods=["GET"]),
        Route("/q/{entry_id}/raw", raw_download, methods=["GET"]),
        Route("/q/{entry_id}/part/{index}", part_download, methods=["GET"]),
        Route("/q/{entry_id}/release", release_action, methods=["POST"]),
        Route("/q/{entry_id}/delete", delete_action, methods=["POST"]),
        Route("/q/{entry_id}/recheck", recheck_action, methods=["POST"]),
        Route("/q/{entry_id}/list", list_sender_action, methods=["POST"]),
        Route("/prefs", preferences_page, methods=["GET", "POST"]),
    ]
