"""``milter``: the before-queue front end for Sendmail and Postfix (``smtpd_milters``).

The MTA keeps the message and the SMTP client waits: mailsift collects the
transaction (connection, HELO, envelope, macros such as the queue id ``{i}``,
headers, body — bounded by ``max_size``), runs the shared mail path at end of
message, and answers with the decision:

=====================  ==================================================
decision               milter answer
=====================  ==================================================
deliver                the header/subject/body edits, then ACCEPT
reject                 SMFIR_REPLYCODE with mailsift's reply (``550 ...``)
tempfail, any failure  SMFIR_REPLYCODE ``451 ...``: the client retries
drop                   DISCARD
quarantine             DISCARD (the copy is fsynced in mailsift's store
                       first); with ``quarantine_hold=True``,
                       SMFIR_QUARANTINE + ACCEPT: the MTA holds it too
=====================  ==================================================

Edits are not hand-made: the mail path's "delivery" here is :class:`KeptByMTA`,
which records the final message the disposition step built (the same
``apply_edits`` as every front end), and :func:`edits` turns the difference from
what the MTA sent into milter actions — added fields (SMFIR_ADDHEADER), changed
fields such as the Subject (SMFIR_CHGHEADER; a removed field is a CHGHEADER to
the empty value: ``remove_headers``, ``modify_header``), and a changed body
(SMFIR_REPLBODY: ``sanitize``).  Added fields are appended to the header block (the MTA
decides where; Postfix puts them last).  The recipients the final message went
to (``deliver_to``) become SMFIR_DELRCPT for each one dropped and
SMFIR_ADDRCPT for each one added (:func:`recipient_edits`).  Where the MTA
did not allow an edit that keeps a detection from its recipients (a
recipient change, any edit of a sanitized message: its body, or the
Content-Type its notice needs), the message is answered 451, never
accepted as it came; other refused edits are logged.

Every MAIL and RCPT address is checked by
:func:`mailsift.message.address.address_problem`: a bad one (CR/LF, controls,
brackets, over-long, no domain) is answered ``501`` (at RCPT when the MTA wants an answer
there, else at end of message) and never stored, so it cannot reach a release.
Listening, the connection limit, draining and queue ids are the server
skeleton's (:mod:`mailsift.services.server`).

The wire protocol is in :mod:`mailsift.services.milter_protocol`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine, Sequence
from typing import Any

from mailsift import replies, validators
from mailsift.core.mailpath import MailPath, failure_reply
from mailsift.delivery.next_hop import Delivery
from mailsift.errors import ConfigError
from mailsift.message.address import address_problem
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Decision, Disposition
from mailsift.replies import Reply
from mailsift.services import milter_protocol as mp
from mailsift.services.base import Service, check_limit, check_seconds
from mailsift.services.rcptpolicy import RcptPolicy, checked_policy
from mailsift.services.server import Server, peer_address
from mailsift.settings import Settings
from mailsift.validators import escape_controls

log = logging.getLogger("mailsift.milter")

TOO_MANY_RECIPIENTS = replies.TOO_MANY_RECIPIENTS
MAX_RECIPIENTS = 1000
"""Default ``max_recipients``: recipients kept per message (more: 452 at end of message)."""
MAX_MACROS = 256
"""Macros kept per stage (more in one packet: the rest are ignored)."""
MAX_MACRO_STAGE_BYTES = 64 * 1024
"""Default ``max_macro_stage_bytes``: bytes of macro names and values in one stage's SMFIC_MACRO."""
MAX_MACRO_BYTES = 256 * 1024
"""Default ``max_macro_bytes``: macro bytes held per connection, all stages together."""
MAX_HEADERS = 1000
"""Default ``max_headers``: header fields per message."""
MAX_HEADER_BYTES = 1024 * 1024
"""Default ``max_header_bytes``: bytes of the header block per message."""
MAX_NAME = 1024
"""HELO and the CONNECT host name are cut to this many characters (a host name has at most 255)."""
MAX_MAIL_OPTIONS = 32
"""ESMTP parameters of MAIL kept (each at most :data:`MAX_NAME` characters)."""
PROGRESS_INTERVAL = 10.0
"""Default ``progress_interval``: seconds between SMFIR_PROGRESS packets while a message is scanned."""
MACROS_TOO_BIG = Reply(451, "4.7.0", "Too much milter macro data from the MTA")
HEADER_TOO_BIG = Reply(552, "5.3.4", "Message header too large")
_CONNECTION_STAGES = (mp.SMFIC_CONNECT, mp.SMFIC_HELO)
"""Macros of these stages last for the connection; the others for one message."""

WANTED_ACTIONS = (
    mp.SMFIF_ADDHDRS | mp.SMFIF_CHGHDRS | mp.SMFIF_CHGBODY | mp.SMFIF_QUARANTINE | mp.SMFIF_ADDRCPT | mp.SMFIF_DELRCPT
)
EDITS_REFUSED = Reply(451, "4.7.1", "The MTA did not allow the filter's edits to this message")
WANTED_PROTOCOL = (
    # steps we do not need
    mp.SMFIP_NOUNKNOWN
    | mp.SMFIP_NODATA
    # steps we never answer before end of message: one round trip per message, not per header
    | mp.SMFIP_NR_CONN
    | mp.SMFIP_NR_HELO
    | mp.SMFIP_NR_MAIL
    | mp.SMFIP_NR_RCPT
    | mp.SMFIP_NR_HDR
    | mp.SMFIP_NR_EOH
    | mp.SMFIP_NR_BODY
    | mp.SMFIP_NR_DATA
    | mp.SMFIP_NR_UNKN
)


def parse_connection(connection: Any) -> tuple[str, str, int]:
    """libmilter's socket syntax: ``inet:PORT@HOST``, ``inet6:PORT@HOST``, ``unix:/path`` (``local:``).

    Returns ``("inet", host, port)`` or ``("unix", path, 0)``.  ``inet:PORT``
    alone listens on every address, as libmilter does.
    """
    if not isinstance(connection, str) or ":" not in connection:
        raise ConfigError(
            f"milter: connection must look like 'inet:3333@127.0.0.1' or 'unix:/path', got {connection!r}"
        )
    kind, _, rest = connection.partition(":")
    kind = kind.lower()
    if kind in ("unix", "local"):
        if not rest.startswith("/"):
            raise ConfigError(f"milter: unix socket path must be absolute, got {rest!r}")
        return "unix", rest, 0
    if kind in ("inet", "inet6"):
        port_text, _, host = rest.partition("@")
        host = host.strip("[]") or ("::" if kind == "inet6" else "0.0.0.0")  # libmilter's meaning
        if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
            raise ConfigError(f"milter: bad port in {connection!r} (expected inet:PORT@HOST)")
        return "inet", host, int(port_text)
    raise ConfigError(f"milter: unknown socket type {kind!r} in {connection!r} (inet, inet6, unix)")


class milter(Service):
    """Milter front end: ``milter(SCANNERS, 'mailsift', 'inet:3333@127.0.0.1')``.

    ``name`` is the milter's name in logs; ``connection`` is libmilter's socket
    syntax (``inet:PORT@HOST``, ``unix:/path``); ``umask`` sets a unix socket's
    permissions (default 0o117: read/write for owner and group — put the MTA's
    user in mailsift's group).  Options: ``max_size`` (bytes of headers and body;
    larger mail is refused with 552, default 50 MB), ``timeout`` (seconds of MTA
    silence before the connection is closed, default 300), ``max_connections``
    per worker (default 500), ``max_connections_per_address`` per worker and
    MTA address (default half of ``max_connections``), ``exempt_hosts``
    (networks held to ``max_connections`` only; default none), ``quarantine_hold`` (also ask the MTA to hold
    quarantined mail — Postfix's hold queue — instead of discarding it),
    ``progress_interval`` (seconds between SMFIR_PROGRESS packets while a
    message is scanned, default 10: the MTA's milter timeout — Postfix's
    ``milter_content_timeout``, Sendmail's ``T=E:`` — then bounds the silence,
    not the whole scan; ``None`` sends none).

    What one MTA connection may make mailsift hold is bounded, so a peer on
    the milter socket cannot fill a worker's memory: ``max_macro_stage_bytes``
    (macro names and values sent for one stage, default 64 KiB) and
    ``max_macro_bytes`` (all stages held at once, default 256 KiB) — beyond
    them the macros are not kept and the message gets ``451 4.7.0`` at end of
    message; ``max_headers`` (default 1000) and ``max_header_bytes`` (default
    1 MiB) per message — beyond them ``552 5.3.4``; ``max_recipients``
    (default 1000) — beyond it ``452 4.5.3``.  Each refusal is logged.  All of
    it is dropped at end of message, ABORT and when the connection closes.

    ``recipient_policy`` (:mod:`mailsift.services.rcptpolicy`): each RCPT is
    answered by it (the milter then asks the MTA to wait for that answer).
    """

    kind = "milter"

    def __init__(
        self,
        scanners: Sequence[Any],
        name: str = "mailsift",
        connection: str = "inet:3333@127.0.0.1",
        umask: int = 0o117,
        *,
        max_size: int = 50 * 1024 * 1024,
        timeout: float = 300.0,
        max_connections: int = 500,
        max_connections_per_address: int | None = None,
        exempt_hosts: Sequence[str] = (),
        quarantine_hold: bool = False,
        max_macro_stage_bytes: int = MAX_MACRO_STAGE_BYTES,
        max_macro_bytes: int = MAX_MACRO_BYTES,
        max_headers: int = MAX_HEADERS,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_recipients: int = MAX_RECIPIENTS,
        socket_owner: str | int | None = None,
        socket_group: str | int | None = None,
        recipient_policy: RcptPolicy | None = None,
        progress_interval: float | None = PROGRESS_INTERVAL,
    ) -> None:
        family, where, port = parse_connection(connection)
        umask = validators.permission_bits(umask, "milter: umask", unit="an integer like 0o117")
        host = f"unix:{where}" if family == "unix" else where
        super().__init__(
            scanners, host, port, socket_mode=0o777 & ~umask, socket_owner=socket_owner, socket_group=socket_group
        )
        if not isinstance(name, str) or not name:
            raise ConfigError(f"milter: name must be a non-empty string, got {name!r}")
        max_size = check_limit(max_size, "max_size", self.kind, minimum=1024)
        timeout = check_seconds(timeout, "timeout", self.kind)
        self.connection_limits(max_connections, max_connections_per_address, exempt_hosts)
        self.name, self.connection, self.family, self.path = name, connection, family, where
        self.umask, self.max_size, self.timeout = umask, max_size, timeout
        self.quarantine_hold = bool(quarantine_hold)
        self.max_macro_stage_bytes = check_limit(
            max_macro_stage_bytes, "max_macro_stage_bytes", self.kind, minimum=1024
        )
        self.max_macro_bytes = check_limit(max_macro_bytes, "max_macro_bytes", self.kind, minimum=1024)
        self.max_headers = check_limit(max_headers, "max_headers", self.kind, minimum=1)
        self.max_header_bytes = check_limit(max_header_bytes, "max_header_bytes", self.kind, minimum=1024)
        self.max_recipients = check_limit(max_recipients, "max_recipients", self.kind, minimum=1)
        self.recipient_policy = checked_policy(recipient_policy, self.kind)
        self.progress_interval = (
            None if progress_interval is None else check_seconds(progress_interval, "progress_interval", self.kind)
        )

    def describe(self) -> str:
        return f"milter({self.name}, {self.connection})"

    def check(self, settings: Settings) -> None:
        """Validate what needs the global settings (the mail path: no next hop is needed)."""
        MailPath(self.scanners, settings, KeptByMTA())
        if self.recipient_policy is not None:
            self.recipient_policy.check(settings)

    def bind_settings(self, settings: Settings) -> None:
        if self.recipient_policy is not None:
            self.recipient_policy.bind_settings(settings)

    def recorder(self) -> KeptByMTA:
        """The mail path's "next hop", which records the final message (a subclass may rewrite it)."""
        return KeptByMTA()

    async def start(self, sock: socket.socket, settings: Settings) -> MilterServer:
        server = MilterServer(self, settings)
        await server.start(sock)
        return server


class KeptByMTA(Delivery):
    """The milter's "next hop": the MTA keeps the message; this records the final bytes for :func:`edits`."""

    def __init__(self) -> None:
        self.final: dict[int, bytes] = {}
        self.recipients: dict[int, list[str]] = {}

    def describe(self) -> str:
        return "milter"

    async def deliver(self, mail: Mail, message: bytes) -> str:
        self.final[id(mail)] = message
        self.recipients[id(mail)] = list(mail.envelope.recipients)
        return "kept by the MTA"

    def take(self, mail: Mail) -> bytes | None:
        return self.final.pop(id(mail), None)

    def take_recipients(self, mail: Mail) -> list[str] | None:
        """The recipients the final message went to (``deliver_to`` may have changed them)."""
        return self.recipients.pop(id(mail), None)


# --------------------------------------------------------------------------- edits


def split_message(raw: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The header fields ``(name, value)`` (value unfolded to ``\\n`` + whitespace) and the body."""
    end = raw.find(b"\r\n\r\n")
    lf_end = raw.find(b"\n\n")
    if end == -1 or (lf_end != -1 and lf_end < end):
        head, body = (raw[:lf_end], raw[lf_end + 2 :]) if lf_end != -1 else (raw, b"")
    else:
        head, body = raw[:end], raw[end + 4 :]
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\n"):
        line = line.rstrip(b"\r")
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\n" + line)
        elif b":" in line:
            name, _, value = line.partition(b":")
            fields.append((name.strip(), value[1:] if value.startswith(b" ") else value))
    return fields, body


def edits(original: bytes, final: bytes, allowed: int) -> tuple[list[bytes], list[str]]:
    """Milter packets that turn ``original`` into ``final``, and the edits ``allowed`` forbids.

    Fields are compared name by name, occurrence by occurrence (the milter
    addresses a field by name and index): a changed one is SMFIR_CHGHEADER, an
    extra one SMFIR_ADDHEADER, a missing one a CHGHEADER to the empty value
    (highest index first, so the indexes stay valid).  A changed body is
    SMFIR_REPLBODY.
    """
    old_fields, old_body = split_message(original)
    new_fields, new_body = split_message(final)
    packets: list[bytes] = []
    refused: list[str] = []

    def grouped(fields: list[tuple[bytes, bytes]]) -> dict[bytes, list[tuple[bytes, bytes]]]:
        groups: dict[bytes, list[tuple[bytes, bytes]]] = {}
        for name, value in fields:
            groups.setdefault(name.lower(), []).append((name, value))
        return groups

    old, new = grouped(old_fields), grouped(new_fields)
    for key in dict.fromkeys([*new, *old]):
        before, after = old.get(key, []), new.get(key, [])
        for index, (name, value) in enumerate(after):
            if index >= len(before):
                if _allow(allowed, mp.SMFIF_ADDHDRS, f"add {name!r}", refused):
                    packets.append(mp.add_header(name, value))
            elif before[index][1] != value and _allow(allowed, mp.SMFIF_CHGHDRS, f"change {name!r}", refused):
                packets.append(mp.change_header(name, index + 1, value))
        for index in range(len(before) - 1, len(after) - 1, -1):
            name = before[index][0]
            if _allow(allowed, mp.SMFIF_CHGHDRS, f"remove {name!r}", refused):
                packets.append(mp.change_header(name, index + 1, b""))
    if new_body != old_body and _allow(allowed, mp.SMFIF_CHGBODY, "replace the body", refused):
        packets.extend(mp.replace_body(new_body))
    return packets, refused


def recipient_edits(original: Sequence[str], final: Sequence[str], allowed: int) -> tuple[list[bytes], list[str]]:
    """SMFIR_DELRCPT for each recipient of ``original`` not in ``final``, SMFIR_ADDRCPT for each new one."""
    packets: list[bytes] = []
    refused: list[str] = []
    before = {address.lower() for address in original}
    after = {address.lower() for address in final}
    for address in final:
        if address.lower() not in before and _allow(allowed, mp.SMFIF_ADDRCPT, f"add <{address}>", refused):
            packets.append(mp.packet(mp.SMFIR_ADDRCPT, _bracketed(address)))
    for address in original:
        if address.lower() not in after and _allow(allowed, mp.SMFIF_DELRCPT, f"remove <{address}>", refused):
            packets.append(mp.packet(mp.SMFIR_DELRCPT, _bracketed(address)))
    return packets, refused


def _bracketed(address: str) -> bytes:
    return b"<" + address.encode("utf-8", "surrogateescape") + b">\0"


def _allow(allowed: int, flag: int, what: str, refused: list[str]) -> bool:
    if allowed & flag:
        return True
    refused.append(what)
    return False


# --------------------------------------------------------------------------- sessions


class MilterServer(Server):
    """One worker's running ``milter``: the skeleton (:class:`~mailsift.services.server.Server`) and the milter."""

    service: milter

    def __init__(self, service: milter, settings: Settings) -> None:
        super().__init__(service, settings)
        self.delivery = service.recorder()
        self.path = MailPath(service.scanners, settings, self.delivery)

    async def start(self, sock: socket.socket) -> None:
        await self.listen_streams(sock, self._connected, mp.MAX_PACKET)

    def queue_id(self) -> str:
        """A queue id for the log when the MTA sent none (Postfix sends ``{i}``)."""
        return self.next_queue_id()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = peer_address(writer)
        if self.refusal(address):
            writer.close()  # the MTA applies its milter_default_action (tempfail, we advise)
            return
        session = MilterSession(self, reader, writer)
        self.add(session, address)
        try:
            await session.run()
        finally:
            self.discard(session)

    async def closed(self) -> None:
        await self.path.close()


class MilterSession:
    """One MTA connection: the state of its SMTP session and current message."""

    def __init__(self, server: MilterServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.service = server.service
        self.reader, self.writer = reader, writer
        self.options = mp.NOT_NEGOTIATED
        self.busy = False
        self._reset_connection()

    def _reset_connection(self) -> None:
        self.macros: dict[bytes, dict[str, str]] = {}
        """Macros by the command they came with (``SMFIC_MACRO``'s first byte)."""
        self.macro_bytes: dict[bytes, int] = {}
        """Bytes of each stage's macros held (bounded by ``max_macro_stage_bytes`` and ``max_macro_bytes``)."""
        self.macro_overflow: set[bytes] = set()
        """Stages whose macros were over a limit and not kept: their message gets 451 at end of message."""
        self.connect = mp.ConnectInfo("", "U", 0, "")
        self.helo = ""
        self._reset_message()

    def _reset_message(self) -> None:
        """Forget the message and its macros (end of message, ABORT, new connection)."""
        for stage in list(self.macros):
            if stage not in _CONNECTION_STAGES:
                del self.macros[stage]
                self.macro_bytes.pop(stage, None)
        self.macro_overflow.intersection_update(_CONNECTION_STAGES)
        self._new_message()

    def _new_message(self) -> None:
        """Forget the message's data, keeping macros (those of MAIL arrive just before it)."""
        self.sender = ""
        self.policy_headers: list[bytes] = []  # from recipient_policy (X-Greylist): added to the message
        self.bad_address: Reply | None = None
        self.mail_options: list[str] = []
        self.recipients: list[str] = []
        self.too_many_recipients = False
        self.head: list[bytes] = []
        self.body: list[bytes] = []
        self.size = 0
        self.too_big = False
        self.headers = 0
        self.header_bytes = 0
        self.header_too_big = False

    def close(self) -> None:
        self.writer.close()

    def shut_down(self) -> None:
        """The worker drains: close (the MTA applies its milter_default_action); never inside a message."""
        self.writer.close()

    def abort(self) -> None:
        self.writer.close()

    async def run(self) -> None:
        try:
            while True:
                try:
                    command, data = await asyncio.wait_for(mp.read_packet(self.reader), self.service.timeout)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the MTA closed the connection
                except TimeoutError:
                    log.info("%s: MTA silent for %.0f s, closing", self.service.name, self.service.timeout)
                    return
                answer = await self.handle(command, data)
                if answer is None:
                    return
                if answer:
                    self.writer.write(b"".join(answer))
                    await self.writer.drain()
                if command in _TRANSACTION_ENDS:
                    self.server.end(self)  # the answer is out: a draining worker closes the connection now
                if self.writer.is_closing():
                    return
        except mp.MilterProtocolError as error:
            log.warning("%s: protocol error from the MTA, closing: %s", self.service.name, error)
        except ConnectionError:
            pass
        finally:
            self.writer.close()

    def _continue(self, command: bytes) -> list[bytes]:
        return [mp.packet(mp.SMFIR_CONTINUE)] if self.options.replies_to(command) else []

    async def handle(self, command: bytes, data: bytes) -> list[bytes] | None:
        """The packets answering one command; None to close the connection."""
        if command == mp.SMFIC_OPTNEG:
            offer = mp.parse_optneg(data)
            wanted = WANTED_PROTOCOL & ~mp.SMFIP_NR_RCPT if self.service.recipient_policy else WANTED_PROTOCOL
            self.options = mp.negotiate(offer, WANTED_ACTIONS, wanted)
            log.debug(
                "%s: MTA offers version %d actions %#x protocol %#x; agreed %s", self.service.name, *offer, self.options
            )
            return [mp.optneg_reply(self.options)]
        if command == mp.SMFIC_MACRO:
            self._keep_macros(data)
            return []
        if command == mp.SMFIC_CONNECT:
            info = mp.parse_connect(data)
            self.connect = mp.ConnectInfo(info.hostname[:MAX_NAME], info.family, info.port, info.address[:MAX_NAME])
            self._reset_message()
        elif command == mp.SMFIC_HELO:
            self.helo = mp.text(mp.strings(data)[0][: MAX_NAME * 4])[:MAX_NAME] if data else ""
        elif command == mp.SMFIC_MAIL:
            if not self.server.begin(self):
                return None  # draining: no new message; the MTA applies milter_default_action (tempfail)
            self._new_message()
            self.sender, options = mp.parse_address(data)
            self.mail_options = [option for option in options if len(option) <= MAX_NAME][:MAX_MAIL_OPTIONS]
            if address_problem(self.sender, allow_empty=True, need_domain=True):
                return self._refuse_address(command, replies.BAD_SENDER, self.sender)
        elif command == mp.SMFIC_RCPT:
            recipient, _ = mp.parse_address(data)
            if address_problem(recipient, need_domain=True):
                return self._refuse_address(command, replies.BAD_RECIPIENT, recipient)
            policy = self.service.recipient_policy
            if policy is not None and self.options.replies_to(command):  # answered now (a failure: 451)
                reply = await policy.decide(self.envelope(), recipient, self.policy_headers)
                if not reply.is_positive:
                    return [_reply(reply)]
            if len(self.recipients) < self.service.max_recipients:
                self.recipients.append(recipient)
            else:
                self.too_many_recipients = True
        elif command == mp.SMFIC_HEADER:
            name, value = mp.parse_header(data)
            value = value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            self._keep_header(name + b": " + value + b"\r\n")
        elif command == mp.SMFIC_BODY:
            self._keep(self.body, data)
        elif command == mp.SMFIC_BODYEOB:
            self._keep(self.body, data)
            try:
                if self.bad_address is not None:
                    return [_reply(self.bad_address)]
                return await self.with_progress(self.end_of_message())
            finally:
                self._reset_message()
        elif command == mp.SMFIC_ABORT:
            self._reset_message()
            return []
        elif command == mp.SMFIC_QUIT:
            return None
        elif command == mp.SMFIC_QUIT_NC:  # the connection is reused for a new SMTP session
            self._reset_connection()
            return []
        elif command not in (mp.SMFIC_EOH, mp.SMFIC_DATA, mp.SMFIC_UNKNOWN):
            raise mp.MilterProtocolError(f"unknown command {command!r}")
        return self._continue(command)

    def _refuse_address(self, command: bytes, reply: Reply, address: str) -> list[bytes]:
        """A bad MAIL/RCPT address: answered now if the MTA waits for this step, else at end of message."""
        log.warning("%s: refusing a bad address %.80r (%s)", self.service.name, address, reply.text)
        if command == mp.SMFIC_MAIL:
            self.sender = ""
        if self.options.replies_to(command):
            if command == mp.SMFIC_MAIL:  # the MTA refuses this message: none is in progress
                self.bad_address = reply
                self.server.end(self)
            return [_reply(reply)]
        self.bad_address = reply
        return []

    def _keep_macros(self, data: bytes) -> None:
        """SMFIC_MACRO: keep the stage's macros unless they are over a limit (then keep none of them).

        The size is checked before the packet is parsed, so an oversized one is
        never turned into strings; the stage's earlier macros are dropped too.
        """
        if not data:
            raise mp.MilterProtocolError("empty MACRO packet")
        stage, size = data[:1], len(data) - 1
        held = sum(self.macro_bytes.values()) - self.macro_bytes.get(stage, 0)
        service = self.service
        if size > service.max_macro_stage_bytes or held + size > service.max_macro_bytes:
            self.macros.pop(stage, None)
            self.macro_bytes.pop(stage, None)
            if stage not in self.macro_overflow:
                self.macro_overflow.add(stage)
                log.warning(
                    "%s: MTA sent %d bytes of macros for stage %r (limits: %d per stage, %d per connection): "
                    "not kept; the message gets %s",
                    service.name,
                    size,
                    stage.decode("ascii", "replace"),
                    service.max_macro_stage_bytes,
                    service.max_macro_bytes,
                    MACROS_TOO_BIG.code,
                )
            return
        stage, macros = mp.parse_macros(data)
        self.macros[stage] = dict(list(macros.items())[:MAX_MACROS])
        self.macro_bytes[stage] = size

    def _keep_header(self, field: bytes) -> None:
        """One header field, unless the message is over ``max_headers`` or ``max_header_bytes``."""
        self.headers += 1
        self.header_bytes += len(field)
        if self.header_too_big:
            self.size += len(field)
            return
        if self.headers > self.service.max_headers or self.header_bytes > self.service.max_header_bytes:
            self.header_too_big = True
            self.size += len(field)
            self.head.clear()  # the message is refused: hold nothing more of it
            self.body.clear()
            return
        self._keep(self.head, field)

    def macro(self, name: str) -> str:
        """A macro's latest value (``i`` for ``{i}``), '' when the MTA did not send it."""
        for values in reversed(self.macros.values()):
            if name in values:
                return values[name]
        return ""

    def _keep(self, parts: list[bytes], data: bytes) -> None:
        """Store ``data`` unless the message is over ``max_size`` (then keep counting, store nothing)."""
        self.size += len(data)
        if self.header_too_big:
            return
        if self.size > self.service.max_size:
            if not self.too_big:
                self.head.clear()
                self.body.clear()
            self.too_big = True
        elif data:
            parts.append(data)

    def envelope(self) -> Envelope:
        name = self.macro("client_name") or self.connect.hostname
        if name.startswith("["):  # Sendmail's placeholder for a client without a name
            name = ""
        return Envelope(  # macros and names escaped: a CR/LF or ESC reaches neither log nor database
            sender=self.sender,
            recipients=list(self.recipients),
            client_address=escape_controls(self.macro("client_addr") or self.connect.address),
            client_name=escape_controls(name),
            helo=escape_controls(self.helo),
            queue_id=escape_controls(self.macro("i")) or self.server.queue_id(),
            protocol="ESMTP",
            mail_options=list(self.mail_options),
        )

    async def with_progress(self, work: Coroutine[Any, Any, list[bytes]]) -> list[bytes]:
        """``work``'s answer; meanwhile an SMFIR_PROGRESS every ``progress_interval`` seconds.

        Each progress packet restarts the MTA's wait for the end-of-message
        answer (Postfix's ``milter_content_timeout``, Sendmail's ``T=E:``), so a
        scan may outlast it.  Progress stops before the answer is written; an
        MTA that went away stops it too (the message is still processed to its
        end: a quarantine is never left half done).
        """
        interval = self.service.progress_interval
        if interval is None:
            return await work
        task = asyncio.ensure_future(work)
        try:
            while not (await asyncio.wait({task}, timeout=interval))[0]:
                try:
                    self.writer.write(mp.progress())
                    await self.writer.drain()
                except ConnectionError:
                    log.info("%s: the MTA went away during a scan", self.service.name)
                    return await task
            return task.result()
        finally:
            task.cancel()  # only if this session itself is cancelled (worker stop): the work goes with it

    async def end_of_message(self) -> list[bytes]:
        """Run the mail path and turn the decision into the milter's final answer.

        The outermost per-message handler: whatever fails on the way is logged
        with the queue id and answered with a temporary failure (451).
        """
        env = self.envelope()
        refused = self.refusal()
        if refused is not None:
            refusal, reason = refused
            log.info(
                "%s: %s: refused at end of message: %s %s from=<%s> client=%s[%s]",
                env.queue_id,
                reason,
                refusal.code,
                refusal.text,
                env.sender,
                env.client_name or "-",
                env.client_address or "-",
            )
            return [_reply(refusal)]
        raw = b"".join(self.head) + b"\r\n" + b"".join(self.body)
        settings = self.server.settings
        mail: Mail | None = None
        try:
            added = b"".join(self.policy_headers)  # scanned as delivered; edits() sends them as SMFIR_ADDHEADER
            mail = Mail(env, added + raw, spool_threshold=settings.spool_threshold, spool_dir=settings.spool_dir)
            decision, outcome = await self.server.path.process(mail)
            final = self.server.delivery.take(mail)
            recipients = self.server.delivery.take_recipients(mail)
            if not outcome.reply.is_positive:
                return [_reply(outcome.reply)]
            return self.final_answer(env, raw, decision, final, recipients)
        except Exception as error:  # noqa: BLE001 - the outermost per-message handler (logs)
            return [_reply(failure_reply(env.queue_id, error))]
        finally:
            if mail is not None:
                self.server.delivery.take(mail)
                self.server.delivery.take_recipients(mail)
                mail.close()

    def refusal(self) -> tuple[Reply, str] | None:
        """The reply and reason when the message went over a limit (nothing of it is scanned)."""
        service = self.service
        if self.macro_overflow:
            stages = ",".join(sorted(stage.decode("ascii", "replace") for stage in self.macro_overflow))
            return MACROS_TOO_BIG, f"macros over their limit (stages {stages})"
        if self.header_too_big:
            return HEADER_TOO_BIG, (
                f"header over its limits ({self.headers} fields, {self.header_bytes} bytes; "
                f"max_headers {service.max_headers}, max_header_bytes {service.max_header_bytes})"
            )
        if self.too_big:
            return replies.TOO_BIG, f"message over max_size ({service.max_size} bytes)"
        if self.too_many_recipients:
            return TOO_MANY_RECIPIENTS, f"too many recipients (max_recipients {service.max_recipients})"
        return None

    def final_answer(
        self, env: Envelope, raw: bytes, decision: Decision, final: bytes | None, recipients: list[str] | None = None
    ) -> list[bytes]:
        disposition = decision.disposition
        if disposition is Disposition.DELIVER:
            allowed = self.options.actions
            packets, refused = edits(raw, final, allowed) if final is not None else ([], [])
            moved, unmoved = ([], []) if recipients is None else recipient_edits(env.recipients, recipients, allowed)
            vital = unmoved + (refused if decision.sanitized is not None else [])  # half a sanitized message: no
            if vital:  # delivering as it came would hand a detection to its recipients
                log.error("%s: the MTA did not allow these edits: %s: answered 451", env.queue_id, ", ".join(vital))
                return [_reply(EDITS_REFUSED)]
            if refused:
                log.warning("%s: the MTA did not allow these edits: %s", env.queue_id, ", ".join(refused))
            return [*packets, *moved, mp.packet(mp.SMFIR_ACCEPT)]
        if disposition is Disposition.QUARANTINE and self.service.quarantine_hold:
            if self.options.actions & mp.SMFIF_QUARANTINE:
                result = decision.result
                reason = f"mailsift: {result.name or 'quarantined'} ({result.scanner or '-'})"
                return [mp.quarantine(reason), mp.packet(mp.SMFIR_ACCEPT)]
            log.warning("%s: the MTA does not allow SMFIR_QUARANTINE: discarding instead", env.queue_id)
        return [mp.packet(mp.SMFIR_DISCARD)]  # drop, or quarantined in mailsift's own store


_TRANSACTION_ENDS = (mp.SMFIC_BODYEOB, mp.SMFIC_ABORT, mp.SMFIC_QUIT_NC)
"""After these the connection has no message in progress."""


def _reply(reply: Reply) -> bytes:
    return mp.reply_code(reply.code, reply.status, reply.text)
