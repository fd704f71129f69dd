"""``mailsift user``: userconv as at the login page (issue 13 finding 1), the login's form, password length."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from mailsift import config as config_module
from mailsift.cli.users import user_group, web_config
from mailsift.web import users
from mailsift.web.app import create_app

USERCONV = 'userconv=[(r"^([^@]+)$", r"\\1@example.test")]'


def _config(tmp_path: Path, webq: str | None = USERCONV) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.py"
    state = tmp_path / "state"
    srv = f'SRV = [webq("127.0.0.1", 8008, {webq})]\n' if webq is not None else ""
    path.write_text(f"from mailsift import *\nSTATE_DIR = {str(state)!r}\nUSER = None\n{srv}")
    return str(path)


def _run(*args: str, password: str | None = "a long enough password") -> Result:
    return CliRunner().invoke(user_group, list(args), input=None if password is None else password + "\n")


def _logins(config: str) -> list[str]:
    return [line.split("\t")[0] for line in _run("list", "-c", config, password=None).output.splitlines()]


async def _login(client: httpx.AsyncClient, login: str, password: str) -> httpx.Response:
    found = re.search(r'name="csrf_token" value="([^"]+)"', (await client.get("/login")).text)
    assert found
    data = {"login": login, "password": password, "csrf_token": found.group(1), "next": "/q/"}
    return await client.post("/login", data=data)


async def test_readme_recipe_user_add_admin_then_log_in_as_admin(tmp_path: Path) -> None:
    """Finding 1: with the README's userconv, `user add admin --admin` stored `admin`, and the
    login page looked up `admin@example.test`: the right password gave "Wrong login or password."."""
    config_path = _config(tmp_path)
    added = _run("add", "-c", config_path, "admin", "--admin", "--password-stdin")
    assert added.exit_code == 0, added.output
    assert "user admin@example.test added (admin); log in as admin" in added.output
    config = config_module.load(config_path)
    try:
        app = create_app(config.settings, secret="s" * 40, config=web_config(config))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://webq.test") as client:
            response = await _login(client, "admin", "a long enough password")
            assert response.status_code == 303, response.text
            assert response.headers["location"] == "/q/"
    finally:
        assert config.settings.database is not None
        config.settings.database.dispose()


def test_passwd_and_delete_take_the_name_typed_at_the_login_page(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert _run("add", "-c", config, "alice", "--password-stdin").exit_code == 0
    assert _logins(config) == ["alice@example.test"]
    assert _run("passwd", "-c", config, "alice", "--password-stdin", password="another long one").exit_code == 0
    assert _run("passwd", "-c", config, "alice@example.test", "--password-stdin").exit_code == 0
    assert _run("delete", "-c", config, "alice", password=None).exit_code == 0
    assert _logins(config) == []


def test_delete_takes_a_listed_name_stored_before_userconv_applied(tmp_path: Path) -> None:
    plain = _config(tmp_path, webq=None)
    assert _run("add", "-c", plain, "admin", "--password-stdin").exit_code == 0  # no webq: no userconv
    with_userconv = _config(tmp_path)
    assert _logins(with_userconv) == ["admin"]
    deleted = _run("delete", "-c", with_userconv, "admin", password=None)
    assert deleted.exit_code == 0, deleted.output
    assert _logins(with_userconv) == []


def test_a_short_password_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    """Finding 10: an admin password `abc` was accepted."""
    config = _config(tmp_path)
    refused = _run("add", "-c", config, "admin", "--admin", "--password-stdin", password="abc")
    assert refused.exit_code == 2
    assert "the password is too short: at least 10 characters" in refused.output
    assert _logins(config) == []
    assert _run("add", "-c", config, "admin", "--password-stdin", password="0123456789").exit_code == 0
    assert _run("passwd", "-c", config, "admin", "--password-stdin", password="short").exit_code == 2
    assert _run("add", "-c", config, "bob", "--password-stdin", password="").exit_code == 2


def test_the_minimum_length_is_set_on_webq(tmp_path: Path) -> None:
    config = _config(tmp_path, webq=f"{USERCONV}, min_password_length=4")
    assert _run("add", "-c", config, "carol", "--password-stdin", password="abc").exit_code == 2
    assert _run("add", "-c", config, "carol", "--password-stdin", password="abcd").exit_code == 0
    bare = _config(tmp_path / "bare", webq=None)
    assert _run("add", "-c", bare, "dave", "--password-stdin", password="abcdefghi").exit_code == 2  # 9 < 10


def test_min_password_length_must_be_positive(tmp_path: Path) -> None:
    broken = _run("add", "-c", _config(tmp_path, webq="min_password_length=0"), "erin", "--password-stdin")
    assert broken.exit_code == 2
    assert "min_password_length" in broken.output


@pytest.mark.parametrize("login", ["two words", "tab\there", "esc\x1bape", "del\x7f", ""])
def test_a_login_nobody_can_type_is_refused(tmp_path: Path, login: str) -> None:
    refused = _run("add", "-c", _config(tmp_path), login, "--password-stdin")
    assert refused.exit_code == 2
    assert "bad login" in refused.output


def test_a_login_userconv_makes_invalid_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path, webq='userconv=[(r"^(.*)$", r"\\1 at example")]')
    refused = _run("add", "-c", config, "frank", "--password-stdin")
    assert refused.exit_code == 2
    assert "userconv makes it 'frank at example'" in refused.output
    twice_at = _config(tmp_path / "at", webq='userconv=[(r"^(.*)$", r"\\1@x@y")]')
    assert "must be an address" in _run("add", "-c", twice_at, "gina", "--password-stdin").output


def test_new_login_and_check_new_password() -> None:
    rules = users.compile_userconv([(r"^([^@]+)$", r"\1@example.test")])
    assert users.new_login(" Admin ", rules) == "admin@example.test"
    assert users.new_login("bob@other.test", rules) == "bob@other.test"
    assert users.login_name("Admin", rules) == users.new_login("admin", rules)
    users.check_new_password("x" * 10)
    for bad in ("x" * 9, "", "long enough\nbut two lines"):
        with pytest.raises(Exception, match="password"):
            users.check_new_password(bad)
