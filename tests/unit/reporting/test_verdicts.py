"""Verdicts as people read them (mailsift.reporting.verdicts): the web pages and the digest."""

from __future__ import annotations

from mailsift.reporting.verdicts import SpamScore, human_verdict, spam_rules, spam_score

SA_DETAIL = "score=12.3 required=5 tests=BAYES_99,URIBL_BLACK,HTML_MESSAGE"
RSPAMD_DETAIL = "action=reject score=17.5 required=15 symbols=BAYES_SPAM(5.1),R_DKIM_NA(0)"


def test_a_virus_reads_with_its_name() -> None:
    assert human_verdict("virus", "Eicar-Test-Signature", "clamd", 1.0) == "Virus: Eicar-Test-Signature"


def test_spam_reads_score_of_threshold_not_the_expression() -> None:
    shown = human_verdict("spam", "Spam", "spamassassind*const", 99.9, SA_DETAIL)
    assert shown == "Spam, score 12.3 of 5.0"
    assert "const" not in shown
    assert "99.9" not in shown
    assert human_verdict("spam", "reject", "rspamd", 1.2, RSPAMD_DETAIL) == "Spam, score 17.5 of 15.0"
    assert human_verdict("virus", "Spam", "spamassassind*const", 99.9) == "Spam"  # no detail: no invented score


def test_other_categories_and_clean() -> None:
    assert human_verdict("banned", "invoice.exe", "filetype", 1.0) == "Banned: invoice.exe"
    assert human_verdict("unscannable", "", "archive", 1.0) == "Unscannable"
    assert human_verdict("", "", "", 0.0) == "Clean"
    assert human_verdict("", "EICAR-Test", "regexp_scan", 1.0) == "EICAR-Test"


def test_scores_and_rules_are_read_from_the_detail() -> None:
    assert spam_score(SA_DETAIL) == SpamScore(12.3, 5.0)
    assert spam_score("part 2 (eicar.com)") is None
    assert spam_rules(SA_DETAIL) == [("BAYES_99", None), ("URIBL_BLACK", None), ("HTML_MESSAGE", None)]
    assert spam_rules(RSPAMD_DETAIL) == [("BAYES_SPAM", 5.1), ("R_DKIM_NA", 0.0)]
    assert spam_rules("part 2 (eicar.com)") == []
    assert spam_rules("tests=<script>,OK_RULE") == [("OK_RULE", None)]
