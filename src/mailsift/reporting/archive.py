"""Archive copies and the DLP monitor mode (qmail-scanner's ``--archive`` and ``dlp-monitor``).

``archive(pattern, folder='archive')`` is a hook (``HOOKS``): every message that
was *delivered* (not rejected, dropped, quarantined or tempfailed: qmail-scanner
archives "processed email that wasn't quarantined") and whose envelope matches
``pattern`` is copied into a Maildir, ``STATE_DIR/archive`` by default.  As in
qmail-scanner, the pattern is searched case-insensitively in the envelope sender
and in each envelope recipient (one address at a time, so ``$`` anchors the end
of an address); ``archive()`` without a pattern archives all delivered mail
(qmail-scanner's ``--archive yes``).  The copy is the message as received, with
the envelope appended at the bottom exactly as qmail-scanner appends it::

    <the message as received>
    *** Qmail-Scanner Envelope Details Begin ***
    X-Qmail-Scanner-Mail-From: "sender@example.net"
    X-Qmail-Scanner-Rcpt-To: "bob@example.com,carol@example.com"
    *** Qmail-Scanner Envelope Details End ***

(an empty line before the block, recipients joined by commas, each value in
double quotes, the lines ending like the message's own, CRLF or LF; existing
qmail-scanner archive tooling reads them unchanged).  A message let through by
the DLP monitor gets one more line in the block, ``X-Mailsift-DLP: <name>
(<scanner>)``, and is archived whatever its envelope.

``monitor(pattern, *scanners)`` is the DLP monitor: a detection of its scanners
whose name matches ``pattern`` (searched, as the actions search names) is not
blocked but logged (``DLP:`` on the ``mailsift.dlp`` logger, and the result's
name becomes ``DLP:<name>`` in the per-message log line) and marked for the
archive hook.  A detection that does not match is returned unchanged: blocked as
before.  The monitored result is clean (level 0) and loses the inner blocking
actions (reject, drop, quarantine copies), so the following ``SCANNERS`` entries
still run: a DLP hit never exempts a message from the virus scan.  Put the DLP
scanners alone inside ``monitor`` (``monitor(r'^Policy\\.', clamd(dlp_socket))``),
not the virus scanners, since inside it the first detection ends the scan, and
keep ``monitor`` at the top level of an entry or under action wrappers, outside
``parsemail``/``decompress`` (``monitor(r'^Policy\\.', parsemail(...))``):
operators ``+ | &`` and the part walkers build plain results and lose the mark.  ``header='X-Mailsift-Monitor'``
adds that header with the finding's name to the delivered copy; it is off by
default because DLP is about outgoing mail, and a header naming the policy that
fired tells the outside recipient what the monitor watches.

Archive failures (an unwritable or full archive disk) are logged and never
change the reply.  Hooks run after the next hop accepted the message: a 4xx
there would make the MTA send it again and the recipient get it twice, so a
durable-before-250 archive would have to be written before delivery and would
stop all mail whenever the archive disk fills.  The archive is the secondary
(audit) copy; the mail itself is already safe downstream.  A copy that *was*
written is fsynced (tmp → new, directory fsynced, :func:`mailsift.delivery.maildir.store`)
before the MTA gets its 250.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from mailsift.core.hooks import Hook
from mailsift.delivery import maildir
from mailsift.errors import ConfigError, StorageError
from mailsift.message.result import Action, AddHeader, QuarantineCopy, Result, SetDisposition
from mailsift.scanners.base import Interscanner, Target
from mailsift.scanners.basic import compile_text

if TYPE_CHECKING:
    from mailsift.core.disposition import Outcome
    from mailsift.message.mail import Mail
    from mailsift.message.result import Decision
    from mailsift.settings import Settings

log = logging.getLogger("mailsift.archiving")
dlp_log = logging.getLogger("mailsift.dlp")

BEGIN = "*** Qmail-Scanner Envelope Details Begin ***"
END = "*** Qmail-Scanner Envelope Details End ***"
MAIL_FROM = "X-Qmail-Scanner-Mail-From"
RCPT_TO = "X-Qmail-Scanner-Rcpt-To"
DLP_LINE = "X-Mailsift-DLP"
DLP_PREFIX = "DLP:"

_BLOCK = 256 * 1024


# --------------------------------------------------------------------------- DLP monitor


@dataclass(frozen=True, slots=True)
class MonitoredResult(Result):
    """A detection the DLP monitor let through: clean, with what was found.

    ``monitored`` is the finding's original name, ``monitored_level`` its level;
    ``name`` is ``DLP:<monitored>``.  Action wrappers keep this class
    (``dataclasses.replace``), so the archive hook finds it in ``decision.trail``.
    """

    monitored: str = ""
    monitored_level: float = 0.0


def _not_blocking(action: Action) -> bool:
    return not isinstance(action, SetDisposition | QuarantineCopy)


class monitor(Interscanner):
    """DLP monitor mode: ``monitor(r'^Policy\\.', clamd(...))`` logs and archives, never blocks.

    A detection whose name matches ``pattern`` becomes a clean
    :class:`MonitoredResult` (logged as ``DLP:``, archived by the ``archive``
    hook); any other result is returned as it is.  ``header`` adds
    ``<header>: <name>`` to the delivered message (off by default, see the module).
    """

    name = "monitor"

    def __init__(self, pattern: Any, *scanners: Any, header: str | None = None) -> None:
        if not isinstance(pattern, str):
            raise ConfigError(f"monitor: the first argument must be a pattern of finding names, got {pattern!r}")
        self.pattern = compile_text(pattern, self.name)
        if header is not None and (not isinstance(header, str) or not re.fullmatch(r"[!-9;-~]+", header)):
            raise ConfigError(f"monitor: invalid header name {header!r}")
        self.header = header
        super().__init__(*scanners)

    def describe(self) -> str:
        header = f", header={self.header!r}" if self.header else ""
        return f"monitor({self.pattern.pattern!r}{header})"

    async def scan(self, target: Target) -> Result:
        result = await self.inner(target)
        if not (result.detected and self.pattern.search(result.name)):
            return result
        envelope = target.mail.envelope
        dlp_log.info(
            "%s DLP: %s (%s) level=%.2f monitored, not blocked; from=<%s> to=%s",
            envelope.queue_id or "-",
            result.name,
            result.scanner or "-",
            result.level,
            envelope.sender,
            ",".join(f"<{r}>" for r in envelope.recipients),
        )
        actions = tuple(a for a in result.actions if _not_blocking(a))
        if self.header:
            actions += (AddHeader(self.header, _clean(result.name)),)  # one line: no header injection
        note = "DLP monitor: let through"
        return MonitoredResult(
            0.0,
            DLP_PREFIX + result.name,
            result.scanner,
            f"{result.detail}; {note}" if result.detail else note,
            actions,
            monitored=result.name,
            monitored_level=result.level,
        )


def monitored_findings(decision: Decision) -> list[MonitoredResult]:
    """The DLP findings let through in ``decision`` (none if it was not monitored)."""
    found: list[MonitoredResult] = []
    for result in (*decision.trail, decision.result):
        if isinstance(result, MonitoredResult) and result not in found:
            found.append(result)
    return found


# --------------------------------------------------------------------------- archive hook


def _clean(value: str) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in value)


def envelope_block(mail: Mail, findings: Iterable[MonitoredResult] = (), newline: bytes = b"\r\n") -> bytes:
    """The envelope as qmail-scanner appends it to an archived message (see the module)."""
    env = mail.envelope
    lines = [
        "",
        BEGIN,
        f'{MAIL_FROM}: "{_clean(env.sender)}"',
        f'{RCPT_TO}: "{_clean(",".join(env.recipients))}"',
        *(f"{DLP_LINE}: {_clean(f.monitored)} ({_clean(f.scanner or '-')})" for f in findings),
        END,
    ]
    return newline.join(line.encode("utf-8", "surrogateescape") for line in lines) + newline


def _newline_of(head: bytes) -> bytes:
    """The message's own line ending: CRLF if its first line ends so, else LF."""
    end = head.find(b"\n")
    return b"\r\n" if end > 0 and head[end - 1 : end] == b"\r" else b"\n"


def _copy_with_envelope(source: BinaryIO, mail: Mail, findings: list[MonitoredResult]) -> Iterator[bytes]:
    """The message in blocks (a spooled one is not loaded whole), then the envelope block."""
    first = source.read(_BLOCK)
    newline = _newline_of(first)
    last = first
    yield first
    while block := source.read(_BLOCK):
        last = block
        yield block
    if last and not last.endswith(b"\n"):
        yield newline  # qmail-scanner's block starts on a line of its own
    yield envelope_block(mail, findings, newline)


class archive(Hook):
    """Copy delivered mail whose envelope matches ``pattern`` into an archive Maildir.

    ``archive(r'@example\\.com$', folder='archive')``: ``folder`` is a path
    relative to ``STATE_DIR`` (``'archive'``, ``'archive/sales'``) or absolute.
    Mail let through by the DLP ``monitor`` is archived whatever its envelope.
    """

    name = "archive"

    def __init__(self, pattern: str | None = None, folder: str = "archive") -> None:
        if pattern is not None and not isinstance(pattern, str):
            raise ConfigError(f"archive: pattern must be a regular expression or None, got {pattern!r}")
        self.pattern = None if pattern is None else compile_text(pattern, self.name, re.IGNORECASE)
        if not isinstance(folder, str) or not folder.strip() or "\0" in folder:
            raise ConfigError(f"archive: folder must be a directory name like 'archive', got {folder!r}")
        if not os.path.isabs(folder) and ".." in folder.replace("\\", "/").split("/"):
            raise ConfigError(f"archive: folder must stay inside STATE_DIR (no '..'), got {folder!r}")
        self.folder = folder

    def describe(self) -> str:
        matching = f"envelope ~ {self.pattern.pattern!r}" if self.pattern else "all mail"
        return f"archive({matching} -> {self.folder})"

    def directory(self, settings: Settings) -> str:
        """The archive Maildir for these settings."""
        return os.path.normpath(os.path.join(settings.state_dir, self.folder))

    def check(self, settings: Settings) -> None:
        target = self.directory(settings)
        for reserved in (settings.quarantine_dir, settings.spool_dir):
            reserved = os.path.normpath(reserved)
            if os.path.commonpath([target, reserved]) in (target, reserved):
                raise ConfigError(f"folder {self.folder!r} overlaps {reserved}: choose its own directory")

    def matches(self, mail: Mail) -> bool:
        """Whether the envelope sender or one of the recipients matches the pattern."""
        if self.pattern is None:
            return True
        env = mail.envelope
        return any(self.pattern.search(address) for address in (env.sender, *env.recipients))

    async def after(self, mail: Mail, decision: Decision, outcome: Outcome, settings: Settings) -> None:
        if not (decision.delivers and outcome.reply.is_positive):
            return  # rejected, dropped, quarantined (the quarantine has it) or not accepted yet
        findings = monitored_findings(decision)
        if not findings and not self.matches(mail):
            return
        queue_id = mail.envelope.queue_id or "-"
        try:
            path = await asyncio.to_thread(self._write, mail, findings, settings)
        except StorageError as error:
            log.error("%s archive copy NOT written (the reply is unchanged): %s", queue_id, error.message)
            return
        dlp = " ".join(DLP_PREFIX + f.monitored for f in findings)
        log.info("%s archived%s to %s", queue_id, f" {dlp}" if dlp else "", path)

    def _write(self, mail: Mail, findings: list[MonitoredResult], settings: Settings) -> str:
        tag = "dlp" if findings else ""
        try:
            with mail.open() as source:
                return maildir.store(self.directory(settings), _copy_with_envelope(source, mail, findings), tag=tag)
        except OSError as error:  # reading a vanished spool file; maildir.store converts its own
            raise StorageError(f"cannot read the message: {error.strerror or error}") from error
