"""Fuzzing the lenient quoted-printable and base64 decoders (mime/qp.py, codecs.decode_base64_chunks,
decode_base64_zero and the base64 alternates) on their own and through ``Mail``'s views: bodies made of
the characters the readings disagree on (``=``, hex digits, ``W``/``X``/``H``, blanks, bare CR and LF),
base64 with junk groups and inner padding, and long runs of each.

Asserted per example: nothing is raised (the decoders are documented to take anything), no reading is
longer than the text it decodes (so the views' byte budget holds), the views stay within their bounds, and
time and memory are bounded (tests/helpers/fuzz.py).  Budget and the long run: tests/security/README.md.
"""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st

from mailsift.message.mail import Envelope, Mail
from mailsift.mime import codecs, qp, views
from tests.helpers import fuzz

QP_ALPHABET = "==========0123456789ABCDEFabcdefWXHZ_ \t\r\n"
"""Mostly what quoted-printable readings disagree on."""

QP_UNITS = st.sampled_from([b"=W", b"=XX", b"=H", b"= \n", b"=\t\r\n", b"=\r", b"==41", b"=4Z", b"=4", b"=3D", b"="])


@st.composite
def qp_bodies(draw: st.DrawFn) -> bytes:
    """A quoted-printable body: odd escapes among good ones, noisy bytes, sometimes a long run of one unit."""
    pieces = draw(
        st.lists(
            st.one_of(
                st.text(alphabet=QP_ALPHABET, max_size=80).map(str.encode),
                QP_UNITS,
                fuzz.noisy_bytes(40),
            ),
            max_size=40,
        )
    )
    body = b"".join(pieces)
    if draw(st.integers(0, 9)) == 0:
        body += draw(QP_UNITS) * draw(st.sampled_from([1000, 65536, 150_000]))
    return body


@st.composite
def base64_bodies(draw: st.DrawFn) -> bytes:
    """Base64 of some bytes, then junk groups, inner padding, dangling characters and odd line lengths."""
    text = base64.b64encode(draw(st.binary(max_size=600)))
    junk = draw(st.sampled_from([b"#", b"####", b"\xff\xfe", b" ", b"=", b"==", b"!@", b""]))
    size = draw(st.integers(1, 12))
    text = junk.join(text[index : index + size] for index in range(0, len(text), size))
    width = draw(st.sampled_from([76, 500, 4000, 10**6]))
    text = b"\n".join(text[index : index + width] for index in range(0, len(text), width))
    return text + draw(st.sampled_from([b"", b"Q", b"==junk", b"\n!! end !!"]))


def message(qp_body: bytes, b64_body: bytes, newline: bytes) -> bytes:
    head = (
        b"From: a@example.net\nTo: b@example.org\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="XX"\n\n--XX\n'
        b'Content-Type: application/zip; name="file.zip"\nContent-Transfer-Encoding: quoted-printable\n\n'
    )
    tail = b"\n--XX\nContent-Type: application/zip\nContent-Transfer-Encoding: base64\n\n" + b64_body + b"\n--XX--\n"
    return (head + qp_body + tail).replace(b"\n", newline)


def check_decoders(qp_body: bytes, b64_body: bytes) -> None:
    for label, decoded in qp.readings(qp_body):
        assert len(decoded) <= len(qp_body), f"the {label} reading is longer than its text"
    decoders = [qp.decode_rfc, qp.decode_parseint, qp.decode_drop]
    if qp_body.count(b"=") <= qp.MAX_CALLBACKS:  # as readings() bounds it: a Python call per invalid escape
        decoders.append(qp.decode_thunderbird)
    for decode in decoders:
        assert len(decode(qp_body)) <= len(qp_body)
    assert len(codecs.decode_base64_chunks(b64_body)) <= len(b64_body)
    assert len(codecs.decode_base64_zero(b64_body)) <= len(b64_body)
    data, defects = codecs._decode_base64(b64_body.translate(None, b"\r\n"))
    found = codecs._alternate_encodings([], "base64", b64_body, data, [type(d).__name__ for d in defects])
    for _label, decoded, _source in found:
        assert len(decoded) <= len(b64_body)


def check_mail(raw: bytes) -> None:
    list(qp.raw_bodies(raw))
    list(qp.raw_views(raw))
    with Mail(Envelope(), raw) as mail:
        seen = mail.views
        assert len(seen) <= views.MAX_VIEWS
        # the budget stops adding once spent: at most one view past it
        assert sum(len(v.data) for v in seen[:-1]) <= views.MAX_TOTAL_FACTOR * mail.size + 1024 * 1024


BOUNDS = fuzz.Bounds("decoders-qpb64", seconds=60, memory=512 * fuzz.MB, per_input_byte=200)


@given(qp_bodies(), base64_bodies(), fuzz.NEWLINES)
@fuzz.fuzz_settings(120)
def check_generated(qp_body: bytes, b64_body: bytes, newline: bytes) -> None:
    raw = message(qp_body, b64_body, newline or b"\n")
    with BOUNDS.example(len(raw)):
        check_decoders(qp_body, b64_body)
        check_mail(raw)


def test_fuzz_qp_and_base64_decoders() -> None:
    fuzz.run(check_generated, BOUNDS)


CORPUS = fuzz.Bounds("decoders-qpb64-corpus", seconds=60, memory=512 * fuzz.MB, per_input_byte=200)
FILES = fuzz.corpus_files()


@given(st.data())
@fuzz.fuzz_settings(40)
def check_corpus(data: st.DataObject) -> None:
    """Corpus messages with quoted-printable oddities spliced in."""
    raw = data.draw(fuzz.corpus_mutations(FILES)) if FILES else b""
    where = data.draw(st.integers(0, len(raw)))
    raw = raw[:where] + data.draw(QP_UNITS) * data.draw(st.integers(1, 50)) + raw[where:]
    with CORPUS.example(len(raw)):
        check_decoders(raw, raw)
        check_mail(raw)


def test_fuzz_qp_and_base64_decoders_on_corpus_messages() -> None:
    fuzz.run(check_corpus, CORPUS)
