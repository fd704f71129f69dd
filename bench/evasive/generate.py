"""Evasive MIME messages, each hiding EICAR in a zip in a different way.

``python bench/evasive/generate.py OUTDIR`` writes one ``<id>.eml`` per
technique and ``techniques.tsv`` (id, family, description).  The techniques are
the tricks of real malware and of MIME-parser differential research: broken,
doubled or conflicting headers and boundaries, sloppy base64, other transfer
encodings, payloads where a strict parser does not look (preamble, epilogue,
uuencode, yEnc), nesting.  Every message carries the same zip (``eicar.com``
holding the EICAR test string, deflated, so that no plain EICAR appears in
any message: a scanner must decode and unpack to find it).

The messages are built here, in code, from the EICAR string assembled from
pieces (so that this file is not itself a test virus).
"""

from __future__ import annotations

import base64
import binascii
import io
import quopri
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS" + b"-TEST-FILE!$H+H*"


def eicar_zip() -> bytes:
    """A zip holding ``eicar.com`` (deflated: the EICAR string is not visible in the zip)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo("eicar.com", (2024, 1, 1, 0, 0, 0)), EICAR, zipfile.ZIP_DEFLATED)
    data = out.getvalue()
    assert EICAR not in data
    return data


ZIP = eicar_zip()
HEAD = (
    "From: Sender <sender@example.net>\n"
    "To: rcpt@example.org\n"
    "Subject: documents\n"
    "Date: Mon, 01 Jan 2024 00:00:00 +0000\n"
    "Message-ID: <evasive@example.net>\n"
    "MIME-Version: 1.0\n"
)
TEXT = "Content-Type: text/plain; charset=us-ascii\n\nPlease see the attachment.\n"
ZIPHEAD = 'Content-Type: application/zip; name="docs.zip"\nContent-Disposition: attachment; filename="docs.zip"\n'


def b64(data: bytes = ZIP, width: int = 76) -> str:
    text = base64.b64encode(data).decode()
    return "\n".join(text[i : i + width] for i in range(0, len(text), width)) + "\n"


def multipart(body_parts: list[str], boundary: str = "BOUNDARY", ctype: str | None = None, close: bool = True) -> str:
    header = ctype if ctype is not None else f'Content-Type: multipart/mixed; boundary="{boundary}"\n'
    body = "".join(f"--{boundary}\n{part}" for part in body_parts)
    return (
        HEAD
        + header
        + "\nThis is a multi-part message in MIME format.\n"
        + body
        + (f"--{boundary}--\n" if close else "")
    )


def zip_part(cte: str = "Content-Transfer-Encoding: base64\n", body: str | None = None, head: str = ZIPHEAD) -> str:
    return head + cte + "\n" + (b64() if body is None else body)


def standard(zpart: str | None = None, **kw: object) -> str:
    return multipart([TEXT, zpart if zpart is not None else zip_part()], **kw)  # type: ignore[arg-type]


def uuencode(data: bytes = ZIP, name: str = "docs.zip") -> str:
    lines = "".join(binascii.b2a_uu(data[i : i + 45]).decode() for i in range(0, len(data), 45))
    return f"begin 644 {name}\n{lines}`\nend\n"


def yencode(data: bytes = ZIP, name: str = "docs.zip") -> bytes:
    out = bytearray()
    line = bytearray()
    for byte in data:
        value = (byte + 42) % 256
        if value in (0, 10, 13, 61) or (value in (9, 32, 46) and not line):
            line += b"=" + bytes(((value + 64) % 256,))
        else:
            line.append(value)
        if len(line) >= 128:
            out += line + b"\n"
            line = bytearray()
    if line:
        out += line + b"\n"
    crc = binascii.crc32(data)
    return (
        f"=ybegin line=128 size={len(data)} name={name}\n".encode()
        + bytes(out)
        + f"=yend size={len(data)} crc32={crc:08x}\n".encode()
    )


def junk_base64(every: int, junk: str) -> str:
    text = base64.b64encode(ZIP).decode()
    mixed = "".join(c + (junk if i % every == every - 1 else "") for i, c in enumerate(text))
    return "\n".join(mixed[i : i + 76] for i in range(0, len(mixed), 76)) + "\n"


def pieces_base64(size: int) -> str:
    text = "".join(base64.b64encode(ZIP[i : i + size]).decode() for i in range(0, len(ZIP), size))
    return "\n".join(text[i : i + 76] for i in range(0, len(text), 76)) + "\n"


def inner_message(zpart: str | None = None) -> str:
    """A whole message with the zip attached (its own boundary, not the outer one)."""
    return multipart([TEXT, zpart if zpart is not None else zip_part()], boundary="INNER")


def nested(levels: int) -> str:
    body = f"{TEXT}"
    inner = standard()
    # wrap the whole multipart body `levels` times
    content = inner[len(HEAD) :]
    for level in range(levels):
        content = f'Content-Type: multipart/mixed; boundary="L{level}"\n\n--L{level}\n{content}--L{level}--\n'
    return HEAD + content.replace(body, body, 1)


Technique = tuple[str, str, str, Callable[[], str | bytes]]
"""(id, family, one-line description, builder)."""

TECHNIQUES: list[Technique] = [
    (
        "control-plain",
        "control",
        "well-formed multipart/mixed, zip attachment in base64 (not evasive: the baseline)",
        lambda: standard(),
    ),
    (
        "b64-junk-chars",
        "base64",
        "base64 with '!' and '*' after every 7th character (decoders skip non-alphabet)",
        lambda: standard(zip_part(body=junk_base64(7, "!*"))),
    ),
    (
        "b64-whitespace",
        "base64",
        "base64 with spaces and tabs inside the lines",
        lambda: standard(zip_part(body=junk_base64(5, " \t"))),
    ),
    (
        "b64-pieces",
        "base64",
        "base64 of 5-byte pieces concatenated (padding '=' in the middle of the data)",
        lambda: standard(zip_part(body=pieces_base64(5))),
    ),
    (
        "b64-one-line",
        "base64",
        "the whole base64 payload on one line",
        lambda: standard(zip_part(body=b64(width=100000))),
    ),
    (
        "b64-blank-lines",
        "base64",
        "blank lines between the base64 lines",
        lambda: standard(zip_part(body=b64().replace("\n", "\n\n"))),
    ),
    (
        "b64-cr-line-ends",
        "base64",
        "base64 lines ending in a bare CR",
        lambda: standard(zip_part(body=b64().replace("\n", "\r"))),
    ),
    (
        "b64-trailing-text",
        "base64",
        "a line of text after the base64 data in the same part",
        lambda: standard(zip_part(body=b64() + "-- end of attachment --\n")),
    ),
    (
        "b64-no-padding",
        "base64",
        "base64 with its final '=' padding removed",
        lambda: standard(zip_part(body=b64().rstrip("=\n") + "\n")),
    ),
    (
        "b64-dangling-char",
        "base64",
        "one extra base64 character at the end (length % 4 == 1)",
        lambda: standard(zip_part(body=b64().rstrip("\n") + "A\n")),
    ),
    (
        "cte-case-blanks",
        "transfer-encoding",
        "Content-Transfer-Encoding: '  BASE64  ' (case and blanks)",
        lambda: standard(zip_part("Content-Transfer-Encoding:   BASE64  \n")),
    ),
    (
        "cte-comment",
        "transfer-encoding",
        "Content-Transfer-Encoding: base64 (comment) - an RFC 822 comment",
        lambda: standard(zip_part("Content-Transfer-Encoding: base64 (zip file)\n")),
    ),
    (
        "cte-quoted",
        "transfer-encoding",
        'Content-Transfer-Encoding: "base64" (quoted)',
        lambda: standard(zip_part('Content-Transfer-Encoding: "base64"\n')),
    ),
    (
        "cte-doubled-7bit-first",
        "transfer-encoding",
        "two Content-Transfer-Encoding headers: 7bit, then base64",
        lambda: standard(zip_part("Content-Transfer-Encoding: 7bit\nContent-Transfer-Encoding: base64\n")),
    ),
    (
        "cte-doubled-base64-first",
        "transfer-encoding",
        "two Content-Transfer-Encoding headers: base64, then 7bit",
        lambda: standard(zip_part("Content-Transfer-Encoding: base64\nContent-Transfer-Encoding: 7bit\n")),
    ),
    (
        "cte-missing",
        "transfer-encoding",
        "no Content-Transfer-Encoding at all, base64 body",
        lambda: standard(zip_part("")),
    ),
    (
        "cte-unknown",
        "transfer-encoding",
        "Content-Transfer-Encoding: x-base64 (unknown name)",
        lambda: standard(zip_part("Content-Transfer-Encoding: x-base64\n")),
    ),
    (
        "cte-qp",
        "transfer-encoding",
        "the zip in quoted-printable",
        lambda: standard(
            zip_part("Content-Transfer-Encoding: quoted-printable\n", quopri.encodestring(ZIP).decode("latin-1") + "\n")
        ),
    ),
    (
        "cte-binary",
        "transfer-encoding",
        "the zip as raw 8-bit bytes, Content-Transfer-Encoding: binary",
        lambda: standard(zip_part("Content-Transfer-Encoding: binary\n", ZIP.decode("latin-1") + "\n")).encode(
            "latin-1"
        ),
    ),
    (
        "cte-on-multipart",
        "transfer-encoding",
        "the whole multipart body base64-encoded (CTE on the multipart)",
        lambda: (
            HEAD
            + 'Content-Type: multipart/mixed; boundary="BOUNDARY"\nContent-Transfer-Encoding: base64\n\n'
            + b64(standard()[len(HEAD) + len('Content-Type: multipart/mixed; boundary="BOUNDARY"\n') + 1 :].encode())
        ),
    ),
    (
        "ct-doubled-text-first",
        "content-type",
        "two Content-Type headers: text/plain first, then the multipart",
        lambda: standard(ctype='Content-Type: text/plain\nContent-Type: multipart/mixed; boundary="BOUNDARY"\n'),
    ),
    (
        "ct-doubled-two-boundaries",
        "content-type",
        "two multipart Content-Type headers; the parts use the second boundary",
        lambda: standard(
            ctype='Content-Type: multipart/mixed; boundary="DECOY"\n'
            'Content-Type: multipart/mixed; boundary="BOUNDARY"\n'
        ),
    ),
    (
        "ct-part-doubled",
        "content-type",
        "attachment with Content-Type text/plain first, application/zip second",
        lambda: standard(zip_part(head="Content-Type: text/plain\n" + ZIPHEAD)),
    ),
    (
        "ct-comment-in-name",
        "content-type",
        "top-level 'Content-T(x)ype:' (a comment in the header name)",
        lambda: standard(ctype='Content-T(x)ype: multipart/mixed; boundary="BOUNDARY"\n'),
    ),
    (
        "ct-space-before-colon",
        "content-type",
        "top-level 'Content-Type :' (blank before the colon)",
        lambda: standard(ctype='Content-Type : multipart/mixed; boundary="BOUNDARY"\n'),
    ),
    (
        "ct-as-text-html",
        "content-type",
        "the base64 zip declared text/html",
        lambda: standard(zip_part(head='Content-Type: text/html; name="docs.zip"\n')),
    ),
    (
        "ct-param-unfolded",
        "content-type",
        "top-level boundary parameter on its own line (not folded)",
        lambda: standard(ctype='Content-Type: multipart/mixed;\nboundary="BOUNDARY"\n'),
    ),
    (
        "boundary-twice",
        "boundary",
        'boundary="DECOY"; boundary="BOUNDARY": the parts use the second',
        lambda: standard(ctype='Content-Type: multipart/mixed; boundary="DECOY"; boundary="BOUNDARY"\n'),
    ),
    (
        "boundary-mismatch",
        "boundary",
        "the declared boundary is not the one the parts use",
        lambda: standard(ctype='Content-Type: multipart/mixed; boundary="DECLARED"\n'),
    ),
    (
        "boundary-missing",
        "boundary",
        "multipart/mixed without a boundary parameter",
        lambda: standard(ctype="Content-Type: multipart/mixed\n"),
    ),
    (
        "boundary-rfc2231-split",
        "boundary",
        'RFC 2231 continuation: boundary*0="BOUND"; boundary*1="ARY"',
        lambda: standard(ctype='Content-Type: multipart/mixed; boundary*0="BOUND"; boundary*1="ARY"\n'),
    ),
    (
        "boundary-rfc2231-extended",
        "boundary",
        "RFC 2231 extended value: boundary*=us-ascii''BOUNDARY",
        lambda: standard(ctype="Content-Type: multipart/mixed; boundary*=us-ascii''BOUNDARY\n"),
    ),
    ("boundary-no-close", "boundary", "no closing boundary line", lambda: standard(close=False)),
    (
        "boundary-trailing-blanks",
        "boundary",
        "boundary lines followed by blanks and tabs",
        lambda: standard().replace("--BOUNDARY\n", "--BOUNDARY \t \n"),
    ),
    (
        "boundary-prefix",
        "boundary",
        "a nested multipart whose boundary extends the outer one (BOUNDARY / BOUNDARY-2)",
        lambda: multipart(
            [
                TEXT,
                'Content-Type: multipart/mixed; boundary="BOUNDARY-2"\n\n--BOUNDARY-2\n'
                + zip_part()
                + "--BOUNDARY-2--\n",
            ]
        ),
    ),
    (
        "payload-in-preamble",
        "placement",
        "the attachment (with its headers) in the preamble, before the first boundary",
        lambda: (
            HEAD
            + 'Content-Type: multipart/mixed; boundary="BOUNDARY"\n\n'
            + zip_part()
            + f"--BOUNDARY\n{TEXT}--BOUNDARY--\n"
        ),
    ),
    (
        "payload-in-epilogue",
        "placement",
        "the attachment after the closing boundary",
        lambda: standard(TEXT) + zip_part(),
    ),
    (
        "part-no-blank-line",
        "part headers",
        "attachment headers not followed by a blank line",
        lambda: standard(ZIPHEAD + "Content-Transfer-Encoding: base64\n" + b64()),
    ),
    (
        "part-param-unfolded",
        "part headers",
        "attachment's name parameter on its own line, breaking its header block",
        lambda: standard(zip_part(head='Content-Type: application/zip;\nname="docs.zip"\n')),
    ),
    (
        "part-header-garbage",
        "part headers",
        "a garbage line among the attachment's headers",
        lambda: standard(zip_part(head=ZIPHEAD + "this is no header\n")),
    ),
    (
        "rfc2231-filename",
        "filename",
        "RFC 2231 filename in three encoded pieces, Content-Type without a name",
        lambda: standard(
            zip_part(
                head="Content-Type: application/octet-stream\nContent-Disposition: attachment;"
                " filename*0*=utf-8''do; filename*1*=cs; filename*2*=%2Ezip\n"
            )
        ),
    ),
    (
        "filename-conflict",
        "filename",
        "name=docs.txt in Content-Type, filename=docs.zip in Content-Disposition",
        lambda: standard(
            zip_part(
                head='Content-Type: text/plain; name="docs.txt"\nContent-Disposition: attachment; filename="docs.zip"\n'
            )
        ),
    ),
    (
        "uuencode-in-text",
        "other encodings",
        "the zip uuencoded inside the text body",
        lambda: multipart([TEXT.rstrip("\n") + "\n\n" + uuencode()]),
    ),
    (
        "uuencode-cte",
        "other encodings",
        "an attachment part with Content-Transfer-Encoding: x-uuencode",
        lambda: standard(zip_part("Content-Transfer-Encoding: x-uuencode\n", uuencode())),
    ),
    (
        "uuencode-in-preamble",
        "other encodings",
        "the zip uuencoded in the multipart preamble",
        lambda: (
            HEAD
            + 'Content-Type: multipart/mixed; boundary="BOUNDARY"\n\n'
            + uuencode()
            + f"--BOUNDARY\n{TEXT}--BOUNDARY--\n"
        ),
    ),
    (
        "uuencode-plain-message",
        "other encodings",
        "a non-MIME message whose body is the uuencoded zip",
        lambda: HEAD + "\n" + uuencode(),
    ),
    (
        "yenc-in-text",
        "other encodings",
        "the zip yEnc-encoded inside a text/plain body (8-bit)",
        lambda: (
            (HEAD + "Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n\n").encode()
            + yencode()
        ),
    ),
    (
        "rfc822-attached",
        "nesting",
        "the zip inside an attached message/rfc822",
        lambda: multipart([TEXT, "Content-Type: message/rfc822\n\n" + inner_message()]),
    ),
    (
        "rfc822-base64",
        "nesting",
        "an attached message/rfc822 that is itself base64-encoded",
        lambda: multipart(
            [
                TEXT,
                "Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n" + b64(inner_message().encode()),
            ]
        ),
    ),
    (
        "rfc822-broken-inner",
        "nesting",
        "an attached message whose own boundary does not match",
        lambda: multipart(
            [TEXT, "Content-Type: message/rfc822\n\n" + inner_message().replace('boundary="INNER"', 'boundary="WRONG"')]
        ),
    ),
    ("deep-nesting", "nesting", "the attachment under 30 nested multiparts", lambda: nested(30)),
    (
        "crlf-mixed",
        "line ends",
        "CRLF headers, LF body, boundary lines with CR only at some places",
        lambda: standard().replace("\n", "\r\n", 12).replace("--BOUNDARY\n", "--BOUNDARY\r\n", 1),
    ),
]


# ------------------------------------------------------------------- issue 14: the families of the held-out misses
#
# Every message below hides the same zip (``eicar.com``, deflated) as ``file.zip``
# (hidden-content families), or hides the *name* ``file.zip`` of a harmless zip behind
# decoy names (hidden-filename families).  ``SOURCES`` names the client or library that
# reads each family that way, with a source; ``kind`` says which table a message is in.

NAME = "file.zip"
FILEHEAD = f'Content-Type: application/zip; name="{NAME}"\nContent-Disposition: attachment; filename="{NAME}"\n'


def harmless_zip() -> bytes:
    """A zip holding ``readme.txt`` (no virus): the payload of the hidden-filename messages."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo("readme.txt", (2024, 1, 1, 0, 0, 0)), b"quarterly figures\n" * 8)
    return out.getvalue()


HARMLESS_ZIP = harmless_zip()


def with_comment(comment: bytes) -> bytes:
    """The EICAR zip with an archive comment (the end-of-central-directory record's length field covers it)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo("eicar.com", (2024, 1, 1, 0, 0, 0)), EICAR, zipfile.ZIP_DEFLATED)
        archive.comment = comment
    return out.getvalue()


def qp_all(data: bytes, lower: bool = False) -> str:
    """Quoted-printable with every byte escaped (lines of 75 characters + soft break)."""
    text = "".join(f"={byte:02x}" if lower else f"={byte:02X}" for byte in data)
    return "=\n".join(text[i : i + 75] for i in range(0, len(text), 75))


def qp_comment(token: str, where: str) -> str:
    """The zip in QP, an invalid escape ``token`` written literally in its archive comment.

    RFC 2045 6.7 note (2): a robust decoder keeps ``=`` and the following character
    as they are; read that way the bytes are the zip, its comment ``note <token> end``.
    ``where``: ``end`` (one line at the end), ``line`` (the comment on a line of its own
    after a soft break), ``lower`` (the other escapes in lowercase hex, RFC 2045's
    "should accept lowercase")."""
    comment = f"note {token} end".encode()
    data = with_comment(comment)
    body = data[: -len(comment)]
    if where == "lower":
        return qp_all(body, lower=True) + comment.decode() + "\n"
    if where == "line":
        return qp_all(body) + "=\n" + comment.decode() + "\n"
    return qp_all(body) + comment.decode() + "\n"


def qp_soft_break(blanks: str) -> str:
    """QP whose soft line breaks carry trailing blanks (``= \\n``): RFC 2045 6.7 rule (3)
    says transport may add them and a decoder deletes them, so it is still a soft break."""
    return qp_all(ZIP).replace("=\n", "=" + blanks + "\n") + "\n"


def uu_lines(data: bytes = ZIP, pad: str = "`") -> str:
    lines = "".join(binascii.b2a_uu(data[i : i + 45], backtick=pad == "`").decode() for i in range(0, len(data), 45))
    return lines + pad + "\n"


def uu_block(mode: str = "644", name: str = NAME, pad: str = "`", end: bool = True) -> str:
    return f"begin {mode} {name}\n" + uu_lines(pad=pad) + ("end\n" if end else "")


_HQX = "!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"


def binhex(data: bytes = ZIP, name: str = NAME, header: str = "") -> str:
    """BinHex 4.0 (RFC 1741; the format of Python 2's binhex.py): header, data fork, empty
    resource fork, each with its CRC-CCITT; 0x90 escaped for the run-length coding; 6-bit
    characters between colons in lines of 64.  ``header``: ``blank`` (the header line and a
    blank line, as binhex.py wrote it), ``direct`` (the colon line right after it, as
    MIME::Tools' decoder wants it) or empty (no header line)."""
    raw_name = name.encode()
    info = bytes([len(raw_name)]) + raw_name + b"\0" + b"ZIP " + b"????" + b"\0\0"
    info += len(data).to_bytes(4, "big") + (0).to_bytes(4, "big")
    stream = bytearray()
    for block in (info, data, b""):
        stream += block + binascii.crc_hqx(block, 0).to_bytes(2, "big")
    rle = bytes(stream).replace(b"\x90", b"\x90\x00")
    bits = int.from_bytes(rle, "big")
    total = len(rle) * 8
    pad = (-total) % 6
    bits <<= pad
    chars = "".join(_HQX[(bits >> shift) & 63] for shift in range((total + pad) - 6, -1, -6))
    text = ":" + chars + ":"
    lines = "\n".join(text[i : i + 64] for i in range(0, len(text), 64)) + "\n"
    first = "(This file must be converted with BinHex 4.0)\n"
    return {"blank": first + "\n", "direct": first}.get(header, "") + lines


def b64_width(width: int, data: bytes = ZIP) -> str:
    return b64(data, width)


def b64_quads(junk: str, every: int, data: bytes = ZIP) -> str:
    """Base64 with ``junk`` inserted between quads (every ``every`` quads)."""
    text = base64.b64encode(data).decode()
    quads = [text[i : i + 4] for i in range(0, len(text), 4)]
    mixed = "".join(q + (junk if i % every == every - 1 else "") for i, q in enumerate(quads))
    return "\n".join(mixed[i : i + 76] for i in range(0, len(mixed), 76)) + "\n"


def b64_eq_inside(at: str) -> str:
    """Base64 with a stray ``=`` inside the data: between two quads, doubled, or inside a quad."""
    text = base64.b64encode(ZIP).decode()
    middle = (len(text) // 8) * 4
    if at == "quad":
        text = text[:middle] + "=" + text[middle:]
    elif at == "double":
        text = text[:middle] + "==" + text[middle:]
    else:  # inside a quad
        text = text[: middle + 2] + "=" + text[middle + 2 :]
    return "\n".join(text[i : i + 76] for i in range(0, len(text), 76)) + "\n"


def b64_after_pad(junk: str) -> str:
    """Base64 whose data ends in ``=`` padding followed by junk on the same line."""
    data = ZIP + b"\0" if len(ZIP) % 3 == 0 else ZIP
    text = b64(data).rstrip("\n")
    assert text.endswith("=")
    return text + junk + "\n"


def content_message(part: str, boundary: str = "BOUNDARY") -> str:
    return multipart([TEXT, part], boundary=boundary)


def zpart(cte: str, body: str, head: str = FILEHEAD) -> str:
    return head + cte + "\n" + body


def structural(kind: str, variant: int) -> str:
    """Part headers after a vertical tab or a bare CR, doubled boundaries, a space before the quote."""
    part = zpart("Content-Transfer-Encoding: base64\n", b64())
    if kind == "vt":
        if variant == 0:  # a line holding only a VT before the part's headers
            return content_message("\x0b\n" + part)
        if variant == 1:  # the first header line starts with a VT
            return content_message("\x0b" + part)
        return content_message("".join("\x0b" + line + "\n" for line in FILEHEAD.splitlines()) + part[len(FILEHEAD) :])
    if kind == "cr":
        if variant == 0:  # a bare CR line before the part's headers
            return content_message("\r\n" + part).replace("--BOUNDARY\n\r\n", "--BOUNDARY\n\r", 1)
        if variant == 1:  # the part's header lines end in a bare CR
            head = FILEHEAD.replace("\n", "\r") + "Content-Transfer-Encoding: base64\r"
            return content_message(head + "\n" + b64())
        head = FILEHEAD.replace("\n", "\r", 1)  # one header line ends in a bare CR
        return content_message(head + "Content-Transfer-Encoding: base64\n\n" + b64())
    if kind == "double":
        if variant == 0:  # the delimiter line twice in a row
            return multipart([TEXT, "", part]).replace("--BOUNDARY\n--BOUNDARY\n", "--BOUNDARY\n--BOUNDARY\n", 1)
        if variant == 1:  # a close delimiter, then the attachment under the same boundary
            return (
                HEAD
                + 'Content-Type: multipart/mixed; boundary="BOUNDARY"\n\n'
                + (f"--BOUNDARY\n{TEXT}--BOUNDARY--\n--BOUNDARY\n{part}--BOUNDARY--\n")
            )
        return multipart([TEXT, "\n", part])  # an empty part (a blank line) between two delimiters
    # space before the quote of the boundary parameter
    spaced = ['boundary= "BOUNDARY"', 'boundary =  "BOUNDARY"', 'boundary=\t"BOUNDARY"'][variant]
    return standard(part, ctype=f"Content-Type: multipart/mixed; {spaced}\n")


def name_message(head: str, data: bytes = HARMLESS_ZIP) -> str:
    """A message whose attachment (a harmless zip) is named by ``head``."""
    return multipart([TEXT, head + "Content-Transfer-Encoding: base64\n\n" + b64(data)])


def encoded_word(name: str, charset: str, mode: str) -> str:
    data = name.encode(charset)
    if mode == "B":
        return f"=?{charset}?B?{base64.b64encode(data).decode()}?="
    return f"=?{charset}?Q?{''.join(f'={b:02X}' for b in data)}?="


OCTET = "Content-Type: application/octet-stream\n"

Case = tuple[str, str, str, str, str, Callable[[], str | bytes]]
"""(id, family, kind, description, who reads it that way (source), builder); kind is
``content`` (the EICAR zip hidden), ``filename`` (the name file.zip hidden) or ``control``."""

RFC2045_QP = (
    "RFC 2045 6.7 note (2): keep '=' and the next character; MIME::QuotedPrint decode_qp, Python binascii.a2b_qp"
)
SOFT_BREAK = (
    "RFC 2045 6.7 rule (3): trailing blanks after '=' deleted; MIME::QuotedPrint decode_qp "
    "(Python's binascii.a2b_qp does not: it keeps '= ' literally)"
)
UU_CTE = (
    "Python email/message.py get_payload: cte in (x-uuencode, uuencode, uue, x-uue); "
    "MIME::Tools MIME/Decoder.pm: x-uu, x-uuencode"
)
BINHEX = (
    "RFC 1741 (application/mac-binhex40); MIME::Tools MIME/Decoder/BinHex.pm (as CTE binhex/mac-binhex40, "
    "header line right before the ':' line)"
)
B64_LENIENT = (
    "RFC 2045 6.8: characters outside the alphabet are ignored; Python binascii.a2b_base64 (non-strict), "
    "MIME::Base64 decode_base64"
)
STRUCT = "RFC 5322 2.2 / RFC 2046 5.1.1; Python email/feedparser.py (headerRE, NLCRE), MIME::Tools MIME/Parser.pm"
RFC2231 = (
    "RFC 2231 3-4 (continuations, charset'language'); Python email/utils.py collapse_rfc2231_value, "
    "MIME::Field::ParamVal"
)
EW = (
    "RFC 2047 5 (encoded words are not allowed in a quoted parameter); decoded anyway by Python email "
    "(policy=default) and MIME::Words"
)
RFC822_CFWS = "RFC 822 3.4.3 comments and 3.4.4 quoted-pair in structured fields; RFC 2045 5.1 parameter syntax"
DUPLICATE = (
    "RFC 2045 (one Content-Type/Content-Disposition per entity); Python compat32 takes the first, "
    "MIME::Head->get(...,0)"
)

QP_TOKENS = {"eq-w": "=W", "eq-xx": "=XX", "eq-h": "=H", "eq-one-hex": "=4z"}
CASES: list[Case] = []
for _key, _token in QP_TOKENS.items():
    for _where in ("end", "line", "lower"):
        CASES.append(
            (
                f"qp-{_key}-{_where}",
                f"qp-invalid-{_key}",
                "content",
                f"quoted-printable zip, the invalid escape {_token!r} written literally in its archive comment "
                f"({_where})",
                RFC2045_QP,
                lambda t=_token, w=_where: content_message(
                    zpart("Content-Transfer-Encoding: quoted-printable\n", qp_comment(t, w))
                ),
            )
        )
for _i, _blanks in enumerate((" ", "\t", " \t ")):
    CASES.append(
        (
            f"qp-soft-break-blanks-{_i + 1}",
            "qp-soft-break-blanks",
            "content",
            f"quoted-printable zip, every soft line break followed by {_blanks!r}",
            SOFT_BREAK,
            lambda b=_blanks: content_message(zpart("Content-Transfer-Encoding: quoted-printable\n", qp_soft_break(b))),
        )
    )
for _cte in ("x-uuencode", "x-uue", "uue", "uuencode"):
    for _i, (_cte_text, _kwargs, _what) in enumerate(
        (
            (_cte, {}, "begin 644 file.zip ... end"),
            (_cte.upper(), {"mode": "666", "pad": " "}, "upper-case name, mode 666, blank instead of backtick"),
            (f"  {_cte} ", {"end": False}, "blanks around the name, no 'end' line"),
        )
    ):
        CASES.append(
            (
                f"uucte-{_cte}-{_i + 1}",
                f"uuencode-cte-{_cte}",
                "content",
                f"Content-Transfer-Encoding: {_cte_text.strip()!s} ({_what})",
                UU_CTE,
                lambda c=_cte_text, k=_kwargs: content_message(  # type: ignore[misc]
                    zpart(f"Content-Transfer-Encoding: {c}\n", uu_block(**k))  # type: ignore[arg-type]
                ),
            )
        )
for _label in ("header", "no-header"):
    for _i, (_head, _what) in enumerate(
        (
            (f'Content-Type: application/mac-binhex40; name="{NAME}"\nContent-Transfer-Encoding: 7bit\n', "7bit"),
            (
                f'Content-Type: application/mac-binhex40; name="{NAME}"\nContent-Transfer-Encoding: mac-binhex40\n',
                "CTE mac-binhex40",
            ),
            (
                f'Content-Type: application/octet-stream; name="{NAME}"\nContent-Transfer-Encoding: binhex\n',
                "CTE binhex",
            ),
        )
    ):
        CASES.append(
            (
                f"binhex-{_label}-{_i + 1}",
                f"binhex-{_label}",
                "content",
                f"the zip in BinHex 4.0 ({_label.replace('-', ' ')} line{', blank line after it' * (_i == 0)}), "
                f"{_what}",
                BINHEX,
                lambda h=_head, x=("" if _label == "no-header" else "blank" if _i == 0 else "direct"): content_message(
                    h + "\n" + binhex(header=x)
                ),
            )
        )
for _i, _width in enumerate((300, 1000, 4000)):
    CASES.append(
        (
            f"b64-long-lines-{_width}",
            "base64-long-lines",
            "content",
            f"base64 in lines of {_width} characters",
            B64_LENIENT,
            lambda w=_width: content_message(zpart("Content-Transfer-Encoding: base64\n", b64_width(w))),
        )
    )
for _i, _junk in enumerate(("!!junk", "AAAA", "= trailer")):
    CASES.append(
        (
            f"b64-after-padding-{_i + 1}",
            "base64-junk-after-padding",
            "content",
            f"base64 whose final '=' padding is followed by {_junk!r}",
            B64_LENIENT,
            lambda j=_junk: content_message(zpart("Content-Transfer-Encoding: base64\n", b64_after_pad(j))),
        )
    )
for _i, (_junk, _every) in enumerate((("#", 1), ("####", 3), ("!@#$%", 7))):
    CASES.append(
        (
            f"b64-junk-groups-{_i + 1}",
            "base64-junk-groups",
            "content",
            f"base64 with {_junk!r} between quads (every {_every})",
            B64_LENIENT,
            lambda j=_junk, e=_every: content_message(zpart("Content-Transfer-Encoding: base64\n", b64_quads(j, e))),
        )
    )
for _at in ("quad", "double", "inside"):
    CASES.append(
        (
            f"b64-eq-{_at}",
            "base64-eq-inside",
            "content",
            {
                "quad": "a stray '=' between two quads",
                "double": "'==' between two quads",
                "inside": "a stray '=' inside a quad",
            }[_at],
            B64_LENIENT,
            lambda a=_at: content_message(zpart("Content-Transfer-Encoding: base64\n", b64_eq_inside(a))),
        )
    )
_STRUCT_WHAT = {
    "vt": (
        "part-header-vt",
        (
            "a line holding a vertical tab before the part's headers",
            "the part's first header line starts with a vertical tab",
            "every header line of the part starts with a vertical tab",
        ),
    ),
    "cr": (
        "part-header-bare-cr",
        (
            "a bare CR before the part's first header",
            "the part's header lines end in a bare CR",
            "one header line of the part ends in a bare CR",
        ),
    ),
    "double": (
        "boundary-doubled",
        (
            "the delimiter line twice in a row",
            "a close delimiter, then the attachment under the same boundary",
            "an empty part between two delimiters",
        ),
    ),
    "space": ("boundary-space-quote", ('boundary= "BOUNDARY"', 'boundary =  "BOUNDARY"', 'boundary=<TAB>"BOUNDARY"')),
}
for _kind, (_family, _whats) in _STRUCT_WHAT.items():
    for _i, _what in enumerate(_whats):
        CASES.append((f"{_family}-{_i + 1}", _family, "content", _what, STRUCT, lambda k=_kind, v=_i: structural(k, v)))

# hidden filenames: a harmless zip whose name file.zip sits behind decoys
_NAMES: list[tuple[str, str, str, str]] = [
    (
        "rfc2231-out-of-order",
        "filename*1 before filename*0 (Content-Disposition only)",
        RFC2231,
        OCTET + 'Content-Disposition: attachment; filename*1="zip"; filename*0="file."\n',
    ),
    (
        "rfc2231-out-of-order",
        "name*2, name*0, name*1 in Content-Type, a decoy filename",
        RFC2231,
        'Content-Type: application/octet-stream; name*2="p"; name*0="file."; name*1="zi"\n'
        'Content-Disposition: attachment; filename="file.txt"\n',
    ),
    (
        "rfc2231-out-of-order",
        "extended pieces out of order: filename*1*=%7Aip; filename*0*=utf-8''file.",
        RFC2231,
        OCTET + "Content-Disposition: attachment; filename*1*=%7Aip; filename*0*=utf-8''file.\n",
    ),
    (
        "rfc2231-split-lines",
        "filename*0/*1/*2 each on a folded line of its own",
        RFC2231,
        OCTET + 'Content-Disposition: attachment;\n filename*0="fi";\n filename*1="le.z";\n filename*2="ip"\n',
    ),
    (
        "rfc2231-split-lines",
        "name*0/*1 folded with tabs, a decoy filename",
        RFC2231,
        "Content-Type: application/octet-stream;\n"
        '\tname*0="file";\n'
        '\tname*1=".zip"\n'
        'Content-Disposition: attachment; filename="file.txt"\n',
    ),
    (
        "rfc2231-split-lines",
        "filename*0*/*1* folded, the extension split inside a %-escape pair",
        RFC2231,
        OCTET + "Content-Disposition: attachment;\n filename*0*=utf-8''file%2E;\n filename*1*=zip\n",
    ),
    (
        "rfc2231-mixed-plain",
        'filename="file.txt" and filename*0="file."; filename*1="zip"',
        RFC2231,
        OCTET + 'Content-Disposition: attachment; filename="file.txt"; filename*0="file."; filename*1="zip"\n',
    ),
    (
        "rfc2231-mixed-plain",
        'name*0="file."; name*1="zip" then name="file.txt"',
        RFC2231,
        'Content-Type: application/octet-stream; name*0="file."; name*1="zip"; name="file.txt"\n',
    ),
    (
        "rfc2231-mixed-plain",
        "filename*=utf-8''file.zip beside filename=\"file.txt\"",
        RFC2231,
        OCTET + "Content-Disposition: attachment; filename=\"file.txt\"; filename*=utf-8''file.zip\n",
    ),
    (
        "rfc2231-charset-pieces",
        "filename*0*=utf-8'en'file%2E; filename*1*=zip",
        RFC2231,
        OCTET + "Content-Disposition: attachment; filename*0*=utf-8'en'file%2E; filename*1*=zip\n",
    ),
    (
        "rfc2231-charset-pieces",
        "every character %-escaped, iso-8859-1, one piece *0*",
        RFC2231,
        OCTET + "Content-Disposition: attachment; filename*0*=iso-8859-1''%66%69%6C%65%2E%7A%69%70\n",
    ),
    (
        "rfc2231-charset-pieces",
        "name*0*=us-ascii''file; name*1*=%2Ezip in Content-Type, decoy filename",
        RFC2231,
        "Content-Type: application/octet-stream; name*0*=us-ascii''file; name*1*=%2Ezip\n"
        'Content-Disposition: attachment; filename="file.txt"\n',
    ),
    (
        "utf16-encoded-word",
        'filename="=?utf-16?B?...?=" (with BOM)',
        EW,
        OCTET + f'Content-Disposition: attachment; filename="{encoded_word(NAME, "utf-16", "B")}"\n',
    ),
    (
        "utf16-encoded-word",
        'name="=?UTF-16LE?B?...?=", no Content-Disposition',
        EW,
        f'Content-Type: application/octet-stream; name="{encoded_word(NAME, "utf-16-le", "B")}"\n',
    ),
    (
        "utf16-encoded-word",
        'filename="=?utf-16be?Q?...?=" (Q encoding of UTF-16)',
        EW,
        OCTET + f'Content-Disposition: attachment; filename="{encoded_word(NAME, "utf-16-be", "Q")}"\n',
    ),
    (
        "param-comments-garbage",
        "name (x)= file.zip: a comment between key and '='",
        RFC822_CFWS,
        "Content-Type: application/octet-stream; name (x)= file.zip\n",
    ),
    (
        "param-comments-garbage",
        'filename=(c)"file.zip"(d): comments around the value',
        RFC822_CFWS,
        OCTET + 'Content-Disposition: attachment; filename=(c)"file.zip"(d)\n',
    ),
    (
        "param-comments-garbage",
        "n;x; garbage parameters before filename=file.zip",
        RFC822_CFWS,
        OCTET + "Content-Disposition: attachment; n;x; filename=file.zip\n",
    ),
    (
        "param-comments-garbage",
        'filename="fi\\le.zip": a quoted-pair inside the value',
        RFC822_CFWS,
        OCTET + 'Content-Disposition: attachment; filename="fi\\le.zip"\n',
    ),
    (
        "duplicate-disposition",
        "two Content-Disposition headers: file.txt first, file.zip last",
        DUPLICATE,
        OCTET
        + 'Content-Disposition: attachment; filename="file.txt"\n'
        + 'Content-Disposition: attachment; filename="file.zip"\n',
    ),
    (
        "duplicate-disposition",
        "two Content-Disposition headers: file.zip first, file.txt last",
        DUPLICATE,
        OCTET
        + 'Content-Disposition: attachment; filename="file.zip"\n'
        + 'Content-Disposition: attachment; filename="file.txt"\n',
    ),
    (
        "duplicate-disposition",
        "Content-Disposition, then the Content-Type, then a second Content-Disposition",
        DUPLICATE,
        'Content-Disposition: attachment; filename="file.txt"\n'
        + OCTET
        + 'Content-Disposition: attachment; filename="file.zip"\n',
    ),
    (
        "duplicate-content-type",
        "two Content-Type headers: name=file.txt first, name=file.zip last",
        DUPLICATE,
        'Content-Type: text/plain; name="file.txt"\nContent-Type: application/zip; name="file.zip"\n',
    ),
    (
        "duplicate-content-type",
        "two Content-Type headers: name=file.zip first, name=file.txt last",
        DUPLICATE,
        'Content-Type: application/zip; name="file.zip"\nContent-Type: text/plain; name="file.txt"\n',
    ),
    (
        "duplicate-content-type",
        "two Content-Type headers split by the Content-Disposition (file.txt)",
        DUPLICATE,
        'Content-Type: text/plain; name="file.txt"\n'
        'Content-Disposition: attachment; filename="file.txt"\n'
        'Content-Type: application/zip; name="file.zip"\n',
    ),
]
_seen: dict[str, int] = {}
for _family, _what, _source, _head in _NAMES:
    _seen[_family] = _seen.get(_family, 0) + 1
    CASES.append(
        (f"name-{_family}-{_seen[_family]}", _family, "filename", _what, _source, lambda h=_head: name_message(h))
    )
CASES += [
    (
        "control-no-zip-name",
        "control",
        "control",
        "a harmless zip attached as report.txt (no zip name anywhere): must pass",
        "-",
        lambda: name_message(OCTET + 'Content-Disposition: attachment; filename="report.txt"\n'),
    ),
    (
        "control-no-zip-name-rfc2231",
        "control",
        "control",
        "a harmless zip named in RFC 2231 pieces file. + txt (no zip name): must pass",
        "-",
        lambda: name_message(OCTET + 'Content-Disposition: attachment; filename*0="file."; filename*1="txt"\n'),
    ),
    (
        "control-well-formed",
        "control",
        "control",
        "a well-formed multipart/mixed with a text and a harmless PDF-named part: must pass",
        "-",
        lambda: multipart(
            [
                TEXT,
                'Content-Type: application/pdf; name="report.pdf"\nContent-Transfer-Encoding: base64\n\n'
                + b64(b"%PDF-1.4\n% harmless\n" * 20),
            ]
        ),
    ),
]


def cases() -> list[tuple[str, str, str, str, str, bytes]]:
    """Every message: (id, family, kind, description, who reads it that way, bytes).

    The 52 original techniques first (kind ``content``, source ``-``), then ``CASES``."""
    out = []
    for ident, family, description, make in TECHNIQUES:
        message = make()
        data = message if isinstance(message, bytes) else message.encode("latin-1")
        out.append((ident, family, "content", description, "-", data))
    for ident, family, kind, description, source, make2 in CASES:
        message = make2()
        data = message if isinstance(message, bytes) else message.encode("latin-1")
        out.append((ident, family, kind, description, source, data))
    return out


def build() -> list[tuple[str, str, str, bytes]]:
    """Every message's (id, family, description, message bytes): the 52 techniques and ``CASES``."""
    return [(ident, family, description, data) for ident, family, _, description, _, data in cases()]


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else "evasive-messages")
    out.mkdir(parents=True, exist_ok=True)
    rows = ["id\tfamily\tkind\tdescription\tsource"]
    for ident, family, kind, description, source, data in cases():
        (out / f"{ident}.eml").write_bytes(data)
        rows.append(f"{ident}\t{family}\t{kind}\t{description}\t{source}")
    (out / "techniques.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    print(f"{len(rows) - 1} messages in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
