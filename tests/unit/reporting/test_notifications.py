"""Notifications: who is told, when nobody may be, the templates in every language, the catalogs."""

from __future__ import annotations

import email
import email.policy
import gettext
import logging
import re
import socket
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailsift import config, regexp_scan, reject
from mailsift.core.disposition import Outcome
from mailsift.core.mailpath import MailPath
from mailsift.errors import ConfigError
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Decision, Disposition, QuarantineCopy, Result, SetDisposition
from mailsift.replies import OK_QUARANTINED, STORAGE_FAILED
from mailsift.reporting.notifications import (
    LANGUAGES,
    LOCALE_DIR,
    SILENT_VIRUSES,
    TEMPLATE_DIR,
    Notice,
    category_of,
    language_for,
    notify,
    suppression,
)
from mailsift.scanners.engines.common import SpamResult
from mailsift.settings import Settings
from mailsift.testing import RecordingServer, free_port
from tests.helpers.catalogs import (
    catalog_languages,
    compiled,
    extracted_messages,
    placeholders,
    po_path,
    read_catalog,
    template_messages,
)

HOST = "gw.example.test"


def make_mail(
    headers: str = "", sender: str = "alice@example.net", recipients: tuple[str, ...] = ("bob@example.org",)
) -> Mail:
    data = (
        f"From: {sender}\r\nTo: bob@example.org\r\nSubject: Quarterly report\r\n"
        f"Message-ID: <report.1@example.net>\r\nDate: Mon, 2 Mar 2026 10:00:00 +0000\r\n{headers}\r\nhello\r\n"
    ).encode()
    return Mail(Envelope(sender=sender, recipients=list(recipients), queue_id="Q1"), data)


def decided(
    name: str = "Bad-Attachment",
    scanner: str = "attach_name",
    disposition: Disposition = Disposition.REJECT,
    category: str | None = None,
) -> Decision:
    actions: tuple[QuarantineCopy | SetDisposition, ...] = (SetDisposition(disposition),)
    if category:
        actions = (QuarantineCopy(category), *actions)
    return Decision.from_results([Result(1.0, name, scanner, "part 2 (report.pif)", actions)])


def outcome_of(decision: Decision) -> Outcome:
    return Outcome(decision.reply, "", ("/q/policy/new/1700000000.1_20260302T100000-abcd1234.host",))


def notices(hook: notify, mail: Mail, decision: Decision) -> list[Notice]:
    return hook.notices(mail, decision, outcome_of(decision), HOST)


EVERYONE = {"sender": True, "recipients": True, "admin": "postmaster@example.org"}


# --------------------------------------------------------------------------- suppression rules


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("", "null sender"),
        ("<>", "null sender"),
        ("MAILER-DAEMON@mx.example.net", "automatic sender"),
        ("MAILER-DAEMON", "automatic sender"),
        ("postmaster@example.net", "automatic sender"),
        ("Postmaster@example.net", "automatic sender"),
        ("#@[]", "automatic sender"),  # qmail's double-bounce sender
        ("users-request@lists.example.net", "automatic sender"),
        ("owner-users@lists.example.net", "automatic sender"),
        ("users-owner@lists.example.net", "automatic sender"),
        ("users-bounces+bob=example.org@lists.example.net", "automatic sender"),
        ("bounce-12345@mailer.example.net", "automatic sender"),
        ("listserv@lists.example.net", "automatic sender"),
        ("majordomo@lists.example.net", "automatic sender"),
        ("noreply@shop.example.net", "automatic sender"),
        ("no-reply@shop.example.net", "automatic sender"),
        ("do-not-reply@shop.example.net", "automatic sender"),
    ],
)
def test_no_notification_for_null_and_automatic_senders(sender: str, expected: str) -> None:
    hook = notify("all", admin="postmaster@example.org")
    decision = decided()
    assert notices(hook, make_mail(), decision)  # the same message from a person: everyone told
    mail = make_mail(sender=sender)
    assert expected in suppression(mail, decision)
    assert notices(hook, mail, decision) == []  # nobody, not even the admin


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("List-Id: Users <users.lists.example.net>", "list mail (list-id)"),
        ("List-Unsubscribe: <mailto:users-leave@lists.example.net>", "list mail (list-unsubscribe)"),
        ("List-Post: <mailto:users@lists.example.net>", "list mail (list-post)"),
        ("Mailing-List: contact users-help@lists.example.net; run by ezmlm", "list mail (mailing-list)"),
        ("Precedence: bulk", "Precedence: bulk"),
        ("Precedence: list", "Precedence: list"),
        ("Precedence: Junk", "Precedence: junk"),
        ("Auto-Submitted: auto-replied", "Auto-Submitted: auto-replied"),
        ("Auto-Submitted: auto-generated", "Auto-Submitted: auto-generated"),
        ("X-Mailsift-Notification: sender; queue_id=Q0", "a notification"),
    ],
)
def test_no_notification_for_list_bulk_and_automatic_mail(header: str, expected: str) -> None:
    hook = notify("all", admin="postmaster@example.org")
    decision = decided()
    mail = make_mail(header + "\r\n")
    assert suppression(mail, decision) == expected
    assert notices(hook, mail, decision) == []


@pytest.mark.parametrize("header", ["Auto-Submitted: no", "Precedence: first-class", "X-List: not a list header"])
def test_ordinary_headers_do_not_suppress(header: str) -> None:
    mail = make_mail(header + "\r\n")
    assert suppression(mail, decided()) == ""
    assert len(notices(notify("all", admin="postmaster@example.org"), mail, decided())) == 3


@pytest.mark.parametrize(
    "virus", ["Worm.Mydoom.M", "W32/Netsky.P@mm", "Win.Worm.Bagle-1", "W32.Sober.X", "Email.Phishing.Bank-1", "SPAM"]
)
def test_no_notification_for_viruses_that_forge_senders(virus: str) -> None:
    hook = notify("all", admin="postmaster@example.org")
    assert len(notices(hook, make_mail(), decided("Win.Trojan.Agent-1", "clamd"))) == 3
    decision = decided(virus, "clamd")
    assert "forges senders" in suppression(make_mail(), decision)
    assert notices(hook, make_mail(), decision) == []


def test_the_silent_virus_list_is_configurable() -> None:
    assert "spam" in SILENT_VIRUSES  # the st patch's addition
    hook = notify("all", admin="postmaster@example.org", silent_viruses=("blaster",))
    assert notices(hook, make_mail(), decided("Worm.Blaster.A", "clamd")) == []
    assert len(notices(hook, make_mail(), decided("Worm.Mydoom.M", "clamd"))) == 3


# --------------------------------------------------------------------------- who is told


def test_default_is_qmail_scanners_psender_sender_only_for_policy_blocks() -> None:
    hook = notify()
    assert [n.party for n in notices(hook, make_mail(), decided())] == ["sender"]
    assert notices(hook, make_mail(), decided("Win.Trojan.Agent-1", "clamd")) == []  # a virus: forged sender


@pytest.mark.parametrize(
    ("spec", "policy", "virus"),
    [
        ("none", [], []),
        ("sender", ["sender"], ["sender"]),
        ("psender", ["sender"], []),
        ("recips", ["recipient", "recipient"], ["recipient", "recipient"]),
        ("precips", ["recipient", "recipient"], []),
        ("admin", ["admin"], ["admin"]),
        ("psender,admin", ["sender", "admin"], ["admin"]),
        ("all", ["sender", "recipient", "recipient", "admin"], ["sender", "recipient", "recipient", "admin"]),
    ],
)
def test_qmail_scanner_notify_words(spec: str, policy: list[str], virus: list[str]) -> None:
    hook = notify(spec, admin="postmaster@example.org")
    mail = make_mail(recipients=("bob@example.org", "carol@example.org"))
    assert [n.party for n in notices(hook, mail, decided())] == policy
    assert [n.party for n in notices(hook, mail, decided("Win.Trojan.Agent-1", "clamd"))] == virus


def test_each_recipient_gets_their_own_notice_in_their_language() -> None:
    hook = notify(recipients=True, sender=False, languages={"sk": "sk", "firma.example.cz": "cs"}, language="de")
    mail = make_mail(recipients=("jan@posta.sk", "eva@praha.firma.example.cz", "max@example.org"))
    got = notices(hook, mail, decided())
    assert [(n.to, n.language) for n in got] == [
        (("jan@posta.sk",), "sk"),
        (("eva@praha.firma.example.cz",), "cs"),
        (("max@example.org",), "de"),
    ]
    assert "eva@" not in got[0].body
    assert "max@" not in got[0].body


def test_language_for_domains() -> None:
    languages = {"sk": "sk", "example.cz": "cs"}
    assert language_for("a@b.sk", "en", languages) == "sk"
    assert language_for("a@mail.example.cz", "en", languages) == "cs"
    assert language_for("a@example.cz.evil.test", "en", languages) == "en"
    assert language_for("", "es", languages) == "es"


def test_categories_and_dispositions_limit_notifications() -> None:
    hook = notify(**EVERYONE)  # categories=('virus', 'policy') by default
    spam = Decision.from_results([SpamResult(1.0, "SPAM-high", "spamassassind", score=12.0, required=5.0)])
    assert category_of(spam) == "spam"
    assert notices(hook, make_mail(), spam) == []
    assert notices(notify(**EVERYONE, categories=("spam",), silent_viruses=()), make_mail(), spam)
    clean = Decision.from_results([Result(0.0, "", "attach_name")])
    assert notices(hook, make_mail(), clean) == []  # delivered: nothing to tell
    dropped = decided(disposition=Disposition.DROP)
    assert len(notices(hook, make_mail(), dropped)) == 3
    assert notices(notify(**EVERYONE, dispositions=("quarantine",)), make_mail(), dropped) == []


def test_nothing_is_sent_while_the_mta_will_retry() -> None:
    hook = notify(**EVERYONE)
    decision = decided(disposition=Disposition.QUARANTINE, category="policy")
    assert decision.reply == OK_QUARANTINED
    assert len(hook.notices(make_mail(), decision, Outcome(OK_QUARANTINED), HOST)) == 3
    # the quarantine write failed: 451, the MTA retries, the retry will be notified
    assert hook.notices(make_mail(), decision, Outcome(STORAGE_FAILED), HOST) == []


def test_category_of() -> None:
    assert category_of(decided(category="viruses")) == "viruses"  # the quarantine folder decides
    assert category_of(decided("Eicar-Test-Signature", "clamd")) == "virus"
    assert category_of(decided("Eicar", "parsemail(clamscan)")) == "virus"
    assert category_of(decided("SPAM", "spamassassind")) == "spam"
    assert category_of(decided("Bad-Attachment", "attach_name")) == "policy"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"spec": "psender,everybody"}, "comma-separated list"),
        ({"spec": "admin"}, "give admin="),
        ({"admin": "postmaster"}, "admin must be an address"),
        ({"language": "ja"}, "language 'ja' is not one of"),
        ({"languages": {"example.jp": "ja"}}, "language 'ja'"),
        ({"dispositions": ("deliver",)}, "dispositions must be among"),
        ({"categories": ()}, "categories must be names"),
        ({"sender": "policy"}, "sender must be True, False or a tuple"),
    ],
)
def test_bad_options_are_config_errors(arguments: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        notify(**arguments)  # type: ignore[arg-type]


def test_check_needs_a_next_hop_and_valid_templates(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no next hop for notifications"):
        notify().check(Settings(state_dir=str(tmp_path)))
    notify().check(Settings(state_dir=str(tmp_path), smtp_server=("127.0.0.1", 10025)))
    notify(next_hop=("127.0.0.1", 10026)).check(Settings(state_dir=str(tmp_path)))
    broken = tmp_path / "templates"
    broken.mkdir()
    (broken / "sender.txt").write_text("{% if %}")
    with pytest.raises(ConfigError, match=r"template sender\.txt"):
        notify(template_dir=str(broken), next_hop=("127.0.0.1", 10026)).check(Settings(state_dir=str(tmp_path)))


def test_notify_in_a_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.py"
    path.write_text(
        "from mailsift import *\nfrom mailsift.reporting.notifications import notify\n"
        f"STATE_DIR = {str(tmp_path)!r}\nSMTP_SERVER = ('127.0.0.1', 10025)\n"
        "HOOKS = [notify('psender,admin', admin='postmaster@example.org', languages={'sk': 'sk'})]\n"
    )
    (hook,) = config.load(str(path)).settings.hooks
    assert hook.describe() == "notify(sender=policy, admin=policy/virus; language=en)"
    path.write_text(
        f"from mailsift.reporting.notifications import notify\nSTATE_DIR = {str(tmp_path)!r}\nHOOKS = [notify()]\n"
    )
    with pytest.raises(ConfigError, match="no next hop for notifications"):
        config.load(str(path))


# --------------------------------------------------------------------------- templates and languages

KNOWN_PHRASE = {  # the sender's policy notice, per language
    "en": "was not delivered to its recipients",
    "sk": "nebola doručená adresátom",
    "cs": "nebyla doručena adresátům",
    "de": "den Empfängern nicht zugestellt",
    "es": "no fue entregado a sus destinatarios",
    "it": "non è stato recapitato ai destinatari",
    "fr": "n'a pas été remis à ses destinataires",
    "pt": "não foi entregue aos destinatários",
    "nl": "niet bij de ontvangers afgeleverd",
    "pl": "nie została doręczona odbiorcom",
    "sv": "har inte levererats till mottagarna",
    "tr": "alıcılarına teslim edilmedi",
    "lt": "gavėjams nepristatytas",
    "af": "nie aan die ontvangers afgelewer nie",
    "zh_CN": "未投递给收件人",
}


def test_every_language_renders_and_is_really_translated() -> None:
    assert set(KNOWN_PHRASE) <= set(LANGUAGES)  # every other catalog: test_a_notification_renders_in_every_...
    bodies = {}
    for language in KNOWN_PHRASE:
        (notice,) = notices(notify(language=language), make_mail(), decided())
        assert notice.language == language
        assert KNOWN_PHRASE[language] in notice.body
        for other, phrase in KNOWN_PHRASE.items():
            assert other == language or phrase not in notice.body
        assert "Quarterly report" in notice.subject
        assert "Quarterly report" in notice.body
        assert "Bad-Attachment" in notice.body
        bodies[language] = notice.body
    assert len(set(bodies.values())) == len(KNOWN_PHRASE)


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("category", ["virus", "policy"])
@pytest.mark.parametrize("disposition", [Disposition.REJECT, Disposition.DROP, Disposition.QUARANTINE])
def test_every_template_renders_in_every_language(language: str, category: str, disposition: Disposition) -> None:
    hook = notify(**EVERYONE, language=language, silent_viruses=())
    name, scanner = ("Win.Trojan.Agent-1", "clamd") if category == "virus" else ("Bad-Attachment", "attach_name")
    decision = decided(name, scanner, disposition, category if disposition is Disposition.QUARANTINE else None)
    got = notices(hook, make_mail(), decision)
    assert [n.party for n in got] == ["sender", "recipient", "admin"]
    english = gettext.NullTranslations()
    for notice in got:
        assert notice.subject
        assert "\n" not in notice.subject
        assert name in notice.body
        assert "<alice@example.net>" in notice.body
        assert all(len(line) <= 100 for line in notice.body.splitlines())
        if language != "en":  # no English sentence left untranslated
            for msgid in ("Details of the message:", "Reason", "Please do not reply to it."):
                assert english.gettext(msgid) not in notice.body
    admin = got[2].body
    assert "20260302T100000-abcd1234" in admin  # the quarantine file, for the admin only
    assert "20260302T100000-abcd1234" not in got[0].body


def test_values_from_the_message_are_cleaned_and_bounded() -> None:
    mail = make_mail()
    mail = Mail(mail.envelope, mail.raw.replace(b"Quarterly report", b"\x1b[31mred " + b"x" * 500))
    (notice,) = notices(notify(), mail, decided())
    assert "\x1b" not in notice.subject + notice.body
    assert "x" * 300 not in notice.body


def test_own_templates_come_first(tmp_path: Path) -> None:
    (tmp_path / "sender.txt").write_text(
        "{% set notice_subject %}{% trans %}Blocked: {{ original_subject }}{% endtrans %}{% endset %}"
        "Our own words about {{ reason }}.\n"
    )
    hook = notify(template_dir=str(tmp_path), admin="postmaster@example.org", sender=True)
    sender, admin = notices(hook, make_mail(), decided())
    assert (sender.subject, sender.body) == ("Blocked: Quarterly report", "Our own words about Bad-Attachment.\n")
    assert "The content filter stopped a message" in admin.body  # the shipped admin template


# --------------------------------------------------------------------------- the catalogs


CATALOGS = catalog_languages()


def test_every_catalog_is_a_registered_language() -> None:
    assert {"it", "fr", "pt", "nl", "pl", "sk", "cs", "de", "es"} <= set(CATALOGS)
    assert set(LANGUAGES) == {"en", *CATALOGS}  # a catalog no one can choose, or a language without one


def test_the_committed_template_is_current() -> None:
    """``mailsift.pot`` holds exactly what ``pybabel extract`` finds now (locale/README.md's command)."""
    pot = {msgid for msgid, _, _ in read_catalog(str(LOCALE_DIR / "mailsift.pot"))}
    assert pot == extracted_messages()


@pytest.mark.parametrize("language", CATALOGS)
def test_catalog_translates_every_template_string(language: str) -> None:
    wanted = extracted_messages()
    assert len(wanted) > 20
    assert template_messages(str(TEMPLATE_DIR)) <= wanted  # the notification and digest templates
    assert {"Spam, score %(score)s of %(required)s", "quarantined"} <= wanted  # the digest's words
    assert {"Log in", "Preferences", "Release this message?", "Wrong login or password."} <= wanted  # the web pages
    catalog = list(read_catalog(po_path(language)))
    assert {msgid for msgid, _, _ in catalog} == wanted
    mo = compiled(language)
    for msgid, msgstrs, flags in catalog:
        singular, plural = (msgid, msgid) if isinstance(msgid, str) else msgid
        assert all(msgstrs), f"{language}: untranslated {msgid!r}"
        assert "fuzzy" not in flags, f"{language}: fuzzy {msgid!r}"
        for n, msgstr in enumerate(msgstrs):
            source = singular if n == 0 and isinstance(msgid, str) else plural
            assert placeholders(msgstr) == placeholders(source), f"{language}: {msgid!r} -> {msgstr!r}"
        if isinstance(msgid, str):
            assert mo.gettext(msgid) == msgstrs[0], f"{language}: the .mo is older than the .po: run pybabel compile"
        else:
            forms = {mo.ngettext(singular, plural, n) for n in range(200)}
            assert forms == set(msgstrs), f"{language}: the .mo is older than the .po: run pybabel compile"
    assert len(mo._catalog) == len(catalog) + 1  # type: ignore[attr-defined]  # nothing more (and the header)


def test_the_catalog_check_sees_a_lost_placeholder() -> None:
    assert placeholders("Released to %(targets)s at $TIME <b>now</b>.") == ["$TIME", "%(targets)s", "</b>", "<b>"]
    assert placeholders("Freigegeben an %(target)s um $TIME <b>jetzt</b>.") != placeholders(
        "Released to %(targets)s at $TIME <b>now</b>."
    )
    assert placeholders("{{ name }} %%") == placeholders("{{name}} %%") != placeholders("{name}")


@pytest.mark.parametrize("language", CATALOGS)
def test_a_notification_renders_in_every_catalog_language(language: str) -> None:
    english = "Details of the message:"
    translated = compiled(language).gettext(english)
    assert translated != english
    hook = notify(**EVERYONE, language=language, silent_viruses=())
    for notice in notices(hook, make_mail(), decided()):
        assert notice.language == language
        assert translated in notice.body
        assert english not in notice.body
        assert "Bad-Attachment" in notice.body


# --------------------------------------------------------------------------- sending


def test_the_notification_message(tmp_path: Path) -> None:
    hook = notify(language="sk", admin="postmaster@example.org", from_address="Content filter <filter@example.org>")
    notice, admin = notices(hook, make_mail(), decided())
    assert admin.to == ("postmaster@example.org",)
    parsed = email.message_from_bytes(hook.message(notice, make_mail(), HOST), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["From"] == "Content filter <filter@example.org>"
    assert parsed["To"] == "alice@example.net"
    assert parsed["Subject"] == "Vaša správa nebola doručená: Quarterly report"
    assert parsed["Content-Language"] == "sk"
    assert parsed["In-Reply-To"] == "<report.1@example.net>"
    assert parsed["X-Mailsift-Notification"].startswith("sender;")
    body = parsed.get_body()
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == notice.body


async def test_list_mail_is_not_notified_but_the_same_mail_otherwise_is(tmp_path: Path) -> None:
    with RecordingServer() as hop:
        hook = notify("psender", next_hop=("127.0.0.1", hop.port))
        settings = Settings(state_dir=str(tmp_path), hooks=(hook,))
        path = MailPath([reject(regexp_scan([("Bad-Word", "BADWORD")]))], settings, next_hop=("127.0.0.1", hop.port))
        listed = make_mail("List-Id: <users.lists.example.net>\r\n")
        listed = Mail(listed.envelope, listed.raw.replace(b"hello", b"BADWORD"))
        decision, outcome = await path.process(listed)
        assert (decision.disposition, outcome.reply.code) == (Disposition.REJECT, 550)
        assert hop.messages == []
        plain = make_mail()
        plain = Mail(plain.envelope, plain.raw.replace(b"hello", b"BADWORD"))
        await path.process(plain)
        await path.close()
    assert [(m.sender, m.recipients) for m in hop.messages] == [("<>", ["alice@example.net"])]  # MAIL FROM:<>


async def test_a_failed_notification_is_logged_and_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with RecordingServer() as hop:
        hook = notify("psender", next_hop=("127.0.0.1", hop.port))
        hop.rcpt_reply = "550 5.1.1 no such user"
        settings = Settings(state_dir=str(tmp_path), hooks=(hook,))
        path = MailPath([reject(regexp_scan([("Bad-Word", "BADWORD")]))], settings, next_hop=("127.0.0.1", hop.port))
        mail = make_mail()
        with caplog.at_level(logging.INFO, logger="mailsift"):
            _, outcome = await path.process(Mail(mail.envelope, mail.raw.replace(b"hello", b"BADWORD")))
        await path.close()
    assert outcome.reply.code == 550
    assert any("sender notification to <alice@example.net> failed" in r.getMessage() for r in caplog.records)
    down = notify("psender", next_hop=("127.0.0.1", free_port()), timeout=5)
    settings = Settings(state_dir=str(tmp_path))
    await down.after(make_mail(), decided(), Outcome(decided().reply), settings)  # nothing listens: logged
    await down.close()


async def test_a_hanging_next_hop_holds_the_message_at_most_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # connects, never greets
        port = silent.getsockname()[1]
        hook = notify("all", admin="postmaster@example.org", next_hop=("127.0.0.1", port), timeout=0.5)
        with caplog.at_level(logging.INFO, logger="mailsift"):
            await hook.after(make_mail(), decided(), Outcome(decided().reply), Settings(state_dir=str(tmp_path)))
        await hook.close()
    lines = [r.getMessage() for r in caplog.records]
    (unsent,) = [int(m[1]) for line in lines if (m := re.search(r"took over 0.5s: (\d) notice\(s\) not sent", line))]
    failed = [line for line in lines if "notification to <" in line and "failed" in line]
    assert unsent >= 1
    assert unsent + len(failed) == 3  # the SMTP timeout (the same 0.5s) may end the first one just before
