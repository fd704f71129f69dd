"""``smtpd``: the after-queue SMTP content filter (SAGATOR §5.1), on aiosmtpd.

Postfix (or any MTA) hands each message over SMTP; mailsift scans it, carries
the decision out, and only then answers: 250 after the next hop accepted (or
the drop/quarantine was done), 550 on reject, 451 on any failure.

Beyond aiosmtpd's own EHLO, SIZE, 8BITMIME and SMTPUTF8, this adds:

* ``PIPELINING`` — aiosmtpd reads commands in order, so pipelined clients work;
* ``XFORWARD`` — Postfix passes the original client (NAME, ADDR, PROTO, HELO,
  IDENT, SOURCE); accepted only from ``xforward_hosts`` (loopback by default);
* a connection limit (421 beyond it) and an idle timeout;
* SMTP smuggling: DATA ends only at ``<CRLF>.<CRLF>`` (aiosmtpd ≥ 1.4.5 reads
  data lines up to CRLF), and the next hop gets CRLF-normalised, dot-stuffed
  data (aiosmtplib), so a bare ``\\n.\\n`` can never end a message early.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections.abc import Sequence
from typing import Any

from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SMTPEnvelope

from mailsift import replies
from mailsift.errors import ConfigError
from mailsift.mail import Envelope, Mail
from mailsift.services.base import MailPath, Service, Settings

log = logging.getLogger("mailsift.smtpd")

IDLE_GRACE = 1.0
"""While draining, seconds of silence after which a session not in a transaction is closed."""

XFORWARD_ATTRIBUTES = ("NAME", "ADDR", "PROTO", "HELO", "IDENT", "SOURCE")
_XTEXT = re.compile(r"\+([0-9A-Fa-f]{2})")


def xtext_decode(value: str) -> str:
    return _XTEXT.sub(lambda m: chr(int(m.group(1), 16)), value)


class smtpd(Service):
    """SMTP content filter: ``smtpd(SCANNERS, '127.0.0.1', 10024)``.

    Options: ``next_hop`` (``('host', port)``, ``smtp_relay(...)`` or
    ``local_maildir(...)``; default ``SMTP_SERVER``), ``max_size`` (bytes,
    advertised as SIZE; default 50 MB), ``max_connections`` per worker (default
    500), ``timeout`` (idle seconds, default 300), ``xforward_hosts`` (networks
    allowed to send XFORWARD; default loopback), ``hostname`` (greeting name).
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
        timeout: float = 300.0,
        xforward_hosts: Sequence[str] = ("127.0.0.0/8", "::1/128"),
        hostname: str | None = None,
    ) -> None:
        super().__init__(scanners, host, port)
        if not isinstance(max_size, int) or max_size < 1024:
            raise ConfigError(f"smtpd: max_size must be an integer of at least 1024 bytes, got {max_size!r}")
        if not isinstance(max_connections, int) or max_connections < 1:
            raise ConfigError(f"smtpd: max_connections must be a positive integer, got {max_connections!r}")
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError(f"smtpd: timeout must be a positive number of seconds, got {timeout!r}")
        try:
            self.xforward_hosts = tuple(ipaddress.ip_network(n, strict=False) for n in xforward_hosts)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"smtpd: bad xforward_hosts: {error}") from None
        self.prefork = prefork  # accepted for SAGATOR configs; workers are set by `serve --workers`
        self.next_hop = next_hop
        self.max_size, self.max_connections, self.timeout = max_size, max_connections, float(timeout)
        self.hostname = hostname

    def check(self, settings: Settings) -> None:
        """Validate what needs the global settings (the next hop)."""
        MailPath(self.scanners, settings, self.next_hop)

    async def start(self, sock: socket.socket, settings: Settings) -> SMTPServer:
        server = SMTPServer(self, settings)
        await server.start(sock)
        return server


class _Refuse(asyncio.Protocol):
    """Answers 421 and hangs up: used beyond the connection limit."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(f"{replies.TOO_MANY_CONNECTIONS}\r\n".encode())
        transport.close()


class FilterSMTP(SMTP):
    """aiosmtpd's SMTP session with XFORWARD and drain support."""

    line_length_limit = 16384  # lenient: RFC 5321 says 1000, real mail is longer; still bounded

    def __init__(self, server: SMTPServer, **kwargs: Any) -> None:
        super().__init__(server.handler, **kwargs)
        self.server = server
        self.xforward: dict[str, str] = {}
        self.busy = False
        self.last_active = 0.0

    def touch(self) -> None:
        self.last_active = asyncio.get_running_loop().time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.touch()
        self.server.sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.server.sessions.discard(self)
        super().connection_lost(error)

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
            attributes[key.upper()] = xtext_decode(value)
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
        server.touch()
        extra = ["250-PIPELINING"]
        peer = session.peer[0] if isinstance(session.peer, tuple) else ""
        if self.server.xforward_allowed(peer):
            extra.append("250-XFORWARD " + " ".join(XFORWARD_ATTRIBUTES))
        return responses[:-1] + extra + responses[-1:]

    async def handle_MAIL(  # noqa: N802
        self, server: FilterSMTP, session: Session, envelope: SMTPEnvelope, address: str, options: list[str]
    ) -> str:
        # While draining, a session that already started still gets its transaction
        # done (a 421 here would make Postfix defer the mail for minutes); it is
        # closed after DATA.
        server.touch()
        if not _plausible_address(address, allow_empty=True):
            return str(replies.BAD_SENDER)
        server.busy = True
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(  # noqa: N802
        self, server: FilterSMTP, session: Session, envelope: SMTPEnvelope, address: str, options: list[str]
    ) -> str:
        server.touch()
        if not _plausible_address(address, allow_empty=False):
            return str(replies.BAD_RECIPIENT)
        if len(envelope.rcpt_tos) >= 1000:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Ok"

    async def handle_RSET(self, server: FilterSMTP, session: Session, envelope: SMTPEnvelope) -> str:  # noqa: N802
        server.busy = False
        return "250 2.0.0 Ok"

    async def handle_DATA(  # noqa: N802
        self, server: FilterSMTP, session: Session, envelope: SMTPEnvelope
    ) -> str:
        try:
            return await self.server.process(server, session, envelope)
        finally:
            server.busy = False
            server.touch()
            if self.server.draining:
                asyncio.get_running_loop().call_later(0.05, _close, server)


def _plausible_address(address: str, *, allow_empty: bool) -> bool:
    """Refuse what cannot be relayed safely: brackets, spaces, controls, overlong."""
    if not address:
        return allow_empty
    too_long = len(address) > 512
    return not (too_long or any(ch in '<>"\\' or not ch.isprintable() or ch.isspace() for ch in address))


def _close(session: FilterSMTP) -> None:
    if session.transport is not None:
        session.transport.close()


class SMTPServer:
    """One worker's running ``smtpd``: the listening server and its sessions."""

    def __init__(self, service: smtpd, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.path = MailPath(service.scanners, settings, service.next_hop)
        self.handler = Handler(self)
        self.sessions: set[FilterSMTP] = set()
        self.draining = False
        self._server: asyncio.base_events.Server | None = None
        self._counter = 0

    def xforward_allowed(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.service.xforward_hosts)

    def _protocol(self) -> asyncio.Protocol:
        if len(self.sessions) >= self.service.max_connections or self.draining:
            return _Refuse()
        return FilterSMTP(
            self,
            data_size_limit=self.service.max_size,
            enable_SMTPUTF8=True,
            hostname=self.service.hostname or self.settings.hostname,
            ident="mailsift",
            timeout=self.service.timeout,
        )

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, sock=sock, backlog=1024)

    def _queue_id(self) -> str:
        self._counter += 1
        return f"{socket.gethostname()[:8]}-{id(self) & 0xFFFF:04x}-{self._counter}"

    async def process(self, session_protocol: FilterSMTP, session: Session, envelope: SMTPEnvelope) -> str:
        xf = session_protocol.xforward
        peer = session.peer if isinstance(session.peer, tuple) else ("", 0)
        env = Envelope(
            sender=envelope.mail_from or "",
            recipients=list(envelope.rcpt_tos),
            client_address=xf.get("ADDR", peer[0]),
            client_name=xf.get("NAME", ""),
            helo=xf.get("HELO", session.host_name or ""),
            queue_id=xf.get("IDENT", "") or self._queue_id(),
            protocol=xf.get("PROTO", "ESMTP" if session.extended_smtp else "SMTP"),
            mail_options=list(envelope.mail_options),
        )
        content = envelope.original_content or b""
        mail = Mail(env, content, spool_threshold=self.settings.spool_threshold, spool_dir=self.settings.spool_dir)
        try:
            _, outcome = await self.path.process(mail)
        except Exception:
            log.exception("queue_id=%s: unexpected error; answering 451", env.queue_id)
            return str(replies.TEMPFAIL)
        finally:
            mail.close()
        return str(outcome.reply)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let open transactions finish (up to ``timeout``), close the rest.

        Sessions idle for over :data:`IDLE_GRACE` seconds get a 421 and are closed;
        a session that is active (just connected, or inside a transaction) gets
        to finish one transaction and is closed after its DATA reply.
        """
        self.draining = True
        if self._server is not None:
            self._server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.sessions and loop.time() < deadline:
            now = loop.time()
            for session in list(self.sessions):
                if not session.busy and now - session.last_active > IDLE_GRACE:
                    if isinstance(session.transport, asyncio.Transport):
                        session.transport.write(f"{replies.SHUTTING_DOWN}\r\n".encode())
                    _close(session)
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            _close(session)
        await self.path.close()
