"""``mailsift sgfilter`` and ``mailsift qmail-queue``: the two clients of ``sgfilterd``.

They need no config file: they talk to the daemon (``--host``/``--port``)
through :mod:`mailsift.services.sgfilter_client`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import click

from mailsift.services import sgfilter_client as sg


def _daemon_options(function: Callable[..., None]) -> Callable[..., None]:
    """The options shared by the two clients of sgfilterd (no config file needed)."""
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


@click.command("sgfilter")
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


@click.command("qmail-queue")
@_daemon_options
@click.option(
    "--qmail-queue",
    "real_queue",
    default="/var/qmail/bin/qmail-queue",
    show_default=True,
    envvar="MAILSIFT_QMAIL_QUEUE",
    help="The real qmail-queue, run for mail to deliver (env MAILSIFT_QMAIL_QUEUE).",
)
@click.option(
    "--extensions/--no-extensions",
    default=True,
    show_default=True,
    envvar="MAILSIFT_QMAIL_EXTENSIONS",
    help="Use mailsift's request lines: pass TCPREMOTEIP, TCPREMOTEHOST and RELAYCLIENT, and ask for the "
    "answer's length (--no-extensions for a SAGATOR sgfilterd, which does not know them; "
    "env MAILSIFT_QMAIL_EXTENSIONS).",
)
@click.option(
    "--local-address",
    default=sg.DEFAULT_LOCAL_ADDRESS,
    show_default=True,
    envvar="MAILSIFT_QMAIL_LOCAL_ADDRESS",
    help="The client address of mail injected locally (no TCPREMOTEIP), as qmail-scanner logs it; "
    "'' for none (env MAILSIFT_QMAIL_LOCAL_ADDRESS).",
)
@click.option(
    "--custom-error",
    is_flag=True,
    envvar="MAILSIFT_QMAIL_CUSTOM_ERROR",
    help="qmail has the qmail-queue custom-error patch: explain a refusal to qmail-smtpd (the finding's "
    "name in the reply) by writing it to --custom-error-fd and exiting 82. Plain qmail would answer "
    "'qq temporary problem' to exit 82: leave it off there (env MAILSIFT_QMAIL_CUSTOM_ERROR).",
)
@click.option(
    "--custom-error-fd",
    type=click.IntRange(2, 1023),
    default=sg.CUSTOM_ERROR_FD,
    show_default=True,
    envvar="MAILSIFT_QMAIL_CUSTOM_ERROR_FD",
    help="The descriptor the patched qmail reads the custom error from (env MAILSIFT_QMAIL_CUSTOM_ERROR_FD).",
)
@click.option(
    "--keep-work",
    "keep_work",
    default=None,
    envvar="MAILSIFT_QMAIL_KEEP_WORK",
    help="Keep each message's work files (message, envelope, answer; mode 0600) in a new directory under "
    "this one, for debugging (simscan's SIMSCAN_DEBUG; env MAILSIFT_QMAIL_KEEP_WORK). With SIMSCAN_DEBUG "
    f"set and no --keep-work: {sg.DEFAULT_KEEP_WORK_DIR}.",
)
@click.option(
    "--keep-work-hours",
    type=click.FloatRange(min=0),
    default=sg.DEFAULT_KEEP_WORK_HOURS,
    show_default=True,
    envvar="MAILSIFT_QMAIL_KEEP_WORK_HOURS",
    help="Kept work directories older than this are removed when a new one is kept (0: never).",
)
def qmail_queue(
    host: str,
    port: int,
    timeout: float,
    max_size: int,
    safe: bool,
    real_queue: str,
    extensions: bool,
    local_address: str,
    custom_error: bool,
    custom_error_fd: int,
    keep_work: str | None,
    keep_work_hours: float,
) -> None:
    """A QMAILQUEUE program: scan with sgfilterd, then exec the real qmail-queue.

    Reads the message on fd 0 and the envelope on fd 1 (Fsender\\0Trcpt\\0...\\0),
    as qmail-queue(8), and the SMTP client from tcpserver's environment
    (TCPREMOTEIP, TCPREMOTEHOST, RELAYCLIENT).  Mail to deliver (250, 251) goes
    to the real qmail-queue, whose exit status becomes ours; otherwise the exit
    status is qmail-queue's:

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
    original message instead.  With --custom-error (qmail with the
    custom-error patch), 11, 31 and 71-74 become exit 82, the reason written
    on --custom-error-fd ("D" permanent, "Z" temporary, then the text
    qmail-smtpd answers).  Nothing is written on fd 1 (it is the envelope).
    """

    def log(text: str) -> None:
        _say("qmail-queue", text)

    if keep_work is None and os.environ.get("SIMSCAN_DEBUG") is not None:
        keep_work = sg.DEFAULT_KEEP_WORK_DIR
    work: sg.WorkFiles | None = None

    def refuse(code: int, text: str, answer: sg.Answer | None = None) -> None:
        log(text)
        if work is not None:
            work.note(f"exit {code}: {text}")
        reason = sg.custom_error_text(code, answer) if custom_error else None
        if reason is not None:  # 0 (dropped) and qmail's own failures (53, 54, 81, 91) keep qmail's texts
            if sg.write_custom_error(custom_error_fd, reason):
                log(f"custom error on fd {custom_error_fd}: {reason!r} (exit {sg.QQ_CUSTOM_ERROR})")
                sys.exit(sg.QQ_CUSTOM_ERROR)
            log(f"custom error: fd {custom_error_fd} is not open (qmail without the patch?): exit {code}")
        sys.exit(code)

    try:
        try:
            spool = sg.read_input(sys.stdin.buffer, max_size)
        except OSError as error:
            raise sg.QueueError(sg.QQ_READ_ERROR, f"cannot read the message: {error.strerror}") from error
        envelope = sg.read_envelope(1)
        client = sg.client_from_environment(os.environ, local_address) if extensions else None
        who = f"from=<{envelope.sender}> to={','.join(f'<{r}>' for r in envelope.recipients)}"
        if client is not None and client.address:
            who += f" client={client.address} relay={int(bool(client.relay))}"
        if keep_work:
            work = sg.WorkFiles.make(keep_work, keep_work_hours, log)
            if work is not None:
                work.write("addr", envelope.raw)
                work.write_spool("msg", spool)
        if sg.size_of(spool) > max_size:
            if safe:
                log(f"{who} over {max_size} bytes: queued unscanned (--safe)")
                sg.exec_qmail_queue(real_queue, spool, envelope.raw)
            raise sg.QueueError(sg.QQ_REJECTED, f"{who} over {max_size} bytes: rejected")
        message = spool.read()
        try:
            answer = sg.ask(host, port, envelope.sender, envelope.recipients, message, timeout, client, extensions)
        except sg.NoVerdict as error:
            if safe:
                log(f"{who} no verdict ({error}): queued unscanned (--safe)")
                sg.exec_qmail_queue(real_queue, message, envelope.raw)
            raise sg.QueueError(sg.qmail_queue_exit(None, error), f"{who} no verdict: {error}") from error
        if work is not None:
            work.write("answer", answer.describe().encode() + b"\n" + answer.message)
        code = sg.qmail_queue_exit(answer)
        if answer.delivers:
            log(f"{who} answer={answer.describe()}: queued")
            sg.exec_qmail_queue(real_queue, answer.message, envelope.raw)
        if safe and (code in (sg.QQ_TEMPORARILY_REJECTED, sg.QQ_COMMUNICATION_FAILED) or answer.status == sg.TOO_BIG):
            log(f"{who} answer={answer.describe()}: queued unscanned (--safe)")
            sg.exec_qmail_queue(real_queue, message, envelope.raw)
        verb = "dropped" if answer.status == sg.DROP else "not queued"
        refuse(code, f"{who} answer={answer.describe()}: {verb}, exit {code}", answer)
    except sg.QueueError as error:
        refuse(error.code, f"{error} (exit {error.code})")
    except Exception as error:  # noqa: BLE001 - never an unexplained 0; exit 81 makes qmail-smtpd answer 451
        log(f"internal error: {error!r} (exit {sg.QQ_INTERNAL_BUG})")
        sys.exit(sg.QQ_INTERNAL_BUG)
