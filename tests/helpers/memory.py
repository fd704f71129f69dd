"""Memory of the parse and scan of one big message, measured in-process with tracemalloc.

tracemalloc counts the Python allocations of every thread (the scanners' searches run in
worker threads): the peak above what was allocated when the measure started.
"""

from __future__ import annotations

import base64
import os
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tests.helpers.samples import EICAR

T = TypeVar("T")

MiB = 1024 * 1024


def big_message(mib: int, *, virus: bool) -> bytes:
    """A plain-text message whose body is ``mib`` MiB of random bytes as base64 lines (CRLF),
    behind the EICAR line if ``virus``: bench/quarantine.py's big message."""
    head = b"From: a@example.net\r\nTo: b@example.org\r\nSubject: big\r\n\r\n"
    body = base64.encodebytes(os.urandom(mib * MiB)).replace(b"\n", b"\r\n")
    return head + (EICAR + b"\r\n" if virus else b"") + body


async def peak_above(work: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """``(await work(), peak bytes allocated above the start while it ran)``."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        result = await work()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak - start
