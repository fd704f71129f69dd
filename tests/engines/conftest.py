"""Fixtures for tests against the real engines (clamd, spamd, rspamd), started
privately on loopback by the test setup itself; see ``tests/helpers/`` (clamd.py, spamd.py, rspamd.py).

``clamd_instance``: one :class:`~tests.helpers.clamd.ClamdInstance` per
test session (clamd takes a few seconds to start), with the private EICAR +
clam.exe signature DB, on a unix socket and a free 127.0.0.1 port.  Tests that
restart it must leave it running.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.helpers.clamd import CLAMD, ClamdInstance


@pytest.fixture(scope="session")
def clamd_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdInstance]:
    """A running private clamd for the whole session, stopped by PID at the end."""
    if not os.access(CLAMD, os.X_OK):
        pytest.skip(f"{CLAMD} is not installed (scripts/setup.sh --test installs clamav-daemon)")
    instance = ClamdInstance(tmp_path_factory.mktemp("clamd"))
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
