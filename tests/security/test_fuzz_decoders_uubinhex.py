"""Fuzzing the BinHex 4.0 decoder (mailsift.mime.binhex) and the uuencode transfer decodings
(bare lines, begin/end blocks), alone and inside messages read with every view.

Asserted per example: nothing raises; a BinHex decoding never returns more than its ``limit``
(nor, by default, more than twice its input plus 1 MB, the views' budget); time and memory are
bounded (tests/helpers/fuzz.py).
"""

from __future__ import annotations

import binascii

from hypothesis import given
from hypothesis import strategies as st

from mailsift.message.mail import Envelope, Mail
from mailsift.mime import binhex, codecs
from tests.helpers import fuzz
from tests.helpers.binhex import binhex as encode_binhex
from tests.helpers.binhex import six_bit


@st.composite
def binhex_texts(draw: st.DrawFn) -> bytes:
    """BinHex texts: well formed (random names, forks, CRCs spoilt), then mutated; or alphabet noise, RLE bombs."""
    kind = draw(st.sampled_from(["valid", "valid", "noise", "bomb"]))
    if kind == "noise":
        return (
            b":"
            + draw(
                st.binary(max_size=400).map(lambda b: b.translate(bytes(binhex.ALPHABET[i % 64] for i in range(256))))
            )
            + b":"
        )
    if kind == "bomb":  # a run-length bomb: every pair doubles nothing but repeats 255 times
        stream = b"\x05file\x00" + b"a" + b"\x90\xff" * draw(st.integers(1, 20_000))
        return b":" + six_bit(stream) + b":"
    text = encode_binhex(
        draw(
            st.text(min_size=1, max_size=63)
            .filter(lambda n: len(n.encode("mac_roman", "replace")) <= 63)
            .map(lambda n: n.encode("mac_roman", "replace").decode("mac_roman"))
        ),
        draw(st.binary(max_size=2000)),
        draw(st.binary(max_size=200)),
        header_line=draw(st.booleans()),
        line_length=draw(st.sampled_from([64, 1, 7, 1000])),
        newline=draw(st.sampled_from([b"\n", b"\r\n", b"\r"])),
        compress=draw(st.booleans()),
        bad_crc=draw(st.sampled_from(["", "header", "data", "resource"])),
    )
    return draw(fuzz.mutated(text))


def uu_texts() -> st.SearchStrategy[bytes]:
    def lines(data: bytes) -> bytes:
        return b"".join(binascii.b2a_uu(data[i : i + 45]) for i in range(0, len(data), 45))

    return st.one_of(
        st.binary(max_size=500).map(lines),
        st.binary(max_size=500).map(lambda d: b"begin 644 x.zip\n" + lines(d) + b"`\nend\n"),
        st.text(alphabet=" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`\r\n", max_size=600).map(
            str.encode
        ),
    ).flatmap(fuzz.mutated)


DECODERS = fuzz.Bounds("uubinhex-decoders", seconds=30, memory=256 * fuzz.MB, per_input_byte=200)


@given(st.one_of(binhex_texts(), uu_texts(), fuzz.noisy_bytes(300)), st.integers(0, 1 << 20))
@fuzz.fuzz_settings(300)
def check_decoders(data: bytes, limit: int) -> None:
    with DECODERS.example(len(data)):
        found = binhex.find_binhex(data, limit)
        assert sum(len(f.data) + len(f.resource) for f in found) <= limit + max(
            (len(f.data) + len(f.resource) for f in found), default=0
        )
        for each in binhex.find_binhex(data):
            assert len(each.data) + len(each.resource) <= binhex.default_limit(len(data))
        stream, _ = binhex.rle_expand(data, limit)
        assert len(stream) <= limit
        codecs.decode_uu_lines(data)
        codecs.extract_uuencoded(data)
        for encoding in ("x-uuencode", "uue", "x-binhex40", "binhex"):
            codecs.transfer_decode(encoding, data)


def test_fuzz_binhex_and_uu_decoders() -> None:
    fuzz.run(check_decoders, DECODERS)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """A message whose attachment is BinHex or uuencode under one of the types/encodings that select a reading."""
    body = draw(st.one_of(binhex_texts(), uu_texts()))
    content_type = draw(
        st.sampled_from(
            ["application/mac-binhex40", "text/plain", "application/octet-stream; name=a.hqx", "application/zip"]
        )
    )
    cte = draw(st.sampled_from(["7bit", "x-uuencode", "x-binhex40", "uue (c)", "binhex", "base64"]))
    if cte == "base64":
        body = binascii.b2a_base64(body)
    return (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: '
        + content_type.encode()
        + b"\r\nContent-Transfer-Encoding: "
        + cte.encode()
        + b"\r\n\r\n"
        + body
        + b"\r\n--b--\r\n"
    )


MESSAGES = fuzz.Bounds("uubinhex-messages", seconds=60, memory=512 * fuzz.MB, per_input_byte=200)


@given(messages())
@fuzz.fuzz_settings(150)
def check_messages(data: bytes) -> None:
    with MESSAGES.example(len(data)), Mail(Envelope(), data) as mail:
        views = mail.views
        assert sum(len(view.data) for view in views) <= 2 * mail.size + 1024 * 1024 + max(
            (len(view.data) for view in views), default=0
        )
        for view in views:
            view.filename  # noqa: B018 - the property is what is read


def test_fuzz_messages_with_binhex_and_uu_parts() -> None:
    fuzz.run(check_messages, MESSAGES)
