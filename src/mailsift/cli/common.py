"""The ``mailsift`` subcommands beyond serving and scanning (registered in :mod:`mailsift.cli.main`).

One module per command group: ``quarantine``, ``policy`` and ``lists``,
``report``, ``stats``, ``track``, ``user``.  What they share is here: the
``-c CONFIG`` option and loading the config once, with a clear message and
exit status 2 when it is broken.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from mailsift import config as config_module
from mailsift.config import Config
from mailsift.durations import seconds
from mailsift.errors import ConfigError, DatabaseError
from mailsift.validators import escape_controls

F = TypeVar("F", bound=Callable[..., Any])

UMASK = 0o027
"""Set by every command at start (``serve``'s supervisor too): files 0640 at most, directories 0750."""

STATE_COMMANDS = frozenset(
    {"user", "quarantine", "policy", "lists", "report", "stats", "track", "db", "backup", "restore"}
)
"""The commands that read or write ``STATE_DIR`` (the database, the quarantine, the link secret):
they create it as ``serve`` does (``spool/``, ``quarantine/``), and run as root they become
``USER`` before touching it, so that what they create (a SQLite database, its ``-wal`` and
``-shm``) belongs to the workers, never to root."""

OWN_SCHEMA_CHECK = frozenset({"db", "backup", "restore"})
"""State commands that look at the schema themselves (``db current`` shows a newer one)."""

ETC_CONFIG_ENV = "MAILSIFT_ETC_CONFIG"
"""For packagers and test suites only: another path in place of ``/etc/mailsift/config.py``
(read once, at import).  The test suite points it at a path that cannot exist, so that an
installed system config never leaks into a test, in process or in a subprocess."""

ETC_CONFIG = os.environ.get(ETC_CONFIG_ENV) or "/etc/mailsift/config.py"
"""The system-wide config (the Debian package installs it), used when it exists and neither
``-c`` nor ``MAILSIFT_CONFIG`` names one (``$MAILSIFT_ETC_CONFIG`` replaces the path)."""

CONFIG_ENV = "MAILSIFT_CONFIG"

CONFIG_HELP = (
    "Config file (Python, SAGATOR style). Default: $MAILSIFT_CONFIG, else /etc/mailsift/config.py "
    "if it exists, else the bundled config."
)


def config_option_with(help_text: str) -> Callable[[F], F]:
    """The ``-c/--config`` option (as ``config_path``) with its own help text."""
    return click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help=help_text)


def config_option(function: F) -> F:
    """The ``-c/--config`` option, as ``config_path``."""
    return config_option_with(CONFIG_HELP)(function)


class Duration(click.ParamType[float, Any]):
    """An age like ``30d``, ``12h``, ``90m``, ``2w`` or ``45s``, as seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        found = seconds(str(value), bare=False)
        if found is None:
            self.fail(f"{value!r} is not an age like 30d, 12h, 90m, 2w or 45s", param, ctx)
        return found


def fail(message: str, code: int = 2) -> NoReturn:
    """``mailsift: message`` on stderr, then exit with ``code``."""
    click.echo(f"mailsift: {message}", err=True)
    sys.exit(code)


def find_config(path: str | None) -> tuple[str, str]:
    """Which config a command uses, and why: ``(path, source)``.

    In order: ``-c PATH``; the environment's ``MAILSIFT_CONFIG``; :data:`ETC_CONFIG`
    when it exists; the bundled default config.  Every command finds it this way.
    """
    if path:
        return path, "-c"
    from_environment = os.environ.get(CONFIG_ENV, "")
    if from_environment:
        return from_environment, CONFIG_ENV
    if os.path.exists(ETC_CONFIG):
        return ETC_CONFIG, ETC_CONFIG
    return config_module.DEFAULT_CONFIG, "the bundled default"


def describe_config(path: str | None) -> str:
    """``/abs/config.py (from MAILSIFT_CONFIG)``: the line every command can print (``-v``)."""
    found, source = find_config(path)
    return f"{os.path.abspath(found)} (from {source})"


def verbose() -> bool:
    """Whether ``mailsift -v`` was given (the root group's flag)."""
    context = click.get_current_context(silent=True)
    return bool(context is not None and context.find_root().meta.get("mailsift.verbose"))


def load_config(path: str | None, *, database_for: str = "") -> Config:
    """Load the config :func:`find_config` names; exit 2 with ``file:line`` when it is broken.

    With ``mailsift -v`` the config used and why is said on stderr first.  A
    command of :data:`STATE_COMMANDS` creates ``STATE_DIR`` as ``serve`` does
    (and run as root becomes ``USER``).  With ``database_for`` (what the command
    keeps there) the config must have a DATABASE, whose pooled connections are
    closed when the command ends.
    """
    found, _ = find_config(path)
    if verbose():
        click.echo(f"mailsift: config: {describe_config(path)}", err=True)
    try:
        config = config_module.load(found)
    except ConfigError as error:
        fail(f"config error: {error}")
    if _touches_state():
        enter_state(config)
        if _command() not in OWN_SCHEMA_CHECK:
            check_schema(config)
    if database_for:
        if config.settings.database is None:  # config.load always sets one; a bare Settings may not
            fail(f"the config has no DATABASE ({database_for})")
        click.get_current_context().call_on_close(config.settings.database.dispose)
    return config


def printable(text: str) -> str:
    """One line safe for a terminal: whitespace runs as one space, control characters (escape
    sequences in a hostile Subject: window title, colours, line erase) shown as ``?``."""
    return "".join(ch if ch.isprintable() else "?" for ch in " ".join(text.split()))


def printable_lines(text: str) -> str:
    """Several lines safe for a terminal: each line's control characters escaped (``\\x1b``)."""
    return "\n".join(escape_controls(line) for line in text.split("\n"))


def check_schema(config: Config) -> None:
    """Refuse (exit 2, one line) a database whose schema is marked incompatible with this code.

    A database that does not exist yet or cannot be reached is left to the
    command (it creates it, or reports the error).  A newer schema that is
    compatible is used; the migration step warns about it.
    """
    database = config.settings.database
    if database is None:
        return
    if database.dialect == "sqlite" and not os.path.exists(database.url.database or ""):
        return
    try:
        found = database.schema()
    except DatabaseError:
        return
    finally:
        database.dispose()
    if found.incompatible:
        fail(found.refusal(f"database {database.describe()}"))


def _command() -> str | None:
    context = click.get_current_context(silent=True)
    return None if context is None else context.find_root().invoked_subcommand


def _touches_state() -> bool:
    """Whether the running command is one of :data:`STATE_COMMANDS` (``mailsift quarantine ...``)."""
    context = click.get_current_context(silent=True)
    if context is None:
        return False
    root = context.find_root()
    return bool({root.command.name, root.invoked_subcommand} & STATE_COMMANDS)


def make_state(config: Config) -> None:
    """Make ``STATE_DIR`` as ``serve`` does (owned by ``USER`` when run as root), and stay as we are.

    For the commands that do not keep state but whose scanners may (``check-config``,
    ``scan``: a cache, a greylist database): the first command run makes the directory
    ``serve`` will use, with the owner and modes ``serve`` gives it.
    """
    from mailsift.supervisor import prepare_state, service_account

    try:
        prepare_state(config, service_account(config) if os.geteuid() == 0 else None)
    except ConfigError as error:
        fail(f"config error: {error}")


def enter_state(config: Config) -> None:
    """Make ``STATE_DIR`` as ``serve`` does; run as root, for ``USER`` (owned by it), and become ``USER`` for good.

    Not root, or ``USER = None``: the directories are made as the current user.
    A ``USER`` that does not exist is an error (exit 2), never a command that
    goes on as root.
    """
    from mailsift.supervisor import drop_privileges, prepare_state, service_account

    if os.geteuid() != 0:
        try:
            prepare_state(config)
        except ConfigError as error:
            fail(f"config error: {error}")
        return
    try:
        account = service_account(config)
        prepare_state(config, account)
        drop_privileges(account)
    except ConfigError as error:
        fail(f"config error: {error}")
    except (OSError, RuntimeError) as error:
        fail(f"cannot become USER {config.settings.user!r}: {error}")
