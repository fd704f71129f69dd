"""SAGATOR's config names: ``from srv import *`` and ``from scanners import *`` in a config file.

A SAGATOR ``config.py`` begins with ``from srv import *`` and ``from scanners
import *`` (sagator-readme.txt §3).  No modules of those names are installed:
when a config imports them (the loader reads the file's imports first,
:data:`TRIGGERS`), it runs the file with its own ``__import__``
(:func:`builtins_for`), which resolves ``srv``, ``scanners``, ``avlib`` and ``db``
to module objects made for that one load; every other import is the ordinary
one, and outside a config ``import srv`` fails.  This module is imported only
then: a config written with ``from mailsift import *`` never loads it.

What SAGATOR's names become:

* every name of ``from mailsift import *`` keeps its meaning (``clamd``,
  ``spamassassind``, ``parsemail``, ``smtpd``, ``reporter``...);
* ``clamav(...)``: a command line (``['/usr/bin/clamscan', '--stdout', ...]``)
  is :class:`~mailsift.scanners.engines.command.clamscan` with its options
  (those mailsift passes itself or that clamscan dropped are left out), an
  address (``['localhost', 3310]``, a socket path) is ``clamd``;
* ``log(level, target, scanners...)``, ``log_sql(scanners...)``,
  ``log_syslog(scanners...)``, ``report(scanners...)``,
  ``report_recipients(scanners...)``, ``stat(scanners...)``: SAGATOR wrapped
  scanners to log, notify and count; mailsift does that after the disposition
  for every message (``HOOKS``).  The wrapper returns its scanners' result
  and the loader adds the matching hook (``log_sql()`` for
  ``log.SUMMARY_REPORT``, ``log_file(path)``, ``log_syslog()``, ``notify()``,
  ``stats()``) when ``HOOKS`` has none of that kind (``log`` without a target: the service
  log's line for every message, no hook);
* ``collector(...)`` in ``SRV``: the statistics, i.e. ``stats()`` in ``HOOKS``
  (``mailsift stats``, webq's graphs and ``/metrics``); it opens no socket;
* ``http_proxy(scanners, host, port)``: the ICAP service
  (``icap(scanners, host, 1344)``) that Squid, listening on ``port``, calls;
* ``milter("name", "inet:...")``, ``smtpd('host', port)``, ``lmtpd('host', port)``
  without scanners: ``SCANNERS`` of the config (SAGATOR §5.2, §5.3);
* ``webq_jinja(host, port, db, log, scanner, userconv)`` positionally: ``webq``
  (``db`` becomes ``DATABASE`` when the config sets none);
* ``mimeparse`` is ``parsemail``; ``buffer2file``, ``file2buffer`` and
  ``buffer2mbox`` pass their scanners through (mailsift hands every scanner
  the bytes and writes a file only for ``cmd([... '{file}'])``);
* ``core_count()`` is the number of cores.

An engine or service that is gone (:data:`GONE`) raises a
:class:`~mailsift.errors.ConfigError` naming the replacement; the loader puts
the config's line in front.  ``prefork``/``max_children`` and what the mapping
changed are ``check-config`` warnings (:func:`warnings`).
"""

from __future__ import annotations

import ast
import builtins
import importlib
import os
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import mailsift
from mailsift.core.hooks import Hook
from mailsift.errors import ConfigError
from mailsift.message.result import Result
from mailsift.reporting.counters import stats
from mailsift.reporting.logline import log_file
from mailsift.reporting.logline import log_sql as native_log_sql
from mailsift.reporting.logline import log_syslog as native_log_syslog
from mailsift.reporting.notifications import notify
from mailsift.scanners.base import Interscanner, Scanner, Target
from mailsift.scanners.engines.clamav import clamd
from mailsift.scanners.engines.command import clamscan
from mailsift.services.base import Service
from mailsift.services.daemons import Daemon, rlimit
from mailsift.services.lmtpd import lmtpd as native_lmtpd
from mailsift.services.milter import milter as native_milter
from mailsift.services.smtpd import smtpd as native_smtpd
from mailsift.web.service import webq

TRIGGERS = frozenset({"srv", "scanners", "avlib"})
"""A config importing one of these is a SAGATOR config (config.py keeps the same set)."""
MODULES = (*sorted(TRIGGERS), "db")
"""The module names resolved while a SAGATOR config runs."""
CONFIG_MODULE = "mailsift_config"
"""``__name__`` of a config's namespace (config.load): how a constructor finds the config's line."""
NOTE = "sagator_note"
"""Attribute of an object the mapping made or changed: what check-config says about it."""
LINE = "sagator_line"
ICAP_PORT = 1344
"""ICAP's port (RFC 3507): ``http_proxy``'s service listens there; its HTTP port is Squid's."""


# --------------------------------------------------------------------------- where in the config


def _config_frame() -> types.FrameType | None:
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") != CONFIG_MODULE:
        frame = frame.f_back  # type: ignore[assignment]
    return frame


def _config_line() -> int | None:
    frame = _config_frame()
    return frame.f_lineno if frame is not None else None


def _config_global(name: str) -> Any:
    frame = _config_frame()
    return frame.f_globals.get(name) if frame is not None else None


def _noted(item: Any, note: str, line: int | None = None) -> Any:
    setattr(item, NOTE, note)
    setattr(item, LINE, line if line is not None else _config_line())
    return item


# --------------------------------------------------------------------------- what is gone


@dataclass(frozen=True)
class Gone:
    """An engine or service of SAGATOR that mailsift does not have, and what to use instead."""

    what: str
    instead: str

    def message(self, name: str) -> str:
        return f"{name}() is gone from mailsift ({self.what}): use {self.instead}"


_CMD = "cmd(['/path/to/scanner', ..., '{file}'], result_regex) with the vendor's command-line scanner, or clamd(...)"
_PRESET = "cmd([program, ..., '{file}'], result_regex) with the same program and arguments"
_SPAM = "spamassassind(['localhost', 783]), rspamd(...) or bogofilter()"

GONE: dict[str, Gone] = {
    "avgd": Gone("AVG for Linux's avgd daemon", _CMD),
    "bdc": Gone("BitDefender's bdc", _CMD),
    "kav": Gone("Kaspersky's kavdaemon", _CMD),
    "kavclient": Gone("Kaspersky's kavclient", _CMD),
    "nod2": Gone("ESET NOD32's nod32d", _CMD),
    "nod2dazuko": Gone("ESET NOD32 over dazuko", _CMD),
    "nod2pac": Gone("ESET NOD32's LD_PRELOAD library", _CMD),
    "esets": Gone("ESET's esets daemon", _CMD),
    "savse": Gone("Symantec AntiVirus Scan Engine over ICAP", _CMD),
    "sophie": Gone("Sophos through the sophie daemon", _CMD),
    "trophie": Gone("Trend Micro through the trophie daemon", _CMD),
    "libclam": Gone("libclamav loaded into the scanning process", "clamd(...) (clamd_daemon() starts one)"),
    "dazuko": Gone("the dazuko on-access kernel module", "fusefs(SCANNERS, mountpoint, source) for on-access scans"),
    "cmd_bdc": Gone("a preset for BitDefender's bdc", _PRESET),
    "cmd_drweb": Gone("a preset for Dr.Web's drweb", _PRESET),
    "cmd_fprot": Gone("a preset for F-Prot", _PRESET),
    "cmd_kavscanner": Gone("a preset for Kaspersky's kavscanner", _PRESET),
    "cmd_trendmicro": Gone("a preset for Trend Micro's vscan", _PRESET),
    "cmd_uvscan": Gone("a preset for McAfee's uvscan", _PRESET),
    "cmd_vbuster": Gone("a preset for VirusBuster", _PRESET),
    "spamassassin": Gone("SpamAssassin run in the scanning process", "spamassassind(['localhost', 783])"),
    "qsf": Gone("QuickSpamFilter", _SPAM),
    "dspam": Gone("DSPAM", _SPAM),
    "filter": Gone("a program rewriting the message", "add_header(...) or modify_subject(...) to mark it"),
    "scand": Gone(
        "the scanner daemon with an LD_PRELOAD library",
        "chroot_execvp(...) to run the engine's own daemon, and clamd(...) or cmd([...]) to scan",
    ),
    "usrquota": Gone("scand's quota scanner", "max_file_size(...) for sizes; quotas are the mail store's"),
}
"""Every engine and service the reference names that mailsift lacks (sagator-readme.txt §1 and §4,
sagator-services.txt scand); the README's "Coming from SAGATOR" lists the same."""


def gone_message(name: str) -> str | None:
    """The "gone" message for ``name``, or None when mailsift has it."""
    if name in GONE:
        return GONE[name].message(name)
    return None


def gone_calls(tree: ast.Module) -> list[tuple[int, str]]:
    """Each call of a gone name in a config, ``(line, name)`` in the order
    written; a name the config binds itself (``def nod2(...)``, ``import``) is its own."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound.update((alias.asname or alias.name).partition(".")[0] for alias in node.names)
    calls = [
        (node.lineno, node.col_offset, node.func.id)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id not in bound
    ]
    return [(line, name) for line, _, name in sorted(calls) if gone_message(name) is not None]


def gone_error(tree: ast.Module, path: str) -> ConfigError | None:
    """One error naming every gone call of the config: the first at its line, then each other
    name with its line(s), so that one check-config run shows all that must change."""
    lines: dict[str, list[int]] = {}
    for line, name in gone_calls(tree):
        lines.setdefault(name, []).append(line)
    if not lines:
        return None
    parts = []
    for index, (name, found) in enumerate(lines.items()):
        also = f" (also line{'s' if len(found) > 2 else ''} {', '.join(map(str, found[1:]))})" if found[1:] else ""
        where = "" if index == 0 else f"line {found[0]}: "
        parts.append(f"{where}{gone_message(name)}{also}")
    first = next(iter(lines.values()))[0]
    return ConfigError("; ".join(parts), filename=path, lineno=first)


def _gone(name: str) -> Callable[..., Any]:
    def gone(*args: Any, **kwargs: Any) -> Any:
        raise ConfigError(gone_message(name) or name)

    gone.__name__ = gone.__qualname__ = name
    return gone


# --------------------------------------------------------------------------- scanners


class _PassThrough(Interscanner):
    """SAGATOR's interscanners whose work mailsift does elsewhere: their scanners' result, unchanged."""

    async def scan(self, target: Target) -> Result:
        return await self.inner(target)


class buffer2file(_PassThrough):
    name = "buffer2file"


class file2buffer(_PassThrough):
    name = "file2buffer"


class buffer2mbox(_PassThrough):
    name = "buffer2mbox"


def _split(args: tuple[Any, ...]) -> tuple[list[Any], list[Any]]:
    """Leading arguments that are not scanners, and the scanners."""
    for index, arg in enumerate(args):
        if isinstance(arg, Scanner | list | tuple):
            return list(args[:index]), list(args[index:])
    return list(args), []


class _Logging(_PassThrough):
    """A wrapper whose work is a hook: :func:`finish` adds :meth:`hook` to ``HOOKS``."""

    def __init__(self, *args: Any) -> None:
        self.options, scanners = _split(args)
        super().__init__(*scanners)
        self.line = _config_line()

    def hook(self) -> Hook | None:
        """The hook doing this wrapper's work; None: mailsift does it anyway."""
        raise NotImplementedError


class log(_Logging):
    """SAGATOR's ``log(level, target, scanners...)``: ``log.SUMMARY_REPORT`` is the SQL log the
    digest reads (``log_sql()``); a file name is ``log_file(name)``; without a target, the
    service log's line that mailsift writes for every message (no hook)."""

    name = "log"
    SUMMARY_REPORT = "SUMMARY_REPORT"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        targets = [o for o in self.options if isinstance(o, str)]
        self.target = targets[0] if targets else None

    def describe(self) -> str:
        return f"log({self.target!r})" if self.target else "log"

    def hook(self) -> Hook | None:
        if self.target is None:
            return None
        if self.target == self.SUMMARY_REPORT:
            return native_log_sql()
        return log_file(self.target)


def log_sql(*args: Any, **options: Any) -> Any:
    """Without scanners the native hook; ``log_sql(scanners...)`` as SAGATOR's interscanner."""
    found, scanners = _split(args)
    if not scanners:
        return native_log_sql(*found, **options)
    return _HookWrapper("log_sql", native_log_sql(*found, **options), scanners)


def log_syslog(*args: Any, **options: Any) -> Any:
    """Without scanners the native hook; ``log_syslog(scanners...)`` as SAGATOR's interscanner."""
    _, scanners = _split(args)
    if not scanners:
        return native_log_syslog(**options)
    return _HookWrapper("log_syslog", native_log_syslog(**options), scanners)


class _HookWrapper(_Logging):
    def __init__(self, name: str, hook: Hook, scanners: list[Any]) -> None:
        self.name = name
        super().__init__(*scanners)
        self._hook = hook

    def hook(self) -> Hook:
        return self._hook


class _Reporting(_Logging):
    """``report``, ``report_recipients``, ``stat``: SAGATOR's wrappers whose only argument is their
    scanners; anything before them is not used, and check-config (and serve) say so."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        if self.options:
            shown = ", ".join(repr(option) for option in self.options)
            _noted(
                self,
                f"{self.name}({shown}, ...): {'this argument is' if len(self.options) == 1 else 'these arguments are'} "
                f"not used: {self.name}() takes only scanners; {type(self.hook()).__name__}() in HOOKS does its "
                "work (give its options there)",
                self.line,
            )


class report(_Reporting):
    """SAGATOR's ``report(scanners...)``: mail about a detection is ``notify()`` in HOOKS."""

    name = "report"

    def hook(self) -> Hook:
        return notify()


class report_recipients(_Reporting):
    name = "report_recipients"

    def hook(self) -> Hook:
        return notify(recipients=True)


class stat(_Reporting):
    name = "stat"

    def hook(self) -> Hook:
        return stats()


_CLAMSCAN_OWN = frozenset({"--stdout", "--infected", "-i", "--no-summary", "--disable-summary", "-"})
"""Options mailsift's clamscan passes itself, or that clamscan no longer has (``--disable-summary``)."""
_CLAMSCAN_GONE = frozenset({"--mbox", "-r", "--recursive"})
"""Options that mean nothing for one message on stdin (``--mbox`` is gone: mail is detected)."""


def clamav(address: Any = None, *args: Any, **options: Any) -> Scanner:
    """SAGATOR's ``clamav``: a command line is clamscan, an address is clamd."""
    if isinstance(address, list | tuple) and address and all(isinstance(a, str) for a in address):
        program, *rest = address
        kept = [a for a in rest if a not in _CLAMSCAN_OWN | _CLAMSCAN_GONE]
        return clamscan(*args, program=program, args=kept, **options)
    return clamd(*args, **options) if address is None else clamd(address, *args, **options)


def mimeparse(*args: Any) -> Scanner:
    scanner: Scanner = mailsift.parsemail(*args)
    return scanner


def core_count() -> int:
    """SAGATOR's ``core_count()``: the number of cores."""
    return os.cpu_count() or 1


# --------------------------------------------------------------------------- services


def _scanners_first(kind: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``milter("name", "inet:...")``, ``smtpd('host', 25)``: the config's SCANNERS come first."""
    if args and isinstance(args[0], str):
        scanners = _config_global("SCANNERS")
        if not isinstance(scanners, list | tuple):
            raise ConfigError(f"{kind}({args[0]!r}, ...) without scanners uses SCANNERS: define SCANNERS before SRV")
        return (scanners, *args)
    return args


def milter(*args: Any, **options: Any) -> Service:
    """``milter(SCANNERS, "sagator", "inet:3333@127.0.0.1")``, or without SCANNERS (sagator-readme §5.2)."""
    return native_milter(*_scanners_first("milter", args), **options)


def smtpd(*args: Any, **options: Any) -> Service:
    """``smtpd(SCANNERS, '127.0.0.1', 27)``, or ``smtpd('YourExternalIP', 25)`` (sagator-readme §5.3)."""
    return native_smtpd(*_scanners_first("smtpd", args), **options)


def lmtpd(*args: Any, **options: Any) -> Service:
    return native_lmtpd(*_scanners_first("lmtpd", args), **options)


class collector(stats):
    """SAGATOR's statistics collector in SRV: the ``stats()`` hook; :func:`finish` moves it to HOOKS."""

    name = "collector"

    def __init__(self, ip_or_hostname: str = "", port: int = -1, statfile: str | None = None) -> None:
        super().__init__()
        where = f" (its socket {ip_or_hostname or '*'}:{port} is not opened)" if port >= 0 else ""
        status = f"; statfile={statfile!r} is not written (no status file: the counters are in DATABASE)"
        _noted(
            self,
            "collector() is stats() in HOOKS: counters in DATABASE, shown by `mailsift stats` and webq's "
            f"graphs and /metrics{where}{status if statfile is not None else ''}",
        )

    def describe(self) -> str:
        return "collector() as stats()"


def webq_jinja(
    host: str = "0.0.0.0",
    port: int = 8008,
    db: Any = None,
    log: str | None = None,
    scanner: Any = None,
    userconv: Any = (),
    request_handler: Any = None,
    **options: Any,
) -> Service:
    """SAGATOR's ``webq_jinja(host, port, db, log, scanner, userconv)``: ``webq``."""
    if request_handler is not None:
        raise ConfigError(
            "webq_jinja: request_handler (a SimpleHTTPRequestHandler class) has no equivalent: "
            "webq's pages are mailsift's; leave it out"
        )
    if isinstance(userconv, list | tuple) and len(userconv) == 2 and all(isinstance(u, str) for u in userconv):
        userconv = [tuple(userconv)]  # one ['regex', 'substitution'] pair
    service = webq(host, port, scanner=scanner, userconv=userconv, log=log, **options)
    service.sagator_db = db  # type: ignore[attr-defined]  # finish(): DATABASE when the config has none
    if log is not None:
        _noted(service, f"webq_jinja(..., log={log!r}): webq logs to mailsift's service log; that file is not written")
    made: Service = service
    return made


def http_proxy(scanners: Any, host: str = "127.0.0.1", port: int = 3128, prefork: int | None = None) -> Service:
    """SAGATOR's filtering HTTP proxy: the ICAP service that Squid (listening on ``port``) calls."""
    try:
        icap = importlib.import_module("mailsift.services.icap").icap
    except (ImportError, AttributeError):
        raise ConfigError(
            "http_proxy() is the ICAP service (icap(SCANNERS, host, 1344) behind Squid), "
            "which this mailsift does not have yet"
        ) from None
    service: Service = icap(scanners, host, ICAP_PORT)
    ignored = f"; prefork={prefork} is not used (workers: `mailsift serve --workers N`)" if prefork is not None else ""
    reach = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # the wildcard: Squid on this host
    noted: Service = _noted(
        service,
        f"http_proxy(SCANNERS, {host!r}, {port}) is icap(SCANNERS, {host!r}, {ICAP_PORT}): Squid listens on "
        f"port {port} (http_port {port}) and sends each download to icap://{reach}:{ICAP_PORT}/respmod "
        f"(icap_service ... respmod_precache; README: Coming from SAGATOR){ignored}",
    )
    return noted


# --------------------------------------------------------------------------- the modules


_SERVICE_NAMES = {"collector", "http_proxy", "webq_jinja", "milter", "smtpd", "lmtpd", "core_count"}


def _is_service(value: Any) -> bool:
    return isinstance(value, type) and issubclass(
        value, Service | Daemon | mailsift.reporter | mailsift.recipient_policy | rlimit
    )


def _surfaces() -> tuple[dict[str, Any], dict[str, Any]]:
    """The names of ``srv`` and of ``scanners``."""
    native = {name: getattr(mailsift, name) for name in mailsift.__all__}
    own = {
        "clamav": clamav,
        "log": log,
        "log_sql": log_sql,
        "log_syslog": log_syslog,
        "report": report,
        "report_recipients": report_recipients,
        "stat": stat,
        "mimeparse": mimeparse,
        "buffer2file": buffer2file,
        "file2buffer": file2buffer,
        "buffer2mbox": buffer2mbox,
        "collector": collector,
        "http_proxy": http_proxy,
        "webq_jinja": webq_jinja,
        "milter": milter,
        "smtpd": smtpd,
        "lmtpd": lmtpd,
        "core_count": core_count,
    }
    srv: dict[str, Any] = {"db": native["db"]}
    scanners: dict[str, Any] = {"db": native["db"]}
    for name, value in native.items():
        (srv if _is_service(value) else scanners)[name] = value
    for name, value in own.items():
        (srv if name in _SERVICE_NAMES else scanners)[name] = value
    for name in GONE:
        (srv if name in {"scand"} else scanners)[name] = _gone(name)
    return srv, scanners


def modules() -> dict[str, types.ModuleType]:
    """Fresh module objects for one load: ``srv``, ``scanners``, ``avlib`` (both) and ``db``."""
    srv, scanners = _surfaces()
    made: dict[str, types.ModuleType] = {}
    for name, names in (("srv", srv), ("scanners", scanners), ("avlib", {**scanners, **srv})):
        module = types.ModuleType(name, f"SAGATOR's {name} module, as mailsift.compat.sagator maps it")
        module.__dict__.update(names)
        module.__all__ = sorted(names)  # type: ignore[attr-defined]
        made[name] = module
    made["db"] = mailsift.db
    return made


def builtins_for(made: dict[str, types.ModuleType]) -> dict[str, Any]:
    """The builtins a SAGATOR config runs with: ``__import__`` resolves :data:`MODULES` to ``made``."""
    real_import = builtins.__import__

    def sagator_import(
        name: str,
        globals: dict[str, Any] | None = None,
        locals: dict[str, Any] | None = None,
        fromlist: Sequence[str] | None = (),
        level: int = 0,
    ) -> Any:
        if level == 0 and name.partition(".")[0] in made:
            if "." in name:
                raise ImportError(
                    f"SAGATOR's module {name} is not provided: use from {name.partition('.')[0]} import *",
                    name=name,
                )
            return made[name]
        return real_import(name, globals, locals, fromlist or (), level)

    return {**builtins.__dict__, "__import__": sagator_import}


# --------------------------------------------------------------------------- after the config ran


def _walk(items: Iterable[Any]) -> Iterator[Scanner]:
    seen: set[int] = set()
    pending = [item for item in items if isinstance(item, Scanner)]
    while pending:
        scanner = pending.pop()
        if id(scanner) not in seen:
            seen.add(id(scanner))
            yield scanner
            pending.extend(scanner.children)


def finish(namespace: dict[str, Any]) -> None:
    """Turn what SAGATOR kept in SRV and in scanner wrappers into mailsift's settings.

    ``collector()`` leaves ``SRV`` for ``HOOKS``; each logging wrapper's hook is added to
    ``HOOKS`` unless one of its kind is there; ``webq_jinja``'s ``db`` is ``DATABASE`` when
    the config has none.  The loader's checks run after.
    """
    srv = namespace.get("SRV")
    hooks = namespace.get("HOOKS", [])
    if not isinstance(hooks, list | tuple):
        return  # the loader's check says what HOOKS must be
    added: list[Hook] = list(hooks)
    if isinstance(srv, list | tuple):
        collectors = [entry for entry in srv if isinstance(entry, collector)]
        if collectors:
            namespace["SRV"] = [entry for entry in srv if not isinstance(entry, collector)]
            if not any(isinstance(hook, stats) for hook in added):
                added.append(collectors[0])
        for entry in srv:
            database = getattr(entry, "sagator_db", None)
            if isinstance(entry, webq) and database is not None and "DATABASE" not in namespace:
                namespace["DATABASE"] = database
        services = [entry for entry in srv if isinstance(entry, Service)]
    else:
        services = []
    roots: list[Any] = list(namespace.get("SCANNERS", []) or [])
    for service in services:
        roots.extend(service.scanners)
        if isinstance(service, native_lmtpd):
            roots.extend(s for group in service.scanner_sets()[0] for s in group)
    for scanner in _walk(roots):
        if isinstance(scanner, _Logging):
            hook = scanner.hook()
            if hook is None:
                _noted(
                    scanner,
                    f"{scanner.name}(...) without a target: mailsift's service log (logger mailsift.mail) has a "
                    "line for every message already; log_file(...) or log_sql() in HOOKS for more",
                    scanner.line,
                )
            elif not any(isinstance(h, type(hook)) for h in added):  # collector() is a stats()
                added.append(
                    _noted(
                        hook,
                        f"{scanner.name}(...) wraps scanners to log, notify or count; mailsift does that after the "
                        f"disposition, for every message: {hook.describe()} added to HOOKS",
                        scanner.line,
                    )
                )
    if len(added) != len(hooks):
        namespace["HOOKS"] = added


# --------------------------------------------------------------------------- check-config


def warnings(path: str, srv_line: int | None, objects: Iterable[object]) -> list[str]:
    """``check-config`` warnings: SAGATOR's process counts (``prefork``, ``max_children``), which
    mailsift does not use, and what the SAGATOR mapping changed.  One ``file:line: warning:`` each."""
    found: list[str] = []
    for item in objects:
        note = getattr(item, NOTE, None)
        if isinstance(note, str):
            line = getattr(item, LINE, None) or srv_line
            found.append(f"{path}:{line}: warning: {note}" if line else f"{path}: warning: {note}")
        if isinstance(item, Service):
            for option in ("prefork", "max_children"):
                value = getattr(item, option, None)
                if value is not None:
                    where = f"{path}:{srv_line}" if srv_line else path
                    found.append(
                        f"{where}: warning: {item.describe()}: {option}={value} is SAGATOR's process count and "
                        "is not used: every service is served by `mailsift serve --workers N` worker processes "
                        "(default: one per core)"
                    )
    return found
