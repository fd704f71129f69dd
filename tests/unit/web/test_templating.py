"""The pages' language (mailsift.web.templating): the user's preference, else Accept-Language among the
catalog languages, else webq(language=...); gettext installed per request, in-process ASGI on SQLite."""

from __future__ import annotations

import functools
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mailsift.errors import ConfigError
from mailsift.reporting.notifications import LANGUAGES, translations
from mailsift.settings import Settings
from mailsift.storage import db
from mailsift.web import templating, users
from mailsift.web.app import create_app
from mailsift.web.service import webq
from mailsift.web.templating import LANGUAGE_NAMES, Text, accept_language, page_language, translated
from mailsift.web.webconfig import WebConfig
from tests.helpers.catalogs import catalog_languages, compiled
from tests.helpers.webq import page_token

PASSWORD = "a long enough password"


def test_accept_language_is_read_by_quality_then_order() -> None:
    assert accept_language("de-AT,de;q=0.9,en;q=0.8") == ["de-at", "de", "en"]
    assert accept_language("en;q=0.5, sk, cs;q=0.7") == ["sk", "cs", "en"]
    assert accept_language("fr;q=0, es;q=bad, de") == ["de"]  # q=0: not wanted; a broken q: not either
    assert accept_language("") == []
    assert len(accept_language(",".join(["x"] * 10_000))) <= 50  # bounded


@pytest.mark.parametrize(
    ("preference", "header", "default", "expected"),
    [
        ("sk", "de", "en", "sk"),  # the user's preference wins
        ("", "de-AT,en;q=0.5", "en", "de"),  # the browser's, by its primary tag
        ("", "ja, es;q=0.4", "en", "es"),  # the first the catalogs have
        ("", "ja, ko", "cs", "cs"),  # none of the catalogs': webq's default
        ("", "", "de", "de"),
        ("", "*", "es", "es"),
        ("xx", "cs", "en", "cs"),  # an unknown stored preference counts as none
    ],
)
def test_page_language(preference: str, header: str, default: str, expected: str) -> None:
    assert page_language(preference, header, default) == expected


def test_a_language_with_a_region_is_found_by_its_whole_tag() -> None:
    assert page_language("", "zh-CN,zh;q=0.9", "en", ("en", "zh_CN")) == "zh_CN"
    assert page_language("", "zh-TW,zh;q=0.9", "en", ("en", "zh_CN")) == "en"  # not the same script
    assert page_language("", "pt-BR,en;q=0.5", "en") == "pt"
    assert page_language("zh_CN", "de", "en", ("en", "de", "zh_CN")) == "zh_CN"


def test_every_catalog_can_be_chosen_and_has_its_name() -> None:
    assert set(users.LANGUAGES) == set(LANGUAGES) == {"en", *catalog_languages()}
    assert set(LANGUAGE_NAMES) >= set(LANGUAGES)


def test_webq_language_is_a_catalog_language() -> None:
    assert webq(language="de").config.language == "de"
    assert webq().config.language == "en"
    with pytest.raises(ConfigError, match="language 'ja' is not one of"):
        webq(language="ja")


@pytest.fixture
def settings() -> Iterator[Settings]:
    state = tempfile.mkdtemp(dir="/tmp", prefix="mailsift-webi18n-")
    database = db.sqlite()
    database.configure(state)
    add = functools.partial(
        users.add_user,
        login="alice",
        password_hash=users.hash_password(PASSWORD),
        is_admin=False,
        addresses=["alice@example.org"],
        now=time.time(),
    )
    database.call(add)
    yield Settings(state_dir=state, database=database)
    database.dispose()


def _client(settings: Settings, language: str = "en") -> httpx.AsyncClient:
    app = create_app(settings, secret="k" * 40, config=WebConfig(language=language))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://webq.test")


async def test_the_login_page_speaks_the_browsers_language(settings: Settings) -> None:
    async with _client(settings) as client:
        german = (await client.get("/login", headers={"Accept-Language": "de-DE,de;q=0.9"})).text
        assert '<html lang="de">' in german
        assert "Anmelden" in german
        assert "Benutzername" in german
        assert "Log in" not in german
        english = (await client.get("/login", headers={"Accept-Language": "ja"})).text
        assert '<html lang="en">' in english
        assert "Log in" in english
    async with _client(settings, language="sk") as client:
        slovak = (await client.get("/login", headers={"Accept-Language": "ja"})).text
        assert "Prihlásiť sa" in slovak  # webq(language="sk"): nothing better known


@pytest.mark.parametrize("language", catalog_languages())
async def test_a_page_renders_in_every_catalog_language(settings: Settings, language: str) -> None:
    words = compiled(language)
    assert words.gettext("Log in") != "Log in"
    async with _client(settings) as client:
        tag = language.replace("_", "-")
        page = await client.get("/login", headers={"Accept-Language": f"{tag},en;q=0.1"})
        assert page.status_code == 200
        assert f'<html lang="{language.replace("_", "-")}">' in page.text  # BCP 47: zh-CN
        assert words.gettext("Log in") in page.text
        assert ">Log in<" not in page.text
        answer = await client.post(
            "/login",
            data={"login": "alice", "password": "wrong password!", "csrf_token": page_token(page.text)},
            headers={"Accept-Language": tag},
        )
        assert answer.status_code == 401
        assert words.gettext("Wrong login or password.") in answer.text.replace("&#39;", "'")


async def test_messages_from_the_code_are_translated_and_escaped(settings: Settings) -> None:
    async with _client(settings) as client:
        page = (await client.get("/login", headers={"Accept-Language": "cs"})).text
        answer = await client.post(
            "/login",
            data={"login": "alice", "password": "wrong password!", "csrf_token": page_token(page)},
            headers={"Accept-Language": "cs"},
        )
        assert answer.status_code == 401
        assert "Nesprávné jméno nebo heslo." in answer.text


async def test_the_users_preference_overrides_the_browser(settings: Settings) -> None:
    async with _client(settings) as client:
        token = page_token((await client.get("/login")).text)
        await client.post("/login", data={"login": "alice", "password": PASSWORD, "csrf_token": token})
        prefs = await client.get("/prefs", headers={"Accept-Language": "de"})
        assert "Einstellungen" in prefs.text  # no preference yet: the browser's language
        assert "Sprache des Browsers" in prefs.text
        saved = await client.post(
            "/prefs",
            data={"language": "es", "rows": "50", "csrf_token": page_token(prefs.text)},
            headers={"Accept-Language": "de"},
        )
        assert saved.status_code == 303
        page = (await client.get("/prefs", headers={"Accept-Language": "de"})).text
        assert '<html lang="es">' in page
        assert "Preferencias guardadas." in page  # the flash, translated
        assert "Einstellungen" not in page
        back = await client.post(
            "/prefs",
            data={"language": "", "rows": "50", "csrf_token": page_token(page)},
            headers={"Accept-Language": "de"},
        )
        assert back.status_code == 303
        assert '<html lang="de">' in (await client.get("/prefs", headers={"Accept-Language": "de"})).text


# --------------------------------------------------------------------------- texts of the code


def test_a_text_of_the_code_is_english_as_a_str_and_translated_with_its_values() -> None:
    released = Text("Released to %(targets)s.", targets="a@example.org, b@example.org")
    assert released == "Released to a@example.org, b@example.org."  # what logs and old callers see
    assert translated(translations("de").gettext, released) == "Freigegeben an a@example.org, b@example.org."
    assert translated(translations("en").gettext, released) == released
    nested = Text("Refused: %(reason)s", reason=Text("None of the recipients is yours."))
    assert translated(translations("sk").gettext, nested) == "Odmietnuté: Žiadny z príjemcov nie je váš."
    assert translated(translations("es").gettext, "Preferences saved.") == "Preferencias guardadas."  # a msgid
    assert translated(translations("es").gettext, "100% not a msgid") == "100% not a msgid"  # no % formatting


def test_a_translation_that_lost_a_placeholder_falls_back_to_english() -> None:
    text = Text("Released to %(targets)s.", targets="a@example.org")
    assert translated(lambda message: "Freigegeben an %(ziel)s.", text) == "Released to a@example.org."


def test_a_text_survives_the_session_and_a_forged_one_is_empty() -> None:
    text = Text("Refused: %(reason)s", reason=Text("Message %(id)s deleted.", id="q-1"))
    loaded = Text.load(text.dump())
    assert isinstance(loaded, Text)
    assert translated(translations("cs").gettext, loaded) == "Odmítnuto: Zpráva q-1 je smazána."
    assert Text.load("plain text") == "plain text"
    assert Text.load(["Released to %(targets)s.", {"other": "x"}]) == ""  # the values do not fit
    assert Text.load(["x", "not a dict"]) == ""
    assert Text.load(42) == ""


ACCESSIBLE_TEXT = re.compile(r'\b(aria-label|title|alt)="([^"]*)"')


def test_every_accessible_name_in_the_templates_is_translated() -> None:
    """A screen reader reads ``aria-label``, ``title`` and ``alt`` too (the track pager's "Pages" was English)."""
    templates = Path(templating.__file__).parent / "templates"
    untranslated = [
        f"{path.name}: {attribute}={value!r}"
        for path in sorted(templates.glob("*.html"))
        for attribute, value in ACCESSIBLE_TEXT.findall(path.read_text(encoding="utf-8"))
        if re.search(r"[A-Za-z]", value) and not re.fullmatch(r"\{\{ _\(('[^']*'|\"[^\"]*\")\) \}\}", value.strip())
    ]
    assert untranslated == []
    assert translations("de").gettext("Pages") == "Seiten"
