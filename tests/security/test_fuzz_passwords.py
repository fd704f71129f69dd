"""Fuzzing the candidate-password extractor (scanners/passwords.py): generated texts mixing every keyword,
separator, quote and mention with noise, and big or hostile HTML.

Asserted per example: nothing raises, the answer has at most ``max_count`` distinct candidates of at most
``max_length`` characters, and time and memory are bounded (tests/helpers/fuzz.py).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailsift.scanners.passwords import candidates, html_text
from tests.helpers import fuzz

PIECES = st.sampled_from(
    [
        "Password",
        "pw",
        "Passwort",
        "mot de passe",
        "contraseña",
        "parola",
        "senha",
        "wachtwoord",
        "hasło",
        "heslo",
        "pass",
        "code",
        ":",
        " : ",
        "=",
        " is ",
        " ist ",
        " lautet ",
        " je ",
        " to ",
        "\n",
        "\n\n",
        " ",
        '"',
        "'",
        "“",
        "”",
        "„",
        "«",
        "»",
        "*",
        "**",
        "_",
        "`",
        "[",
        "]",
        "attached",
        "Anhang",
        "invoice.zip",
        "příloha",
        "4821",
        "Xk9q",
        "<b>",
        "</b>",
        "<p>",
        "<script>",
        "&amp;",
        "&#x",
        "\x00",
        "\u202e",
        "é",
    ]
)
TEXTS = st.lists(st.one_of(PIECES, st.text(max_size=40)), max_size=200).map("".join)
BOUNDS = fuzz.Bounds("passwords", seconds=30, memory=256 * fuzz.MB, per_input_byte=400)


@given(
    st.lists(st.one_of(TEXTS, fuzz.huge(b"Password: ").map(lambda b: b.decode())), max_size=25),
    st.lists(st.text(max_size=30), max_size=5),
    st.integers(min_value=0, max_value=30),
    st.integers(min_value=0, max_value=80),
)
@fuzz.fuzz_settings(100)
def check(texts: list[str], names: list[str], max_count: int, max_length: int) -> None:
    with BOUNDS.example(sum(len(text) for text in texts)):
        found = candidates(
            [html_text(text) if n % 2 else text for n, text in enumerate(texts)],
            names=names,
            max_count=max_count,
            max_length=max_length,
        )
    assert len(found) <= max_count
    assert len(set(found)) == len(found)
    assert all(0 < len(value) <= max_length for value in found)


def test_fuzz_password_candidates() -> None:
    fuzz.run(check, BOUNDS)
