"""Content decoders: encoded words, transfer encodings (base64, quoted-printable, uuencode,
yEnc) read as strictly as the standard library and as leniently as mail clients."""

from __future__ import annotations

import base64
import binascii
import codecs as python_codecs
import email.errors
import email.parser
import email.utils
import hashlib
import quopri
import re
from collections.abc import Iterable
from email.header import decode_header, make_header

from mailsift.mime.binhex import BINHEX_ENCODINGS, find_binhex

# --------------------------------------------------------------------------- headers


NOT_MAIL_CHARSETS = frozenset({"unicode-escape", "raw-unicode-escape", "undefined", "idna", "punycode"})
"""Python codecs a message may name but no mail is written in: an encoded word in one of them is
kept as written (``=?unicode-escape?q?...?=`` would run Python's escape decoder on hostile text)."""


def is_mail_charset(name: str) -> bool:
    """Whether ``name`` is a text encoding mail can be written in (not one of Python's own codecs)."""
    try:
        return python_codecs.lookup(name).name not in NOT_MAIL_CHARSETS
    except (LookupError, ValueError, TypeError):
        return False


def is_python_codec(name: str) -> bool:
    """Whether ``name`` names one of Python's own codecs (:data:`NOT_MAIL_CHARSETS`); an unknown
    name is not one (it stays a charset the message declares, for the checks that read it)."""
    try:
        return python_codecs.lookup(name).name in NOT_MAIL_CHARSETS
    except (LookupError, ValueError, TypeError):
        return False


MAX_DECODED_INPUT = 64 * 1024
"""Characters of a header value :func:`decode_words` decodes.  The standard library's ``decode_header``
takes time quadratic in a run of encoded words (about 5 ms for 64 KB, many seconds for 4 MB): the rest of a
longer value is left out, marked (:data:`NOT_DECODED`; :class:`mailsift.mime.tree.Header` keeps the raw
value whole).  Readers of decoded values keep less: log lines 1,000 characters, notices 200, the
password finder 64 K characters per text; filenames have their own bounded reader (mime/params.py)."""

NOT_DECODED = " [...{} more characters, not decoded]"
"""What stands for the part of a value past :data:`MAX_DECODED_INPUT` in its decoded form."""

_BLANKS = re.compile(r"[ \t\r\n]+")


def _decoded(value: str) -> str | None:
    """``value`` with its encoded words decoded as the standard library does; None if it cannot be."""
    try:
        words = decode_header(value)
        if any(charset and not is_mail_charset(charset) for _, charset in words):
            return None
        return str(make_header(words))
    except (ValueError, LookupError, UnicodeError, binascii.Error, email.errors.HeaderParseError):
        return None


def decode_words(value: str, limit: int = MAX_DECODED_INPUT) -> str:
    """Decode RFC 2047 encoded words; undecodable input is returned unchanged.

    Only the first ``limit`` characters are decoded, cut at a blank so no
    encoded word is split; the rest becomes :data:`NOT_DECODED`.  Where the cut
    splits a character that several encoded words carry, up to three more words
    are dropped until the prefix decodes.
    """
    if "=?" not in value:
        return value
    if len(value) <= limit:
        decoded = _decoded(value)
        return value if decoded is None else decoded
    cuts = [match.start() for match in _BLANKS.finditer(value, 0, limit + 1)][-4:] or [limit]
    head, cut = value[: cuts[-1]], cuts[-1]
    for candidate in reversed(cuts):  # a UTF-8 character spans at most four encoded words
        decoded = _decoded(value[:candidate])
        if decoded is not None:
            head, cut = decoded, candidate
            break
    return head + NOT_DECODED.format(len(value) - cut)


_UU_BEGIN = re.compile(rb"^begin(?:-base64)? +([0-7]{3,4}) +(.+?)\r?$", re.MULTILINE)


def extract_uuencoded(data: bytes) -> list[tuple[str, bytes]]:
    """Find ``begin 644 name`` … ``end`` blocks in a text and decode them leniently."""
    found: list[tuple[str, bytes]] = []
    for match in _UU_BEGIN.finditer(data):
        name = match.group(2).decode("utf-8", "replace").strip()
        out = bytearray()
        rest = data[match.end() :].split(b"\n")
        for line in rest[1:]:
            line = line.rstrip(b"\r")
            if line.strip() in (b"end", b"`", b""):  # blank lines are skipped (Thunderbird's mimeenc.cpp)
                if line.strip() == b"end":
                    break
                continue
            try:
                out += binascii.a2b_uu(line)
            except binascii.Error:
                # Broken padding, as some encoders write: decode what the length byte promises.
                nbytes = ((line[0] - 32) & 63) if line else 0
                try:
                    out += binascii.a2b_uu(line[: ((nbytes + 2) // 3) * 4 + 1])
                except binascii.Error:
                    break
        found.append((name, bytes(out)))
    return found


_YBEGIN = re.compile(rb"^=ybegin (.*?)\r?$", re.MULTILINE)
_YEND = re.compile(rb"^=yend\b.*$", re.MULTILINE)
_YPART = re.compile(rb"^=ypart\b.*\r?\n", re.MULTILINE)
_YNAME = re.compile(rb"\bname=(.*)$")
_YENC_SHIFT = bytes((byte - 42) % 256 for byte in range(256))
_YENC_ESCAPE = re.compile(rb"\x13(.)", re.DOTALL)  # "=" after the shift by 42


def _yenc_unescape(match: re.Match[bytes]) -> bytes:
    return bytes(((match.group(1)[0] - 64) % 256,))


def yenc_decode(body: bytes) -> bytes:
    """Decode yEnc data lines (no ``=y`` control lines): shift by 42, ``=`` escapes by 64 more.

    Done with ``translate`` and one regular expression over the whole body, so
    a big payload is never walked byte by byte in Python.
    """
    shifted = body.translate(None, b"\r\n").translate(_YENC_SHIFT)
    return _YENC_ESCAPE.sub(_yenc_unescape, shifted)


def extract_yencoded(data: bytes) -> list[tuple[str, bytes]]:
    """Find ``=ybegin`` … ``=yend`` blocks (single or multi-part) in a text and decode them."""
    found: list[tuple[str, bytes]] = []
    for match in _YBEGIN.finditer(data):
        name_match = _YNAME.search(match.group(1))
        name = name_match.group(1).decode("utf-8", "replace").strip() if name_match else ""
        start = data.find(b"\n", match.end())
        if start < 0:
            continue
        end_match = _YEND.search(data, start)
        body = data[start + 1 : end_match.start() if end_match else len(data)]
        found.append((name, yenc_decode(_YPART.sub(b"", body))))
    return found


def _decode_base64(encoded: bytes) -> tuple[bytes, list[email.errors.MessageDefect]]:
    """Lenient base64, as the standard library decodes a part (``email._encoded_words.decode_b``)."""
    pad_error = len(encoded) % 4
    try:
        padding = b"==="[: 4 - pad_error] if pad_error else b""
        defects: list[email.errors.MessageDefect] = [email.errors.InvalidBase64PaddingDefect()] if pad_error else []
        return base64.b64decode(encoded + padding, validate=True), defects
    except binascii.Error:
        pass
    try:
        return base64.b64decode(encoded, validate=False), [email.errors.InvalidBase64CharactersDefect()]
    except binascii.Error:
        pass
    try:
        return base64.b64decode(encoded + b"==", validate=False), [
            email.errors.InvalidBase64CharactersDefect(),
            email.errors.InvalidBase64PaddingDefect(),
        ]
    except binascii.Error:
        return encoded, [email.errors.InvalidBase64LengthDefect()]


KNOWN_ENCODINGS = frozenset(
    {"", "7bit", "8bit", "binary", "base64", "quoted-printable", "x-uuencode", "uuencode", "uue", "x-uue"}
    | BINHEX_ENCODINGS
)
"""Content-Transfer-Encoding values a decoder knows; anything else is read as identity."""

_UU_ENCODINGS = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})
_COMMENT = re.compile(r"\([^()]*\)")
_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/=\s]*")
_BASE64_WORD = re.compile(rb"[A-Za-z0-9+/]{40}")
_QP_ESCAPE = re.compile(rb"=[0-9A-F]{2}")
_INNER_PADDING = re.compile(rb"=[A-Za-z0-9+/]")


def normalize_encoding(value: str) -> str:
    """A Content-Transfer-Encoding as a lenient reader sees it: comments, quotes, blanks gone."""
    return re.sub(r"[\s\"']", "", _COMMENT.sub("", value)).lower()


_NOT_BASE64 = bytes(b for b in range(256) if not (chr(b).isascii() and (chr(b).isalnum() or chr(b) in "+/=")))


def decode_base64_chunks(encoded: bytes) -> bytes:
    """Base64 made of several padded pieces (``...==abcd...``), decoded piece by piece.

    The standard library stops at the first padding; some mail clients go on.
    """
    clean = encoded.translate(None, _NOT_BASE64)
    core = clean.rstrip(b"=")
    if b"=" not in core:  # one piece (the usual case): one decode, no piece-by-piece loop
        core = core[: len(core) - (len(core) % 4 == 1)]
        return base64.b64decode(core + b"=" * (-len(core) % 4)) if core else b""
    out = []
    for piece in re.findall(rb"[A-Za-z0-9+/]+=*", clean):
        core = piece.rstrip(b"=")
        core = core[: len(core) - (len(core) % 4 == 1)]  # one dangling character decodes to nothing
        if core:
            out.append(base64.b64decode(core + b"=" * (-len(core) % 4)))
    return b"".join(out)


_EQUALS_AS_ZERO = bytes.maketrans(b"=", b"A")


def decode_base64_zero(encoded: bytes) -> bytes:
    """Base64 with every ``=`` read as the digit zero (``A``), as MimeKit's ``Base64Decoder`` does.

    Non-alphabet characters are skipped, every full quartet gives three bytes
    (an ``=`` inside the data neither stops nor realigns the decoding), a last
    incomplete quartet gives nothing, and for each ``=`` ending the text (at
    most two) one byte of the last full quartet is dropped.  Where an encoder
    wrote ``=`` for ``A``, this is the only reading that gives the original bytes.
    """
    clean = encoded.translate(None, _NOT_BASE64)
    trailing = min(2, len(clean) - len(clean.rstrip(b"=")))
    full = len(clean) - len(clean) % 4
    decoded = base64.b64decode(clean[:full].translate(_EQUALS_AS_ZERO))
    if trailing and full == len(clean):
        decoded = decoded[: len(decoded) - trailing]
    return decoded


def transfer_decode(encoding: str, encoded: bytes) -> bytes:
    """Decode ``encoded`` by one transfer encoding, leniently; identity when unknown."""
    if encoding == "base64":
        return _decode_base64(encoded.translate(None, b"\r\n"))[0]
    if encoding == "quoted-printable":
        return quopri.decodestring(encoded)
    if encoding in _UU_ENCODINGS:
        blocks = extract_uuencoded(encoded)
        return blocks[0][1] if blocks else decode_uu_lines(encoded)
    if encoding in BINHEX_ENCODINGS:
        files = find_binhex(encoded)
        return files[0].data if files else b""
    return encoded


_UU_LINE_CHARS = bytes(range(32, 97)) + b"\r\n"


def decode_uu_lines(encoded: bytes) -> bytes:
    """Bare uuencoded lines (no ``begin``/``end``), as some readers of an x-uuencode part take them
    (Ruby's mail gem unpacks the whole body); empty unless every character is a uuencode one.

    Each line decodes to what its length character promises (short lines padded, as Thunderbird does).
    """
    if not encoded.strip() or encoded.translate(None, _UU_LINE_CHARS):
        return b""  # not uuencode text (the usual case: one translate, no loop)
    out: list[bytes] = []
    for line in encoded.splitlines():
        if not line.strip() or line.strip() in (b"end", b"`"):
            continue
        length = (line[0] - 32) & 63
        body = line[1 : 1 + (length + 2) // 3 * 4].ljust((length + 2) // 3 * 4, b" ")
        try:
            out.append(binascii.a2b_uu(bytes((line[0],)) + body))
        except binascii.Error:
            continue
    return b"".join(out)


def _alternate_encodings(
    ctes: list[str], used: str, encoded: bytes, data: bytes, defects: list[str]
) -> list[tuple[str, bytes, bytes]]:
    """The other plausible decodings of a leaf, when any is plausible (rare in real mail).

    Plausible: another declared Content-Transfer-Encoding (doubled header, or a
    comment or blank a lenient reader removes), base64 text under a non-base64
    encoding, quoted-printable escapes under another encoding, base64 that the
    strict decoder stopped or stumbled on (the undecoded payload, and the
    piece-by-piece decoding).
    """
    labels: list[str] = []
    for cte in ctes:
        if cte != used and cte not in labels:
            labels.append(cte)
    if used != "base64" and _BASE64_WORD.search(encoded) and _BASE64_TEXT.fullmatch(encoded):
        labels.append("base64")
    if used in BINHEX_ENCODINGS:  # decoded by MIME::Tools (MIME::Decoder::BinHex), read as identity here
        labels.append(used)
    if used != "quoted-printable" and len(_QP_ESCAPE.findall(encoded, 0, 64 * 1024)) >= 8:
        labels.append("quoted-printable")
    if used == "base64":
        if defects:
            labels.append("identity")
        # read through as clients do: inner padding, or a body the strict decoder gave up on or
        # stumbled over (a dangling character among non-alphabet groups: nothing decoded at all)
        inner = _INNER_PADDING.search(encoded.translate(None, b"\r\n \t"))
        if defects or inner:
            labels.append("base64-chunks")
        if inner:  # an "=" inside the data: MimeKit reads it as the digit zero
            labels.append("base64~mimekit")
    found: list[tuple[str, bytes, bytes]] = []
    for label in dict.fromkeys(labels):
        try:
            if label == "base64-chunks":
                decoded = decode_base64_chunks(encoded)
            elif label == "base64~mimekit":
                decoded = decode_base64_zero(encoded)
            else:
                decoded = transfer_decode(label, encoded)
        except (ValueError, binascii.Error):
            continue
        if decoded and decoded != data:
            # the views' raw base64 runs decode piece by piece: the same bytes as these two
            # decodings unless padding sits inside the text, so only then skip them there
            same = label == "base64-chunks" or (
                label == "base64" and not _INNER_PADDING.search(encoded.translate(None, b"\r\n \t"))
            )
            source = base64_source_key(encoded) if same else b""
            found.append((label, decoded, source))
    return found


_KEY_CHUNK = 1024 * 1024


def base64_source_key(text: bytes) -> bytes:
    """A key for base64 text, blanks and line ends ignored: the views do not decode it twice.

    Hashed a slice at a time (the same digest as the whole text without blanks), so a big
    text is not copied whole once more."""
    return base64_chunks_key(text[start : start + _KEY_CHUNK] for start in range(0, len(text), _KEY_CHUNK))


def base64_chunks_key(chunks: Iterable[bytes]) -> bytes:
    """:func:`base64_source_key` of the text made of ``chunks`` (not joined)."""
    digest = hashlib.blake2b(digest_size=16)
    for chunk in chunks:
        digest.update(chunk.translate(None, b" \t\r\n"))
    return digest.digest()
