"""ClamAV's daemon over its INSTREAM protocol: ``clamd(address)``.

``clamd('/run/clamav/clamd.ctl')`` or, as in SAGATOR, ``clamd(['localhost', 3310])``
scans ``target.data``: the whole raw message (clamd unpacks MIME and archives
itself) or, under ``parsemail(clamd(...))``, each decoded part.

The protocol is written here with asyncio instead of taken from a library:
there is no well-kept asynchronous clamd client, and ``pyclamd``/``clamd`` on
PyPI are unmaintained and blocking.  It is small:

* commands are ``z``-prefixed and NUL-terminated; replies are NUL-terminated;
* ``zIDSESSION`` opens a session that serves many commands on one connection,
  each reply prefixed with the request's number (``"3: stream: OK"``) until
  ``zEND``;
* ``zINSTREAM`` is followed by chunks, each a 4-byte big-endian length and the
  bytes, ended by a zero length.  The answer is ``stream: OK``,
  ``stream: <virus name> FOUND`` or ``<text> ERROR``.

Sessions are pooled (``pool_size`` idle ones kept) so a busy gateway does not
open one connection per message.  A pooled session that clamd has closed
(restart, idle timeout, reload) is detected before use (the socket reads EOF)
or, in a race, when the exchange fails before any answer: the scan is then
retried once on a fresh connection, so no message fails because of it.
Sessions are plain non-blocking sockets driven by the running loop's
``sock_*`` methods, so a pool outlives the event loop that filled it.

Errors: clamd down (no socket, connection refused) -> :class:`ScannerUnavailable`;
connect or scan too slow -> :class:`ScannerTimeout`; an ``ERROR`` answer or a
broken exchange -> :class:`ScannerError`.  All of them tempfail the message.

Size: clamd refuses a stream longer than its ``StreamMaxLength`` (25M by
default) with ``INSTREAM size limit exceeded. ERROR``.  ``stream_max_length``
must match clamd's; a bigger object is not sent, and ``oversize`` says what it
becomes:

* ``"detect"`` (default): a detection named
  ``Heuristics.Limits.Exceeded.StreamMaxLength`` (ClamAV's own naming for
  limits, ``AlertExceedsMax``).  The sender gets a clear, permanent answer,
  nothing passes unscanned, and the config can route it like any finding
  (``quarantine(...)``, operators).  A tempfail would bounce a big legitimate
  mail only after days of retries; passing would be a hole.
* ``"pass"``: clean (level 0.0), with ``not scanned`` in the result's detail,
  for sites whose MTA size limit already bounds messages;
* ``"tempfail"``: :class:`ScannerError`.

If clamd itself answers the size-limit error (its limit is lower than ours),
the same policy applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any, Literal

from mailsift.errors import ConfigError, ScannerError, ScannerTimeout, ScannerUnavailable
from mailsift.message.result import Result
from mailsift.scanners.base import Scanner, Target

DEFAULT_SOCKET = "/var/run/clamav/clamd.ctl"
"""Debian's clamd socket (``LocalSocket`` in /etc/clamav/clamd.conf)."""

STREAM_MAX_LENGTH = 25 * 1024 * 1024
"""clamd's default ``StreamMaxLength`` (25M)."""

OVERSIZE_NAME = "Heuristics.Limits.Exceeded.StreamMaxLength"
"""The detection name of an object bigger than ``stream_max_length`` under ``oversize="detect"``."""

Oversize = Literal["detect", "pass", "tempfail"]
Address = str | tuple[str, int]

_CHUNK = 1024 * 1024  # INSTREAM chunk size; any size up to StreamMaxLength is accepted
_MAX_REPLY = 64 * 1024  # a clamd answer is one line; more is a broken peer
_SIZE_LIMIT_REPLY = "INSTREAM size limit exceeded"
_BACKLOG_RETRY = 0.05  # seconds between connects while clamd's listen queue is full
_LATE_REPLY_WAIT = 2.0  # seconds to collect clamd's answer after it stopped reading our stream


class _Gone(ScannerUnavailable):
    """The connection broke before clamd answered: retry on a fresh one if it was reused."""


class _Session:
    """One ``zIDSESSION`` connection: a non-blocking socket and its request counter."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.requests = 0
        self.last_used = time.monotonic()

    def closed_by_peer(self) -> bool:
        """Whether clamd closed (or wrote unasked to) this idle session."""
        poller = select.poll()  # not select(): file descriptors above 1024 are normal in a busy worker
        poller.register(self.sock, select.POLLIN)
        try:
            events = poller.poll(0)
        except OSError:
            return True
        return bool(events)  # an idle session has nothing to read but EOF (or junk, also unusable)

    def close(self, *, polite: bool = False) -> None:
        if polite:
            with contextlib.suppress(OSError):
                self.sock.send(b"zEND\0")
        self.sock.close()


class clamd(Scanner):
    """Scan with a running clamd over INSTREAM; the virus name as clamd reports it.

    ``address`` is a unix socket path or ``(host, port)`` (SAGATOR's
    ``['localhost', 3310]`` is accepted).  ``timeout`` bounds one scan,
    ``connect_timeout`` the connection; ``stream_max_length`` and ``oversize``
    are explained in the module docstring; ``pool_size`` idle sessions are kept
    for reuse, ``max_idle`` seconds at most.
    """

    name = "clamd"

    def __init__(
        self,
        address: Address | Sequence[Any] = DEFAULT_SOCKET,
        *,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        stream_max_length: int = STREAM_MAX_LENGTH,
        oversize: Oversize = "detect",
        pool_size: int = 4,
        max_idle: float = 60.0,
    ) -> None:
        self.address = _parse_address(address)
        self.timeout = _positive(timeout, "timeout")
        self.connect_timeout = _positive(connect_timeout, "connect_timeout")
        self.max_idle = _positive(max_idle, "max_idle")
        if isinstance(stream_max_length, bool) or not isinstance(stream_max_length, int) or stream_max_length < 1:
            raise ConfigError(f"clamd: stream_max_length must be a positive number of bytes, got {stream_max_length!r}")
        if oversize not in ("detect", "pass", "tempfail"):
            raise ConfigError(f"clamd: oversize must be 'detect', 'pass' or 'tempfail', got {oversize!r}")
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 0:
            raise ConfigError(f"clamd: pool_size must be a number >= 0, got {pool_size!r}")
        self.stream_max_length = stream_max_length
        self.oversize: Oversize = oversize
        self.pool_size = pool_size
        self._idle: list[_Session] = []
        self.connections_opened = 0
        """How many connections this scanner opened (shows session reuse)."""

    def describe(self) -> str:
        return f"clamd({self.where})"

    @property
    def where(self) -> str:
        if isinstance(self.address, str):
            return self.address
        return f"{self.address[0]}:{self.address[1]}"

    # ------------------------------------------------------------------ scanning

    async def scan(self, target: Target) -> Result:
        if target.size > self.stream_max_length:
            return self._oversized(target.size)
        reply = await self.instream(target.data)
        return self._interpret(reply, target.size)

    async def instream(self, data: bytes) -> str:
        """Send ``data`` over INSTREAM and return clamd's answer without the ``N:`` prefix."""
        try:
            async with asyncio.timeout(self.timeout):
                session = self._take()
                if session is not None:
                    try:
                        return await self._exchange(session, data)
                    except _Gone:
                        pass  # clamd closed the pooled session: once more on a new connection
                session = await self._connect()
                try:
                    return await self._exchange(session, data)
                except _Gone as gone:
                    raise ScannerError(f"clamd {self.where}: connection closed before the answer ({gone})") from None
        except TimeoutError:
            raise ScannerTimeout(f"clamd {self.where}: no answer within {self.timeout:g} s") from None

    async def command(self, command: str) -> str:
        """Send one simple command (``PING``, ``VERSION``) on its own connection."""
        try:
            async with asyncio.timeout(self.timeout):
                sock = await self._open()
                try:
                    loop = asyncio.get_running_loop()
                    await loop.sock_sendall(sock, b"z" + command.encode("ascii") + b"\0")
                    return await _read_reply(sock)
                finally:
                    sock.close()
        except TimeoutError:
            raise ScannerTimeout(f"clamd {self.where}: no answer within {self.timeout:g} s") from None
        except (_Gone, OSError) as error:
            raise ScannerError(f"clamd {self.where}: {command} failed: {error}") from None

    async def close_resources(self) -> None:
        """Close the pooled sessions (``zEND``); the scanner stays usable."""
        idle, self._idle = self._idle, []
        for session in idle:
            session.close(polite=True)

    def _interpret(self, reply: str, size: int) -> Result:
        if reply.endswith(" FOUND"):
            virus = reply.removeprefix("stream: ").removesuffix(" FOUND").strip()
            return Result(1.0, virus or "unknown", self.name, f"clamd {self.where}: {reply}")
        if reply == "stream: OK":
            return Result(0.0, "", self.name)
        if reply.startswith(_SIZE_LIMIT_REPLY):
            return self._oversized(size, by_clamd=True)
        raise ScannerError(f"clamd {self.where}: {reply or 'empty answer'}")

    def _oversized(self, size: int, *, by_clamd: bool = False) -> Result:
        limit = "clamd's StreamMaxLength" if by_clamd else f"stream_max_length {self.stream_max_length}"
        why = f"{size} bytes exceed {limit}"
        if self.oversize == "tempfail":
            raise ScannerError(f"clamd {self.where}: not scanned: {why}")
        if self.oversize == "pass":
            return Result(0.0, "", self.name, f"not scanned: {why}")
        return Result(1.0, OVERSIZE_NAME, self.name, why)

    # ------------------------------------------------------------------ sessions

    def _take(self) -> _Session | None:
        """An idle session still open on clamd's side, or None."""
        now = time.monotonic()
        while self._idle:
            session = self._idle.pop()
            if now - session.last_used < self.max_idle and not session.closed_by_peer():
                return session
            session.close()
        return None

    def _give_back(self, session: _Session) -> None:
        session.last_used = time.monotonic()
        if len(self._idle) < self.pool_size:
            self._idle.append(session)
        else:
            session.close(polite=True)

    async def _connect(self) -> _Session:
        sock = await self._open()
        try:
            await asyncio.get_running_loop().sock_sendall(sock, b"zIDSESSION\0")
        except OSError as error:
            sock.close()
            raise ScannerUnavailable(f"clamd {self.where}: session refused: {error}") from None
        return _Session(sock)

    async def _open(self) -> socket.socket:
        """A connected non-blocking socket to clamd (unix or TCP)."""
        loop = asyncio.get_running_loop()
        candidates: list[tuple[socket.AddressFamily, Any]]
        if isinstance(self.address, str):
            candidates = [(socket.AF_UNIX, self.address)]
        else:
            host, port = self.address
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as error:
                raise ScannerUnavailable(f"clamd {self.where}: cannot resolve {host}: {error}") from None
            candidates = [(family, address) for family, _, _, _, address in infos]
        failure: OSError | None = None
        for family, address in candidates:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    if family == socket.AF_UNIX:
                        await _connect_unix(sock, address)
                    else:
                        await loop.sock_connect(sock, address)
            except TimeoutError:
                sock.close()
                raise ScannerTimeout(
                    f"clamd {self.where}: connect timed out after {self.connect_timeout:g} s"
                ) from None
            except OSError as error:
                sock.close()
                failure = error
                continue
            except BaseException:
                sock.close()
                raise
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connections_opened += 1
            return sock
        reason = failure.strerror or str(failure) if failure else "no address"
        raise ScannerUnavailable(f"clamd {self.where} is not reachable: {reason}")

    async def _exchange(self, session: _Session, data: bytes) -> str:
        """One INSTREAM request on ``session``; the session goes back to the pool only if it is clean."""
        loop = asyncio.get_running_loop()
        session.requests += 1
        request = session.requests
        ok = False
        try:
            try:
                await _send_instream(loop, session.sock, data)
            except OSError as error:
                # clamd may have answered (size limit) and closed before reading everything.
                try:
                    async with asyncio.timeout(_LATE_REPLY_WAIT):
                        reply = await _read_reply(session.sock)
                except (TimeoutError, _Gone, ScannerError):
                    raise _Gone(error.strerror or str(error)) from None
            else:
                reply = await _read_reply(session.sock)
            number, _, text = reply.partition(": ")
            if number != str(request):
                raise ScannerError(f"clamd {self.where}: answer {reply!r} to request {request}")
            ok = not text.endswith("ERROR")  # clamd ends the session after an error
            return text
        finally:
            if ok:
                self._give_back(session)
            else:
                session.close()


async def _connect_unix(sock: socket.socket, path: str) -> None:
    """Connect a non-blocking unix socket.

    Linux answers EAGAIN when the listener's backlog is full (clamd busy, its
    ``MaxConnectionQueueLength`` reached); that is no connection in progress, as
    ``loop.sock_connect`` would assume, so try again until the caller's timeout.
    """
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            await asyncio.sleep(_BACKLOG_RETRY)


async def _send_instream(loop: asyncio.AbstractEventLoop, sock: socket.socket, data: bytes) -> None:
    if len(data) <= _CHUNK:  # the common case in one write
        await loop.sock_sendall(sock, b"zINSTREAM\0" + struct.pack("!L", len(data)) + data + b"\0\0\0\0")
        return
    view = memoryview(data)
    await loop.sock_sendall(sock, b"zINSTREAM\0")
    for start in range(0, len(view), _CHUNK):
        chunk = view[start : start + _CHUNK]
        await loop.sock_sendall(sock, struct.pack("!L", len(chunk)))
        await loop.sock_sendall(sock, chunk)
    await loop.sock_sendall(sock, b"\0\0\0\0")


async def _read_reply(sock: socket.socket) -> str:
    """Read one NUL-terminated answer; :class:`_Gone` if the connection ends before any byte."""
    loop = asyncio.get_running_loop()
    buffer = b""
    while not buffer.endswith(b"\0"):
        try:
            chunk = await loop.sock_recv(sock, 4096)
        except OSError as error:
            if not buffer:
                raise _Gone(error.strerror or str(error)) from None
            chunk = b""
        if not chunk:
            if not buffer:
                raise _Gone("end of file")
            raise ScannerError(f"clamd: truncated answer {buffer[:200]!r}")
        buffer += chunk
        if len(buffer) > _MAX_REPLY:
            raise ScannerError(f"clamd: answer longer than {_MAX_REPLY} bytes")
    return buffer.rstrip(b"\0").decode("utf-8", "replace").strip()


def _parse_address(address: Any) -> Address:
    if isinstance(address, str | os.PathLike):
        path = os.fspath(address)
        if not path:
            raise ConfigError("clamd: the socket path is empty")
        return str(path)
    if isinstance(address, list | tuple) and len(address) == 2:
        host, port = address
        valid_port = isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536
        if isinstance(host, str) and host and valid_port:
            return (host, port)
    raise ConfigError(f"clamd: address must be a unix socket path or (host, port), got {address!r}")


def _positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"clamd: {what} must be a positive number of seconds, got {value!r}")
    return float(value)
