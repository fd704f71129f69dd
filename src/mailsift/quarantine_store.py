"""The quarantine store: Maildir folders per category under ``STATE_DIR/quarantine``.

Each quarantined message is one file in ``<state>/quarantine/<category>/new/``,
written and fsynced before the MTA gets its answer.  The file is the original
message preceded by mailsift's own envelope headers, so that a later index can
adopt existing files without any side data::

    X-Mailsift-Quarantine-Id: 20261121T101500-3f9c2a1b
    X-Mailsift-Category: virus
    X-Mailsift-Verdict: level=1.00; name=EICAR-Test; scanner=regexp_scan
    X-Mailsift-Detail: part 2 (eicar.com)
    X-Mailsift-Client: mx.example.net [192.0.2.1]
    Return-Path: <sender@example.net>
    X-Envelope-To: <rcpt@example.org>

The Maildir file name carries the id too (``<time>.<...>_<id>.<host>``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time

from mailsift import maildir
from mailsift.mail import Mail
from mailsift.result import Result

CATEGORIES = ("virus", "policy", "spam")


def new_id() -> str:
    """A sortable, unique quarantine id: ``YYYYMMDDTHHMMSS-<8 hex>``."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


def _clean(value: str) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in value)


class QuarantineStore:
    """Writes quarantined messages durably under ``root``."""

    def __init__(self, root: str) -> None:
        self.root = root

    def folder(self, category: str) -> str:
        return os.path.join(self.root, category)

    async def put(self, mail: Mail, category: str, result: Result) -> str:
        """Store ``mail`` in ``category``; returns the file path (after fsync)."""
        return await asyncio.to_thread(self._put, mail, category, result)

    def _put(self, mail: Mail, category: str, result: Result) -> str:
        env = mail.envelope
        ident = new_id()
        lines = [
            f"X-Mailsift-Quarantine-Id: {ident}",
            f"X-Mailsift-Category: {category}",
            f"X-Mailsift-Verdict: level={result.level:.2f}; name={_clean(result.name)}; "
            f"scanner={_clean(result.scanner)}",
            *([f"X-Mailsift-Detail: {_clean(result.detail)[:900]}"] if result.detail else []),
            f"X-Mailsift-Client: {_clean(env.client_name or 'unknown')} [{_clean(env.client_address or 'unknown')}]",
            f"Return-Path: <{_clean(env.sender)}>",
            *(f"X-Envelope-To: <{_clean(r)}>" for r in env.recipients),
        ]
        head = ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")
        with mail.open() as source:
            return maildir.store(self.folder(category), [head], tag=ident, source=source)
