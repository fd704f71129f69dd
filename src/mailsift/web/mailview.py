"""A quarantined message made safe to show: headers, text, attachment list.

Nothing of the message is ever rendered as HTML: ``text/plain`` parts are
shown as text (autoescaped by the template), ``text/html`` parts are turned
into text here, and attachments are listed by name, type and size and
downloaded only as ``application/octet-stream`` attachments.  So a hostile
message cannot run script, load a remote image (a tracking pixel) or style
the page.

HTML to text uses the standard library's :class:`html.parser.HTMLParser`: we
need the text only, never markup, so a sanitizer library (which keeps "safe"
markup) would be more than needed; the parser does not execute or fetch
anything, tolerates broken markup, and skips ``script``/``style`` content.
"""

from __future__ import annotations

import email.message
import email.policy
import re
from dataclasses import dataclass
from email.parser import BytesParser
from html.parser import HTMLParser

from mailsift.mime.tree import LenientMessage

MAX_TEXT = 256 * 1024
"""Characters of body text shown; the rest is cut (the raw message can be downloaded)."""
MAX_PARTS = 1000
MAX_HEADER = 2000
SHOWN_HEADERS = ("From", "To", "Cc", "Reply-To", "Date", "Subject", "Message-ID")
_BLOCKS = {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote", "pre", "hr"}
_SKIP = {"script", "style", "head", "title", "template", "noscript"}


class _TextOnly(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self.skipping = 0
        self.size = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skipping += 1
        elif tag in _BLOCKS:
            self.pieces.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in _BLOCKS:
            self.pieces.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping and self.size < MAX_TEXT:
            self.pieces.append(data)
            self.size += len(data)


def html_to_text(markup: str) -> str:
    """The text of an HTML document, without tags, scripts or styles."""
    parser = _TextOnly()
    parser.feed(markup[: MAX_TEXT * 4])
    parser.close()
    text = "".join(parser.pieces)
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    return re.sub(r"\n\s*\n\s*\n+", "\n\n", text).strip()


@dataclass(frozen=True)
class Attachment:
    index: int
    name: str
    content_type: str
    size: int


@dataclass(frozen=True)
class MessageView:
    headers: list[tuple[str, str]]
    """The usual headers (From, To, Subject, ...), decoded."""
    all_headers: list[tuple[str, str]]
    text: str
    text_source: str
    """Where the text came from: ``text/plain``, ``text/html (converted to text)`` or ``''``."""
    truncated: bool
    attachments: list[Attachment]


def _header(value: object) -> str:
    text = str(value)
    return text if len(text) <= MAX_HEADER else text[:MAX_HEADER] + "…"


def _decoded(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:  # an unknown charset name
        return payload.decode("utf-8", "replace")


def _parts(message: email.message.Message) -> list[email.message.Message]:
    parts: list[email.message.Message] = []
    for part in message.walk():
        if len(parts) >= MAX_PARTS:
            break
        parts.append(part)
    return parts


def parse(raw: bytes) -> email.message.Message:
    return BytesParser(LenientMessage, policy=email.policy.compat32).parsebytes(raw)


def view(raw: bytes) -> MessageView:
    """What the message page shows of ``raw``."""
    message = parse(raw)
    policy = email.policy.default
    all_headers = []
    for name, value in message.items():
        try:
            decoded = str(policy.header_factory(name, str(value)))
        except (ValueError, TypeError, IndexError, AttributeError):  # a malformed header: shown as it is
            decoded = str(value)
        all_headers.append((name, _header(decoded)))
    shown = [(n, v) for n, v in all_headers if n.lower() in {h.lower() for h in SHOWN_HEADERS}]
    plain: str | None = None
    html: str | None = None
    attachments = []
    for index, part in enumerate(_parts(message)):
        if part.is_multipart():
            continue
        content_type = part.get_content_type()
        filename = part.get_filename()
        disposition = (part.get("Content-Disposition") or "").split(";")[0].strip().lower()
        is_body = not filename and disposition != "attachment" and content_type in ("text/plain", "text/html")
        if is_body and content_type == "text/plain" and plain is None:
            plain = _decoded(part)
        elif is_body and content_type == "text/html" and html is None:
            html = _decoded(part)
        elif not is_body:
            payload = part.get_payload(decode=True)
            size = len(payload) if isinstance(payload, bytes) else 0
            attachments.append(Attachment(index, _header(filename or "(no name)"), content_type, size))
    if plain is not None:
        text, source = plain, "text/plain"
    elif html is not None:
        text, source = html_to_text(html), "text/html (converted to text)"
    else:
        text, source = "", ""
    truncated = len(text) > MAX_TEXT
    return MessageView(shown, all_headers, text[:MAX_TEXT], source, truncated, attachments)


def part_bytes(raw: bytes, index: int) -> tuple[str, bytes] | None:
    """The decoded content of leaf part ``index`` (as numbered by :func:`view`) and its name."""
    parts = _parts(parse(raw))
    if not 0 <= index < len(parts) or parts[index].is_multipart():
        return None
    part = parts[index]
    payload = part.get_payload(decode=True)
    return (part.get_filename() or f"part-{index}.bin", payload if isinstance(payload, bytes) else b"")
