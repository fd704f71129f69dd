"""Finding 11 (the web and digest half): whitelist scope.

The attack: mail to ``RCPT TO:<example.com>`` (no ``@``) is quarantined; "whitelist sender" on it
in the web quarantine made an entry owned by ``example.com`` (the whole domain's whitelist), and
the digest's whitelist link did the same.  Whitelist links kept working after their message was
deleted and re-created an entry an admin had removed.

Now: entries are made only for a mailbox (``local@domain``) the user owns; a whitelist link
answers "gone" once its message left the quarantine, and adds a sender for a recipient once
(``link_action``, keyed by the sender): after an admin removed the entry it says "used" and adds
nothing, whichever of the sender's links is clicked.  (smtpd refusing ``RCPT TO:<example.com>``
is the front ends' half of the finding.)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from mailsift.reporting import links
from mailsift.reporting.digest import DigestEntry, LinkMaker, Report, render, reporter
from mailsift.storage.policies import list_entries, remove_listed
from mailsift.storage.quarantine.admin import delete
from mailsift.storage.quarantine.index import get_entry
from mailsift.web import links_pages
from tests.helpers.links import Gateway
from tests.helpers.messages import message_bytes
from tests.helpers.webq import csrf_token, logged_in, users_gateway

Site = tuple[Gateway, bytes]


@pytest.fixture
def site() -> Iterator[Site]:
    with users_gateway("mailsift-whitelist-") as (gateway, _next_hop):
        yield gateway, links.secret(gateway.settings.state_dir)


async def _held(gateway: Gateway, recipients: tuple[str, ...], subject: str) -> str:
    raw = message_bytes("eve@spam.example", recipients[0], subject, f"body of {subject}")
    put = functools.partial(gateway.quarantine, raw, sender="eve@spam.example", recipients=recipients)
    return await asyncio.to_thread(put)


@contextlib.asynccontextmanager
async def _client(site: Site, login: str) -> AsyncIterator[httpx.AsyncClient]:
    gateway, key = site
    client = await logged_in(gateway.settings, login, secret=key.decode(), extra_routes=links_pages.routes())
    async with contextlib.aclosing(client):
        yield client


def _listed(gateway: Gateway) -> list[tuple[str, str, str]]:
    return [(e.owner, e.list, e.value) for e in gateway.settings.database.call(list_entries)]


def _whitelist_path(key: bytes, entry_id: str, recipient: str) -> str:
    token = links.LinkSigner(key).sign(links.WHITELIST, entry_id, recipient, sender="eve@spam.example")
    return f"/link/whitelist/{token}"


# --------------------------------------------------------------------------- the web page


async def test_web_whitelist_never_makes_a_domain_the_owner(site: Site) -> None:
    gateway, _key = site
    domain_only = await _held(gateway, ("example.com",), "To a domain")
    mixed = await _held(gateway, ("example.com", "Carol@Example.org"), "To a domain and carol")
    async with _client(site, "admin") as client:
        token = await csrf_token(client)
        refused = await client.post(f"/q/{domain_only}/list", data={"csrf_token": token, "list": "white"})
        assert refused.status_code == 400
        assert _listed(gateway) == []  # before the fix: ('example.com', 'white', 'eve@spam.example')
        done = await client.post(f"/q/{mixed}/list", data={"csrf_token": token, "list": "white"})
        assert done.status_code == 303
    assert _listed(gateway) == [("carol@example.org", "white", "eve@spam.example")]


async def test_a_user_whitelists_for_their_own_mailbox_only(site: Site) -> None:
    gateway, _key = site
    shared = await _held(gateway, ("example.org", "alice@example.org", "bob@example.org"), "Shared")
    async with _client(site, "alice") as client:
        token = await csrf_token(client)
        done = await client.post(f"/q/{shared}/list", data={"csrf_token": token, "list": "white"})
        assert done.status_code == 303
    assert _listed(gateway) == [("alice@example.org", "white", "eve@spam.example")]


# --------------------------------------------------------------------------- the digest's links


async def test_a_whitelist_link_stops_working_once_its_message_is_deleted(site: Site) -> None:
    gateway, key = site
    entry_id = await _held(gateway, ("bob@example.test",), "Deleted later")
    path = _whitelist_path(key, entry_id, "bob@example.test")
    async with _client(site, "") as client:
        assert 'data-outcome="confirm"' in (await client.get(path)).text  # while the message is held
        token = await csrf_token(client, "/login")
        entry = gateway.settings.database.call(get_entry, entry_id)
        await asyncio.to_thread(delete, gateway.settings, entry)
        page = await client.get(path)
        assert page.status_code == 410
        assert 'data-outcome="gone"' in page.text
        posted = await client.post(path, data={"csrf_token": token})
        assert posted.status_code == 410
    assert _listed(gateway) == []


async def test_a_whitelist_link_never_recreates_an_entry_an_admin_removed(site: Site) -> None:
    gateway, key = site
    first = await _held(gateway, ("bob@example.test",), "First")
    second = await _held(gateway, ("bob@example.test",), "Second")
    path = _whitelist_path(key, first, "bob@example.test")
    async with _client(site, "") as client:
        token = await csrf_token(client, "/login")
        done = await client.post(path, data={"csrf_token": token}, follow_redirects=True)
        assert 'data-outcome="done"' in done.text
        assert _listed(gateway) == [("bob@example.test", "white", "eve@spam.example")]
        removed = functools.partial(remove_listed, owner="bob@example.test")
        assert gateway.settings.database.call(removed, "white", "sender", "eve@spam.example")  # the admin
        again = await client.get(path)
        assert 'data-outcome="used"' in again.text
        assert 'id="confirm"' not in again.text
        replay = await client.post(path, data={"csrf_token": token}, follow_redirects=True)
        assert 'data-outcome="used"' in replay.text
        other = _whitelist_path(key, second, "bob@example.test")  # another message from the same sender
        assert 'data-outcome="used"' in (await client.post(other, data={"csrf_token": token})).text
    assert _listed(gateway) == []


async def test_a_whitelist_link_for_a_domain_recipient_is_refused(site: Site) -> None:
    gateway, key = site
    entry_id = await _held(gateway, ("example.com",), "To a domain")
    path = _whitelist_path(key, entry_id, "example.com")
    async with _client(site, "") as client:
        token = await csrf_token(client, "/login")
        page = await client.get(path)
        assert page.status_code == 400
        assert 'data-outcome="invalid"' in page.text
        assert (await client.post(path, data={"csrf_token": token})).status_code == 400
    assert _listed(gateway) == []


def test_the_digest_offers_no_whitelist_link_for_a_domain_recipient() -> None:
    maker = LinkMaker(links.LinkSigner(b"k" * 40), "https://webq.example", 3600, time.time())

    def entry(recipient: str) -> DigestEntry:
        return DigestEntry(
            "quarantined", time.time(), "eve@spam.example", recipient, "s", "SPAM", "x", 7.5, "", "q1", "spam"
        )

    report = Report("postmaster@example.com", (entry("example.com"), entry("bob@example.com")))
    text = render(report, reporter(), since=0, links=maker, hostname="gw.example").decode()
    [whitelist] = re.findall(r"Whitelist: +(\S+)", text)
    assert links.LinkSigner(b"k" * 40).verify(whitelist.rsplit("/", 1)[1], links.WHITELIST).recipient == (
        "bob@example.com"
    )
