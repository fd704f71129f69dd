"""Scanner pools (:mod:`mailsift.scanners.engines.pool`): balancing, ejection, re-admission, retry.

First the pool alone, with requests and health checks scripted in Python and a
hand-moved clock; then ``clamd([...])``, ``spamassassind([...])`` and
``rspamd([...])`` over fake daemons (:mod:`mailsift.testing`) that answer, hang or refuse.  Two real
clamd instances, one stopped mid-run: ``tests/engines/test_clamd_pool.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from pathlib import Path

import pytest

from mailsift.errors import ConfigError, ContentError, ScannerError, ScannerTimeout, ScannerUnavailable
from mailsift.message.mail import Envelope, Mail
from mailsift.scanners.base import MailTarget
from mailsift.scanners.engines.clamav import clamd
from mailsift.scanners.engines.common import where
from mailsift.scanners.engines.pool import TIMEOUTS_TO_EJECT, Pool, backend_list
from mailsift.scanners.engines.rspamd import rspamd
from mailsift.scanners.engines.spamassassin import spamassassind
from mailsift.testing import FakeClamd, FakeSpamd
from tests.helpers.pool_fakes import PingingRspamd


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool_of(names: str, check: Callable[[str], Awaitable[None]] | None = None, clock: Clock | None = None) -> Pool[str]:
    async def healthy(address: str) -> None:
        return None

    return Pool("engine", list(names), label=str, check=check or healthy, clock=clock or Clock())


def target(data: bytes = b"Subject: x\r\n\r\nhello\r\n") -> MailTarget:
    return MailTarget(Mail(Envelope("a@example.org", ["b@example.org"]), data))


# --------------------------------------------------------------------------- the pool alone


async def test_idle_pool_goes_round_robin() -> None:
    pool = pool_of("abc")
    seen = [await pool.run(lambda address: asyncio.sleep(0, address)) for _ in range(6)]
    assert seen == list("abcabc")
    assert [backend.requests for backend in pool.backends] == [2, 2, 2]


async def test_fewest_outstanding_requests_wins() -> None:
    pool = pool_of("abc")
    release = asyncio.Event()

    async def slow(address: str) -> str:
        await release.wait()
        return address

    held = [asyncio.create_task(pool.run(slow)) for _ in range(2)]  # a and b busy
    await asyncio.sleep(0)
    assert [backend.outstanding for backend in pool.backends] == [1, 1, 0]
    assert await pool.run(lambda address: asyncio.sleep(0, address)) == "c"  # the only idle one
    held.append(asyncio.create_task(pool.run(slow)))  # c is idle again: it takes this one
    await asyncio.sleep(0)
    assert [backend.outstanding for backend in pool.backends] == [1, 1, 1]
    held.append(asyncio.create_task(pool.run(slow)))  # a tie: round-robin goes on after c, at a
    await asyncio.sleep(0)
    assert [backend.outstanding for backend in pool.backends] == [2, 1, 1]
    release.set()
    assert sorted(await asyncio.gather(*held)) == ["a", "a", "b", "c"]
    assert [backend.outstanding for backend in pool.backends] == [0, 0, 0]


async def test_failure_ejects_and_retries_once_on_another_backend() -> None:
    clock = Clock()
    pool = pool_of("ab", clock=clock)
    tried: list[str] = []

    async def a_down(address: str) -> str:
        tried.append(address)
        if address == "a":
            raise ScannerUnavailable("a: connection refused")
        return address

    assert await pool.run(a_down) == "b"
    assert tried == ["a", "b"]
    a, b = pool.backends
    assert (a.state, a.failures, a.ejections, a.requests) == ("out", 1, 1, 1)
    assert (b.state, b.failures, b.requests) == ("up", 0, 1)
    tried.clear()
    for _ in range(4):  # a is out: everything goes to b, a not even tried
        assert await pool.run(a_down) == "b"
    assert tried == ["b"] * 4


async def test_error_on_every_backend_is_the_requests_error() -> None:
    pool = pool_of("abc")
    tried: list[str] = []

    async def broken(address: str) -> str:
        tried.append(address)
        raise ScannerError(f"{address}: protocol error")

    with pytest.raises(ScannerError, match="b: protocol error"):
        await pool.run(broken)
    assert tried == ["a", "b"]  # retried once, not on every backend


async def test_content_error_neither_ejects_nor_retries() -> None:
    pool = pool_of("ab")
    tried: list[str] = []

    async def unreadable(address: str) -> str:
        tried.append(address)
        raise ContentError("cannot decode")

    with pytest.raises(ContentError):
        await pool.run(unreadable)
    assert tried == ["a"]
    assert [backend.state for backend in pool.backends] == ["up", "up"]


async def test_pause_grows_and_a_health_check_lets_the_backend_back() -> None:
    clock = Clock()
    healthy = {"a": False}
    checks: list[str] = []

    async def check(address: str) -> None:
        checks.append(address)
        if not healthy[address]:
            raise ScannerUnavailable(f"{address}: refused")

    pool = pool_of("ab", check=check, clock=clock)
    a = pool.backends[0]

    async def request(address: str) -> str:
        if address == "a" and not healthy["a"]:
            raise ScannerUnavailable("a: refused")
        return address

    await pool.run(request)
    assert (a.state, a.out_until) == ("out", clock.now + 1)
    clock.now += 0.5
    await pool.run(request)
    await pool.checks_done()
    assert checks == []  # its pause is not over
    pauses = []
    for _ in range(8):  # the check fails: out again, each time for twice as long, up to 60 s
        clock.now = a.out_until or 0.0
        before = clock.now
        await pool.run(request)
        await pool.checks_done()
        pauses.append((a.out_until or 0.0) - before)
    assert pauses == [2, 4, 8, 16, 32, 60, 60, 60]
    assert a.ejections == 1
    assert a.failures == 9
    assert a.requests == 1
    healthy["a"] = True
    clock.now = a.out_until or 0.0
    assert await pool.run(request) == "b"  # the check runs in the background: this one still goes to b
    await pool.checks_done()
    assert a.state == "up"
    assert [await pool.run(request) for _ in range(4)] == ["a", "b", "a", "b"]
    assert a.pause == 1  # its first success reset the pause
    assert len(checks) == 9


async def test_slow_health_check_is_a_failure() -> None:
    clock = Clock()

    async def hang(address: str) -> None:
        await asyncio.sleep(3600)

    pool = Pool("engine", ["a", "b"], label=str, check=hang, clock=clock, check_timeout=0.05)
    a = pool.backends[0]

    async def request(address: str) -> str:
        if address == "a":
            raise ScannerUnavailable("a: refused")  # (a timeout alone does not eject: see the timeout tests)
        return address

    await pool.run(request)
    clock.now = a.out_until or 0.0
    await pool.run(request)
    assert a.state == "checking"
    await pool.checks_done()
    assert a.state == "out"
    assert a.out_until == clock.now + 2


async def test_with_every_backend_out_requests_still_go_out() -> None:
    clock = Clock()
    pool = pool_of("ab", clock=clock)

    async def down(address: str) -> str:
        raise ScannerUnavailable(f"{address}: down")

    with pytest.raises(ScannerUnavailable):
        await pool.run(down)
    assert [backend.state for backend in pool.backends] == ["out", "out"]
    assert await pool.run(lambda address: asyncio.sleep(0, address)) == "a"  # its pause ends first
    assert pool.backends[0].state == "up"  # it answered: back at once


async def test_a_pool_of_one_is_the_single_daemon_of_before() -> None:
    pool = pool_of("a")
    calls = 0

    async def flaky(address: str) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ScannerUnavailable("down")
        return address

    with pytest.raises(ScannerUnavailable):
        await pool.run(flaky)
    assert calls == 1  # nothing else to retry on
    assert pool.backends[0].state == "up"
    assert pool.backends[0].failures == 1
    assert await pool.run(flaky) == "a"


async def test_one_timeout_does_not_eject_a_backend_that_answers_its_check() -> None:
    checks: list[str] = []

    async def check(address: str) -> None:
        checks.append(address)

    pool = pool_of("ab", check=check)
    a = pool.backends[0]
    slow_message = True

    async def request(address: str) -> str:
        if address == "a" and slow_message:
            raise ScannerTimeout("a: no answer in 60 s")
        return address

    assert await pool.run(request) == "b"  # retried on b, as any failure
    await pool.checks_done()
    assert checks == ["a"]  # checked at once...
    assert (a.state, a.ejections, a.failures, a.timeouts_in_row) == ("up", 0, 1, 1)  # ...and kept in
    slow_message = False
    assert [await pool.run(request) for _ in range(4)] == ["a", "b", "a", "b"]  # still takes its share
    assert a.timeouts_in_row == 0  # an answer resets the count


async def test_a_timeout_with_a_failed_check_ejects() -> None:
    async def check(address: str) -> None:
        raise ScannerUnavailable(f"{address}: refused")

    pool = pool_of("ab", check=check)
    a = pool.backends[0]

    async def request(address: str) -> str:
        if address == "a":
            raise ScannerTimeout("a: no answer")
        return address

    assert await pool.run(request) == "b"
    await pool.checks_done()
    assert (a.state, a.ejections, a.failures) == ("out", 1, 2)  # the timeout and the failed check


async def test_timeouts_in_a_row_eject_even_when_the_check_passes() -> None:
    pool = pool_of("ab")
    a = pool.backends[0]

    async def request(address: str) -> str:
        if address == "a":
            raise ScannerTimeout("a: no answer")
        return address

    for count in range(1, TIMEOUTS_TO_EJECT):
        assert await pool.run(request) == "b"
        await pool.checks_done()
        assert (a.state, a.timeouts_in_row) == ("up", count)
    assert await pool.run(request) == "b"
    assert (a.state, a.ejections, a.failures) == ("out", 1, TIMEOUTS_TO_EJECT)


async def test_a_pool_of_one_is_not_checked_after_a_timeout() -> None:
    checks: list[str] = []

    async def check(address: str) -> None:
        checks.append(address)

    pool = pool_of("a", check=check)

    async def request(address: str) -> str:
        raise ScannerTimeout("a: no answer")

    for _ in range(TIMEOUTS_TO_EJECT + 1):
        with pytest.raises(ScannerTimeout):
            await pool.run(request)
    await pool.checks_done()
    assert (pool.backends[0].state, checks) == ("up", [])


def test_counters_as_metric_samples() -> None:
    pool = pool_of("ab")
    pool.backends[1].requests = 3
    samples = {(name, labels["backend"]): value for name, labels, value in pool.samples()}
    assert samples[("mailsift_scanner_backend_requests_total", "b")] == 3
    assert samples[("mailsift_scanner_backend_up", "a")] == 1
    assert {labels["scanner"] for _, labels, _ in pool.samples()} == {"engine"}
    assert len(samples) == 10


@pytest.mark.parametrize(
    ("value", "backends"),
    [
        ("/run/c.ctl", ["/run/c.ctl"]),
        (["localhost", 3310], [["localhost", 3310]]),
        (("localhost", 3310), [("localhost", 3310)]),
        (["/run/a.ctl", "/run/b.ctl"], ["/run/a.ctl", "/run/b.ctl"]),
        ([("h", 1), ["h", 2], "/run/c"], [("h", 1), ["h", 2], "/run/c"]),
        ([("h", 1)], [("h", 1)]),
        (["localhost"], [["localhost"]]),  # one (bad) address, refused by the engine as before
        (("localhost", "3310"), [("localhost", "3310")]),
        ([], [[]]),
    ],
)
def test_backend_lists(value: object, backends: list[object]) -> None:
    assert backend_list(value) == backends


def test_engines_take_lists_and_refuse_duplicates(tmp_path: Path) -> None:
    scanner = clamd([str(tmp_path / "a.sock"), ("127.0.0.1", 3310)])
    assert [backend.label for backend in scanner.pool.backends] == [str(tmp_path / "a.sock"), "127.0.0.1:3310"]
    assert scanner.describe() == f"clamd({tmp_path / 'a.sock'}, 127.0.0.1:3310)"
    assert len(spamassassind([("127.0.0.1", 783), ("127.0.0.1", 784)]).pool) == 2
    with pytest.raises(ConfigError, match="listed twice"):
        clamd(["/run/a.ctl", "/run/a.ctl"])
    with pytest.raises(ConfigError, match="address must be"):
        clamd(["/run/a.ctl", ("h", 0)])


# --------------------------------------------------------------------------- clamd and spamd over fakes


TIMEOUT = 10.0
"""The scan timeout where no fake daemon hangs: long, so that a busy machine never turns an answer into a
timeout (a retry on the other daemon, and counts the test did not expect); an answer comes at once."""
HANG_TIMEOUT = 2.0
"""The scan timeout where a fake daemon hangs: the hung request ends after it, while the request reaching
the hung daemon and the other daemon's answers come well within it on a busy machine (0.3 s did not:
the hung rspamd had not even read its request yet)."""


def fast_pool(scanner: clamd | spamassassind | rspamd) -> Clock:
    """Short pauses on a clock the test moves: a pause ends when the test moves the clock past it, never
    while the test is scanning (a slow machine once let the pause end and a check run mid-test)."""
    clock = Clock()
    if isinstance(scanner, rspamd):
        scanner.pool = Pool(
            scanner.name, scanner.urls, label=str, check=scanner.health_check, first_pause=0.05, clock=clock
        )
    else:
        scanner.pool = Pool(
            scanner.name, scanner.addresses, label=where, check=scanner.health_check, first_pause=0.05, clock=clock
        )
    return clock


async def test_clamd_spreads_over_its_daemons(tmp_path: Path) -> None:
    async with FakeClamd(tmp_path / "a.sock") as a, FakeClamd(tmp_path / "b.sock") as b:
        scanner = clamd([a.address, b.address])
        results = await asyncio.gather(*(scanner.scan(target()) for _ in range(20)))
        assert all(result.level == 0 for result in results)
        assert (len(a.streams), len(b.streams)) == (10, 10)
        await scanner.close_resources()


@pytest.mark.parametrize("fault", ["refuse", "hang", "error", "drop"])
async def test_clamd_fault_ejects_and_every_message_is_scanned(tmp_path: Path, fault: str) -> None:
    timeout = HANG_TIMEOUT if fault == "hang" else TIMEOUT
    async with (
        FakeClamd(tmp_path / "a.sock") as a,
        FakeClamd(tmp_path / "b.sock", virus="V") as b,
        aclosing(clamd([a.address, b.address], timeout=timeout)) as scanner,
    ):
        clock = fast_pool(scanner)
        if fault == "refuse":
            await a.stop()
        else:
            a.behaviour = "hang" if fault == "hang" else fault  # type: ignore[assignment]  # a literal
        b.behaviour = "found"
        results = [await scanner.scan(target()) for _ in range(6)]
        assert [result.name for result in results] == ["V"] * 6  # every message scanned, by b
        backend_a = scanner.pool.backends[0]
        # a hang answers PING (the fake's PING always answers): out after TIMEOUTS_TO_EJECT timeouts in a row
        tries = TIMEOUTS_TO_EJECT if fault == "hang" else 1
        assert backend_a.ejections == 1
        assert backend_a.failures == tries
        assert backend_a.requests == tries
        assert len(b.streams) == 6
        # a comes back: let in after its pause by PING, then takes its share again
        if fault == "refuse":
            await a.start()
        a.behaviour = "ok"
        clock.now += 0.06
        await scanner.scan(target())
        await scanner.pool.checks_done()
        assert backend_a.state == "up"
        results = [await scanner.scan(target()) for _ in range(4)]
        assert sorted(result.name for result in results) == ["", "", "V", "V"]


async def test_clamd_down_everywhere_is_a_tempfail(tmp_path: Path) -> None:
    scanner = clamd([str(tmp_path / "a.sock"), str(tmp_path / "b.sock")])
    with pytest.raises(ScannerUnavailable, match=r"b\.sock"):
        await scanner.scan(target())
    assert [backend.failures for backend in scanner.pool.backends] == [1, 1]


async def test_clamd_ejected_daemon_waits_for_its_ping(tmp_path: Path) -> None:
    async with (
        FakeClamd(tmp_path / "a.sock") as a,
        FakeClamd(tmp_path / "b.sock") as b,
        aclosing(clamd([a.address, b.address])) as scanner,
    ):
        clock = fast_pool(scanner)
        await a.stop()
        await scanner.scan(target())
        clock.now += 0.06
        await scanner.scan(target())  # starts the check: a still down, out again
        await scanner.pool.checks_done()
        assert scanner.pool.backends[0].state == "out"
        await a.start()
        clock.now += 0.11
        await scanner.scan(target())
        await scanner.pool.checks_done()
        assert scanner.pool.backends[0].state == "up"
        assert b"zPING\0" in a.commands  # let in by its PING, before any stream
        assert a.streams == []


async def test_spamd_pool_over_fakes(tmp_path: Path) -> None:
    async with FakeSpamd(tmp_path / "a.sock") as a, FakeSpamd(tmp_path / "b.sock") as b:
        scanner = spamassassind([a.address, b.address], timeout=HANG_TIMEOUT)
        clock = fast_pool(scanner)
        results = [await scanner.scan(target()) for _ in range(4)]
        assert all(result.level > 1 for result in results)
        assert (len(a.requests), len(b.requests)) == (2, 2)
        a.hang = True
        results = [await scanner.scan(target()) for _ in range(4)]
        assert all(result.level > 1 for result in results)
        assert scanner.pool.backends[0].ejections == 1
        a.hang = False
        clock.now += 0.06
        await scanner.scan(target())
        await scanner.pool.checks_done()
        assert scanner.pool.backends[0].state == "up"


async def test_rspamd_pool_over_fakes() -> None:
    # closed even when an assertion fails: its sockets are not left to the garbage collector, whose
    # ResourceWarning then failed a later test (a greylist test, in CI)
    async with PingingRspamd() as a, PingingRspamd() as b, aclosing(rspamd([a.url, b.url], timeout=TIMEOUT)) as scanner:
        assert scanner.describe() == f"rspamd({a.url}/checkv2, {b.url}/checkv2, max_size={scanner.max_size})"
        clock = fast_pool(scanner)
        backend_a = scanner.pool.backends[0]
        results = [await scanner.scan(target()) for _ in range(4)]
        assert all(result.level > 0 for result in results)
        assert (len(a.requests), len(b.requests)) == (2, 2)  # balanced
        await a.stop()  # down: refused, taken out, every message scanned by b
        results = [await scanner.scan(target()) for _ in range(4)]
        assert all(result.level > 0 for result in results)
        assert (backend_a.state, backend_a.ejections, backend_a.failures) == ("out", 1, 1)
        assert len(b.requests) == 6
        await a.restart()
        a.ping_ok = False  # up but unhealthy: its /ping fails, it stays out
        clock.now += 0.06
        await scanner.scan(target())
        await scanner.pool.checks_done()
        assert (backend_a.state, a.pings) == ("out", 1)
        a.ping_ok = True
        clock.now += 0.11
        await scanner.scan(target())
        await scanner.pool.checks_done()
        assert (backend_a.state, a.pings) == ("up", 2)  # let back in by /ping
        scans = len(a.requests)
        assert all(result.level > 0 for result in [await scanner.scan(target()) for _ in range(4)])
        assert len(a.requests) == scans + 2  # its share again


async def test_rspamd_hanging_daemon_is_ejected_once_its_ping_fails() -> None:
    async with (
        PingingRspamd() as a,
        PingingRspamd() as b,
        aclosing(rspamd([a.url, b.url], timeout=HANG_TIMEOUT)) as scanner,
    ):
        scanner.pool = Pool("rspamd", scanner.urls, label=str, check=scanner.health_check, clock=Clock())
        a.hang = True
        a.ping_ok = False
        assert (await scanner.scan(target())).level > 0  # retried on b; a checked in the background
        await scanner.pool.checks_done()
        assert (scanner.pool.backends[0].state, scanner.pool.backends[0].ejections) == ("out", 1)
        assert all(result.level > 0 for result in [await scanner.scan(target()) for _ in range(3)])
        assert (len(a.requests), len(b.requests), a.pings) == (1, 4, 1)


def test_rspamd_lists() -> None:
    assert rspamd(["http://10.0.0.2:11333", "http://10.0.0.3:11333/"]).urls == [
        "http://10.0.0.2:11333/checkv2",
        "http://10.0.0.3:11333/checkv2",
    ]
    assert len(rspamd("http://10.0.0.2:11333").pool) == 1
    with pytest.raises(ConfigError, match="listed twice"):
        rspamd(["http://10.0.0.2:11333", "http://10.0.0.2:11333/checkv2"])
    with pytest.raises(ConfigError, match="url must be"):
        rspamd(["http://10.0.0.2:11333", 11333])  # type: ignore[list-item]
