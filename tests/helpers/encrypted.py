"""Password-protected archives and mails carrying them, for the tests of encrypted attachments.

Zip (ZipCrypto and AES) through pyzipper, 7z through py7zr, and the same through
Debian's 7-Zip (``7zz``, package ``7zip``): an implementation independent of
the readers mailsift uses.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from email.message import EmailMessage
from pathlib import Path

import libarchive
import py7zr
import pyzipper

SEVEN_ZIP = shutil.which("7zz") or shutil.which("7z")


def zip_encrypted(members: dict[str, bytes], password: str, *, aes: bool) -> bytes:
    """AES zips by pyzipper; ZipCrypto ones by libarchive's writer (pyzipper writes only AES)."""
    if aes:
        buffer = io.BytesIO()
        with pyzipper.AESZipFile(buffer, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as zf:
            zf.setpassword(password.encode())
            for name, data in members.items():
                zf.writestr(name, data)
        return buffer.getvalue()
    out = bytearray()

    def write(block: bytes) -> int:
        out.extend(block)
        return len(block)

    with libarchive.custom_writer(write, "zip", options="encryption=zipcrypt", passphrase=password) as archive:
        for name, data in members.items():
            archive.add_file_from_memory(name, len(data), data)
    return bytes(out)


def seven_zip_encrypted(members: dict[str, bytes], password: str, *, header_encryption: bool = False) -> bytes:
    buffer = io.BytesIO()
    with py7zr.SevenZipFile(buffer, "w", password=password, header_encryption=header_encryption) as archive:
        for name, data in members.items():
            archive.writestr(data, name)
    return buffer.getvalue()


def with_7zip_tool(tmp_path: Path, kind: str, members: dict[str, bytes], password: str, *options: str) -> bytes:
    """An archive made by Debian's 7-Zip (``kind``: ``zip`` or ``7z``)."""
    assert SEVEN_ZIP is not None
    source = tmp_path / "source"
    source.mkdir(exist_ok=True)
    for name, data in members.items():
        (source / name).write_bytes(data)
    target = tmp_path / f"archive.{kind}"
    target.unlink(missing_ok=True)
    subprocess.run(
        [SEVEN_ZIP, "a", "-bd", f"-t{kind}", f"-p{password}", *options, str(target), *members],
        cwd=source,
        check=True,
        capture_output=True,
    )
    return target.read_bytes()


def mail_with_password(
    attachment: bytes,
    filename: str,
    body: str = "see attached\n",
    subject: str = "invoice",
    html: str | None = None,
    content_type: str = "application/octet-stream",
) -> bytes:
    message = EmailMessage()
    message["From"] = "a@example.net"
    message["To"] = "b@example.org"
    message["Subject"] = subject
    message.set_content(body)
    if html is not None:
        message.add_alternative(html, subtype="html")
    maintype, subtype = content_type.split("/")
    message.add_attachment(attachment, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes()


def encrypted_docx(members: dict[str, bytes], password: str) -> tuple[bytes, bytes]:
    """``(plain, encrypted)``: an OOXML package of ``members`` and the same encrypted (agile) by msoffcrypto-tool.

    Padded past 4 KiB: msoffcrypto-tool cannot decrypt a package stored in the OLE mini stream.
    """
    import os
    import zipfile

    from msoffcrypto.format.ooxml import OOXMLFile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as package:
        package.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>',
        )
        for name, data in members.items():
            package.writestr(name, data)
        package.writestr("word/media/padding.bin", os.urandom(6000), compress_type=zipfile.ZIP_STORED)
    plain = buffer.getvalue()
    out = io.BytesIO()
    OOXMLFile(io.BytesIO(plain)).encrypt(password, out)
    return plain, out.getvalue()
