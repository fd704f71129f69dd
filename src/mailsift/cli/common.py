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
from mailsift.errors import ConfigError
from mailsift.validators import escape_controls

F = TypeVar("F", bound=Callable[..., Any])

UMASK = 0o027
"""Set by every command at start (``serve``'s supervisor too): files 0640 at most, directories 0750."""

STATE_COMMANDS = frozenset({"user", "quarantine", "policy", "lists", "report", "stats", "track"})
"""The commands that read or write ``STATE_DIR`` (the database, the quarantine, the link secret):
run as root, they become ``USER`` before touching it, so that what they create (a SQLite
database, its ``-wal`` and ``-shm``) belongs to the workers, never to root."""

CONFIG_HELP = "Config file (Python, SAGATOR style). Default: the bundled config."


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


def load_config(path: str | None, *, database_for: str = "") -> Config:
    """Load the config (the bundled one without ``-c``); exit 2 with ``file:line`` when it is broken.

    With ``database_for`` (what the command keeps there) the config must have a
    DATABASE, whose pooled connections are closed when the command ends.
    """
    try:
        config = config_module.load(path or config_module.DEFAULT_CONFIG)
    except ConfigError as error:
        fail(f"config error: {error}")
    if _touches_state():
        enter_state(config)
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


def _touches_state() -> bool:
    """Whether the running command is one of :data:`STATE_COMMANDS` (``mailsift quarantine ...``)."""
    context = click.get_current_context(silent=True)
    if context is None:
        return False
    root = context.find_root()
    return bool({root.command.name, root.invoked_subcommand} & STATE_COMMANDS)


def enter_state(config: Config) -> None:
    """Run as root: make ``STATE_DIR`` for ``USER`` (owned by it) and become ``USER`` for good.

    Not root, or ``USER = None``: nothing changes.  A ``USER`` that does not
    exist is an error (exit 2), never a command that goes on as root.
    """
    if os.geteuid() != 0:
        return
    from mailsift.supervisor import drop_privileges, prepare_state, service_account

    try:
        account = service_account(config)
        prepare_state(config, account)
        drop_privileges(account)
    except ConfigError as error:
        fail(f"config error: {error}")
    except (OSError, RuntimeError) as error:
        fail(f"cannot become USER {config.settings.user!r}: {error}")
