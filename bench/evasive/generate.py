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


def build() -> list[tuple[str, str, str, bytes]]:
    """Every technique's (id, family, description, message bytes)."""
    built = []
    for ident, family, description, make in TECHNIQUES:
        message = make()
        data = message if isinstance(message, bytes) else message.encode("latin-1")
        built.append((ident, family, description, data))
    return built


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else "evasive-messages")
    out.mkdir(parents=True, exist_ok=True)
    rows = ["id\tfamily\tdescription"]
    for ident, family, description, data in build():
        (out / f"{ident}.eml").write_bytes(data)
        rows.append(f"{ident}\t{family}\t{description}")
    (out / "techniques.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    print(f"{len(rows) - 1} messages in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
