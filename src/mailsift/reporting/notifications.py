"""Notifications: tell the sender, the recipients and/or an admin why a message was stopped.

Configured like Qmail-Scanner's ``--notify`` and listed in ``HOOKS``::

    HOOKS = [notify("psender,admin", admin="postmaster@example.com", languages={"sk": "sk"})]
    HOOKS = [notify(sender=("policy",), recipients=True, admin="postmaster@example.com",
                    categories=("virus", "policy"), language="de")]

Who is told (``spec``, Qmail-Scanner's words, or the keyword arguments):

* ``sender`` / ``psender`` — the envelope sender; ``psender`` only for
  ``policy`` blocks (viruses forge their senders: Qmail-Scanner's default).
* ``recips`` / ``precips`` — each envelope recipient (one message each, so
  Bcc recipients stay hidden), for every category / only for ``policy``.
* ``admin`` — the ``admin`` address, for every category; ``all`` = all three;
  ``none`` = nobody.

Only messages that were stopped are notified (``dispositions``: rejected,
dropped or quarantined) and only in the configured ``categories``; a message
answered 4xx (the MTA retries it) is never notified.  The category is the
quarantine folder when there is one, else ``spam`` for spam engines, ``virus``
for antivirus engines and ``policy`` for everything else.

No notification at all, to anybody, when (:func:`suppression`):

* the envelope sender is empty or automatic (``MAILER-DAEMON``, ``postmaster``,
  ``*-request``, ``owner-*``, ``*-bounces``, ``noreply``, qmail's ``#@[]``...);
* the message is list or bulk mail (``List-Id`` and the other ``List-*``
  headers, ``Mailing-List``, ``Precedence: bulk|list|junk``) or automatic
  (``Auto-Submitted`` other than ``no``, or a mailsift notification);
* the virus is known to forge senders (:data:`SILENT_VIRUSES`, Qmail-Scanner's
  silent-virus list with the st patch's ``spam``).

Notifications are sent with a null envelope sender (``MAIL FROM:<>``) and
``Auto-Submitted: auto-replied`` (RFC 3834), so no one answers them and a
notification that comes back through mailsift is never notified about: they
cannot loop.  They go out through :func:`mailsift.delivery.next_hop.resolve` (the
``next_hop`` option, else ``SMTP_SERVER``), the same SMTP delivery as mail.
A failure to notify is logged; as for every hook, it never changes the reply.

Texts are Jinja2 templates (``templates/sender.txt``, ``recipient.txt``,
``admin.txt``; ``template_dir=`` puts your own first) translated with gettext
catalogs in ``locale/`` (English, Slovak, Czech, German, Spanish).  The first
``{% set notice_subject %}`` of a template is the Subject; the rest is the body.
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import gettext
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from email.message import EmailMessage
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailsift import validators
from mailsift.core.hooks import Hook
from mailsift.delivery.next_hop import Delivery, SMTPDelivery, resolve
from mailsift.errors import ConfigError, MailsiftError
from mailsift.message.address import address_problem, check_addresses
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Decision, Disposition
from mailsift.scanners.engines.common import SpamResult

if TYPE_CHECKING:
    import jinja2

    from mailsift.core.disposition import Outcome
    from mailsift.settings import Settings

log = logging.getLogger("mailsift.notifications")

LANGUAGES = ("en", "sk", "cs", "de", "es", "it", "fr", "pt", "nl", "pl", "sv", "tr", "lt", "af", "zh_CN")
"""The languages the shipped templates are translated to (English is the source)."""

LOCALE_DIR = Path(__file__).parent / "locale"
TEMPLATE_DIR = Path(__file__).parent / "templates"
DOMAIN = "mailsift"

SILENT_VIRUSES = (
    # Qmail-Scanner's @silent_viruses_array: mass mailers that forge the sender,
    # matched case-insensitively anywhere in the virus name...
    "klez", "bugbear", "hybris", "yaha", "braid", "nimda", "tanatos", "sobig", "winevar",
    "palyh", "fizzer", "gibe", "cailont", "lovelorn", "swen", "dumaru", "sober", "hawawi",
    "hawaii", "holar", "mimail", "poffer", "bagle", "galil", "mydoom", "novarg", "tanx",
    "@mm", "netsky", "lovgate", "somefool", "mabutu", "zafi", "zhelatin", "phish",
    # ...and the st patch's "spam": spam senders are forged too.
    "spam",
)  # fmt: skip

PARTIES = ("sender", "recipient", "admin")
_SPEC_WORDS = ("none", "sender", "psender", "recips", "precips", "admin", "all")
_ACTIONS = {Disposition.REJECT: "reject", Disposition.DROP: "drop", Disposition.QUARANTINE: "quarantine"}
_VIRUS_SCANNERS = frozenset({"clamd", "clamscan", "cmd_clamav"})
_SPAM_SCANNERS = frozenset({"spamassassind", "rspamd", "bogofilter"})
_AUTOMATIC_SENDER = re.compile(
    r"(mailer-daemon|postmaster|listserv|majordomo|mailman|smartlist|ezmlm|owner-.*|.*-owner|.*-request"
    r"|(.*-)?bounces?([+=-].*)?|no-?reply|do-?not-?reply|#)",
    re.IGNORECASE,
)
_LIST_HEADERS = ("list-id", "list-post", "list-unsubscribe", "list-help", "mailing-list", "x-mailing-list")
NOTIFICATION_HEADER = "X-Mailsift-Notification"
MAX_RECIPIENT_NOTICES = 100
"""At most this many recipients are notified about one message (the rest are logged)."""
_SHOWN_RECIPIENTS = 20
_MESSAGE_ID = re.compile(r"<[^<>\s]{1,250}>")


# --------------------------------------------------------------------------- rules


def suppression(mail: Mail, decision: Decision, silent_viruses: Iterable[str] = SILENT_VIRUSES) -> str:
    """Why no one may be notified about ``mail`` (empty string: notifying is allowed)."""
    sender = mail.envelope.sender.strip()
    if sender in ("", "<>"):  # aiosmtpd hands the null sender on as "<>"
        return "null sender"
    local = sender.rpartition("@")[0] or sender
    if _AUTOMATIC_SENDER.fullmatch(local):
        return f"automatic sender <{sender}>"
    headers = mail.headers
    if NOTIFICATION_HEADER in headers:
        return "a notification"
    submitted = headers.get("auto-submitted").strip().lower()
    if submitted and not submitted.startswith("no"):
        return f"Auto-Submitted: {submitted[:40]}"
    for name in _LIST_HEADERS:
        if name in headers:
            return f"list mail ({name})"
    precedence = headers.get("precedence").strip().lower()
    if precedence in ("bulk", "list", "junk"):
        return f"Precedence: {precedence}"
    name = decision.result.name.lower()
    for pattern in silent_viruses:
        if pattern.lower() in name:
            return f"{decision.result.name} forges senders (silent virus {pattern!r})"
    return ""


def category_of(decision: Decision) -> str:
    """``virus``, ``policy``, ``spam`` (or a quarantine folder): what kind of block this was."""
    if decision.quarantine:
        return decision.quarantine[0]
    result = decision.result
    scanners = set(re.findall(r"\w+", result.scanner))
    if isinstance(result, SpamResult) or scanners & _SPAM_SCANNERS:
        return "spam"
    if scanners & _VIRUS_SCANNERS:
        return "virus"
    return "policy"


def language_for(address: str, default: str, languages: Mapping[str, str]) -> str:
    """The language for ``address``: its domain's or a parent domain's entry, else ``default``."""
    domain = address.rpartition("@")[2].lower().rstrip(".")
    while domain:
        if domain in languages:
            return languages[domain]
        domain = domain.partition(".")[2]
    return default


# --------------------------------------------------------------------------- rendering


@cache
def translations(language: str) -> gettext.NullTranslations:
    """The compiled catalog of ``language`` (English: the templates' own texts)."""
    if language == "en":
        return gettext.NullTranslations()
    return gettext.translation(DOMAIN, str(LOCALE_DIR), languages=[language])


@dataclass(frozen=True)
class Notice:
    """One rendered notification: who gets it, in which language, its Subject and body."""

    party: str
    to: tuple[str, ...]
    language: str
    subject: str
    body: str


class Renderer:
    """The Jinja2 templates with their gettext translations; one environment per language."""

    def __init__(self, template_dir: str | None = None) -> None:
        import jinja2  # loaded when a config uses notify(), not by every worker

        paths = [template_dir, str(TEMPLATE_DIR)] if template_dir else [str(TEMPLATE_DIR)]
        self._loader = jinja2.FileSystemLoader(paths)
        self._environments: dict[str, jinja2.Environment] = {}

    def environment(self, language: str) -> jinja2.Environment:
        env = self._environments.get(language)
        if env is None:
            import jinja2

            env = jinja2.Environment(
                loader=self._loader,
                extensions=["jinja2.ext.i18n"],
                trim_blocks=True,
                lstrip_blocks=True,
                keep_trailing_newline=True,
                undefined=jinja2.StrictUndefined,
                autoescape=False,  # noqa: S701 - text/plain mail, nothing is HTML
            )
            env.install_gettext_translations(translations(language), newstyle=True)  # type: ignore[attr-defined]
            self._environments[language] = env
        return env

    def render(self, party: str, language: str, values: Mapping[str, Any], to: tuple[str, ...]) -> Notice:
        template = self.environment(language).get_template(f"{party}.txt")
        module = template.make_module(dict(values))
        subject = " ".join(str(getattr(module, "notice_subject", "")).split())
        body = re.sub(r"\n{3,}", "\n\n", str(module).strip("\n")) + "\n"
        return Notice(party, to, language, subject[:250], body)


def _clean(value: str, limit: int = 200) -> str:
    """A value from the message made safe for a text line: no controls, bounded length."""
    text = "".join(ch if ch.isprintable() else " " for ch in value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def template_values(mail: Mail, decision: Decision, outcome: Outcome, category: str, hostname: str) -> dict[str, Any]:
    """What the templates may use (all strings from the message are cleaned and bounded)."""
    env = mail.envelope
    result = decision.result
    client = f"{env.client_name or 'unknown'} [{env.client_address}]" if env.client_address else ""
    return {
        "category": category,
        "action": _ACTIONS.get(decision.disposition, decision.disposition.value),
        "reason": _clean(result.name or "policy violation", 100),
        "scanner": _clean(result.scanner or "-", 100),
        "detail": _clean(result.detail, 300),
        "original_subject": _clean(mail.subject),
        "sender": _clean(env.sender),
        "recipients": [_clean(r) for r in env.recipients[:_SHOWN_RECIPIENTS]],
        "more_recipients": len(env.recipients) > _SHOWN_RECIPIENTS,
        "date": _clean(mail.headers.get("date"), 100),
        "message_id": _clean(mail.message_id, 250),
        "queue_id": _clean(env.queue_id, 100),
        "client": _clean(client),
        "quarantine_ids": [Path(path).name for path in outcome.quarantined],
        "hostname": hostname,
    }


# --------------------------------------------------------------------------- the hook


def _categories(value: bool | Iterable[str], every: tuple[str, ...], what: str) -> frozenset[str]:
    if value is True:
        return frozenset(every)
    if value is False or value is None:
        return frozenset()
    if isinstance(value, str) or not all(isinstance(c, str) for c in value):
        raise ConfigError(f"notify: {what} must be True, False or a tuple of categories like ('policy',)")
    return frozenset(value)


class notify(Hook):
    """``HOOKS`` entry: notify sender, recipients and/or admin about stopped mail.

    ``spec`` is Qmail-Scanner's ``--notify`` list (``"psender,admin"``); without
    it, ``sender``/``recipients`` are True (every category of ``categories``),
    False, or the categories to notify them for.  ``language`` is the default,
    ``languages`` maps recipient domains (or top-level domains) to languages.
    """

    name = "notify"

    def __init__(
        self,
        spec: str | None = None,
        *,
        sender: bool | Iterable[str] = ("policy",),
        recipients: bool | Iterable[str] = False,
        admin: str | None = None,
        categories: Iterable[str] = ("virus", "policy"),
        language: str = "en",
        languages: Mapping[str, str] | None = None,
        dispositions: Iterable[str] = ("reject", "drop", "quarantine"),
        silent_viruses: Iterable[str] = SILENT_VIRUSES,
        from_address: str | None = None,
        next_hop: Any = None,
        timeout: float = 30.0,
        template_dir: str | None = None,
    ) -> None:
        self.categories = tuple(categories)
        if not self.categories or not all(isinstance(c, str) and c for c in self.categories):
            raise ConfigError(f"notify: categories must be names like ('virus', 'policy'), got {categories!r}")
        if admin is not None and (not isinstance(admin, str) or "@" not in admin or address_problem(admin)):
            raise ConfigError(f"notify: admin must be an address like 'postmaster@example.com', got {admin!r}")
        if spec is not None:
            sender, recipients, notify_admin = self._parse_spec(spec, admin)
        else:
            notify_admin = admin is not None
        self.parties: dict[str, frozenset[str]] = {
            "sender": _categories(sender, self.categories, "sender"),
            "recipient": _categories(recipients, self.categories, "recipients"),
            "admin": frozenset(self.categories) if notify_admin else frozenset(),
        }
        self.admin = admin
        self.languages = {k.lower().strip("."): v for k, v in (languages or {}).items()}
        for lang in (language, *self.languages.values()):
            if lang not in LANGUAGES:
                raise ConfigError(f"notify: language {lang!r} is not one of {', '.join(LANGUAGES)}")
        self.language = language
        names = set(_ACTIONS.values())
        self.dispositions = frozenset(dispositions)
        if not self.dispositions <= names:
            raise ConfigError(f"notify: dispositions must be among {sorted(names)}, got {sorted(self.dispositions)}")
        self.silent_viruses = tuple(silent_viruses)
        self.from_address = from_address
        self.next_hop = next_hop
        self.timeout = validators.positive(timeout, "notify: timeout", unit="number of seconds")
        self.renderer = Renderer(template_dir)
        self._delivery: Delivery | None = None

    @staticmethod
    def _parse_spec(spec: str, admin: str | None) -> tuple[bool | tuple[str, ...], bool | tuple[str, ...], bool]:
        words = [w.strip().lower() for w in spec.split(",") if w.strip()]
        unknown = [w for w in words if w not in _SPEC_WORDS]
        if unknown or not words:
            raise ConfigError(f"notify: {spec!r}: use a comma-separated list of {', '.join(_SPEC_WORDS)}")
        everything = "all" in words
        sender: bool | tuple[str, ...] = everything or "sender" in words
        if not sender and "psender" in words:
            sender = ("policy",)
        recipients: bool | tuple[str, ...] = everything or "recips" in words
        if not recipients and "precips" in words:
            recipients = ("policy",)
        notify_admin = everything or "admin" in words
        if notify_admin and admin is None:
            raise ConfigError(f"notify: {spec!r} notifies the admin: give admin='postmaster@example.com'")
        return sender, recipients, notify_admin

    def describe(self) -> str:
        who = ", ".join(f"{party}={'/'.join(sorted(cats))}" for party, cats in self.parties.items() if cats)
        return f"notify({who or 'nobody'}; language={self.language})"

    def check(self, settings: Settings) -> None:
        target = self.next_hop or settings.smtp_server
        if target is None and any(self.parties.values()):
            raise ConfigError("no next hop for notifications: set SMTP_SERVER or notify(next_hop=('127.0.0.1', 10025))")
        if target is not None:
            resolve(target, settings.state_dir)
        import jinja2

        for party in PARTIES:  # a broken custom template fails at load, not on the first virus
            for language in {self.language, *self.languages.values()}:
                try:
                    self.renderer.environment(language).get_template(f"{party}.txt")
                except jinja2.TemplateError as error:
                    raise ConfigError(f"template {party}.txt: {error}") from None

    def delivery(self, settings: Settings) -> Delivery:
        """The next hop for notifications (built once; its own connection pool)."""
        if self._delivery is None:
            target = self.next_hop or settings.smtp_server
            delivery = resolve(target, settings.state_dir)
            if isinstance(delivery, SMTPDelivery) and not isinstance(target, Delivery):
                delivery = replace(delivery, timeout=self.timeout)
            self._delivery = delivery
        return self._delivery

    def notices(self, mail: Mail, decision: Decision, outcome: Outcome, hostname: str) -> list[Notice]:
        """The notifications this message calls for, rendered (empty when none is due)."""
        action = _ACTIONS.get(decision.disposition)
        if action not in self.dispositions or outcome.reply.is_transient:
            return []
        category = category_of(decision)
        wanted = [party for party in PARTIES if category in self.parties[party]]
        if not wanted:
            return []
        reason = suppression(mail, decision, self.silent_viruses)
        if reason:
            log.info("queue_id=%s: no notification: %s", mail.envelope.queue_id or "-", reason)
            return []
        values = template_values(mail, decision, outcome, category, hostname)
        notices: list[Notice] = []
        env = mail.envelope
        if "sender" in wanted and env.sender.strip() not in ("", "<>"):  # never, whatever the rules say
            notices.append(self._render("sender", values, env.sender, [env.sender]))
        if "recipient" in wanted:
            for recipient in env.recipients[:MAX_RECIPIENT_NOTICES]:
                notices.append(self._render("recipient", values, recipient, [recipient]))
            if len(env.recipients) > MAX_RECIPIENT_NOTICES:
                log.warning("queue_id=%s: only the first %d recipients notified", env.queue_id or "-", len(notices))
        if "admin" in wanted and self.admin:
            notices.append(self._render("admin", values, self.admin, env.recipients))
        return notices

    def _render(self, party: str, values: Mapping[str, Any], to: str, shown: list[str]) -> Notice:
        language = language_for(to, self.language, self.languages)
        if party == "recipient":
            values = {**values, "recipients": [_clean(r) for r in shown], "more_recipients": False}
        return self.renderer.render(party, language, values, (to,))

    def message(self, notice: Notice, mail: Mail, hostname: str) -> bytes:
        """The notification as bytes (CRLF, 7-bit: the body is encoded as needed)."""
        message = EmailMessage(policy=email.policy.SMTP)
        message["From"] = self.from_address or self.admin or f"postmaster@{hostname}"
        message["To"] = ", ".join(notice.to)
        message["Subject"] = notice.subject
        message["Date"] = email.utils.formatdate(localtime=True)
        message["Message-ID"] = email.utils.make_msgid("notify", domain=hostname)
        message["Auto-Submitted"] = "auto-replied"  # RFC 3834: nobody answers it
        message[NOTIFICATION_HEADER] = f"{notice.party}; queue_id={_clean(mail.envelope.queue_id, 60) or '-'}"
        original = _MESSAGE_ID.search(mail.message_id or "")
        if notice.party == "sender" and original:
            message["In-Reply-To"] = original.group(0)
            message["References"] = original.group(0)
        message.set_content(notice.body)  # clears Content-* headers: set ours after it
        message["Content-Language"] = notice.language
        return message.as_bytes()

    async def after(self, mail: Mail, decision: Decision, outcome: Outcome, settings: Settings) -> None:
        """Send the notices due, one after the other, all within ``timeout`` seconds.

        The MTA is still waiting for its answer, so a hanging next hop may not
        hold the message longer than that: what is left is logged, not sent.
        """
        queue_id = mail.envelope.queue_id or "-"
        pending = self.notices(mail, decision, outcome, settings.hostname)
        try:
            async with asyncio.timeout(self.timeout):
                while pending:
                    await self._send(pending[0], mail, settings, queue_id)
                    pending.pop(0)
        except TimeoutError:
            unsent = len(pending)
            log.warning("queue_id=%s: notifying took over %gs: %d notice(s) not sent", queue_id, self.timeout, unsent)

    async def _send(self, notice: Notice, mail: Mail, settings: Settings, queue_id: str) -> None:
        to = ",".join(notice.to)
        try:
            check_addresses("", notice.to)  # AddressError (logged below): never a smuggled RCPT
            data = self.message(notice, mail, settings.hostname)
            envelope = Envelope(sender="", recipients=list(notice.to), queue_id=f"{queue_id}.notify")
            note = await self.delivery(settings).deliver(Mail(envelope, data), data)
        except MailsiftError as error:
            log.warning("queue_id=%s: %s notification to <%s> failed: %s", queue_id, notice.party, to, error.message)
        else:
            log.info("queue_id=%s: %s notified <%s> (%s): %s", queue_id, notice.party, to, notice.language, note)

    async def close(self) -> None:
        if self._delivery is not None:
            await self._delivery.close()


__all__ = ["LANGUAGES", "SILENT_VIRUSES", "Notice", "Renderer", "category_of", "language_for", "notify", "suppression"]
