"""Signed one-click links: signing and verifying (tampered, expired, wrong secret, wrong action),
the shared secret file, the idempotence claims (SQLite and PostgreSQL), and the link pages
(confirm on GET, CSRF on POST, released once, replay answered "already released")."""

from __future__ import annotations

import base64
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from itsdangerous import TimestampSigner
from sqlalchemy import select

from mailsift.reporting import links
from mailsift.storage import db
from mailsift.storage.db import Database
from mailsift.storage.policies import list_entries
from mailsift.storage.quarantine.index import RELEASED, claim_release, get_entry
from mailsift.storage.schema import secret_table
from mailsift.testing import RecordingServer
from mailsift.web.webconfig import WebConfig
from tests.helpers.links import Gateway, database_option, link_app, scratch, serving
from tests.helpers.postgres import fresh_database, postgres  # noqa: F401 - the fixture

KEY = b"k" * 40
NOW = 1_700_000_000.0


# --------------------------------------------------------------------------- signing


def test_a_signed_link_verifies_to_its_claim() -> None:
    signer = links.LinkSigner(KEY)
    token = signer.sign(links.WHITELIST, "q1", "bob@example.test", sender="eve@spam.example", lifetime=3600, now=NOW)
    claim = signer.verify(token, links.WHITELIST, now=NOW + 10)
    assert claim == links.LinkClaim(links.WHITELIST, "q1", "bob@example.test", "eve@spam.example", NOW + 3600)
    assert re.fullmatch(r"[A-Za-z0-9_.\-]+", token)  # safe in a URL path as it is


def _flip(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


def test_a_tampered_link_is_invalid() -> None:
    signer = links.LinkSigner(KEY)
    token = signer.sign(links.RELEASE, "q1", "bob@example.test", now=time.time())
    payload, timestamp, signature = token.rsplit(".", 2)
    for tampered in (_flip(token, 3), _flip(token, len(token) - 3), f"{payload}.{timestamp}.", token + "x"):
        with pytest.raises(links.LinkError) as caught:
            signer.verify(tampered, links.RELEASE)
        assert caught.value.reason == "invalid"
    # A payload rewritten for another recipient, with the old signature, is refused too.
    forged = base64.urlsafe_b64encode(
        b'{"a":"release","q":"q1","r":"mallory@example.test","s":"","e":9999999999}'
    ).rstrip(b"=")
    with pytest.raises(links.LinkError):
        signer.verify(f"{forged.decode()}.{timestamp}.{signature}", links.RELEASE)
    assert signer.verify(token, links.RELEASE).recipient == "bob@example.test"


def test_an_expired_link_is_refused() -> None:
    signer = links.LinkSigner(KEY)
    token = signer.sign(links.RELEASE, "q1", "bob@example.test", lifetime=3600, now=time.time())
    assert signer.verify(token, links.RELEASE, now=time.time() + 3500).entry_id == "q1"
    with pytest.raises(links.LinkError) as caught:
        signer.verify(token, links.RELEASE, now=time.time() + 3601)
    assert caught.value.reason == "expired"


def test_no_link_outlives_the_hard_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    signer = links.LinkSigner(KEY)
    signed_at = int(time.time()) - links.MAX_LIFETIME - 60
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: signed_at)
    token = signer.sign(links.RELEASE, "q1", "bob@example.test", lifetime=10 * 365 * 86400)
    monkeypatch.undo()
    with pytest.raises(links.LinkError) as caught:
        signer.verify(token, links.RELEASE, now=float(signed_at))  # its own expiry is not reached...
    assert caught.value.reason == "expired"  # ...but it was signed longer ago than the cap


def test_a_link_signed_with_another_secret_is_invalid() -> None:
    token = links.LinkSigner(b"another secret, at least 32 chars").sign(links.RELEASE, "q1", "bob@example.test")
    with pytest.raises(links.LinkError) as caught:
        links.LinkSigner(KEY).verify(token, links.RELEASE)
    assert caught.value.reason == "invalid"


def test_a_link_is_only_good_for_its_own_action() -> None:
    signer = links.LinkSigner(KEY)
    release = signer.sign(links.RELEASE, "q1", "bob@example.test")
    whitelist = signer.sign(links.WHITELIST, "q1", "bob@example.test", sender="eve@spam.example")
    for token, wrong in ((release, links.WHITELIST), (whitelist, links.RELEASE), (release, "delete")):
        with pytest.raises(links.LinkError) as caught:
            signer.verify(token, wrong)
        assert caught.value.reason == "invalid"
    assert signer.verify(release, links.RELEASE).action == links.RELEASE


def test_link_url_joins_the_base() -> None:
    assert links.link_url("https://mail.example.com/webq/", "release", "T.o.k") == (
        "https://mail.example.com/webq/link/release/T.o.k"
    )


# --------------------------------------------------------------------------- the secret file


def test_the_secret_is_made_once_private_and_shared(tmp_path: Path) -> None:
    state = tmp_path / "state"
    found: list[bytes] = []
    threads = [threading.Thread(target=lambda: found.append(links.secret(str(state)))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == 1
    assert len(found[0]) >= 32
    path = state / links.SECRET_FILENAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert links.secret(str(state)) == found[0]
    assert [p.name for p in state.iterdir()] == [links.SECRET_FILENAME]  # no temporary files left
    own = tmp_path / "own.secret"
    own.write_text("x" * 40 + "\n")
    assert links.secret(str(state), str(own)) == b"x" * 40
    own.write_text("short")
    with pytest.raises(ValueError, match="too short"):
        links.secret(str(state), str(own))


# --------------------------------------------------------------------------- claims


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A fresh directory under /tmp (pytest's own may be made unreachable by another run)."""
    with scratch("mailsift-links-") as path:
        yield path


@pytest.fixture
def next_hop() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def gateway(request: pytest.FixtureRequest, tmp_path: Path, next_hop: RecordingServer) -> Iterator[Gateway]:
    instance = Gateway(tmp_path, next_hop.port, database_option(request, "links"))
    yield instance
    instance.settings.database.dispose()


def test_a_release_is_claimed_once(gateway: Gateway) -> None:
    database = gateway.settings.database
    claim = (links.claim, "q1", "Bob@Example.test", links.RELEASE)
    assert database.call(*claim, NOW) is None  # taken
    blocking = database.call(*claim, NOW + 1)
    assert blocking is not None
    assert blocking.state == links.SENDING
    database.call(links.finish, "q1", "bob@example.test", links.RELEASE, NOW + 2)
    done = database.call(*claim, NOW + 3)
    assert done is not None
    assert (done.state, done.done_at) == (links.DONE, NOW + 2)
    assert database.call(links.claim, "q1", "carol@example.test", links.RELEASE, NOW) is None  # another recipient


def test_a_failed_or_abandoned_release_can_be_tried_again(gateway: Gateway) -> None:
    database = gateway.settings.database
    assert database.call(links.claim, "q1", "bob@example.test", links.RELEASE, NOW) is None
    database.call(links.unclaim, "q1", "bob@example.test", links.RELEASE)  # the next hop refused
    assert database.call(links.action_state, "q1", "bob@example.test", links.RELEASE) is None
    assert database.call(links.claim, "q1", "bob@example.test", links.RELEASE, NOW) is None
    # A worker died while sending: the claim is taken over once it is stale, not before.
    assert database.call(links.claim, "q1", "bob@example.test", links.RELEASE, NOW + links.STALE_CLAIM - 1)
    assert database.call(links.claim, "q1", "bob@example.test", links.RELEASE, NOW + links.STALE_CLAIM + 1) is None


def test_a_used_release_is_forgotten_only_once_its_link_is_refused(gateway: Gateway) -> None:
    """``mailsift stats prune`` forgets a used release link (links.prune): never while the token that made it
    could still be followed, so pruning cannot make a used link usable again; whitelist rows stay."""
    database = gateway.settings.database
    signer = links.LinkSigner(KEY)
    clicked = time.time()  # the worst case: signed for as long as any link lives, followed at once
    token = signer.sign(links.RELEASE, "q1", "bob@example.test", lifetime=links.MAX_LIFETIME, now=clicked)
    assert database.call(links.claim, "q1", "bob@example.test", links.RELEASE, clicked) is None
    database.call(links.finish, "q1", "bob@example.test", links.RELEASE, clicked)
    key = links.whitelist_key("eve@spam.example")
    assert database.call(links.claim, key, "bob@example.test", links.WHITELIST, clicked) is None
    database.call(links.finish, key, "bob@example.test", links.WHITELIST, clicked)
    still_good = clicked + links.MAX_LIFETIME - 60
    assert database.call(links.prune, still_good, 100) == 0
    assert signer.verify(token, links.RELEASE, now=still_good).entry_id == "q1"  # the row answers "used"
    assert database.call(links.action_state, "q1", "bob@example.test", links.RELEASE) is not None
    later = clicked + links.MAX_LIFETIME + 1
    assert database.call(links.prune, later, 100) == 1
    assert database.call(links.action_state, "q1", "bob@example.test", links.RELEASE) is None
    with pytest.raises(links.LinkError) as caught:
        signer.verify(token, links.RELEASE, now=later)  # ...and the link is refused before the row is read
    assert caught.value.reason == "expired"
    assert database.call(links.prune, clicked + 10 * links.MAX_LIFETIME, 100) == 0
    assert database.call(links.action_state, key, "bob@example.test", links.WHITELIST) is not None


# --------------------------------------------------------------------------- the pages


Web = tuple[Gateway, httpx.Client, links.LinkSigner]


@pytest.fixture
def web(tmp_path: Path, next_hop: RecordingServer) -> Iterator[Web]:
    gateway = Gateway(tmp_path, next_hop.port)
    key = links.secret(gateway.settings.state_dir)
    with serving(link_app(gateway, key)) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield gateway, client, links.LinkSigner(key)
    gateway.settings.database.dispose()


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


MESSAGE = b"From: eve@spam.example\r\nTo: bob@example.test\r\nSubject: Cheap <b>pills</b>\r\n\r\nBuy now.\r\n"


def test_release_link_confirms_then_releases_once(web: Web, next_hop: RecordingServer) -> None:
    gateway, client, signer = web
    entry_id = gateway.quarantine(MESSAGE, recipients=("bob@example.test", "carol@example.test"))
    path = f"/link/release/{signer.sign(links.RELEASE, entry_id, 'bob@example.test')}"
    page = client.get(path)
    assert page.status_code == 200
    assert 'data-outcome="confirm"' in page.text
    assert "Cheap &lt;b&gt;pills&lt;/b&gt;" in page.text  # escaped
    assert next_hop.messages == []  # following the link sends nothing
    refused = client.post(path, data={"csrf_token": "forged"})
    assert refused.status_code == 403
    assert next_hop.messages == []
    done = client.post(path, data={"csrf_token": _csrf(page.text)}, follow_redirects=False)
    assert done.status_code == 303
    assert done.headers["location"] == path
    [received] = next_hop.messages
    assert received.recipients == ["bob@example.test"]  # only the link's recipient
    assert received.sender == "eve@spam.example"
    assert received.data.replace(b"\r\n", b"\n") == MESSAGE.replace(b"\r\n", b"\n")
    assert 'data-outcome="done"' in client.get(path).text  # once, after this browser's own POST
    again = client.get(path)
    assert 'data-outcome="already"' in again.text
    assert "already released" in again.text
    replay = client.post(path, data={"csrf_token": _csrf(page.text)}, follow_redirects=True)
    assert 'data-outcome="already"' in replay.text
    assert len(next_hop.messages) == 1
    entry = gateway.settings.database.call(get_entry, entry_id)
    assert entry.state == RELEASED
    assert entry.released_by == "digest link bob@example.test"


def test_release_link_of_another_recipient_or_a_deleted_message_does_nothing(
    web: Web, next_hop: RecordingServer
) -> None:
    gateway, client, signer = web
    entry_id = gateway.quarantine(MESSAGE)
    stranger = client.get(f"/link/release/{signer.sign(links.RELEASE, entry_id, 'mallory@example.test')}")
    assert stranger.status_code == 410
    assert 'data-outcome="gone"' in stranger.text
    missing = client.get(f"/link/release/{signer.sign(links.RELEASE, 'nonexistent', 'bob@example.test')}")
    assert missing.status_code == 410
    assert next_hop.messages == []


def test_bad_links_get_a_clear_page(web: Web) -> None:
    gateway, client, signer = web
    entry_id = gateway.quarantine(MESSAGE)
    token = signer.sign(links.RELEASE, entry_id, "bob@example.test", lifetime=60, now=time.time() - 120)
    expired = client.get(f"/link/release/{token}")
    assert expired.status_code == 410
    assert "This link has expired." in expired.text
    tampered = client.get(f"/link/release/{_flip(token, 5)}")
    assert tampered.status_code == 400
    assert "This link is not valid." in tampered.text
    good = signer.sign(links.RELEASE, entry_id, "bob@example.test")
    wrong_action = client.get(f"/link/whitelist/{good}")
    assert wrong_action.status_code == 400
    other = links.LinkSigner(b"y" * 40).sign(links.RELEASE, entry_id, "bob@example.test")
    assert client.get(f"/link/release/{other}").status_code == 400
    assert client.post(f"/link/release/{_flip(good, 5)}", data={}).status_code == 400


def test_whitelist_link_adds_the_sender_for_that_recipient_once(
    web: Web,
) -> None:
    gateway, client, signer = web
    database = gateway.settings.database
    path = f"/link/whitelist/{signer.sign(links.WHITELIST, '', 'bob@example.test', sender='eve@spam.example')}"
    page = client.get(path)
    assert 'data-outcome="confirm"' in page.text
    assert database.call(list_entries) == []  # GET changes nothing
    assert client.post(path, data={}).status_code == 403
    done = client.post(path, data={"csrf_token": _csrf(page.text)}, follow_redirects=True)
    assert 'data-outcome="done"' in done.text
    [entry] = database.call(list_entries)
    assert (entry.owner, entry.list, entry.field, entry.value) == (
        "bob@example.test",
        "white",
        "sender",
        "eve@spam.example",
    )
    assert 'data-outcome="already"' in client.get(path).text
    replay = client.post(path, data={"csrf_token": _csrf(page.text)}, follow_redirects=True)
    assert 'data-outcome="already"' in replay.text
    assert len(database.call(list_entries)) == 1


def test_whitelist_link_says_lists_are_not_in_use_and_adds_nothing(tmp_path: Path, next_hop: RecordingServer) -> None:
    """No listed()/whitelisted() in the config: the link must not claim an effect the scanners ignore."""
    gateway = Gateway(tmp_path, next_hop.port)
    key = links.secret(gateway.settings.state_dir)
    signer = links.LinkSigner(key)
    app = link_app(gateway, key, WebConfig(lists_in_use=frozenset()))
    path = f"/link/whitelist/{signer.sign(links.WHITELIST, '', 'bob@example.test', sender='eve@spam.example')}"
    try:
        with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            page = client.get(path)
            assert page.status_code == 409
            assert 'data-outcome="not_in_use"' in page.text
            assert "not in use" in page.text
            assert client.post(path, data={}).status_code == 409
        assert gateway.settings.database.call(list_entries) == []
    finally:
        gateway.settings.database.dispose()


def test_an_oversized_form_is_refused_unread(web: Web) -> None:
    gateway, client, signer = web
    entry_id = gateway.quarantine(MESSAGE)
    path = f"/link/release/{signer.sign(links.RELEASE, entry_id, 'bob@example.test')}"
    token = _csrf(client.get(path).text)
    answer = client.post(path, data={"csrf_token": token, "pad": "x" * 10_000})
    assert answer.status_code == 403
    assert os.path.exists(gateway.settings.quarantine_dir)


def test_two_clicks_at_once_release_once(web: Web, next_hop: RecordingServer) -> None:
    gateway, client, signer = web
    entry_id = gateway.quarantine(MESSAGE)
    path = f"/link/release/{signer.sign(links.RELEASE, entry_id, 'bob@example.test')}"
    token = _csrf(client.get(path).text)
    answers: list[int] = []
    start = threading.Barrier(4)

    def click() -> None:
        start.wait()
        answers.append(client.post(path, data={"csrf_token": token}, follow_redirects=False).status_code)

    threads = [threading.Thread(target=click) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == 4
    assert answers.count(303) >= 1
    # 303: released (or found released while claiming); 409: "being released just now";
    # 200: the "already released" page for a click that came after the release.
    assert set(answers) <= {200, 303, 409}
    assert len(next_hop.messages) == 1
    # The clicks share one cookie jar: whichever answer set it last decides whether the next
    # page says "done" once; from then on it says "already".
    assert re.search(r'data-outcome="(done|already)"', client.get(path).text)
    assert 'data-outcome="already"' in client.get(path).text


def test_a_release_link_yields_to_a_release_claimed_elsewhere(web: Web, next_hop: RecordingServer) -> None:
    """webq, the CLI or another node holds the entry's release claim: 409 "busy", nothing sent, retry later."""
    gateway, client, signer = web
    entry_id = gateway.quarantine(MESSAGE)
    path = f"/link/release/{signer.sign(links.RELEASE, entry_id, 'bob@example.test')}"
    token = _csrf(client.get(path).text)
    gateway.settings.database.call(claim_release, entry_id, "web:admin", time.time(), 600.0)
    busy = client.post(path, data={"csrf_token": token}, follow_redirects=False)
    assert busy.status_code == 409
    assert 'data-outcome="busy"' in busy.text
    assert next_hop.messages == []
    # The link's own claim was given back: once the other release is gone, the click works.
    assert gateway.settings.database.call(links.action_state, entry_id, "bob@example.test", links.RELEASE) is None


# --------------------------------------------------------------------------- the secret in a cluster


def test_a_shared_database_gives_every_node_one_secret(database: Database, tmp_path: Path) -> None:
    """Node A's digest link verifies on node B: both read the secret from the database they share
    (SQLite outside their STATE_DIRs, or PostgreSQL), none from a file of its own."""
    node_a, node_b = tmp_path / "a", tmp_path / "b"
    node_a.mkdir()
    node_b.mkdir()
    assert links.shared_database(database, str(node_a))
    key_a = links.secret(str(node_a), None, database)
    key_b = links.secret(str(node_b), None, database)
    assert key_a == key_b
    assert len(key_a) >= 32
    assert not (node_a / links.SECRET_FILENAME).exists()
    token = links.LinkSigner(key_a).sign(links.RELEASE, "q1", "bob@example.test")
    assert links.LinkSigner(key_b).verify(token, links.RELEASE).entry_id == "q1"
    with pytest.raises(links.LinkError):  # a node with a secret of its own does not accept it
        links.LinkSigner(links.secret(str(node_b))).verify(token, links.RELEASE)


def test_the_first_node_publishes_its_file_secret(database: Database, tmp_path: Path) -> None:
    """An upgraded node's STATE_DIR/webq.secret becomes the cluster's: its sessions and links keep working."""
    node_a, node_b = tmp_path / "a", tmp_path / "b"
    node_a.mkdir()
    node_b.mkdir()
    old = links.secret(str(node_a))  # the file a single node made before
    assert links.secret(str(node_a), None, database) == old
    assert links.secret(str(node_b), None, database) == old
    assert links.secret(str(node_b)) != old  # node B's own file secret is not the one used


def test_one_node_keeps_its_file_secret(tmp_path: Path) -> None:
    """The default db.sqlite() in STATE_DIR is this node's alone: the secret stays a file."""
    database = db.sqlite()
    database.configure(str(tmp_path))
    try:
        assert not links.shared_database(database, str(tmp_path))
        key = links.secret(str(tmp_path), None, database)
        assert (tmp_path / links.SECRET_FILENAME).read_bytes().strip() == key
        assert database.call(lambda c: c.execute(select(secret_table)).all()) == []
    finally:
        database.dispose()


def test_a_configured_secret_file_wins_over_the_database(database: Database, tmp_path: Path) -> None:
    configured = tmp_path / "etc-webq.secret"
    configured.write_text("c" * 40 + "\n")
    assert links.secret(str(tmp_path / "a"), str(configured), database) == b"c" * 40
