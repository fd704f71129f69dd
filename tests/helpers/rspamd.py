"""A private, throw-away rspamd for tests (Debian's rspamd 3.4, rules as shipped).

rspamd does run here: it needs a config, writable run/db/log directories and
an unprivileged user, all provided in a temporary work directory::

    WORKDIR/rspamd.conf     includes Debian's $CONFDIR/common.conf (the shipped
                            rules and modules), one "normal" worker on
                            127.0.0.1:PORT, no controller/proxy/fuzzy workers
    WORKDIR/local/local.d/  LOCAL_CONFDIR: every module that needs the network
                            or Redis is disabled (RBLs, fuzzy, SPF/DKIM/DMARC,
                            phishing feeds, reputation, neural, greylist...)
    WORKDIR/run, db, log    RUNDIR, DBDIR, LOGDIR (owned by nobody)

DNS points at a closed loopback port, so anything left that resolves names
fails at once instead of leaving the machine.  Hyperscan is off: compiling its
database takes ~15 s at startup and the verdicts do not depend on it.

rspamd runs in the foreground (``-f``) as a child of the test process,
drops to ``nobody``, and is stopped by its PID (its workers are reaped by a
parent-PID walk).  The fixture ``rspamd_instance`` is session-scoped.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.spamd import free_port, stop_tree

RSPAMD = "/usr/bin/rspamd"
RSPAMC = "/usr/bin/rspamc"

NETWORK_MODULES = (
    *("fuzzy_check", "rbl", "surbl", "phishing", "spf", "dkim", "dmarc", "arc", "asn", "emails", "dcc"),
    *("neural", "reputation", "url_redirector", "mx_check", "greylist", "ratelimit", "history_redis"),
    *("dkim_signing", "rspamd_update", "whitelist", "replies", "clickhouse", "elastic", "metric_exporter"),
    *("p0f", "external_services", "antivirus", "bimi", "aws_s3"),
)

CONFIG = """\
.include "$CONFDIR/common.conf"
options {
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    dns { nameserver = ["127.0.0.1:1"]; timeout = 0.2s; retransmits = 0; }
    disable_hyperscan = true;
    %(max_message)s
}
logging { type = "file"; filename = "$LOGDIR/rspamd.log"; level = "info"; }
worker "normal" {
    bind_socket = "127.0.0.1:%(port)d";
    count = 1;
    .include "$CONFDIR/worker-normal.inc"
}
"""


MAX_MESSAGE = 1024 * 1024
"""The session instance's ``max_message`` (rspamd's default is 50 MB): its edges stay cheap to test."""


class RspamdInstance:
    """rspamd's normal worker on ``127.0.0.1:port``; ``max_message`` is rspamd's size limit (bytes)."""

    def __init__(self, workdir: Path, max_message: int | None = None) -> None:
        self.workdir = workdir
        self.max_message = max_message
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        limit = f"max_message = {self.max_message};" if self.max_message is not None else ""
        (self.workdir / "rspamd.conf").write_text(CONFIG % {"port": self.port, "max_message": limit})
        local = self.workdir / "local" / "local.d"
        local.mkdir(parents=True, exist_ok=True)
        for module in NETWORK_MODULES:
            (local / f"{module}.conf").write_text("enabled = false;\n")
        for name in ("run", "db", "log"):
            (self.workdir / name).mkdir(exist_ok=True)
            shutil.chown(self.workdir / name, "nobody")
        for path in [self.workdir, *self.workdir.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o755 if path.is_dir() else 0o644)

    def start(self, timeout: float = 120.0) -> None:
        self._write_config()
        out = (self.workdir / "rspamd.out").open("wb")
        self.process = subprocess.Popen(
            [
                RSPAMD,
                "-f",
                "-u",
                "nobody",
                "-g",
                "nogroup",
                "-c",
                str(self.workdir / "rspamd.conf"),
                f"--var=LOCAL_CONFDIR={self.workdir / 'local'}",
                f"--var=RUNDIR={self.workdir / 'run'}",
                f"--var=DBDIR={self.workdir / 'db'}",
                f"--var=LOGDIR={self.workdir / 'log'}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rspamd exited with {self.process.returncode}: {self.log_tail()}")
            if self.ping():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"rspamd did not answer /ping in {timeout} s: {self.log_tail()}")

    def ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=2) as response:
                return bool(response.read().strip() == b"pong")
        except (OSError, http.client.HTTPException):  # a worker still starting may answer half a line
            return False

    def log_tail(self) -> str:
        texts = []
        for name in ("rspamd.out", "log/rspamd.log"):
            with contextlib.suppress(OSError):
                texts.append((self.workdir / name).read_text(errors="replace")[-3000:])
        return "\n".join(texts)

    def rspamc(self, data: bytes, *args: str) -> dict[str, Any]:
        """The real ``rspamc --json`` against this rspamd: its parsed answer."""
        done = subprocess.run(
            [RSPAMC, "-h", f"127.0.0.1:{self.port}", "--json", *args],
            input=data,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer

    def stop(self) -> None:
        if self.process is not None:
            stop_tree(self.process)
        self.process = None


@pytest.fixture(scope="session")
def rspamd_instance() -> Iterator[RspamdInstance]:
    """One private rspamd for the whole session (``max_message`` MAX_MESSAGE), stopped by PID at the end."""
    if not (os.path.exists(RSPAMD) and os.path.exists(RSPAMC)):
        pytest.skip("rspamd is not installed (scripts/test.sh installs it)")
    workdir = Path(tempfile.mkdtemp(prefix="mailsift-rspamd-"))
    instance = RspamdInstance(workdir, max_message=MAX_MESSAGE)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(workdir, ignore_errors=True)
