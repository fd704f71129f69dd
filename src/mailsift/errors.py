"""The one error tree of mailsift.

Every exception mailsift raises is a :class:`MailsiftError`.  Each class knows
``reply``, the SMTP answer the MTA gets when this error ends a message's
processing, and ``content_tied``: whether it comes from *this message's
content* (a parser or decoder failed on it: the same message will fail again,
so a failure that repeats may be quarantined) or from the *infrastructure*
(a scanner daemon, the database, the disk, the next hop: the message is fine,
a retry later may pass)::

    MailsiftError                    reply 451 TEMPFAIL        content_tied=False (every class, unless marked ★)
    ├── ConfigError                  a config file that cannot be used (file:line)
    ├── ScannerError                 a scanner gave no verdict -> 451 SCANNER_FAILED
    │   ├── ScannerTimeout           ... it ran out of time -> 451 4.4.5 SCANNER_TIMEOUT
    │   │   └── services.sgfilter_client.DaemonTimeout        (also a NoVerdict)
    │   ├── ScannerUnavailable       ... its daemon is down or unreachable
    │   │   ├── DatabaseError        ... the database (policies, greylisting, quarantine index, logs)
    │   │   │                            -> 451 DATABASE_FAILED
    │   │   │   ├── storage.migrations.SchemaTooNew          a schema marked incompatible with this code
    │   │   │   └── storage.db._Disconnected                 (internal: tried once more on a new connection)
    │   │   ├── scanners.engines.clamav._Gone                 (internal: retried on a new connection)
    │   │   └── services.sgfilter_client.DaemonUnreachable    (also a NoVerdict)
    │   ├── services.sgfilter_client.NoVerdict                sgfilterd gave no verdict
    │   │   └── services.sgfilter_client.DaemonLost
    │   └── ContentError ★           this message could not be parsed or decoded (RecursionError,
    │       │                            UnicodeError, MemoryError... in the MIME parser, an unpacker
    │       │                            failing on an attachment) -> 451 4.6.0 CONTENT_FAILED
    │       └── scanners.archive._Stop                        (internal: an unpacking limit was hit)
    ├── DeliveryError                the next hop could not take the message -> 451 NEXT_HOP_UNAVAILABLE
    │   ├── DeliveryDeferred         ... it answered 4xx -> 451 NEXT_HOP_DEFERRED
    │   ├── DeliveryRejected         ... it answered 5xx: passed on -> 554 NEXT_HOP_REJECTED
    │   └── delivery.smtpclient.ConnectionLost                the connection failed, closed or timed out
    │       └── delivery.next_hop._NothingSent                (internal: retried on a new connection)
    ├── StorageError                 the disk: spool, quarantine, Maildir -> 451 STORAGE_FAILED
    │   └── storage.quarantine.store.DamagedFile              a stored file without a mailsift head
    ├── services.sgfilter_client.QueueError     ends ``mailsift qmail-queue`` with qmail's exit code
    │   └── services.sgfilter_client._Incomplete
    ├── ProtocolError                the peer broke its protocol: answered where the protocol can,
    │   │                                then the connection is closed -> 501 BAD_SYNTAX (the peer's
    │   │                                fault, never an internal one)
    │   ├── services.milter_protocol.MilterProtocolError      the MTA's milter packets
    │   ├── services.postfix_policy.PolicyProtocolError       a policy request
    │   ├── services.sgfilterd._Refused                      an sgfilter request (carries its status)
    │   ├── services.icap_protocol.IcapProtocolError          an ICAP request (carries its ICAP status)
    │   └── message.address.AddressError                     an envelope address that cannot go into SMTP
    │                                                            (CR/LF, controls, <>...) -> 553 5.1.3
    └── RequestRefused               an operator's or user's request that cannot be done; never on the
        │                                mail path, so never an SMTP answer (``reply`` stays 451)
        ├── reporting.links.LinkError                         a signed link invalid or expired
        ├── reporting.tracking.TrackQueryError                a search that cannot be run (also a ValueError)
        ├── storage.quarantine.admin.QuarantineProblem        release/delete of a missing or damaged entry
        │   ├── storage.quarantine.admin.ReleaseInProgress    another release holds the entry's claim
        │   └── storage.quarantine.admin.AlreadyReleased      released meanwhile by another release
        ├── web.auth.LoginRequired                            -> redirect to /login or 401
        └── cli.mailbox.MailboxError                          a mailbox that cannot be read or written

Only two branches answer 5xx, neither for an internal failure: DeliveryRejected
passes the next hop's own permanent refusal on, and ProtocolError answers a
peer that did not speak the protocol.

Foreign errors are mapped once, where they enter mailsift:

* the spool (``OSError`` while writing or reading the message):
  :class:`mailsift.message.mail.Mail` -> StorageError;
* parsing (anything the MIME parser raises on this message): ``Mail``'s
  parsed views -> ContentError ★ (``OSError`` reading the spool -> StorageError);
* scanning: :func:`mailsift.scanners.base.evaluate` turns any other
  exception of a scanner into a ScannerError; the engines map their sockets'
  errors to ScannerUnavailable/ScannerTimeout; libarchive's and olevba's
  errors are verdicts ("broken", "corrupt") in ``scanners/archive.py`` and
  ``scanners/office.py``, and anything else they raise -> ContentError ★;
* quarantining: :meth:`mailsift.storage.quarantine.store.QuarantineStore.put`
  -> StorageError; indexing: :meth:`mailsift.storage.db.Database.call`
  (SQLAlchemy's errors, ``OSError``) -> DatabaseError;
* delivery: :mod:`mailsift.delivery.smtpclient` (sockets, timeouts) ->
  ConnectionLost, :mod:`mailsift.delivery.maildir` (``OSError``) ->
  StorageError, anything else a next hop raises -> DeliveryError
  (:func:`mailsift.delivery.next_hop.hand_over`).

What is still unexpected (a bug) is caught by each front end's outermost
per-message handler, logged with the queue id, and answered with a temporary
failure (451, the milter's 451 reply code, sgfilter's 451): no internal error
ever answers 5xx, and no connection is dropped without an answer.
"""

from __future__ import annotations

from mailsift import replies
from mailsift.replies import Reply


class MailsiftError(Exception):
    """Base of every error mailsift raises on purpose."""

    reply: Reply = replies.TEMPFAIL
    """What the MTA is answered when this error ends a message's processing."""
    content_tied: bool = False
    """True when the error comes from this message's content (it will fail again); False for infrastructure."""

    def __init__(self, message: str = "", *, reply: Reply | None = None) -> None:
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
    """The database could not be reached or refused a statement.

    A :class:`ScannerUnavailable` because the scanners that use it (greylisting,
    per-user policies) treat it as their daemon being down (``alternatives``,
    ``recover``); its own reply names the database, not a scanner.
    """

    reply = replies.DATABASE_FAILED


class ContentError(ScannerError):
    """This message could not be parsed or decoded: tied to its content, it fails again on a retry.

    A :class:`ScannerError` because parsing happens when a scanner first reads
    the message: ``alternatives``/``recover`` apply as to any scanner failure.
    """

    reply = replies.CONTENT_FAILED
    content_tied = True


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
    """Writing a message to disk (quarantine, maildir, spool) or reading it back failed."""

    reply = replies.STORAGE_FAILED


class ProtocolError(MailsiftError):
    """The peer (MTA, policy client, sgfilter client) did not speak the protocol; the connection is closed."""

    reply = replies.BAD_SYNTAX


class RequestRefused(MailsiftError):
    """An operator's or user's request (web, command line) that cannot be done; not on the mail path."""
