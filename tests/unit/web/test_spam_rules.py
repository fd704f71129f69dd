"""The message view's spam rule table (mailsift.web.spam_rules): names, points, descriptions."""

from __future__ import annotations

from mailsift.web.spam_rules import MAX_RULES, Rule, report_descriptions, rule_rows

REPORT_HEADER = (
    "\r\n\t*  2.5 BAYES_99 BODY: Bayes spam probability is 99 to 100%\r\n\t*      [score: 1.0000]"
    "\r\n\t* -0.1 DKIM_VALID Message has at least one valid DKIM signature"
)


def test_points_come_from_the_detail_and_descriptions_from_x_spam_report() -> None:
    detail = "score=12.3 required=5 points=2.5,-0.1,9.9 tests=BAYES_99,DKIM_VALID,URIBL_BLACK"
    rows = rule_rows(detail, [("Subject", "x"), ("X-Spam-Report", REPORT_HEADER)])
    assert rows == [
        Rule("BAYES_99", 2.5, "BODY: Bayes spam probability is 99 to 100%"),
        Rule("DKIM_VALID", -0.1, "Message has at least one valid DKIM signature"),
        Rule("URIBL_BLACK", 9.9, ""),
    ]


def test_a_detail_without_points_gives_names_only_and_rspamd_keeps_its_own() -> None:
    assert rule_rows("score=12.3 required=5 tests=A,B") == [Rule("A", None, ""), Rule("B", None, "")]
    assert rule_rows("score=7 required=5 symbols=R_A(1.5),R_B(-2)") == [Rule("R_A", 1.5, ""), Rule("R_B", -2.0, "")]
    assert rule_rows("score=1 required=5 points=x,2 tests=A,B") == [Rule("A", None, ""), Rule("B", 2.0, "")]
    assert rule_rows("part 2 (eicar.com)") == []


def test_descriptions_are_bounded() -> None:
    lines = "".join(f"\n* 0.1 RULE_{n} {'d' * 500}" for n in range(MAX_RULES * 3))
    found = report_descriptions([lines])
    assert len(found) == MAX_RULES
    assert all(len(text) <= 200 for text in found.values())
