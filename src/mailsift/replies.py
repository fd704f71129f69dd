"""Every SMTP reply mailsift sends, as data.

Code and tests share these constants (aiosmtpd's ``statuscodes`` habit), so no
``"451 ..."`` literal is scattered through the modules.  A :class:`Reply`
renders itself with :meth:`Reply.line`, and :meth:`Reply.with_text` makes a
variant with a specific reason (e.g. the virus name on a reject).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: code, enhanced status code (RFC 3463) and text."""

    code: int
    status: str
    text: str

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 300

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return 500 <= self.code < 600

    def with_text(self, text: str) -> Reply:
        """The same codes with another text (control characters removed)."""
        clean = "".join(ch if ch.isprintable() else " " for ch in text)
        return Reply(self.code, self.status, clean)

    def line(self) -> str:
        """The reply as one SMTP line, without CRLF."""
        if self.status:
            return f"{self.code} {self.status} {self.text}"
        return f"{self.code} {self.text}"

    def __str__(self) -> str:
        return self.line()


OK = Reply(250, "2.0.0", "Ok: queued")
OK_DROPPED = Reply(250, "2.7.0", "Ok: message discarded by content filter")
OK_QUARANTINED = Reply(250, "2.7.0", "Ok: message held in quarantine")
OK_FORWARDED = Reply(250, "2.0.0", "Ok: delivered")
XFORWARD_OK = Reply(250, "2.0.0", "Ok")

REJECTED = Reply(550, "5.7.1", "Message rejected by content filter")
NEXT_HOP_REJECTED = Reply(554, "5.6.0", "Next hop refused the message")
TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")

TEMPFAIL = Reply(451, "4.3.0", "Temporary failure in content filter, try again later")
SCANNER_FAILED = Reply(451, "4.3.0", "Content scanner temporarily unavailable, try again later")
SCANNER_TIMEOUT = Reply(451, "4.4.5", "Content scan timed out, try again later")
NEXT_HOP_UNAVAILABLE = Reply(451, "4.4.1", "Next hop unavailable, try again later")
NEXT_HOP_DEFERRED = Reply(451, "4.4.0", "Next hop deferred the message, try again later")
STORAGE_FAILED = Reply(451, "4.3.0", "Could not store the message safely, try again later")
DATABASE_FAILED = Reply(451, "4.3.0", "Database temporarily unavailable, try again later")
CONTENT_FAILED = Reply(451, "4.6.0", "Message content could not be processed, try again later")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")

BAD_SYNTAX = Reply(501, "5.5.4", "Syntax error in parameters")
BAD_SENDER = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT = Reply(501, "5.1.3", "Bad recipient address syntax")
XFORWARD_BAD = Reply(501, "5.5.4", "Syntax: XFORWARD attribute=value ...")
XFORWARD_DENIED = Reply(550, "5.7.0", "XFORWARD not allowed from this client")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
BAD_ADDRESS = Reply(553, "5.1.3", "Bad address syntax")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
IDLE_TIMEOUT = Reply(421, "4.4.2", "Idle timeout, closing connection")

# The SMTP session's own answers (smtpd and lmtpd), beside aiosmtpd's
SENDER_OK = Reply(250, "2.1.0", "Ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Ok")
RESET_OK = Reply(250, "2.0.0", "Ok")
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
NEED_RECIPIENT = Reply(503, "", "Error: need RCPT command")
DATA_SYNTAX = Reply(501, "", "Syntax: DATA")
LINE_TOO_LONG = Reply(500, "", "Line too long (see RFC5321 4.5.3.1.6)")
TOO_MUCH_DATA = Reply(552, "", "Error: Too much mail data")
