"""What every engine shares, so that each engine module keeps only its protocol.

The layout is rspamd's ``lua_scanners/``: one module per engine
(:mod:`.clamav`, :mod:`.spamassassin`, :mod:`.rspamd`, :mod:`.command`) over
this one, which holds what each of them used to redo:

* **addresses** -- :func:`parse_address` reads SAGATOR's forms, a unix socket
  path (``str`` or path-like) or ``(host, port)`` (a list ``['localhost',
  3310]`` too), and :func:`where` writes one back for messages;
* **connecting** -- :func:`connect` opens a non-blocking socket to such an
  address (unix or TCP, every address of a host name in turn, a full listen
  queue retried): a missing socket, a refused connection or a host that does
  not resolve is :class:`~mailsift.errors.ScannerUnavailable`, a connect slower
  than ``connect_timeout`` :class:`~mailsift.errors.ScannerTimeout`;
* **deadlines** -- :func:`deadline` turns asyncio's ``TimeoutError`` into
  :class:`~mailsift.errors.ScannerTimeout` with the engine's own words;
* **size limits** -- :class:`SizeLimit` says whether an object is over an
  engine's limit, and :func:`oversized` what it becomes under the ``oversize``
  policy (``"detect"``, ``"pass"`` or ``"tempfail"``); the spam engines' "not
  checked" is :func:`not_checked`;
* **clients per event loop** -- :class:`PerLoop` keeps one pooled client (an
  HTTP client) for the running loop and makes a new one for another loop;
* **the spam engines' result** -- :class:`SpamResult` and :func:`spam_level`
  (``score / required``).

Every failure of an engine tempfails the message (the error's reply is a
``451``); none passes a message unchecked by accident.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from mailsift.errors import ConfigError, ScannerError, ScannerTimeout, ScannerUnavailable
from mailsift.message.result import Result
from mailsift.validators import choice, is_port, positive_int

Address = str | tuple[str, int]
"""A unix socket path or ``(host, port)``."""

Oversize = Literal["detect", "pass", "tempfail"]
OVERSIZE_POLICIES: tuple[Oversize, ...] = ("detect", "pass", "tempfail")

_BACKLOG_RETRY = 0.05  # seconds between connects while a unix listener's queue is full

# --------------------------------------------------------------------------- addresses


def parse_address(address: Any, engine: str) -> Address:
    """A unix socket path or ``(host, port)`` from SAGATOR's forms; ConfigError otherwise."""
    if isinstance(address, str | os.PathLike):
        path = os.fspath(address)
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{engine}: the socket path is empty")
        if "\0" in path:
            raise ConfigError(f"{engine}: bad unix socket path {path!r}")
        return path
    if isinstance(address, list | tuple) and len(address) == 2:
        host, port = address
        if isinstance(host, str) and host and is_port(port):
            return (host, port)
    raise ConfigError(f"{engine}: address must be a unix socket path or (host, port), got {address!r}")


def where(address: Address) -> str:
    """``/run/clamd.ctl`` or ``host:port``, for messages."""
    if isinstance(address, str):
        return address
    return f"{address[0]}:{address[1]}"


# --------------------------------------------------------------------------- failures


def unavailable(engine: str, target: str, error: BaseException | str, *, how: str = "") -> ScannerUnavailable:
    """The error for an engine that cannot be reached (down, no socket, refused, no such host).

    ``how`` replaces the default ``cannot connect to <target>, not reachable``
    (``cannot run <program>`` for a command).
    """
    if isinstance(error, OSError) and error.errno:
        reason = os.strerror(error.errno)  # asyncio's "Connect call failed (...)" hides the cause
    elif isinstance(error, OSError):
        reason = error.strerror or str(error)
    else:
        reason = str(error) or type(error).__name__
    return ScannerUnavailable(f"{engine}: {how or f'cannot connect to {target}, not reachable'}: {reason}")


def no_answer(engine: str, target: str, seconds: float) -> ScannerTimeout:
    """The error for an engine that did not answer within its timeout."""
    return ScannerTimeout(f"{engine} {target}: no answer within {seconds:g} s")


@contextlib.asynccontextmanager
async def deadline(seconds: float, error: Callable[[], ScannerTimeout]) -> AsyncIterator[None]:
    """Run the block within ``seconds``; past it, the block is cancelled and ``error()`` raised."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise error() from None


# --------------------------------------------------------------------------- connecting


async def connect(address: Address, engine: str, *, connect_timeout: float | None = None) -> socket.socket:
    """A connected non-blocking socket to ``address`` (unix or TCP, every address of a name in turn).

    Not reachable -> :class:`ScannerUnavailable`; longer than ``connect_timeout``
    -> :class:`ScannerTimeout` (without it, the caller's deadline bounds the connect).
    """
    loop = asyncio.get_running_loop()
    target = where(address)
    candidates: list[tuple[socket.AddressFamily, Any]]
    if isinstance(address, str):
        candidates = [(socket.AF_UNIX, address)]
    else:
        host, port = address
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as error:
            raise unavailable(engine, target, f"cannot resolve {host}: {error}") from None
        candidates = [(family, sockaddr) for family, _, _, _, sockaddr in infos]
    failure: OSError | None = None
    for family, sockaddr in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(connect_timeout):
                if family == socket.AF_UNIX:
                    await _connect_unix(sock, sockaddr)
                else:
                    await loop.sock_connect(sock, sockaddr)
        except TimeoutError:
            sock.close()
            raise ScannerTimeout(f"{engine} {target}: connect timed out after {connect_timeout:g} s") from None
        except OSError as error:
            sock.close()
            failure = error
            continue
        except BaseException:
            sock.close()
            raise
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise unavailable(engine, target, failure if failure is not None else "no address")


async def _connect_unix(sock: socket.socket, path: str) -> None:
    """Connect a non-blocking unix socket.

    Linux answers EAGAIN when the listener's backlog is full (the daemon busy,
    clamd's ``MaxConnectionQueueLength`` reached); that is no connection in
    progress, as ``loop.sock_connect`` would assume, so try again until the
    caller's timeout.
    """
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            await asyncio.sleep(_BACKLOG_RETRY)


# --------------------------------------------------------------------------- size limits


def oversize_policy(value: Any, engine: str) -> Oversize:
    """Check an ``oversize=`` option."""
    return choice(value, f"{engine}: oversize", OVERSIZE_POLICIES)  # type: ignore[return-value]  # one of them


@dataclass(frozen=True, slots=True)
class SizeLimit:
    """An engine's size limit: the option's name and its value in bytes (``None``: no limit)."""

    option: str
    limit: int | None

    @classmethod
    def checked(cls, option: str, limit: Any, engine: str, *, optional: bool = False) -> SizeLimit:
        if limit is None and optional:
            return cls(option, None)
        return cls(option, positive_int(limit, f"{engine}: {option}", unit="number of bytes"))

    def exceeded(self, size: int) -> bool:
        return self.limit is not None and size > self.limit

    def why(self, size: int) -> str:
        return f"{size} bytes exceed {self.option} {self.limit}"


def oversized(policy: Oversize, *, scanner: str, engine_at: str, why: str, name: str, level: float = 1.0) -> Result:
    """What an object over an engine's size limit becomes (it is never sent).

    ``"detect"``: a finding named ``name``; ``"pass"``: clean with ``not
    scanned`` in the detail; ``"tempfail"``: :class:`ScannerError`.
    """
    if policy == "tempfail":
        raise ScannerError(f"{engine_at}: not scanned: {why}")
    if policy == "pass":
        return Result(0.0, "", scanner, f"not scanned: {why}")
    return Result(level, name, scanner, why)


# --------------------------------------------------------------------------- clients per event loop

T = TypeVar("T")


class PerLoop(Generic[T]):
    """One client per running event loop, kept for connection reuse.

    A client (``httpx.AsyncClient``) belongs to one loop; a worker has one loop
    for its life, but tests and reloads may bring another, which gets a new
    client from ``factory``.  ``closed(client)`` says whether a kept one can no
    longer be used.
    """

    def __init__(self, factory: Callable[[], T], closed: Callable[[T], bool]) -> None:
        self._factory = factory
        self._closed = closed
        self._client: T | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop or self._closed(self._client):
            self._client = self._factory()
            self._loop = loop
        return self._client

    async def close(self, aclose: Callable[[T], Awaitable[None]]) -> None:
        """Close the kept client if it belongs to the running loop; forget it in any case."""
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await aclose(client)


# --------------------------------------------------------------------------- the spam engines' result


@dataclass(frozen=True, slots=True)
class SpamResult(Result):
    """A spam engine's verdict, with what a header action may want to show.

    ``report`` is SpamAssassin's text report (``REPORT`` verb), empty for rspamd
    or with ``report=False``; ``symbols`` are the rule names hit; ``action`` is
    rspamd's action (``reject``, ``add header``, ...), empty for SpamAssassin.
    Operators build plain :class:`Result` objects, so these fields are only seen
    on the scanner's own result (and on action wrappers directly around it).
    A message not checked (over ``max_size``) has ``required == 0``.
    """

    score: float = 0.0
    required: float = 0.0
    symbols: tuple[str, ...] = ()
    report: str = ""
    action: str = ""


def spam_level(score: float, required: float, spam: bool) -> float:
    """``score / required``; a zero or negative threshold is read as "spam or not"."""
    if required > 0:
        return score / required
    return 1.0 if spam else 0.0


def not_checked(scanner: str, size: int, limit: SizeLimit) -> SpamResult:
    """A spam engine's answer for a message over its ``max_size``: not sent, level 0 (as ``spamc`` does)."""
    return SpamResult(0.0, "", scanner, f"not checked: over {limit.option} ({size} > {limit.limit} bytes)")
