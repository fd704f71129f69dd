"""``office_macros()``: real Office documents with and without macros, through olevba.

Documents with macros: oletools' own test samples (``data/office/README.md``)
and the SpamAssassin corpus' ``olevbmacro`` messages; documents without:
ClamAV's test files ``clam.ole.doc`` / ``clam.ppt`` and ``nomacro.xlsx``.
"""

from __future__ import annotations

import io
import threading
import zipfile
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from mailsift.core.pipeline import Pipeline
from mailsift.errors import ConfigError
from mailsift.message.mail import Mail
from mailsift.message.result import Disposition, Result
from mailsift.scanners import office
from mailsift.scanners.actions import quarantine
from mailsift.scanners.base import DataTarget, MailTarget, PartTarget
from mailsift.scanners.office import office_macros
from mailsift.scanners.parsemail import parsemail
from tests.helpers.paths import CORPORA, UNIT_DATA

DATA = UNIT_DATA / "office"
OLEVBMACRO = CORPORA / "spamassassin-t-data" / "spam" / "olevbmacro"
CLAMAV_TESTFILES = Path("/usr/share/clamav-testfiles")


def document_mail(make_mail: Callable[..., Mail], data: bytes, filename: str) -> Mail:
    message = EmailMessage()
    message["From"] = "a@example.net"
    message["Subject"] = "document"
    message.set_content("See the attachment.")
    message.add_attachment(data, maintype="application", subtype="octet-stream", filename=filename)
    return make_mail(message.as_bytes())


def corpus_mail(name: str) -> Mail:
    return Mail(path=str(OLEVBMACRO / name))


async def scan_document(scanner: office_macros, make_mail: Callable[..., Mail], data: bytes, name: str) -> Result:
    mail = document_mail(make_mail, data, name)
    [attachment] = [p for p in mail.parts if p.filenames]
    return await scanner.scan(PartTarget(mail, attachment))


# --------------------------------------------------------------------------- macros found


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("sample_with_vba.ppt", "VBA modules: Module1"),
        ("oleform-PR314.docm", "VBA modules: ThisDocument, UserFormTEST1, UserFormTest2, NewMacros"),
        ("autostart-encrypt-standardpassword.xls", "VBA modules: Modul1, DieseArbeitsmappe, Tabelle1"),
        ("excel4_sample_macro.xls", "XLM macro sheet"),
        ("excel4_sample_macro.xlsm", "XLM macro sheet"),
    ],
)
async def test_any_macro_is_a_finding(make_mail: Callable[..., Mail], filename: str, expected: str) -> None:
    result = await scan_document(office_macros(), make_mail, (DATA / filename).read_bytes(), filename)
    assert (result.level, result.name, result.scanner) == (1.0, "Office.Macro", "office_macros")
    assert expected in result.detail


async def test_the_detail_names_autoexec_and_suspicious_keywords(make_mail: Callable[..., Mail]) -> None:
    data = (DATA / "autostart-encrypt-standardpassword.xls").read_bytes()
    result = await scan_document(office_macros(), make_mail, data, "invoice.xls")
    assert "AutoExec: Auto_Open" in result.detail
    assert "Suspicious: Hex Strings, Base64 Strings" in result.detail


async def test_xlm_in_ooxml_is_found_with_its_auto_open(make_mail: Callable[..., Mail]) -> None:
    # olevba alone does not see OOXML macro sheets; the zip check does.
    data = (DATA / "excel4_sample_macro.xlsm").read_bytes()
    result = await scan_document(office_macros("suspicious"), make_mail, data, "book.xlsm")
    assert result.detected
    assert "AutoExec: Auto_Open" in result.detail
    assert "Suspicious: XLM macro" in result.detail


async def test_the_ole_xls_xlm_macro_is_suspicious(make_mail: Callable[..., Mail]) -> None:
    data = (DATA / "excel4_sample_macro.xls").read_bytes()
    result = await scan_document(office_macros("suspicious"), make_mail, data, "book.xls")
    assert (result.level, result.name) == (1.0, "Office.Macro.Suspicious")
    assert "AutoExec: Auto_Open" in result.detail


# --------------------------------------------------------------------------- suspicious mode


@pytest.mark.parametrize(
    ("filename", "detected"),
    [
        ("autostart-encrypt-standardpassword.xls", True),  # Auto_Open + hex/base64 strings
        ("sample_with_vba.ppt", False),  # AutoExec (Action_Click) but nothing suspicious
    ],
)
async def test_suspicious_mode_needs_autoexec_and_a_suspicious_keyword(
    make_mail: Callable[..., Mail], filename: str, detected: bool
) -> None:
    result = await scan_document(office_macros("suspicious"), make_mail, (DATA / filename).read_bytes(), filename)
    assert result.detected is detected
    if not detected:
        assert result.level == 0.0
        assert result.name == ""
        assert result.detail.startswith("macros, not suspicious: VBA modules: Module1")


@pytest.mark.parametrize(
    ("message", "any_mode", "suspicious_mode"),
    [
        ("malicemacro.eml", True, True),  # automacro.xlsm: Workbook_Open + hex strings
        ("macro.eml", True, False),  # macro.xlsm: no AutoExec
        ("renamedmacro.eml", True, False),  # the same workbook named renamed.jpg
        ("nomacro.eml", False, False),  # nomacro.xlsx
        ("encrypted.eml", False, False),  # an encrypted .docx: nothing olevba can see
        ("goodcsv.eml", False, False),
    ],
)
async def test_the_spamassassin_olevbmacro_messages(
    run: Callable[..., Any], message: str, any_mode: bool, suspicious_mode: bool
) -> None:
    with corpus_mail(message) as mail:
        found_any = await run(parsemail(office_macros()), mail)
        found_suspicious = await run(parsemail(office_macros("suspicious")), mail)
    assert (found_any.detected, found_suspicious.detected) == (any_mode, suspicious_mode)
    if any_mode:
        assert "VBA modules:" in found_any.detail
        assert "part 2" in found_any.detail  # parsemail says where


async def test_the_whole_message_is_searched_part_by_part(run: Callable[..., Any]) -> None:
    with corpus_mail("malicemacro.eml") as mail:
        result = await run(office_macros("suspicious"), mail)
    assert (result.level, result.name) == (1.0, "Office.Macro.Suspicious")
    assert "AutoExec: autoexec, Workbook_Open" in result.detail
    assert result.detail.endswith("; part 2 (automacro.xlsm)")


# --------------------------------------------------------------------------- clean


@pytest.mark.parametrize("filename", ["clam.ole.doc", "clam.ppt"])
async def test_ole_documents_without_macros_are_clean(make_mail: Callable[..., Mail], filename: str) -> None:
    data = (CLAMAV_TESTFILES / filename).read_bytes()
    assert data.startswith(office.OLE_MAGIC)
    result = await scan_document(office_macros(), make_mail, data, filename)
    assert (result.level, result.name, result.detail) == (0.0, "", "")


async def test_vba_source_as_plain_text_is_not_a_document(make_mail: Callable[..., Mail]) -> None:
    # olevba would read any text as VBA source; a text attachment runs nothing.
    text = b'Sub AutoOpen()\r\n    Shell "cmd /c calc.exe"\r\n    CreateObject("WScript.Shell")\r\nEnd Sub\r\n'
    result = await scan_document(office_macros(), make_mail, text, "macro.txt")
    assert not result.detected
    assert result.detail == ""


async def test_a_zip_that_is_no_office_document_is_clean(make_mail: Callable[..., Mail]) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "hello")
    result = await scan_document(office_macros(unscannable=1.0), make_mail, buffer.getvalue(), "files.zip")
    assert (result.level, result.name) == (0.0, "")


async def test_a_message_without_documents_is_clean(run: Callable[..., Any], make_mail: Callable[..., Mail]) -> None:
    result = await run(office_macros(), make_mail("From: a@example.net\nSubject: hi\n\nJust text.\n"))
    assert (result.level, result.name, result.scanner) == (0.0, "", "office_macros")


# --------------------------------------------------------------------------- inside archives


async def test_a_document_handed_over_from_an_archive(make_mail: Callable[..., Mail]) -> None:
    # What decompress() does with a zip member: a DataTarget inside the part.  The
    # member is an OOXML document, which olevba does not look for inside a plain zip.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(DATA / "oleform-PR314.docm", "letters/letter.docm")
    mail = document_mail(make_mail, buffer.getvalue(), "letters.zip")
    [attachment] = [p for p in mail.parts if p.filenames]
    part = PartTarget(mail, attachment)
    assert not (await office_macros().scan(part)).detected  # the zip itself is no document
    with zipfile.ZipFile(io.BytesIO(attachment.data)) as archive:
        member = archive.read("letters/letter.docm")
    inner = DataTarget(part, member, names=("letters/letter.docm",), path=f"{attachment.path}/letters/letter.docm")
    result = await office_macros().scan(inner)
    assert (result.level, result.name) == (1.0, "Office.Macro")
    assert result.detail.startswith("VBA modules: ThisDocument, UserFormTEST1, UserFormTest2, NewMacros; AutoExec:")


async def test_under_the_real_decompress(run: Callable[..., Any], make_mail: Callable[..., Mail]) -> None:
    archive_module = pytest.importorskip("mailsift.scanners.archive")  # written beside this module
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(DATA / "oleform-PR314.docm", "letters/letter.docm")
        archive.write(CLAMAV_TESTFILES / "clam.ole.doc", "letters/clean.doc")
    mail = document_mail(make_mail, buffer.getvalue(), "letters.zip")
    assert not (await run(parsemail(office_macros()), mail)).detected
    result = await run(parsemail(archive_module.decompress(office_macros())), mail)
    assert (result.level, result.name, result.scanner) == (1.0, "Office.Macro", "office_macros")
    assert result.detail.startswith("VBA modules: ThisDocument, UserFormTEST1, UserFormTest2, NewMacros;")
    assert "letters/letter.docm" in result.detail


async def test_olevba_finds_an_ole_document_inside_any_zip(make_mail: Callable[..., Mail]) -> None:
    # olevba opens every OLE member of a zip: a .ppt in a plain .zip is found even
    # without decompress().
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(DATA / "sample_with_vba.ppt", "slides/show.ppt")
    result = await scan_document(office_macros(), make_mail, buffer.getvalue(), "slides.zip")
    assert (result.level, result.name) == (1.0, "Office.Macro")
    assert result.detail == "VBA modules: Module1; AutoExec: Action_Click"


# --------------------------------------------------------------------------- bad documents


def truncated_documents() -> list[tuple[str, bytes]]:
    docm = (DATA / "oleform-PR314.docm").read_bytes()
    ppt = (DATA / "sample_with_vba.ppt").read_bytes()
    return [
        ("ole-header-only", office.OLE_MAGIC + bytes(504)),
        ("truncated-ppt", ppt[:20000]),
        ("truncated-docm", docm[:5000]),
        ("zip-magic-then-garbage", b"PK\x03\x04garbage"),
    ]


@pytest.mark.parametrize(("label", "data"), truncated_documents(), ids=[t[0] for t in truncated_documents()])
async def test_corrupt_documents_are_unscannable_not_errors(
    make_mail: Callable[..., Mail], label: str, data: bytes
) -> None:
    clean = await scan_document(office_macros(), make_mail, data, f"{label}.doc")
    assert (clean.level, clean.name) == (0.0, "")
    assert clean.detail.startswith("unscannable Office document (")
    strict = await scan_document(office_macros(unscannable=1.0), make_mail, data, f"{label}.doc")
    assert (strict.level, strict.name) == (1.0, "Office.Unscannable")


async def test_a_document_unpacking_past_max_size_is_not_handed_to_olevba(make_mail: Callable[..., Mail]) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(DATA / "oleform-PR314.docm", "inner.docm")
        archive.writestr("word/vbaProject.bin", office.OLE_MAGIC + bytes(4 * 1024 * 1024))
    data = buffer.getvalue()
    assert len(data) < 64 * 1024  # a small mail attachment ...
    result = await scan_document(office_macros(max_size=1024 * 1024), make_mail, data, "bomb.docm")
    assert result.detail.startswith(f"unscannable Office document (unpacks to more than {1024 * 1024} bytes)")
    big = await scan_document(office_macros(max_size=1024), make_mail, (DATA / "sample_with_vba.ppt").read_bytes(), "x")
    assert "document larger than 1024 bytes" in big.detail


async def test_olevba_runs_in_a_thread(make_mail: Callable[..., Mail], monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    real = office.analyse

    def recording(*args: Any) -> office.Analysis:
        threads.append(threading.get_ident())
        return real(*args)

    monkeypatch.setattr(office, "analyse", recording)
    result = await scan_document(office_macros(), make_mail, (DATA / "sample_with_vba.ppt").read_bytes(), "a.ppt")
    assert result.detected
    assert threads
    assert threading.get_ident() not in threads


# --------------------------------------------------------------------------- config and pipeline


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "some"}, {"virname": ""}, {"unscannable": "high"}, {"max_size": 0}, {"max_size": True}],
)
def test_bad_arguments_are_config_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="office_macros"):
        office_macros(**kwargs)


def test_describe() -> None:
    assert office_macros().describe() == "office_macros('any', 'Office.Macro')"
    assert office_macros("suspicious", "Macro.Bad", unscannable=1).describe() == (
        "office_macros('suspicious', 'Macro.Bad', unscannable=1.0)"
    )


async def test_through_the_pipeline() -> None:
    pipeline = Pipeline([quarantine("macro", parsemail(office_macros("suspicious")))])
    with corpus_mail("malicemacro.eml") as bad, corpus_mail("macro.eml") as mild:
        decision = await pipeline.evaluate(bad)
        assert decision.disposition is Disposition.QUARANTINE
        assert decision.result.name == "Office.Macro.Suspicious"
        assert (await pipeline.evaluate(mild)).disposition is Disposition.DELIVER


def test_the_whole_message_target_is_not_split_twice(make_mail: Callable[..., Mail]) -> None:
    mail = make_mail("From: a@example.net\n\nx\n")
    items, locate = office_macros()._targets(MailTarget(mail))
    assert locate
    assert len(items) == len(mail.parts)


# --------------------------------------------------------------------------- password-protected documents


async def test_password_protected_document_opened_with_a_password_from_the_mail() -> None:
    from mailsift.message.mail import Mail
    from mailsift.scanners.base import MailTarget
    from mailsift.scanners.parsemail import parsemail
    from tests.helpers.encrypted import encrypted_docx, mail_with_password

    _, document = encrypted_docx({"word/document.xml": b"<w:document/>"}, "4821")
    for body, expected in (("Passwort: 4821\n", (0.0, "")), ("see attached\n", (0.5, "Encrypted.Document"))):
        with Mail(data=mail_with_password(document, "a.docx", body=body)) as mail:
            result = await parsemail(office_macros()).scan(MailTarget(mail))
        assert (result.level, result.name) == expected, (body, result)
    with Mail(data=mail_with_password(document, "a.docx")) as mail:
        assert (await parsemail(office_macros(encrypted="detect")).scan(MailTarget(mail))).detected


async def test_slow_document_tries_are_cut_at_the_password_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from tests.helpers.encrypted import encrypted_docx, mail_with_password

    tried: list[str] = []

    def slow(data: bytes, password: str) -> bytes:
        tried.append(password)
        time.sleep(0.02)
        raise ValueError("wrong password")

    monkeypatch.setattr(office, "try_document", slow)
    _, document = encrypted_docx({"word/document.xml": b"<w:document/>"}, "4821")
    body = "".join(f"Password: wrong{n}\n" for n in range(20))
    with Mail(data=mail_with_password(document, "a.docx", body=body)) as mail:
        result = await parsemail(office_macros(max_password_time=0.1)).scan(MailTarget(mail))
    assert (result.level, result.name) == (0.5, "Encrypted.Document"), result
    assert 1 <= len(tried) < 21, tried
    assert f"password tries cut by max_password_time=0.1s after {len(tried)} tries" in result.detail


@pytest.mark.parametrize("value", [-0.5, "1", False])
def test_max_password_time_is_validated(value: Any) -> None:
    with pytest.raises(ConfigError, match="office_macros: max_password_time"):
        office_macros(max_password_time=value)
    office_macros(max_password_time=None)
