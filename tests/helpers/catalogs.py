"""The gettext catalogs in src/mailsift/reporting/locale, as the tests that check and use them see them.

``catalog_languages()`` lists every catalog directory present (``<lang>/LC_MESSAGES/mailsift.po``),
so a catalog added by another branch is checked and rendered as soon as it is merged, whether or
not it is registered in ``LANGUAGES`` yet (a test of its own checks that it is).
"""

from __future__ import annotations

import gettext
import re
from collections.abc import Iterator

from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from mailsift.reporting.notifications import DOMAIN, LOCALE_DIR

PLACEHOLDER = re.compile(r"%\(\w+\)s|%%|\$[A-Z][A-Z_]*|\{\{?\s*\w+\s*\}?\}|</?[A-Za-z][^<>]*>")
"""What a translation must keep exactly: ``%(name)s``, a literal ``%%``, a SAGATOR ``$NAME``,
a ``{name}``/``{{ name }}`` and an HTML tag."""


def catalog_languages() -> list[str]:
    """Every language with a catalog (English, the source, has none)."""
    return sorted(path.parent.parent.name for path in LOCALE_DIR.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))


def placeholders(text: str) -> list[str]:
    """The placeholders of ``text``, sorted (a multiset: each must appear as often as in the msgid)."""
    return sorted(match.replace(" ", "") for match in PLACEHOLDER.findall(text))


def extracted_messages() -> set[str | tuple[str, ...]]:
    """What ``pybabel extract -F locale/babel.cfg`` finds (run from src/mailsift, as locale/README.md says)."""
    with open(LOCALE_DIR / "babel.cfg") as handle:
        method_map, options_map = parse_mapping_cfg(handle)
    found = extract_from_dir(str(LOCALE_DIR.parent.parent), method_map=method_map, options_map=options_map)
    return {message if isinstance(message, str) else tuple(message) for _, _, message, _, _ in found}


def template_messages(template_dir: str) -> set[str]:
    """The ``{% trans %}`` texts of the notification and digest templates."""
    options = {"extensions": "jinja2.ext.i18n", "trim_blocks": "True", "lstrip_blocks": "True"}
    found = extract_from_dir(template_dir, method_map=[("**.txt", "jinja2")], options_map={"**.txt": options})
    return {message for _, _, message, _, _ in found if isinstance(message, str)}


def read_catalog(path: str) -> Iterator[tuple[str | tuple[str, ...], tuple[str, ...], set[str]]]:
    """Each message of a ``.po``/``.pot``: its msgid (a tuple with msgid_plural), its msgstr(s), its flags."""
    with open(path, "rb") as handle:
        for message in read_po(handle):
            if message.id:
                msgid = message.id if isinstance(message.id, str) else tuple(message.id)
                strings = (message.string,) if isinstance(message.string, str) else tuple(message.string)
                yield msgid, tuple(s or "" for s in strings), set(message.flags)


def po_path(language: str) -> str:
    return str(LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po")


def compiled(language: str) -> gettext.GNUTranslations:
    """The committed ``.mo`` of ``language``, read as mailsift reads it."""
    with open(LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.mo", "rb") as handle:
        return gettext.GNUTranslations(handle)
