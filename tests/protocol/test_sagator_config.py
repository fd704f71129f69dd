"""A SAGATOR config serves mail: ``from srv import *`` / ``from scanners import *``, SAGATOR's
interscanners and an smtpd without scanners (sagator-readme.txt 5.3), loaded by the config loader
and run on a real socket with the next hop it names."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsift import config as config_module
from mailsift.testing import RecordingServer, ServiceThread
from tests.helpers.messages import attachment_mail, message
from tests.helpers.samples import EICAR_TEXT as EICAR

CONFIG = """\
from srv import *
from scanners import *

SMTP_SERVER = ('127.0.0.1', {hop})
EXECUTABLES = '(\\\\.exe|\\\\.scr)$'
SCANNERS = [
    mime_ext(EXECUTABLES),
    log(1, mimeparse(buffer2file(regexp_scan([('EICAR-Test', 'EICAR-STANDARD-ANTIVIRUS-TEST-FILE')])))),
]
SRV = [smtpd('127.0.0.1', 0)]
"""


@pytest.fixture
def served(tmp_path: Path, downstream: RecordingServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceThread]:
    monkeypatch.setenv("MAILSIFT_STATE_DIR", str(tmp_path / "state"))
    path = tmp_path / "sagator.conf"
    path.write_text(CONFIG.format(hop=downstream.port), encoding="utf-8")
    config = config_module.load(str(path))
    (service,) = config.services
    assert service.scanners == config.scanners  # smtpd('host', port): SAGATOR's SCANNERS
    with ServiceThread(service, config.settings) as thread:
        yield thread


def send(port: int, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("alice@example.test", ["bob@example.test"], data)


def test_clean_mail_goes_to_sagators_smtp_server(served: ServiceThread, downstream: RecordingServer) -> None:
    data = message("clean") + b"nothing to see\r\n"
    send(served.port, data)
    assert [m.data for m in downstream.messages] == [data]


def test_a_finding_inside_the_wrappers_is_refused(served: ServiceThread, downstream: RecordingServer) -> None:
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(served.port, attachment_mail(("eicar.com.txt", EICAR.encode(), "text/plain")))
    assert refused.value.smtp_code == 550
    assert b"EICAR-Test" in refused.value.smtp_error
    with pytest.raises(smtplib.SMTPDataError) as by_name:
        send(served.port, attachment_mail(("setup.exe", b"MZ not really", "application/octet-stream")))
    assert by_name.value.smtp_code == 550
    assert downstream.messages == []
