"""The Jinja2 environment shared by every web page: autoescaped, with the CSRF field at hand.

Templates of other web modules live in the same folder (``<prefix>_*.html``)
and extend ``base.html``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from mailsift.reporting.verdicts import human_verdict
from mailsift.web.session import csrf_field, current_user

TEMPLATE_DIR = os.path.join(os.path.dirname(__file__), "templates")


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(seconds))


def _size(size: int) -> str:
    for unit in ("B", "kB", "MB"):
        if size < 1024 or unit == "MB":
            return f"{size} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size = size / 1024  # type: ignore[assignment]
    return str(size)


def _verdict(entry: Any, detail: str = "") -> str:
    """A quarantine entry's verdict as a person reads it (:func:`~mailsift.reporting.verdicts.human_verdict`)."""
    return human_verdict(entry.category, entry.name, entry.scanner, entry.level, detail)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,  # every template, whatever its name: mail content is hostile
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["size"] = _size
    env.filters["verdict"] = _verdict
    env.globals["_"] = lambda text, **values: text % values if values else text  # gettext stand-in (i18n)
    return env


templates = Jinja2Templates(env=_environment())


def render(request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200) -> HTMLResponse:
    """Render ``name`` with the request, the current user and the CSRF field in the context."""
    values: dict[str, Any] = {"user": current_user(request), "csrf_field": csrf_field(request)}
    values.update(context or {})
    return templates.TemplateResponse(request, name, values, status_code=status_code)
