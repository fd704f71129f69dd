"""The one envelope-address check: what may stand between ``<`` and ``>`` in MAIL FROM/RCPT TO.

Every front end checks the addresses it receives (smtpd and lmtpd at
MAIL/RCPT, the milter at SMFIC_MAIL/SMFIC_RCPT, sgfilterd at ``MAIL FROM:``/
``RCPT TO:``) and every path that writes an address into SMTP checks it again
before it goes out (the next hop, quarantine release, notifications), so an
address can never end a command line early and smuggle a second command or
message (``a@x>\\r\\nRCPT TO:<victim@y``).

Refused: control characters (CR, LF, NUL, TAB, DEL, C1...), whitespace,
``<``, ``>``, ``"`` and ``\\`` (quoted local parts are not relayed), and
addresses over :data:`MAX_LENGTH` bytes.  The empty address (the null sender
``<>``, RFC 5321 §4.5.5) is allowed only where the caller says so (MAIL FROM).

With ``need_domain`` (the SMTP front ends: smtpd, lmtpd, the milter), an
address without a domain is refused too (``example.com``, ``bob@``,
``@example.com``: RFC 5321 §4.1.2 makes a path ``Local-part "@" Domain``;
accepting ``RCPT TO:<example.com>`` let a message be "owned" by a bare
domain in the web quarantine) — except ``postmaster`` as a *recipient*
(§4.5.1: "RCPT TO:<Postmaster>" must be accepted; it names the postmaster of
the receiving host).  A bare ``postmaster`` is refused as a sender: a reverse
path needs a domain to be answered at.  sgfilterd does not ask for a domain:
its client is a local delivery agent (procmail, maildrop), whose recipient is
a local user name.  Nor do the checks before an address goes out (the next
hop, a release): they guard against smuggling; what is in the envelope was
checked where it came in.

At the protocol edge a bad address is the client's error (501); where
mailsift itself would write one, :func:`check_address` raises
:class:`AddressError`.
"""

from __future__ import annotations

import re

from mailsift import replies
from mailsift.errors import ProtocolError

MAX_LENGTH = 512
"""Longest address accepted, in bytes (RFC 5321 allows a 256-byte path; real mail stays far below)."""

_REFUSED = frozenset('<>"\\')
_PLAIN = re.compile(rf"[!#-;=?-\[\]-~]{{1,{MAX_LENGTH}}}")
"""An address of printable ASCII without space or refused characters: fine at once (the common case)."""


class AddressError(ProtocolError):
    """An envelope address mailsift will not write into an SMTP command (the sender's fault: 553)."""

    reply = replies.BAD_ADDRESS


def address_problem(address: str, *, allow_empty: bool = False, need_domain: bool = False) -> str:
    """Why ``address`` cannot be used in MAIL FROM/RCPT TO; ``""`` when it can.

    ``allow_empty`` allows the null sender (MAIL FROM); ``need_domain`` asks for
    ``local@domain``, a bare ``postmaster`` allowed where ``allow_empty`` is not
    (a recipient may be ``<Postmaster>``, RFC 5321 §4.5.1; a sender may not).
    """
    if not isinstance(address, str):
        return f"not a string: {type(address).__name__}"
    if _PLAIN.fullmatch(address):  # every address checks twice (front end, next hop): keep it cheap
        return _domain_problem(address, postmaster=not allow_empty) if need_domain else ""
    if not address:
        return "" if allow_empty else "empty address"
    if len(address.encode("utf-8", "surrogateescape")) > MAX_LENGTH:
        return f"longer than {MAX_LENGTH} bytes"
    if "\r" in address or "\n" in address or "\0" in address:
        return "contains CR, LF or NUL"
    if not address.isprintable() or any(ch.isspace() for ch in address):
        return "contains a control character or whitespace"
    for ch in address:
        if ch in _REFUSED:
            return f"contains {ch!r}"
    return _domain_problem(address, postmaster=not allow_empty) if need_domain else ""


def _domain_problem(address: str, *, postmaster: bool) -> str:
    """``""`` for ``local@domain`` (both parts non-empty), or a bare postmaster where allowed."""
    local, at, domain = address.rpartition("@")
    if at and local and domain:
        return ""
    if not at and postmaster and address.lower() == "postmaster":
        return ""
    if not at:
        return "no domain (an address is local@domain)"
    return "empty domain" if not domain else "empty local part"


def is_valid(address: str, *, allow_empty: bool = False) -> bool:
    """Whether ``address`` may be written into MAIL FROM/RCPT TO."""
    return not address_problem(address, allow_empty=allow_empty)


def check_address(address: str, *, what: str = "address", allow_empty: bool = False) -> str:
    """``address`` unchanged, or :class:`AddressError` naming ``what`` and the problem."""
    problem = address_problem(address, allow_empty=allow_empty)
    if problem:
        shown = repr(address[:80]) if isinstance(address, str) else repr(address)
        raise AddressError(f"bad {what} {shown}: {problem}")
    return address


def check_addresses(sender: str, recipients: list[str] | tuple[str, ...]) -> None:
    """Check an envelope (the null sender allowed, at least one recipient not required here)."""
    check_address(sender, what="sender", allow_empty=True)
    for recipient in recipients:
        check_address(recipient, what="recipient")
