"""``icap``: an ICAP server (RFC 3507) that scans HTTP objects for a proxy such as Squid.

SAGATOR scanned downloads as an HTTP proxy of its own (``http_proxy``); the
proxy is Squid's job today, and Squid (like every ICAP client) asks an ICAP
service about each response (RESPMOD: downloads) or request (REQMOD: uploads).
``icap(SCANNERS, '127.0.0.1', 1344)`` answers:

* ``OPTIONS`` on ``icap://host:port/respmod`` and ``/reqmod``: ``Methods``
  (one per service, RFC 3507 §4.10.2), ``Allow: 204``, ``Preview`` and
  ``Transfer-Preview: *`` when ``preview`` is set (not by default: Squid 5
  stalls on big bodies after a preview, see :meth:`_Exchange._commit_early`),
  ``ISTag`` (changes with the config's scanners, so Squid drops what it
  cached under another config), ``Max-Connections`` (the
  per-address limit), ``Options-TTL``;
* ``RESPMOD`` and ``REQMOD``: the HTTP object (the response body; a request
  body such as an upload) is received chunk by chunk and written, never held,
  to two 0600 files in ``STATE_DIR/spool`` (the mail spool, cleaned like it):
  the object itself, and the synthetic message the scanners read (the object
  as a base64 attachment named after the URL's file name, with its
  ``Content-Type``: :class:`~mailsift.services.icap_protocol.ObjectMail`).
  The message runs the shared mail path (:class:`~mailsift.core.mailpath.MailPath`:
  the config's scanners, quarantine copies, hooks, the log line,
  ``MESSAGE_TIMEOUT``); nothing is delivered;
* a clean object: ``204 No Content`` where the client allows it (``Allow:
  204``, or after a preview), else the object sent back as it came, read from
  the spool file in pieces; a request without a body: ``204`` (or its headers
  back).  A download of unknown length or of at least ``early_head`` bytes
  (64 KiB) gets its HTTP head before the scan and its body after it, for
  Squid 5 (bug 5352), with a byte of it sent on after each ``trickle`` seconds
  of silence while it is held (:meth:`_Exchange._trickle`); a finding or
  failure then closes the connection mid-body.  An upload (REQMOD) never: it
  takes the same path (spool files, limits, ``oversize``) but its answer
  waits for the whole body and the verdict, so nothing of it reaches the
  origin before (:meth:`_Exchange._commit_early` says why);
* a finding (a reject, drop or quarantine decision): HTTP ``403`` with an HTML
  block page naming the finding (every value HTML-escaped), and
  ``X-Infection-Found``/``X-Virus-ID`` in the ICAP answer for the proxy's log;
* a scanner failure (any temporary answer of the mail path): ICAP ``500``, so
  the proxy, with ``bypass=off``, refuses the object; ``fail_open=True`` passes
  it instead (logged as unscanned);
* an object larger than ``max_object_size`` (default 16 MiB; the base64 message is a
  third bigger, and clamd's ``StreamMaxLength`` is 25M by default) is not given to
  the scanners: ``oversize="block"`` (default) answers the block page with
  ``Heuristics.Limits.Exceeded.MaxObjectSize``, ``oversize="pass"`` sends it on
  unscanned (logged), streamed: the spooled part, then each piece as it comes, so
  neither memory nor the spool grows with the object.  When the HTTP
  ``Content-Length`` says so, the decision is taken on the preview, before the body
  is sent at all.

Limits (SECURITY.md, "ICAP"): only ``clients`` may connect (default loopback:
other addresses are closed at once, logged); every read is bounded before it
is buffered (``max_header_bytes`` for the ICAP head, ``max_http_header_bytes``
for the encapsulated HTTP heads, checked against ``Encapsulated`` before they
are read; a chunk-size line of at most 1 KiB and 16 hex digits; chunk data read
in 64 KiB pieces straight to the spool file); ``timeout`` seconds per read and
per write; the skeleton's ``max_connections`` and
``max_connections_per_address``; draining never cuts a request being answered.
A protocol error answers the ICAP status (400, 404, 405, 501, 505) and closes.

Why the protocol is written here: no maintained Python ICAP server exists.
``pyicap`` (PyPI 1.0b1, 2017) and its forks (``pyicapserver``,
``icapserver``, ``icapservice``) are blocking ``socketserver`` frameworks, one
thread per connection, reading bodies into memory without limits or
timeouts; ``icapclient``/``icapclient3`` are clients over the C library of
c-icap.  The part mailsift needs (a head, ``Encapsulated`` offsets, chunked
bodies, preview) is small, and written on the skeleton's asyncio streams it
gets the limits, draining and logging every other front end has.  It is
tested against c-icap's ``c-icap-client`` and a real Squid.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import socket
from collections.abc import Sequence
from typing import Any, BinaryIO, Literal, cast

from mailsift.core.mailpath import MailPath, failure_reply
from mailsift.delivery.next_hop import Delivery
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Disposition
from mailsift.services.base import DEFAULT_SOCKET_MODE, Service, check_limit, check_networks, check_seconds
from mailsift.services.icap_protocol import (
    LAST_CHUNK,
    MAX_CHUNK_LINE,
    MAX_HEADER_BYTES,
    MAX_HTTP_HEADER_BYTES,
    PIECE,
    SERVICES,
    HttpHead,
    IcapProtocolError,
    ObjectMail,
    Request,
    block_page,
    chunk,
    content_length,
    date_field,
    header_safe,
    icap_head,
    object_name,
    parse_chunk_line,
    parse_head,
    parse_http_head,
    request_url,
    split_sections,
    spool_file,
)
from mailsift.services.server import Server, SessionConnection, peer_address
from mailsift.settings import Settings
from mailsift.validators import address_in, choice, escape_controls, flag
from mailsift.version import __version__

log = logging.getLogger("mailsift.icap")

LOST = 0
"""The status of an :class:`IcapProtocolError` for a client that closed or reset the connection (no answer)."""

MAX_LINE = 8 * 1024
"""The longest line read (an ICAP head line, a chunk-size line): what one read may buffer before
the line is refused (the streams' limit; a chunk-size line is then held to 1 KiB)."""

TRICKLE_SHARE = 32 * 1024
"""``trickle`` sends at most one byte of a held object per this many bytes received."""

OVERSIZE_NAME = "Heuristics.Limits.Exceeded.MaxObjectSize"
"""The finding named on the block page of an object over ``max_object_size`` (``oversize="block"``)."""

Oversize = Literal["block", "pass"]


class PassBack(Delivery):
    """The mail path's next hop for ICAP: nothing is sent; the proxy keeps the object."""

    def __init__(self) -> None:
        self.passed: set[int] = set()

    async def deliver(self, mail: Mail, message: bytes) -> str:
        self.passed.add(id(mail))
        return "passed back to the ICAP client"

    def take(self, mail: Mail) -> bool:
        if id(mail) in self.passed:
            self.passed.discard(id(mail))
            return True
        return False

    def describe(self) -> str:
        return "ICAP client"


class icap(Service):
    """An ICAP service for Squid and other proxies: ``icap(SCANNERS, '127.0.0.1', 1344)``.

    Services ``icap://host:port/respmod`` (downloads) and ``/reqmod``
    (uploads).  Options: ``clients`` (networks allowed to connect; default
    loopback), ``max_object_size`` (bytes scanned at most, default 16 MiB) and
    ``oversize`` (``"block"``, the default, or ``"pass"``: what a larger
    object gets), ``fail_open`` (default False: a scanner failure answers ICAP
    500; True passes the object unscanned), ``timeout`` (seconds per read or
    write, default 60), ``max_connections`` per worker (default 100),
    ``max_connections_per_address`` (default half of it; advertised as
    ``Max-Connections``), ``exempt_hosts``, ``max_header_bytes`` and
    ``max_http_header_bytes`` (64 KiB each), ``preview`` (bytes asked as
    preview; default None: none), ``early_head`` (bytes, default 64 KiB; None:
    every object waits whole for its verdict), ``trickle`` (seconds of
    silence from the client after which one more byte of an object held after
    its early head is sent, at most one per 32 KiB received, for Squid 5;
    default 1; None: never), ``options_ttl`` (seconds, default 3600).  ``host``
    may name a unix socket (``socket_mode`` and owners as for every service).
    """

    kind = "icap"

    def __init__(
        self,
        scanners: Sequence[Any],
        host: str = "127.0.0.1",
        port: int = 1344,
        *,
        clients: Sequence[str] = ("127.0.0.0/8", "::1"),
        max_object_size: int = 16 * 1024 * 1024,
        oversize: Oversize = "block",
        fail_open: bool = False,
        timeout: float = 60.0,
        max_connections: int = 100,
        max_connections_per_address: int | None = None,
        exempt_hosts: Sequence[str] = (),
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_http_header_bytes: int = MAX_HTTP_HEADER_BYTES,
        preview: int | None = None,
        early_head: int | None = 64 * 1024,
        trickle: float | None = 1.0,
        options_ttl: int = 3600,
        socket_mode: int = DEFAULT_SOCKET_MODE,
        socket_owner: str | int | None = None,
        socket_group: str | int | None = None,
    ) -> None:
        super().__init__(
            scanners, host, port, socket_mode=socket_mode, socket_owner=socket_owner, socket_group=socket_group
        )
        self.clients = check_networks(clients, "clients", self.kind)
        self.max_object_size = check_limit(max_object_size, "max_object_size", self.kind)
        self.oversize = cast(Oversize, choice(oversize, f"{self.kind}: oversize", ("block", "pass")))
        self.fail_open = flag(fail_open, f"{self.kind}: fail_open")
        self.timeout = check_seconds(timeout, "timeout", self.kind)
        self.connection_limits(max_connections, max_connections_per_address, exempt_hosts)
        self.max_header_bytes = check_limit(max_header_bytes, "max_header_bytes", self.kind, minimum=1024)
        self.max_http_header_bytes = check_limit(
            max_http_header_bytes, "max_http_header_bytes", self.kind, minimum=1024
        )
        self.preview = None if preview is None else check_limit(preview, "preview", self.kind, minimum=0)
        self.early_head = None if early_head is None else check_limit(early_head, "early_head", self.kind, minimum=0)
        self.trickle = None if trickle is None else check_seconds(trickle, "trickle", self.kind)
        self.options_ttl = check_limit(options_ttl, "options_ttl", self.kind)

    def client_allowed(self, address: str) -> bool:
        """Whether ``address`` may connect (a unix socket's clients always: its mode decides)."""
        if not address:
            return True
        return address_in(address, self.clients)  # ::ffff:127.0.0.1 (a dual-stack socket) is 127.0.0.1

    def istag(self) -> str:
        """The ``ISTag``: the version and the scanners, so a changed config is a new tag (quoted, <= 32)."""
        described = "\n".join(scanner.describe() for scanner in self.scanners)
        digest = hashlib.sha256(f"{__version__}\n{described}".encode()).hexdigest()[:20]
        return f'"ms-{digest}"'

    def check(self, settings: Settings) -> None:
        """The mail path can be built (scanners, quarantine store); nothing is delivered."""
        MailPath(self.scanners, settings, PassBack())

    async def start(self, sock: socket.socket, settings: Settings) -> IcapServer:
        server = IcapServer(self, settings)
        await server.start(sock)
        return server


class _Connection(SessionConnection):
    """One client connection: its streams, and what the skeleton needs (busy, shut_down, abort)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.peer = peer_address(writer)

    async def _within(self, awaitable: Any) -> Any:
        try:
            return await asyncio.wait_for(awaitable, self.timeout)
        except TimeoutError:
            raise IcapProtocolError(408, f"no data for {self.timeout:g} s") from None
        except ConnectionError:
            raise IcapProtocolError(LOST, "the client closed the connection") from None

    async def head(self, most: int) -> bytes | None:
        """The next ICAP head (up to and with its empty line, at most ``most`` bytes, each line at
        most :data:`MAX_LINE`), or None at EOF between requests."""
        block = bytearray()
        while True:
            try:
                line = await self._within(self.reader.readuntil(b"\r\n"))
            except asyncio.IncompleteReadError as error:
                if not block and not error.partial.strip():
                    return None
                raise IcapProtocolError(400, "connection ended inside an ICAP head") from None
            except asyncio.LimitOverrunError:
                raise IcapProtocolError(400, f"ICAP head line over {MAX_LINE} bytes") from None
            if line == b"\r\n" and not block:
                continue  # a stray CRLF between requests (RFC 7230 3.5)
            block += line
            if len(block) > most:
                raise IcapProtocolError(400, f"ICAP head over {most} bytes")
            if line == b"\r\n":
                return bytes(block)

    async def exactly(self, size: int) -> bytes:
        try:
            return bytes(await self._within(self.reader.readexactly(size)))
        except asyncio.IncompleteReadError:
            raise IcapProtocolError(400, "connection ended inside the encapsulated headers") from None

    async def line(self) -> bytes:
        """A CRLF-ended line of a chunked body (without the CRLF), bounded."""
        try:
            raw = bytes(await self._within(self.reader.readuntil(b"\r\n")))
        except asyncio.IncompleteReadError:
            raise IcapProtocolError(400, "connection ended inside a chunked body") from None
        except asyncio.LimitOverrunError:
            raise IcapProtocolError(400, "chunk-size line too long") from None
        if len(raw) > MAX_CHUNK_LINE + 2:
            raise IcapProtocolError(400, "chunk-size line too long")
        return raw[:-2]

    async def piece(self, most: int) -> bytes:
        data = bytes(await self._within(self.reader.read(most)))
        if not data:
            raise IcapProtocolError(400, "connection ended inside a chunk")
        return data

    async def send(self, *pieces: bytes) -> None:
        self.writer.writelines(pieces)
        try:
            await asyncio.wait_for(self.writer.drain(), self.timeout)
        except TimeoutError:
            raise IcapProtocolError(408, "the client does not read the answer") from None
        except ConnectionError:
            raise IcapProtocolError(LOST, "the client closed the connection") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    def shut_down(self) -> None:
        """Idle while the worker drains: close (ICAP has no goodbye; the client opens another)."""
        self.close()


class _Body:
    """Where an object's bytes go while they arrive: the raw spool file, the scanners' message, a count."""

    def __init__(self, spool_dir: str, object_mail: ObjectMail) -> None:
        fd, self.path = spool_file(spool_dir)
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self.mail = object_mail
        self.size = 0
        self.scanning = True

    def write(self, data: bytes) -> None:
        self.size += len(data)
        self.file.write(data)
        if self.scanning:
            self.mail.write(data)

    def finish(self) -> None:
        self.file.close()
        if self.scanning:
            self.mail.finish()

    def open_raw(self, start: int = 0) -> BinaryIO:
        """The raw object's file from byte ``start``, for reading (while it may still grow)."""
        self.file.flush()
        handle = open(self.path, "rb")  # noqa: SIM115 - the caller's context manager closes it
        handle.seek(start)
        return handle

    def pieces(self, start: int = 0) -> Any:
        """The raw object back from byte ``start``, from its file, in pieces."""
        if not self.file.closed:
            self.file.flush()
        with open(self.path, "rb") as handle:
            handle.seek(start)
            while piece := handle.read(PIECE):
                yield piece

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            self.mail.remove()


class IcapServer(Server):
    """One worker's running ``icap``: the skeleton (:class:`~mailsift.services.server.Server`) and the protocol."""

    service: icap

    def __init__(self, service: icap, settings: Settings) -> None:
        super().__init__(service, settings)
        self.passer = PassBack()
        self.path = MailPath(service.scanners, settings, self.passer)
        self.istag = service.istag()
        self._refused_logged: set[str] = set()

    async def start(self, sock: socket.socket) -> None:
        await self.listen_streams(sock, self._accept, MAX_LINE)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(reader, writer, self.service.timeout)
        if not self.service.client_allowed(connection.peer):
            if connection.peer not in self._refused_logged and len(self._refused_logged) < 1000:
                self._refused_logged.add(connection.peer)
                log.warning("icap: refused client %s: not in clients", connection.peer)
            connection.close()
            return
        refusal = self.refusal(connection.peer)
        if refusal:
            connection.close()  # as the milter and the policy service: the client retries or bypasses
            return
        self.add(connection, connection.peer)
        await self.run_session(connection, lambda: self._session(connection))

    async def session_failed(self, connection: _Connection) -> None:
        with contextlib.suppress(Exception):
            await connection.send(self._head(500, [("Connection", "close")]))

    def _head(self, status: int, fields: Sequence[tuple[str, str]] = ()) -> bytes:
        base = [date_field(), ("Server", f"mailsift/{__version__}"), ("ISTag", self.istag)]
        return icap_head(status, [*base, *fields])

    async def _session(self, connection: _Connection) -> None:
        while True:
            try:
                block = await connection.head(self.service.max_header_bytes)
            except IcapProtocolError as error:
                if error.status not in (408, LOST):  # silent or gone between requests: closed, no answer
                    await self._refuse(connection, error)
                return
            if block is None:
                return
            if not self.begin(connection):
                await connection.send(self._head(503, [("Connection", "close"), ("Encapsulated", "null-body=0")]))
                return
            try:
                keep = await self._request(connection, block)
            except IcapProtocolError as error:
                await self._refuse(connection, error)
                return
            finally:
                self.end(connection)
            if not keep or self.draining:
                return

    async def _refuse(self, connection: _Connection, error: IcapProtocolError) -> None:
        if error.status == LOST:
            log.info("icap: client %s closed the connection in a request", connection.peer or "unix")
            return
        log.info("icap: client %s: %d %s", connection.peer or "unix", error.status, escape_controls(str(error)))
        with contextlib.suppress(Exception):
            await connection.send(self._head(error.status, [("Connection", "close"), ("Encapsulated", "null-body=0")]))

    # ------------------------------------------------------------------ one request

    async def _request(self, connection: _Connection, block: bytes) -> bool:
        """Answer one request; whether the connection stays open."""
        request = parse_head(block)
        method = SERVICES.get(request.service)
        if method is None:
            raise IcapProtocolError(404, f"no ICAP service {request.service[:60]!r} (respmod, reqmod)")
        if request.method == "OPTIONS":
            if request.body not in ("null-body",) and request.encapsulated:
                raise IcapProtocolError(400, "OPTIONS with a body")
            await connection.send(self._options(method))
            return request.keep_alive
        if request.method != method:
            raise IcapProtocolError(405, f"{request.method} on the {request.service} service")
        expected = "res-body" if method == "RESPMOD" else "req-body"
        if request.body not in (expected, "null-body"):
            raise IcapProtocolError(400, f"{method} with {request.body}")
        if method == "RESPMOD" and "res-hdr" not in dict(request.encapsulated):
            raise IcapProtocolError(400, "RESPMOD without res-hdr")
        if method == "REQMOD" and "req-hdr" not in dict(request.encapsulated):
            raise IcapProtocolError(400, "REQMOD without req-hdr")
        if request.header_bytes > self.service.max_http_header_bytes:
            raise IcapProtocolError(400, f"encapsulated HTTP headers over {self.service.max_http_header_bytes} bytes")
        sections = split_sections(request.encapsulated, await connection.exactly(request.header_bytes))
        http_request = parse_http_head(sections["req-hdr"], "request") if "req-hdr" in sections else None
        http_response = parse_http_head(sections["res-hdr"], "response") if "res-hdr" in sections else None
        kept_name = "res-hdr" if method == "RESPMOD" else "req-hdr"
        exchange = _Exchange(self, connection, request, method, sections[kept_name], http_request, http_response)
        await exchange.run()
        return request.keep_alive and exchange.keep

    def _options(self, method: str) -> bytes:
        fields = [
            ("Methods", method),
            ("Service", f"mailsift {__version__} content scanner"),
            ("Max-Connections", str(self.service.max_connections_per_address)),
            ("Options-TTL", str(self.service.options_ttl)),
            ("Allow", "204"),
            ("Encapsulated", "null-body=0"),
        ]
        if self.service.preview is not None:
            fields[-1:-1] = [("Preview", str(self.service.preview)), ("Transfer-Preview", "*")]
        return self._head(200, fields)

    async def closed(self) -> None:
        await self.path.close()


class _Exchange:
    """One REQMOD or RESPMOD: the body read, scanned, answered."""

    def __init__(
        self,
        server: IcapServer,
        connection: _Connection,
        request: Request,
        method: str,
        kept_head: bytes,
        http_request: HttpHead | None,
        http_response: HttpHead | None,
    ) -> None:
        self.server = server
        self.service = server.service
        self.connection = connection
        self.request = request
        self.method = method
        self.kept_head = kept_head
        self.http_request = http_request
        self.object_head = http_response if method == "RESPMOD" else http_request
        self.url = request_url(http_request)
        self.queue_id = server.next_queue_id()
        self.continued = False  # 100 Continue sent (a preview is over)
        self.body: _Body | None = None
        self._left_in_chunk = 0  # an oversized body: bytes of the current chunk still unread
        self._started = False  # an oversized body: inside a chunk whose end is still to read
        self._arrived = asyncio.Event()  # streaming an oversized body: more of it is in the file
        self.committed = False  # the answer's head went out before the scan (early_head)
        self.released = 0  # bytes of the object sent on before its verdict (trickle), from its start
        self.keep = True  # the connection may serve another request

    @property
    def may_204(self) -> bool:
        """204 is allowed: the client said ``Allow: 204``, or it is the answer to a preview."""
        return self.request.allow_204 or (self.request.preview is not None and not self.continued)

    def _note(self, answer: str, finding: str = "", size: int | None = None) -> None:
        log.info(
            "%s icap %s url=%s size=%s answer=%s%s%s",
            self.queue_id,
            self.method,
            escape_controls(self.url) or "-",
            "-" if size is None else size,
            answer,
            f" finding={escape_controls(finding)}" if finding else "",
            f" trickled={self.released}" if self.released else "",
        )

    async def run(self) -> None:
        if self.request.body == "null-body":  # nothing to scan
            self._note("204-no-body" if self.may_204 else "200-no-body")
            await self._pass_without_body()
            return
        name = object_name(self.url, self.object_head.get("content-disposition") if self.object_head else "")
        spool = self.server.settings.spool_dir
        object_mail = ObjectMail(
            spool,
            url=self.url,
            method=self.method,
            content_type=self.object_head.get("content-type") if self.object_head else "",
            name=name,
        )
        try:
            self.body = _Body(spool, object_mail)
        except BaseException:
            object_mail.remove()
            raise
        try:
            await self._run(self.body)
        finally:
            self.body.remove()

    async def _run(self, body: _Body) -> None:
        preview = self.request.preview
        declared = content_length(self.object_head)
        too_big = declared is not None and declared > self.service.max_object_size
        if preview is not None:
            state = await self._read_chunks(body, preview_size=preview)
            if state == "more":
                if too_big:
                    await self._oversize_early(declared or 0)
                    return
                self.continued = True
                await self.connection.send(icap_head(100, []))
        else:
            state = "more"
        if state == "more" and too_big:  # known from Content-Length: answered now, the body follows
            await self._oversize_known(body, declared or 0)
            return
        if state == "more" and self._commit_early():
            self.committed = True
            await self.connection.send(self._echo_head())
        if state == "more":
            async with self._trickling(body):
                state = await self._read_chunks(body, preview_size=None)
        if state == "oversized":
            await self._oversize_late(body)
            return
        body.finish()
        await self._scan(body)

    def _commit_early(self) -> bool:
        """Whether the answer's head goes out now, before the body is in (``early_head``).

        Squid 5 (Debian 12's 5.7; Squid bug 5352) stops reading a response from
        the origin when its 64 KiB buffer toward this service fills while its
        last write to us is in flight, and reads again only when its own client
        takes more of the answer: an answer that has not begun never lets it, and
        a download over 64 KiB may hang.  So for a RESPMOD body of unknown length
        or of at least ``early_head`` bytes, the HTTP head is sent first (the
        client takes it), the body is held for the scan with :meth:`_trickle`
        beside it, and sent after; a finding or a failure then closes the
        connection in the middle of the body (the client gets a broken transfer,
        never the object) instead of the block page.  Smaller bodies are held
        whole: the block page.

        Never for an upload (REQMOD).  Its early head would be the HTTP request
        itself: Squid would open the request to the origin and forward each
        trickled byte, so an infected or refused upload would be cut *at the
        origin*, which has its first bytes and a request that ended early; many
        applications keep what they received (a partial file, a half-read form),
        and for data that must not leave (a DLP scanner) the first bytes are out
        already.  Fail closed means the origin gets nothing before the verdict.
        Nor is it needed: Squid 5.7 reads an upload's body on while the answer
        is held (3 MB uploads with the worker stopped for 2 s after 1 MiB arrive
        whole, tests/integration/test_squid_icap.py; 30 MB chunked, measured).
        What does cut uploads in Squid 5.7 is its bug 5405 (an upload with a
        ``Content-Length`` dies once its 512 KiB request buffer fills, whoever
        reads slowly, the origin too): the service cannot mend that; README,
        "Web scanning", gives the ``squid.conf`` line.
        """
        limit = self.service.early_head
        if self.method != "RESPMOD" or limit is None:
            return False
        declared = content_length(self.object_head)
        return declared is None or declared >= limit

    @contextlib.asynccontextmanager
    async def _trickling(self, body: _Body) -> Any:
        """While a committed body arrives: :meth:`_trickle` beside the reads (nothing otherwise)."""
        if not self.committed or self.service.trickle is None:
            yield
            return
        task = asyncio.get_running_loop().create_task(self._trickle(body, self.service.trickle))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # a send that failed (the client gone, or not reading): its error

    async def _trickle(self, body: _Body, interval: float) -> None:
        """Send one more byte of the held object whenever the client has sent nothing for ``interval`` s.

        Squid 5 (Debian 12's 5.7; Squid bug 5352, fixed upstream in 2024-2025)
        stops reading the origin for good when its 64 KiB buffer toward the ICAP
        service fills while its last write to us is still in flight: it waits for its
        own client to take more of the answer, which never happens while the
        answer's body is held for the scan.  One byte of the object (the next
        one from its start) lets its client take something, and Squid reads
        again.  So a byte goes out only after a silence, and at most one per
        :data:`TRICKLE_SHARE` bytes received (Squid can stall again only after
        refilling that buffer): what reaches the client before the verdict is
        the object's first bytes, at most 1/32768 of what arrived; a finding
        still cuts the transfer (:meth:`_cut`).
        """
        seen = body.size
        while True:
            await asyncio.sleep(interval)
            if body.size != seen or (self.released + 1) * TRICKLE_SHARE > body.size:
                seen = body.size
                continue
            with body.open_raw(self.released) as handle:
                piece = handle.read(1)
            if not piece:
                continue
            self.released += len(piece)  # counted before the send: a cancelled drain has queued it
            await self.connection.send(chunk(piece))

    def _cut(self, answer: str, finding: str = "", size: int | None = None) -> None:
        """The head went out already: end the answer by closing the connection, without the last chunk."""
        self._note(answer, finding, size)
        log.warning(
            "%s icap: %s: the answer's head had gone out (early_head): closing the connection mid-body",
            self.queue_id,
            escape_controls(finding) if finding else answer,
        )
        self.keep = False

    async def _read_chunks(self, body: _Body, preview_size: int | None) -> str:
        """Read chunks up to the last one: ``"complete"`` when the whole body is in (``ieof``, or not
        a preview), ``"more"`` after a preview without ``ieof``, ``"oversized"`` (not in a preview)
        as soon as ``max_object_size`` is passed, the rest unread."""
        limit = self.service.max_object_size
        received = 0
        while True:
            size, ieof = parse_chunk_line(await self.connection.line())
            if size == 0:
                await self._trailer()
                return "complete" if preview_size is None or ieof else "more"
            if preview_size is not None and received + size > preview_size:
                raise IcapProtocolError(400, f"preview longer than the {preview_size} bytes announced")
            received += size
            left = size
            while left:
                data = await self.connection.piece(min(left, PIECE))
                left -= len(data)
                body.write(data)
                if body.size > limit and preview_size is None:
                    body.scanning = False
                    self._left_in_chunk = left
                    return "oversized"
            await self._chunk_end()

    async def _chunk_end(self) -> None:
        if await self.connection.line() != b"":
            raise IcapProtocolError(400, "chunk data longer than its size")

    async def _trailer(self) -> None:
        for _ in range(64):
            if await self.connection.line() == b"":
                return
        raise IcapProtocolError(400, "chunked trailer too long")

    async def _rest(self, keep: _Body | None = None) -> None:
        """The rest of an oversized body: appended to ``keep``'s raw file (not to the scanners'
        message), or read and dropped."""
        left = self._left_in_chunk
        while True:
            while left:
                data = await self.connection.piece(min(left, PIECE))
                left -= len(data)
                if keep is not None:
                    keep.write(data)
                    keep.file.flush()
                    self._arrived.set()
            if self._started:
                await self._chunk_end()
            self._started = True
            size, _ = parse_chunk_line(await self.connection.line())
            if size == 0:
                await self._trailer()
                return
            left = size

    async def _oversize_early(self, declared: int) -> None:
        """Decided on the preview: the client sends nothing more."""
        if self.service.oversize == "pass":
            self._note("204-oversize-unscanned", size=declared)
            await self.connection.send(self.server._head(204))
        else:
            self._note("403", OVERSIZE_NAME, size=declared)
            await self._block(OVERSIZE_NAME)

    async def _stream_through(self, body: _Body) -> None:
        """Send an unscanned object on while the rest of it still arrives.

        Reading and writing run side by side: the rest is appended to the raw
        spool file as it comes and sent on from there, so the client never has
        to wait for this side to write before it may send more (Squid stops
        reading from the origin for good when it cannot hand the body over),
        and memory stays at one piece whatever the object's size (the file
        grows by what the receiver has not taken yet, at most the object).
        """
        self._arrived.set()

        async def read_rest() -> None:
            try:
                await self._rest(body)
            finally:
                self._arrived.set()

        reader = asyncio.get_running_loop().create_task(read_rest())
        try:
            with body.open_raw(self.released) as handle:
                while True:
                    piece = handle.read(PIECE)
                    if piece:
                        await self.connection.send(chunk(piece))
                        continue
                    if reader.done():
                        if reader.exception() is not None or not (piece := handle.read(PIECE)):
                            break
                        await self.connection.send(chunk(piece))
                        continue
                    self._arrived.clear()
                    await self._arrived.wait()
        finally:
            if not reader.done():
                reader.cancel()
        await reader  # a broken or silent client: its error, and the answer is cut
        await self.connection.send(LAST_CHUNK)

    async def _oversize_known(self, body: _Body, declared: int) -> None:
        """``Content-Length`` over ``max_object_size``, no preview: the answer goes out at once (the
        block page, or the object's head for ``oversize="pass"``), then the body is read: forwarded
        as it comes, or dropped."""
        self._left_in_chunk, self._started = 0, False
        if self.service.oversize == "pass":
            await self.connection.send(self._echo_head())
            await self._stream_through(body)
            self._note("200-oversize-unscanned-streamed", size=body.size)
            return
        self._note("403", OVERSIZE_NAME, size=declared)
        await self._block(OVERSIZE_NAME)
        await self._rest()

    async def _oversize_late(self, body: _Body) -> None:
        """Over ``max_object_size`` while it arrived: streamed on unscanned, or dropped and blocked."""
        self._started = True  # inside a chunk: its end is still to read, after what is left of it
        if self.committed and self.service.oversize == "block":
            self._cut("cut-oversize", OVERSIZE_NAME, size=body.size)
            return
        if self.service.oversize == "pass" and (self.committed or not self.request.allow_204):
            if not self.committed:
                await self.connection.send(self._echo_head())
            await self._stream_through(body)
            self._note("200-oversize-unscanned-streamed", size=body.size)
            return
        await self._rest()
        if self.service.oversize == "pass":
            self._note("204-oversize-unscanned")
            await self.connection.send(self.server._head(204))
        else:
            self._note("403", OVERSIZE_NAME)
            await self._block(OVERSIZE_NAME)

    # ------------------------------------------------------------------ scanning and answers

    async def _scan(self, body: _Body) -> None:
        envelope = Envelope(sender="", recipients=[], queue_id=self.queue_id, protocol="ICAP")
        envelope.client_address = _client_ip(self.request.get("x-client-ip"))
        mail: Mail | None = None
        try:
            mail = Mail(envelope, path=body.mail.path)
            decision, outcome = await self.server.path.process(mail)
            passed = self.server.passer.take(mail)
        except Exception as error:  # noqa: BLE001 - the outermost per-object handler (logs): ICAP 500
            failure_reply(self.queue_id, error)
            await self._failed(body, "error")
            return
        finally:
            if mail is not None:
                self.server.passer.take(mail)
        if 400 <= outcome.reply.code < 500 or (decision.disposition is Disposition.DELIVER and not passed):
            await self._failed(body, decision.result.name or str(outcome.reply.code))
            return
        if decision.disposition is Disposition.DELIVER:
            self._note("pass", decision.result.name if decision.result.detected else "", size=body.size)
            await self._pass(body)
            return
        name = decision.result.name or decision.disposition.value
        if self.committed:
            self._cut("cut", name, size=body.size)
            return
        self._note("403", name, size=body.size)
        await self._block(name)

    async def _failed(self, body: _Body, why: str) -> None:
        if self.service.fail_open:
            log.warning("%s icap: the scan failed (%s): passed UNSCANNED (fail_open=True)", self.queue_id, why)
            await self._pass(body)
            return
        if self.committed:
            self._cut("cut-error", why, size=body.size)
            return
        self._note("500", size=body.size)
        await self.connection.send(self.server._head(500, [("Encapsulated", "null-body=0")]))

    async def _pass(self, body: _Body) -> None:
        if self.committed:
            for piece in body.pieces(self.released):
                await self.connection.send(chunk(piece))
            await self.connection.send(LAST_CHUNK)
            return
        if self.may_204:
            await self.connection.send(self.server._head(204))
            return
        await self.connection.send(self._echo_head())
        for piece in body.pieces():
            await self.connection.send(chunk(piece))
        await self.connection.send(LAST_CHUNK)

    def _echo_head(self) -> bytes:
        head = "res-hdr" if self.method == "RESPMOD" else "req-hdr"
        kind = "res-body" if self.method == "RESPMOD" else "req-body"
        return self.server._head(200, [("Encapsulated", f"{head}=0, {kind}={len(self.kept_head)}")]) + self.kept_head

    async def _pass_without_body(self) -> None:
        if self.may_204:
            await self.connection.send(self.server._head(204))
            return
        head = "res-hdr" if self.method == "RESPMOD" else "req-hdr"
        fields = [("Encapsulated", f"{head}=0, null-body={len(self.kept_head)}")]
        await self.connection.send(self.server._head(200, fields) + self.kept_head)

    async def _block(self, name: str) -> None:
        what = "download" if self.method == "RESPMOD" else "upload"
        page_head, page = block_page(name, self.url, self.queue_id, what)
        safe = header_safe(name).replace(";", ",")
        fields = [
            ("X-Infection-Found", f"Type=0; Resolution=2; Threat={safe};"),
            ("X-Virus-ID", safe),
            ("Encapsulated", f"res-hdr=0, res-body={len(page_head)}"),
        ]
        await self.connection.send(self.server._head(200, fields), page_head, chunk(page), LAST_CHUNK)


def _client_ip(value: str) -> str:
    """The HTTP client's address from ``X-Client-IP`` (Squid's ``icap_send_client_ip``), if it is one."""
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return ""
