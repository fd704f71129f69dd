"""Two gateways, one PostgreSQL and one shared quarantine store: one quarantines, the other releases.

Gateway A is a real ``mailsift serve`` (two workers); gateway B only has its
config and runs ``mailsift quarantine``.  Their STATE_DIRs differ; each one's
``quarantine`` is a symbolic link to one shared directory (as a shared mount
would be), and both name the same private PostgreSQL in DATABASE.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mailsift.cli.quarantine import quarantine_group
from mailsift.testing import RecordingServer, free_port
from tests.helpers.postgres import fresh_database, postgres  # noqa: F401 - the fixture

MAILSIFT = [sys.executable, "-m", "mailsift"]

CONFIG = """\
from mailsift import *
STATE_DIR = {state!r}
SMTP_SERVER = ("127.0.0.1", {next_hop})
DATABASE = db.database({url!r})
SCANNERS = [quarantine("virus", regexp_scan([("Test.Virus", "VIRUS-SIGNATURE")]))]
SRV = [smtpd(SCANNERS, "127.0.0.1", {port})]
"""


class Site:
    def __init__(self, base: Path, name: str, shared: str, url: str, next_hop: int) -> None:
        self.state = base / name
        self.state.mkdir()
        os.symlink(shared, self.state / "quarantine")
        self.port = free_port()
        self.config = base / f"{name}.conf.py"
        self.config.write_text(CONFIG.format(state=str(self.state), next_hop=next_hop, url=url, port=self.port))

    def cli(self, *args: str) -> Result:
        command, *rest = args
        return CliRunner().invoke(quarantine_group, [command, "-c", str(self.config), *rest])


@pytest.fixture
def shared_store() -> Iterator[str]:
    where = tempfile.mkdtemp(prefix="mailsift-shared-q-", dir="/tmp")
    yield where
    shutil.rmtree(where, ignore_errors=True)


def send(port: int, subject: str, recipients: list[str]) -> tuple[int, bytes]:
    data = f"From: alice@sender.example\r\nSubject: {subject}\r\n\r\nVIRUS-SIGNATURE\r\n".encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("alice@sender.example", recipients, data)
    return 250, data


def serve(site: Site, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*MAILSIFT, "serve", "-c", str(site.config), "-w", "2", "--drain-seconds", "5"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with smtplib.SMTP("127.0.0.1", site.port, timeout=5) as client:
                client.noop()
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    process.wait(10)
    raise AssertionError("mailsift serve did not start:\n" + log.read_text())


def test_quarantined_by_one_gateway_released_by_another(postgres: str, shared_store: str, tmp_path: Path) -> None:  # noqa: F811
    url = fresh_database(postgres, "twogw")
    with RecordingServer() as hop_a, RecordingServer() as hop_b:
        site_a = Site(tmp_path, "a", shared_store, url, hop_a.port)
        site_b = Site(tmp_path, "b", shared_store, url, hop_b.port)
        process = serve(site_a, tmp_path / "a.log")
        try:
            sent = {}
            for n in range(4):
                code, data = send(site_a.port, f"number {n}", [f"user{n}@example.test", "boss@example.test"])
                assert code == 250
                sent[f"number {n}"] = data
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        assert hop_a.messages == []  # quarantined, not delivered

        listed = site_b.cli("list", "--json", "--recipient", "user2@example.test")
        assert listed.exit_code == 0, listed.output
        [entry] = json.loads(listed.stdout)
        assert entry["subject"] == "number 2"
        assert entry["recipients"] == ["user2@example.test", "boss@example.test"]
        assert entry["path"].startswith("virus/new/")
        assert len(json.loads(site_b.cli("list", "--json").stdout)) == 4

        shown = site_b.cli("show", entry["id"], "--raw")
        assert shown.stdout_bytes == sent["number 2"]

        released = site_b.cli("release", entry["id"], "--by", "gw-b-admin")
        assert released.exit_code == 0, released.output
        [received] = hop_b.messages
        assert received.recipients == ["user2@example.test", "boss@example.test"]
        assert received.data.replace(b"\r\n", b"\n") == sent["number 2"].replace(b"\r\n", b"\n")
        assert b"X-Mailsift-" not in received.data
        assert hop_a.messages == []

        # Gateway A sees the release B recorded, in the shared database.
        on_a = site_a.cli("list", "--json", "--state", "released")
        [row] = json.loads(on_a.stdout)
        assert (row["id"], row["released_by"], row["released_to"]) == (
            entry["id"],
            "gw-b-admin",
            ["user2@example.test", "boss@example.test"],
        )
        assert len(json.loads(site_a.cli("list", "--json", "--state", "held").stdout)) == 3
