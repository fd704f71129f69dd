"""webq in a cluster: a web session made on node A's application works on node B's (one shared secret)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from mailsift.reporting import links
from mailsift.settings import Settings
from mailsift.storage.db import Database
from mailsift.web.app import create_app
from mailsift.web.webconfig import WebConfig
from tests.helpers.webq import PASSWORDS, add_users, log_in


def _client(settings: Settings, secret: bytes) -> httpx.AsyncClient:
    app = create_app(settings, secret=secret, config=WebConfig())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://webq.test")


@pytest.mark.parametrize("shared", [True, False])
async def test_a_session_made_on_node_a_works_on_node_b(database: Database, tmp_path: Path, shared: bool) -> None:
    """Both nodes take their secret as webq does (links.secret with DATABASE); the control: node B with a
    file secret of its own does not accept node A's cookie."""
    node_a = Settings(state_dir=str(tmp_path / "a"), database=database)
    node_b = Settings(state_dir=str(tmp_path / "b"), database=database)
    add_users(node_a)
    secret_a = links.secret(node_a.state_dir, None, database)
    secret_b = links.secret(node_b.state_dir, None, database if shared else None)
    async with _client(node_a, secret_a) as a, _client(node_b, secret_b) as b:
        assert (await log_in(a, "alice", PASSWORDS["alice"])).status_code == 303
        assert (await a.get("/prefs")).status_code == 200
        b.cookies = a.cookies  # the balancer sends the next request to node B
        answer = await b.get("/prefs")
    assert answer.status_code == (200 if shared else 303)
