"""Delivery backends: SMTP or LMTP reinjection to a next hop, and local Maildir delivery.

All take the :class:`~mailsift.message.mail.Mail` and the final message bytes and
either return (the next hop accepted / the files are fsynced) or raise a
:class:`~mailsift.errors.DeliveryError` / :class:`~mailsift.errors.StorageError`;
the front end answers the MTA only after that.  Next-hop answers and socket
errors are converted here (and in :mod:`mailsift.delivery.smtpclient`), nowhere else;
the mail path hands messages over through :func:`hand_over` and
:func:`hand_over_each`, which turn what a backend still lets through
(``OSError``, a timeout) into a :class:`~mailsift.errors.DeliveryError`.

SMTP connections to the next hop are kept in a small per-worker pool and
reused, as Postfix's own ``smtp`` client caches connections: it halves the
per-message cost of reinjection.  RSET is sent only after an aborted
transaction.

:meth:`Delivery.deliver_each` is the per-recipient form that ``lmtpd`` uses:
it returns, for every envelope recipient, a note (delivered) or the error that
recipient alone gets.  SMTP reinjection can refuse recipients one by one at
RCPT; an LMTP next hop (``lmtp_relay``) also answers per recipient after the
content; Maildir delivery writes (and fails) per recipient.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass, field
from typing import BinaryIO

from mailsift.delivery import maildir
from mailsift.delivery.smtpclient import Answer, ConnectionLost, SMTPConnection
from mailsift.errors import ConfigError, DeliveryDeferred, DeliveryError, DeliveryRejected, MailsiftError
from mailsift.message.address import AddressError, check_addresses
from mailsift.message.mail import Mail
from mailsift.replies import NEXT_HOP_REJECTED
from mailsift.validators import is_port, positive

_XFORWARD_VALUE = re.compile(r"[^\x21-\x7e]|[+=]")


def xtext(value: str) -> str:
    """RFC 3461 xtext encoding, as XFORWARD attribute values need."""
    return _XFORWARD_VALUE.sub(lambda m: "".join(f"+{b:02X}" for b in m.group(0).encode("utf-8")), value)


PerRecipient = dict[str, str | MailsiftError]
"""Per envelope recipient: a note for the log (delivered or stored) or the error it gets."""


def collapse(results: PerRecipient) -> str:
    """One outcome for all recipients, for front ends that answer once: a note, or raise.

    A partial success can only come from an LMTP next hop answering after the
    content; the whole message is then deferred: the MTA retries, a recipient
    already delivered may get a second copy, none is lost.
    """
    errors = [error for error in results.values() if isinstance(error, MailsiftError)]
    if not errors:
        return next((note for note in results.values() if isinstance(note, str)), "")
    texts = "; ".join(f"<{r}> {e.message}" for r, e in results.items() if isinstance(e, MailsiftError))
    if len(errors) == len(results) and all(isinstance(error, DeliveryRejected) for error in errors):
        raise DeliveryRejected(f"next hop refused every recipient: {texts}", reply=errors[0].reply)
    raise DeliveryDeferred(f"next hop did not take every recipient: {texts}")


async def hand_over(delivery: Delivery, mail: Mail, message: bytes) -> str:
    """``delivery.deliver``, with the I/O errors it lets through as :class:`~mailsift.errors.DeliveryError`."""
    try:
        return await delivery.deliver(mail, message)
    except (OSError, TimeoutError) as error:
        raise _foreign(delivery, error) from error


async def hand_over_each(delivery: Delivery, mail: Mail, message: bytes) -> PerRecipient:
    """``delivery.deliver_each``, with the I/O errors it lets through as :class:`~mailsift.errors.DeliveryError`."""
    try:
        return await delivery.deliver_each(mail, message)
    except (OSError, TimeoutError) as error:
        raise _foreign(delivery, error) from error


def _foreign(delivery: Delivery, error: OSError | TimeoutError) -> DeliveryError:
    reason = (error.strerror if isinstance(error, OSError) else "") or str(error) or type(error).__name__
    return DeliveryError(f"{delivery.describe()}: {reason}")


class Delivery:
    """A place mail goes after it was accepted."""

    redirects = True
    """Whether it can deliver to recipients other than those received (``deliver_to``)."""

    async def deliver(self, mail: Mail, message: bytes) -> str:
        """Deliver ``message`` for ``mail.envelope``; returns a short note for the log."""
        raise NotImplementedError

    async def deliver_each(self, mail: Mail, message: bytes) -> PerRecipient:
        """Deliver ``message``, with an outcome per recipient of ``mail.envelope``.

        This default has one outcome for all: :meth:`deliver`'s note or error.
        Other errors (bugs) propagate and the front end answers 451 to all.
        """
        recipients = mail.envelope.recipients
        try:
            note = await self.deliver(mail, message)
        except MailsiftError as error:
            return dict.fromkeys(recipients, error)
        return dict.fromkeys(recipients, note)

    async def deliver_streamed(self, mail: Mail) -> str:
        """Deliver ``mail``'s own content as stored: a file-backed Mail (``Mail(path=...)``, a released
        quarantine copy) is streamed by the backends here, never loaded whole; this default loads it."""
        return await self.deliver(mail, mail.raw)

    async def close(self) -> None:
        """Release connections (called on shutdown)."""

    def describe(self) -> str:
        return type(self).__name__


@dataclass
class _Pooled:
    connection: SMTPConnection
    since: float
    clean: bool  # the last transaction ended (DATA answered): no RSET needed before the next


@dataclass
class SMTPDelivery(Delivery):
    """Reinjection to ``host:port`` over SMTP (SAGATOR's ``SMTP_SERVER``), or LMTP with ``lmtp``.

    The envelope is pipelined when the next hop offers PIPELINING
    (:mod:`mailsift.delivery.smtpclient`); SIZE is declared when offered, XFORWARD
    passes the original client on, BODY=8BITMIME and SMTPUTF8 are kept.
    Over LMTP the next hop answers per recipient after the content:
    :meth:`deliver_each` passes those answers on; :meth:`deliver` (one
    answer) collapses them (:func:`collapse`).
    """

    host: str
    port: int
    timeout: float = 60.0
    helo: str = "mailsift.localdomain"
    xforward: bool = True
    pool_size: int = 16
    idle_seconds: float = 30.0
    lmtp: bool = False
    _pool: list[_Pooled] = field(default_factory=list, repr=False)

    def describe(self) -> str:
        return f"{'lmtp' if self.lmtp else 'smtp'}:[{self.host}]:{self.port}"

    async def _take(self, *, fresh: bool = False) -> tuple[SMTPConnection, bool]:
        """A connection ready for MAIL, and whether it is a pooled one reused unchecked.

        A connection whose last transaction ended cleanly is reused without an
        RSET round trip; if the next hop closed it meanwhile, the transaction
        fails before any content was sent and :meth:`deliver` retries once on
        a new connection.
        """
        now = time.monotonic()
        while self._pool and not fresh:
            pooled = self._pool.pop()
            if now - pooled.since > self.idle_seconds or not pooled.connection.usable:
                pooled.connection.close()
                continue
            if pooled.clean:
                return pooled.connection, True
            try:
                answer = await pooled.connection.command(b"RSET")
            except ConnectionLost:
                pooled.connection.close()
                continue
            if answer.code == 250:
                return pooled.connection, False
            pooled.connection.close()
        connection = await SMTPConnection.open(
            self.host, self.port, helo=self.helo, timeout=self.timeout, lmtp=self.lmtp
        )
        return connection, False

    def _give_back(self, connection: SMTPConnection, *, clean: bool) -> None:
        if len(self._pool) < self.pool_size and connection.usable:
            self._pool.append(_Pooled(connection, time.monotonic(), clean))
        else:
            connection.close()

    def _xforward_command(self, connection: SMTPConnection, mail: Mail) -> bytes | None:
        """The XFORWARD command passing the original client on, if the next hop offers it."""
        if not (self.xforward and connection.supports("xforward")):
            return None
        env = mail.envelope
        offered = connection.extensions["xforward"].upper().split()
        attributes = {
            "NAME": env.client_name or "[UNAVAILABLE]",
            "ADDR": env.client_address or "[UNAVAILABLE]",
            "HELO": env.helo or "[UNAVAILABLE]",
            "PROTO": env.protocol if env.protocol in ("SMTP", "ESMTP") else "ESMTP",
            "IDENT": env.queue_id or "[UNAVAILABLE]",
        }
        args = [f"{key}={xtext(value)}" for key, value in attributes.items() if key in offered]
        return ("XFORWARD " + " ".join(args)).encode("ascii") if args else None

    async def deliver(self, mail: Mail, message: bytes) -> str:
        return collapse(await self._deliver(mail, message, each=False))

    async def deliver_streamed(self, mail: Mail) -> str:
        """The content read from ``mail`` block by block as it is sent."""
        return collapse(await self._deliver(mail, mail, each=False))

    async def deliver_each(self, mail: Mail, message: bytes) -> PerRecipient:
        """One transaction; a recipient refused at RCPT (or, over LMTP, after DATA) fails alone."""
        return await self._deliver(mail, message, each=True)

    async def _deliver(self, mail: Mail, message: bytes | Mail, *, each: bool) -> PerRecipient:
        connection, unchecked = await self._take()
        try:
            return await self._transaction(connection, mail, message, each=each)
        except _NothingSent:
            if not unchecked:
                raise
        connection, _ = await self._take(fresh=True)  # the pooled connection had died: once more
        return await self._transaction(connection, mail, message, each=each)

    def _envelope_commands(self, connection: SMTPConnection, mail: Mail, message: bytes | Mail) -> list[bytes]:
        """MAIL, RCPT... and DATA, to be pipelined; raises if the next hop cannot take the addresses."""
        env = mail.envelope
        try:  # the last check before the addresses go out (CR/LF would smuggle commands)
            check_addresses(env.sender, env.recipients)
        except AddressError:
            self._give_back(connection, clean=True)
            raise
        utf8 = not (env.sender.isascii() and all(r.isascii() for r in env.recipients))
        if utf8 and not connection.supports("smtputf8"):
            self._give_back(connection, clean=True)
            raise DeliveryRejected(
                "next hop does not support SMTPUTF8",
                reply=NEXT_HOP_REJECTED.with_text("Next hop does not support SMTPUTF8"),
            )
        encoding = "utf-8" if utf8 else "ascii"
        options = ""
        if utf8:
            options += " SMTPUTF8"
        if connection.supports("8bitmime") and "BODY=8BITMIME" in (o.upper() for o in env.mail_options):
            options += " BODY=8BITMIME"
        if connection.supports("size"):
            options += f" SIZE={len(message) if isinstance(message, bytes) else message.size}"
        commands = [f"MAIL FROM:<{env.sender}>{options}".encode(encoding, "surrogateescape")]
        commands += [f"RCPT TO:<{r}>".encode(encoding, "surrogateescape") for r in env.recipients]
        commands.append(b"DATA")
        return commands

    async def _transaction(
        self, connection: SMTPConnection, mail: Mail, message: bytes | Mail, *, each: bool
    ) -> PerRecipient:
        """One transaction.  With ``each``, refusals are per recipient; without, any refusal raises.

        The result maps every envelope recipient to a note (accepted) or its error.
        """
        recipients = mail.envelope.recipients
        commands = self._envelope_commands(connection, mail, message)
        xforward = self._xforward_command(connection, mail)
        if xforward is not None:
            commands.insert(0, xforward)
        try:
            answers = await connection.commands(commands)
        except AddressError:  # refused before anything was written: the connection is still clean
            self._give_back(connection, clean=True)
            raise
        except ConnectionLost as error:
            connection.close()
            raise _NothingSent(str(error)) from error  # no content went out: nothing can be delivered
        if xforward is not None:
            xforward_answer, *answers = answers
        mail_answer, *rcpt_answers, data_answer = answers
        results: PerRecipient = {}
        try:
            if xforward is not None and xforward_answer.code != 250:
                raise DeliveryDeferred(f"next hop refused XFORWARD: {xforward_answer}")
            if mail_answer.code != 250:
                raise self._convert(mail_answer)
            if each:
                for recipient, answer in zip(recipients, rcpt_answers, strict=True):
                    if answer.code not in (250, 251):
                        results[recipient] = self._convert(answer, recipient)
            else:
                self._check_recipients(recipients, rcpt_answers)
            accepted = [r for r in recipients if r not in results]
            if accepted and data_answer.code != 354:
                raise self._convert(data_answer)
        except DeliveryError:
            self._abort(connection, data_answer)
            raise
        if not accepted:  # every recipient refused at RCPT: no content to send
            self._abort(connection, data_answer)
            return results
        if connection.lmtp:
            results.update(await self._lmtp_content(connection, accepted, message))
            return results
        try:
            final = await connection.data(message)
        except BaseException:
            connection.close()
            raise
        self._give_back(connection, clean=True)
        if final.code != 250:
            raise self._convert(final)
        note = f"{self.describe()} said: {final}"
        results.update((recipient, note) for recipient in accepted)
        return results

    def _abort(self, connection: SMTPConnection, data_answer: Answer) -> None:
        """End a transaction before its content: RSET later, or close if DATA was accepted."""
        if data_answer.code == 354:
            connection.close()  # DATA was accepted: closing now is the only way to abort
        else:
            self._give_back(connection, clean=False)

    async def _lmtp_content(
        self, connection: SMTPConnection, accepted: list[str], message: bytes | Mail
    ) -> PerRecipient:
        """LMTP: the content, then one answer per accepted recipient (RFC 2033 §4.2)."""
        try:
            answers, lost = await connection.data_each(message, len(accepted))
        except BaseException:
            connection.close()
            raise
        if lost is None:
            self._give_back(connection, clean=True)
        else:
            connection.close()
        results: PerRecipient = {}
        for index, recipient in enumerate(accepted):
            if index >= len(answers):
                assert lost is not None
                results[recipient] = ConnectionLost(f"no answer for <{recipient}>: {lost.message}")
            elif answers[index].code == 250:
                results[recipient] = f"{self.describe()} said: {answers[index]}"
            else:
                results[recipient] = self._convert(answers[index], recipient)
        return results

    @staticmethod
    def _convert(answer: Answer, recipient: str = "") -> DeliveryError:
        about = f" for <{recipient}>" if recipient else ""
        text = f"next hop said{about}: {answer}"
        if 500 <= answer.code < 600:
            return DeliveryRejected(text, reply=NEXT_HOP_REJECTED.with_text(f"Next hop refused: {answer.text}"))
        return DeliveryDeferred(text)

    @staticmethod
    def _check_recipients(recipients: list[str], answers: list[Answer]) -> None:
        refused = [(r, a) for r, a in zip(recipients, answers, strict=True) if a.code not in (250, 251)]
        if not refused:
            return
        texts = "; ".join(f"<{r}> {a}" for r, a in refused)
        # After-queue SMTP can answer only once for all recipients: a partial or
        # temporary refusal defers the whole message (the MTA retries; nothing is
        # lost, nothing delivered twice).  Per-recipient answers: deliver_each (lmtpd).
        if len(refused) == len(recipients) and all(500 <= a.code < 600 for _, a in refused):
            raise DeliveryRejected(
                f"next hop refused all recipients: {texts}",
                reply=NEXT_HOP_REJECTED.with_text(f"Next hop refused: {refused[0][1].text}"),
            )
        raise DeliveryDeferred(f"next hop refused recipients: {texts}")

    async def close(self) -> None:
        pool, self._pool = self._pool, []
        for pooled in pool:
            try:
                await asyncio.wait_for(pooled.connection.quit(), 2)
            except (DeliveryError, TimeoutError):
                pooled.connection.close()


class _NothingSent(ConnectionLost):
    """The connection was lost before the message content was sent."""


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

    async def deliver_each(self, mail: Mail, message: bytes) -> PerRecipient:
        """Each recipient's Maildir written and fsynced on its own; a failed write fails that one."""
        return await asyncio.to_thread(self._write_each, mail, message)

    async def deliver_streamed(self, mail: Mail) -> str:
        """Each recipient's copy written from ``mail``'s stream (a file-backed Mail is never loaded)."""
        paths = await asyncio.to_thread(self._write_streamed, mail)
        return f"delivered to {len(paths)} maildir(s)"

    def _write_streamed(self, mail: Mail) -> list[str]:
        paths = []
        for recipient in mail.envelope.recipients:
            with mail.open() as stream:
                paths.append(self._store(mail, recipient, b"", stream))
        return paths

    def _write(self, mail: Mail, message: bytes) -> list[str]:
        return [self._store(mail, recipient, message) for recipient in mail.envelope.recipients]

    def _write_each(self, mail: Mail, message: bytes) -> PerRecipient:
        results: PerRecipient = {}
        for recipient in mail.envelope.recipients:
            try:
                results[recipient] = f"delivered to maildir {self._store(mail, recipient, message)}"
            except MailsiftError as error:
                results[recipient] = error
        return results

    def _store(self, mail: Mail, recipient: str, message: bytes, source: BinaryIO | None = None) -> str:
        return_path = f"Return-Path: <{mail.envelope.sender}>\n".encode("utf-8", "surrogateescape")
        delivered_to = f"Delivered-To: {recipient}\n".encode("utf-8", "surrogateescape")
        folder = os.path.join(self.root, mailbox_name(recipient))
        return maildir.store(folder, [return_path, delivered_to, message], source=source)


def resolve(target: object, state_dir: str) -> Delivery:
    """Turn a config value into a :class:`Delivery`: ``('host', port)`` or a Delivery."""
    if isinstance(target, Delivery):
        if isinstance(target, MaildirDelivery) and not os.path.isabs(target.root):
            return MaildirDelivery(os.path.join(state_dir, target.root))
        return target
    if isinstance(target, tuple | list) and len(target) == 2 and isinstance(target[0], str) and is_port(target[1]):
        return SMTPDelivery(target[0], target[1])
    raise ConfigError(f"next hop must be ('host', port), smtp_relay(...) or local_maildir(...), got {target!r}")


def smtp_relay(host: str, port: int, *, timeout: float = 60.0, xforward: bool = True) -> SMTPDelivery:
    """Config helper: reinject over SMTP to ``host:port``."""
    resolve((host, port), "")
    timeout = positive(timeout, "smtp_relay: timeout", unit="number of seconds")
    return SMTPDelivery(host, port, timeout=timeout, xforward=xforward)


def lmtp_relay(host: str, port: int, *, timeout: float = 60.0, xforward: bool = True) -> SMTPDelivery:
    """Config helper: reinject over LMTP to ``host:port`` (answers per recipient after the content)."""
    resolve((host, port), "")
    timeout = positive(timeout, "lmtp_relay: timeout", unit="number of seconds")
    return SMTPDelivery(host, port, timeout=timeout, xforward=xforward, lmtp=True)


def local_maildir(root: str = "mail") -> MaildirDelivery:
    """Config helper: deliver into Maildirs under ``root`` (relative to STATE_DIR)."""
    if not isinstance(root, str) or not root:
        raise ConfigError(f"local_maildir: root must be a directory path, got {root!r}")
    return MaildirDelivery(root)
