"""What the fuzzers found, each kept as the minimal example that showed it (tests/security/test_fuzz_*.py).

1. A broken base64 encoded word (``Subject: =?utf-8?b?A?=``) made ``email.header.decode_header``
   raise ``HeaderParseError``, which ``mime.codecs.decode_words`` did not catch: reading the header
   block failed, so every such message was answered 451 CONTENT_FAILED, again on every retry.
2. An RFC 2231 parameter whose charset holds a NUL (``filename*=ascii\\0''%41``) made
   ``email.utils.collapse_rfc2231_value`` raise ``ValueError`` ("embedded null character"), which
   ``mime.tree._param_values`` did not catch: the MIME tree failed, the same 451 forever.
3. Not fixed (xfail): the same NUL in the ``charset`` parameter (``charset*=ascii\\0''x``) fails in the
   standard library's ``get_content_charset`` under ``mime.tree.decode_leaf``; the fuzzer also saw
   ``TypeError: decode() argument 'encoding' must be str, not tuple`` there (an RFC 2231 charset read as
   a tuple; no minimal example kept yet).  Both: ContentError, 451 CONTENT_FAILED on every retry.
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


@pytest.mark.xfail(strict=True, reason="finding 3: a NUL in an RFC 2231 charset fails decode_leaf (ContentError, 451)")
def test_rfc2231_charset_parameter_with_a_nul_is_read() -> None:
    data = b"Content-Type: text/plain; charset*=ascii\0''x\r\n\r\nbody\r\n"
    with Mail(Envelope(), data) as mail:
        (part,) = mail.parts
        assert part.data == b"body\r\n"
