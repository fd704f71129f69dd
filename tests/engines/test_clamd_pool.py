"""A pool of two real clamd daemons (``clamd([a, b])``): one is stopped mid-run and restarted.

Every message is still scanned (by the other), the stopped one is taken out
and, once restarted, let back in by its ``PING`` and given traffic again.
Faults a real daemon cannot be made to show on cue (hangs, broken answers):
``tests/unit/scanners/engines/test_pool.py`` over fakes.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from mailsift.message.mail import Envelope, Mail
from mailsift.scanners.base import MailTarget
from mailsift.scanners.engines.clamav import clamd
from tests.helpers.clamd import CLAMD, EICAR, EICAR_NAMES, ClamdInstance
from tests.helpers.pool_fakes import quick_pool, readmit

pytestmark = pytest.mark.skipif(not os.path.exists(CLAMD), reason=f"{CLAMD} is not installed")


def mail(virus: bool) -> MailTarget:
    body = EICAR if virus else b"hello"
    return MailTarget(Mail(Envelope("a@example.org", ["b@example.org"]), b"Subject: x\r\n\r\n" + body + b"\r\n"))


async def test_one_of_two_clamd_stopped_mid_run(tmp_path: Path) -> None:
    with ClamdInstance(tmp_path / "a") as a, ClamdInstance(tmp_path / "b") as b:
        scanner = clamd([str(a.socket_path), b.tcp_address], timeout=30)
        backend_a, backend_b = quick_pool(scanner, "clamd")
        names = []
        for index in range(40):
            if index == 10:
                await asyncio.to_thread(a.stop)  # mid-run: its pooled sessions die with it
            result = await scanner.scan(mail(virus=index % 2 == 0))
            names.append(result.name)
        # every message scanned, the viruses found
        assert all((name in EICAR_NAMES) == (index % 2 == 0) for index, name in enumerate(names))
        assert backend_a.ejections == 1
        assert backend_a.state in ("out", "checking")
        requests_a = backend_a.requests
        assert backend_b.requests >= 30
        await asyncio.to_thread(a.start)
        await readmit(scanner, backend_a, mail(virus=False))  # by PING once its pause is over
        assert backend_a.state == "up"
        results = [await scanner.scan(mail(virus=True)) for _ in range(10)]
        assert all(result.name in EICAR_NAMES for result in results)
        assert backend_a.requests >= requests_a + 4  # it takes its share again
        await scanner.close_resources()
