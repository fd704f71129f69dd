"""Delivery backends: SMTP reinjection to a next hop, and local Maildir delivery.

Both take the :class:`~mailsift.mail.Mail` and the final message bytes and
either return (the next hop accepted / the files are fsynced) or raise a
:class:`~mailsift.errors.DeliveryError` / :class:`~mailsift.errors.StorageError`;
the front end answers the MTA only after that.  Errors of ``aiosmtplib`` and
the socket layer are converted here, and nowhere else.

SMTP connections to the next hop are kept in a small per-worker pool and
reused with RSET, as Postfix's own ``smtp`` client caches connections: it
halves the per-message cost of reinjection.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass, field

import aiosmtplib

from mailsift import maildir
from mailsift.errors import ConfigError, DeliveryDeferred, DeliveryError, DeliveryRejected
from mailsift.mail import Mail
from mailsift.replies import NEXT_HOP_REJECTED

_XFORWARD_VALUE = re.compile(r"[^\x21-\x7e]|[+=]")


def xtext(value: str) -> str:
    """RFC 3461 xtext encoding, as XFORWARD attribute values need."""
    return _XFORWARD_VALUE.sub(lambda m: "".join(f"+{b:02X}" for b in m.group(0).encode("utf-8")), value)


class Delivery:
    """A place mail goes after it was accepted."""

    async def deliver(self, mail: Mail, message: bytes) -> str:
        """Deliver ``message`` for ``mail.envelope``; returns a short note for the log."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections (called on shutdown)."""

    def describe(self) -> str:
        return type(self).__name__


@dataclass
class _Pooled:
    client: aiosmtplib.SMTP
    since: float


@dataclass
class SMTPDelivery(Delivery):
    """Reinjection to ``host:port`` over SMTP (SAGATOR's ``SMTP_SERVER``)."""

    host: str
    port: int
    timeout: float = 60.0
    helo: str = "mailsift.localdomain"
    xforward: bool = True
    pool_size: int = 16
    idle_seconds: float = 30.0
    _pool: list[_Pooled] = field(default_factory=list, repr=False)

    def describe(self) -> str:
        return f"smtp:[{self.host}]:{self.port}"

    async def _connect(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname=self.host, port=self.port, timeout=self.timeout, local_hostname=self.helo, start_tls=False
        )
        try:
            await client.connect()
            await client.ehlo()
        except (aiosmtplib.SMTPException, OSError) as error:
            client.close()
            raise DeliveryError(f"next hop {self.describe()} unavailable: {error}") from error
        return client

    async def _take(self) -> aiosmtplib.SMTP:
        now = time.monotonic()
        while self._pool:
            pooled = self._pool.pop()
            if now - pooled.since > self.idle_seconds or not pooled.client.is_connected:
                pooled.client.close()
                continue
            try:
                await pooled.client.rset()
                return pooled.client
            except (aiosmtplib.SMTPException, OSError):
                pooled.client.close()
        return await self._connect()

    def _give_back(self, client: aiosmtplib.SMTP) -> None:
        if len(self._pool) < self.pool_size and client.is_connected:
            self._pool.append(_Pooled(client, time.monotonic()))
        else:
            client.close()

    async def _xforward(self, client: aiosmtplib.SMTP, mail: Mail) -> None:
        env = mail.envelope
        if not (self.xforward and client.supports_extension("xforward")):
            return
        offered = client.esmtp_extensions.get("xforward", "").upper().split()
        attributes = {
            "NAME": env.client_name or "[UNAVAILABLE]",
            "ADDR": env.client_address or "[UNAVAILABLE]",
            "HELO": env.helo or "[UNAVAILABLE]",
            "PROTO": env.protocol if env.protocol in ("SMTP", "ESMTP") else "ESMTP",
            "IDENT": env.queue_id or "[UNAVAILABLE]",
        }
        args = [f"{key}={xtext(value)}" for key, value in attributes.items() if key in offered]
        if args:
            response = await client.execute_command(b"XFORWARD", *(a.encode("ascii") for a in args))
            if response.code != 250:
                raise DeliveryDeferred(f"next hop refused XFORWARD: {response.code} {response.message}")

    async def deliver(self, mail: Mail, message: bytes) -> str:
        env = mail.envelope
        client = await self._take()
        try:
            await self._xforward(client, mail)
            options = []
            utf8 = not (env.sender.isascii() and all(r.isascii() for r in env.recipients))
            if utf8:
                if not client.supports_extension("smtputf8"):
                    raise DeliveryRejected(
                        "next hop does not support SMTPUTF8",
                        reply=NEXT_HOP_REJECTED.with_text("Next hop does not support SMTPUTF8"),
                    )
                options.append("SMTPUTF8")
            if client.supports_extension("8bitmime") and "BODY=8BITMIME" in (o.upper() for o in env.mail_options):
                options.append("BODY=8BITMIME")
            encoding = "utf-8" if utf8 else "ascii"
            await client.mail(env.sender, options=options, encoding=encoding)
            refused: list[aiosmtplib.SMTPRecipientRefused] = []
            for recipient in env.recipients:
                try:
                    await client.rcpt(recipient, encoding=encoding)
                except aiosmtplib.SMTPRecipientRefused as error:
                    refused.append(error)
            if refused:
                await client.rset()
            else:
                response = await client.data(message)
        except aiosmtplib.SMTPResponseException as error:
            self._give_back_after_error(client)
            raise self._convert(error) from error
        except (aiosmtplib.SMTPException, OSError) as error:
            client.close()
            raise DeliveryError(f"next hop {self.describe()} failed: {error}") from error
        except BaseException:
            client.close()
            raise
        self._give_back(client)
        if refused:
            self._raise_refused(refused, len(env.recipients))
        return f"{self.describe()} said: {response.code} {response.message}"

    def _give_back_after_error(self, client: aiosmtplib.SMTP) -> None:
        # After a refused command the session is still usable; RSET happens on next take.
        self._give_back(client)

    @staticmethod
    def _convert(error: aiosmtplib.SMTPResponseException) -> DeliveryError:
        text = f"next hop said: {error.code} {error.message}"
        if 500 <= error.code < 600:
            return DeliveryRejected(text, reply=NEXT_HOP_REJECTED.with_text(f"Next hop refused: {error.message}"))
        return DeliveryDeferred(text)

    @staticmethod
    def _raise_refused(refused: list[aiosmtplib.SMTPRecipientRefused], total: int) -> None:
        texts = "; ".join(f"<{e.recipient}> {e.code} {e.message}" for e in refused)
        # After-queue SMTP can answer only once for all recipients: a partial or
        # temporary refusal defers the whole message (the MTA retries; nothing is
        # lost, nothing delivered twice).  Per-recipient answers need LMTP.
        if len(refused) == total and all(500 <= e.code < 600 for e in refused):
            raise DeliveryRejected(
                f"next hop refused all recipients: {texts}",
                reply=NEXT_HOP_REJECTED.with_text(f"Next hop refused: {refused[0].message}"),
            )
        raise DeliveryDeferred(f"next hop refused recipients: {texts}")

    async def close(self) -> None:
        pool, self._pool = self._pool, []
        for pooled in pool:
            try:
                await asyncio.wait_for(pooled.client.quit(), 2)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                pooled.client.close()


_SAFE = re.compile(r"[^a-z0-9@._+=-]")


def mailbox_name(recipient: str) -> str:
    """A recipient address as a safe directory name (no path tricks)."""
    name = _SAFE.sub("_", recipient.strip().lower())
    name = name.lstrip(".") or "_"
    return name[:200]


@dataclass
class MaildirDelivery(Delivery):
    """Local delivery: one Maildir per recipient under ``root`` (``root/<address>/new``)."""

    root: str

    def describe(self) -> str:
        return f"maildir:{self.root}"

    async def deliver(self, mail: Mail, message: bytes) -> str:
        paths = await asyncio.to_thread(self._write, mail, message)
        return f"delivered to {len(paths)} maildir(s)"

    def _write(self, mail: Mail, message: bytes) -> list[str]:
        env = mail.envelope
        return_path = f"Return-Path: <{env.sender}>\n".encode("utf-8", "surrogateescape")
        paths = []
        for recipient in env.recipients:
            delivered_to = f"Delivered-To: {recipient}\n".encode("utf-8", "surrogateescape")
            folder = os.path.join(self.root, mailbox_name(recipient))
            paths.append(maildir.store(folder, [return_path, delivered_to, message]))
        return paths


def resolve(target: object, state_dir: str) -> Delivery:
    """Turn a config value into a :class:`Delivery`: ``('host', port)`` or a Delivery."""
    if isinstance(target, Delivery):
        if isinstance(target, MaildirDelivery) and not os.path.isabs(target.root):
            return MaildirDelivery(os.path.join(state_dir, target.root))
        return target
    if (
        isinstance(target, tuple | list)
        and len(target) == 2
        and isinstance(target[0], str)
        and isinstance(target[1], int)
        and 0 < target[1] < 65536
    ):
        return SMTPDelivery(target[0], target[1])
    raise ConfigError(f"next hop must be ('host', port), smtp_relay(...) or local_maildir(...), got {target!r}")


def smtp_relay(host: str, port: int, *, timeout: float = 60.0, xforward: bool = True) -> SMTPDelivery:
    """Config helper: reinject over SMTP to ``host:port``."""
    resolve((host, port), "")
    return SMTPDelivery(host, port, timeout=timeout, xforward=xforward)


def local_maildir(root: str = "mail") -> MaildirDelivery:
    """Config helper: deliver into Maildirs under ``root`` (relative to STATE_DIR)."""
    if not isinstance(root, str) or not root:
        raise ConfigError(f"local_maildir: root must be a directory path, got {root!r}")
    return MaildirDelivery(root)
