#!/usr/bin/env python3
"""bench/memory.py — memory of the bundled default config (issue 10, item 10).

Runs ``mailsift serve -w 2`` with the bundled default config (as
``scripts/run.sh`` runs it: no ``-c``) in a temporary STATE_DIR, on loopback
(127.0.0.1:10024, and its own clamd and spamd), and prints a Markdown table of
RSS and PSS (``/proc/PID/smaps_rollup``) per process:

* idle: after clamd and spamd answer and the workers have settled;
* under load: the peak while ``smtp-source`` sends MEM_MSGS messages of
  MEM_SIZE bytes over MEM_SESSIONS sessions (the total row is the peak of the
  sum, not the sum of the per-process peaks);
* after load: idle again, once the load is over.

mailsift's processes (the supervisor and the workers it forked) are counted
apart from the daemons it starts (clamd, spamd and spamd's children). Every
process is found by a parent->child walk from the supervisor's PID, never by
name; everything started here is stopped by its PID on exit, and the state
directory is removed (MEM_KEEP=1 keeps it).

    .venv/bin/python bench/memory.py            # about 1-2 minutes

Environment: MEM_WORKERS (2), MEM_MSGS (300), MEM_SESSIONS (4),
MEM_SIZE (10240), MEM_LOG_LEVEL (info), MEM_KEEP, MAILSIFT (.venv/bin/mailsift),
SMTP_SOURCE (/usr/sbin/smtp-source). The ports are the default config's
(10024 and spamd's 10783): they must be free.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAILSIFT = os.environ.get("MAILSIFT", str(ROOT / ".venv" / "bin" / "mailsift"))
SMTP_SOURCE = os.environ.get("SMTP_SOURCE", "/usr/sbin/smtp-source")
WORKERS = int(os.environ.get("MEM_WORKERS", "2"))
MSGS = int(os.environ.get("MEM_MSGS", "300"))
SESSIONS = int(os.environ.get("MEM_SESSIONS", "4"))
SIZE = int(os.environ.get("MEM_SIZE", "10240"))
LOG_LEVEL = os.environ.get("MEM_LOG_LEVEL", "info")
PORT, SPAMD_PORT = 10024, 10783  # the bundled default config's
SAMPLE_EVERY = 0.2


def say(text: str) -> None:
    print(f"[memory {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ /proc


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(c) for c in handle.read().split()]
    return found


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def memory(pid: int) -> tuple[int, int] | None:
    """(RSS, PSS) in kB from /proc/PID/smaps_rollup, or None if the process is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key == "Rss":
                    rss = int(rest.split()[0])
                elif key == "Pss":
                    pss = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return rss, pss


def daemon_name(line: bytes) -> str:
    """A daemon's name from its command line: the program, past an interpreter (perl -T /usr/sbin/spamd)."""
    words = [os.path.basename(w.decode(errors="replace")) for w in line.split(b"\0") if w]
    for word in words:
        if word in ("clamd", "spamd"):
            return word
    return words[0] if words else "?"


def processes(supervisor: int) -> dict[int, str]:
    """PID -> role: the supervisor, its forked workers (same command line), each daemon's tree."""
    roles = {supervisor: "supervisor"}
    own = cmdline(supervisor)
    workers = 0
    for child in sorted(children(supervisor)):
        line = cmdline(child)
        if line == own:
            workers += 1
            roles[child] = f"worker {workers}"
            continue
        name = daemon_name(line)
        queue = [child]
        while queue:
            pid = queue.pop()
            roles[pid] = name
            queue += children(pid)
    return roles


@dataclass
class Phase:
    """Samples of one phase: per process, and of the sums."""

    per_pid: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    roles: dict[int, str] = field(default_factory=dict)
    sums: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # group -> (rss, pss) sums

    def sample(self, supervisor: int) -> None:
        roles = processes(supervisor)
        sums: dict[str, list[int]] = {}
        for pid, role in roles.items():
            mem = memory(pid)
            if mem is None:
                continue
            self.roles[pid] = role
            self.per_pid.setdefault(pid, []).append(mem)
            group = "mailsift" if role == "supervisor" or role.startswith("worker") else role
            total = sums.setdefault(group, [0, 0, 0])
            total[0] += mem[0]
            total[1] += mem[1]
            total[2] += 1
        for group, (rss, pss, count) in sums.items():
            self.sums.setdefault(group, []).append((rss, pss))
            self.sums.setdefault(f"{group}#n", []).append((count, count))

    def peak(self, samples: list[tuple[int, int]]) -> tuple[int, int]:
        return max(s[0] for s in samples), max(s[1] for s in samples)

    def typical(self, samples: list[tuple[int, int]]) -> tuple[int, int]:
        return int(statistics.median(s[0] for s in samples)), int(statistics.median(s[1] for s in samples))


def sample_for(phase: Phase, supervisor: int, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        phase.sample(supervisor)
        time.sleep(SAMPLE_EVERY)


# ------------------------------------------------------------------ helpers


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def answers(kind: str, state: Path) -> bool:
    try:
        if kind == "clamd":
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(1)
                sock.connect(str(state / "clamd" / "clamd.sock"))
                sock.sendall(b"zPING\0")
                return sock.recv(16).startswith(b"PONG")
        if kind == "spamd":
            with socket.create_connection(("127.0.0.1", SPAMD_PORT), timeout=1) as sock:
                sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
                return b"PONG" in sock.recv(64)
        with socket.create_connection(("127.0.0.1", PORT), timeout=1) as sock:
            return sock.recv(64).startswith(b"220")
    except OSError:
        return False


def stop(process: subprocess.Popen[bytes], seconds: float) -> None:
    """SIGTERM the process (and, after `seconds`, SIGKILL it and its descendants left)."""
    tree = [process.pid]
    for pid in tree:
        tree += children(pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(seconds)
    for pid in tree:
        if pid == process.pid and process.poll() is not None:
            continue
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


@contextlib.contextmanager
def started(argv: list[str], **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(argv, **kwargs)  # type: ignore[call-overload]
    try:
        yield process
    finally:
        stop(process, 30)


def measured_commit() -> str:
    """The git commit of the mailsift code that MAILSIFT runs (its package's checkout)."""
    python = os.path.join(os.path.dirname(MAILSIFT), "python")
    where = subprocess.run(
        [python, "-c", "import mailsift, os; print(os.path.dirname(mailsift.__file__))"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if not where:
        return "?"
    head = subprocess.run(["git", "-C", where, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", where, "status", "--porcelain", "--untracked-files=no", "--", "."],
        capture_output=True,
        text=True,
    )
    return (head.stdout.strip() or "?") + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")


def mb(kb: int) -> str:
    return f"{kb / 1024:.1f}"


# ------------------------------------------------------------------ main


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop what was started
    for tool in (MAILSIFT, SMTP_SOURCE):
        if not os.access(tool, os.X_OK):
            say(f"{tool} not found (smtp-source: apt-get install postfix; mailsift: scripts/setup.sh)")
            return 2
    for port in (PORT, SPAMD_PORT):
        if not port_free(port):
            say(f"127.0.0.1:{port} is in use: the default config needs it")
            return 2
    state = Path(tempfile.mkdtemp(prefix="mailsift-memory-"))
    state.chmod(0o711)  # clamd drops to its own user, which must reach its socket directory
    env = {**os.environ, "MAILSIFT_STATE_DIR": str(state)}
    argv = [MAILSIFT, "serve", "-w", str(WORKERS), "--log-level", LOG_LEVEL, "--drain-seconds", "10"]
    idle, load, after = Phase(), Phase(), Phase()
    try:
        with open(state / "mailsift.log", "wb") as log, started(argv, env=env, stdout=log, stderr=log) as serve:
            say(f"started {' '.join(argv)} (pid {serve.pid}), STATE_DIR {state}")
            deadline = time.monotonic() + 240
            waiting = ["smtpd", "clamd", "spamd"]
            while waiting and time.monotonic() < deadline and serve.poll() is None:
                waiting = [kind for kind in waiting if not answers(kind, state)]
                time.sleep(0.5)
            if waiting or serve.poll() is not None:
                say(f"not answering: {', '.join(waiting) or 'mailsift exited'}; the log:")
                sys.stderr.write((state / "mailsift.log").read_text(errors="replace")[-3000:])
                return 1
            say("smtpd, clamd and spamd answer; settling 3 s, then idle samples for 3 s")
            time.sleep(3)
            sample_for(idle, serve.pid, 3)

            source = [SMTP_SOURCE, "-s", str(SESSIONS), "-m", str(MSGS), "-l", str(SIZE)]
            source += ["-f", "bench@example.test", "-t", "user@example.test", f"127.0.0.1:{PORT}"]
            say(f"load: {' '.join(source)}")
            t0 = time.monotonic()
            with open(state / "source.err", "wb") as err, started(source, stderr=err) as load_run:
                while load_run.poll() is None:
                    load.sample(serve.pid)
                    time.sleep(SAMPLE_EVERY)
            errors = (state / "source.err").read_text(errors="replace")
            seconds = time.monotonic() - t0
            if load_run.returncode or errors.strip():
                say(f"smtp-source failed (status {load_run.returncode}): {errors.strip()[:2000]}")
                return 1
            delivered = sum(1 for _ in (state / "mail").glob("*/new/*"))
            quarantined = sum(1 for p in (state / "quarantine").rglob("*") if p.is_file())
            say(f"{MSGS} messages in {seconds:.1f} s ({delivered} delivered, {quarantined} quarantine files)")
            time.sleep(2)
            sample_for(after, serve.pid, 3)
    finally:
        if os.environ.get("MEM_KEEP"):
            say(f"kept {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)
    report(idle, load, after, argv, seconds, delivered)
    return 0


def report(idle: Phase, load: Phase, after: Phase, argv: list[str], seconds: float, delivered: int) -> None:
    rows: list[tuple[str, str, list[str]]] = []
    roles = {**idle.roles, **load.roles, **after.roles}

    def cells(pids: list[int]) -> list[str]:
        out = []
        for phase, pick in ((idle, Phase.typical), (load, Phase.peak), (after, Phase.typical)):
            rss = pss = 0
            seen = False
            for pid in pids:
                if phase.per_pid.get(pid):
                    seen = True
                    r, p = pick(phase, phase.per_pid[pid])
                    rss, pss = rss + r, pss + p
            out += [mb(rss), mb(pss)] if seen else ["—", "—"]
        return out

    def group_cells(group: str) -> list[str]:
        out = []
        for phase, pick in ((idle, Phase.typical), (load, Phase.peak), (after, Phase.typical)):
            samples = phase.sums.get(group)
            out += [mb(pick(phase, samples)[0]), mb(pick(phase, samples)[1])] if samples else ["—", "—"]
        return out

    mailsift = sorted((p for p, r in roles.items() if r == "supervisor" or r.startswith("worker")), key=roles.get)
    for pid in mailsift:
        rows.append((roles[pid], str(pid), cells([pid])))
    rows.append(("**mailsift total**", f"{len(mailsift)} processes", [f"**{c}**" for c in group_cells("mailsift")]))
    for name in sorted({r for r in roles.values() if r != "supervisor" and not r.startswith("worker")}):
        pids = [p for p, r in roles.items() if r == name]
        counts = [n for n, _ in load.sums.get(f"{name}#n", [])] or [len(pids)]
        rows.append((f"{name} (apart)", f"up to {max(counts)} processes", group_cells(name)))

    commit = measured_commit()
    print(f"## mailsift memory, bundled default config — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    names = ("MEM_WORKERS", "MEM_MSGS", "MEM_SESSIONS", "MEM_SIZE")
    tunables = [f"{k}={os.environ[k]}" for k in names if k in os.environ]
    print(f"Made by `{' '.join([*tunables, 'bench/memory.py'])}`: `{' '.join(['mailsift', *argv[1:]])}`")
    print(f"(bundled default config, temporary STATE_DIR), git {commit}; MB = 1024 kB.\n")
    print("| process | pid | idle RSS | idle PSS | load peak RSS | load peak PSS | after load RSS | after load PSS |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, pid, values in rows:
        print(f"| {name} | {pid} | {' | '.join(values)} |")
    print(
        f"\n- load: `smtp-source -s {SESSIONS} -m {MSGS} -l {SIZE}` to 127.0.0.1:{PORT}: {MSGS} messages in"
        f" {seconds:.1f} s, {delivered} delivered to the Maildirs; sampled every {SAMPLE_EVERY} s."
    )
    print(
        "- idle and after load: medians of the samples over 3 s; load: the peak (the total row: the peak of"
        " the sum). PSS shares the pages the workers share with the supervisor after fork."
    )
    print(f"- Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, Linux {os.uname().release}.")


if __name__ == "__main__":
    sys.exit(main())
