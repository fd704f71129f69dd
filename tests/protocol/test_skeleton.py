"""The server skeleton (mailsift.services.server), the same cases over every socket front end.

smtpd, lmtpd, milter, sgfilterd, the Postfix policy service and icap each get: the
limits validated alike, the idle timeout (421 where the protocol has it), the
connection limit, the per-address connection limit (one address holding its
share leaves room for another; ``exempt_hosts``), draining without cutting a transaction (including a second
transaction pipelined on the same connection just behind the first), a unix
socket with its mode, and queue ids unique across two worker processes and
carrying the node name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailsift.errors import ConfigError, ScannerError
from mailsift.message.result import Result
from mailsift.scanners.base import Scanner, Target
from mailsift.services import milter_protocol as mp
from mailsift.services.base import Service
from mailsift.services.icap import icap
from mailsift.services.lmtpd import lmtpd
from mailsift.services.milter import milter
from mailsift.services.postfix_policy import smtpd_policy
from mailsift.services.sgfilterd import sgfilterd
from mailsift.services.smtpd import smtpd
from mailsift.settings import Settings
from mailsift.storage import db
from mailsift.testing import RecordingServer, ServiceThread
from tests.helpers.icap import build, http_request_head, http_response_head

KINDS = ["smtpd", "lmtpd", "milter", "sgfilterd", "policy", "icap"]
MESSAGE = b"From: a@example.test\r\nSubject: skeleton\r\n\r\nhello\r\n"
NODE = "edge-7"


class Gate(Scanner):
    """A clean verdict that waits, per call, until the test opens the gate; records the queue ids."""

    name = "gate"

    def __init__(self, *, open_: bool = True) -> None:
        self.calls = 0
        self.queue_ids: list[str] = []
        self.entered = threading.Event()
        self.opened = threading.Event()
        if open_:
            self.opened.set()

    async def scan(self, target: Target) -> Result:
        self.calls += 1
        mail = getattr(target, "mail", None)
        if mail is not None:
            self.queue_ids.append(mail.envelope.queue_id)
        self.entered.set()
        await asyncio.to_thread(self.opened.wait, 30)
        return Result(0.0, "", self.name)


# --------------------------------------------------------------------------- one adapter per front end


def smtp_transaction(number: int) -> bytes:
    return f"MAIL FROM:<a{number}@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n".encode() + MESSAGE + b".\r\n"


def policy_request(recipient: str = "b@example.test") -> bytes:
    lines = ["request=smtpd_access_policy", "protocol_state=RCPT", "client_address=192.0.2.7"]
    lines += ["sender=a@example.test", f"recipient={recipient}"]
    return ("\n".join(lines) + "\n\n").encode()


def sgfilter_request() -> bytes:
    return f"MAIL FROM: <a@example.test>\nRCPT TO: <b@example.test>\nDATA {len(MESSAGE)}\n".encode() + MESSAGE


ICAP_HEAD_END = b"\r\n\r\n"


def icap_request(number: int) -> bytes:
    """A RESPMOD of a small download (the message's bytes), 204 allowed."""
    return build(
        "RESPMOD",
        "respmod",
        req_hdr=http_request_head(f"http://example.test/{number}.txt"),
        res_hdr=http_response_head(extra=f"Content-Length: {len(MESSAGE)}\r\n"),
        body=MESSAGE,
        fields={"Allow": "204"},
    )


def milter_packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + command + data


def milter_transaction(number: int) -> bytes:
    return b"".join(
        [
            milter_packet(b"M", f"<a{number}@example.test>\0".encode()),
            milter_packet(b"R", b"<b@example.test>\0"),
            milter_packet(b"L", b"Subject\0skeleton\0"),
            milter_packet(b"N"),
            milter_packet(b"B", b"hello\r\n"),
            milter_packet(b"E"),
        ]
    )


def milter_negotiate(sock: socket.socket) -> None:
    sock.sendall(milter_packet(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF)))
    command, _ = read_milter_packet(sock)
    assert command == b"O"
    sock.sendall(milter_packet(b"C", b"client.test\x004" + struct.pack(">H", 4567) + b"192.0.2.10\0"))
    sock.sendall(milter_packet(b"H", b"helo.test\0"))


def exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def read_milter_packet(sock: socket.socket) -> tuple[bytes, bytes]:
    (length,) = struct.unpack(">I", exactly(sock, 4))
    packet = exactly(sock, length)
    return packet[:1], packet[1:]


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (the socket's timeout bounds the wait)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def read_line(sock: socket.socket, end: bytes = b"\n") -> bytes:
    """Bytes up to ``end`` (a line; ``b"\r\n\r\n"``: an ICAP head), or to the close."""
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def smtp_reply(sock: socket.socket) -> str:
    """One (possibly multi-line) SMTP reply; its last line."""
    while True:
        line = read_line(sock).decode()
        if len(line) < 4 or line[3] != "-":
            return line.strip()


@dataclass
class FrontEnd:
    kind: str
    make: Callable[..., Service]
    timeout_option: str
    idle_answer: bytes
    """What an idle connection gets before the server closes it (b"": nothing)."""
    limit_answer: bytes
    shutdown_answer: bytes
    default_max_connections: int = 500

    def establish(self, sock: socket.socket) -> None:
        """Bring a fresh connection to where a transaction can begin."""
        if self.kind in ("smtpd", "lmtpd"):
            assert smtp_reply(sock).startswith("220")
            sock.sendall(b"LHLO x\r\n" if self.kind == "lmtpd" else b"EHLO x\r\n")
            assert smtp_reply(sock).startswith("250")
        elif self.kind == "milter":
            milter_negotiate(sock)

    def transaction(self, number: int) -> bytes:
        if self.kind in ("smtpd", "lmtpd"):
            return smtp_transaction(number)
        if self.kind == "milter":
            return milter_transaction(number)
        if self.kind == "policy":
            return policy_request()
        if self.kind == "icap":
            return icap_request(number)
        return sgfilter_request()

    def exchange(self, sock: socket.socket) -> None:
        """One whole transaction, answered."""
        self.establish(sock)
        sock.sendall(self.transaction(1))
        if self.kind in ("smtpd", "lmtpd"):
            assert [smtp_reply(sock)[:3] for _ in range(4)] == ["250", "250", "354", "250"]
        elif self.kind == "milter":
            assert read_milter_packet(sock)[0] == mp.SMFIR_ACCEPT
        elif self.kind == "policy":
            assert read_line(sock) == b"action=DUNNO\n"
        elif self.kind == "icap":
            assert read_line(sock, ICAP_HEAD_END).startswith(b"ICAP/1.0 204 No Content\r\n")
        else:
            assert read_line(sock) == b"250 0.00\n"


def _next_hop() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


@pytest.fixture
def downstream() -> Iterator[RecordingServer]:
    yield from _next_hop()


def front_ends(next_hop_port: int) -> dict[str, FrontEnd]:
    hop = ("127.0.0.1", next_hop_port)

    def make_smtpd(scanners: list[Scanner], host: str = "127.0.0.1", **options: Any) -> Service:
        return smtpd(scanners, host, 0, next_hop=hop, **options)

    def make_lmtpd(scanners: list[Scanner], host: str = "127.0.0.1", **options: Any) -> Service:
        return lmtpd(scanners, host, 0, next_hop=hop, **options)

    def make_milter(scanners: list[Scanner], host: str = "127.0.0.1", **options: Any) -> Service:
        connection = host if host.startswith("unix:") else f"inet:0@{host}"
        mode = options.pop("socket_mode", None)
        if mode is not None:  # the milter's unix socket mode is libmilter's umask
            valid = isinstance(mode, int) and not isinstance(mode, bool) and 0 <= mode <= 0o777
            options["umask"] = 0o777 & ~mode if valid else mode
        return milter(scanners, "skeleton", connection, **options)

    def make_sgfilterd(scanners: list[Scanner], host: str = "127.0.0.1", **options: Any) -> Service:
        return sgfilterd(scanners, host, 0, **options)

    def make_icap(scanners: list[Scanner], host: str = "127.0.0.1", **options: Any) -> Service:
        return icap(scanners, host, 0, **options)

    def make_policy(scanners: list[Scanner], host: str = "127.0.0.1", **options: Any) -> Service:
        if "timeout" in options:
            options["idle_timeout"] = options.pop("timeout")
        return smtpd_policy(scanners, db.sqlite(), host, 0, **options)

    return {
        "smtpd": FrontEnd(
            "smtpd", make_smtpd, "timeout", b"421 4.4.2 ", b"421 4.7.0 Too many connections", b"421 4.3.2 "
        ),
        "lmtpd": FrontEnd(
            "lmtpd", make_lmtpd, "timeout", b"421 4.4.2 ", b"421 4.7.0 Too many connections", b"421 4.3.2 "
        ),
        "milter": FrontEnd("milter", make_milter, "timeout", b"", b"", b""),
        "sgfilterd": FrontEnd(
            "sgfilterd", make_sgfilterd, "timeout", b"421 0.00 Timeout\n", b"421 0.00 Too many connections\n", b""
        ),
        "policy": FrontEnd("policy", make_policy, "idle_timeout", b"", b"", b""),
        # ICAP has no goodbye: an idle, refused or drained connection is closed unanswered (Squid opens another)
        "icap": FrontEnd("icap", make_icap, "timeout", b"", b"", b"", default_max_connections=100),
    }


@pytest.fixture(params=KINDS)
def front(request: pytest.FixtureRequest, downstream: RecordingServer) -> FrontEnd:
    return front_ends(downstream.port)[request.param]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServiceThread]]:
    started: list[ServiceThread] = []

    def start(service: Service) -> ServiceThread:
        settings = Settings(state_dir=str(tmp_path / "state"), node=NODE)
        thread = ServiceThread(service, settings)
        started.append(thread.start())
        return thread

    yield start
    for thread in started:
        thread.stop()


def wait_until(condition: Callable[[], object], limit: float = 10) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition never came true"
        time.sleep(0.005)


def connect(thread: ServiceThread, timeout: float = 10, source: str | None = None) -> socket.socket:
    """A connection to the service, from ``source`` (another loopback address) when given."""
    return socket.create_connection(
        ("127.0.0.1", thread.port), timeout=timeout, source_address=(source, 0) if source else None
    )


# --------------------------------------------------------------------------- limits, validated alike


@pytest.mark.parametrize("value", [True, False, -1, 0, "10", 1.5, None])
def test_max_connections_refused_alike(front: FrontEnd, value: object) -> None:
    """A bool is not a number: refused everywhere, with the same message."""
    with pytest.raises(ConfigError) as raised:
        front.make([Gate()], max_connections=value)
    assert raised.value.message.endswith(f": max_connections must be a positive integer, got {value!r}")


@pytest.mark.parametrize("value", [True, False, -1, 0, "10", 1.5])
def test_max_connections_per_address_refused_alike(front: FrontEnd, value: object) -> None:
    with pytest.raises(ConfigError) as raised:
        front.make([Gate()], max_connections_per_address=value)
    assert raised.value.message.endswith(f": max_connections_per_address must be a positive integer, got {value!r}")


@pytest.mark.parametrize("value", ["127.0.0.1", ["not a network"], [True], 5])
def test_exempt_hosts_refused_alike(front: FrontEnd, value: object) -> None:
    with pytest.raises(ConfigError, match=r": (bad )?exempt_hosts"):
        front.make([Gate()], exempt_hosts=value)


def test_per_address_limit_defaults_to_half_of_max_connections(front: FrontEnd) -> None:
    assert front.make([Gate()]).max_connections_per_address == front.default_max_connections // 2  # 250; icap 50
    assert front.make([Gate()], max_connections=41).max_connections_per_address == 20
    assert front.make([Gate()], max_connections=1).max_connections_per_address == 1
    service = front.make([Gate()], max_connections_per_address=7, exempt_hosts=["192.0.2.0/24", "::1"])
    assert service.max_connections_per_address == 7
    assert service.limits_address("198.51.100.1")
    assert not service.limits_address("192.0.2.9")
    assert not service.limits_address("::1")
    assert not service.limits_address("")


@pytest.mark.parametrize("value", [True, 0, -1, "30"])
def test_timeouts_refused_alike(front: FrontEnd, value: object) -> None:
    with pytest.raises(ConfigError) as raised:
        front.make([Gate()], timeout=value)
    assert raised.value.message.endswith(
        f": {front.timeout_option} must be a positive number of seconds, got {value!r}"
    )


@pytest.mark.parametrize("value", [1, 500])
def test_integer_limits_accepted(front: FrontEnd, value: int) -> None:
    assert front.make([Gate()], max_connections=value).max_connections == value


@pytest.mark.parametrize("value", [True, -1, 0o1000, "660"])
def test_socket_mode_refused_alike(front: FrontEnd, value: object) -> None:
    with pytest.raises(ConfigError, match=r"socket_mode must be permission bits|umask must be an integer"):
        front.make([Gate()], host="unix:/tmp/x.sock", socket_mode=value)


# --------------------------------------------------------------------------- idle timeout


def test_idle_connection_gets_the_protocols_answer_then_closes(
    front: FrontEnd, serve: Callable[..., ServiceThread]
) -> None:
    thread = serve(front.make([Gate()], timeout=0.3))
    with connect(thread) as sock:
        front.establish(sock)
        started = time.monotonic()
        received = read_until_closed(sock)
    assert time.monotonic() - started < 9  # closed by the server, not by the test's socket timeout
    if front.idle_answer:
        assert received.startswith(front.idle_answer), received
    else:
        assert received == b""


# --------------------------------------------------------------------------- connection limit


def test_connection_beyond_the_limit_is_refused_alike(front: FrontEnd, serve: Callable[..., ServiceThread]) -> None:
    thread = serve(front.make([Gate()], max_connections=1))
    with connect(thread) as first:
        front.establish(first)
        with connect(thread) as extra:
            refused = read_until_closed(extra)
        assert refused.startswith(front.limit_answer), refused
        assert bool(refused) == bool(front.limit_answer), refused
    wait_until(lambda: not thread._running.connections)  # the server saw the first one go
    with connect(thread) as again:  # the slot is free again
        front.exchange(again)


PER_ADDRESS = 3


def _hold_the_address_limit(front: FrontEnd, thread: ServiceThread, held: list[socket.socket]) -> None:
    """Open PER_ADDRESS connections from 127.0.0.1, each seen by the server."""
    for _ in range(PER_ADDRESS):
        sock = connect(thread)
        held.append(sock)
        front.establish(sock)
    wait_until(lambda: len(thread._running.connections) == PER_ADDRESS)


def test_one_address_beyond_its_limit_is_refused_while_another_is_served(
    front: FrontEnd, serve: Callable[..., ServiceThread]
) -> None:
    """Idle connections from one address (127.0.0.1) cannot lock out a client from 127.0.0.2."""
    thread = serve(front.make([Gate()], max_connections=100, max_connections_per_address=PER_ADDRESS))
    held: list[socket.socket] = []
    try:
        _hold_the_address_limit(front, thread, held)
        for _ in range(3):  # the same address again: the protocol's refusal, as for the global limit
            with connect(thread) as extra:
                refused = read_until_closed(extra)
            assert refused.startswith(front.limit_answer), refused
            assert bool(refused) == bool(front.limit_answer), refused
        with connect(thread, source="127.0.0.2") as honest:  # another address is served
            front.exchange(honest)
        held.pop().close()  # one of the address's connections ends: it may connect again
        wait_until(lambda: len(thread._running.connections) == PER_ADDRESS - 1)
        with connect(thread) as again:
            front.exchange(again)
    finally:
        for sock in held:
            sock.close()


def test_exempt_hosts_are_held_to_max_connections_only(front: FrontEnd, serve: Callable[..., ServiceThread]) -> None:
    """The MTA in front connects from one address: listed in exempt_hosts, it is not held to the per-address limit."""
    service = front.make(
        [Gate()], max_connections=100, max_connections_per_address=PER_ADDRESS, exempt_hosts=["127.0.0.1/32"]
    )
    thread = serve(service)
    held: list[socket.socket] = []
    try:
        _hold_the_address_limit(front, thread, held)
        with connect(thread) as more:
            front.exchange(more)
        assert thread._running.per_address == {}  # exempt: not counted
    finally:
        for sock in held:
            sock.close()


# --------------------------------------------------------------------------- spool files


class Broken(Scanner):
    """A scanner whose daemon is down: every message tempfails."""

    name = "broken"

    async def scan(self, target: Target) -> Result:
        raise ScannerError("the daemon is down")


@pytest.mark.parametrize("fault", ["scanner", "next hop"])
def test_a_failed_transaction_leaves_no_spool_file(
    front: FrontEnd, tmp_path: Path, downstream: RecordingServer, fault: str
) -> None:
    if front.kind == "policy":
        pytest.skip("policy requests carry no message")
    if fault == "next hop" and front.kind not in ("smtpd", "lmtpd"):
        pytest.skip("the milter's, sgfilterd's and icap's next hop is their client")
    downstream.data_reply = "451 4.3.0 busy"
    state = tmp_path / "state"
    thread = ServiceThread(
        front.make([Broken()] if fault == "scanner" else [Gate()]), Settings(state_dir=str(state), spool_threshold=8)
    ).start()
    try:
        with connect(thread) as sock:
            front.establish(sock)
            sock.sendall(front.transaction(1))
            if front.kind in ("smtpd", "lmtpd"):
                assert [smtp_reply(sock)[:1] for _ in range(4)] == ["2", "2", "3", "4"]
            elif front.kind == "milter":
                assert read_milter_packet(sock)[0] in (mp.SMFIR_TEMPFAIL, mp.SMFIR_REPLYCODE)
            elif front.kind == "icap":
                assert read_line(sock, ICAP_HEAD_END).startswith(b"ICAP/1.0 500 ")  # fail closed
            else:
                assert read_line(sock).startswith(b"451 ")
    finally:
        thread.stop()
    assert list((state / "spool").iterdir()) == []


# --------------------------------------------------------------------------- refusals during DATA are logged


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("mailsift") and "refused" in r.getMessage()]


@pytest.mark.parametrize("problem", ["too big", "line too long"])
def test_a_refusal_during_data_gets_a_log_line(
    front: FrontEnd, serve: Callable[..., ServiceThread], caplog: pytest.LogCaptureFixture, problem: str
) -> None:
    """552 (too big) and 500 (a line too long) were answered without a log line: one now, with the reason and peer."""
    if front.kind == "policy":
        pytest.skip("policy requests carry no message")
    if front.kind == "icap":
        pytest.skip("an HTTP object over max_object_size is not refused: oversize blocks it (block page) or passes it")
    if problem == "line too long" and front.kind not in ("smtpd", "lmtpd"):
        pytest.skip("only SMTP/LMTP limit the line length of the content")
    body = b"x" * 2000 + b"\r\n" if problem == "too big" else b"y" * 20000 + b"\r\n"
    thread = serve(front.make([Gate()], max_size=1024 if problem == "too big" else 100_000))
    with caplog.at_level(logging.INFO), connect(thread) as sock:
        front.establish(sock)
        if front.kind in ("smtpd", "lmtpd"):
            sock.sendall(smtp_transaction(1).replace(b"hello\r\n", body))
            answers = [smtp_reply(sock)[:3] for _ in range(4)]
            assert answers[-1] == ("552" if problem == "too big" else "500"), answers
        elif front.kind == "milter":
            sock.sendall(milter_transaction(1).replace(milter_packet(b"B", b"hello\r\n"), milter_packet(b"B", body)))
            assert read_milter_packet(sock)[1].startswith(b"552 ")
        else:
            sock.sendall(f"MAIL FROM: <a@example.test>\nRCPT TO: <b@example.test>\nDATA {len(body)}\n".encode())
            assert read_line(sock).startswith(b"552 ")
        wait_until(lambda: refusals(caplog))
    [line] = refusals(caplog)
    if front.kind in ("smtpd", "lmtpd"):
        code = "552" if problem == "too big" else "500"
        assert line.startswith(f"{NODE}-"), line  # the queue id
        assert f" refused during DATA: {code} " in line, line
        assert line.endswith(" from=<a1@example.test> to=<b@example.test> client=-[127.0.0.1]"), line
    elif front.kind == "milter":
        assert " refused at end of message: 552 " in line, line
        assert "over max_size (1024 bytes)" in line, line
        assert line.endswith(" from=<a1@example.test> client=client.test[192.0.2.10]"), line
    else:
        assert line.startswith("sgfilterd: refused client 127.0.0.1: 552 "), line


# --------------------------------------------------------------------------- draining


def _start_drain(thread: ServiceThread) -> Any:
    """Start the worker's drain in its loop without waiting for it (ServiceThread's private parts)."""
    assert thread._runner is not None
    server = thread._running
    draining = asyncio.run_coroutine_threadsafe(server.drain(20), thread._runner.loop)
    wait_until(lambda: server.draining)  # the drain's first step sets it, in the server's loop
    return draining


def test_drain_finishes_the_transaction_and_refuses_the_next_on_the_same_connection(
    front: FrontEnd, serve: Callable[..., ServiceThread], downstream: RecordingServer
) -> None:
    """The reused-connection race: the second transaction follows the first's answer at once.

    The first is inside the scanners when the drain starts; the second is
    already in the server's buffer (pipelined).  The first gets its answer; the
    second is never begun (SMTP: 421), so nothing reaches the next hop without
    an answer to the MTA.
    """
    gate = Gate(open_=False)
    thread = serve(front.make([gate]))
    with connect(thread, timeout=20) as sock:
        front.establish(sock)
        second = front.transaction(2) if front.kind != "sgfilterd" else b""  # sgfilterd: one per connection
        sock.sendall(front.transaction(1) + second)
        assert gate.entered.wait(20)
        draining = _start_drain(thread)
        gate.opened.set()
        received = read_until_closed(sock)
    draining.result(30)
    assert gate.calls == 1, "the second transaction was begun on a draining worker"
    if front.kind in ("smtpd", "lmtpd"):
        finals = [line[:3] for line in received.decode().splitlines()]
        assert finals == ["250", "250", "354", "250", "421"], received
        assert received.decode().splitlines()[-1].startswith(front.shutdown_answer.decode())
        assert len(downstream.messages) == 1
    elif front.kind == "milter":
        assert received[4:] == mp.SMFIR_ACCEPT, received
    elif front.kind == "policy":
        assert received == b"action=DUNNO\n\n"
    elif front.kind == "icap":
        assert received.startswith(b"ICAP/1.0 204 No Content\r\n"), received
        assert received.count(b"ICAP/1.0 ") == 1, received  # the second request was never begun
        assert received.endswith(b"\r\n\r\n"), received
    else:
        assert received == b"250 0.00\n" + MESSAGE


def test_drain_shuts_idle_connections_with_the_protocols_answer(
    front: FrontEnd, serve: Callable[..., ServiceThread]
) -> None:
    if front.kind == "sgfilterd":
        pytest.skip("sgfilterd serves one request per connection: a connection is never idle between requests")
    thread = serve(front.make([Gate()]))
    with connect(thread) as sock:
        front.exchange(sock)
        draining = _start_drain(thread)
        received = read_until_closed(sock)
    draining.result(30)
    if front.kind == "policy":
        assert received == b"\n"  # the rest of the answer's blank line, then closed
    else:
        assert received == front.shutdown_answer + (b"Service shutting down, try again later\r\n" if received else b"")


# --------------------------------------------------------------------------- unix sockets


@pytest.fixture
def socket_dir() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="ms-", dir="/tmp")  # short: sun_path is 108 bytes
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("form", ["unix:", ""])
def test_listens_on_a_unix_socket_with_its_mode(
    front: FrontEnd, serve: Callable[..., ServiceThread], socket_dir: str, form: str
) -> None:
    path = os.path.join(socket_dir, "s.sock")
    if front.kind == "milter" and not form:
        pytest.skip("the milter's connection string always names its type (libmilter's syntax)")
    service = front.make([Gate()], host=form + path, socket_mode=0o600)
    assert f"unix:{path}" in service.describe()
    serve(service)
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        front.exchange(sock)


def test_tcp_forms_are_unchanged(front: FrontEnd) -> None:
    service = front.make([Gate()], host="::1")
    assert (service.host, service.port) == ("::1", 0)
    assert service.unix_path is None


# --------------------------------------------------------------------------- queue ids


def _ids_in_a_worker(service: Service, settings: Settings, count: int) -> list[str]:
    """In a forked worker: start the front end's server as a worker does, and draw queue ids."""

    async def draw() -> list[str]:
        sock = service.bind()
        server = await service.start(sock, settings)
        ids = [server.next_queue_id() for _ in range(count)]
        await server.drain(1)
        sock.close()
        return ids

    return asyncio.run(draw())


def _fork(work: Callable[[], list[str]]) -> Callable[[], list[str]]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        code = 0
        try:
            os.close(read)
            with os.fdopen(write, "w") as out:
                json.dump(work(), out)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write)

    def result() -> list[str]:
        with os.fdopen(read) as source:
            text = source.read()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        return list(json.loads(text))

    return result


def test_queue_ids_never_collide_across_two_workers_and_carry_the_node(front: FrontEnd, tmp_path: Path) -> None:
    """Two worker processes forked from one supervisor (the old ids repeated there: ``vm-8990-1`` twice)."""
    settings = Settings(state_dir=str(tmp_path), node=NODE)
    os.makedirs(tmp_path / "spool", exist_ok=True)
    service = front.make([Gate()])
    workers = [_fork(lambda: _ids_in_a_worker(service, settings, 2000)) for _ in range(2)]
    first, second = (worker() for worker in workers)
    assert len(set(first)) == len(first) == 2000
    assert not set(first) & set(second)
    for queue_id in first + second:
        assert queue_id.startswith(f"{NODE}-")
        assert len(queue_id) <= len(NODE) + 20
        assert queue_id.replace("-", "").isalnum()


def test_queue_ids_of_two_nodes_differ_even_with_the_same_pid() -> None:
    from mailsift.services.server import QueueIds

    one, other = QueueIds("mx1", pid=4242), QueueIds("mx2", pid=4242)
    ids = {one.next() for _ in range(1000)} | {other.next() for _ in range(1000)}
    assert len(ids) == 2000
    assert QueueIds("mx1.example.com bad!").node == "mx1examplecombad"  # letters, digits and '-' only
    assert QueueIds("").node == socket.gethostname().split(".")[0][:16] or QueueIds("").node == "node"


def test_a_message_gets_a_queue_id_with_the_node(front: FrontEnd, serve: Callable[..., ServiceThread]) -> None:
    if front.kind == "policy":
        pytest.skip("policy requests carry no queue id (Postfix's own is in the request)")
    gate = Gate()
    thread = serve(front.make([gate]))
    with connect(thread) as sock:
        front.exchange(sock)
    assert len(gate.queue_ids) == 1
    assert gate.queue_ids[0].startswith(f"{NODE}-{os.getpid()}-")
