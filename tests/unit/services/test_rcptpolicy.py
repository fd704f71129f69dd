"""recipient_policy: SAGATOR's RCPT-time policy, its answers, and its place in SRV."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailsift import config, const, deliver, drop, greylist, quarantine, reject
from mailsift.cli.main import main
from mailsift.errors import ConfigError, ScannerError
from mailsift.message.mail import Envelope
from mailsift.message.result import Result
from mailsift.scanners.base import Scanner, Target
from mailsift.scanners.find import sql_find
from mailsift.scanners.smtpcomm import smtp_comm
from mailsift.scanners.tempfail import tempfail
from mailsift.services.milter import milter
from mailsift.services.rcptpolicy import recipient_policy
from mailsift.services.smtpd import smtpd
from mailsift.storage.db import Database

ENVELOPE = Envelope(sender="a@example.net", client_address="192.0.2.7", client_name="mx.example.net", helo="localhost")


class Failing(Scanner):
    name = "failing"

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def scan(self, target: Target) -> Result:
        raise self.error


@pytest.mark.parametrize(
    ("scanners", "reply"),
    [
        ([const(0.0, "")], "250 2.1.5 Ok"),
        ([deliver(const(1.0, "Allowed"))], "250 2.1.5 Ok"),
        ([reject(const(1.0, "Nobody"), message="No such user")], "550 5.7.1 No such user"),
        ([const(1.0, "Nobody")], "550 5.7.1 Recipient rejected by policy: Nobody"),
        # drop and quarantine need a message, which does not exist at RCPT: refused instead
        ([drop(const(1.0, "Worm"))], "550 5.7.1 Recipient rejected by policy: Worm"),
        ([quarantine("spam", const(1.0, "Spam"))], "550 5.7.1 Recipient rejected by policy: Spam"),
        ([tempfail(const(1.0, "Busy"), message="451 4.7.1 Outbreak, later")], "450 4.7.1 Outbreak, later"),
        ([tempfail(const(1.0, "Busy"))], "450 4.7.1 Message deferred by content filter, please try again later"),
        ([reject(smtp_comm("Forged.HELO", helo="^localhost$"))], "550 5.7.1 Recipient rejected by policy: Forged.HELO"),
    ],
)
async def test_answers(scanners: list[Scanner], reply: str) -> None:
    assert str(await recipient_policy(scanners).decide(ENVELOPE, "b@example.test")) == reply


@pytest.mark.parametrize("error", [ScannerError("clamd down"), RuntimeError("a bug"), ConfigError("surprise")], ids=str)
async def test_a_failure_is_451_never_5xx(error: Exception) -> None:
    reply = await recipient_policy([reject(Failing(error))]).decide(ENVELOPE, "b@example.test")
    assert (reply.code, reply.status) == (451, "4.3.0")


async def test_greylist_needs_the_database_and_answers_450(database: Database) -> None:
    policy = recipient_policy([greylist(min=60)], database)
    reply = await policy.decide(ENVELOPE, "b@example.test")
    assert str(reply) == "450 4.7.1 Greylisted, please try again in 60 seconds"
    without = await recipient_policy([greylist(min=60)]).decide(ENVELOPE, "b@example.test")
    assert without.code == 451  # no database: fails closed, temporarily


async def test_custom_codes_and_their_checks() -> None:
    policy = recipient_policy([reject(const(1.0, "X"), message="User unknown")], reject="550 5.1.1", defer="451")
    assert str(await policy.decide(ENVELOPE, "b@example.test")) == "550 5.1.1 User unknown"
    with pytest.raises(ConfigError, match="reject must look like"):
        recipient_policy([const(0.0, "")], reject="450 4.7.1")
    with pytest.raises(ConfigError, match="defer must look like"):
        recipient_policy([const(0.0, "")], defer="550")
    with pytest.raises(ConfigError, match="recipient_policy must be"):
        smtpd([], recipient_policy=[const(0.0, "")])


def test_srv_order_links_the_policy_to_the_services_after_it(tmp_path: Path) -> None:
    """SAGATOR: "This service must be defined before service, which want to use it"."""
    body = f"""
        from mailsift import *
        STATE_DIR = {str(tmp_path / "state")!r}
        SMTP_SERVER = ('127.0.0.1', 10025)
        BEFORE = smtpd([], '127.0.0.1', 10023)
        POLICY = recipient_policy([reject(sql_find('SELECT 1 WHERE :recipient = ""', const(1.0, 'Empty')))])
        OWN = recipient_policy([const(0.0, '')])
        SRV = [BEFORE, POLICY, smtpd([], '127.0.0.1', 10024), milter([], 'm', 'inet:3333@127.0.0.1'),
               smtpd([], '127.0.0.1', 10026, recipient_policy=OWN)]
    """
    path = tmp_path / "mailsift.conf.py"
    path.write_text(textwrap.dedent(body).lstrip("\n"), encoding="utf-8")
    loaded = config.load(str(path))
    before, after, milt, own = loaded.services
    assert before.recipient_policy is None  # type: ignore[attr-defined]
    policy = after.recipient_policy  # type: ignore[attr-defined]
    assert isinstance(policy, recipient_policy)
    assert isinstance(milt, milter)
    assert milt.recipient_policy is policy
    assert own.recipient_policy is not policy  # type: ignore[attr-defined]
    [lookup] = policy.scanners[0].children
    assert isinstance(lookup, sql_find)
    assert lookup.config_database is loaded.settings.database  # bound like every scanner


def test_check_config_shows_the_policy_under_its_service(tmp_path: Path) -> None:
    body = f"""
        from mailsift import *
        STATE_DIR = {str(tmp_path / "state")!r}
        SMTP_SERVER = ('127.0.0.1', 10025)
        SRV = [recipient_policy([reject(smtp_comm('Forged.HELO', helo='^localhost$'))]), smtpd([], '127.0.0.1', 10024)]
        USER = None
    """
    path = tmp_path / "mailsift.conf.py"
    path.write_text(textwrap.dedent(body).lstrip("\n"), encoding="utf-8")
    result = CliRunner().invoke(main, ["check-config", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert "  smtpd(127.0.0.1:10024)\n" in result.stdout
    tree = "    recipient_policy(1 scanner(s)) at RCPT:\n      reject()\n        smtp_comm('Forged.HELO'"
    assert tree in result.stdout


def test_check_config_warns_of_a_policy_after_the_queue(tmp_path: Path) -> None:
    body = f"""
        from mailsift import *
        STATE_DIR = {str(tmp_path / "state")!r}
        SMTP_SERVER = ('127.0.0.1', 10025)
        SRV = [recipient_policy([const(0.0, '')]), smtpd([], '127.0.0.1', 10024, after_queue=True)]
    """
    path = tmp_path / "mailsift.conf.py"
    path.write_text(textwrap.dedent(body).lstrip("\n"), encoding="utf-8")
    [warning] = config.warnings(config.load(str(path)))
    assert "after_queue=True and a recipient_policy: a recipient refused after the queue is a bounce" in warning
