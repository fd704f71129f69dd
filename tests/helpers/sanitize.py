"""Messages with an infected attachment, and two independent readings of what ``sanitize`` delivers.

``python_parts`` reads a message with the standard library (the modern ``default``
policy, which records every defect); ``perl_parts`` with Perl's MIME::Tools
(``MIME::Parser``, Debian's libmime-tools-perl, installed by ``scripts/setup.sh --test``)
through ``bench/evasive/readers.pl``: a parser written apart from Python's.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import shutil
import subprocess
import tempfile
from email.message import EmailMessage
from pathlib import Path

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
PDF = b"%PDF-1.4\n% a harmless report\n" + bytes(range(256))
READER = Path(__file__).resolve().parents[2] / "bench" / "evasive" / "readers.pl"


def _b64(data: bytes, newline: bytes = b"\r\n") -> bytes:
    return base64.encodebytes(data).replace(b"\n", newline)


def mixed(newline: bytes = b"\r\n", *, eicar_name: str = "invoice.com", headers: bytes = b"") -> bytes:
    """text/plain, an EICAR attachment and a PDF, in a multipart/mixed (``headers`` go on top)."""
    lines = [
        b"From: alice@example.test",
        b"To: bob@example.test",
        b"Subject: the report",
        b"Message-ID: <sanitize-1@example.test>",
        b"MIME-Version: 1.0",
        b'Content-Type: multipart/mixed; boundary="=-=BB=-="',
        b"",
        b"This is a multi-part message in MIME format.",
        b"--=-=BB=-=",
        b"Content-Type: text/plain; charset=us-ascii",
        b"",
        b"Hello Bob, the report is attached.",
        b"--=-=BB=-=",
        b'Content-Type: application/octet-stream; name="' + eicar_name.encode() + b'"',
        b'Content-Disposition: attachment; filename="' + eicar_name.encode() + b'"',
        b"Content-Transfer-Encoding: base64",
        b"",
    ]
    tail = [
        b"--=-=BB=-=",
        b'Content-Type: application/pdf; name="report.pdf"',
        b'Content-Disposition: attachment; filename="report.pdf"',
        b"Content-Transfer-Encoding: base64",
        b"",
    ]
    return (
        headers.replace(b"\r\n", newline)
        + newline.join(lines)
        + newline
        + _b64(EICAR, newline)
        + newline.join(tail)
        + newline
        + _b64(PDF, newline)
        + b"--=-=BB=-=--"
        + newline
    )


def single(newline: bytes = b"\r\n") -> bytes:
    """A message whose only body is the EICAR file."""
    head = [
        b"From: alice@example.test",
        b"To: bob@example.test",
        b"Subject: just a file",
        b"MIME-Version: 1.0",
        b'Content-Type: application/x-msdownload; name="setup.exe"',
        b"Content-Transfer-Encoding: base64",
        b"",
    ]
    return newline.join(head) + newline + _b64(EICAR, newline)


def python_parts(raw: bytes) -> tuple[list[tuple[str, str | None, bytes]], list[str]]:
    """``(content type, filename, decoded payload)`` of every leaf, and every defect the standard library found."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    parts: list[tuple[str, str | None, bytes]] = []
    defects = [type(d).__name__ for d in message.defects]
    for part in message.walk():
        defects += [type(d).__name__ for d in part.defects]
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        parts.append((part.get_content_type(), part.get_filename(), payload if isinstance(payload, bytes) else b""))
    return parts, defects


def have_perl_reader() -> bool:
    if shutil.which("perl") is None:
        return False
    done = subprocess.run(["perl", "-MMIME::Parser", "-MJSON::PP", "-e", "1"], capture_output=True, check=False)
    return done.returncode == 0


def perl_parts(raw: bytes) -> tuple[list[tuple[list[str], bytes]], str | None]:
    """MIME::Parser's reading: ``(names, decoded body)`` of every part with a body, and its error (None)."""
    with tempfile.NamedTemporaryFile(suffix=".eml") as file:
        file.write(raw)
        file.flush()
        done = subprocess.run(["perl", str(READER), file.name], capture_output=True, check=True, timeout=120)
    reading = json.loads(done.stdout)
    return [(part["names"], base64.b64decode(part["data"])) for part in reading["parts"]], reading["error"]
