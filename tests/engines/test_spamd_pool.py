"""A pool of two real spamd (``spamassassind([a, b])``): one is stopped mid-run and restarted.

Kept short (spamd is slow): GTUBE and a ham message in turn.  Every message
is still scanned (by the other spamd) with the right verdict, the stopped one
is taken out and, once restarted, let back in by its ``PING`` and given
traffic again.  The faults a real daemon cannot show on cue (hangs, slow
answers, broken answers): ``tests/unit/scanners/engines/test_pool.py``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from mailsift.message.mail import Envelope, Mail
from mailsift.scanners.base import MailTarget
from mailsift.scanners.engines.spamassassin import spamassassind
from tests.helpers.pool_fakes import quick_pool, readmit
from tests.helpers.spamd import SPAMD, SpamdInstance

pytestmark = [
    pytest.mark.engines,
    pytest.mark.skipif(not os.path.exists(SPAMD), reason=f"{SPAMD} is not installed"),
]

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def mail(spam: bool) -> MailTarget:
    body = GTUBE if spam else b"Hello Bob,\r\n\r\nthe minutes of Tuesday's meeting are attached.\r\n\r\nAlice"
    head = b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: minutes\r\n"
    head += b"Message-ID: <pool-test@example.org>\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\n\r\n"
    return MailTarget(Mail(Envelope("alice@example.org", ["bob@example.org"]), head + body + b"\r\n"))


async def test_one_of_two_spamd_stopped_mid_run() -> None:
    # under /tmp, not pytest's 0700 directory: spamd's children run as nobody (tests/helpers/spamd.py)
    workdirs = [Path(tempfile.mkdtemp(prefix="mailsift-spamd-pool-")) for _ in range(2)]
    a, b = (SpamdInstance(workdir, children=2) for workdir in workdirs)
    try:
        await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
        scanner = spamassassind([a.address, b.address], timeout=60)
        backend_a, backend_b = quick_pool(scanner, "spamassassind")
        verdicts = []
        for index in range(6):
            if index == 2:
                await asyncio.to_thread(a.stop)  # mid-run
            result = await scanner.scan(mail(spam=index % 2 == 0))
            verdicts.append(result.level >= 1)
        assert verdicts == [True, False] * 3  # every message scanned, GTUBE found
        assert backend_a.ejections == 1
        assert backend_a.state in ("out", "checking")
        assert backend_b.requests >= 4
        requests_a = backend_a.requests
        await asyncio.to_thread(a.start)
        await readmit(scanner, backend_a, mail(spam=False))  # by PING once its pause is over
        assert backend_a.state == "up"
        results = [await scanner.scan(mail(spam=True)) for _ in range(2)]
        assert all(result.level >= 1 for result in results)
        assert backend_a.requests >= requests_a + 1  # it takes its share again
    finally:
        for instance, workdir in zip((a, b), workdirs, strict=True):
            instance.stop()
            shutil.rmtree(workdir, ignore_errors=True)
