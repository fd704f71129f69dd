"""Programs mailsift starts and keeps running beside its workers: clamd, spamd, ...

SAGATOR's ``chroot_execvp('/usr/sbin/clamd', '-c', '/etc/clamav.conf')``
service started the daemons its scanners talk to.  mailsift keeps the name
(and ``chroot_execvpe`` with an environment) in ``SRV``; the supervisor:

* writes what the program needs (:meth:`Daemon.prepare`), starts it before
  the workers, and logs when it answers (:meth:`Daemon.ready`);
* restarts it when it exits, with a growing pause (1 s up to 60 s);
* keeps it across a SIGHUP reload when the new config has the same program
  and arguments, and stops it (SIGTERM, then SIGKILL after 10 s) after the
  workers have drained on shutdown.

The program must stay in the foreground (``clamd --foreground``): mailsift is
its parent and supervises it.  No chroot is done: the name is SAGATOR's.

``clamd_daemon`` and ``spamd_daemon`` are ready-made ones: a private clamd on
a unix socket under the state directory, with the system's signatures when
freshclam has fetched them and otherwise with mailsift's test signatures (said
loudly at start), and a private spamd on a loopback port.
"""

from __future__ import annotations

import grp
import hashlib
import logging
import os
import pwd
import shutil
import socket
import stat
from collections.abc import Mapping, Sequence
from typing import Any

from mailsift.errors import ConfigError
from mailsift.validators import is_port, positive_int

log = logging.getLogger("mailsift.daemon")

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
CLAMAV_TEST_FILE_BODY = b"KERNEL32.DLL\0\0ExitProcess\0USER32.DLL\0CLAMessageBoxA"
"""A byte string of ClamAV's own test file (clam.exe), as ClamAV's Test.NDB signature uses."""
CLAMAV_TEST_FILE = "/usr/share/clamav-testfiles/clam.exe"
SYSTEM_CLAMAV_DB = "/var/lib/clamav"


class Daemon:
    """Base of the programs listed in ``SRV`` that mailsift starts and supervises."""

    kind = "daemon"

    def __init__(self, command: str, args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> None:
        if not isinstance(command, str) or not command:
            raise ConfigError(f"{self.kind}: the command must be a program name or path, got {command!r}")
        if not all(isinstance(a, str) for a in args):
            raise ConfigError(f"{self.kind}: arguments must be strings, got {list(args)!r}")
        if env is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise ConfigError(f"{self.kind}: env must map strings to strings")
        self.command = command
        self.args = tuple(args)
        self.env = dict(env or {})

    def describe(self) -> str:
        return f"{self.kind}({' '.join([self.command, *self.args])})"

    def identity(self) -> tuple[Any, ...]:
        """What makes two daemons the same one (kept running across a reload)."""
        return (self.kind, tuple(self.argv()), tuple(sorted(self.env.items())))

    def argv(self) -> list[str]:
        return [find_program(self.command), *self.args]

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def check(self) -> None:
        """At config load: is the program there?  Raises ConfigError."""
        if not shutil.which(find_program(self.command)):
            raise ConfigError(f"{self.describe()}: program {self.command!r} not found")

    runs_as_own_user = False
    """Whether the program switches to its own user (when mailsift runs as root): it must then
    reach its directory, even inside ``STATE_DIR`` (0751, see :func:`mailsift.supervisor.prepare_state`)."""

    def prepare(self, state_dir: str, clients_group: int | None = None) -> None:
        """Before each start: write what the program needs.  Raises ConfigError.

        ``clients_group``: the group of mailsift's workers when they run as
        another user than the supervisor; a socket of the daemon must be
        reachable by that group."""

    def log_path(self, state_dir: str) -> str:
        """Where the program's output goes (its last lines are logged if it fails)."""
        name = os.path.basename(self.command) or self.kind
        return os.path.join(state_dir, "daemons", f"{name}.log")

    def ready(self) -> bool:
        """Whether the program answers yet (called until it does)."""
        return True


SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


def find_program(command: str) -> str:
    """``command``'s path: on PATH, or in the sbin directories daemons live in (often not on PATH)."""
    return shutil.which(command) or shutil.which(command, path=SBIN) or command


def _flatten(args: Sequence[Any]) -> list[str]:
    flat: list[str] = []
    for arg in args:
        if isinstance(arg, list | tuple):
            flat.extend(_flatten(arg))
        else:
            flat.append(arg)
    return flat


class chroot_execvp(Daemon):
    """Start and supervise a program: ``chroot_execvp('/usr/sbin/clamd', '--foreground', '-c', conf)``.

    As in SAGATOR, the arguments may be given one by one or as a list
    (``chroot_execvp('clamd', ['--foreground', '-c', conf])``).  ``pid_file``
    is accepted for SAGATOR configs and ignored: the program stays in the
    foreground as mailsift's child, which is how mailsift knows its PID.
    """

    kind = "chroot_execvp"

    def __init__(self, command: str, *args: Any, pid_file: str = "", pgrp_file: str = "") -> None:
        super().__init__(command, _flatten(args))


class chroot_execvpe(Daemon):
    """``chroot_execvp`` with environment variables: ``chroot_execvpe('clamd', ['--foreground'], {'LANG': 'C'})``."""

    kind = "chroot_execvpe"

    def __init__(
        self, command: str, args: Sequence[Any] = (), env: Mapping[str, str] | None = None, **ignored: str
    ) -> None:
        super().__init__(command, _flatten(args), env)


# --------------------------------------------------------------------------- clamd


def _hex(data: bytes) -> str:
    return data.hex()


def test_signatures() -> dict[str, str]:
    """mailsift's test signature files: EICAR and ClamAV's test file, by MD5 and by body.

    They detect the test files only.  They let a fresh install show clamd
    working before freshclam has fetched real signatures.
    """
    hdb = [f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:Eicar-Test-Signature"]  # noqa: S324 - ClamAV's format
    if os.path.exists(CLAMAV_TEST_FILE):
        with open(CLAMAV_TEST_FILE, "rb") as handle:
            data = handle.read()
        hdb.append(f"{hashlib.md5(data).hexdigest()}:{len(data)}:ClamAV-Test-File")  # noqa: S324
    ndb = [
        f"Eicar-Test-Signature.NDB:0:*:{_hex(EICAR)}",
        f"ClamAV-Test-File.NDB:0:*:{_hex(CLAMAV_TEST_FILE_BODY)}",
    ]
    return {"mailsift-test.hdb": "\n".join(hdb) + "\n", "mailsift-test.ndb": "\n".join(ndb) + "\n"}


def system_signatures(directory: str = SYSTEM_CLAMAV_DB) -> list[str]:
    """The signature databases freshclam keeps (main/daily/bytecode .cvd or .cld), if any."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(n for n in names if n.endswith((".cvd", ".cld")))


def _can_reach(user: pwd.struct_passwd, path: str) -> bool:
    """Whether ``user`` may traverse every directory above ``path`` (mode bits only)."""
    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}
    directory = os.path.dirname(os.path.abspath(path))
    while True:
        try:
            info = os.stat(directory)
        except OSError:
            return False
        if info.st_uid == user.pw_uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return False
        parent = os.path.dirname(directory)
        if parent == directory:
            return True
        directory = parent


def _service_user(name: str) -> pwd.struct_passwd | None:
    """The unprivileged user to run a daemon as, when mailsift runs as root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


class clamd_daemon(Daemon):
    """A private clamd on a unix socket, supervised by mailsift.

    ``clamd_daemon('/var/lib/mailsift/clamd/clamd.sock')``; the scanner is then
    ``clamd('/var/lib/mailsift/clamd/clamd.sock')``.  Its files go in the
    socket's directory (``clamd.conf``, its temporary directory, the test
    signatures).  Signatures: ``database=`` a directory; by default the
    system's (``/var/lib/clamav``) when freshclam has fetched them, otherwise
    mailsift's test signatures (EICAR and ClamAV's test file) — logged as a
    warning at every start, since they are no protection against real viruses.
    ``user``: the account clamd switches to when mailsift runs as root
    (Debian's ``clamav``).  ``options``: more ``clamd.conf`` lines, as a dict.
    """

    kind = "clamd_daemon"

    def __init__(
        self,
        socket_path: str,
        *,
        database: str | None = None,
        stream_max_length: str = "50M",
        max_threads: int = 10,
        user: str = "clamav",
        program: str = "clamd",
        options: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(socket_path, str) or not socket_path:
            raise ConfigError(f"clamd_daemon: socket path must be a string, got {socket_path!r}")
        self.socket_path = os.path.abspath(socket_path)
        if len(self.socket_path.encode()) > 100:
            raise ConfigError(f"clamd_daemon: socket path is too long for a unix socket: {self.socket_path}")
        self.directory = os.path.dirname(self.socket_path)
        self.database = database
        self.stream_max_length = stream_max_length
        self.max_threads = positive_int(max_threads, "clamd_daemon: max_threads")
        self.user = user
        self.options = dict(options or {})
        super().__init__(program, ["--foreground", "-c", os.path.join(self.directory, "clamd.conf")])

    def describe(self) -> str:
        return f"clamd_daemon({self.socket_path})"

    @property
    def runs_as_own_user(self) -> bool:  # type: ignore[override]
        return _service_user(self.user) is not None

    def log_path(self, state_dir: str) -> str:
        return os.path.join(self.directory, "clamd.log")

    def _database(self) -> tuple[str, str]:
        """The signature directory and a sentence for the log."""
        if self.database is not None:
            return self.database, f"signatures from {self.database}"
        found = system_signatures()
        if found:
            return SYSTEM_CLAMAV_DB, f"the system's signatures in {SYSTEM_CLAMAV_DB} ({', '.join(found)})"
        return os.path.join(self.directory, "test-db"), "TEST SIGNATURES ONLY"

    def prepare(self, state_dir: str, clients_group: int | None = None) -> None:
        database, what = self._database()
        user = _service_user(self.user)
        if user is not None and not _can_reach(user, self.directory):
            log.warning(
                "clamd: user %s cannot reach %s (a directory above it is closed to it): clamd runs as root; "
                "open the path (chmod o+x) or run mailsift as an unprivileged user",
                user.pw_name,
                self.directory,
            )
            user = None
        try:
            os.makedirs(os.path.join(self.directory, "tmp"), mode=0o750, exist_ok=True)
            if database == os.path.join(self.directory, "test-db"):
                os.makedirs(database, mode=0o750, exist_ok=True)
                for name, text in test_signatures().items():
                    with open(os.path.join(database, name), "w", encoding="ascii") as handle:
                        handle.write(text)
            lines = {
                "Foreground": "yes",
                "LocalSocket": self.socket_path,
                "LocalSocketMode": "660",
                "FixStaleSocket": "yes",
                "DatabaseDirectory": database,
                "TemporaryDirectory": os.path.join(self.directory, "tmp"),
                "LogTime": "yes",
                "LogVerbose": "no",
                "MaxThreads": str(self.max_threads),
                "StreamMaxLength": self.stream_max_length,
                "SelfCheck": "3600",
            }
            if user is not None:
                lines["User"] = user.pw_name
            group = user.pw_gid if user is not None else -1
            if clients_group is not None:
                # The workers (USER) reach the socket through their group: the directory is clamd's and in that
                # group (0750), nobody else can pass it, and the socket inside is open to whoever reaches it.
                # (LocalSocketGroup cannot do it: clamd sets the socket's group after it became its User.)
                group = clients_group
                lines["LocalSocketMode"] = "666"
            lines.update(self.options)
            with open(os.path.join(self.directory, "clamd.conf"), "w", encoding="utf-8") as handle:
                handle.write("# written by mailsift at every start of clamd_daemon; edit the config instead\n")
                handle.writelines(f"{key} {value}\n" for key, value in lines.items())
            if user is not None or clients_group is not None:
                for root, dirs, files in os.walk(self.directory):
                    for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                        os.chown(name, user.pw_uid if user is not None else -1, group)
            os.chmod(self.directory, 0o750)  # noqa: S103 - its group (the workers') may pass, nobody else
            os.chmod(os.path.join(self.directory, "tmp"), 0o700)  # clamd's copies of the mail: its own
        except OSError as error:
            raise ConfigError(f"clamd_daemon: cannot prepare {self.directory}: {error}") from None
        if what == "TEST SIGNATURES ONLY":
            log.warning(
                "clamd: no system signatures in %s (freshclam has not fetched any): starting with mailsift's "
                "TEST SIGNATURES ONLY (EICAR and ClamAV's test file); this detects no real virus. "
                "Install clamav-freshclam and let it run, then restart mailsift.",
                SYSTEM_CLAMAV_DB,
            )
        else:
            log.info("clamd: starting with %s", what)

    def ready(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1)
                sock.connect(self.socket_path)
                sock.sendall(b"zPING\0")
                return sock.recv(16).startswith(b"PONG")
        except OSError:
            return False


# --------------------------------------------------------------------------- spamd


class spamd_daemon(Daemon):
    """A private SpamAssassin spamd on a loopback port, supervised by mailsift.

    ``spamd_daemon(('127.0.0.1', 10783))``; the scanner is then
    ``spamassassind(('127.0.0.1', 10783))``.  With ``local_only=True`` (the
    default) spamd runs no network tests (DNS blocklists, Razor, Pyzor): fast
    and predictable on a first install, and the only choice without network;
    set it False once the machine resolves DNS.
    ``user``: the account spamd runs as when mailsift runs as root (Debian's
    ``debian-spamd``); ``site_config``: more SpamAssassin settings, one per
    line, added to the system's /etc/spamassassin.
    """

    kind = "spamd_daemon"

    def __init__(
        self,
        address: Sequence[Any] = ("127.0.0.1", 10783),
        *,
        local_only: bool = True,
        max_children: int = 5,
        user: str = "debian-spamd",
        program: str = "spamd",
        site_config: str = "",
    ) -> None:
        if not (
            isinstance(address, list | tuple)
            and len(address) == 2
            and isinstance(address[0], str)
            and is_port(address[1])
        ):
            raise ConfigError(f"spamd_daemon: address must be ('127.0.0.1', port), got {address!r}")
        self.host, self.port = address[0], int(address[1])
        self.local_only = local_only
        self.max_children = positive_int(max_children, "spamd_daemon: max_children")
        self.user = user
        self.site_config = site_config
        self.directory = ""
        super().__init__(program)

    def describe(self) -> str:
        return f"spamd_daemon({self.host}:{self.port})"

    def identity(self) -> tuple[Any, ...]:
        return (self.kind, self.host, self.port, self.local_only, self.max_children, self.user, self.site_config)

    def prepare(self, state_dir: str, clients_group: int | None = None) -> None:
        self.directory = os.path.join(state_dir, "spamd")

    def log_path(self, state_dir: str) -> str:
        return os.path.join(state_dir, "spamd", "spamd.log")

    def argv(self) -> list[str]:
        # Debian's site config (/etc/spamassassin: the .pre files that load the
        # plugins, local.cf) stays in force; these settings are added to it.
        settings = ["use_bayes 0", "bayes_auto_learn 0"]  # no Bayes database to train on a first install
        if self.local_only:
            settings.append("skip_rbl_checks 1")
        settings += [line for line in self.site_config.splitlines() if line.strip()]
        args = [
            find_program(self.command),
            f"--listen={self.host}:{self.port}",
            f"--allowed-ips={self.host}",
            f"--max-children={self.max_children}",
            "--nouser-config",
            "--syslog=stderr",
            *(f"--cf={line}" for line in settings),
        ]
        if self.local_only:
            args.append("--local")
        user = _service_user(self.user)
        if user is not None:
            args += [f"--username={user.pw_name}", f"--groupname={user.pw_gid}"]
            if os.path.isdir(user.pw_dir):
                args.append(f"--helper-home-dir={user.pw_dir}")
        return args

    def ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
                return b"PONG" in sock.recv(64)
        except OSError:
            return False
