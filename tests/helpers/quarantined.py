"""One message quarantined through the store, for tests of what acts on the quarantine (release, expiry).

    entry = quarantined(settings)           # spam from eve@spam.example to bob@example.test, indexed

(tests/unit/storage/quarantine/test_admin.py keeps a copy of this for now; its owner may switch to it.)
"""

from __future__ import annotations

import asyncio

from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Result
from mailsift.settings import Settings
from mailsift.storage.quarantine.index import QuarantineEntry, get_entry
from mailsift.storage.quarantine.store import QuarantineStore, file_id

MESSAGE = b"From: eve@spam.example\r\nTo: bob@example.test\r\nSubject: pills\r\n\r\nBuy now.\r\n"


def quarantined(settings: Settings, message: bytes = MESSAGE, recipient: str = "bob@example.test") -> QuarantineEntry:
    """Quarantine ``message`` as spam in ``settings``' store and index; its row."""
    store = QuarantineStore(settings.quarantine_dir, settings.database)
    item = Mail(Envelope(sender="eve@spam.example", recipients=[recipient]), message)
    path = asyncio.run(store.put(item, "spam", Result(7.5, "SPAM", "spamassassind")))
    entry = settings.require_database().call(get_entry, file_id(path))
    assert entry is not None
    return entry
