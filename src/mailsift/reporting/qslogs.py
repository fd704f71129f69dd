"""qmail-scanner's other log formats: ``mailstats.csv``, ``quarantine.log`` and the ``CR:`` field.

Options of the existing log hooks (:mod:`mailsift.reporting.logline`), so that
the tooling written for qmail-scanner (QSS and home-grown scripts) keeps
working (reference: ``qmail-scanner.txt``, "--log-details" and quarantining)::

    HOOKS = [log_file('/var/spool/qscan/mailstats.csv', format='mailstats', crypto=True),
             log_file('/var/spool/qscan/quarantine.log', format='quarantine'),
             log_syslog(crypto=True)]

* ``format='mailstats'``: the ``--log-details`` record, **tab-delimited**, one
  line per recipient: time (ISO 8601, local, as ``log_file``'s text lines),
  status with its colon-separated components (``Clear:RC:1(192.0.2.1):SA:...``),
  time taken, raw size, envelope sender, recipient, Subject, Message-ID, then
  each attachment as ``name:size`` in a column of its own.  Fields are decoded
  and keep their spaces (the tab is the delimiter); a tab, CR, LF or other control
  character in a field becomes a space.
* ``format='quarantine'``: one tab-delimited line per message that was
  quarantined (nothing for others): time, envelope sender, recipients
  (comma-separated), Subject, Message-ID, the finding (``Eicar-Test``), what was
  done (``Quarantined_Eicar-Test``), the quarantine file(s).  The reference gives
  the format ("tab-delimited, for post-processing") but not its columns; these
  are mailsift's, in qmail-scanner's field order.
* ``crypto=True``: the status gains qmail-scanner's ``--log-crypto`` items,
  each as ``CR:<item>:`` after ``SA:``: ``PGP(signed)`` / ``PGP(encrypted)``
  (PGP/MIME), ``PGP(old-signed)`` / ``PGP(old-encrypted)`` (inline PGP),
  ``SMIME(signed)`` / ``SMIME(encrypted)``, ``ZIP(encrypted)`` (a
  password-protected ZIP member) and ``DomKeys`` (a DomainKey- or
  DKIM-Signature header).

Nothing here imports :mod:`~mailsift.reporting.logline` at run time: it calls
this module.
"""

from __future__ import annotations

import datetime
import io
import re
import zipfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailsift.message.mail import Mail
    from mailsift.reporting.logline import MessageRecord

FORMATS = ("text", "mailstats", "quarantine")
"""``log_file(format=...)``: qmail-scanner's line (default), ``mailstats.csv``, ``quarantine.log``."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_PGP_SIGNED = re.compile(rb"^-----BEGIN PGP SIGNED MESSAGE-----\r?$", re.MULTILINE)
_PGP_MESSAGE = re.compile(rb"^-----BEGIN PGP MESSAGE-----\r?$", re.MULTILINE)
_SCAN_LIMIT = 16 * 1024 * 1024
"""Inline PGP is looked for in text parts up to this size (a log line must not cost a big scan)."""
_ZIP_MEMBERS = 10_000


# --------------------------------------------------------------------------- CR:


def crypto_items(mail: Mail) -> tuple[str, ...]:
    """qmail-scanner's ``--log-crypto`` items for ``mail`` (see the module docstring), in a fixed order."""
    found: set[str] = set()
    for name in ("dkim-signature", "domainkey-signature"):
        if mail.headers.get(name):
            found.add("DomKeys")
    for _, node in mail.tree.walk():
        kind = node.content_type.lower()
        protocol = node.headers.get("content-type").lower()
        if kind == "multipart/signed":
            if "pgp-signature" in protocol:
                found.add("PGP(signed)")
            elif "pkcs7-signature" in protocol:
                found.add("SMIME(signed)")
        elif kind == "multipart/encrypted" and "pgp-encrypted" in protocol:
            found.add("PGP(encrypted)")
        elif kind in ("application/pkcs7-mime", "application/x-pkcs7-mime"):
            found.add("SMIME(signed)" if "signed-data" in protocol else "SMIME(encrypted)")
    for part in mail.parts:
        if part.content_type.lower().startswith("text/") and len(part.data) <= _SCAN_LIMIT:
            if _PGP_SIGNED.search(part.data):
                found.add("PGP(old-signed)")
            if _PGP_MESSAGE.search(part.data):
                found.add("PGP(old-encrypted)")
        if part.data[:4] == b"PK\x03\x04" and _encrypted_zip(part.data):
            found.add("ZIP(encrypted)")
    order = (
        "PGP(signed)",
        "PGP(encrypted)",
        "PGP(old-signed)",
        "PGP(old-encrypted)",
        "SMIME(signed)",
        "SMIME(encrypted)",
        "ZIP(encrypted)",
        "DomKeys",
    )
    return tuple(item for item in order if item in found)


def _encrypted_zip(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return any(info.flag_bits & 0x1 for info in archive.infolist()[:_ZIP_MEMBERS])
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return False


def crypto_status(items: tuple[str, ...]) -> str:
    """The ``CR:`` components of the status field (``CR:PGP(signed):``), empty without items."""
    return "".join(f"CR:{item}:" for item in items)


# --------------------------------------------------------------------------- tab-delimited lines


def _column(value: str, empty: str = "-") -> str:
    return _CONTROL.sub(" ", value) if value else empty


def _when(record: MessageRecord) -> str:
    return datetime.datetime.fromtimestamp(record.time).astimezone().isoformat(timespec="seconds")


def mailstats_lines(record: MessageRecord, status: str) -> list[str]:
    """``mailstats.csv`` lines, one per recipient; ``status`` is qmail-scanner's first field."""
    message_id = record.message_id
    if message_id and not message_id.startswith("<"):
        message_id = f"<{message_id}>"
    attachments = [f"{_column(a.name)}:{a.size}" for a in record.attachments]
    if record.more_attachments:
        attachments.append(f"...:{record.more_attachments}")
    lines = []
    for recipient in record.recipients or ("",):
        columns = [
            _when(record),
            _column(status),
            f"{record.elapsed:.6f}",
            str(record.size),
            _column(record.sender, "<>"),
            _column(recipient),
            _column(record.subject),
            _column(message_id),
            *attachments,
        ]
        lines.append("\t".join(columns))
    return lines


def quarantine_lines(record: MessageRecord) -> list[str]:
    """The ``quarantine.log`` line of a quarantined message (none for the others)."""
    if record.action != "quarantine" and not record.quarantine:
        return []
    columns = [
        _when(record),
        _column(record.sender, "<>"),
        _column(",".join(record.recipients)),
        _column(record.subject),
        _column(record.message_id),
        _column(record.name),
        _column(record.status),
        _column(",".join(record.quarantine)),
    ]
    return ["\t".join(columns)]
