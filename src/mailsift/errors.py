"""The one error tree of mailsift.

::

    MailsiftError                   base; ``reply`` is the SMTP answer it maps to
    ├── ConfigError                 a broken config file (file and line known)
    ├── ScannerError                a scanner could not give a verdict -> 451
    │   ├── ScannerTimeout          ... because it ran out of time
    │   └── ScannerUnavailable      ... because its daemon is down / unreachable
    │       └── DatabaseError       ... the database (policy state)
    ├── DeliveryError               the next hop could not take the message -> 451
    │   ├── DeliveryDeferred        ... it answered 4xx
    │   └── DeliveryRejected        ... it answered 5xx (permanent) -> 554
    └── StorageError                a quarantine/maildir write failed -> 451

Errors of the layers underneath (socket errors, next-hop answers,
``OSError`` from the file system) are converted where they enter: in
``delivery.py``, ``maildir.py`` and the scanners that talk to daemons.  Every
error knows the reply the MTA gets, so front ends never guess.
"""

from __future__ import annotations

from mailsift import replies
from mailsift.replies import Reply


class MailsiftError(Exception):
    """Base of every error mailsift raises on purpose."""

    reply: Reply = replies.TEMPFAIL

    def __init__(self, message: str, *, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reply is not None:
            self.reply = reply


class ConfigError(MailsiftError):
    """A config file that cannot be used; names the file and line when known."""

    def __init__(self, message: str, *, filename: str | None = None, lineno: int | None = None) -> None:
        super().__init__(message)
        self.filename = filename
        self.lineno = lineno

    def __str__(self) -> str:
        where = ""
        if self.filename:
            where = f"{self.filename}:{self.lineno}: " if self.lineno else f"{self.filename}: "
        return f"{where}{self.message}"


class ScannerError(MailsiftError):
    """A scanner failed; without ``alternatives``/``recover`` the mail is tempfailed."""

    reply = replies.SCANNER_FAILED


class ScannerTimeout(ScannerError):
    """A scanner exceeded its ``time_limit``."""

    reply = replies.SCANNER_TIMEOUT


class ScannerUnavailable(ScannerError):
    """A scanner's daemon could not be reached."""


class DatabaseError(ScannerUnavailable):
    """The database (greylisting state) could not be reached or refused a statement."""


class DeliveryError(MailsiftError):
    """The message could not be handed to the next hop."""

    reply = replies.NEXT_HOP_UNAVAILABLE


class DeliveryDeferred(DeliveryError):
    """The next hop answered with a temporary (4xx) failure."""

    reply = replies.NEXT_HOP_DEFERRED


class DeliveryRejected(DeliveryError):
    """The next hop refused the message permanently (5xx)."""

    reply = replies.NEXT_HOP_REJECTED


class StorageError(MailsiftError):
    """Writing a message to disk (quarantine, maildir, spool) failed."""

    reply = replies.STORAGE_FAILED
