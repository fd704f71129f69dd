"""Per-client policy: client_network (per-network scanner sets) and trusted_clients
(qmail-scanner's SA_ONLYDELETE_HOST: never reject from localhost / secondary MXes)."""

from __future__ import annotations

import pytest

from mailsift import const, deliver, drop, quarantine, reject
from mailsift.core.pipeline import Pipeline
from mailsift.errors import ConfigError
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Disposition
from mailsift.scanners.client import client_network, trusted_clients

SECONDARY_MX = "192.0.2.25"
TRUSTED = ["127.0.0.0/8", "::1", SECONDARY_MX]


def mail_from(client: str) -> Mail:
    return Mail(
        Envelope(sender="a@example.net", recipients=["b@example.test"], client_address=client),
        b"Subject: x\r\n\r\nhi\r\n",
    )


async def decide(scanners: list, client: str):  # type: ignore[no-untyped-def]
    return await Pipeline(scanners).evaluate(mail_from(client))


@pytest.mark.parametrize(
    ("client", "disposition"),
    [
        ("127.0.0.1", Disposition.DROP),
        ("::1", Disposition.DROP),
        ("::ffff:127.0.0.1", Disposition.DROP),  # an IPv4-mapped address is its IPv4 address
        (SECONDARY_MX, Disposition.DROP),
        ("[192.0.2.25]", Disposition.DROP),  # bracketed, as some MTAs write it
        ("192.0.2.26", Disposition.REJECT),
        ("198.51.100.7", Disposition.REJECT),
        ("", Disposition.REJECT),  # no client known: not trusted
        ("[UNAVAILABLE]", Disposition.REJECT),
    ],
)
async def test_trusted_clients_are_never_rejected(client: str, disposition: Disposition) -> None:
    decision = await decide([trusted_clients(TRUSTED, const(2.0, "Spam"))], client)
    assert decision.disposition is disposition
    assert decision.result.name == "Spam"
    if disposition is Disposition.DROP:
        assert decision.reply.code == 250
        assert "trusted: deleted instead of rejected" in decision.result.detail
    else:
        assert decision.reply.code == 550


async def test_trusted_clients_can_quarantine_instead() -> None:
    decision = await decide([trusted_clients(TRUSTED, reject(const(1.0, "Spam")), quarantine="spam")], SECONDARY_MX)
    assert decision.disposition is Disposition.QUARANTINE
    assert decision.quarantine == ("spam",)
    untrusted = await decide([trusted_clients(TRUSTED, reject(const(1.0, "Spam")), quarantine="spam")], "203.0.113.9")
    assert (untrusted.disposition, untrusted.quarantine) == (Disposition.REJECT, ())


@pytest.mark.parametrize(
    ("inner", "disposition"),
    [
        (drop(const(1.0, "Worm")), Disposition.DROP),
        (deliver(const(1.0, "Newsletter")), Disposition.DELIVER),
        (quarantine("virus", const(1.0, "Virus")), Disposition.QUARANTINE),
        (const(0.5, "Almost"), Disposition.DELIVER),
    ],
)
async def test_only_rejections_are_changed(inner: object, disposition: Disposition) -> None:
    decision = await decide([trusted_clients(TRUSTED, inner)], "127.0.0.1")
    assert decision.disposition is disposition
    assert "trusted" not in decision.result.detail


async def test_an_outer_reject_still_wins() -> None:
    # The outermost action wins: trusted_clients belongs outermost.
    decision = await decide([reject(trusted_clients(TRUSTED, const(1.0, "Spam")))], "127.0.0.1")
    assert decision.disposition is Disposition.REJECT


async def test_client_network_gives_per_network_scanner_sets() -> None:
    scanners = [
        client_network(["127.0.0.0/8", "192.168.1.0/24"], const(0.0, "")),  # our own machines: nothing runs
        client_network(["192.168.2.0/24"], const(1.0, "Windows-LAN-Policy")),  # the Windows LAN: strict
        client_network(["127.0.0.0/8", "192.168.0.0/16"], const(1.0, "Internet-Policy"), invert=True),  # the rest
    ]
    assert (await decide(scanners, "127.0.0.1")).disposition is Disposition.DELIVER
    assert (await decide(scanners, "192.168.1.20")).disposition is Disposition.DELIVER
    assert (await decide(scanners, "192.168.2.20")).result.name == "Windows-LAN-Policy"
    assert (await decide(scanners, "203.0.113.5")).result.name == "Internet-Policy"
    assert (await decide(scanners, "")).result.name == "Internet-Policy"  # unknown client: not in any network


@pytest.mark.parametrize("networks", [[], "not-a-network", ["10.0.0.0/8", "300.1.1.1"], 42])
def test_bad_networks_are_config_errors(networks: object) -> None:
    with pytest.raises(ConfigError):
        client_network(networks, const(1.0, "x"))
    with pytest.raises(ConfigError):
        trusted_clients(networks, const(1.0, "x"))


def test_bad_quarantine_category_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        trusted_clients(TRUSTED, const(1.0, "x"), quarantine="Bad Category")


def test_describe() -> None:
    assert client_network("10.0.0.0/8", const()).describe() == "client_network(10.0.0.0/8)"
    assert client_network("10.0.0.0/8", const(), invert=True).describe() == "client_network(not 10.0.0.0/8)"
    described = trusted_clients(["127.0.0.1"], const(), quarantine="spam").describe()
    assert described == "trusted_clients(127.0.0.1/32: quarantine 'spam' instead of reject)"
