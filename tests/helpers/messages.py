"""Test mail, built and read back: the small messages the tests send, and the text of a received one.

* :func:`message`: a plain mail with a subject, body and extra headers (protocol tests);
* :func:`attachment_mail`: a mail with ``(filename, data, mime type)`` attachments (engine tests);
* :func:`message_bytes`: a text or HTML mail with an optional ``invoice.exe`` (web quarantine tests);
* :func:`parse` and :func:`text_of`: a received mail as an ``EmailMessage``, its plain-text body.
"""

from __future__ import annotations

import email
import email.message
import email.policy
from email.message import EmailMessage


def message(subject: str = "test", body: str = "hello\r\n", headers: str = "") -> bytes:
    return (
        f"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@example.test>\r\n{headers}\r\n{body}"
    ).encode()


def attachment_mail(*attachments: tuple[str, bytes, str], body: str = "see the attachment") -> bytes:
    """A mail with the given ``(filename, data, mime type)`` attachments."""
    msg = email.message.EmailMessage()
    msg["From"] = "alice@example.net"
    msg["To"] = "bob@example.org"
    msg["Subject"] = "attachment"
    msg.set_content(body)
    for filename, data, mime_type in attachments:
        maintype, subtype = mime_type.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return bytes(msg)


def message_bytes(sender: str, to: str, subject: str, body: str, *, html: str = "", attachment: bytes = b"") -> bytes:
    """A small MIME message: a text part (or an HTML part), and an optional attachment."""
    lines = [f"From: <{sender}>", f"To: <{to}>", f"Subject: {subject}", "Message-ID: <x@test>", "MIME-Version: 1.0"]
    if not html and not attachment:
        return ("\r\n".join([*lines, "Content-Type: text/plain; charset=utf-8", "", body, ""])).encode()
    parts = []
    if html:
        parts.append(f"Content-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n")
    else:
        parts.append(f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n")
    if attachment:
        parts.append(
            'Content-Type: application/octet-stream; name="invoice.exe"\r\n'
            'Content-Disposition: attachment; filename="invoice.exe"\r\n\r\n' + attachment.decode() + "\r\n"
        )
    boundary = "b0undary"
    mime = f"\r\n--{boundary}\r\n".join(["", *parts])[2:]
    head = "\r\n".join([*lines, f'Content-Type: multipart/mixed; boundary="{boundary}"', "", ""])
    return (head + mime + f"\r\n--{boundary}--\r\n").encode()


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def text_of(data: bytes) -> str:
    body = parse(data).get_body(("plain",))
    assert body is not None
    return str(body.get_content()).replace("\r\n", "\n")


def nested_multipart(levels: int, subject: str = "nested") -> bytes:
    """A mail of ``levels`` multipart/mixed levels, one inside the other (1,000+ crash the MIME parser)."""
    head = f"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
    opening = "".join(f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n' for i in range(levels))
    closing = "".join(f"\r\n--b{i}--\r\n" for i in reversed(range(levels)))
    return (head + opening + "Content-Type: text/plain\r\n\r\nhello\r\n" + closing).encode()
