"""Guards for the header decoding tests (tests/unit/mime/test_codecs.py, test_tree.py)."""

from __future__ import annotations

from email.header import decode_header

import pytest

from mailsift.mime import codecs
from mailsift.mime.codecs import MAX_DECODED_INPUT


def guard_decode_header(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """decode_header as mime.codecs calls it, refusing (at once) more than MAX_DECODED_INPUT
    characters; the list it returns gets the length of every value it is called on."""
    sizes: list[int] = []

    def guarded(value: str) -> list[tuple[bytes | str, str | None]]:
        sizes.append(len(value))
        assert len(value) <= MAX_DECODED_INPUT, f"decode_header called on {len(value)} characters"
        return decode_header(value)

    monkeypatch.setattr(codecs, "decode_header", guarded)
    return sizes
