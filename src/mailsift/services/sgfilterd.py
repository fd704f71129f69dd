"""``sgfilterd``: SAGATOR's filter daemon for ``mailsift sgfilter`` and ``mailsift qmail-queue``.

The protocol is SAGATOR's (sagator-services.txt, sgfilterd), kept byte for
byte so its clients work.  Input, lines ended by LF (a CR before it is
ignored)::

    MAIL FROM: sender@example.org        (once; "<...>" and an empty sender allowed)
    RCPT TO: rcpt@example.net            (one or more)
    DATA 1234                            (the message length in bytes)
    <exactly 1234 bytes of message>

mailsift's clients may add, before ``DATA``, each at most once (an old client
omits them and is served as before)::

    CLIENT ADDRESS: 192.0.2.1            (the SMTP client: qmail's TCPREMOTEIP)
    CLIENT NAME: mx.example.org          (its name: TCPREMOTEHOST)
    RELAY CLIENT: 1                      (1 when qmail's RELAYCLIENT is set, else 0)
    ANSWER LENGTH: 1                     (250/251 answers give "LENGTH <bytes>" before the message)
    HELO: mx.example.org                 (the SMTP client's HELO/EHLO argument, where the client knows it)

They reach the scanners as the envelope's client (``trusted_clients``,
``client_network``, ``spam_levels(trusted=...)``, ``smtp_comm(helo=...)``)
and the log's ``RC:`` field.

Output, then the daemon closes the connection::

    XXX L.LL VIRNAME
    <the message to deliver, with the config's edits (add_header, modify_subject)>

The statuses are data in :mod:`mailsift.services.sgfilter_protocol` (shared
with the client).  ``XXX`` is one of :data:`CLEAN` 250, :data:`FORCED` 251 (detected, but the
config delivers it), :data:`TEMPFAIL` 451, :data:`REJECT` 550, :data:`DROP`
551 (dropped or kept in quarantine only).  The message follows 250 and 251
only.  Bad input gets one error line in the same format (500, 501, 503, 552,
421) and the connection is closed: it never reaches the scanners.

There is no library for this protocol, so it is written here on
:class:`asyncio.Protocol` (not streams) to see the receive buffer: data past
the declared length is an error, not silently ignored.

It is a thin front end: it builds a :class:`~mailsift.message.mail.Mail` and runs the
shared :class:`~mailsift.services.base.MailPath`, whose next hop is
:class:`KeepMessage`, a delivery that records the final message instead of
sending it (the MTA or the client keeps the mail); quarantine copies, the log
line and the decision are the shared ones.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from mailsift import validators
from mailsift.core.mailpath import MailPath, failure_reply
from mailsift.delivery.next_hop import Delivery
from mailsift.errors import DeliveryError, ProtocolError
from mailsift.message.address import address_problem
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Decision, Disposition
from mailsift.services.base import DEFAULT_SOCKET_MODE, Service, check_limit, check_networks, check_seconds
from mailsift.services.server import Server, SessionConnection, peer_address
from mailsift.services.sgfilter_protocol import (
    ANSWER_LENGTH,
    BAD_CLIENT,
    BAD_LENGTH,
    BAD_RECIPIENT,
    BAD_SENDER,
    CLEAN,
    CLIENT_ADDRESS,
    CLIENT_NAME,
    CLIENT_VERBS,
    DROP,
    FORCED,
    HELO,
    LINE_TOO_LONG,
    LONG_DATA,
    MAX_CLIENT_NAME,
    MAX_LINE,
    MAX_RECIPIENTS,
    NO_RECIPIENT,
    NO_SENDER,
    REJECT,
    RELAY_CLIENT,
    SHORT_DATA,
    SHUTTING_DOWN,
    TEMPFAIL,
    TIMEOUT,
    TOO_BIG,
    TOO_MANY_CONNECTIONS,
    TOO_MANY_RECIPIENTS,
    UNKNOWN_COMMAND,
    Status,
)
from mailsift.settings import Settings

log = logging.getLogger("mailsift.sgfilterd")

# --------------------------------------------------------------------------- statuses (data)

STATUS_OF_DISPOSITION = {
    Disposition.REJECT: REJECT,
    Disposition.DROP: DROP,
    Disposition.QUARANTINE: DROP,  # not delivered to the recipients: the client must not deliver it
    Disposition.TEMPFAIL: TEMPFAIL,
}

_ADDRESS = re.compile(r"<?(.*?)>?")


CLIENT_NOT_ALLOWED = Status(503, "Client lines not allowed from this peer (client_hosts)")


class _Refused(ProtocolError):
    """Bad input: answered with ``status`` and the connection closed."""

    def __init__(self, status: Status) -> None:
        super().__init__(status.text)
        self.status = status


# --------------------------------------------------------------------------- the next hop


TAKES_ANY_MESSAGE = "sgfilter-answer-length"
"""Memo key: the client asked for ``ANSWER LENGTH``, so a message with a changed body reaches it whole."""


class KeepMessage(Delivery):
    """A next hop that keeps the final message for the client instead of sending it.

    The client delivers to the recipients it has and takes the original with
    header lines added only (:mod:`mailsift.services.sgfilter_client`): a
    ``deliver_to``, ``sanitize``, ``remove_headers`` or ``modify_header`` that
    shortens the message is a 451 here, with the reason in the log -- unless
    the client asked for ``ANSWER LENGTH`` (``mailsift qmail-queue`` does): it
    then takes any message (:data:`TAKES_ANY_MESSAGE` in the mail's memo).
    """

    redirects = False

    def __init__(self) -> None:
        self.kept: dict[int, bytes] = {}

    async def deliver(self, mail: Mail, message: bytes) -> str:
        raw = mail.raw
        body = re.search(rb"\r?\n\r?\n", raw)  # the client's own check (sgfilter_client.parse_answer)
        changed = len(message) < len(raw) or (body is not None and not message.endswith(raw[body.end() :]))
        if changed and not mail.memo.get(TAKES_ANY_MESSAGE):
            raise DeliveryError("the sgfilter client takes the message with header lines added only")
        self.kept[id(mail)] = message
        return "returned to the sgfilter client"

    def take(self, mail: Mail) -> bytes | None:
        return self.kept.pop(id(mail), None)

    def describe(self) -> str:
        return "sgfilter client"


def status_for(decision: Decision, reply_code: int, delivered: bool) -> Status:
    """SAGATOR's status for what the shared path did.

    250 clean and delivered; 251 detected but delivered (``deliver(...)``);
    550 rejected; 551 dropped or quarantined; 451 for a tempfail decision or any
    failure while carrying it out (e.g. the quarantine could not be written).
    """
    if 400 <= reply_code < 500:
        return TEMPFAIL
    if decision.disposition is Disposition.DELIVER:
        if not delivered:
            return TEMPFAIL
        return FORCED if decision.result.detected else CLEAN
    return STATUS_OF_DISPOSITION[decision.disposition]


# --------------------------------------------------------------------------- the service


class sgfilterd(Service):
    """SAGATOR's filter daemon: ``sgfilterd(SCANNERS, '127.0.0.1', 27)``.

    Clients: ``mailsift sgfilter`` (procmail/maildrop filter) and ``mailsift
    qmail-queue`` (qmail's QMAILQUEUE).  Options: ``max_size`` (bytes, default
    50 MB: a larger DATA length is answered 552), ``timeout`` (seconds without
    input before 421, default 60), ``max_connections`` per worker (default 500),
    ``max_connections_per_address`` per worker and client address (default
    half of ``max_connections``), ``exempt_hosts`` (networks held to
    ``max_connections`` only; default none).
    ``prefork`` is accepted for SAGATOR configs; workers are set by ``serve``.
    ``host`` may name a unix socket (``'unix:/run/mailsift/sgfilterd.sock'``),
    made with ``socket_mode`` (default 0o660).  ``client_hosts``: the networks
    whose peers may send the client lines (``CLIENT ADDRESS``, ``CLIENT NAME``,
    ``RELAY CLIENT``, ``HELO``; default loopback; on a unix socket every peer, its mode
    guards it), as smtpd's ``xforward_hosts``: from others they are refused (503).
    """

    kind = "sgfilterd"

    def __init__(
        self,
        scanners: Sequence[Any],
        host: str = "127.0.0.1",
        port: int = 27,
        prefork: int | None = None,
        *,
        max_size: int = 50 * 1024 * 1024,
        timeout: float = 60.0,
        max_connections: int = 500,
        max_connections_per_address: int | None = None,
        exempt_hosts: Sequence[str] = (),
        socket_mode: int = DEFAULT_SOCKET_MODE,
        socket_owner: str | int | None = None,
        socket_group: str | int | None = None,
        client_hosts: Sequence[str] = ("127.0.0.0/8", "::1/128"),
    ) -> None:
        super().__init__(
            scanners, host, port, socket_mode=socket_mode, socket_owner=socket_owner, socket_group=socket_group
        )
        self.client_hosts = check_networks(client_hosts, "client_hosts", self.kind)
        self.prefork = prefork
        self.max_size = check_limit(max_size, "max_size", self.kind, minimum=1024)
        self.timeout = check_seconds(timeout, "timeout", self.kind)
        self.connection_limits(max_connections, max_connections_per_address, exempt_hosts)

    def check(self, settings: Settings) -> None:
        """Nothing needs the global settings: the next hop is the client."""
        MailPath(self.scanners, settings, KeepMessage())

    async def start(self, sock: socket.socket, settings: Settings) -> SgfilterServer:
        server = SgfilterServer(self, settings)
        await server.start(sock)
        return server


@dataclass
class Request:
    """A parsed request: envelope and message."""

    sender: str
    recipients: list[str]
    data: bytes
    client: dict[str, str] = field(default_factory=dict)
    """The optional ``CLIENT ADDRESS``/``CLIENT NAME``/``RELAY CLIENT``/``ANSWER LENGTH``/``HELO`` values, by verb."""


class _Connection(SessionConnection, asyncio.Protocol):
    """Receive buffer of one client connection; the session coroutine reads from it."""

    def __init__(self, server: SgfilterServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.eof = False
        self.limit = MAX_LINE * 4
        self.discarding = False
        self.transport: asyncio.Transport | None = None
        self._paused = False
        self._wakeup: asyncio.Future[None] | None = None

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        address = peer_address(transport)
        refusal = self.server.refusal(address)
        if refusal:
            self.transport.write((SHUTTING_DOWN if refusal == "draining" else TOO_MANY_CONNECTIONS).line())
            self.transport.close()
            return
        self.server.add(self, address)
        self.server.begin(self)  # one request per connection: the transaction is the connection
        self.server.spawn_session(self, lambda: self.server.session(self))

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            self._wake()
            return
        self.buffer += data
        if len(self.buffer) > self.limit and not self._paused and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return True  # keep the connection open: the answer is still to be written

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.server.discard(self)
        self._wake()

    # -- for the session
    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def more(self, timeout: float) -> None:
        """Wait for more input (or EOF); :class:`_Refused` with 421 after ``timeout`` idle seconds."""
        if self.eof:
            return
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        self._wakeup = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._wakeup, timeout)
        except TimeoutError:
            raise _Refused(TIMEOUT) from None
        finally:
            self._wakeup = None

    async def line(self, timeout: float) -> str | None:
        """The next input line without its line end, or None at EOF."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                raw = bytes(self.buffer[:end])
                del self.buffer[: end + 1]
                if len(raw) > MAX_LINE:
                    raise _Refused(LINE_TOO_LONG)
                return raw.removesuffix(b"\r").decode("utf-8", "surrogateescape")
            if len(self.buffer) > MAX_LINE:
                raise _Refused(LINE_TOO_LONG)
            if self.eof:
                return None
            await self.more(timeout)

    async def exactly(self, length: int, timeout: float) -> bytes:
        """``length`` bytes; 501 if the client ends its data early or sends more."""
        self.limit = length + MAX_LINE
        while len(self.buffer) < length:
            if self.eof:
                raise _Refused(SHORT_DATA.named(f"{SHORT_DATA.text}: got {len(self.buffer)} of {length} bytes"))
            await self.more(timeout)
        if len(self.buffer) > length:
            raise _Refused(LONG_DATA.named(f"{LONG_DATA.text}: got over {length} bytes"))
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def answer(self, *pieces: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(pieces)

    async def close_after_error(self, timeout: float) -> None:
        """Half-close, then read and drop what the client still sends (bounded by ``timeout``).

        Closing at once would make the kernel reset the connection while the
        client is still sending, and a reset can destroy the answer before the
        client reads it.
        """
        self.discarding = True
        self.buffer.clear()
        if self.transport is None or self.transport.is_closing():
            return
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.eof and loop.time() < deadline:
            try:
                await self.more(max(deadline - loop.time(), 0.01))
            except _Refused:
                break
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def shut_down(self) -> None:
        """Never called: a connection is busy until its answer, then closed."""
        self.close()


class SgfilterServer(Server):
    """One worker's running ``sgfilterd``: the skeleton (:class:`~mailsift.services.server.Server`) and the protocol."""

    service: sgfilterd

    def __init__(self, service: sgfilterd, settings: Settings) -> None:
        super().__init__(service, settings)
        self.keeper = KeepMessage()
        self.path = MailPath(service.scanners, settings, self.keeper)

    async def start(self, sock: socket.socket) -> None:
        await self.listen(sock, lambda: _Connection(self))

    async def session_failed(self, connection: _Connection) -> None:
        connection.answer(TEMPFAIL.line())

    def session_ended(self, connection: SessionConnection) -> None:
        connection.close()  # flushes the answer; connection_lost then releases it

    async def session(self, connection: _Connection) -> None:
        timeout = self.service.timeout
        try:
            request = await self.read_request(connection)
        except _Refused as refused:
            transport = connection.transport
            peer = (peer_address(transport) or "unix") if transport is not None else "-"
            log.info("sgfilterd: refused client %s: %d %s", peer, refused.status.code, refused.status.text)
            connection.answer(refused.status.line())
            await connection.close_after_error(timeout)
            return
        status, level, name, message = await self.filter(request)
        if connection.buffer:  # more bytes than announced arrived while scanning
            connection.answer(LONG_DATA.line())
            await connection.close_after_error(timeout)
            return
        length = (
            f"LENGTH {len(message)}\n".encode()
            if message is not None and request.client.get(ANSWER_LENGTH) == "1"
            else b""
        )
        connection.answer(status.line(level, name), length, message or b"")
        connection.close()  # flushes what is written, then closes (EOF ends the answer)

    async def read_request(self, connection: _Connection) -> Request:
        """Parse ``MAIL FROM``/``RCPT TO``/``DATA length`` and read the message."""
        timeout = self.service.timeout
        sender: str | None = None
        recipients: list[str] = []
        client: dict[str, str] = {}
        while True:
            line = await connection.line(timeout)
            if line is None:
                raise _Refused(SHORT_DATA.named("Connection ended before DATA"))
            verb, _, argument = line.partition(":")
            verb = verb.strip().upper()
            if verb == "MAIL FROM":
                if sender is not None:
                    raise _Refused(Status(503, "MAIL FROM: given twice"))
                sender = _address(argument, BAD_SENDER, allow_empty=True)
            elif verb == "RCPT TO":
                if sender is None:
                    raise _Refused(NO_SENDER)
                if len(recipients) >= MAX_RECIPIENTS:
                    raise _Refused(TOO_MANY_RECIPIENTS)
                recipients.append(_address(argument, BAD_RECIPIENT, allow_empty=False))
            elif verb in CLIENT_VERBS:
                if verb in client:
                    raise _Refused(BAD_CLIENT)
                if verb != ANSWER_LENGTH and not self.client_lines_allowed(connection):
                    raise _Refused(CLIENT_NOT_ALLOWED)
                client[verb] = _client_value(verb, argument.strip())
            elif line[:5].upper() in ("DATA ", "DATA"):
                if sender is None:
                    raise _Refused(NO_SENDER)
                if not recipients:
                    raise _Refused(NO_RECIPIENT)
                length = _length(line[4:])
                if length > self.service.max_size:
                    raise _Refused(TOO_BIG.named(f"{TOO_BIG.text} ({self.service.max_size} bytes)"))
                data = await connection.exactly(length, timeout)
                return Request(sender, recipients, data, client)
            else:
                raise _Refused(UNKNOWN_COMMAND)

    def client_lines_allowed(self, connection: _Connection) -> bool:
        """Whether this peer may say who the SMTP client is (on a unix socket: always, its mode guards it)."""
        if self.service.unix_path is not None:
            return True
        peer = peer_address(connection.transport) if connection.transport else ""
        return validators.address_in(peer, self.service.client_hosts)

    async def filter(self, request: Request) -> tuple[Status, float, str, bytes | None]:
        """Run the shared path: the status, level, name and (250/251) the message to deliver."""
        env = Envelope(
            sender=request.sender,
            recipients=request.recipients,
            queue_id=self.next_queue_id(),
            protocol="SGFILTER",
            client_address=request.client.get(CLIENT_ADDRESS, ""),
            client_name=request.client.get(CLIENT_NAME, ""),
            relay_client=None if RELAY_CLIENT not in request.client else request.client[RELAY_CLIENT] == "1",
            helo=request.client.get(HELO, ""),
        )
        mail: Mail | None = None
        try:
            mail = Mail(
                env, request.data, spool_threshold=self.settings.spool_threshold, spool_dir=self.settings.spool_dir
            )
            mail.memo[TAKES_ANY_MESSAGE] = request.client.get(ANSWER_LENGTH) == "1"
            decision, outcome = await self.path.process(mail)
            kept = self.keeper.take(mail)
        except Exception as error:  # noqa: BLE001 - the outermost per-message handler (logs): 451
            failure_reply(env.queue_id, error)  # logs it; sgfilter's 451 is one status
            return TEMPFAIL, 0.0, TEMPFAIL.text, None
        finally:
            if mail is not None:
                self.keeper.take(mail)
                mail.close()
        status = status_for(decision, outcome.reply.code, kept is not None)
        name = decision.result.name
        if status is TEMPFAIL:
            name = name or TEMPFAIL.text
        return status, decision.result.level, name, kept if status in (CLEAN, FORCED) else None

    async def closed(self) -> None:
        await self.path.close()


def _address(argument: str, error: Status, *, allow_empty: bool) -> str:
    match = _ADDRESS.fullmatch(argument.strip())
    # No domain required (unlike smtpd and the milter): sgfilter's client is a local delivery agent,
    # whose recipient is a local user name ("root"); CR/LF, controls and brackets are refused all the same.
    if match is None or address_problem(match.group(1), allow_empty=allow_empty):
        raise _Refused(error)
    return match.group(1)


def _client_value(verb: str, value: str) -> str:
    """A checked ``CLIENT ADDRESS`` (an IP address), ``CLIENT NAME`` (a host name), ``RELAY CLIENT`` or
    ``ANSWER LENGTH`` (0/1), or ``HELO`` (what an SMTP client sent: printable ASCII, spaces too, at most 255)."""
    if verb == CLIENT_ADDRESS:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise _Refused(BAD_CLIENT) from None
    if verb in (RELAY_CLIENT, ANSWER_LENGTH):
        if value not in ("0", "1"):
            raise _Refused(BAD_CLIENT)
        return value
    if verb == HELO:
        if not value or len(value) > MAX_CLIENT_NAME or not re.fullmatch(r"[ -~]+", value):
            raise _Refused(BAD_CLIENT)
        return value
    if not value or len(value) > MAX_CLIENT_NAME or not re.fullmatch(r"[!-~]+", value):
        raise _Refused(BAD_CLIENT)
    return value


def _length(text: str) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 15:
        raise _Refused(BAD_LENGTH)
    return int(text)
