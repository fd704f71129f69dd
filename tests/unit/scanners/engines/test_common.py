"""``scanners/engines/common.py``: what every engine shares (addresses, connecting,
deadlines, size limits, clients per loop, the spam result); the engines' own
modules run the shared edge cases through it (``tests/helpers/engines.py``)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from mailsift.errors import ConfigError, ScannerError, ScannerTimeout, ScannerUnavailable
from mailsift.scanners.engines import clamav, spamassassin
from mailsift.scanners.engines.common import (
    PerLoop,
    SizeLimit,
    connect,
    deadline,
    no_answer,
    oversize_policy,
    oversized,
    parse_address,
    spam_level,
    unavailable,
    where,
)
from tests.helpers.engines import refused_port


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        ("/run/clamd.ctl", "/run/clamd.ctl"),
        (Path("/run/spamd.sock"), "/run/spamd.sock"),
        (["localhost", 3310], ("localhost", 3310)),
        (("127.0.0.1", 783), ("127.0.0.1", 783)),
    ],
)
def test_address_forms(address: Any, parsed: Any) -> None:
    assert parse_address(address, "engine") == parsed


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("", "engine: the socket path is empty"),
        ("a\0b", "bad unix socket path"),
        (["localhost"], "address must be"),
        (("localhost", 0), "address must be"),
        (("localhost", 65536), "address must be"),
        (("localhost", "3310"), "address must be"),
        (("localhost", True), "address must be"),
        (("", 3310), "address must be"),
        (3310, "address must be"),
        (None, "address must be"),
    ],
)
def test_bad_addresses(address: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_address(address, "engine")


def test_every_engine_reads_addresses_the_same_way() -> None:
    for form in (["127.0.0.1", 3310], "/run/x.sock"):
        assert clamav.clamd(form).address == spamassassin.spamassassind(form).address == parse_address(form, "x")
    for bad in ("", ("h", 0), ["h"]):
        for engine in (clamav.clamd, spamassassin.spamassassind):
            with pytest.raises(ConfigError):
                engine(bad)


def test_where() -> None:
    assert where("/run/c.sock") == "/run/c.sock"
    assert where(("mx.example", 25)) == "mx.example:25"


def test_failure_wording() -> None:
    error = unavailable("clamd", "/x.sock", FileNotFoundError(2, "No such file or directory"))
    assert isinstance(error, ScannerUnavailable)
    assert error.message == "clamd: cannot connect to /x.sock, not reachable: No such file or directory"
    assert unavailable("cmd", "/bin/x", "gone", how="cannot run /bin/x").message == "cmd: cannot run /bin/x: gone"
    timeout = no_answer("spamassassind", "127.0.0.1:783", 0.5)
    assert isinstance(timeout, ScannerTimeout)
    assert timeout.message == "spamassassind 127.0.0.1:783: no answer within 0.5 s"


async def test_deadline_maps_the_timeout_and_nothing_else() -> None:
    with pytest.raises(ScannerTimeout, match="late"):
        async with deadline(0.01, lambda: ScannerTimeout("late")):
            await asyncio.sleep(10)
    with pytest.raises(ScannerError, match="other"):
        async with deadline(10, lambda: ScannerTimeout("late")):
            raise ScannerError("other")
    async with deadline(10, lambda: ScannerTimeout("late")):
        await asyncio.sleep(0)


async def test_connect_unix_tcp_and_failures(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    tcp = socket.create_server(("127.0.0.1", 0))
    try:
        for address in (path, ("127.0.0.1", tcp.getsockname()[1])):
            sock = await connect(address, "engine")
            assert not sock.getblocking()
            sock.close()
        with pytest.raises(ScannerUnavailable, match="not reachable: Connection refused"):
            await connect(("127.0.0.1", refused_port()), "engine")
        with pytest.raises(ScannerUnavailable, match="not reachable: No such file"):
            await connect(str(tmp_path / "none.sock"), "engine")
        with pytest.raises(ScannerUnavailable, match="cannot resolve"):
            await connect(("no-such-host.invalid", 1), "engine")
    finally:
        listener.close()
        tcp.close()


def test_size_limit_and_oversize_policies() -> None:
    limit = SizeLimit.checked("max_size", 100, "engine")
    assert (limit.exceeded(100), limit.exceeded(101)) == (False, True)
    assert limit.why(101) == "101 bytes exceed max_size 100"
    unlimited = SizeLimit.checked("max_size", None, "engine", optional=True)
    assert not unlimited.exceeded(10**12)
    for bad in (None, 0, -1, 1.5, True, "1M"):
        with pytest.raises(ConfigError, match="engine: max_size must be a positive number of bytes"):
            SizeLimit.checked("max_size", bad, "engine")
    found = oversized("detect", scanner="s", engine_at="s here", why="too big", name="Big")
    assert (found.level, found.name, found.detail) == (1.0, "Big", "too big")
    passed = oversized("pass", scanner="s", engine_at="s here", why="too big", name="Big")
    assert (passed.level, passed.name, passed.detail) == (0.0, "", "not scanned: too big")
    with pytest.raises(ScannerError, match="s here: not scanned: too big"):
        oversized("tempfail", scanner="s", engine_at="s here", why="too big", name="Big")
    with pytest.raises(ConfigError, match="engine: oversize must be one of"):
        oversize_policy("ignore", "engine")


async def test_per_loop_client_is_kept_and_renewed() -> None:
    made: list[list[bool]] = []

    def factory() -> list[bool]:
        made.append([False])
        return made[-1]

    clients: PerLoop[list[bool]] = PerLoop(factory, lambda client: client[0])
    first = clients.get()
    assert clients.get() is first
    first[0] = True  # closed: a new one
    assert clients.get() is not first
    closed: list[list[bool]] = []

    async def close(client: list[bool]) -> None:
        closed.append(client)

    await clients.close(close)
    assert closed == [made[-1]]
    assert len(made) == 2


def test_spam_level() -> None:
    assert spam_level(12.3, 5.0, True) == pytest.approx(2.46)
    assert (spam_level(3.0, 0.0, True), spam_level(3.0, 0.0, False)) == (1.0, 0.0)
