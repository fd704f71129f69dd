"""A digest link in a real browser: ``mailsift report`` sends the digest to the next hop (a real
SMTP server), the release link taken from that mail opens a confirmation page in chromium, the
button releases the message once (it reaches the next hop), and a reload or a second click says
it was already released.  The web application runs under uvicorn on a loopback port with the
link pages (``create_app(extra_routes=links_pages.routes())``, as ``webq`` serves them)."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest
from click.testing import CliRunner

from mailsift.cli.report import report_command
from mailsift.reporting import links
from mailsift.storage.policies import list_entries
from mailsift.storage.quarantine.index import RELEASED, get_entry
from mailsift.testing import RecordingServer
from tests.helpers.browser import screenshot
from tests.helpers.links import Gateway, link_app, serving
from tests.helpers.messages import text_of

T = TypeVar("T")

MESSAGE = (
    b"From: Promo <promo@deals.example>\r\nTo: bob@example.test\r\n"
    b"Subject: Your <script>alert(1)</script> order\r\nMessage-ID: <promo-1@deals.example>\r\n\r\n"
    b"Not spam, honestly.\r\n"
)


@pytest.fixture
def setup() -> Iterator[tuple[Gateway, RecordingServer, str]]:
    directory = Path(tempfile.mkdtemp(prefix="mailsift-digest-browser-", dir="/tmp"))
    with RecordingServer() as next_hop:
        gateway = Gateway(directory, next_hop.port)
        key = links.secret(gateway.settings.state_dir)
        try:
            with serving(link_app(gateway, key)) as url:
                yield gateway, next_hop, url
        finally:
            gateway.settings.database.dispose()
            shutil.rmtree(directory, ignore_errors=True)


def in_thread(function: Callable[[], T]) -> T:
    """Run ``function`` in a worker thread (Playwright's sync API keeps an event loop in this one)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(function).result(timeout=120)


def wait_for(predicate: object, what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_digest_link_releases_once_then_says_already_released(
    setup: tuple[Gateway, RecordingServer, str], page: object
) -> None:
    gateway, next_hop, url = setup
    entry_id = in_thread(
        lambda: gateway.quarantine(MESSAGE, sender="promo@deals.example", recipients=("bob@example.test",))
    )
    sent = in_thread(
        lambda: CliRunner().invoke(report_command, ["-c", str(gateway.path), "--since", "24h", "--url", url])
    )
    assert sent.exit_code == 0, sent.output
    [digest] = next_hop.messages
    assert digest.recipients == ["bob@example.test"]
    text = text_of(digest.data)
    [release] = re.findall(r"Release: +(\S+)", text)
    [whitelist] = re.findall(r"Whitelist: +(\S+)", text)

    page.goto(release)  # type: ignore[attr-defined]
    section = page.locator("section.link-action")  # type: ignore[attr-defined]
    assert section.get_attribute("data-outcome") == "confirm"
    assert "Your <script>alert(1)</script> order" in page.locator("dl.headers").inner_text()  # type: ignore[attr-defined]
    assert page.evaluate("document.querySelectorAll('main script').length") == 0  # type: ignore[attr-defined]
    screenshot(page, "links_confirm")
    assert len(next_hop.messages) == 1  # opening the link released nothing

    page.click("#confirm")  # type: ignore[attr-defined]
    page.wait_for_selector("section.link-action[data-outcome=done]")  # type: ignore[attr-defined]
    assert "Released" in section.inner_text()
    screenshot(page, "links_released")
    wait_for(lambda: len(next_hop.messages) == 2, "the released message at the next hop")
    released = next_hop.messages[1]
    assert (released.sender, released.recipients) == ("promo@deals.example", ["bob@example.test"])
    assert released.data.replace(b"\r\n", b"\n") == MESSAGE.replace(b"\r\n", b"\n")
    entry = gateway.settings.database.call(get_entry, entry_id)
    assert entry.state == RELEASED

    page.reload()  # type: ignore[attr-defined]
    assert section.get_attribute("data-outcome") == "already"
    assert "already released" in section.inner_text()
    page.goto(release)  # type: ignore[attr-defined]  # a second click on the link in the mail
    assert section.get_attribute("data-outcome") == "already"
    assert page.locator("#confirm").count() == 0  # type: ignore[attr-defined]
    screenshot(page, "links_already_released")
    assert len(next_hop.messages) == 2  # still one release

    page.goto(whitelist)  # type: ignore[attr-defined]
    assert "promo@deals.example" in section.inner_text()
    page.click("#confirm")  # type: ignore[attr-defined]
    page.wait_for_selector("section.link-action[data-outcome=done]")  # type: ignore[attr-defined]
    [listed] = gateway.settings.database.call(list_entries)
    assert (listed.owner, listed.list, listed.value) == ("bob@example.test", "white", "promo@deals.example")

    page.goto(release[:-4] + "AAAA")  # type: ignore[attr-defined]  # a damaged link
    assert section.get_attribute("data-outcome") == "invalid"
    screenshot(page, "links_invalid")
