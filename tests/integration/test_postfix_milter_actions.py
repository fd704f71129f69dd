"""The new actions through a real Postfix before queue: smtplib → Postfix smtpd ⇄ mailsift milter → Maildir.

Postfix itself carries out what the milter asks: SMFIR_CHGHEADER (``remove_headers``,
``modify_header``), SMFIR_REPLBODY (``sanitize``), SMFIR_ADDRCPT/SMFIR_DELRCPT
(``deliver_to``).  What lands in the Maildirs is read by Python's ``email`` and by
Perl's MIME::Parser.  The private Postfix is the one of tests/helpers/postfix.py.
"""

from __future__ import annotations

import os
import smtplib
from collections.abc import Iterator

import pytest

from mailsift import deliver_to, modify_header, regexp_scan, remove_headers, sanitize
from mailsift.services.milter import milter
from mailsift.settings import Settings
from mailsift.testing import ServiceThread, free_port
from tests.helpers.postfix import PostfixInstance, milter_main_cf, postfix_home
from tests.helpers.sanitize import EICAR, PDF, have_perl_reader, mixed, perl_parts, python_parts

needs_postfix = pytest.mark.skipif(
    not os.environ.get("CI") and not os.path.exists("/usr/sbin/postfix"),
    reason="Postfix is installed by scripts/setup.sh --test (required in CI)",
)
VIRUS = regexp_scan([("Eicar-Test-Signature", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")])


@pytest.fixture(scope="module")
def postfix() -> Iterator[PostfixInstance]:
    if os.geteuid() != 0:
        pytest.skip("a private Postfix master must run as root")
    scanners = [
        remove_headers("X-Spam-"),
        modify_header("X-Virus-Found", "%V", sanitize(VIRUS)),
        deliver_to("quarantine@example.test", regexp_scan([("Redirect-Me", r"REDIRECT-ME")])),
        deliver_to("admin@example.test", regexp_scan([("Copy-Me", r"COPY-ME")]), copy=True),
    ]
    with postfix_home(prefix="mailsift-actions-e2e-") as home:
        service = milter(scanners, "mailsift", "inet:0@127.0.0.1")
        thread = ServiceThread(service, Settings(state_dir=str(home / "state"))).start()
        try:
            with PostfixInstance(
                home / "postfix",
                inbound_port=free_port(),
                reinject_port=free_port(),
                content_filter=None,
                maildir_root=home / "mail",
                extra_main_cf=milter_main_cf(thread.port),
            ) as instance:
                yield instance
        finally:
            thread.stop()


def send(postfix: PostfixInstance, data: bytes, rcpts: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", postfix.inbound_port, timeout=60) as client:
        client.sendmail("alice@example.test", rcpts, data)


def no_milter_warnings(postfix: PostfixInstance) -> None:
    warnings = [row for row in postfix.log_text().splitlines() if "warning" in row and "milter" in row]
    assert not warnings, warnings


@needs_postfix
def test_postfix_delivers_the_sanitized_message(postfix: PostfixInstance) -> None:
    send(postfix, mixed(headers=b"X-Spam-Flag: NO\r\nX-Virus-Found: none (forged)\r\n"), ["bob@example.test"])
    [path] = postfix.wait_delivered("bob@example.test", timeout=60)
    data = path.read_bytes()
    assert EICAR not in data
    head = data.split(b"\n\n", 1)[0]
    assert b"X-Spam-Flag" not in head
    assert head.count(b"X-Virus-Found:") == 1
    assert b"X-Virus-Found: Eicar-Test-Signature" in head
    parts, defects = python_parts(data)
    assert defects == []
    assert [kind for kind, _, _ in parts] == ["text/plain", "text/plain", "application/pdf"]
    assert b"File: invoice.com" in parts[1][2]
    assert parts[2][2] == PDF
    if have_perl_reader() or os.environ.get("CI"):
        perl, error = perl_parts(data)
        assert error is None
        assert [names for names, _ in perl] == [[], [], ["report.pdf"]]
        assert perl[2][1] == PDF
    no_milter_warnings(postfix)


@needs_postfix
def test_postfix_redirects_with_delrcpt_and_addrcpt(postfix: PostfixInstance) -> None:
    body = b"From: alice@example.test\r\nSubject: redirect\r\nMessage-ID: <r@example.test>\r\n\r\nREDIRECT-ME\r\n"
    send(postfix, body, ["carol@example.test", "dave@example.test"])
    [path] = postfix.wait_delivered("quarantine@example.test", timeout=60)
    assert b"REDIRECT-ME" in path.read_bytes()
    postfix.wait_queue_empty(timeout=30)  # every delivery of this message is done
    assert not postfix.maildir_new("carol@example.test").exists()
    assert not postfix.maildir_new("dave@example.test").exists()
    no_milter_warnings(postfix)


@needs_postfix
def test_postfix_adds_the_copy_recipient(postfix: PostfixInstance) -> None:
    body = b"From: alice@example.test\r\nSubject: copy\r\nMessage-ID: <c@example.test>\r\n\r\nCOPY-ME\r\n"
    send(postfix, body, ["eve@example.test"])
    [mine] = postfix.wait_delivered("eve@example.test", timeout=60)
    [copy] = postfix.wait_delivered("admin@example.test", timeout=60)
    assert b"COPY-ME" in mine.read_bytes()
    assert b"COPY-ME" in copy.read_bytes()
    no_milter_warnings(postfix)
