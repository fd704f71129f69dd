"""ClamAV's daemon over its INSTREAM protocol: ``clamd(address)``.

``clamd('/run/clamav/clamd.ctl')`` or, as in SAGATOR, ``clamd(['localhost', 3310])``
(or several daemons: ``clamd(['/run/clamav/clamd.ctl', ('10.0.0.2', 3310)])``, a
pool balanced by :mod:`.pool`, checked with ``PING``) scans ``target.data``: the
whole raw message (clamd unpacks MIME and archives itself) or, under ``parsemail(clamd(...))``, each decoded part.

The protocol is written here with asyncio instead of taken from a library:
there is no well-kept asynchronous clamd client, and ``pyclamd``/``clamd`` on
PyPI are unmaintained and blocking.  It is small:

* commands are ``z``-prefixed and NUL-terminated; replies are NUL-terminated;
* ``zIDSESSION`` opens a session that serves many commands on one connection,
  each reply prefixed with the request's number (``"3: stream: OK"``) until
  ``zEND``;
* ``zINSTREAM`` is followed by chunks, each a 4-byte big-endian length and the
  bytes, ended by a zero length (so an empty object is the command and the
  terminator alone: no data chunk is ever empty).  The answer is ``stream: OK``,
  ``stream: <virus name> FOUND`` or ``<text> ERROR``.

Sessions are pooled (``pool_size`` idle ones kept) so a busy gateway does not
open one connection per message.  A pooled session that clamd has closed
(restart, idle timeout, reload) is detected before use (the socket reads EOF)
or, in a race, when the exchange fails before any answer: the scan is then
retried once on a fresh connection, so no message fails because of it.
Sessions are plain non-blocking sockets driven by the running loop's
``sock_*`` methods, so a pool outlives the event loop that filled it.

Errors (mapped by :mod:`.common`, as for every engine): clamd down (no socket,
connection refused) or the connection closed before the answer ended (clamd
died or restarted mid-scan) -> :class:`ScannerUnavailable`; connect or scan too
slow -> :class:`ScannerTimeout`; an ``ERROR`` answer or an answer out of step
-> :class:`ScannerError`.  All of them tempfail the message; none is a verdict.

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
import select
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any

from mailsift.errors import ScannerError, ScannerTimeout, ScannerUnavailable
from mailsift.message.result import Result
from mailsift.scanners.base import Scanner, Target
from mailsift.scanners.engines.common import (
    Address,
    Oversize,
    SizeLimit,
    connect,
    deadline,
    no_answer,
    oversize_policy,
    oversized,
    parse_address,
    where,
)
from mailsift.scanners.engines.pool import Pool, backend_list
from mailsift.validators import integer, positive

DEFAULT_SOCKET = "/var/run/clamav/clamd.ctl"
"""Debian's clamd socket (``LocalSocket`` in /etc/clamav/clamd.conf)."""

STREAM_MAX_LENGTH = 25 * 1024 * 1024
"""clamd's default ``StreamMaxLength`` (25M)."""

OVERSIZE_NAME = "Heuristics.Limits.Exceeded.StreamMaxLength"
"""The detection name of an object bigger than ``stream_max_length`` under ``oversize="detect"``."""

_CHUNK = 1024 * 1024  # INSTREAM chunk size; any size up to StreamMaxLength is accepted
_MAX_REPLY = 64 * 1024  # a clamd answer is one line; more is a broken peer
_SIZE_LIMIT_REPLY = "INSTREAM size limit exceeded"
_END = b"\0\0\0\0"  # the zero-length chunk that ends a stream
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
    ``['localhost', 3310]`` is accepted), or a list of them: a pool of
    daemons (:mod:`.pool`).  ``timeout`` bounds one scan,
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
        self.addresses = [parse_address(one, "clamd") for one in backend_list(address)]
        self.address = self.addresses[0]
        self.pool: Pool[Address] = Pool("clamd", self.addresses, label=where, check=self.health_check)
        self.timeout = positive(timeout, "clamd: timeout", unit="number of seconds")
        self.connect_timeout = positive(connect_timeout, "clamd: connect_timeout", unit="number of seconds")
        self.max_idle = positive(max_idle, "clamd: max_idle", unit="number of seconds")
        self.size_limit = SizeLimit.checked("stream_max_length", stream_max_length, "clamd")
        self.stream_max_length: int = stream_max_length
        self.oversize: Oversize = oversize_policy(oversize, "clamd")
        self.pool_size = integer(pool_size, "clamd: pool_size", minimum=0, unit="a number")
        self._idle_at: dict[Address, list[_Session]] = {address: [] for address in self.addresses}
        self._idle = self._idle_at[self.address]  # the first backend's (a single clamd's) idle sessions
        self.connections_opened = 0
        """How many connections this scanner opened (shows session reuse)."""

    def describe(self) -> str:
        return f"clamd({self.where})"

    @property
    def where(self) -> str:
        return ", ".join(where(address) for address in self.addresses)

    # ------------------------------------------------------------------ scanning

    async def scan(self, target: Target) -> Result:
        if self.size_limit.exceeded(target.size):
            return self._oversized(target.size)
        data, size = target.data, target.size

        async def scan_at(address: Address) -> Result:
            return self._interpret(await self._instream_at(address, data), size, address)

        return await self.pool.run(scan_at)

    async def instream(self, data: bytes) -> str:
        """Send ``data`` over INSTREAM and return clamd's answer without the ``N:`` prefix."""
        return await self.pool.run(lambda address: self._instream_at(address, data))

    async def _instream_at(self, address: Address, data: bytes) -> str:
        async with deadline(self.timeout, lambda: self._no_answer(address)):
            session = self._take(address)
            if session is not None:
                try:
                    return await self._exchange(session, data, address)
                except _Gone:
                    pass  # clamd closed the pooled session: once more on a new connection
            session = await self._connect(address)
            try:
                return await self._exchange(session, data, address)
            except _Gone as gone:
                closed = f"clamd {where(address)}: connection closed before the answer ({gone})"
                raise ScannerUnavailable(closed) from None

    async def health_check(self, address: Address) -> None:
        """The pool's health check: ``PING`` answered ``PONG``."""
        reply = await self.command("PING", address)
        if reply != "PONG":
            raise ScannerError(f"clamd {where(address)}: PING answered {reply[:80]!r}")

    async def command(self, command: str, address: Address | None = None) -> str:
        """Send one simple command (``PING``, ``VERSION``) on its own connection (to the first backend by default)."""
        address = self.address if address is None else address
        try:
            async with deadline(self.timeout, lambda: self._no_answer(address)):
                sock = await self._open(address)
                try:
                    loop = asyncio.get_running_loop()
                    await loop.sock_sendall(sock, b"z" + command.encode("ascii") + b"\0")
                    return await _read_reply(sock)
                finally:
                    sock.close()
        except (_Gone, OSError) as error:
            raise ScannerError(f"clamd {where(address)}: {command} failed: {error}") from None

    def _no_answer(self, address: Address) -> ScannerTimeout:
        return no_answer("clamd", where(address), self.timeout)

    async def close_resources(self) -> None:
        """Close the pooled sessions (``zEND``); the scanner stays usable."""
        for idle in self._idle_at.values():
            sessions = idle[:]
            idle.clear()
            for session in sessions:
                session.close(polite=True)

    def _interpret(self, reply: str, size: int, address: Address | None = None) -> Result:
        at = where(self.address if address is None else address)
        if reply.endswith(" FOUND"):
            virus = reply.removeprefix("stream: ").removesuffix(" FOUND").strip()
            return Result(1.0, virus or "unknown", self.name, f"clamd {at}: {reply}")
        if reply == "stream: OK":
            return Result(0.0, "", self.name)
        if reply.startswith(_SIZE_LIMIT_REPLY):
            return self._oversized(size, by_clamd=True)
        raise ScannerError(f"clamd {at}: {reply or 'empty answer'}")

    def _oversized(self, size: int, *, by_clamd: bool = False) -> Result:
        why = f"{size} bytes exceed clamd's StreamMaxLength" if by_clamd else self.size_limit.why(size)
        at = where(self.address)
        return oversized(self.oversize, scanner=self.name, engine_at=f"clamd {at}", why=why, name=OVERSIZE_NAME)

    # ------------------------------------------------------------------ sessions

    def _take(self, address: Address) -> _Session | None:
        """An idle session to ``address`` still open on clamd's side, or None."""
        now = time.monotonic()
        idle = self._idle_at[address]
        while idle:
            session = idle.pop()
            if now - session.last_used < self.max_idle and not session.closed_by_peer():
                return session
            session.close()
        return None

    def _give_back(self, session: _Session, address: Address) -> None:
        session.last_used = time.monotonic()
        idle = self._idle_at[address]
        if len(idle) < self.pool_size:
            idle.append(session)
        else:
            session.close(polite=True)

    async def _connect(self, address: Address) -> _Session:
        sock = await self._open(address)
        try:
            await asyncio.get_running_loop().sock_sendall(sock, b"zIDSESSION\0")
        except OSError as error:
            sock.close()
            raise ScannerUnavailable(f"clamd {where(address)}: session refused: {error}") from None
        return _Session(sock)

    async def _open(self, address: Address) -> socket.socket:
        """A connected non-blocking socket to clamd at ``address`` (unix or TCP)."""
        sock = await connect(address, "clamd", connect_timeout=self.connect_timeout)
        self.connections_opened += 1
        return sock

    async def _exchange(self, session: _Session, data: bytes, address: Address) -> str:
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
                raise ScannerError(f"clamd {where(address)}: answer {reply!r} to request {request}")
            ok = not text.endswith("ERROR")  # clamd ends the session after an error
            return text
        finally:
            if ok:
                self._give_back(session, address)
            else:
                session.close()


def instream_request(data: bytes) -> list[bytes | memoryview]:
    """The writes of one INSTREAM request: the command, ``data`` in chunks, the terminator.

    clamd's protocol (clamdoc.pdf, ``INSTREAM``): chunks of ``<length><data>``,
    the length a 4-byte big-endian unsigned integer, "streaming is terminated
    by sending a zero-length chunk".  So no data chunk is ever empty: an empty
    object is the command and the terminator alone (a zero-length data chunk
    would end the stream, and clamd would read our terminator as the next
    command of the session: ``Only nCMDS\\n and zCMDS\\0 are accepted inside
    IDSESSION. ERROR``).  Up to one chunk goes in a single write.
    """
    if len(data) <= _CHUNK:  # the common case in one write
        length = struct.pack("!L", len(data)) if data else b""
        return [b"zINSTREAM\0" + length + data + _END]
    view = memoryview(data)
    writes: list[bytes | memoryview] = [b"zINSTREAM\0"]
    for start in range(0, len(view), _CHUNK):
        chunk = view[start : start + _CHUNK]
        writes += [struct.pack("!L", len(chunk)), chunk]
    writes.append(_END)
    return writes


async def _send_instream(loop: asyncio.AbstractEventLoop, sock: socket.socket, data: bytes) -> None:
    for write in instream_request(data):
        await loop.sock_sendall(sock, write)


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
            raise ScannerUnavailable(f"clamd: truncated answer {buffer[:200]!r}: the connection closed mid-answer")
        buffer += chunk
        if len(buffer) > _MAX_REPLY:
            raise ScannerError(f"clamd: answer longer than {_MAX_REPLY} bytes")
    return buffer.rstrip(b"\0").decode("utf-8", "replace").strip()
