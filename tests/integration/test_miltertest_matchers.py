"""Issue 16's matchers through the milter, driven by OpenDKIM's ``miltertest`` (a libmilter MTA):
``recipient_policy`` answering each RCPT, ``smtp_comm`` on the HELO step, ``tempfail``'s 451 4.7.1.
The scenarios are in ``milter/matchers.lua``."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator

import pytest

from mailsift import const, regexp_scan, reject
from mailsift.scanners.find import regexp_find, sql_find
from mailsift.scanners.smtpcomm import smtp_comm
from mailsift.scanners.tempfail import tempfail
from mailsift.services.milter import milter
from mailsift.services.rcptpolicy import recipient_policy
from mailsift.testing import ServiceThread
from tests.helpers.miltertest import needs_miltertest, run_case

pytestmark = needs_miltertest


@pytest.fixture(scope="module")
def filter_thread(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    state = tmp_path_factory.mktemp("milter-matchers")
    users = state / "users.db"
    with sqlite3.connect(users) as connection:
        connection.execute("CREATE TABLE users (address TEXT)")
        connection.execute("INSERT INTO users VALUES ('bob@example.test')")
    query = "SELECT 1 FROM users WHERE address = :recipient"
    lookup = sql_find(query, const(1.0, "User.Unknown"), url=f"sqlite:///{users}", invert=True)
    policy = recipient_policy([reject(lookup, message="User unknown")], reject="550 5.1.1")
    scanners = [
        reject(smtp_comm("Forged.HELO", helo=r"^localhost$")),
        tempfail(
            regexp_find("OUTBREAK-ME", regexp_scan([("Outbreak", "OUTBREAK")])),
            message="451 4.7.1 Outbreak, try again later",
        ),
    ]
    service = milter(scanners, "mailsift", "inet:0@127.0.0.1", recipient_policy=policy)
    with ServiceThread(service, state_dir=str(state)) as thread:
        yield thread


def miltertest(thread: ServiceThread, case: str) -> str:
    return run_case("matchers.lua", thread, case)


def test_recipient_policy_answers_each_rcpt(filter_thread: ServiceThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailsift")
    miltertest(filter_thread, "rcpt_policy")
    rcpt = [r.getMessage() for r in caplog.records if r.name == "mailsift.rcpt"]
    assert rcpt[0].startswith("rcpt reply=550 name=User.Unknown "), rcpt
    assert "to=<eve@example.test>" in rcpt[0]
    assert rcpt[1].startswith("rcpt reply=250 "), rcpt
    [line] = [r.getMessage() for r in caplog.records if r.name == "mailsift.mail"]
    assert line.startswith("RCP0001 action=deliver reply=250 "), line
    assert "to=<bob@example.test> " in line  # eve was refused at RCPT


@pytest.mark.parametrize("case", ["forged_helo", "outbreak"])
def test_helo_and_outbreak(filter_thread: ServiceThread, case: str) -> None:
    miltertest(filter_thread, case)
