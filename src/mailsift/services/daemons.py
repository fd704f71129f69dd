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

A program that stays in the foreground (``clamd --foreground``) is mailsift's
child and supervised as such.  One that goes into the background is supervised
through its PID file (``pid_file=``): once the launcher has exited 0 the
supervisor reads the file (waiting up to :data:`PID_FILE_WAIT` seconds), checks
the process is alive by its PID *and* its start time (so a reused PID is never
taken for it), restarts it when it dies, and stops it by that PID at exit.

``rlimit(AS=..., NOFILE=...)`` is SAGATOR's resource-limit service: in ``SRV``
it limits the workers (set in each worker after the fork, before it drops
privileges); given to a daemon (``chroot_execvp(..., rlimit=rlimit(...))``) it
limits that program (set between fork and exec).  ``chroot=`` runs a program
inside a directory with chroot(2) (as root; the directory root-owned and not
writable by others; the program and its libraries inside).

``clamd_daemon`` and ``spamd_daemon`` are ready-made ones: a private clamd on
a unix socket under the state directory, with the system's signatures when
freshclam has fetched them and otherwise with mailsift's test signatures (said
loudly at start), and a private spamd on a loopback port.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import logging
import os
import pwd
import resource
import shutil
import signal
import socket
import stat
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mailsift.errors import ConfigError
from mailsift.validators import is_port, positive_int

log = logging.getLogger("mailsift.daemon")

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
CLAMAV_TEST_FILE_BODY = b"KERNEL32.DLL\0\0ExitProcess\0USER32.DLL\0CLAMessageBoxA"
"""A byte string of ClamAV's own test file (clam.exe), as ClamAV's Test.NDB signature uses."""
CLAMAV_TEST_FILE = "/usr/share/clamav-testfiles/clam.exe"
SYSTEM_CLAMAV_DB = "/var/lib/clamav"


# --------------------------------------------------------------------------- resource limits


RESOURCES: dict[str, int] = {
    name.removeprefix("RLIMIT_"): getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")
}
"""The resources this system can limit, by SAGATOR's names (``AS``, ``NOFILE``...: ``RLIMIT_`` left out)."""
ALIASES = {"VMEM": "AS"}
"""SAGATOR's ``VMEM`` (the BSDs' ``RLIMIT_VMEM``) is Linux's ``RLIMIT_AS``."""
MIN_MEMORY = 256 * 1024 * 1024
"""The least ``AS``/``DATA`` a worker can run with: Python with mailsift loaded takes about 60 MB of
address space before its first message, and each thread reserves its stack and a malloc arena."""
MIN_NOFILE = 64
"""The least ``NOFILE`` a worker can run with (its listening sockets, log, database, spool files)."""
UNLIMITED = ("unlimited", "infinity", None)


def _limit_value(name: str, value: Any) -> int:
    if value in UNLIMITED or value == resource.RLIM_INFINITY:
        return resource.RLIM_INFINITY
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"rlimit: {name} must be a whole number >= 0 (bytes, seconds or a count), 'unlimited' or "
            f"(soft, hard), got {value!r}"
        )
    return value


def _shown(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


class rlimit:
    """Resource limits: ``rlimit(AS=2 * 1024**3, NOFILE=4096, CORE=0)``, SAGATOR's names.

    Each keyword is a resource of setrlimit(2) without ``RLIMIT_`` (``AS``,
    ``CORE``, ``CPU``, ``DATA``, ``FSIZE``, ``MEMLOCK``, ``NOFILE``, ``NPROC``,
    ``RSS``, ``STACK``...; SAGATOR's ``VMEM`` is ``AS``; any case), and its value
    the limit: a number (soft and hard limit alike), ``(soft, hard)``, or
    ``'unlimited'``.  In ``SRV`` it limits the workers; as ``rlimit=`` of a
    daemon, that program.  An unknown name or a bad value is a config error,
    and so are limits a worker could not start under (``AS``/``DATA`` below
    256 MB, ``NOFILE`` below 64) and, unless mailsift runs as root, a hard
    limit above the current one (only root may raise it).
    """

    def __init__(self, **limits: Any) -> None:
        if not limits:
            raise ConfigError("rlimit: give at least one limit, like rlimit(AS=2147483648, NOFILE=4096)")
        self.limits: dict[str, tuple[int, int]] = {}
        for given, value in limits.items():
            name = ALIASES.get(given.upper(), given.upper())
            if name not in RESOURCES:
                raise ConfigError(
                    f"rlimit: unknown resource {given!r}; this system limits {', '.join(sorted(RESOURCES))} "
                    "(and VMEM, which is AS)"
                )
            if name in self.limits:
                raise ConfigError(f"rlimit: {name} is given twice ({given!r} is {name})")
            if isinstance(value, list | tuple):
                if len(value) != 2:
                    raise ConfigError(f"rlimit: {given} must be a number or (soft, hard), got {value!r}")
                soft, hard = _limit_value(given, value[0]), _limit_value(given, value[1])
            else:
                soft = hard = _limit_value(given, value)
            if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft > hard):
                raise ConfigError(f"rlimit: {given}: the soft limit {_shown(soft)} is above the hard one {hard}")
            if name in ("AS", "DATA") and soft != resource.RLIM_INFINITY and soft < MIN_MEMORY:
                raise ConfigError(
                    f"rlimit: {given}={soft} ({soft / 2**20:.0f} MiB) is too small for a mailsift process: Python "
                    f"with mailsift loaded takes about 60 MB of address space before its first message, and every "
                    f"thread reserves its stack and a malloc arena; give at least {MIN_MEMORY // 2**20} MiB "
                    "(AS counts reserved address space: 1 GiB or more; DATA limits memory use more closely). "
                    "SAGATOR's 100 MB was for libclamav inside its own process; mailsift's clamd is a daemon"
                )
            if name == "NOFILE" and soft != resource.RLIM_INFINITY and soft < MIN_NOFILE:
                raise ConfigError(
                    f"rlimit: {given}={soft} is too small: a mailsift process needs at least {MIN_NOFILE}"
                )
            self.limits[name] = (soft, hard)
        if os.geteuid() != 0:
            for name, (_soft, hard) in self.limits.items():
                current = resource.getrlimit(RESOURCES[name])[1]
                if current != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > current):
                    raise ConfigError(
                        f"rlimit: {name} hard limit {_shown(hard)} is above this process's ({current}): only root "
                        "may raise a hard limit; start mailsift as root or give a lower one"
                    )
        if "RSS" in self.limits:
            log.warning("rlimit: RSS is set, but Linux does not enforce it (since 2.6); use DATA or AS")

    def describe(self) -> str:
        return "rlimit(" + ", ".join(f"{n}={self._value(n)}" for n in sorted(self.limits)) + ")"

    def _value(self, name: str) -> str:
        soft, hard = self.limits[name]
        return _shown(soft) if soft == hard else f"({_shown(soft)}, {_shown(hard)})"

    __repr__ = describe

    def identity(self) -> tuple[Any, ...]:
        return tuple(sorted(self.limits.items()))

    def apply(self) -> None:
        """Set the limits on this process (a worker after its fork, a daemon before its exec); OSError if refused."""
        for name, (soft, hard) in self.limits.items():
            try:
                resource.setrlimit(RESOURCES[name], (soft, hard))
            except (OSError, ValueError) as error:
                raise OSError(f"rlimit: cannot set {name} to {self._value(name)}: {error}") from None


# --------------------------------------------------------------------------- processes by PID


PID_FILE_WAIT = 30.0
"""How long a daemon that went into the background has to write a live PID into its ``pid_file``."""


@dataclass(frozen=True)
class Process:
    """A process mailsift did not fork itself (a daemon in the background): its PID and start time.

    The start time (clock ticks after boot, ``/proc/<pid>/stat``) tells the
    process from a later one that got the same PID."""

    pid: int
    start: int


def process_start(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks after boot), or None when there is no such live process
    (a zombie is not alive)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] in ("Z", "X", "x"):
        return None
    try:
        return int(fields[19])  # field 22 of proc(5); the list starts at field 3 (state)
    except (IndexError, ValueError):
        return None


def _boot_time() -> float:
    with open("/proc/stat", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def started_at(process: Process) -> float:
    """When ``process`` started, in seconds since the epoch (to about a second)."""
    return _boot_time() + process.start / os.sysconf("SC_CLK_TCK")


def is_alive(process: Process) -> bool:
    """Whether ``process`` still runs: its PID answers signal 0 and has the same start time."""
    try:
        os.kill(process.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists (another user's)
    return process_start(process.pid) == process.start


def read_pid_file(path: str, launched: float | None = None) -> Process | None:
    """The live process whose PID ``path`` holds, or None.

    ``launched``: the time mailsift started the program; the process must have
    started since (a stale file's PID, reused by another program, never is).
    Without it (a daemon left running by an earlier mailsift), the process must
    be older than the file: it wrote the file, a later holder of its PID did not."""
    try:
        with open(path, "rb") as handle:
            text = handle.read(64)
        written = os.stat(path).st_mtime
        pid = int(text.split()[0]) if text.split() else 0
    except (OSError, ValueError):
        return None
    if pid <= 1 or pid == os.getpid():
        return None
    start = process_start(pid)
    if start is None:
        return None
    process = Process(pid, start)
    when = started_at(process)
    if launched is not None:
        return process if when >= launched - 1.5 else None
    return process if when <= written + 1.5 else None


def stop_process(process: Process, grace: float, group: int | None = None) -> bool:
    """SIGTERM ``process`` (and process group ``group``), SIGKILL after ``grace`` seconds; whether it had
    to be killed.  Signals go only while the PID is still that process."""

    def send(signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(process.pid, signum)
        if group is not None and group > 1:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signum)

    if not is_alive(process):
        return False
    send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not is_alive(process):
            return False
        time.sleep(0.05)
    if is_alive(process):
        send(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while is_alive(process) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def read_pgrp_file(path: str) -> int | None:
    """The process group in SAGATOR's ``pgrp_file`` (signalled with the daemon at stop), or None."""
    try:
        with open(path, "rb") as handle:
            value = int(handle.read(64).split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return value if value > 1 and value != os.getpgrp() else None


# --------------------------------------------------------------------------- chroot


def check_chroot(directory: str) -> str:
    """``directory`` made absolute and real; ConfigError unless it can serve as a chroot.

    It must be a directory owned by root and writable by nobody else (group and
    others), and so must every directory above it, except that a sticky one
    (``/tmp``) may be writable: nobody but root can then move root's directory
    away.  As OpenSSH checks its ``ChrootDirectory``."""
    if not isinstance(directory, str) or not directory.startswith("/"):
        raise ConfigError(f"chroot: must be an absolute directory path, got {directory!r}")
    real = os.path.realpath(directory)
    path = real
    while True:
        try:
            info = os.stat(path)
        except OSError as error:
            raise ConfigError(f"chroot: {path}: {error.strerror}") from None
        if not stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"chroot: {path} is not a directory")
        if info.st_uid != 0:
            raise ConfigError(
                f"chroot: {path} is owned by uid {info.st_uid}, not root: its owner could change the jail"
            )
        writable = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if writable and (path == real or not info.st_mode & stat.S_ISVTX):
            raise ConfigError(
                f"chroot: {path} is mode {stat.S_IMODE(info.st_mode):04o}: writable by others than root "
                "(chmod go-w), who could change the jail"
            )
        if path == "/":
            return real
        path = os.path.dirname(path)


def _elf_interpreter(path: str) -> str | None:
    """The program interpreter (dynamic loader) an ELF executable names, or None (static, not ELF)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF":
                return None
            order = "<" if head[5] == 1 else ">"
            # 64 or 32 bits: where e_phoff and e_phentsize/e_phnum are, and p_offset/p_filesz in an entry
            word, phoff_at, phnum_at, offset_at, size_at = (
                ("Q", 32, 54, 8, 32) if head[4] == 2 else ("I", 28, 42, 4, 16)
            )
            phoff = struct.unpack_from(order + word, head, phoff_at)[0]
            phentsize, phnum = struct.unpack_from(order + "HH", head, phnum_at)
            for index in range(min(phnum, 64)):
                handle.seek(phoff + index * phentsize)
                entry = handle.read(phentsize)
                if len(entry) < size_at + 8 or struct.unpack_from(order + "I", entry, 0)[0] != 3:  # PT_INTERP
                    continue
                offset = struct.unpack_from(order + word, entry, offset_at)[0]
                size = struct.unpack_from(order + word, entry, size_at)[0]
                handle.seek(offset)
                return handle.read(min(size, 4096)).rstrip(b"\0").decode("utf-8", "replace")
    except (OSError, struct.error):
        return None
    return None


def check_chroot_program(root: str, command: str) -> None:
    """ConfigError unless ``command`` (absolute, as seen inside the chroot) is an executable in ``root``,
    with its script interpreter or ELF dynamic loader there too (its libraries are not looked for)."""
    if not command.startswith("/"):
        raise ConfigError(
            f"chroot: the program must be given by its path inside {root} (like '/bin/busybox'), got {command!r}"
        )
    inside = os.path.join(root, command.lstrip("/"))
    if not (os.path.isfile(inside) and os.access(inside, os.X_OK)):
        raise ConfigError(
            f"chroot: program {command} is not in {root} ({inside} is not an executable file): the program, "
            "and every library and file it uses, must be inside the chroot"
        )
    try:
        with open(inside, "rb") as handle:
            first = handle.readline(256)
    except OSError:
        first = b""
    needed = first[2:].split()[0].decode("utf-8", "replace") if first.startswith(b"#!") and first[2:].split() else None
    needed = needed or _elf_interpreter(inside)
    if needed and not os.path.exists(os.path.join(root, needed.lstrip("/"))):
        raise ConfigError(
            f"chroot: program {command} needs {needed}, which is not in {root}: copy the program's interpreter "
            "and libraries into the chroot (ldd lists them), or use a static program (busybox-static)"
        )


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

    limits: rlimit | None = None
    """``rlimit=``: the program's resource limits, set between fork and exec."""
    chroot = ""
    """``chroot=``: the directory the program runs chrooted in ("" for none)."""
    pid_file = ""
    """``pid_file=``: where a program that goes into the background writes its PID ("" for none)."""
    pgrp_file = ""
    """``pgrp_file=``: where it writes its process group, signalled with it at stop ("" for none)."""

    def _processes(self, limits: Any, chroot: Any, pid_file: Any, pgrp_file: Any) -> None:
        """Check and keep ``rlimit=``, ``chroot=``, ``pid_file=`` and ``pgrp_file=``."""
        if limits is not None and not isinstance(limits, rlimit):
            raise ConfigError(f"{self.kind}: rlimit= must be rlimit(NAME=value, ...), got {limits!r}")
        for name, value in (("pid_file", pid_file), ("pgrp_file", pgrp_file), ("chroot", chroot)):
            if not isinstance(value, str):
                raise ConfigError(f"{self.kind}: {name} must be a path, got {value!r}")
        self.limits = limits
        self.pid_file = os.path.abspath(pid_file) if pid_file else ""
        self.pgrp_file = os.path.abspath(pgrp_file) if pgrp_file else ""
        self.chroot = chroot

    def describe(self) -> str:
        return f"{self.kind}({' '.join([self.command, *self.args])})"

    def identity(self) -> tuple[Any, ...]:
        """What makes two daemons the same one (kept running across a reload)."""
        limits = self.limits.identity() if self.limits is not None else ()
        processes = (limits, self.chroot, self.pid_file, self.pgrp_file)
        return (self.kind, tuple(self.argv()), tuple(sorted(self.env.items())), processes)

    def in_child(self) -> None:
        """In the program's process, between fork and exec: its limits, then its chroot.

        A refusal is written to the program's output (its log) before it is raised."""
        try:
            if self.limits is not None:
                self.limits.apply()
            if self.chroot:
                os.chroot(self.chroot)
                os.chdir("/")
        except OSError as error:
            with contextlib.suppress(OSError):
                os.write(2, f"mailsift: {self.describe()}: cannot start: {error}\n".encode())
            raise

    def needs_child_setup(self) -> bool:
        return self.limits is not None or bool(self.chroot)

    def argv(self) -> list[str]:
        if self.chroot:  # the path inside the chroot, looked up after chroot(2)
            return [self.command, *self.args]
        return [find_program(self.command), *self.args]

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def check(self) -> None:
        """At config load: is the program there (in its chroot)?  Raises ConfigError."""
        if self.chroot:
            if os.geteuid() != 0:
                raise ConfigError(f"{self.describe()}: chroot= needs mailsift started as root (chroot(2) is root's)")
            try:
                self.chroot = check_chroot(self.chroot)
                check_chroot_program(self.chroot, self.command)
            except ConfigError as error:
                raise ConfigError(f"{self.describe()}: {error.message}") from None
            return
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

    As in SAGATOR, the arguments may be given one by one, as a list
    (``chroot_execvp('clamd', ['--foreground', '-c', conf])``) or as ``args=``
    (SAGATOR's usage line: ``chroot_execvp('clamd', args=[...], pid_file=...)``).

    * ``pid_file``: for a program that goes into the background (SAGATOR's
      ``clamd -c /etc/clamav.conf`` without ``Foreground``): once the launcher
      exits 0, the PID in that file is supervised, restarted when it dies and
      stopped at exit.  Without it such a program is reported, not restarted.
    * ``pgrp_file``: a file with the program's process group, signalled too at stop.
    * ``rlimit``: ``rlimit(NAME=value, ...)``, the program's resource limits.
    * ``chroot``: a directory to chroot(2) into before the program starts (as
      root; owned by root, writable by nobody else; the program, by its path
      inside, and its libraries in it).
    """

    kind = "chroot_execvp"

    def __init__(
        self,
        command: str,
        *arguments: Any,
        args: Sequence[Any] = (),
        pid_file: str = "",
        pgrp_file: str = "",
        rlimit: rlimit | None = None,
        chroot: str = "",
    ) -> None:
        if not isinstance(args, list | tuple):
            raise ConfigError(f"{self.kind}: args must be a list of strings, got {args!r}")
        super().__init__(command, _flatten([*arguments, *args]))
        self._processes(rlimit, chroot, pid_file, pgrp_file)


class chroot_execvpe(Daemon):
    """``chroot_execvp`` with environment variables: ``chroot_execvpe('clamd', ['--foreground'], {'LANG': 'C'})``.

    ``pid_file``, ``pgrp_file``, ``rlimit`` and ``chroot`` as for :class:`chroot_execvp`."""

    kind = "chroot_execvpe"

    def __init__(
        self,
        command: str,
        args: Sequence[Any] = (),
        env: Mapping[str, str] | None = None,
        *,
        pid_file: str = "",
        pgrp_file: str = "",
        rlimit: rlimit | None = None,
        chroot: str = "",
    ) -> None:
        super().__init__(command, _flatten(args), env)
        self._processes(rlimit, chroot, pid_file, pgrp_file)


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
    ``rlimit``: clamd's resource limits (``rlimit(AS=...)``: real signatures take over 1 GB).
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
        rlimit: rlimit | None = None,
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
        self._processes(rlimit, "", "", "")

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
    line, added to the system's /etc/spamassassin.  ``rlimit``: spamd's resource limits.
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
        rlimit: rlimit | None = None,
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
        self._processes(rlimit, "", "", "")

    def describe(self) -> str:
        return f"spamd_daemon({self.host}:{self.port})"

    def identity(self) -> tuple[Any, ...]:
        limits = self.limits.identity() if self.limits is not None else ()
        return (
            self.kind,
            self.host,
            self.port,
            self.local_only,
            self.max_children,
            self.user,
            self.site_config,
            limits,
        )

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
