"""A private, throw-away Postfix instance for end-to-end tests.

The instance lives entirely under a caller-supplied work directory::

    WORKDIR/etc/       config_directory (main.cf, master.cf, mailboxes)
    WORKDIR/spool/     queue_directory (subdirectories created by ``postfix start``)
    WORKDIR/data/      data_directory (owned by mail_owner)
    WORKDIR/maillog    Postfix log (maillog_file + postlogd, Postfix >= 3.4)

It only listens on 127.0.0.1, never reads or writes /etc/postfix/main.cf, and is
not registered with postmulti, so several instances (different workdirs/ports)
can run side by side.

Mail flow (classic after-queue content filter, SAGATOR / amavis style)::

    client --SMTP--> 127.0.0.1:inbound_port  smtpd  (-o content_filter=<content_filter>)
                     -> qmgr -> "scan" transport (smtp client) -> the filter under test
    filter --SMTP--> 127.0.0.1:reinject_port smtpd  (-o content_filter= , no checks)
                     -> qmgr -> virtual(8) -> maildir_root/<recipient>/new/

The inbound smtpd only accepts the listed ``mailboxes`` of ``domain`` (others: 550 5.1.1
User unknown; other domains: 554 Relay access denied).  Mailbox ``x@domain`` is the Maildir
``maildir_root/x@domain/``.  Mail that reaches the queue for any other domain is bounced by
the ``error`` transport, and nothing uses DNS.  Bounces go to the (local) sender.

Must be run as root (Postfix's master requires it).  Typical pytest use::

    with postfix_home() as home, PostfixInstance(
        home / "pf", inbound_port=free_port(), reinject_port=free_port(),
        content_filter=PostfixInstance.scan_filter(filter_port), maildir_root=home / "mail",
    ) as pf:
        ...  # SMTP to pf.inbound_port
        [msg] = pf.wait_delivered("bob@example.test")

The work directory and maildir root must not be under pytest's ``tmp_path``: every pytest
session that starts on the machine (another run, a pytest subprocess) resets
``/tmp/pytest-of-<user>`` to mode 0700, and Postfix's unprivileged daemons (``postfix``,
``nobody``) then lose their way to the tables and Maildirs mid-test.  :func:`postfix_home`
gives them a directory of their own; :meth:`PostfixInstance.start` refuses the basetemp.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import pty
import pwd
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
POSTQUEUE = "/usr/sbin/postqueue"
PR_SET_CHILD_SUBREAPER = 36

#: Local parts (or full addresses) that get a Maildir unless ``mailboxes=`` says otherwise.
DEFAULT_MAILBOXES = ("alice", "bob", "carol", "dave", "eve", "postmaster", "abuse", "admin", "quarantine")

#: Queue subdirectories that hold messages (used by :meth:`PostfixInstance.queue_is_empty`).
_MESSAGE_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")


class PostfixError(RuntimeError):
    """Postfix failed to start/stop or a wait timed out; the message includes the log tail."""


def free_port() -> int:
    """Return a currently unused TCP port on 127.0.0.1 (racy, but fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@functools.cache
def postfix_version() -> tuple[int, ...]:
    """Return the installed Postfix version, e.g. ``(3, 7, 11)``."""
    out = subprocess.run(
        [POSTCONF, "-d", "-h", "mail_version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    return tuple(int(part) for part in out.split(".") if part.isdigit())


def milter_main_cf(port: int, **more: str) -> dict[str, str]:
    """main.cf settings for a milter on 127.0.0.1:``port`` in smtpd (protocol 6; mail is
    tempfailed while it does not answer), and ``more``: a PostfixInstance's ``extra_main_cf``."""
    return {
        "smtpd_milters": f"inet:127.0.0.1:{port}",
        "milter_default_action": "tempfail",
        "milter_protocol": "6",
        **more,
    }


@contextlib.contextmanager
def postfix_home(prefix: str = "mailsift-pf-") -> Iterator[Path]:
    """A fresh directory under /tmp for a private Postfix's work directory and maildir root.

    Mode 0711: Postfix's unprivileged daemons can pass through it (but not list it).  It is
    outside pytest's basetemp, whose ``/tmp/pytest-of-<user>`` any pytest session starting on the
    machine chmods back to 0700 (see the module docstring); it is removed on exit.  Kept short:
    Postfix's unix socket paths (under the queue directory) must fit in 108 bytes.
    """
    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        os.chmod(home, 0o711)
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _under_pytest_basetemp(path: Path) -> bool:
    """True if ``path`` lies in a ``pytest-of-<user>`` directory (pytest's default basetemp root)."""
    return any(parent.name.startswith("pytest-of-") for parent in path.parents)


def _grant_traverse(path: Path, uid: int, gid: int) -> None:
    """Make every ancestor of ``path`` searchable by ``uid``/``gid``, adding ``o+x`` where missing.

    Postfix opens some files by absolute path after dropping privileges (master.lock in
    data_directory as mail_owner, maildirs as the virtual uid), and mkdtemp's
    directories are 0700 root.  Only search (x) is granted, never read.
    """
    for parent in path.parents:
        st = parent.stat()
        if st.st_mode & stat.S_IXOTH or (st.st_uid == uid and st.st_mode & stat.S_IXUSR):
            continue
        if st.st_gid == gid and st.st_mode & stat.S_IXGRP:
            continue
        if st.st_uid != os.geteuid():
            raise PostfixError(f"uid {uid} cannot traverse {parent} (not ours, not changing it)")
        os.chmod(parent, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _run_with_tty(argv: list[str], timeout: float) -> tuple[int | None, str]:
    """Run ``argv`` with stdout/stderr on a pseudo-tty; return (exit status or None on timeout, output).

    Postfix commands copy their log messages to stderr only when it is a terminal; otherwise they
    go to syslog (often absent in containers) or maillog_file (unusable until postlogd runs), so
    early fatals such as a rejected main.cf setting would be invisible.
    """
    master_fd, slave_fd = pty.openpty()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave_fd, stderr=slave_fd)
    finally:
        os.close(slave_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        # Read while it runs (a full tty buffer would block it); a daemonized master may keep the
        # tty open forever, so stop reading once the command exited and the tty is quiet.
        while time.monotonic() < deadline:
            if select.select([master_fd], [], [], 0.1)[0]:
                try:
                    chunk = os.read(master_fd, 65536)
                except OSError:  # EIO: every writer closed the tty
                    chunk = b""
                if chunk:
                    chunks.append(chunk)
                    continue
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
                break
            if proc.poll() is not None:
                break
    except subprocess.TimeoutExpired:
        pass
    finally:
        os.close(master_fd)
    status = proc.poll()
    if status is None:
        proc.kill()
        proc.wait()
    return status, b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


def _reap_children() -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _reaper_main(timeout: float, config_dir: str) -> int:
    """Per-instance helper process, run as ``python postfix.py --reaper TIMEOUT CONFIG_DIR``.

    Becomes a child subreaper and runs ``postfix start``; prints one JSON line
    ``{"status": ..., "output": ...}``.  The master daemonizes and, when stopped, exits before its
    children, so those become orphans of PID 1 -- which in containers without a real init reaps
    them late or never (zombies in ``ps``).  As subreaper this process adopts and reaps them.  It exits when the parent
    writes ``done`` to stdin; if stdin closes without it (the test process died), it first runs
    ``postfix stop`` so the instance does not outlive the test run.
    """
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    status, output = _run_with_tty([POSTFIX, "-c", config_dir, "start"], timeout)
    sys.stdout.write(json.dumps({"status": status, "output": output}) + "\n")
    sys.stdout.flush()
    command = b""
    while b"\n" not in command:
        if select.select([0], [], [], 0.5)[0]:
            data = os.read(0, 64)
            if not data:
                break
            command += data
        _reap_children()
    if not command.startswith(b"done"):
        _run_with_tty([POSTFIX, "-c", config_dir, "stop"], timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.05)
        except ChildProcessError:
            break
    return 0


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class PostfixInstance:
    """A private Postfix instance (see module docstring for layout and mail flow).

    Args:
        workdir: directory that will hold config, queue, data and log (created if missing).
        inbound_port: 127.0.0.1 port of the "internet-facing" smtpd.
        reinject_port: 127.0.0.1 port of the smtpd the filter re-injects into (no filter, no checks).
        content_filter: Postfix ``content_filter`` value for the inbound smtpd, e.g.
            ``PostfixInstance.scan_filter(10024)`` == ``"scan:[127.0.0.1]:10024"``
            (the dedicated ``scan`` smtp transport is always defined), or ``None``
            to deliver inbound mail directly.
        maildir_root: ``virtual_mailbox_base``; recipient ``x@domain`` is delivered to
            ``maildir_root/x@domain/new/``.  If it is owned by root it is chowned to
            ``nobody:nogroup`` (virtual(8) refuses uid 0), and its ancestors get ``o+x``
            where needed so that user can reach it (mkdtemp's directories are 0700).  Neither it
            nor ``workdir`` may be under pytest's basetemp: use :func:`postfix_home`.
        domain: the only domain the instance accepts and delivers.
        mailboxes: local parts or addresses in ``domain`` that exist (texthash map); Postfix cannot
            give *every* address its own Maildir (virtual(8) forbids regexp ``$1`` and socketmap).
        extra_main_cf: main.cf settings applied last (override the defaults).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        inbound_port: int,
        reinject_port: int,
        content_filter: str | None,
        maildir_root: Path,
        domain: str = "example.test",
        mailboxes: Iterable[str] = DEFAULT_MAILBOXES,
        extra_main_cf: dict[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir).absolute()
        self.inbound_port = inbound_port
        self.reinject_port = reinject_port
        self.content_filter = content_filter
        self.maildir_root = Path(maildir_root).absolute()
        self.domain = domain.lower()
        self.mailboxes = sorted({m.lower() if "@" in m else f"{m.lower()}@{self.domain}" for m in mailboxes})
        self.extra_main_cf = dict(extra_main_cf or {})
        self.config_dir = self.workdir / "etc"
        self.queue_dir = self.workdir / "spool"
        self.data_dir = self.workdir / "data"
        self.maillog = self.workdir / "maillog"
        self.myhostname = f"postfix-test.{domain}"
        self._reaper: subprocess.Popen[bytes] | None = None

    @staticmethod
    def scan_filter(port: int, host: str = "127.0.0.1") -> str:
        """Return the ``content_filter`` value that routes mail through the ``scan`` transport."""
        return f"scan:[{host}]:{port}"

    # ------------------------------------------------------------------ config

    def main_cf(self) -> dict[str, str]:
        """The main.cf settings this instance uses (``extra_main_cf`` applied)."""
        uid, gid = self._delivery_ids()
        version = postfix_version()
        if version < (3, 4):
            raise PostfixError(f"Postfix >= 3.4 needed for maillog_file, found {version}")
        cf = {
            "compatibility_level": "3.6" if version >= (3, 6) else "2",
            "multi_instance_name": f"postfix-{self.inbound_port}",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "default_privs": "nobody",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.workdir),  # default "/var, /dev/stdout" -> fatal
            "myhostname": self.myhostname,
            "mydomain": self.domain,
            "myorigin": "$mydomain",  # so bare "postmaster" (bounce notices) is a local mailbox
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "relayhost": "",
            "relay_domains": "",
            # Nothing may leave the box or touch DNS.
            "default_transport": "error:5.7.1 outbound mail disabled in test instance",
            "local_transport": "error:5.1.1 local delivery disabled in test instance",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "lmtp_host_lookup": "native",
            "address_verify_map": "",
            "append_dot_mydomain": "no",
            "biff": "no",
            # Inbound: accept only our domain (no relaying even from 127.0.0.0/8).
            "smtpd_relay_restrictions": "reject_unauth_destination",
            "smtpd_recipient_restrictions": "",
            "smtpd_error_sleep_time": "0",
            "smtpd_client_connection_rate_limit": "0",
            "in_flow_delay": "0",
            # Final delivery: virtual(8) into Maildirs.
            "virtual_mailbox_domains": self.domain,
            "virtual_mailbox_base": str(self.maildir_root),
            "virtual_mailbox_maps": f"texthash:{self.config_dir / 'mailboxes'}",
            "virtual_uid_maps": f"static:{uid}",
            "virtual_gid_maps": f"static:{gid}",
            "virtual_minimum_uid": "1",
            "virtual_mailbox_limit": "0",
            # Retry deferred mail quickly.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
        }
        cf.update(self.extra_main_cf)
        return cf

    def master_cf(self) -> str:
        """The master.cf text (no chroot; inbound, reinject, scan and the internal services)."""
        inbound_filter = self.content_filter or ""
        return f"""\
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:{self.inbound_port} inet n - n - - smtpd
  -o syslog_name=$multi_instance_name/inbound
  -o content_filter={inbound_filter}
127.0.0.1:{self.reinject_port} inet n - n - - smtpd
  -o syslog_name=$multi_instance_name/reinject
  -o content_filter=
  -o local_recipient_maps=
  -o relay_recipient_maps=
  -o smtpd_restriction_classes=
  -o smtpd_delay_reject=no
  -o smtpd_client_restrictions=permit_mynetworks,reject
  -o smtpd_helo_restrictions=
  -o smtpd_sender_restrictions=
  -o smtpd_relay_restrictions=permit_mynetworks,reject
  -o smtpd_recipient_restrictions=permit_mynetworks,reject
  -o smtpd_data_restrictions=reject_unauth_pipelining
  -o smtpd_end_of_data_restrictions=
  -o mynetworks=127.0.0.0/8
  -o smtpd_error_sleep_time=0
  -o smtpd_soft_error_limit=1001
  -o smtpd_hard_error_limit=1000
  -o smtpd_client_connection_count_limit=0
  -o smtpd_client_connection_rate_limit=0
  -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks,no_milters
  -o smtpd_authorized_xforward_hosts=127.0.0.0/8
scan      unix  -       -       n       -       10      smtp
  -o syslog_name=$multi_instance_name/scan
  -o smtp_data_done_timeout=1200
  -o smtp_send_xforward_command=yes
  -o smtp_dns_support_level=disabled
  -o max_use=20
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
lmtp      unix  -       -       n       -       -       lmtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

    def _delivery_ids(self) -> tuple[int, int]:
        """uid/gid virtual(8) delivers as: maildir_root's owner, or nobody:nogroup if that is root."""
        if self.maildir_root.exists():
            st = self.maildir_root.stat()
            if st.st_uid != 0:
                return st.st_uid, st.st_gid
        nobody = pwd.getpwnam("nobody")
        return nobody.pw_uid, nobody.pw_gid

    def _prepare_maildir_root(self) -> None:
        uid, gid = self._delivery_ids()
        self.maildir_root.mkdir(parents=True, exist_ok=True)
        os.chown(self.maildir_root, uid, gid)
        os.chmod(self.maildir_root, 0o755)
        # virtual(8) switches to uid/gid *before* creating the maildir.
        _grant_traverse(self.maildir_root, uid, gid)

    def _write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.config_dir, 0o755)
        # Postfix creates the queue subdirectories itself (postfix-script check-fatal ->
        # post-install create-missing), with mail_owner/setgid_group ownership.
        self.queue_dir.mkdir(mode=0o755, exist_ok=True)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        # virtual(8) refuses $1 substitution (regexp/pcre) and network maps (socketmap/tcp) for
        # virtual_mailbox_maps, so "any address -> own Maildir" is impossible: list the mailboxes.
        mailbox_map = "".join(f"{address} {address}/\n" for address in self.mailboxes)
        (self.config_dir / "mailboxes").write_text(mailbox_map)
        owner = pwd.getpwnam("postfix")
        os.chown(self.data_dir, owner.pw_uid, owner.pw_gid)
        # master(8) opens data_directory/master.lock *after* switching to mail_owner.
        _grant_traverse(self.data_dir, owner.pw_uid, owner.pw_gid)
        lines = [f"{key} = {value}" for key, value in self.main_cf().items()]
        (self.config_dir / "main.cf").write_text("\n".join(lines) + "\n")
        (self.config_dir / "master.cf").write_text(self.master_cf())
        # Postfix re-reads a file modified within the current second (300 ms sleeps, ~2 s in
        # total for main.cf alone) until it looks settled; backdate them so start is instant.
        past = time.time() - 60
        for name in ("main.cf", "master.cf", "mailboxes"):
            # Readable by Postfix's unprivileged daemons whatever umask this process has.
            os.chmod(self.config_dir / name, 0o644)
            os.utime(self.config_dir / name, (past, past))

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 30) -> None:
        """Write the config and start the instance; wait until both SMTP ports accept connections.

        ``postfix start`` runs inside a small per-instance reaper process (see :func:`_reaper_main`)
        so the daemons orphaned when the master exits are reaped even where PID 1 does not reap.
        """
        if self._reaper is not None:
            raise PostfixError("instance already started")
        for path in (self.workdir, self.maildir_root):
            if _under_pytest_basetemp(path):
                raise PostfixError(
                    f"{path} is under pytest's basetemp, whose pytest-of-<user> any other pytest session "
                    "resets to 0700 (Postfix's daemons then cannot reach it): use postfix_home()"
                )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._prepare_maildir_root()
        self._write_config()
        self._reaper = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--reaper", str(timeout), str(self.config_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self._reaper.stdout is not None
        ready = select.select([self._reaper.stdout], [], [], timeout + 10)[0]
        line = self._reaper.stdout.readline() if ready else b""
        report = json.loads(line) if line.strip() else {"status": None, "output": "no report from reaper"}
        if report["status"] != 0:
            self.stop()
            raise PostfixError(f"postfix start failed ({report['status']}):\n{report['output']}" + self._tail())
        deadline = time.monotonic() + timeout
        while not (_port_open(self.inbound_port) and _port_open(self.reinject_port)):
            if time.monotonic() > deadline:
                self.stop()
                raise PostfixError(f"ports {self.inbound_port}/{self.reinject_port} not accepting" + self._tail())
            time.sleep(0.1)

    def stop(self, timeout: float = 15) -> None:
        """Stop the instance (``postfix stop``), then SIGKILL any leftover process of THIS instance.

        Leftovers are found by working directory (every daemon of this instance, master included,
        runs with cwd == queue_directory), so other Postfix instances are never touched.
        Safe to call more than once or after a failed start.
        """
        master = _read_pid(self.queue_dir / "pid" / "master.pid")
        if master is not None and master in self.pids():
            _run_with_tty([POSTFIX, "-c", str(self.config_dir), "stop"], timeout)
            deadline = time.monotonic() + timeout
            while master in self.pids() and time.monotonic() < deadline:
                time.sleep(0.1)
        deadline = time.monotonic() + 5
        while (leftovers := self.pids()) and time.monotonic() < deadline:
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        if self._reaper is not None:
            reaper, self._reaper = self._reaper, None
            try:
                assert reaper.stdin is not None
                reaper.stdin.write(b"done\n")
                reaper.stdin.close()
            except BrokenPipeError:
                pass
            try:
                reaper.wait(timeout=15)
            except subprocess.TimeoutExpired:
                reaper.kill()
                reaper.wait(timeout=5)
            if reaper.stdout is not None:
                reaper.stdout.close()

    def pids(self) -> list[int]:
        """PIDs of the live (non-zombie) processes of this instance: those with cwd == queue_directory."""
        queue_dir = os.path.realpath(self.queue_dir)
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.readlink(entry / "cwd") == queue_dir and _alive(int(entry.name)):
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def __enter__(self) -> PostfixInstance:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ inspection

    def log_text(self) -> str:
        """The instance's whole maillog ('' if nothing was logged yet)."""
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _tail(self, lines: int = 40) -> str:
        return "\n--- maillog tail ---\n" + "\n".join(self.log_text().splitlines()[-lines:])

    def maildir_new(self, recipient: str) -> Path:
        """``maildir_root/<recipient>/new`` (Postfix lower-cases the recipient for delivery)."""
        return self.maildir_root / recipient.lower() / "new"

    def wait_delivered(self, recipient: str, count: int = 1, timeout: float = 30) -> list[Path]:
        """Poll until ``recipient``'s Maildir ``new/`` holds >= ``count`` messages; return them sorted."""
        new = self.maildir_new(recipient)
        deadline = time.monotonic() + timeout
        while True:
            files = sorted(new.iterdir()) if new.is_dir() else []
            if len(files) >= count:
                return files
            if time.monotonic() > deadline:
                raise PostfixError(f"{len(files)}/{count} messages delivered to {new} after {timeout}s" + self._tail())
            time.sleep(0.1)

    def queue_is_empty(self) -> bool:
        """True if no message file exists in maildrop/incoming/active/deferred/hold (works when stopped)."""
        for name in _MESSAGE_QUEUES:
            for _root, _dirs, files in os.walk(self.queue_dir / name):
                if files:
                    return False
        return True

    def wait_queue_empty(self, timeout: float = 30) -> None:
        """Poll :meth:`queue_is_empty` until true; raise :class:`PostfixError` on timeout."""
        deadline = time.monotonic() + timeout
        while not self.queue_is_empty():
            if time.monotonic() > deadline:
                raise PostfixError(f"queue not empty after {timeout}s: {self.queue()}" + self._tail())
            time.sleep(0.1)

    def queue(self) -> list[dict[str, object]]:
        """Queue contents as parsed ``postqueue -j`` records (instance must be running)."""
        out = subprocess.run(
            [POSTQUEUE, "-c", str(self.config_dir), "-j"], capture_output=True, text=True, timeout=30
        ).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flush(self) -> None:
        """Ask the queue manager to retry all deferred mail now (``postqueue -f``)."""
        subprocess.run([POSTQUEUE, "-c", str(self.config_dir), "-f"], capture_output=True, timeout=30, check=True)


if __name__ == "__main__" and sys.argv[1:2] == ["--reaper"]:
    sys.exit(_reaper_main(float(sys.argv[2]), sys.argv[3]))
