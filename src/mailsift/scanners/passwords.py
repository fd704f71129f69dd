"""Candidate passwords for encrypted attachments, read from the message's own text.

Malware mail ships a password-protected zip or 7z (so that the gateway cannot
look inside) and tells the victim the password in the text: ``Password: 4821``,
``pw 4821``, ``Passwort: 4821``, in the Subject or an HTML part.  The recipient
must be able to read it, so the gateway can too.  :func:`candidates` is a pure
function over texts; :func:`mail_candidates` applies it to a :class:`Mail`
(Subject first, then every text/plain and text/html part, HTML turned into text).

What is taken, in this order (most certain first), until ``max_count``:

1. a keyword followed (within a few words) by ``:`` or ``=`` and a value:
   ``Password for the archive: 4821``, ``mot de passe : 4821``, ``hasło do pliku: 4821``;
2. a keyword, optionally a few words and a verb ("is", "ist", "lautet", "est", "es",
   "è", "é", "is", "to", "jest", "je"...), then the value: ``pw 4821``,
   ``Passwort lautet 4821``, ``La contraseña es 4821``, ``heslo je 4821``;
3. bare short tokens (3 to 20 characters, with a digit, or alone on their line)
   on the line that mentions an attachment (its filename, or a word like
   "attached", "Anhang", "pièce jointe", "allegato", "příloha") or on the next line.

Keywords, by language: English (password, passwd, passcode, pwd, pw, pass, pin, code),
German (Passwort, Kennwort), French (mot de passe, mdp), Spanish (contraseña, clave),
Italian (password, parola chiave, parola d'ordine, parola), Portuguese (senha,
palavra-passe), Dutch (wachtwoord, paswoord), Polish (hasło), Czech and Slovak (heslo).
The short or common ones (pass, pin, code, clave, parola, chiave, kód) need a ``:`` or ``=``.

A value is a quoted string (``"..."``, ``'...'``, ``“...”``, ``„...“``, ``«...»``,
backquotes), a bold one (``*...*``, ``**...**``, ``_..._``; HTML ``<b>`` is plain text
once the markup is gone), or the next whitespace-free word without its trailing
punctuation.  Values longer than ``max_length`` are dropped, not cut.

Within each of these steps, the texts that name an attachment's filename come
first, then those with an attachment word, then the others (Subject first among
equals): a password told next to the attachment is the likeliest one.

Trying them costs time (a wrong 7z candidate about 45 ms, an OOXML one 0.2-0.3 s):
:class:`Tries` is one decryptor's share of the message's password time, all
archives and documents of the message together (:func:`tries`).

Bounded: at most :data:`MAX_TEXTS` texts of at most :data:`MAX_TEXT_CHARS`
characters each are read, every regular expression is linear with bounded
look-ahead, and the answer has at most ``max_count`` entries.
"""

from __future__ import annotations

import re
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from html import unescape
from html.parser import HTMLParser
from typing import TYPE_CHECKING

from mailsift.scanners.work import message_ends

if TYPE_CHECKING:
    from mailsift.message.mail import Mail

DEFAULT_MAX_PASSWORDS = 20
DEFAULT_MAX_PASSWORD_LENGTH = 64
DEFAULT_MAX_PASSWORD_TIME = 0.5
"""Seconds of password tries per message, all archives and documents together."""
MAX_TEXTS = 20
"""Text parts read (the Subject counts as one)."""
MAX_TEXT_CHARS = 64 * 1024
"""Characters read from each text: a password is told near the attachment's mention, not 1 MB down."""
MIN_BARE = 3
MAX_BARE = 20

_STRONG = (
    r"passwor[dt]s?|passwd|pass[\s-]?word|passcode|pwd|pw|p/w|kennwort"
    r"|mot[\s-]+de[\s-]+passe|mdp|contrase(?:ñ|n)a|clave[\s-]+de[\s-]+acceso"
    r"|parola[\s-]+(?:chiave|d['’]ordine)|senha|palavra[\s-]passe|wachtwoord|paswoord"
    r"|has(?:ł|l)o|heslo|hesla|heslem"
)
_WEAK = r"pass|pin|code|codice|c(?:ó|o)digo|clave|parola|chiave|k(?:ó|o)d|kod"
_BOUNDARY_BEFORE = r"(?<!\w)"
_BOUNDARY_AFTER = r"(?!\w)"
_KEYWORD = rf"{_BOUNDARY_BEFORE}(?:{_STRONG}){_BOUNDARY_AFTER}"
_ANY_KEYWORD = rf"{_BOUNDARY_BEFORE}(?:{_STRONG}|{_WEAK}){_BOUNDARY_AFTER}"
_VERBS = r"is|ist|lautet|est|es|era|è|e|é|será|sera|is|to|jest|je|sú|su|zní|znie|=|-|–|—|:"
_QUOTES = (
    ('"', '"'),
    ("'", "'"),
    ("“", "”"),
    ("„", "“"),
    ("„", "”"),
    ("«", "»"),
    ("»", "«"),
    ("‚", "‘"),
    ("‘", "’"),
    ("`", "`"),
    ("**", "**"),
    ("*", "*"),
    ("__", "__"),
    ("_", "_"),
    ("[", "]"),
)
_VALUE = r"(?P<value>\S[^\n]{0,80})"
"""The rest of the line after the separator; :func:`_value` takes the password out of it."""

# 1. keyword, up to 40 characters of the same line (no separator), ':' or '=', the value
#    (on the same line or the next one).
_WITH_SEPARATOR = re.compile(
    rf"{_ANY_KEYWORD}[^\n:=]{{0,40}}?[:=][^\S\n]*(?:\n[^\S\n]*)?{_VALUE}", re.IGNORECASE | re.UNICODE
)
# 2. strong keyword, optionally up to 4 words and a verb, then the value.
_WITH_VERB = re.compile(
    rf"{_KEYWORD}(?:[^\S\n]+[^\s:=]+){{0,4}}?[^\S\n]+(?:{_VERBS})[^\S\n]+{_VALUE}", re.IGNORECASE | re.UNICODE
)
_BARE_AFTER = re.compile(rf"{_KEYWORD}[^\S\n]+{_VALUE}", re.IGNORECASE | re.UNICODE)

_MENTIONS = (
    r"attach\w*|enclosed|archive|zip|7z|rar|file"  # en
    r"|anhang|angehängt|anlage|beigefügt|datei|archiv"  # de
    r"|pi(?:è|e)ces?[\s-]+jointes?|joint|fichier"  # fr
    r"|adjunt\w*|archivo|fichero"  # es
    r"|allegat\w*|archivio"  # it
    r"|anex\w*|arquivo|ficheiro"  # pt
    r"|bijlage|bijgevoegd|bestand"  # nl
    r"|za(?:ł|l)(?:ą|a)cznik\w*|plik\w*|archiwum"  # pl
    r"|p(?:ř|r)(?:í|i)loh\w*|pr(?:í|i)loh\w*|soubor\w*|s(?:ú|u)bor\w*|arch(?:í|i)v\w*"  # cs, sk
)
_MENTION = re.compile(rf"(?<!\w)(?:{_MENTIONS})(?!\w)", re.IGNORECASE | re.UNICODE)
_TRAILING = ".,;:!?)]}>\"'»“”’"
_LEADING = "([{<\"'«„“‘‚"
_STOPWORDS = frozenset(
    [
        "is",
        "in",
        "the",
        "a",
        "an",
        "for",
        "of",
        "to",
        "be",
        "as",
        "it",
        "its",
        "this",
        "that",
        "below",
        "above",
        "attached",
        "same",
        "sent",
        "follows",
        "following",
        "required",
        "protected",
        "needed",
        "see",
        "please",
        "here",
        "there",
        "will",
        "your",
        "you",
        "our",
        "my",
        "send",
        "sending",
        "next",
        "separate",
        "separately",
        "email",
        "e-mail",
        "mail",
        "message",
        "und",
        "die",
        "der",
        "das",
        "ist",
        "im",
        "in",
        "für",
        "wird",
        "folgt",
        "folgend",
        "anbei",
        "unten",
        "le",
        "la",
        "les",
        "de",
        "du",
        "des",
        "est",
        "dans",
        "ci-dessous",
        "suit",
        "el",
        "los",
        "las",
        "es",
        "en",
        "del",
        "abajo",
        "sigue",
        "il",
        "lo",
        "è",
        "di",
        "nel",
        "segue",
        "o",
        "os",
        "as",
        "é",
        "em",
        "do",
        "da",
        "segue",
        "het",
        "de",
        "is",
        "in",
        "volgt",
        "w",
        "na",
        "jest",
        "poniżej",
        "je",
        "v",
        "ve",
        "na",
        "nižšie",
        "níže",
        "the",
    ]
)
_TOKEN = re.compile(r"\S+")
_HAS_DIGIT = re.compile(r"\d")
_ALNUM = re.compile(r"[^\W_]")


def _clean(token: str) -> str:
    return token.strip(_TRAILING).lstrip(_LEADING).strip(_TRAILING)


def _value(rest: str, max_length: int) -> str:
    """The password at the start of ``rest`` (the line after the keyword and its separator)."""
    rest = rest.strip()
    for opening, closing in _QUOTES:
        if rest.startswith(opening) and len(rest) > len(opening):
            end = rest.find(closing, len(opening))
            if end > len(opening):
                inner = rest[len(opening) : end].strip()
                return inner if 0 < len(inner) <= max_length else ""
    match = _TOKEN.match(rest)
    if match is None:
        return ""
    word = _clean(match.group())
    for opening, closing in _QUOTES:  # a bold or quoted word whose closing mark the strip above took
        if word.startswith(opening) and word.endswith(closing) and len(word) > len(opening) + len(closing):
            word = word[len(opening) : -len(closing)]
    word = word.strip("*_")
    if len(word) < 2 or len(word) > max_length or word.lower() in _STOPWORDS or not _ALNUM.search(word):
        return ""
    return word


def _bare_tokens(text: str, names: tuple[str, ...], max_length: int) -> Iterable[str]:
    """Short tokens on a line that mentions an attachment, or on the line after it."""
    lines = text.splitlines()
    lowered_names = tuple(name.lower() for name in names if name)
    for number, line in enumerate(lines):
        lowered = line.lower()
        if not (_MENTION.search(line) or any(name in lowered for name in lowered_names)):
            continue
        following = [other for other in lines[number + 1 : number + 4] if other.strip()][:1]
        for near in [line, *following]:
            tokens = [_clean(t) for t in _TOKEN.findall(near)]
            tokens = [t for t in tokens if t]
            for token in tokens:
                if not MIN_BARE <= len(token) <= min(MAX_BARE, max_length):
                    continue
                if token.lower() in lowered_names or _MENTION.fullmatch(token) or token.lower() in _STOPWORDS:
                    continue
                if _HAS_DIGIT.search(token) or len(tokens) == 1:
                    yield token


def candidates(
    texts: Iterable[str],
    *,
    names: Iterable[str] = (),
    max_count: int = DEFAULT_MAX_PASSWORDS,
    max_length: int = DEFAULT_MAX_PASSWORD_LENGTH,
) -> list[str]:
    """At most ``max_count`` distinct candidate passwords of at most ``max_length`` characters, best first.

    ``texts``: the Subject and the text parts, in that order; ``names``: the
    attachments' filenames (a bare token next to one is a candidate).
    """
    if max_count <= 0 or max_length <= 0:
        return []
    kept: list[str] = []
    for count, text in enumerate(texts):
        if count >= MAX_TEXTS:
            break
        kept.append(text[:MAX_TEXT_CHARS])
    filenames = tuple(name for name in names if name)[:MAX_TEXTS]
    found: dict[str, None] = {}

    def add(values: Iterable[str]) -> bool:
        for value in values:
            if value and value not in found:
                found[value] = None
                if len(found) >= max_count:
                    return True
        return False

    def keyed(pattern: re.Pattern[str]) -> Callable[[str], Iterable[str]]:
        return lambda text: (_value(m.group("value"), max_length) for m in pattern.finditer(text))

    lowered_names = tuple(name.lower() for name in filenames)

    def nearness(text: str) -> int:
        lowered = text.lower()
        if any(name in lowered for name in lowered_names):
            return 0
        return 1 if _MENTION.search(text) else 2

    kept.sort(key=nearness)  # stable: the Subject stays first among equals
    steps: list[Callable[[str], Iterable[str]]] = [
        keyed(_WITH_SEPARATOR),
        keyed(_WITH_VERB),
        keyed(_BARE_AFTER),
        lambda text: _bare_tokens(text, filenames, max_length),
    ]
    for step in steps:
        for text in kept:
            if add(step(text)):
                return list(found)
    return list(found)


# --------------------------------------------------------------------------- the texts of a mail


class _Text(HTMLParser):
    """HTML to text: the character data, a line end for every block element, nothing from scripts or styles."""

    BLOCKS = frozenset(
        [
            "br",
            "p",
            "div",
            "tr",
            "li",
            "ul",
            "ol",
            "table",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "blockquote",
            "pre",
            "hr",
            "title",
            "td",
            "th",
            "dd",
            "dt",
            "section",
            "article",
        ]
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.pieces.append("\n")
        elif tag in ("td", "th", "span"):
            self.pieces.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.pieces.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.pieces.append(data)


def html_text(markup: str) -> str:
    """The text a reader sees in ``markup`` (bounded by :data:`MAX_TEXT_CHARS` of input twice over)."""
    parser = _Text()
    try:
        parser.feed(markup[: 2 * MAX_TEXT_CHARS])
        parser.close()
    except Exception:  # noqa: BLE001 - HTMLParser on hostile markup: fall back to the entities decoded
        return unescape(re.sub(r"<[^>]{0,1000}>", " ", markup[: 2 * MAX_TEXT_CHARS]))
    return "".join(parser.pieces)


def _decode(data: bytes, charset: str) -> str:
    try:
        return data.decode(charset or "utf-8", "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def mail_texts(mail: Mail) -> tuple[list[str], list[str]]:
    """``(texts, filenames)`` of a message: its Subject and text parts (HTML as text), and its attachments' names."""
    texts = [mail.subject] if mail.subject else []
    names: list[str] = []
    for part in mail.parts:
        names.extend(part.filenames)
        if len(texts) >= MAX_TEXTS:
            continue
        kind = part.content_type.lower()
        if kind == "text/plain":
            texts.append(_decode(part.data[: 4 * MAX_TEXT_CHARS], part.charset))
        elif kind == "text/html":
            texts.append(html_text(_decode(part.data[: 8 * MAX_TEXT_CHARS], part.charset)))
    return texts, names


_CACHE: weakref.WeakKeyDictionary[Mail, dict[tuple[int, int], list[str]]] = weakref.WeakKeyDictionary()


def mail_candidates(
    mail: Mail, max_count: int = DEFAULT_MAX_PASSWORDS, max_length: int = DEFAULT_MAX_PASSWORD_LENGTH
) -> list[str]:
    """:func:`candidates` of a message, computed once per message and bounds (blocking: call it in a thread)."""
    by_bounds = _CACHE.setdefault(mail, {})
    key = (max_count, max_length)
    if key not in by_bounds:
        texts, names = mail_texts(mail)
        by_bounds[key] = candidates(texts, names=names, max_count=max_count, max_length=max_length)
    return list(by_bounds[key])


# --------------------------------------------------------------------------- the time the tries take


MIN_TRIES = 3
"""Tries a message always gets, whatever the time limit (never past the message deadline): the
likely candidates come first, so a loaded machine must not turn a found password into
``Encrypted.*`` (an OOXML verification takes 0.2-0.3 s, Excel's default password is tried first)."""


class Tries:
    """One decryptor's share of a message's password time.

    ``spent`` is the message's (``[seconds, tries]``, shared by every
    :class:`Tries` of the message, :func:`tries`); ``limit`` the seconds all its
    tries may take together (``None``: no limit) once the message had
    :data:`MIN_TRIES`; ``ends`` the message deadline (``time.monotonic()``),
    never passed.  The clock is checked before each
    candidate, so a try that has begun ends (one 7z or OOXML verification past
    the limit at most).  ``count`` is this decryptor's tries, ``cut`` why they
    stopped early (``''`` if they did not).
    """

    def __init__(
        self,
        limit: float | None = None,
        ends: float | None = None,
        spent: list[float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.ends, self.clock = limit, ends, clock
        self.spent = [0.0, 0.0] if spent is None else spent
        self.count = 0
        self.cut = ""

    def more(self) -> bool:
        """Whether another candidate may be tried (if not, :attr:`cut` says why)."""
        if self.ends is not None and self.clock() >= self.ends:
            self.cut = "the message deadline"
        elif self.limit is not None and self.spent[0] >= self.limit and self.spent[1] >= MIN_TRIES:
            self.cut = f"max_password_time={self.limit:g}s"
        return not self.cut

    @contextmanager
    def trying(self) -> Iterator[None]:
        """Around one try: it is counted and its time charged to the message."""
        self.count += 1
        self.spent[1] += 1
        started = self.clock()
        try:
            yield
        finally:
            self.spent[0] += self.clock() - started

    def describe(self, candidates: int) -> str:
        """``password tries cut by max_password_time=0.5s after 11 tries (20 candidates)``, or ``''``."""
        if not self.cut:
            return ""
        return f"password tries cut by {self.cut} after {self.count} tries ({candidates} candidates)"


def tries(mail: Mail, limit: float | None) -> Tries:
    """A decryptor's :class:`Tries` for ``mail``: ``limit`` seconds for all the message's tries together."""
    spent: list[float] = mail.memo.setdefault((__name__, "seconds"), [0.0, 0.0])
    return Tries(limit, message_ends(mail), spent)
