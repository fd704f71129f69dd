"""The Jinja2 environment shared by every web page: autoescaped, with the CSRF field at hand.

Templates of other web modules live in the same folder (``<prefix>_*.html``)
and extend ``base.html``.

The pages speak the user's language with the gettext catalogs of the
notifications (``reporting/locale``, :data:`~mailsift.reporting.notifications.LANGUAGES`):
a template writes ``{{ _("Log in") }}`` or ``{% trans %}...{% endtrans %}``,
and each request renders with the translations of :func:`page_language`:
the user's preference (Preferences; empty means "the browser's"), else the
browser's ``Accept-Language`` among the catalog languages, else webq's
``language`` (``"en"``).
"""

from __future__ import annotations

import gettext
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from mailsift.reporting.notifications import LANGUAGES, translations
from mailsift.reporting.verdicts import human_verdict
from mailsift.web.session import csrf_field, current_user

TEMPLATE_DIR = os.path.join(os.path.dirname(__file__), "templates")
LANGUAGE_NAMES = {
    "en": "English", "sk": "Slovenčina", "cs": "Čeština", "de": "Deutsch", "es": "Español",
    "it": "Italiano", "fr": "Français", "pt": "Português", "nl": "Nederlands", "pl": "Polski",
    "sv": "Svenska", "tr": "Türkçe", "lt": "Lietuvių", "af": "Afrikaans", "zh_CN": "简体中文",
}  # fmt: skip
"""Each catalog language in its own words (the Preferences page)."""
MAX_ACCEPT_LANGUAGE = 50
"""Entries of an ``Accept-Language`` header looked at, at most."""


def N_(message: str) -> str:  # noqa: N802 - gettext's name for "mark for the catalog, translate later"
    return message


class Text(str):
    """A text of the pages' code for a person (a notice, an error, a bulk note), translated when a page shows it.

    As a ``str`` it is the English text; :attr:`message` is its catalog msgid (mark it
    with :func:`N_` so that ``pybabel extract`` finds it) and :attr:`values` fill its
    ``%(name)s`` placeholders after the translation (a value that is a :class:`Text` is
    translated too). The ``translate`` filter shows it in the page's language."""

    message: str
    values: dict[str, object]

    def __new__(cls, message: str, **values: object) -> Text:
        text = super().__new__(cls, message % {k: str(v) for k, v in values.items()} if values else message)
        text.message = message
        text.values = values
        return text

    def dump(self) -> list[Any]:
        """A JSON form (the session's flash): ``[message, {name: value or dumped Text}]``."""
        return [self.message, {k: v.dump() if isinstance(v, Text) else str(v) for k, v in self.values.items()}]

    @classmethod
    def load(cls, data: object) -> str:
        """The text :meth:`dump` made (a plain string as it is; anything else as ``""``)."""
        if isinstance(data, str):
            return data
        if not (isinstance(data, list) and len(data) == 2 and isinstance(data[0], str) and isinstance(data[1], dict)):
            return ""
        try:
            return cls(data[0], **{str(k): cls.load(v) for k, v in data[1].items()})
        except (KeyError, ValueError, TypeError):  # a hand-made cookie: placeholders and values disagree
            return ""


def translated(gettext: Callable[[str], str], message: object) -> str:
    """``message`` (a :class:`Text` or a catalog msgid) in the language of ``gettext``; other texts as they are."""
    if isinstance(message, Text):
        if not message.values:
            return gettext(message.message)
        values = {k: translated(gettext, v) if isinstance(v, Text) else str(v) for k, v in message.values.items()}
        try:
            return gettext(message.message) % values
        except (KeyError, ValueError, TypeError):  # a translation that lost a placeholder: English
            return message.message % values
    return gettext(str(message)) if message else ""


PAGE_MESSAGES = (
    N_("Please log in."),
    N_("Wrong login or password."),
    N_("Try again later."),
    N_("Too many failed logins. Try again later."),
    N_("Preferences saved."),
    N_("Password changed; your other sessions ended."),
    N_("This message was released already."),
    N_("The message could not be released now; try again later."),
    N_("The message could not be deleted now; try again later."),
    N_("The recheck failed; the scanner is not available now."),
    # the fates of the message tracking and the states of a quarantine copy
    N_("delivered"),
    N_("rejected"),
    N_("quarantined"),
    N_("released"),
    N_("dropped"),
    N_("tempfailed"),
    N_("refused"),
    N_("held"),
    # the message view's text source (mailview.MailView.text_source)
    N_("text/html (converted to text)"),
)
"""Messages the pages' code passes to the templates (``{{ _(error) }}`` translates them); for ``pybabel extract``."""


def accept_language(header: str) -> list[str]:
    """The language ranges of an ``Accept-Language`` header, most wanted first (``q=0`` left out)."""
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(header.split(",")[:MAX_ACCEPT_LANGUAGE]):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        tag = tag.strip().lower()
        if tag and quality > 0 and len(tag) <= 35:
            ranked.append((-quality, position, tag))
    return [tag for _, _, tag in sorted(ranked)]


def page_language(preference: str, header: str, default: str = "en", languages: Sequence[str] = LANGUAGES) -> str:
    """The language of a page: the user's ``preference`` if it is a catalog language, else the first
    of ``Accept-Language`` that is one (``zh-CN`` reads ``zh_CN``) or whose primary tag is one (``de-AT``
    reads German; ``*`` is the default), else ``default``."""
    if preference in languages:
        return preference
    tags = {language.lower().replace("_", "-"): language for language in languages}
    for tag in accept_language(header):
        primary = tag.partition("-")[0]
        if primary == "*":
            return default
        if tag in tags or primary in tags:
            return tags.get(tag) or tags[primary]
    return default


def _translation(context: Any) -> gettext.NullTranslations:
    found = context.get("translation")
    return found if isinstance(found, gettext.NullTranslations) else gettext.NullTranslations()


@jinja2.pass_context
def _gettext(context: Any, message: str) -> str:
    return _translation(context).gettext(message)


@jinja2.pass_context
def _ngettext(context: Any, singular: str, plural: str, n: int) -> str:
    return _translation(context).ngettext(singular, plural, n)


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


@jinja2.pass_context
def _translate(context: Any, message: object) -> str:
    """A message the code passed in (an error, a notice, a :class:`Text`) in the page's language when the
    catalog has it; a plain string is not ``%`` formatted, so any text is safe here."""
    return translated(_translation(context).gettext, message)


@jinja2.pass_context
def _verdict(context: Any, entry: Any, detail: str = "") -> str:
    """A quarantine entry's verdict as a person reads it (:func:`~mailsift.reporting.verdicts.human_verdict`),
    in the page's language."""
    return human_verdict(entry.category, entry.name, entry.scanner, entry.level, detail, _translation(context).gettext)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,  # every template, whatever its name: mail content is hostile
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.i18n"],
    )
    # per request: the functions read the page's translation from the context (render() puts it there)
    env.install_gettext_callables(_gettext, _ngettext, newstyle=True)  # type: ignore[attr-defined]
    env.filters["when"] = _when
    env.filters["size"] = _size
    env.filters["verdict"] = _verdict
    env.filters["translate"] = _translate
    return env


templates = Jinja2Templates(env=_environment())


MAX_FLASH = 2000
"""Characters of a flash in the session cookie, at most (a longer one is kept as cut English text)."""


def set_flash(request: Request, text: str, kind: str = "notice") -> None:
    """A notice (``kind`` "notice" or "error") for the next page; a :class:`Text` is shown translated."""
    stored: object = text.dump() if isinstance(text, Text) else text[:500]
    if len(json.dumps(stored)) > MAX_FLASH:
        stored = str(text)[:500]
    request.session["flash"] = [kind, stored]


def take_flash(request: Request) -> tuple[str, str] | None:
    """The flash :func:`set_flash` left (once), as ``(kind, text)``."""
    flash = request.session.pop("flash", None)
    if not (isinstance(flash, list) and len(flash) == 2):
        return None
    return str(flash[0]), Text.load(flash[1])


def request_language(request: Request) -> str:
    """The language of the pages for this request (:func:`page_language`)."""
    user = current_user(request)
    config = getattr(request.app.state, "web_config", None)
    default = getattr(config, "language", "en")
    return page_language(user.language if user else "", request.headers.get("accept-language", ""), default)


def render(request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200) -> HTMLResponse:
    """Render ``name`` with the request, the current user, the CSRF field and the page's language."""
    language = request_language(request)
    values: dict[str, Any] = {
        "user": current_user(request),
        "csrf_field": csrf_field(request),
        "language": language,
        "translation": translations(language),
        "language_names": LANGUAGE_NAMES,
    }
    values.update(context or {})
    return templates.TemplateResponse(request, name, values, status_code=status_code)
