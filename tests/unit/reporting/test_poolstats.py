"""Scanner pool counters across processes (:mod:`mailsift.reporting.poolstats`).

A child process scans through a ``clamd([a, b])`` pool (``a`` a fake clamd the
child serves, ``b`` a socket nobody listens on) and publishes its counters;
this process scans through the same two backends, publishes its own, and
reads and renders the sums -- then the child exits and its file is dropped.
Files of a dead PID and of a reused PID are ignored and deleted.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from mailsift import config as config_module
from mailsift.message.mail import Envelope, Mail
from mailsift.reporting import poolstats
from mailsift.scanners.base import MailTarget
from mailsift.scanners.engines.clamav import clamd

CHILD = """
import asyncio, sys
from mailsift.message.mail import Envelope, Mail
from mailsift.reporting.poolstats import Publisher
from mailsift.scanners.base import MailTarget
from mailsift.scanners.engines.clamav import clamd
from mailsift.testing import FakeClamd

async def main(a_path, b_path, state):
    async with FakeClamd(a_path) as a:
        scanner = clamd([a_path, b_path])
        mail = Mail(Envelope("s@example.org", ["r@example.org"]), b"Subject: x\\r\\n\\r\\nhi\\r\\n")
        for _ in range(3):  # a, b (refused: out, retried on a), a
            await scanner.scan(MailTarget(mail))
        Publisher([scanner.pool], state).write()
        print("written", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # serve a (for the parent's scans) until told to stop
        await scanner.close_resources()

asyncio.run(main(*sys.argv[1:]))
"""


def target() -> MailTarget:
    return MailTarget(Mail(Envelope("s@example.org", ["r@example.org"]), b"Subject: x\r\n\r\nhi\r\n"))


def metrics(rows: list[poolstats.Row]) -> dict[tuple[str, str], float]:
    """The rendered text, parsed back: ``(sample name, backend) -> value``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(poolstats.PoolCounters(rows))
    parsed = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            assert sample.labels["scanner"] == "clamd"
            parsed[(sample.name, Path(sample.labels["backend"]).name)] = sample.value
    return parsed


async def test_counters_of_two_processes_are_summed_and_a_gone_worker_dropped(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    a_path, b_path = str(tmp_path / "a.sock"), str(tmp_path / "b.sock")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, a_path, b_path, state],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        assert await asyncio.to_thread(child.stdout.readline) == "written\n"
        scanner = clamd([a_path, b_path])  # the same backends, through the child's fake clamd
        for _ in range(2):  # a, then b (refused: out, retried on a)
            await scanner.scan(target())
        await scanner.close_resources()
        publisher = poolstats.Publisher([scanner.pool], state)
        assert publisher.write()
        assert not publisher.write()  # unchanged: not written again
        files = sorted(os.listdir(Path(state) / "pools"))
        assert files == sorted([f"{child.pid}.json", f"{os.getpid()}.json"])
        assert all((Path(state) / "pools" / name).stat().st_mode & 0o777 == 0o600 for name in files)
        both = metrics(poolstats.read(state))
        assert both[("mailsift_scanner_backend_requests_total", "a.sock")] == 3 + 2
        assert both[("mailsift_scanner_backend_requests_total", "b.sock")] == 1 + 1
        assert both[("mailsift_scanner_backend_failures_total", "b.sock")] == 2
        assert both[("mailsift_scanner_backend_ejections_total", "b.sock")] == 2
        assert both[("mailsift_scanner_backend_ejections_total", "a.sock")] == 0
        assert both[("mailsift_scanner_backend_outstanding", "a.sock")] == 0
        assert both[("mailsift_scanner_backend_up", "a.sock")] == 1
        assert both[("mailsift_scanner_backend_up", "b.sock")] == 0
        child.stdin.write("stop\n")
        child.stdin.flush()
        assert child.wait(60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdin.close()
        child.stdout.close()
    mine = metrics(poolstats.read(state))  # the child is gone: its counters leave the sums...
    assert mine[("mailsift_scanner_backend_requests_total", "a.sock")] == 2
    assert os.listdir(Path(state) / "pools") == [f"{os.getpid()}.json"]  # ...and its file is deleted
    publisher.stop()
    assert poolstats.read(state) == []


def test_dead_and_reused_pids_are_ignored(tmp_path: Path) -> None:
    directory = tmp_path / "pools"
    directory.mkdir()
    row = {"scanner": "clamd", "backend": "/run/a.ctl", "requests": 7, "failures": 0, "ejections": 0}
    row |= {"outstanding": 0, "up": 1}
    finished = subprocess.Popen([sys.executable, "-c", "pass"])  # a PID that is gone now
    finished.wait()
    (directory / f"{finished.pid}.json").write_text(json.dumps({"pid": finished.pid, "start": None, "backends": [row]}))
    sleeper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        started = poolstats.process_start(sleeper.pid)
        assert started is not None
        reused = {"pid": sleeper.pid, "start": str(int(started) + 1), "backends": [row]}  # same PID, another process
        (directory / f"{sleeper.pid}.json").write_text(json.dumps(reused))
        (directory / ".123.tmp").write_text("half a file")  # a writer's temporary file: not read
        assert poolstats.read(str(tmp_path)) == []
        assert sorted(os.listdir(directory)) == [".123.tmp"]
        live = {"pid": sleeper.pid, "start": started, "backends": [row]}
        (directory / f"{sleeper.pid}.json").write_text(json.dumps(live))
        assert [(one["backend"], one["requests"]) for one in poolstats.read(str(tmp_path))] == [("/run/a.ctl", 7)]
    finally:
        sleeper.kill()
        sleeper.wait()
        assert sleeper.stdin is not None
        sleeper.stdin.close()


async def test_a_worker_publishes_its_configs_pools_while_it_runs(tmp_path: Path) -> None:
    path = tmp_path / "mailsift.conf"
    path.write_text(
        "from mailsift import *\n"
        f"STATE_DIR = {str(tmp_path / 'state')!r}\n"
        "USER = None\n"
        "SCANNERS = [clamd(['/run/a.ctl', ('127.0.0.1', 3310)]), spamassassind('/run/spamd.sock')]\n"
        "SRV = []\n"
    )
    config = config_module.load(str(path))
    pools = poolstats.pools_of(config.objects())
    assert sorted(pool.engine for pool in pools) == ["clamd", "spamassassind"]
    publisher = poolstats.Publisher(pools, config.settings.state_dir, interval=0.01)
    publisher.start()
    for _ in range(500):
        await asyncio.sleep(0.01)
        if os.path.exists(publisher.path):
            break
    rows = poolstats.read(config.settings.state_dir)
    assert [(row["scanner"], row["backend"], row["up"]) for row in rows] == [
        ("clamd", "/run/a.ctl", 1),
        ("clamd", "127.0.0.1:3310", 1),
        ("spamassassind", "/run/spamd.sock", 1),
    ]
    publisher.stop()
    assert not os.path.exists(publisher.path)
    assert metrics([]) == {}  # no pools, no lines
