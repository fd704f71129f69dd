"""Fixtures for protocol tests: a recording next hop and an in-thread smtpd.

The test mail they send (``message``) is in tests/helpers/messages.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailsift.services.smtpd import smtpd
from mailsift.settings import Settings
from mailsift.testing import RecordingServer, ServiceThread
from tests.helpers.stats_site import stats_site  # noqa: F401 - the fixture (test_stats_live.py)


@pytest.fixture(params=[True, False], ids=["pipelining", "no-pipelining"])
def downstream(request: pytest.FixtureRequest) -> Iterator[RecordingServer]:
    """The next hop, with and without PIPELINING (mailsift's client uses it when offered)."""
    with RecordingServer(pipelining=request.param) as server:
        yield server


@pytest.fixture
def make_filter(tmp_path: Path, downstream: RecordingServer) -> Iterator[Callable[..., ServiceThread]]:
    started: list[ServiceThread] = []

    def make(scanners: list[Any], **options: Any) -> ServiceThread:
        options.setdefault("next_hop", ("127.0.0.1", downstream.port))
        service = smtpd(scanners, "127.0.0.1", 0, **options)
        thread = ServiceThread(service, Settings(state_dir=str(tmp_path / "state")))
        started.append(thread.start())
        return thread

    yield make
    for thread in started:
        thread.stop()
