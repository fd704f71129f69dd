"""Loads and checks a config file, once; the result is passed in everywhere.

A config file is Python, as SAGATOR's ``config.py``::

    from mailsift import *
    SCANNERS = [parsemail(attach_name([('Policy.Exe', r'\\.exe$')])), ...]
    SMTP_SERVER = ('127.0.0.1', 10025)
    STATE_DIR = '/var/lib/mailsift'
    DATABASE = db.sqlite()           # STATE_DIR/mailsift.db; or db.database('postgresql+psycopg://...')
    HOOKS = [...]                    # run after every disposition (notifications, archive, ...)
    USER = 'mailsift'                # the workers' user when started as root (None: stay as started)
    SRV = [smtpd(SCANNERS, '127.0.0.1', 10024)]

Any problem — a syntax error, a wrong argument, a missing name, a check that
fails — becomes a :class:`~mailsift.errors.ConfigError` naming the file and the
line (for a failed check, the line that assigns the setting: ``HOOKS``, ``SRV``...).

Loading has no effect outside the config it returns: nothing is written, no
module-level state is set.  The objects that need what the config provides
(the policy and list scanners need ``DATABASE``) are bound to it as the last
step, once every check has passed (:class:`~mailsift.settings.SettingsBound`),
so a config that is rejected — at any check — leaves nothing behind, and a
supervisor that rejects a reload keeps serving the running config untouched.
"""

from __future__ import annotations

import ast
import hashlib
import os
import traceback
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from mailsift import validators
from mailsift.core.hooks import Hook
from mailsift.core.poison import poison
from mailsift.delivery.next_hop import Delivery, resolve
from mailsift.durations import parse_duration
from mailsift.errors import ConfigError
from mailsift.reporting.digest import reporter
from mailsift.scanners.actions import reject
from mailsift.scanners.base import Scanner
from mailsift.scanners.userpolicy import blacklisted, listed, whitelisted
from mailsift.services.base import Service
from mailsift.services.daemons import Daemon, rlimit
from mailsift.services.lmtpd import lmtpd
from mailsift.services.rcptpolicy import link_recipient_policies, recipient_policy
from mailsift.services.smtpd import smtpd
from mailsift.settings import Settings, SettingsBound
from mailsift.storage import db
from mailsift.version import __version__
from mailsift.web.service import webq

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "data", "default_config.py")
DEFAULT_USER = "mailsift"
"""``USER`` when the config does not say (the environment's ``MAILSIFT_USER`` first: empty is None)."""
DEFAULT_MAILLOG_RETENTION = "90d"
"""``MAILLOG_RETENTION``: ``quarantine expire`` and ``stats prune`` keep 90 days of the per-message log
(tracking's searches, the digest's rejected mail): a quarter, past the quarantine's default 14 days
and a link's 7 (90 at most)."""


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
    lines: Mapping[str, int] = field(default_factory=dict)
    """The line of the file that last assigns each top-level name (``SRV``, ``STATE_DIR``...)."""
    rlimit: rlimit | None = None
    """SAGATOR's virtual ``rlimit(...)`` service in SRV: the workers' resource limits."""

    def error(self, message: str, name: str = "") -> ConfigError:
        """A :class:`ConfigError` about this config, at the line that assigns ``name``."""
        return ConfigError(message, filename=self.path, lineno=self.lines.get(name))

    def objects(self) -> Iterator[object]:
        """Every object of this config: hooks, services, daemons, and each scanner once
        (``SCANNERS``, every service's, lmtpd's per-recipient ones, and all they wrap)."""
        yield from self.daemons
        yield from reachable(self.services, self.scanners, self.settings.hooks)


def _scanner_tree(scanners: Iterable[Scanner]) -> Iterator[Scanner]:
    """Each scanner of ``scanners`` and all they wrap, once, in the order written."""
    seen: set[int] = set()
    pending = list(scanners)[::-1]
    while pending:
        scanner = pending.pop()
        if id(scanner) not in seen:
            seen.add(id(scanner))
            yield scanner
            pending.extend(reversed(scanner.children))


def warnings(config: Config) -> list[str]:
    """What ``mailsift check-config`` warns about: a config that loads but does not do what it seems to.

    * a ``reject`` action in the scanners of an ``smtpd(..., after_queue=True)``: behind an MTA's
      queue a reject becomes a bounce to the (possibly forged) sender, i.e. backscatter;
      one line per action;
    * a ``webq`` (whose pages offer "Whitelist sender" and own white/black lists) while no
      service's scanners consult the lists (``listed()``, ``whitelisted()``, ``blacklisted()``).

    Each line starts with ``file:line:`` (the line that assigns ``SRV``).
    """
    where = f"{config.path}:{config.lines['SRV']}" if "SRV" in config.lines else config.path
    found: list[str] = []
    for service in config.services:
        if not (isinstance(service, smtpd) and service.after_queue):
            continue
        if service.recipient_policy is not None:
            found.append(
                f"{where}: warning: {service.describe()} has after_queue=True and a recipient_policy: a recipient "
                "refused after the queue is a bounce; answer RCPT before the queue (port 25, the milter, smtpd_policy)"
            )
        for scanner in _scanner_tree(service.scanners):
            if isinstance(scanner, reject):
                found.append(
                    f"{where}: warning: {service.describe()} has after_queue=True and {scanner.describe()} in its "
                    "scanners: a reject after the queue is a bounce to a possibly forged sender (backscatter); "
                    "quarantine or drop instead, and reject in a milter or before the queue"
                )
    mail_services = [s for s in config.services if not isinstance(s, webq)]  # webq's scanner: its recheck button
    consulted = any(isinstance(item, listed | whitelisted | blacklisted) for item in reachable(mail_services))
    if not consulted:
        for service in config.services:
            if isinstance(service, webq):
                found.append(
                    f'{where}: warning: {service.describe()} offers white/black lists ("Whitelist sender") but no '
                    "service's SCANNERS has listed() (or whitelisted()/blacklisted()): the lists change nothing"
                )
    return found


def reachable(
    services: Iterable[Service], scanners: Iterable[Scanner] = (), hooks: Iterable[Hook] = ()
) -> Iterator[object]:
    """The hooks, the services, and each scanner they use once (all they wrap included)."""
    yield from hooks
    pending: list[Scanner] = list(scanners)
    for service in services:
        yield service
        pending.extend(service.scanners)
        if isinstance(service, lmtpd):
            pending.extend(s for group in service.scanner_sets()[0] for s in group)
    seen: set[int] = set()
    while pending:
        scanner = pending.pop()
        if id(scanner) not in seen:
            seen.add(id(scanner))
            yield scanner
            pending.extend(scanner.children)


def bind(objects: Iterable[object], settings: Settings) -> None:
    """Bind what needs the accepted config's settings (DATABASE...): called once every check passed."""
    for item in objects:
        if isinstance(item, SettingsBound):
            item.bind_settings(settings)


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
        with open(path, "rb") as handle:
            raw = handle.read()
        source = raw.decode("utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config: {error.strerror}", filename=path) from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"config is not UTF-8: {error}", filename=path) from None
    try:
        tree = ast.parse(source, path)
        code = compile(tree, path, "exec")
    except SyntaxError as error:
        raise ConfigError(f"syntax error: {error.msg}", filename=path, lineno=error.lineno) from None
    namespace: dict[str, Any] = {"__file__": path, "__name__": "mailsift_config"}
    sagator = _sagator_layer(tree, namespace)
    try:
        exec(code, namespace)  # noqa: S102 - the config file is Python by design (SAGATOR)
        if sagator is not None:
            sagator.finish(namespace)
    except ConfigError as error:
        raise ConfigError(error.message, filename=path, lineno=_config_line(error, path)) from None
    except (Exception, SystemExit) as error:  # noqa: BLE001 - anything the file raises (sys.exit too) is a config error
        gone = _gone_names(error, tree, path)
        if gone is not None:
            raise gone from None
        raise ConfigError(f"{type(error).__name__}: {error}", filename=path, lineno=_config_line(error, path)) from None
    config = _check(path, namespace, _assignment_lines(tree), fingerprint(raw))
    bind(config.objects(), config.settings)  # accepted: only now bind what needs the config (DATABASE...)
    for service in config.services:  # webq: which white/black lists the scanners consult
        getattr(service, "bind_config", lambda objects: None)(list(config.objects()))
    return config


# --------------------------------------------------------------------------- SAGATOR's module names
# (mailsift.compat.sagator, imported only for a config that uses them)

SAGATOR_MODULES = frozenset({"srv", "scanners", "avlib"})
"""``from srv import *`` (or scanners, avlib) makes a config a SAGATOR config."""


def _sagator_layer(tree: ast.Module, namespace: dict[str, Any]) -> Any:
    """For a config importing SAGATOR's modules: the compat layer, with the config's ``__import__``
    resolving them (set in ``namespace``); None for any other config."""
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level}
    if not {name.partition(".")[0] for name in imported} & SAGATOR_MODULES:
        return None
    from mailsift.compat import sagator

    gone = sagator.gone_error(tree, namespace["__file__"])  # every gone engine at once, before running
    if gone is not None:
        raise gone
    namespace["__builtins__"] = sagator.builtins_for(sagator.modules())
    return sagator


def _gone_names(error: BaseException, tree: ast.Module, path: str) -> ConfigError | None:
    """A NameError for an engine or service mailsift no longer has: each such name, its line and
    what to use instead."""
    if not isinstance(error, NameError) or not error.name:
        return None
    from mailsift.compat import sagator

    return sagator.gone_error(tree, path) if sagator.gone_message(error.name) else None


# --------------------------------------------------------------------------- assignments


def _assignment_lines(tree: ast.Module) -> dict[str, int]:
    """The line of the last top-level assignment of each name (also inside if/try/with)."""
    lines: dict[str, int] = {}
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        elif isinstance(node, ast.If | ast.Try | ast.With):
            for block in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, block, ()):
                    pending.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name) and name.lineno >= lines.get(name.id, 0):
                    lines[name.id] = name.lineno
    return lines


def _duration(value: Any, what: str) -> float:
    """A positive number of seconds, or a duration like ``'90d'``; ConfigError otherwise."""
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ConfigError as error:
            raise ConfigError(f"{what}: {error.message}") from None
    return validators.positive(value, what, unit="number of seconds or a duration like '90d'")


def _next_hop(value: Any, state_dir: str) -> tuple[str, int] | Delivery | None:
    """``SMTP_SERVER`` checked: None, a delivery, or ``('host', port)``."""
    if value is None or isinstance(value, Delivery):
        return value
    resolve(value, state_dir)  # raises ConfigError unless ('host', port)
    host, port = value
    return (host, port)


def _services_hop(services: Iterable[Service]) -> tuple[str, int] | Delivery | None:
    """The next hop the services share (``next_hop=`` of smtpd, lmtpd...), or None (none, or several)."""
    hops: dict[str, Any] = {}
    for service in services:
        hop = getattr(service, "next_hop", None)
        if isinstance(hop, Delivery):
            hops.setdefault(hop.describe(), hop)
        elif isinstance(hop, tuple | list) and len(hop) == 2:
            hops.setdefault(f"{hop[0]}:{hop[1]}", (hop[0], hop[1]))
    return next(iter(hops.values())) if len(hops) == 1 else None


def fingerprint(raw: bytes) -> str:
    """The config a node runs, in 12 hex digits: the SHA-256 of the file's bytes and of this mailsift's
    version (its bundled defaults).  Equal files on equal releases give equal fingerprints; serve logs
    it at start and reload, and webq's ``/metrics`` shows it (``mailsift_config_info``)."""
    return hashlib.sha256(raw + b"\0mailsift " + __version__.encode()).hexdigest()[:12]


def _check(path: str, namespace: dict[str, Any], lines: Mapping[str, int], fingerprint: str = "") -> Config:
    def fail(message: str, name: str) -> ConfigError:
        return ConfigError(message, filename=path, lineno=lines.get(name))

    scanners = namespace.get("SCANNERS", [])
    if not isinstance(scanners, list | tuple) or not all(isinstance(s, Scanner) for s in scanners):
        raise fail(f"SCANNERS must be a list of scanners, got {scanners!r}", "SCANNERS")
    entries = namespace.get("SRV", [])
    if not isinstance(entries, list | tuple) or not all(
        isinstance(s, Service | Daemon | reporter | recipient_policy | rlimit) for s in entries
    ):
        raise fail(f"SRV must be a list of services like smtpd(SCANNERS, '127.0.0.1', 10024), got {entries!r}", "SRV")
    link_recipient_policies(entries)
    services = [s for s in entries if isinstance(s, Service)]
    daemons = [s for s in entries if isinstance(s, Daemon)]
    reporters = [s for s in entries if isinstance(s, reporter)]
    if len(reporters) > 1:
        raise fail("SRV lists reporter(...) more than once", "SRV")
    limits = [s for s in entries if isinstance(s, rlimit)]
    if len(limits) > 1:
        raise fail("SRV lists rlimit(...) more than once: give every limit in one", "SRV")
    state_dir = namespace.get("STATE_DIR", os.environ.get("MAILSIFT_STATE_DIR", "var"))
    if not isinstance(state_dir, str) or not state_dir:
        raise fail(f"STATE_DIR must be a directory path, got {state_dir!r}", "STATE_DIR")
    state_dir = os.path.abspath(state_dir)
    threshold = namespace.get("SPOOL_THRESHOLD", 1024 * 1024)
    try:
        threshold = validators.integer(threshold, "SPOOL_THRESHOLD", minimum=0, unit="a number of bytes")
    except ConfigError as error:
        raise fail(error.message, "SPOOL_THRESHOLD") from None
    try:
        message_timeout = validators.positive(
            namespace.get("MESSAGE_TIMEOUT", 540.0), "MESSAGE_TIMEOUT", unit="number of seconds"
        )
    except ConfigError as error:
        raise fail(error.message, "MESSAGE_TIMEOUT") from None
    try:
        smtp_server = _next_hop(namespace.get("SMTP_SERVER"), state_dir)
    except ConfigError as error:
        raise fail(f"SMTP_SERVER: {error.message}", "SMTP_SERVER") from None
    hooks = namespace.get("HOOKS", [])
    if not isinstance(hooks, list | tuple) or not all(isinstance(h, Hook) for h in hooks):
        raise fail(f"HOOKS must be a list like [notify(...), archive(...)], got {hooks!r}", "HOOKS")
    database = namespace.get("DATABASE")
    if database is None:
        database = db.sqlite()
    if not isinstance(database, db.Database):
        raise fail(
            f"DATABASE must be db.sqlite(...) or db.database('postgresql+psycopg://...'), got {database!r}", "DATABASE"
        )
    try:
        database.configure(state_dir)
    except ConfigError as error:
        raise fail(f"DATABASE: {error.message}", "DATABASE") from None
    retention = namespace.get("MAILLOG_RETENTION", DEFAULT_MAILLOG_RETENTION)
    try:
        maillog_retention = None if retention is None else _duration(retention, "MAILLOG_RETENTION")
    except ConfigError as error:
        raise fail(error.message, "MAILLOG_RETENTION") from None
    quarantine_store = namespace.get("QUARANTINE_STORE", "files")
    if quarantine_store not in ("files", "database"):
        raise fail(f"QUARANTINE_STORE must be 'files' or 'database', got {quarantine_store!r}", "QUARANTINE_STORE")
    user = namespace.get("USER", os.environ.get("MAILSIFT_USER", DEFAULT_USER) or None)
    if user is not None and (not isinstance(user, str) or not user or user != user.strip()):
        raise fail(f"USER must be a user name like 'mailsift', or None to keep the current user, got {user!r}", "USER")
    poisoned = namespace.get("POISON", poison())
    if poisoned is not None and not isinstance(poisoned, poison):
        raise fail(f"POISON must be poison(max_attempts=5, ...) or None, got {poisoned!r}", "POISON")
    settings = Settings(
        state_dir=state_dir,
        smtp_server=smtp_server,
        release_hop=smtp_server if smtp_server is not None else _services_hop(services),
        spool_threshold=threshold,
        hooks=tuple(hooks),
        database=database,
        quarantine_store=quarantine_store,
        node=str(namespace.get("NODE", "")),
        config_fingerprint=fingerprint,
        message_timeout=message_timeout,
        maillog_retention=maillog_retention,
        poison=poisoned,
        user=user,
    )
    for hook in hooks:
        try:
            hook.check(settings)
        except ConfigError as error:
            raise fail(f"HOOKS: {hook.describe()}: {error.message}", "HOOKS") from None
    seen: set[tuple[str, int]] = set()
    for service in services:
        try:
            service.check(settings)
        except ConfigError as error:
            raise fail(f"{service.describe()}: {error.message}", "SRV") from None
        if (service.host, service.port) in seen:
            raise fail(f"two services listen on {service.host}:{service.port}", "SRV")
        seen.add((service.host, service.port))
    for daemon in daemons:
        try:
            daemon.check()
        except ConfigError as error:
            raise fail(error.message, "SRV") from None
    reporter_entry = reporters[0] if reporters else None
    return Config(
        path, settings, tuple(scanners), tuple(services), tuple(daemons), reporter_entry, dict(lines), *limits[:1]
    )
