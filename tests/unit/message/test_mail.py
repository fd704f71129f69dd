"""The mail model: envelope, exact raw bytes, spooling, headers, the MIME tree, parts, memory."""

from __future__ import annotations

import base64
import email
import email.policy
import errno
import logging
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

import mailsift.mime.codecs
import mailsift.mime.tree
from mailsift.message import mail as mail_module
from mailsift.message.mail import Envelope, Mail, remove_stale_spool
from mailsift.mime.codecs import extract_uuencoded
from mailsift.mime.tree import declared_type

MakeMail = Callable[..., Mail]

NESTED = b"""\
From: outer@example.net\r
To: rcpt@example.org\r
Subject: =?utf-8?B?w5pkYWplIG8gxI1hc2U=?=\r
X-Folded: first\r
 second\r
MIME-Version: 1.0\r
Content-Type: multipart/mixed; boundary="outer"\r
\r
preamble\r
--outer\r
Content-Type: multipart/alternative; boundary="alt"\r
\r
--alt\r
Content-Type: text/plain; charset=utf-8\r
Content-Transfer-Encoding: quoted-printable\r
\r
caf=C3=A9\r
--alt\r
Content-Type: text/html\r
\r
<p>caf&eacute;</p>\r
--alt--\r
--outer\r
Content-Type: message/rfc822\r
\r
From: inner@example.net\r
Subject: inner\r
Content-Type: multipart/mixed; boundary="in"\r
\r
--in\r
Content-Type: text/plain\r
\r
inner text\r
--in\r
Content-Type: BINARY; name="Alice.doc"\r
Content-Transfer-Encoding: base64\r
\r
aGVsbG8gd29ybGQ=\r
--in--\r
--outer\r
Content-Type: application/pdf; name="report.pdf"\r
Content-Disposition: attachment; filename="report.pdf"\r
Content-Transfer-Encoding: base64\r
\r
JVBERi0xLjQK\r
--outer--\r
epilogue\r
"""


# --------------------------------------------------------------------------- envelope and raw bytes


def test_envelope_defaults_and_values() -> None:
    assert Mail().envelope == Envelope()
    envelope = Envelope(sender="s@example.net", recipients=["a@example.org", "b@example.org"], helo="mx")
    mail = Mail(envelope, b"Subject: x\r\n\r\n")
    assert mail.envelope.sender == "s@example.net"
    assert mail.envelope.recipients == ["a@example.org", "b@example.org"]
    assert mail.envelope.protocol == "SMTP"
    assert Envelope().recipients is not Envelope().recipients  # no shared default list


def test_raw_bytes_are_kept_exactly() -> None:
    raw = b"From: a\r\nSubject: mixed\n\r\nline crlf\r\nline lf\nbare cr\r8bit \xe9\xff\x00 end\n.\r\n.."
    mail = Mail(data=raw)
    assert mail.raw == raw
    assert mail.size == len(raw)
    assert not mail.spooled
    with mail.open() as stream:
        assert stream.read() == raw
    assert mail.parts  # parsing does not change the raw bytes
    assert mail.raw == raw


def test_empty_message() -> None:
    mail = Mail()
    assert (mail.raw, mail.size, len(mail.headers)) == (b"", 0, 0)
    assert [p.data for p in mail.parts] == [b""]
    assert mail.tree.render() == "text/plain"


# --------------------------------------------------------------------------- spooling


def test_spooling_over_the_threshold(tmp_path: Path) -> None:
    raw = b"From: a\r\nSubject: big\r\n\r\n" + b"x\r\n" * 200 + b"bare\nlf\n"
    mail = Mail(Envelope(sender="s@example.net"), raw, spool_threshold=100, spool_dir=str(tmp_path))
    assert mail.spooled
    files = list(tmp_path.iterdir())
    assert len(files) == 1
    assert files[0].name.startswith("mailsift-")
    assert files[0].read_bytes() == raw
    assert mail.raw == raw
    assert mail.size == len(raw)
    assert mail.subject == "big"
    assert mail.parts[0].data == b"x\r\n" * 200 + b"bare\nlf\n"
    mail.close()
    assert list(tmp_path.iterdir()) == []
    mail.close()  # twice is fine


def test_the_spool_file_name_carries_the_pid(tmp_path: Path) -> None:
    with Mail(data=b"Subject: x\r\n\r\n" + b"z" * 500, spool_threshold=10, spool_dir=str(tmp_path)):
        [spooled] = list(tmp_path.iterdir())
        assert spooled.name.startswith(f"mailsift-{os.getpid()}-")
        assert spooled.name.endswith(".eml")


def test_closing_never_raises_when_the_spool_file_cannot_be_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The answer is decided when the mail is closed: an EIO removing its file must not turn it into an error."""
    mail = Mail(data=b"Subject: x\r\n\r\n" + b"z" * 500, spool_threshold=10, spool_dir=str(tmp_path))

    def failing_unlink(path: str) -> None:
        raise OSError(errno.EIO, "Input/output error", path)

    monkeypatch.setattr(mail_module.os, "unlink", failing_unlink)
    with caplog.at_level(logging.WARNING, logger="mailsift.spool"):
        mail.close()
    assert "cannot remove the spool file" in caplog.text
    monkeypatch.undo()
    [left] = list(tmp_path.iterdir())  # removed at the next worker start (its pid is gone by then)
    assert remove_stale_spool(str(tmp_path), runs=lambda pid: False) == [left.name]


def test_stale_spool_files_of_dead_processes_are_removed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """At a worker's start: files of pids that no longer run go, files of running pids stay (unless too old)."""
    now = 1_000_000_000.0
    files = {
        "mailsift-101-abc.eml": now - 10,  # a killed worker's
        "mailsift-202-def.eml": now - 10,  # a running sibling's
        "mailsift-202-old.eml": now - 2 * 86400,  # a running pid's, too old: the pid was reused
        "mailsift-legacy.eml": now - 10,  # no pid (an older name): by age only
        "mailsift-legacy-old.eml": now - 2 * 86400,
        "notes.txt": now - 2 * 86400,  # not a spool file
    }
    for name, mtime in files.items():
        path = tmp_path / name
        path.write_bytes(b"x")
        os.utime(path, (mtime, mtime))
    with caplog.at_level(logging.WARNING, logger="mailsift.spool"):
        removed = remove_stale_spool(str(tmp_path), runs=lambda pid: pid == 202, now=now)
    assert removed == ["mailsift-101-abc.eml", "mailsift-202-old.eml", "mailsift-legacy-old.eml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mailsift-202-def.eml", "mailsift-legacy.eml", "notes.txt"]
    assert "removed 3 spool file(s)" in caplog.text
    assert "mailsift-101-abc.eml" in caplog.text
    assert remove_stale_spool(str(tmp_path / "missing")) == []  # no directory yet: nothing to do


def test_stale_spool_keeps_the_files_of_this_process(tmp_path: Path) -> None:
    with Mail(data=b"Subject: x\r\n\r\n" + b"z" * 500, spool_threshold=10, spool_dir=str(tmp_path)):
        assert remove_stale_spool(str(tmp_path)) == []  # the real pid check: this process runs
        assert len(list(tmp_path.iterdir())) == 1


def test_at_the_threshold_stays_in_memory(tmp_path: Path) -> None:
    raw = b"Subject: x\r\n\r\n" + b"y" * 86
    mail = Mail(data=raw, spool_threshold=len(raw), spool_dir=str(tmp_path))
    assert not mail.spooled
    assert list(tmp_path.iterdir()) == []


def test_spooled_mail_as_a_context_manager(tmp_path: Path) -> None:
    with Mail(data=b"Subject: x\r\n\r\n" + b"z" * 500, spool_threshold=10, spool_dir=str(tmp_path)) as mail:
        assert mail.spooled
        assert len(list(tmp_path.iterdir())) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_mail_read_from_a_path_does_not_delete_it(tmp_path: Path) -> None:
    path = tmp_path / "message.eml"
    path.write_bytes(b"Subject: on disk\r\n\r\nbody\r\n")
    mail = Mail(path=str(path))
    assert mail.spooled
    assert mail.size == path.stat().st_size
    assert mail.subject == "on disk"
    mail.close()
    assert path.exists()


# --------------------------------------------------------------------------- headers


def test_headers_decoded_with_raw_kept() -> None:
    mail = Mail(data=NESTED)
    assert mail.subject == "Údaje o čase"
    subject = next(h for h in mail.headers if h.name == "Subject")
    assert subject.raw == "=?utf-8?B?w5pkYWplIG8gxI1hc2U=?="
    folded = next(h for h in mail.headers if h.name == "X-Folded")
    assert folded.value == "first second"
    assert "\n" in folded.raw
    assert mail.headers.get("FROM") == "outer@example.net"
    assert mail.headers.get("missing", "default") == "default"
    assert "x-folded" in mail.headers
    assert 5 not in mail.headers
    assert len(mail.headers) == 6
    assert [h.name for h in mail.headers][:2] == ["From", "To"]


def test_repeated_headers_and_body_lookalikes() -> None:
    mail = Mail(data=b"Received: one\r\nReceived: two\r\n\r\nReceived: not a header\r\n")
    assert mail.headers.get_all("received") == ["one", "two"]


def test_undecodable_encoded_words_are_kept() -> None:
    mail = Mail(data=b"Subject: =?x-unknown-charset?B?AAAA?= and =?utf-8?B?%%%?=\r\n\r\n")
    assert "=?" in mail.subject


def test_message_id() -> None:
    assert Mail(data=b"Message-ID: <a@b>\r\n\r\n").message_id == "<a@b>"


# --------------------------------------------------------------------------- tree and parts


def test_tree() -> None:
    assert Mail(data=NESTED).tree.render() == "\n".join(
        [
            "multipart/mixed",
            "-multipart/alternative",
            "--text/plain",
            "--text/html",
            "-message/rfc822",
            "--multipart/mixed",
            "---text/plain",
            "---application/octet-stream",
            "-application/pdf",
        ]
    )


def test_tree_paths() -> None:
    nodes = [(depth, node.path, node.content_type) for depth, node in Mail(data=NESTED).tree.walk()]
    assert nodes[0] == (0, "", "multipart/mixed")
    assert (2, "1.1", "text/plain") in nodes
    assert (1, "2", "message/rfc822") in nodes
    assert (3, "2.2", "application/octet-stream") in nodes
    assert (1, "3", "application/pdf") in nodes


def test_parts() -> None:
    parts = Mail(data=NESTED).parts
    summary = [(p.path, p.content_type, p.filenames, p.data) for p in parts]
    assert summary == [
        ("1.1", "text/plain", (), "café".encode()),
        ("1.2", "text/html", (), b"<p>caf&eacute;</p>"),
        ("2.1", "text/plain", (), b"inner text"),
        ("2.2", "application/octet-stream", ("Alice.doc",), b"hello world"),
        ("3", "application/pdf", ("report.pdf",), b"%PDF-1.4\n"),
    ]
    plain = parts[0]
    assert (plain.charset, plain.transfer_encoding, plain.size, plain.origin) == (
        "utf-8",
        "quoted-printable",
        5,
        "mime",
    )
    assert parts[4].filename == "report.pdf"
    assert parts[0].filename == ""


def test_a_single_part_message() -> None:
    parts = Mail(data=b"Subject: x\r\n\r\nonly body\r\n").parts
    assert [(p.path, p.content_type, p.data) for p in parts] == [("1", "text/plain", b"only body\r\n")]


def test_an_attached_message_at_the_top() -> None:
    mail = Mail(data=b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n")
    assert mail.tree.render() == "message/rfc822\n-text/plain"
    assert [(p.path, p.data) for p in mail.parts] == [("1", b"inner body\r\n")]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"Content-Type: BINARY; name=x.exe", "application/octet-stream"),  # invalid: a named blob
        (b"Content-Type: ;name=x", "application/octet-stream"),
        (b"Content-Type: TEXT/HTML; charset=utf-8", "text/html"),
        (b"X-No-Type: here", "text/plain"),  # absent: RFC 2045 default
    ],
)
def test_declared_type(header: bytes, expected: str) -> None:
    message = email.message_from_bytes(header + b"\r\n\r\nbody", policy=email.policy.compat32)
    assert declared_type(message) == expected
    assert Mail(data=header + b"\r\n\r\nbody").parts[0].content_type == expected


def test_broken_base64_is_a_defect_not_an_error() -> None:
    mail = Mail(
        data=b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8*gd29y\r\n"
    )
    part = mail.parts[0]
    assert part.data.startswith(b"hello")
    assert "InvalidBase64CharactersDefect" in part.defects


def test_missing_boundary_is_parsed_leniently() -> None:
    mail = Mail(
        data=b"Content-Type: multipart/mixed; boundary=X\r\n\r\n--X\r\nContent-Type: text/plain\r\n\r\nno end\r\n"
    )
    assert mail.tree.render() == "multipart/mixed\n-text/plain"
    assert mail.parts[0].data == b"no end"
    assert "CloseBoundaryNotFoundDefect" in mail.tree.defects


def test_extract_uuencoded() -> None:
    text = b"hello\r\nbegin 600 a b.txt\r\n#86)C\r\n`\r\nend\r\nbye\r\n"
    assert extract_uuencoded(text) == [("a b.txt", b"abc")]


# --------------------------------------------------------------------------- long base64 runs kept out of the parser


def _stdlib_leaves(raw: bytes) -> list[bytes]:
    """What the standard library decodes for each leaf: the oracle for mail.py's own decoding."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    leaves = []
    for node in message.walk():
        if not node.is_multipart():
            payload = node.get_payload(decode=True)
            leaves.append(payload if isinstance(payload, bytes) else b"")
    return leaves


def _tricky_message() -> bytes:
    blob = os.urandom(3000)
    run = base64.encodebytes(blob).replace(b"\n", b"\r\n")
    return (
        b"From: a@example.net\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
        b"AAAApreambleAAAA\r\n"
        b"--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + run
        + b"--B\r\nContent-Type: text/plain\r\n\r\n"  # base64 characters in a text part: kept byte for byte
        + run
        + b"--B\r\nContent-Type: text/plain\r\n\r\nnot\x00mailsift-blob-0123456789abcdef-0\x00 a token\r\n"
        + b"--B\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + run.rstrip(b"\r\n")  # last line without its line ending, then the boundary
        + b"\r\n--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + run.replace(b"\r\n", b"\n")
        + b"--B--\r\nQUJD\r\n"
    )


@pytest.mark.parametrize("blob_min", [1, 200, mailsift.mime.tree._BLOB_MIN], ids=["every-line", "small", "default"])
def test_parts_equal_the_standard_librarys_decoding(monkeypatch: pytest.MonkeyPatch, blob_min: int) -> None:
    monkeypatch.setattr(mailsift.mime.tree, "_BLOB_MIN", blob_min)
    raw = _tricky_message()
    mail = Mail(data=raw)
    assert [p.data for p in mail.parts if p.origin == "mime"] == _stdlib_leaves(raw)
    assert mail.tree.render() == "\n".join(
        [
            "multipart/mixed",
            "-application/octet-stream",
            "-text/plain",
            "-text/plain",
            "-message/rfc822",
            "--text/plain",
            "-application/octet-stream",
        ]
    )


def test_spooled_parts_equal_in_memory_parts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(mailsift.mime.tree, "_BLOB_MIN", 100)
    raw = _tricky_message()
    with Mail(data=raw, spool_threshold=1000, spool_dir=str(tmp_path)) as spooled:
        assert spooled.spooled
        assert [p.data for p in spooled.parts] == [p.data for p in Mail(data=raw).parts]


# --------------------------------------------------------------------------- memory


def _big_message(attachment_size: int) -> tuple[bytes, bytes]:
    payload = os.urandom(attachment_size)
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    raw = (
        b"From: a@example.net\r\nTo: b@example.org\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
        b"--XX\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n"
        b"--XX\r\nContent-Type: application/octet-stream; name=big.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + encoded
        + b"--XX--\r\n"
    )
    return raw, payload


@pytest.mark.parametrize("spool", [False, True], ids=["in-memory", "spooled"])
def test_parsing_a_big_message_keeps_about_two_copies(tmp_path: Path, spool: bool) -> None:
    raw, payload = _big_message(4_400_000)  # a ~6 MB message
    mail = Mail(data=raw, spool_threshold=1024 * 1024 if spool else len(raw), spool_dir=str(tmp_path))
    assert mail.spooled is spool
    tracemalloc.start()
    try:
        parts = mail.parts
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The raw bytes exist before tracing starts (or are on disk when spooled), so the
    # peak counts what parsing adds: the decoded attachment (3/4 of the message) plus,
    # for a moment, one encoded copy of it being decoded — about 2x the message size.
    # The standard library's parser alone would hold ~5.5x (line list, joined text,
    # bytes copy, split lines, decoded); 2.5x leaves room for the parser's own objects.
    assert peak < 2.5 * len(raw), f"peak {peak / len(raw):.2f}x the message size"
    assert parts[1].data == payload
    assert parts[1].filenames == ("big.bin",)
    mail.close()


# --------------------------------------------------------------------------- facts kept for bad_mime and the views


def test_nodes_keep_boundaries_and_both_kinds_of_filename() -> None:
    raw = (
        b'From: a@example.net\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="A"; boundary="B"\n\n'
        b'--A\nContent-Type: application/pdf; name="one.pdf"\n'
        b'Content-Disposition: attachment; filename="two.exe"\n\nx\n--A--\n'
    )
    mail = Mail(data=raw)
    assert mail.tree.boundaries == ("A", "B")
    [leaf] = mail.tree.children
    assert (leaf.disposition_names, leaf.type_names) == (("two.exe",), ("one.pdf",))
    assert mail.parts[0].filenames == ("two.exe", "one.pdf")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("base64", "base64"),
        ("  BASE64 ", "base64"),
        ('"base64"', "base64"),
        ("base64 (zip)", "base64"),
        ("7 bit", "7bit"),
    ],
)
def test_normalize_encoding(value: str, expected: str) -> None:
    assert mailsift.mime.codecs.normalize_encoding(value) == expected


def test_strict_parts_are_unchanged_and_alternates_hold_the_other_decoding() -> None:
    encoded = base64.b64encode(b"payload bytes" * 5).decode()
    raw = (
        "From: a@example.net\nMIME-Version: 1.0\nContent-Type: application/octet-stream\n"
        f"Content-Transfer-Encoding: 7bit\nContent-Transfer-Encoding: base64\n\n{encoded}\n"
    ).encode()
    mail = Mail(data=raw)
    assert mail.parts[0].data == f"{encoded}\n".encode()  # as the standard library reads it: the first header
    assert [(a.origin, a.data) for a in mail.alternates] == [("decoded:base64", b"payload bytes" * 5)]


def test_unknown_transfer_encoding_is_a_defect_of_the_part() -> None:
    mail = Mail(data=b"From: a@example.net\nContent-Type: text/plain\nContent-Transfer-Encoding: x-secret\n\nbody\n")
    assert mail.parts[0].data == b"body\n"
    assert any(d.startswith("UnknownTransferEncoding") for d in mail.parts[0].defects)


def test_base64_encoded_size_is_recorded() -> None:
    mail = Mail(data=b"From: a@example.net\nContent-Transfer-Encoding: base64\n\naGVsbG8g\nd29ybGQ=\n")
    assert (mail.parts[0].data, mail.parts[0].encoded_size) == (b"hello world", 16)
