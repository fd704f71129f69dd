"""ICAP's wire format (RFC 3507) for :mod:`mailsift.services.icap`: bounded parsing and the answers.

Nothing here does I/O: the service reads with its limits and hands the bytes
over.  What a peer sends is parsed strictly and refused with
:class:`IcapProtocolError` (an ICAP status, then the connection is closed):

* the ICAP request line ``METHOD icap://host[:port]/service ICAP/1.0`` and its
  header block (the caller bounds the block: ``max_header_bytes``);
* ``Encapsulated`` (RFC 3507 §4.4.1): ``req-hdr``, ``res-hdr`` in that order,
  then exactly one of ``req-body``, ``res-body``, ``null-body``, ``opt-body``;
  offsets ascending, the HTTP header sections in front of the body bounded
  by ``max_http_header_bytes`` before they are read;
* a chunk-size line (``1a2b`` with at most 16 hex digits, the only extension
  kept is ``ieof``): :func:`parse_chunk_line`; the caller reads the chunk's
  data in bounded pieces, never the whole chunk at once.

The scanners see the HTTP object as a mail (:class:`ObjectMail`): a synthetic
``multipart/mixed`` message whose one attachment is the object, base64
encoded, named after the URL's file name (or the response's
``Content-Disposition`` file name) with the object's ``Content-Type``.  Every
scanner of the mail path (clamd, ``regexp_scan``, the file-type and archive
scanners) then reads it like any attachment.  The message is written while the
object arrives (:meth:`ObjectMail.write`), into a 0600 file of the mail spool.
"""

from __future__ import annotations

import base64
import html
import itertools
import os
import re
import tempfile
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.utils import formatdate

from mailsift.errors import ProtocolError
from mailsift.message.mail import SPOOL_PREFIX, SPOOL_SUFFIX
from mailsift.validators import escape_controls

MAX_HEADER_BYTES = 64 * 1024
"""Default bound of an ICAP header block (request line and fields)."""
MAX_HTTP_HEADER_BYTES = 64 * 1024
"""Default bound of the encapsulated HTTP headers (request and response together)."""
MAX_CHUNK_LINE = 1024
"""A chunk-size line longer than this (size and extensions) is refused."""
MAX_CHUNK_DIGITS = 16
PIECE = 64 * 1024
"""Chunk data is read and written in pieces of at most this size."""
MAX_NAME = 200
"""The attachment's file name is cut to this many characters."""

METHODS = ("OPTIONS", "REQMOD", "RESPMOD")
SERVICES = {"respmod": "RESPMOD", "reqmod": "REQMOD"}
"""The ICAP services (the URI's path) and the one method each supports (RFC 3507 §4.10.2)."""
BODIES = ("req-body", "res-body", "null-body", "opt-body")
HEADERS = ("req-hdr", "res-hdr")

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) (\S{1,8192}) ICAP/(\d)\.(\d)")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,%d})[ \t]*(?:;(.*))?" % MAX_CHUNK_DIGITS)
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")
_UNSAFE_NAME = re.compile(r'[\x00-\x1f\x7f"\\/]')

STATUS = {
    100: "Continue",
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    404: "ICAP Service Not Found",
    405: "Method Not Allowed For Service",
    408: "Request Timeout",
    500: "Server Error",
    501: "Method Not Implemented",
    503: "Service Overloaded",
    505: "ICAP Version Not Supported",
}


class IcapProtocolError(ProtocolError):
    """The ICAP client broke the protocol (or a limit): answered with ``status``, then closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    """An ICAP request's head: the request line, the fields, what ``Encapsulated`` says."""

    method: str
    uri: str
    service: str
    fields: dict[str, str]
    """Field names in lower case; a repeated field's values joined with ``", "``."""
    encapsulated: list[tuple[str, int]] = field(default_factory=list)

    def get(self, name: str, default: str = "") -> str:
        return self.fields.get(name.lower(), default)

    @property
    def preview(self) -> int | None:
        """The ``Preview`` size, or None when the client sends no preview."""
        value = self.get("preview")
        if not value:
            return None
        if not value.isascii() or not value.isdigit() or len(value) > 12:
            raise IcapProtocolError(400, f"bad Preview: {value[:40]!r}")
        return int(value)

    @property
    def allow_204(self) -> bool:
        """Whether the client accepts ``204 No Content`` outside a preview (``Allow: 204``)."""
        return "204" in (part.strip() for part in self.get("allow").split(","))

    @property
    def keep_alive(self) -> bool:
        return "close" not in (part.strip().lower() for part in self.get("connection").split(","))

    @property
    def body(self) -> str:
        """The body entity: ``req-body``, ``res-body``, ``null-body`` or ``opt-body``."""
        return self.encapsulated[-1][0] if self.encapsulated else "null-body"

    @property
    def header_bytes(self) -> int:
        """How many bytes of encapsulated HTTP headers precede the body."""
        return self.encapsulated[-1][1] if self.encapsulated else 0


def parse_head(block: bytes) -> Request:
    """Parse an ICAP head (request line and fields, up to the empty line, which may be left out)."""
    lines = block.split(b"\r\n")
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise IcapProtocolError(400, "empty request")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        raise IcapProtocolError(400, f"bad request line: {_show(lines[0])}")
    method, uri = match.group(1).decode(), match.group(2).decode("ascii", "replace")
    if (match.group(3), match.group(4)) != (b"1", b"0"):
        raise IcapProtocolError(505, f"ICAP/{match.group(3).decode()}.{match.group(4).decode()} is not ICAP/1.0")
    if method not in METHODS:
        raise IcapProtocolError(501, f"method {method} is not implemented")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise IcapProtocolError(400, f"bad header field: {_show(line)}")
        key = name.decode().lower()
        text = value.strip().decode("latin-1")
        fields[key] = f"{fields[key]}, {text}" if key in fields else text
    request = Request(method, uri, service_of(uri), fields)
    request.encapsulated = parse_encapsulated(request.get("encapsulated"), method)
    return request


def service_of(uri: str) -> str:
    """The service named by an ICAP URI: its path without slashes (``icap://h:1344/respmod`` -> ``respmod``)."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme.lower() not in ("icap", "icaps"):
        raise IcapProtocolError(400, f"not an icap:// URI: {uri[:200]!r}")
    return parsed.path.strip("/")


def parse_encapsulated(value: str, method: str) -> list[tuple[str, int]]:
    """``req-hdr=0, res-hdr=123, res-body=456`` as ``[(name, offset), ...]``, checked.

    An OPTIONS request may leave it out (no body); REQMOD and RESPMOD must send it.
    """
    if not value:
        if method == "OPTIONS":
            return []
        raise IcapProtocolError(400, f"{method} without Encapsulated")
    entities: list[tuple[str, int]] = []
    for item in value.split(","):
        name, equals, offset = item.strip().partition("=")
        name = name.strip().lower()
        offset = offset.strip()
        if not equals or name not in HEADERS + BODIES:
            raise IcapProtocolError(400, f"bad Encapsulated entity: {item.strip()[:40]!r}")
        if not offset.isascii() or not offset.isdigit() or len(offset) > 12:
            raise IcapProtocolError(400, f"bad Encapsulated offset: {item.strip()[:40]!r}")
        entities.append((name, int(offset)))
    names = [name for name, _ in entities]
    if names[-1] not in BODIES or any(name in BODIES for name in names[:-1]):
        raise IcapProtocolError(400, "Encapsulated must end with exactly one body entity")
    if len(set(names)) != len(names) or names[:-1] != [name for name in HEADERS if name in names[:-1]]:
        raise IcapProtocolError(400, "Encapsulated: req-hdr, then res-hdr, each at most once")
    offsets = [offset for _, offset in entities]
    if offsets[0] != 0 or any(later <= earlier for earlier, later in itertools.pairwise(offsets)):
        raise IcapProtocolError(400, "Encapsulated offsets must start at 0 and grow")
    return entities


def split_sections(entities: list[tuple[str, int]], data: bytes) -> dict[str, bytes]:
    """The encapsulated header sections of ``data`` (the bytes in front of the body) by name."""
    sections: dict[str, bytes] = {}
    for (name, start), (_, end) in itertools.pairwise(entities):
        sections[name] = data[start:end]
    return sections


@dataclass
class HttpHead:
    """An encapsulated HTTP request or response head: its first line and fields (as sent)."""

    first_line: str
    fields: list[tuple[str, str]]

    def get(self, name: str) -> str:
        lowered = name.lower()
        for key, value in self.fields:
            if key.lower() == lowered:
                return value
        return ""


def parse_http_head(raw: bytes, what: str) -> HttpHead:
    """An HTTP head as sent (CRLF or LF line ends); obsolete line folding joins the previous field."""
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    while lines and not lines[-1]:
        lines.pop()
    if not lines or not lines[0].strip():
        raise IcapProtocolError(400, f"empty HTTP {what} head")
    fields: list[tuple[str, str]] = []
    for line in lines[1:]:
        text = line.decode("latin-1")
        if text[:1] in (" ", "\t") and fields:
            key, value = fields[-1]
            fields[-1] = (key, f"{value} {text.strip()}")
            continue
        name, colon, value = text.partition(":")
        if not colon or not _TOKEN.fullmatch(name.encode("latin-1")):
            raise IcapProtocolError(400, f"bad HTTP {what} header field: {_show(line)}")
        fields.append((name, value.strip()))
    return HttpHead(lines[0].decode("latin-1").strip(), fields)


def parse_chunk_line(line: bytes) -> tuple[int, bool]:
    """A chunk-size line (without its CRLF): the size, and whether it carries ``ieof``."""
    if len(line) > MAX_CHUNK_LINE:
        raise IcapProtocolError(400, "chunk-size line too long")
    match = _CHUNK_SIZE.fullmatch(line.strip(b" \t"))
    if match is None:
        raise IcapProtocolError(400, f"bad chunk size: {_show(line)}")
    extensions = (match.group(2) or b"").split(b";")
    ieof = any(extension.strip().lower() == b"ieof" for extension in extensions)
    return int(match.group(1), 16), ieof


def content_length(head: HttpHead | None) -> int | None:
    """The HTTP ``Content-Length`` (None when absent or not a plain number)."""
    if head is None:
        return None
    value = head.get("content-length").strip()
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        return None
    return int(value)


def request_url(head: HttpHead | None) -> str:
    """The URL of an HTTP request head (absolute form, or ``Host`` + origin form)."""
    if head is None:
        return ""
    parts = head.first_line.split(" ")
    target = parts[1] if len(parts) >= 2 else ""
    if target.startswith("/") and head.get("host"):
        target = f"http://{head.get('host')}{target}"
    return target[:4096]


# --------------------------------------------------------------------------- answers


def icap_head(status: int, fields: Iterable[tuple[str, str]]) -> bytes:
    """An ICAP response head, ended by its empty line."""
    lines = [f"ICAP/1.0 {status} {STATUS.get(status, 'Unknown')}"]
    lines += [f"{name}: {value}" for name, value in fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


def date_field() -> tuple[str, str]:
    return ("Date", formatdate(time.time(), usegmt=True))


def chunk(data: bytes | memoryview) -> bytes:
    """One chunk of a chunked body (never empty: the empty chunk ends the body)."""
    return b"%x\r\n" % len(data) + bytes(data) + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"

BLOCK_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Blocked: {name}</title></head>
<body>
<h1>This {what} was blocked</h1>
<p>The content scanner found <strong>{name}</strong> in it.</p>
<p>Address: <code>{url}</code></p>
<p>If you believe this is a mistake, ask your administrator and quote the reference <code>{ref}</code>.</p>
</body>
</html>
"""


def block_page(name: str, url: str, reference: str, what: str = "download") -> tuple[bytes, bytes]:
    """The HTTP 403 answer for a finding: its head and its HTML body (every value HTML-escaped).

    ``what``: ``download`` (RESPMOD) or ``upload`` (REQMOD)."""
    body = BLOCK_PAGE.format(
        name=html.escape(name, quote=True),
        url=html.escape(url, quote=True),
        ref=html.escape(reference, quote=True),
        what=html.escape(what),
    ).encode("utf-8")
    head = (
        "HTTP/1.1 403 Forbidden\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        f"X-Mailsift-Finding: {header_safe(name)}\r\n"
        "\r\n"
    ).encode("latin-1", "replace")
    return head, body


def header_safe(value: str, limit: int = 200) -> str:
    """A value fit for one header field line: controls escaped, non-Latin-1 replaced, bounded."""
    text = escape_controls(value)[:limit]
    return text.encode("latin-1", "replace").decode("latin-1")


# --------------------------------------------------------------------------- the object as a mail


def object_name(url: str, disposition: str = "") -> str:
    """The attachment's file name: ``Content-Disposition``'s ``filename``, else the URL's last
    path segment (percent-decoded), else ``download``; unsafe characters replaced, bounded."""
    name = ""
    if disposition:
        match = re.search(r"""filename\*?\s*=\s*(?:UTF-8'[^']*')?"?([^";]+)"?""", disposition, re.IGNORECASE)
        if match:
            name = urllib.parse.unquote(match.group(1).strip())
    if not name and url:
        path = urllib.parse.urlsplit(url).path
        name = urllib.parse.unquote(path.rsplit("/", 1)[-1])
    name = _UNSAFE_NAME.sub("_", name).strip(" .")[:MAX_NAME]
    return name or "download"


def object_type(content_type: str) -> str:
    """The attachment's media type: the HTTP ``Content-Type``'s, or ``application/octet-stream``
    (also for ``multipart/*`` and ``message/*``, which cannot be a base64 leaf)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if not _MEDIA_TYPE.fullmatch(media) or media.startswith(("multipart/", "message/")):
        return "application/octet-stream"
    return media


def _filename_parameter(name: str) -> str:
    if name.isascii():
        return f'filename="{name}"'
    return "filename*=UTF-8''" + urllib.parse.quote(name, safe="")


def spool_file(spool_dir: str) -> tuple[int, str]:
    """A new 0600 file in the mail spool, named so that a dead worker's leftovers are removed
    (:func:`mailsift.message.mail.remove_stale_spool`): its descriptor and path."""
    return tempfile.mkstemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-icap-", suffix=SPOOL_SUFFIX, dir=spool_dir)


class ObjectMail:
    """The synthetic message the scanners read, written to a 0600 spool file as the object arrives.

    It carries the object alone, as a base64 attachment; ``X-Mailsift-URL``
    and the subject say where it came from.  :meth:`write` encodes in whole
    base64 lines (57 bytes each), keeping at most 56 bytes back; :meth:`finish`
    writes the rest and the closing boundary.
    """

    BOUNDARY = "mailsift-icap-object"

    def __init__(self, spool_dir: str, *, url: str, method: str, content_type: str, name: str) -> None:
        fd, self.path = spool_file(spool_dir)
        self._file = os.fdopen(fd, "wb")
        self._carry = b""
        media = object_type(content_type)
        head = [
            "From: <>",
            f"Subject: {header_safe(method)} {header_safe(url, 900)}",
            f"Date: {formatdate(time.time(), localtime=False)}",
            f"X-Mailsift-URL: {header_safe(url, 900)}",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/mixed; boundary="{self.BOUNDARY}"',
            "",
            f"--{self.BOUNDARY}",
            f"Content-Type: {media}",
            f"Content-Disposition: attachment; {_filename_parameter(name)}",
            "Content-Transfer-Encoding: base64",
            "",
            "",
        ]
        self._file.write("\n".join(head).encode("utf-8"))

    def write(self, data: bytes | memoryview) -> None:
        carry = self._carry + bytes(data)
        whole = len(carry) - len(carry) % 57
        if whole:
            self._file.write(base64.encodebytes(carry[:whole]))
        self._carry = carry[whole:]

    def finish(self) -> None:
        if self._carry:
            self._file.write(base64.encodebytes(self._carry))
            self._carry = b""
        self._file.write(f"--{self.BOUNDARY}--\n".encode())
        self._file.close()

    def remove(self) -> None:
        if not self._file.closed:
            self._file.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _show(line: bytes) -> str:
    return repr(line[:80])
