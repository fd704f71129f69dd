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
