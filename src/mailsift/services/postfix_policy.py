"""``smtpd_policy``: Postfix's policy delegation protocol (``check_policy_service``).

SAGATOR's ``smtpd_policy(scanners, dbc, host, port)``: Postfix asks at each
RCPT (or wherever ``check_policy_service`` is listed) with a request of
``name=value`` lines ended by an empty line, and expects ``action=...``
followed by an empty line.  One connection carries many requests.  The
protocol is written here on asyncio streams: it is a dozen lines, and no
maintained asyncio library implements it.

Each request becomes a :class:`~mailsift.scanners.greylist.PolicyTarget`,
evaluated by the policy scanners with the usual first-detection rule; the
deciding result maps to the answer:

=====================================  =============================================
clean                                  ``DUNNO`` (or ``PREPEND name: value`` when a
                                       scanner added a header, e.g. ``X-Greylist``)
``deliver(...)`` (allow list)          ``DUNNO``: later restrictions still apply
``deliver_to(address, ...)``           ``REDIRECT address`` (``copy=True``: ``BCC address``,
                                       Postfix 3.0 and later)
``greylist`` deferring                 ``DEFER_IF_PERMIT text`` (``defer=`` option:
                                       ``DEFER``, ``450``, ``450 4.7.1``, ...)
detected, ``reject(...)``              ``REJECT text`` (``reject=`` option: ``550 5.7.1``...)
``drop(...)``                          ``DISCARD text``
``quarantine(...)``                    ``HOLD text`` (Postfix keeps it in its hold queue)
a scanner or the database failed,      ``on_error`` (default ``DEFER_IF_PERMIT ...``:
or the evaluation ran out of time      fail closed; ``'DUNNO'`` fails open)
=====================================  =============================================

Never ``OK``: the check usually comes before ``reject_unauth_destination``,
and an ``OK`` there would make the server an open relay.

Listening (TCP or a unix socket), the connection limit and draining are the
server skeleton's (:mod:`mailsift.services.server`).  The protocol has no
temporary answer of its own for "busy" or "shutting down": such connections
are closed, and Postfix asks again on a new connection (another worker).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mailsift.core.pipeline import Pipeline
from mailsift.errors import ConfigError, ProtocolError, ScannerError
from mailsift.message.result import Decision, Disposition, Result, SetDisposition
from mailsift.reporting import counters
from mailsift.scanners.base import first_detection
from mailsift.scanners.greylist import PolicyTarget
from mailsift.services.base import DEFAULT_SOCKET_MODE, Service, check_seconds
from mailsift.services.server import Server, peer_address
from mailsift.settings import Settings
from mailsift.storage.db import Database, sqlite

log = logging.getLogger("mailsift.policy")

LINE_LIMIT = 8192
"""Longest request line accepted (Postfix's are far shorter; certificates fields are the longest)."""
MAX_ATTRIBUTES = 256
"""Most attributes in one request (Postfix 3.7 sends about 40)."""
TEXT_LIMIT = 512
"""Longest text in an answer."""

_ACTION = re.compile(r"^(DUNNO|DEFER_IF_PERMIT|DEFER_IF_REJECT|DEFER|REJECT|HOLD|DISCARD|[45]\d\d)( [^\r\n]*)?$")
_DEFER_VERB = re.compile(r"^(DEFER_IF_PERMIT|DEFER|4\d\d( 4\.\d{1,3}\.\d{1,3})?)$")
_REJECT_VERB = re.compile(r"^(REJECT|5\d\d( 5\.\d{1,3}\.\d{1,3})?)$")

DEFAULT_ON_ERROR = "DEFER_IF_PERMIT Policy service temporarily unavailable, try again later"
MALFORMED = "DEFER_IF_PERMIT Malformed policy request"


class PolicyProtocolError(ProtocolError):
    """A request that cannot be read: the connection gets ``MALFORMED`` and is closed."""


def clean_text(text: str) -> str:
    """One line of printable text, at most :data:`TEXT_LIMIT` characters."""
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()[:TEXT_LIMIT]


def _check_verb(value: Any, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise ConfigError(f"smtpd_policy: bad {what} {value!r}")
    return value


class smtpd_policy(Service):
    """Postfix policy service: ``smtpd_policy(POLICY_SCANNERS, db.sqlite(), '127.0.0.1', 10031)``.

    ``dbc`` is the database (``db.sqlite()`` by default: ``STATE_DIR/mailsift.db``).
    Options: ``defer`` and ``reject`` (the verbs of those answers), ``on_error``
    (the whole answer when a scanner or the database fails or ``timeout``
    seconds pass; ``'DUNNO'`` to fail open), ``idle_timeout`` (seconds before
    an idle connection is closed; Postfix reconnects), ``max_connections`` per
    worker, ``max_connections_per_address`` per worker and client address
    (default half of ``max_connections``), ``exempt_hosts`` (networks held to
    ``max_connections`` only; default none).  ``max_children`` is accepted for SAGATOR configs (workers are set
    by ``serve --workers``).  ``host`` may name a unix socket
    (``'unix:/var/spool/postfix/private/mailsift-policy'``), made with
    ``socket_mode`` (default 0o660).
    """

    kind = "smtpd_policy"

    def __init__(
        self,
        scanners: Sequence[Any],
        dbc: Database | None = None,
        host: str = "127.0.0.1",
        port: int = 10031,
        max_children: int | None = None,
        *,
        defer: str = "DEFER_IF_PERMIT",
        reject: str = "REJECT",
        on_error: str = DEFAULT_ON_ERROR,
        timeout: float = 10.0,
        idle_timeout: float = 600.0,
        max_connections: int = 500,
        max_connections_per_address: int | None = None,
        exempt_hosts: Sequence[str] = (),
        socket_mode: int = DEFAULT_SOCKET_MODE,
        socket_owner: str | int | None = None,
        socket_group: str | int | None = None,
    ) -> None:
        super().__init__(
            scanners, host, port, socket_mode=socket_mode, socket_owner=socket_owner, socket_group=socket_group
        )
        if dbc is None:
            dbc = sqlite()
        if not isinstance(dbc, Database):
            raise ConfigError(f"smtpd_policy: dbc must be a database like db.sqlite(), got {dbc!r}")
        self.database = dbc
        self.defer = _check_verb(defer, _DEFER_VERB, "defer verb (DEFER_IF_PERMIT, DEFER, 450, '450 4.7.1')")
        self.reject = _check_verb(reject, _REJECT_VERB, "reject verb (REJECT, 550, '550 5.7.1')")
        self.on_error = _check_verb(on_error, _ACTION, "on_error action (e.g. 'DUNNO' or 'DEFER_IF_PERMIT text')")
        self.timeout = check_seconds(timeout, "timeout", self.kind)
        self.idle_timeout = check_seconds(idle_timeout, "idle_timeout", self.kind)
        self.connection_limits(max_connections, max_connections_per_address, exempt_hosts)
        self.max_children = max_children

    def describe(self) -> str:
        return f"{self.kind}({self.where()}, {self.database.describe()})"

    def check(self, settings: Settings) -> None:
        """Resolve the database (default path under ``STATE_DIR``) and check its driver."""
        self.database.configure(settings.state_dir)

    async def start(self, sock: socket.socket, settings: Settings) -> PolicyServer:
        self.check(settings)
        server = PolicyServer(self, settings)
        await server.start(sock)
        return server

    # ---- decision -> answer

    def answer(self, decision: Decision) -> str:
        """The ``action=`` value for a decision (see the module's table)."""
        if decision.error is not None:
            return self.on_error
        result = decision.result
        chosen: SetDisposition | None = None
        for action in result.actions if result.detected else ():
            if isinstance(action, SetDisposition):
                chosen = action
        text = clean_text(chosen.text if chosen and chosen.text else _describe(result))
        disposition = decision.disposition
        if disposition is Disposition.DELIVER:
            if decision.redirect:  # checked at load time: local@domain, no spaces or controls
                return f"REDIRECT {decision.redirect}"
            if decision.copies:
                return f"BCC {decision.copies[0]}"
            if decision.headers:
                header = decision.headers[0]
                return f"PREPEND {clean_text(header.name)}: {clean_text(header.value)}"
            return "DUNNO"
        if disposition is Disposition.TEMPFAIL:
            return f"{self.defer} {text}"
        if disposition is Disposition.DROP:
            return f"DISCARD {text}"
        if disposition is Disposition.QUARANTINE:
            return f"HOLD {text}"
        return f"{self.reject} {text}"


def _describe(result: Result) -> str:
    return f"Rejected by policy: {result.name or 'policy violation'}"


async def read_request(reader: asyncio.StreamReader) -> dict[str, str] | None:
    """Read one request: ``name=value`` lines up to an empty line; None at a clean EOF.

    Lines without ``=`` are ignored (as postgrey does; Postfix never sends
    them).  A line over :data:`LINE_LIMIT` or more than :data:`MAX_ATTRIBUTES`
    attributes raise :class:`PolicyProtocolError`; EOF inside a request raises
    :class:`asyncio.IncompleteReadError`.
    """
    request: dict[str, str] = {}
    lines = 0
    while True:
        try:
            raw = await reader.readline()
        except (ValueError, asyncio.LimitOverrunError):
            raise PolicyProtocolError(f"line longer than {LINE_LIMIT} bytes") from None
        if not raw.endswith(b"\n"):
            if raw or lines:  # the client went away inside a request: nobody to answer
                raise asyncio.IncompleteReadError(raw, None)
            return None
        line = raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8", "replace")
        if not line:
            return request
        lines += 1
        if lines > MAX_ATTRIBUTES:
            raise PolicyProtocolError(f"more than {MAX_ATTRIBUTES} attributes")
        name, sep, value = line.partition("=")
        if not sep or not name:
            log.warning("policy: ignoring a line that is not name=value: %.80r", line)
            continue
        request[name] = value


@dataclass(eq=False)
class _Connection:
    writer: asyncio.StreamWriter
    busy: bool = False

    def shut_down(self) -> None:
        self.writer.close()  # no "shutting down" answer in the protocol: Postfix asks again elsewhere

    def abort(self) -> None:
        self.writer.close()


def logged_result(decision: Decision) -> Result:
    """The result a request's log line names: the deciding one, but for mail let through, the
    greylist's answer when it gave one (``scanner=greylist detail=passed (triplet passes 1, ...)``),
    not the first clean result (a ``client_network`` skipped for this client: "not run for client")."""
    if decision.result.detected:
        return decision.result
    for result in reversed(decision.trail):
        if result.scanner == "greylist":
            return result
    return decision.result


class PolicyServer(Server):
    """One worker's running ``smtpd_policy``: the skeleton (:class:`~mailsift.services.server.Server`) and requests."""

    service: smtpd_policy

    def __init__(self, service: smtpd_policy, settings: Settings) -> None:
        super().__init__(service, settings)
        self.pipeline = Pipeline(service.scanners)
        self.database = service.database
        self.counter = counters.PolicyCounter(self.database, settings.node_name)  # greylisting outcomes, per node

    async def start(self, sock: socket.socket) -> None:
        try:
            await self.database.prepare()
        except ScannerError as error:  # answered per request (on_error) until the database is back
            log.error("policy: database not ready at start: %s", error.message)
        await self.listen_streams(sock, self._serve, LINE_LIMIT)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = peer_address(writer)
        if self.refusal(address):
            writer.close()
            return
        connection = _Connection(writer)
        self.add(connection, address)
        try:
            while True:
                try:
                    request = await asyncio.wait_for(read_request(reader), self.service.idle_timeout)
                except PolicyProtocolError as error:
                    log.warning("policy: %s; answering %r and closing", error, MALFORMED)
                    await self._reply(writer, MALFORMED)
                    break
                if request is None or not self.begin(connection):
                    break  # EOF, or draining: closed unanswered, Postfix asks again on a new connection
                try:
                    action = await self.decide(request)
                except Exception:  # a bug must not leave Postfix waiting: answer, keep serving
                    log.exception("policy: unexpected error; answering %r", self.service.on_error)
                    action = self.service.on_error
                await self._reply(writer, action)
                self.end(connection)  # a draining worker closes the connection now
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.discard(connection)
            writer.close()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, action: str) -> None:
        writer.write(f"action={action}\n\n".encode())
        await writer.drain()

    async def decide(self, request: dict[str, str]) -> str:
        """Evaluate one request and return its ``action=`` value; logs one line."""
        started = time.monotonic()
        if request.get("request") != "smtpd_access_policy":
            action, decision = MALFORMED, None
            log.warning("policy: request type %r is not smtpd_access_policy", request.get("request"))
        else:
            target = PolicyTarget(request, self.database)
            decision = await self._evaluate(target)
            action = self.service.answer(decision)
        result = logged_result(decision) if decision is not None else Result()
        log.info(
            "policy action=%s name=%s scanner=%s client=%s[%s] from=<%s> to=<%s> state=%s time=%.3fs%s",
            action,
            result.name or "-",
            result.scanner or "-",
            request.get("client_name", "-"),
            request.get("client_address", "-"),
            request.get("sender", ""),
            request.get("recipient", ""),
            request.get("protocol_state", "-"),
            time.monotonic() - started,
            f" detail={result.detail}" if result.detail else "",
        )
        if decision is not None:  # greylisting outcomes for the statistics (never waits)
            self.counter.count(decision, request.get("recipient", ""), time.monotonic() - started)
        return action

    async def _evaluate(self, target: PolicyTarget) -> Decision:
        try:
            _, trail = await asyncio.wait_for(first_detection(self.pipeline.scanners, target), self.service.timeout)
        except ScannerError as error:
            return Decision.tempfail(error)
        except TimeoutError:
            return Decision.tempfail(ScannerError(f"policy evaluation took over {self.service.timeout:g} s"))
        return Decision.from_results(trail)

    async def closed(self) -> None:
        await self.pipeline.aclose()
        await self.counter.close()
        await asyncio.to_thread(self.database.dispose)
