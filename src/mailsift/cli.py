"""The ``mailsift`` command: serve, check-config, scan, scan-mailbox, sgfilter, qmail-queue."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import click

from mailsift import __version__
from mailsift.commands import load_config
from mailsift.commands.policy import lists, policy
from mailsift.commands.quarantine import quarantine_group
from mailsift.commands.report import report_command
from mailsift.commands.stats import stats_command
from mailsift.commands.tracking import track
from mailsift.commands.users import user_group
from mailsift.config import Config
from mailsift.errors import ConfigError
from mailsift.mail import Envelope, Mail
from mailsift.mailbox import Cleaner, Mailbox, MailboxError, Message, clean_path, open_mailbox
from mailsift.pipeline import Pipeline
from mailsift.result import Disposition
from mailsift.scanners.base import Scanner

CONFIG_HELP = "Config file (Python, SAGATOR style). Default: the bundled config (loopback, local Maildir)."
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


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("mail.log", "aiosmtpd"):  # aiosmtpd logs every command at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mailsift")
def main() -> None:
    """mailsift: a mail content-filtering gateway (SAGATOR's heir).

    An MTA hands it every message; it runs the scanners of the config file's
    SCANNERS and delivers, tags, rejects, drops or quarantines, answering the
    MTA only once the message is safe downstream or on disk.
    """


@main.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option(
    "-w", "--workers", type=click.IntRange(1, 256), default=None, help="Worker processes. Default: number of cores."
)
@click.option("--drain-seconds", type=float, default=30.0, show_default=True, help="On SIGTERM, time to finish mail.")
@click.option("--log-level", default="info", show_default=True, help="debug, info, warning or error.")
def serve(config_path: str | None, workers: int | None, drain_seconds: float, log_level: str) -> None:
    """Run the services of SRV (e.g. smtpd on 127.0.0.1:10024) until stopped.

    SIGTERM drains open sessions and exits; SIGHUP reloads the config (a broken
    new config is reported and the running one kept).
    """
    from mailsift.supervisor import Supervisor

    _setup_logging(log_level)
    config = load_config(config_path)
    if not config.services:
        click.echo(f"mailsift: {config.path}: SRV lists no services; nothing to serve", err=True)
        sys.exit(2)
    try:
        code = Supervisor(config, workers or os.cpu_count() or 1, drain_seconds).run()
    except ConfigError as error:
        click.echo(f"mailsift: {error}", err=True)
        sys.exit(2)
    sys.exit(code)


@main.command("check-config")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
def check_config(config_path: str | None) -> None:
    """Load the config, print its scanner tree and services; exit 2 if it is broken."""
    config = load_config(config_path)
    click.echo(f"config: {config.path}")
    click.echo(f"state directory: {config.settings.state_dir}")
    click.echo("SCANNERS:")
    for line in Pipeline(config.scanners).tree():
        click.echo(f"  {line}")
    click.echo("SRV:")
    for service in config.services:
        click.echo(f"  {service.describe()}")
        for line in Pipeline(service.scanners).tree():
            click.echo(f"    {line}")
    for daemon in config.daemons:
        click.echo(f"  {daemon.describe()}")
    click.echo("config OK")


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


# --------------------------------------------------------------------------- sgfilterd clients


def _daemon_options(function: Callable[..., None]) -> Callable[..., None]:
    """The options shared by the two clients of sgfilterd (no config file needed)."""
    from mailsift import sgfilter_client as sg

    options = [
        click.option(
            "--host",
            default=sg.DEFAULT_HOST,
            show_default=True,
            envvar="MAILSIFT_SGFILTERD_HOST",
            help="sgfilterd's address (env MAILSIFT_SGFILTERD_HOST).",
        ),
        click.option(
            "--port",
            type=click.IntRange(1, 65535),
            default=sg.DEFAULT_PORT,
            show_default=True,
            envvar="MAILSIFT_SGFILTERD_PORT",
            help="sgfilterd's port (env MAILSIFT_SGFILTERD_PORT).",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0.1),
            default=sg.DEFAULT_TIMEOUT,
            show_default=True,
            help="Seconds for the whole exchange with the daemon.",
        ),
        click.option(
            "--max-size",
            type=click.IntRange(min=0),
            default=sg.DEFAULT_MAX_SIZE,
            show_default=True,
            help="Messages over this many bytes are not sent to the daemon.",
        ),
        click.option(
            "--safe",
            is_flag=True,
            envvar="MAILSIFT_SGFILTER_SAFE",
            help="Safe fallback: when no verdict can be had (daemon down, timeout, 451, message too big), "
            "pass the message on unchanged and unscanned instead of failing.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _say(command: str, text: str) -> None:
    """One log line on stderr (procmail's log, qmail-smtpd's multilog)."""
    try:
        sys.stderr.write(f"mailsift {command}[{os.getpid()}]: {text}\n")
        sys.stderr.flush()
    except OSError:
        pass


@main.command("sgfilter")
@_daemon_options
@click.option("--sender", envvar="SENDER", default="", help="Envelope sender (env SENDER; else the mbox From_ line).")
@click.option(
    "--recipient",
    "recipients",
    multiple=True,
    envvar="RECIPIENT",
    help="Envelope recipient, repeatable (env RECIPIENT; else the user running the filter).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every verdict on stderr, not only failures.")
def sgfilter(
    host: str,
    port: int,
    timeout: float,
    max_size: int,
    safe: bool,
    sender: str,
    recipients: tuple[str, ...],
    verbose: bool,
) -> None:
    """Filter one message through sgfilterd: message on stdin, message on stdout.

    For procmail (":0 fw" then "| mailsift sgfilter"), maildrop (xfilter) and
    courier.  stdout always carries a whole message: the daemon's (with the
    config's edits) when it delivers, else the original unchanged.  An mbox
    "From " line stays first.  Exit status:

    \b
      0   deliver (250 clean, 251 detected but delivered)
      1   rejected (550)
      3   dropped or quarantined (551)
      2   bad command line
      65  message over --max-size, not scanned
      75  no verdict: daemon down, timeout, 451, broken answer
    With --safe, 65 and 75 become 0 (the original passes unscanned).
    """
    import getpass

    from mailsift import sgfilter_client as sg

    with sg.read_input(sys.stdin.buffer, max_size) as spool:
        too_big = sg.size_of(spool) > max_size
        answer: sg.Answer | None = None
        if too_big:
            _say("sgfilter", f"message over {max_size} bytes: not scanned")
            output: bytes | None = None
        else:
            message = spool.read()
            from_line, content = sg.split_from_line(message)
            sender = sender or sg.from_line_sender(from_line)
            rcpts = list(recipients) or [getpass.getuser()]
            try:
                answer = sg.ask(host, port, sender, rcpts, content, timeout)
            except sg.NoVerdict as error:
                _say("sgfilter", f"no verdict: {error}")
            if answer is not None and (verbose or not answer.delivers):
                _say("sgfilter", f"from=<{sender}> to={','.join(f'<{r}>' for r in rcpts)} answer={answer.describe()}")
            output = from_line + answer.message if answer is not None and answer.delivers else message
        code = sg.sgfilter_exit(answer, too_big=too_big, safe=safe)
        try:
            if output is None:
                spool.seek(0)
                while chunk := spool.read(256 * 1024):
                    sys.stdout.buffer.write(chunk)
            else:
                sys.stdout.buffer.write(output)
            sys.stdout.buffer.flush()
        except OSError as error:
            _say("sgfilter", f"cannot write the message: {error.strerror or error}")
            code = sg.SG_TEMPFAIL
    sys.exit(code)


@main.command("qmail-queue")
@_daemon_options
@click.option(
    "--qmail-queue",
    "real_queue",
    default="/var/qmail/bin/qmail-queue",
    show_default=True,
    envvar="MAILSIFT_QMAIL_QUEUE",
    help="The real qmail-queue, run for mail to deliver (env MAILSIFT_QMAIL_QUEUE).",
)
def qmail_queue(host: str, port: int, timeout: float, max_size: int, safe: bool, real_queue: str) -> None:
    """A QMAILQUEUE program: scan with sgfilterd, then exec the real qmail-queue.

    Reads the message on fd 0 and the envelope on fd 1 (Fsender\\0Trcpt\\0...\\0),
    as qmail-queue(8).  Mail to deliver (250, 251) goes to the real
    qmail-queue, whose exit status becomes ours; otherwise the exit status is
    qmail-queue's:

    \b
      0   dropped on purpose (551), logged
      11  envelope address too long
      31  rejected (550) or over --max-size: qmail-smtpd answers 554
      53  temporary file could not be written
      54  message or envelope could not be read (incomplete envelope)
      71  the daemon answered 451 (or 421)
      72  the daemon timed out
      73  the daemon could not be reached
      74  communication with the daemon failed (broken or refused request)
      81  internal error (or the real qmail-queue cannot be executed)
      91  envelope format error
    With --safe, 31 for size and 71-74 run the real qmail-queue with the
    original message instead.  Nothing is written on fd 1 (it is the envelope).
    """
    from mailsift import sgfilter_client as sg

    def log(text: str) -> None:
        _say("qmail-queue", text)

    try:
        try:
            spool = sg.read_input(sys.stdin.buffer, max_size)
        except OSError as error:
            raise sg.QueueError(sg.QQ_READ_ERROR, f"cannot read the message: {error.strerror}") from error
        envelope = sg.read_envelope(1)
        who = f"from=<{envelope.sender}> to={','.join(f'<{r}>' for r in envelope.recipients)}"
        if sg.size_of(spool) > max_size:
            if safe:
                log(f"{who} over {max_size} bytes: queued unscanned (--safe)")
                sg.exec_qmail_queue(real_queue, spool, envelope.raw)
            raise sg.QueueError(sg.QQ_REJECTED, f"{who} over {max_size} bytes: rejected")
        message = spool.read()
        try:
            answer = sg.ask(host, port, envelope.sender, envelope.recipients, message, timeout)
        except sg.NoVerdict as error:
            if safe:
                log(f"{who} no verdict ({error}): queued unscanned (--safe)")
                sg.exec_qmail_queue(real_queue, message, envelope.raw)
            raise sg.QueueError(sg.qmail_queue_exit(None, error), f"{who} no verdict: {error}") from error
        code = sg.qmail_queue_exit(answer)
        if answer.delivers:
            log(f"{who} answer={answer.describe()}: queued")
            sg.exec_qmail_queue(real_queue, answer.message, envelope.raw)
        if safe and (code in (sg.QQ_TEMPORARILY_REJECTED, sg.QQ_COMMUNICATION_FAILED) or answer.status == sg.TOO_BIG):
            log(f"{who} answer={answer.describe()}: queued unscanned (--safe)")
            sg.exec_qmail_queue(real_queue, message, envelope.raw)
        verb = "dropped" if answer.status == sg.DROP else "not queued"
        log(f"{who} answer={answer.describe()}: {verb}, exit {code}")
        sys.exit(code)
    except sg.QueueError as error:
        log(f"{error} (exit {error.code})")
        sys.exit(error.code)
    except Exception as error:  # noqa: BLE001 - never an unexplained 0; exit 81 makes qmail-smtpd answer 451
        log(f"internal error: {error!r} (exit {sg.QQ_INTERNAL_BUG})")
        sys.exit(sg.QQ_INTERNAL_BUG)


main.add_command(policy)
main.add_command(lists)
main.add_command(quarantine_group)
main.add_command(track)
main.add_command(report_command)
main.add_command(stats_command)
main.add_command(user_group)

if __name__ == "__main__":
    main()
