"""Several daemons of one engine behind one scanner: ``clamd(['/run/a.ctl', ('10.0.0.2', 3310)])``.

``clamd``, ``spamassassind`` and ``rspamd`` accept a list of backends; a
single address is a pool of one and behaves as before.  The pool lives on the
scanner object, built once from the config (no module state), and decides
which backend each request goes to:

* **balancing** -- the admitted backend with the fewest outstanding requests;
  ties go round-robin, so an idle pool still spreads its traffic;
* **ejection** -- a request that fails on a backend (cannot connect, connection
  lost, a protocol error: any :class:`ScannerError` but a
  :class:`ContentError` or a :class:`ScannerTimeout`) takes that backend out
  of traffic for a pause that doubles at each ejection in a row
  (:data:`FIRST_PAUSE`, 2, 4 ... up to :data:`MAX_PAUSE` seconds), and the
  request is retried once on another backend.  An error there is the
  request's error (the existing tempfail, ``451``): no message is ever passed
  unchecked by the pool;
* **timeouts** -- no answer in time may be the message (a slow one) rather
  than the daemon, so one timeout does not take the backend out: it is
  retried on another backend as above, and the backend is health-checked at
  once in the background; it is taken out only if that check fails (a daemon
  that hangs on everything), or after :data:`TIMEOUTS_TO_EJECT` timeouts in a
  row (a daemon that still answers its check but no longer scans).  Any
  answer resets the count;
* **re-admission** -- once its pause is over, an ejected backend is checked
  (clamd ``PING``, spamd ``PING``, rspamd ``/ping``) in the background, started
  by the next request that looks at the pool; it takes traffic again only when
  the check passes (a failed check ejects it for the next, longer pause).  Its
  first successful request resets the pause;
* **nothing admitted** -- when every backend is out, a request still goes to
  the one whose pause ends first (and then to another): a pool never answers
  "unavailable" without having tried, and a pool of one is exactly the single
  daemon of before (it is never taken out).

Each backend counts its ``requests``, ``failures`` (timeouts included),
``ejections`` and ``outstanding`` requests; :meth:`Pool.samples` gives them as
metric samples (``mailsift_scanner_backend_*`` with the scanner (engine name)
and backend as labels), which :mod:`mailsift.reporting.poolstats` carries
from the worker processes to ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from mailsift.errors import ConfigError, ContentError, MailsiftError, ScannerError, ScannerTimeout

log = logging.getLogger("mailsift.scanners.pool")

FIRST_PAUSE = 1.0
"""Seconds a backend stays out after its first failure."""
MAX_PAUSE = 60.0
"""The longest pause (the pause doubles at each ejection in a row up to this)."""
CHECK_TIMEOUT = 5.0
"""Seconds a health check may take."""
TIMEOUTS_TO_EJECT = 3
"""Timeouts in a row that take a backend out even though it still answers its health check."""

A = TypeVar("A")
R = TypeVar("R")


class Backend(Generic[A]):
    """One daemon of a pool, its state and its counters."""

    __slots__ = (
        "address",
        "checking",
        "ejections",
        "failures",
        "label",
        "out_until",
        "outstanding",
        "pause",
        "probing",
        "requests",
        "timeouts_in_row",
    )

    def __init__(self, address: A, label: str, pause: float) -> None:
        self.address = address
        self.label = label
        self.requests = 0
        """Requests sent (each attempt counts, a retried request twice)."""
        self.failures = 0
        """Requests that failed on this backend (and failed health checks)."""
        self.ejections = 0
        """Times this backend was taken out of traffic."""
        self.outstanding = 0
        """Requests under way now."""
        self.out_until: float | None = None
        """While out: when its pause ends (then a health check lets it back); None: admitted."""
        self.pause = pause
        """The pause of its next ejection."""
        self.checking = False
        self.probing = False
        """A health check after a timeout is under way (the backend still takes traffic)."""
        self.timeouts_in_row = 0
        """Timeouts since its last answer."""

    @property
    def state(self) -> str:
        """``up``, ``out`` or ``checking``."""
        if self.out_until is None:
            return "up"
        return "checking" if self.checking else "out"

    def __repr__(self) -> str:
        return f"<Backend {self.label} {self.state} outstanding={self.outstanding}>"


def _listed(value: Any) -> bool:
    """Whether ``value`` can be one entry of a list of backends.

    A ``(host, port)`` pair, or a socket path with a ``/`` in it: so that
    SAGATOR's ``['localhost', 3310]`` and a mistyped ``['localhost']`` stay one
    (checked, refused) address and are never read as a list of socket paths.
    """
    if isinstance(value, str | os.PathLike):
        return "/" in str(os.fspath(value))
    return isinstance(value, list | tuple) and len(value) == 2 and isinstance(value[0], str)


def backend_list(value: Any) -> list[Any]:
    """The backends of an address argument: a list of addresses, or ``[value]`` for one address.

    Each is checked by the engine afterwards (which refuses what is neither).
    """
    if isinstance(value, list | tuple) and value and all(_listed(one) for one in value):
        return list(value)
    return [value]


class Pool(Generic[A]):
    """The backends of one scanner; :meth:`run` sends a request to one of them (see the module docstring).

    ``check(address)`` is the health check (raises on failure); ``clock`` is
    for tests.
    """

    def __init__(
        self,
        engine: str,
        addresses: Sequence[A],
        *,
        label: Callable[[A], str],
        check: Callable[[A], Awaitable[None]],
        first_pause: float = FIRST_PAUSE,
        max_pause: float = MAX_PAUSE,
        check_timeout: float = CHECK_TIMEOUT,
        timeouts_to_eject: int = TIMEOUTS_TO_EJECT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not addresses:
            raise ConfigError(f"{engine}: no backend")
        self.engine = engine
        self.first_pause = first_pause
        self.max_pause = max_pause
        self.check_timeout = check_timeout
        self.timeouts_to_eject = timeouts_to_eject
        self.backends = [Backend(address, label(address), first_pause) for address in addresses]
        labels = [backend.label for backend in self.backends]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{engine}: a backend is listed twice: {', '.join(labels)}")
        self._check = check
        self._clock = clock
        self._next = 0
        self._checks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self.backends)

    @property
    def first(self) -> A:
        return self.backends[0].address

    # ------------------------------------------------------------------ requests

    async def run(self, request: Callable[[A], Awaitable[R]]) -> R:
        """``request(address)`` on the best backend; once more on another if it fails there."""
        self._start_checks()
        first = self.pick()
        assert first is not None  # a pool has a backend
        try:
            return await self._attempt(first, request)
        except ScannerError as error:
            if isinstance(error, ContentError):
                raise
            other = self.pick(exclude=first)
            if other is None:
                raise
            log.info("%s: %s failed (%s); retrying on %s", self.engine, first.label, error, other.label)
            return await self._attempt(other, request)

    def pick(self, exclude: Backend[A] | None = None) -> Backend[A] | None:
        """The admitted backend with the fewest outstanding requests (ties round-robin).

        With none admitted, the one whose pause ends first; None if ``exclude`` was the only one.
        """
        count = len(self.backends)
        candidates = [
            (index, backend)
            for index, backend in ((i % count, self.backends[i % count]) for i in range(self._next, self._next + count))
            if backend is not exclude
        ]
        if not candidates:
            return None
        admitted = [(index, backend) for index, backend in candidates if backend.out_until is None]
        if admitted:
            index, chosen = min(admitted, key=lambda item: item[1].outstanding)  # first in round-robin order
        else:
            index, chosen = min(candidates, key=lambda item: item[1].out_until or 0.0)
        self._next = index + 1
        return chosen

    async def _attempt(self, backend: Backend[A], request: Callable[[A], Awaitable[R]]) -> R:
        backend.requests += 1
        backend.outstanding += 1
        try:
            result = await request(backend.address)
        except ScannerError as error:
            if isinstance(error, ScannerTimeout):
                backend.failures += 1
                backend.timeouts_in_row += 1
                if backend.timeouts_in_row >= self.timeouts_to_eject:
                    self._eject(backend, f"{backend.timeouts_in_row} timeouts in a row: {error}")
                else:
                    self._probe(backend)
            elif not isinstance(error, ContentError):
                backend.failures += 1
                self._eject(backend, str(error))
            raise
        finally:
            backend.outstanding -= 1
        backend.timeouts_in_row = 0
        if backend.out_until is not None and not backend.checking:
            log.info("%s: %s answered again; back in", self.engine, backend.label)
            backend.out_until = None
        if backend.out_until is None:
            backend.pause = self.first_pause
        return result

    # ------------------------------------------------------------------ ejection and re-admission

    def _eject(self, backend: Backend[A], why: str, *, again: bool = False) -> None:
        """Take ``backend`` out for its pause (a pool of one is never taken out)."""
        if len(self.backends) == 1 or (backend.out_until is not None and not again):
            return
        if backend.out_until is None:
            backend.ejections += 1
        backend.out_until = self._clock() + backend.pause
        log.warning("%s: %s out for %g s: %s", self.engine, backend.label, backend.pause, why)
        backend.pause = min(backend.pause * 2, self.max_pause)

    def _probe(self, backend: Backend[A]) -> None:
        """Health-check an admitted backend in the background (after a timeout); out if the check fails."""
        if len(self.backends) == 1 or backend.probing or backend.out_until is not None:
            return
        backend.probing = True
        task = asyncio.get_running_loop().create_task(self._run_probe(backend))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _run_probe(self, backend: Backend[A]) -> None:
        try:
            async with asyncio.timeout(self.check_timeout):
                await self._check(backend.address)
        except (MailsiftError, OSError, TimeoutError) as error:
            backend.failures += 1
            self._eject(backend, f"no answer in time, and its health check failed: {error or type(error).__name__}")
        else:
            log.info("%s: %s timed out but passed its health check; kept in", self.engine, backend.label)
        finally:
            backend.probing = False

    def _start_checks(self) -> None:
        """Start the health check of each backend whose pause is over."""
        now = self._clock()
        for backend in self.backends:
            if backend.out_until is not None and not backend.checking and backend.out_until <= now:
                backend.checking = True
                task = asyncio.get_running_loop().create_task(self._health_check(backend))
                self._checks.add(task)
                task.add_done_callback(self._checks.discard)

    async def _health_check(self, backend: Backend[A]) -> None:
        try:
            async with asyncio.timeout(self.check_timeout):
                await self._check(backend.address)
        except (MailsiftError, OSError, TimeoutError) as error:
            backend.failures += 1
            self._eject(backend, f"health check failed: {error or type(error).__name__}", again=True)
        else:
            log.info("%s: %s passed its health check; back in", self.engine, backend.label)
            backend.out_until = None
        finally:
            backend.checking = False

    async def checks_done(self) -> None:
        """Wait for the health checks under way (tests, shutdown)."""
        while self._checks:
            await asyncio.gather(*self._checks, return_exceptions=True)

    # ------------------------------------------------------------------ counters

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """``(metric name, labels, value)`` per backend and counter, for ``/metrics``."""
        rows: list[tuple[str, dict[str, str], float]] = []
        for backend in self.backends:
            labels = {"scanner": self.engine, "backend": backend.label}
            rows += [
                ("mailsift_scanner_backend_requests_total", labels, backend.requests),
                ("mailsift_scanner_backend_failures_total", labels, backend.failures),
                ("mailsift_scanner_backend_ejections_total", labels, backend.ejections),
                ("mailsift_scanner_backend_outstanding", labels, backend.outstanding),
                ("mailsift_scanner_backend_up", labels, 1.0 if backend.out_until is None else 0.0),
            ]
        return rows
