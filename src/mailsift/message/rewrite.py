"""Header edits applied to the raw message on delivery, leaving the body untouched.

Only the header block is rewritten, in this order: fields removed
(``remove_headers``), fields replaced (``modify_header``), the Subject's
prefix, then added fields prepended (``add_header``, a spam engine's
``X-Spam-*``) — so a removal never takes away a field mailsift adds itself.
The body bytes go out exactly as received, so body signatures (DKIM ``bh=``)
stay valid.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.header import Header

from mailsift.message.result import AddHeader, ModifyHeader, RemoveHeaders

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


def _fields(raw: bytes) -> tuple[list[bytes], bytes]:
    """The top-level header fields (each with its continuation lines and line ends) and the rest."""
    if raw.startswith((b"\n", b"\r\n")):
        return [], raw
    match = re.search(rb"\n\r?\n", raw)
    end = match.start() + 1 if match else len(raw)
    fields: list[bytes] = []
    for line in raw[:end].splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields, raw[end:]


def _name(field: bytes) -> str:
    name, colon, _ = field.partition(b":")
    return name.strip().decode("latin-1").lower() if colon else ""


def edit_fields(raw: bytes, removals: Sequence[RemoveHeaders] = (), modified: Sequence[ModifyHeader] = ()) -> bytes:
    """Remove the top-level fields ``removals`` match, then put each of ``modified`` in place.

    A modified field takes the place of the first field of its name (the
    others are removed); with none, it is prepended.  Fields inside MIME parts
    are never touched.
    """
    if not removals and not modified:
        return raw
    fields, rest = _fields(raw)
    newline = b"\r\n" if b"\r\n" in raw[:4096] or not raw else b"\n"
    patterns = [re.compile(removal.pattern, re.IGNORECASE) for removal in removals]
    kept = [f for f in fields if not (_name(f) and any(p.match(_name(f)) for p in patterns))]
    for change in modified:
        line = change.name.encode("ascii") + b": " + _encode(change.value, newline, fold=True) + newline
        lowered = change.name.lower()
        places = [index for index, f in enumerate(kept) if _name(f) == lowered]
        if not places:
            kept.insert(0, line)
            continue
        kept[places[0]] = line
        kept = [f for index, f in enumerate(kept) if index not in places[1:]]
    return b"".join(kept) + rest


def apply_edits(
    raw: bytes,
    headers: Sequence[AddHeader] = (),
    subject_prefix: str = "",
    *,
    removals: Sequence[RemoveHeaders] = (),
    modified: Sequence[ModifyHeader] = (),
) -> bytes:
    """The message with ``removals`` and ``modified`` applied, ``subject_prefix`` added and ``headers`` prepended."""
    raw = edit_fields(raw, removals, modified)
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
