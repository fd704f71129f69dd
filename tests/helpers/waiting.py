"""Bounded waits for tests: poll until something holds, or fail saying what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], object], seconds: float = 30, what: str = "") -> object:
    """``condition()`` again every 0.05 s until it returns something true (returned), for at most
    ``seconds``; then AssertionError naming ``what``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or condition}")
