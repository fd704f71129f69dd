"""``office_macros()``: VBA and Excel 4 (XLM) macros in Office documents, via oletools' olevba.

Office macros are the classic way malware rides in mail attachments.  This
scanner hands every Office-looking piece of the message to olevba (in a
thread: parsing OLE and unpacking VBA is CPU work that must not stall the
worker's other connections) and reports what it finds::

    office_macros()                       # any VBA or XLM macro is a finding
    office_macros('suspicious')           # only macros olevba finds both
                                          #   AutoExec and Suspicious keywords in
    office_macros(unscannable=1.0)        # also refuse documents olevba cannot read

What is looked at: OLE2 documents (``.doc``, ``.xls``, ``.ppt``, ...), OOXML
zips (``.docm``, ``.xlsm``, ``.pptm``, ``.xlsb``, whatever their name says),
Word 2003 XML and Flat OPC, and SYLK (``.slk``).  Plain text is *not* handed
to olevba (it would read any text as VBA source code), nor anything else.
Inside an archive, a document is seen when ``decompress(office_macros())``
hands the member over (olevba itself also opens the OLE members of any zip,
so a ``.doc`` in a plain ``.zip`` is found even without ``decompress``); on
the whole message (no ``parsemail``) every decoded part is examined.

olevba only finds XLM macro sheets in OLE ``.xls`` files; for OOXML
workbooks (``.xlsm``, ``.xlsb``) this module checks the zip for
``xl/macrosheets/`` itself, and for an ``Auto_Open`` defined name.

A document that looks like Office but cannot be analysed (truncated,
corrupt, unpacking past ``max_size``) is *unscannable*: by default a clean
result whose detail says why (level ``unscannable=0.0``); set
``unscannable=1.0`` to treat such documents as findings (name
``Office.Unscannable``).  It never raises for bad input: a broken attachment
is the sender's problem, not a reason to tempfail the mail for days.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
import weakref
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from mailsift.errors import ConfigError
from mailsift.message.result import CLEAN, Result
from mailsift.scanners import work
from mailsift.scanners.base import DataTarget, PartTarget, Scanner, Target
from mailsift.scanners.passwords import DEFAULT_MAX_PASSWORD_TIME, Tries, mail_candidates, tries
from mailsift.validators import choice, non_negative, number, positive_int

if TYPE_CHECKING:
    from mailsift.message.mail import Mail

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
ZIP_MAGIC = b"PK\x03\x04"
XML_MARKERS = (
    b"http://schemas.microsoft.com/office/word/2003/wordml",  # Word 2003 XML
    b"http://schemas.microsoft.com/office/2006/xmlPackage",  # Flat OPC
)
MACROSHEET_FOLDERS = ("xl/macrosheets/", "xl/intlmacrosheets/")
AUTO_OPEN_NAMES = (b"Auto_Open", "Auto_Open".encode("utf-16-le"))
DEFAULT_MAX_SIZE = 64 * 1024 * 1024
MODES = ("any", "suspicious")
EXCEL_DEFAULT_PASSWORD = "VelvetSweatshop"  # noqa: S105 - a well-known public default, not a secret
"""The password Excel encrypts with when none is given (write-protected workbooks): always tried first,
as olevba does; malware uses it to hide XLM macros from scanners that do not."""
ENCRYPTED_DOCUMENT = "Encrypted.Document"
ENCRYPTED_LEVELS = {"report": 0.5, "detect": 1.0, "ignore": 0.0}
"""``Encrypted.Document``'s level by policy: ``report`` (the default) names it in the log and the
decision's result without blocking (legitimate password-protected documents are common)."""

_olevba: ModuleType | None = None


def load_olevba() -> ModuleType:
    """Import ``oletools.olevba`` once.

    Its import calls a deprecated pyparsing function: that third-party warning
    is silenced here, at the one place it happens (tests run with warnings as
    errors).  Done at construction, in the config loader, so the first
    message does not pay the import in the event loop.
    """
    global _olevba
    if _olevba is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                from oletools import olevba
            except ImportError as error:  # pragma: no cover - a dependency of the package
                raise ConfigError(f"office_macros needs oletools: {error}") from None
        # olevba warns on every in-memory document that it cannot check VBA stomping.
        logging.getLogger("olevba").setLevel(logging.ERROR)
        _olevba = olevba
    return _olevba


@dataclass(frozen=True)
class Analysis:
    """What olevba (and the OOXML macro sheet check) said about one document."""

    kind: str = ""  # olevba's container type ("OLE", "OpenXML", "PPT", ...); "" = not an Office document
    modules: tuple[str, ...] = ()  # VBA module names (ThisDocument, Module1, ...)
    xlm: bool = False  # an Excel 4 macro sheet
    autoexec: tuple[str, ...] = ()  # olevba's AutoExec keywords (AutoOpen, Workbook_Open, ...)
    suspicious: tuple[str, ...] = ()  # olevba's Suspicious keywords (Shell, CreateObject, XLM macro, ...)
    error: str = ""  # why the document could not be analysed

    @property
    def has_macros(self) -> bool:
        return bool(self.modules) or self.xlm

    def describe(self) -> str:
        pieces = []
        if self.modules:
            pieces.append(f"VBA modules: {', '.join(self.modules)}")
        if self.xlm:
            pieces.append("XLM macro sheet")
        if self.autoexec:
            pieces.append(f"AutoExec: {', '.join(self.autoexec)}")
        if self.suspicious:
            pieces.append(f"Suspicious: {', '.join(self.suspicious)}")
        return "; ".join(pieces)


NOT_OFFICE = Analysis()


def office_kind(data: bytes) -> bool:
    """True when ``data`` looks like a document olevba can open (cheap header checks only)."""
    head = data[:8]
    if head == OLE_MAGIC or head.startswith(ZIP_MAGIC) or data.startswith(b"ID;"):
        return True
    start = data[:65536]  # the namespace is declared on the root element
    return any(marker in start for marker in XML_MARKERS)


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(item for item in items if item))


def _ooxml_xlm(data: bytes, max_size: int) -> tuple[bool, bool, str]:
    """``(macro sheet found, Auto_Open name found, error)`` for a zip, bounded by ``max_size``.

    Also the zip bomb guard: olevba reads whole members into memory, so a zip
    whose members unpack past ``max_size`` is not handed to it.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            if sum(member.file_size for member in members) > max_size:
                return False, False, f"unpacks to more than {max_size} bytes"
            sheets = any(m.filename.startswith(MACROSHEET_FOLDERS) for m in members)
            auto_open = False
            if sheets:
                for member in members:
                    if member.filename in ("xl/workbook.xml", "xl/workbook.bin"):
                        content = archive.read(member)
                        auto_open = any(name in content for name in AUTO_OPEN_NAMES)
            return sheets, auto_open, ""
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError, ValueError) as error:
        return False, False, f"corrupt zip: {error}"


def analyse(data: bytes, filename: str, max_size: int = DEFAULT_MAX_SIZE) -> Analysis:
    """Run olevba over one document (blocking: call it in a thread)."""
    if not office_kind(data):
        return NOT_OFFICE
    if len(data) > max_size:
        return Analysis(kind="?", error=f"document larger than {max_size} bytes")
    sheets, auto_open, zip_error = False, False, ""
    if data.startswith(ZIP_MAGIC):
        sheets, auto_open, zip_error = _ooxml_xlm(data, max_size)
        if zip_error:
            return Analysis(kind="zip", error=zip_error)
    olevba = load_olevba()
    parser: Any = None
    try:
        parser = olevba.VBA_Parser(filename or "document", data=data)
        if parser.type == olevba.TYPE_TEXT:
            return NOT_OFFICE  # plain text olevba would read as VBA source: not a document
        vba = bool(parser.detect_vba_macros())
        xlm = bool(parser.detect_xlm_macros()) or sheets
        if not (vba or xlm):
            return Analysis(kind=str(parser.type))
        modules = [str(m[2]) for m in parser.extract_macros() if m[2] and m[0] != "xlm_macro"] if vba else []
        results = parser.analyze_macros() or []
        autoexec = [str(r[1]) for r in results if r[0] == "AutoExec"]
        suspicious = [str(r[1]) for r in results if r[0] == "Suspicious"]
        if sheets:  # olevba does not see OOXML macro sheets: say what it says for OLE ones
            suspicious.append("XLM macro")
            if auto_open:
                autoexec.append("Auto_Open")
        return Analysis(
            kind=str(parser.type),
            modules=_unique([m.rsplit(".", 1)[0] for m in modules]),
            xlm=xlm,
            autoexec=_unique(autoexec),
            suspicious=_unique(suspicious),
        )
    except olevba.FileOpenError:
        if sheets:
            return Analysis(kind="OpenXML", xlm=True, autoexec=("Auto_Open",) * auto_open, suspicious=("XLM macro",))
        return NOT_OFFICE  # a zip or OLE file that is no Office document
    except Exception as error:  # noqa: BLE001 - olevba fails in many ways on corrupt input
        return Analysis(kind="?", error=f"{type(error).__name__}: {error}")
    finally:
        if parser is not None:
            try:
                parser.close()
            except Exception:  # noqa: BLE001, S110 - closing a half-open parser must not mask the verdict
                pass


# --------------------------------------------------------------------------- password-protected documents


@dataclass(frozen=True)
class Decryption:
    """A password-protected document tried with the mail's candidates: the plain document, or ``None``."""

    plain: bytes | None
    tried: int
    default: bool = False
    """Opened by Excel's built-in password (a "read-only" workbook), not one from the mail."""
    cut: str = ""
    """Why the tries stopped before every candidate was tried (the message's password time), or ``''``."""


_DECRYPTED: weakref.WeakKeyDictionary[Mail, dict[bytes, Decryption]] = weakref.WeakKeyDictionary()
"""Per message, by document digest: ``decompress`` and ``office_macros`` try each document once."""


def is_encrypted_document(data: bytes) -> bool:
    """True for a password-protected Office document (an OLE file: OOXML's EncryptedPackage, or a legacy
    ``.doc``/``.xls``/``.ppt`` with its encryption flag), as msoffcrypto-tool reads it."""
    if not data.startswith(OLE_MAGIC):
        return False
    import msoffcrypto  # loaded at the first OLE document

    try:
        return bool(msoffcrypto.OfficeFile(io.BytesIO(data)).is_encrypted())
    except Exception:  # noqa: BLE001 - not an Office file msoffcrypto knows, or a corrupt one
        return False


def try_document(data: bytes, password: str) -> bytes:
    """``data`` decrypted with ``password`` (raises if it is wrong or msoffcrypto-tool cannot decrypt it)."""
    import msoffcrypto

    document = msoffcrypto.OfficeFile(io.BytesIO(data))
    try:
        document.load_key(password=password, verify_password=True)  # OOXML: check the verifier first
    except TypeError:
        document.load_key(password=password)  # legacy .doc/.xls/.ppt: load_key checks it itself
    out = io.BytesIO()
    document.decrypt(out)
    return out.getvalue()


def decrypt_document(
    data: bytes,
    passwords: Sequence[str],
    out_of_time: Callable[[], bool] = lambda: False,
    max_size: int = DEFAULT_MAX_SIZE,
    password_tries: Tries | None = None,
) -> Decryption:
    """Try ``passwords`` on a password-protected Office document (msoffcrypto-tool; blocking: run in a thread).

    OOXML (agile and standard encryption) is checked by its password verifier
    (agile: 100,000 SHA-512 rounds, about 0.2-0.3 s a candidate in pure
    Python, hence the clock between candidates); legacy OLE documents (RC4,
    XOR) likewise.  A document bigger than ``max_size`` is not tried.  The
    message's password time (``password_tries``; unlimited if ``None``) is
    checked before each candidate; ``Decryption.cut`` says when it stopped them.
    """
    password_tries = password_tries or Tries()
    tried = 0
    if len(data) > max_size:
        return Decryption(None, 0)
    for password in passwords:
        if out_of_time() or not password_tries.more():
            break
        tried += 1
        try:
            with password_tries.trying():
                plain = try_document(data, password)
        except Exception:  # noqa: BLE001, S112 - a wrong password, or a format msoffcrypto cannot decrypt
            continue
        if plain and len(plain) <= max_size:
            return Decryption(plain, tried, password == EXCEL_DEFAULT_PASSWORD and tried == 1)
    return Decryption(None, tried, cut=password_tries.describe(len(passwords)))


def decrypt_for_mail(
    mail: Mail,
    data: bytes,
    max_passwords: int,
    max_password_length: int,
    out_of_time: Callable[[], bool] = lambda: False,
    max_size: int = DEFAULT_MAX_SIZE,
    max_password_time: float | None = DEFAULT_MAX_PASSWORD_TIME,
) -> Decryption | None:
    """``None`` when ``data`` is no password-protected document; else what the mail's candidates did
    (once per message and document, within the message's ``max_password_time``).  Blocking: run it in a thread."""
    if not is_encrypted_document(data):
        return None
    cache = _DECRYPTED.setdefault(mail, {})
    key = hashlib.sha256(data).digest()
    if key not in cache:
        passwords = mail_candidates(mail, max_passwords, max_password_length) if max_passwords else []
        cache[key] = decrypt_document(
            data, [EXCEL_DEFAULT_PASSWORD, *passwords], out_of_time, max_size, tries(mail, max_password_time)
        )
    return cache[key]


class office_macros(Scanner):
    """Detect VBA/XLM macros in Office documents (olevba).

    ``mode='any'``: any macro is a finding (name ``Office.Macro``).
    ``mode='suspicious'``: only macros with both an AutoExec trigger and a
    Suspicious keyword in olevba's analysis (name ``Office.Macro.Suspicious``);
    other macros give a clean result whose detail lists them.
    ``virname`` overrides the name; ``unscannable`` is the level for documents
    that cannot be analysed; ``max_size`` bounds the document and its unpacked
    OOXML members (bytes).  A password-protected document is tried with the
    mail's candidate passwords (``passwords``, ``max_passwords``,
    ``max_password_length``, ``max_password_time``, as for ``decompress``) and analysed when one
    opens it; else it is ``Encrypted.Document`` at the level ``encrypted``
    says: ``'report'`` (0.5: logged, not blocked), ``'detect'`` (1.0) or ``'ignore'``.
    """

    name = "office_macros"

    def __init__(
        self,
        mode: str = "any",
        virname: str | None = None,
        *,
        unscannable: float = 0.0,
        max_size: int = DEFAULT_MAX_SIZE,
        encrypted: str = "report",
        passwords: bool = True,
        max_passwords: int = 20,
        max_password_length: int = 64,
        max_password_time: float | None = DEFAULT_MAX_PASSWORD_TIME,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"office_macros: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if virname is not None and (not isinstance(virname, str) or not virname):
            raise ConfigError(f"office_macros: virname must be a non-empty string, got {virname!r}")
        self.unscannable = number(unscannable, "office_macros: unscannable", unit="a level")
        positive_int(max_size, "office_macros: max_size", unit="number of bytes")
        self.mode = mode
        self.virname = virname or ("Office.Macro" if mode == "any" else "Office.Macro.Suspicious")
        self.max_size = max_size
        self.encrypted = choice(encrypted, "office_macros: encrypted", tuple(ENCRYPTED_LEVELS))
        if not isinstance(passwords, bool):
            raise ConfigError(f"office_macros: passwords must be True or False, got {passwords!r}")
        self.max_passwords = positive_int(max_passwords, "office_macros: max_passwords") if passwords else 0
        self.max_password_length = positive_int(max_password_length, "office_macros: max_password_length")
        self.max_password_time = (
            None if max_password_time is None else non_negative(max_password_time, "office_macros: max_password_time")
        )
        load_olevba()

    def describe(self) -> str:
        extra = f", unscannable={self.unscannable}" if self.unscannable else ""
        return f"office_macros({self.mode!r}, {self.virname!r}{extra})"

    def _targets(self, target: Target) -> tuple[list[Target], bool]:
        """The documents to look at, and whether the detail must say where they are
        (on the whole message; under ``parsemail``/``decompress`` the wrapper says it)."""
        if target.part is None and not isinstance(target, DataTarget):
            return [PartTarget(target.mail, part) for part in target.mail.parts], True
        return [target], False

    def _judge(self, analysis: Analysis, where: str) -> Result:
        if analysis.error:
            detail = f"unscannable Office document ({analysis.error}){where}"
            return Result(self.unscannable, "Office.Unscannable" if self.unscannable > 0 else "", self.name, detail)
        if not analysis.has_macros:
            return Result(0.0, "", self.name)
        detail = analysis.describe() + where
        if self.mode == "any" or (analysis.autoexec and analysis.suspicious):
            return Result(1.0, self.virname, self.name, detail)
        return Result(0.0, "", self.name, f"macros, not suspicious: {detail}")

    async def scan(self, target: Target) -> Result:
        best = CLEAN
        items, locate = self._targets(target)
        for item in items:
            data = item.data
            if not office_kind(data):
                continue
            filename = item.names[0] if item.names else ""
            where = ""
            if locate:
                where = f"; part {item.path}" + (f" ({filename})" if filename else "")
            opened = ""
            if data.startswith(OLE_MAGIC):
                decryption = await work.in_thread(
                    decrypt_for_mail,
                    item.mail,
                    data,
                    self.max_passwords,
                    self.max_password_length,
                    max_size=self.max_size,
                    max_password_time=self.max_password_time,
                )
                if decryption is not None and decryption.plain is None:
                    if self.encrypted == "ignore":
                        continue
                    level = ENCRYPTED_LEVELS[self.encrypted]
                    detail = f"password-protected Office document, no password from the mail opened it{where}"
                    if decryption.cut:
                        detail += f" ({decryption.cut})"
                    result = Result(level, ENCRYPTED_DOCUMENT, self.name, detail)
                    if result.detected:
                        return result
                    if result.level > best.level:
                        best = result
                    continue
                if decryption is not None and decryption.plain is not None:
                    data = decryption.plain
                    if not decryption.default:
                        opened = " (password-protected, opened with a password from the mail)"
            analysis = await work.in_thread(analyse, data, filename, self.max_size)
            result = self._judge(analysis, where + opened if analysis.has_macros else where)
            if result.detected:
                return result
            if result.level > best.level or (not best.detail and result.detail):
                best = result
        return best if best.scanner else Result(0.0, "", self.name)
