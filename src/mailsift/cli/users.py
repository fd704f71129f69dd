"""``mailsift user add|passwd|delete|list``: the web quarantine's users (in DATABASE).

SAGATOR kept them in its ``webaccess`` table with CRYPT_MD5 passwords; here
passwords are argon2id hashes (:mod:`mailsift.web.users`).  A user owns one
or more addresses (``--address``, repeatable) and sees the quarantined mail
addressed to them; an admin (``--admin``) sees all.  A login that is itself an
address owns that address too.

The login goes through the config's ``webq(..., userconv=...)`` exactly as
on the login page, so ``user add admin`` with ``userconv=[(r"^([^@]+)$",
r"\1@example.com")]`` stores ``admin@example.com``, which the login page makes
of the typed ``admin``.  A password must have ``webq(...,
min_password_length=...)`` characters (default 10).

Passwords are asked twice on the terminal, or read as one line from stdin
with ``--password-stdin`` (for scripts; never on the command line, where
``ps`` would show it).  Exit status: 0 done, 1 no such user / exists already,
2 a usage or config error.
"""

from __future__ import annotations

import functools
import json
import sys
import time

import click

from mailsift.cli.common import config_option, load_config
from mailsift.config import Config
from mailsift.errors import ConfigError, MailsiftError
from mailsift.web import users
from mailsift.web.webconfig import WebConfig

stdin_option = click.option("--password-stdin", is_flag=True, help="Read the password as one line from stdin.")


def web_config(config: Config) -> WebConfig:
    """The web quarantine's options of ``config`` (its first ``webq``; defaults without one)."""
    found = [c for c in (getattr(s, "config", None) for s in config.services) if isinstance(c, WebConfig)]
    if len({(c.userconv, c.min_password_length) for c in found}) > 1:
        click.echo(
            "mailsift: warning: the webq services differ in userconv or min_password_length; using the first one's",
            err=True,
        )
    return found[0] if found else WebConfig()


def _password(from_stdin: bool, min_length: int) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        users.check_new_password(password, min_length)
    except ConfigError as error:
        click.echo(f"mailsift: {error.message}", err=True)
        sys.exit(2)
    return password


def _login(typed: str, web: WebConfig) -> str:
    """``typed`` as the login page would look it up (after userconv)."""
    try:
        return users.new_login(typed, web.userconv)
    except ConfigError as error:
        click.echo(f"mailsift: {error.message}", err=True)
        sys.exit(2)


def _fail(error: MailsiftError) -> None:
    click.echo(f"mailsift: {error.message}", err=True)
    sys.exit(1 if "exists" in error.message else 2)


@click.group("user")
def user_group() -> None:
    """Web quarantine users: add, change the password, delete, list."""


@user_group.command("add")
@config_option
@click.argument("login")
@click.option("--address", "addresses", multiple=True, help="An address the user owns (repeatable).")
@click.option("--admin", is_flag=True, help="An administrator: sees and acts on every message.")
@stdin_option
def add_command(
    config_path: str | None, login: str, addresses: tuple[str, ...], admin: bool, password_stdin: bool
) -> None:
    """Create a user LOGIN with a password and addresses."""
    config = load_config(config_path, database_for="the web users")
    web = web_config(config)
    typed, login = login, _login(login, web)
    try:
        clean = [users.normalize_address(a) for a in addresses]
    except ConfigError as error:
        click.echo(f"mailsift: {error.message}", err=True)
        sys.exit(2)
    password_hash = users.hash_password(_password(password_stdin, web.min_password_length))
    add = functools.partial(
        users.add_user, login=login, password_hash=password_hash, is_admin=admin, addresses=clean, now=time.time()
    )
    try:
        config.settings.require_database().call(add)
    except MailsiftError as error:
        _fail(error)
    as_typed = f"; log in as {typed.strip()}" if typed.strip().lower() != login else ""
    click.echo(f"user {login} added{' (admin)' if admin else ''}{as_typed}")


@user_group.command("passwd")
@config_option
@click.argument("login")
@stdin_option
@click.option("--address", "addresses", multiple=True, help="Replace the user's addresses (repeatable).")
def passwd_command(config_path: str | None, login: str, password_stdin: bool, addresses: tuple[str, ...]) -> None:
    """Set LOGIN's password (ending the user's open sessions)."""
    config = load_config(config_path, database_for="the web users")
    web = web_config(config)
    login = _login(login, web)
    password_hash = users.hash_password(_password(password_stdin, web.min_password_length))
    change = functools.partial(
        users.update_user, login=login, password_hash=password_hash, addresses=list(addresses) if addresses else None
    )
    try:
        found = config.settings.require_database().call(change)
    except MailsiftError as error:
        _fail(error)
    if not found:
        click.echo(f"mailsift: no user {login}", err=True)
        sys.exit(1)
    click.echo(f"password of {login} changed")


@user_group.command("delete")
@config_option
@click.argument("login")
def delete_command(config_path: str | None, login: str) -> None:
    """Delete the user LOGIN (their sessions end); LOGIN as typed at the login page, or as listed."""
    config = load_config(config_path, database_for="the web users")
    converted = users.login_name(login, web_config(config).userconv)
    database = config.settings.require_database()
    try:
        found = database.call(functools.partial(users.delete_user, login=converted))
        if not found and converted != login.strip().lower():  # as listed: e.g. added before userconv applied
            found = database.call(functools.partial(users.delete_user, login=login))
            converted = login
    except MailsiftError as error:
        _fail(error)
    login = converted
    if not found:
        click.echo(f"mailsift: no user {login}", err=True)
        sys.exit(1)
    click.echo(f"user {login} deleted")


@user_group.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON array of objects.")
def list_command(config_path: str | None, as_json: bool) -> None:
    """List the users, their role and addresses."""
    config = load_config(config_path, database_for="the web users")
    try:
        found = config.settings.require_database().call(users.list_users)
    except MailsiftError as error:
        _fail(error)
    if as_json:
        data = [{"login": u.login, "admin": u.is_admin, "addresses": list(u.addresses)} for u in found]
        click.echo(json.dumps(data, indent=1))
        return
    for user in found:
        role = "admin" if user.is_admin else "user"
        click.echo(f"{user.login}\t{role}\t{','.join(user.addresses) or '-'}")
