"""Where one message's scanning time goes, and the threads scanners run their blocking work in.

**The scan clock.**  The mail path (:mod:`mailsift.core.deadline`) starts a
:class:`ScanClock` for each message; :func:`mailsift.scanners.base.evaluate`
charges every scanner's own time to it (a wrapper's time excludes the scanners
it wraps: ``parsemail(clamd(...))`` is clamd's time) and counts the parts
scanned.  When the message's deadline passes, :meth:`ScanClock.summary` says
where the time went: ``clamd 1.8 s (3 parts of 16 scanned)``.  The clock also
lets the event loop breathe: a scanner loop that never waits (thousands of
small parts under cheap scanners) gives the loop back every
:data:`BREATHE_SECONDS`, so the worker's other messages go on and the deadline
can fire.

**The scanner threads.**  Blocking scanner work (regular expressions over
big parts, libarchive, olevba, file-type sniffing, MIME parsing of big
messages) runs in :func:`in_thread`: a pool of :data:`SCANNER_THREADS`
threads per worker process, separate from the event loop's default executor
(which the database, the quarantine's and Maildir's fsynced writes and name
lookups use).  One message scans its parts one after another, so it holds at
most one of these threads; a message stuck in one cannot starve the database
or the disk work of the others.

Work in a thread cannot be interrupted: a regular expression, libarchive or
olevba runs to its end.  When a message's deadline passes while its work runs,
the message is answered (451) and the work is *abandoned*: it keeps its thread
until it ends, which is logged (warning) when it is abandoned, with how many
threads abandoned work holds, and again (info) when it ends.  Work still
waiting for a thread when its message gives up never starts.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from mailsift.message.mail import Mail

log = logging.getLogger("mailsift.scanners")

P = ParamSpec("P")
T = TypeVar("T")

SCANNER_THREADS = 4
"""Threads per worker process for blocking scanner work (each message uses at most one at a time)."""
BREATHE_SECONDS = 0.02
"""A message's scanners give the event loop back at least this often."""


# --------------------------------------------------------------------------- the scan clock


class ScanClock:
    """One message's scanning: seconds per scanner (its own time) and parts scanned."""

    def __init__(self, mail: Mail) -> None:
        self.mail = mail
        self.seconds: dict[str, float] = {}
        self.parts: set[str] = set()
        self._inner: list[float] = []  # per running evaluation: time spent in the scanners it wraps
        self._breathed = time.monotonic()

    async def breathe(self) -> None:
        """Give the event loop back if this message has held it for :data:`BREATHE_SECONDS`."""
        now = time.monotonic()
        if now - self._breathed >= BREATHE_SECONDS:
            await asyncio.sleep(0)
            self._breathed = time.monotonic()

    def enter(self) -> float:
        self._inner.append(0.0)
        return time.monotonic()

    def leave(self, name: str, started: float, part: str | None, *, finished: bool) -> None:
        elapsed = time.monotonic() - started
        inner = self._inner.pop()
        self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, elapsed - inner)
        if self._inner:
            self._inner[-1] += elapsed
        if finished and part is not None:
            self.parts.add(part)

    def summary(self) -> str:
        """``clamd 1.8 s, parsemail 0.1 s (3 parts of 16 scanned)``: the scanners by time spent."""
        spent = sorted(self.seconds.items(), key=lambda item: -item[1])
        text = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in spent[:3] if seconds >= 0.05)
        text = text or "no scanner took 0.1 s"
        if "_structure" in self.mail.__dict__:  # parsed: how far the part scanners got (views are parts too)
            total = len(self.mail.parts) + len(self.mail.__dict__.get("views", ()))
            text += f" ({len(self.parts)} parts of {total} scanned)"
        return text


MESSAGE_DEADLINE = "message deadline"
"""``Mail.memo`` key: the ``time.monotonic()`` at which the message's deadline passes (set by
:mod:`mailsift.core.deadline`; absent outside the mail path).  Blocking work that can stop early
(password tries) reads it, so that it does not run on for a message that has been answered."""


def message_ends(mail: Mail) -> float | None:
    """When ``mail``'s deadline passes (``time.monotonic()``), or ``None`` if it has none."""
    ends = mail.memo.get(MESSAGE_DEADLINE)
    return ends if isinstance(ends, float) else None


CLOCK: contextvars.ContextVar[ScanClock | None] = contextvars.ContextVar("mailsift_scan_clock", default=None)
"""The clock of the message being scanned in this task (None outside the mail path: ``mailsift scan``)."""


# --------------------------------------------------------------------------- the scanner threads

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_abandoned = 0


def executor() -> ThreadPoolExecutor:
    """This process's scanner threads (a forked worker makes its own)."""
    global _pool, _pool_pid
    with _lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(SCANNER_THREADS, thread_name_prefix="mailsift-scanner")
            _pool_pid = os.getpid()
        return _pool


def abandoned() -> int:
    """How many scanner threads abandoned work holds now."""
    return _abandoned


async def in_thread(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``function(*args, **kwargs)`` in a scanner thread; abandoned work is logged (module docstring)."""
    context = contextvars.copy_context()
    call = functools.partial(function, *args, **kwargs)
    work: Future[T] = executor().submit(context.run, call)
    try:
        return await asyncio.wrap_future(work)
    except asyncio.CancelledError:
        if not work.cancelled():  # running: it cannot be stopped
            _abandon(work, getattr(function, "__qualname__", repr(function)))
        raise


def _abandon(work: Future[Any], name: str) -> None:
    global _abandoned
    with _lock:
        _abandoned += 1
        held = _abandoned
    started = time.monotonic()
    log.warning(
        "abandoned %s in a scanner thread (its message gave up); it cannot be interrupted and holds "
        "the thread until it ends: %d of %d scanner threads held by abandoned work",
        name,
        held,
        SCANNER_THREADS,
    )

    def ended(_: Future[Any]) -> None:
        global _abandoned
        with _lock:
            _abandoned -= 1
            held = _abandoned
        log.info(
            "abandoned %s ended after %.1f s more: %d scanner threads still held",
            name,
            time.monotonic() - started,
            held,
        )

    work.add_done_callback(ended)
