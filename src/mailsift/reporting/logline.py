"""The per-message log record in qmail-scanner's format: syslog, a file, JSON lines, an SQL table.

One :class:`MessageRecord` per message (per recipient group with lmtpd) is
built from what the mail path knows after the disposition: status, whether
the client is a relay client and its address, time taken, raw size, envelope
sender and recipients, Subject, Message-ID, attachment names with their
sizes.  The writers are :class:`~mailsift.core.hooks.Hook` objects, listed in
``HOOKS`` with SAGATOR's names::

    HOOKS = [log_syslog(facility='mail'), log_file('/var/log/mailsift/mail.log', json=True), log_sql()]

The text line is qmail-scanner's ``--log-details`` line (reference
"Reports via syslog"), one per recipient::

    Clear:RC:1(192.0.2.1):Q:4XyZ: 0.030769 11569 root@x.y jdoe@y.z More_Power! <id@x.y> a.pdf:1046

* status: ``Clear``, or what was done and why (``Quarantined_Eicar-Test``,
  ``Rejected_Policy``, ``Dropped_...``, ``Delivered_...`` for a forced
  delivery, ``Tempfail...``, ``Refused`` when the next hop refused);
* ``RC:1`` for a relay client (qmail's ``RELAYCLIENT`` when the front end passed it,
  else its address in ``relay_clients``), ``RC:0``
  otherwise, the client address in brackets (``127.0.0.1`` when there is none);
* ``SA:1(score/required)`` when a spam engine ran (``SA:0`` when not spam);
* ``Q:<queue id>`` when the MTA gave one (mailsift's addition, to find the
  message in the MTA's log);
* ``node=<node>:`` when ``NODE`` is set (mailsift's addition, the last item of
  the first field: a cluster's lines say which node took the message; the
  fields after the first keep their places, so qmail-scanner parsers still read them);
* time taken (seconds), raw size, envelope sender (``<>`` if null), one
  recipient, Subject (``-`` if none), Message-ID (``-`` if none), then each
  attachment as ``name:size`` (decoded size).

Fields are decoded (RFC 2047 back to text), spaces and control characters in a
field become ``_``; a syslog line is cut at 1024 characters, as qmail-scanner
did.  The JSON line and the SQL rows carry the same fields, unmangled, and always
the node (``node``: ``NODE``, else the host name's first label); the JSON
line escapes every control character (C0, DEL, C1: ``\u001b``), so no field can
start a second line or reach a terminal as an escape sequence.  mailsift's own
log (stderr) goes through :class:`EscapingFormatter`, which escapes control
characters in every message (:func:`mailsift.validators.escape_controls`).

The SQL log (``maillog``, SAGATOR's ``log_sql``) has one row per recipient.
Its writes run in a worker thread in the background: a slow or broken database
never delays or fails a reply; pending writes are bounded and awaited on close.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import logging.handlers
import os
import pwd
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert
from sqlalchemy.engine import Connection

from mailsift import validators
from mailsift.core.hooks import Hook
from mailsift.errors import ConfigError, MailsiftError
from mailsift.message.result import Disposition
from mailsift.reporting import qslogs
from mailsift.storage.db import Database
from mailsift.storage.schema import maillog_table
from mailsift.storage.sql import delete_batch
from mailsift.validators import Network, escape_controls

if TYPE_CHECKING:
    from mailsift.core.disposition import Outcome
    from mailsift.message.mail import Mail
    from mailsift.message.result import Decision, Result
    from mailsift.settings import Settings

log = logging.getLogger("mailsift.logline")

SYSLOG_LIMIT = 1024
"""qmail-scanner's limit on a syslog line (characters)."""
MAX_FIELD = 1000
"""Longest free-text field kept (a Subject can be megabytes long)."""
MAX_ATTACHMENTS = 200
"""Attachments listed at most; more are counted in one ``...:N`` entry."""
DEFAULT_RELAY_CLIENTS = ("127.0.0.0/8", "::1/128")


# --------------------------------------------------------------------------- the record


@dataclass(frozen=True, slots=True)
class Attachment:
    name: str
    size: int


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """Everything one log line says about one message; text fields cleaned, not mangled."""

    time: float
    """Wall-clock Unix time of the log record."""
    queue_id: str
    status: str
    action: str
    reply: str
    level: float
    name: str
    scanner: str
    relay_client: bool
    client_address: str
    client_name: str
    helo: str
    elapsed: float
    size: int
    sender: str
    recipients: tuple[str, ...]
    subject: str
    message_id: str
    attachments: tuple[Attachment, ...] = ()
    spam: tuple[bool, float, float] | None = None
    """(spam?, score, required) of the spam engine that ran, if one did."""
    quarantine: tuple[str, ...] = ()
    note: str = ""
    more_attachments: int = field(default=0)
    """Attachments beyond :data:`MAX_ATTACHMENTS`, not listed."""
    node: str = ""
    """The node that took the message (:attr:`mailsift.settings.Settings.node_name`)."""
    crypto: tuple[str, ...] = ()
    """qmail-scanner's ``CR:`` items (:func:`mailsift.reporting.qslogs.crypto_items`), when asked for."""


def clean(value: str, limit: int = MAX_FIELD) -> str:
    """Text safe for any log sink: valid UTF-8, no NUL, at most ``limit`` characters.

    Raw 8-bit header bytes come from the parser as surrogate escapes; they are
    read as UTF-8 (replacement characters where that fails).
    """
    value = value[:limit]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        value = value.encode("utf-8", "replace").decode("utf-8")  # lone surrogates not from bytes
    return value.replace("\0", "\ufffd")


def parse_networks(networks: Sequence[str] | str, what: str) -> tuple[Network, ...]:
    """``relay_clients`` of the log sink ``what`` (:func:`mailsift.validators.networks`)."""
    return validators.networks(networks, f"{what}: relay_clients")


def status_of(decision: Decision, outcome: Outcome) -> str:
    """``Clear``, or what was done and why (qmail-scanner's "description of quarantine event")."""
    result = decision.result
    code = outcome.reply.code
    if decision.disposition is Disposition.TEMPFAIL or 400 <= code < 500:
        return "Tempfail_" + result.name if result.name else "Tempfail"
    if result.detected:
        verb = {
            Disposition.DELIVER: "Delivered",
            Disposition.REJECT: "Rejected",
            Disposition.DROP: "Dropped",
            Disposition.QUARANTINE: "Quarantined",
        }[decision.disposition]
        return f"{verb}_{result.name}" if result.name else verb
    if code >= 500:
        return "Refused"  # clean, but the next hop refused it permanently
    return "Clear"


def _spam(decision: Decision) -> tuple[bool, float, float] | None:
    from mailsift.scanners.engines.common import SpamResult  # scanners import much; only needed here

    results: tuple[Result, ...] = (decision.result, *decision.trail)
    for result in results:
        if isinstance(result, SpamResult):
            return (result.detected, result.score, result.required)
    return None


def _attachments(mail: Mail) -> tuple[tuple[Attachment, ...], int]:
    try:
        parts = mail.parts
    except Exception:  # the parser is lenient; should it fail anyway, the log line still goes out
        log.exception("queue_id=%s: cannot list attachments", mail.envelope.queue_id or "-")
        return (), 0
    named = [part for part in parts if part.filename]
    listed = tuple(Attachment(clean(part.filename), part.size) for part in named[:MAX_ATTACHMENTS])
    return listed, max(0, len(named) - MAX_ATTACHMENTS)


def build_record(
    mail: Mail,
    decision: Decision,
    outcome: Outcome,
    *,
    relay_clients: tuple[Network, ...] = (),
    now: float | None = None,
    took: float | None = None,
    node: str = "",
    crypto: bool = False,
) -> MessageRecord:
    """The record for ``mail`` once ``decision`` was carried out with ``outcome``."""
    env = mail.envelope
    result = decision.result
    attachments, more = _attachments(mail)
    return MessageRecord(
        time=time.time() if now is None else now,
        queue_id=clean(env.queue_id),
        status=clean(status_of(decision, outcome)),
        action=decision.disposition.value,
        reply=str(outcome.reply.code),
        level=result.level,
        name=clean(result.name),
        scanner=clean(result.scanner),
        relay_client=env.relay_client
        if env.relay_client is not None
        else validators.address_in(env.client_address, relay_clients),
        client_address=clean(env.client_address),
        client_name=clean(env.client_name),
        helo=clean(env.helo),
        elapsed=mail.elapsed() if took is None else took,
        size=mail.size,
        sender=clean(env.sender),
        recipients=tuple(clean(r) for r in env.recipients),
        subject=clean(mail.subject),
        message_id=clean(mail.message_id),
        attachments=attachments,
        spam=_spam(decision),
        quarantine=tuple(clean(q) for q in outcome.quarantined),
        note=clean(outcome.note),
        more_attachments=more,
        node=node,
        crypto=_crypto(mail) if crypto else (),
    )


def _crypto(mail: Mail) -> tuple[str, ...]:
    try:
        return qslogs.crypto_items(mail)
    except Exception:  # the parser is lenient; should it fail anyway, the log line still goes out
        log.exception("queue_id=%s: cannot look for crypto", mail.envelope.queue_id or "-")
        return ()


# --------------------------------------------------------------------------- formats

_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
"""Whitespace, C0, DEL, C1 (``\x9b`` is a terminal's CSI), line separators, bidi and zero-width marks."""
_JSON_RAW = re.compile(r"[\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
"""What ``json.dumps(ensure_ascii=False)`` leaves raw but a terminal or a line reader must not get."""


def _field(value: str, empty: str = "-") -> str:
    """One space-delimited field: spaces and control characters become ``_``."""
    return _UNSAFE.sub("_", value) if value else empty


def status_field(record: MessageRecord, *, node: bool = False) -> str:
    """The first field of qmail-scanner's line: status and its colon-separated components."""
    address = record.client_address or "127.0.0.1"
    status = f"{_field(record.status).replace(':', '_')}:RC:{int(record.relay_client)}({_field(address)}):"
    if record.spam is not None:
        spam, score, required = record.spam
        status += f"SA:{int(spam)}({score:.1f}/{required:.1f}):"
    status += qslogs.crypto_status(record.crypto)
    if record.queue_id:
        status += f"Q:{_field(record.queue_id)}:"
    if node and record.node:
        status += f"node={_field(record.node).replace(':', '_')}:"
    return status


def qmail_scanner_lines(record: MessageRecord, limit: int | None = None, *, node: bool = False) -> list[str]:
    """qmail-scanner's ``--log-details`` lines, one per recipient (cut at ``limit`` characters);
    ``node``: with ``node=<record.node>:`` at the end of the first field."""
    status = status_field(record, node=node)
    attachments = [f"{_field(a.name)}:{a.size}" for a in record.attachments]
    if record.more_attachments:
        attachments.append(f"...:{record.more_attachments}")
    message_id = record.message_id
    if message_id and not message_id.startswith("<"):
        message_id = f"<{message_id}>"
    lines = []
    for recipient in record.recipients or ("",):
        fields = [
            status,
            f"{record.elapsed:.6f}",
            str(record.size),
            _field(record.sender, "<>"),
            _field(recipient),
            _field(record.subject),
            _field(message_id),
            *attachments,
        ]
        line = " ".join(fields)
        lines.append(line[:limit] if limit else line)
    return lines


def as_dict(record: MessageRecord) -> dict[str, Any]:
    """The record as JSON-ready data (times as ISO 8601 in UTC)."""
    data = asdict(record)
    data["time"] = datetime.datetime.fromtimestamp(record.time, datetime.UTC).isoformat()
    data["recipients"] = list(record.recipients)
    data["attachments"] = [{"name": a.name, "size": a.size} for a in record.attachments]
    data["quarantine"] = list(record.quarantine)
    spam = data.pop("spam")
    data["spam"] = None if spam is None else {"spam": spam[0], "score": spam[1], "required": spam[2]}
    return data


def json_line(record: MessageRecord) -> str:
    """One JSON object on one line (``json.dumps`` escapes C0; DEL, C1 and separators are escaped here)."""
    line = json.dumps(as_dict(record), ensure_ascii=False, separators=(",", ":"))
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


class EscapingFormatter(logging.Formatter):
    """mailsift's log format, with control characters in each message escaped (one record, one line).

    Log messages carry values from the outside (addresses, XFORWARD
    attributes, macros, Subjects, file names); a CR/LF in one would forge a
    second log line, an ESC would reach the terminal of whoever reads the log.
    The traceback of a logged exception keeps its lines.
    """

    node = "-"
    """This node's name (``NODE``) for a format with ``%(node)s``: set by :func:`name_node_in_log`."""

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "node"):
            record.node = self.node
        message = record.getMessage()
        escaped = escape_controls(message)
        if escaped != message:
            record = logging.makeLogRecord({**record.__dict__, "msg": escaped, "args": None})
        return super().format(record)


def name_node_in_log(node: str) -> None:
    """Name ``node`` in every line of mailsift's own log (the root handlers' :class:`EscapingFormatter`)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, EscapingFormatter):
            handler.formatter.node = node


# --------------------------------------------------------------------------- hooks


class _LogHook(Hook):
    """Shared: which clients are relay clients (qmail-scanner's RELAYCLIENT)."""

    for_files = True  # fusefs logs the files it scanned

    def __init__(self, relay_clients: Sequence[str] | str = DEFAULT_RELAY_CLIENTS, crypto: bool = False) -> None:
        self.relay_clients = parse_networks(relay_clients, self.name)
        self.crypto = validators.flag(crypto, f"{self.name}: crypto")

    def record(self, mail: Mail, decision: Decision, outcome: Outcome, settings: Settings) -> MessageRecord:
        return build_record(
            mail, decision, outcome, relay_clients=self.relay_clients, node=settings.node_name, crypto=self.crypto
        )


class log_syslog(_LogHook):
    """Send qmail-scanner's line for each recipient to syslog (``/dev/log`` by default).

    ``facility`` is a syslog facility name (``mail``, ``local0``...), ``address``
    a unix datagram socket path or ``(host, port)`` for UDP; ``ident`` is the
    program name shown.  A line that cannot be sent within ``timeout`` seconds
    is dropped with a warning: the log never holds up mail.
    """

    name = "log_syslog"

    def __init__(
        self,
        facility: str = "mail",
        *,
        address: str | tuple[str, int] | list[Any] = "/dev/log",
        ident: str = "mailsift",
        timeout: float = 1.0,
        relay_clients: Sequence[str] | str = DEFAULT_RELAY_CLIENTS,
        clock: Callable[[], float] = time.time,
        crypto: bool = False,
    ) -> None:
        super().__init__(relay_clients, crypto)
        facilities = logging.handlers.SysLogHandler.facility_names
        if facility not in facilities:
            raise ConfigError(f"log_syslog: unknown facility {facility!r}; one of {', '.join(sorted(facilities))}")
        if isinstance(address, list | tuple):
            if len(address) != 2 or not isinstance(address[0], str) or not validators.is_port(address[1]):
                raise ConfigError(f"log_syslog: address must be a socket path or (host, port), got {address!r}")
            self.address: str | tuple[str, int] = (address[0], address[1])
        elif isinstance(address, str) and address:
            self.address = address
        else:
            raise ConfigError(f"log_syslog: address must be a socket path or (host, port), got {address!r}")
        if not isinstance(ident, str) or not re.fullmatch(r"[!-~]{1,48}", ident):
            raise ConfigError(f"log_syslog: ident must be a short word, got {ident!r}")
        timeout = validators.positive(timeout, "log_syslog: timeout", unit="number of seconds")
        self.facility, self.ident, self.timeout, self.clock = facility, ident, timeout, clock
        handler = logging.handlers.SysLogHandler
        self.priority = (facilities[facility] << 3) | handler.priority_names["info"]
        self._sock: socket.socket | None = None

    def describe(self) -> str:
        return f"log_syslog({self.facility!r}, address={self.address!r})"

    def _socket(self) -> socket.socket:
        if self._sock is None:
            if isinstance(self.address, str):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            else:
                family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.connect(self.address)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def datagram(self, line: str) -> bytes:
        """``<PRI>Mmm dd hh:mm:ss ident[pid]: line`` as glibc's syslog(3) sends it (RFC 3164)."""
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(self.clock()))
        stamp = stamp[:4] + stamp[4:6].replace("0", " ", 1) + stamp[6:]  # "Aug  4", as syslog writes days
        return f"<{self.priority}>{stamp} {self.ident}[{os.getpid()}]: {line}".encode()

    async def after(self, mail: Mail, decision: Decision, outcome: Outcome, settings: Settings) -> None:
        # Written by hand rather than with logging's SysLogHandler: its send blocks the
        # event loop when the syslog daemon is slow, and it reports errors on stderr only.
        loop = asyncio.get_running_loop()
        record = self.record(mail, decision, outcome, settings)
        for line in qmail_scanner_lines(record, SYSLOG_LIMIT, node=bool(settings.node)):
            try:
                async with asyncio.timeout(self.timeout):
                    await loop.sock_sendall(self._socket(), self.datagram(line))
            except (OSError, TimeoutError) as error:
                self._reset()
                log.warning("log_syslog %s: line dropped: %s", self.address, error or "timeout")
                return

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def close(self) -> None:
        self._reset()


class _RaisingFileHandler(logging.handlers.WatchedFileHandler):
    """logging's file handler (reopens the file after logrotate moved it), raising its errors.

    The hook's caller logs them; logging's default would print to stderr only.  ``owner``
    (uid, gid): a file it creates is given to them (``USER``'s, when a process that stays
    root, as ``fusefs`` does, writes it first: the workers must still be able to append).
    """

    def __init__(self, filename: str, *, encoding: str, owner: tuple[int, int] | None) -> None:
        self.owner = owner
        super().__init__(filename, encoding=encoding)

    def _open(self) -> Any:
        existed = os.path.lexists(self.baseFilename)
        stream = super()._open()
        if self.owner is not None and not existed:
            os.fchown(stream.fileno(), *self.owner)
        return stream

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        raise  # called by emit() inside its except block: the error emit() caught


def _owner(settings: Settings) -> tuple[int, int] | None:
    """``USER``'s uid and gid when this process is root and ``USER`` is another user (else None)."""
    if os.geteuid() != 0 or not settings.user:
        return None
    try:
        entry = pwd.getpwnam(settings.user)
    except KeyError:
        return None
    return None if entry.pw_uid == 0 else (entry.pw_uid, entry.pw_gid)


def _same_path(a: str, b: str) -> bool:
    return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


class log_file(_LogHook):
    """Append qmail-scanner's lines (``json=True``: one JSON object per message) to ``path``.

    A relative ``path`` is taken under ``STATE_DIR``; its directory must exist (or be
    ``STATE_DIR`` itself, which ``serve`` and every command make).  The file is reopened
    when log rotation moved it away.  Text lines start with the ISO 8601 time.
    """

    name = "log_file"

    def __init__(
        self,
        path: str,
        *,
        json: bool = False,
        relay_clients: Sequence[str] | str = DEFAULT_RELAY_CLIENTS,
        format: str = "text",
        crypto: bool = False,
    ) -> None:
        super().__init__(relay_clients, crypto)
        if not isinstance(path, str) or not path or "\0" in path:
            raise ConfigError(f"log_file: path must be a file name, got {path!r}")
        self.path, self.json = path, validators.flag(json, "log_file: json")
        if format not in qslogs.FORMATS or (self.json and format != "text"):
            known = ", ".join(qslogs.FORMATS)
            raise ConfigError(f"log_file: format must be one of {known} (not with json=True), got {format!r}")
        self.format = format
        self.resolved = path
        """The file written: ``path`` under ``STATE_DIR`` when relative (set by :meth:`check`)."""
        self._handler: _RaisingFileHandler | None = None

    def describe(self) -> str:
        shown = f", format={self.format!r}" if self.format != "text" else ""
        return f"log_file({self.path!r}{', json=True' if self.json else ''}{shown})"

    def check(self, settings: Settings) -> None:
        self.resolved = os.path.join(settings.state_dir, self.path)  # an absolute path stays as it is
        directory = os.path.dirname(self.resolved) or "."
        if _same_path(directory, settings.state_dir) and not os.path.lexists(directory):
            # STATE_DIR itself, not made yet (a fresh machine): serve and every command make it
            # before any mail, after the config loads, and say so when it cannot be made.
            return
        if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
            raise ConfigError(f"log_file: directory {directory} does not exist or is not writable")

    def lines(self, record: MessageRecord, *, node: bool = False) -> list[str]:
        """The lines of ``record``; ``node``: the text lines name the node (``NODE`` is set)."""
        if self.json:
            return [json_line(record)]
        if self.format == "mailstats":
            return qslogs.mailstats_lines(record, status_field(record, node=node))
        if self.format == "quarantine":
            return qslogs.quarantine_lines(record)
        when = datetime.datetime.fromtimestamp(record.time).astimezone().isoformat(timespec="seconds")
        return [f"{when} {line}" for line in qmail_scanner_lines(record, node=node)]

    async def after(self, mail: Mail, decision: Decision, outcome: Outcome, settings: Settings) -> None:
        if self._handler is None:
            self._handler = _RaisingFileHandler(self.resolved, encoding="utf-8", owner=_owner(settings))
        for line in self.lines(self.record(mail, decision, outcome, settings), node=bool(settings.node)):
            self._handler.emit(logging.makeLogRecord({"msg": line, "args": None}))

    async def close(self) -> None:
        if self._handler is not None:
            self._handler.close()
            self._handler = None


# --------------------------------------------------------------------------- SQL


def sql_rows(record: MessageRecord) -> list[dict[str, Any]]:
    """The ``maillog`` rows for ``record``: one per recipient."""
    attachments = [{"name": a.name, "size": a.size} for a in record.attachments]
    if record.more_attachments:
        attachments.append({"name": "...", "size": record.more_attachments})
    common = {
        "time": record.time,
        "queue_id": record.queue_id,
        "status": record.status,
        "action": record.action,
        "reply": record.reply,
        "level": record.level,
        "name": record.name,
        "scanner": record.scanner,
        "relay_client": record.relay_client,
        "client_address": record.client_address,
        "client_name": record.client_name,
        "helo": record.helo,
        "elapsed": record.elapsed,
        "size": record.size,
        "sender": record.sender,
        "subject": record.subject,
        "message_id": record.message_id,
        "attachments": json.dumps(attachments, ensure_ascii=False),
        "spam_score": None if record.spam is None else record.spam[1],
        "spam_required": None if record.spam is None else record.spam[2],
        "quarantine": ",".join(record.quarantine),
        "note": record.note,
        "node": record.node,
    }
    return [{**common, "recipient": recipient} for recipient in record.recipients or ("",)]


def insert_rows(connection: Connection, rows: list[dict[str, Any]]) -> None:
    connection.execute(insert(maillog_table), rows)


def prune(connection: Connection, before: float, limit: int) -> int:
    """Delete at most ``limit`` rows logged before ``before`` (``MAILLOG_RETENTION``, by
    :mod:`mailsift.cli.housekeeping` through :func:`mailsift.storage.sql.delete_in_batches`); returns how many."""
    return delete_batch(connection, maillog_table, maillog_table.c.time < before, limit)


class log_sql(_LogHook):
    """Record each message in the ``maillog`` table (SAGATOR's ``log_sql``).

    ``db`` is the database (``DATABASE`` when not given).  Rows are written in
    the background by one writer at a time, in order, in a worker thread (the
    messages waiting by then go in one transaction), so a slow or failing
    database never delays or changes the reply.  At most ``max_pending``
    messages wait to be written (more are dropped, with a warning), and
    :meth:`close` waits for them (up to ``close_timeout`` seconds).
    """

    name = "log_sql"

    def __init__(
        self,
        db: Database | None = None,
        *,
        max_pending: int = 1000,
        close_timeout: float = 10.0,
        relay_clients: Sequence[str] | str = DEFAULT_RELAY_CLIENTS,
    ) -> None:
        super().__init__(relay_clients)
        if db is not None and not isinstance(db, Database):
            raise ConfigError(f"log_sql: db must be db.sqlite(...) or db.database(...), got {db!r}")
        self.db, self.max_pending = db, validators.positive_int(max_pending, "log_sql: max_pending")
        self.close_timeout = validators.positive(close_timeout, "log_sql: close_timeout", unit="number of seconds")
        self._database: Database | None = db
        self._queue: list[list[dict[str, Any]]] = []
        self._writing = 0
        self._writer: asyncio.Task[None] | None = None
        self.dropped = 0
        """Messages not logged because ``max_pending`` were waiting."""

    def describe(self) -> str:
        return f"log_sql({self._database.describe() if self._database else 'DATABASE'})"

    def check(self, settings: Settings) -> None:
        if self.db is not None:
            self.db.configure(settings.state_dir)
        elif settings.database is None:
            raise ConfigError("log_sql: no database: set DATABASE or give log_sql(db.sqlite(...))")
        else:
            self._database = settings.database

    async def after(self, mail: Mail, decision: Decision, outcome: Outcome, settings: Settings) -> None:
        database = self._database or settings.database
        if database is None:
            raise ConfigError("log_sql: no database")
        pending = len(self._queue) + self._writing
        if pending >= self.max_pending:
            self.dropped += 1
            log.warning("log_sql: %d writes pending, queue_id=%s not logged", pending, mail.envelope.queue_id or "-")
            return
        self._queue.append(sql_rows(self.record(mail, decision, outcome, settings)))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_all(database))

    async def _write_all(self, database: Database) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            self._writing = len(batch)
            queue_ids = ",".join(rows[0]["queue_id"] or "-" for rows in batch)
            try:
                await database.run(insert_rows, [row for rows in batch for row in rows])
            except MailsiftError as error:
                log.warning("log_sql: queue_id=%s not logged: %s", queue_ids, error.message)
            except Exception:
                log.exception("log_sql: queue_id=%s not logged", queue_ids)
            finally:
                self._writing = 0

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until the pending rows are written (or failed)."""
        if self._writer is not None and not self._writer.done():
            await asyncio.wait({self._writer}, timeout=timeout)

    async def close(self) -> None:
        await self.flush(self.close_timeout)
