"""The client side of ``sgfilterd``, shared by ``mailsift sgfilter`` and ``mailsift qmail-queue``.

Both commands read a message, ask the daemon (:func:`ask`) and turn its
answer into what their caller understands: an exit code and a message on
stdout for procmail/maildrop (:func:`sgfilter_exit`), or qmail-queue's exit
codes and an ``exec`` of the real qmail-queue for qmail-smtpd
(:func:`qmail_queue_exit`).  Neither needs the config file: they only talk to
the daemon, with a deadline on the whole exchange.

The protocol (see :mod:`mailsift.services.sgfilterd`; its statuses are in
:mod:`mailsift.services.sgfilter_protocol`) has no length on the
answer: the daemon closes the connection after the message.  A daemon that
dies while sending also closes it, so the answer is checked: mailsift's edits
only add to the header block (:func:`mailsift.message.rewrite.apply_edits`), so a
message to deliver must be at least as long as the original and end with its
body; anything else is a broken answer, never delivered.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import selectors
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from mailsift.errors import MailsiftError, ScannerError, ScannerTimeout, ScannerUnavailable
from mailsift.services import sgfilter_protocol as protocol
from mailsift.services.sgfilter_protocol import DELIVER, MAX_ADDRESS

DEFAULT_HOST, DEFAULT_PORT, DEFAULT_MAX_SIZE = protocol.DEFAULT_HOST, protocol.DEFAULT_PORT, protocol.DEFAULT_MAX_SIZE
DEFAULT_TIMEOUT = 300.0

# the daemon's answer codes (defined once, in sgfilter_protocol)
CLEAN, FORCED, TEMPFAIL = protocol.CLEAN.code, protocol.FORCED.code, protocol.TEMPFAIL.code
REJECT, DROP, TOO_BIG = protocol.REJECT.code, protocol.DROP.code, protocol.TOO_BIG.code
SHUTTING_DOWN = protocol.SHUTTING_DOWN.code

_ANSWER = re.compile(rb"([0-9]{3}) (-?[0-9]+\.[0-9]+)(?: ([^\n]*))?")
_BODY = re.compile(rb"\r?\n\r?\n")


class NoVerdict(ScannerError):
    """The daemon gave no verdict."""


class DaemonUnreachable(NoVerdict, ScannerUnavailable):
    """The connection to the daemon could not be made."""


class DaemonTimeout(NoVerdict, ScannerTimeout):
    """The daemon did not answer in time."""


class DaemonLost(NoVerdict):
    """The connection broke, or the answer was garbled or cut short."""


@dataclass(frozen=True)
class Answer:
    """The daemon's answer: ``status level name`` and, for 250/251, the message to deliver."""

    status: int
    level: float
    name: str
    message: bytes = b""

    @property
    def delivers(self) -> bool:
        return self.status in DELIVER

    def describe(self) -> str:
        return f"{self.status} {self.level:.2f}{' ' + self.name if self.name else ''}"


@dataclass(frozen=True)
class ClientInfo:
    """The SMTP client as qmail's tcpserver describes it, sent in mailsift's optional request lines."""

    address: str = ""
    name: str = ""
    relay: bool | None = None

    def lines(self) -> list[str]:
        lines = []
        if self.address:
            lines.append(f"{protocol.CLIENT_ADDRESS}: {self.address}")
        if self.name:
            lines.append(f"{protocol.CLIENT_NAME}: {self.name}")
        if self.relay is not None:
            lines.append(f"{protocol.RELAY_CLIENT}: {int(self.relay)}")
        return lines


DEFAULT_LOCAL_ADDRESS = "127.0.0.1"
"""The client of mail injected locally (no ``TCPREMOTEIP``: qmail-inject, sendmail), as qmail-scanner logs it."""


def client_from_environment(environ: Mapping[str, str], local_address: str = DEFAULT_LOCAL_ADDRESS) -> ClientInfo:
    """The client from tcpserver's ``TCPREMOTEIP``/``TCPREMOTEHOST`` and qmail's ``RELAYCLIENT``.

    Without ``TCPREMOTEIP`` the mail was injected locally: ``local_address``
    (``''``: none).  A value that is not an address or a host name is left out.
    ``RELAYCLIENT`` set (even empty, as ``tcp.smtp`` sets it) is a relay client.
    """
    remote = environ.get("TCPREMOTEIP")
    address = local_address if remote is None else remote.strip()
    try:
        address = str(ipaddress.ip_address(address)) if address else ""
    except ValueError:
        address = ""
    name = environ.get("TCPREMOTEHOST", "").strip()
    if not re.fullmatch(r"[!-~]+", name) or len(name) > protocol.MAX_CLIENT_NAME:
        name = ""
    return ClientInfo(address, name, "RELAYCLIENT" in environ)


def request(
    sender: str, recipients: Sequence[str], message: bytes, client: ClientInfo | None = None, length: bool = False
) -> bytes:
    """The request bytes: envelope lines, the optional mailsift lines, ``DATA length`` and the message."""
    lines = [f"MAIL FROM: <{sender}>"] + [f"RCPT TO: <{r}>" for r in recipients]
    lines += client.lines() if client is not None else []
    lines += [f"{protocol.ANSWER_LENGTH}: 1"] if length else []
    lines += [f"DATA {len(message)}"]
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape") + message


_LENGTH = re.compile(rb"LENGTH ([0-9]{1,15})")


def parse_answer(raw: bytes, original: bytes, length: bool = False) -> Answer:
    """Parse the daemon's answer; :class:`DaemonLost` if it is garbled or cut short.

    ``length``: the request asked for ``ANSWER LENGTH``, so a message to deliver
    comes after ``LENGTH <bytes>`` and must be exactly that long (its body may
    differ from the original's: a renamed header, a sanitized part).
    """
    line, newline, rest = raw.partition(b"\n")
    match = _ANSWER.fullmatch(line.removesuffix(b"\r"))
    if not newline or match is None:
        raise DaemonLost(f"garbled answer from the daemon: {line[:200]!r}")
    status, level = int(match.group(1)), float(match.group(2))
    name = (match.group(3) or b"").decode("utf-8", "replace").strip()
    if status not in DELIVER:
        return Answer(status, level, name)
    if length:
        line, newline, rest = rest.partition(b"\n")
        match = _LENGTH.fullmatch(line)
        if not newline or match is None:
            raise DaemonLost(f"garbled LENGTH line from the daemon: {line[:200]!r}")
        if len(rest) != int(match.group(1)):
            raise DaemonLost(f"answer cut short: {len(rest)} bytes of message for LENGTH {match.group(1).decode()}")
        return Answer(status, level, name, rest)
    body = _BODY.search(original)
    if len(rest) < len(original) or (body is not None and not rest.endswith(original[body.end() :])):
        raise DaemonLost(f"answer cut short: {len(rest)} bytes of message for {len(original)} sent")
    return Answer(status, level, name, rest)


def ask(
    host: str,
    port: int,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    timeout: float = DEFAULT_TIMEOUT,
    client: ClientInfo | None = None,
    length: bool = False,
) -> Answer:
    """Send one message to ``sgfilterd`` and return its answer (all within ``timeout`` seconds).

    The request is sent while watching for an early answer: the daemon answers
    bad input (say a message over its size limit) at once, and then the rest
    is not sent.
    """
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError as error:
        raise DaemonTimeout(f"connecting to sgfilterd at {host}:{port}: timed out") from error
    except OSError as error:
        raise DaemonUnreachable(f"cannot connect to sgfilterd at {host}:{port}: {error.strerror or error}") from error
    with sock, selectors.DefaultSelector() as selector:
        sock.setblocking(False)
        outgoing = memoryview(request(sender, recipients, message, client, length))
        received = bytearray()
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        sending = True
        limit = 2 * len(message) + 1024 * 1024
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DaemonTimeout(f"sgfilterd at {host}:{port} did not answer within {timeout:g}s")
            for _, events in selector.select(remaining):
                if events & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(256 * 1024)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as error:
                        if b"\n" in received and not received.startswith(b"25"):
                            return parse_answer(bytes(received), message, length)  # an error line came before the reset
                        raise DaemonLost(f"connection to sgfilterd lost: {error.strerror or error}") from error
                    if not chunk:
                        return parse_answer(bytes(received), message, length)
                    received += chunk
                    if len(received) > limit:
                        raise DaemonLost("answer from sgfilterd is too long")
                    if sending and b"\n" in received:  # answered before the request ended: stop sending
                        sending = False
                        _stop_sending(sock, selector)
                if sending and events & selectors.EVENT_WRITE:
                    try:
                        sent = sock.send(outgoing[: 256 * 1024])
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as error:
                        if error.errno not in (errno.EPIPE, errno.ECONNRESET):
                            raise DaemonLost(f"sending to sgfilterd: {error.strerror or error}") from error
                        sent = len(outgoing)  # the daemon closed: read what it said
                    outgoing = outgoing[sent:]
                    if not outgoing:
                        sending = False
                        _stop_sending(sock, selector)


def _stop_sending(sock: socket.socket, selector: selectors.BaseSelector) -> None:
    selector.modify(sock, selectors.EVENT_READ)
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # already reset: the read side reports it


# --------------------------------------------------------------------------- input


def read_input(stream: IO[bytes], spool_limit: int) -> IO[bytes]:
    """All of ``stream`` in a temporary file (in memory up to ``spool_limit`` bytes), rewound."""
    spool = tempfile.SpooledTemporaryFile(max_size=spool_limit)  # noqa: SIM115 - returned to the caller
    while chunk := stream.read(256 * 1024):
        spool.write(chunk)
    spool.seek(0)
    return spool


def size_of(spool: IO[bytes]) -> int:
    spool.seek(0, os.SEEK_END)
    size = spool.tell()
    spool.seek(0)
    return size


# --------------------------------------------------------------------------- sgfilter

SG_DELIVER = 0
"""Deliver: the message on stdout (250 clean, 251 delivered though detected)."""
SG_REJECT = 1
"""The daemon rejects the message (550); stdout has the original."""
SG_USAGE = 2
"""Bad command line (click's usage error)."""
SG_DROP = 3
"""The daemon drops the message (551, dropped or quarantined); stdout has the original."""
SG_TOO_BIG = 65
"""EX_DATAERR: the message is over the size limit, not scanned; stdout has the original."""
SG_TEMPFAIL = 75
"""EX_TEMPFAIL: no verdict (daemon down, timeout, 451, broken answer); stdout has the original."""


def sgfilter_exit(answer: Answer | None, *, too_big: bool, safe: bool) -> int:
    """The exit code of ``mailsift sgfilter`` for an answer (None: no verdict).

    ``safe``: when there is no verdict, exit 0 (the original passes unchanged).
    """
    if answer is not None and answer.delivers:
        return SG_DELIVER
    if answer is not None and answer.status == REJECT:
        return SG_REJECT
    if answer is not None and answer.status == DROP:
        return SG_DROP
    if safe:
        return SG_DELIVER
    if too_big or (answer is not None and answer.status == TOO_BIG):
        return SG_TOO_BIG
    return SG_TEMPFAIL


def split_from_line(message: bytes) -> tuple[bytes, bytes]:
    """Split off an mbox ``From `` line (procmail passes one); it must stay first."""
    if message.startswith(b"From "):
        end = message.find(b"\n")
        if end >= 0:
            return message[: end + 1], message[end + 1 :]
    return b"", message


def from_line_sender(from_line: bytes) -> str:
    parts = from_line[5:].split()
    sender = parts[0].decode("utf-8", "surrogateescape") if parts else ""
    return "" if sender == "MAILER-DAEMON" else sender


# --------------------------------------------------------------------------- qmail-queue

QQ_OK = 0
QQ_ADDRESS_TOO_LONG = 11
QQ_REJECTED = 31
QQ_WRITE_ERROR = 53
QQ_READ_ERROR = 54
QQ_TEMPORARILY_REJECTED = 71
QQ_TIMEOUT = 72
QQ_CONNECTION_REFUSED = 73
QQ_COMMUNICATION_FAILED = 74
QQ_INTERNAL_BUG = 81
QQ_ENVELOPE_FORMAT = 91

MAX_ENVELOPE = 4 * 1024 * 1024


class QueueError(MailsiftError):
    """A failure that ends ``mailsift qmail-queue`` with qmail-queue's exit ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class QmailEnvelope:
    """qmail-queue's envelope (``Fsender\\0Trcpt\\0...\\0``), and its exact bytes."""

    sender: str
    recipients: tuple[str, ...]
    raw: bytes


def read_envelope(fd: int) -> QmailEnvelope:
    """Read and parse the envelope from ``fd`` (qmail-queue's fd 1).

    EOF before the final 0 byte -> 54 (as qmail-queue); a wrong letter or no
    recipient -> 91; an address over 512 bytes -> 11.  Nothing after the
    final 0 byte is read.
    """
    data = bytearray()
    while not _envelope_complete(data):
        try:
            chunk = os.read(fd, 65536)
        except OSError as error:
            raise QueueError(QQ_READ_ERROR, f"cannot read the envelope: {error.strerror}") from error
        if not chunk:
            _parse_envelope(bytes(data))  # a format error shows first; else it is incomplete
            raise QueueError(QQ_READ_ERROR, "envelope ended before its final 0 byte")
        data += chunk
        if len(data) > MAX_ENVELOPE:
            raise QueueError(QQ_ENVELOPE_FORMAT, "envelope too long")
    return _parse_envelope(bytes(data))


def _envelope_complete(data: bytearray) -> bool:
    try:
        _parse_envelope(bytes(data))
    except _Incomplete:
        return False
    return True


class _Incomplete(QueueError):
    def __init__(self) -> None:
        super().__init__(QQ_READ_ERROR, "envelope ended before its final 0 byte")


def _parse_envelope(data: bytes) -> QmailEnvelope:
    if not data:
        raise _Incomplete
    if not data.startswith(b"F"):
        raise QueueError(QQ_ENVELOPE_FORMAT, "envelope does not start with F")
    end = data.find(b"\0")
    if end < 0:
        raise _Incomplete
    sender = data[1:end]
    recipients: list[bytes] = []
    position = end + 1
    while True:
        if position >= len(data):
            raise _Incomplete
        letter = data[position : position + 1]
        if letter == b"\0":
            break
        if letter != b"T":
            raise QueueError(QQ_ENVELOPE_FORMAT, f"envelope: {letter!r} where T or the final 0 byte should be")
        end = data.find(b"\0", position)
        if end < 0:
            raise _Incomplete
        recipients.append(data[position + 1 : end])
        position = end + 1
    if not recipients:
        raise QueueError(QQ_ENVELOPE_FORMAT, "envelope has no recipient")
    if any(len(a) > MAX_ADDRESS for a in (sender, *recipients)):
        raise QueueError(QQ_ADDRESS_TOO_LONG, f"envelope address over {MAX_ADDRESS} bytes")
    return QmailEnvelope(_decode(sender), tuple(_decode(r) for r in recipients), data[: position + 1])


def _decode(address: bytes) -> str:
    return address.decode("utf-8", "surrogateescape")


def qmail_queue_exit(answer: Answer | None, error: NoVerdict | None = None) -> int:
    """qmail-queue's exit code for an answer that does not deliver, or for no verdict.

    qmail-queue(8) documents 71-74 for programs offering its interface that
    talk to a mail server; qmail-smtpd answers each with its own 451 text, so
    the sender retries and the log says why.  81 ("internal bug") is left for
    mailsift's own failures.  550 and a message over the size limit (552) are
    permanent: 31 ("mail server permanently refuses"), which qmail-smtpd
    answers with 554.  551 (dropped) is 0, as if queued: the mail was dropped
    on purpose.
    """
    if isinstance(error, DaemonTimeout):
        return QQ_TIMEOUT
    if isinstance(error, DaemonUnreachable):
        return QQ_CONNECTION_REFUSED
    if error is not None or answer is None:
        return QQ_COMMUNICATION_FAILED
    if answer.status == DROP:
        return QQ_OK
    if answer.status in (REJECT, TOO_BIG):
        return QQ_REJECTED
    if answer.status in (TEMPFAIL, SHUTTING_DOWN):
        return QQ_TEMPORARILY_REJECTED
    return QQ_COMMUNICATION_FAILED  # 500/501/503: the daemon did not understand the request


def exec_qmail_queue(path: str, message: IO[bytes] | bytes, envelope: bytes) -> None:
    """Replace this process by the real qmail-queue: ``message`` on fd 0, ``envelope`` on fd 1.

    Both go through unlinked temporary files (as simscan does), so their size
    is not limited by a pipe buffer.  Returns only by raising :class:`QueueError`
    (53 if the files cannot be written, 81 if ``path`` cannot be executed).
    """
    try:
        message_fd = _file_with(message)
        envelope_fd = _file_with(envelope)
    except OSError as error:
        raise QueueError(QQ_WRITE_ERROR, f"cannot write a temporary file: {error.strerror}") from error
    os.dup2(message_fd, 0)
    os.dup2(envelope_fd, 1)
    try:
        os.execv(path, [path])  # noqa: S606 - replacing ourselves by qmail-queue is the interface
    except OSError as error:
        raise QueueError(QQ_INTERNAL_BUG, f"cannot execute {path}: {error.strerror}") from error


def _file_with(content: IO[bytes] | bytes) -> int:
    fd, name = tempfile.mkstemp(prefix="mailsift-qq-")
    os.unlink(name)
    with os.fdopen(os.dup(fd), "wb") as handle:
        if isinstance(content, bytes):
            handle.write(content)
        else:
            content.seek(0)
            while chunk := content.read(256 * 1024):
                handle.write(chunk)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


# --------------------------------------------------------------------------- qmail-queue custom error

QQ_CUSTOM_ERROR = 82
"""The custom-error patch's exit: qmail-smtpd answers the text read from :data:`CUSTOM_ERROR_FD`."""
CUSTOM_ERROR_FD = 4
"""Where Flavio Curti's qmail-queue-custom-error patch (netqmail's ``CUSTOM_ERR_FD``) reads the reason."""
MAX_CUSTOM_ERROR = 900
"""The patched qmail.c reads at most 1023 bytes; qmail-smtpd puts its 3-digit code in front."""

_PERMANENT_TEXT = {
    QQ_ADDRESS_TOO_LONG: "envelope address too long (#5.1.3)",
}
_TEMPORARY_TEXT = {  # no detail: a 451's name is an internal error, not for the sender
    QQ_TEMPORARILY_REJECTED: "temporary failure in the content filter, try again later (#4.3.0)",
    QQ_TIMEOUT: "content filter timed out, try again later (#4.3.0)",
    QQ_CONNECTION_REFUSED: "content filter unavailable, try again later (#4.3.0)",
    QQ_COMMUNICATION_FAILED: "content filter failed, try again later (#4.3.0)",
}


def custom_error_text(code: int, answer: Answer | None) -> str | None:
    """The custom-error line (``D`` permanent or ``Z`` temporary, then the text) for a refusal, or None.

    None for exits the patch adds nothing to (qmail's own texts for 53, 54, 81, 91 are right).
    The finding's name is in the text of a rejection (simscan's ``--enable-custom-smtp-reject``);
    the text is one line of printable ASCII, so it cannot break qmail-smtpd's reply.
    """
    if code == QQ_REJECTED:
        if answer is not None and answer.status == REJECT:
            text = (
                f"Your email was rejected: {answer.name} (#5.7.1)"
                if answer.name
                else "Your email was rejected (#5.7.1)"
            )
        else:
            text = "message too big for the content filter (#5.3.4)"
        return "D" + _printable(text)
    if code in _PERMANENT_TEXT:
        return "D" + _PERMANENT_TEXT[code]
    if code in _TEMPORARY_TEXT:
        return "Z" + _TEMPORARY_TEXT[code]
    return None


def _printable(text: str) -> str:
    text = protocol.one_line(text).encode("ascii", "replace").decode("ascii")
    return text[:MAX_CUSTOM_ERROR]


def write_custom_error(fd: int, text: str | None) -> bool:
    """Write ``text`` on ``fd`` (the patched qmail's pipe); False when there is none or it is not open."""
    if text is None:
        return False
    try:
        os.fstat(fd)
        data = text.encode("ascii")
        while data:
            data = data[os.write(fd, data) :]
        os.close(fd)  # qmail reads up to EOF
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- kept work files (SIMSCAN_DEBUG)

DEFAULT_KEEP_WORK_DIR = "/var/tmp/mailsift-qmail-queue"  # noqa: S108 - made 0700 and checked: ours, not a link
DEFAULT_KEEP_WORK_HOURS = 24.0


class WorkFiles:
    """One message's kept work files, simscan's ``SIMSCAN_DEBUG``: ``<base>/<sec>.<usec>.<pid>/``.

    The directory is 0700 and each file 0600 (they hold mail); ``msg`` (the
    message as received), ``addr`` (the envelope), ``answer`` (sgfilterd's
    answer line and returned message) and ``log`` (why it was refused).
    Directories older than ``hours`` are removed when a new one is made.
    Failing to keep them never fails the mail: they are debugging aids.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def make(cls, base: str, hours: float, log: Callable[[str], None]) -> WorkFiles | None:
        now = time.time()
        name = f"{int(now)}.{int(now * 1_000_000) % 1_000_000:06d}.{os.getpid()}"
        try:
            os.makedirs(base, mode=0o700, exist_ok=True)
            info = os.lstat(base)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
                log(f"not keeping work files: {base} must be a directory of this user, mode 0700")
                return None
            path = os.path.join(base, name)
            os.mkdir(path, 0o700)
        except OSError as error:
            log(f"cannot keep work files in {base}: {error.strerror or error}")
            return None
        if hours > 0:
            _remove_old_work(base, now - hours * 3600, keep=name)
        log(f"work files kept in {path}")
        return cls(path)

    def write(self, name: str, content: bytes) -> None:
        try:
            fd = os.open(os.path.join(self.path, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
        except OSError:
            pass

    def write_spool(self, name: str, spool: IO[bytes]) -> None:
        spool.seek(0)
        self.write(name, spool.read())
        spool.seek(0)

    def note(self, text: str) -> None:
        self.write("log", text.encode("utf-8", "replace") + b"\n")


_WORK_NAME = re.compile(r"[0-9]+\.[0-9]{6}\.[0-9]+")


def _remove_old_work(base: str, before: float, keep: str) -> None:
    import shutil

    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        path = os.path.join(base, name)
        if name == keep or not _WORK_NAME.fullmatch(name):
            continue
        try:
            if os.lstat(path).st_mtime < before and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue
