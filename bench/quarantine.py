#!/usr/bin/env python3
"""bench/quarantine.py — what the quarantine in PostgreSQL costs (issue 15, item 8).

Runs ``mailsift serve`` twice against one private PostgreSQL (started here,
``fsync`` on, as production runs it): once with ``QUARANTINE_STORE = "files"``
and once with ``"database"``, the same pipeline (parsemail + a regexp that
finds EICAR, quarantined as a virus), the SQL index and log on PostgreSQL in
both, reinjecting into ``smtp-sink``.  A load of Q_MSGS messages of Q_SIZE
bytes, Q_VIRUS of them (10%) carrying EICAR, is sent over Q_SESSIONS
concurrent SMTP sessions; the rounds alternate between the stores so a
machine that slows down in the middle hurts both alike.

Then, in each store, one Q_BIG_MB message (EICAR plus a big body) is
quarantined and released, twice: held by the EICAR finding (the body is
parsed and scanned) and held by its envelope sender alone (no body scan, so
the figure is the store's own). The report gives the peak RSS above idle of
the biggest mailsift process while it is stored (sampled from /proc) and of
the ``mailsift quarantine release`` process, so "a 50 MB message never needs
50 MB of Python memory" is measured, not assumed.

    .venv/bin/python bench/quarantine.py        # about 2-3 minutes; needs root (su postgres)

Environment: Q_MSGS (1500), Q_SESSIONS (8), Q_SIZE (10240), Q_VIRUS (0.10),
Q_ROUNDS (2), Q_BIG_MB (50), Q_WORKERS (2), MAILSIFT (.venv/bin/mailsift),
SMTP_SINK (/usr/sbin/smtp-sink).  Prints a Markdown report on stdout.
Every process started here is stopped by its PID on exit.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAILSIFT = os.environ.get("MAILSIFT", str(ROOT / ".venv/bin/mailsift"))
SMTP_SINK = os.environ.get("SMTP_SINK", "/usr/sbin/smtp-sink")
MSGS = int(os.environ.get("Q_MSGS", "1500"))
SESSIONS = int(os.environ.get("Q_SESSIONS", "8"))
SIZE = int(os.environ.get("Q_SIZE", "10240"))
VIRUS = float(os.environ.get("Q_VIRUS", "0.10"))
ROUNDS = int(os.environ.get("Q_ROUNDS", "2"))
BIG_MB = int(os.environ.get("Q_BIG_MB", "50"))
WORKERS = int(os.environ.get("Q_WORKERS", "2"))
PG_BIN = "/usr/local/bin" if os.path.exists("/usr/local/bin/initdb") else "/usr/lib/postgresql/15/bin"
EICAR = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

CONFIG = """\
from mailsift import *
STATE_DIR = {state!r}
USER = None
NODE = "bench"
DATABASE = db.database({url!r})
QUARANTINE_STORE = {store!r}
SMTP_SERVER = ("127.0.0.1", {sink})
SCANNERS = [
    # the big message's second run: held by its envelope sender alone, so its figure is the store's own
    quarantine("policy", sender_regexp([("Held-Sender", r"^held@")])),
    quarantine("virus", parsemail(regexp_scan([("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")]))),
]
SRV = [smtpd(SCANNERS, "127.0.0.1", {port}, max_size={max_size})]
"""


def say(text: str) -> None:
    print(f"[quarantine-bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port} after {timeout:.0f} s")


def as_postgres(command: str) -> None:
    subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", command], check=True, capture_output=True, timeout=120)


@contextlib.contextmanager
def postgresql(work: Path) -> Iterator[str]:
    owner = pwd.getpwnam("postgres")
    where = work / "pg"
    where.mkdir()
    os.chown(where, owner.pw_uid, owner.pw_gid)
    port = free_port()
    data = where / "data"
    options = f'"-c listen_addresses=127.0.0.1 -c unix_socket_directories={where} -p {port}"'
    as_postgres(f"{PG_BIN}/initdb -D {data} -A trust -U postgres")
    as_postgres(f"{PG_BIN}/pg_ctl -D {data} -w -l {where}/log -o {options} start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/%s"
    finally:
        as_postgres(f"{PG_BIN}/pg_ctl -D {data} -w -m fast stop")


def create_database(base_url: str, name: str) -> str:
    import psycopg

    port = base_url.split(":")[2].split("/")[0]
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return base_url % name


def message(number: int, virus: bool, size: int) -> bytes:
    body = (f"line {number} of a benchmark message " * 4 + "\r\n") * max(1, size // 160)
    if virus:
        body = EICAR + "\r\n" + body
    head = (
        "From: bench@example.test\r\nTo: sink@example.test\r\n"
        f"Subject: bench {number}\r\nMessage-ID: <q{number}.{time.time_ns()}@bench>\r\n\r\n"
    )
    return (head + body).encode()


def send_load(port: int, count: int) -> tuple[float, int, int]:
    """Send ``count`` messages over SESSIONS sessions; returns (seconds, accepted, refused)."""
    numbers = list(range(count))
    lock = threading.Lock()
    accepted = refused = 0
    payloads = [message(n, n % round(1 / VIRUS) == 0 if VIRUS else False, SIZE) for n in numbers]

    def session() -> None:
        nonlocal accepted, refused
        client = smtplib.SMTP("127.0.0.1", port, timeout=120)
        try:
            while True:
                with lock:
                    if not numbers:
                        return
                    n = numbers.pop()
                try:
                    client.sendmail("bench@example.test", ["sink@example.test"], payloads[n])
                    with lock:
                        accepted += 1
                except smtplib.SMTPException:
                    with lock:
                        refused += 1
                    client.rset()
        finally:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                client.quit()

    threads = [threading.Thread(target=session) for _ in range(SESSIONS)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - start, accepted, refused


def tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError):
                    todo += [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
    return found


def rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Gateway:
    def __init__(self, work: Path, url: str, store: str, sink: int) -> None:
        self.state = work / f"state-{store}"
        self.state.mkdir(exist_ok=True)
        self.port = free_port()
        self.config = work / f"config-{store}.py"
        self.config.write_text(
            CONFIG.format(
                state=str(self.state), url=url, store=store, sink=sink, port=self.port, max_size=(BIG_MB + 20) << 20
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Gateway:
        self.log = log = open(self.state / "serve.log", "ab")
        self.process = subprocess.Popen(
            [MAILSIFT, "serve", "-c", str(self.config), "-w", str(WORKERS), "--log-level", "warning"],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        wait_port(self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
            self.log.close()

    def quarantined(self) -> list[str]:
        out = subprocess.run(
            [MAILSIFT, "quarantine", "list", "-c", str(self.config), "--json", "--limit", "0"],
            capture_output=True,
            text=True,
            check=True,
        )
        return [entry["id"] for entry in json.loads(out.stdout)]


def measure_big(work: Path, base_url: str, store: str, sink_port: int, sender: str) -> tuple[str, int, int, int]:
    """One BIG_MB message quarantined then released.

    Returns (store, workers KiB above idle, release peak KiB, `quarantine list` peak KiB).
    """
    url = create_database(base_url, f"bench_big_{store}_{sender.split('@')[0]}")
    big = message(0, True, 0) + base64.encodebytes(os.urandom(BIG_MB * 3 << 18))
    with Gateway(work, url, store, sink_port) as gateway:
        assert gateway.process is not None
        root = gateway.process.pid
        time.sleep(1)
        idle = max(rss_kib(pid) for pid in tree(root))
        peak = [idle]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max([peak[0], *(rss_kib(pid) for pid in tree(root))])
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        say(f"{store}: one message of {len(big) >> 20} MB")
        try:
            with smtplib.SMTP("127.0.0.1", gateway.port, timeout=600) as client:
                client.sendmail(sender, ["sink@example.test"], big)
        finally:
            done.set()
            sampler.join()
        ids = gateway.quarantined()
        listing = [MAILSIFT, "quarantine", "list", "-c", str(gateway.config)]
        baseline = subprocess.run(["/usr/bin/time", "-f", "%M", *listing], capture_output=True, text=True, check=True)
        base_kib = int(baseline.stderr.strip().splitlines()[-1])
        command = [MAILSIFT, "quarantine", "release", "-c", str(gateway.config), ids[0]]
        release = subprocess.run(["/usr/bin/time", "-f", "%M", *command], capture_output=True, text=True, check=False)
        if release.returncode != 0:
            say(f"release failed: {release.stdout} {release.stderr}")
            return store, peak[0] - idle, -1, base_kib
        return store, peak[0] - idle, int(release.stderr.strip().splitlines()[-1]), base_kib


def main() -> int:
    if os.geteuid() != 0:
        print("bench/quarantine.py needs root (it runs PostgreSQL as the postgres user)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="mailsift-qbench-"))
    os.chmod(work, 0o755)
    sink_port = free_port()
    sink = subprocess.Popen([SMTP_SINK, "-u", "root", f"127.0.0.1:{sink_port}", "256"], start_new_session=True)
    rows: list[tuple[str, int, float, int, int, int]] = []
    memory: list[tuple[str, int, int, int]] = []
    try:
        wait_port(sink_port)
        with postgresql(work) as base_url:
            for round_number in range(ROUNDS):
                for store in ("files", "database") if round_number % 2 == 0 else ("database", "files"):
                    url = create_database(base_url, f"bench_{store}_{round_number}")
                    with Gateway(work, url, store, sink_port) as gateway:
                        send_load(gateway.port, 50)  # warm-up: workers forked, schema made, caches filled
                        before = len(gateway.quarantined())
                        say(f"round {round_number + 1}: {store}, {MSGS} messages")
                        seconds, accepted, refused = send_load(gateway.port, MSGS)
                        held = len(gateway.quarantined()) - before
                    rows.append((store, round_number + 1, seconds, accepted, refused, held))
                    shutil.rmtree(gateway.state, ignore_errors=True)
            for sender in ("bench@example.test", "held@example.test"):
                for store in ("files", "database"):
                    memory.append(measure_big(work, base_url, store, sink_port, sender))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sink.pid, signal.SIGTERM)
        sink.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)

    print(f"## Quarantine into PostgreSQL vs files ({time.strftime('%Y-%m-%d %H:%M')})\n")
    print(
        f"{MSGS} messages of {SIZE} bytes, {VIRUS:.0%} with EICAR (quarantined), {SESSIONS} sessions, "
        f"{WORKERS} workers, index and log in PostgreSQL 15 (fsync on) in both; {ROUNDS} rounds alternating.\n"
    )
    print("| store | round | seconds | msgs/s | accepted | refused | quarantined |")
    print("|---|---|---|---|---|---|---|")
    for store, number, seconds, accepted, refused, held in rows:
        print(f"| {store} | {number} | {seconds:.1f} | {accepted / seconds:.0f} | {accepted} | {refused} | {held} |")
    rate = {
        s: sum(r[3] for r in rows if r[0] == s) / sum(r[2] for r in rows if r[0] == s) for s in ("files", "database")
    }
    print(
        f"\nMean: files {rate['files']:.0f} msgs/s, database {rate['database']:.0f} msgs/s: "
        f"database/files = {rate['database'] / rate['files']:.2f}.\n"
    )
    print(
        f"| {BIG_MB} MB message held by | store | a worker's RSS above idle (peak) | `quarantine release`: peak RSS "
        "| `quarantine list` (the CLI's baseline): peak RSS |"
    )
    print("|---|---|---|---|---|")
    for index, (store, stored, released, base) in enumerate(memory):
        held = "parsemail + regexp (EICAR in the body)" if index < 2 else "the envelope sender (no body scan)"
        print(f"| {held} | {store} | {stored / 1024:.1f} MB | {released / 1024:.1f} MB | {base / 1024:.1f} MB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
