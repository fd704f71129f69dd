"""Message tracking pages for admins: ``/track`` (search) and ``/track/<log id>`` (one message's story).

Admins only (:func:`mailsift.web.auth.require_admin`: 403 for an ordinary
user, the login page for nobody), checked first in every handler, before any
query.  The pages only read (GET), so they carry no CSRF token; the search
terms travel in the URL, so a search can be bookmarked and paged.  Every
value shown comes from mail (hostile) and goes through Jinja2's autoescape.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mailsift.errors import MailsiftError
from mailsift.reporting.tracking import (
    MAX_LIMIT,
    MAX_TEXT,
    Story,
    StoryPage,
    TrackQuery,
    TrackQueryError,
    fates,
    find_stories,
    format_time,
    get_story,
    parse_time,
)
from mailsift.reporting.verdicts import human_verdict
from mailsift.storage.db import Database
from mailsift.web.auth import require_admin
from mailsift.web.templating import N_, Text, render

FIELDS = ("sender", "recipient", "message_id", "queue_id", "node", "since", "until")
"""The search form's fields, as named in the URL."""


def _database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def _form(request: Request) -> dict[str, str]:
    """The search terms as typed (cut to a sane length), for the query and to refill the form."""
    return {name: request.query_params.get(name, "").strip()[:MAX_TEXT] for name in FIELDS}


def _query(form: dict[str, str], offset_text: str, page_size: int) -> TrackQuery:
    """The :class:`TrackQuery` for the form; :class:`TrackQueryError` if a term makes no sense."""
    try:
        offset = int(offset_text or "0")
    except ValueError:
        raise TrackQueryError("offset: a whole number expected") from None
    return TrackQuery(
        sender=form["sender"] or None,
        recipient=form["recipient"] or None,
        message_id=form["message_id"] or None,
        queue_id=form["queue_id"] or None,
        node=form["node"] or None,
        since=parse_time(form["since"]) if form["since"] else None,
        until=parse_time(form["until"]) if form["until"] else None,
        limit=max(1, min(page_size, MAX_LIMIT)),
        offset=offset,
    )


def _page_link(form: dict[str, str], offset: int) -> str:
    terms = {name: value for name, value in form.items() if value}
    if offset:
        terms["offset"] = str(offset)
    return "/track" + (f"?{urlencode(terms)}" if terms else "")


async def search(request: Request) -> Response:
    """The search form and one page of matching messages, newest first."""
    user = require_admin(request)
    form = _form(request)
    context: dict[str, Any] = {"form": form, "page": None, "error": "", "summary": {}, "links": {}}
    context["human"] = human_story_verdict
    try:
        query = _query(form, request.query_params.get("offset", ""), user.rows)
    except TrackQueryError as error:
        context["error"] = str(error)
        return render(request, "track_search.html", context, status_code=400)
    try:
        page: StoryPage = await _database(request).run(find_stories, query)
    except MailsiftError:
        context["error"] = "The message log cannot be read right now; try again later."
        return render(request, "track_search.html", context, status_code=503)
    context["page"] = page
    context["summary"] = fates(page.stories)
    context["links"] = {
        "previous": _page_link(form, query.previous_page().offset) if query.offset else "",
        "next": _page_link(form, query.next_page().offset) if page.has_more else "",
    }
    return render(request, "track_search.html", context)


async def story(request: Request) -> Response:
    """One message: envelope, verdict, quarantine copies and the timeline."""
    require_admin(request)
    story_id: int = request.path_params["story_id"]
    try:
        found = await _database(request).run(get_story, story_id)
    except MailsiftError:
        raise HTTPException(503, Text(N_("The message log cannot be read right now; try again later."))) from None
    if found is None:
        raise HTTPException(404, Text(N_("No such message in the log (it may have been cleaned up).")))
    human = human_story_verdict(found)
    timeline = [(event.time, _humane(event.text, found, human), event.text) for event in found.events()]
    context = {"story": found, "when": format_time, "human": human, "timeline": timeline}
    return render(request, "track_story.html", context)


def human_story_verdict(story: Story) -> str:
    """The story's verdict as a person reads it (``Virus: Eicar-Test-Signature``, ``Spam, score 12.3 of 5.0``)."""
    category = next((copy.category for copy in story.quarantine if copy.category), "")
    detail = ""
    if story.spam_score is not None and story.spam_required is not None:
        detail = f"score={story.spam_score:g} required={story.spam_required:g}"
    if story.level < 1.0 and not category:
        return "Clean"
    return human_verdict(category, story.name, story.scanner, story.level, detail)


def _humane(text: str, story: Story, human: str) -> str:
    """The human verdict to put before a timeline line: on the line of the decision (the one naming the
    technical verdict ``by scanner: name (level 1.00)``, which stays for the admin), else ``""``."""
    return human if story.verdict != "clean" and f" by {story.verdict}" in text else ""


def routes() -> list[BaseRoute]:
    """The tracking pages, for ``create_app(extra_routes=...)``."""
    return [
        Route("/track", search, methods=["GET"], name="track"),
        Route("/track/{story_id:int}", story, methods=["GET"], name="track_story"),
    ]
