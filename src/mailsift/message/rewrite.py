"""Header edits applied to the raw message on delivery, leaving the body untouched.

Only the header block is rewritten (added fields are prepended, the Subject
gets its prefix); the body bytes go out exactly as received, so body
signatures (DKIM ``bh=``) stay valid.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.header import Header

from mailsift.message.result import AddHeader

_SUBJECT = re.compile(rb"^subject:[ \t]*", re.IGNORECASE | re.MULTILINE)


def _encode(value: str, newline: bytes, *, fold: bool = False) -> bytes:
    """ASCII as is; anything else as RFC 2047 encoded words, folded with ``newline``.

    A value can never start a header of its own: line breaks in it (a
    scanner's name expanded by ``%V``) become spaces, or with ``fold`` (a
    multi-line report, ``%R``) folded continuation lines, each starting with a
    tab, blank lines dropped.
    """
    lines = [line.strip() for line in re.split(r"\r\n|\r|\n", value)]
    lines = [line for line in lines if line] or [""]
    if fold and len(lines) > 1 and value.isascii():
        return (newline + b"\t").join(line.encode("ascii") for line in lines)
    value = re.sub(r"[\r\n]+", " ", value)
    if value.isascii():
        return value.encode("ascii")
    return Header(value, "utf-8").encode(linesep=newline.decode("ascii")).encode("ascii")


def _header_end(raw: bytes) -> int:
    """Offset of the empty line ending the header block (or len(raw))."""
    match = re.search(rb"\r?\n\r?\n", raw)
    return match.start() + 1 if match else len(raw)


def apply_edits(raw: bytes, headers: Sequence[AddHeader] = (), subject_prefix: str = "") -> bytes:
    """The message with ``headers`` prepended and ``subject_prefix`` added."""
    if not headers and not subject_prefix:
        return raw
    newline = b"\r\n" if b"\r\n" in raw[:4096] or not raw else b"\n"
    if subject_prefix:
        end = _header_end(raw)
        match = _SUBJECT.search(raw, 0, end)
        prefix = _encode(subject_prefix, newline)
        if match:
            if _encoded(prefix) and not raw.startswith(b"=?", match.end()):
                # Space after an encoded word is kept by readers: let it be the prefix's own.
                prefix = _encode(subject_prefix.rstrip(), newline) + b" "
            raw = (
                raw[: match.end()]
                + prefix
                + (b" " if not prefix.endswith(b" ") and _encoded(prefix) else b"")
                + raw[match.end() :]
            )
        else:
            raw = b"Subject: " + prefix.rstrip() + newline + raw
    added = b"".join(h.name.encode("ascii") + b": " + _encode(h.value, newline, fold=True) + newline for h in headers)
    return added + raw


def _encoded(prefix: bytes) -> bool:
    return prefix.startswith(b"=?")
