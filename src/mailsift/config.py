"""Loads and checks a config file, once; the result is passed in everywhere.

A config file is Python, as SAGATOR's ``config.py``::

    from mailsift import *
    SCANNERS = [parsemail(attach_name([('Policy.Exe', r'\\.exe$')])), ...]
    SMTP_SERVER = ('127.0.0.1', 10025)
    STATE_DIR = '/var/lib/mailsift'
    DATABASE = db.sqlite()           # STATE_DIR/mailsift.db; or db.database('postgresql+psycopg://...')
    HOOKS = [...]                    # run after every disposition (notifications, archive, ...)
    SRV = [smtpd(SCANNERS, '127.0.0.1', 10024)]

Any problem — a syntax error, a wrong argument, a missing name — becomes a
:class:`~mailsift.errors.ConfigError` naming the file and the line.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from typing import Any

from mailsift.core.hooks import Hook
from mailsift.errors import ConfigError
from mailsift.reporting.digest import reporter
from mailsift.scanners.base import Scanner
from mailsift.services.base import Service
from mailsift.services.daemons import Daemon
from mailsift.settings import Settings
from mailsift.storage import db
from mailsift.storage import policies as userpolicy

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "data", "default_config.py")


@dataclass(frozen=True)
class Config:
    """A loaded, checked config."""

    path: str
    settings: Settings
    scanners: tuple[Scanner, ...]
    services: tuple[Service, ...]
    daemons: tuple[Daemon, ...] = ()
    reporter: Any = None
    """SAGATOR's virtual ``reporter(...)`` service in SRV: the digest's settings (``mailsift report``)."""


def _config_line(error: BaseException, path: str) -> int | None:
    """The innermost line of the config file in the error's traceback."""
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename == path:
            line = frame.lineno
    return line


def load(path: str) -> Config:
    """Read, run and check the config file at ``path``."""
    path = os.path.abspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            source = handle.read()
    except OSError as error:
        raise ConfigError(f"cannot read config: {error.strerror}", filename=path) from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"config is not UTF-8: {error}", filename=path) from None
    try:
        code = compile(source, path, "exec")
    except SyntaxError as error:
        raise ConfigError(f"syntax error: {error.msg}", filename=path, lineno=error.lineno) from None
    namespace: dict[str, Any] = {"__file__": path, "__name__": "mailsift_config"}
    try:
        exec(code, namespace)  # noqa: S102 - the config file is Python by design (SAGATOR)
    except ConfigError as error:
        raise ConfigError(error.message, filename=path, lineno=_config_line(error, path)) from None
    except Exception as error:  # noqa: BLE001 - anything the file raises is a config error
        raise ConfigError(f"{type(error).__name__}: {error}", filename=path, lineno=_config_line(error, path)) from None
    return _check(path, namespace)


def _check(path: str, namespace: dict[str, Any]) -> Config:
    def fail(message: str) -> ConfigError:
        return ConfigError(message, filename=path)

    scanners = namespace.get("SCANNERS", [])
    if not isinstance(scanners, list | tuple) or not all(isinstance(s, Scanner) for s in scanners):
        raise fail(f"SCANNERS must be a list of scanners, got {scanners!r}")
    entries = namespace.get("SRV", [])
    if not isinstance(entries, list | tuple) or not all(isinstance(s, Service | Daemon | reporter) for s in entries):
        raise fail(f"SRV must be a list of services like smtpd(SCANNERS, '127.0.0.1', 10024), got {entries!r}")
    services = [s for s in entries if isinstance(s, Service)]
    daemons = [s for s in entries if isinstance(s, Daemon)]
    reporters = [s for s in entries if isinstance(s, reporter)]
    if len(reporters) > 1:
        raise fail("SRV lists reporter(...) more than once")
    state_dir = namespace.get("STATE_DIR", os.environ.get("MAILSIFT_STATE_DIR", "var"))
    if not isinstance(state_dir, str) or not state_dir:
        raise fail(f"STATE_DIR must be a directory path, got {state_dir!r}")
    threshold = namespace.get("SPOOL_THRESHOLD", 1024 * 1024)
    if not isinstance(threshold, int) or threshold < 0:
        raise fail(f"SPOOL_THRESHOLD must be a number of bytes, got {threshold!r}")
    hooks = namespace.get("HOOKS", [])
    if not isinstance(hooks, list | tuple) or not all(isinstance(h, Hook) for h in hooks):
        raise fail(f"HOOKS must be a list like [notify(...), archive(...)], got {hooks!r}")
    database = namespace.get("DATABASE")
    if database is None:
        database = db.sqlite()
    if not isinstance(database, db.Database):
        raise fail(f"DATABASE must be db.sqlite(...) or db.database('postgresql+psycopg://...'), got {database!r}")
    try:
        database.configure(os.path.abspath(state_dir))
    except ConfigError as error:
        raise fail(f"DATABASE: {error.message}") from None
    userpolicy.use_database(database)  # policy and list scanners given no db= use DATABASE
    settings = Settings(
        state_dir=os.path.abspath(state_dir),
        smtp_server=namespace.get("SMTP_SERVER"),
        spool_threshold=threshold,
        hooks=tuple(hooks),
        database=database,
        node=str(namespace.get("NODE", "")),
    )
    for hook in hooks:
        try:
            hook.check(settings)
        except ConfigError as error:
            raise fail(f"HOOKS: {hook.describe()}: {error.message}") from None
    seen: set[tuple[str, int]] = set()
    for service in services:
        try:
            service.check(settings)
        except ConfigError as error:
            raise fail(f"{service.describe()}: {error.message}") from None
        if (service.host, service.port) in seen:
            raise fail(f"two services listen on {service.host}:{service.port}")
        seen.add((service.host, service.port))
    for daemon in daemons:
        try:
            daemon.check()
        except ConfigError as error:
            raise fail(error.message) from None
    return Config(path, settings, tuple(scanners), tuple(services), tuple(daemons), reporters[0] if reporters else None)
