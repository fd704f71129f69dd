"""``mailsift report``: the From of the reports, and ``--dry-run`` printing what a person reads."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailsift.cli.report import report_command
from mailsift.testing import RecordingServer
from tests.helpers.links import Gateway

BASE = "https://mail.example.com/webq"
MESSAGE = (
    b"From: eve@spam.example\r\nTo: bob@example.test\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=\r\n"
    b"\r\nBuy now.\r\n"
)


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mailsift-report-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    with RecordingServer() as next_hop:
        instance = Gateway(tmp_path, next_hop.port)
        yield instance
        instance.settings.database.dispose()


def dry_run(gateway: Gateway, extra: str = "") -> str:
    if extra:
        gateway.path.write_text(gateway.path.read_text() + extra)
    result = CliRunner().invoke(report_command, ["-c", str(gateway.path), "--dry-run", "--url", BASE])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_dry_run_prints_the_decoded_text(gateway: Gateway) -> None:
    gateway.quarantine(MESSAGE, recipients=("bob@example.de",))
    out = dry_run(gateway, "SRV = [reporter(languages={'de': 'de'})]\n")
    assert "==== report to <bob@example.de>" in out
    assert "Subject: Nicht zugestellte Post" in out  # the header decoded, not =?utf-8?q?...?=
    assert "=?utf-8?" not in out
    assert "Content-Transfer-Encoding: quoted-printable" in out  # what is sent is 7-bit...
    assert "Grüße aus Köln" in out  # ...what is printed is the text
    assert "in Quarantäne" in out
    assert "=C3" not in out
    assert "=\n" not in out  # no soft line breaks
    assert f"{BASE}/link/release/" in out


def test_dry_run_prints_no_terminal_escapes(gateway: Gateway) -> None:
    gateway.quarantine(MESSAGE.replace(b"Subject: ", b"Subject: \x1b[31mred "), recipients=("bob@example.test",))
    out = dry_run(gateway)
    assert "\x1b" not in out


def test_reports_come_from_postmaster_at_the_fully_qualified_name(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # /etc/hosts: "127.0.0.1 localhost mx1": socket.getfqdn() answers localhost (issue 13: From: postmaster@localhost)
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "localhost")
    monkeypatch.setattr(socket, "gethostname", lambda: "mx1")
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [(2, 1, 6, "mx1.example.test", ("127.0.0.1", 0))])
    gateway.quarantine(MESSAGE, recipients=("bob@example.test",))
    out = dry_run(gateway)
    assert "From: postmaster@mx1.example.test" in out
    assert "postmaster@localhost" not in out
    assert "@mx1.example.test>" in out  # the Message-ID's domain too


def test_the_from_address_is_configurable(gateway: Gateway) -> None:
    gateway.quarantine(MESSAGE, recipients=("bob@example.test",))
    out = dry_run(gateway, "SRV = [reporter(from_address='quarantine@example.test')]\n")
    assert "From: quarantine@example.test" in out


def test_no_whitelist_link_where_the_scanners_consult_no_list(gateway: Gateway) -> None:
    """webq serves the links; a whitelist link is offered only when some scanner reads the white list."""
    gateway.quarantine(MESSAGE, recipients=("bob@example.test",))
    unlisted = dry_run(gateway, "SRV = [webq('127.0.0.1', 1), reporter()]\n")
    assert f"{BASE}/link/release/" in unlisted
    assert "/link/whitelist/" not in unlisted
    services = "SRV = [smtpd(SCANNERS, '127.0.0.1', 2), webq('127.0.0.1', 1), reporter()]\n"
    listed_too = dry_run(gateway, "SCANNERS = [listed()]\n" + services)
    assert "/link/whitelist/" in listed_too
