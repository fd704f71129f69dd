"""The running side every socket front end shares: one worker's server skeleton.

A front end's running server (:class:`~mailsift.services.smtpd.SMTPServer`,
:class:`~mailsift.services.milter.MilterServer`,
:class:`~mailsift.services.postfix_policy.PolicyServer`,
:class:`~mailsift.services.sgfilterd.SgfilterServer`) subclasses
:class:`Server` and keeps only its protocol.  The skeleton does:

* **listening** on the socket the supervisor bound (TCP or unix,
  :meth:`Server.listen`);
* **the connection limits**, applied one way: a connection arriving while
  ``max_connections`` are open, while ``max_connections_per_address`` are open
  from its client's address (TCP clients outside ``exempt_hosts``), or while
  the worker drains, gets the protocol's refusal (:meth:`Server.refusal`:
  SMTP/LMTP and sgfilterd answer ``421``; the milter and the policy service
  close, which the MTA treats as a temporary failure).  One address holding
  idle connections can then never lock the other clients out;
* **transactions**: a connection is *busy* from the start of a transaction
  (SMTP's MAIL, the milter's SMFIC_MAIL, a policy request, an sgfilterd
  request) to its answer (:meth:`Server.begin`, :meth:`Server.end`);
* **draining** (SIGHUP, SIGTERM; :meth:`Server.drain`): the listener closes;
  idle connections get the protocol's shutdown answer (SMTP ``421``) and are
  closed at once; a busy connection is never closed under its transaction — it
  is closed right after the transaction's answer went out; a transaction a
  client tries to begin on a draining worker is refused with the protocol's
  temporary answer (:meth:`Server.begin` returns False; SMTP ``421``).  Every
  decision happens in the event loop between two awaits, so there is no window
  in which a transaction that has begun is cut (the old 50 ms timer closed
  connections whose next transaction had just started: the next hop had the
  message, the MTA got no answer and sent it again).  Only the drain's own
  deadline closes busy connections;
* **session tasks** for front ends that serve a connection with one task
  (icap, sgfilterd; :meth:`Server.run_session`, :class:`SessionConnection`):
  the task is tracked, a bug in it is logged and answered with the protocol's
  temporary failure (:meth:`Server.session_failed`) instead of leaving the
  client hanging, the connection is released and closed after it, and tasks
  still running after the drain are cancelled;
* **queue ids** unique across workers, restarts and nodes (:class:`QueueIds`).

Idle timeouts are per command (the time a connection may stay silent) and
belong to the protocol loop; the skeleton gives the answer to send where the
protocol has one (:data:`mailsift.replies.IDLE_TIMEOUT` for SMTP/LMTP).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from mailsift.settings import Settings
from mailsift.settings import node_name as node_name  # defined in settings since issue 15 (every record names the node)

log = logging.getLogger("mailsift.server")

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def base36(number: int) -> str:
    digits = ""
    while True:
        number, digit = divmod(number, 36)
        digits = _DIGITS[digit] + digits
        if not number:
            return digits


class QueueIds:
    """Queue ids for the log when the MTA gave none: ``<node>-<pid>-<tag><counter>``.

    ``node`` tells nodes of a cluster apart, the worker's ``pid`` the workers of
    one node, and ``tag`` (three random base-36 characters, drawn when the
    server starts) two lives of the same pid (a worker restarted after the pid
    wrapped) or two servers of one worker; the counter is base 36.  E.g.
    ``mx1-8990-k2x1``: short, and one word for grep.
    """

    def __init__(self, node: str = "", pid: int | None = None) -> None:
        self.node = node_name(node)
        self.pid = os.getpid() if pid is None else pid
        tag = base36(secrets.randbelow(36**3)).rjust(3, "0")
        self.prefix = f"{self.node}-{self.pid}-{tag}"
        self._counter = 0

    def next(self) -> str:
        self._counter += 1
        return f"{self.prefix}{base36(self._counter)}"


def peer_address(transport: Any) -> str:
    """The client's IP address of a transport or stream writer ('' for a unix socket's client).

    An IPv4 address mapped into IPv6 (``::ffff:192.0.2.7``) is the IPv4 address.
    """
    peer = transport.get_extra_info("peername")
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return ""
    address = peer[0]
    if address.startswith("::ffff:") and "." in address:
        return address[len("::ffff:") :]
    return address


class Connection(Protocol):
    """What the skeleton needs of a front end's connection."""

    busy: bool

    def shut_down(self) -> None:
        """Send the protocol's shutdown answer, if it has one, and close (never called while busy)."""

    def abort(self) -> None:
        """Close now, whatever it is doing (the drain's deadline passed)."""


class SessionConnection:
    """A connection served by one task (:meth:`Server.run_session`): ``abort`` closes it and
    cancels that task (the drain's deadline passed; the client gets no answer and retries)."""

    busy = False
    task: asyncio.Task[None] | None = None

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        self.close()
        if self.task is not None:
            self.task.cancel()


class Server:
    """One worker's running front end: the listener, its connections, draining and queue ids."""

    def __init__(self, service: Any, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.connections: set[Any] = set()
        self.per_address: dict[str, int] = {}
        """Open connections per counted client address (see ``Service.limits_address``)."""
        self._address_of: dict[Any, str] = {}
        self._warned: set[str] = set()
        self.draining = False
        self.queue_ids = QueueIds(settings.node)
        self._listener: asyncio.base_events.Server | None = None
        self._changed: asyncio.Event | None = None
        self.sessions: set[asyncio.Task[None]] = set()
        """The running tasks of :meth:`run_session` (cancelled after the drain)."""

    # -- listening

    async def listen(self, sock: socket.socket, protocol_factory: Callable[[], asyncio.BaseProtocol]) -> None:
        """Serve ``protocol_factory``'s protocols on ``sock`` (TCP or unix)."""
        loop = asyncio.get_running_loop()
        if sock.family == socket.AF_UNIX:
            self._listener = await loop.create_unix_server(protocol_factory, sock=sock, backlog=1024)
        else:
            self._listener = await loop.create_server(protocol_factory, sock=sock, backlog=1024)

    async def listen_streams(
        self,
        sock: socket.socket,
        callback: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
        limit: int,
    ) -> None:
        """:meth:`listen` for front ends written on asyncio streams."""
        if sock.family == socket.AF_UNIX:
            self._listener = await asyncio.start_unix_server(callback, sock=sock, limit=limit)
        else:
            self._listener = await asyncio.start_server(callback, sock=sock, limit=limit)

    # -- connections

    def refusal(self, address: str = "") -> str:
        """Why a new connection from ``address`` is refused (``"draining"``, ``"limit"``,
        ``"address"``: its address's limit), or ``""`` to serve it.

        Without an address (a protocol factory, before the peer is known) only
        the drain and ``max_connections`` are checked.
        """
        if self.draining:
            return "draining"
        if len(self.connections) >= self.service.max_connections:
            return "limit"
        if address and self.per_address.get(address, 0) >= self.service.max_connections_per_address:
            if address not in self._warned:  # once while the address stays at its limit
                self._warned.add(address)
                log.warning(
                    "%s: %s holds %d connections (max_connections_per_address): refusing more from it",
                    self.service.kind,
                    address,
                    self.per_address[address],
                )
            return "address"
        return ""

    def add(self, connection: Any, address: str = "") -> None:
        """Serve ``connection`` (from ``address``, counted unless unix or in ``exempt_hosts``)."""
        connection.busy = False
        self.connections.add(connection)
        if address and self.service.limits_address(address):
            self._address_of[connection] = address
            self.per_address[address] = self.per_address.get(address, 0) + 1

    def discard(self, connection: Any) -> None:
        self.connections.discard(connection)
        address = self._address_of.pop(connection, None)
        if address is not None:
            left = self.per_address[address] - 1
            if left:
                self.per_address[address] = left
            else:
                del self.per_address[address]
            if left < self.service.max_connections_per_address:
                self._warned.discard(address)
        self._wake()

    def begin(self, connection: Any) -> bool:
        """A transaction starts on ``connection``; False (refuse it) while draining."""
        if self.draining:
            return False
        connection.busy = True
        return True

    def end(self, connection: Any) -> None:
        """The transaction's answer went out: while draining, the connection is shut down now,
        or after its protocol's short ``linger`` (SMTP: time for the client's QUIT)."""
        connection.busy = False
        if self.draining:
            linger = getattr(connection, "linger", 0.0)
            if linger:
                asyncio.get_running_loop().call_later(linger, connection.shut_down)
            else:
                connection.shut_down()
            self._wake()

    def next_queue_id(self) -> str:
        return self.queue_ids.next()

    # -- session tasks

    def spawn_session(self, connection: SessionConnection, session: Callable[[], Awaitable[None]]) -> None:
        """:meth:`run_session` in a task of its own (for a protocol's ``connection_made``)."""
        connection.task = asyncio.get_running_loop().create_task(self.run_session(connection, session))

    async def run_session(self, connection: SessionConnection, session: Callable[[], Awaitable[None]]) -> None:
        """Serve ``connection`` with ``session()`` in the current task: tracked, a bug answered with
        :meth:`session_failed`; then :meth:`session_ended`."""
        task = asyncio.current_task()
        assert task is not None
        connection.task = task
        self.sessions.add(task)
        try:
            await session()
        except Exception:  # a bug must not leave the client hanging
            log.exception("%s: unexpected error in a session", self.service.kind)
            await self.session_failed(connection)
        finally:
            self.sessions.discard(task)
            self.session_ended(connection)

    async def session_failed(self, connection: Any) -> None:
        """A session ended by a bug: the protocol's temporary failure, if it has one (then closed)."""

    def session_ended(self, connection: SessionConnection) -> None:
        """After a session: the connection is released and closed (a protocol whose
        ``connection_lost`` releases it, once the answer is flushed, only closes it)."""
        self.discard(connection)
        connection.close()

    # -- draining

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def drain(self, timeout: float) -> None:
        """Stop accepting; shut idle connections; wait for busy ones (up to ``timeout``); then :meth:`closed`."""
        self.draining = True
        if self._listener is not None:
            self._listener.close()
        for connection in list(self.connections):
            if not connection.busy:
                connection.shut_down()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._changed = asyncio.Event()
        while self.connections and loop.time() < deadline:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                break
        for connection in list(self.connections):
            log.warning("%s: drain deadline passed: closing a connection in a transaction", self.service.kind)
            connection.abort()
        for task in list(self.sessions):  # e.g. still scanning for a client that has gone: no answer
            task.cancel()
        await self.closed()

    async def closed(self) -> None:
        """After the drain: release what the server holds (scanners, next hop, database)."""
