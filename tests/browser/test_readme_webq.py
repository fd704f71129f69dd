"""The README's web quarantine recipe, exactly as written (findings 1 and 3).

The config is the README's Configuration block plus its "Open the web quarantine" block
(tests/helpers/readme.py: ports and /var/lib/mailsift moved to the test's own); the users are
made by the README's ``mailsift user add`` block, run before the first serve; then the admin
logs in by typing ``admin`` as the README says (webq's userconv makes it admin@example.com),
and alice's "Whitelist sender" lets the sender's next mail through.
"""

from __future__ import annotations

import json
import shutil
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from mailsift.testing import RecordingServer
from tests.helpers import readme
from tests.helpers.browser import log_in
from tests.helpers.readme import BIN, PASSWORD, Ports, Serve, environment, run_shell_block, wait_port, write_config
from tests.helpers.samples import EICAR_TEXT as EICAR

SENDER = "boss@partner.example"


class Recipe:
    def __init__(self, root: Path, ports: Ports, recorder: RecordingServer, config: Path) -> None:
        self.root, self.ports, self.recorder, self.config = root, ports, recorder, config
        self.url = f"http://127.0.0.1:{ports[8008]}"

    def send(self, subject: str) -> None:
        message = f"From: {SENDER}\r\nTo: alice@example.com\r\nSubject: {subject}\r\n\r\n{EICAR}\r\n"
        with smtplib.SMTP("127.0.0.1", self.ports[10024], timeout=60) as client:
            client.sendmail(SENDER, ["alice@example.com"], message.encode())

    def held(self) -> list[dict[str, object]]:
        listed = subprocess.run(
            [str(BIN / "mailsift"), "quarantine", "list", "--json", "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
            env=environment(),
            check=True,
        )
        entries: list[dict[str, object]] = json.loads(listed.stdout)
        return entries


@pytest.fixture(scope="module")
def recipe() -> Iterator[Recipe]:
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="readme-webq-"))
    recorder = RecordingServer().start()
    ports = Ports()
    ports[10025] = recorder.port  # the recipe's SMTP_SERVER: a recording next hop
    config = write_config(readme.named("webq-recipe"), ports, root)
    users = run_shell_block(readme.named("users"), root, config)  # before the first serve (finding 2)
    assert users.returncode == 0, users.stdout
    serve = Serve(config, root)
    try:
        wait_port(ports[8008], serve.process, serve.log)
        wait_port(ports[10024], serve.process, serve.log)
        yield Recipe(root, ports, recorder, config)
    finally:
        serve.stop()
        recorder.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_the_admin_logs_in_as_the_readme_says(recipe: Recipe, page: object) -> None:
    """Finding 1: `mailsift user add admin --admin`, then typing `admin` and the password."""
    log_in(page, recipe.url, "admin", PASSWORD)
    body = page.inner_text("body")  # type: ignore[attr-defined]
    assert "Wrong login or password" not in body
    assert page.locator("header form.logout button").count() == 1  # type: ignore[attr-defined]
    assert "admin@example.com" in body


def test_whitelist_sender_lets_the_next_mail_through(recipe: Recipe, page: object) -> None:
    """Finding 3: with the recipe's SCANNERS (listed() first), "Whitelist sender" works."""
    recipe.send("first, quarantined")
    [entry] = [e for e in recipe.held() if e.get("sender") == SENDER]
    assert not recipe.recorder.messages
    log_in(page, recipe.url, "alice", PASSWORD)  # userconv: alice@example.com, who owns the address
    page.goto(f"{recipe.url}/q/{quote(str(entry['id']))}")  # type: ignore[attr-defined]
    page.click("#whitelist")  # type: ignore[attr-defined]
    page.wait_for_load_state()  # type: ignore[attr-defined]
    recipe.send("second, whitelisted")
    deadline = time.monotonic() + 30
    while not recipe.recorder.messages:
        assert time.monotonic() < deadline, "the whitelisted sender's mail was not delivered"
        time.sleep(0.1)
    [delivered] = recipe.recorder.messages
    assert b"Subject: second, whitelisted" in delivered.data
    assert len(recipe.held()) == 1  # the second one was not quarantined again
