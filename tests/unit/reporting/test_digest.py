"""The daily digest: collecting (quarantine and maillog), include/exclude, groups, the templates,
the links in the reports, and ``mailsift report`` sending through a real SMTP next hop."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailsift.cli.report import report_command
from mailsift.errors import ConfigError
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Result
from mailsift.reporting import digest, links
from mailsift.reporting.digest import (
    DigestEntry,
    LinkMaker,
    Report,
    build_reports,
    collect,
    expand,
    fully_qualified,
    read_detail,
    render,
    reporter,
)
from mailsift.reporting.logline import insert_rows
from mailsift.storage import db
from mailsift.storage.quarantine.dbstore import DATABASE_PATH, DatabaseStore
from mailsift.storage.quarantine.index import mark_released
from mailsift.testing import RecordingServer, free_port
from tests.helpers.catalogs import catalog_languages, compiled
from tests.helpers.links import Gateway
from tests.helpers.messages import parse, text_of
from tests.helpers.postgres import fresh_database, postgres  # noqa: F401 - the fixture

NOW = 1_700_000_000.0
HOUR = 3600.0
KEY = b"k" * 40
BASE = "https://mail.example.com/webq"


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mailsift-digest-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def entry(
    recipient: str, *, status: str = "quarantined", sender: str = "eve@spam.example", **kw: object
) -> DigestEntry:
    values: dict[str, object] = {
        "status": status,
        "time": NOW - HOUR,
        "sender": sender,
        "recipient": recipient,
        "subject": "Cheap pills",
        "name": "SPAM",
        "scanner": "spamassassind",
        "level": 7.5,
        "client": "192.0.2.9",
        "entry_id": "20240101T000000-abcd" if status == "quarantined" else "",
        "category": "spam" if status == "quarantined" else "",
    }
    values.update(kw)
    return DigestEntry(**values)  # type: ignore[arg-type]


def maker(lifetime: float = 7 * 86400) -> LinkMaker:
    return LinkMaker(links.LinkSigner(KEY), BASE, lifetime, time.time())


# --------------------------------------------------------------------------- who is told


def test_each_recipient_gets_its_own_report() -> None:
    reports = build_reports(
        [entry("bob@example.test"), entry("carol@example.test"), entry("Bob@Example.test", subject="Second")],
        reporter(),
    )
    assert [(r.to, len(r.entries)) for r in reports] == [("bob@example.test", 2), ("carol@example.test", 1)]


def test_include_and_exclude_select_recipients() -> None:
    found = [entry("bob@example.test"), entry("root@example.test"), entry("ann@other.test")]
    config = reporter(include="@example.test$", exclude="^root@")
    assert [r.to for r in build_reports(found, config)] == ["bob@example.test"]
    assert [r.to for r in build_reports(found, reporter(exclude="^root@"))] == ["ann@other.test", "bob@example.test"]
    assert [r.to for r in build_reports(found, reporter(include="@EXAMPLE.test$"))] == [
        "bob@example.test",
        "root@example.test",
    ]  # addresses match in any case
    fx = reporter(include_fx=lambda a: a.startswith("ann"), exclude_fx=lambda a: a.endswith(".invalid"))
    assert [r.to for r in build_reports(found, fx)] == ["ann@other.test"]


def test_groups_send_a_domain_to_its_admin() -> None:
    found = [
        entry("bob@example.test"),
        entry("carol@example.test"),
        entry("ann@other.test"),
        entry("joe@quiet.test"),
        entry("zed@elsewhere.test"),
    ]
    config = reporter(
        groups=[
            ["@example.test$", "admin@example.test"],
            ["@quiet.test$", ""],  # nobody is told about quiet.test
            ["@other.test$", "postmaster@other.test"],
        ]
    )
    reports = {r.to: r for r in build_reports(found, config)}
    assert sorted(reports) == ["admin@example.test", "postmaster@other.test", "zed@elsewhere.test"]
    assert [e.recipient for e in reports["admin@example.test"].entries] == ["bob@example.test", "carol@example.test"]
    catch_all = reporter(groups=[["@example.test$", "admin@example.test"], [".", "root@localhost"]])
    assert sorted(r.to for r in build_reports(found, catch_all)) == ["admin@example.test", "root@localhost"]


def test_a_report_lists_at_most_max_entries() -> None:
    found = [entry("bob@example.test", time=NOW - i, subject=f"n{i}") for i in range(7)]
    [report] = build_reports(found, reporter(max_entries=5))
    assert (len(report.entries), report.omitted) == (5, 2)
    assert [e.subject for e in report.entries] == ["n6", "n5", "n4", "n3", "n2"]  # oldest first
    assert "... and 2 more message(s) not listed here." in text_of(
        render(report, reporter(max_entries=5), since=NOW - 86400, links=maker(), hostname="gw.example")
    )


# --------------------------------------------------------------------------- templates


def test_the_default_report_lists_entries_with_links() -> None:
    report = Report(
        "bob@example.test",
        (
            entry("bob@example.test"),
            entry("bob@example.test", status="rejected", subject="Invoice", name="Policy.Exe", scanner="attach_name"),
        ),
    )
    data = render(report, reporter(), since=NOW - 86400, links=maker(), hostname="gw.example")
    message = parse(data)
    assert message["To"] == "bob@example.test"
    assert message["From"] == "postmaster@gw.example"
    assert message["Subject"] == "Mail not delivered to you: 1 quarantined, 1 rejected"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["X-Mailsift-Notification"] == "digest"
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    text = text_of(data)
    assert "quarantined: Spam\n" in text  # a human verdict, not "SPAM [spamassassind=7.50]" (issue 13)
    assert "spamassassind" not in text
    assert "rejected: Policy.Exe" in text
    release = re.findall(r"Release: +(\S+)", text)
    whitelist = re.findall(r"Whitelist: +(\S+)", text)
    assert len(release) == 1  # the rejected message has no release link (its line is left out)
    assert len(whitelist) == 2
    assert release[0].startswith(f"{BASE}/link/release/")
    claim = links.LinkSigner(KEY).verify(release[0].rsplit("/", 1)[1], links.RELEASE)
    assert (claim.entry_id, claim.recipient) == ("20240101T000000-abcd", "bob@example.test")
    white = links.LinkSigner(KEY).verify(whitelist[1].rsplit("/", 1)[1], links.WHITELIST)
    assert (white.sender, white.recipient, white.entry_id) == ("eve@spam.example", "bob@example.test", "")


def test_links_expire_after_link_lifetime() -> None:
    report = Report("bob@example.test", (entry("bob@example.test"),))
    text = text_of(render(report, reporter(), since=NOW, links=maker(lifetime=HOUR), hostname="gw"))
    token = re.findall(r"Release: +(\S+)", text)[0].rsplit("/", 1)[1]
    signer = links.LinkSigner(KEY)
    assert signer.verify(token, links.RELEASE, now=time.time() + HOUR - 60).recipient == "bob@example.test"
    with pytest.raises(links.LinkError):
        signer.verify(token, links.RELEASE, now=time.time() + HOUR + 60)
    with pytest.raises(links.LinkError):
        links.LinkSigner(b"z" * 40).verify(token, links.RELEASE)


def test_custom_sagator_templates() -> None:
    config = reporter(
        begin=(
            "Subject: Report for $TO ($COUNT)\nFrom: filter@example.test\nReply-To: help@example.test\n\nHello $TO.\n"
        ),
        body="* $DATETIME $SENDER [$SENTBY_IP] $STATUS $VIRNAME $$5 ${SUBJECT}\n  release: $RELEASE_URL\n",
        end="Bye from $HOSTNAME, $UNKNOWN stays.\n",
    )
    report = Report("bob@example.test", (entry("bob@example.test", status="dropped", sender=""),))
    data = render(report, config, since=NOW, links=maker(), hostname="gw.example")
    message = parse(data)
    assert message["Subject"] == "Report for bob@example.test (1)"
    assert message["From"] == "filter@example.test"
    assert message["Reply-To"] == "help@example.test"
    text = text_of(data)
    assert text.startswith("Hello bob@example.test.\n")
    assert "* 2023-11-14 21:13:20 <> [192.0.2.9] dropped SPAM $5 Cheap pills\n" in text
    assert "release:" not in text
    assert "Whitelist" not in text
    assert "Bye from gw.example, $UNKNOWN stays." in text


def test_values_from_the_mail_cannot_inject_headers_or_lines() -> None:
    hostile = entry(
        "bob@example.test",
        subject="Hi\r\nBcc: victim@example.test\r\n\r\nInjected body",
        sender="eve@spam.example\nX-Evil: 1",
        name="Ünïcode ☃ virus",
    )
    config = reporter(begin="Subject: $COUNT for $TO\n\nfirst\n", body="$SUBJECT | $SENDER | $VIRNAME\n")
    data = render(Report("bob@example.test", (hostile,)), config, since=NOW, links=maker(), hostname="gw")
    message = parse(data)
    assert message["Bcc"] is None
    assert message["X-Evil"] is None
    text = text_of(data)
    assert "Hi  Bcc: victim@example.test    Injected body | eve@spam.example X-Evil: 1 | Ünïcode ☃ virus" in text
    assert data.isascii()


def test_verdicts_read_as_a_person_reads_them(tmp_path: Path) -> None:
    head = "X-Mailsift-Size: 10\r\nX-Mailsift-Detail: score=12.3 required=5.0 tests=BAYES_99,URIBL_BLACK\r\n\r\n"
    (tmp_path / "spam").mkdir()
    (tmp_path / "spam" / "f1").write_bytes(head.encode() + b"0123456789")
    entries = (
        entry("bob@example.test", scanner="spamassassind(SPAMD)*const(1.0)", level=99.9, path="spam/f1", size=10),
        entry("bob@example.test", name="Eicar-Test-Signature", scanner="clamd", category="virus", level=1.0),
        entry("bob@example.test", status="rejected", detail="score=8.0 required=5.0", scanner="spamassassind"),
        entry("bob@example.test", path="spam/gone", size=10),  # expired meanwhile: the verdict without a score
    )
    data = render(
        Report("bob@example.test", entries),
        reporter(),
        since=NOW,
        links=maker(),
        hostname="gw",
        quarantine_dir=str(tmp_path),
    )
    text = text_of(data)
    assert "quarantined: Spam, score 12.3 of 5.0\n" in text
    assert "quarantined: Virus: Eicar-Test-Signature\n" in text
    assert "rejected: Spam, score 8.0 of 5.0\n" in text
    assert "quarantined: Spam\n" in text
    assert "const" not in text
    assert "99.90" not in text
    custom = reporter(body="$STATUS $VIRNAME [$SCANNER_NAME=$LEVEL] / $VERDICT\n")  # SAGATOR's variables stay
    assert "quarantined Eicar-Test-Signature [clamd=1.00] / Virus: Eicar-Test-Signature" in text_of(
        render(Report("bob@example.test", entries[1:2]), custom, since=NOW, links=maker(), hostname="gw")
    )


def test_the_from_address_is_postmaster_at_the_fully_qualified_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    report = Report("bob@example.test", (entry("bob@example.test"),))
    assert parse(render(report, reporter(), since=NOW, links=maker(), hostname="gw.example"))["From"] == (
        "postmaster@gw.example"
    )
    own = reporter(from_address="digest@example.test")
    assert parse(render(report, own, since=NOW, links=maker(), hostname="gw.example"))["From"] == "digest@example.test"
    # /etc/hosts: "127.0.0.1 localhost mx1": getfqdn() says localhost; the host's canonical name is used
    monkeypatch.setattr(digest.socket, "gethostname", lambda: "mx1")
    canonical = [(2, 1, 6, "mx1.example.test", ("127.0.0.1", 0))]
    monkeypatch.setattr(digest.socket, "getaddrinfo", lambda *args: canonical)
    assert fully_qualified("localhost") == "mx1.example.test"
    assert fully_qualified("gw.example") == "gw.example"
    canonical[:] = [(2, 1, 6, "localhost", ("127.0.0.1", 0))]
    assert fully_qualified("localhost.localdomain") == "mx1"  # nothing better known: the host's own name
    monkeypatch.setattr(digest.socket, "gethostname", lambda: "localhost")
    assert fully_qualified("localhost") == "localhost"


def test_a_report_speaks_the_language_of_its_address() -> None:
    entries = (entry("bob@example.sk"), entry("bob@example.sk", status="rejected", name="Policy.Exe", scanner="x"))
    config = reporter(languages={"sk": "sk", "example.de": "de"})
    slovak = parse(render(Report("bob@example.sk", entries), config, since=NOW, links=maker(), hostname="gw"))
    assert slovak["Content-Language"] == "sk"
    assert "karant" in slovak["Subject"]
    text = text_of(bytes(slovak))
    assert "odmietnut" in text  # $STATUS
    assert "Mail not delivered" not in slovak["Subject"]
    assert "Release:" not in text
    german = parse(render(Report("ann@example.de", entries), config, since=NOW, links=maker(), hostname="gw"))
    assert german["Content-Language"] == "de"
    assert "abgewiesen" in text_of(bytes(german))
    english = parse(render(Report("ann@example.com", entries), config, since=NOW, links=maker(), hostname="gw"))
    assert english["Subject"] == "Mail not delivered to you: 1 quarantined, 1 rejected"
    assert reporter(language="cs").language_of("x@example.com") == "cs"


def test_own_templates_stay_as_given_in_every_language() -> None:
    config = reporter(
        begin="Subject: Hlásenie $COUNT\n\nAhoj $TO\n", body="* $STATUS $VIRNAME\n", languages={"de": "de"}
    )
    report = Report("bob@example.de", (entry("bob@example.de"),))
    message = parse(render(report, config, since=NOW, links=maker(), hostname="gw"))
    assert message["Subject"] == "Hlásenie 1"
    text = text_of(bytes(message))
    assert text.startswith("Ahoj bob@example.de\n")
    assert "* in Quarantäne SPAM" in text  # $STATUS in the report's language
    assert "automatische Nachricht" in text  # the shipped end, in German


@pytest.mark.parametrize("language", ["en", *catalog_languages()])
def test_every_language_renders_a_whole_report(language: str) -> None:
    entries = tuple(entry("bob@example.test", time=NOW - i, subject=f"n{i}") for i in range(3))
    config = reporter(language=language, max_entries=2)
    [report] = build_reports(entries, config)
    data = render(report, config, since=NOW - 86400, links=maker(), hostname="gw")
    assert data.isascii()
    message = parse(data)
    text = text_of(data)
    assert message["Subject"]
    assert "$" not in message["Subject"]
    assert "$" not in text  # every variable of the translated templates expanded
    assert len(re.findall(r"/link/release/", text)) == 2
    assert not re.search(r"\Shttps?://", text)  # a label longer than its column keeps a space before the link
    assert "1" in text.split("n1")[-1]  # $MORE counts the one left out
    if language != "en":
        assert "more message(s)" not in text
        assert "Please do not reply" not in text
        status = compiled(language).gettext("quarantined")  # $STATUS, the digest's word
        assert status != "quarantined"
        assert f"  {status}: " in text


def test_expand_leaves_out_lines_whose_variables_are_all_empty() -> None:
    template = reporter(body="a $X\nb $X $Y\nplain\n\n$Y\n").body
    assert expand(template, {"X": "", "Y": "y"}) == "b  y\nplain\n\ny\n"
    assert expand(template, {"X": "", "Y": ""}) == "plain\n\n"


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        ({"include": "(unclosed"}, "include: not a regular expression"),
        ({"groups": [["@x$"]]}, "groups are"),
        ({"begin": "no header here\n\ntext"}, "begin must start with header lines"),
        ({"body": "costs $ 5"}, "not a variable"),
        ({"webq": "mail.example.com"}, "webq must be the base URL"),
        ({"link_lifetime": "forever"}, "link_lifetime"),
        ({"link_lifetime": "365d"}, "between"),
        ({"max_entries": 0}, "max_entries"),
        ({"include_fx": "yes"}, "include_fx"),
        ({"language": "xx"}, "language 'xx' is not one of"),
        ({"languages": {"example.com": "ja"}}, "language 'ja'"),
        ({"languages": ["sk"]}, "languages must map"),
    ],
)
def test_bad_reporter_arguments_are_config_errors(arguments: dict[str, object], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        reporter(**arguments)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- collecting and sending


def maillog_row(recipient: str, action: str, when: float, **kw: object) -> dict[str, object]:
    row: dict[str, object] = {
        "time": when, "queue_id": "Q1", "status": f"{action}ed", "action": action, "reply": "554",
        "level": 1.0, "name": "Policy.Exe", "scanner": "attach_name", "relay_client": False,
        "client_address": "198.51.100.7", "client_name": "mx.spam.example", "helo": "mx", "elapsed": 0.1,
        "size": 100, "sender": "eve@spam.example", "recipient": recipient, "subject": "Invoice",
        "message_id": "<m@x>", "attachments": "[]", "spam_score": None, "spam_required": None,
        "quarantine": "", "note": "",
    }  # fmt: skip
    row.update(kw)
    return row


MESSAGE = b"From: eve@spam.example\r\nTo: bob@example.test\r\nSubject: Cheap pills\r\n\r\nBuy now.\r\n"


@pytest.fixture(params=["sqlite", "postgresql"])
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gateway]:
    with RecordingServer() as next_hop:
        database = "db.sqlite()"
        if request.param == "postgresql":
            database = f"db.database({fresh_database(request.getfixturevalue('postgres'), 'digest')!r})"
        instance = Gateway(tmp_path, next_hop.port, database)
        instance.next_hop = next_hop  # type: ignore[attr-defined]
        yield instance
        instance.settings.database.dispose()


def test_collect_held_quarantine_and_rejected_mail_of_the_window(gateway: Gateway) -> None:
    database = gateway.settings.database
    held = gateway.quarantine(MESSAGE, recipients=("bob@example.test", "carol@example.test"))
    released = gateway.quarantine(MESSAGE, recipients=("bob@example.test",))
    database.call(mark_released, released, "admin", ["bob@example.test"], time.time())
    now = time.time()
    database.call(
        insert_rows,
        [
            maillog_row("bob@example.test", "reject", now - HOUR),
            maillog_row("dan@example.test", "drop", now - 2 * HOUR),
            maillog_row("bob@example.test", "reject", now - 30 * HOUR),  # before the window
            maillog_row("bob@example.test", "deliver", now - HOUR),  # delivered: not reported
            maillog_row("bob@example.test", "quarantine", now - HOUR),  # in the index already
        ],
    )
    found = database.call(collect, now - 24 * HOUR, now)
    summary = sorted((e.status, e.recipient, e.entry_id) for e in found)
    assert summary == [
        ("dropped", "dan@example.test", ""),
        ("quarantined", "bob@example.test", held),
        ("quarantined", "carol@example.test", held),
        ("rejected", "bob@example.test", ""),
    ]
    rejected = next(e for e in found if e.status == "rejected")
    assert (rejected.client, rejected.name, rejected.subject) == ("198.51.100.7", "Policy.Exe", "Invoice")


def config_with(gateway: Gateway, extra: str) -> str:
    text = gateway.path.read_text() + extra
    gateway.path.write_text(text)
    return str(gateway.path)


def test_report_command_sends_each_user_a_digest(gateway: Gateway) -> None:
    next_hop: RecordingServer = gateway.next_hop  # type: ignore[attr-defined]
    entry_id = gateway.quarantine(MESSAGE, recipients=("bob@example.test",))
    gateway.settings.database.call(insert_rows, [maillog_row("carol@example.test", "reject", time.time() - HOUR)])
    result = CliRunner().invoke(
        report_command, ["-c", str(gateway.path), "--since", "24h", "--url", "http://127.0.0.1:8008/"]
    )
    assert result.exit_code == 0, result.output
    assert "2 report(s) sent, 0 failed" in result.stderr
    received = sorted(next_hop.messages, key=lambda m: m.recipients)
    assert [m.recipients for m in received] == [["bob@example.test"], ["carol@example.test"]]
    assert [m.sender for m in received] == ["<>", "<>"]  # MAIL FROM:<> (as aiosmtpd hands it on)
    bob = text_of(received[0].data)
    assert parse(received[0].data)["Auto-Submitted"] == "auto-generated"
    [release] = re.findall(r"Release: +(\S+)", bob)
    assert release.startswith("http://127.0.0.1:8008/link/release/")
    key = links.secret(gateway.settings.state_dir, None, gateway.settings.database)  # as webq reads it
    assert links.LinkSigner(key).verify(release.rsplit("/", 1)[1], links.RELEASE).entry_id == entry_id
    assert "Release:" not in text_of(received[1].data)


def test_report_dry_run_prints_and_sends_nothing(gateway: Gateway) -> None:
    next_hop: RecordingServer = gateway.next_hop  # type: ignore[attr-defined]
    gateway.quarantine(MESSAGE, recipients=("bob@example.test",))
    result = CliRunner().invoke(report_command, ["-c", str(gateway.path), "--dry-run", "--url", BASE])
    assert result.exit_code == 0, result.output
    assert "==== report to <bob@example.test>" in result.stdout
    assert f"Release:   {BASE}/link/release/" in result.stdout
    assert "Auto-Submitted: auto-generated" in result.stdout
    assert next_hop.messages == []


def test_report_command_usage_errors(gateway: Gateway) -> None:
    gateway.quarantine(MESSAGE)
    no_url = CliRunner().invoke(report_command, ["-c", str(gateway.path)])
    assert no_url.exit_code == 2
    assert "no base URL" in no_url.stderr
    bad_url = CliRunner().invoke(report_command, ["-c", str(gateway.path), "--url", "javascript:alert(1)"])
    assert bad_url.exit_code == 2


def test_report_command_reports_a_failed_delivery(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, free_port())  # nothing listens there
    try:
        gateway.quarantine(MESSAGE)
        result = CliRunner().invoke(report_command, ["-c", str(gateway.path), "--url", BASE])
    finally:
        gateway.settings.database.dispose()
    assert result.exit_code == 1
    assert "report to <bob@example.test> not sent" in result.stderr


async def test_the_detail_of_a_message_kept_in_the_database_is_read_from_there(tmp_path: Path) -> None:
    """QUARANTINE_STORE = "database" (issue 15): the score comes from the head in the database, on any node."""
    database = db.sqlite()
    database.configure(str(tmp_path))
    try:
        mail = Mail(Envelope(sender="eve@spam.example", recipients=["bob@example.test"]), b"Subject: x\r\n\r\nbuy\r\n")
        where = await DatabaseStore(database).put(
            mail, "spam", Result(9.0, "SPAM", "spamassassind", "score=12.3 required=5.0")
        )
        quarantined = entry("bob@example.test", path=DATABASE_PATH, entry_id=where.rsplit("/", 1)[-1], size=mail.size)
        assert read_detail(str(tmp_path / "quarantine"), quarantined, database) == "score=12.3 required=5.0"
        assert read_detail(str(tmp_path / "quarantine"), quarantined) == ""  # no database given: no score
        data = render(
            Report("bob@example.test", (quarantined,)),
            reporter(),
            since=NOW,
            links=maker(),
            hostname="gw",
            quarantine_dir=str(tmp_path / "quarantine"),
            database=database,
        )
        assert "quarantined: Spam, score 12.3 of 5.0\n" in text_of(data)
    finally:
        database.dispose()
