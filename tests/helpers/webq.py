"""The web quarantine under test: :class:`WebqServer` (its URL, recording next hop, settings and
seeded messages) and the web users every webq test shares.

The browser tier's session fixture ``webq_server`` (tests/browser/conftest.py) runs a real
``mailsift serve``; tests/unit/web/test_quarantine_pages.py builds one in-process (ASGI).

Users: ``alice`` (alice@example.org), ``bob`` (bob@example.org), ``admin``
(admin, no address), passwords in ``PASSWORDS``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Result
from mailsift.settings import Settings
from mailsift.storage.quarantine.index import QuarantineEntry, get_entry
from mailsift.storage.quarantine.store import QuarantineStore, file_id
from mailsift.testing import RecordingServer

PASSWORDS = {"alice": "alice-Secret-1", "bob": "bob-Secret-2", "admin": "admin-Secret-3"}
ADDRESSES = {"alice": ["alice@example.org"], "bob": ["bob@example.org"], "admin": []}


@dataclass
class WebqServer:
    url: str
    recorder: RecordingServer
    settings: Settings
    state_dir: str
    messages: dict[str, str] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=lambda: dict(PASSWORDS))

    def seed(self, name: str, sender: str, recipients: Sequence[str], raw: bytes, *, category: str = "virus") -> str:
        """Quarantine ``raw`` for ``recipients`` through the real store (file + index); returns its id."""
        store = QuarantineStore(self.settings.quarantine_dir, self.settings.database)
        mail = Mail(Envelope(sender=sender, recipients=list(recipients), client_address="192.0.2.7"), raw)
        try:
            path = asyncio.run(store.put(mail, category, Result(1.0, "EICAR-Test", "regexp_scan")))
        finally:
            mail.close()
        entry_id = file_id(os.path.relpath(path, self.settings.quarantine_dir))
        self.messages[name] = entry_id
        return entry_id

    def entry(self, entry_id: str) -> QuarantineEntry | None:
        entry: QuarantineEntry | None = self.settings.database.call(get_entry, entry_id)
        return entry
