"""Fuzzing the MIME readers (mime/tree, mime/codecs, mime/views through ``Mail``): generated structures
(nested multiparts, broken boundaries, bad transfer encodings and charsets, RFC 2231 parameters, deep
nesting), mutations of the shared corpora's messages, and headers of megabytes of RFC 2047 encoded
words (``decode_words`` decodes a bounded prefix).

Asserted per example: reading the header, the tree, the parts, the alternates and the lenient views
raises nothing but :class:`~mailsift.errors.ContentError` — and that only for what the error tree
documents as a message's fault (recursion, memory, an undecodable text), never a bug of ours hidden
behind it; the lenient decoders of mime/codecs raise nothing at all; time and memory are bounded
(tests/helpers/fuzz.py).  Budget and the long run: tests/security/README.md.
"""

from __future__ import annotations

import base64
import email.errors
import quopri

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsift.errors import ContentError
from mailsift.message.mail import Envelope, Mail
from mailsift.mime import codecs, views
from mailsift.mime.codecs import MAX_DECODED_INPUT
from tests.helpers import fuzz

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")  # a big example, reported

MESSAGE_FAULTS = (RecursionError, MemoryError, UnicodeError, LookupError, email.errors.MessageError)
"""What ContentError may wrap: the error tree's "RecursionError, UnicodeError, MemoryError..." of a message."""


def read_everything(data: bytes) -> None:
    """Every reading a scanner can ask of a message; only a documented ContentError may come out."""
    with Mail(Envelope(), data) as mail:
        try:
            mail.headers.get("subject")
            str(mail.subject), str(mail.message_id)
            for _header in mail.headers:
                pass
            mail.tree.render()
            for _depth, node in mail.tree.walk():
                str(node.content_type)
            for part in [*mail.parts, *mail.alternates, *mail.views]:
                part.filename, part.size  # noqa: B018 - the properties are what is fuzzed
            len(mail.base64_sources)
        except ContentError as error:
            cause = error.__cause__
            assert isinstance(cause, MESSAGE_FAULTS), f"a bug behind ContentError: {cause!r}"


def decode_everything(data: bytes) -> None:
    """The lenient decoders: documented to take anything and never raise."""
    text = data.decode("utf-8", "surrogateescape")
    codecs.decode_words(text)
    codecs.extract_uuencoded(data)
    codecs.extract_yencoded(data)
    codecs.decode_base64_chunks(data)
    for encoding in ("base64", "quoted-printable", "x-uuencode", codecs.normalize_encoding(text[:40])):
        codecs.transfer_decode(encoding, data)
    codecs.base64_source_key(data)
    views.lenient_split(data)
    list(views.base64_runs(data))


GENERATED = fuzz.Bounds("mime-generated", seconds=60, memory=512 * fuzz.MB, per_input_byte=200)


@given(fuzz.mime_messages())
@fuzz.fuzz_settings(200)
def check_generated(data: bytes) -> None:
    with GENERATED.example(len(data)):
        read_everything(data)
        decode_everything(data)


def test_fuzz_mime_generated_structures() -> None:
    fuzz.run(check_generated, GENERATED)


CORPUS = fuzz.Bounds("mime-corpus", seconds=60, memory=512 * fuzz.MB, per_input_byte=200)
FILES = fuzz.corpus_files()


@given(st.data())
@fuzz.fuzz_settings(150)
def check_corpus(data: st.DataObject) -> None:
    message = data.draw(fuzz.corpus_mutations(FILES))
    with CORPUS.example(len(message)):
        read_everything(message)
        decode_everything(message)


@pytest.mark.skipif(not FILES, reason="../shared/corpora is not beside the repository")
def test_fuzz_mime_corpus_mutations() -> None:
    fuzz.run(check_corpus, CORPUS)


WORDS = fuzz.Bounds("mime-encoded-words", seconds=30, memory=512 * fuzz.MB, per_input_byte=200)
WORDS_SIZE = 2 * 1024 * 1024
"""Bytes of encoded words per example: far past MAX_DECODED_INPUT (decode_header is quadratic: 4 MB took ~50 s)."""


@st.composite
def encoded_word_headers(draw: st.DrawFn) -> bytes:
    """A message with one header of megabytes of RFC 2047 encoded words: the top Subject, a part's
    Subject, or a part's filename parameter; folded, blank-separated or run together."""
    text = draw(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12))
    if draw(st.booleans()):
        word = b"=?utf-8?B?" + base64.b64encode(text.encode()) + b"?="
    else:
        word = b"=?utf-8?Q?" + quopri.encodestring(text.encode(), header=True).replace(b"?", b"=3F") + b"?="
    separator = draw(st.sampled_from([b" ", b"\r\n ", b"\r\n\t", b""]))
    value = separator.join([word] * (WORDS_SIZE // (len(word) + len(separator))))
    head = b'From: a@example.net\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n'
    where = draw(st.sampled_from(["subject", "part subject", "filename", "name"]))
    part = b"Content-Type: text/plain\r\n"
    if where == "subject":
        head += b"Subject: " + value + b"\r\n"
    elif where == "part subject":
        part += b"Subject: " + value + b"\r\n"
    elif where == "filename":
        part += b'Content-Disposition: attachment; filename="' + value + b'"\r\n'
    else:
        part = b'Content-Type: application/octet-stream; name="' + value + b'"\r\n'
    return head + b"\r\n--b\r\n" + part + b"\r\nhello\r\n--b--\r\n"


@given(encoded_word_headers())
@fuzz.fuzz_settings(6)
def check_encoded_words(data: bytes) -> None:
    with WORDS.example(len(data)):
        read_everything(data)
        decode_everything(data)
        with Mail(Envelope(), data) as mail:
            for _depth, node in mail.tree.walk():
                for header in node.headers:
                    assert len(header.value) <= MAX_DECODED_INPUT + 64 or "=?" not in header.raw


def test_fuzz_mime_megabytes_of_encoded_words() -> None:
    fuzz.run(check_encoded_words, WORDS)
