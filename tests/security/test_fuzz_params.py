"""Fuzzing mime/params.py, the lenient MIME parameter reader behind every part's candidate filenames.

Inputs: header values built from parameter pieces (plain, quoted with escapes, RFC 2231 sections in any
order, extended values with charsets good and bad, encoded words of any charset, comments, junk, stray
quotes and semicolons, folds), the MIME fuzzer's parameters (tests/helpers/fuzz.py), random text, and
huge values; one to a dozen headers per part.

Asserted per example: nothing raises; every reading is a non-empty str of at most ``MAX_VALUE``
characters; at most ``MAX_READINGS`` readings, distinct; each splitting returns Items; time and memory
bounded (tests/helpers/fuzz.py).  And through ``Mail``: a part's filenames stay within
``2 x MAX_READINGS`` per parameter read.  Budget and the long run: tests/security/README.md.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsift.message.mail import Envelope, Mail
from mailsift.mime import params
from tests.helpers import fuzz

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

NAMES = st.sampled_from(["filename", "name", "FileName", "filename*", "filename*0", "filename*1*", "name*0*",
                         "filename*00", "filename*-1", "filename*99999", "filename**", "x", "", "file\\name",
                         '"filename"', "filename (c)", "name\udcff"])  # fmt: skip
VALUES = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="abc.zip%'\"\\;=()?*- \t\r\n", max_size=40),
    st.sampled_from(["utf-8''fi%6Ce.zip", "utf-16''%FF%FEf%00", "x-unknown''%41", "'''", "%", "%G0", "a'b",
                     "=?utf-16?B?//5mAA==?=", "=?utf-16be?B?AGYAaQ==?=", "=?x?B?QQ==?=", "=?utf-8?Q?=C3?=",
                     "=?unicode-escape?Q?\\x41?=", "=?utf-8?B?", "=??B??=", "=?utf-8*en?Q?a?=", "\\", '"']),
    fuzz.encoded_word(),
)  # fmt: skip
GLUE = st.sampled_from(["; ", ";", " ", "", ";\r\n ", "\r\n\t", " (comment) ; ", ";;", '"; '])


@st.composite
def piece(draw: st.DrawFn) -> str:
    name = draw(NAMES)
    value = draw(VALUES)
    form = draw(st.sampled_from(["token", "quoted", "unterminated", "spaced", "commented", "bare", "fuzz"]))
    if form == "quoted":
        return f'{name}="{value}"'
    if form == "unterminated":
        return f'{name}="{value}'
    if form == "spaced":
        return f"{name} = {value}"
    if form == "commented":
        return f"{name} (x)= {value} (y)"
    if form == "bare":
        return value
    if form == "fuzz":
        return draw(fuzz.parameter(draw(st.sampled_from(["filename", "name"]))))
    return f"{name}={value}"


@st.composite
def header_value(draw: st.DrawFn) -> str:
    head = draw(st.sampled_from(["attachment", "inline", "application/octet-stream", "", "text/plain", ";"]))
    text = head
    for each in draw(st.lists(piece(), max_size=12)):
        text += draw(GLUE) + each
    return text


HEADERS = st.one_of(
    st.lists(header_value(), min_size=1, max_size=12),
    st.lists(st.text(max_size=300), min_size=1, max_size=3),
    st.builds(lambda n, v: [f"attachment; filename={v * n}"], st.sampled_from([10, 5000, 40000]), VALUES),
    st.builds(
        lambda n: ["attachment; " + "; ".join(f'filename*{i}="{i}"' for i in reversed(range(n)))],
        st.sampled_from([1, 64, 65, 1000, 5000]),
    ),
)


def check_readings(headers: list[str]) -> None:
    for param in ("filename", "name"):
        readings = params.parameter_readings(headers, param)
        assert len(readings) <= params.MAX_READINGS
        assert len(set(readings)) == len(readings)
        for reading in readings:
            assert isinstance(reading, str)
            assert reading
            assert len(reading) <= params.MAX_VALUE
    for text in headers:
        text = text[: params.MAX_HEADER]  # as parameter_readings gives them: a longer header is cut first
        for splitting in params.SPLITTINGS:
            items = splitting(text)
            assert len(items) <= params.MAX_ITEMS
            assert all(isinstance(item, params.Item) for item in items)
        params.decode_encoded_words(text)


READINGS = fuzz.Bounds("params-readings", seconds=30, memory=256 * fuzz.MB, per_input_byte=200)


@given(HEADERS)
@fuzz.fuzz_settings(400)
def check_generated(headers: list[str]) -> None:
    with READINGS.example(sum(len(h) for h in headers)):
        check_readings(headers)


def test_fuzz_params_readings() -> None:
    fuzz.run(check_generated, READINGS)


PARTS = fuzz.Bounds("params-parts", seconds=60, memory=512 * fuzz.MB, per_input_byte=200)


@given(st.lists(header_value(), min_size=1, max_size=6), st.lists(header_value(), max_size=6))
@fuzz.fuzz_settings(150)
def check_parts(dispositions: list[str], types: list[str]) -> None:
    lines = [f"Content-Disposition: {d}" for d in dispositions] + [f"Content-Type: {t}" for t in types]
    data = ("\r\n".join(lines) + "\r\n\r\nbody\r\n").encode("utf-8", "surrogateescape")
    with PARTS.example(len(data)), Mail(Envelope(), data) as mail:
        for part in mail.parts:
            assert len(part.filenames) <= 3 * 2 * params.MAX_READINGS
            assert all(len(name) <= params.MAX_VALUE for name in part.filenames)
        for _depth, node in mail.tree.walk():
            assert len(node.disposition_names) <= 2 * params.MAX_READINGS


def test_fuzz_params_through_mail() -> None:
    fuzz.run(check_parts, PARTS)
