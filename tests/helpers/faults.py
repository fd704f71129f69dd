"""The fault matrix's harness (tests/faults/): a real ``mailsift serve``, a counted load, and the accounting.

* :class:`Serve` runs ``mailsift serve`` on a config written from :func:`config_text` (a
  quarantine rule, optional clamd/spamd scanners, any extra lines), in a directory of its own.
* :class:`FaultClient` sends numbered messages, each with a unique ``Message-ID``, and records
  every reply per message id: the SMTP code, or ``None`` for no answer (connection refused,
  closed, timed out).  With ``retries`` it behaves like an MTA: a ``4xx`` or no answer is tried
  again (a bounded number of times); a ``2xx`` or ``5xx`` is final.
* :func:`account` finds every message again, downstream (a :class:`~mailsift.testing.RecordingServer`)
  and in the quarantine's files, and returns an :class:`Accounting`:
  ``sent = accepted + refused``; an accepted message must be found exactly once
  (``lost`` if not found, ``duplicates`` for every extra copy); a refused message
  (``4xx``/``5xx``/no answer as its last reply) found downstream is a duplicate too: the MTA
  still has it and sends it again.
* :func:`record` attaches a case's figures to its test report (``user_properties``), from which
  tests/faults/conftest.py writes the JSON that ``tests/faults/report.py`` renders as
  docs/reliability.md.

Nothing here measures time: waits are bounded loops, and a case states what it expects of
the replies and of the accounting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import pytest

from mailsift.testing import RecordingServer, _RecordingSMTP, free_port
from tests.helpers.spamd import descendants

MAILSIFT = [sys.executable, "-m", "mailsift"]
HOLD_ME = "QUARANTINE-ME"
"""A body with this is quarantined (category ``held``) by every config of the matrix."""

PENDING: dict[str, str] = {}
"""Cases that wait for a fix being made in parallel (issue 11): case id -> the reason shown by
the skip (the fix it waits for).  tests/faults/test_matrix.py skips them with that reason;
docs/reliability.md says "skipped" for them; the lead removes an entry once the fix is merged."""

_MESSAGE_ID = re.compile(rb"^Message-ID:\s*<([^>\r\n]+)>", re.IGNORECASE | re.MULTILINE)


def config_text(
    state: Path,
    next_hop: int,
    port: int,
    *,
    scanners: str = "",
    extra: str = "",
    smtpd_options: str = "",
    relay_timeout: float = 10.0,
) -> str:
    """A serve config: ``scanners`` (Python source of list items) run before the quarantine rule."""
    return f"""\
from mailsift import *

STATE_DIR = {str(state)!r}
USER = None  # the suite's servers keep the current user
SMTP_SERVER = smtp_relay("127.0.0.1", {next_hop}, timeout={relay_timeout})
{extra}
SCANNERS = [
    {scanners}
    quarantine("held", regexp_scan([("Held", r"{HOLD_ME}")])),
]
SRV = [smtpd(SCANNERS, "127.0.0.1", {port}{smtpd_options})]
"""


class Serve:
    """``mailsift serve`` as a child process, its log in ``directory/serve.log``."""

    def __init__(self, directory: Path, next_hop: int, **config: Any) -> None:
        self.directory = directory
        self.port = free_port()
        self.next_hop = next_hop
        self.state = directory / "state"
        self.config = directory / "mailsift.conf.py"
        self.log = directory / "serve.log"
        self.write(**config)
        self.process: subprocess.Popen[bytes] | None = None

    def write(self, **config: Any) -> None:
        self.config.write_text(config_text(self.state, self.next_hop, self.port, **config))

    def start(self, workers: int = 2, timeout: float = 60) -> Serve:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*MAILSIFT, "serve", "-c", str(self.config), "-w", str(workers), "--drain-seconds", "20"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=5) as client:
                    client.noop()
                return self
            except OSError:
                time.sleep(0.2)
        raise AssertionError("mailsift serve did not start:\n" + self.log_text())

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def children(self) -> list[int]:
        assert self.process is not None
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, text: str, timeout: float = 60, start: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log_text()[start:]:
            assert time.monotonic() < deadline, f"{text!r} not logged:\n{self.log_text()[-4000:]}"
            time.sleep(0.1)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            kill_tree(self.process)
            raise

    def __enter__(self) -> Serve:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def kill_tree(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGKILL ``process`` and every process under it at once (each is stopped first, so that none
    reacts to another's death), then wait for ``process`` (up to ``timeout`` seconds)."""
    pids = [process.pid, *descendants(process.pid)]
    for signum in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
    process.wait(timeout)


# ---------------------------------------------------------------------------------------- the client


def message(case: str, number: int, body: str = "hello", extra_headers: str = "") -> tuple[str, bytes]:
    """A message with a unique Message-ID; returns ``(id, bytes)``."""
    mid = f"{case}.{number}.{os.getpid()}.{time.monotonic_ns()}@faults.test"
    data = (
        f"From: a@example.test\r\nTo: b@example.test\r\nSubject: {case} {number}\r\n"
        f"Message-ID: <{mid}>\r\n{extra_headers}\r\n{body}\r\n"
    ).encode()
    return mid, data


class _TracingSMTP(smtplib.SMTP):
    """smtplib.SMTP that remembers the last command it sent (``end-of-data`` after the content),
    and takes a ``4xx`` to EHLO as the answer."""

    last = "greeting"

    def putcmd(self, cmd: str, args: str = "") -> None:
        self.last = cmd.upper()
        super().putcmd(cmd, args)

    def send(self, s: Any) -> None:  # smtplib: Buffer | str
        if isinstance(s, bytes) and s.endswith(b"\r\n.\r\n"):
            self.last = "end-of-data"
        super().send(s)

    def ehlo_or_helo_if_needed(self) -> None:
        """As smtplib's, except that a ``4xx`` to EHLO is the answer, as for an MTA.  smtplib would
        try HELO after it, on a connection the server has closed (a draining worker's unsolicited
        ``421`` is read as EHLO's reply), and the client would record no answer instead of the 421."""
        if self.helo_resp is None and self.ehlo_resp is None:
            code, resp = self.ehlo()
            if 400 <= code < 500:
                raise smtplib.SMTPResponseException(code, resp)
            if not 200 <= code < 300:
                code, resp = self.helo()
                if not 200 <= code < 300:
                    raise smtplib.SMTPHeloError(code, resp)


@dataclass
class FaultClient:
    """Sends counted messages to ``port`` and records every reply per Message-ID.

    ``retries``: how many more times a message is tried after a ``4xx`` or no answer (an MTA
    retrying); ``retry_delay`` seconds between tries.  ``source`` is the local address to bind.
    """

    port: int
    case: str
    retries: int = 0
    retry_delay: float = 0.5
    timeout: float = 60.0
    source: str | None = None
    recipients: tuple[str, ...] = ("b@example.test",)
    reuse: bool = False
    """Keep each thread's connection open for its next message (Postfix's connection cache)."""
    replies: dict[str, list[int | None]] = field(default_factory=dict)
    data: dict[str, bytes] = field(default_factory=dict)
    no_answer: Counter[str] = field(default_factory=Counter)
    """Why attempts got no answer: new or reused connection, at connect (greeting included) or after
    which command, and the exception (``"new connection, after end-of-data: SMTPServerDisconnected"``)."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _local: threading.local = field(default_factory=threading.local)
    _kept: list[smtplib.SMTP] = field(default_factory=list)

    def _record(self, mid: str, code: int | None) -> None:
        with self._lock:
            self.replies.setdefault(mid, []).append(code)

    def _why(self, reused: bool, stage: str, error: BaseException, client: smtplib.SMTP | None) -> None:
        if client is not None and stage != "connect":
            stage = f"after {getattr(client, 'last', '?')}"
        with self._lock:
            self.no_answer[f"{'reused' if reused else 'new'} connection, {stage}: {type(error).__name__}"] += 1

    def _connection(self) -> smtplib.SMTP:
        client = getattr(self._local, "client", None) if self.reuse else None
        if client is None:
            source = (self.source, 0) if self.source else None
            client = _TracingSMTP("127.0.0.1", self.port, timeout=self.timeout, source_address=source)
            if self.reuse:
                self._local.client = client
                with self._lock:
                    self._kept.append(client)
        return client

    def _done(self, client: smtplib.SMTP, failed: bool) -> None:
        if self.reuse and not failed:
            return  # kept for the next message, as Postfix does
        self._local.client = None
        with contextlib.suppress(OSError, smtplib.SMTPException):
            client.quit()
        client.close()

    def attempt(self, mid: str, data: bytes) -> int | None:
        """One SMTP transaction (on a new connection, or with ``reuse`` on this thread's open one):
        the final code, or None if no answer came."""
        client: smtplib.SMTP | None = None
        failed = True
        reused = self.reuse and getattr(self._local, "client", None) is not None
        stage = "connect"
        try:
            client = self._connection()
            stage = "after ?"
            client.sendmail("a@example.test", list(self.recipients), data)
            code: int | None = 250
            failed = False
        except smtplib.SMTPRecipientsRefused as error:
            code = min(c for c, _ in error.recipients.values())
        except smtplib.SMTPResponseException as error:
            code = error.smtp_code
            if code == -1:  # smtplib's "connection closed" pseudo code
                code = None
                self._why(reused, stage, error, client)
        except (OSError, smtplib.SMTPException) as error:
            code = None
            self._why(reused, stage, error, client)
        finally:
            if client is not None:
                self._done(client, failed)
        self._record(mid, code)
        return code

    def _aim(self, attempt: int) -> None:
        """Before try ``attempt`` (0 first) of a message: the same ``port`` every time here."""

    def send(self, mid: str, data: bytes) -> int | None:
        """Send with the retry policy; returns the last code."""
        self.replies.setdefault(mid, [])
        self.data[mid] = data
        for attempt in range(self.retries + 1):
            self._aim(attempt)
            code = self.attempt(mid, data)
            if code is not None and (200 <= code < 300 or code >= 500):
                return code
            if attempt < self.retries:
                time.sleep(self.retry_delay)
        return code

    def load(
        self,
        count: int,
        *,
        concurrency: int = 4,
        body: Callable[[int], str] = lambda n: f"message {n}",
        extra_headers: str = "",
        until: Callable[[], bool] | None = None,
    ) -> None:
        """Send ``count`` messages from ``concurrency`` threads (a body with :data:`HOLD_ME` is quarantined).

        ``until``: checked before each message; once it returns true, the rest are not sent (a load
        that lasts a given time: a large ``count`` and a clock in ``until``)."""

        def one(number: int) -> None:
            if until is None or not until():
                self.send(*message(self.case, number, body(number), extra_headers))

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(count)))
        for client in self._kept:  # the kept connections, their threads done
            with contextlib.suppress(OSError, smtplib.SMTPException):
                client.quit()
            client.close()
        self._kept.clear()

    def retry_refused(self, *, concurrency: int = 4) -> int:
        """The MTA's later retry: send again every message whose last reply was 4xx or none."""
        todo = [(mid, data) for mid, data in self.data.items() if (c := self.final(mid)) is None or 400 <= c < 500]
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda item: self.send(*item), todo))
        return len(todo)

    def final(self, mid: str) -> int | None:
        codes = self.replies.get(mid) or [None]
        return codes[-1]


# ---------------------------------------------------------------------------------------- accounting


def message_ids(data: bytes) -> list[str]:
    """The Message-IDs in the header of ``data`` (the first block up to an empty line)."""
    head = re.split(rb"\r?\n\r?\n", data, maxsplit=1)[0]
    return [m.decode(errors="replace") for m in _MESSAGE_ID.findall(head)]


def stored_message_ids(data: bytes) -> set[str]:
    """The Message-IDs anywhere in the first 200 kB of a stored message (a quarantined file, or a
    database entry's chunks: the stored head, then the message)."""
    return {m.decode(errors="replace") for m in _MESSAGE_ID.findall(data[:200_000])}


def downstream_ids(server: RecordingServer) -> Counter[str]:
    found: Counter[str] = Counter()
    for received in list(server.messages):
        found.update(set(message_ids(received.data)))
    return found


def quarantine_ids(state: Path) -> Counter[str]:
    """Message-IDs of the quarantined files (the stored head is skipped: its own header block)."""
    found: Counter[str] = Counter()
    root = state / "quarantine"
    if not root.is_dir():
        return found
    for path in root.rglob("*"):
        if path.is_file() and path.parent.name in ("new", "cur"):
            with contextlib.suppress(OSError):
                found.update(stored_message_ids(path.read_bytes()))
    return found


def quarantine_categories(state: Path) -> Counter[str]:
    """How many files each quarantine category holds (``held`` is the matrix's own rule)."""
    root = state / "quarantine"
    found: Counter[str] = Counter()
    if root.is_dir():
        for path in root.rglob("*"):
            if path.is_file() and path.parent.name in ("new", "cur"):
                found[path.parent.parent.relative_to(root).as_posix()] += 1
    return found


@dataclass
class Accounting:
    sent: int = 0
    accepted: int = 0
    refused: int = 0
    refused_4xx: int = 0
    refused_5xx: int = 0
    unanswered: int = 0
    attempts: int = 0
    tempfailed: int = 0
    """Messages that got a 4xx or no answer at least once (the fault was seen)."""
    duplicates: int = 0
    lost: int = 0
    lost_ids: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        return self.sent == self.accepted + self.refused

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data["lost_ids"] = self.lost_ids[:10]
        data["duplicate_ids"] = self.duplicate_ids[:10]
        return data


_Found = TypeVar("_Found")


def settled(
    client: FaultClient,
    ids: Iterable[str],
    look: Callable[[], _Found],
    holds: Callable[[_Found, str], object],
    settle: float,
) -> _Found:
    """``look()`` again every 0.5 s, up to ``settle`` seconds, until what it found ``holds`` every
    message of ``ids`` that got a ``2xx`` (a quarantined message may be written a moment after the
    reply, in another process); the last look."""
    deadline = time.monotonic() + settle
    while True:
        found = look()
        missing = [m for m in ids if (c := client.final(m)) is not None and 200 <= c < 300 and not holds(found, m)]
        if not missing or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def account(
    client: FaultClient, downstream: RecordingServer, state: Path, *, settle: float = 30, also: Iterable[str] = ()
) -> Accounting:
    """Find every message of ``client`` downstream and in the quarantine.

    A quarantined message may be written a moment after the reply in another process: the
    accounting waits (up to ``settle`` seconds) until no accepted message is missing.
    """
    ids = [*client.replies, *also]
    copies = settled(
        client, ids, lambda: downstream_ids(downstream) + quarantine_ids(state), lambda copies, m: copies[m], settle
    )
    result = Accounting(sent=len(ids))
    codes: Counter[str] = Counter()
    for mid in ids:
        replies = client.replies.get(mid, [])
        result.attempts += len(replies)
        result.tempfailed += any(c is None or 400 <= c < 500 for c in replies)
        codes.update("none" if c is None else str(c) for c in replies)
        final = client.final(mid)
        found = copies[mid]
        if final is not None and 200 <= final < 300:
            result.accepted += 1
            if found == 0:
                result.lost += 1
                result.lost_ids.append(mid)
            elif found > 1:
                result.duplicates += found - 1
                result.duplicate_ids.append(mid)
        else:
            result.refused += 1
            if final is None:
                result.unanswered += 1
            elif final >= 500:
                result.refused_5xx += 1
            else:
                result.refused_4xx += 1
            if found:
                result.duplicates += found
                result.duplicate_ids.append(mid)
    result.codes = dict(sorted(codes.items()))
    return result


def record(request: pytest.FixtureRequest, fault: str, expected: str, accounting: Accounting, **extra: Any) -> None:
    """Attach the case's figures to its report (tests/faults/conftest.py collects them)."""
    data = {"fault": fault, "expected": expected, **accounting.summary(), **extra}
    request.node.user_properties.append(("faults", json.dumps(data)))


def check(accounting: Accounting, *, duplicates_allowed: bool = False, no_5xx: bool = True) -> None:
    """The promise: every message accounted for, none lost, duplicates only where argued, no 5xx."""
    assert accounting.balanced, accounting.summary()
    assert accounting.lost == 0, f"lost: {accounting.summary()}"
    if not duplicates_allowed:
        assert accounting.duplicates == 0, f"duplicates: {accounting.summary()}"
    if no_5xx:
        assert accounting.refused_5xx == 0, f"5xx: {accounting.summary()}"


# ---------------------------------------------------------------------------------------- faults


class FaultyNextHop(RecordingServer):
    """A RecordingServer with more faults: ``delay`` seconds before answering DATA (slow),
    ``drop_every`` (answer 250 to every n-th message without keeping it: a next hop that
    loses mail, for showing that the accounting finds it), ``lose_reply_every`` (keep every
    n-th message and close the connection before the reply: the duplicate SMTP cannot avoid)."""

    def __init__(self, data_size_limit: int = 200 * 1024 * 1024) -> None:
        super().__init__()
        self.data_size_limit = data_size_limit
        self.delay = 0.0
        self.drop_every = 0
        self.lose_reply_every = 0
        self.close_every = 0
        self._count = 0
        self._sessions: list[_RecordingSMTP] = []
        self.is_down = False
        self.kept_reply_lost: list[str] = []
        """Message-IDs kept although their reply could not leave (``lose_reply_every``, or the
        connection cut by :meth:`go_down` as the message arrived): the MTA's retry duplicates them."""

    def start(self) -> FaultyNextHop:
        """As RecordingServer's, with ``data_size_limit`` (aiosmtpd's default is 32 MB)."""

        async def start() -> None:
            def factory() -> _RecordingSMTP:
                self.connections += 1
                session = _RecordingSMTP(self)
                session.data_size_limit = self.data_size_limit
                self._sessions = [s for s in self._sessions if s.transport is None or not s.transport.is_closing()]
                self._sessions.append(session)
                return session

            self._server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

        self._runner.call(start())
        return self

    def go_down(self) -> None:
        """The next hop goes down: its port closed, every open connection cut (as a crashed or
        restarted MTA: the gateway's pooled connections die too).  :meth:`come_up` reopens the same port."""

        async def down() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for session in self._sessions:
                if isinstance(session.transport, asyncio.Transport):
                    session.transport.abort()
            self._sessions.clear()

        self.is_down = True
        self._runner.call(down())

    def come_up(self) -> None:
        self.start()
        self.is_down = False

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        self._count += 1
        if self.drop_every and self._count % self.drop_every == 0 and not (self.hang or self.data_reply):
            return "250 2.0.0 Ok: dropped"
        if self.close_every and self._count % self.close_every == 0:  # content in, no answer, nothing kept
            server.transport.abort()
            return "250 never sent"
        if self.lose_reply_every and self._count % self.lose_reply_every == 0:
            answer = await super().handle_DATA(server, session, envelope)  # kept...
            server.transport.abort()  # ...and the reply lost
            self.kept_reply_lost.extend(message_ids(envelope.original_content or b""))
            return answer
        answer = await super().handle_DATA(server, session, envelope)
        if answer.startswith("250") and (server.transport is None or server.transport.is_closing()):
            # cut (go_down) while this message was on its way in: kept, and the 250 cannot leave
            self.kept_reply_lost.extend(message_ids(envelope.original_content or b""))
        return answer


def closed_port() -> int:
    """A port nothing listens on."""
    return free_port()


@contextlib.contextmanager
def background(action: Callable[[threading.Event], None]) -> Iterator[threading.Event]:
    """Run ``action(stop)`` in a thread while the block runs; ``stop`` is set at the end."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action(stop)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(120)
    if errors:
        raise errors[0]


def peak_rss_kb(pid: int) -> int:
    """VmHWM (peak resident set) of a process, in kB (0 if it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def idle_connections(port: int, count: int, timeout: float = 10) -> list[socket.socket]:
    """Open up to ``count`` connections from 127.0.0.1 and leave them idle (those refused are skipped)."""
    held: list[socket.socket] = []
    for _ in range(count):
        with contextlib.suppress(OSError):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=timeout))
    return held


def slowloris(held: list[socket.socket], interval: float = 1.0) -> Callable[[threading.Event], None]:
    """An action for :func:`background`: ``held`` start a transaction up to DATA, then each sends one
    byte every ``interval`` seconds until stopped."""

    def action(stop: threading.Event) -> None:
        for sock in held:
            with contextlib.suppress(OSError):
                sock.sendall(b"EHLO x\r\nMAIL FROM:<s@x>\r\nRCPT TO:<t@x>\r\nDATA\r\n")
        while not stop.wait(interval):
            for sock in held:
                with contextlib.suppress(OSError):
                    sock.sendall(b"x")

    return action


def signal_every(serve: Serve, signum: int, interval: float = 1.0) -> Callable[[threading.Event], None]:
    """An action for :func:`background`: send ``signum`` to the supervisor every ``interval`` seconds."""

    def action(stop: threading.Event) -> None:
        while not stop.wait(interval):
            serve.signal(signum)

    return action


def hold_socket(port: int) -> socket.socket:
    """Listen on 127.0.0.1:``port`` (a port in use for a reload)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def _reply_code(reader: BinaryIO) -> int | None:
    """The code of the next whole SMTP reply read from ``reader`` (None: the connection closed)."""
    while True:
        line = reader.readline()
        if not line:
            return None
        if line[3:4] != b"-":
            return int(line[:3])


def send_many_recipients(port: int, data: bytes, count: int, timeout: float = 300) -> tuple[Counter[int], int | None]:
    """One transaction with ``count`` RCPT commands, pipelined; returns (RCPT reply codes, DATA's final code)."""
    rcpts = b"".join(b"RCPT TO:<r%d@example.test>\r\n" % n for n in range(count))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        reader = sock.makefile("rb")
        _reply_code(reader)  # greeting
        sock.sendall(b"EHLO faults.test\r\n")
        _reply_code(reader)
        sock.sendall(b"MAIL FROM:<a@example.test>\r\n")
        if _reply_code(reader) != 250:
            return Counter(), None
        writer = threading.Thread(target=sock.sendall, args=(rcpts,), daemon=True)
        writer.start()
        codes: Counter[int] = Counter()
        for _ in range(count):
            code = _reply_code(reader)
            codes[code or 0] += 1
            if code is None:
                return codes, None
        writer.join(timeout)
        sock.sendall(b"DATA\r\n")
        if _reply_code(reader) != 354:
            return codes, None
        sock.sendall(data.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        final = _reply_code(reader)
        with contextlib.suppress(OSError):
            sock.sendall(b"QUIT\r\n")
        return codes, final


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "8m") -> Iterator[Path]:
    """A real small tmpfs at ``path`` (root only), always unmounted."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def pg_ctl(instance: Any, action: str) -> None:
    """``pg_ctl stop|start`` on a :class:`tests.helpers.postgres.PostgresInstance` (same port and socket)."""
    from tests.helpers.postgres import PG_BIN

    port = instance.base_url.rsplit(":", 1)[1].split("/")[0]
    data = f"{instance.where}/data"
    options = f'"-c listen_addresses=127.0.0.1 -c unix_socket_directories={instance.where} -c fsync=off -p {port}"'
    extra = ["-m", "fast"] if action == "stop" else ["-l", f"{instance.where}/log", "-o", options]
    instance._as_postgres(f"{PG_BIN}/pg_ctl", "-D", data, "-w", *extra, action)


def postgres_pids(instance: Any) -> list[int]:
    """The postmaster and its children."""
    pidfile = Path(instance.where) / "data" / "postmaster.pid"
    try:
        postmaster = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(postmaster)], capture_output=True, text=True)
    return [postmaster, *(int(pid) for pid in children.stdout.split())]


def raw_transaction(port: int, content: bytes, timeout: float = 30) -> list[int | None]:
    """One transaction with ``content`` sent byte for byte (no end-of-line or dot fixing, unlike
    smtplib), then ``.`` and QUIT; returns the codes of every reply after DATA's 354, in order
    (a smuggled second transaction shows as extra replies)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        reader = sock.makefile("rb")
        _reply_code(reader)
        for command in (b"EHLO faults.test", b"MAIL FROM:<a@example.test>", b"RCPT TO:<b@example.test>", b"DATA"):
            sock.sendall(command + b"\r\n")
            code = _reply_code(reader)
        if code != 354:
            return [code]
        sock.sendall(content + b"\r\n.\r\nQUIT\r\n")
        codes: list[int | None] = []
        with contextlib.suppress(OSError):
            while (code := _reply_code(reader)) is not None:
                codes.append(code)
                if code == 221:
                    break
        return codes or [None]
