"""SMFIR_PROGRESS while a long scan runs: packets at ``progress_interval``, none after the answer.

An MTA waits for the end-of-message answer at most its milter timeout
(Postfix's ``milter_content_timeout``, Sendmail's ``T=E:``); each progress
packet restarts that wait (Postfix's milter8.c reads the next reply on
SMFIR_PROGRESS).  The scan here is a real subprocess (``cmd(["sleep", ...])``);
the MTA side is the small client of tests/helpers/milter.py.  The same with a
real Postfix and a short ``milter_content_timeout``:
tests/integration/test_postfix_milter_progress.py.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mailsift import cmd, regexp_scan
from mailsift.errors import ConfigError
from mailsift.services import milter_protocol as mp
from mailsift.services.milter import PROGRESS_INTERVAL, milter
from mailsift.testing import ServiceThread
from tests.helpers.milter import MilterClient

INTERVAL = 0.25
SCAN_SECONDS = 2.0
MESSAGE = b"From: alice@example.test\r\nSubject: slow\r\n\r\nhello\r\n"
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*\r\n"


def slow_scanners() -> list[object]:
    return [cmd(["sleep", str(SCAN_SECONDS)]), regexp_scan([("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")])]


@contextmanager
def served(tmp_path: Path, interval: float | None, scanners: list[object] | None = None) -> Iterator[ServiceThread]:
    """The milter (``scanners``: :func:`slow_scanners` unless given) with ``progress_interval=interval``."""
    name = "slow" if scanners is None else "quick"
    service = milter(scanners or slow_scanners(), name, "inet:0@127.0.0.1", progress_interval=interval)
    with ServiceThread(service, state_dir=str(tmp_path)) as thread:
        yield thread


@contextmanager
def connected(thread: ServiceThread) -> Iterator[MilterClient]:
    """An MTA's connection to the milter of ``thread``, closed afterwards."""
    client = MilterClient(thread.port)
    try:
        yield client
    finally:
        client.close()


def end_of_message(client: MilterClient, data: bytes) -> tuple[list[tuple[bytes, bytes]], float]:
    """Every packet the filter sends for one message up to its final answer, and the seconds it took."""
    head, _, body = data.partition(b"\r\n\r\n")
    client.send(b"D", b"M" + b"i\0Q1\0")
    client._step(b"M", b"<alice@example.test>\0")
    client._step(b"R", b"<bob@example.test>\0")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b": ")
        client._step(b"L", name + b"\0" + value + b"\0")
    client._step(b"N", b"")
    client._step(b"B", body)
    started = time.monotonic()
    client.send(b"E")
    packets = []
    while True:
        packets.append(client.read())
        if packets[-1][0] in b"acdrty":
            return packets, time.monotonic() - started


def quiet_for(client: MilterClient, seconds: float) -> bool:
    """True when the filter sends nothing for ``seconds`` (the connection still open)."""
    client.sock.settimeout(seconds)
    try:
        return client.sock.recv(1) == b"x"  # any byte (or EOF) is a failure
    except TimeoutError:
        return True
    finally:
        client.sock.settimeout(30)


@pytest.mark.parametrize(("body", "final"), [(b"hello\r\n", b"a"), (EICAR, b"y")], ids=["clean", "eicar"])
def test_progress_comes_at_the_interval_and_stops_with_the_answer(tmp_path: Path, body: bytes, final: bytes) -> None:
    with served(tmp_path, INTERVAL) as thread, connected(thread) as client:
        packets, seconds = end_of_message(client, MESSAGE.replace(b"hello\r\n", body))
        *progress, answer = packets
        assert answer[0] == final, packets
        if final == b"y":
            assert answer[1].startswith(b"550 "), answer
        assert set(progress) == {(mp.SMFIR_PROGRESS, b"")}, packets
        # No more often than the interval, and a scan of 8 intervals gets several of them.
        assert 2 <= len(progress) <= seconds / INTERVAL + 1, (len(progress), seconds)
        assert seconds >= SCAN_SECONDS  # the scan really ran that long
        # After the answer: silence, although the connection stays open (3 intervals).
        assert quiet_for(client, 3 * INTERVAL)
        # The next message on the same connection gets its progress again.
        packets, _ = end_of_message(client, MESSAGE)
        assert packets[-1] == (b"a", b"")
        assert (mp.SMFIR_PROGRESS, b"") in packets


def test_no_progress_when_disabled_or_when_the_scan_is_quick(tmp_path: Path) -> None:
    with served(tmp_path, None) as thread, connected(thread) as client:
        packets, seconds = end_of_message(client, MESSAGE)
        assert packets == [(b"a", b"")]
        assert seconds >= SCAN_SECONDS
    with served(tmp_path, INTERVAL, [regexp_scan([("X", "never-there")])]) as thread, connected(thread) as client:
        assert end_of_message(client, MESSAGE)[0] == [(b"a", b"")]


def test_an_mta_gone_during_the_scan_stops_the_progress_and_the_worker_goes_on(tmp_path: Path) -> None:
    with served(tmp_path, INTERVAL) as thread:
        with connected(thread) as client:
            client.send(b"D", b"M" + b"i\0Q2\0")
            client._step(b"M", b"<alice@example.test>\0")
            client._step(b"R", b"<bob@example.test>\0")
            client._step(b"N", b"")
            client.send(b"E")
            assert client.read() == (mp.SMFIR_PROGRESS, b"")
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # RST on close
        time.sleep(SCAN_SECONDS)
        with connected(thread) as other:  # the worker still serves
            assert end_of_message(other, MESSAGE)[0][-1] == (b"a", b"")


def test_the_default_interval_and_bad_values() -> None:
    assert milter([], "m", "inet:0@127.0.0.1").progress_interval == PROGRESS_INTERVAL == 10.0
    for bad in (0, -1, "10", True, float("inf")):
        with pytest.raises(ConfigError, match="progress_interval"):
            milter([], "m", "inet:0@127.0.0.1", progress_interval=bad)  # type: ignore[arg-type]


def test_progress_packet_is_a_bare_p() -> None:
    assert mp.progress() == b"\0\0\0\1p"
