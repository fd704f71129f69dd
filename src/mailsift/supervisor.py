"""``mailsift serve``: a supervisor and N worker processes sharing the listening sockets.

The supervisor binds every service's socket once (backlog 1024), then forks
the workers; each worker runs one asyncio loop serving every service on the
inherited sockets, and the kernel spreads connections among them.

Signals (to the supervisor):

* ``SIGTERM``/``SIGINT`` — drain: workers stop accepting, finish the
  transactions in progress (up to ``drain_seconds``), then exit.
* ``SIGHUP`` — reload: the config file is loaded and checked again; if it is
  broken or fails any check (its services, hooks, daemons, an empty ``SRV``,
  a ``STATE_DIR`` that cannot be made, a port that cannot be bound), the error
  is logged with its file and line and nothing changes: the running workers,
  sockets and daemons keep the old config, and a worker started later still
  gets the old config.  If it is good, new workers start on it and the old
  ones drain.

A worker that dies unexpectedly is replaced (at most once per second).

Privileges, as Postfix's master does it: started as root, the supervisor stays
root — it binds the sockets (again on a reload), starts each daemon as that
daemon's own user and prepares ``STATE_DIR`` — and every worker drops to
``USER`` (default ``mailsift``: supplementary groups, group, then user) before it
serves anything; an unknown ``USER`` is a config error, never a root worker.
Started as another user, nothing changes users: ``USER`` must then be None or
that user.  ``umask`` is 0027 from the start: every file mailsift creates is
0600 or 0640, every directory 0750; ``STATE_DIR`` is 0750 and owned by ``USER``
(0751 when a daemon running as its own user — clamd as ``clamav`` — has its
directory inside it), and files found there with looser modes or another owner
are reported at start, not changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mailsift import config as config_module
from mailsift.config import Config
from mailsift.errors import ConfigError, DatabaseError
from mailsift.message.mail import remove_stale_spool
from mailsift.reporting import poolstats
from mailsift.reporting.logline import name_node_in_log
from mailsift.services.daemons import (
    PID_FILE_WAIT,
    Daemon,
    Process,
    is_alive,
    read_pgrp_file,
    read_pid_file,
    stop_process,
)
from mailsift.services.fusefs import fusefs

log = logging.getLogger("mailsift.supervisor")

UMASK = 0o027
"""Set at start by ``serve`` and every command: files 0640 at most, directories 0750."""
LOOSE_BITS = stat.S_IWGRP | stat.S_IRWXO
"""Mode bits a file or directory under ``STATE_DIR`` should not have (group write, anything for others)."""


@dataclass(frozen=True)
class Account:
    """The user the workers run as: its name, uid, gid and every group it is in."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def set_umask() -> None:
    """``umask 0027``: what mailsift creates is never readable by others, nor writable by the group."""
    os.umask(UMASK)


def _current_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def service_account(config: Config) -> Account | None:
    """The account to drop to (None: stay as we are); a ConfigError when ``USER`` cannot be used.

    As root, ``USER`` must name an existing user (the workers never run as root
    because a name did not resolve); as anyone else, ``USER`` must be None or
    that same user, since nobody else can switch users.
    """
    name = config.settings.user
    if name is None:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        entry = None
    if os.geteuid() != 0:
        if entry is not None and entry.pw_uid == os.geteuid():
            return None
        raise config.error(
            f"USER = {name!r}, but mailsift runs as {_current_user()!r}, not root, and cannot switch users: "
            f"start it as root, or set USER = None (or {_current_user()!r}) to keep the current user",
            "USER",
        )
    if entry is None:
        raise config.error(
            f"USER: there is no user {name!r} on this system, and the workers will not run as root instead: "
            f"create it (scripts/setup.sh does: useradd --system --shell /usr/sbin/nologin {name}) "
            "or set USER = None to keep running as root",
            "USER",
        )
    if entry.pw_uid == 0:
        return None  # USER = "root": asked for explicitly
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, tuple(os.getgrouplist(entry.pw_name, entry.pw_gid)))


def drop_privileges(account: Account | None) -> None:
    """Become ``account`` for good (supplementary groups, group, user); nothing for None.

    Raises OSError if any step fails, and RuntimeError if root could be regained.
    """
    if account is None:
        return
    os.setgroups(list(account.groups))
    os.setgid(account.gid)
    os.setuid(account.uid)
    if os.getuid() == 0 or os.geteuid() == 0 or os.getegid() != account.gid:
        raise RuntimeError(f"could not drop privileges to {account.name}")
    with contextlib.suppress(OSError):
        os.setuid(0)
        raise RuntimeError(f"dropped to {account.name} but could become root again")


def run_as(account: Account | None, function: Callable[[], None]) -> bool:
    """Run ``function`` in a child process dropped to ``account`` (directly for None); whether it succeeded.

    The supervisor stays root; what runs here creates files owned by the
    account (the SQLite database of ``prepare_database``).
    """
    if account is None:
        function()
        return True
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            drop_privileges(account)
            function()
            code = 0
        except BaseException:
            log.exception("as %s", account.name)
        finally:
            logging.shutdown()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def unreadable_code(account: Account, paths: Sequence[str] | None = None) -> list[str]:
    """The directories Python and mailsift import from that ``account`` cannot read (a child checks).

    A worker imports more after it has dropped (lazy imports): an interpreter
    under ``/root`` (mode 0700: a pyenv copy) or a checkout there fails it.
    """
    import mailsift

    candidates = paths or [
        os.path.dirname(os.__file__),  # the standard library
        os.path.dirname(os.path.abspath(mailsift.__file__)),
        sysconfig.get_paths()["purelib"],
    ]
    wanted = [path for path in candidates if os.path.isdir(path)]  # seen as root: the account may not see them
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            drop_privileges(account)
            bad = [path for path in wanted if not os.access(path, os.R_OK | os.X_OK)]
            os.write(write, "\0".join(bad).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        found = pipe.read().decode()
    os.waitpid(pid, 0)
    return [path for path in found.split("\0") if path]


def check_account(config: Config) -> Account | None:
    """:func:`service_account`, and a ConfigError if that account could not import Python or mailsift."""
    account = service_account(config)
    if account is not None:
        bad = unreadable_code(account)
        if bad:
            raise config.error(
                f"USER {account.name!r} cannot read {', '.join(bad)} (a directory above is closed to it), so the "
                "workers could not import: build .venv from a Python it can read (scripts/setup.sh uses "
                "/usr/bin/python3), keep the checkout where it can read it (not under /root), or set USER = None",
                "USER",
            )
    return account


def _state_dir_mode(config: Config) -> int:
    """0750, or 0751 when a daemon running as its own user has its directory inside ``STATE_DIR``."""
    state_dir = config.settings.state_dir.rstrip("/") + "/"
    for daemon in config.daemons:
        directory = getattr(daemon, "directory", "") or ""
        if getattr(daemon, "runs_as_own_user", False) and directory.startswith(state_dir):
            return 0o751
    return 0o750


def prepare_state(config: Config, account: Account | None = None) -> None:
    """Create the state directories the services write into; ConfigError if they cannot be.

    ``STATE_DIR`` is 0750 (0751 when a daemon running as its own user, clamd as
    ``clamav``, must reach its subdirectory: others may pass, never list),
    ``spool/`` and ``quarantine/`` 0750; made by root for ``account``, they
    are owned by it.  An existing directory keeps its mode (a looser one is
    reported by :func:`report_loose_modes`).
    """
    state_dir = config.settings.state_dir
    try:
        for path, mode in (
            (state_dir, _state_dir_mode(config)),
            (config.settings.spool_dir, 0o750),
            (config.settings.quarantine_dir, 0o750),
        ):
            if not os.path.isdir(path):
                os.makedirs(path, mode=0o750, exist_ok=True)
                os.chmod(path, mode)  # not masked by the umask
            if account is not None and os.stat(path).st_uid != account.uid:
                log.info("%s: owned by %s now (USER), the workers write there", path, account.name)
                os.chown(path, account.uid, account.gid)
    except OSError as error:
        where = error.filename or state_dir
        raise config.error(f"STATE_DIR: cannot create {where}: {error.strerror}", "STATE_DIR") from None


def loose_modes(state_dir: str, account: Account | None = None) -> list[str]:
    """What under ``state_dir`` is open to others (or writable by the group), or not owned by ``account``.

    ``STATE_DIR`` itself, what it holds, and one level below (the contents of
    ``spool/``, ``quarantine/``... but not of every quarantine category: those
    files are written 0600).  The directories of daemons running as their
    own user (their owner is theirs) are left out.
    """
    problems: list[str] = []

    def look(path: str, allowed: int = 0) -> os.stat_result | None:
        try:
            info = os.lstat(path)
        except OSError:
            return None
        if stat.S_ISLNK(info.st_mode) or stat.S_ISSOCK(info.st_mode):
            return info
        loose = stat.S_IMODE(info.st_mode) & LOOSE_BITS & ~allowed
        if loose:
            problems.append(f"{path} is mode {stat.S_IMODE(info.st_mode):04o} (others or the group may use it)")
        if account is not None and info.st_uid != account.uid:
            problems.append(f"{path} is owned by uid {info.st_uid}, not {account.name}: the workers may fail on it")
        return info

    top = look(state_dir, allowed=stat.S_IXOTH)
    if top is None or not stat.S_ISDIR(top.st_mode):
        return problems
    for name in sorted(os.listdir(state_dir)):
        path = os.path.join(state_dir, name)
        info = os.lstat(path)
        if stat.S_ISDIR(info.st_mode) and account is not None and info.st_uid != account.uid:
            continue  # a daemon's own directory (clamd's, as clamav)
        info = look(path) or info
        if stat.S_ISDIR(info.st_mode):
            with contextlib.suppress(OSError):
                for inner in sorted(os.listdir(path))[:1000]:
                    look(os.path.join(path, inner))
    return problems


def report_loose_modes(config: Config, account: Account | None = None) -> list[str]:
    """Log each of :func:`loose_modes` as a warning (nothing is changed); returns them."""
    problems = loose_modes(config.settings.state_dir, account)
    for problem in problems:
        log.warning("STATE_DIR: %s; fix it (chmod o-rwx,g-w / chown), mailsift does not change it", problem)
    return problems


def prepare_database(config: Config, account: Account | None = None) -> None:
    """Bring a SQLite ``DATABASE`` to the newest schema before the workers exist.

    Workers forked together would otherwise each run the migrations on their
    first message and race for the fresh file (issue 11: an intermittent
    "database is locked" answered 451).  A failure here is logged, not fatal:
    the workers try again on their first use and answer 451 while it fails.
    PostgreSQL is left to the workers (its advisory lock serialises them, and
    a database that is down must not hold up the supervisor).
    """
    database = config.settings.database
    if database is None or database.dialect != "sqlite":
        return

    def migrate() -> None:
        try:
            database.migrate()
        except DatabaseError as error:
            log.warning("%s; the workers will try again", error)
        finally:
            database.dispose()  # no connection crosses the fork

    # As the workers' user: the database file (and its -wal, -shm) is theirs, never root's.
    if not run_as(account, migrate):
        log.warning("the database migration as %s failed; the workers will try again", account and account.name)


def config_line(config: Config) -> str:
    """The log line that says which config this node runs (at start and at each reload)."""
    return f"node {config.settings.node_name}: config {config.path}, fingerprint {config.settings.config_fingerprint}"


def check_servable(config: Config) -> None:
    """What ``serve`` needs beyond a loaded config: at least one service."""
    if not config.services:
        raise config.error("SRV lists no services; nothing to serve", "SRV")


async def _worker_main(config: Config, sockets: dict[tuple[str, int], socket.socket], drain_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the supervisor handles reloads
    remove_stale_spool(config.settings.spool_dir)  # the files of a worker killed in a transaction
    running = [
        await service.start(sockets[(service.host, service.port)], config.settings) for service in config.services
    ]
    pools = poolstats.Publisher(poolstats.pools_of(config.objects()), config.settings.state_dir)
    pools.start()  # the scanner pools' counters, for /metrics (served by whichever worker)
    await stop.wait()
    await asyncio.gather(*(server.drain(drain_seconds) for server in running))
    pools.stop()


def config_warnings(config: Config) -> list[str]:
    """What ``check-config`` warns about, one ``file:line: warning: ...`` each: a config that loads
    but does not do what it seems to (:func:`mailsift.config.warnings`), SAGATOR's ``prefork``/
    ``max_children`` and what the SAGATOR mapping changed or ignores (``collector``'s statfile...).
    ``serve`` logs each once (at start, and a reload's new ones)."""
    from mailsift.compat import sagator  # small: only its own module

    return [*config_module.warnings(config), *sagator.warnings(config.path, config.lines.get("SRV"), config.objects())]


def run_worker(config: Config, sockets: dict[tuple[str, int], socket.socket], drain_seconds: float) -> None:
    """The body of a worker process (also usable in-process for tests), on uvloop when installed."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_worker_main(config, sockets, drain_seconds))


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop factory, or None (asyncio's own loop) when uvloop is missing."""
    try:
        import uvloop  # optional: asyncio's own loop works too
    except ImportError:
        return None
    return uvloop.new_event_loop


class Supervisor:
    """Forks and watches the workers; reloads on SIGHUP; drains on SIGTERM."""

    def __init__(self, config: Config, workers: int, drain_seconds: float = 30.0) -> None:
        self.config = config
        self.workers = max(1, workers)
        self.drain_seconds = drain_seconds
        self.sockets: dict[tuple[str, int], socket.socket] = {}
        self.children: dict[int, Config] = {}
        self._pending: list[Callable[[], None]] = []
        self._stopping = False
        self.daemons = DaemonKeeper()
        self.account: Account | None = None
        """Who the workers run as (:func:`service_account`); None: as the supervisor."""
        self._warned: set[str] = set()
        """check-config's warnings logged so far (:meth:`_warn`)."""

    def _listen(self, config: Config) -> dict[tuple[str, int], socket.socket]:
        """The sockets ``config`` serves on: the running ones it keeps, new ones bound.

        Changes nothing: on failure the sockets bound here are closed again.
        """
        sockets: dict[tuple[str, int], socket.socket] = {}
        opened: list[socket.socket] = []
        try:
            for service in config.services:
                key = (service.host, service.port)
                if key in self.sockets:
                    sockets[key] = self.sockets[key]
                elif key not in sockets:
                    sockets[key] = service.bind(self.account.name if self.account else None)
                    opened.append(sockets[key])
        except BaseException as error:
            for sock in opened:
                sock.close()
            if isinstance(error, ConfigError):
                raise config.error(error.message, "SRV") from None
            raise
        return sockets

    def _use_sockets(self, sockets: dict[tuple[str, int], socket.socket]) -> None:
        for key, sock in self.sockets.items():
            if key not in sockets:
                sock.close()
        self.sockets = sockets

    def _bind(self, config: Config) -> None:
        self._use_sockets(self._listen(config))

    def _spawn(self, config: Config) -> None:
        # Everything loaded so far (modules, the config) lives as long as the worker: keep it out
        # of the garbage collector's generations, so collections in the worker stay cheap and do
        # not touch (and un-share after fork) those pages.
        gc.freeze()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                    signal.signal(signum, signal.SIG_DFL)
                if config.rlimit is not None:  # SRV's rlimit(...): as root still, so it may raise hard limits
                    config.rlimit.apply()
                drop_privileges(self.account)  # before anything is served: the worker never runs as root
                run_worker(config, self.sockets, self.drain_seconds)
            except BaseException:
                log.exception("worker %d failed", os.getpid())
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = config
        log.info("worker %d started", pid)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            self._pending.append(self.reload)
        else:
            self._pending.append(self.stop)

    def reload(self) -> None:
        """Load the config file again; switch to it only if every check passes (see the module doc)."""
        log.info("SIGHUP: reloading %s", self.config.path)
        try:
            new = config_module.load(self.config.path)
            check_servable(new)
            account = check_account(new)
            prepare_state(new, account)
            previous, self.account = self.account, account
            try:
                sockets = self._listen(new)  # the last step that may fail
            finally:
                self.account = previous
        except ConfigError as error:
            # the message only: the error's traceback holds the rejected config, which must not outlive this
            log.error("reload failed, keeping the running config: %s", str(error))
            return
        except Exception as error:  # noqa: BLE001 - a reload must never stop the running service
            problem = f"{self.config.path}: {type(error).__name__}: {error}"
            log.error("reload failed, keeping the running config: %s", problem)
            return
        self._use_sockets(sockets)
        self.account = account
        report_loose_modes(new, account)
        prepare_database(new, account)
        self.daemons.account = account  # the daemons' sockets reachable by the workers' group
        self.daemons.apply(new)
        old = list(self.children)
        self.config = new
        name_node_in_log(new.settings.node_name)
        log.info("%s", config_line(new))
        self._warn(new)
        for _ in range(self.workers):
            self._spawn(new)
        for pid in old:
            self._kill(pid, signal.SIGTERM)
        log.info("reloaded: %d new workers, %d old ones draining", self.workers, len(old))

    def _warn(self, config: Config) -> None:
        """Log check-config's warnings about ``config``, each once (a reload logs only new ones)."""
        for warning in config_warnings(config):
            if warning not in self._warned:
                self._warned.add(warning)
                log.warning("%s", warning)

    def stop(self) -> None:
        log.info("stopping: draining %d workers (up to %.0f s)", len(self.children), self.drain_seconds)
        self._stopping = True
        for pid in list(self.children):
            self._kill(pid, signal.SIGTERM)

    @staticmethod
    def _kill(pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.daemons.exited(pid, os.waitstatus_to_exitcode(status), restart=not self._stopping):
                continue
            config = self.children.pop(pid, None)
            if config is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if not self._stopping and config is self.config and code != 0:
                log.error("worker %d exited with %d; starting a new one", pid, code)
                time.sleep(1)
                self._spawn(self.config)

    def run(self) -> int:
        set_umask()
        check_servable(self.config)
        self.account = check_account(self.config)
        prepare_state(self.config, self.account)
        report_loose_modes(self.config, self.account)
        self._bind(self.config)
        prepare_database(self.config, self.account)
        self.daemons.account = self.account  # the daemons' sockets reachable by the workers' group
        self.daemons.apply(self.config)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        for _ in range(self.workers):
            self._spawn(self.config)
        log.info("%s", config_line(self.config))
        self._warn(self.config)
        log.info(
            "mailsift serving %s with %d workers (pid %d)%s",
            ", ".join(s.describe() for s in self.config.services),
            self.workers,
            os.getpid(),
            f", the workers as {self.account.name}" if self.account else "",
        )
        sys.stdout.flush()
        deadline: float | None = None
        while self.children:
            while self._pending:
                self._pending.pop(0)()
            if self._stopping and deadline is None:
                deadline = time.monotonic() + self.drain_seconds + 5
            if deadline is not None and time.monotonic() > deadline:
                for pid in list(self.children):
                    self._kill(pid, signal.SIGKILL)
            self._reap()
            self.daemons.tend()
            time.sleep(0.1)
        self.daemons.stop_all()
        for sock in self.sockets.values():
            sock.close()
        log.info("mailsift stopped")
        return 0


def spawn(daemon: Daemon, state_dir: str, account: Account | None = None) -> subprocess.Popen[bytes]:
    """Prepare and start ``daemon`` in its own session, its output appended to its log.

    With ``account`` (the workers' user), the daemon's socket is made reachable
    by its group (``clamd_daemon``: the socket directory and socket in that group).
    """
    log_path = daemon.log_path(state_dir)
    daemon.prepare(state_dir, clients_group=account.gid if account else None)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "ab") as output:
        try:
            return subprocess.Popen(
                daemon.argv(),
                env=daemon.environment(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=daemon.in_child if daemon.needs_child_setup() else None,  # setrlimit, chroot
            )
        except subprocess.SubprocessError:  # its rlimit or chroot refused in the child, which wrote why
            raise OSError("; ".join(_tail(log_path, 1)) or "refused between fork and exec") from None


@dataclass
class _Awaited:
    """A daemon whose launcher went into the background: its PID file is awaited."""

    daemon: Daemon
    launched: float  # time.time() when the launcher was started
    since: float  # time.monotonic() of the same
    deadline: float  # time.monotonic()


class DaemonKeeper:
    """Starts, watches, restarts and stops the config's daemons (clamd, spamd, ...).

    Runs in the supervisor.  A daemon that exits is restarted after a pause
    that doubles each time (1 s to 60 s) and is reset once it has been up
    for a minute; readiness is polled so the log says when it answers.

    A daemon with ``pid_file`` that goes into the background (its launcher
    exits 0) is followed by the PID in that file (waited for up to
    ``PID_FILE_WAIT`` seconds), checked twice a second by signal 0 and start
    time, restarted when it is gone and stopped by that PID.  One without
    ``pid_file`` whose launcher exits 0 within ``BACKGROUND_WITHIN`` seconds
    went into the background out of mailsift's reach: that is logged as such
    and it is not restarted (a restart would start a second copy each time).
    """

    RESTART_MIN, RESTART_MAX, STABLE_AFTER, STOP_GRACE = 1.0, 60.0, 60.0, 10.0
    PID_FILE_WAIT = PID_FILE_WAIT
    BACKGROUND_WITHIN = 10.0
    LOOK_EVERY = 0.5

    def __init__(self) -> None:
        self.state_dir = ""
        self.account: Account | None = None
        """The workers' user (set by the supervisor): the daemons' sockets are reachable by its group."""
        self.running: dict[int, Daemon] = {}  # pid -> daemon
        self.started: dict[int, float] = {}
        self.waiting_ready: dict[int, float] = {}  # pid -> start time, until it answers
        self.restarts: list[tuple[float, Daemon]] = []
        self.pause: dict[tuple[Any, ...], float] = {}
        self.logs: dict[int, str] = {}
        self.launched: dict[int, float] = {}  # launcher pid -> time.time() it was started (pid_file daemons)
        self.background: dict[int, Process] = {}
        """The running daemons that are not mailsift's children (from their pid_file): pid -> process."""
        self.awaiting: list[_Awaited] = []
        self.unsupervised: dict[tuple[Any, ...], Daemon] = {}
        """Daemons that went into the background without pid_file: not restarted, not started again."""
        self._next_look = 0.0
        self.popens: dict[int, subprocess.Popen[bytes]] = {}
        """The programs' Popen objects: told the exit status the supervisor reaps (os.waitpid(-1))."""

    def apply(self, config: Config) -> None:
        """Make the running daemons those of ``config``: keep the same, stop the gone, start the new."""
        self.state_dir = config.settings.state_dir
        for daemon in config.daemons:
            if isinstance(daemon, fusefs):  # it runs the scanners as a worker does: SRV's rlimit(...) is its own
                daemon.srv_limits = config.rlimit
        wanted = {d.identity(): d for d in config.daemons}
        for pid, daemon in list(self.running.items()):
            if daemon.identity() not in wanted:
                self._stop(pid)
        for awaited in [a for a in self.awaiting if a.daemon.identity() not in wanted]:
            self.awaiting.remove(awaited)
            self._stop_awaited(awaited)
        self.restarts = [(when, d) for when, d in self.restarts if d.identity() in wanted]
        self.unsupervised = {key: d for key, d in self.unsupervised.items() if key in wanted}
        have = (
            {d.identity() for d in self.running.values()}
            | {d.identity() for _, d in self.restarts}
            | {a.daemon.identity() for a in self.awaiting}
            | set(self.unsupervised)
        )
        for key, daemon in wanted.items():
            if key not in have:
                self._start(daemon)

    def _start(self, daemon: Daemon) -> None:
        log_path = daemon.log_path(self.state_dir)
        if daemon.pid_file:
            left = read_pid_file(daemon.pid_file)  # by an earlier mailsift: supervised, not started twice
            if left is not None:
                log.warning(
                    "%s: still running as pid %d (in %s, since before this start): supervising it, not "
                    "starting another",
                    daemon.describe(),
                    left.pid,
                    daemon.pid_file,
                )
                self._follow(daemon, left, time.monotonic())
                return
        try:
            if isinstance(daemon, fusefs):  # forked, not a program: it runs the config's scanners itself
                pid = daemon.start(self.state_dir)
            else:
                launched = time.time()
                process = spawn(daemon, self.state_dir, self.account)
                pid = process.pid
                self.launched[pid] = launched
                self.popens[pid] = process
        except (ConfigError, OSError) as error:
            log.error("%s: cannot start: %s", daemon.describe(), error)
            self._schedule(daemon)
            return
        now = time.monotonic()
        self.running[pid] = daemon
        self.started[pid] = now
        if not daemon.pid_file:  # else the daemon it leaves in the background is the one that answers
            self.waiting_ready[pid] = now
        self.logs[pid] = log_path
        log.info("%s started (pid %d), its output in %s", daemon.describe(), pid, log_path)

    def _follow(self, daemon: Daemon, process: Process, since: float) -> None:
        """Supervise ``process`` (a daemon in the background) as ``daemon``."""
        self.running[process.pid] = daemon
        self.background[process.pid] = process
        self.started[process.pid] = since
        self.waiting_ready[process.pid] = since
        self.logs[process.pid] = daemon.log_path(self.state_dir)

    def _schedule(self, daemon: Daemon) -> None:
        pause = self.pause.get(daemon.identity(), self.RESTART_MIN)
        self.pause[daemon.identity()] = min(pause * 2, self.RESTART_MAX)
        self.restarts.append((time.monotonic() + pause, daemon))
        log.info("%s: starting again in %.0f s", daemon.describe(), pause)

    def _restart_later(self, daemon: Daemon, up: float) -> None:
        """Schedule a dead daemon's restart; one that ran ``up`` longer than STABLE_AFTER starts its backoff again."""
        if up > self.STABLE_AFTER:
            self.pause.pop(daemon.identity(), None)
        self._schedule(daemon)

    def _forget(self, pid: int) -> tuple[Daemon | None, float, str]:
        """Drop ``pid`` from the running daemons: (its daemon, seconds it was up, its log path)."""
        daemon = self.running.pop(pid, None)
        up = time.monotonic() - self.started.pop(pid, time.monotonic())
        self.waiting_ready.pop(pid, None)
        self.background.pop(pid, None)
        self.launched.pop(pid, None)
        return daemon, up, self.logs.pop(pid, "")

    def exited(self, pid: int, code: int, *, restart: bool, stopped: bool = False) -> bool:
        """Handle a reaped PID if it was a daemon's; returns whether it was.

        ``stopped``: mailsift stopped it (a launcher that exits 0 then is not followed into the background)."""
        launched = self.launched.get(pid, time.time())
        started = self.started.get(pid, time.monotonic())
        popen = self.popens.pop(pid, None)
        if popen is not None:
            popen.returncode = code  # reaped by the supervisor, not by the Popen
        daemon, up, log_path = self._forget(pid)
        if daemon is None:
            return False
        if code == 0 and daemon.pid_file and not stopped:
            # It went into the background: follow the PID it writes (also while stopping, to stop it).
            self.awaiting.append(_Awaited(daemon, launched, started, time.monotonic() + self.PID_FILE_WAIT))
            log.info(
                "%s: its launcher (pid %d) went into the background; reading its PID from %s",
                daemon.describe(),
                pid,
                daemon.pid_file,
            )
            return True
        if not restart:
            log.info("%s (pid %d) stopped", daemon.describe(), pid)
            return True
        if code == 0 and up < self.BACKGROUND_WITHIN and not isinstance(daemon, fusefs):
            log.error(
                "%s (pid %d) exited with status 0 after %.0f s: it went into the background, where mailsift "
                "can neither supervise nor stop it: give pid_file= (the file it writes its PID to) or run it in "
                "the foreground (clamd: Foreground yes, or --foreground); it is not started again",
                daemon.describe(),
                pid,
                up,
            )
            self.unsupervised[daemon.identity()] = daemon
            return True
        log.error(
            "%s (pid %d) exited with status %d after %.0f s; the end of %s:%s",
            daemon.describe(),
            pid,
            code,
            up,
            log_path,
            _tail_text(log_path),
        )
        self._restart_later(daemon, up)
        return True

    def tend(self) -> None:
        """Start the due restarts, follow the daemons in the background, and log those that begin to answer."""
        now = time.monotonic()
        due = [d for when, d in self.restarts if when <= now]
        self.restarts = [(when, d) for when, d in self.restarts if when > now]
        for daemon in due:
            self._start(daemon)
        if now >= self._next_look:
            self._next_look = now + self.LOOK_EVERY
            self._look_at_background(now)
        for pid, since in list(self.waiting_ready.items()):
            if int((now - since) * 10) % 5:  # look twice a second
                continue
            answering = self.running.get(pid)
            if answering is not None and answering.ready():
                log.info("%s answers (%.1f s after start)", answering.describe(), now - since)
                del self.waiting_ready[pid]

    def _look_at_background(self, now: float) -> None:
        for awaited in list(self.awaiting):
            process = read_pid_file(awaited.daemon.pid_file, awaited.launched)
            if process is not None:
                self.awaiting.remove(awaited)
                self._follow(awaited.daemon, process, awaited.since)
                log.info(
                    "%s runs in the background as pid %d (from %s)",
                    awaited.daemon.describe(),
                    process.pid,
                    awaited.daemon.pid_file,
                )
            elif now > awaited.deadline:
                self.awaiting.remove(awaited)
                log_path = awaited.daemon.log_path(self.state_dir)
                log.error(
                    "%s: no live process in its pid_file %s %.0f s after its launcher went into the background; "
                    "the end of %s:%s",
                    awaited.daemon.describe(),
                    awaited.daemon.pid_file,
                    self.PID_FILE_WAIT,
                    log_path,
                    _tail_text(log_path),
                )
                self._schedule(awaited.daemon)
        for pid, process in list(self.background.items()):
            if is_alive(process):
                continue
            daemon, up, log_path = self._forget(pid)
            if daemon is None:
                continue
            log.error(
                "%s (pid %d, from %s) is gone after %.0f s; the end of %s:%s",
                daemon.describe(),
                pid,
                daemon.pid_file,
                up,
                log_path,
                _tail_text(log_path),
            )
            self._restart_later(daemon, up)

    def _stop(self, pid: int) -> None:
        daemon = self.running.get(pid)
        process = self.background.get(pid)
        if process is not None and daemon is not None:
            group = read_pgrp_file(daemon.pgrp_file) if daemon.pgrp_file else None
            if stop_process(process, self.STOP_GRACE, group):
                log.warning("%s (pid %d) ignored SIGTERM for %.0f s: killed", daemon.describe(), pid, self.STOP_GRACE)
            self._forget(pid)
            log.info("%s (pid %d, from %s) stopped", daemon.describe(), pid, daemon.pid_file)
            return
        launched = self.launched.get(pid)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + self.STOP_GRACE
        while time.monotonic() < deadline:
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                break
            time.sleep(0.05)
        else:
            log.warning("%s (pid %d) ignored SIGTERM for %.0f s: killing it", daemon and daemon.describe(), pid, 10)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        self.exited(pid, 0, restart=False, stopped=True)
        if daemon is not None and daemon.pid_file and launched is not None:  # stopped as it went to the background
            left = read_pid_file(daemon.pid_file, launched)
            if left is not None and left.pid != pid:
                self._follow(daemon, left, time.monotonic())
                self._stop(left.pid)

    def _stop_awaited(self, awaited: _Awaited) -> None:
        """Stop the daemon a launcher left in the background, if its pid_file names it yet."""
        process = read_pid_file(awaited.daemon.pid_file, awaited.launched)
        if process is not None:
            self._follow(awaited.daemon, process, awaited.since)
            self._stop(process.pid)

    def stop_all(self) -> None:
        self.restarts.clear()
        for pid in list(self.running):
            self._stop(pid)
        # Launchers that had just gone into the background: their daemon, once its pid_file names it.
        deadline = time.monotonic() + self.STOP_GRACE
        while self.awaiting and time.monotonic() < deadline:
            for awaited in list(self.awaiting):
                process = read_pid_file(awaited.daemon.pid_file, awaited.launched)
                if process is not None:
                    self.awaiting.remove(awaited)
                    self._follow(awaited.daemon, process, awaited.since)
                    self._stop(process.pid)
            time.sleep(0.1)
        for awaited in self.awaiting:
            log.warning(
                "%s: its pid_file %s names no live process; nothing to stop",
                awaited.daemon.describe(),
                awaited.daemon.pid_file,
            )
        self.awaiting.clear()


def _tail(path: str, lines: int = 5) -> list[str]:
    """The last lines of a log file (for an error message); [] if unreadable."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - 4096))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def _tail_text(path: str) -> str:
    """The last lines of a log file, each on an indented line of its own (the end of an error message)."""
    return "".join(f"\n    {line}" for line in _tail(path))


@contextlib.contextmanager
def running_daemons(config: Config, timeout: float = 120.0, say: Callable[[str], None] = log.info) -> Iterator[None]:
    """For offline commands (``scan``): start the config's daemons that are not
    answering already (a running ``serve`` has them up), wait until they answer
    (up to ``timeout`` seconds), and stop the ones started here afterwards.
    A daemon that fails to start is reported with the end of its output; its
    scanners then tempfail, which the command reports.
    """
    prepare_state(config)
    started: list[tuple[Daemon, subprocess.Popen[bytes]]] = []
    try:
        for daemon in config.daemons:
            if isinstance(daemon, fusefs) or daemon.ready():  # fusefs: mounted by serve only
                continue
            try:
                process = spawn(daemon, config.settings.state_dir)
            except (ConfigError, OSError) as error:
                say(f"{daemon.describe()}: cannot start: {error}")
                continue
            say(f"{daemon.describe()}: starting it for this run (pid {process.pid})")
            started.append((daemon, process))
        deadline = time.monotonic() + timeout
        waiting = list(started)
        while waiting and time.monotonic() < deadline:
            for daemon, process in list(waiting):
                if process.poll() is not None:
                    tail = _tail_text(daemon.log_path(config.settings.state_dir))
                    say(f"{daemon.describe()} exited with status {process.returncode}:{tail}")
                    waiting.remove((daemon, process))
                elif daemon.ready():
                    waiting.remove((daemon, process))
            time.sleep(0.1)
        for daemon, _ in waiting:
            say(f"{daemon.describe()}: not answering after {timeout:.0f} s")
        yield
    finally:
        for _, process in started:
            if process.poll() is None:
                process.terminate()
        for _, process in started:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
