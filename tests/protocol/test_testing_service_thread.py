"""mailsift.testing.ServiceThread binds the settings the way config.load does.

A scanner that takes its DATABASE (or anything else of the accepted config)
through ``bind_settings`` must work the same under ServiceThread as under
``mailsift serve``: otherwise a user testing a policy scanner without ``db=``
gets "no database".
"""

from __future__ import annotations

import smtplib
from pathlib import Path

from mailsift import match_any, parsemail, smtpd
from mailsift.message.result import Result
from mailsift.scanners.base import Scanner, Target
from mailsift.settings import Settings
from mailsift.testing import RecordingServer, ServiceThread, free_port


class NeedsSettings(Scanner):
    """Detects unless its settings were bound: the verdict says whether binding happened."""

    name = "needs_settings"

    def __init__(self) -> None:
        self.bound: Settings | None = None

    def bind_settings(self, settings: Settings) -> None:
        self.bound = settings

    async def scan(self, target: Target) -> Result:
        if self.bound is None:
            return Result(1.0, "NotBound", self.name, "bind_settings was never called")
        return Result(0.0, "", self.name, f"bound to {self.bound.state_dir}")


def test_service_thread_binds_settings_of_nested_scanners(tmp_path: Path) -> None:
    inner = NeedsSettings()
    sink = RecordingServer().start()
    try:
        service = smtpd([match_any([parsemail(inner)])], "127.0.0.1", free_port(), next_hop=("127.0.0.1", sink.port))
        settings = Settings(state_dir=str(tmp_path))
        with ServiceThread(service, settings), smtplib.SMTP("127.0.0.1", service.port, timeout=10) as client:
            client.sendmail("a@example.test", ["b@example.test"], b"Subject: hi\r\n\r\nbody\r\n")
        assert inner.bound is settings
        assert len(sink.messages) == 1
    finally:
        sink.stop()
