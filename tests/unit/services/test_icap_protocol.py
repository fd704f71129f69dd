"""ICAP's wire format: the head, Encapsulated, chunk-size lines, the block page and the object as a mail."""

from __future__ import annotations

import email
import email.policy
import os
import stat
from pathlib import Path

import pytest

from mailsift.services.icap_protocol import (
    MAX_CHUNK_LINE,
    IcapProtocolError,
    ObjectMail,
    block_page,
    content_length,
    object_name,
    object_type,
    parse_chunk_line,
    parse_encapsulated,
    parse_head,
    parse_http_head,
    request_url,
    split_sections,
)


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(block: bytes) -> int:
    with pytest.raises(IcapProtocolError) as raised:
        parse_head(block)
    return raised.value.status


def test_a_respmod_head_is_parsed() -> None:
    request = parse_head(
        head(
            "RESPMOD icap://127.0.0.1:1344/respmod ICAP/1.0",
            "Host: 127.0.0.1:1344",
            "Encapsulated: req-hdr=0, res-hdr=137, res-body=296",
            "Preview: 1024",
            "Allow: 204, trailers",
            "X-Client-IP: 192.0.2.7",
        )
    )
    assert (request.method, request.service) == ("RESPMOD", "respmod")
    assert request.encapsulated == [("req-hdr", 0), ("res-hdr", 137), ("res-body", 296)]
    assert (request.preview, request.allow_204, request.keep_alive) == (1024, True, True)
    assert (request.body, request.header_bytes) == ("res-body", 296)
    assert request.get("x-client-ip") == "192.0.2.7"


def test_options_without_encapsulated_and_connection_close() -> None:
    request = parse_head(head("OPTIONS icap://h/reqmod ICAP/1.0", "Connection: close"))
    assert (request.method, request.service, request.encapsulated, request.keep_alive) == (
        "OPTIONS",
        "reqmod",
        [],
        False,
    )
    assert request.preview is None
    assert not request.allow_204


@pytest.mark.parametrize(
    ("block", "status"),
    [
        (head("GET icap://h/respmod ICAP/1.0"), 501),
        (head("RESPMOD icap://h/respmod ICAP/1.1", "Encapsulated: null-body=0"), 505),
        (head("RESPMOD icap://h/respmod HTTP/1.1"), 400),
        (head("RESPMOD http://h/respmod ICAP/1.0", "Encapsulated: null-body=0"), 400),
        (head("RESPMOD icap://h/respmod ICAP/1.0"), 400),  # no Encapsulated
        (head("RESPMOD icap://h/respmod ICAP/1.0", "Encapsulated: null-body=0", "no colon here"), 400),
        (head("RESPMOD icap://h/respmod ICAP/1.0", "Encapsulated: null-body=0", "Bad Name: x"), 400),
        (head(""), 400),
    ],
)
def test_bad_heads_get_their_icap_status(block: bytes, status: int) -> None:
    assert status_of(block) == status


def test_a_bad_preview_value_is_refused() -> None:
    request = parse_head(head("RESPMOD icap://h/respmod ICAP/1.0", "Encapsulated: null-body=0", "Preview: -1"))
    with pytest.raises(IcapProtocolError):
        _ = request.preview


@pytest.mark.parametrize(
    "value",
    [
        "res-body=0, res-hdr=10",  # body not last
        "req-hdr=0, res-body=10, null-body=20",  # two bodies
        "res-hdr=0, req-hdr=10, res-body=20",  # out of order
        "req-hdr=0, req-hdr=10, req-body=20",  # twice
        "req-hdr=5, req-body=20",  # not starting at 0
        "req-hdr=0, res-hdr=20, res-body=20",  # not growing
        "req-hdr=0, res-body=x",
        "req-hdr=0, res-body=1234567890123",  # 13 digits
        "foo-hdr=0, res-body=10",
        "req-hdr",
        "",
    ],
)
def test_bad_encapsulated_values_are_refused(value: str) -> None:
    with pytest.raises(IcapProtocolError):
        parse_encapsulated(value, "RESPMOD")


def test_encapsulated_sections_are_split_by_their_offsets() -> None:
    entities = parse_encapsulated("req-hdr=0, res-hdr=5, res-body=9", "RESPMOD")
    assert split_sections(entities, b"AAAAABBBB") == {"req-hdr": b"AAAAA", "res-hdr": b"BBBB"}


@pytest.mark.parametrize(
    ("line", "size", "ieof"),
    [(b"0", 0, False), (b"1a", 26, False), (b"FFFF", 65535, False), (b"0; ieof", 0, True), (b"10 ;x=1;ieof", 16, True)],
)
def test_chunk_size_lines(line: bytes, size: int, ieof: bool) -> None:
    assert parse_chunk_line(line) == (size, ieof)


@pytest.mark.parametrize(
    "line",
    [b"", b"-1", b"0x10", b"g", b"1" * 17, b"1" + b";" * MAX_CHUNK_LINE, b" ", b"12 34"],
)
def test_bad_chunk_size_lines_are_refused(line: bytes) -> None:
    with pytest.raises(IcapProtocolError):
        parse_chunk_line(line)


def test_http_heads_and_what_is_taken_from_them() -> None:
    request = parse_http_head(b"GET /dl/a%20b.zip HTTP/1.1\r\nHost: example.org\r\n\r\n", "request")
    assert request_url(request) == "http://example.org/dl/a%20b.zip"
    response = parse_http_head(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/zip\r\nContent-Length: 42\r\nX-Folded: a\r\n b\r\n\r\n",
        "response",
    )
    assert (response.get("content-type"), content_length(response), response.get("x-folded")) == (
        "application/zip",
        42,
        "a b",
    )
    assert content_length(parse_http_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n", "response")) is None
    with pytest.raises(IcapProtocolError):
        parse_http_head(b"HTTP/1.1 200 OK\r\nno colon\r\n", "response")
    with pytest.raises(IcapProtocolError):
        parse_http_head(b"\r\n", "response")


@pytest.mark.parametrize(
    ("url", "disposition", "name"),
    [
        ("http://example.org/files/setup.exe?x=1", "", "setup.exe"),
        ("http://example.org/a%20b.zip", "", "a b.zip"),
        ("http://example.org/", "", "download"),
        ("http://example.org/x", 'attachment; filename="report.pdf"', "report.pdf"),
        ("http://example.org/x", "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.doc", "résumé.doc"),
        ("http://example.org/..%2F..%2Fetc%2Fpasswd", "", "_.._etc_passwd"),
        ("http://example.org/a%0d%0aX-Evil:%201", "", "a__X-Evil: 1"),
    ],
)
def test_the_attachment_is_named_after_the_object(url: str, disposition: str, name: str) -> None:
    assert object_name(url, disposition) == name


def test_object_types() -> None:
    assert object_type("application/pdf; charset=binary") == "application/pdf"
    assert object_type("multipart/form-data; boundary=x") == "application/octet-stream"
    assert object_type("message/rfc822") == "application/octet-stream"
    assert object_type("garbage") == "application/octet-stream"
    assert object_type("") == "application/octet-stream"


def test_the_block_page_names_the_finding_html_escaped() -> None:
    page_head, page = block_page('Evil<script>alert("x")</script>', "http://h/?a=<b>&c", "ref-1", "upload")
    assert page_head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"Content-Length: %d\r\n" % len(page) in page_head
    assert b"<script>" not in page
    assert b"Evil&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert b"http://h/?a=&lt;b&gt;&amp;c" in page
    assert b"This upload was blocked" in page
    assert b"\r\n\r\n" in page_head
    assert page_head.count(b"\r\n\r\n") == 1


def test_the_block_page_head_cannot_be_split_by_a_finding_name() -> None:
    page_head, _ = block_page("Name\r\nSet-Cookie: x=1", "http://h/", "ref")
    assert b"\r\nSet-Cookie" not in page_head


def test_the_object_mail_is_a_0600_spool_file_with_the_object_as_attachment(tmp_path: Path) -> None:
    data = os.urandom(100_001)
    mail = ObjectMail(
        str(tmp_path), url="http://h/x/file.bin", method="RESPMOD", content_type="image/png", name="file.bin"
    )
    for start in range(0, len(data), 4099):  # pieces of every size: the base64 carry
        mail.write(data[start : start + 4099])
    mail.finish()
    path = Path(mail.path)
    assert path.name.startswith(f"mailsift-{os.getpid()}-icap-")
    assert path.name.endswith(".eml")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert message["X-Mailsift-URL"] == "http://h/x/file.bin"
    parts = list(message.iter_attachments())
    assert len(parts) == 1
    assert parts[0].get_filename() == "file.bin"
    assert parts[0].get_content_type() == "image/png"
    assert parts[0].get_payload(decode=True) == data
    mail.remove()
    assert not path.exists()


def test_an_empty_object_is_an_empty_attachment(tmp_path: Path) -> None:
    mail = ObjectMail(str(tmp_path), url="", method="REQMOD", content_type="", name="download")
    mail.finish()
    message = email.message_from_bytes(Path(mail.path).read_bytes(), policy=email.policy.default)
    (part,) = message.iter_attachments()
    assert part.get_payload(decode=True) == b""
    mail.remove()
