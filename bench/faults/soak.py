"""Fault soak: longer versions of the fault matrix's cases that matter under sustained load.

Run from the repository root::

    .venv/bin/python bench/faults/soak.py                      # every case, ~10-15 min on 2 cores
    .venv/bin/python bench/faults/soak.py --case sigkill --scale 0.2
    .venv/bin/python bench/faults/soak.py --out bench/faults/RESULTS.md

Each case starts a real ``mailsift serve`` (tests/helpers/faults.py's :class:`Serve`), sends a
counted load through :class:`FaultClient` (every reply recorded per Message-ID; the client
retries ``4xx`` and no answer like an MTA), injects its fault over and over, lifts it, lets
the MTA retry what was refused, and accounts for every message with :func:`account`:
``sent = accepted + refused``, ``lost`` = accepted and found nowhere, ``duplicates`` = extra
copies.  A lost message, a duplicate the case does not argue, a ``5xx`` or a transaction cut
without a reply is a **finding**: the case's verdict says so, the state directory (logs) is
kept and the command exits 1.  The Markdown table is printed (and written with ``--out``).

tests/faults/test_matrix.py runs the same harness in CI with hundreds of messages per case;
this runs thousands, for minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.helpers.clamd import ClamdInstance  # noqa: E402
from tests.helpers.faults import (  # noqa: E402
    Accounting,
    FaultClient,
    FaultyNextHop,
    Serve,
    account,
    background,
    idle_connections,
    peak_rss_kb,
    quarantine_categories,
    signal_every,
    slowloris,
)
from tests.helpers.samples import EICAR_TEXT  # noqa: E402

# ---------------------------------------------------------------------------------------- results


@dataclass
class Result:
    case: str
    fault: str
    accounting: Accounting
    wall: float
    peak_rss_kb: int
    duplicates_argued: str = ""
    """Why duplicates are unavoidable in this case (empty: none allowed)."""
    cuts_argued: str = ""
    """Why a transaction may end without a reply in this case (empty: never)."""
    notes: dict[str, Any] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    error: str = ""
    """The case itself broke (not a finding about mailsift: the harness, or the machine)."""
    kept: str = ""
    """The case's directory, kept when there is a finding (serve.log, state)."""

    def judge(self) -> None:
        a = self.accounting
        if not a.balanced:
            self.findings.append(f"unbalanced: sent {a.sent} != accepted {a.accepted} + refused {a.refused}")
        if a.lost:
            self.findings.append(f"LOST {a.lost}: {', '.join(a.lost_ids[:5])}")
        if a.duplicates and not self.duplicates_argued:
            self.findings.append(f"{a.duplicates} unargued duplicate(s): {', '.join(a.duplicate_ids[:5])}")
        if a.refused_5xx:
            self.findings.append(f"{a.refused_5xx} message(s) refused with 5xx")
        if a.codes.get("none") and not self.cuts_argued:
            self.findings.append(f"{a.codes['none']} transaction(s) cut without a reply")

    def problems(self) -> list[str]:
        return [*self.findings, *([f"ERROR: {self.error}"] if self.error else [])]

    @property
    def verdict(self) -> str:
        return "ERROR" if self.error else "FINDING" if self.findings else "ok"


def refused_by_code(client: FaultClient) -> Counter[str]:
    """The final reply of every refused message (``none``: no answer)."""
    found: Counter[str] = Counter()
    for mid in client.replies:
        code = client.final(mid)
        if code is None:
            found["none"] += 1
        elif not 200 <= code < 300:
            found[str(code)] += 1
    return found


def duplicated(client: FaultClient, accounting: Accounting) -> dict[str, list[int | None]]:
    """Every reply the first duplicated messages got (``None``: no answer), for the analysis."""
    return {mid.split("@")[0]: client.replies.get(mid, []) for mid in accounting.duplicate_ids[:10]}


@contextlib.contextmanager
def worker_rss(serve: Serve, peak: list[int]) -> Iterator[None]:
    """Sample the workers' VmHWM every half second (workers killed and replaced included);
    the highest is left in ``peak[0]`` (kB)."""

    def sample(stop: threading.Event) -> None:
        while True:
            with contextlib.suppress(AssertionError, OSError):
                for pid in serve.children():
                    peak[0] = max(peak[0], peak_rss_kb(pid))
            if stop.wait(0.5):
                return

    with background(sample):
        yield


def clock(seconds: float) -> Callable[[], bool]:
    """``until`` for :meth:`FaultClient.load`: true once ``seconds`` have passed."""
    end = time.monotonic() + seconds
    return lambda: time.monotonic() >= end


# ---------------------------------------------------------------------------------------- cases


def case_sigkill(where: Path, scale: float) -> Result:
    """A worker SIGKILLed every 200 messages during 3,000 (15 kills), next hop answering after 50 ms."""
    count = max(200, round(3000 * scale))
    every = 200
    concurrency = 6
    next_hop = FaultyNextHop()
    with next_hop:
        next_hop.delay = 0.05
        peak = [0]
        with Serve(where, next_hop.port).start() as serve, worker_rss(serve, peak):
            client = FaultClient(serve.port, "soak-sigkill", retries=6, retry_delay=1.0)
            killed: list[int] = []

            def kill(stop: threading.Event) -> None:
                share = 1
                while not stop.wait(0.05):
                    if len(client.replies) < every * share:
                        continue
                    share += 1
                    children = serve.children()
                    if children:
                        victim = children[len(killed) % len(children)]
                        with contextlib.suppress(OSError):
                            os.kill(victim, signal.SIGKILL)
                            killed.append(victim)

            start = time.monotonic()
            with background(kill):
                client.load(count, concurrency=concurrency)
            client.retry_refused(concurrency=concurrency)  # the MTA's later retry
            alive = serve.alive()
            accounting = account(client, next_hop, serve.state)
            wall = time.monotonic() - start
    result = Result(
        "sigkill",
        f"a worker SIGKILLed every {every} messages during {count} ({concurrency} clients, next hop 50 ms)",
        accounting,
        wall,
        peak[0],
        duplicates_argued=(
            "a worker killed after the next hop took a message and before it answered the client: "
            "next hop accepted, reply lost (at most one per message in flight on the killed worker, "
            f"<= kills x clients = {len(killed) * concurrency}; each duplicated message must have had an "
            "attempt without an answer)"
        ),
        cuts_argued="a killed worker's connections close without a reply; the client retries them",
        notes={
            "workers killed": len(killed),
            "supervisor alive": alive,
            "refused by code": refused_by_code(client),
            "no answer": dict(client.no_answer),
            "replies of duplicated messages": duplicated(client, accounting),
        },
    )
    if not alive:
        result.findings.append("the supervisor died")
    if accounting.duplicates > len(killed) * concurrency:
        result.findings.append(f"more duplicates ({accounting.duplicates}) than messages in flight at the kills")
    uncut = [mid for mid in accounting.duplicate_ids if None not in client.replies.get(mid, [])]
    if uncut:  # a duplicate is argued only for a message whose transaction a kill cut
        result.findings.append(f"{len(uncut)} duplicate(s) of messages never cut by a kill: {', '.join(uncut[:5])}")
    return result


def case_sighup(where: Path, scale: float, connections: str) -> Result:
    """SIGHUP every second for ~2 minutes of load; connections kept (Postfix-like) or new per message."""
    seconds = max(20.0, 120 * scale)
    next_hop = FaultyNextHop()
    with next_hop:
        next_hop.delay = 0.2
        peak = [0]
        with Serve(where, next_hop.port).start() as serve, worker_rss(serve, peak):
            client = FaultClient(
                serve.port, f"soak-sighup-{connections}", retries=6, retry_delay=0.5, reuse=connections == "kept"
            )
            start = time.monotonic()
            with background(signal_every(serve, signal.SIGHUP, 1.0)):
                client.load(1_000_000, concurrency=4, until=clock(seconds))
            loaded = time.monotonic() - start
            client.retry_refused()
            alive = serve.alive()
            accounting = account(client, next_hop, serve.state)
            wall = time.monotonic() - start
            reloads = serve.log_text().count("reloaded")
    result = Result(
        f"sighup-{connections}",
        f"SIGHUP every second for {seconds:.0f} s of load, 4 clients, "
        f"{'connections kept between messages' if connections == 'kept' else 'a new connection per message'}, "
        "next hop 200 ms",
        accounting,
        wall,
        peak[0],
        notes={
            "load lasted (s)": round(loaded),
            "'reloaded' log lines": reloads,
            "supervisor alive": alive,
            "refused by code": refused_by_code(client),
            "no answer": dict(client.no_answer),
            "replies of duplicated messages": duplicated(client, accounting),
        },
    )
    if not alive:
        result.findings.append("the supervisor died")
    return result


def case_clamd_restarted(where: Path, scale: float) -> Result:
    """A real clamd restarted 8 times during 2,000 messages; every 50th carries EICAR."""
    count = max(200, round(2000 * scale))
    restarts = 8
    every = count // (restarts + 1)
    clamd = ClamdInstance(Path("/tmp") / f"msf-soak-clamd-{os.getpid()}")
    scanners = f'quarantine("virus", clamd({str(clamd.socket_path)!r}, timeout=2.0)),'

    def body(number: int) -> str:
        return f"message {number} {EICAR_TEXT}" if number % 50 == 0 else f"message {number}"

    infected = len([n for n in range(count) if n % 50 == 0])
    clamd.start()
    try:
        next_hop = FaultyNextHop()
        with next_hop:
            peak = [0]
            with Serve(where, next_hop.port, scanners=scanners).start() as serve, worker_rss(serve, peak):
                client = FaultClient(serve.port, "soak-clamd-restarted", retries=6, retry_delay=1.0)
                done: list[float] = []

                def restart(stop: threading.Event) -> None:
                    for share in range(1, restarts + 1):
                        while len(client.replies) < every * share:
                            if stop.wait(0.05):
                                return
                        begun = time.monotonic()
                        clamd.restart()
                        done.append(time.monotonic() - begun)

                start = time.monotonic()
                with background(restart):
                    client.load(count, concurrency=4, body=body)
                client.retry_refused()
                accounting = account(client, next_hop, serve.state)
                wall = time.monotonic() - start
                categories = quarantine_categories(serve.state)
    finally:
        clamd.stop()
    result = Result(
        "clamd-restarted",
        f"real clamd restarted {restarts} times during {count} messages (every {every}; "
        f"every 50th message carries EICAR), scanner timeout 2 s",
        accounting,
        wall,
        peak[0],
        notes={
            "clamd restarts": len(done),
            "longest restart (s)": round(max(done, default=0.0), 1),
            "quarantined": dict(categories),
            "EICAR messages": infected,
            "refused by code": refused_by_code(client),
            "no answer": dict(client.no_answer),
            "replies of duplicated messages": duplicated(client, accounting),
        },
    )
    if set(categories) - {"virus"}:
        result.findings.append(f"unexpected quarantine categories: {dict(categories)}")
    if categories.get("virus", 0) != infected:
        result.findings.append(f"{categories.get('virus', 0)} quarantined as virus, {infected} carried EICAR")
    return result


FLAPS = (("down", 1.5), ("up", 1.5), ("4xx", 1.5), ("up", 1.5), ("slow", 2.0), ("up", 1.5))
"""The next hop's phases, in turns (seconds each)."""


def case_next_hop_flapping(where: Path, scale: float) -> Result:
    """The next hop down / 4xx / slow in turns, with normal spells between, during 3,000 messages
    and at least 90 s (the load goes on until both are reached)."""
    count = max(200, round(3000 * scale))
    seconds = max(15.0, 90 * scale)
    next_hop = FaultyNextHop()
    with next_hop:
        peak = [0]
        with Serve(where, next_hop.port, relay_timeout=10.0).start() as serve, worker_rss(serve, peak):
            client = FaultClient(serve.port, "soak-next-hop-flapping", retries=8, retry_delay=1.0)
            phases: Counter[str] = Counter()

            def flap(stop: threading.Event) -> None:
                try:
                    while True:
                        for phase, seconds in FLAPS:
                            phases[phase] += 1
                            if phase == "down":
                                next_hop.go_down()
                            elif phase == "4xx":
                                next_hop.data_reply = "451 4.3.0 try later"
                            elif phase == "slow":
                                next_hop.delay = 1.0
                            if stop.wait(seconds):
                                return
                            if next_hop.is_down:
                                next_hop.come_up()
                            next_hop.data_reply, next_hop.delay = None, 0.0
                finally:
                    if next_hop.is_down:
                        next_hop.come_up()
                    next_hop.data_reply, next_hop.delay = None, 0.0

            start = time.monotonic()
            timer = clock(seconds)
            with background(flap):
                client.load(1_000_000, concurrency=6, until=lambda: timer() and len(client.replies) >= count)
            client.retry_refused()
            accounting = account(client, next_hop, serve.state)
            wall = time.monotonic() - start
            kept_reply_lost = set(next_hop.kept_reply_lost)
    result = Result(
        "next-hop-flapping",
        f"next hop in turns: {', '.join(f'{p} {s:g} s' for p, s in FLAPS)} (down: port closed and every "
        f"connection cut; 4xx: 451 to DATA; slow: DATA answered after 1 s), for at least {count} messages and "
        f"{seconds:.0f} s, 6 clients",
        accounting,
        wall,
        peak[0],
        notes={
            "phases": dict(phases),
            "refused by code": refused_by_code(client),
            "no answer": dict(client.no_answer),
            "replies of duplicated messages": duplicated(client, accounting),
            "kept by the next hop on a connection already cut": len(kept_reply_lost),
        },
        duplicates_argued=(
            "the next hop kept a message on a connection go_down had just cut (the content was in and its "
            "handler ran before the cut was noticed): its 250 never left, the gateway answered 451, the MTA "
            "retried - next hop accepted, reply lost; each duplicated message must be one of those"
        ),
    )
    unargued = [mid for mid in accounting.duplicate_ids if mid not in kept_reply_lost]
    if unargued:
        result.findings.append(f"{len(unargued)} duplicate(s) not explained by a cut: {', '.join(unargued[:5])}")
    return result


def connection_states(held: list[socket.socket]) -> Counter[str]:
    """What each held connection was told (``220``, ``421``... or ``nothing``) and whether it is
    still ``open`` or ``closed`` by the server; reads (without waiting) whatever has arrived."""
    found: Counter[str] = Counter()
    for sock in held:
        data, state = b"", "open"
        sock.setblocking(False)
        try:
            while chunk := sock.recv(65536):
                data += chunk
            state = "closed"
        except BlockingIOError:
            pass
        except OSError:
            state = "reset"
        found[f"{data[:3].decode(errors='replace') or 'nothing'}, {state}"] += 1
    return found


def case_idle_slowloris(where: Path, scale: float) -> Result:
    """2,000 idle connections and 20 slowloris from 127.0.0.1, held a minute; an honest client from
    127.0.0.2 sends 500 messages meanwhile (in 10 batches spread over the minute)."""
    idle = max(200, round(2000 * scale))
    honest = max(50, round(500 * scale))
    seconds = max(15.0, 60 * scale)
    batches = 10
    next_hop = FaultyNextHop()
    with next_hop:
        peak = [0]
        with Serve(where, next_hop.port).start() as serve, worker_rss(serve, peak):
            start = time.monotonic()
            held = idle_connections(serve.port, idle)
            try:
                time.sleep(2)  # the greetings (or refusals) arrive
                told = connection_states(held)
                slow = held[:20]
                client = FaultClient(serve.port, "soak-honest", source="127.0.0.2", timeout=60)
                with background(slowloris(slow)):
                    for batch in range(batches):
                        due = start + seconds * batch / batches
                        time.sleep(max(0.0, due - time.monotonic()))
                        client.load(honest // batches, concurrency=2)
                    time.sleep(max(0.0, start + seconds - time.monotonic()))
                    held_for = time.monotonic() - start
                    still = connection_states(held)
                accounting = account(client, next_hop, serve.state)
                wall = time.monotonic() - start
            finally:
                for sock in held:
                    sock.close()
    result = Result(
        "idle-slowloris",
        f"{idle} idle connections + 20 slowloris (a byte a second after DATA) from 127.0.0.1 held "
        f"{seconds:.0f} s; an honest client from 127.0.0.2 sends {honest} messages meanwhile",
        accounting,
        wall,
        peak[0],
        notes={
            "connections opened": len(held),
            "after 2 s": dict(told),
            f"after {held_for:.0f} s (what came since)": dict(still),
            "refused by code": refused_by_code(client),
            "no answer": dict(client.no_answer),
            "replies of duplicated messages": duplicated(client, accounting),
        },
    )
    if accounting.accepted != accounting.sent:
        result.findings.append(f"the honest client got {accounting.accepted} of {accounting.sent} through")
    return result


CASES: dict[str, Callable[[Path, float], Result]] = {
    "sigkill": case_sigkill,
    "sighup-kept": lambda where, scale: case_sighup(where, scale, "kept"),
    "sighup-new": lambda where, scale: case_sighup(where, scale, "new"),
    "clamd-restarted": case_clamd_restarted,
    "next-hop-flapping": case_next_hop_flapping,
    "idle-slowloris": case_idle_slowloris,
}


# ---------------------------------------------------------------------------------------- report


def fmt_codes(codes: Counter[str] | dict[str, int]) -> str:
    return " ".join(f"{code}×{n}" for code, n in sorted(codes.items())) or "-"


def table(results: list[Result]) -> str:
    lines = [
        "| case | sent | accepted | refused (final code) | lost | dup. | 4xx/none seen | attempts | wall | "
        "peak worker RSS | verdict |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        a = r.accounting
        by_code = fmt_codes(r.notes.get("refused by code", Counter()))
        dup = f"{a.duplicates} (argued)" if a.duplicates and r.duplicates_argued else str(a.duplicates)
        lines.append(
            f"| `{r.case}` | {a.sent} | {a.accepted} | {a.refused} ({by_code}) | {a.lost} | {dup} | "
            f"{a.tempfailed} | {a.attempts} | {r.wall:.0f} s | {r.peak_rss_kb / 1024:.0f} MB | "
            f"{r.verdict if r.verdict == 'ok' else '**' + r.verdict + '**'} |"
        )
    return "\n".join(lines)


def details(results: list[Result]) -> str:
    lines = []
    for r in results:
        notes = "; ".join(f"{k}: {fmt_codes(v) if isinstance(v, Counter) else v}" for k, v in r.notes.items() if v)
        lines.append(f"* `{r.case}`: {r.fault}.  Every reply seen: {fmt_codes(r.accounting.codes)}.  {notes}.")
        if r.duplicates_argued:
            lines.append(f"  Duplicates allowed: {r.duplicates_argued}.")
        if r.cuts_argued:
            lines.append(f"  No answer allowed: {r.cuts_argued}.")
        for finding in r.findings:
            lines.append(f"  **FINDING: {finding}** (logs kept in `{r.kept}`)")
        if r.error:
            lines.append(f"  **ERROR: {r.error}** (logs kept in `{r.kept}`)")
    return "\n".join(lines)


def git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return out.stdout.strip()


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPU ({model}), Linux {platform.release()}, Python {platform.python_version()}"


def report(results: list[Result], command: str, scale: float, started: datetime.datetime, load: tuple[str, str]) -> str:
    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    total = sum(r.wall for r in results)
    findings = [r for r in results if r.findings or r.error]
    again = "" if scale == 1.0 else f" --scale {scale:g}"
    return "\n".join(
        [
            "# Fault soak results",
            "",
            f"Written by `{command}` (bench/faults/soak.py; see bench/faults/README.md).",
            "",
            f"* Date: {started:%Y-%m-%d %H:%M} UTC; commit `{git('rev-parse', '--short', 'HEAD')}`{dirty}",
            f"* Machine: {machine()}; load average {load[0]} at the start, {load[1]} at the end "
            "(other work was running on the machine: times are not a benchmark)",
            f"* Total wall time of the cases: {total / 60:.1f} min",
            "",
            table(results),
            "",
            "*sent* messages; *accepted*: last reply 2xx, each found exactly once downstream or in the "
            "quarantine; *refused*: last reply 4xx/5xx/none after the client's retries (the MTA keeps "
            "those); *lost*: accepted and found nowhere; *dup.*: extra copies; *4xx/none seen*: messages "
            "that got a 4xx or no answer at least once (the fault was seen); *attempts*: transactions; "
            "*peak worker RSS*: the highest VmHWM of any worker process (killed ones included).",
            "",
            "## Cases",
            "",
            details(results),
            "",
            "## Findings" if findings else "No finding: nothing lost, no unargued duplicate, no 5xx, no cut reply.",
            *(
                [
                    "",
                    *(f"* `{r.case}`: {'; '.join(r.problems())}" for r in findings),
                    "",
                    "Reproduce: `.venv/bin/python bench/faults/soak.py "
                    + " ".join(f"--case {r.case}" for r in findings)
                    + again
                    + "`",
                ]
                if findings
                else []
            ),
            "",
        ]
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--case", action="append", choices=list(CASES), help="run only this case (repeatable)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply message counts and durations (1.0)")
    parser.add_argument("--out", type=Path, help="also write the Markdown report to this file")
    parser.add_argument("--keep", action="store_true", help="keep every case's directory, not only on findings")
    args = parser.parse_args(argv)
    command = "bench/faults/soak.py " + " ".join(argv) if argv else "bench/faults/soak.py"
    started = datetime.datetime.now(datetime.UTC)
    load_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    root = Path(tempfile.mkdtemp(prefix="mailsift-soak-"))
    results: list[Result] = []
    for name in args.case or list(CASES):
        where = root / name
        where.mkdir(parents=True)
        print(f"soak: {name} ...", file=sys.stderr, flush=True)
        try:
            result = CASES[name](where, args.scale)
            result.judge()

        except Exception as error:  # a case that breaks is reported; the others still run
            result = Result(name, "the case itself failed", Accounting(), 0.0, 0)
            result.error = f"the case raised {type(error).__name__}: {str(error)[:500]}"
        if result.findings or result.error:
            result.kept = str(where)
        print(
            f"soak: {name}: {result.verdict} ({result.accounting.sent} sent, {result.wall:.0f} s)"
            + "".join(f"\n  FINDING: {f}" for f in result.findings)
            + (f"\n  ERROR: {result.error}" if result.error else ""),
            file=sys.stderr,
            flush=True,
        )
        results.append(result)
    load_end = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    text = report(results, command, args.scale, started, (load_start, load_end))
    print(text)
    if args.out:
        args.out.write_text(text)
    bad = [r for r in results if r.findings or r.error]
    if not args.keep and not bad:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"soak: case directories kept in {root}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
