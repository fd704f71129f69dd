"""``smtpd``: the after-queue SMTP content filter (SAGATOR §5.1), on aiosmtpd.

Postfix (or any MTA) hands each message over SMTP; mailsift scans it, carries
the decision out, and only then answers: 250 after the next hop accepted (or
the drop/quarantine was done), 550 on reject, 451 on any failure.

Beyond aiosmtpd's own EHLO, SIZE, 8BITMIME and SMTPUTF8, this adds:

* ``PIPELINING`` — aiosmtpd reads commands in order, so pipelined clients work;
* ``XFORWARD`` — Postfix passes the original client (NAME, ADDR, PROTO, HELO,
  IDENT, SOURCE); accepted only from ``xforward_hosts`` (loopback by default),
  control characters in a decoded value escaped
  (:func:`mailsift.validators.escape_controls`: ``+0D+0A`` is stored and
  logged as ``\r\n``, never as a line break);
* the server skeleton (:mod:`mailsift.services.server`): TCP or a unix
  socket, connection limits per worker and per client address (421 beyond
  them), an idle timeout per command
  (421, then the connection closes), draining (421 to a transaction begun
  on a draining worker; one in progress is never cut), queue ids unique
  across workers and nodes;
* every MAIL and RCPT address checked by
  :func:`mailsift.message.address.address_problem` (501 when refused),
  a domain required (``RCPT TO:<example.com>`` is refused) except for the
  null sender ``<>`` and the recipient ``<postmaster>`` (RFC 5321 §4.5.1);
* SMTP smuggling: DATA ends only at ``<CRLF>.<CRLF>`` (:func:`read_data`), and
  the next hop gets CRLF-normalised, dot-stuffed data
  (:func:`mailsift.delivery.smtpclient.wire_data`), so a bare ``\\n.\\n`` can never
  end a message early.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import socket
from collections.abc import Sequence
from typing import Any, AnyStr, cast

from aiosmtpd.smtp import SMTP, Session, syntax
from aiosmtpd.smtp import Envelope as SMTPEnvelope

from mailsift import replies, validators
from mailsift.core.mailpath import MailPath, failure_reply
from mailsift.errors import ConfigError
from mailsift.message.address import address_problem
from mailsift.message.mail import Envelope, Mail
from mailsift.services.base import DEFAULT_SOCKET_MODE, Service, check_limit, check_networks, check_seconds
from mailsift.services.rcptpolicy import RcptPolicy, checked_policy
from mailsift.services.server import Server, peer_address
from mailsift.settings import Settings
from mailsift.validators import escape_controls

log = logging.getLogger("mailsift.smtpd")

XFORWARD_ATTRIBUTES = ("NAME", "ADDR", "PROTO", "HELO", "IDENT", "SOURCE")
_XTEXT = re.compile(r"\+([0-9A-Fa-f]{2})")


def xtext_decode(value: str) -> str:
    return _XTEXT.sub(lambda m: chr(int(m.group(1), 16)), value)


class smtpd(Service):
    """SMTP content filter: ``smtpd(SCANNERS, '127.0.0.1', 10024)``.

    Options: ``next_hop`` (``('host', port)``, ``smtp_relay(...)`` or
    ``local_maildir(...)``; default ``SMTP_SERVER``), ``max_size`` (bytes,
    advertised as SIZE; default 50 MB), ``max_connections`` per worker (default
    500), ``max_connections_per_address`` per worker and client address
    (default half of ``max_connections``), ``exempt_hosts`` (networks held to
    ``max_connections`` only, e.g. a local MTA's; default none),
    ``timeout`` (idle seconds per command, default 300; then 421),
    ``xforward_hosts`` (networks allowed to send XFORWARD; default loopback),
    ``hostname`` (greeting name).  ``host`` may name a unix socket instead
    (``'unix:/run/mailsift/smtpd.sock'``, the port is ignored), made with
    ``socket_mode`` (default 0o660).

    ``after_queue`` (default ``False``): say ``True`` when an MTA's queue is in
    front, i.e. behind Postfix's ``content_filter``.  The MTA has already accepted
    the message there, so a ``reject`` answered here becomes a bounce the MTA
    sends to the (possibly forged) sender: backscatter.  ``mailsift check-config``
    then warns about every ``reject`` action in this service's scanners; quarantine
    or drop instead, and reject before the queue (``milter``, ``smtpd_policy``).
    The standalone quick start (itself the receiving MTA) keeps ``False`` and
    rightly rejects.

    ``recipient_policy``: a :class:`~mailsift.services.rcptpolicy.recipient_policy`
    answering each ``RCPT TO`` (or one listed before this service in ``SRV``).
    """

    kind = "smtpd"

    def __init__(
        self,
        scanners: Sequence[Any],
        host: str = "127.0.0.1",
        port: int = 10024,
        prefork: int | None = None,
        *,
        next_hop: Any = None,
        max_size: int = 50 * 1024 * 1024,
        max_connections: int = 500,
        max_connections_per_address: int | None = None,
        exempt_hosts: Sequence[str] = (),
        timeout: float = 300.0,
        xforward_hosts: Sequence[str] = ("127.0.0.0/8", "::1/128"),
        hostname: str | None = None,
        socket_mode: int = DEFAULT_SOCKET_MODE,
        socket_owner: str | int | None = None,
        socket_group: str | int | None = None,
        after_queue: bool = False,
        recipient_policy: RcptPolicy | None = None,
    ) -> None:
        super().__init__(
            scanners, host, port, socket_mode=socket_mode, socket_owner=socket_owner, socket_group=socket_group
        )
        max_size = check_limit(max_size, "max_size", self.kind, minimum=1024)
        self.connection_limits(max_connections, max_connections_per_address, exempt_hosts)
        timeout = check_seconds(timeout, "timeout", self.kind)
        self.xforward_hosts = check_networks(xforward_hosts, "xforward_hosts", self.kind)
        self.prefork = prefork  # accepted for SAGATOR configs; workers are set by `serve --workers`
        self.next_hop = next_hop
        self.max_size, self.timeout = max_size, float(timeout)
        self.hostname = hostname
        if not isinstance(after_queue, bool):
            raise ConfigError(f"{self.kind}: after_queue must be True or False, got {after_queue!r}")
        self.after_queue = after_queue
        self.recipient_policy = checked_policy(recipient_policy, self.kind)

    def check(self, settings: Settings) -> None:
        """Validate what needs the global settings (the next hop)."""
        MailPath(self.scanners, settings, self.next_hop)
        if self.recipient_policy is not None:
            self.recipient_policy.check(settings)

    def bind_settings(self, settings: Settings) -> None:
        if self.recipient_policy is not None:
            self.recipient_policy.bind_settings(settings)

    async def start(self, sock: socket.socket, settings: Settings) -> SMTPServer:
        server = SMTPServer(self, settings)
        await server.start(sock)
        return server


class _Refuse(asyncio.Protocol):
    """Answers 421 and hangs up: beyond a connection limit, or on a draining worker."""

    def __init__(self, reply: replies.Reply) -> None:
        self.reply = reply

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # no isinstance(asyncio.Transport) check: uvloop's transports are not subclasses
        cast(asyncio.Transport, transport).write(f"{self.reply}\r\n".encode())
        transport.close()


def refusal_reply(refusal: str) -> replies.Reply:
    """The answer to a refused connection (:meth:`Server.refusal`'s reason)."""
    return replies.SHUTTING_DOWN if refusal == "draining" else replies.TOO_MANY_CONNECTIONS


class FilterSMTP(SMTP):
    """aiosmtpd's SMTP session with XFORWARD, drain support and three fast paths.

    aiosmtpd is the SMTP server; three of its steps cost more per message than
    all of mailsift's scanning in the benchmark, so they are done here instead,
    with the same results (tests/unit/services/test_smtpd_fastpaths.py compares each one
    with aiosmtpd's own code):

    * construction: ``SMTP.__init__`` introspects the class and the handler
      (``inspect.getmembers``, ``dir``, ``inspect.signature``) for every
      connection; here that is done once per server, on a prototype built by
      aiosmtpd's own constructor, and each session copies its settings;
    * DATA is read in large chunks up to each ``.<CRLF>``, not line by line;
      it still ends only at ``<CRLF>.<CRLF>`` (a bare ``\\n.\\n`` never ends
      it), with the same size and line-length limits and dot-unstuffing;
    * the common ``<local@domain>`` address is parsed with one regular
      expression; anything else goes to aiosmtpd's full RFC 5322 parser.
    """

    line_length_limit = 16384  # lenient: RFC 5321 says 1000, real mail is longer; still bounded

    def __init__(self, server: SMTPServer, **kwargs: Any) -> None:
        prototype = server.prototype
        if prototype is None:
            super().__init__(server.handler, **kwargs)
        else:
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader(loop=loop, limit=self.line_length_limit)
            asyncio.StreamReaderProtocol.__init__(
                self, reader, client_connected_cb=self._cb_client_connected, loop=loop
            )
            vars(self).update(prototype.settings)
            self._smtp_methods = {verb: getattr(self, f"smtp_{verb}") for verb in prototype.smtp_verbs}
            self._auth_methods = prototype.auth_methods(self)
        self.server = server
        self.xforward: dict[str, str] = {}
        self.busy = False
        self.processing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        address = peer_address(transport)
        refusal = self.server.refusal(address)
        if refusal:  # the client's address is at its limit (or the worker began draining meanwhile)
            refuse = _Refuse(refusal_reply(refusal))
            transport.set_protocol(refuse)
            refuse.connection_made(transport)
            return
        self.server.add(self, address)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.server.discard(self)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        """The client shut its side down.  In a transaction it still waits for the answers: Exim
        pipelines QUIT after the final dot and half-closes; aiosmtpd would cancel the message
        mid-way (Exim then defers and sends it again).  There the transport stays open, the
        message is finished and answered, then the buffered QUIT (else the idle timeout) ends it."""
        if self.processing or (self.envelope is not None and self.envelope.mail_from is not None):
            return True
        return super().eof_received()

    def _answer_and_close(self, reply: replies.Reply) -> None:
        if self.transport is not None and not self.transport.is_closing():
            cast(asyncio.Transport, self.transport).write(f"{reply}\r\n".encode())  # (uvloop's transports)
            self.transport.close()

    linger = 1.0
    """Seconds a draining worker keeps a connection open after a transaction's answer: a client
    that QUITs at once gets its 221 and a clean close; one that begins another transaction gets
    421 (:meth:`Handler.handle_MAIL`), never a cut transaction; then 421 and close."""

    def shut_down(self) -> None:
        """The worker drains: 421, then close (the skeleton never calls it inside a transaction)."""
        self._answer_and_close(replies.SHUTTING_DOWN)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _timeout_cb(self) -> None:
        """The idle timeout (per command): 421, then close; never while the message is being processed."""
        if self.processing:
            self._reset_timeout()
            return
        peer = self.session.peer if self.session else "-"
        log.info("%r: idle for %.0f s: 421 and closing", peer, self._timeout_duration)
        self._answer_and_close(replies.IDLE_TIMEOUT)

    async def push(self, status: AnyStr) -> None:
        if self.transport is None or self.transport.is_closing():
            return  # the client is gone (uvloop raises on a write to a closed transport)
        await super().push(status)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _SIMPLE_ADDRESS.fullmatch(arg)
        if match is None or (self.local_part_limit and len(match.group(2)) > self.local_part_limit):
            return super()._getaddr(arg)
        return match.group(1), match.group(3) or ""

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802 - SMTP verb
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(str(replies.NEED_RECIPIENT))
            return
        if arg:
            await self.push(str(replies.DATA_SYNTAX))
            return
        await self.push(str(replies.START_DATA))
        try:
            content, problem = await read_data(self._reader, self.data_size_limit, self.line_length_limit)
        except asyncio.CancelledError:
            log.info("connection lost during DATA")
            self._writer.close()
            raise
        except asyncio.IncompleteReadError:  # the client hung up inside DATA: nothing was accepted
            self._writer.close()
            return
        if problem:
            status = self.refusal(problem)
            self.server.log_refusal(self, problem)
        else:
            self.envelope.content = self.envelope.original_content = content
            del content  # held by the envelope alone: the server's process() lets go of it once spooled
            status = await self._call_handler_hook("DATA")
        self.envelope = self._create_envelope()  # aiosmtpd's post-DATA state
        await self.push(status)
        self.server.end(self)  # the answer is out: a draining worker closes the connection now

    def refusal(self, problem: str) -> str:
        """The reply to content refused while it was read (too big, a line too long)."""
        return problem

    async def smtp_XFORWARD(self, arg: str | None) -> None:  # noqa: N802 - SMTP verb
        peer = self.session.peer[0] if self.session and isinstance(self.session.peer, tuple) else ""
        if not self.server.xforward_allowed(peer):
            await self.push(str(replies.XFORWARD_DENIED))
            return
        if self.envelope is not None and self.envelope.mail_from is not None:
            await self.push(str(replies.BAD_SEQUENCE))
            return
        attributes: dict[str, str] = {}
        for item in (arg or "").split():
            key, sep, value = item.partition("=")
            if not sep or key.upper() not in XFORWARD_ATTRIBUTES:
                await self.push(str(replies.XFORWARD_BAD))
                return
            # escaped: a CR/LF or ESC (xtext +0D+0A, +1B) from a trusted host reaches neither log nor database
            attributes[key.upper()] = escape_controls(xtext_decode(value))
        if not attributes:
            await self.push(str(replies.XFORWARD_BAD))
            return
        self.xforward.update(attributes)
        await self.push(str(replies.XFORWARD_OK))


class Handler:
    """aiosmtpd handler hooks: EHLO extensions, transaction tracking, DATA → mail path."""

    def __init__(self, server: SMTPServer) -> None:
        self.server = server

    async def handle_EHLO(  # noqa: N802 - aiosmtpd hook name
        self, server: FilterSMTP, session: Session, envelope: SMTPEnvelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        extra = ["250-PIPELINING"]
        peer = session.peer[0] if isinstance(session.peer, tuple) else ""
        if self.server.xforward_allowed(peer):
            extra.append("250-XFORWARD " + " ".join(XFORWARD_ATTRIBUTES))
        return responses[:-1] + extra + responses[-1:]

    async def handle_MAIL(  # noqa: N802
        self, server: FilterSMTP, session: Session, envelope: SMTPEnvelope, address: str, options: list[str]
    ) -> str:
        if not _plausible_address(address, allow_empty=True):
            return str(replies.BAD_SENDER)
        if not self.server.begin(server):  # a draining worker begins no transaction: 421 and close
            server.shut_down()
            return str(replies.SHUTTING_DOWN)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return str(replies.SENDER_OK)

    async def handle_RCPT(  # noqa: N802
        self, server: FilterSMTP, session: Session, envelope: SMTPEnvelope, address: str, options: list[str]
    ) -> str:
        if not _plausible_address(address, allow_empty=False):
            return str(replies.BAD_RECIPIENT)
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return str(replies.TOO_MANY_RECIPIENTS)
        policy = self.server.service.recipient_policy
        if policy is not None:  # recipient_policy(): answered now, before DATA (a failure: 451)
            added = envelope.__dict__.setdefault("policy_headers", [])  # aiosmtpd: one envelope per transaction
            reply = await policy.decide(self.server.envelope_of(server, session, envelope, rcpt=True), address, added)
            if not reply.is_positive:
                return str(reply)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return str(replies.RECIPIENT_OK)

    async def handle_RSET(self, server: FilterSMTP, session: Session, envelope: SMTPEnvelope) -> str:  # noqa: N802
        if server.busy:
            self.server.end(server)
        return str(replies.RESET_OK)

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd's last resort for an error in a command: 451 and a log line, never its ``500``."""
        log.error("unexpected error in an SMTP command; answering 451", exc_info=error)
        return str(replies.TEMPFAIL)

    async def handle_DATA(  # noqa: N802
        self, server: FilterSMTP, session: Session, envelope: SMTPEnvelope
    ) -> str:
        server.processing = True  # the idle timeout waits for the answer
        try:
            return await self.server.process(server, session, envelope)
        finally:
            server.processing = False


MAX_RECIPIENTS = 1000


def _plausible_address(address: str, *, allow_empty: bool) -> bool:
    """The shared address check (:mod:`mailsift.message.address`).

    The null sender (``MAIL FROM:<>``, bounces and notifications) reaches the
    hook as ``"<>"`` from aiosmtpd: it is plausible for MAIL only.
    """
    if address == "<>":
        return allow_empty
    return not address_problem(address, allow_empty=allow_empty, need_domain=True)


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_ADDRESS = re.compile(
    rf"<(({_ATEXT}(?:\.{_ATEXT})*)@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)>"
    r"(?: +(\S.*))?"
)
"""``<local@domain>`` with a dot-atom local part and a plain domain, then the parameters."""

TOO_LONG = str(replies.LINE_TOO_LONG)
TOO_MUCH = str(replies.TOO_MUCH_DATA)


async def read_data(reader: asyncio.StreamReader, size_limit: int | None, line_limit: int) -> tuple[bytes, str]:
    """Read DATA up to ``<CRLF>.<CRLF>``; return the unstuffed content and "" or an error reply.

    The stream is read with ``readuntil(b".\\r\\n")``: each piece ends where the
    end-of-data line could, so data past the end (pipelined commands) stays in
    the reader.  Over ``size_limit`` or with a line over ``line_limit``, the
    rest is read and dropped, and the reply is 552 or 500 (after the end, as
    RFC 5321 §4.2.5 implies).
    """
    received = io.BytesIO()  # its buffer becomes the content: a list of pieces and their join held it twice
    size = 0
    tail = b"\r\n"  # the two bytes before the next piece: the DATA command's line end at first
    while True:
        try:
            piece = await reader.readuntil(b".\r\n")
            last = (tail + piece[-5:]).endswith(b"\r\n.\r\n")
        except asyncio.LimitOverrunError as overrun:  # no ".\r\n" within the limit: take what cannot end it
            piece = await reader.read(overrun.consumed)
            last = False
        if last:
            piece = piece[:-3]
        size += len(piece)
        if size_limit and size > size_limit:
            received = io.BytesIO()
        else:
            received.write(piece)
        if last:
            break
        tail = (tail + piece)[-2:]
    if size_limit and size > size_limit:
        return b"", TOO_MUCH
    data = received.getvalue()
    del received
    if _has_long_line(data, line_limit):
        return b"", TOO_LONG
    # RFC 5321 §4.5.2: drop each line's leading dot (never more than two copies held)
    if data.startswith(b"."):
        data = data[1:]
    if b"\r\n." in data:
        data = data.replace(b"\r\n.", b"\r\n")
    return data, ""


def _has_long_line(data: bytes, limit: int) -> bool:
    """Whether a line (ended by LF) is longer than ``limit`` bytes; O(len(data)) in C."""
    position, end = 0, len(data)
    while end - position > limit:
        newline = data.rfind(b"\n", position, position + limit + 1)
        if newline == -1:
            return True
        position = newline + 1  # the next window starts past the last line end of this one
    return False


def _no_callback(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    pass


class _Prototype:
    """What aiosmtpd's constructor works out per class, kept for every session of a server."""

    def __init__(self, session: FilterSMTP) -> None:
        reader = asyncio.StreamReader(loop=session.loop)
        base = vars(asyncio.StreamReaderProtocol(reader, client_connected_cb=_no_callback, loop=session.loop))
        skip = {"_smtp_methods", "_auth_methods", "server", "xforward", "busy", "processing"}
        self.settings = {k: v for k, v in vars(session).items() if k not in base and k not in skip}
        self.smtp_verbs = tuple(session._smtp_methods)
        self._auth = dict(session._auth_methods)

    def auth_methods(self, session: FilterSMTP) -> dict[str, Any]:
        """The AUTH mechanisms, with the built-in ones bound to ``session``."""
        return {
            name: type(attr)(getattr(session, attr.method.__name__), True) if attr.is_builtin else attr
            for name, attr in self._auth.items()
        }


class SMTPServer(Server):
    """One worker's running ``smtpd``: the skeleton (:class:`~mailsift.services.server.Server`) and SMTP."""

    service: smtpd

    def __init__(self, service: smtpd, settings: Settings) -> None:
        super().__init__(service, settings)
        self.path = MailPath(service.scanners, settings, service.next_hop)
        self.handler = Handler(self)
        self.prototype: _Prototype | None = None

    def xforward_allowed(self, peer: str) -> bool:
        """Whether the client at ``peer`` may send XFORWARD (on a unix socket: always, its mode guards it)."""
        if self.service.unix_path is not None:
            return True
        return validators.address_in(peer, self.service.xforward_hosts)

    session_class: type[FilterSMTP] = FilterSMTP
    ident = "mailsift"

    def _protocol(self) -> asyncio.Protocol:
        refusal = self.refusal()  # the address's limit is checked when the peer is known (connection_made)
        if refusal:
            return _Refuse(refusal_reply(refusal))
        session = self.session_class(
            self,
            data_size_limit=self.service.max_size,
            enable_SMTPUTF8=True,
            hostname=self.service.hostname or self.settings.hostname,
            ident=self.ident,
            timeout=self.service.timeout,
        )
        if self.prototype is None:
            self.prototype = _Prototype(session)
        return session

    async def start(self, sock: socket.socket) -> None:
        await self.listen(sock, self._protocol)

    def envelope_of(
        self,
        session_protocol: FilterSMTP,
        session: Session,
        envelope: SMTPEnvelope,
        *,
        protocol: str = "",
        rcpt: bool = False,
    ) -> Envelope:
        """The transaction's envelope, with the original client from XFORWARD when given."""
        xf = session_protocol.xforward
        peer = session.peer if isinstance(session.peer, tuple) else ("", 0)
        return Envelope(
            sender="" if envelope.mail_from in (None, "<>") else envelope.mail_from,  # aiosmtpd's null sender
            recipients=list(dict.fromkeys(envelope.rcpt_tos)),  # a repeated RCPT is delivered once
            client_address=xf.get("ADDR", peer[0]),
            client_name=xf.get("NAME", ""),
            helo=xf.get("HELO", session.host_name or ""),
            queue_id=xf.get("IDENT", "") or ("" if rcpt else self.next_queue_id()),
            protocol=xf.get("PROTO", protocol or ("ESMTP" if session.extended_smtp else "SMTP")),
            mail_options=list(envelope.mail_options),
        )

    def log_refusal(self, session_protocol: FilterSMTP, problem: str) -> None:
        """One log line for content refused while it was read (552 too big, 500 a line too long)."""
        assert session_protocol.session is not None
        assert session_protocol.envelope is not None
        env = self.envelope_of(session_protocol, session_protocol.session, session_protocol.envelope)
        log.info(
            "%s refused during DATA: %s from=<%s> to=%s client=%s[%s]",
            env.queue_id,
            problem,
            env.sender,
            ",".join(f"<{r}>" for r in env.recipients),
            env.client_name or "-",
            env.client_address or "-",
        )

    async def process(self, session_protocol: FilterSMTP, session: Session, envelope: SMTPEnvelope) -> str:
        env = self.envelope_of(session_protocol, session, envelope)
        content = b"".join(getattr(envelope, "policy_headers", ())) + (envelope.original_content or b"")
        envelope.content = envelope.original_content = None  # the Mail holds it (or its spool file): not twice
        mail: Mail | None = None
        try:
            mail = Mail(env, content, spool_threshold=self.settings.spool_threshold, spool_dir=self.settings.spool_dir)
            del content  # a big message is in its spool file now: the scan does not carry its bytes too
            _, outcome = await self.path.process(mail)
        except Exception as error:  # noqa: BLE001 - the outermost per-message handler (logs): 451
            return str(failure_reply(env.queue_id, error))
        finally:
            if mail is not None:
                mail.close()
        return str(outcome.reply)

    async def closed(self) -> None:
        await self.path.close()
