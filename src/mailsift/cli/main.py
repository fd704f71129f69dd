"""The ``mailsift`` command: serve, check-config, scan, scan-mailbox; the rest is in ``commands/``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import logging.handlers
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import click

from mailsift.cli.backup import backup_command, restore_command
from mailsift.cli.common import UMASK, check_schema, describe_config, find_config, load_config, make_state
from mailsift.cli.db import db_group
from mailsift.cli.mailbox import Cleaner, Mailbox, MailboxError, Message, clean_path, open_mailbox
from mailsift.cli.policy import lists, policy
from mailsift.cli.quarantine import quarantine_group
from mailsift.cli.report import report_command
from mailsift.cli.sgfilter import qmail_queue, sgfilter
from mailsift.cli.stats import stats_group
from mailsift.cli.tracking import track
from mailsift.cli.users import user_group
from mailsift.config import Config
from mailsift.config import warnings as config_warnings
from mailsift.core.pipeline import Pipeline
from mailsift.delivery.next_hop import resolve
from mailsift.errors import ConfigError
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Disposition
from mailsift.reporting.logline import EscapingFormatter, name_node_in_log
from mailsift.scanners.base import Scanner
from mailsift.settings import node_name
from mailsift.version import __version__

CONFIG_HELP = (
    "Config file (Python, SAGATOR style). Default: $MAILSIFT_CONFIG, else /etc/mailsift/config.py "
    "if it exists, else the bundled config (loopback, local Maildir)."
)
NO_DAEMONS_HELP = (
    "Do not start the config's daemons (clamd_daemon, spamd_daemon) when they are not running; "
    "the scanners using them then fail (exit status 2)."
)


def _daemons(config: Config, *, skip: bool) -> contextlib.AbstractContextManager[None]:
    """The config's daemons, started for this command if they are not running (see ``running_daemons``)."""
    if skip or not config.daemons:
        return contextlib.nullcontext()
    from mailsift.supervisor import running_daemons

    return running_daemons(config, say=lambda text: click.echo(f"mailsift: {text}", err=True))


LOG_FORMAT = "%(asctime)s node=%(node)s %(name)s[%(process)d] %(levelname)s %(message)s"
"""The service log's line: ``2025-01-31 12:00:00,123 node=gw1 mailsift.webq[4242] WARNING webq: login failed for ...``
(``node=``: ``NODE``, else the host name's first label; before the logger's name, so parsers that look for
``mailsift.webq[pid] LEVEL`` — the fail2ban filter — still match)."""
QUIET_LOGGERS = ("mail.log", "aiosmtpd", "uvicorn", "httpx", "httpcore", "asyncio", "alembic")
"""Libraries whose INFO lines are noise (aiosmtpd logs every SMTP command, uvicorn "Started server
process"/"Shutting down" at each worker's start and reload, httpx every request): WARNING and up only,
except at ``--log-level debug``.  A schema upgrade is one line of mailsift's own (storage.migrations)."""


def _setup_logging(level: str, log_file: str | None = None, syslog: bool = False) -> None:
    """The service log, one record per line (control characters escaped): on stderr (journald under
    systemd), or appended to ``log_file`` (reopened when logrotate moves it), or to syslog."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    handler: logging.Handler
    if log_file:
        handler = logging.handlers.WatchedFileHandler(log_file, encoding="utf-8")
    elif syslog:
        handler = logging.handlers.SysLogHandler("/dev/log", facility=logging.handlers.SysLogHandler.LOG_MAIL)
    else:
        handler = logging.StreamHandler(sys.stderr)
    fmt = (
        "mailsift[%(process)d]: node=%(node)s %(name)s %(levelname)s %(message)s"
        if syslog and not log_file
        else LOG_FORMAT
    )
    formatter = EscapingFormatter(fmt)
    formatter.node = node_name()  # the host's name until the config names the node (serve: name_node_in_log)
    handler.setFormatter(formatter)
    logging.basicConfig(level=numeric, handlers=[handler])
    if numeric > logging.DEBUG:
        for noisy in QUIET_LOGGERS:
            logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mailsift")
@click.option(
    "-v", "--verbose", is_flag=True, help="Say on stderr which config file is used and why (-c, MAILSIFT_CONFIG...)."
)
def main(verbose: bool) -> None:
    """mailsift: a mail content-filtering gateway (SAGATOR's heir).

    An MTA hands it every message; it runs the scanners of the config file's
    SCANNERS and delivers, tags, rejects, drops or quarantines, answering the
    MTA only once the message is safe downstream or on disk.

    The config: -c, else $MAILSIFT_CONFIG, else /etc/mailsift/config.py if it
    exists, else the bundled one ($MAILSIFT_ETC_CONFIG replaces the /etc path:
    for packagers and test suites only).
    """
    # umask 0027 from the start: nothing mailsift creates is readable by others (files 0640 at most).
    previous = os.umask(UMASK)
    context = click.get_current_context()
    context.call_on_close(lambda: os.umask(previous))
    context.meta["mailsift.verbose"] = verbose


@main.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option(
    "-w", "--workers", type=click.IntRange(1, 256), default=None, help="Worker processes. Default: number of cores."
)
@click.option("--drain-seconds", type=float, default=30.0, show_default=True, help="On SIGTERM, time to finish mail.")
@click.option("--log-level", default="info", show_default=True, help="debug, info, warning or error.")
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Append the log to this file (reopened after logrotate moves it). Default: stderr (journald under systemd).",
)
@click.option("--syslog", is_flag=True, help="Log to syslog (/dev/log, facility mail) instead of stderr.")
def serve(
    config_path: str | None,
    workers: int | None,
    drain_seconds: float,
    log_level: str,
    log_file: str | None,
    syslog: bool,
) -> None:
    """Run the services of SRV (e.g. smtpd on 127.0.0.1:10024) until stopped.

    SIGTERM drains open sessions and exits; SIGHUP reloads the config (a broken
    new config is reported and the running one kept).
    """
    from mailsift.supervisor import Supervisor

    try:
        _setup_logging(log_level, log_file, syslog)
    except OSError as error:
        click.echo(f"mailsift: cannot open the log: {error}", err=True)
        sys.exit(2)
    logging.getLogger("mailsift.serve").info("config: %s", describe_config(config_path))  # the first log line
    config = load_config(config_path)
    name_node_in_log(config.settings.node_name)
    if not config.services:
        click.echo(f"mailsift: {config.path}: SRV lists no services; nothing to serve", err=True)
        sys.exit(2)
    check_schema(config)  # a schema marked incompatible with this code: one line, exit 2
    announce_web(config, config_path)
    try:
        code = Supervisor(config, workers or os.cpu_count() or 1, drain_seconds).run()
    except ConfigError as error:
        click.echo(f"mailsift: {error}", err=True)
        sys.exit(2)
    sys.exit(code)


def announce_web(config: Config, config_path: str | None) -> None:
    """Log each web quarantine's URL and the one command that creates the first admin
    (with ``-c`` when the config was given by ``-c``)."""
    from mailsift.web.service import webq

    found, source = find_config(config_path)
    option = f" -c {shlex.quote(os.path.abspath(found))}" if source == "-c" else ""
    for service in config.services:
        if isinstance(service, webq):
            logging.getLogger("mailsift.serve").info(
                "web quarantine: %s (the first admin: mailsift user add admin --admin%s)",
                service.site_url() or service.where(),
                option,
            )


@main.command("check-config")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
def check_config(config_path: str | None) -> None:
    """Load the config, print what it does; exit 2 if it is broken.

    Shows which config file was read and why (-c, MAILSIFT_CONFIG, /etc, bundled),
    STATE_DIR, DATABASE, SMTP_SERVER and where releases go, HOOKS, the reporter,
    the scanner tree, and each service with its next hop (webq: its URL).

    Warns (on stderr, ``file:line: warning: ...``; the exit status stays 0) about what
    loads but does not do what it seems to: a ``reject`` in an ``smtpd(after_queue=True)``
    (backscatter), a ``webq`` offering lists no service's SCANNERS consult (``listed()``),
    SAGATOR's ``prefork``/``max_children`` (not used), and what a SAGATOR name now means
    (``collector()`` is ``stats()`` in HOOKS...).  A gone SAGATOR engine is an error naming
    its line and what replaces it.
    """
    config = load_config(config_path)
    make_state(config)
    settings = config.settings
    click.echo(f"config: {describe_config(config_path)}")
    click.echo(f"state directory: {settings.state_dir}")
    click.echo(f"DATABASE: {settings.database.describe() if settings.database is not None else 'none'}")
    click.echo(f"SMTP_SERVER: {_hop(settings.smtp_server, settings.state_dir)}")
    released_to = _hop(settings.release_hop, settings.state_dir)
    click.echo(f"release to: {released_to if settings.release_hop is not None else 'none (give --next-hop)'}")
    click.echo("HOOKS:" if settings.hooks else "HOOKS: none")
    for hook in settings.hooks:
        click.echo(f"  {hook.describe()}")
    click.echo(f"reporter: {config.reporter.describe() if config.reporter is not None else 'none (the defaults)'}")
    click.echo("SCANNERS:")
    for line in Pipeline(config.scanners).tree():
        click.echo(f"  {line}")
    click.echo("SRV:")
    for service in config.services:
        click.echo(f"  {service.describe()}")
        hop = getattr(service, "next_hop", None)
        if hop is not None or hasattr(service, "next_hop"):
            click.echo(f"    next hop: {_hop(hop if hop is not None else settings.smtp_server, settings.state_dir)}")
        site = getattr(service, "site_url", None)
        if callable(site):
            click.echo(f"    URL: {site() or service.where()}")
        for line in Pipeline(service.scanners).tree():
            click.echo(f"    {line}")
        policy = getattr(service, "recipient_policy", None)
        if policy is not None:  # services/rcptpolicy.py: answered at RCPT
            click.echo(f"    {policy.describe()} at RCPT:")
            for line in Pipeline(policy.scanners).tree():
                click.echo(f"      {line}")
    for daemon in config.daemons:
        click.echo(f"  {daemon.describe()}")
    for warning in config_warnings(config):
        click.echo(warning, err=True)
    for warning in _sagator_warnings(config):
        click.echo(warning, err=True)
    click.echo("config OK")


def _sagator_warnings(config: Config) -> list[str]:
    """SAGATOR's ``prefork``/``max_children`` (not used) and what the SAGATOR names were mapped to."""
    from mailsift.compat import sagator

    return sagator.warnings(config.path, config.lines.get("SRV"), config.objects())


def _hop(target: object, state_dir: str) -> str:
    """A next hop as check-config shows it: ``smtp:127.0.0.1:10025``, ``maildir:/var/lib/mailsift/mail``."""
    if target is None:
        return "none"
    try:
        return resolve(target, state_dir).describe()
    except ConfigError:
        return repr(target)


def _message_files(paths: tuple[str, ...]) -> Iterator[str]:
    for path in paths:
        if path == "-" or not os.path.isdir(path):
            yield path
            continue
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith("."):
                    yield os.path.join(folder, name)


@main.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message.")
@click.option("--sender", default="", help="Envelope sender to assume.")
@click.option("--recipient", "recipients", multiple=True, help="Envelope recipient to assume (repeatable).")
@click.option("--no-daemons", is_flag=True, help=NO_DAEMONS_HELP)
@click.argument("paths", nargs=-1, required=True)
def scan(
    config_path: str | None,
    as_json: bool,
    sender: str,
    recipients: tuple[str, ...],
    no_daemons: bool,
    paths: tuple[str, ...],
) -> None:
    """Run SCANNERS offline on message files (a file, a directory, or - for stdin).

    Prints one line per message (with --json: an object with file, action,
    level, name, scanner). Nothing is delivered or quarantined. Exit status: 0
    if every message would be delivered clean, 1 if anything was detected, 2 on
    an error (unreadable file, scanner failure, broken config).

    The daemons of SRV (clamd_daemon, spamd_daemon) are started for the run
    when they are not running already (unless --no-daemons).
    """
    config = load_config(config_path)
    make_state(config)
    pipeline = Pipeline(config.scanners)
    status = 0
    with _daemons(config, skip=no_daemons), asyncio.Runner() as runner:
        for path in _message_files(paths):
            envelope = Envelope(sender=sender, recipients=list(recipients), protocol="FILE")
            try:
                if path == "-":
                    mail = Mail(envelope, sys.stdin.buffer.read())
                else:
                    mail = Mail(envelope, path=path)
            except OSError as error:
                _report(as_json, path, {"action": "error", "error": error.strerror or str(error)})
                status = 2
                continue
            record, verdict = _verdict(runner, pipeline, mail)
            _report(as_json, path, record)
            status = _worse(status, verdict)
        runner.run(pipeline.aclose())
    sys.exit(status)


def _verdict(runner: asyncio.Runner, pipeline: Pipeline, mail: Mail) -> tuple[dict[str, object], int]:
    """Evaluate one message: its report record and its exit status (0 clean, 1 found, 2 error)."""
    started = time.monotonic()
    decision = runner.run(pipeline.evaluate(mail))
    elapsed = time.monotonic() - started
    result = decision.result
    record: dict[str, object] = {
        "action": decision.disposition.value,
        "level": round(result.level, 4),
        "name": result.name,
        "scanner": result.scanner,
        "detail": result.detail,
        "quarantine": list(decision.quarantine),
        "headers": [f"{h.name}: {h.value}" for h in decision.headers],
        "subject_prefix": decision.subject_prefix,
        "remove_headers": [removal.pattern for removal in decision.removals],
        "modify_headers": [f"{h.name}: {h.value}" for h in decision.modified],
        "deliver_to": {"redirect": decision.redirect, "copies": list(decision.copies)},
        "sanitized": list(decision.sanitized.removed) if decision.sanitized else [],
        "reply": decision.reply.line(),
        "time": round(elapsed, 4),
    }
    if decision.disposition is Disposition.TEMPFAIL:
        return record, 2
    if result.detected or decision.disposition is not Disposition.DELIVER:
        return record, 1
    return record, 0


def _worse(status: int, verdict: int) -> int:
    """An error (2) wins over a detection (1), which wins over clean (0)."""
    return max(status, verdict)


def _report(as_json: bool, path: str, record: Mapping[str, object]) -> None:
    if as_json:
        click.echo(json.dumps({"file": path, **record}, ensure_ascii=False))
        return
    if record["action"] == "error":
        click.echo(f"{path}: error: {record['error']}")
        return
    name = f" {record['name']}" if record["name"] else ""
    scanner = f" ({record['scanner']})" if record["scanner"] else ""
    click.echo(f"{path}: {record['action']} level={record['level']}{name}{scanner}")


# --------------------------------------------------------------------------- scan-mailbox

ANTIVIRUS_NAMES = frozenset(
    [
        # SAGATOR's antivirus engines (README §4), under the names this project gives them.
        *("clamd", "clamscan", "libclam", "avgd", "bdc", "kav", "kavclient", "nod2", "esets", "sophie", "savse"),
        *("trophie", "cmd_bdc", "cmd_clamav", "cmd_drweb", "cmd_fprot", "cmd_kavscanner", "cmd_trendmicro"),
        "cmd_uvscan",
    ]
)


def is_antivirus(scanner: Scanner) -> bool:
    """True if ``scanner`` or anything it wraps is an antivirus engine: a scanner
    class with ``antivirus = True``, or one of SAGATOR's engine names."""
    if getattr(scanner, "antivirus", False) is True or scanner.name in ANTIVIRUS_NAMES:
        return True
    return any(is_antivirus(child) for child in scanner.children)


@dataclass
class _Tally:
    """Counts for the summary line."""

    mailboxes: int = 0
    messages: int = 0
    clean: int = 0
    found: int = 0
    errors: int = 0
    cleaned: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = (
            f"{self.messages} messages in {self.mailboxes} mailboxes: "
            f"{self.clean} clean, {self.found} found, {self.errors} errors"
        )
        return text + "".join(f"; {c}" for c in self.cleaned)


@main.command("scan-mailbox")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option(
    "--av-only",
    is_flag=True,
    help="Run only the antivirus entries of SCANNERS: the top-level entries that contain an antivirus "
    "engine (clamd, clamscan, ... or any scanner class with antivirus = True), with their actions.",
)
@click.option(
    "--clean",
    is_flag=True,
    help="Write a copy without the messages found (MBOX.clean, MAILDIR.clean/) beside each mailbox; "
    "the original is never changed. Messages that could not be scanned are kept.",
)
@click.option("--force", is_flag=True, help="With --clean, replace an existing .clean output.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message (the summary goes to stderr).")
@click.option("--no-daemons", is_flag=True, help=NO_DAEMONS_HELP)
@click.argument("mailboxes", nargs=-1, required=True, type=click.Path())
def scan_mailbox(
    config_path: str | None,
    av_only: bool,
    clean: bool,
    force: bool,
    as_json: bool,
    no_daemons: bool,
    mailboxes: tuple[str, ...],
) -> None:
    """Scan mbox files and Maildirs with SCANNERS (SAGATOR's sgscan).

    Prints the messages found (with --json: every message) and a summary line
    with counts; a progress bar is shown when stderr is a terminal.  Exit
    status as for scan: 0 if every message is clean, 1 if anything was found,
    2 on an error (unreadable mailbox, scanner failure, existing .clean output
    without --force).
    """
    config = load_config(config_path)
    make_state(config)
    scanners = config.scanners
    if av_only:
        scanners = tuple(s for s in config.scanners if is_antivirus(s))
        if not scanners:
            click.echo(f"mailsift: {config.path}: --av-only: no entry of SCANNERS contains an antivirus", err=True)
            sys.exit(2)
    if clean and not force:
        existing = [clean_path(m) for m in mailboxes if os.path.lexists(clean_path(m))]
        if existing:
            click.echo(f"mailsift: {', '.join(existing)} exists (use --force to replace it)", err=True)
            sys.exit(2)
    job = _MailboxScan(Pipeline(scanners), config.settings.spool_threshold, clean=clean, force=force, as_json=as_json)
    with _daemons(config, skip=no_daemons):
        code = job.run(mailboxes)
    sys.exit(code)


class _MailboxScan:
    """One ``scan-mailbox`` run: mailboxes in order, one event loop, one progress bar."""

    def __init__(self, pipeline: Pipeline, spool_threshold: int, *, clean: bool, force: bool, as_json: bool) -> None:
        self.pipeline = pipeline
        self.spool_threshold = spool_threshold
        self.clean, self.force, self.as_json = clean, force, as_json
        self.tally = _Tally()
        self.runner = asyncio.Runner()

    def run(self, paths: tuple[str, ...]) -> int:
        status = 0
        mailboxes: list[Mailbox] = []
        for path in paths:
            try:
                mailboxes.append(open_mailbox(path))
            except MailboxError as error:
                status = self._failed(error)
        total = sum(self._size(m) for m in mailboxes)
        # The bar goes to stderr, only on a terminal: findings and --json stay clean on stdout.
        bar = click.progressbar(length=total, label="scanning", file=sys.stderr, hidden=not sys.stderr.isatty())
        with self.runner, bar:
            for mailbox in mailboxes:
                status = _worse(status, self._mailbox(mailbox, bar.update))
            self.runner.run(self.pipeline.aclose())
        click.echo(self.tally.line(), err=self.as_json)
        return status

    @staticmethod
    def _size(mailbox: Mailbox) -> int:
        try:
            return mailbox.size
        except MailboxError:
            return 0  # reported when read

    def _failed(self, error: MailboxError) -> int:
        click.echo(f"mailsift: {error.message}", err=True)
        self.tally.errors += 1
        return 2

    def _mailbox(self, mailbox: Mailbox, progress: Callable[[int], None]) -> int:
        """Scan one mailbox (and write its cleaned copy); its exit status."""
        self.tally.mailboxes += 1
        status, removed = 0, 0
        cleaner: Cleaner | None = None
        try:
            if self.clean:
                cleaner = mailbox.cleaner(force=self.force)
            for message in mailbox:
                verdict = self._message(mailbox, message, cleaner)
                status = _worse(status, verdict)
                removed += verdict == 1
                progress(message.size)
            if cleaner is not None:
                cleaner.commit()
                self.tally.cleaned.append(f"{cleaner.output}: {cleaner.kept} kept, {removed} removed")
        except MailboxError as error:
            if cleaner is not None:
                cleaner.abort()
            return self._failed(error)
        return status

    def _message(self, mailbox: Mailbox, message: Message, cleaner: Cleaner | None) -> int:
        self.tally.messages += 1
        with Mail(Envelope(protocol="FILE"), message.data, spool_threshold=self.spool_threshold) as mail:
            record, verdict = _verdict(self.runner, self.pipeline, mail)
        self.tally.clean += verdict == 0
        self.tally.found += verdict == 1
        self.tally.errors += verdict == 2
        if cleaner is not None:
            if verdict == 1:
                record["cleaned"] = "removed"
            else:
                cleaner.keep(message)  # clean, or not scannable: never lose mail
                record["cleaned"] = "kept"
        if self.as_json:
            click.echo(json.dumps({"mailbox": mailbox.path, "message": message.key, **record}, ensure_ascii=False))
        elif verdict:
            line = f"{mailbox.path}:{message.key}: {record['action']} level={record['level']}"
            line += f" {record['name']}" if record["name"] else ""
            line += f" ({record['scanner']})" if record["scanner"] else ""
            line += f": {record['detail']}" if verdict == 2 else ""
            click.echo(line + (f" [{record['cleaned']}]" if cleaner is not None else ""))
        return verdict


main.add_command(policy)
main.add_command(lists)
main.add_command(quarantine_group)
main.add_command(track)
main.add_command(report_command)
main.add_command(stats_group)
main.add_command(user_group)
main.add_command(sgfilter)
main.add_command(qmail_queue)
main.add_command(db_group)
main.add_command(backup_command)
main.add_command(restore_command)

if __name__ == "__main__":
    main()
