"""``mailsift user add|passwd|delete|list``: the web quarantine's users (in DATABASE).

SAGATOR kept them in its ``webaccess`` table with CRYPT_MD5 passwords; here
passwords are argon2id hashes (:mod:`mailsift.web.users`).  A user owns one
or more addresses (``--address``, repeatable) and sees the quarantined mail
addressed to them; an admin (``--admin``) sees all.  A login that is itself an
address owns that address too.

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
from mailsift.errors import ConfigError, MailsiftError
from mailsift.web import users

stdin_option = click.option("--password-stdin", is_flag=True, help="Read the password as one line from stdin.")


def _password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        click.echo("mailsift: the password must not be empty", err=True)
        sys.exit(2)
    return password


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
    try:
        login = users.normalize_login(login)
        clean = [users.normalize_address(a) for a in addresses]
    except ConfigError as error:
        click.echo(f"mailsift: {error.message}", err=True)
        sys.exit(2)
    password_hash = users.hash_password(_password(password_stdin))
    add = functools.partial(
        users.add_user, login=login, password_hash=password_hash, is_admin=admin, addresses=clean, now=time.time()
    )
    try:
        config.settings.require_database().call(add)
    except MailsiftError as error:
        _fail(error)
    click.echo(f"user {login} added{' (admin)' if admin else ''}")


@user_group.command("passwd")
@config_option
@click.argument("login")
@stdin_option
@click.option("--address", "addresses", multiple=True, help="Replace the user's addresses (repeatable).")
def passwd_command(config_path: str | None, login: str, password_stdin: bool, addresses: tuple[str, ...]) -> None:
    """Set LOGIN's password (ending the user's open sessions)."""
    config = load_config(config_path, database_for="the web users")
    password_hash = users.hash_password(_password(password_stdin))
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
    """Delete the user LOGIN (their sessions end)."""
    config = load_config(config_path, database_for="the web users")
    try:
        found = config.settings.require_database().call(functools.partial(users.delete_user, login=login))
    except MailsiftError as error:
        _fail(error)
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
