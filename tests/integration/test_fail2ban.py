"""The web login log and the shipped fail2ban filter (issue 13 finding 7): `serve`'s logging setup,
real logins through the web application, then Debian's ``fail2ban-regex`` on the log it wrote."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILTER = ROOT / "packaging" / "fail2ban" / "mailsift-webq.conf"

# Run in a fresh interpreter: serve's logging setup (root handlers, quiet libraries) stays out of pytest's.
SCRIPT = textwrap.dedent(
    """
    import asyncio, functools, logging, re, sys, time
    import httpx
    from mailsift.cli.main import _setup_logging
    from mailsift.settings import Settings
    from mailsift.storage import db
    from mailsift.web import users
    from mailsift.web.app import create_app
    from mailsift.web.webconfig import WebConfig

    state, log_file = sys.argv[1], sys.argv[2]
    _setup_logging("info", log_file)
    database = db.sqlite()
    database.configure(state)
    add = functools.partial(users.add_user, login="alice@example.test",
                            password_hash=users.hash_password("a long enough password"), now=time.time())
    database.call(add)
    rules = users.compile_userconv([(r"^([^@]+)$", r"\\1@example.test")])
    config = WebConfig(userconv=rules, trusted_proxies=("127.0.0.1",))
    app = create_app(Settings(state_dir=state, database=database), secret="s" * 40, config=config)

    async def login(client, name, password, client_ip):
        page = await client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        data = {"login": name, "password": password, "csrf_token": token, "next": "/"}
        return await client.post("/login", data=data, headers={"X-Forwarded-For": client_ip})

    async def main():
        transport = httpx.ASGITransport(app=app)  # the peer is 127.0.0.1, a trusted proxy
        async with httpx.AsyncClient(transport=transport, base_url="http://webq.test") as client:
            for n in range(3):
                assert (await login(client, "alice", "wrong", "203.0.113.9")).status_code == 401
            assert (await login(client, "evil from 198.51.100.7", "x", "203.0.113.10")).status_code == 401
            assert (await login(client, "alice", "a long enough password", "198.51.100.4")).status_code == 303
        # what a reload logs (uvicorn, httpx at INFO): not in the log by default
        logging.getLogger("uvicorn.error").info("Started server process [%d]", 1)
        logging.getLogger("uvicorn.error").info("Shutting down")
        logging.getLogger("httpx").info("HTTP Request: GET http://x/ 200")
        logging.getLogger("asyncio").info("poll took 1 ms")

    asyncio.run(main())
    database.dispose()
    """
)


def _write_log(tmp_path: Path) -> list[str]:
    log_file = tmp_path / "mailsift.log"
    state = tmp_path / "state"
    state.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(state), str(log_file)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return log_file.read_text(encoding="utf-8").splitlines()


def test_logins_are_logged_one_line_each_with_the_client_and_no_library_noise(tmp_path: Path) -> None:
    lines = _write_log(tmp_path)
    logins = [line.split(" WARNING ")[-1].split(" INFO ")[-1] for line in lines if "webq: login" in line]
    assert logins == [
        *["webq: login failed for alice@example.test from 203.0.113.9"] * 3,
        "webq: login failed for evil?from?198.51.100.7@example.test from 203.0.113.10",
        "webq: login ok for alice@example.test from 198.51.100.4",
    ]
    for noise in (
        "Started server process",
        "Shutting down",
        "HTTP Request",
        "poll took",
        "Context impl",
        "Will assume",
        "Running upgrade",  # Alembic's, one per revision (11 for a new database)
    ):
        assert not any(noise in line for line in lines), noise
    # the new database's schema: one line of mailsift's own
    assert len([line for line in lines if "schema created (revisions 0001, " in line]) == 1, lines


def test_the_fail2ban_filter_matches_failed_logins_only(tmp_path: Path) -> None:
    if shutil.which("fail2ban-regex") is None:
        pytest.skip("fail2ban-regex missing: Debian's fail2ban (scripts/setup.sh --test installs it)")
    log_file = tmp_path / "mailsift.log"
    lines = _write_log(tmp_path)
    found = subprocess.run(
        ["fail2ban-regex", "-o", "ip", str(log_file), str(FILTER)], capture_output=True, text=True, timeout=120
    )
    assert found.returncode == 0, found.stdout + found.stderr
    assert found.stdout.split() == ["203.0.113.9"] * 3 + ["203.0.113.10"]
    # a throttled attempt counts too; with the syslog format as well
    throttled = "2025-01-31 12:00:00,123 mailsift.webq[7] WARNING webq: login throttled for a@b.test from 192.0.2.5"
    via_syslog = "Jan 31 12:00:00 gw mailsift[7]: mailsift.webq WARNING webq: login failed for a from 192.0.2.6"
    (tmp_path / "more.log").write_text(f"{throttled}\n{via_syslog}\n{lines[-1]}\n", encoding="utf-8")
    more = subprocess.run(
        ["fail2ban-regex", "-o", "ip", str(tmp_path / "more.log"), str(FILTER)], capture_output=True, text=True
    )
    assert more.stdout.split() == ["192.0.2.5", "192.0.2.6"]
