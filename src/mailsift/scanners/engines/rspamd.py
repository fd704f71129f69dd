"""rspamd over HTTP (``/checkv2``): ``rspamd('http://127.0.0.1:11333')``.

A list of URLs is a pool of rspamd workers (:mod:`.pool`):
``rspamd(['http://10.0.0.2:11333', 'http://10.0.0.3:11333'])``, balanced by
fewest outstanding requests, a failed one taken out and let back in by its
``GET /ping`` (answered ``pong``).

``level = score / required_score`` (rspamd's reject threshold), as for
:mod:`.spamassassin`; the result is a
:class:`~mailsift.scanners.engines.common.SpamResult` whose ``action`` is
rspamd's.  The message goes with the SMTP envelope as rspamd's request
headers; the HTTP client (httpx) is pooled per event loop
(:class:`~mailsift.scanners.engines.common.PerLoop`).

httpx is imported only when an rspamd scanner is built: a worker whose config
has no rspamd never loads it.

Messages over ``max_size`` are not sent (level 0, ``not checked: over
max_size``).  Keep ``max_size`` at or under rspamd's own ``max_message``
(50 MB by default): rspamd closes the connection without an answer on a bigger
message, which can only be read as rspamd gone (a tempfail).  Failures are
mapped by :mod:`.common`, as for every engine: rspamd down, or the connection
closed or reset before the answer ended ->
:class:`~mailsift.errors.ScannerUnavailable`, no answer in ``timeout`` seconds
-> :class:`~mailsift.errors.ScannerTimeout`, an HTTP error or an answer that
cannot be read -> :class:`~mailsift.errors.ScannerError`.
"""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any

from mailsift.errors import ConfigError, ScannerError, ScannerTimeout, ScannerUnavailable
from mailsift.message.result import Result
from mailsift.scanners.base import Scanner, Target
from mailsift.scanners.engines.common import (
    PerLoop,
    SizeLimit,
    SpamResult,
    deadline,
    no_answer,
    not_checked,
    spam_level,
    unavailable,
)
from mailsift.scanners.engines.pool import Pool
from mailsift.validators import positive

if TYPE_CHECKING:
    import httpx

RSPAMD_MAX_SIZE = 20 * 1024 * 1024
"""A bigger default for rspamd, which is fast on big mail (its own limit is 50 MB)."""

_MAX_ANSWER = 4 * 1024 * 1024
"""No rspamd answer is bigger; a longer one is malformed."""

_ENVELOPE_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")

_CLOSED_MID_ANSWER = re.compile(r"disconnected without sending|peer closed connection|incomplete chunked read")
"""httpcore's and h11's words for a connection that ended before the answer did (not a malformed answer)."""


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

    ``url`` may be a list of URLs: a pool of rspamd instances (:mod:`.pool`),
    health-checked with ``GET /ping``.
    """

    name = "rspamd"

    def __init__(
        self,
        url: str | list[str] | tuple[str, ...] = "http://127.0.0.1:11333",
        *,
        max_size: int = RSPAMD_MAX_SIZE,
        timeout: float = 60.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        urls = list(url) if isinstance(url, list | tuple) and url else [url]
        self.urls = [_checked_url(one) for one in urls]
        self.url = self.urls[0]
        self.pool: Pool[str] = Pool("rspamd", self.urls, label=str, check=self.health_check)
        self.size_limit = SizeLimit.checked("max_size", max_size, "rspamd")
        self.max_size: int = max_size
        self.timeout = positive(timeout, "rspamd: timeout", unit="number of seconds")
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
        self._clients: PerLoop[httpx.AsyncClient] = PerLoop(self._new_client, lambda client: client.is_closed)

    def describe(self) -> str:
        return f"rspamd({', '.join(self.urls)}, max_size={self.max_size})"

    def client(self) -> httpx.AsyncClient:
        """The HTTP client of the running event loop (kept for connection reuse)."""
        return self._clients.get()

    def _new_client(self) -> httpx.AsyncClient:
        import httpx  # loaded by __init__ already

        return httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), trust_env=False)

    async def close_resources(self) -> None:
        """Close the pooled connections (at worker shutdown, and in tests)."""
        await self._clients.close(lambda client: client.aclose())

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
        if self.size_limit.exceeded(target.size):
            return not_checked(self.name, target.size, self.size_limit)
        data, headers = target.data, self.request_headers(target)

        async def post_at(url: str) -> bytes:
            async with deadline(self.timeout, lambda: self._no_answer(url)):
                return await self._post(url, data, headers)

        return self.result(await self.pool.run(post_at))

    def _no_answer(self, url: str) -> ScannerTimeout:
        return no_answer("rspamd", url, self.timeout)

    async def health_check(self, url: str) -> None:
        """The pool's health check: ``GET /ping`` answered ``200`` ``pong``."""
        import httpx  # loaded by __init__ already

        ping = str(httpx.URL(url).copy_with(path="/ping", query=None))
        try:
            response = await self.client().get(ping)
        except httpx.HTTPError as error:
            raise ScannerUnavailable(f"rspamd: {ping}: {type(error).__name__}: {error}") from None
        if response.status_code != 200 or not response.content.strip().startswith(b"pong"):
            raise ScannerError(f"rspamd: {ping} answered HTTP {response.status_code} {response.content[:80]!r}")

    async def _post(self, url: str, data: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        import httpx  # loaded by __init__ already

        try:
            async with self.client().stream("POST", url, content=data, headers=headers) as response:
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
            raise self._no_answer(url) from None
        except httpx.ConnectError as error:
            raise unavailable("rspamd", url, error) from None
        except (httpx.NetworkError, httpx.RemoteProtocolError) as error:
            if isinstance(error, httpx.NetworkError) or _CLOSED_MID_ANSWER.search(str(error)):
                # rspamd died, restarted or refused the size (it closes at max_message) mid-answer
                raise ScannerUnavailable(
                    f"rspamd: {url} closed the connection before its answer ended: {type(error).__name__}: {error}"
                ) from None
            raise ScannerError(f"rspamd: {type(error).__name__}: {error}") from None
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
        level = spam_level(score, required, action == "reject")
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


def _checked_url(url: Any) -> str:
    """One rspamd URL, ``/checkv2`` added when it has no path."""
    if not isinstance(url, str):
        raise ConfigError(f"rspamd: url must be a string or a list of strings, got {url!r}")
    import httpx  # here, not at the top: a worker without rspamd never loads httpx

    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as error:
        raise ConfigError(f"rspamd: bad url {url!r}: {error}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"rspamd: url must be http://host[:port][/checkv2], got {url!r}")
    if parsed.path in ("", "/"):
        parsed = parsed.copy_with(path="/checkv2")
    return str(parsed)


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
