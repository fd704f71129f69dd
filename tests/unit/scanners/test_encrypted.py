"""``decompress`` opens encrypted zip (ZipCrypto, AES) and 7z attachments with a password from the mail.

Archives are made by pyzipper (AES zip), libarchive's writer (ZipCrypto zip),
py7zr (7z) and Debian's 7-Zip (``7zz``, an implementation independent of the
readers mailsift uses).  Without the right password an archive stays
``Encrypted.Archive``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from mailsift.errors import ConfigError
from mailsift.message.mail import Mail
from mailsift.message.result import Result
from mailsift.scanners import encrypted as encrypted_module
from mailsift.scanners import office
from mailsift.scanners.archive import decompress
from mailsift.scanners.base import MailTarget, PartTarget, Scanner, Target
from mailsift.scanners.basic import regexp_scan
from mailsift.scanners.parsemail import parsemail
from mailsift.scanners.work import MESSAGE_DEADLINE
from tests.helpers.encrypted import (
    SEVEN_ZIP,
    encrypted_docx,
    mail_with_password,
    seven_zip_encrypted,
    with_7zip_tool,
    zip_encrypted,
)

EICAR_RULE = [("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")]
needs_7zip = pytest.mark.skipif(SEVEN_ZIP is None, reason="Debian package 7zip not installed (scripts/setup.sh --test)")

Maker = Callable[[dict[str, bytes], str], bytes]
MAKERS: dict[str, Maker] = {
    "zipcrypto": lambda members, password: zip_encrypted(members, password, aes=False),
    "aes-zip": lambda members, password: zip_encrypted(members, password, aes=True),
    "7z": lambda members, password: seven_zip_encrypted(members, password),
    "7z-encrypted-header": lambda members, password: seven_zip_encrypted(members, password, header_encryption=True),
}
SUFFIX = {"zipcrypto": "zip", "aes-zip": "zip", "7z": "7z", "7z-encrypted-header": "7z"}


async def scan(scanner: Scanner, raw: bytes) -> Result:
    with Mail(data=raw) as mail:
        return await scanner.scan(MailTarget(mail))


def finder(**options: Any) -> Scanner:
    return parsemail(decompress(regexp_scan(EICAR_RULE), **options))


class Tries(Scanner):
    """Counts the targets it sees (members that came out)."""

    name = "tries"

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def scan(self, target: Target) -> Result:
        self.paths.append(target.path)
        return Result(0.0, "", self.name)


@pytest.mark.parametrize("kind", sorted(MAKERS))
@pytest.mark.parametrize(
    ("body", "subject"),
    [
        ("Invoice attached.\nPassword: 4821\n", "invoice"),
        ("Invoice attached.\n", "Invoice - pw 4821"),
        ("Rechnung im Anhang.\nPasswort: 4821\n", "Rechnung"),
        ("Facture en pièce jointe.\nMot de passe : 4821\n", "Facture"),
        ("Heslo k archivu je 4821\n", "Faktura"),
        ("Factura adjunta.\nContraseña: 4821\n", "Factura"),
        ("Fattura in allegato.\nPassword: 4821\n", "Fattura"),
        ("Fatura em anexo.\nSenha: 4821\n", "Fatura"),
        ("Factuur in de bijlage.\nWachtwoord: 4821\n", "Factuur"),
        ("Faktura w załączniku.\nHasło: 4821\n", "Faktura"),
        ("Faktúra v prílohe, heslo: 4821\n", "Faktúra"),
    ],
    ids=["en", "en-subject", "de", "fr", "cs", "es", "it", "pt", "nl", "pl", "sk"],
)
async def test_encrypted_archive_opened_with_the_password_in_the_mail(
    kind: str, body: str, subject: str, eicar: bytes
) -> None:
    archive = MAKERS[kind]({"readme.txt": b"hello " * 30, "eicar.com": eicar}, "4821")
    filename = f"invoice.{SUFFIX[kind]}"
    result = await scan(finder(), mail_with_password(archive, filename, body=body, subject=subject))
    assert (result.level, result.name) == (1.0, "EICAR-Test"), result
    assert "eicar.com" in result.detail
    assert f"encrypted archive {filename!r} opened with a password from the mail" in result.detail


async def test_password_in_the_html_part(eicar: bytes) -> None:
    archive = zip_encrypted({"eicar.com": eicar}, "Xk9q-77", aes=True)
    raw = mail_with_password(archive, "a.zip", body="See the HTML version.\n", html="<p>Password: <b>Xk9q-77</b></p>")
    assert (await scan(finder(), raw)).name == "EICAR-Test"


@pytest.mark.parametrize("kind", sorted(MAKERS))
async def test_without_the_password_it_stays_encrypted(kind: str, eicar: bytes) -> None:
    archive = MAKERS[kind]({"eicar.com": eicar}, "4821")
    for body in ("see attached\n", "Password: 1111\nPasswort: 2222\n"):
        result = await scan(finder(), mail_with_password(archive, f"a.{SUFFIX[kind]}", body=body))
        assert (result.level, result.name) == (1.0, "Encrypted.Archive"), (body, result)


@pytest.mark.parametrize("kind", sorted(MAKERS))
async def test_passwords_off_leaves_it_encrypted(kind: str, eicar: bytes) -> None:
    archive = MAKERS[kind]({"eicar.com": eicar}, "4821")
    result = await scan(finder(passwords=False), mail_with_password(archive, "a.bin", body="Password: 4821\n"))
    assert result.name == "Encrypted.Archive"


async def test_a_clean_encrypted_archive_opened_is_clean() -> None:
    archive = zip_encrypted({"report.txt": b"quarterly figures\n" * 20}, "4821", aes=True)
    seen = Tries()
    result = await scan(parsemail(decompress(seen)), mail_with_password(archive, "r.zip", body="Password: 4821\n"))
    assert not result.detected
    assert "2/report.txt" in seen.paths


async def test_at_most_max_passwords_are_tried(eicar: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    # 21 candidates, the right one last: the 21st is never tried, so the archive stays closed.
    body = "".join(f"Password: wrong{n}\n" for n in range(20)) + "Password: 4821\n"
    archive = zip_encrypted({"eicar.com": eicar}, "4821", aes=True)
    tried: list[int] = []
    real = encrypted_module.open_encrypted

    def counting(*args: Any) -> Any:
        opened, limit = real(*args)
        tried.append(opened.tried)
        return opened, limit

    monkeypatch.setattr("mailsift.scanners.archive.open_encrypted", counting)
    result = await scan(finder(), mail_with_password(archive, "a.zip", body=body))
    assert result.name == "Encrypted.Archive"
    assert tried == [20]
    # With room for 21 it opens.
    assert (await scan(finder(max_passwords=21), mail_with_password(archive, "a.zip", body=body))).name == "EICAR-Test"


async def test_a_password_longer_than_the_bound_is_ignored(eicar: bytes) -> None:
    password = "k" * 64 + "9"  # 65 characters
    archive = zip_encrypted({"eicar.com": eicar}, password, aes=True)
    raw = mail_with_password(archive, "a.zip", body=f"Password: {password}\n")
    assert (await scan(finder(), raw)).name == "Encrypted.Archive"
    assert (await scan(finder(max_password_length=65), raw)).name == "EICAR-Test"


async def test_opened_members_count_against_the_size_limit(eicar: bytes) -> None:
    archive = zip_encrypted({"big.txt": b"a" * 200_000, "eicar.com": eicar}, "4821", aes=True)
    raw = mail_with_password(archive, "a.zip", body="Password: 4821\n")
    result = await scan(finder(max_total_size=100_000), raw)
    assert result.name == "Heuristics.Limits.Exceeded.MaxTotalSize", result


async def test_out_of_time_stops_the_trying(eicar: bytes) -> None:
    ticks = iter(range(1000))
    archive = seven_zip_encrypted({"eicar.com": eicar}, "4821", header_encryption=True)
    body = "".join(f"Password: wrong{n}\n" for n in range(5)) + "Password: 4821\n"
    raw = mail_with_password(archive, "a.7z", body=body)
    result = await scan(finder(max_time=3.0, clock=lambda: float(next(ticks))), raw)
    assert result.name == "Heuristics.Limits.Exceeded.MaxTime", result
    ticks = iter(range(1000))  # the reading alone stays within the time: it is the trying that ran out
    closed = await scan(finder(max_time=3.0, passwords=False, clock=lambda: float(next(ticks))), raw)
    assert closed.name == "Encrypted.Archive"


async def test_damaged_encrypted_zip_ends_cleanly(eicar: bytes) -> None:
    archive = zip_encrypted({"eicar.com": eicar}, "4821", aes=True)
    damaged = archive[: len(archive) // 2] + b"\x00" * 40 + archive[len(archive) // 2 :]
    result = await scan(finder(), mail_with_password(damaged, "a.zip", body="Password: 4821\n"))
    assert result.name in ("Encrypted.Archive", "EICAR-Test", "")


@needs_7zip
@pytest.mark.parametrize(
    ("kind", "options"),
    [("zip", ()), ("zip", ("-mem=AES256",)), ("7z", ()), ("7z", ("-mhe=on",))],
    ids=["zipcrypto", "aes-zip", "7z", "7z-encrypted-header"],
)
async def test_archives_made_by_7zip_open(tmp_path: Path, kind: str, options: tuple[str, ...], eicar: bytes) -> None:
    archive = with_7zip_tool(tmp_path, kind, {"eicar.com": eicar}, "Tajne-4821", *options)
    raw = mail_with_password(archive, f"faktura.{kind}", body="Dobrý den,\nheslo k příloze: Tajne-4821\n")
    result = await scan(finder(), raw)
    assert (result.level, result.name) == (1.0, "EICAR-Test"), result
    closed = await scan(finder(), mail_with_password(archive, f"faktura.{kind}", body="Dobrý den\n"))
    assert closed.name == "Encrypted.Archive"


def test_describe_names_the_password_options() -> None:
    text = decompress(regexp_scan(EICAR_RULE), max_passwords=5).describe()
    assert "passwords=True, max_passwords=5, max_password_length=64" in text


# --------------------------------------------------------------------------- password-protected Office documents


async def test_encrypted_office_document_opened_and_scanned(eicar: bytes) -> None:
    _, document = encrypted_docx({"word/document.xml": b"<w:document/>", "word/embeddings/eicar.com": eicar}, "4821")
    raw = mail_with_password(document, "offer.docx", body="Heslo: 4821\n")
    result = await scan(finder(), raw)
    assert (result.level, result.name) == (1.0, "EICAR-Test"), result
    assert "password-protected Office document 'offer.docx' opened with a password from the mail" in result.detail


async def test_encrypted_office_document_without_password_is_reported_not_blocked(eicar: bytes) -> None:
    _, document = encrypted_docx({"word/document.xml": b"<w:document/>", "word/embeddings/eicar.com": eicar}, "4821")
    raw = mail_with_password(document, "offer.docx", body="Password: 1111\n")
    result = await scan(finder(), raw)
    assert (result.level, result.name) == (0.5, "Encrypted.Document"), result
    assert not result.detected
    assert "offer.docx" in result.detail
    assert (await scan(finder(encrypted_documents="detect"), raw)).level == 1.0
    assert (await scan(finder(encrypted_documents="ignore"), raw)).name == ""


# --------------------------------------------------------------------------- the message's password time

WRONG_20 = "".join(f"Password: wrong{n}\n" for n in range(20))


def slow(tried: list[str], real: Callable[..., Any] | None = None, seconds: float = 0.02) -> Callable[..., Any]:
    """A decryptor that takes ``seconds`` a try (then fails, or calls ``real``), recording the passwords."""

    def attempt(data: bytes, password: str, *rest: Any) -> Any:
        tried.append(password)
        time.sleep(seconds)
        if real is None:
            raise ValueError("wrong password")
        return real(data, password, *rest)

    return attempt


async def test_slow_7z_tries_are_cut_at_the_password_time(eicar: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    tried: list[str] = []
    monkeypatch.setattr(encrypted_module, "try_7z", slow(tried))
    raw = mail_with_password(seven_zip_encrypted({"eicar.com": eicar}, "4821"), "a.7z", body=WRONG_20)
    started = time.monotonic()
    result = await scan(finder(max_password_time=0.1), raw)
    assert time.monotonic() - started < 20 * 0.02 * 10  # bounded (generous): not a speed measurement
    assert (result.level, result.name) == (1.0, "Encrypted.Archive"), result
    assert 1 <= len(tried) < 20, tried
    assert f"password tries cut by max_password_time=0.1s after {len(tried)} tries (20 candidates)" in result.detail
    tried.clear()  # without the bound every candidate is tried
    result = await scan(finder(max_password_time=None), raw)
    assert len(tried) == 20
    assert result.name == "Encrypted.Archive"
    assert "cut" not in result.detail


async def test_the_right_password_among_the_first_still_opens(eicar: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    tried: list[str] = []
    monkeypatch.setattr(encrypted_module, "try_7z", slow(tried, encrypted_module.try_7z))
    body = "Password: wrong0\nPassword: 4821\n" + WRONG_20
    raw = mail_with_password(seven_zip_encrypted({"eicar.com": eicar}, "4821"), "a.7z", body=body)
    result = await scan(finder(max_password_time=0.5), raw)
    assert (result.level, result.name) == (1.0, "EICAR-Test"), result
    assert tried == ["wrong0", "4821"]


async def test_the_password_time_is_shared_by_the_archives_of_a_message(
    eicar: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried: list[str] = []
    monkeypatch.setattr(encrypted_module, "try_7z", slow(tried))
    message = EmailMessage()
    message["Subject"] = "two archives"
    message.set_content(WRONG_20)
    for name in ("a.7z", "b.7z"):
        archive = seven_zip_encrypted({f"{name}.com": eicar}, "4821")
        message.add_attachment(archive, maintype="application", subtype="octet-stream", filename=name)
    with Mail(data=message.as_bytes()) as mail:
        results = [await decompress(Tries(), max_password_time=0.1).scan(PartTarget(mail, part)) for part in mail.parts]
    findings = [result for result in results if result.name]
    assert [result.name for result in findings] == ["Encrypted.Archive"] * 2
    first, second = (result.detail for result in findings)
    assert 1 <= len(tried) < 20
    assert f"after {len(tried)} tries" in first
    assert "after 0 tries" in second  # the first archive spent the message's time


async def test_tries_never_run_past_the_message_deadline(eicar: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    tried: list[str] = []
    monkeypatch.setattr(encrypted_module, "try_7z", slow(tried))
    monkeypatch.setattr(office, "try_document", slow(tried))
    _, document = encrypted_docx({"word/document.xml": b"<w:document/>"}, "4821")
    for archive, name, expected in (
        (seven_zip_encrypted({"eicar.com": eicar}, "4821"), "a.7z", "Encrypted.Archive"),
        (document, "a.docx", "Encrypted.Document"),
    ):
        with Mail(data=mail_with_password(archive, name, body=WRONG_20)) as mail:
            mail.memo[MESSAGE_DEADLINE] = time.monotonic() - 1.0  # passed: no try starts
            result = await finder(max_password_time=None).scan(MailTarget(mail))
        assert result.name == expected, result
        assert "password tries cut by the message deadline after 0 tries" in result.detail
    assert tried == []


async def test_slow_office_tries_are_cut_at_the_password_time(monkeypatch: pytest.MonkeyPatch) -> None:
    tried: list[str] = []
    monkeypatch.setattr(office, "try_document", slow(tried))
    _, document = encrypted_docx({"word/document.xml": b"<w:document/>"}, "4821")
    result = await scan(finder(max_password_time=0.1), mail_with_password(document, "a.docx", body=WRONG_20))
    assert (result.level, result.name) == (0.5, "Encrypted.Document"), result
    assert 1 <= len(tried) < 21, tried  # Excel's built-in password and the 20 from the mail
    assert tried[0] == "VelvetSweatshop"
    assert f"password tries cut by max_password_time=0.1s after {len(tried)} tries (21 candidates)" in result.detail


@pytest.mark.parametrize("value", [-1, "0.5", True, float("inf")])
def test_max_password_time_is_validated(value: Any) -> None:
    with pytest.raises(ConfigError, match="decompress: max_password_time"):
        decompress(regexp_scan(EICAR_RULE), max_password_time=value)


def test_describe_names_the_password_time() -> None:
    assert "max_password_time=0.5s" in decompress(regexp_scan(EICAR_RULE)).describe()
    assert "max_password_time=none" in decompress(regexp_scan(EICAR_RULE), max_password_time=None).describe()
