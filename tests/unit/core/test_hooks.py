"""HOOKS run after every disposition; a failing hook never changes the reply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailsift import config, drop, regexp_scan
from mailsift.core.hooks import Hook
from mailsift.core.mailpath import MailPath
from mailsift.errors import ConfigError
from mailsift.message.mail import Envelope, Mail
from mailsift.settings import Settings


class Recorder(Hook):
    name = "recorder"

    def __init__(self, fail: bool = False) -> None:
        self.seen: list[tuple[str, str, int]] = []
        self.fail = fail
        self.closed = 0

    async def after(self, mail: Mail, decision: Any, outcome: Any, settings: Settings) -> None:
        self.seen.append((mail.envelope.queue_id, decision.disposition.value, outcome.reply.code))
        if self.fail:
            raise RuntimeError("hook broke")

    async def close(self) -> None:
        self.closed += 1


def message(queue_id: str) -> Mail:
    return Mail(
        Envelope(sender="a@example.net", recipients=["b@example.test"], queue_id=queue_id), b"Subject: x\r\n\r\nhi\r\n"
    )


async def test_hooks_see_every_decision_and_errors_do_not_change_the_reply(tmp_path: Path) -> None:
    good, broken = Recorder(), Recorder(fail=True)
    settings = Settings(state_dir=str(tmp_path), hooks=(broken, good))
    path = MailPath([drop(regexp_scan([("Bad", "BADWORD")]))], settings, next_hop=("127.0.0.1", 9))
    decision, outcome = await path.process(Mail(message("q1").envelope, b"Subject: x\r\n\r\nBADWORD\r\n"))
    assert (decision.disposition.value, outcome.reply.code) == ("drop", 250)
    assert good.seen == [("q1", "drop", 250)]
    assert broken.seen == [("q1", "drop", 250)]  # it ran, failed, and the reply stayed 250
    await path.close()
    await path.close()
    assert good.closed == 1  # closed once


def test_hooks_in_the_config(tmp_path: Path) -> None:
    path = tmp_path / "c.py"
    path.write_text(
        "from mailsift import *\nfrom mailsift.core.hooks import Hook\n"
        f"STATE_DIR = {str(tmp_path)!r}\nSCANNERS = [const(0.0)]\nHOOKS = [Hook()]\n"
    )
    assert len(config.load(str(path)).settings.hooks) == 1
    path.write_text(f"from mailsift import *\nSTATE_DIR = {str(tmp_path)!r}\nHOOKS = [const(1.0)]\n")
    with pytest.raises(ConfigError, match="HOOKS must be a list"):
        config.load(str(path))
