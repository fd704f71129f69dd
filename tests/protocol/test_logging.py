"""Logging and stamping over real sockets: syslog datagrams on a unix socket bound here (as /dev/log),
and the Received/X-Mailsift stamp on mail delivered through smtpd, with a real clamd's VERSION."""

from __future__ import annotations

import email
import os
import re
import smtplib
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsift import clamd, regexp_scan
from mailsift.reporting.logline import log_syslog
from mailsift.scanners.stamp import mailsift_version, stamp
from mailsift.services.smtpd import smtpd
from mailsift.settings import Settings
from mailsift.testing import RecordingServer, ServiceThread
from tests.helpers.clamd import CLAMD, ClamdInstance
from tests.helpers.messages import message
from tests.helpers.sockets import recv_until


@pytest.fixture
def syslog_socket() -> Iterator[tuple[socket.socket, str]]:
    where = tempfile.mkdtemp(dir="/tmp", prefix="mailsift-log-")
    path = os.path.join(where, "log")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)  # a deadline for the wait, not a measurement
    yield sock, path
    sock.close()
    os.unlink(path)
    os.rmdir(where)


@pytest.fixture(scope="module")
def clamd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdInstance]:
    if not os.access(CLAMD, os.X_OK):
        pytest.skip(f"{CLAMD} is not installed")
    instance = ClamdInstance(tmp_path_factory.mktemp("clamd"))
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def send(port: int, recipients: list[str], data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("alice@example.net", recipients, data)


def test_syslog_lines_reach_a_unix_datagram_socket(
    tmp_path: Path, downstream: RecordingServer, syslog_socket: tuple[socket.socket, str]
) -> None:
    sock, path = syslog_socket
    hook = log_syslog("mail", address=path, ident="mailsift-test")
    settings = Settings(state_dir=str(tmp_path / "state"), hooks=(hook,))
    service = smtpd([regexp_scan([("Bad", "BADWORD")])], "127.0.0.1", 0, next_hop=("127.0.0.1", downstream.port))
    with ServiceThread(service, settings) as thread:
        send(thread.port, ["bob@example.test", "carol@example.test"], message("Grüße aus Köln"))
        datagrams = [sock.recv(65536).decode("utf-8") for _ in range(2)]
    assert len(downstream.messages) == 1
    pattern = re.compile(r"<22>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d mailsift-test\[(\d+)\]: (.*)")
    fields = []
    for datagram in datagrams:
        match = pattern.fullmatch(datagram)
        assert match, datagram
        assert int(match.group(1)) == os.getpid()
        fields.append(match.group(2).split(" "))
    assert [f[4] for f in fields] == ["bob@example.test", "carol@example.test"]  # one line per recipient
    first = fields[0]
    # a loopback client is a relay client by default; Q: is smtpd's queue id
    assert re.fullmatch(r"Clear:RC:1\(127\.0\.0\.1\):Q:[!-9;-~]+:", first[0]), first[0]
    assert re.fullmatch(r"\d+\.\d{6}", first[1])
    assert first[2] == str(len(message("Grüße aus Köln")))
    assert first[3] == "alice@example.net"
    assert first[5] == "Grüße_aus_Köln"
    assert first[6] == "<Grüße.aus.Köln@example.test>"


def test_syslog_unreachable_never_changes_the_reply(tmp_path: Path, downstream: RecordingServer) -> None:
    hook = log_syslog(address=str(tmp_path / "no-such-socket"))
    settings = Settings(state_dir=str(tmp_path / "state"), hooks=(hook,))
    service = smtpd([regexp_scan([("Bad", "BADWORD")])], "127.0.0.1", 0, next_hop=("127.0.0.1", downstream.port))
    with ServiceThread(service, settings) as thread:
        send(thread.port, ["bob@example.test"], message("one"))
    assert len(downstream.messages) == 1


def clamd_version(instance: ClamdInstance) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(instance.socket_path))
        sock.sendall(b"zVERSION\0")
        answer = recv_until(sock, b"\0")
    return answer.rstrip(b"\0").decode()


def test_delivered_mail_is_stamped_with_clamd_version(
    tmp_path: Path, downstream: RecordingServer, clamd_server: ClamdInstance
) -> None:
    expected_clamd = re.sub(r"\s+", " ", clamd_version(clamd_server)).replace("(", "[").replace(")", "]")
    assert expected_clamd.startswith("ClamAV ")
    scanners = [stamp(clamd(str(clamd_server.socket_path)), regexp_scan([("Bad", "BADWORD")]), hostname="gw.test")]
    service = smtpd(scanners, "127.0.0.1", 0, next_hop=("127.0.0.1", downstream.port))
    with ServiceThread(service, Settings(state_dir=str(tmp_path / "state"))) as thread:
        send(thread.port, ["bob@example.test"], message("stamped"))
    (delivered,) = downstream.messages
    parsed = email.message_from_bytes(delivered.data)
    received = re.sub(r"\s+", " ", parsed.get_all("Received")[0])
    assert received.startswith("from ")
    assert f"by gw.test (mailsift {mailsift_version()}) with " in received
    assert f"clamd {expected_clamd}" in received
    assert f"regexp_scan {mailsift_version()}" in received
    _, _, date = received.rpartition(";")
    assert email.utils.parsedate_to_datetime(date.strip()) is not None
    descriptive = re.sub(r"\s+", " ", parsed["X-Mailsift"])
    assert descriptive.startswith(f"mailsift {mailsift_version()} on gw.test (Clear. clamd: {expected_clamd};")
    assert delivered.data.index(b"Received:") == 0  # on top, above the original headers
