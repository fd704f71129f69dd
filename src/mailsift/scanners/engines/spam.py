"""Spam scanners: SpamAssassin's ``spamd`` (SPAMC protocol) and rspamd (HTTP ``/checkv2``).

Both give ``level = score / required``, so ``1.0`` is exactly the engine's own
spam threshold and ``12.3/5.0`` is ``2.46``; operators can then scale or
compare spam levels like any other level (SAGATOR README §4).  The result is a
:class:`SpamResult`: a :class:`~mailsift.message.result.Result` that also carries the
engine's score, threshold, rule names (symbols), rspamd's action and
SpamAssassin's full text report, for later header actions.

Messages over ``max_size`` are not sent at all (level 0, detail ``not
checked: over max_size``), which is what ``spamc`` does with its 500 KiB
default: spam filters are slow on big mail and spammers do not send big mail.

A daemon that is down raises :class:`~mailsift.errors.ScannerUnavailable`, one
that does not answer in ``timeout`` seconds :class:`~mailsift.errors.ScannerTimeout`,
and an answer that cannot be read :class:`~mailsift.errors.ScannerError`: the
message is tempfailed, never passed unchecked by accident.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import httpx

from mailsift.errors import ConfigError, ScannerError, ScannerTimeout, ScannerUnavailable
from mailsift.message.result import Result
from mailsift.scanners.base import Scanner, Target

SPAMC_MAX_SIZE = 512_000
"""``spamc``'s default ``-s``: 500 KiB; bigger messages are not checked."""

RSPAMD_MAX_SIZE = 20 * 1024 * 1024
"""A bigger default for rspamd, which is fast on big mail (its own limit is 50 MB)."""

_MAX_ANSWER = 4 * 1024 * 1024
"""No spam daemon's answer (a report, a symbol list) is bigger; a longer one is malformed."""

_MAX_HEAD = 64 * 1024
"""Bound on the SPAMD status line and headers."""


@dataclass(frozen=True, slots=True)
class SpamResult(Result):
    """A spam engine's verdict, with what a header action may want to show.

    ``report`` is SpamAssassin's text report (``REPORT`` verb), empty for rspamd
    or with ``report=False``; ``symbols`` are the rule names hit; ``action`` is
    rspamd's action (``reject``, ``add header``, ...), empty for SpamAssassin.
    Operators build plain :class:`Result` objects, so these fields are only seen
    on the scanner's own result (and on action wrappers directly around it).
    """

    score: float = 0.0
    required: float = 0.0
    symbols: tuple[str, ...] = ()
    report: str = ""
    action: str = ""


def _positive(value: Any, what: str, *, integer: bool = False) -> Any:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0 or not math.isfinite(value):
        raise ConfigError(f"{what} must be a positive {'integer' if integer else 'number'}, got {value!r}")
    return value


def _level(score: float, required: float, spam: bool) -> float:
    """``score / required``; a zero or negative threshold is read as "spam or not"."""
    if required > 0:
        return score / required
    return 1.0 if spam else 0.0


def _not_checked(scanner: str, size: int, max_size: int) -> SpamResult:
    return SpamResult(0.0, "", scanner, f"not checked: over max_size ({size} > {max_size} bytes)")


# =========================================================================== SpamAssassin


SpamdAddress = tuple[str, int] | str


def spamd_address(address: Any) -> SpamdAddress:
    """Check SAGATOR's address forms: ``['127.0.0.1', 783]`` / ``('host', port)`` or a unix socket path."""
    if isinstance(address, str):
        if not address or "\0" in address:
            raise ConfigError(f"spamassassind: bad unix socket path {address!r}")
        return address
    if isinstance(address, list | tuple) and len(address) == 2:
        host, port = address
        valid_port = isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536
        if isinstance(host, str) and host and valid_port:
            return (host, port)
    raise ConfigError(f"spamassassind: address must be [host, port] or a unix socket path, got {address!r}")


@dataclass(frozen=True, slots=True)
class SpamdAnswer:
    """What spamd said: its verdict line ``Spam: True ; 12.3 / 5.0`` and the body."""

    spam: bool
    score: float
    required: float
    body: str


_STATUS = re.compile(rb"SPAMD/(\d+)\.(\d+) +(\d+) +([^\r\n]*)")
_SPAM_HEADER = re.compile(r"(True|False|Yes|No) *; *(-?\d+(?:\.\d+)?) */ *(-?\d+(?:\.\d+)?)")
_REPORT_LINE = re.compile(r"^ *(-?\d+(?:\.\d+)?) +([A-Za-z0-9_]+)(?: |$)", re.MULTILINE)


def parse_spamd_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    """Split a SPAMD answer's head into (code, message, headers); raise on anything else."""
    lines = head.split(b"\r\n")
    status = _STATUS.fullmatch(lines[0])
    if status is None:
        raise ScannerError(f"spamassassind: malformed answer {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            raise ScannerError(f"spamassassind: malformed header line {line[:80]!r}")
        headers[name.strip().decode("ascii", "replace").lower()] = value.strip().decode("utf-8", "replace")
    return int(status.group(3)), status.group(4).decode("utf-8", "replace"), headers


def parse_spamd_answer(code: int, message: str, headers: dict[str, str], body: bytes) -> SpamdAnswer:
    """Read spamd's verdict; a non-zero code (``76 Bad header line``...) is a ScannerError."""
    if code != 0:
        raise ScannerError(f"spamassassind: spamd answered {code} {message}".rstrip())
    spam = _SPAM_HEADER.fullmatch(headers.get("spam", ""))
    if spam is None:
        raise ScannerError(f"spamassassind: answer without a valid Spam header: {headers.get('spam')!r}")
    return SpamdAnswer(
        spam.group(1) in ("True", "Yes"),
        float(spam.group(2)),
        float(spam.group(3)),
        body.decode("utf-8", "replace"),
    )


def report_symbols(report: str) -> tuple[str, ...]:
    """The rule names of SpamAssassin's report table (``pts rule name description``).

    Only lines under the ``---- ----`` rule of the table are read, so numbers in
    the content preview above it are not taken for rules.  A site that replaces
    the ``report`` template with one without that table gets no names (the
    score is unaffected); use ``report=False`` (the ``SYMBOLS`` verb) there.
    """
    _, rule, table = report.replace("\r\n", "\n").partition("\n---- ")
    if not rule:
        return ()
    table = table.partition("\n")[2]
    return tuple(dict.fromkeys(m.group(2) for m in _REPORT_LINE.finditer(table)))


class spamassassind(Scanner):
    """SpamAssassin's ``spamd``: ``spamassassind(['127.0.0.1', 783])``.

    ``user`` is ``spamc -u``: spamd loads that user's preferences (with
    ``--virtual-config-dir``, SQL or LDAP preferences).  ``report=True`` asks
    for the full text report (``REPORT`` verb; rule names are read from its
    table); ``report=False`` asks only for the rule names (``SYMBOLS`` verb).
    A detection is named ``virname`` (``Spam``).
    """

    name = "spamassassind"

    def __init__(
        self,
        address: Any = ("127.0.0.1", 783),
        user: str | None = None,
        *,
        max_size: int = SPAMC_MAX_SIZE,
        timeout: float = 120.0,
        report: bool = True,
        virname: str = "Spam",
    ) -> None:
        self.address = spamd_address(address)
        if user is not None and (not isinstance(user, str) or not re.fullmatch(r"[^\s\x00-\x1f\x7f]{1,256}", user)):
            raise ConfigError(f"spamassassind: user must be a name without spaces or control characters, got {user!r}")
        self.user = user
        self.max_size = _positive(max_size, "spamassassind: max_size", integer=True)
        self.timeout = float(_positive(timeout, "spamassassind: timeout"))
        if not isinstance(report, bool):
            raise ConfigError(f"spamassassind: report must be True or False, got {report!r}")
        self.verb = "REPORT" if report else "SYMBOLS"
        if not isinstance(virname, str) or not virname:
            raise ConfigError(f"spamassassind: virname must be a non-empty string, got {virname!r}")
        self.virname = virname

    def where(self) -> str:
        return self.address if isinstance(self.address, str) else f"{self.address[0]}:{self.address[1]}"

    def describe(self) -> str:
        user = f", user={self.user!r}" if self.user else ""
        return f"spamassassind({self.where()}{user}, max_size={self.max_size}, {self.verb})"

    def request(self, data: bytes) -> bytes:
        """The SPAMC/1.5 request head for ``data`` (the body follows it unchanged)."""
        head = f"{self.verb} SPAMC/1.5\r\nContent-length: {len(data)}\r\n"
        if self.user:
            head += f"User: {self.user}\r\n"
        return (head + "\r\n").encode("utf-8")

    async def scan(self, target: Target) -> Result:
        if target.size > self.max_size:
            return _not_checked(self.name, target.size, self.max_size)
        data = target.data
        try:
            async with asyncio.timeout(self.timeout):
                answer = await self._exchange(data)
        except TimeoutError:
            raise ScannerTimeout(f"spamassassind: no answer from {self.where()} in {self.timeout:g} s") from None
        symbols = report_symbols(answer.body) if self.verb == "REPORT" else _symbol_list(answer.body)
        level = _level(answer.score, answer.required, answer.spam)
        detail = f"score={answer.score:g} required={answer.required:g} tests={','.join(symbols)}"
        return SpamResult(
            level,
            self.virname if level >= 1.0 else "",
            self.name,
            detail,
            score=answer.score,
            required=answer.required,
            symbols=symbols,
            report=answer.body if self.verb == "REPORT" else "",
        )

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            if isinstance(self.address, str):
                return await asyncio.open_unix_connection(self.address, limit=_MAX_HEAD)
            return await asyncio.open_connection(*self.address, limit=_MAX_HEAD)
        except OSError as error:
            raise ScannerUnavailable(f"spamassassind: cannot connect to {self.where()}: {error}") from None

    async def _exchange(self, data: bytes) -> SpamdAnswer:
        # The SPAMC protocol is written here on asyncio streams because no
        # maintained asynchronous client exists on PyPI (the sync ones block a
        # worker for the whole scan).  It is small: one request head with
        # Content-length and User, the message, then a SPAMD/1.1 status line,
        # headers (Content-length, Spam: True ; 12.3 / 5.0) and a body.
        reader, writer = await self._connect()
        try:
            try:
                writer.write(self.request(data))
                writer.write(data)
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()  # as spamc does: the whole message has been sent
            except OSError:
                pass  # spamd may have answered and closed early (an error): read what it said
            return await self._read_answer(reader)
        except OSError as error:
            raise ScannerError(f"spamassassind: connection to {self.where()} lost: {error}") from None
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    async def _read_answer(self, reader: asyncio.StreamReader) -> SpamdAnswer:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as error:
            if not error.partial:
                raise ScannerError(f"spamassassind: {self.where()} closed the connection without an answer") from None
            # spamd's protocol errors are one status line, then it closes.
            code, message, headers = parse_spamd_head(error.partial.rstrip(b"\r\n"))
            if code != 0:
                parse_spamd_answer(code, message, headers, b"")  # raises with spamd's own words
            raise ScannerError(f"spamassassind: answer cut short after {error.partial[:80]!r}") from None
        except asyncio.LimitOverrunError:
            raise ScannerError(f"spamassassind: answer head over {_MAX_HEAD} bytes") from None
        code, message, headers = parse_spamd_head(head[:-4])
        if code != 0:
            return parse_spamd_answer(code, message, headers, b"")
        length_text = headers.get("content-length")
        if length_text is None:
            body = await reader.read(_MAX_ANSWER + 1)
            if len(body) > _MAX_ANSWER or (not reader.at_eof() and await reader.read(1)):
                raise ScannerError(f"spamassassind: answer body over {_MAX_ANSWER} bytes")
        else:
            if not length_text.isdigit() or int(length_text) > _MAX_ANSWER:
                raise ScannerError(f"spamassassind: bad Content-length {length_text[:40]!r} in answer")
            try:
                body = await reader.readexactly(int(length_text))
            except asyncio.IncompleteReadError as error:
                raise ScannerError(
                    f"spamassassind: answer cut short ({len(error.partial)} of {length_text} bytes)"
                ) from None
        return parse_spamd_answer(code, message, headers, body)


def _symbol_list(body: str) -> tuple[str, ...]:
    return tuple(name for name in (part.strip() for part in body.split(",")) if name)


# =========================================================================== rspamd


_ENVELOPE_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def _header_value(value: str) -> bytes:
    """An envelope value as an HTTP header value: UTF-8 (SMTPUTF8 addresses), no control characters."""
    return _ENVELOPE_UNSAFE.sub("", value).encode("utf-8")


class rspamd(Scanner):
    """rspamd over HTTP: ``rspamd('http://127.0.0.1:11333')``.

    The message goes to ``/checkv2`` with the envelope as rspamd's request
    headers (From, Rcpt, IP, Helo, Hostname, Queue-Id).  ``level = score /
    required_score`` (rspamd's reject threshold); a ``reject`` action is always
    at least ``1.0``, so rspamd's own forced rejects are detections too.

    The result's name is rspamd's action (``reject``, ``rewrite subject``,
    ``add header``, ``greylist``, ``soft reject``), empty for ``no action``.  So
    ``add_header('X-Spam', 'Yes', rspamd(url)).onlyif('add header|rewrite subject')``
    and ``modify_subject('[SPAM] ', 'rewrite subject', rspamd(url))`` follow
    rspamd's own actions under the reject threshold.  ``headers`` adds fixed
    request headers (``Settings-ID``, ``Password``...).
    """

    name = "rspamd"

    def __init__(
        self,
        url: str = "http://127.0.0.1:11333",
        *,
        max_size: int = RSPAMD_MAX_SIZE,
        timeout: float = 60.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        if not isinstance(url, str):
            raise ConfigError(f"rspamd: url must be a string, got {url!r}")
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as error:
            raise ConfigError(f"rspamd: bad url {url!r}: {error}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(f"rspamd: url must be http://host[:port][/checkv2], got {url!r}")
        if parsed.path in ("", "/"):
            parsed = parsed.copy_with(path="/checkv2")
        self.url = str(parsed)
        self.max_size = _positive(max_size, "rspamd: max_size", integer=True)
        self.timeout = float(_positive(timeout, "rspamd: timeout"))
        extra = headers or {}
        if not isinstance(extra, dict) or not all(
            isinstance(k, str)
            and re.fullmatch(r"[!-9;-~]+", k)
            and isinstance(v, str)
            and not _ENVELOPE_UNSAFE.search(v)
            for k, v in extra.items()
        ):
            raise ConfigError(f"rspamd: headers must be a dict of header names to one-line strings, got {headers!r}")
        self.extra_headers = dict(extra)
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def describe(self) -> str:
        return f"rspamd({self.url}, max_size={self.max_size})"

    def client(self) -> httpx.AsyncClient:
        """The HTTP client of the running event loop (kept for connection reuse).

        A client belongs to one loop; a worker has one loop for its life, but
        tests and reloads may bring another, which gets a new client.
        """
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop or self._client.is_closed:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), trust_env=False)
            self._loop = loop
        return self._client

    async def close_resources(self) -> None:
        """Close the pooled connections (at worker shutdown, and in tests)."""
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = None

    def request_headers(self, target: Target) -> list[tuple[bytes, bytes]]:
        """rspamd's envelope headers for this message (absent values are not sent)."""
        envelope = target.mail.envelope
        headers: list[tuple[bytes, bytes]] = []
        pairs = [
            ("From", envelope.sender),
            *(("Rcpt", rcpt) for rcpt in envelope.recipients),
            ("IP", envelope.client_address),
            ("Helo", envelope.helo),
            ("Hostname", envelope.client_name if envelope.client_name not in ("", "unknown") else ""),
            ("Queue-Id", envelope.queue_id),
            *self.extra_headers.items(),
        ]
        for name, value in pairs:
            if value:
                headers.append((name.encode("ascii"), _header_value(value)))
        return headers

    async def scan(self, target: Target) -> Result:
        if target.size > self.max_size:
            return _not_checked(self.name, target.size, self.max_size)
        data = target.data
        try:
            async with asyncio.timeout(self.timeout):
                body = await self._post(data, self.request_headers(target))
        except TimeoutError:
            raise ScannerTimeout(f"rspamd: no answer from {self.url} in {self.timeout:g} s") from None
        return self.result(body)

    async def _post(self, data: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        try:
            async with self.client().stream("POST", self.url, content=data, headers=headers) as response:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > _MAX_ANSWER:
                        raise ScannerError(f"rspamd: answer over {_MAX_ANSWER} bytes")
                    chunks.append(chunk)
                body = b"".join(chunks)
                if response.status_code != 200:
                    raise ScannerError(f"rspamd: HTTP {response.status_code}: {_error_text(body)}")
                return body
        except httpx.TimeoutException:
            raise ScannerTimeout(f"rspamd: no answer from {self.url} in {self.timeout:g} s") from None
        except httpx.ConnectError as error:
            raise ScannerUnavailable(f"rspamd: cannot connect to {self.url}: {error}") from None
        except httpx.HTTPError as error:
            raise ScannerError(f"rspamd: {type(error).__name__}: {error}") from None

    def result(self, body: bytes) -> SpamResult:
        """Read a ``/checkv2`` JSON answer into a result; anything unexpected is a ScannerError."""
        try:
            answer = json.loads(body)
        except (ValueError, RecursionError):
            raise ScannerError(f"rspamd: answer is not JSON: {body[:80]!r}") from None
        if not isinstance(answer, dict):
            raise ScannerError(f"rspamd: answer is not a JSON object: {body[:80]!r}")
        score, required, action = (
            _float(answer.get("score")),
            _float(answer.get("required_score")),
            answer.get("action"),
        )
        if score is None or required is None or not isinstance(action, str):
            raise ScannerError(f"rspamd: answer without score, required_score and action: {body[:120]!r}")
        symbols = answer.get("symbols", {})
        if not isinstance(symbols, dict):
            raise ScannerError("rspamd: 'symbols' in the answer is not an object")
        scored: list[tuple[str, float]] = []
        for name, symbol in symbols.items():
            value = symbol.get("score", 0.0) if isinstance(symbol, dict) else 0.0
            scored.append((str(name), _float(value) or 0.0))
        scored.sort(key=lambda item: (-abs(item[1]), item[0]))
        level = _level(score, required, action == "reject")
        if action == "reject":
            level = max(level, 1.0)
        skipped = " skipped" if answer.get("is_skipped") is True else ""
        detail = (
            f"action={action} score={score:g} required={required:g}{skipped} "
            f"symbols={','.join(f'{n}({s:g})' for n, s in scored)}"
        )
        return SpamResult(
            level,
            "" if action == "no action" else action,
            self.name,
            detail,
            score=score,
            required=required,
            symbols=tuple(n for n, _ in scored),
            action=action,
        )


def _float(value: Any) -> float | None:
    """A JSON number as a float; None for anything else (strings, booleans, NaN)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _error_text(body: bytes) -> str:
    """rspamd's ``{"error": "..."}``, else the start of the body."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        return str(answer["error"])[:200]
    return repr(body[:80])
