"""SAGATOR's sgfilterd protocol, as data: the answer statuses and limits, shared by the daemon and its client.

:mod:`mailsift.services.sgfilterd` (the daemon) answers with these statuses;
:mod:`mailsift.services.sgfilter_client` (``mailsift sgfilter`` and
``mailsift qmail-queue``) reads them.  An answer line is ``XXX L.LL NAME``
(:meth:`Status.line`); the message follows 250 and 251 only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailsift.message.address import MAX_LENGTH

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 27  # SAGATOR's sgfilterd/sgfilter default
DEFAULT_MAX_SIZE = 50 * 1024 * 1024  # sgfilterd's default max_size
MAX_ADDRESS = MAX_LENGTH  # sgfilterd refuses longer addresses
MAX_LINE = 2048
MAX_RECIPIENTS = 1000

# mailsift's optional request lines (before DATA; an old client omits them, an old daemon answers 500):
# the SMTP client as qmail's tcpserver told the qmail-queue wrapper (TCPREMOTEIP, TCPREMOTEHOST, RELAYCLIENT).
CLIENT_ADDRESS = "CLIENT ADDRESS"
CLIENT_NAME = "CLIENT NAME"
RELAY_CLIENT = "RELAY CLIENT"
ANSWER_LENGTH = "ANSWER LENGTH"
"""``ANSWER LENGTH: 1``: a 250/251 answer gives ``LENGTH <bytes>`` on a line of its own before the message,
so a message whose body the config changed (a renamed MIME header, a sanitized part) is told from a cut one."""
HELO = "HELO"
"""``HELO: name``: the SMTP client's HELO/EHLO argument, from a client that knows it (smtp_comm's ``helo``)."""
CLIENT_VERBS = (CLIENT_ADDRESS, CLIENT_NAME, RELAY_CLIENT, ANSWER_LENGTH, HELO)
MAX_CLIENT_NAME = 255

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def one_line(text: str) -> str:
    """``text`` with control characters (CR, LF...) turned into spaces."""
    return _CONTROL.sub(" ", text).strip()


@dataclass(frozen=True, slots=True)
class Status:
    """One answer line: ``XXX L.LL VIRNAME``."""

    code: int
    text: str = ""

    def line(self, level: float = 0.0, name: str | None = None) -> bytes:
        name = one_line(self.text if name is None else name)
        return f"{self.code} {level:.2f}{' ' + name if name else ''}\n".encode("utf-8", "replace")

    def named(self, name: str) -> Status:
        return Status(self.code, name)


# SAGATOR's verdicts
CLEAN = Status(250)
FORCED = Status(251)
TEMPFAIL = Status(451, "Temporary failure in content filter")
REJECT = Status(550)
DROP = Status(551)

# Errors of the protocol itself (not in SAGATOR's list, which names verdicts only):
UNKNOWN_COMMAND = Status(500, "Unknown command (expected MAIL FROM:, RCPT TO:, DATA length)")
LINE_TOO_LONG = Status(500, "Line too long")
BAD_SENDER = Status(501, "Syntax: MAIL FROM: sender")
BAD_RECIPIENT = Status(501, "Syntax: RCPT TO: recipient")
BAD_LENGTH = Status(501, "Syntax: DATA length (a decimal number of bytes)")
SHORT_DATA = Status(501, "Data shorter than the DATA length")
LONG_DATA = Status(501, "Data longer than the DATA length")
BAD_CLIENT = Status(
    501,
    "Syntax: CLIENT ADDRESS: ip, CLIENT NAME: host, RELAY CLIENT: 0 or 1, ANSWER LENGTH: 0 or 1, "
    "HELO: name (each once)",
)
NO_SENDER = Status(503, "MAIL FROM: first")
NO_RECIPIENT = Status(503, "RCPT TO: needed before DATA")
TOO_MANY_RECIPIENTS = Status(503, "Too many recipients")
TOO_BIG = Status(552, "Message size exceeds fixed maximum message size")
TIMEOUT = Status(421, "Timeout")
SHUTTING_DOWN = Status(421, "Service shutting down")
TOO_MANY_CONNECTIONS = Status(421, "Too many connections")

DELIVER = (CLEAN.code, FORCED.code)
"""The codes after which the message follows."""
