"""Candidate passwords read from a message's text: phrasings in each language, quoted and bold forms, bounds."""

from __future__ import annotations

import pytest

from mailsift.message.mail import Mail
from mailsift.scanners.passwords import MIN_TRIES, Tries, candidates, html_text, mail_candidates, tries
from tests.helpers.encrypted import mail_with_password

PHRASINGS = {
    "en": [
        "Password: 4821",
        "pw 4821",
        "PW: 4821",
        "The password is 4821.",
        "Password for the attachment:\n    4821",
        "pwd=4821",
        "Passcode - 4821",
    ],
    "de": ["Passwort: 4821", "Das Passwort lautet 4821", "Kennwort: 4821", "Passwort für das Archiv ist 4821"],
    "fr": ["mot de passe : 4821", "Le mot de passe est 4821", "Mot de passe du fichier : «4821»", "mdp: 4821"],
    "es": ["contraseña: 4821", "La contraseña es 4821", "Contraseña del archivo adjunto: 4821", "clave: 4821"],
    "it": ["password/parola: 4821", "La password è 4821", "parola chiave: 4821", "Parola d'ordine: 4821"],
    "pt": ["senha: 4821", "A senha é 4821", "Senha do arquivo: 4821", "palavra-passe: 4821"],
    "nl": ["wachtwoord: 4821", "Het wachtwoord is 4821", "Wachtwoord van de bijlage: 4821"],
    "pl": ["hasło: 4821", "Hasło do pliku to 4821", "Haslo: 4821", "Hasło jest 4821"],
    "cs": ["heslo: 4821", "Heslo k archivu je 4821", "Heslo k souboru: 4821"],
    "sk": ["heslo: 4821", "Heslo k prílohe je 4821", "Heslo k súboru: 4821"],
}


@pytest.mark.parametrize(
    ("language", "text"), [(language, text) for language, texts in PHRASINGS.items() for text in texts]
)
def test_each_language_gives_the_password_first(language: str, text: str) -> None:
    found = candidates(["Hello,\n", f"Invoice attached.\n{text}\nRegards\n"])
    assert found[:1] == ["4821"], (language, found)


@pytest.mark.parametrize(
    ("text", "password"),
    [
        ('Password: "my pass 12"', "my pass 12"),
        ("Password: 'Xk9#q'", "Xk9#q"),
        ("Passwort: „Geheim1“", "Geheim1"),
        ("Password: “s3cret”", "s3cret"),
        ("PW: **Xk9q**", "Xk9q"),
        ("Password: *Xk9q*", "Xk9q"),
        ("Password: `a-b-c`", "a-b-c"),
        ("Password: 4821.", "4821"),
        ("(password: 4821)", "4821"),
    ],
)
def test_quoted_and_bold_forms(text: str, password: str) -> None:
    assert candidates([text])[:1] == [password]


def test_html_bold_password_reads_as_text() -> None:
    text = html_text("<p>Invoice</p><p>Password: <b>4821</b></p><script>pw='nope'</script>")
    assert candidates([text]) == ["4821"]


def test_bare_token_next_to_the_attachment() -> None:
    assert candidates(["Invoice attached, open it with 4821."]) == ["4821"]
    assert candidates(["Please see invoice.zip\n\nXk9qz\n"], names=["invoice.zip"]) == ["Xk9qz"]
    # Far from any mention, a number is not a candidate; nor is a word that only follows a keyword.
    assert candidates(["Meeting at room 4821.\n"]) == []
    assert candidates(["The password is in the next email."]) == []
    assert candidates(["see attached\n"]) == []


def test_keyword_candidates_come_before_bare_tokens() -> None:
    found = candidates(["Attached: invoice 2024-77\nPassword: Zq81\n"])
    assert found[0] == "Zq81"
    assert "2024-77" in found


def test_at_most_max_count_candidates() -> None:
    text = "\n".join(f"Password: secret{n}" for n in range(21))
    found = candidates([text])
    assert found == [f"secret{n}" for n in range(20)]
    assert candidates([text], max_count=3) == ["secret0", "secret1", "secret2"]
    assert candidates([text], max_count=0) == []


def test_longer_than_max_length_is_dropped_not_cut() -> None:
    long = "x" * 64 + "1"
    assert candidates([f"Password: {long}\nPassword: 4821"]) == ["4821"]
    assert candidates([f"Password: {long[:64]}"]) == [long[:64]]
    assert candidates(["Password: abcdef"], max_length=5) == []


def test_duplicates_count_once() -> None:
    assert candidates(["Password: 4821", "pw 4821", "Passwort: 4821"]) == ["4821"]


def test_only_the_first_texts_and_characters_are_read() -> None:
    padding = "filler text " * 10000  # past MAX_TEXT_CHARS
    assert candidates([padding + "\nPassword: 4821"]) == []
    assert candidates(["nothing"] * 20 + ["Password: 4821"]) == []


def test_mail_candidates_reads_subject_plain_and_html() -> None:
    raw = mail_with_password(
        b"PK\x03\x04junk",
        "invoice.zip",
        body="Invoice attached.\n",
        subject="Invoice (pw 1111)",
        html="<p>Password: <strong>2222</strong></p>",
    )
    with Mail(data=raw) as mail:
        found = mail_candidates(mail)
    assert set(found[:2]) == {"1111", "2222"}


def test_texts_naming_the_attachment_come_first() -> None:
    texts = ["Password: 1111", "Here is invoice.zip, password: 2222", "See the attached file, password: 3333"]
    assert candidates(texts, names=["invoice.zip"]) == ["2222", "3333", "1111"]
    # Labelled phrasings still come before bare tokens, whichever text they are in.
    assert candidates(["Password: 1111", "invoice.zip 4444"], names=["invoice.zip"]) == ["1111", "4444"]


def test_tries_share_the_message_time_and_stop_at_the_deadline() -> None:
    now = [0.0]
    spent = [0.0, 0.0]  # the message's seconds and tries
    first = Tries(1.0, spent=spent, clock=lambda: now[0])
    while first.more():
        with first.trying():
            now[0] += 0.3
    assert (first.count, first.cut) == (4, "max_password_time=1s")
    assert first.describe(20) == "password tries cut by max_password_time=1s after 4 tries (20 candidates)"
    second = Tries(1.0, spent=spent, clock=lambda: now[0])  # another archive of the same message
    assert not second.more()
    assert second.describe(20).endswith("after 0 tries (20 candidates)")
    late = Tries(None, ends=now[0], clock=lambda: now[0])
    assert not late.more()
    assert late.cut == "the message deadline"
    free = Tries(None, clock=lambda: now[0])
    assert free.more()
    assert free.describe(3) == ""


def test_a_loaded_machine_still_gets_the_first_tries_but_never_past_the_deadline() -> None:
    """Each try slower than the whole limit (a busy machine, an OOXML verification): the first
    MIN_TRIES candidates (the likely ones) are still tried, so load does not turn a password that
    the mail gives into Encrypted.*; the message deadline still stops them."""
    now = [0.0]
    slow = Tries(0.1, clock=lambda: now[0])
    while slow.more():
        with slow.trying():
            now[0] += 1.0
    assert (slow.count, slow.cut) == (MIN_TRIES, "max_password_time=0.1s")
    deadline = Tries(0.1, ends=1.5, clock=lambda: now[0] - 3.0)  # 1.5 s left of the message
    while deadline.more():
        with deadline.trying():
            now[0] += 1.0
    assert (deadline.count, deadline.cut) == (2, "the message deadline")


def test_tries_of_a_mail_share_its_time() -> None:
    with Mail(data=b"Subject: x\n\nPassword: 1\n") as mail:
        one, two = tries(mail, 0.5), tries(mail, 0.5)
        with one.trying():
            pass
        assert one.spent is two.spent
        assert one.spent[0] >= 0.0
