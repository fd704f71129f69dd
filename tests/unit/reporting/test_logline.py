"""The per-message record: qmail-scanner's line, JSON lines, the file writer and the SQL log, field by field."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, create_engine, select

from mailsift import const, drop, quarantine, regexp_scan
from mailsift.core.disposition import Outcome
from mailsift.core.mailpath import MailPath
from mailsift.core.pipeline import Pipeline
from mailsift.errors import ConfigError, ScannerError
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Decision
from mailsift.replies import OK, Reply
from mailsift.reporting import logline as logline_module
from mailsift.reporting.logline import (
    SYSLOG_LIMIT,
    build_record,
    json_line,
    log_file,
    log_sql,
    log_syslog,
    maillog_table,
    parse_networks,
    qmail_scanner_lines,
    sql_rows,
)
from mailsift.scanners.engines.common import SpamResult
from mailsift.settings import Settings
from mailsift.storage import db
from mailsift.storage.db import Database

NOW = 1_700_000_000.0

ATTACHED = (
    "Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    '--XX\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="my report.pdf"\r\n'
    "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n"  # 9 bytes decoded
    "--XX\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename*=utf-8''a%3Ab%09c%20d.txt\r\n"
    "\r\n12345\r\n--XX--\r\n"
)


def make_mail(
    subject: bytes = b"=?utf-8?q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=",
    message_id: bytes | None = b"<abc.123@example.net>",
    recipients: list[str] | None = None,
    body: str = ATTACHED,
    **envelope: Any,
) -> Mail:
    head = b"From: alice@example.net\r\nSubject: " + subject + b"\r\n"
    if message_id is not None:
        head += b"Message-ID: " + message_id + b"\r\n"
    fields = {
        "sender": "alice@example.net",
        "recipients": recipients if recipients is not None else ["bob@example.test"],
        "client_address": "192.0.2.7",
        "client_name": "mx.example.net",
        "helo": "mx.example.net",
        "queue_id": "4XyZ12",
    }
    fields.update(envelope)
    return Mail(Envelope(**fields), head + b"MIME-Version: 1.0\r\n" + body.encode())


async def decide(mail: Mail, *scanners: Any) -> Decision:
    return await Pipeline(list(scanners) or [const(0.0)]).evaluate(mail)


async def test_clean_message_line_field_by_field() -> None:
    mail = make_mail()
    record = build_record(mail, await decide(mail), Outcome(OK, "queued"), now=NOW, took=0.25)
    (line,) = qmail_scanner_lines(record)
    fields = line.split(" ")
    assert fields[0] == "Clear:RC:0(192.0.2.7):Q:4XyZ12:"
    assert fields[1] == "0.250000"
    assert fields[2] == str(mail.size)
    assert fields[3:5] == ["alice@example.net", "bob@example.test"]
    assert fields[5] == "Grüße_aus_Köln"  # decoded from RFC 2047, spaces as underscores
    assert fields[6] == "<abc.123@example.net>"
    assert fields[7:] == ["my_report.pdf:9", "a:b_c_d.txt:5"]  # separators inside names made harmless
    assert fields[8].rsplit(":", 1) == ["a:b_c_d.txt", "5"]
    assert (record.action, record.reply, record.status, record.note) == ("deliver", "250", "Clear", "queued")
    assert (record.client_name, record.helo, record.time) == ("mx.example.net", "mx.example.net", NOW)


async def test_no_message_id_raw_8bit_subject_null_sender() -> None:
    mail = make_mail(subject="Überweisung  \tjetzt".encode(), message_id=None, sender="", body="\r\nhi\r\n")
    record = build_record(mail, await decide(mail), Outcome(OK), took=0.0)
    assert record.subject == "Überweisung  \tjetzt"  # raw UTF-8 bytes read back as text
    assert record.message_id == ""
    (line,) = qmail_scanner_lines(record)
    fields = line.split(" ")
    assert fields[3] == "<>"
    assert fields[5] == "Überweisung___jetzt"
    assert fields[6] == "-"
    assert len(fields) == 7  # no attachments
    data = json.loads(json_line(record))
    assert data["subject"] == "Überweisung  \tjetzt"
    assert data["message_id"] == ""


async def test_invalid_utf8_and_nul_in_a_subject_are_replaced() -> None:
    mail = make_mail(subject=b"bad \xff\xfe byte", body="\r\nhi\r\n")
    record = build_record(mail, await decide(mail), Outcome(OK))
    assert record.subject == "bad \ufffd\ufffd byte"
    record.subject.encode("utf-8")  # encodable: the surrogate escapes are gone
    assert "\0" not in logline_module.clean("a\0b")


async def test_many_recipients_one_line_each() -> None:
    recipients = [f"user{i}@example.test" for i in range(300)]
    mail = make_mail(recipients=recipients)
    record = build_record(mail, await decide(mail), Outcome(OK))
    lines = qmail_scanner_lines(record)
    assert [line.split(" ")[4] for line in lines] == recipients
    assert len({line.split(" ", 4)[0] for line in lines}) == 1  # the same status on each
    assert json.loads(json_line(record))["recipients"] == recipients


async def test_relay_client_flag_and_missing_address() -> None:
    mail = make_mail(client_address="127.0.0.1")
    record = build_record(mail, await decide(mail), Outcome(OK), relay_clients=parse_networks(["127.0.0.0/8"], "x"))
    assert qmail_scanner_lines(record)[0].startswith("Clear:RC:1(127.0.0.1):")
    mail = make_mail(client_address="10.1.2.3")
    networks = parse_networks("10.0.0.0/8", "x")
    assert build_record(mail, await decide(mail), Outcome(OK), relay_clients=networks).relay_client
    mail = make_mail(client_address="", queue_id="")
    line = qmail_scanner_lines(build_record(mail, await decide(mail), Outcome(OK), relay_clients=networks))[0]
    assert line.startswith("Clear:RC:0(127.0.0.1): ")  # qmail-scanner's stand-in, and no Q: without a queue id
    with pytest.raises(ConfigError, match="not a network"):
        parse_networks(["nonsense"], "log_sql")


async def test_statuses() -> None:
    mail = make_mail()
    eicar = regexp_scan([("Eicar Test: x", "hello")])
    quarantined = await decide(mail, quarantine("virus", eicar))
    record = build_record(mail, quarantined, Outcome(OK, "", ("q1",)))
    assert record.status == "Quarantined_Eicar Test: x"
    assert record.quarantine == ("q1",)
    assert qmail_scanner_lines(record)[0].startswith("Quarantined_Eicar_Test__x:RC:0(")  # no stray ':' or space
    assert build_record(mail, await decide(mail, drop(eicar)), Outcome(OK)).status == "Dropped_Eicar Test: x"
    rejected = await decide(mail, eicar)
    assert build_record(mail, rejected, Outcome(rejected.reply)).status == "Rejected_Eicar Test: x"
    failed = Decision.tempfail(ScannerError("clamd down"))
    assert build_record(mail, failed, Outcome(failed.reply)).status == "Tempfail_ScannerError"
    clean = await decide(mail)
    assert build_record(mail, clean, Outcome(Reply(451, "4.4.1", "no"))).status == "Tempfail"
    assert build_record(mail, clean, Outcome(Reply(554, "5.7.1", "no"))).status == "Refused"


async def test_spam_engine_result_shows_as_sa() -> None:
    mail = make_mail()
    spam = SpamResult(1.5, "SPAM", "spamassassind", score=7.5, required=5.0)
    decision = Decision.from_results([spam])
    record = build_record(mail, decision, Outcome(OK))
    assert ":SA:1(7.5/5.0):" in qmail_scanner_lines(record)[0]
    assert json.loads(json_line(record))["spam"] == {"spam": True, "score": 7.5, "required": 5.0}
    ham = Decision.from_results([SpamResult(0.2, "", "spamassassind", score=1.0, required=5.0)])
    assert ":SA:0(1.0/5.0):" in qmail_scanner_lines(build_record(mail, ham, Outcome(OK)))[0]


async def test_syslog_limit_cuts_long_lines() -> None:
    names = "".join(
        "--XX\r\nContent-Type: text/plain\r\n"
        f'Content-Disposition: attachment; filename="{"n" * 40}{i}.txt"\r\n\r\nx\r\n'
        for i in range(60)
    )
    mail = make_mail(body=names + "--XX--\r\n", subject=b"s" * 5000)
    mail = Mail(
        mail.envelope, mail.raw.replace(b"MIME-Version: 1.0\r\n", b"Content-Type: multipart/mixed; boundary=XX\r\n")
    )
    record = build_record(mail, await decide(mail), Outcome(OK))
    assert len(record.attachments) == 60
    assert len(record.subject) == logline_module.MAX_FIELD  # bounded
    (line,) = qmail_scanner_lines(record, SYSLOG_LIMIT)
    assert len(line) == SYSLOG_LIMIT
    assert len(qmail_scanner_lines(record)[0]) > SYSLOG_LIMIT


async def test_json_line_field_by_field() -> None:
    mail = make_mail()
    record = build_record(mail, await decide(mail), Outcome(OK), now=NOW, took=0.5)
    line = json_line(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["time"] == "2023-11-14T22:13:20+00:00"
    assert data["subject"] == "Grüße aus Köln"
    assert data["attachments"] == [{"name": "my report.pdf", "size": 9}, {"name": "a:b\tc d.txt", "size": 5}]
    expected = {
        "queue_id": "4XyZ12",
        "status": "Clear",
        "action": "deliver",
        "reply": "250",
        "relay_client": False,
        "client_address": "192.0.2.7",
        "sender": "alice@example.net",
        "recipients": ["bob@example.test"],
        "message_id": "<abc.123@example.net>",
        "elapsed": 0.5,
        "size": mail.size,
        "spam": None,
    }
    assert {key: data[key] for key in expected} == expected


# --------------------------------------------------------------------------- file


def path_for(tmp_path: Path, hooks: tuple[Any, ...], **settings: Any) -> MailPath:
    state = Settings(state_dir=str(tmp_path), hooks=hooks, **settings)
    for hook in hooks:
        hook.check(state)
    return MailPath([drop(regexp_scan([("Bad", "BADWORD")]))], state, next_hop=("127.0.0.1", 9))


def dropped_mail(queue_id: str, **options: Any) -> Mail:
    mail = make_mail(queue_id=queue_id, **options)
    return Mail(mail.envelope, mail.raw.replace(b"hello", b"BADWORD"))


async def test_log_file_text_json_and_rotation(tmp_path: Path) -> None:
    text, as_json = log_file("mail.log"), log_file(str(tmp_path / "mail.json"), json=True)
    path = path_for(tmp_path, (text, as_json))
    await path.process(dropped_mail("q1"))
    await path.process(dropped_mail("q2", recipients=["a@x.test", "b@x.test"]))
    lines = (tmp_path / "mail.log").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3  # one per recipient
    when, first = lines[0].split(" ", 1)
    assert when[:2] == "20"
    assert first.startswith("Dropped_Bad:RC:0(192.0.2.7):Q:q1: ")
    assert [line.split(" ")[5] for line in lines] == ["bob@example.test", "a@x.test", "b@x.test"]
    records = [json.loads(line) for line in (tmp_path / "mail.json").read_text(encoding="utf-8").splitlines()]
    assert [r["queue_id"] for r in records] == ["q1", "q2"]
    assert records[1]["recipients"] == ["a@x.test", "b@x.test"]
    assert records[0]["status"] == "Dropped_Bad"
    os.rename(tmp_path / "mail.log", tmp_path / "mail.log.1")  # logrotate
    await path.process(dropped_mail("q3"))
    assert "Q:q3:" in (tmp_path / "mail.log").read_text()
    assert "Q:q3:" not in (tmp_path / "mail.log.1").read_text()
    await path.close()


def test_log_file_in_a_state_dir_not_made_yet(tmp_path: Path) -> None:
    """STATE_DIR itself may be missing at load (serve and every command make it next); a directory
    below it or elsewhere must exist."""
    state = tmp_path / "state"
    for name in ("mail.json", "./mail.json", str(state / "mail.log")):
        hook = log_file(name)
        hook.check(Settings(state_dir=str(state)))
        assert os.path.dirname(os.path.normpath(hook.resolved)) == str(state)
    with pytest.raises(ConfigError, match="does not exist"):
        log_file("log/mail.json").check(Settings(state_dir=str(state)))
    with pytest.raises(ConfigError, match="does not exist"):
        log_file(str(tmp_path / "elsewhere" / "mail.log")).check(Settings(state_dir=str(state)))
    (tmp_path / "file").write_text("")  # a STATE_DIR path that is a file: not "not made yet"
    with pytest.raises(ConfigError, match="does not exist"):
        log_file("mail.json").check(Settings(state_dir=str(tmp_path / "file")))


@pytest.mark.skipif(os.geteuid() != 0, reason="only root creates a file for another user")
async def test_a_log_file_a_root_process_creates_belongs_to_user(tmp_path: Path) -> None:
    """fusefs stays root and may write the log first: the file it creates is USER's, so the workers
    (as USER) can append; a file that exists keeps its owner."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    created, existing = log_file("new.log"), log_file("old.log")
    (tmp_path / "old.log").write_text("")
    path = path_for(tmp_path, (created, existing), user="nobody")
    await path.process(dropped_mail("q1"))
    await path.close()
    made = (tmp_path / "new.log").stat()
    assert (made.st_uid, made.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert (tmp_path / "old.log").stat().st_uid == 0
    assert "Q:q1" in (tmp_path / "old.log").read_text()
    plain = log_file("mine.log")
    path = path_for(tmp_path, (plain,))  # USER = None: root's own file
    await path.process(dropped_mail("q2"))
    await path.close()
    assert (tmp_path / "mine.log").stat().st_uid == 0


async def test_log_file_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hook = log_file("nowhere/mail.log")
    with pytest.raises(ConfigError, match="does not exist"):
        hook.check(Settings(state_dir=str(tmp_path)))
    (tmp_path / "gone").mkdir()
    hook = log_file(str(tmp_path / "gone" / "mail.log"))
    path = path_for(tmp_path, (hook,))
    (tmp_path / "gone").rmdir()  # the directory vanished while running: the hook fails, the reply does not
    with caplog.at_level(logging.ERROR, "mailsift.hooks"):
        _, outcome = await path.process(dropped_mail("q9"))
    assert outcome.reply.code == 250
    assert "hook log_file" in caplog.text
    await path.close()


# --------------------------------------------------------------------------- SQL


def maillog_rows(database: Database) -> list[dict[str, Any]]:
    def read(connection: Any) -> list[dict[str, Any]]:
        return [dict(row._mapping) for row in connection.execute(select(maillog_table).order_by(maillog_table.c.id))]

    return database.call(read)


async def test_log_sql_rows_field_by_field(tmp_path: Path, database: Database) -> None:
    hook = log_sql()
    path = path_for(tmp_path, (hook,), database=database)
    recipients = [f"user{i}@example.test" for i in range(50)]
    await path.process(dropped_mail("q1", recipients=recipients, subject=b"=?utf-8?b?w5xiZXJ3ZWlzdW5n?="))
    await path.process(dropped_mail("q2", message_id=None, sender="", client_address="127.0.0.1"))
    await hook.flush()
    rows = maillog_rows(database)
    assert [row["recipient"] for row in rows] == [*recipients, "bob@example.test"]
    first, last = rows[0], rows[-1]
    assert first["queue_id"] == "q1"
    assert first["status"] == "Dropped_Bad"
    assert (first["action"], first["reply"], first["level"], first["name"]) == ("drop", "250", 1.0, "Bad")
    assert first["scanner"] == "regexp_scan"
    assert (first["relay_client"], first["client_address"], first["client_name"]) == (
        False,
        "192.0.2.7",
        "mx.example.net",
    )
    assert first["helo"] == "mx.example.net"
    assert first["sender"] == "alice@example.net"
    assert first["subject"] == "Überweisung"
    assert first["message_id"] == "<abc.123@example.net>"
    assert json.loads(first["attachments"]) == [
        {"name": "my report.pdf", "size": 9},
        {"name": "a:b\tc d.txt", "size": 5},
    ]
    assert first["size"] > 0
    assert first["elapsed"] >= 0
    assert (first["spam_score"], first["spam_required"], first["quarantine"]) == (None, None, "")
    assert first["time"] > NOW  # wall-clock Unix seconds
    assert (last["queue_id"], last["sender"], last["message_id"], last["relay_client"]) == ("q2", "", "", True)
    await path.close()


async def test_log_sql_failure_never_changes_the_reply(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broken = db.database(f"postgresql+psycopg://nobody@/x?host={tmp_path}&port=1", busy_timeout=1)
    hook = log_sql(broken)
    path = path_for(tmp_path, (hook,))
    with caplog.at_level(logging.WARNING, "mailsift.logline"):
        _, outcome = await path.process(dropped_mail("q1"))
        assert outcome.reply.code == 250
        await hook.flush()
    assert "log_sql: queue_id=q1 not logged" in caplog.text
    await path.close()


async def test_log_sql_bounds_pending_writes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    database = db.sqlite()
    database.configure(str(tmp_path))
    hook = log_sql(database, max_pending=2)
    path = path_for(tmp_path, (hook,))
    with caplog.at_level(logging.WARNING, "mailsift.logline"):
        for number in range(5):  # no await between the hooks' writes and the next message: they pile up
            mail = dropped_mail(f"q{number}")
            decision = await path.pipeline.evaluate(mail)
            await hook.after(mail, decision, Outcome(OK), path.settings)
    assert hook.dropped == 3
    await path.close()  # waits for the pending writes
    assert [row["queue_id"] for row in maillog_rows(database)] == ["q0", "q1"]
    assert "2 writes pending" in caplog.text


def test_log_sql_needs_a_database(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no database"):
        log_sql().check(Settings(state_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="db must be"):
        log_sql("sqlite")  # type: ignore[arg-type]


def test_config_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown facility"):
        log_syslog("nosuch")
    with pytest.raises(ConfigError, match="address"):
        log_syslog(address=("host",))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="json must be"):
        log_file("x.log", json="yes")  # type: ignore[arg-type]
    assert log_syslog("local3").priority == 19 * 8 + 6


def test_the_migration_builds_the_maillog_table(tmp_path: Path) -> None:
    import mailsift.reporting.tracking  # noqa: F401 - its indexes on maillog (migration 0008) belong to the table too
    from mailsift.storage import migrations

    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    with engine.begin() as connection:
        migrations.upgrade(connection)
    only_maillog = MetaData()
    maillog_table.to_metadata(only_maillog)
    with engine.begin() as connection:
        ours = {"include_name": lambda name, kind, parent: kind != "table" or name == "maillog"}
        differences = compare_metadata(MigrationContext.configure(connection, opts=ours), only_maillog)
    assert differences == []
    engine.dispose()


async def test_two_nodes_log_into_one_database_each_row_and_story_names_its_node(
    tmp_path: Path, database: Database
) -> None:
    """Issue 15 item 5: nodes alpha and beta (different NODE) share one DATABASE; every row says
    which took the message, and tracking on either finds both, each story with its node."""
    from mailsift.reporting.tracking import TrackQuery, find_stories

    hooks = {name: log_sql() for name in ("alpha", "beta")}
    paths = {name: path_for(tmp_path, (hook,), database=database, node=name) for name, hook in hooks.items()}
    await paths["alpha"].process(dropped_mail("qa"))
    await paths["beta"].process(dropped_mail("qb", recipients=["x@example.test", "y@example.test"]))
    for hook in hooks.values():
        await hook.flush()
    assert sorted((row["queue_id"], row["node"]) for row in maillog_rows(database)) == [
        ("qa", "alpha"),
        ("qb", "beta"),
        ("qb", "beta"),
    ]
    stories = database.call(find_stories, TrackQuery()).stories
    assert sorted((story.queue_id, story.node) for story in stories) == [("qa", "alpha"), ("qb", "beta")]
    (only_beta,) = database.call(find_stories, TrackQuery(node="beta")).stories
    assert only_beta.queue_id == "qb"
    assert only_beta.as_dict()["node"] == "beta"
    assert "by node beta" in only_beta.events()[0].text
    for path in paths.values():
        await path.close()


async def test_text_lines_name_the_node_when_node_is_set_and_stay_qmail_scanners_otherwise(tmp_path: Path) -> None:
    mail = make_mail()
    record = build_record(mail, await decide(mail), Outcome(OK), now=NOW, took=0.25, node="gw-b")
    (plain,) = qmail_scanner_lines(record)
    (named,) = qmail_scanner_lines(record, node=True)
    assert plain.split(" ")[0] == "Clear:RC:0(192.0.2.7):Q:4XyZ12:"
    assert named.split(" ")[0] == "Clear:RC:0(192.0.2.7):Q:4XyZ12:node=gw-b:"
    assert named.split(" ")[1:] == plain.split(" ")[1:]  # every other field keeps its place
    assert json.loads(json_line(record))["node"] == "gw-b"  # JSON and SQL always carry it
    assert sql_rows(record)[0]["node"] == "gw-b"
    text = log_file("mail.log")
    path = path_for(tmp_path, (text,), node="gw-b")
    await path.process(dropped_mail("q1"))
    await path.close()
    (line,) = (tmp_path / "mail.log").read_text(encoding="utf-8").splitlines()
    assert line.split(" ")[1] == "Dropped_Bad:RC:0(192.0.2.7):Q:q1:node=gw-b:"
