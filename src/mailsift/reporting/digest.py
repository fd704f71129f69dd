"""The daily digest: tell each user what was quarantined or rejected for them (SAGATOR's ``reporter``).

``mailsift report --since 24h`` (from cron or a systemd timer) collects, for
the time window, the messages held in quarantine (the quarantine index) and
those rejected or dropped (the ``maillog`` table of ``log_sql``), and sends
each recipient one summary.  The config describes it as SAGATOR did, with a
``reporter(...)`` in ``SRV``::

    SRV = [..., reporter(include='@example.com$', exclude='^root@',
                         groups=[['@example.com$', 'admin@example.com'], ['.', 'root@localhost']])]

* ``begin``, ``body``, ``end``: SAGATOR's templates (``$NAME`` variables,
  Python's :class:`string.Template`).  ``begin`` starts with RFC 2822 header
  lines (at least ``Subject:``), a blank line, then the report's first text;
  ``body`` is repeated for each message; ``end`` closes the report.  A line
  whose every variable is empty is left out (so a rejected message shows no
  ``Release:`` line).  Your own templates are used as given, for every
  language.  The shipped defaults are ``templates/digest/*.txt``: Jinja2
  templates whose texts are in the gettext catalogs of ``locale/`` (the
  notifications' catalogs); rendered once per language, each gives the
  ``$``-templates of that language.
* ``language``, ``languages``: as :class:`~mailsift.reporting.notifications.notify`'s,
  the default language (``"en"``) and a map of recipient domains (or
  top-level domains) to languages: a report is written in the language of
  the address it goes to (the words ``$STATUS``, ``$VERDICT`` and ``$MORE``
  too).
* ``from_address``: the report's ``From`` (unless ``begin`` has a ``From:``
  line); default ``postmaster@`` the host's fully qualified name
  (:func:`fully_qualified`, never ``localhost``).
* ``include``/``exclude``: regular expressions (searched, any case) on the
  recipient address: only included, not excluded recipients are reported;
  ``include_fx``/``exclude_fx``: the same as functions ``address -> bool``.
* ``groups``: ``[regex, target]`` pairs; the first whose regex matches a
  recipient sends that recipient's entries to ``target`` instead (an admin
  per domain); an empty target drops them; no match: the recipient itself.
* ``webq``: the base URL of the links (``--url`` overrides it).

Each quarantined entry has a **release** and a **whitelist sender** link
(:mod:`mailsift.reporting.links`): signed, expiring after ``link_lifetime``, for that
recipient.  Rejected mail has only the whitelist link (nothing is kept to
release).  A link works without logging in, so it is worth what an ordinary
user may do: no release link for a category only an admin may release
(``webq(admin_release=...)``: ``virus`` and ``unscannable`` by default; the
link page refuses those anyway), and no whitelist link for a recipient that
is not a mailbox (``example.com`` would whitelist for the whole domain), nor
when no scanner consults the white list (no ``listed()``: the link page says so).
A report goes out through ``SMTP_SERVER`` like the notifications: null
envelope sender, ``Auto-Submitted: auto-generated``.

Template variables: in ``body`` ``DATETIME`` (UTC), ``STATUS``
(quarantined/rejected/dropped), ``VIRNAME``, ``SCANNER_NAME``, ``LEVEL``,
``SENDER``, ``SENTBY_IP``, ``RECIPIENT``, ``SUBJECT``, ``ID``, ``CATEGORY``,
``VERDICT`` (as a person reads it: ``Virus: Eicar-Test-Signature``, ``Spam,
score 12.3 of 5.0``), ``RELEASE_URL``, ``WHITELIST_URL``; everywhere ``TO`` (who gets the report),
``COUNT``, ``QUARANTINED``, ``REJECTED``, ``SINCE``, ``EXPIRES``, ``HOSTNAME``,
``WEBQ``, ``MORE``.  Values from the mail are cleaned of control characters
and bounded, so no header or line can be injected.
"""

from __future__ import annotations

import email.policy
import email.utils
import gettext as gettext_module
import logging
import os
import re
import socket
import string
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from mailsift import validators
from mailsift.durations import parse_duration
from mailsift.errors import ConfigError, MailsiftError
from mailsift.reporting.links import DEFAULT_LIFETIME, RELEASE, WHITELIST, LinkSigner, link_url
from mailsift.reporting.notifications import LANGUAGES, Renderer, language_for, translations
from mailsift.reporting.verdicts import human_verdict
from mailsift.storage.db import Database
from mailsift.storage.policies import mailbox_owner, normalize_value
from mailsift.storage.quarantine.admin import ADMIN_RELEASE, may_release
from mailsift.storage.quarantine.dbstore import DATABASE_PATH, detail_in_database
from mailsift.storage.quarantine.index import HELD, QuarantineFilter, find_entries
from mailsift.storage.schema import maillog_table

log = logging.getLogger("mailsift.digest")

TEMPLATE_DIR = Path(__file__).parent / "templates" / "digest"
DEFAULT_MAX_ENTRIES = 500
"""Entries listed in one report at most (the rest are counted in ``$MORE``)."""
MAX_COLLECTED = 200_000
"""Rows read from each table for one run at most (bounded memory)."""
REPORT_HEADER = "X-Mailsift-Notification"
"""Marks mailsift's own mail: the notifications never answer it (:mod:`mailsift.reporting.notifications`)."""
_OWN_HEADERS = frozenset(
    {
        "to",
        "date",
        "message-id",
        "auto-submitted",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-language",
    }
)
_HEADER_LINE = re.compile(r"^[!-9;-~]+:")
_ADDRESS = re.compile(r"^[^\s@<>\"]{1,200}@[^\s@<>\"]{1,200}$")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "localhost6", "localhost6.localdomain6"})
_LOOPBACK_NAMES |= {"ip6-localhost", "ip6-loopback", "localhost4", "localhost4.localdomain4"}
MAX_HEAD_READ = 64 * 1024
"""The quarantine file head read for a verdict's detail at most."""


def N_(message: str) -> str:  # noqa: N802 - gettext's name for "mark for the catalog, translate later"
    return message


STATUS_WORDS = {"quarantined": N_("quarantined"), "rejected": N_("rejected"), "dropped": N_("dropped")}
"""``$STATUS`` in the report's language."""
MORE_TEXT = N_("... and %(count)s more message(s) not listed here.")


def _loopback(name: str) -> bool:
    return not name or name.lower().rstrip(".") in _LOOPBACK_NAMES


def fully_qualified(hostname: str = "") -> str:
    """This host's fully qualified name for the report's ``From`` and Message-ID.

    ``hostname`` (the config's, :func:`socket.getfqdn` by default) unless it is a
    loopback name: ``getfqdn()`` answers ``localhost`` when ``/etc/hosts`` lists the
    host's name on a ``127.0.0.1 localhost`` line; then the canonical name of
    :func:`socket.gethostname`, else that name itself.
    """
    name = hostname or socket.getfqdn()
    if not _loopback(name):
        return name
    own = socket.gethostname()
    try:
        found = socket.getaddrinfo(own, None, 0, socket.SOCK_STREAM, 0, socket.AI_CANONNAME)
        canonical = next((info[3] for info in found if info[3]), "")
    except (OSError, UnicodeError):
        canonical = ""
    for candidate in (canonical, own):
        if candidate and "." in candidate and not _loopback(candidate):
            return candidate
    return own if not _loopback(own) else name


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def _clean(value: object, limit: int = 200) -> str:
    """A value from the mail made safe for a header or a line: no controls, bounded."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _regex(value: str | None, what: str) -> re.Pattern[str] | None:
    if value is None:
        return None
    try:
        return re.compile(value, re.IGNORECASE)
    except (re.error, TypeError) as error:
        raise ConfigError(f"reporter: {what}: not a regular expression: {value!r} ({error})") from None


_RENDERER: list[Renderer] = []


def _default_text(name: str, language: str) -> str:
    """The shipped template ``name`` in ``language``: ``templates/digest/<name>.txt`` rendered with the catalog."""
    if not _RENDERER:
        _RENDERER.append(Renderer())
    return _RENDERER[0].environment(language).get_template(f"digest/{name}.txt").render()


def _template(text: str, name: str) -> string.Template:
    if not isinstance(text, str):
        raise ConfigError(f"reporter: {name} must be a text template, got {text!r}")
    template = string.Template(text)
    if not template.is_valid():
        raise ConfigError(f"reporter: {name}: a '$' that is not a variable (write $$ for a dollar sign)")
    return template


class reporter:
    """The digest's configuration (SAGATOR's virtual ``reporter()`` service); see the module docstring."""

    kind = "reporter"

    def __init__(
        self,
        begin: str | None = None,
        body: str | None = None,
        end: str | None = None,
        include: str | None = None,
        exclude: str | None = None,
        include_fx: Callable[[str], bool] | None = None,
        exclude_fx: Callable[[str], bool] | None = None,
        groups: Sequence[Sequence[str]] = (),
        webq: str | None = None,
        *,
        link_lifetime: str | float = DEFAULT_LIFETIME,
        from_address: str | None = None,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        language: str = "en",
        languages: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(languages, Mapping | None) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in (languages or {}).items()
        ):
            raise ConfigError(
                f"reporter: languages must map domains to languages like {{'sk': 'sk'}}, got {languages!r}"
            )
        self.languages = {k.lower().strip("."): v for k, v in (languages or {}).items()}
        for lang in (language, *self.languages.values()):
            if lang not in LANGUAGES:
                raise ConfigError(f"reporter: language {lang!r} is not one of {', '.join(LANGUAGES)}")
        self.language = language
        self._own = {"begin": begin, "body": body, "end": end}
        self._by_language: dict[str, tuple[string.Template, string.Template, string.Template]] = {}
        self.begin, self.body, self.end = self.templates(language)
        for lang in set(self.languages.values()):  # a broken catalog text fails at load, not in the night
            self.templates(lang)
        self.include, self.exclude = _regex(include, "include"), _regex(exclude, "exclude")
        for fx, what in ((include_fx, "include_fx"), (exclude_fx, "exclude_fx")):
            if fx is not None and not callable(fx):
                raise ConfigError(f"reporter: {what} must be a function address -> bool, got {fx!r}")
        self.include_fx, self.exclude_fx = include_fx, exclude_fx
        self.groups: list[tuple[re.Pattern[str], str]] = []
        for group in groups:
            if isinstance(group, str) or len(group) != 2 or not all(isinstance(part, str) for part in group):
                raise ConfigError(f"reporter: groups are [regex, target] pairs, got {group!r}")
            pattern = _regex(group[0], "groups")
            assert pattern is not None  # a string was given
            self.groups.append((pattern, group[1].strip()))
        if webq is not None and (not isinstance(webq, str) or not re.match(r"^https?://[^\s/]+", webq)):
            raise ConfigError(f"reporter: webq must be the base URL like 'https://mail.example.com/webq', got {webq!r}")
        self.webq = webq
        try:  # a duration ('7d') or a number of seconds; a bool is not a number
            if isinstance(link_lifetime, str):
                lifetime = parse_duration(link_lifetime)
            elif validators.is_number(link_lifetime):
                lifetime = float(link_lifetime)
            else:
                raise ConfigError("not a duration")
        except ConfigError:
            raise ConfigError(f"reporter: link_lifetime must be like '7d', got {link_lifetime!r}") from None
        if not 0 < lifetime <= 90 * 86400:
            raise ConfigError(f"reporter: link_lifetime must be between 1s and 90d, got {link_lifetime!r}")
        self.link_lifetime = lifetime
        self.from_address = from_address
        self.max_entries = validators.positive_int(max_entries, "reporter: max_entries")

    def describe(self) -> str:
        return f"reporter(webq={self.webq!r}, language={self.language!r}, from_address={self.from_address!r})"

    def templates(self, language: str) -> tuple[string.Template, string.Template, string.Template]:
        """``begin``, ``body``, ``end`` for a report in ``language``: yours as given, else the shipped ones."""
        found = self._by_language.get(language)
        if found is None:
            texts = {name: own if own is not None else _default_text(name, language) for name, own in self._own.items()}
            begin, body, end = (_template(texts[name], name) for name in ("begin", "body", "end"))
            if not _HEADER_LINE.match(begin.template):
                raise ConfigError("reporter: begin must start with header lines like 'Subject: ...', then a blank line")
            found = self._by_language[language] = (begin, body, end)
        return found

    def language_of(self, address: str) -> str:
        """The language of a report to ``address`` (``languages`` by its domain, else ``language``)."""
        return language_for(address, self.language, self.languages)

    def target(self, recipient: str) -> str:
        """Who gets ``recipient``'s entries: the recipient, its group's target, or ``''`` (nobody)."""
        if self.include is not None and not self.include.search(recipient):
            return ""
        if self.exclude is not None and self.exclude.search(recipient):
            return ""
        if self.include_fx is not None and not self.include_fx(recipient):
            return ""
        if self.exclude_fx is not None and self.exclude_fx(recipient):
            return ""
        for pattern, target in self.groups:
            if pattern.search(recipient):
                return target
        return recipient


# --------------------------------------------------------------------------- collecting


@dataclass(frozen=True)
class DigestEntry:
    """One message for one recipient: quarantined (with an id to release) or rejected/dropped."""

    status: str
    time: float
    sender: str
    recipient: str
    subject: str
    name: str
    scanner: str
    level: float
    client: str
    entry_id: str = ""
    category: str = ""
    detail: str = ""
    """The scanner's detail (spam score and threshold) when known: from the log for rejected mail."""
    path: str = ""
    """A quarantined entry's file (relative to the quarantine), whose head holds the detail."""
    size: int = 0
    """A quarantined message's own size (the file is its head and the message)."""


@dataclass(frozen=True)
class Report:
    """What one address is told: its entries (oldest first) and how many more were left out."""

    to: str
    entries: tuple[DigestEntry, ...]
    omitted: int = 0


def _client_ip(client: str) -> str:
    found = re.search(r"\[([^\]]*)\]\s*$", client)
    return found.group(1) if found else client


def collect(connection: Connection, since: float, now: float) -> list[DigestEntry]:
    """Held quarantine entries (one per recipient) and rejected or dropped mail logged since ``since``."""
    entries: list[DigestEntry] = []
    held = find_entries(connection, QuarantineFilter(state=HELD, newer_than=now - since, limit=MAX_COLLECTED), now)
    for entry in held:
        for recipient in dict.fromkeys(entry.recipients):
            entries.append(
                DigestEntry(
                    "quarantined",
                    entry.created,
                    entry.sender,
                    recipient,
                    entry.subject,
                    entry.name,
                    entry.scanner,
                    entry.level,
                    _client_ip(entry.client),
                    entry.id,
                    entry.category,
                    path=entry.path,
                    size=entry.size,
                )
            )
    m = maillog_table.c
    rows = connection.execute(
        select(
            m.time,
            m.action,
            m.sender,
            m.recipient,
            m.subject,
            m.name,
            m.scanner,
            m.level,
            m.client_address,
            m.spam_score,
            m.spam_required,
        )
        .where(m.time >= since, m.action.in_(("reject", "drop")), m.recipient != "")
        .order_by(m.time)
        .limit(MAX_COLLECTED)
    )
    for row in rows:
        status = "rejected" if row.action == "reject" else "dropped"
        detail = ""
        if row.spam_score is not None and row.spam_required is not None:
            detail = f"score={row.spam_score} required={row.spam_required}"
        entries.append(
            DigestEntry(
                status,
                row.time,
                row.sender,
                row.recipient,
                row.subject,
                row.name,
                row.scanner,
                row.level,
                row.client_address,
                detail=detail,
            )
        )
    return entries


def build_reports(entries: Iterable[DigestEntry], config: reporter) -> list[Report]:
    """Entries grouped by who is told (include, exclude, groups), oldest first, at most ``max_entries`` each."""
    by_target: dict[str, list[DigestEntry]] = {}
    for entry in entries:
        target = config.target(entry.recipient)
        if not target:
            continue
        if not _ADDRESS.match(target):
            log.warning("report: not sent to %r (not an address)", _clean(target, 80))
            continue
        by_target.setdefault(target.lower(), []).append(entry)
    reports = []
    for target in sorted(by_target):
        found = sorted(by_target[target], key=lambda e: (e.time, e.recipient, e.entry_id))
        shown = tuple(found[: config.max_entries])
        reports.append(Report(target, shown, len(found) - len(shown)))
    return reports


# --------------------------------------------------------------------------- rendering


def expand(template: string.Template, values: dict[str, str]) -> str:
    """``template`` with ``values``, leaving out each line whose every variable is empty."""
    lines = []
    for line in template.template.splitlines(keepends=True):
        names = [m.group("named") or m.group("braced") for m in template.pattern.finditer(line)]
        names = [name for name in names if name]
        if names and all(not values.get(name, "") for name in names):
            continue
        lines.append(string.Template(line).safe_substitute(values))
    return "".join(lines)


@dataclass(frozen=True)
class LinkMaker:
    """Signs the links of one run."""

    signer: LinkSigner
    base_url: str
    lifetime: float
    now: float
    admin_release: Collection[str] = ADMIN_RELEASE
    """Categories only an admin may release: their entries get no release link (webq's ``admin_release``)."""
    whitelist_links: bool = True
    """False when no scanner consults the white list (webq's ``lists_in_use``): a link would change nothing."""

    def release(self, entry: DigestEntry) -> str:
        if not entry.entry_id or not may_release(entry.category, admin=False, admin_release=self.admin_release):
            return ""
        token = self.signer.sign(RELEASE, entry.entry_id, entry.recipient, lifetime=self.lifetime, now=self.now)
        return link_url(self.base_url, RELEASE, token)

    def whitelist(self, entry: DigestEntry) -> str:
        if not self.whitelist_links:
            return ""
        try:
            sender = normalize_value("sender", entry.sender)
        except ConfigError:  # the null sender, or nothing a list could hold
            return ""
        if "@" not in sender:
            return ""
        try:
            mailbox_owner(entry.recipient)
        except ConfigError:  # RCPT TO:<example.com>: a link would whitelist for the whole domain
            return ""
        token = self.signer.sign(
            WHITELIST, entry.entry_id, entry.recipient, sender=sender, lifetime=self.lifetime, now=self.now
        )
        return link_url(self.base_url, WHITELIST, token)


def report_values(
    report: Report,
    *,
    since: float,
    links: LinkMaker,
    hostname: str,
    translation: gettext_module.NullTranslations | None = None,
) -> dict[str, str]:
    """The variables of ``begin`` and ``end``."""
    _ = (translation or gettext_module.NullTranslations()).gettext
    quarantined = sum(1 for e in report.entries if e.status == "quarantined")
    more = _(MORE_TEXT) % {"count": report.omitted} if report.omitted else ""
    return {
        "TO": _clean(report.to),
        "COUNT": str(len(report.entries) + report.omitted),
        "QUARANTINED": str(quarantined),
        "REJECTED": str(len(report.entries) - quarantined),
        "SINCE": _when(since),
        "EXPIRES": _when(links.now + links.lifetime),
        "HOSTNAME": _clean(hostname),
        "WEBQ": links.base_url,
        "MORE": more,
    }


def read_detail(quarantine_dir: str, entry: DigestEntry, database: Database | None = None) -> str:
    """A quarantined entry's ``X-Mailsift-Detail`` (the scanner's detail) from its file's head, or ``""``
    (from ``database`` for a message kept there: ``QUARANTINE_STORE = "database"``)."""
    if entry.path == DATABASE_PATH:
        return "" if database is None else detail_in_database(database, entry.entry_id)
    if not quarantine_dir or not entry.path:
        return ""
    path = os.path.join(quarantine_dir, entry.path)
    try:
        with open(path, "rb") as handle:
            head_length = os.fstat(handle.fileno()).st_size - entry.size
            if not 0 < head_length <= MAX_HEAD_READ:
                return ""
            head = handle.read(head_length).decode("utf-8", "replace")
    except OSError:  # moved or expired meanwhile: the verdict without its score
        return ""
    for line in head.split("\r\n"):
        name, sep, value = line.partition(": ")
        if sep and name.lower() == "x-mailsift-detail":
            return value
    return ""


def entry_values(
    entry: DigestEntry,
    links: LinkMaker,
    translation: gettext_module.NullTranslations | None = None,
    quarantine_dir: str = "",
    database: Database | None = None,
) -> dict[str, str]:
    """The variables of ``body`` for one entry."""
    _ = (translation or gettext_module.NullTranslations()).gettext
    detail = entry.detail or read_detail(quarantine_dir, entry, database)
    verdict = human_verdict(entry.category, entry.name, entry.scanner, entry.level, detail, _)
    return {
        "DATETIME": _when(entry.time),
        "STATUS": _(STATUS_WORDS[entry.status]) if entry.status in STATUS_WORDS else entry.status,
        "VERDICT": _clean(verdict, 200),
        "VIRNAME": _clean(entry.name or "-", 100),
        "SCANNER_NAME": _clean(entry.scanner or "-", 100),
        "LEVEL": f"{entry.level:.2f}",
        "SENDER": _clean(entry.sender or "<>"),
        "SENTBY_IP": _clean(entry.client or "-", 100),
        "RECIPIENT": _clean(entry.recipient),
        "SUBJECT": _clean(entry.subject or "-"),
        "ID": _clean(entry.entry_id, 100),
        "CATEGORY": _clean(entry.category, 60),
        "RELEASE_URL": links.release(entry),
        "WHITELIST_URL": links.whitelist(entry),
    }


def render(
    report: Report,
    config: reporter,
    *,
    since: float,
    links: LinkMaker,
    hostname: str,
    quarantine_dir: str = "",
    database: Database | None = None,
) -> bytes:
    """The report as a message (CRLF line ends, 7-bit transfer encodings), in the language of its address.

    ``quarantine_dir`` (and ``database``, for messages kept there): where the verdicts' details (spam
    scores) of quarantined entries are read."""
    language = config.language_of(report.to)
    translation = translations(language)
    begin, body, end = config.templates(language)
    common = report_values(report, since=since, links=links, hostname=hostname, translation=translation)
    head, _, first = expand(begin, common).replace("\r\n", "\n").partition("\n\n")
    parts = [first]
    for entry in report.entries:
        parts.append(expand(body, {**common, **entry_values(entry, links, translation, quarantine_dir, database)}))
    parts.append(expand(end, common))
    message = EmailMessage(policy=email.policy.SMTP)
    for name, value in HeaderParser(policy=email.policy.default).parsestr(head + "\n\n").items():
        if name.lower() not in _OWN_HEADERS and name.lower() not in {n.lower() for n in message}:
            message[name] = _clean(str(value), 900)
    if "from" not in {n.lower() for n in message}:
        message["From"] = config.from_address or f"postmaster@{hostname}"
    message["To"] = report.to
    message["Date"] = email.utils.formatdate(localtime=True)
    message["Message-ID"] = email.utils.make_msgid("report", domain=hostname)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: nobody answers it
    message[REPORT_HEADER] = "digest"
    text = "".join(parts).rstrip("\n") + "\n"
    # 7bit keeps long link lines whole for any reader; quoted-printable when the text needs it.
    plain = text.isascii() and max(len(line) for line in text.splitlines()) < 990
    message.set_content(text, cte="7bit" if plain else "quoted-printable")
    message["Content-Language"] = language
    return message.as_bytes()


# --------------------------------------------------------------------------- sending


@dataclass(frozen=True)
class SendReport:
    """What a run did: reports sent (or printed), and the addresses that failed."""

    sent: list[str]
    failed: list[tuple[str, str]]


async def send(messages: Sequence[tuple[str, bytes]], delivery: Any) -> SendReport:
    """Send each ``(address, message)`` with a null envelope sender through ``delivery``."""
    from mailsift.message.mail import Envelope, Mail

    sent: list[str] = []
    failed: list[tuple[str, str]] = []
    for address, data in messages:
        envelope = Envelope(sender="", recipients=[address], queue_id="report")
        try:
            note = await delivery.deliver(Mail(envelope, data, spool_threshold=len(data) + 1), data)
        except MailsiftError as error:
            log.warning("report to <%s> failed: %s", address, error.message)
            failed.append((address, error.message))
        else:
            log.info("report sent to <%s>: %s", address, note)
            sent.append(address)
    return SendReport(sent, failed)


__all__ = [
    "DigestEntry",
    "LinkMaker",
    "Report",
    "SendReport",
    "build_reports",
    "collect",
    "entry_values",
    "expand",
    "fully_qualified",
    "read_detail",
    "render",
    "reporter",
    "send",
]
