"""Finding 6: ordinary users released viruses from the web quarantine with one click, and the
digest offered release links for virus entries.

Now (``webq(admin_release=...)``, default ``virus`` and ``unscannable``): a user sees no release
button for a virus and a forged POST is refused (403) with nothing sent to the next hop; every
release asks for a confirmation first, admins included; a user's digest has no release link for
a virus entry, and an old (or forged-by-the-signer) virus release link is refused; the CLI, run
by an admin, still releases anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from click.testing import CliRunner

from mailsift.cli.quarantine import quarantine_group
from mailsift.errors import ConfigError
from mailsift.reporting import links
from mailsift.reporting.digest import DigestEntry, LinkMaker, Report, render, reporter
from mailsift.storage.quarantine.admin import ADMIN_RELEASE, may_release
from mailsift.storage.quarantine.index import HELD, RELEASED, get_entry
from mailsift.testing import RecordingServer
from mailsift.web import links_pages
from mailsift.web.service import webq
from mailsift.web.webconfig import WebConfig
from tests.helpers.links import Gateway
from tests.helpers.messages import message_bytes
from tests.helpers.webq import csrf_token, logged_in, users_gateway

Site = tuple[Gateway, RecordingServer, bytes]


@pytest.fixture
def site() -> Iterator[Site]:
    """A gateway config (SQLite, STATE_DIR, next hop = a recording SMTP server) with alice, bob and admin."""
    with users_gateway("mailsift-release-") as (gateway, next_hop):
        yield gateway, next_hop, links.secret(gateway.settings.state_dir)


def _quarantine(gateway: Gateway, category: str, subject: str) -> str:
    raw = message_bytes("eve@evil.example", "alice@example.org", subject, f"body of {subject}")
    return gateway.quarantine(raw, sender="eve@evil.example", recipients=("alice@example.org",), category=category)


async def _held(gateway: Gateway, category: str, subject: str) -> str:
    """:func:`_quarantine` from a test's event loop (the store's ``put`` runs its own)."""
    return await asyncio.to_thread(_quarantine, gateway, category, subject)


@contextlib.asynccontextmanager
async def _client(site: Site, login: str, config: WebConfig | None = None) -> AsyncIterator[httpx.AsyncClient]:
    gateway, _hop, key = site
    client = await logged_in(
        gateway.settings, login, secret=key.decode(), config=config, extra_routes=links_pages.routes()
    )
    async with contextlib.aclosing(client):
        yield client


def _state(gateway: Gateway, entry_id: str) -> str:
    entry = gateway.settings.database.call(get_entry, entry_id)
    assert entry is not None
    return str(entry.state)


async def _ask_to_release(client: httpx.AsyncClient, entry_id: str) -> tuple[str, httpx.Response]:
    """The first click: the page offers the release button, and its POST asks for a confirmation.
    Returns the session's CSRF token and that answer."""
    assert 'id="release"' in (await client.get(f"/q/{entry_id}")).text
    token = await csrf_token(client)
    asked = await client.post(f"/q/{entry_id}/release", data={"csrf_token": token})
    assert 'id="confirm-release"' in asked.text
    return token, asked


async def _confirm_release(client: httpx.AsyncClient, entry_id: str, token: str) -> None:
    done = await client.post(f"/q/{entry_id}/release", data={"csrf_token": token, "confirm": "yes"})
    assert done.status_code == 303


def _assert_released_to_alice(site: Site, entry_id: str) -> None:
    gateway, next_hop, _key = site
    assert [m.recipients for m in next_hop.messages] == [["alice@example.org"]]
    assert _state(gateway, entry_id) == RELEASED


# --------------------------------------------------------------------------- the web page


async def test_a_user_cannot_release_a_virus_from_the_web(site: Site) -> None:
    gateway, next_hop, _key = site
    virus = await _held(gateway, "virus", "Invoice")
    async with _client(site, "alice") as client:
        page = await client.get(f"/q/{virus}")
        assert page.status_code == 200
        assert 'id="release"' not in page.text  # no button
        assert "Only an administrator can release a message quarantined as virus." in page.text
        token = await csrf_token(client)
        for form in ({"csrf_token": token}, {"csrf_token": token, "confirm": "yes"}):  # the attack: a forged POST
            refused = await client.post(f"/q/{virus}/release", data=form)
            assert refused.status_code == 403, refused.text
    assert next_hop.messages == []
    assert _state(gateway, virus) == HELD


async def test_a_user_releases_spam_only_after_confirming(site: Site) -> None:
    gateway, next_hop, _key = site
    spam = await _held(gateway, "spam", "Offer")
    async with _client(site, "alice") as client:
        token, asked = await _ask_to_release(client, spam)
        assert asked.status_code == 200
        assert next_hop.messages == []  # one click sends nothing
        assert _state(gateway, spam) == HELD
        await _confirm_release(client, spam, token)
    _assert_released_to_alice(site, spam)


async def test_an_admin_releases_a_virus_after_confirming(site: Site) -> None:
    gateway, next_hop, _key = site
    virus = await _held(gateway, "virus", "Invoice")
    async with _client(site, "admin") as client:
        token, asked = await _ask_to_release(client, virus)
        assert "A scanner found a virus in it." in asked.text
        assert next_hop.messages == []
        without_token = await client.post(f"/q/{virus}/release", data={"confirm": "yes"})
        assert without_token.status_code == 403  # the confirmation is a CSRF-checked POST too
        assert next_hop.messages == []
        await _confirm_release(client, virus, token)
    _assert_released_to_alice(site, virus)


async def test_the_policy_is_configurable_per_category(site: Site) -> None:
    gateway, next_hop, _key = site
    spam = await _held(gateway, "spam", "Offer")
    virus = await _held(gateway, "virus", "Invoice")
    strict = WebConfig(admin_release=frozenset({"spam", "virus"}))
    async with _client(site, "alice", strict) as client:
        token = await csrf_token(client)
        assert (await client.post(f"/q/{spam}/release", data={"csrf_token": token})).status_code == 403
    assert next_hop.messages == []
    lax = WebConfig(admin_release=frozenset())
    async with _client(site, "alice", lax) as client:
        await _confirm_release(client, virus, await csrf_token(client))
    assert len(next_hop.messages) == 1
    assert webq(admin_release=["virus", "policy"]).config.admin_release == {"virus", "policy"}
    assert webq().config.admin_release == set(ADMIN_RELEASE) == {"virus", "unscannable"}
    for bad in ("virus", ["Virus!"], [1]):
        with pytest.raises(ConfigError, match="admin_release"):
            webq(admin_release=bad)  # type: ignore[arg-type]
    assert may_release("virus", admin=True)
    assert may_release("spam", admin=False)
    assert not may_release("unscannable", admin=False)


def test_the_cli_still_releases_a_virus(site: Site) -> None:
    gateway, next_hop, _key = site
    virus = _quarantine(gateway, "virus", "Invoice")
    result = CliRunner().invoke(quarantine_group, ["release", "-c", str(gateway.path), virus, "--by", "root"])
    assert result.exit_code == 0, result.output
    assert [m.recipients for m in next_hop.messages] == [["alice@example.org"]]


# --------------------------------------------------------------------------- the digest and its links


def _entry(category: str, entry_id: str) -> DigestEntry:
    return DigestEntry(
        "quarantined", time.time(), "eve@evil.example", "alice@example.org", "s", "n", "x", 1.0, "", entry_id, category
    )


def test_a_users_digest_has_no_release_link_for_a_virus() -> None:
    maker = LinkMaker(links.LinkSigner(b"k" * 40), "https://webq.example", 3600, time.time())
    report = Report("alice@example.org", (_entry("virus", "q-virus"), _entry("spam", "q-spam")))
    text = render(report, reporter(), since=0, links=maker, hostname="gw.example").decode()
    releases = re.findall(r"Release: +(\S+)", text)
    assert len(releases) == 1
    claim = links.LinkSigner(b"k" * 40).verify(releases[0].rsplit("/", 1)[1], links.RELEASE)
    assert claim.entry_id == "q-spam"
    assert len(re.findall(r"Whitelist: +(\S+)", text)) == 2  # whitelisting the sender is still offered
    configured = LinkMaker(maker.signer, maker.base_url, maker.lifetime, maker.now, frozenset({"spam"}))
    assert configured.release(_entry("spam", "q-spam")) == ""
    assert configured.release(_entry("virus", "q-virus")) != ""


async def test_an_old_virus_release_link_is_refused(site: Site) -> None:
    gateway, next_hop, key = site
    virus = await _held(gateway, "virus", "Invoice")
    path = f"/link/release/{links.LinkSigner(key).sign(links.RELEASE, virus, 'alice@example.org')}"
    async with _client(site, "") as client:
        page = await client.get(path)
        assert page.status_code == 403
        assert 'data-outcome="forbidden"' in page.text
        assert 'id="confirm"' not in page.text
        token = await csrf_token(client, "/login")
        posted = await client.post(path, data={"csrf_token": token})
        assert posted.status_code == 403
    assert next_hop.messages == []
    assert _state(gateway, virus) == HELD
