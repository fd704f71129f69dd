"""The scanner threads: bounded, apart from the event loop's default executor; abandoned work is logged."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import pytest

from mailsift.scanners import work


async def until(condition: Callable[[], bool], seconds: float = 30) -> None:
    """Wait until ``condition()`` holds (a bound, not a measure: a slow machine takes its time)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        await asyncio.sleep(0.01)


def test_scanner_work_runs_in_a_bounded_pool_of_its_own() -> None:
    """More blocking calls than threads: at most SCANNER_THREADS run at once, and the default executor stays free."""
    gate = threading.Event()
    running: set[str] = set()
    peak = 0
    lock = threading.Lock()

    def blocking() -> str:
        nonlocal peak
        name = threading.current_thread().name
        with lock:
            running.add(name)
            peak = max(peak, len(running))
        gate.wait(10)
        with lock:
            running.discard(name)
        return name

    async def main() -> list[str]:
        calls = [asyncio.create_task(work.in_thread(blocking)) for _ in range(work.SCANNER_THREADS + 3)]
        await until(lambda: len(running) == work.SCANNER_THREADS)  # every scanner thread held
        # Every scanner thread is held: the loop's own executor (the database, fsynced writes) still answers.
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 5) == "free"
        gate.set()
        return await asyncio.gather(*calls)

    names = asyncio.run(main())
    assert peak <= work.SCANNER_THREADS
    assert all(name.startswith("mailsift-scanner") for name in names)


def test_work_abandoned_by_its_message_is_logged_and_work_not_started_never_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mailsift.scanners")
    gate = threading.Event()
    started: list[int] = []

    def blocking(n: int) -> None:
        started.append(n)
        gate.wait(10)

    async def main() -> None:
        calls = [asyncio.create_task(work.in_thread(blocking, n)) for n in range(work.SCANNER_THREADS + 2)]
        # the first ones running in every scanner thread (a fixed 0.2 s assumed the threads had started
        # by then; one not started yet would be cancelled before it ran)
        await until(lambda: len(started) == work.SCANNER_THREADS)
        for call in calls:
            call.cancel()  # their messages' deadlines passed
        await asyncio.gather(*calls, return_exceptions=True)
        assert work.abandoned() == work.SCANNER_THREADS
        gate.set()
        await until(lambda: work.abandoned() == 0)

    asyncio.run(main())
    assert sorted(started) == list(range(work.SCANNER_THREADS)), "queued work whose message gave up never starts"
    assert work.abandoned() == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("blocking in a scanner thread" in m for m in messages) == work.SCANNER_THREADS
    assert sum("blocking ended after" in m for m in messages) == work.SCANNER_THREADS
