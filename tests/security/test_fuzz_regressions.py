"""What the fuzzers found, each kept as the minimal example that showed it (tests/security/test_fuzz_*.py).

1. A broken base64 encoded word (``Subject: =?utf-8?b?A?=``) made ``email.header.decode_header``
   raise ``HeaderParseError``, which ``mime.codecs.decode_words`` did not catch: reading the header
   block failed, so every such message was answered 451 CONTENT_FAILED, again on every retry.
2. An RFC 2231 parameter whose charset holds a NUL (``filename*=ascii\\0''%41``) made
   ``email.utils.collapse_rfc2231_value`` raise ``ValueError`` ("embedded null character"), which
   ``mime.tree._param_values`` did not catch: the MIME tree failed, the same 451 forever.
3. The same NUL in the ``charset`` parameter (``charset*=ascii\\0''x``) failed in the standard
   library's ``get_content_charset`` (the fuzzer also saw ``TypeError: decode() argument 'encoding'
   must be str, not tuple`` there); and RFC 2231 continuations mixing ``name*`` and ``name*0``
   (``boundary*0=a; boundary*=utf-8''b``) made ``email.utils.decode_params`` sort None against int
   (TypeError) — inside the feed parser itself, for a boundary.  Each: ContentError, 451 on every
   retry.  Fixed by parsing on ``mime.tree.LenientMessage``: such a parameter reads as absent.
"""

from __future__ import annotations

import pytest

from mailsift.message.mail import Envelope, Mail
from mailsift.mime.codecs import decode_words


@pytest.mark.parametrize("word", ["=?utf-8?b?A?=", "=?utf-8?b?A===?="])
def test_broken_base64_encoded_word_is_kept_as_written(word: str) -> None:
    assert decode_words(word) == word
    with Mail(Envelope(), f"Subject: {word}\r\n\r\nbody\r\n".encode()) as mail:
        assert mail.subject == word
        assert mail.tree.render()


@pytest.mark.parametrize("header", ["Content-Disposition: attachment; filename", "Content-Type: text/plain; name"])
def test_rfc2231_charset_with_a_nul_reads_the_value_as_written(header: str) -> None:
    data = f"{header}*=ascii\0''%41\r\n\r\nbody\r\n".encode()
    with Mail(Envelope(), data) as mail:
        (part,) = mail.parts
        assert part.filename == "A"  # the value, without its unusable charset


def test_rfc2231_charset_parameter_with_a_nul_is_read() -> None:
    data = b"Content-Type: text/plain; charset*=ascii\0''x\r\n\r\nbody\r\n"
    with Mail(Envelope(), data) as mail:
        (part,) = mail.parts
        assert part.data == b"body\r\n"


@pytest.mark.parametrize(
    "header",
    [
        "Content-Type: multipart/mixed; boundary*0=a; boundary*=utf-8''b",
        "Content-Type: text/plain; charset*0=a; charset*=utf-8''b",
        "Content-Type: text/plain; name*0=a; name*=utf-8''b",
        "Content-Disposition: attachment; filename*0=a; filename*=utf-8''b",
    ],
)
def test_mixed_rfc2231_continuations_read_as_absent(header: str) -> None:
    data = f"{header}\r\n\r\nbody\r\n".encode()
    with Mail(Envelope(), data) as mail:
        assert mail.tree.render()
        assert [part.data for part in mail.parts] == [b"body\r\n"]


@pytest.mark.parametrize("charset", [b"charset*=utf-8''utf-8", b'charset="utf\0-8"'])
def test_an_odd_charset_on_a_non_ascii_body_is_read(charset: bytes) -> None:
    """get_payload() decoded with get_param("charset") as is: a tuple (TypeError), a NUL (ValueError)."""
    data = b"Content-Type: text/plain; " + charset + b"\r\n\r\nbody \xe9\r\n"
    with Mail(Envelope(), data) as mail:
        assert mail.tree.render()
        assert [part.data for part in mail.parts] == [b"body \xe9\r\n"]


@pytest.mark.parametrize("charset", ["unicode-escape", "raw-unicode-escape", "idna"])
def test_an_encoded_word_in_a_python_codec_is_kept_as_written(charset: str) -> None:
    """Found by the MIME fuzzer: ``=?unicode-escape?q?...?=`` ran Python's escape decoder on the
    header (and warned on a bad escape); no mail is written in these."""
    word = f"=?{charset}?q?\\x41?="
    assert decode_words(word) == word


def test_a_boundary_with_a_nul_in_its_rfc2231_charset_is_read_as_written() -> None:
    """Found by the long run (corpus mutations): mime.tree._boundaries let the ValueError out."""
    data = b"Content-Type: multipart/mixed; boundary*=ascii\0''b1\r\n\r\n--b1\r\n\r\nbody\r\n--b1--\r\n"
    with Mail(Envelope(), data) as mail:
        assert mail.tree.render()


def test_a_body_in_a_python_codec_is_not_run_through_it() -> None:
    """Found by the long run: get_payload decoded a non-ASCII body with charset=unicode-escape."""
    data = b"Content-Type: text/plain; charset=unicode-escape\r\n\r\n\\x41 \xe9\r\n"
    with Mail(Envelope(), data) as mail:
        assert mail.tree.render()
        assert [part.data for part in mail.parts] == [b"\\x41 \xe9\r\n"]
